//! The S3 client (`clip::s3`) against a real S3-protocol server: versitygw
//! ([`S3Server`]) on loopback, checking SigV4 signatures. Uploads (single PUT and
//! multipart, progress, cancel), byte-exact ranged reads through [`S3Source`] with
//! one GET per `reader` call (counted in the server's access log), and the errors
//! for refused credentials, a missing bucket or key and an unreachable endpoint.
//! Without `versitygw` on PATH (`scripts/deps.sh`) these tests fail, never skip.

mod util;

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clip::s3::{S3Location, S3Options, S3Source, upload_file};
use clip::source::RangeSource;
use clip::{Error, error::ErrorCode};
use util::*;

const BUCKET: &str = "clip-test";

/// Writes `data` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Uploads `path` to `loc`, returning every progress call.
fn upload(path: &Path, loc: &S3Location, opts: &S3Options) -> clip::Result<Vec<(u64, u64)>> {
    let mut calls = Vec::new();
    upload_file(
        path,
        loc,
        opts,
        &mut |d, t| {
            calls.push((d, t));
            true
        },
        &AtomicBool::new(false),
    )?;
    Ok(calls)
}

fn server() -> S3Server {
    let s = S3Server::start();
    s.create_bucket(BUCKET);
    s
}

#[test]
fn multipart_upload_and_ranged_reads() {
    let s = server();
    let dir = tmp("clip-s3-data-");
    let data = pseudo_random_bytes(11, 20 * 1024 * 1024 + 12345);
    let path = write(dir.path(), "big.clip", &data);
    let loc = s.location(BUCKET, "images/v1/big.clip");

    let calls = upload(&path, &loc, &s.options()).unwrap();
    let total = data.len() as u64;
    assert_eq!(calls.last(), Some(&(total, total)), "{calls:?}");
    assert!(calls.len() >= 4, "progress per part: {calls:?}");
    assert!(calls.iter().all(|&(_, t)| t == total));
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");
    assert_eq!(s.count("s3_CreateMultipartUpload"), 1);
    assert_eq!(s.count("s3_UploadPart"), 3, "{:?}", s.operations());
    assert_eq!(s.count("s3_CompleteMultipartUpload"), 1);
    assert_eq!(s.count("s3_PutObject"), 0);
    // The object, as the server stores it.
    assert!(std::fs::read(s.root().join(BUCKET).join("images/v1/big.clip")).unwrap() == data);

    // The whole object: one HEAD learns its size.
    let src = S3Source::open(&loc, &s.options(), 0, None).unwrap();
    assert_eq!(s.count("s3_HeadObject"), 1);
    assert_eq!(src.size(), total);
    assert_eq!(src.describe(), "s3://clip-test/images/v1/big.clip");

    // Arbitrary ranges, byte-exact; each read_at is one GET.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let gets = s.gets();
    let mut reads = 0;
    for (off, len) in [
        (0u64, 1usize),
        (total - 1, 1),
        (total - 5000, 5000),
        (8 << 20, 1 << 20),
    ]
    .into_iter()
    .chain((0..20).map(|_| {
        let len = (next() % 300_000) as usize + 1;
        (next() % (total - len as u64), len)
    })) {
        let mut buf = vec![0u8; len];
        src.read_at(off, &mut buf).unwrap();
        assert!(
            buf == data[off as usize..off as usize + len],
            "range {off}+{len}"
        );
        reads += 1;
    }
    assert_eq!(s.gets() - gets, reads);

    // reader(start, end): exactly one GET, streamed.
    for (start, end) in [(0u64, total), (123, 4_000_123), (total - 10, total + 100)] {
        let before = s.gets();
        let mut r = src.reader(start, end).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 7919];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        drop(r);
        let end = end.min(total);
        assert!(
            got == data[start as usize..end as usize],
            "reader {start}..{end}"
        );
        assert_eq!(
            s.gets() - before,
            1,
            "reader {start}..{end}: {:?}",
            s.operations()
        );
    }
    // An empty range asks for nothing.
    let before = s.gets();
    let mut r = src.reader(500, 500).unwrap();
    assert_eq!(r.read(&mut [0u8; 16]).unwrap(), 0);
    drop(r);
    assert_eq!(s.gets(), before);

    // Past the end: an error, no request.
    let e = src.read_at(total - 3, &mut [0u8; 4]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Format, "{e}");
    assert_eq!(s.gets(), before);

    // A window [base, base + len): no HEAD, offsets relative to base.
    let heads = s.count("s3_HeadObject");
    let base = 5_000_000u64;
    let win = S3Source::open(&loc, &s.options(), base, Some(70_000)).unwrap();
    assert_eq!(s.count("s3_HeadObject"), heads);
    assert_eq!(win.size(), 70_000);
    let mut buf = vec![0u8; 1000];
    win.read_at(69_000, &mut buf).unwrap();
    let at = (base + 69_000) as usize;
    assert!(buf == data[at..at + 1000]);
    assert!(win.read_at(69_500, &mut buf).is_err());
    let mut all = Vec::new();
    win.reader(0, u64::MAX)
        .unwrap()
        .read_to_end(&mut all)
        .unwrap();
    assert!(all == data[base as usize..base as usize + 70_000]);
    // A window from base to the end, sized by a HEAD.
    let tail = S3Source::open(&loc, &s.options(), base, None).unwrap();
    assert_eq!(tail.size(), total - base);
}

#[test]
fn small_upload_is_one_put() {
    let s = server();
    let dir = tmp("clip-s3-data-");
    let data = pseudo_random_bytes(3, 100_000);
    let path = write(dir.path(), "small.rclip", &data);
    let loc = s.location(BUCKET, "small.clip");
    let calls = upload(&path, &loc, &s.options()).unwrap();
    assert_eq!(calls.last(), Some(&(100_000, 100_000)), "{calls:?}");
    assert_eq!(s.count("s3_PutObject"), 1);
    assert_eq!(s.count("s3_CreateMultipartUpload"), 0);
    let src = S3Source::open(&loc, &s.options(), 0, None).unwrap();
    let mut all = Vec::new();
    src.reader(0, src.size())
        .unwrap()
        .read_to_end(&mut all)
        .unwrap();
    assert!(all == data);

    // An empty file is one PUT too, and an empty object.
    let empty = write(dir.path(), "empty", b"");
    let loc = s.location(BUCKET, "dir/empty");
    assert_eq!(
        upload(&empty, &loc, &s.options()).unwrap().last(),
        Some(&(0, 0))
    );
    assert_eq!(
        S3Source::open(&loc, &s.options(), 0, None).unwrap().size(),
        0
    );
}

#[test]
fn wrong_secret_is_an_auth_error_without_the_secret() {
    let s = server();
    let dir = tmp("clip-s3-data-");
    let path = write(dir.path(), "f", b"hello");
    let loc = s.location(BUCKET, "f");
    upload(&path, &loc, &s.options()).unwrap();

    let wrong = "WRONG-secret-Zq81xJ4kTT";
    let opts = s.options_with_secret(wrong);
    let check = |e: Error, what: &str| {
        let msg = e.to_string();
        assert_eq!(e.code(), ErrorCode::Auth, "{what}: {msg}");
        assert!(msg.contains(&s.endpoint()), "{what}: no endpoint in {msg}");
        assert!(msg.contains(BUCKET), "{what}: no bucket in {msg}");
        assert!(msg.contains("refused the credentials"), "{what}: {msg}");
        assert!(
            !msg.contains(wrong) && !msg.contains(S3_SECRET_KEY),
            "{what}: {msg}"
        );
        assert!(!format!("{e:?}").contains(wrong), "{what}: {e:?}");
    };
    // HEAD (no error body), GET and PUT.
    check(S3Source::open(&loc, &opts, 0, None).unwrap_err(), "head");
    let src = S3Source::open(&loc, &opts, 0, Some(5)).unwrap();
    check(src.read_at(0, &mut [0u8; 5]).unwrap_err(), "get");
    check(src.reader(0, 5).err().unwrap(), "reader");
    check(upload(&path, &loc, &opts).unwrap_err(), "put");
    // A multipart upload.
    let big = write(dir.path(), "big", &pseudo_random_bytes(5, 17 << 20));
    check(upload(&big, &loc, &opts).unwrap_err(), "multipart");
    // An unknown access key.
    let mut other = s.options();
    other.credentials.as_mut().unwrap().access_key = "NOSUCHKEY".into();
    check(upload(&path, &loc, &other).unwrap_err(), "access key");
    // And the debug output of options redacts the secret.
    assert!(!format!("{opts:?}").contains(wrong));
}

#[test]
fn missing_bucket_and_key_are_not_found() {
    let s = server();
    let dir = tmp("clip-s3-data-");
    let path = write(dir.path(), "f", b"hello");

    let nob = s.location("no-such-bucket", "k.clip");
    let check_bucket = |e: Error, what: &str| {
        let msg = e.to_string();
        assert_eq!(e.code(), ErrorCode::NotFound, "{what}: {msg}");
        assert!(
            msg.contains("bucket no-such-bucket does not exist") && msg.contains(&s.endpoint()),
            "{what}: {msg}"
        );
    };
    check_bucket(
        S3Source::open(&nob, &s.options(), 0, None).unwrap_err(),
        "head",
    );
    let src = S3Source::open(&nob, &s.options(), 0, Some(5)).unwrap();
    check_bucket(src.read_at(0, &mut [0u8; 5]).unwrap_err(), "get");
    check_bucket(upload(&path, &nob, &s.options()).unwrap_err(), "put");
    let big = write(dir.path(), "big", &pseudo_random_bytes(5, 17 << 20));
    check_bucket(upload(&big, &nob, &s.options()).unwrap_err(), "multipart");

    let nok = s.location(BUCKET, "no/such/key.clip");
    let check_key = |e: Error, what: &str| {
        let msg = e.to_string();
        assert_eq!(e.code(), ErrorCode::NotFound, "{what}: {msg}");
        assert!(
            msg.contains("s3://clip-test/no/such/key.clip"),
            "{what}: {msg}"
        );
    };
    check_key(
        S3Source::open(&nok, &s.options(), 0, None).unwrap_err(),
        "head",
    );
    let src = S3Source::open(&nok, &s.options(), 0, Some(5)).unwrap();
    check_key(src.read_at(0, &mut [0u8; 5]).unwrap_err(), "get");
    check_key(src.reader(0, 5).err().unwrap(), "reader");
}

#[test]
fn cancelled_multipart_upload_leaves_nothing() {
    let s = server();
    let dir = tmp("clip-s3-data-");
    let data = pseudo_random_bytes(9, 40 << 20);
    let path = write(dir.path(), "big", &data);
    let loc = s.location(BUCKET, "cancelled.clip");
    let cancel = AtomicBool::new(false);
    let mut calls = Vec::new();
    let e = upload_file(
        &path,
        &loc,
        &s.options(),
        &mut |d, t| {
            calls.push((d, t));
            if d > 0 {
                cancel.store(true, Ordering::Relaxed);
            }
            true
        },
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Canceled), "{e}");
    assert!(calls.iter().all(|&(d, t)| d < t), "{calls:?}");
    // Aborted (a part still being written can make the first abort fail: retried).
    let aborts: Vec<u16> = s
        .requests()
        .into_iter()
        .filter(|(op, _)| op == "s3_AbortMultipartUpload")
        .map(|(_, status)| status)
        .collect();
    assert!(
        aborts.last().is_some_and(|&st| st == 204 || st == 200),
        "aborts {aborts:?}: {:?}",
        s.requests()
    );
    assert_eq!(s.count("s3_CompleteMultipartUpload"), 0);
    let e = S3Source::open(&loc, &s.options(), 0, None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
    // No parts stay behind in the gateway's staging area either.
    assert!(
        no_files_under(&s.root().join(BUCKET)),
        "leftovers under the bucket: {}\n{:?}",
        String::from_utf8_lossy(
            &std::process::Command::new("find")
                .arg(s.root())
                .output()
                .unwrap()
                .stdout
        ),
        s.requests()
    );

    // Cancelled before starting: nothing is sent.
    let before = s.operations().len();
    cancel.store(true, Ordering::Relaxed);
    let e = upload_file(&path, &loc, &s.options(), &mut |_, _| true, &cancel).unwrap_err();
    assert!(matches!(e, Error::Canceled), "{e}");
    assert_eq!(s.operations().len(), before);
}

#[test]
fn unreachable_endpoint_is_a_network_error() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let loc = S3Location {
        bucket: BUCKET.into(),
        key: "k".into(),
        region: S3_REGION.into(),
        endpoint: format!("http://127.0.0.1:{port}"),
        path_style: true,
    };
    let mut opts = S3Options {
        credentials: Some(clip::s3::S3Credentials {
            access_key: S3_ACCESS_KEY.into(),
            secret_key: S3_SECRET_KEY.into(),
            session_token: None,
        }),
        ..S3Options::default()
    };
    opts.retries = 2;
    opts.timeout = Duration::from_secs(2);
    let t = Instant::now();
    let e = S3Source::open(&loc, &opts, 0, None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Network, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&loc.endpoint) && !msg.contains(S3_SECRET_KEY),
        "{msg}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[test]
fn invalid_locations() {
    let opts = S3Options::default();
    for (loc, what) in [
        (
            S3Location {
                bucket: "b".into(),
                key: "k".into(),
                endpoint: "ftp://127.0.0.1:1".into(),
                ..S3Location::default()
            },
            "ftp://127.0.0.1:1",
        ),
        (
            S3Location {
                bucket: "b".into(),
                key: "".into(),
                ..S3Location::default()
            },
            "key is empty",
        ),
    ] {
        let mut o = opts.clone();
        o.credentials = Some(clip::s3::S3Credentials {
            access_key: "a".into(),
            secret_key: "s".into(),
            session_token: None,
        });
        let e = S3Source::open(&loc, &o, 0, Some(1)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
    let e = S3Location::parse_url("s3://only-bucket").unwrap_err();
    assert!(e.to_string().contains("s3://only-bucket"), "{e}");
}

/// Set in the environment of [`env_credentials_child`] runs.
const CHILD_VAR: &str = "CLIP_S3_TEST_CHILD";

/// Runs [`env_credentials_child`] in a child process (the environment is per
/// process) with `env`, returning its combined output and success.
fn run_child(env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "env_credentials_child",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env(CHILD_VAR, "1").envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn credentials_region_and_endpoint_from_the_environment() {
    let s = server();
    let dir = tmp("clip-s3-data-");
    let path = write(dir.path(), "f", b"from the environment");
    upload(&path, &s.location(BUCKET, "env/f"), &s.options()).unwrap();
    let ep = s.endpoint();
    let (ok, out) = run_child(&[
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ("AWS_REGION", S3_REGION),
        ("AWS_ENDPOINT_URL", &ep),
    ]);
    assert!(ok && out.contains("CHILD OK"), "{out}");
    // Without a key pair nothing is sent.
    let before = s.requests().len();
    let (ok, out) = run_child(&[("AWS_ENDPOINT_URL", &ep)]);
    assert!(ok && out.contains("CHILD AUTH"), "{out}");
    assert_eq!(s.requests().len(), before);
}

/// The child of [`credentials_region_and_endpoint_from_the_environment`]; does
/// nothing in a normal run.
#[test]
fn env_credentials_child() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    // Region and endpoint empty: from AWS_REGION / AWS_ENDPOINT_URL.
    let loc = S3Location {
        path_style: true,
        ..S3Location::parse_url(&format!("s3://{BUCKET}/env/f")).unwrap()
    };
    match S3Source::open(&loc, &S3Options::default(), 0, None) {
        Ok(src) => {
            let mut all = Vec::new();
            src.reader(0, src.size())
                .unwrap()
                .read_to_end(&mut all)
                .unwrap();
            assert_eq!(all, b"from the environment");
            println!("CHILD OK");
        }
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::Auth, "{e}");
            assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
            println!("CHILD AUTH");
        }
    }
}

#[test]
fn a_progress_stop_ends_the_upload_like_a_cancel() {
    let s = server();
    let dir = tmp("clip-s3-data-");
    let path = write(dir.path(), "big", &pseudo_random_bytes(10, 40 << 20));
    let loc = s.location(BUCKET, "stopped.clip");
    let never = AtomicBool::new(false);
    let e = upload_file(&path, &loc, &s.options(), &mut |d, _| d == 0, &never).unwrap_err();
    assert!(matches!(e, Error::Canceled), "{e}");
    assert_eq!(s.count("s3_CompleteMultipartUpload"), 0);
    let e = S3Source::open(&loc, &s.options(), 0, None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
}
