//! The shared content tier and the span cache's bounds: two machines (two cache
//! directories) sharing one `--remote-cache` bucket on a real S3 server, the
//! second reading nothing from the registry; a dead tier changing nothing but
//! speed; `clipctl prefetch`; and the free-space floor on a small tmpfs.

mod util;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

/// An image in a fresh registry, its archive, and the umoci tree to compare with.
struct Fixture {
    reg: TestRegistry,
    archive: std::path::PathBuf,
    rootfs: std::path::PathBuf,
    d: tempfile::TempDir,
}

fn fixture(prefix: &str) -> Fixture {
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp(prefix);
    let layout = d.path().join("layout");
    multi_span_layout(&layout, "t");
    reg.push(&layout, "t", "app:v1");
    let archive = d.path().join("a.clip");
    ok(clipctl()
        .arg("create")
        .arg(format!("{}/app:v1", reg.host()))
        .arg("--out")
        .arg(&archive));
    let rootfs = umoci_unpack(&layout, "t", &d.path().join("bundle"));
    Fixture {
        reg,
        archive,
        rootfs,
        d,
    }
}

/// Requests the registry has answered so far, from its access log.
fn registry_requests(reg: &TestRegistry) -> usize {
    reg.log().matches("response completed").count()
}

fn s3_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ("AWS_REGION", S3_REGION),
    ]
}

fn remote_cache_args(endpoint: &str, url: &str) -> Vec<std::ffi::OsString> {
    [
        "--remote-cache",
        url,
        "--endpoint",
        endpoint,
        "--path-style",
    ]
    .iter()
    .map(Into::into)
    .collect()
}

fn os(v: &[std::ffi::OsString]) -> Vec<&OsStr> {
    v.iter().map(|s| s.as_os_str()).collect()
}

/// Polls the mount's counters until `f` holds (at most `secs`).
fn wait_stats(m: &Mounted, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let st = m.stats();
        if f(&st) || t.elapsed() > Duration::from_secs(secs) {
            return st;
        }
    }
}

#[test]
fn two_machines_share_one_remote_cache_and_the_second_reads_no_registry_bytes() {
    let f = fixture("clip-tier-s3-");
    let s3 = S3Server::start();
    s3.create_bucket("fleet");
    let args = remote_cache_args(&s3.endpoint(), "s3://fleet/clip-cache");
    let env = s3_env();

    // Machine 1: a cold tier; every read goes to the registry, and the touched
    // layers are stored into the bucket in the background.
    let m1 = Mounted::with_env(
        &f.archive,
        &f.d.path().join("mnt1"),
        &f.d.path().join("cache1"),
        &os(&args),
        &env,
    );
    assert_same_tree(
        &m1.dir,
        &f.rootfs,
        &DiffOptions::labelled("machine 1", "umoci"),
    );
    let st = wait_stats(&m1, 60, |s| s["tier_stores"] == 2);
    assert_eq!(
        st["tier_stores"], 2,
        "both layers stored into the tier: {st}"
    );
    assert!(st["registry_requests"].as_u64().unwrap() > 0, "{st}");
    m1.unmount();
    let a = clip::archive::read(&f.archive).unwrap();
    for l in &a.layers {
        let object = s3.root().join("fleet/clip-cache").join(l.diff_id.hex());
        assert_eq!(
            std::fs::metadata(&object).map(|m| m.len()).ok(),
            Some(l.codec.uncompressed_size),
            "the tier holds layer {} uncompressed under its diff id",
            l.digest
        );
    }

    // Machine 2: a fresh span cache, the same bucket: nothing from the registry.
    let before = registry_requests(&f.reg);
    let m2 = Mounted::with_env(
        &f.archive,
        &f.d.path().join("mnt2"),
        &f.d.path().join("cache2"),
        &os(&args),
        &env,
    );
    assert_same_tree(
        &m2.dir,
        &f.rootfs,
        &DiffOptions::labelled("machine 2", "umoci"),
    );
    let st = m2.stats();
    assert_eq!(registry_requests(&f.reg), before, "registry log: {st}");
    assert_eq!(st["registry_bytes"], 0, "{st}");
    assert_eq!(st["compressed_bytes_read"], 0, "{st}");
    assert!(st["tier_hits"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["tier_stores"], 0, "{st}");
    m2.unmount();
}

#[test]
fn a_dead_remote_cache_changes_nothing_but_speed() {
    let f = fixture("clip-tier-dead-");
    // Nothing listens there: every tier call fails fast and the tier cools down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = remote_cache_args(&format!("http://127.0.0.1:{port}"), "s3://none/x");
    let t = Instant::now();
    let m = Mounted::with_env(
        &f.archive,
        &f.d.path().join("mnt"),
        &f.d.path().join("cache"),
        &os(&args),
        &s3_env(),
    );
    assert_same_tree(
        &m.dir,
        &f.rootfs,
        &DiffOptions::labelled("dead tier", "umoci"),
    );
    let took = t.elapsed();
    let st = m.stats();
    assert!(st["tier_errors"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["tier_hits"], 0, "{st}");
    assert!(took < Duration::from_secs(30), "reading took {took:?}");
    m.unmount();
}

#[test]
fn prefetch_fills_the_cache_so_a_mount_reads_nothing_from_the_registry() {
    let f = fixture("clip-tier-prefetch-");
    let cache = f.d.path().join("cache");
    let out = ok(clipctl()
        .arg("prefetch")
        .arg(&f.archive)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--concurrency", "3"]));
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("prefetch:"))
        .collect();
    assert_eq!(
        lines.first(),
        Some(&"prefetch: 0/2 layers, 0 bytes"),
        "{text}"
    );
    assert!(
        lines.len() == 3 && lines[2].starts_with("prefetch: 2/2 layers"),
        "{text}"
    );
    // Prefetching again fetches nothing.
    let out = ok(clipctl()
        .arg("prefetch")
        .arg(&f.archive)
        .arg("--cache-dir")
        .arg(&cache));
    let st: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap()).unwrap();
    assert_eq!(st["registry_requests"], 0, "{st}");
    assert_eq!(st["fetches"], 0, "{st}");

    let before = registry_requests(&f.reg);
    let m = Mounted::with_args(&f.archive, &f.d.path().join("mnt"), &cache, &[]);
    assert_same_tree(
        &m.dir,
        &f.rootfs,
        &DiffOptions::labelled("prefetched", "umoci"),
    );
    let st = m.stats();
    assert_eq!(st["compressed_bytes_read"], 0, "{st}");
    assert_eq!(registry_requests(&f.reg), before, "{st}");
    m.unmount();
}

#[test]
fn prefetch_through_a_remote_cache_warms_it_for_the_next_machine() {
    let f = fixture("clip-tier-prefetch-s3-");
    let s3 = S3Server::start();
    s3.create_bucket("fleet");
    let args = remote_cache_args(&s3.endpoint(), "s3://fleet/p");
    let mut c = clipctl();
    c.envs(s3_env());
    ok(c.arg("prefetch")
        .arg(&f.archive)
        .arg("--cache-dir")
        .arg(f.d.path().join("cache1"))
        .args(&args));
    let before = registry_requests(&f.reg);
    let mut c = clipctl();
    c.envs(s3_env());
    let out = ok(c
        .arg("prefetch")
        .arg(&f.archive)
        .arg("--cache-dir")
        .arg(f.d.path().join("cache2"))
        .args(&args));
    let st: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap()).unwrap();
    assert_eq!(registry_requests(&f.reg), before, "{st}");
    assert!(st["tier_hits"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["compressed_bytes_read"], 0, "{st}");
}

/// A tmpfs of `mib` MiB at a new directory under `dir` (unmounted on drop).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(dir: &Path, mib: u64) -> Tmpfs {
        let p = dir.join("small-fs");
        std::fs::create_dir_all(&p).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m"))
            .arg("tmpfs")
            .arg(&p)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (the tests run as root)"
        );
        Tmpfs(p)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn the_span_cache_keeps_its_free_space_floor() {
    let f = fixture("clip-tier-floor-");
    let fs = Tmpfs::new(f.d.path(), 24);
    // A floor of 20 MiB on a 24 MiB file system: at most ~4 MiB of spans may be
    // written; the image has ~14 MiB of them. Every byte is still served.
    let m = Mounted::with_args(
        &f.archive,
        &f.d.path().join("mnt"),
        &fs.0.join("cache"),
        &[OsStr::new("--cache-min-free"), OsStr::new("20MiB")],
    );
    assert_same_tree(&m.dir, &f.rootfs, &DiffOptions::labelled("floor", "umoci"));
    let st = m.stats();
    assert!(st["uncached"].as_u64().unwrap() > 0, "{st}");
    let used: u64 = walk_sizes(&fs.0);
    assert!(
        used <= 6 << 20,
        "{used} bytes cached on a 24 MiB fs with a 20 MiB floor"
    );
    m.unmount();
}

fn walk_sizes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            walk_sizes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

#[test]
fn create_reads_layer_blobs_from_the_remote_cache_and_warms_it() {
    let f = fixture("clip-tier-create-");
    let s3 = S3Server::start();
    s3.create_bucket("fleet");
    let image = format!("{}/app:v1", f.reg.host());
    let create = |out: &Path| {
        let mut c = clipctl();
        c.envs(s3_env());
        let o = ok(c
            .arg("create")
            .arg(&image)
            .arg("--out")
            .arg(out)
            .arg("--progress")
            .args(remote_cache_args(&s3.endpoint(), "s3://fleet/blobs")));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // First: from the registry; the blobs are stored into the tier.
    let a1 = f.d.path().join("a1.clip");
    let log1 = create(&a1);
    assert!(
        log1.contains("completed") && log1.contains("(from registry)"),
        "{log1}"
    );
    let a = clip::archive::read(&a1).unwrap();
    for l in &a.layers {
        let object = s3.root().join("fleet/blobs").join(l.digest.hex());
        assert_eq!(
            std::fs::read(&object)
                .ok()
                .map(|b| clip::digest::Digest::of(&b)),
            Some(l.digest),
            "blob {} stored in the tier under its digest's hex",
            l.digest
        );
    }
    // Second: the blobs come from the tier (the registry serves manifest and
    // config only), and the archive is the same.
    let before = f.reg.log();
    let a2 = f.d.path().join("a2.clip");
    let log2 = create(&a2);
    assert_eq!(log2.matches("completed").count(), 2, "{log2}");
    assert_eq!(log2.matches("(from content-cache)").count(), 4, "{log2}");
    let after = f.reg.log();
    let new_log = &after[before.len()..];
    assert!(
        new_log.contains("/manifests/"),
        "the registry log names requests:\n{new_log}"
    );
    for l in &a.layers {
        assert!(
            !new_log.contains(&l.digest.to_string()),
            "layer blob {} fetched from the registry on the second create:\n{new_log}",
            l.digest
        );
    }
    assert_eq!(std::fs::read(&a1).unwrap(), std::fs::read(&a2).unwrap());
    // A corrupt blob in the tier fails its digest check: the registry serves it.
    let l0 = &a.layers[0];
    let object = s3.root().join("fleet/blobs").join(l0.digest.hex());
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&object, &bytes).unwrap();
    let a3 = f.d.path().join("a3.clip");
    let log3 = create(&a3);
    assert!(log3.contains("reading the layer from its source"), "{log3}");
    assert_eq!(std::fs::read(&a1).unwrap(), std::fs::read(&a3).unwrap());
    // ...and is stored again, whole.
    assert_eq!(
        clip::digest::Digest::of(&std::fs::read(&object).unwrap()),
        l0.digest
    );
}
