//! Archives written by the original Go clip (the version beta9 pins, built from
//! tests/goclip-gen at test time) are read and served: `clipctl inspect`, `ls`,
//! `cat`, `extract` and a FUSE mount of a v1 `.clip` of the tricky tree, of a
//! `.rclip` whose full archive is on the S3 test server, and of a v2 index of the
//! tricky image in the test registry; corrupt and truncated ones fail clearly,
//! without a panic or a hang.

mod util;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use util::*;

/// Compares a tree served from a Go-clip v1 archive with its source, in what the
/// Go clip keeps: types, contents, symlink targets, owners, mtimes and `mode &
/// 0777` (it drops setuid/setgid/sticky, xattrs and devices, and stores each hard
/// link as a file of its own).
fn assert_same_as_go_kept(ours: &Path, src: &Path, label: &str) {
    let devices: Vec<Vec<u8>> = scan_tree(src)
        .into_iter()
        .filter(|(_, e)| matches!(e.kind, FileKind::CharDevice | FileKind::BlockDevice))
        .map(|(p, _)| p)
        .collect();
    let opts = DiffOptions {
        compare_mode: false,
        compare_xattrs: false,
        compare_hardlinks: false,
        ignore_paths: devices,
        ..DiffOptions::labelled(label, "source")
    };
    assert_same_tree(ours, src, &opts);
    let (a, b) = (scan_tree(ours), scan_tree(src));
    let mut bad = Vec::new();
    for (p, e) in &a {
        if let Some(s) = b.get(p)
            && e.kind != FileKind::Symlink
            && e.perm != s.perm & 0o777
        {
            bad.push(format!(
                "{}: mode {:o}, source {:o}",
                show_path(p),
                e.perm,
                s.perm
            ));
        }
    }
    assert!(bad.is_empty(), "{label}:\n{}", bad.join("\n"));
}

/// `v` without nulls and empty objects (how Go renders a nil or empty map depends
/// on JSON tags gob does not carry).
fn without_empty(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::Object(m) => J::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null() && x.as_object().is_none_or(|o| !o.is_empty()))
                .map(|(k, x)| (k.clone(), without_empty(x)))
                .collect(),
        ),
        J::Array(a) => J::Array(a.iter().map(without_empty).collect()),
        x => x.clone(),
    }
}

fn inspect_json(archive: &Path) -> serde_json::Value {
    let o = ok(clipctl().arg("inspect").arg("--json").arg(archive));
    serde_json::from_slice(&o.stdout).expect("inspect --json")
}

#[test]
fn v1_archive_of_the_go_clip_is_served() {
    require_fuse();
    let d = tmp("clip-goclip-v1-");
    let src = tricky_rootfs_for_go(d.path());
    let archive = d.path().join("t.clip");
    goclip_v1(&src, &archive);

    let meta = goclip_meta(&archive);
    let info = inspect_json(&archive);
    assert_eq!(info["storage_type"], "local", "{info}");
    assert_eq!(
        info["goclip"]["storage_type"], meta["storage_type"],
        "{info}"
    );
    assert!(info["goclip"]["storage"].is_null(), "{info}");
    assert_eq!(info["inodes"], meta["nodes"].as_array().unwrap().len());

    let o = ok(clipctl().arg("ls").arg(&archive).arg("/").arg("-R"));
    assert!(!o.stdout.is_empty());
    let out = d.path().join("out");
    ok(clipctl()
        .env("CLIP_CACHE_DIR", d.path().join("cache-x"))
        .arg("extract")
        .arg(&archive)
        .arg(&out));
    assert_same_as_go_kept(&out, &src, "extract of a Go-clip v1");

    let cache = d.path().join("cache");
    let m = Mounted::with_args(&archive, &d.path().join("mnt"), &cache, &[]);
    assert_same_as_go_kept(&m.dir, &src, "mount of a Go-clip v1");
    m.unmount();
    // The verified span index is kept: the next mount skips the pass, and serves
    // the same.
    let kept = |ext: &str| {
        fs::read_dir(cache.join("goclip"))
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(kept("verified"), 1);
    let m = Mounted::with_args(&archive, &d.path().join("mnt2"), &cache, &[]);
    assert_same_as_go_kept(&m.dir, &src, "second mount of a Go-clip v1");
    m.unmount();
    assert_eq!(kept("verified"), 1);
    // A changed data byte: verified again (the file's change time moved), refused.
    let mut b = fs::read(&archive).unwrap();
    let meta = goclip_meta(&archive);
    let f = meta["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["NodeType"] == "file" && n["Size"].as_u64() > Some(0))
        .expect("a file")
        .clone();
    b[f["DataPos"].as_u64().unwrap() as usize] ^= 0x20;
    fs::write(&archive, &b).unwrap();
    let err = fails(
        clipctl()
            .arg("cat")
            .arg(&archive)
            .arg(goclip_node_path(&f))
            .env("CLIP_CACHE_DIR", &cache),
    );
    assert!(err.contains("ContentHash"), "{err}");
}

#[test]
fn rclip_of_the_go_clip_is_served_from_s3() {
    require_fuse();
    let d = tmp("clip-goclip-rclip-");
    let src = tricky_rootfs_for_go(d.path());
    let s3 = S3Server::start();
    s3.create_bucket("images");
    let rclip = d.path().join("t.rclip");
    goclip_rclip(&src, &rclip, &s3, "images", "tricky/t.clip");

    let info = inspect_json(&rclip);
    assert_eq!(info["storage_type"], "s3", "{info}");
    let st = &info["goclip"]["storage"];
    assert_eq!(*st, goclip_meta(&rclip)["storage"], "{info}");
    assert_eq!(info["s3"]["bucket"], "images");
    assert_eq!(info["s3"]["key"], "tricky/t.clip");

    let env = [
        ("AWS_ACCESS_KEY_ID", s3.access_key()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key()),
        ("AWS_REGION", s3.region()),
    ];
    let cache = d.path().join("cache");
    let gets0 = s3.gets();
    let m = Mounted::with_env(&rclip, &d.path().join("mnt"), &cache, &[], &env);
    assert_same_as_go_kept(&m.dir, &src, "mount of a Go-clip .rclip");
    m.unmount();
    let gets = s3.gets() - gets0;
    // The full archive is downloaded once, into the cache dir, and reused.
    let kept: Vec<_> = fs::read_dir(cache.join("goclip"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "data"))
        .collect();
    assert_eq!(kept.len(), 1, "one downloaded archive");
    let m = Mounted::with_env(&rclip, &d.path().join("mnt2"), &cache, &[], &env);
    assert_same_as_go_kept(&m.dir, &src, "second mount of a Go-clip .rclip");
    m.unmount();
    assert_eq!(
        s3.gets() - gets0,
        gets,
        "the second mount reads nothing from S3"
    );

    // StorageModeOverride == local: the data from a local copy of the full archive.
    let full = d.path().join("full.clip");
    fs::copy(s3.root().join("images/tricky/t.clip"), &full).unwrap();
    let out = d.path().join("out");
    let mut cmd = clipctl();
    cmd.env("CLIP_CACHE_DIR", d.path().join("cache-x"))
        .arg("extract")
        .arg(&rclip)
        .arg(&out)
        .arg("--data-archive")
        .arg(&full);
    for (k, v) in env {
        cmd.env(k, v);
    }
    ok(&mut cmd);
    assert_same_as_go_kept(
        &out,
        &src,
        "extract of a Go-clip .rclip with its full archive",
    );
}

#[test]
fn v2_archive_of_the_go_clip_is_indexed_again_and_served() {
    require_fuse();
    let d = tmp("clip-goclip-v2-");
    let layout = d.path().join("layout");
    let image = tricky_gzip_layout(&layout, "t");
    let reg = TestRegistry::start(RegistryAuth::None);
    let digest = reg.push(&layout, "t", "tricky:v1");
    let archive = d.path().join("t.clip");
    goclip_v2(&format!("{}/tricky:v1", reg.host()), &archive);

    let meta = goclip_meta(&archive);
    let info = inspect_json(&archive);
    assert_eq!(info["storage_type"], "oci", "{info}");
    // Equal up to Go's JSON rendering of empty maps (nil, `{}`, left out).
    assert_eq!(
        without_empty(&info["goclip"]["storage"]),
        without_empty(&meta["storage"]),
        "{info}"
    );
    assert_eq!(info["registry"], reg.host());
    assert_eq!(info["repository"], "tricky");
    assert_eq!(info["reference"], digest);
    let layers: Vec<String> = info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layers, want);

    // The Go clip's own tree (ls) names every path the image has.
    let o = ok(clipctl().arg("ls").arg(&archive).arg("/").arg("-R"));
    assert!(!o.stdout.is_empty());

    // Served from the registry: the image indexed again, so the tree is the
    // image's, with nothing the Go clip dropped (setuid, devices, xattrs).
    let theirs = umoci_unpack(&layout, "t", &d.path().join("bundle"));
    let cache = d.path().join("cache");
    let t0 = Instant::now();
    let m = Mounted::with_args(&archive, &d.path().join("mnt"), &cache, &[]);
    let first = t0.elapsed();
    assert_same_tree(
        &m.dir,
        &theirs,
        &DiffOptions::labelled("mount of a Go-clip v2", "umoci"),
    );
    let errs = check_tricky_tree(&m.dir);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    m.unmount();
    let t0 = Instant::now();
    let m = Mounted::with_args(&archive, &d.path().join("mnt2"), &cache, &[]);
    let second = t0.elapsed();
    m.unmount();
    eprintln!("Go-clip v2 mount: first {first:?} (indexes the image), second {second:?}");
    let converted: Vec<_> = fs::read_dir(cache.join("goclip"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "clip"))
        .collect();
    assert_eq!(converted.len(), 1, "one conversion, reused");

    // extract (default cache dir: keep it inside the test dir).
    let out = d.path().join("out");
    ok(clipctl()
        .env("CLIP_CACHE_DIR", d.path().join("cache2"))
        .arg("extract")
        .arg(&archive)
        .arg(&out));
    assert_same_tree(
        &out,
        &theirs,
        &DiffOptions::labelled("extract of a Go-clip v2", "umoci"),
    );
}

/// Runs `clipctl` with a deadline: a hang is a failure.
fn run_bounded(cmd: &mut std::process::Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn clipctl");
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("clipctl hung on a corrupt archive: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn corrupt_and_truncated_go_clip_archives_fail_clearly() {
    let d = tmp("clip-goclip-bad-");
    let src = d.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("a.txt"), b"hello\n").unwrap();
    fs::write(src.join("dir/big"), pseudo_random_bytes(7, 3 << 20)).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    let archive = d.path().join("t.clip");
    goclip_v1(&src, &archive);
    let good = fs::read(&archive).unwrap();
    let index_pos = u64::from_le_bytes(good[18..26].try_into().unwrap()) as usize;
    assert!(index_pos < good.len());

    let bad = d.path().join("bad.clip");
    let check = |bytes: &[u8], what: &str| -> String {
        fs::write(&bad, bytes).unwrap();
        let o = run_bounded(clipctl().arg("inspect").arg(&bad));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_ne!(o.status.code(), Some(101), "{what}: panic: {err}");
        err
    };
    // Truncated anywhere: an error naming the file.
    let mut cuts: Vec<usize> = (0..60).collect();
    cuts.extend([index_pos - 1, index_pos, index_pos + 1, good.len() - 1]);
    cuts.extend((index_pos..good.len()).step_by(((good.len() - index_pos) / 40).max(1)));
    for n in cuts {
        let o = run_bounded(clipctl().arg("inspect").arg({
            fs::write(&bad, &good[..n]).unwrap();
            &bad
        }));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "truncated to {n} bytes: accepted");
        assert_ne!(o.status.code(), Some(101), "truncated to {n}: panic: {err}");
        assert!(err.contains("bad.clip"), "truncated to {n}: {err}");
    }
    // Every byte of the index flipped in turn (a sample): never a panic or hang;
    // errors name the file.
    let step = ((good.len() - index_pos) / 200).max(1);
    for i in (index_pos..good.len()).step_by(step) {
        for x in [0x01u8, 0x80, 0xff] {
            let mut b = good.clone();
            b[i] ^= x;
            let err = check(&b, &format!("byte {i} ^ {x:#x}"));
            if !err.is_empty() {
                assert!(err.contains("bad.clip"), "byte {i}: {err}");
            }
        }
    }
    // A wrong version byte is a version error.
    let mut b = good.clone();
    b[9] = 2;
    let err = check(&b, "version 2");
    assert!(err.contains("version"), "{err}");

    // Changed file data: the mount refuses the archive at open, naming the file.
    let mut b = good.clone();
    let meta = goclip_meta(&archive);
    let big = goclip_node(&meta, "/dir/big").expect("node");
    let pos = big["DataPos"].as_u64().unwrap() as usize;
    b[pos + 1000] ^= 0x55;
    fs::write(&bad, &b).unwrap();
    let o = run_bounded(
        clipctl()
            .env("CLIP_CACHE_DIR", d.path().join("cache-x"))
            .arg("cat")
            .arg(&bad)
            .arg("/a.txt"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("/dir/big") && err.contains("ContentHash"),
        "{err}"
    );
}

#[test]
fn random_mutations_of_a_go_clip_archive_never_panic() {
    let d = tmp("clip-goclip-fuzz-");
    let src = d.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/one"), b"1").unwrap();
    fs::write(src.join("a/b/two"), pseudo_random_bytes(3, 70_000)).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("a/one", src.join("l")).unwrap();
    let archive = d.path().join("t.clip");
    goclip_v1(&src, &archive);
    let good = fs::read(&archive).unwrap();
    let index_pos = u64::from_le_bytes(good[18..26].try_into().unwrap()) as usize;
    let opts = clip::image::SourceOptions {
        goclip_dir: Some(d.path().join("conv")),
        ..Default::default()
    };
    let bad = d.path().join("m.clip");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            // Mostly the header and the index, where the decoder works.
            let r = next() as usize;
            let i = match r % 4 {
                0 => r / 4 % 54,
                1 => r / 4 % good.len(),
                _ => index_pos + r / 4 % (good.len() - index_pos),
            };
            b[i] = match next() % 3 {
                0 => b[i] ^ (1 << (next() % 8)),
                1 => next() as u8,
                _ => [0, 0x7f, 0x80, 0xff][next() as usize % 4],
            };
        }
        if next() % 8 == 0 {
            b.truncate(next() as usize % b.len());
        }
        fs::write(&bad, &b).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            clip::goclip::read(&bad)
                .and_then(|g| g.tree().map(|_| ()))
                .and_then(|_| clip::image::Image::open(&bad, &opts).map(|_| ()))
        }));
        match r {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(e)) => {
                assert!(
                    e.to_string().contains("m.clip"),
                    "an error not naming the archive: {e}"
                );
                refused += 1
            }
            Err(_) => panic!("a panic on a mutated archive (saved at {})", bad.display()),
        }
    }
    eprintln!("{accepted} mutated archives accepted (their bytes verified), {refused} refused");
    assert!(refused > 16_000, "only {refused} of 20000 refused");
}
