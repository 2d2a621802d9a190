//! End-to-end tests of `clipctl` against real OCI layouts: fixtures written by the
//! tests (every tar corner case, gzip + zstd + plain layers in one image) and images
//! built by umoci, compared entry by entry with `umoci unpack` of the same image.
//! They need root (owners, devices) and umoci; they fail, never skip, without them.

mod util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use util::*;

fn extract(archive: &Path, layout: &Path, dest: &Path) {
    ok(clipctl()
        .arg("extract")
        .arg(archive)
        .arg(dest)
        .arg("--layout")
        .arg(layout));
}

fn inspect_json(archive: &Path) -> serde_json::Value {
    let out = ok(clipctl().arg("inspect").arg("--json").arg(archive));
    serde_json::from_slice(&out.stdout).expect("inspect --json output")
}

/// Indexes `tag` of `layout`, extracts it, unpacks it with umoci, and asserts the
/// trees are identical. Returns the extracted rootfs.
fn assert_matches_umoci(dir: &Path, layout: &Path, tag: &str) -> PathBuf {
    let archive = dir.join("image.clip");
    index(layout, tag, &archive);
    let ours = dir.join("clip-rootfs");
    extract(&archive, layout, &ours);
    let theirs = umoci_unpack(layout, tag, &dir.join("umoci-bundle"));
    assert_same_tree(&ours, &theirs, &DiffOptions::labelled("clip", "umoci"));
    ours
}

#[test]
fn tricky_layers_extract_like_umoci() {
    let d = tmp("clip-it-");
    let layout = d.path().join("layout");
    tricky_layout(&layout, "tricky");
    let ours = assert_matches_umoci(d.path(), &layout, "tricky");
    let errs = check_tricky_tree(&ours);
    assert!(
        errs.is_empty(),
        "merged tree is wrong:\n{}",
        errs.join("\n")
    );
    // One image, three codecs.
    let v = inspect_json(&d.path().join("image.clip"));
    let comps: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["compression"].as_str().unwrap())
        .collect();
    assert_eq!(comps, ["gzip", "zstd", "none"]);
    assert_eq!(v["meta"]["config"]["user"], "1000:1000");
    assert_eq!(v["meta"]["config"]["entrypoint"][0], "/bin/sh");
}

#[test]
fn escaping_paths_stay_inside_the_tree() {
    let d = tmp("clip-it-");
    let layout = d.path().join("layout");
    escaping_layout(&layout, "esc");
    let archive = d.path().join("esc.clip");
    index(&layout, "esc", &archive);
    let root = d.path().join("out").join("rootfs");
    extract(&archive, &layout, &root);
    let errs = check_escaping_tree(&root);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    // Nothing was written next to the destination.
    let siblings: Vec<_> = std::fs::read_dir(d.path().join("out")).unwrap().collect();
    assert_eq!(
        siblings.len(),
        1,
        "extraction wrote outside its destination"
    );
}

/// An image made by umoci itself from a real directory tree (two layers: the second
/// deletes, replaces and hardlinks), compared with umoci's unpack of it.
#[test]
fn umoci_made_image_extracts_like_umoci() {
    let d = tmp("clip-it-");
    let layout = d.path().join("layout");
    let umoci = require_tool("umoci");
    let run = |args: &[&str]| {
        run_checked(Command::new(&umoci).args(args).current_dir(d.path()));
    };
    run(&["init", "--layout", "layout"]);
    run(&["new", "--image", "layout:t"]);
    run(&["unpack", "--image", "layout:t", "b1"]);
    let r = d.path().join("b1/rootfs");
    for dir in ["usr/share/doc", "etc", "bin", "var/empty"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    run_checked(
        Command::new("cp")
            .arg("-a")
            .arg("/usr/share/common-licenses")
            .arg(r.join("usr/share/doc/")),
    );
    std::fs::write(r.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(r.join("bin/tool"), pseudo_random_bytes(7, 300_000)).unwrap();
    std::os::unix::fs::symlink("../bin/tool", r.join("etc/tool-link")).unwrap();
    run(&["repack", "--image", "layout:t", "b1"]);
    run(&["unpack", "--image", "layout:t", "b2"]);
    let r = d.path().join("b2/rootfs");
    std::fs::remove_file(r.join("etc/hosts")).unwrap();
    std::fs::remove_dir_all(r.join("usr/share/doc/common-licenses/Apache-2.0")).ok();
    std::fs::remove_file(r.join("usr/share/doc/common-licenses/GPL-2")).unwrap();
    std::fs::write(r.join("usr/share/doc/common-licenses/GPL-3"), "replaced\n").unwrap();
    std::fs::hard_link(r.join("bin/tool"), r.join("bin/tool-hardlink")).unwrap();
    run(&["repack", "--image", "layout:t", "b2"]);
    assert_matches_umoci(d.path(), &layout, "t");
    let v = inspect_json(&d.path().join("image.clip"));
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
}

#[test]
fn docker_media_types_and_platform_selection() {
    let d = tmp("clip-it-");
    let layout = d.path().join("layout");
    multi_platform_layout(&layout, "multi", Flavor::Docker);
    for (platform, want) in [
        ("linux/amd64", "docker amd64\n"),
        ("linux/arm64", "arm64 v8\n"),
    ] {
        let archive = d
            .path()
            .join(format!("{}.clip", platform.replace('/', "-")));
        ok(clipctl()
            .args(["index-layout", "--layout"])
            .arg(&layout)
            .args(["--tag", "multi", "--platform", platform, "--out"])
            .arg(&archive));
        let out = ok(clipctl()
            .arg("cat")
            .arg(&archive)
            .arg("/etc/which")
            .arg("--layout")
            .arg(&layout));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    }
    let err = fails(
        clipctl()
            .args(["index-layout", "--layout"])
            .arg(&layout)
            .args(["--tag", "multi", "--platform", "linux/s390x", "--out"])
            .arg(d.path().join("none.clip")),
    );
    assert!(err.contains("no image for platform linux/s390x"), "{err}");
    assert!(!d.path().join("none.clip").exists());
}

/// A cat deep inside a 100 MiB+ gzip layer decodes one span, not the layer.
#[test]
fn cat_decodes_at_most_one_span_of_a_large_gzip_layer() {
    let d = tmp("clip-it-");
    let layout = d.path().join("layout");
    let big = compressible_mixed(120 << 20);
    let mut t = TarBuilder::new();
    t.file("small", "small file\n").mode(0o644);
    t.file("big.bin", &big).mode(0o644);
    let tar = t.finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let blob = gz.finish().unwrap();
    assert!(
        blob.len() > 40 << 20,
        "the layer must be large ({} bytes)",
        blob.len()
    );
    let mut lb = LayoutBuilder::new(&layout);
    lb.add_layer_raw(
        &blob,
        &sha256_digest(&tar),
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    lb.write_image(Some("big"));
    let archive = d.path().join("big.clip");
    index(&layout, "big", &archive);
    let v = inspect_json(&archive);
    let layer = &v["layers"][0];
    assert!(layer["uncompressed_size"].as_u64().unwrap() > 100 << 20);
    assert!(layer["max_span_bytes"].as_u64().unwrap() <= 2 << 20);
    assert_eq!(layer["spans"], layer["spans_with_own_checkpoint"]);
    // Archive size: far below 0.5% of the layer.
    let asize = std::fs::metadata(&archive).unwrap().len();
    assert!(
        asize * 200 < blob.len() as u64,
        "archive {asize} bytes for a {} byte layer",
        blob.len()
    );

    let (off, len) = (97_654_321u64, 10_000u64);
    let out = ok(clipctl()
        .arg("cat")
        .arg(&archive)
        .arg("/big.bin")
        .arg("--layout")
        .arg(&layout)
        .args([
            "--offset",
            &off.to_string(),
            "--length",
            &len.to_string(),
            "--stats",
        ]));
    assert_eq!(out.stdout, &big[off as usize..(off + len) as usize]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stderr).expect("stats JSON");
    let spans = stats["spans_decoded"].as_u64().unwrap();
    let decoded = stats["bytes_decoded"].as_u64().unwrap();
    let read = stats["compressed_bytes_read"].as_u64().unwrap();
    assert!(spans <= 2, "{stats}");
    assert!(
        decoded <= (2 << 20) + len,
        "decoded {decoded} bytes: {stats}"
    );
    assert!(
        read <= (2 << 20) + len,
        "read {read} compressed bytes: {stats}"
    );
    // The whole file, read through the archive, is intact.
    let out = ok(clipctl()
        .arg("cat")
        .arg(&archive)
        .arg("/big.bin")
        .arg("--layout")
        .arg(&layout));
    assert!(out.stdout == big, "whole-file cat differs");
}

#[test]
fn zstd_single_frame_layer_reports_one_checkpoint() {
    let d = tmp("clip-it-");
    let layout = d.path().join("layout");
    let mut t = TarBuilder::new();
    t.file("a", compressible_mixed(5 << 20)).mode(0o644);
    t.file("b", "tail\n").mode(0o600);
    let mut lb = LayoutBuilder::new(&layout);
    lb.add_layer(&t.finish(), Compression::Zstd);
    lb.write_image(Some("z"));
    let archive = d.path().join("z.clip");
    index(&layout, "z", &archive);
    let v = inspect_json(&archive);
    assert_eq!(v["layers"][0]["checkpoints"], 1);
    assert_eq!(v["layers"][0]["spans_with_own_checkpoint"], 1);
    assert!(v["layers"][0]["spans"].as_u64().unwrap() >= 3);
    let out = ok(clipctl()
        .arg("cat")
        .arg(&archive)
        .arg("b")
        .arg("--layout")
        .arg(&layout));
    assert_eq!(out.stdout, b"tail\n");
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn simple_layout(dir: &Path, tag: &str, c: Compression) -> ImageInfo {
    let mut t = TarBuilder::new();
    t.dir("etc").mode(0o755);
    t.file("etc/motd", compressible_mixed(300_000)).mode(0o644);
    let mut lb = LayoutBuilder::new(dir);
    lb.add_layer(&t.finish(), c);
    lb.write_image(Some(tag))
}

#[test]
fn bad_inputs_give_clear_errors_and_leave_nothing() {
    let d = tmp("clip-it-");
    let out = d.path().join("out.clip");
    let index_err = |layout: &Path, tag: &str| {
        let e = fails(
            clipctl()
                .args(["index-layout", "--layout"])
                .arg(layout)
                .args(["--tag", tag, "--out"])
                .arg(&out),
        );
        assert!(!out.exists(), "a failed run left {}", out.display());
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".clip-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
        e
    };
    // Not a layout.
    let e = index_err(&d.path().join("nowhere"), "x");
    assert!(e.contains("not an OCI image layout"), "{e}");
    // Unknown tag.
    let l = d.path().join("l1");
    simple_layout(&l, "v1", Compression::Gzip);
    let e = index_err(&l, "v2");
    assert!(
        e.contains("tag \"v2\" not found") && e.contains("v1"),
        "{e}"
    );
    // Wrong digest: a layer blob with a flipped byte.
    for (name, c) in [
        ("gz", Compression::Gzip),
        ("zst", Compression::Zstd),
        ("tar", Compression::None),
    ] {
        let l = d.path().join(format!("corrupt-{name}"));
        let info = simple_layout(&l, "v1", c);
        let layer = &info.layers[0];
        let p = blob(&l, &layer.digest);
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x55;
        std::fs::write(&p, b).unwrap();
        let e = index_err(&l, "v1");
        assert!(
            e.contains(&layer.digest)
                && (e.contains("digest mismatch") || e.contains("gzip") || e.contains("zstd")),
            "{e}"
        );
    }
    // Truncated blob.
    let l = d.path().join("trunc");
    let info = simple_layout(&l, "v1", Compression::Gzip);
    let p = blob(&l, &info.layers[0].digest);
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() / 3]).unwrap();
    let e = index_err(&l, "v1");
    assert!(
        e.contains(&info.layers[0].digest) && e.contains("truncated or replaced"),
        "{e}"
    );
    // A wrong diff_id in the config.
    let l = d.path().join("diffid");
    let mut t = TarBuilder::new();
    t.file("x", "x").mode(0o644);
    let tar = t.finish();
    let mut lb = LayoutBuilder::new(&l);
    lb.add_layer_raw(
        &tar,
        &sha256_digest(b"something else"),
        "application/vnd.oci.image.layer.v1.tar",
    );
    lb.write_image(Some("v1"));
    let e = index_err(&l, "v1");
    assert!(
        e.contains("diff_id") && e.contains("digest mismatch"),
        "{e}"
    );
}

#[test]
fn corrupt_truncated_and_future_archives_are_refused() {
    let d = tmp("clip-it-");
    let l = d.path().join("l");
    simple_layout(&l, "v1", Compression::Gzip);
    let good = d.path().join("good.clip");
    index(&l, "v1", &good);
    let bytes = std::fs::read(&good).unwrap();
    let try_inspect = |name: &str, data: &[u8]| {
        let p = d.path().join(name);
        std::fs::write(&p, data).unwrap();
        fails(clipctl().arg("inspect").arg(&p))
    };
    let e = try_inspect("trunc.clip", &bytes[..bytes.len() - 10]);
    assert!(e.contains("truncated"), "{e}");
    let e = try_inspect("short.clip", &bytes[..20]);
    assert!(e.contains("shorter than the header"), "{e}");
    let mut flipped = bytes.clone();
    flipped[100] ^= 0x40;
    let e = try_inspect("flipped.clip", &flipped);
    assert!(e.contains("checksum mismatch"), "{e}");
    let mut future = bytes.clone();
    future[8] = 9;
    let e = try_inspect("future.clip", &future);
    assert!(e.contains("unsupported archive format version 9"), "{e}");
    let e = try_inspect(
        "text.clip",
        b"hello, this is not an archive at all, not even close to one......",
    );
    assert!(e.contains("wrong magic"), "{e}");
    // Every single-byte corruption is either refused or harmless, never a crash.
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] = b[i].wrapping_add(1);
        let p = d.path().join("fuzz.clip");
        std::fs::write(&p, &b).unwrap();
        let out = clipctl().arg("inspect").arg(&p).output().unwrap();
        assert!(
            out.status.code().is_some(),
            "crashed on corruption at byte {i}"
        );
    }
}

#[test]
fn ls_shows_the_merged_tree() {
    let d = tmp("clip-it-");
    let layout = d.path().join("layout");
    tricky_layout(&layout, "t");
    let archive = d.path().join("t.clip");
    index(&layout, "t", &archive);
    let out = ok(clipctl().arg("ls").arg("-R").arg(&archive));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains(".wh."),
        "whiteouts must not be listed:\n{text}"
    );
    let err = fails(clipctl().arg("ls").arg(&archive).arg("/no/such/dir"));
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn a_read_within_open_spans_is_served_at_once_and_the_same() {
    // The FUSE read path serves bytes of spans the store holds open on its own
    // thread (no hand-off to a read thread); anything else takes the usual path.
    let d = tmp("clip-open-");
    let layout = d.path().join("layout");
    tricky_layout(&layout, "t");
    let archive = d.path().join("t.clip");
    index(&layout, "t", &archive);
    let img = clip::image::Image::open_with_layout(&archive, &layout).unwrap();
    let store =
        clip::store::Store::new(std::sync::Arc::new(img), &d.path().join("cache"), 0).unwrap();
    let tree = store.image().tree();
    let file = tree
        .inodes
        .iter()
        .find(|i| i.kind() == clip::tree::Kind::File && i.size > 100)
        .expect("a file");
    let (layer, off, n) = (file.b as usize, file.a, file.size as usize);
    let mut a = vec![0; n];
    assert!(store.read_layer_if_open(layer, off, &mut a).is_none());
    store.read_layer(layer, off, &mut a).unwrap();
    let before = store.stats();
    let mut b = vec![0; n];
    let info = store
        .read_layer_if_open(layer, off, &mut b)
        .expect("the span is open now");
    assert_eq!(a, b);
    assert_eq!(info.tier, clip::trace::Tier::Memory);
    let after = store.stats();
    assert_eq!(after.reads, before.reads + 1);
    assert_eq!(after.fetches, before.fetches);
    // Out of the layer, or empty: the usual path says what is wrong.
    let end = store.image().archive().layers[layer]
        .codec
        .uncompressed_size;
    assert!(store.read_layer_if_open(layer, end, &mut b).is_none());
    assert!(store.read_layer_if_open(layer, off, &mut []).is_none());
    assert!(store.read_layer_if_open(99, off, &mut b).is_none());
}

#[test]
fn a_single_frame_zstd_layer_is_decoded_once_whatever_the_read_order() {
    // Every span of a single-frame zstd layer shares the layer's one checkpoint:
    // reading a span inflates the layer from its start. The store decodes each
    // such layer in one pass, caching every span on the way (and the rest ahead),
    // so however many readers ask, in whatever order, the layer's bytes are read
    // and inflated once.
    let d = tmp("clip-zstd1-");
    let layout = d.path().join("layout");
    let mut t = TarBuilder::new();
    let mut bodies = std::collections::HashMap::new();
    for i in 0..12usize {
        let mut body = compressible_mixed(600_000 + i * 4099);
        body.extend_from_slice(format!("file {i}\n").as_bytes());
        t.file(format!("f{i:02}"), body.clone()).mode(0o644);
        bodies.insert(body.len() as u64, body);
    }
    let mut lb = LayoutBuilder::new(&layout);
    lb.add_layer(&t.finish(), Compression::Zstd);
    lb.write_image(Some("z"));
    let archive = d.path().join("z.clip");
    ok(clipctl()
        .args(["index-layout", "--span-size", "512KiB", "--layout"])
        .arg(&layout)
        .args(["--tag", "z", "--out"])
        .arg(&archive));
    let open_store = || {
        let img = clip::image::Image::open_with_layout(&archive, &layout).unwrap();
        clip::store::Store::new(std::sync::Arc::new(img), &d.path().join("cache"), 0).unwrap()
    };
    let store = open_store();
    let rec = &store.image().archive().layers[0];
    let (compressed, uncompressed) = (rec.compressed_size, rec.codec.uncompressed_size);
    let spans = rec.codec.spans.len() as u64;
    assert!(spans >= 12, "{spans} spans");
    assert_eq!(rec.codec.checkpoints.len(), 1);
    let mut files: Vec<(u64, u64)> = store
        .image()
        .tree()
        .inodes
        .iter()
        .filter(|i| i.kind() == clip::tree::Kind::File)
        .map(|i| (i.a, i.size))
        .collect();
    // Last file first, then the others from four threads at once.
    files.sort();
    files.reverse();
    let read = |(off, size): (u64, u64)| {
        let mut buf = vec![0; size as usize];
        store.read_layer(0, off, &mut buf).unwrap();
        assert!(buf == bodies[&size], "file at {off} differs");
    };
    read(files[0]);
    std::thread::scope(|s| {
        for chunk in files[1..].chunks(3) {
            s.spawn(|| chunk.iter().for_each(|&f| read(f)));
        }
    });
    assert!(store.wait_background(std::time::Duration::from_secs(60)));
    let st = store.stats();
    assert!(
        st.compressed_bytes_read <= compressed,
        "read {} compressed bytes of a {compressed}-byte layer: {st:?}",
        st.compressed_bytes_read
    );
    assert!(
        st.bytes_decoded <= uncompressed,
        "inflated {} bytes of a {uncompressed}-byte layer: {st:?}",
        st.bytes_decoded
    );
    assert_eq!(st.fetches, spans, "{st:?}");
    // All of it is cached: a new store over the same cache reads no layer byte.
    drop(store);
    let again = open_store();
    for &(off, size) in &files {
        let mut buf = vec![0; size as usize];
        again.read_layer(0, off, &mut buf).unwrap();
        assert!(buf == bodies[&size]);
    }
    assert_eq!(again.stats().compressed_bytes_read, 0);
    assert_eq!(again.stats().fetches, 0);
}
