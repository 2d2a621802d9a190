//! Secrets stay out of output and logs: `clipctl create`, `cat` and `mount` (with
//! reads through the mount) against a real registry behind bearer tokens (the
//! test token server trades the basic credentials for tokens), at trace level for
//! every crate (`--log-level trace`, `CLIP_LOG_LEVEL` and `RUST_LOG`: hyper-util's
//! events included), credentials given each way clipctl takes them
//! (`--password-stdin`, `--password`, `CLIP_REGISTRY_*_<HOST>`, a `config.json`
//! `auth`). Everything printed and logged is scanned for the password, the base64
//! of `user:password` and every token the token server issued (its log lists
//! them): none may appear. It needs `docker-registry`, `skopeo`, `openssl`,
//! `python3` and /dev/fuse.

mod util;

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine;
use util::*;

const USER: &str = "clip-secret-user";
const PASSWORD: &str = "pw-7f3c9a1e-not-for-logs";
const WRONG_PASSWORD: &str = "pw-wrong-0b5d2c-not-for-logs";

/// A clipctl command logging everything at trace level.
fn traced() -> Command {
    let mut c = clipctl();
    c.env("RUST_LOG", "trace")
        .env("CLIP_LOG_LEVEL", "trace")
        .args(["--log-level", "trace"]);
    c
}

/// Runs `cmd` with `stdin` on its standard input; its output, whatever the exit.
fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn clipctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Everything captured, by where it came from.
#[derive(Default)]
struct Captured(Vec<(String, Vec<u8>)>);

impl Captured {
    fn output(&mut self, what: &str, out: &Output) {
        self.0.push((format!("{what}: stdout"), out.stdout.clone()));
        self.0.push((format!("{what}: stderr"), out.stderr.clone()));
    }

    fn file(&mut self, what: &str, path: &Path) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.0.push((format!("{what}: {}", path.display()), bytes));
    }

    fn all(&self) -> Vec<u8> {
        self.0.iter().flat_map(|(_, b)| b.iter().copied()).collect()
    }
}

/// `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_credential_or_token_in_any_output_or_log_at_trace_level() {
    require_fuse();
    let reg = TestRegistry::start(RegistryAuth::token(USER, PASSWORD, 300));
    let d = tmp("clip-secrets-");
    let layout = d.path().join("layout");
    multi_span_layout(&layout, "t");
    reg.push(&layout, "t", "app:v1");
    let host = reg.host();
    let image = format!("{host}/app:v1");
    let mut cap = Captured::default();

    // create, the password on stdin.
    let archive = d.path().join("a.clip");
    let out = run_with_stdin(
        traced()
            .arg("create")
            .arg(&image)
            .args(["--username", USER, "--password-stdin", "--out"])
            .arg(&archive),
        PASSWORD,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cap.output("create --password-stdin", &out);

    // A wrong password: the error is shown, not the password.
    let out = run_with_stdin(
        traced()
            .arg("create")
            .arg(&image)
            .args(["--username", USER, "--password-stdin", "--out"])
            .arg(d.path().join("wrong.clip")),
        WRONG_PASSWORD,
    );
    assert!(!out.status.success());
    cap.output("create with a wrong password", &out);

    // cat, the password on the command line, then from the environment; a
    // log file too.
    let log_file = d.path().join("cat.log");
    let out = ok(traced()
        .arg("--log-file")
        .arg(&log_file)
        .arg("cat")
        .arg(&archive)
        .arg("/data/blob1")
        .args(["--username", USER, "--password", PASSWORD]));
    assert!(
        out.stdout == pseudo_random_bytes(1, 3 << 20),
        "blob1 differs"
    );
    cap.output("cat --password", &out);
    cap.file("cat --log-file", &log_file);
    let var = host.to_ascii_uppercase().replace(['.', '-', ':'], "_");
    let out = ok(traced()
        .env(format!("CLIP_REGISTRY_USER_{var}"), USER)
        .env(format!("CLIP_REGISTRY_PASS_{var}"), PASSWORD)
        .arg("cat")
        .arg(&archive)
        .arg("/data/text"));
    assert!(out.stdout == compressible_bytes(5 << 20), "text differs");
    cap.output("cat with CLIP_REGISTRY_*", &out);

    // mount, credentials from a config.json `auth` (base64 of user:password),
    // every file read through it.
    let auth = DockerConfig::new()
        .auth(&host, USER, PASSWORD)
        .write(&d.path().join("docker"));
    let mnt = d.path().join("mnt");
    let m = Mounted::with_args(
        &archive,
        &mnt,
        &d.path().join("cache"),
        &[
            OsStr::new("--log-level"),
            OsStr::new("trace"),
            OsStr::new("--auth-file"),
            auth.as_os_str(),
        ],
    );
    for i in 0..4 {
        let got = std::fs::read(m.dir.join(format!("data/blob{i}"))).unwrap();
        assert!(got == pseudo_random_bytes(i, 3 << 20), "blob{i} differs");
    }
    let got = std::fs::read(m.dir.join("data/text")).unwrap();
    assert!(got == compressible_bytes(5 << 20), "text differs");
    m.unmount();
    cap.file("mount --log-file", &m.dir.with_extension("log"));
    cap.file("mount --stats-file", &m.stats);

    // The trace output is there, the HTTP stack's included: hyper-util's
    // connection and pool events (reqwest logs through the `log` crate, which
    // clipctl does not forward to its subscriber, so nothing of reqwest's shows).
    let all = cap.all();
    let text = String::from_utf8_lossy(&all);
    for (what, bytes) in &cap.0 {
        let logs = what.contains("stderr") || what.contains("--log-file");
        let empty = what.starts_with("cat --password: stderr"); // logged to its file
        if logs && !empty {
            assert!(
                contains(bytes, b"hyper_util::client::legacy::pool"),
                "no trace events of the HTTP client in {what}"
            );
        }
    }
    for target in [
        " TRACE ",
        "hyper_util::client::legacy::pool",
        "clip::registry::client: registry credentials",
    ] {
        assert!(text.contains(target), "no {target} events in the output");
    }

    let b64 = base64::engine::general_purpose::STANDARD;
    let mut secrets: Vec<(String, String)> = vec![
        ("the password".into(), PASSWORD.into()),
        ("the wrong password".into(), WRONG_PASSWORD.into()),
        (
            "base64 of user:password".into(),
            b64.encode(format!("{USER}:{PASSWORD}")),
        ),
        (
            "base64 of user:wrong password".into(),
            b64.encode(format!("{USER}:{WRONG_PASSWORD}")),
        ),
    ];
    let tokens = reg.issued_tokens();
    assert!(tokens.len() >= 4, "{} tokens issued", tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        secrets.push((format!("token {}", i + 1), t.clone()));
        // Its signature alone (a token cut short still shows it).
        let sig = t.rsplit('.').next().unwrap().to_string();
        secrets.push((format!("signature of token {}", i + 1), sig));
    }
    let mut found = Vec::new();
    for (what, bytes) in &cap.0 {
        for (name, secret) in &secrets {
            if contains(bytes, secret.as_bytes()) {
                found.push(format!("{name} in {what}"));
            }
        }
    }
    let logs: Vec<u8> = cap
        .0
        .iter()
        .filter(|(what, _)| !what.ends_with("stdout"))
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    eprintln!(
        "SECRETS scanned {} outputs and logs ({} bytes; stderr and log files {} bytes, {} lines) for {} secrets ({} tokens issued): {} found",
        cap.0.len(),
        all.len(),
        logs.len(),
        String::from_utf8_lossy(&logs).lines().count(),
        secrets.len(),
        tokens.len(),
        found.len()
    );
    assert!(found.is_empty(), "secrets in the output: {found:#?}");
}
