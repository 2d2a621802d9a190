//! Soak: 64 threads read at random from a FUSE mount (`clipctl mount`) of an
//! archive made by `clipctl create` from a real registry, through the test proxy
//! dropping connections at random ([`RandomDrops`]: resets and early closes mid
//! body), for `CLIP_SOAK_SECS` seconds (default 60). The span cache is small
//! (`--cache-size 16MiB` for a ~60 MiB image) and readers drop the kernel's page
//! cache of a file now and then, so reads keep reaching the mount and the mount
//! keeps fetching spans from the registry through the faults for the whole run.
//! Every byte read is compared with the image's bytes (kept in memory); the mount
//! process's RSS and open file descriptors are sampled and must stay flat. It
//! prints `SOAK` lines (docs/RELIABILITY.md, "Soak", records them). It needs
//! `docker-registry`, `skopeo` and /dev/fuse.

mod util;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

/// How long the readers run without `CLIP_SOAK_SECS`.
const DEFAULT_SECS: u64 = 60;
/// Reader threads.
const READERS: u64 = 64;
/// The span cache's size limit: a quarter of the image, so spans are evicted and
/// fetched again all the time.
const CACHE_SIZE: &str = "16MiB";
const CACHE_BYTES: u64 = 16 << 20;
/// RSS growth allowed from the first sample (after 1 s of load) to the last.
/// The mount has 8 read threads and read-ahead, each holding at most a couple
/// of 2 MiB spans (compressed range and decoded bytes) at a time, and glibc
/// keeps freed buffers in its (2) arenas: the working set moves by some tens of
/// MiB with the load. 64 MiB is 32 spans; a leak per read (hundreds of
/// thousands of reads), per fault or per fetch (thousands) of even a few
/// hundred bytes over 300 s would pass it, and one of a span per fetch would
/// pass it within the first minute.
const RSS_SLACK_KIB: u64 = 64 << 10;
/// Open fds allowed beyond the first sample: each of the 8 read threads and the
/// read-ahead may hold a registry connection and a span file or two at the
/// moment of a sample. A leak per fetch or per fault (thousands) would pass it.
const FD_SLACK: u64 = 32;

/// `splitmix64`-based generator for the readers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// Content of the file `name` of `size` bytes: incompressible, or text-like
/// (headed by its name, so no two files are alike).
fn content(name: &str, size: usize, seed: u64, text: bool) -> Vec<u8> {
    if text {
        let mut v = format!("{name}\n").into_bytes();
        v.extend_from_slice(&compressible_mixed(size));
        v.truncate(size);
        v
    } else {
        pseudo_random_bytes(seed, size)
    }
}

/// An image like a small application image, ~60 MiB in four layers: a gzip base
/// (libraries, binaries: many files of all sizes), a zstd layer of data files, a
/// gzip application layer overwriting some base files and deleting one (a
/// whiteout), with a hardlink and a relative symlink, and a plain tar layer of
/// configuration. Returns the image's regular files, as the merged tree has
/// them, by the paths to read them at (links included).
fn soak_layout(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut lb = LayoutBuilder::new(dir);
    let mut seed = 1000u64;
    let mut add = |t: &mut TarBuilder,
                   files: &mut BTreeMap<String, Vec<u8>>,
                   name: String,
                   size: usize,
                   text: bool| {
        seed += 1;
        let data = content(&name, size, seed, text);
        t.file(&name, &data).mode(0o644);
        files.insert(name, data);
    };
    // Base: 120 files from 0 bytes to 1.3 MiB, ~34 MiB.
    let mut t = TarBuilder::new();
    for d in [
        "usr/",
        "usr/lib/",
        "usr/bin/",
        "usr/share/",
        "usr/share/doc/",
    ] {
        t.dir(d).mode(0o755);
    }
    for i in 0..120usize {
        let size = match i % 6 {
            0 => i * 7,
            1 => 4096 + i * 131,
            2 => 60_000 + i * 1000,
            3 => 150_000 + i * 1500,
            4 => 300_000 + i * 3000,
            _ => 600_000 + i * 6000,
        };
        let name = match i % 3 {
            0 => format!("usr/lib/lib{i}.so.1"),
            1 => format!("usr/bin/tool{i}"),
            _ => format!("usr/share/doc/readme{i}.txt"),
        };
        add(&mut t, &mut files, name, size, i % 3 == 2 || i % 4 == 0);
    }
    lb.add_layer(&t.finish(), Compression::Gzip);
    // Data (zstd): a few big files and many small ones, ~16 MiB.
    let mut t = TarBuilder::new();
    t.dir("var/").mode(0o755);
    t.dir("var/data/").mode(0o755);
    for i in 0..3usize {
        add(
            &mut t,
            &mut files,
            format!("var/data/big{i}.bin"),
            (4 << 20) + i * 77_777,
            i == 1,
        );
    }
    for i in 0..200usize {
        add(
            &mut t,
            &mut files,
            format!("var/data/small{i}"),
            200 + i * 97 % 20_000,
            i % 2 == 0,
        );
    }
    lb.add_layer(&t.finish(), Compression::Zstd);
    // Application (gzip): overwrites, a whiteout, links, ~14 MiB.
    let mut t = TarBuilder::new();
    t.dir("app/").mode(0o755);
    for i in 0..6usize {
        add(
            &mut t,
            &mut files,
            format!("app/part{i}.bin"),
            (2 << 20) - 1000 + i * 333,
            i % 2 == 1,
        );
    }
    for i in [1usize, 4, 7, 10] {
        add(
            &mut t,
            &mut files,
            format!("usr/bin/tool{i}"),
            500_000 + i * 1000,
            false,
        );
    }
    t.whiteout("usr/lib", "lib6.so.1");
    files.remove("usr/lib/lib6.so.1");
    t.hardlink("app/part0.link", "app/part0.bin");
    files.insert("app/part0.link".into(), files["app/part0.bin"].clone());
    t.symlink("app/big0", "../var/data/big0.bin");
    files.insert("app/big0".into(), files["var/data/big0.bin"].clone());
    lb.add_layer(&t.finish(), Compression::Gzip);
    // Configuration (plain tar): small files, one overwriting the base.
    let mut t = TarBuilder::new();
    t.dir("etc/").mode(0o755);
    for i in 0..30usize {
        add(
            &mut t,
            &mut files,
            format!("etc/conf{i}"),
            100 + i * 50,
            true,
        );
    }
    add(
        &mut t,
        &mut files,
        "usr/share/doc/readme2.txt".into(),
        3000,
        true,
    );
    lb.add_layer(&t.finish(), Compression::None);
    lb.write_image(Some("soak"));
    files.into_iter().collect()
}

/// The layers of `inspect --json` (digests, sizes, checkpoints, spans).
fn layers_json(archive: &Path) -> Value {
    let out = ok(clipctl().arg("inspect").arg("--json").arg(archive));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["layers"].clone()
}

/// A process's resident set and open file descriptors at a moment.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    /// Faults the proxy had injected by then.
    drops: u64,
}

/// `VmRSS` and the entries of `/proc/PID/fd` of `pid`, `at` into the run, and
/// the faults `proxy` injected so far.
fn sample(pid: u32, at: Duration, proxy: &Proxy) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    Sample {
        at,
        rss_kib,
        fds,
        drops: proxy.injected(),
    }
}

/// What the readers did.
#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    bytes: AtomicU64,
    /// Reads that returned bytes differing from the image's.
    wrong: AtomicU64,
    /// Opens and reads that failed (EIO...).
    errors: AtomicU64,
    /// Reads preceded by dropping the file's pages from the kernel's cache.
    uncached: AtomicU64,
    /// The first failures, for the report.
    first: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first.lock().unwrap();
        if f.len() < 10 {
            f.push(what);
        }
    }
}

/// Reads `len` bytes of `f` at `off` (fewer at the end of the file), as many
/// `pread`s as it takes.
fn pread_full(f: &std::fs::File, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut n = 0;
    while n < len {
        match f.read_at(&mut buf[n..], off + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// One reader: random files, random offsets and lengths (half of them under
/// 64 KiB, the rest up to 1 MiB, some past the end), until `stop`; one read in
/// four first drops the file's pages from the kernel's page cache
/// (`POSIX_FADV_DONTNEED`), so that the read reaches the mount.
fn reader(id: u64, root: &Path, files: &[(String, Vec<u8>)], stop: &AtomicBool, tally: &Tally) {
    let mut rng = Rng(0x50a4 + id * 7919);
    while !stop.load(Ordering::Relaxed) {
        let (name, want) = &files[rng.below(files.len() as u64) as usize];
        let f = match std::fs::File::open(root.join(name)) {
            Ok(f) => f,
            Err(e) => {
                tally.fail(&tally.errors, format!("open {name}: {e}"));
                continue;
            }
        };
        if rng.below(4) == 0 {
            // SAFETY: a valid open fd; the call only drops clean cached pages.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            tally.uncached.fetch_add(1, Ordering::Relaxed);
        }
        let size = want.len() as u64;
        let off = rng.below(size + 1);
        let len = if rng.below(2) == 0 {
            rng.below(64 << 10) + 1
        } else {
            rng.below(1 << 20) + 1
        } as usize;
        match pread_full(&f, off, len) {
            Ok(got) => {
                let lo = off as usize;
                let hi = (lo + len).min(want.len());
                tally.reads.fetch_add(1, Ordering::Relaxed);
                if got[..] != want[lo..hi] {
                    tally.fail(
                        &tally.wrong,
                        format!(
                            "{name} at {off}+{len}: {} bytes, want {}, or bytes differ",
                            got.len(),
                            hi - lo
                        ),
                    );
                } else {
                    tally.bytes.fetch_add(got.len() as u64, Ordering::Relaxed);
                }
            }
            Err(e) => tally.fail(&tally.errors, format!("read {name} at {off}+{len}: {e}")),
        }
    }
}

/// Bytes of the span files in cache dir `cache`.
fn cached_bytes(cache: &Path) -> u64 {
    let mut total = 0;
    for sub in std::fs::read_dir(cache.join("spans")).unwrap().flatten() {
        if let Ok(entries) = std::fs::read_dir(sub.path()) {
            total += entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>();
        }
    }
    total
}

fn soak_secs() -> u64 {
    match std::env::var("CLIP_SOAK_SECS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLIP_SOAK_SECS={v:?}: not a number of seconds")),
        Err(_) => DEFAULT_SECS,
    }
}

#[test]
fn sixty_four_readers_through_a_dropping_proxy_are_exact_and_flat() {
    require_fuse();
    let secs = soak_secs();
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-soak-");
    let layout = d.path().join("layout");
    let files = Arc::new(soak_layout(&layout));
    let image_bytes: usize = files.iter().map(|f| f.1.len()).sum();
    reg.push(&layout, "soak", "app:v1");
    let clean = d.path().join("clean.clip");
    index(&layout, "soak", &clean);

    // 1 blob request in 10 dropped, somewhere in its first MiB.
    let proxy = Proxy::with_faults(
        &reg.host(),
        false,
        Faults {
            only: Some("/blobs/"),
            drops: Some(RandomDrops {
                seed: 28,
                per_mille: 100,
                within: 1 << 20,
            }),
            ..Faults::default()
        },
    );
    // The archive is made through the faults too, and names the proxy as its
    // registry: the mount fetches through it.
    let archive = d.path().join("soak.clip");
    let t = Instant::now();
    ok(clipctl()
        .arg("create")
        .arg(format!("{}/app:v1", proxy.host()))
        .arg("--out")
        .arg(&archive));
    let create_took = t.elapsed();
    let layers = layers_json(&archive);
    assert_eq!(layers, layers_json(&clean));
    for (i, l) in layers.as_array().unwrap().iter().enumerate() {
        eprintln!(
            "SOAK layer {i}: {} {} -> {} bytes, {} spans ({} with their own checkpoint)",
            l["compression"],
            l["compressed_size"],
            l["uncompressed_size"],
            l["spans"],
            l["spans_with_own_checkpoint"]
        );
    }
    let create_faults = proxy.injected();
    eprintln!(
        "SOAK create through the proxy: {create_took:?}, {create_faults} drops, {} requests",
        proxy.requests()
    );

    let cache = d.path().join("cache");
    let m = Mounted::with_args(
        &archive,
        &d.path().join("mnt"),
        &cache,
        &[
            std::ffi::OsStr::new("--cache-size"),
            std::ffi::OsStr::new(CACHE_SIZE),
        ],
    );
    let pid = mount_pid(&m.dir);
    let before = sample(pid, Duration::ZERO, &proxy);
    eprintln!(
        "SOAK {READERS} readers for {secs} s over {} files ({} MiB in 4 layers), cache {CACHE_SIZE}, mount pid {pid}: idle RSS {} KiB, {} fds",
        files.len(),
        image_bytes >> 20,
        before.rss_kib,
        before.fds
    );

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let t0 = Instant::now();
    let readers: Vec<_> = (0..READERS)
        .map(|id| {
            let (files, stop, tally, root) =
                (files.clone(), stop.clone(), tally.clone(), m.dir.clone());
            std::thread::spawn(move || reader(id, &root, &files, &stop, &tally))
        })
        .collect();
    let report = |s: &Sample, what: &str| {
        eprintln!(
            "SOAK {what} {:>5.1} s: RSS {} KiB, {} fds, {} reads, {} MiB verified, {} drops, {} wrong, {} errors",
            s.at.as_secs_f64(),
            s.rss_kib,
            s.fds,
            tally.reads.load(Ordering::Relaxed),
            tally.bytes.load(Ordering::Relaxed) >> 20,
            proxy.injected() - create_faults,
            tally.wrong.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed),
        );
    };
    std::thread::sleep(Duration::from_secs(1));
    let start = sample(pid, t0.elapsed(), &proxy);
    report(&start, "start");
    let mut samples = vec![start];
    let every = Duration::from_secs((secs / 10).max(5));
    let end_at = t0 + Duration::from_secs(secs.max(2));
    while Instant::now() + every < end_at {
        std::thread::sleep(every);
        let s = sample(pid, t0.elapsed(), &proxy);
        report(&s, "at");
        samples.push(s);
    }
    std::thread::sleep(end_at.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader panicked");
    }
    let ran = t0.elapsed();
    let end = sample(pid, ran, &proxy);
    report(&end, "end");
    samples.push(end);

    let stats = m.stats();
    let (resets, closes) = proxy.dropped();
    let faults = proxy.injected() - create_faults;
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap();
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap();
    let in_cache = cached_bytes(&cache);
    eprintln!(
        "SOAK result: {READERS} readers, {:.1} s, {} reads ({} after dropping the page cache), {} MiB verified, {} wrong, {} errors",
        ran.as_secs_f64(),
        tally.reads.load(Ordering::Relaxed),
        tally.uncached.load(Ordering::Relaxed),
        tally.bytes.load(Ordering::Relaxed) >> 20,
        tally.wrong.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    eprintln!(
        "SOAK faults: {faults} connections dropped while mounted ({resets} resets, {closes} closes in all, create included) of {} proxy requests",
        proxy.requests()
    );
    eprintln!(
        "SOAK mount: {} span fetches, {} evicted, {} fetch waits, {} prefetches, {} MiB compressed read, {} reads served; cache holds {} KiB",
        stats["fetches"],
        stats["evicted"],
        stats["fetch_waits"],
        stats["prefetches"],
        stats["compressed_bytes_read"].as_u64().unwrap_or(0) >> 20,
        stats["reads"],
        in_cache >> 10
    );
    eprintln!(
        "SOAK process: RSS start {} KiB, end {} KiB, peak {} KiB; fds start {}, end {}, max {}",
        start.rss_kib, end.rss_kib, peak, start.fds, end.fds, max_fds
    );
    let log = std::fs::read_to_string(m.dir.with_extension("log")).unwrap_or_default();
    let warnings = log.lines().filter(|l| l.contains(" WARN ")).count();
    eprintln!(
        "SOAK mount log: {} lines, {warnings} warnings",
        log.lines().count()
    );
    let first = tally.first.lock().unwrap().clone();
    assert_eq!(
        tally.wrong.load(Ordering::Relaxed),
        0,
        "wrong bytes: {first:#?}"
    );
    assert_eq!(
        tally.errors.load(Ordering::Relaxed),
        0,
        "failed reads: {first:#?}\nmount log:\n{log}"
    );
    assert!(
        tally.reads.load(Ordering::Relaxed) > READERS,
        "hardly any reads"
    );
    // Eviction leaves spans being written alone (it removed them, and their
    // writers fetched them again).
    assert!(!log.contains("cannot cache span"), "mount log:\n{log}");
    // The faults and the cache's churn lasted the whole run.
    for w in samples.windows(2) {
        assert!(
            w[1].drops > w[0].drops,
            "no connection dropped from {:?} to {:?}: {samples:?}",
            w[0].at,
            w[1].at
        );
    }
    let spans: u64 = layers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["spans"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        stats["fetches"].as_u64().unwrap() > 2 * spans,
        "{} fetches of {spans} spans",
        stats["fetches"]
    );
    assert!(stats["evicted"].as_u64().unwrap() > 0);
    // The cache kept to its limit (plus spans written since its last look).
    assert!(
        in_cache <= CACHE_BYTES + (8 << 20),
        "{in_cache} bytes cached"
    );
    // Flat.
    assert!(
        end.rss_kib <= start.rss_kib + RSS_SLACK_KIB,
        "RSS grew from {} KiB to {} KiB: {samples:?}",
        start.rss_kib,
        end.rss_kib
    );
    assert!(
        end.fds <= start.fds + FD_SLACK,
        "fds grew from {} to {}: {samples:?}",
        start.fds,
        end.fds
    );

    m.unmount();
    let t = Instant::now();
    while alive(pid) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "the mount process outlived its unmount");
}

/// Whether process `pid` is running (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}
