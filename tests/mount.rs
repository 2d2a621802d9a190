//! FUSE mount tests: the mounted tree equals `umoci unpack` of the same image, 32
//! threads of random reads are byte-exact, a cold read inflates one span and a
//! second touches no source bytes, and the span cache survives SIGKILL and
//! corruption; a mount point left dead by SIGKILL is detached and mounted again; a
//! full cache disk is a pass-through, and so is a cache smaller than one span. They need root and /dev/fuse: without them they fail, never skip.

mod util;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::*;

#[test]
fn mounted_tricky_tree_equals_umoci() {
    let d = tmp("clip-mnt-");
    let layout = d.path().join("layout");
    tricky_layout(&layout, "t");
    let archive = d.path().join("t.clip");
    index(&layout, "t", &archive);
    let m = Mounted::new(
        &archive,
        &layout,
        &d.path().join("mnt"),
        &d.path().join("cache"),
    );
    let theirs = umoci_unpack(&layout, "t", &d.path().join("bundle"));
    assert_same_tree(
        &m.dir,
        &theirs,
        &DiffOptions::labelled("clip mount", "umoci"),
    );
    let errs = check_tricky_tree(&m.dir);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    // Read-only.
    assert!(std::fs::write(m.dir.join("new-file"), "x").is_err());
    m.unmount();
}

#[test]
fn the_tricky_tree_is_the_same_with_each_kernel_capability_off() {
    // Every capability on (the default), then each one off, then all off: the
    // fallback paths of an older kernel stay tested.
    let d = tmp("clip-caps-");
    let layout = d.path().join("layout");
    tricky_layout(&layout, "t");
    let archive = d.path().join("t.clip");
    index(&layout, "t", &archive);
    let theirs = umoci_unpack(&layout, "t", &d.path().join("bundle"));
    let mut settings = vec![""];
    settings.extend(clip::fs::Capabilities::NAMES);
    settings.push("all");
    for off in settings {
        let m = Mounted::with_env(
            &archive,
            &d.path().join(format!("mnt-{off}")),
            &d.path().join("cache"),
            &[OsStr::new("--layout"), layout.as_os_str()],
            &[(clip::fs::DISABLE_ENV, off)],
        );
        // Twice: the second pass is served from what the kernel cached.
        for pass in ["first", "second"] {
            assert_same_tree(
                &m.dir,
                &theirs,
                &DiffOptions::labelled(&format!("clip mount, {off:?} off, {pass} pass"), "umoci"),
            );
            let errs = check_tricky_tree(&m.dir);
            assert!(errs.is_empty(), "{off:?} off: {}", errs.join("\n"));
        }
        assert!(std::fs::write(m.dir.join("new-file"), "x").is_err());
        m.unmount();
    }
}

/// An image with many files of various sizes across two gzip layers.
fn busy_layout(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut lb = LayoutBuilder::new(dir);
    for layer in 0..2u64 {
        let mut t = TarBuilder::new();
        t.dir(format!("l{layer}")).mode(0o755);
        for i in 0..150u64 {
            let size = match i % 5 {
                0 => 0,
                1 => 100 + i as usize,
                2 => 70_000,
                3 => 900_000,
                _ => 3_000_000 + i as usize,
            };
            let data = if i % 2 == 0 {
                pseudo_random_bytes(layer * 1000 + i, size)
            } else {
                compressible_mixed(size)
            };
            let name = format!("l{layer}/f{i}");
            t.file(&name, &data).mode(0o644);
            files.push((name, data));
        }
        lb.add_layer(&t.finish(), Compression::Gzip);
    }
    lb.write_image(Some("busy"));
    files
}

#[test]
fn thirty_two_threads_of_random_reads_are_exact() {
    let d = tmp("clip-mnt-");
    let layout = d.path().join("layout");
    let files = Arc::new(busy_layout(&layout));
    let archive = d.path().join("busy.clip");
    index(&layout, "busy", &archive);
    let m = Mounted::new(
        &archive,
        &layout,
        &d.path().join("mnt"),
        &d.path().join("cache"),
    );
    let root = m.dir.clone();
    let deadline = Instant::now() + Duration::from_secs(6);
    let threads: Vec<_> = (0..32u64)
        .map(|t| {
            let files = files.clone();
            let root = root.clone();
            std::thread::spawn(move || {
                let mut rng = t * 7919 + 1;
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut reads = 0;
                while Instant::now() < deadline {
                    let (name, want) = &files[(next() % files.len() as u64) as usize];
                    let f = std::fs::File::open(root.join(name)).unwrap();
                    let off = if want.is_empty() {
                        0
                    } else {
                        next() % want.len() as u64
                    };
                    let len = (next() % 300_000) as usize;
                    let mut buf = vec![0u8; len];
                    let n = f.read_at(&mut buf, off).unwrap();
                    let end = (off as usize + len).min(want.len());
                    let expect = &want[(off as usize).min(want.len())..end];
                    assert_eq!(n, expect.len(), "{name} at {off}");
                    assert!(buf[..n] == *expect, "{name} at {off}: bytes differ");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let total: u64 = threads
        .into_iter()
        .map(|t| t.join().expect("reader thread"))
        .sum();
    assert!(total > 100, "only {total} reads");
    m.unmount();
}

/// The large-layer fixture: one 120 MiB file plus a small one deep inside the layer.
fn big_layout(dir: &Path) -> Vec<u8> {
    let big = compressible_mixed(120 << 20);
    let mut t = TarBuilder::new();
    t.file("big.bin", &big).mode(0o644);
    t.file("small.txt", "a small file after a big one\n")
        .mode(0o644);
    let tar = t.finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let mut lb = LayoutBuilder::new(dir);
    lb.add_layer_raw(
        &gz.finish().unwrap(),
        &sha256_digest(&tar),
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    lb.write_image(Some("big"));
    big
}

#[test]
fn cold_read_inflates_one_span_and_warm_read_touches_no_source() {
    let d = tmp("clip-mnt-");
    let layout = d.path().join("layout");
    big_layout(&layout);
    let archive = d.path().join("big.clip");
    index(&layout, "big", &archive);
    let cache = d.path().join("cache");
    let m = Mounted::new(&archive, &layout, &d.path().join("mnt"), &cache);
    assert_eq!(
        std::fs::read(m.dir.join("small.txt")).unwrap(),
        b"a small file after a big one\n"
    );
    let s = m.stats();
    assert_eq!(s["spans_decoded"], 1, "{s}");
    assert!(s["bytes_decoded"].as_u64().unwrap() <= 2 << 20, "{s}");
    assert!(
        s["compressed_bytes_read"].as_u64().unwrap() <= 2 << 20,
        "{s}"
    );
    m.unmount();
    // A new mount (a new process, no page cache) with the same cache dir.
    let m = Mounted::new(&archive, &layout, &d.path().join("mnt"), &cache);
    assert_eq!(
        std::fs::read(m.dir.join("small.txt")).unwrap(),
        b"a small file after a big one\n"
    );
    let s = m.stats();
    assert_eq!(s["compressed_bytes_read"], 0, "{s}");
    assert_eq!(s["spans_decoded"], 0, "{s}");
    assert_eq!(s["disk_hits"], 1, "{s}");
    m.unmount();
}

#[test]
fn span_cache_survives_sigkill_and_detects_corruption() {
    let d = tmp("clip-mnt-");
    let layout = d.path().join("layout");
    let files = busy_layout(&layout);
    let archive = d.path().join("busy.clip");
    index(&layout, "busy", &archive);
    let cache = d.path().join("cache");
    let mnt = d.path().join("mnt");
    let m = Mounted::new(&archive, &layout, &mnt, &cache);
    for (name, want) in files.iter().step_by(3) {
        assert!(std::fs::read(m.dir.join(name)).unwrap() == *want, "{name}");
    }
    // SIGKILL the mount process mid-life: the mount goes stale (ENOTCONN) and is
    // left there, as a crashed worker leaves it.
    sigkill_mount(&archive);
    let t = Instant::now();
    let stale = loop {
        match std::fs::read_dir(&m.dir) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => break true,
            _ if t.elapsed() > Duration::from_secs(10) => break false,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert!(stale, "the killed mount did not go stale");
    std::mem::forget(m);
    // Corrupt one cached span file.
    let span_files: Vec<PathBuf> = walk_files(&cache.join("spans"));
    assert!(!span_files.is_empty(), "nothing was cached");
    let victim = &span_files[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(victim, bytes).unwrap();
    // Remount on the dead mount point with the same cache: the stale mount is
    // detached, every byte is still right, the corruption is seen.
    let m = Mounted::new(&archive, &layout, &mnt, &cache);
    let log = std::fs::read_to_string(mnt.with_extension("log")).unwrap_or_default();
    assert!(log.contains("detaching a dead FUSE mount"), "{log}");
    for (name, want) in &files {
        let got = std::fs::read(m.dir.join(name)).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(mnt.with_extension("log")).unwrap_or_default();
            panic!("{name} after kill/corruption: {e}\nmount log:\n{log}")
        });
        assert!(got == *want, "{name} after kill/corruption");
    }
    let s = m.stats();
    // Concurrent first readers of the bad file may each see (and count) it.
    assert!(s["corrupt"].as_u64().unwrap() >= 1, "{s}");
    m.unmount();
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else if !e.file_name().to_string_lossy().starts_with(".tmp-") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Unmounts a tmpfs when dropped.
struct TmpfsGuard(PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_cache_disk_is_a_pass_through_not_an_error() {
    require_fuse();
    let d = tmp("clip-enospc-");
    let layout = d.path().join("layout");
    multi_span_layout(&layout, "m");
    let archive = d.path().join("m.clip");
    index(&layout, "m", &archive);
    // A 3 MiB file system for a cache that would need ~17 MiB, with no free-space
    // floor: span writes hit ENOSPC.
    let cache = d.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs at {}", cache.display());
    let _guard = TmpfsGuard(cache.clone());
    let m = Mounted::with_args(
        &archive,
        &d.path().join("mnt"),
        &cache,
        &[
            std::ffi::OsStr::new("--layout"),
            layout.as_os_str(),
            std::ffi::OsStr::new("--cache-min-free"),
            std::ffi::OsStr::new("0"),
        ],
    );
    let want: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("data/blob{i}"), pseudo_random_bytes(i, 3 << 20)))
        .chain([
            ("data/text".to_string(), compressible_bytes(5 << 20)),
            (
                "etc/motd".to_string(),
                b"hello from the top layer\n".to_vec(),
            ),
        ])
        .collect();
    for round in 0..2 {
        for (name, bytes) in &want {
            let got = std::fs::read(m.dir.join(name))
                .unwrap_or_else(|e| panic!("{name} (round {round}) with the cache disk full: {e}"));
            assert!(got == *bytes, "{name} (round {round}) differs");
        }
        // Drop the page cache of the mount so the second round reads again.
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
    let s = m.stats();
    assert!(s["uncached"].as_u64().unwrap_or(0) >= 1, "{s}");
    m.unmount();
}

#[test]
fn a_cache_smaller_than_a_span_still_serves_every_byte() {
    // A 1-byte cache: every span file written is evicted at once (by the next
    // look at the cache's size, or by its own writer's), often before the reader
    // that fetched it opens it. Readers read the file they wrote, not its path
    // (they reopened it by path: "span N of layer L keeps disappearing from the
    // cache", EIO).
    require_fuse();
    let d = tmp("clip-tiny-cache-");
    let layout = d.path().join("layout");
    multi_span_layout(&layout, "m");
    let archive = d.path().join("m.clip");
    index(&layout, "m", &archive);
    let m = Arc::new(Mounted::with_args(
        &archive,
        &d.path().join("mnt"),
        &d.path().join("cache"),
        &[
            std::ffi::OsStr::new("--layout"),
            layout.as_os_str(),
            std::ffi::OsStr::new("--cache-size"),
            std::ffi::OsStr::new("1"),
        ],
    ));
    let want: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("data/blob{i}"), pseudo_random_bytes(i, 3 << 20)))
        .chain([("data/text".to_string(), compressible_bytes(5 << 20))])
        .collect();
    for round in 0..2 {
        let threads: Vec<_> = want
            .iter()
            .cloned()
            .map(|(name, bytes)| {
                let m = m.clone();
                std::thread::spawn(move || {
                    let f = std::fs::File::open(m.dir.join(&name)).unwrap();
                    // The kernel's cached pages of the file go, so this round
                    // reads through the mount again.
                    use std::os::fd::AsRawFd;
                    // SAFETY: a valid open fd; only clean cached pages are dropped.
                    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                    let mut got = vec![0u8; bytes.len()];
                    f.read_exact_at(&mut got, 0).unwrap_or_else(|e| {
                        panic!("{name} (round {round}) with a 1-byte cache: {e}")
                    });
                    assert!(got == bytes, "{name} (round {round}) differs");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    let s = m.stats();
    assert!(s["evicted"].as_u64().unwrap_or(0) >= 9, "{s}");
    m.unmount();
}
