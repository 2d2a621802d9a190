//! Registry faults through the fault-injecting proxy ([`Proxy`] with [`Faults`])
//! in front of a real registry ([`TestRegistry`]): `clipctl create` and lazy
//! reads survive connection resets, corruption in flight, stalled bodies, 429s,
//! tokens that expire early or are revoked, expired blob redirects, a
//! `Content-Range` for other bytes and a `200` for a Range request, within bounded
//! retries, and never serve a wrong byte. Each test prints what the fault cost
//! (docs/RELIABILITY.md records it). They need `docker-registry` and `skopeo`
//! (`scripts/deps.sh`).

mod util;

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

/// The layers of `inspect --json` (digests, sizes, checkpoints, spans).
fn layers_json(archive: &Path) -> Value {
    let out = ok(clipctl().arg("inspect").arg("--json").arg(archive));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["layers"].clone()
}

/// A registry holding [`multi_span_layout`] as `app:v1`, the layout, its image and
/// the archive indexed from the layout (what `create` must produce).
struct Setup {
    reg: TestRegistry,
    dir: tempfile::TempDir,
    info: ImageInfo,
    clean: Value,
}

fn setup(name: &str) -> Setup {
    setup_with(name, RegistryAuth::None)
}

/// [`setup`] with a registry that authenticates as `auth` says.
fn setup_with(name: &str, auth: RegistryAuth) -> Setup {
    let reg = TestRegistry::start(auth);
    let dir = tmp(&format!("clip-faults-{name}-"));
    let layout = dir.path().join("layout");
    let info = multi_span_layout(&layout, "t");
    reg.push(&layout, "t", "app:v1");
    let clean_archive = dir.path().join("clean.clip");
    index(&layout, "t", &clean_archive);
    let clean = layers_json(&clean_archive);
    Setup {
        reg,
        dir,
        info,
        clean,
    }
}

/// A proxy with `faults` in front of the setup's registry.
fn faulty(s: &Setup, faults: Faults) -> Proxy {
    Proxy::with_faults(&s.reg.host(), false, faults)
}

impl Setup {
    /// `--username U --password P` for the registry, if it has credentials.
    fn creds(&self) -> Vec<String> {
        match self.reg.auth().credentials() {
            Some((u, p)) => ["--username", u, "--password", p]
                .map(String::from)
                .to_vec(),
            None => Vec::new(),
        }
    }

    /// A `'static` request-line filter for layer `i`'s blob.
    fn layer(&self, i: usize) -> &'static str {
        Box::leak(self.info.layers[i].digest.clone().into_boxed_str())
    }

    /// `clipctl create` through `proxy`; returns the archive and the time taken.
    fn create(&self, proxy: &Proxy, name: &str) -> (std::path::PathBuf, Duration) {
        let archive = self.dir.path().join(format!("{name}.clip"));
        let t = Instant::now();
        ok(clipctl()
            .arg("create")
            .arg(format!("{}/app:v1", proxy.host()))
            .arg("--out")
            .arg(&archive)
            .args(self.creds()));
        (archive, t.elapsed())
    }

    /// The time a clean `create` takes (through a proxy without faults).
    fn baseline(&self) -> Duration {
        let p = Proxy::start(&self.reg.host(), false);
        self.create(&p, "baseline").1
    }
}

#[test]
fn create_survives_resets_mid_layer() {
    let s = setup("reset");
    let base = s.baseline();
    // The first layer's stream (~12 MiB) is reset 1 MiB in, three times: every
    // attempt (the first GET and each resuming Range request) breaks.
    let proxy = faulty(
        &s,
        Faults {
            reset_every: 1,
            reset_after: 1 << 20,
            only: Some(s.layer(0)),
            limit: 3,
            ..Faults::default()
        },
    );
    let (archive, took) = s.create(&proxy, "reset");
    assert_eq!(proxy.injected(), 3);
    assert_eq!(layers_json(&archive), s.clean);
    let ranged = proxy
        .request_lines()
        .iter()
        .filter(|l| l.contains(s.layer(0)))
        .count();
    assert_eq!(ranged, 4, "{:?}", proxy.request_lines());
    eprintln!("FAULT reset x3 mid-layer: create {took:?} (clean {base:?})");
}

#[test]
fn create_survives_resets_of_manifest_config_and_layer_bodies() {
    let s = setup("reset-small");
    // Every 2nd request (manifest, config, layers, resumptions) is reset 10 bytes
    // into its body: on main the manifest or config read had no retry.
    let proxy = faulty(
        &s,
        Faults {
            reset_every: 2,
            reset_after: 10,
            limit: 6,
            ..Faults::default()
        },
    );
    let (archive, took) = s.create(&proxy, "reset-small");
    assert!(proxy.injected() >= 3, "{}", proxy.injected());
    assert_eq!(layers_json(&archive), s.clean);
    eprintln!(
        "FAULT reset of every 2nd response (x{}): create {took:?}",
        proxy.injected()
    );
}

/// Requests whose request line names `what`.
fn requests_for(proxy: &Proxy, what: &str) -> usize {
    proxy
        .request_lines()
        .iter()
        .filter(|l| l.contains(what))
        .count()
}

#[test]
fn create_refetches_a_layer_corrupted_in_flight_then_fails_naming_it() {
    let s = setup("corrupt");
    let base = s.baseline();
    // One byte of the first layer flipped 5 MiB in, on its first two fetches:
    // the third is clean.
    let proxy = faulty(
        &s,
        Faults {
            corrupt_every: 1,
            corrupt_at: 5 << 20,
            only: Some(s.layer(0)),
            limit: 2,
            ..Faults::default()
        },
    );
    let (archive, took) = s.create(&proxy, "corrupt");
    assert_eq!(layers_json(&archive), s.clean);
    assert_eq!(requests_for(&proxy, s.layer(0)), 3);
    eprintln!("FAULT corrupt byte x2 in a layer: create {took:?} (clean {base:?})");

    // The config corrupted once: fetched again.
    let config: &'static str = Box::leak(s.info.config.digest.clone().into_boxed_str());
    let proxy = faulty(
        &s,
        Faults {
            corrupt_every: 1,
            corrupt_at: 10,
            only: Some(config),
            limit: 1,
            ..Faults::default()
        },
    );
    let (archive, took) = s.create(&proxy, "corrupt-config");
    assert_eq!(layers_json(&archive), s.clean);
    assert_eq!(requests_for(&proxy, config), 2);
    eprintln!("FAULT corrupt byte in the config: create {took:?}");

    // Always corrupted: three fetches, then an error naming the layer.
    let proxy = faulty(
        &s,
        Faults {
            corrupt_every: 1,
            corrupt_at: 5 << 20,
            only: Some(s.layer(0)),
            ..Faults::default()
        },
    );
    let t = Instant::now();
    let e = fails(
        clipctl()
            .arg("create")
            .arg(format!("{}/app:v1", proxy.host()))
            .arg("--out")
            .arg(s.dir.path().join("bad.clip")),
    );
    let took = t.elapsed();
    assert!(
        e.contains(s.layer(0)) && e.contains("digest mismatch") && e.contains("fetched 3 times"),
        "{e}"
    );
    assert_eq!(requests_for(&proxy, s.layer(0)), 3);
    eprintln!(
        "FAULT layer always corrupt: create fails in {took:?}: {}",
        e.trim()
    );
}

/// An archive of `s`'s image whose layers are fetched through `proxy` (indexed
/// straight from the registry).
fn archive_via(s: &Setup, proxy: &Proxy, name: &str) -> std::path::PathBuf {
    let archive = s.dir.path().join(format!("{name}.clip"));
    ok(clipctl()
        .arg("create")
        .arg(format!("{}/app:v1", s.reg.host()))
        .arg("--storage-ref")
        .arg(format!("{}/app:v1", proxy.host()))
        .arg("--out")
        .arg(&archive)
        .args(s.creds()));
    archive
}

/// Every file of the image with its expected bytes.
fn tree_files() -> Vec<(&'static str, Vec<u8>)> {
    let mut v: Vec<(&'static str, Vec<u8>)> = (0..4)
        .map(|i| {
            let name: &'static str = Box::leak(format!("/data/blob{i}").into_boxed_str());
            (name, pseudo_random_bytes(i, 3 << 20))
        })
        .collect();
    v.push(("/data/text", compressible_bytes(5 << 20)));
    v.push(("/etc/motd", b"hello from the top layer\n".to_vec()));
    v
}

/// `clipctl cat`s every file of `archive`, checking each byte; the time taken.
fn read_tree(archive: &Path) -> Duration {
    read_tree_with(archive, &[])
}

/// [`read_tree`] with extra `clipctl cat` arguments (credentials).
fn read_tree_with(archive: &Path, args: &[String]) -> Duration {
    read_tree_stats(archive, args).0
}

/// [`read_tree_with`], also returning the registry body bytes and requests of
/// all the reads (`--stats`).
fn read_tree_stats(archive: &Path, args: &[String]) -> (Duration, u64, u64) {
    let (mut bytes, mut requests) = (0, 0);
    let t = Instant::now();
    for (path, want) in tree_files() {
        let out = ok(clipctl()
            .arg("cat")
            .arg("--stats")
            .arg(archive)
            .arg(path)
            .args(args));
        assert!(out.stdout == want, "{path} differs");
        let err = String::from_utf8_lossy(&out.stderr);
        let stats: Value = serde_json::from_str(err.lines().last().unwrap_or("{}")).unwrap();
        bytes += stats["registry_bytes"].as_u64().unwrap();
        requests += stats["registry_requests"].as_u64().unwrap();
    }
    (t.elapsed(), bytes, requests)
}

#[test]
fn lazy_reads_refetch_a_span_corrupted_in_flight_then_fail() {
    let s = setup("corrupt-span");
    let clean = Proxy::start(&s.reg.host(), false);
    let base = read_tree(&archive_via(&s, &clean, "clean"));
    // Every 2nd blob range corrupted, once each: every byte served is right.
    let proxy = faulty(
        &s,
        Faults {
            corrupt_every: 2,
            corrupt_at: 1000,
            only: Some("/blobs/"),
            ..Faults::default()
        },
    );
    let took = read_tree(&archive_via(&s, &proxy, "corrupt"));
    assert!(proxy.injected() >= 3, "{}", proxy.injected());
    eprintln!(
        "FAULT corrupt byte in every 2nd span range (x{}): tree read {took:?} (clean {base:?})",
        proxy.injected()
    );
    // Always corrupted: the read fails after three fetches, never a wrong byte.
    let proxy = faulty(
        &s,
        Faults {
            corrupt_every: 1,
            corrupt_at: 1000,
            only: Some("/blobs/"),
            ..Faults::default()
        },
    );
    let archive = archive_via(&s, &proxy, "always");
    let t = Instant::now();
    let e = fails(clipctl().arg("cat").arg(&archive).arg("/etc/motd"));
    let took = t.elapsed();
    assert!(e.contains("fetched 3 times"), "{e}");
    assert_eq!(proxy.requests(), 3, "{:?}", proxy.request_lines());
    eprintln!(
        "FAULT span always corrupt: cat fails in {took:?}: {}",
        e.trim()
    );
}

#[test]
fn mounted_reads_refetch_spans_corrupted_in_flight() {
    require_fuse();
    let s = setup("corrupt-mount");
    // Every 2nd blob range corrupted: the mount's span cache (Store) writes each
    // span file again from its start, and serves the right bytes. Two faults in
    // all: the mount's read-ahead interleaves its requests with the reader's, so
    // with more, one span could draw every fault of its three fetches (the test
    // of a span always corrupt is above).
    let proxy = faulty(
        &s,
        Faults {
            corrupt_every: 2,
            corrupt_at: 1000,
            only: Some("/blobs/"),
            limit: 2,
            ..Faults::default()
        },
    );
    let archive = archive_via(&s, &proxy, "mount");
    let d = s.dir.path();
    let m = Mounted::with_args(&archive, &d.join("mnt"), &d.join("cache"), &[]);
    let t = Instant::now();
    for (path, want) in tree_files() {
        let got = std::fs::read(m.dir.join(&path[1..])).unwrap();
        assert!(got == want, "{path} differs");
    }
    let took = t.elapsed();
    assert_eq!(proxy.injected(), 2);
    eprintln!(
        "FAULT corrupt byte in every 2nd span range, mounted (x{}): tree read {took:?}",
        proxy.injected()
    );
    m.unmount();
}

/// The user and password of the token registries.
const USER: &str = "faultuser";
const PASSWORD: &str = "fault-pass";

#[test]
fn mounted_reads_past_a_tokens_life_reauthenticate_on_401() {
    require_fuse();
    let ttl = 2;
    // Tokens the registry refuses 2 s after issue: saying so (`expires_in: 2`,
    // the client replaces them ahead of time), or saying 300 s (the client holds a
    // token it thinks fresh, and gets a 401 from the registry).
    for says in [ttl, 300] {
        let auth = RegistryAuth::token_expiring_early(USER, PASSWORD, ttl, says);
        let s = setup_with(&format!("token-expiry-{says}"), auth);
        let proxy = Proxy::start(&s.reg.host(), false);
        let archive = archive_via(&s, &proxy, "expiry");
        let d = s.dir.path();
        let creds = s.creds();
        let args: Vec<&OsStr> = creds.iter().map(OsStr::new).collect();
        let m = Mounted::with_args(&archive, &d.join("mnt"), &d.join("cache"), &args);
        let before = s.reg.tokens_issued();
        let mut reading = Duration::ZERO;
        let files = tree_files();
        // Three groups of files, the tokens' life (and the registry's leeway, see
        // REGISTRY_TOKEN_LEEWAY_SECS) apart: each group's reads are cold.
        for (i, group) in files.chunks(2).enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(ttl * 1000 + 1500));
            }
            let t = Instant::now();
            for (path, want) in group {
                let got = std::fs::read(m.dir.join(&path[1..])).unwrap();
                assert!(&got == want, "{path} differs");
            }
            reading += t.elapsed();
        }
        m.unmount();
        let tokens = s.reg.tokens_issued() - before;
        let refused = proxy.answered("/blobs/", 401);
        eprintln!(
            "FAULT token refused {ttl} s after issue, expires_in {says}: mounted tree read across 2 expiries: {refused} blob 401s, {tokens} tokens, reads {reading:?}"
        );
        if says == ttl {
            // The first challenge only; each expiry costs one token request.
            assert_eq!(refused, 1, "{:?}", proxy.statuses());
            assert_eq!(tokens, 3);
        } else {
            // The first challenge, then a 401 and a new token per expiry (reads
            // in flight together may each get one).
            assert!(refused >= 3, "{:?}", proxy.statuses());
            assert!((3..=refused as u64).contains(&tokens), "{tokens} tokens");
        }
    }
}

#[test]
fn a_revoked_token_is_replaced_once_and_a_lasting_401_fails() {
    let s = setup_with("revoked", RegistryAuth::token(USER, PASSWORD, 300));
    let creds = s.creds();
    let clean = Proxy::start(&s.reg.host(), false);
    let base = read_tree_with(&archive_via(&s, &clean, "clean"), &creds);
    // One authenticated blob request in 3 reaches the registry without its
    // (valid) token: the registry answers 401 with its challenge.
    let proxy = faulty(
        &s,
        Faults {
            revoke_every: 3,
            only: Some("/blobs/"),
            ..Faults::default()
        },
    );
    let archive = archive_via(&s, &proxy, "revoked");
    let before = s.reg.tokens_issued();
    let took = read_tree_with(&archive, &creds);
    let (n, tokens) = (proxy.injected(), s.reg.tokens_issued() - before);
    let processes = tree_files().len() as u64;
    eprintln!(
        "FAULT valid token refused (401) on 1 in 3 blob requests (x{n}): tree read {took:?} (clean {base:?}), {tokens} tokens for {processes} processes"
    );
    assert!(n >= 3, "{n}");
    // A token per process, and one more per refusal.
    assert_eq!(tokens, processes + n);

    // Refused on every request: one new token and one retry, then an error.
    let proxy = faulty(
        &s,
        Faults {
            revoke_every: 1,
            only: Some("/blobs/"),
            ..Faults::default()
        },
    );
    let archive = archive_via(&s, &proxy, "always-revoked");
    let before = s.reg.tokens_issued();
    let t = Instant::now();
    let e = fails(
        clipctl()
            .arg("cat")
            .arg(&archive)
            .arg("/etc/motd")
            .args(&creds),
    );
    let took = t.elapsed();
    assert!(
        e.contains("unauthorized") && e.contains(proxy.host()),
        "{e}"
    );
    // The challenge, the request with the first token, the one with the second.
    assert_eq!(requests_for(&proxy, "/blobs/"), 3, "{:?}", proxy.statuses());
    assert_eq!(s.reg.tokens_issued() - before, 2);
    eprintln!(
        "FAULT token refused on every blob request: cat fails in {took:?}: {}",
        e.trim()
    );
}

#[test]
fn expired_blob_redirects_are_resolved_again_and_never_get_credentials() {
    let s = setup_with("redirect", RegistryAuth::token(USER, PASSWORD, 300));
    let creds = s.creds();
    let storage = s.reg.storage_dir();
    let clean = Proxy::start(&s.reg.host(), false);
    let base = read_tree_with(&archive_via(&s, &clean, "clean"), &creds);
    let mut hosts = Vec::new();
    // Every 2nd redirect URL expired before it is used (0: none): the client
    // asks the registry again for a fresh one.
    for (every, label) in [(0, "no URL"), (2, "every 2nd URL")] {
        let blobs = BlobHost::start(storage, every, 0);
        let proxy = Proxy::redirecting(&s.reg.host(), &blobs, Faults::default());
        let (archive, created) = s.create(&proxy, &format!("redirect-{every}"));
        assert_eq!(layers_json(&archive), s.clean);
        let archive = archive_via(&s, &proxy, &format!("redirect-read-{every}"));
        let took = read_tree_with(&archive, &creds);
        let expired = blobs.answered(403);
        eprintln!(
            "FAULT blobs redirected to {}, {label} expired ({expired} 403s, {} URLs): create {created:?}, tree read {took:?} (clean {base:?})",
            blobs.host(),
            blobs.signed()
        );
        // Each URL was used once: the expired ones were all, and only, refused.
        assert_eq!(expired as u64, blobs.born_expired());
        assert_eq!(blobs.requests().len() as u64, blobs.signed());
        if every > 0 {
            assert!(expired >= 3, "{expired}");
        }
        // The Range headers went along.
        assert!(blobs.requests().iter().any(|r| r.header("range").is_some()));
        hosts.push(blobs);
    }
    // Every URL expired: a few fresh redirects, then an error naming the storage
    // host, not the credentials; no new token for it.
    let blobs = BlobHost::start(storage, 1, 0);
    let proxy = Proxy::redirecting(&s.reg.host(), &blobs, Faults::default());
    let archive = archive_via(&s, &proxy, "redirect-always");
    let before = s.reg.tokens_issued();
    let t = Instant::now();
    let e = fails(
        clipctl()
            .arg("cat")
            .arg(&archive)
            .arg("/etc/motd")
            .args(&creds),
    );
    let took = t.elapsed();
    assert!(
        e.contains(blobs.host()) && e.contains("403") && !e.contains("unauthorized"),
        "{e}"
    );
    assert_eq!(blobs.requests().len(), 3);
    assert_eq!(proxy.answered("/blobs/", 307), 3);
    assert_eq!(s.reg.tokens_issued() - before, 1);
    eprintln!(
        "FAULT every redirect URL expired: cat fails in {took:?}: {}",
        e.trim()
    );
    hosts.push(blobs);
    // The blob hosts never saw the registry's credentials.
    for b in &hosts {
        for r in b.requests() {
            assert!(r.header("authorization").is_none(), "{r:?}");
        }
    }
}

#[test]
fn a_range_answered_with_other_bytes_is_fetched_again_then_fails_naming_it() {
    let s = setup("content-range");
    let layer = s.layer(0);
    let want = pseudo_random_bytes(0, 3 << 20);
    let cat = |archive: &Path| {
        let t = Instant::now();
        let out = ok(clipctl().arg("cat").arg(archive).arg("/data/blob0"));
        assert!(out.stdout == want, "blob0 differs");
        t.elapsed()
    };
    let clean = Proxy::start(&s.reg.host(), false);
    let base = cat(&archive_via(&s, &clean, "clean"));
    let ranges = requests_for(&clean, layer);
    // The first two range requests of the layer get a 206 for other bytes: both
    // ends 1 KiB further, the end 1 KiB short, the end 1 KiB long.
    for (what, by) in [
        ("start and end +1 KiB", (1024, 1024)),
        ("end -1 KiB", (0, -1024)),
        ("end +1 KiB", (0, 1024)),
    ] {
        let proxy = faulty(
            &s,
            Faults {
                bad_range_every: 1,
                bad_range: by,
                only: Some(layer),
                limit: 2,
                ..Faults::default()
            },
        );
        let took = cat(&archive_via(&s, &proxy, "shifted"));
        assert_eq!(proxy.injected(), 2);
        assert_eq!(requests_for(&proxy, layer), ranges + 2);
        eprintln!(
            "FAULT 206 with Content-Range {what} than asked, x2: cat of a 3 MiB file {took:?} (clean {base:?}, {ranges} ranges)"
        );
    }
    // `create`'s layer stream reset 1 MiB in; its resumption gets other bytes
    // once: fetched again, the archive is the same.
    let proxy = faulty(
        &s,
        Faults {
            reset_every: 1,
            reset_after: 1 << 20,
            bad_range_every: 1,
            bad_range: (1024, 1024),
            only: Some(layer),
            limit: 2,
            ..Faults::default()
        },
    );
    let (archive, took) = s.create(&proxy, "reset-shifted");
    assert_eq!(layers_json(&archive), s.clean);
    assert_eq!(requests_for(&proxy, layer), 3, "{:?}", proxy.statuses());
    eprintln!("FAULT layer stream reset, its resumption's Content-Range +1 KiB: create {took:?}");
    // Always other bytes: three fetches, then an error naming the blob and both
    // ranges; never a wrong byte.
    let proxy = faulty(
        &s,
        Faults {
            bad_range_every: 1,
            bad_range: (1024, 1024),
            only: Some(layer),
            ..Faults::default()
        },
    );
    let archive = archive_via(&s, &proxy, "always-shifted");
    let t = Instant::now();
    let e = fails(clipctl().arg("cat").arg(&archive).arg("/data/blob0"));
    let took = t.elapsed();
    assert!(
        e.contains(layer)
            && e.contains("asked for bytes")
            && e.contains("Content-Range")
            && e.contains("fetched 3 times"),
        "{e}"
    );
    assert_eq!(requests_for(&proxy, layer), 3);
    eprintln!(
        "FAULT Content-Range always shifted: cat fails in {took:?}: {}",
        e.trim()
    );
}

#[test]
fn a_200_for_a_range_request_is_read_through_to_the_offset() {
    let s = setup("no-range");
    let clean = Proxy::start(&s.reg.host(), false);
    let (base, base_bytes, base_requests) = read_tree_stats(&archive_via(&s, &clean, "clean"), &[]);
    let base_wire = clean.bytes();
    eprintln!(
        "FAULT none: tree read {base:?}, {base_requests} requests, {base_bytes} body bytes read, {base_wire} bytes through the proxy"
    );
    // The Range header dropped on every 2nd blob request, or on all: the registry
    // answers 200 with the whole blob, the client skips to the offset and hangs up
    // after the bytes it needs.
    for (what, proxy) in [
        (
            "every 2nd",
            faulty(
                &s,
                Faults {
                    strip_range_every: 2,
                    only: Some("/blobs/"),
                    ..Faults::default()
                },
            ),
        ),
        ("every", Proxy::start(&s.reg.host(), true)),
    ] {
        let archive = archive_via(&s, &proxy, "no-range");
        let (took, bytes, requests) = read_tree_stats(&archive, &[]);
        let full = proxy.answered("/blobs/", 200);
        eprintln!(
            "FAULT 200 for {what} blob Range request ({full} of {requests}): tree read {took:?} (clean {base:?}), {bytes} body bytes read ({:.1}x), {} bytes through the proxy",
            bytes as f64 / base_bytes as f64,
            proxy.bytes()
        );
        assert!(full >= 3, "{full}");
        assert!(bytes > base_bytes, "{bytes} <= {base_bytes}");
    }
}

#[test]
fn stalled_bodies_are_abandoned_within_seconds() {
    let s = setup("stall");
    let base = s.baseline();
    // The first layer's stream stops for 60 s 1 MiB in (the old whole-read
    // timeout was 30 s per stall).
    let proxy = faulty(
        &s,
        Faults {
            stall_every: 1,
            stall_after: 1 << 20,
            stall_for: Duration::from_secs(60),
            only: Some(s.layer(0)),
            limit: 1,
            ..Faults::default()
        },
    );
    let (archive, took) = s.create(&proxy, "stall");
    assert_eq!(layers_json(&archive), s.clean);
    assert!(took < base + Duration::from_secs(9), "create took {took:?}");
    eprintln!("FAULT layer stream stalls 60 s: create {took:?} (clean {base:?})");

    // A lazy read whose range stalls.
    let proxy = faulty(
        &s,
        Faults {
            stall_every: 1,
            stall_after: 100 << 10,
            stall_for: Duration::from_secs(60),
            only: Some("/blobs/"),
            limit: 1,
            ..Faults::default()
        },
    );
    let archive = archive_via(&s, &proxy, "stall-read");
    let t = Instant::now();
    let out = ok(clipctl().arg("cat").arg(&archive).arg("/data/blob0"));
    let took = t.elapsed();
    assert!(
        out.stdout == pseudo_random_bytes(0, 3 << 20),
        "blob0 differs"
    );
    assert!(took < Duration::from_secs(9), "cat took {took:?}");
    eprintln!("FAULT span range stalls 60 s: cat {took:?}");

    // The stall timeout is an option.
    let proxy = faulty(
        &s,
        Faults {
            stall_every: 1,
            stall_after: 1 << 20,
            stall_for: Duration::from_secs(60),
            only: Some(s.layer(0)),
            limit: 1,
            ..Faults::default()
        },
    );
    let t = Instant::now();
    ok(clipctl()
        .arg("create")
        .arg(format!("{}/app:v1", proxy.host()))
        .args(["--stall-timeout", "1", "--out"])
        .arg(s.dir.path().join("stall-1s.clip")));
    let took = t.elapsed();
    assert!(took < base + Duration::from_secs(4), "create took {took:?}");
    eprintln!("FAULT layer stream stalls 60 s, --stall-timeout 1: create {took:?}");
}

#[test]
fn throttling_429_retry_after_is_honoured_within_a_budget() {
    let s = setup("throttle");
    let clean = Proxy::start(&s.reg.host(), false);
    let base = read_tree(&archive_via(&s, &clean, "clean"));
    // One blob request in three answered 429 with Retry-After: 1.
    let proxy = faulty(
        &s,
        Faults {
            throttle_every: 3,
            retry_after: 1,
            only: Some("/blobs/"),
            ..Faults::default()
        },
    );
    let archive = archive_via(&s, &proxy, "throttle");
    let took = read_tree(&archive);
    let n = proxy.injected();
    let blob_requests = requests_for(&proxy, "/blobs/");
    eprintln!(
        "FAULT 429 Retry-After 1 on 1/3 of {blob_requests} blob requests (x{n}): tree read {took:?} (clean {base:?})"
    );
    // No more waiting than the registry asked for.
    assert!(
        took <= base + Duration::from_secs(n) + Duration::from_secs(3),
        "{took:?} for {n} 429s"
    );
    // Always 429: the read fails after its attempts, within seconds.
    let proxy = faulty(
        &s,
        Faults {
            throttle_every: 1,
            retry_after: 1,
            only: Some("/blobs/"),
            ..Faults::default()
        },
    );
    let archive = archive_via(&s, &proxy, "always");
    let t = Instant::now();
    let e = fails(clipctl().arg("cat").arg(&archive).arg("/etc/motd"));
    let took = t.elapsed();
    assert!(e.contains("429"), "{e}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    eprintln!(
        "FAULT always 429 Retry-After 1: cat fails in {took:?}: {}",
        e.trim()
    );
}

#[test]
fn tree_read_through_a_proxy_stalling_one_request_in_three() {
    let s = setup("stall-third");
    let clean = Proxy::start(&s.reg.host(), false);
    let base = read_tree(&archive_via(&s, &clean, "clean"));
    // One blob request in three stalls for 60 s after 100 KiB. With the default
    // options a stalled lazy read is hedged: a second request races it from the
    // last byte received, after 4 times the usual time to first byte.
    let stalling = || {
        faulty(
            &s,
            Faults {
                stall_every: 3,
                stall_after: 100 << 10,
                stall_for: Duration::from_secs(60),
                only: Some("/blobs/"),
                ..Faults::default()
            },
        )
    };
    let proxy = stalling();
    let archive = archive_via(&s, &proxy, "stall-third");
    let t = Instant::now();
    let (mut hedges, mut won) = (0, 0);
    for (path, want) in tree_files() {
        let out = ok(clipctl().arg("cat").arg("--stats").arg(&archive).arg(path));
        assert!(out.stdout == want, "{path} differs");
        let err = String::from_utf8_lossy(&out.stderr);
        let stats: Value = serde_json::from_str(err.lines().last().unwrap_or("{}")).unwrap();
        hedges += stats["registry_hedges"].as_u64().unwrap();
        won += stats["registry_hedges_won"].as_u64().unwrap();
    }
    let took = t.elapsed();
    let n = proxy.injected();
    eprintln!(
        "FAULT 1 in 3 blob requests stalls (x{n}), hedged: tree read {took:?} (clean {base:?}), {hedges} hedges, {won} won"
    );
    assert!(n >= 3, "only {n} stalls");
    assert!(won >= 1, "no hedge won");
    // The budget: at most 2x the clean time plus a few seconds.
    assert!(
        took <= base * 2 + Duration::from_secs(3),
        "{took:?} for {n} stalls (clean {base:?})"
    );

    // Without hedging each stall costs the stall timeout.
    let proxy = stalling();
    let archive = archive_via(&s, &proxy, "stall-third-off");
    let t = Instant::now();
    for (path, want) in tree_files() {
        let out = ok(clipctl()
            .arg("cat")
            .args(["--hedge-after", "off", "--stall-timeout", "2"])
            .arg(&archive)
            .arg(path));
        assert!(out.stdout == want, "{path} differs");
    }
    let took = t.elapsed();
    let n = proxy.injected();
    eprintln!(
        "FAULT 1 in 3 blob requests stalls (x{n}), --hedge-after off --stall-timeout 2: tree read {took:?}"
    );
    // (No lower bound: a read that has its file's bytes stops before a stall
    // that comes later in its span.)
}

/// Span files under `dir` (recursively): `(path, is_temporary)`.
fn cache_files(dir: &Path) -> Vec<(std::path::PathBuf, bool)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(cache_files(&p));
        } else {
            let tmp = e.file_name().to_string_lossy().starts_with(".tmp-");
            out.push((p, tmp));
        }
    }
    out
}

#[test]
fn a_mount_killed_mid_span_write_leaves_nothing_served_unverified() {
    require_fuse();
    let s = setup("crash-write");
    // The first span range stalls 60 s after 1 MiB, so the span's temporary file
    // in the cache is half written when the mount process is killed.
    let proxy = faulty(
        &s,
        Faults {
            stall_every: 1,
            stall_after: 1 << 20,
            stall_for: Duration::from_secs(60),
            only: Some("/blobs/"),
            limit: 1,
            ..Faults::default()
        },
    );
    let archive = archive_via(&s, &proxy, "crash");
    let d = s.dir.path();
    let (cache, mnt) = (d.join("cache"), d.join("mnt"));
    let slow: Vec<&std::ffi::OsStr> = ["--hedge-after", "off", "--stall-timeout", "60"]
        .iter()
        .map(|a| a.as_ref())
        .collect();
    let m = Mounted::with_args(&archive, &mnt, &cache, &slow);
    let file = m.dir.join("data/blob0");
    let reader = std::thread::spawn(move || std::fs::read(file));
    let t = Instant::now();
    let partial = loop {
        let tmp = cache_files(&cache.join("spans"))
            .into_iter()
            .find(|(p, tmp)| *tmp && std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
        match tmp {
            Some((p, _)) => break p,
            None if t.elapsed() > Duration::from_secs(20) => {
                panic!("no partly written span file in {}", cache.display())
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    sigkill_mount(&archive);
    let read = reader.join().unwrap();
    assert!(read.is_err(), "a read of the killed mount succeeded");
    std::mem::forget(m);
    let left = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "FAULT mount SIGKILLed mid span write: {left} bytes left in {}",
        partial.display()
    );
    // Nothing under a span's real name is partial or wrong: each name is the
    // BLAKE3 of its bytes.
    for (p, tmp) in cache_files(&cache.join("spans")) {
        if !tmp {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(
                blake3::hash(&bytes).to_hex().as_str(),
                name,
                "{}",
                p.display()
            );
        }
    }
    // The half-written file is a temporary; once old, the next mount removes it.
    ok(std::process::Command::new("touch")
        .args(["-d", "5 minutes ago"])
        .arg(&partial));
    let m = Mounted::with_args(&archive, &mnt, &cache, &[]);
    for (path, want) in tree_files() {
        let got = std::fs::read(m.dir.join(&path[1..])).unwrap();
        assert!(got == want, "{path} differs after the crash");
    }
    assert!(
        !partial.exists(),
        "{} was not cleaned up",
        partial.display()
    );
    m.unmount();
}

/// An index-only archive of the setup's image whose layers are fetched from
/// `host` (which may be no registry at all).
fn archive_for_host(s: &Setup, host: &str, name: &str) -> std::path::PathBuf {
    let archive = s.dir.path().join(format!("{name}.clip"));
    ok(clipctl()
        .arg("create")
        .arg(format!("{}/app:v1", s.reg.host()))
        .arg("--storage-ref")
        .arg(format!("{host}/app:v1"))
        .arg("--out")
        .arg(&archive));
    archive
}

#[test]
fn registry_gone_after_caching_serves_cached_files_and_eio_for_the_rest() {
    require_fuse();
    let s = setup("gone");
    let d = s.dir.path();
    let cache = d.join("cache");
    let files = tree_files();
    let cached = &files[0]; // /data/blob0: spans 0-1 of layer 0
    let uncached = [&files[3], &files[4]]; // the end of layer 0; layer 1
    // Warm the shared span cache through a working registry.
    let clean = Proxy::start(&s.reg.host(), false);
    let m = Mounted::with_args(
        &archive_via(&s, &clean, "warm"),
        &d.join("mnt-warm"),
        &cache,
        &[],
    );
    assert!(std::fs::read(m.dir.join(&cached.0[1..])).unwrap() == cached.1);
    m.unmount();

    // Nothing listens where the registry was (connection refused), default
    // options; then a registry that accepts connections and never answers, with a
    // 1 s stall timeout and 2 attempts.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_host = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let quick: Vec<&std::ffi::OsStr> = ["--stall-timeout", "1", "--registry-attempts", "2"]
        .iter()
        .map(|a| a.as_ref())
        .collect();
    for (what, host, args, bound) in [
        (
            "refused",
            refused.as_str(),
            &[][..],
            Duration::from_secs(15),
        ),
        (
            "silent",
            silent_host.as_str(),
            &quick[..],
            Duration::from_secs(20),
        ),
    ] {
        let archive = archive_for_host(&s, host, what);
        let m = Mounted::with_args(&archive, &d.join(format!("mnt-{what}")), &cache, args);
        let t = Instant::now();
        assert!(
            std::fs::read(m.dir.join(&cached.0[1..])).unwrap() == cached.1,
            "{what}: cached file differs"
        );
        let hit = t.elapsed();
        for (path, _) in uncached {
            let t = Instant::now();
            let e = std::fs::read(m.dir.join(&path[1..])).unwrap_err();
            let took = t.elapsed();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {path}: {e}");
            assert!(took < bound, "{what}: {path}: EIO after {took:?}");
            eprintln!(
                "FAULT registry {what} after caching: cached file in {hit:?}, uncached {path} EIO after {took:?}"
            );
        }
        // The mount is alive and still serves what it has.
        assert!(std::fs::read(m.dir.join(&cached.0[1..])).unwrap() == cached.1);
        m.unmount();
    }
}
