//! The layer-index cache (issue 11): a second index of the same image with the
//! cache reads no layer bytes and writes a byte-identical archive; a corrupt
//! artifact is a miss; a cache that cannot store never fails a build; the key
//! names the span size.

mod util;

use std::path::Path;
use std::sync::{Arc, Mutex};

use clip::create::{CreateOptions, Progress, SOURCE_INDEX_CACHE, Stage};
use clip::digest::Digest;
use clip::index::cache::{self, DiskLayerIndexStore, LayerIndexStore};
use util::*;

/// A layout with three layers (gzip, zstd, plain), each large enough to have
/// several spans at 64 KiB.
fn three_layers(dir: &Path) -> ImageInfo {
    let mut lb = LayoutBuilder::new(dir);
    for (i, c) in [Compression::Gzip, Compression::Zstd, Compression::None]
        .into_iter()
        .enumerate()
    {
        let mut t = TarBuilder::new();
        t.dir(format!("d{i}")).mode(0o755);
        t.file(format!("d{i}/big"), compressible_mixed(400_000 + i * 1000))
            .mode(0o644);
        t.symlink(format!("d{i}/link"), "big");
        t.file("shared", format!("layer {i}\n").into_bytes())
            .mode(0o600);
        lb.add_layer(&t.finish(), c);
    }
    lb.write_image(Some("v1"))
}

/// Options with `store` and a progress log.
fn options(
    store: Option<Arc<dyn LayerIndexStore>>,
    span: u64,
) -> (CreateOptions, Arc<Mutex<Vec<Progress>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let o = CreateOptions {
        span_size: span,
        layer_index_cache: store,
        progress: Some(Arc::new(move |p: &Progress| {
            l.lock().unwrap().push(p.clone());
            true
        })),
        ..Default::default()
    };
    (o, log)
}

fn sources(log: &Mutex<Vec<Progress>>, stage: Stage) -> Vec<&'static str> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|p| p.stage == stage)
        .map(|p| p.source)
        .collect()
}

/// Moves every layer blob away (so any read of one fails) and back on drop.
struct BlobsHidden(Vec<(std::path::PathBuf, std::path::PathBuf)>);

impl BlobsHidden {
    fn new(layout: &Path, info: &ImageInfo) -> BlobsHidden {
        let mut moved = Vec::new();
        for l in &info.layers {
            let p = layout
                .join("blobs/sha256")
                .join(l.digest.trim_start_matches("sha256:"));
            let away = p.with_extension("hidden");
            std::fs::rename(&p, &away).unwrap();
            moved.push((p, away));
        }
        BlobsHidden(moved)
    }
}

impl Drop for BlobsHidden {
    fn drop(&mut self) {
        for (p, away) in &self.0 {
            let _ = std::fs::rename(away, p);
        }
    }
}

const SPAN: u64 = 64 << 10;

#[test]
fn second_index_reads_no_layer_bytes_and_writes_the_same_archive() {
    let d = tmp("clip-lic-");
    let layout = d.path().join("layout");
    let info = three_layers(&layout);
    let store = Arc::new(DiskLayerIndexStore::open(d.path().join("cache"), 0).unwrap());

    // Reference: no cache at all.
    let plain = d.path().join("plain.clip");
    clip::create::index_layout(&layout, Some("v1"), &plain, &options(None, SPAN).0).unwrap();

    // First run with the cache: every layer from the layout, one artifact each.
    let first = d.path().join("first.clip");
    let (o, log) = options(Some(store.clone()), SPAN);
    clip::create::index_layout(&layout, Some("v1"), &first, &o).unwrap();
    assert_eq!(sources(&log, Stage::Completed), vec!["local-layout"; 3]);
    for l in &info.layers {
        let key = cache::key(&Digest::parse(&l.digest).unwrap(), SPAN);
        assert!(store.get(&key).unwrap().is_some(), "no artifact for {key}");
    }

    // Second run with the blobs gone: any layer read would fail.
    let second = d.path().join("second.clip");
    let (o, log) = options(Some(store.clone()), SPAN);
    {
        let _hidden = BlobsHidden::new(&layout, &info);
        clip::create::index_layout(&layout, Some("v1"), &second, &o).unwrap();
    }
    assert_eq!(sources(&log, Stage::Starting), vec![SOURCE_INDEX_CACHE; 3]);
    assert_eq!(sources(&log, Stage::Completed), vec![SOURCE_INDEX_CACHE; 3]);
    assert!(sources(&log, Stage::Progress).is_empty());
    let completed: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.stage == Stage::Completed)
        .map(|p| {
            (
                p.layer_index,
                p.compressed_done,
                p.uncompressed_done > 0,
                p.files,
            )
        })
        .collect();
    for (i, done, has_size, files) in completed {
        assert_eq!(done, info.layers[i - 1].size);
        assert!(has_size && files == 4, "layer {i}: {files} files");
    }
    let plain = std::fs::read(&plain).unwrap();
    assert_eq!(std::fs::read(&first).unwrap(), plain, "first run differs");
    assert_eq!(
        std::fs::read(&second).unwrap(),
        plain,
        "run from the cache differs"
    );

    // Without the cache and without the blobs, indexing fails: the test is real.
    let _hidden = BlobsHidden::new(&layout, &info);
    let e = clip::create::index_layout(&layout, Some("v1"), &second, &options(None, SPAN).0);
    assert!(e.is_err());
}

#[test]
fn corrupt_or_foreign_artifacts_are_misses() {
    let d = tmp("clip-lic-");
    let layout = d.path().join("layout");
    let info = three_layers(&layout);
    let store = Arc::new(DiskLayerIndexStore::open(d.path().join("cache"), 0).unwrap());
    let plain = d.path().join("plain.clip");
    clip::create::index_layout(&layout, Some("v1"), &plain, &options(None, SPAN).0).unwrap();
    let out = d.path().join("out.clip");
    clip::create::index_layout(
        &layout,
        Some("v1"),
        &out,
        &options(Some(store.clone()), SPAN).0,
    )
    .unwrap();

    let keys: Vec<String> = info
        .layers
        .iter()
        .map(|l| cache::key(&Digest::parse(&l.digest).unwrap(), SPAN))
        .collect();
    // Layer 1: one flipped bit in the body. Layer 2: layer 3's artifact (valid,
    // but for another layer). Layer 3: truncated.
    let mut a = store.get(&keys[0]).unwrap().unwrap();
    let mid = a.len() / 2;
    a[mid] ^= 1;
    store.put(&keys[0], &a).unwrap();
    let other = store.get(&keys[2]).unwrap().unwrap();
    store.put(&keys[1], &other).unwrap();
    store.put(&keys[2], &other[..other.len() - 7]).unwrap();
    for (k, l) in keys.iter().zip(&info.layers) {
        let layer = clip::oci::Layer {
            desc: clip::oci::Desc {
                media_type: l.media_type.clone(),
                digest: Digest::parse(&l.digest).unwrap(),
                size: l.size,
                platform: None,
                annotations: Default::default(),
            },
            compression: clip::oci::Compression::None,
            diff_id: Digest::parse(&l.diff_id).unwrap(),
        };
        let e = cache::decode(&store.get(k).unwrap().unwrap(), k, &layer, SPAN).unwrap_err();
        assert!(e.to_string().contains(k.as_str()), "{e}");
    }

    let (o, log) = options(Some(store.clone()), SPAN);
    clip::create::index_layout(&layout, Some("v1"), &out, &o).unwrap();
    assert_eq!(sources(&log, Stage::Completed), vec!["local-layout"; 3]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&plain).unwrap());
    // The misses were indexed again and stored whole.
    let (o, log) = options(Some(store.clone()), SPAN);
    clip::create::index_layout(&layout, Some("v1"), &out, &o).unwrap();
    assert_eq!(sources(&log, Stage::Completed), vec![SOURCE_INDEX_CACHE; 3]);
}

/// A store whose every call fails.
struct Broken;

impl LayerIndexStore for Broken {
    fn get(&self, _: &str) -> clip::error::Result<Option<Vec<u8>>> {
        Err(clip::error::Error::Network(
            "cache cluster unreachable".into(),
        ))
    }
    fn put(&self, _: &str, _: &[u8]) -> clip::error::Result<()> {
        Err(clip::error::Error::Network(
            "cache cluster unreachable".into(),
        ))
    }
    fn describe(&self) -> String {
        "broken test cache".into()
    }
}

#[test]
fn a_cache_that_cannot_store_never_fails_a_build() {
    let d = tmp("clip-lic-");
    let layout = d.path().join("layout");
    three_layers(&layout);
    let out = d.path().join("out.clip");
    let (o, log) = options(Some(Arc::new(Broken)), SPAN);
    clip::create::index_layout(&layout, Some("v1"), &out, &o).unwrap();
    assert_eq!(sources(&log, Stage::Completed), vec!["local-layout"; 3]);

    // A read-only cache directory (as root, permissions do not stop writes: make
    // the "directory" a path under a file instead, which nobody can write).
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let store = DiskLayerIndexStore::open(&ro, 0).unwrap();
    std::fs::remove_dir(&ro).unwrap();
    std::fs::write(&ro, b"not a directory").unwrap();
    let (o, _) = options(Some(Arc::new(store)), SPAN);
    clip::create::index_layout(&layout, Some("v1"), &out, &o).unwrap();
    assert!(out.exists());

    // clipctl with a cache directory it cannot even create: a warning, an archive.
    std::fs::remove_file(&out).unwrap();
    let o = ok(clipctl()
        .args(["index-layout", "--tag", "v1", "--layout"])
        .arg(&layout)
        .arg("--layer-index-cache")
        .arg(ro.join("sub"))
        .arg("--out")
        .arg(&out));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("layer-index cache not used"), "{stderr}");
    assert!(out.exists());
}

#[test]
fn the_key_names_the_span_size_and_a_span_change_misses() {
    let digest = Digest::of(b"layer");
    let k1 = cache::key(&digest, 2 << 20);
    let k2 = cache::key(&digest, 1 << 20);
    assert_ne!(k1, k2);
    assert_eq!(
        k1,
        format!(
            "clip-layer-index/rs{}/span2097152/sha256_{}",
            cache::ARTIFACT_VERSION,
            digest.hex()
        )
    );
    // Never the Go clip's keys, whose values are gob LayerArtifacts.
    assert!(!k1.starts_with("clip-layer-index/v1/"));

    let d = tmp("clip-lic-");
    let layout = d.path().join("layout");
    three_layers(&layout);
    let store = Arc::new(DiskLayerIndexStore::open(d.path().join("cache"), 0).unwrap());
    let out = d.path().join("out.clip");
    clip::create::index_layout(
        &layout,
        Some("v1"),
        &out,
        &options(Some(store.clone()), SPAN).0,
    )
    .unwrap();
    let (o, log) = options(Some(store.clone()), 2 * SPAN);
    clip::create::index_layout(&layout, Some("v1"), &out, &o).unwrap();
    assert_eq!(sources(&log, Stage::Completed), vec!["local-layout"; 3]);
    let plain = d.path().join("plain.clip");
    clip::create::index_layout(&layout, Some("v1"), &plain, &options(None, 2 * SPAN).0).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&plain).unwrap());
}

#[test]
fn clipctl_create_from_a_registry_with_the_cache_fetches_no_layer() {
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-lic-");
    let layout = d.path().join("layout");
    let info = three_layers(&layout);
    reg.push(&layout, "v1", "app:v1");
    let image = format!("{}/app:v1", reg.host());
    let cache_dir = d.path().join("cache");
    let run = |out: &Path| {
        let o = ok(clipctl()
            .arg("create")
            .arg(&image)
            .arg("--layer-index-cache")
            .arg(&cache_dir)
            .arg("--progress")
            .arg("--out")
            .arg(out));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let received = |stderr: &str| -> u64 {
        let s = stderr.split(" bytes received").next().unwrap();
        s.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (a, b) = (d.path().join("a.clip"), d.path().join("b.clip"));
    let first = run(&a);
    let second = run(&b);
    let layer_bytes: u64 = info.layers.iter().map(|l| l.size).sum();
    assert!(received(&first) >= layer_bytes, "{first}");
    // Only the manifest and the config the second time.
    assert!(
        received(&second) < info.layers.iter().map(|l| l.size).min().unwrap(),
        "{second}"
    );
    assert_eq!(second.matches("(from index-cache)").count(), 6, "{second}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

/// Re-seals `body` as the body of artifact `a` (lengths and checksum fixed), as a
/// hostile or buggy cache could.
fn reseal(a: &[u8], body: &[u8]) -> Vec<u8> {
    let z = zstd::bulk::compress(body, 3).unwrap();
    let mut out = a[..128].to_vec();
    out[104..112].copy_from_slice(&(body.len() as u64).to_le_bytes());
    out[112..120].copy_from_slice(&(z.len() as u64).to_le_bytes());
    out.extend_from_slice(&z);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Indexes [`three_layers`] under `dir` into a disk layer-index store; the first
/// layer, its artifact key and the stored artifact.
fn first_layer_artifact(
    dir: &Path,
) -> (Arc<DiskLayerIndexStore>, clip::oci::Layer, String, Vec<u8>) {
    let layout = dir.join("layout");
    let info = three_layers(&layout);
    let store = Arc::new(DiskLayerIndexStore::open(dir.join("cache"), 0).unwrap());
    let out = dir.join("out.clip");
    clip::create::index_layout(
        &layout,
        Some("v1"),
        &out,
        &options(Some(store.clone()), SPAN).0,
    )
    .unwrap();
    let l = &info.layers[0];
    let layer = clip::oci::Layer {
        desc: clip::oci::Desc {
            media_type: l.media_type.clone(),
            digest: Digest::parse(&l.digest).unwrap(),
            size: l.size,
            platform: None,
            annotations: Default::default(),
        },
        compression: clip::oci::Compression::None,
        diff_id: Digest::parse(&l.diff_id).unwrap(),
    };
    let key = cache::key(&layer.desc.digest, SPAN);
    let a = store.get(&key).unwrap().unwrap();
    (store, layer, key, a)
}

#[test]
fn sealed_but_wrong_artifacts_are_errors_never_panics() {
    let d = tmp("clip-lic-");
    let (_store, layer, key, a) = first_layer_artifact(d.path());
    let body = zstd::bulk::decompress(&a[128..a.len() - 32], 1 << 26).unwrap();
    assert!(cache::decode(&reseal(&a, &body), &key, &layer, SPAN).is_ok());
    // Every truncation point, and every byte set to 0xff in turn: decoded or
    // refused, never a panic or a huge allocation.
    let mut refused = 0;
    for cut in (0..body.len()).step_by(7) {
        refused += cache::decode(&reseal(&a, &body[..cut]), &key, &layer, SPAN).is_err() as usize;
    }
    assert!(refused > 0);
    for i in (0..body.len()).step_by(3) {
        let mut b = body.clone();
        b[i] = 0xff;
        let _ = cache::decode(&reseal(&a, &b), &key, &layer, SPAN);
    }
    // Trailing bytes are refused.
    let mut b = body.clone();
    b.push(0);
    let e = cache::decode(&reseal(&a, &b), &key, &layer, SPAN).unwrap_err();
    assert!(e.to_string().contains("trailing"), "{e}");
}

#[test]
fn artifacts_over_the_limits_are_refused_before_inflating() {
    let d = tmp("clip-lic-");
    let (store, layer, key, a) = first_layer_artifact(d.path());
    // A body claiming 512 MiB from its few hundred stored bytes.
    let mut b = a.clone();
    b[104..112].copy_from_slice(&(512u64 << 20).to_le_bytes());
    let n = b.len();
    let sum = blake3::hash(&b[..n - 32]);
    b[n - 32..].copy_from_slice(sum.as_bytes());
    let e = cache::decode(&b, &key, &layer, SPAN)
        .unwrap_err()
        .to_string();
    let stored = a.len() - 128 - 32;
    assert_eq!(
        e,
        format!(
            "layer-index artifact {key}: body: 536870912 bytes inflated from {stored} stored (a ratio of {}:1), more than the limit of 1000:1 (limits::MAX_RATIO)",
            (512usize << 20) / stored
        )
    );
    // A body that really inflates that much: 64 MiB of zeros after the entries.
    let body = zstd::bulk::decompress(&a[128..a.len() - 32], 1 << 26).unwrap();
    let mut zeros = body.clone();
    zeros.resize(body.len() + (64 << 20), 0);
    let e = cache::decode(&reseal(&a, &zeros), &key, &layer, SPAN).unwrap_err();
    assert!(e.to_string().contains("(limits::MAX_RATIO)"), "{e}");
    // An entry with a 5000-byte path, encoded by the writer itself.
    let mut li = cache::decode(&a, &key, &layer, SPAN).unwrap();
    li.entries[0].path = vec![b'p'; 5000];
    let hostile = cache::encode(&li, SPAN).unwrap();
    let e = cache::decode(&hostile, &key, &layer, SPAN)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("layer-index artifact {key}: tar entry \"pppp"))
            && e.ends_with("path: 5000 bytes, more than the limit of 4096 (limits::MAX_PATH_LEN)"),
        "{e}"
    );
    // Through a build: each is a miss, the layer indexed again.
    store.put(&key, &hostile).unwrap();
    let (o, log) = options(Some(store.clone()), SPAN);
    let (layout, out) = (d.path().join("layout"), d.path().join("out.clip"));
    clip::create::index_layout(&layout, Some("v1"), &out, &o).unwrap();
    let mut got = sources(&log, Stage::Completed);
    got.sort();
    assert_eq!(
        got,
        vec![SOURCE_INDEX_CACHE, SOURCE_INDEX_CACHE, "local-layout"]
    );
}
