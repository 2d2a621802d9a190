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
/// A scratch directory holding [`busy_layout`]'s `layout` and its archive
/// `busy.clip`: the directory, the layout, its files and the archive.
fn busy_archive(prefix: &str) -> (tempfile::TempDir, PathBuf, Vec<(String, Vec<u8>)>, PathBuf) {
    let d = tmp(prefix);
    let layout = d.path().join("layout");
    let files = busy_layout(&layout);
    let archive = d.path().join("busy.clip");
    index(&layout, "busy", &archive);
    (d, layout, files, archive)
}

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
    let (d, layout, files, archive) = busy_archive("clip-mnt-");
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

/// Waits (at most 60 s) until the mount's startup profile replay is done; its
/// counters then.
fn replay_done(m: &Mounted) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let s = m.stats();
        if s["replay_left"] == 0 || t.elapsed() > Duration::from_secs(60) {
            assert_eq!(s["replay_left"], 0, "the replay did not finish: {s}");
            return s;
        }
    }
}

/// Waits (at most 10 s) for the file a mount daemon writes as it ends.
fn wait_for_file(p: &Path) -> Vec<u8> {
    let t = Instant::now();
    while !p.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_recorded_profile_replayed_on_a_fresh_cache_fetches_the_workloads_spans_first() {
    let (d, layout, files, archive) = busy_archive("clip-prof-");
    let lay = [OsStr::new("--layout"), layout.as_os_str()];
    let workload: Vec<&(String, Vec<u8>)> = files.iter().step_by(7).collect();
    let run = |m: &Mounted| {
        for (name, want) in &workload {
            let got = std::fs::read(m.dir.join(name)).unwrap_or_else(|e| {
                let log = std::fs::read_to_string(m.dir.with_extension("log"));
                panic!("{name}: {e}; {}; mount log: {log:?}", m.stats())
            });
            assert!(got == *want, "{name}");
        }
    };

    // Record on a fresh cache.
    let profile = d.path().join("start.profile.json");
    let mut args = lay.to_vec();
    args.extend([OsStr::new("--record"), profile.as_os_str()]);
    let m = Mounted::with_args(&archive, &d.path().join("mnt"), &d.path().join("c1"), &args);
    run(&m);
    let recorded = m.stats();
    m.unmount();
    let p: serde_json::Value = serde_json::from_slice(&wait_for_file(&profile)).unwrap();
    assert_eq!(p["clip_profile"], 1, "{p}");
    let n = p["spans"].as_array().unwrap().len() as u64;
    assert!(n >= 10, "only {n} spans recorded: {p}");
    // Every span the workload read, and only those (read-ahead is not in it).
    assert!(n <= recorded["fetches"].as_u64().unwrap(), "{recorded} {p}");
    let at: Vec<u64> = p["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["at_ms"].as_u64().unwrap())
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "not in read order: {at:?}"
    );

    // Replayed on a fresh cache: every recorded span is fetched before the
    // workload runs, so that the layer source can go and the same workload still
    // reads every byte (from the spans the replay cached).
    let mut args = lay.to_vec();
    args.extend([OsStr::new("--prefetch"), profile.as_os_str()]);
    let m = Mounted::with_args(&archive, &d.path().join("mnt"), &d.path().join("c2"), &args);
    let before = replay_done(&m);
    assert_eq!(before["replayed"], n, "{before}");
    assert_eq!(before["reads"], 0, "{before}");
    let gone = d.path().join("layout.gone");
    std::fs::rename(&layout, &gone).unwrap();
    run(&m);
    std::fs::rename(&gone, &layout).unwrap();
    m.unmount();

    // Embedded in the archive, it is replayed by default; --no-prefetch skips it.
    let out = ok(clipctl()
        .args(["profile", "add"])
        .arg(&archive)
        .arg(&profile));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("profile of {n} spans embedded")),
        "{said}"
    );
    let shown = ok(clipctl().args(["profile", "show"]).arg(&archive));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown, p);
    let m = Mounted::new(
        &archive,
        &layout,
        &d.path().join("mnt"),
        &d.path().join("c3"),
    );
    assert_eq!(replay_done(&m)["replayed"], n);
    run(&m);
    m.unmount();
    let mut args = lay.to_vec();
    args.push(OsStr::new("--no-prefetch"));
    let m = Mounted::with_args(&archive, &d.path().join("mnt"), &d.path().join("c4"), &args);
    let s = m.stats();
    assert_eq!(
        (s["replayed"].as_u64(), s["fetches"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    m.unmount();
    ok(clipctl().args(["profile", "remove"]).arg(&archive));
    let shown = ok(clipctl().args(["profile", "show"]).arg(&archive));
    assert!(shown.stdout.is_empty());
}

#[test]
fn a_corrupt_or_stale_profile_is_ignored_with_a_warning() {
    let (d, layout, files, archive) = busy_archive("clip-prof-");
    let before = std::fs::read(&archive).unwrap();
    let other = format!("sha256:{}", "ab".repeat(32));
    let cases = [
        ("corrupt", b"{\"clip_profile\": 1, \"spans\": [".to_vec(), "not a clip profile"),
        (
            "newer",
            br#"{"clip_profile": 2, "spans": []}"#.to_vec(),
            "profile version 2",
        ),
        (
            "stale",
            format!(
                r#"{{"clip_profile": 1, "spans": [{{"layer": "{other}", "offset": 0, "length": 4096, "at_ms": 1}}]}}"#
            )
            .into_bytes(),
            "a profile of another image?",
        ),
    ];
    for (i, (what, bytes, says)) in cases.iter().enumerate() {
        let f = d.path().join(format!("{what}.json"));
        std::fs::write(&f, bytes).unwrap();
        let mnt = d.path().join(format!("mnt{i}"));
        let args = [
            OsStr::new("--layout"),
            layout.as_os_str(),
            OsStr::new("--prefetch"),
            f.as_os_str(),
        ];
        let m = Mounted::with_args(&archive, &mnt, &d.path().join(format!("c{i}")), &args);
        let log = std::fs::read_to_string(mnt.with_extension("log")).unwrap();
        assert!(
            log.contains(says) && log.contains("ignored"),
            "{what}: {log}"
        );
        let (name, want) = &files[3];
        assert!(std::fs::read(m.dir.join(name)).unwrap() == *want, "{what}");
        assert_eq!(m.stats()["replayed"], 0, "{what}");
        m.unmount();
        // Not embedded either: the archive stays as it was.
        let err = fails(clipctl().args(["profile", "add"]).arg(&archive).arg(&f));
        assert!(
            err.contains(if *what == "stale" {
                "none of its 1 entries"
            } else {
                says
            }),
            "{what}: {err}"
        );
        assert!(std::fs::read(&archive).unwrap() == before, "{what}");
    }
}

/// Eight files of a plain tar layer, each with its header exactly 1 MiB, so that
/// 2 MiB span `k` holds files `2k` and `2k + 1`.
fn mib_files_layout(dir: &Path) -> Vec<Vec<u8>> {
    let mut t = TarBuilder::new();
    let files: Vec<Vec<u8>> = (0..8u64)
        .map(|i| pseudo_random_bytes(900 + i, (1 << 20) - 512))
        .collect();
    for (i, f) in files.iter().enumerate() {
        t.file(format!("f{i}"), f).mode(0o644);
    }
    let mut lb = LayoutBuilder::new(dir);
    lb.add_layer(&t.finish(), Compression::None);
    lb.write_image(Some("mib"));
    files
}

#[test]
fn read_ahead_follows_streams_not_a_program_reading_here_and_there() {
    let d = tmp("clip-ra-");
    let layout = d.path().join("layout");
    let files = mib_files_layout(&layout);
    let archive = d.path().join("mib.clip");
    index(&layout, "mib", &archive);
    let read = |m: &Mounted, i: usize| {
        assert!(
            std::fs::read(m.dir.join(format!("f{i}"))).unwrap() == files[i],
            "f{i}"
        );
    };
    // Each part on a fresh cache, so its counters are its own.
    let mount = |cache: &str| {
        Mounted::new(
            &archive,
            &layout,
            &d.path().join("mnt"),
            &d.path().join(cache),
        )
    };
    // A program reading whole files here and there (spans 0, 2, 1, 3: python
    // importing modules of one directory): each read fetches its own span, and
    // reading a file to its end does not fetch the span after it, which holds
    // other files.
    let m = mount("c1");
    for i in [1, 5, 2, 6] {
        read(&m, i);
    }
    let s = m.stats();
    assert_eq!(
        (s["fetches"].as_u64(), s["prefetches"].as_u64()),
        (Some(4), Some(0)),
        "{s}"
    );
    m.unmount();
    // A reader streaming the layer in order (tar, cp -r): once it has moved on
    // twice, the span ahead of it is fetched before it gets there.
    let m = mount("c2");
    for i in 0..8 {
        read(&m, i);
    }
    let s = m.stats();
    // The four spans of the files and the 1 KiB one of the tar's end, each once.
    assert_eq!(s["fetches"], 5, "{s}");
    assert!(
        s["prefetches"].as_u64().unwrap() >= 1,
        "no read-ahead while streaming: {s}"
    );
    m.unmount();
    // A program touching a little here and there in layer order (the page faults
    // of a big mapped library, one directory's modules opened in turn): it moves
    // through spans 0, 1, 2, 3 one after the other but jumps megabytes each
    // time, so it is no stream and nothing is fetched ahead of it.
    let m = mount("c3");
    for i in [0, 2, 4, 6] {
        let mut head = vec![0u8; 64 << 10];
        std::io::Read::read_exact(
            &mut std::fs::File::open(m.dir.join(format!("f{i}"))).unwrap(),
            &mut head,
        )
        .unwrap();
        assert!(head == files[i][..head.len()], "f{i}");
    }
    let s = m.stats();
    assert_eq!(
        (s["fetches"].as_u64(), s["prefetches"].as_u64()),
        (Some(4), Some(0)),
        "{s}"
    );
    m.unmount();
}

#[test]
fn a_stats_file_that_cannot_be_written_is_a_warning_not_the_end_of_the_mount() {
    // A mount that ends and a new one at the same path may write the same stats
    // file at once; a failed write of the counters once ended the serving mount
    // (and its exit unmounted the path).
    let (d, layout, files, archive) = busy_archive("clip-stats-");
    let m = Mounted::new(
        &archive,
        &layout,
        &d.path().join("mnt"),
        &d.path().join("cache"),
    );
    // A directory where the stats file was: every rename onto it fails.
    let t = Instant::now();
    loop {
        let _ = std::fs::remove_file(&m.stats);
        if std::fs::create_dir(&m.stats).is_ok() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "stats file keeps coming back"
        );
    }
    std::fs::write(m.stats.join("keep"), b"").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        is_mounted(&m.dir),
        "the mount ended when its stats file could not be written"
    );
    let (name, want) = &files[3];
    assert!(std::fs::read(m.dir.join(name)).unwrap() == *want, "{name}");
    let log = std::fs::read_to_string(m.dir.with_extension("log")).unwrap();
    assert!(log.contains("cannot write the stats file"), "{log}");
    assert_eq!(
        log.matches("cannot write the stats file").count(),
        1,
        "{log}"
    );
    m.unmount();
}

#[test]
fn a_daemon_points_its_stdout_and_stderr_at_dev_null_once_ready() {
    // Its stdout and stderr were the pipes of the `--daemon` parent, which is
    // gone: without --log-file, a log line or the last error would hit EPIPE.
    let (d, layout, files, archive) = busy_archive("clip-daemon-");
    let mnt = d.path().join("mnt");
    let out = clipctl()
        .arg("mount")
        .arg(&archive)
        .arg(&mnt)
        .arg("--layout")
        .arg(&layout)
        .arg("--cache-dir")
        .arg(d.path().join("cache"))
        .arg("--daemon")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt = std::fs::canonicalize(&mnt).unwrap();
    let pid = mount_pid(&mnt);
    for fd in [1, 2] {
        let to = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(to, Path::new("/dev/null"), "fd {fd}");
    }
    let (name, want) = &files[3];
    assert!(std::fs::read(mnt.join(name)).unwrap() == *want, "{name}");
    unmount_and_wait(&mnt);
}

/// A worker restarting a container mounts again at the same path the moment the
/// last mount there is unmounted. The FUSE library, tearing the old session down,
/// unmounts the path once more; that must not take the new mount with it. The old
/// daemon is stopped between the unmount and its teardown to make the race
/// certain: without the mount-point lock the new mount is gone once it resumes.
#[test]
fn a_new_mount_survives_the_teardown_of_the_last_one_at_its_path() {
    let (d, layout, files, archive) = busy_archive("clip-remount-");
    let mnt = d.path().join("mnt");
    let old = Mounted::new(&archive, &layout, &mnt, &d.path().join("c1"));
    let pid = mount_pid(&old.dir);
    let signal = move |sig: &str| {
        let s = Command::new("kill").arg(sig).arg(pid.to_string()).status();
        assert!(s.unwrap().success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    unmount_and_wait(&old.dir);
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        signal("-CONT");
    });
    let new = Mounted::new(&archive, &layout, &mnt, &d.path().join("c2"));
    resume.join().unwrap();
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the old mount process did not end"
    );
    let (name, want) = &files[0];
    assert!(
        std::fs::read(new.dir.join(name)).unwrap() == *want,
        "{name} through the new mount"
    );
    new.unmount();
}
