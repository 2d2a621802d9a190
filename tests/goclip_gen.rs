//! Smoke tests of `tests/goclip-gen`: the original Go clip (the version beta9
//! pins) writes a v1 archive of the tricky tree, an `.rclip` with the full
//! archive on S3 (versitygw), and a v2 index of the tricky image (all layers
//! gzip) from the test registry; its own `ExtractMetadata` reads them back with
//! sensible fields.

mod util;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::Value;
use util::*;

/// CRC-64/ISO as Go's `hash/crc64` with `crc64.ISO` computes it.
fn crc64_iso(data: &[u8]) -> u64 {
    const POLY: u64 = 0xD800_0000_0000_0000;
    let mut crc = !0u64;
    for &b in data {
        crc ^= b as u64;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn nodes(meta: &Value) -> &Vec<Value> {
    meta["nodes"].as_array().expect("nodes array")
}

/// Every regular file of `src` is a "file" node whose data is in `archive` at
/// DataPos (a 0 block-type byte before it, the big-endian CRC-64/ISO of the data
/// after it) with ContentHash its sha256; returns how many were checked.
fn check_v1_data(meta: &Value, src: &Path, archive: &Path) -> usize {
    let data = fs::File::open(archive).expect("open archive");
    let mut checked = 0;
    for n in nodes(meta) {
        if n["NodeType"] != "file" {
            continue;
        }
        let raw = goclip_node_path(n);
        let path = Path::new(&raw);
        let want = fs::read(src.join(path.strip_prefix("/").unwrap()))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let path = path.display();
        let pos = n["DataPos"].as_u64().unwrap();
        let len = n["DataLen"].as_u64().unwrap();
        assert_eq!(len, want.len() as u64, "{path}: {n}");
        assert_eq!(n["Size"].as_u64().unwrap(), len, "{path}: {n}");
        assert_eq!(n["ContentHash"], sha256_hex(&want), "{path}: {n}");
        let mut block = vec![0u8; len as usize + 9];
        data.read_exact_at(&mut block, pos - 1)
            .unwrap_or_else(|e| panic!("{path}: reading the block at {}: {e}", pos - 1));
        assert_eq!(block[0], 0, "{path}: block type");
        assert_eq!(&block[1..1 + len as usize], &want[..], "{path}: data");
        let crc = u64::from_be_bytes(block[1 + len as usize..].try_into().unwrap());
        assert_eq!(crc, crc64_iso(&want), "{path}: checksum");
        checked += 1;
    }
    checked
}

#[test]
fn v1_of_the_tricky_tree() {
    let d = tmp("clip-goclip-v1-");
    let src = tricky_rootfs_for_go(d.path());
    let archive = d.path().join("t.clip");
    goclip_v1(&src, &archive);
    let meta = goclip_meta(&archive);
    assert_eq!(meta["storage_type"], "", "{meta}");
    assert!(meta["storage"].is_null(), "{meta}");
    assert_eq!(meta["header"]["StartBytes"], "89434c49500d0a1a0a");
    assert_eq!(meta["header"]["ClipFileFormatVersion"], 1);
    assert_eq!(meta["header"]["StorageInfoLength"], 0);
    let root = goclip_node(&meta, "/").expect("root node");
    assert_eq!(root["NodeType"], "dir");
    assert!(nodes(&meta).iter().any(|n| n["NodeType"] == "symlink"));
    let checked = check_v1_data(&meta, &src, &archive);
    assert!(checked > 3, "only {checked} files");
}

#[test]
fn rclip_of_the_tricky_tree_on_s3() {
    let d = tmp("clip-goclip-rclip-");
    let src = tricky_rootfs_for_go(d.path());
    let s3 = S3Server::start();
    s3.create_bucket("images");
    let rclip = d.path().join("t.rclip");
    goclip_rclip(&src, &rclip, &s3, "images", "tricky/t.clip");
    let meta = goclip_meta(&rclip);
    assert_eq!(meta["storage_type"], "s3", "{meta}");
    let st = &meta["storage"];
    assert_eq!(st["Bucket"], "images", "{st}");
    assert_eq!(st["Key"], "tricky/t.clip", "{st}");
    assert_eq!(st["Endpoint"], s3.endpoint(), "{st}");
    assert_eq!(st["Region"], s3.region(), "{st}");
    assert_eq!(st["ForcePathStyle"], true, "{st}");
    assert_eq!(meta["header"]["StorageInfoType"], "s3");
    // The uploaded object is the full v1 archive the .rclip's offsets point into.
    let full = s3.root().join("images/tricky/t.clip");
    assert!(full.is_file(), "no object at {}", full.display());
    let full_meta = goclip_meta(&full);
    assert_eq!(full_meta["storage_type"], "", "{full_meta}");
    assert_eq!(full_meta["nodes"], meta["nodes"]);
    let checked = check_v1_data(&meta, &src, &full);
    assert!(checked > 3, "only {checked} files");
}

#[test]
fn v2_of_the_tricky_image_from_the_registry() {
    let d = tmp("clip-goclip-v2-");
    let layout = d.path().join("layout");
    let info = tricky_gzip_layout(&layout, "t");
    let reg = TestRegistry::start(RegistryAuth::None);
    let digest = reg.push(&layout, "t", "tricky:v1");
    let archive = d.path().join("t.clip");
    goclip_v2(&format!("{}/tricky:v1", reg.host()), &archive);
    let meta = goclip_meta(&archive);
    assert_eq!(meta["storage_type"], "oci", "{meta}");
    let st = &meta["storage"];
    assert_eq!(st["RegistryURL"], reg.host(), "{st}");
    assert_eq!(st["Repository"], "tricky", "{st}");
    assert_eq!(st["Reference"], digest, "{st}");
    let layers: Vec<&str> = st["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let want: Vec<&str> = info.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, want, "{st}");
    for l in &info.layers {
        let h = &st["DecompressedHashByLayer"][&l.digest];
        assert_eq!(
            h.as_str().map(|h| format!("sha256:{h}")),
            Some(l.diff_id.clone()),
            "{st}"
        );
        let idx = &st["GzipIdxByLayer"][&l.digest];
        assert_eq!(idx["LayerDigest"], l.digest.as_str(), "{idx}");
        assert!(!idx["Checkpoints"].as_array().unwrap().is_empty(), "{idx}");
    }
    let im = &st["ImageMetadata"];
    assert!(
        im["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "CLIP_TEST=tricky"),
        "{im}"
    );
    assert_eq!(im["Digest"], digest, "{im}");
    // Files point into the layers.
    let files: Vec<&Value> = nodes(&meta)
        .iter()
        .filter(|n| n["NodeType"] == "file")
        .collect();
    assert!(!files.is_empty());
    for f in files {
        let r = &f["Remote"];
        assert!(
            layers.contains(&r["LayerDigest"].as_str().unwrap_or("")),
            "{f}"
        );
        assert_eq!(r["ULength"].as_u64(), f["Size"].as_u64(), "{f}");
    }
    // From the layout directly: the same index.
    let from_layout = d.path().join("l.clip");
    goclip_v2_layout(&format!("{}/tricky:v1", reg.host()), &layout, &from_layout);
    assert_eq!(goclip_meta(&from_layout)["nodes"], meta["nodes"]);
}
