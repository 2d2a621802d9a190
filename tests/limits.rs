//! Limits for hostile input (src/limits.rs, docs/RELIABILITY.md "Limits for
//! hostile input"): every limit is met by an input built for real (tar streams
//! with long or deep paths, layouts and registry images with too many layers,
//! manifests or nested indexes, metadata blobs longer than claimed, `.clip`
//! archives whose sections claim huge sizes, a Go-clip archive with a deep path),
//! and refused with an error naming the input and the limit. Needs
//! `docker-registry` and Go (`scripts/deps.sh`); fails, never skips, without them.

mod util;

use std::path::Path;

use serde_json::{Value, json};
use util::*;

/// A layout at `dir` whose image `tag` has one gzip layer holding `tar`.
fn one_layer(dir: &Path, tag: &str, tar: &[u8]) -> ImageInfo {
    let mut lb = LayoutBuilder::new(dir);
    lb.add_layer(tar, Compression::Gzip);
    lb.write_image(Some(tag))
}

/// `clipctl index-layout` of `tag`, expected to fail: its stderr.
fn index_fails(layout: &Path, tag: &str) -> String {
    let out = layout.parent().unwrap().join(format!("{tag}.clip"));
    let e = fails(
        clipctl()
            .args(["index-layout", "--layout"])
            .arg(layout)
            .args(["--tag", tag, "--out"])
            .arg(&out),
    );
    assert!(!out.exists());
    e
}

fn assert_has(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "expected {p:?} in: {e}");
    }
}

#[test]
fn tar_paths_and_link_targets_over_the_limits_are_refused_naming_entry_and_layer() {
    let d = tmp("clip-limits-");
    let long = [b"dir/".as_slice(), &[b'p'; 4996]].concat(); // 5000 bytes
    let deep = [b"d/".repeat(1100).as_slice(), b"f"].concat(); // 1101 components
    let cases: Vec<(&str, NameStyle, TarBuilder, &str)> = vec![
        (
            "pax-path",
            NameStyle::Auto,
            {
                let mut t = TarBuilder::new();
                t.file(&long, "x");
                t
            },
            "path: 5000 bytes, more than the limit of 4096 (limits::MAX_PATH_LEN)",
        ),
        (
            "gnu-path",
            NameStyle::Gnu,
            {
                let mut t = TarBuilder::new();
                t.file(&long, "x");
                t
            },
            "path: 5000 bytes, more than the limit of 4096 (limits::MAX_PATH_LEN)",
        ),
        (
            "deep-path",
            NameStyle::Auto,
            {
                let mut t = TarBuilder::new();
                t.file(&deep, "x");
                t
            },
            "path: 1101 components, more than the limit of 1024 (limits::MAX_PATH_DEPTH)",
        ),
        (
            "symlink-target",
            NameStyle::Gnu,
            {
                let mut t = TarBuilder::new();
                t.symlink("l", &long);
                t
            },
            "tar entry \"l\": link target: 5000 bytes, more than the limit of 4096 (limits::MAX_PATH_LEN)",
        ),
        (
            "hardlink-target",
            NameStyle::Pax,
            {
                let mut t = TarBuilder::new();
                t.file("f", "x");
                t.hardlink("h", &deep);
                t
            },
            "tar entry \"h\": link target: 1101 components, more than the limit of 1024 (limits::MAX_PATH_DEPTH)",
        ),
    ];
    for (tag, style, mut tar, want) in cases {
        let layout = d.path().join(tag);
        tar.name_style(style);
        let info = one_layer(&layout, tag, &tar.finish());
        let e = index_fails(&layout, tag);
        assert_has(&e, &[&format!("layer {}", info.layers[0].digest), want]);
    }
    // At the limits: a path of 4096 bytes (16 components of 255 bytes), 1024
    // components deep, a symlink target of 4096 bytes.
    let layout = d.path().join("at-limits");
    let mut t = TarBuilder::new();
    let at_len = [[b'n'; 255].as_slice(), b"/"].concat().repeat(16);
    assert_eq!(at_len.len(), 4096);
    t.dir(&at_len);
    t.file([b"d/".repeat(1023).as_slice(), b"f"].concat(), "y");
    t.symlink("l", [b"/".as_slice(), &[b't'; 4095]].concat());
    one_layer(&layout, "ok", &t.finish());
    let out = d.path().join("ok.clip");
    index(&layout, "ok", &out);
    ok(clipctl().arg("ls").arg(&out).arg("/").arg("-R"));
}

/// Writes a manifest for `config` (a JSON value) and `layers` into the layout,
/// listed in `index.json` under `tag`; returns the manifest's descriptor.
fn write_manifest_json(
    lb: &mut LayoutBuilder,
    tag: &str,
    config: Descriptor,
    layers: &[Descriptor],
) -> Descriptor {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let desc = Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest: lb.write_blob(&bytes),
        size: bytes.len() as u64,
    };
    lb.add_to_index(&desc, Some(tag));
    desc
}

/// An OCI index of `manifests` (each with the host's platform) as JSON bytes.
fn index_json(manifests: &[Descriptor]) -> Vec<u8> {
    let ms: Vec<Value> = manifests
        .iter()
        .map(|d| {
            let mut v = d.to_json();
            if d.media_type == OCI_MANIFEST {
                v["platform"] = json!({"os": "linux", "architecture": host_arch()});
            }
            v
        })
        .collect();
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": ms}))
        .unwrap()
}

/// The config of an image of `n` copies of `layer`.
fn config_of(n: usize, layer: &LayerInfo) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": host_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": vec![layer.diff_id.clone(); n]},
    }))
    .unwrap()
}

#[test]
fn layout_manifests_indexes_and_configs_over_the_limits_are_refused() {
    let d = tmp("clip-limits-");
    let layout = d.path().join("layout");
    let mut lb = LayoutBuilder::new(&layout);
    let mut t = TarBuilder::new();
    t.file("f", "x");
    let layer = lb.add_layer(&t.finish(), Compression::Gzip);
    let config_desc = |lb: &LayoutBuilder, n| {
        let c = config_of(n, &layer);
        Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: lb.write_blob(&c),
            size: c.len() as u64,
        }
    };
    // 512 layers index; 513 do not.
    let c = config_desc(&lb, 512);
    write_manifest_json(&mut lb, "512", c, &vec![layer.descriptor(); 512]);
    let c = config_desc(&lb, 513);
    let m513 = write_manifest_json(&mut lb, "513", c, &vec![layer.descriptor(); 513]);
    index(&layout, "512", &d.path().join("512.clip"));
    let e = index_fails(&layout, "513");
    assert_has(
        &e,
        &[&format!(
            "manifest {}: 513 layers, more than the limit of 512 (limits::MAX_LAYERS)",
            m513.digest
        )],
    );

    // An index of 4097 manifests.
    let c = config_desc(&lb, 1);
    let one = write_manifest_json(&mut lb, "one", c.clone(), &[layer.descriptor()]);
    let big = index_json(&vec![one.clone(); 4097]);
    let big = Descriptor {
        media_type: OCI_INDEX.into(),
        digest: lb.write_blob(&big),
        size: big.len() as u64,
    };
    lb.add_to_index(&big, Some("4097"));
    let e = index_fails(&layout, "4097");
    assert_has(
        &e,
        &[&format!(
            "manifest {}: 4097 manifests, more than the limit of 4096 (limits::MAX_INDEX_MANIFESTS)",
            big.digest
        )],
    );

    // Indexes nested 4 deep resolve; 5 deep do not.
    let mut top = one.clone();
    for depth in 1..=5 {
        let bytes = index_json(std::slice::from_ref(&top));
        top = Descriptor {
            media_type: OCI_INDEX.into(),
            digest: lb.write_blob(&bytes),
            size: bytes.len() as u64,
        };
        lb.add_to_index(&top, Some(&format!("nested{depth}")));
    }
    index(&layout, "nested4", &d.path().join("n4.clip"));
    let e = index_fails(&layout, "nested5");
    assert_has(
        &e,
        &["at least 5 nested indexes, more than the limit of 4 (limits::MAX_INDEX_DEPTH)"],
    );

    // A config whose descriptor claims 17 MiB: refused before it is read.
    let huge = Descriptor {
        size: 17 << 20,
        ..c.clone()
    };
    write_manifest_json(&mut lb, "huge-config", huge, &[layer.descriptor()]);
    let e = index_fails(&layout, "huge-config");
    assert_has(
        &e,
        &[&format!(
            "blob {} ({OCI_CONFIG}): 17825792 bytes by its descriptor, more than the limit of 16777216 bytes for metadata (limits::MAX_METADATA_BLOB)",
            c.digest
        )],
    );
    // A config blob longer than its descriptor claims.
    let short = Descriptor {
        size: c.size - 10,
        ..c.clone()
    };
    write_manifest_json(&mut lb, "long-config", short, &[layer.descriptor()]);
    let e = index_fails(&layout, "long-config");
    assert_has(
        &e,
        &[&format!(
            "blob {} is longer than the {} bytes its descriptor claims",
            c.digest,
            c.size - 10
        )],
    );

    // An index.json of 16 MiB + 1: refused, having read no more than that.
    let mut j = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": []})).unwrap();
    j.resize((16 << 20) + 1, b' ');
    std::fs::write(layout.join("index.json"), &j).unwrap();
    let e = index_fails(&layout, "one");
    assert_has(
        &e,
        &[
            "index.json: at least 16777217 bytes, more than the limit of 16777216 bytes for metadata (limits::MAX_METADATA_BLOB)",
        ],
    );
}

#[test]
fn registry_manifests_indexes_and_configs_over_the_limits_are_refused() {
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-limits-");
    let mut t = TarBuilder::new();
    t.file("f", "x");
    let tar = t.finish();
    let blob = Compression::Gzip.compress(&tar);
    let layer = LayerInfo {
        digest: reg.put_blob("app", &blob),
        diff_id: sha256_digest(&tar),
        size: blob.len() as u64,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        compression: Compression::Gzip,
    };
    let config = |n| {
        let c = config_of(n, &layer);
        Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: reg.put_blob("app", &c),
            size: c.len() as u64,
        }
    };
    let push = |tag: &str, config: Descriptor, n: usize| -> Descriptor {
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": vec![layer.descriptor().to_json(); n],
        }))
        .unwrap();
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: reg.put_manifest("app", tag, OCI_MANIFEST, &m),
            size: m.len() as u64,
        }
    };
    let create = |tag: &str| {
        let out = d.path().join(format!("{tag}.clip"));
        let mut cmd = clipctl();
        cmd.arg("create")
            .arg(format!("{}/app:{tag}", reg.host()))
            .arg("--out")
            .arg(&out);
        (cmd, out)
    };
    let create_fails = |tag: &str| {
        let (mut cmd, out) = create(tag);
        let e = fails(&mut cmd);
        assert!(!out.exists());
        e
    };

    let m513 = push("513", config(513), 513);
    let e = create_fails("513");
    assert_has(
        &e,
        &[&format!(
            "manifest {}: 513 layers, more than the limit of 512 (limits::MAX_LAYERS)",
            m513.digest
        )],
    );

    // A config longer than its descriptor claims: refused from its Content-Length.
    let c = config(1);
    push(
        "long-config",
        Descriptor {
            size: c.size - 10,
            ..c.clone()
        },
        1,
    );
    let e = create_fails("long-config");
    assert_has(
        &e,
        &[
            &format!(
                "registry response of {} bytes, more than the limit of {} (the size its descriptor claims)",
                c.size,
                c.size - 10
            ),
            &format!("blob {}", c.digest),
        ],
    );

    // An index naming a manifest it says is 17 MiB: refused before fetching it.
    let one = push("one", c.clone(), 1);
    let idx = index_json(&[Descriptor {
        size: 17 << 20,
        ..one.clone()
    }]);
    reg.put_manifest("app", "huge-child", OCI_INDEX, &idx);
    let e = create_fails("huge-child");
    assert_has(
        &e,
        &[&format!(
            "blob {} ({OCI_MANIFEST}): 17825792 bytes by its descriptor, more than the limit of 16777216 bytes for metadata (limits::MAX_METADATA_BLOB)",
            one.digest
        )],
    );
    assert!(
        !reg.log()
            .contains(&format!("GET /v2/app/manifests/{}", one.digest)),
        "the manifest was fetched:\n{}",
        reg.log()
    );

    // Indexes nested 4 deep resolve; 5 deep do not.
    let mut top = one.clone();
    for depth in 1..=5 {
        let bytes = index_json(std::slice::from_ref(&top));
        top = Descriptor {
            media_type: OCI_INDEX.into(),
            digest: reg.put_manifest("app", &format!("nested{depth}"), OCI_INDEX, &bytes),
            size: bytes.len() as u64,
        };
    }
    ok(&mut create("nested4").0);
    let e = create_fails("nested5");
    assert_has(
        &e,
        &[
            "/app manifest nested5: at least 5 nested indexes, more than the limit of 4 (limits::MAX_INDEX_DEPTH)",
        ],
    );
}

/// The section table entry of section `id` in archive bytes `a`: its offset in `a`.
fn section_entry(a: &[u8], id: u32) -> usize {
    let count = u32::from_le_bytes(a[16..20].try_into().unwrap()) as usize;
    let table = u64::from_le_bytes(a[24..32].try_into().unwrap()) as usize;
    (0..count)
        .map(|i| table + i * 48)
        .find(|&e| u32::from_le_bytes(a[e..e + 4].try_into().unwrap()) == id)
        .expect("section present")
}

/// Sets the raw (uncompressed) length of section `id` and reseals the table
/// checksum, as a hostile writer would.
fn claim_raw_len(a: &mut [u8], id: u32, raw: u64) {
    let e = section_entry(a, id);
    a[e + 24..e + 32].copy_from_slice(&raw.to_le_bytes());
    let count = u32::from_le_bytes(a[16..20].try_into().unwrap()) as usize;
    let table = u64::from_le_bytes(a[24..32].try_into().unwrap()) as usize;
    let sum = blake3::hash(&a[table..table + count * 48]);
    a[32..48].copy_from_slice(&sum.as_bytes()[..16]);
}

#[test]
fn archive_sections_claiming_huge_sizes_or_counts_are_refused_before_inflating() {
    let d = tmp("clip-limits-");
    let layout = d.path().join("layout");
    let mut t = TarBuilder::new();
    for i in 0..100 {
        t.file(format!("dir/file{i}"), format!("content {i}"));
    }
    one_layer(&layout, "v1", &t.finish());
    let good = d.path().join("good.clip");
    index(&layout, "v1", &good);
    let a = std::fs::read(&good).unwrap();
    let stored = |id| {
        let e = section_entry(&a, id);
        u64::from_le_bytes(a[e + 16..e + 24].try_into().unwrap())
    };
    let inspect_fails = |bytes: &[u8], name: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        fails(clipctl().arg("inspect").arg(&p))
    };
    // STRINGS (id 9) claims 2 GiB from a few hundred bytes.
    let mut b = a.clone();
    claim_raw_len(&mut b, 9, 2 << 30);
    let e = inspect_fails(&b, "ratio.clip");
    let s = stored(9);
    assert_has(
        &e,
        &[
            "ratio.clip",
            &format!(
                "section 9 (STRINGS): 2147483648 bytes inflated from {s} stored (a ratio of {}:1), more than the limit of 1000:1 (limits::MAX_RATIO)",
                (2u64 << 30) / s
            ),
        ],
    );
    // INODES (id 6) claims 10,000,002 records: refused by count first.
    let mut b = a.clone();
    claim_raw_len(&mut b, 6, 10_000_002 * 64);
    let e = inspect_fails(&b, "inodes.clip");
    assert_has(
        &e,
        &[
            "section 6 (INODES): 10000002 inodes, more than the limit of 10000001 (limits::MAX_IMAGE_ENTRIES)",
        ],
    );
    let mut b = a.clone();
    claim_raw_len(&mut b, 7, 10_000_001 * 12);
    let e = inspect_fails(&b, "dirents.clip");
    assert_has(
        &e,
        &[
            "section 7 (DIRENTS): 10000001 directory entries, more than the limit of 10000000 (limits::MAX_IMAGE_ENTRIES)",
        ],
    );
    // Over the absolute section limit.
    let mut b = a.clone();
    claim_raw_len(&mut b, 1, 5 << 30);
    let e = inspect_fails(&b, "meta.clip");
    assert_has(
        &e,
        &[
            "section 1 (META): 5368709120 bytes, more than the limit of 4294967296 (archive::reader::MAX_SECTION)",
        ],
    );
}

#[test]
fn archive_trees_and_layers_over_the_limits_are_refused() {
    use clip::tree::{Dirent, Inode, S_IFDIR, Tree};
    let d = tmp("clip-limits-");
    let layout = d.path().join("layout");
    let mut t = TarBuilder::new();
    t.file("f", "x");
    one_layer(&layout, "v1", &t.finish());
    let good = d.path().join("good.clip");
    index(&layout, "v1", &good);
    let base = clip::archive::read(&good).unwrap();
    // A chain of `n` directories named `name`, written by the archive writer.
    let chain = |n: usize, name: &[u8], path: &Path| {
        let dir = |k: usize| Inode {
            mode: S_IFDIR | 0o755,
            nlink: 2,
            parent: k.max(1) as u32,
            a: k as u64,
            b: u32::from(k < n),
            ..Default::default()
        };
        let mut a = base.clone();
        a.tree = Tree {
            inodes: (0..=n).map(dir).collect(),
            dirents: (0..n)
                .map(|k| Dirent {
                    name_off: 0,
                    name_len: name.len() as u32,
                    ino: k as u32 + 2,
                })
                .collect(),
            xattrs: Default::default(),
            strings: name.to_vec(),
        };
        clip::archive::write(&a, path).unwrap();
    };
    let p = d.path().join("deep.clip");
    chain(1025, b"a", &p);
    let e = fails(clipctl().arg("ls").arg(&p).arg("/"));
    assert_has(
        &e,
        &[
            "deep.clip",
            "archive tree: the path to inode 1026 (ending \"/a\"): 1025 components, more than the limit of 1024 (limits::MAX_PATH_DEPTH)",
        ],
    );
    let p = d.path().join("long.clip");
    chain(17, &[b'n'; 255], &p);
    let e = fails(clipctl().arg("inspect").arg(&p));
    assert_has(
        &e,
        &[
            "archive tree: the path to inode 18",
            "4352 bytes, more than the limit of 4096 (limits::MAX_PATH_LEN)",
        ],
    );
    chain(1024, b"a", &d.path().join("ok.clip"));
    ok(clipctl().arg("inspect").arg(d.path().join("ok.clip")));
    // 513 layers (the same record repeated).
    let mut a = base.clone();
    a.layers = vec![base.layers[0].clone(); 513];
    let p = d.path().join("layers.clip");
    clip::archive::write(&a, &p).unwrap();
    let e = fails(clipctl().arg("inspect").arg(&p));
    assert_has(
        &e,
        &["LAYERS section: 513 layers, more than the limit of 512 (limits::MAX_LAYERS)"],
    );
}

#[test]
fn a_goclip_archive_with_a_deep_path_is_refused() {
    let d = tmp("clip-limits-");
    let src = d.path().join("src");
    let deep = src.join("d/".repeat(1100));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f"), "x").unwrap();
    let out = d.path().join("go.clip");
    goclip_v1(&src, &out);
    let e = fails(clipctl().arg("inspect").arg(&out));
    assert_has(
        &e,
        &[
            "go.clip",
            "path: 1025 components, more than the limit of 1024 (limits::MAX_PATH_DEPTH)",
        ],
    );
}
