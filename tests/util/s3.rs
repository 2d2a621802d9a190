//! [`S3Server`]: a real S3-protocol server on loopback for the S3 tests:
//! [versitygw](https://github.com/versity/versitygw) v1.8.0 with its posix backend
//! (objects are files under a temporary root directory), one root account, SigV4
//! signatures checked on every request.
//!
//! Buckets are created with versitygw's own admin API (`versitygw admin
//! create-bucket`, a signed request to the gateway). Requests are counted from the
//! gateway's S3 access log (`--access-log`): one line per request, naming its S3
//! operation (`s3_GetObject`, `s3_HeadObject`, ...), written before the response
//! is sent, so a count read after a call returned is exact.
//!
//! Tests fail loudly (never skip) when `versitygw` is not on `PATH`
//! (`scripts/deps.sh` installs it).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clip::s3::{S3Credentials, S3Location, S3Options};

use super::cli::tmp;
use super::tools::{find_tool, run_checked};

/// The versitygw release the tests run.
pub const VERSITYGW_VERSION: &str = "v1.8.0";
/// How to install versitygw (what `scripts/deps.sh` runs).
pub const VERSITYGW_INSTALL: &str =
    "GOBIN=/usr/local/bin go install github.com/versity/versitygw/cmd/versitygw@v1.8.0";
/// The gateway's root access key id.
pub const S3_ACCESS_KEY: &str = "CLIPTESTROOTKEY";
/// The gateway's root secret key (tests check that errors never show it).
pub const S3_SECRET_KEY: &str = "clip-test-secret-9f8e7d6c5b4a";
/// The gateway's region.
pub const S3_REGION: &str = "us-east-1";
/// How long [`S3Server::start`] waits for the gateway to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running versitygw; killed when dropped.
pub struct S3Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The path of `versitygw`, or a panic saying how to install it.
pub fn require_versitygw() -> PathBuf {
    find_tool("versitygw").unwrap_or_else(|| {
        panic!(
            "required tool `versitygw` ({VERSITYGW_VERSION}) not found on PATH; install it with \
             `{VERSITYGW_INSTALL}` (scripts/deps.sh does) — the S3 tests fail rather than skip \
             without it"
        )
    })
}

impl S3Server {
    /// Starts versitygw on a free 127.0.0.1 port over a new temporary root
    /// directory and waits until it answers.
    pub fn start() -> S3Server {
        let bin = require_versitygw();
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tmp("clip-s3-");
            let root = dir.path().join("root");
            fs::create_dir(&root).unwrap();
            // A free port (another process may take it before versitygw binds it;
            // then the start is tried again).
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let out = fs::File::create(dir.path().join("versitygw.out")).unwrap();
            let child = Command::new(&bin)
                .arg("--port")
                .arg(format!("127.0.0.1:{port}"))
                .args(["--access", S3_ACCESS_KEY, "--secret", S3_SECRET_KEY])
                .args(["--region", S3_REGION, "--health", "/health", "--quiet"])
                .arg("--access-log")
                .arg(dir.path().join("access.log"))
                .arg("posix")
                .arg(&root)
                .env_remove("ROOT_ACCESS_KEY_ID")
                .env_remove("ROOT_SECRET_ACCESS_KEY")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut server = S3Server {
                child,
                port,
                dir,
                bin: bin.clone(),
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("versitygw did not start: {last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("versitygw exited ({status}):\n{}", self.output()));
            }
            if let Some(status) = http_status(self.port, "/health")
                && status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "versitygw did not answer on 127.0.0.1:{} within {READY_TIMEOUT:?}:\n{}",
                    self.port,
                    self.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What versitygw printed so far.
    pub fn output(&self) -> String {
        fs::read_to_string(self.dir.path().join("versitygw.out")).unwrap_or_default()
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port the gateway listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The root access key id.
    pub fn access_key(&self) -> &'static str {
        S3_ACCESS_KEY
    }

    /// The root secret key.
    pub fn secret_key(&self) -> &'static str {
        S3_SECRET_KEY
    }

    /// The region.
    pub fn region(&self) -> &'static str {
        S3_REGION
    }

    /// The posix root directory: bucket `b`'s object `k` is the file `root/b/k`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Creates bucket `name`, owned by the root account (versitygw's admin API).
    pub fn create_bucket(&self, name: &str) {
        run_checked(
            Command::new(&self.bin)
                .args([
                    "admin",
                    "--access",
                    S3_ACCESS_KEY,
                    "--secret",
                    S3_SECRET_KEY,
                ])
                .args(["--region", S3_REGION, "--endpoint-url"])
                .arg(self.endpoint())
                .args(["create-bucket", "--bucket", name, "--owner", S3_ACCESS_KEY]),
        );
        assert!(
            self.root().join(name).is_dir(),
            "bucket {name} was not created"
        );
    }

    /// `s3://bucket/key` on this server (path style, its endpoint and region).
    pub fn location(&self, bucket: &str, key: &str) -> S3Location {
        S3Location {
            bucket: bucket.to_string(),
            key: key.to_string(),
            region: S3_REGION.to_string(),
            endpoint: self.endpoint(),
            path_style: true,
        }
    }

    /// Options with the root credentials, 1 retry.
    pub fn options(&self) -> S3Options {
        self.options_with_secret(S3_SECRET_KEY)
    }

    /// Options with the root access key and `secret`.
    pub fn options_with_secret(&self, secret: &str) -> S3Options {
        S3Options {
            credentials: Some(S3Credentials {
                access_key: S3_ACCESS_KEY.to_string(),
                secret_key: secret.to_string(),
                session_token: None,
            }),
            retries: 1,
            timeout: Duration::from_secs(10),
        }
    }

    /// The requests that reached the gateway so far, in order: their S3 operation
    /// (`s3_GetObject`, `s3_PutObject`, ...; `-` when it was refused before being
    /// recognised) and HTTP status.
    pub fn requests(&self) -> Vec<(String, u16)> {
        let log = fs::read_to_string(self.access_log()).unwrap_or_default();
        log.lines()
            .filter(|l| !l.starts_with("log starts"))
            .filter_map(access_log_entry)
            .collect()
    }

    /// The S3 operations of [`requests`](Self::requests).
    pub fn operations(&self) -> Vec<String> {
        self.requests().into_iter().map(|(op, _)| op).collect()
    }

    /// How many requests of operation `op` (`"s3_GetObject"`) reached the gateway.
    pub fn count(&self, op: &str) -> usize {
        self.operations().iter().filter(|o| *o == op).count()
    }

    /// How many `GET`s of an object (`s3_GetObject`) reached the gateway.
    pub fn gets(&self) -> usize {
        self.count("s3_GetObject")
    }

    /// The access log file.
    pub fn access_log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operation and status of an access log line: `owner bucket
/// [dd/Month/yyyy:hh:mm:ss +0000] ip requester request-id OPERATION key uri STATUS ...`.
fn access_log_entry(line: &str) -> Option<(String, u16)> {
    let (_, rest) = line.split_once("] ")?;
    let mut f = rest.split(' ').skip(3);
    let op = f.next()?.to_string();
    let status = f.nth(2)?.parse().ok()?;
    Some((op, status))
}

/// The status of a plain `GET path` on 127.0.0.1:port, if it answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    head.split(' ').nth(1)?.parse().ok()
}

/// Whether `dir` (recursively) holds no regular file.
pub fn no_files_under(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return true;
    };
    entries.flatten().all(|e| {
        let p = e.path();
        if p.is_dir() {
            no_files_under(&p)
        } else {
            false
        }
    })
}
