//! [`TestRegistry`]: a real OCI distribution registry on loopback for the registry
//! tests: Debian's `docker-registry` (distribution 2.8.2) over plain HTTP with
//! filesystem storage in a temporary directory, anonymous, behind `htpasswd` Basic
//! auth, or behind bearer tokens from a token server the tests run
//! (`tests/util/token_server.py`). Images get in with skopeo
//! ([`TestRegistry::push`]).
//!
//! Also: a raw HTTP helper ([`http_get`]), a docker credential helper program
//! ([`write_credential_helper`]) and docker `config.json` files ([`DockerConfig`]).
//!
//! Token expiry: distribution 2.x accepts a token until its `exp` claim **plus
//! 60 s** of clock-skew leeway ([`REGISTRY_TOKEN_LEEWAY_SECS`]; `nbf` gets the same
//! leeway the other way). To make short lifetimes testable, the token server sets
//! `exp = iat + ttl_secs - 60`, with `iat` the issue time rounded **up** to a whole
//! second, and answers `expires_in: ttl_secs`. So the registry accepts a token for
//! at least `ttl_secs` and at most `ttl_secs + 1` seconds after it was issued: wait
//! `ttl_secs + 1.5` s to be sure it is refused (`401`). A client that decodes the
//! JWT's `exp` itself sees a time in the past; clients should (and the spec says
//! to) go by `expires_in`.
//!
//! Tests fail loudly (never skip) when `docker-registry`, `skopeo`, `htpasswd`,
//! `openssl` or `python3` is missing (`scripts/deps.sh` installs them).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::cli::tmp;
use super::tools::{require_tool, run_checked};

/// Where Debian's `docker-registry` package installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The registry's `auth.token.service` (the token's audience).
pub const TOKEN_SERVICE: &str = "clip-test-registry";
/// The registry's `auth.token.issuer` (the token's `iss`).
pub const TOKEN_ISSUER: &str = "clip-test-token-issuer";
/// The registry's `auth.htpasswd.realm`.
pub const HTPASSWD_REALM: &str = "clip-test-registry";
/// Clock-skew leeway distribution 2.x allows on a token's `exp` and `nbf`
/// (`registry/auth/token.Leeway`); the token server subtracts it from `exp` (see
/// the module docs).
pub const REGISTRY_TOKEN_LEEWAY_SECS: u64 = 60;
/// Name of the helper [`write_credential_helper`] writes (`docker-credential-cliptest`).
pub const CRED_HELPER_NAME: &str = "cliptest";
/// How often [`TestRegistry::start`] polls `/v2/` while the registry starts.
const READY_POLL: Duration = Duration::from_millis(20);
/// How long [`TestRegistry::start`] waits for the registry to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Response header (set in the registry config) proving `/v2/` answered from our
/// process and not from something else that grabbed the port.
const INSTANCE_HEADER: &str = "X-Clip-Test-Instance";

/// How the registry authenticates clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryAuth {
    /// No auth: anyone may pull and push.
    None,
    /// HTTP Basic against an htpasswd file (bcrypt) holding this one user.
    Htpasswd {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// Bearer tokens (`WWW-Authenticate: Bearer realm=..,service=..`) from the
    /// test's token server. Only `user`/`password` (HTTP Basic on `GET /token`, or
    /// an OAuth2 `POST`) gets a token; anonymous token requests get `401`. Tokens
    /// say `expires_in: expires_in_secs` (`ttl_secs` unless made with
    /// [`token_expiring_early`](Self::token_expiring_early)) and the registry
    /// refuses them `ttl_secs` (to `ttl_secs + 1`) seconds after issue (see the
    /// module docs).
    Token {
        /// The user name.
        user: String,
        /// The password.
        password: String,
        /// Token lifetime in seconds.
        ttl_secs: u64,
        /// The lifetime the token server's answers claim (`expires_in`).
        expires_in_secs: u64,
    },
    /// Like [`Token`](Self::Token), but anonymous token requests get a token too,
    /// granting only `pull` (a public repository, as on Docker Hub); pushing still
    /// needs `user`/`password`.
    PublicToken {
        /// The user name.
        user: String,
        /// The password.
        password: String,
        /// Token lifetime in seconds.
        ttl_secs: u64,
    },
}

impl RegistryAuth {
    /// [`RegistryAuth::Htpasswd`] with these credentials.
    pub fn htpasswd(user: &str, password: &str) -> RegistryAuth {
        RegistryAuth::Htpasswd {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// [`RegistryAuth::Token`] with these credentials and token lifetime.
    pub fn token(user: &str, password: &str, ttl_secs: u64) -> RegistryAuth {
        RegistryAuth::token_expiring_early(user, password, ttl_secs, ttl_secs)
    }

    /// [`RegistryAuth::Token`] whose tokens say `expires_in: expires_in_secs` but
    /// are refused `ttl_secs` after issue: a client that goes by `expires_in` gets
    /// a `401` for a token it holds fresh (expired early, revoked).
    pub fn token_expiring_early(
        user: &str,
        password: &str,
        ttl_secs: u64,
        expires_in_secs: u64,
    ) -> RegistryAuth {
        RegistryAuth::Token {
            user: user.to_string(),
            password: password.to_string(),
            ttl_secs,
            expires_in_secs,
        }
    }

    /// [`RegistryAuth::PublicToken`] with these credentials and token lifetime.
    pub fn public_token(user: &str, password: &str, ttl_secs: u64) -> RegistryAuth {
        RegistryAuth::PublicToken {
            user: user.to_string(),
            password: password.to_string(),
            ttl_secs,
        }
    }

    /// The user name and password, if this mode has any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            RegistryAuth::None => None,
            RegistryAuth::Htpasswd { user, password }
            | RegistryAuth::Token { user, password, .. }
            | RegistryAuth::PublicToken { user, password, .. } => Some((user, password)),
        }
    }

    /// The token lifetime, in the token modes.
    pub fn ttl_secs(&self) -> Option<u64> {
        match self {
            RegistryAuth::Token { ttl_secs, .. } | RegistryAuth::PublicToken { ttl_secs, .. } => {
                Some(*ttl_secs)
            }
            _ => None,
        }
    }

    /// The token lifetime the token server's answers claim (`expires_in`), in the
    /// token modes.
    pub fn expires_in_secs(&self) -> Option<u64> {
        match self {
            RegistryAuth::Token {
                expires_in_secs, ..
            } => Some(*expires_in_secs),
            RegistryAuth::PublicToken { ttl_secs, .. } => Some(*ttl_secs),
            _ => None,
        }
    }
}

/// Path of a blob's bytes in a registry's storage root `storage` (`sha256:<hex>`
/// or `<hex>`).
pub fn blob_path_in(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// The token server process and where it listens.
struct TokenServer {
    child: Child,
    /// Kept open so the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    port: u16,
    log: PathBuf,
    stderr: PathBuf,
    refresh_token: String,
}

/// A running `docker-registry serve` on `127.0.0.1:<free port>` (plus its token
/// server in the token modes). Both processes are killed, and the storage deleted,
/// when it is dropped.
pub struct TestRegistry {
    registry: Child,
    token_server: Option<TokenServer>,
    host: String,
    auth: RegistryAuth,
    log: PathBuf,
    storage: PathBuf,
    // Last, so it is removed after the processes are gone.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRegistry")
            .field("host", &self.host)
            .field("auth", &self.auth)
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn registry_bin() -> PathBuf {
    let p = Path::new(REGISTRY_BIN);
    if p.exists() {
        p.to_path_buf()
    } else {
        require_tool("docker-registry")
    }
}

fn token_server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/util/token_server.py")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free loopback port")
        .port()
}

fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building an HTTP client")
}

/// Quotes `s` for YAML (a JSON string is a valid YAML double-quoted scalar).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("yaml string")
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl TestRegistry {
    /// Starts a registry with `auth` and waits (polling `/v2/` every 20 ms) until it
    /// answers (`200`, or `401` with auth). Panics with the registry's log if it
    /// exits or does not answer within 30 s, and with an install hint if a tool is
    /// missing. Startup takes a few tens of milliseconds (plus ~20 ms of key
    /// generation and ~50 ms of Python start in the token modes).
    pub fn start(auth: RegistryAuth) -> TestRegistry {
        TestRegistry::start_with(auth, "")
    }

    /// A pull-through cache of `upstream` (distribution's proxy mode,
    /// `proxy.remoteurl`), anonymous: it fetches what it is asked for from
    /// `upstream` and keeps it in its own storage. Read-only (no pushes).
    pub fn start_mirror(upstream: &TestRegistry) -> TestRegistry {
        TestRegistry::start_mirror_with(upstream, RegistryAuth::None)
    }

    /// Like [`start_mirror`](Self::start_mirror), with clients authenticating as
    /// `auth` says (its credentials for the upstream are the upstream's own).
    pub fn start_mirror_with(upstream: &TestRegistry, auth: RegistryAuth) -> TestRegistry {
        let mut extra = format!("proxy:\n  remoteurl: {}\n", yaml_str(&upstream.url()));
        if let Some((u, p)) = upstream.auth.credentials() {
            let _ = write!(
                extra,
                "  username: {}\n  password: {}\n",
                yaml_str(u),
                yaml_str(p)
            );
        }
        TestRegistry::start_with(auth, &extra)
    }

    /// Like [`start`](Self::start), with `extra` appended to the registry's YAML
    /// configuration (top-level sections such as `proxy:`).
    pub fn start_with(auth: RegistryAuth, extra: &str) -> TestRegistry {
        let bin = registry_bin();
        let dir = tmp("clip-registry-");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("create registry storage dir");
        let auth_yaml = match &auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd { user, password } => {
                let htpasswd = require_tool("htpasswd");
                let out = run_checked(Command::new(htpasswd).args(["-Bbn", user, password]));
                let file = dir.path().join("htpasswd");
                fs::write(&file, &out.stdout).expect("write htpasswd file");
                format!(
                    "auth:\n  htpasswd:\n    realm: {}\n    path: {}\n",
                    yaml_str(HTPASSWD_REALM),
                    yaml_str(&file.to_string_lossy())
                )
            }
            RegistryAuth::Token { .. } | RegistryAuth::PublicToken { .. } => String::new(),
        };
        let token_server = auth.ttl_secs().map(|ttl| {
            let (user, password) = auth.credentials().expect("token mode credentials");
            let public = matches!(auth, RegistryAuth::PublicToken { .. });
            let says = auth.expires_in_secs().unwrap_or(ttl);
            start_token_server(dir.path(), user, password, (ttl, says), public)
        });
        let auth_yaml = match &token_server {
            Some(ts) => format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                yaml_str(&format!("http://127.0.0.1:{}/token", ts.port)),
                yaml_str(TOKEN_SERVICE),
                yaml_str(TOKEN_ISSUER),
                yaml_str(&dir.path().join("token-cert.pem").to_string_lossy()),
            ),
            None => auth_yaml,
        };
        let log = dir.path().join("registry.log");
        let mut last_log = String::new();
        // A free port may be taken between finding and binding it: retry then.
        for _attempt in 0..5 {
            let port = free_port();
            let instance = format!("{:x}-{port}", std::process::id());
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: clip-test-secret\n  \
                 headers:\n    {INSTANCE_HEADER}: [{instance}]\n\
                 health:\n  storagedriver:\n    enabled: false\n\
                 {auth_yaml}{extra}",
                storage = yaml_str(&storage.to_string_lossy()),
                instance = yaml_str(&instance),
            );
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).expect("write registry config");
            let log_file = fs::File::create(&log).expect("create registry log");
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("dup registry log"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("failed to start {}: {e}", bin.display()));
            let host = format!("127.0.0.1:{port}");
            match wait_ready(&mut child, &host, &instance, &log) {
                Ok(()) => {
                    return TestRegistry {
                        registry: child,
                        token_server,
                        host,
                        auth,
                        log,
                        storage,
                        dir,
                    };
                }
                Err(text) if text.contains("address already in use") => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = text;
                }
                Err(text) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let ts = token_server
                        .as_ref()
                        .map(|t| read_lossy(&t.stderr))
                        .unwrap_or_default();
                    panic!(
                        "docker-registry did not start on {host}:\n{text}\n--- token server ---\n{ts}"
                    );
                }
            }
        }
        panic!("docker-registry could not bind a free port in 5 attempts:\n{last_log}");
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// The auth mode it was started with.
    pub fn auth(&self) -> &RegistryAuth {
        &self.auth
    }

    /// `user:password` for skopeo's `--creds`, if the mode has credentials.
    pub fn creds(&self) -> Option<String> {
        self.auth.credentials().map(|(u, p)| format!("{u}:{p}"))
    }

    /// The token realm (`http://127.0.0.1:PORT/token`), in the token modes.
    pub fn realm(&self) -> Option<String> {
        self.token_server
            .as_ref()
            .map(|t| format!("http://127.0.0.1:{}/token", t.port))
    }

    /// The OAuth2 refresh token the token server accepts (`POST /token` with
    /// `grant_type=refresh_token`) and hands out on `GET /token?offline_token=true`
    /// with credentials: a docker `identitytoken`. In the token modes.
    pub fn refresh_token(&self) -> Option<String> {
        self.token_server.as_ref().map(|t| t.refresh_token.clone())
    }

    /// The registry's storage root (`rootdirectory`), e.g. to corrupt a blob.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// Path of a blob's bytes in the registry's storage (`sha256:<hex>` or `<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path_in(&self.storage, digest)
    }

    /// The registry's output so far (its log on stderr and access log on stdout),
    /// for debugging.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// The token server's stderr (its access log and any traceback).
    pub fn token_server_log(&self) -> String {
        self.token_server
            .as_ref()
            .map(|t| read_lossy(&t.stderr))
            .unwrap_or_default()
    }

    /// How many tokens the token server has issued (0 without one).
    pub fn tokens_issued(&self) -> u64 {
        self.token_requests().len() as u64
    }

    /// One JSON object per token issued, oldest first: `n`, `sub` (the user, `""`
    /// when anonymous), `via` (`basic`, `anonymous`, `oauth-password` or
    /// `oauth-refresh`), `scopes` (as requested), `access` (as granted) and
    /// `token` (the JWT).
    pub fn token_requests(&self) -> Vec<Value> {
        let Some(ts) = &self.token_server else {
            return Vec::new();
        };
        read_lossy(&ts.log)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("token log line"))
            .collect()
    }

    /// Every token the token server has issued (the JWTs), oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.token_requests()
            .iter()
            .map(|t| t["token"].as_str().expect("token in the log").to_string())
            .collect()
    }

    /// Gets a token for `scope` (e.g. `repository:app:pull`) straight from the
    /// token server with the mode's credentials (HTTP Basic), panicking unless it
    /// answers `200`. Token modes only.
    pub fn fetch_token(&self, scope: &str) -> String {
        let realm = self
            .realm()
            .expect("fetch_token needs a token-mode registry");
        let mut req = http_client()
            .get(&realm)
            .query(&[("service", TOKEN_SERVICE), ("scope", scope)]);
        if let Some((u, p)) = self.auth.credentials() {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().expect("token request");
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        assert!(
            status.is_success(),
            "token server answered {status}: {body}"
        );
        let v: Value = serde_json::from_str(&body).expect("token response JSON");
        v["token"].as_str().expect("token in response").to_string()
    }

    /// Pushes image `tag` of the OCI layout `layout_dir` to `repo_and_tag` (e.g.
    /// `app:v1`) with `skopeo copy --all --preserve-digests` (so the manifest or
    /// index digest in the registry is the layout's), using the mode's credentials.
    /// Returns the pushed manifest's digest; panics with skopeo's output (and the
    /// registry log) on failure.
    pub fn push(&self, layout_dir: &Path, tag: &str, repo_and_tag: &str) -> String {
        let mut src = OsString::from("oci:");
        src.push(layout_dir.as_os_str());
        src.push(":");
        src.push(tag);
        self.push_ref(src, repo_and_tag)
    }

    /// Like [`push`](Self::push) from any skopeo source reference (`oci:DIR:TAG`,
    /// `dir:DIR`, `oci-archive:FILE`, ...).
    pub fn push_ref(&self, src: impl Into<OsString>, repo_and_tag: &str) -> String {
        let skopeo = require_tool("skopeo");
        let digest_file = tempfile::NamedTempFile::new_in(self.dir.path()).expect("digest file");
        let mut cmd = Command::new(skopeo);
        cmd.args(["--insecure-policy", "copy", "--quiet", "--all"])
            .args(["--preserve-digests", "--dest-tls-verify=false"])
            .arg("--digestfile")
            .arg(digest_file.path());
        match self.creds() {
            Some(c) => cmd.arg("--dest-creds").arg(c),
            None => cmd.arg("--dest-no-creds"),
        };
        cmd.arg(src.into())
            .arg(format!("docker://{}/{repo_and_tag}", self.host));
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}):\n{}{}\n--- registry log ---\n{}\n--- token server ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log(),
            self.token_server_log()
        );
        fs::read_to_string(digest_file.path())
            .expect("skopeo --digestfile")
            .trim()
            .to_string()
    }

    /// Uploads `data` as a blob of `repo` over the distribution API (POST, then a
    /// monolithic PUT), with the mode's credentials if Basic; returns its digest.
    /// For inputs skopeo would refuse to copy (a descriptor that lies about a
    /// size, manifests of any shape).
    pub fn put_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = super::sha256_digest(data);
        let c = http_client();
        let auth = |r: reqwest::blocking::RequestBuilder| match self.auth.credentials() {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        };
        let resp = auth(c.post(format!("{}/v2/{repo}/blobs/uploads/", self.url())))
            .send()
            .expect("POST blob upload");
        assert_eq!(
            resp.status().as_u16(),
            202,
            "POST blob upload: {:?}",
            resp.text()
        );
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with('/') {
            format!("{}{loc}", self.url())
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let resp = auth(c.put(format!("{loc}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .expect("PUT blob");
        assert_eq!(resp.status().as_u16(), 201, "PUT blob: {:?}", resp.text());
        digest
    }

    /// PUTs `bytes` as the manifest (or index) `reference` of `repo` with
    /// `media_type`, with the mode's credentials if Basic; returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let mut req = http_client()
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.url()))
            .header("content-type", media_type)
            .body(bytes.to_vec());
        if let Some((u, p)) = self.auth.credentials() {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().expect("PUT manifest");
        let status = resp.status().as_u16();
        assert_eq!(
            status,
            201,
            "PUT manifest {repo}:{reference}: {:?}",
            resp.text()
        );
        super::sha256_digest(bytes)
    }

    /// Runs `skopeo inspect --tls-verify=false [--raw] docker://HOST/REPO_AND_TAG`
    /// with `creds` (`user:password`) or none (`--no-creds`), and a nonexistent
    /// auth file so that nothing on the machine leaks in. Returns its output,
    /// successful or not.
    pub fn skopeo_inspect(&self, repo_and_tag: &str, creds: Option<&str>, raw: bool) -> Output {
        let mut cmd = Command::new(require_tool("skopeo"));
        cmd.args(["inspect", "--tls-verify=false", "--authfile"])
            .arg(self.dir.path().join("no-such-auth.json"));
        if raw {
            cmd.arg("--raw");
        }
        match creds {
            Some(c) => cmd.arg("--creds").arg(c),
            None => cmd.arg("--no-creds"),
        };
        cmd.arg(format!("docker://{}/{repo_and_tag}", self.host));
        cmd.output()
            .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.registry.kill();
        let _ = self.registry.wait();
        if let Some(ts) = &mut self.token_server {
            let _ = ts.child.kill();
            let _ = ts.child.wait();
        }
    }
}

/// Polls `http://host/v2/` until our registry (the one sending `instance`) answers
/// 200 or 401; `Err(log)` if the process exits or the timeout passes.
fn wait_ready(child: &mut Child, host: &str, instance: &str, log: &Path) -> Result<(), String> {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("building an HTTP client");
    let url = format!("http://{host}/v2/");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("registry status") {
            return Err(format!("exited with {status}:\n{}", read_lossy(log)));
        }
        if let Ok(resp) = client.get(&url).send() {
            let ours = resp
                .headers()
                .get(INSTANCE_HEADER)
                .is_some_and(|v| v.as_bytes() == instance.as_bytes());
            let code = resp.status().as_u16();
            if ours && (code == 200 || code == 401) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no answer on {url} within {READY_TIMEOUT:?}:\n{}",
                read_lossy(log)
            ));
        }
        std::thread::sleep(READY_POLL);
    }
}

/// Generates an ES256 key and self-signed certificate in `dir` and starts the token
/// server, its tokens good for `ttl_secs` and saying `expires_in: expires_in_secs`;
/// returns once it printed its port.
fn start_token_server(
    dir: &Path,
    user: &str,
    password: &str,
    (ttl_secs, expires_in_secs): (u64, u64),
    anonymous_pull: bool,
) -> TokenServer {
    let key = dir.join("token-key.pem");
    let cert = dir.join("token-cert.pem");
    run_checked(
        Command::new(require_tool("openssl"))
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "2", "-subj", "/CN=clip-test-token-issuer"]),
    );
    let log = dir.join("tokens.jsonl");
    let stderr = dir.join("token-server.log");
    let refresh_token = format!("clip-refresh-{:x}-{}", std::process::id(), ttl_secs);
    let mut cmd = Command::new(require_tool("python3"));
    cmd.arg(token_server_script())
        .arg("--key")
        .arg(&key)
        .arg("--cert")
        .arg(&cert)
        .args(["--issuer", TOKEN_ISSUER, "--service", TOKEN_SERVICE])
        .args(["--user", user, "--password", password])
        .args(["--refresh-token", &refresh_token])
        .args(["--ttl", &ttl_secs.to_string()])
        .args(["--expires-in", &expires_in_secs.to_string()])
        .args(["--exp-offset", &REGISTRY_TOKEN_LEEWAY_SECS.to_string()])
        .arg("--log")
        .arg(&log);
    if anonymous_pull {
        cmd.arg("--anonymous-pull");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr).expect("create token server log"))
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
    let mut stdout = BufReader::new(child.stdout.take().expect("token server stdout"));
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    let Ok(port) = line.trim().parse::<u16>() else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "token server did not start (printed {line:?}):\n{}",
            read_lossy(&stderr)
        );
    };
    TokenServer {
        child,
        _stdout: stdout,
        port,
        log,
        stderr,
        refresh_token,
    }
}

/// A response from [`http_get`].
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain `GET url` with extra `headers` (no proxy, no redirects followed, 10 s
/// timeout); panics only if the request cannot be made.
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut req = http_client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One entry of the credential helper: what `get` answers for `server`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelperCredential {
    /// The server string expected on stdin, exactly (e.g. `127.0.0.1:5000`).
    pub server: String,
    /// `Username` to answer (`<token>` makes `Secret` an identity token).
    pub username: String,
    /// `Secret` to answer.
    pub secret: String,
}

impl HelperCredential {
    /// An entry for `server`.
    pub fn new(server: &str, username: &str, secret: &str) -> HelperCredential {
        HelperCredential {
            server: server.to_string(),
            username: username.to_string(),
            secret: secret.to_string(),
        }
    }
}

/// Writes the executable `dir/docker-credential-cliptest` (a `/bin/sh` script; put
/// `dir` first on `PATH`, see [`path_with`]) implementing the docker credential
/// helper protocol for `creds`:
///
/// - `get`: reads the server from stdin; for a server equal to an entry's `server`
///   prints `{"ServerURL":..,"Username":..,"Secret":..}`, otherwise prints
///   `credentials not found in native keychain` and exits 1.
/// - `list`: prints `{"SERVER":"USERNAME",...}`.
/// - `store`, `erase`: read stdin and succeed.
///
/// Every call is appended to `dir/docker-credential-cliptest.log` as `ACTION SERVER`
/// (see [`credential_helper_calls`]). Returns the script's path.
pub fn write_credential_helper(dir: &Path, creds: &[HelperCredential]) -> PathBuf {
    let script_path = dir.join(format!("docker-credential-{CRED_HELPER_NAME}"));
    let log = credential_helper_log(dir);
    let mut get_cases = String::new();
    let mut list = serde_json::Map::new();
    for c in creds {
        let answer = json!({"ServerURL": c.server, "Username": c.username, "Secret": c.secret});
        writeln!(
            get_cases,
            "  if [ \"$server\" = {} ]; then printf '%s\\n' {}; exit 0; fi",
            sh_quote(&c.server),
            sh_quote(&answer.to_string())
        )
        .unwrap();
        list.insert(c.server.clone(), json!(c.username));
    }
    let script = format!(
        "#!/bin/sh\n\
         # docker-credential-{name}: a credential helper written by clip's tests.\n\
         log={log}\n\
         case \"$1\" in\n\
         get)\n  \
           server=$(cat)\n  \
           printf 'get %s\\n' \"$server\" >> \"$log\"\n\
         {get_cases}  \
           printf '%s\\n' 'credentials not found in native keychain'\n  \
           exit 1\n  \
           ;;\n\
         list)\n  \
           printf 'list\\n' >> \"$log\"\n  \
           printf '%s\\n' {list}\n  \
           ;;\n\
         store|erase)\n  \
           cat >/dev/null\n  \
           printf '%s\\n' \"$1\" >> \"$log\"\n  \
           ;;\n\
         *)\n  \
           echo \"docker-credential-{name}: unknown action: $1\" >&2\n  \
           exit 1\n  \
           ;;\n\
         esac\n",
        name = CRED_HELPER_NAME,
        log = sh_quote(&log.to_string_lossy()),
        list = sh_quote(&Value::Object(list).to_string()),
    );
    fs::write(&script_path, script).expect("write credential helper");
    fs::set_permissions(&script_path, fs::Permissions::from_mode(0o755))
        .expect("chmod credential helper");
    script_path
}

/// The log [`write_credential_helper`]'s helper in `dir` appends to.
pub fn credential_helper_log(dir: &Path) -> PathBuf {
    dir.join(format!("docker-credential-{CRED_HELPER_NAME}.log"))
}

/// The calls made so far to the helper in `dir`, one `ACTION SERVER` (`get
/// 127.0.0.1:5000`, `list`, ...) per call, oldest first.
pub fn credential_helper_calls(dir: &Path) -> Vec<String> {
    read_lossy(&credential_helper_log(dir))
        .lines()
        .map(str::to_string)
        .collect()
}

/// `PATH` with `dir` in front (for a child's `env("PATH", ...)`).
pub fn path_with(dir: &Path) -> OsString {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH with the helper dir")
}

/// A docker `config.json` (what `$DOCKER_CONFIG/config.json` holds): `auths`
/// entries, `credHelpers` and `credsStore`. Build it with the methods, then
/// [`write`](Self::write) it.
#[derive(Clone, Debug, Default)]
pub struct DockerConfig {
    auths: serde_json::Map<String, Value>,
    cred_helpers: serde_json::Map<String, Value>,
    creds_store: Option<String>,
}

impl DockerConfig {
    /// An empty config.
    pub fn new() -> DockerConfig {
        DockerConfig::default()
    }

    /// An `auths` entry `{"auth": base64("user:password")}` for `server`
    /// (`127.0.0.1:5000`, or `https://index.docker.io/v1/` style keys).
    pub fn auth(mut self, server: &str, user: &str, password: &str) -> DockerConfig {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.auths
            .insert(server.to_string(), json!({ "auth": b64 }));
        self
    }

    /// An `auths` entry with separate `username` and `password` fields (podman
    /// style) instead of `auth`.
    pub fn auth_fields(mut self, server: &str, user: &str, password: &str) -> DockerConfig {
        self.auths.insert(
            server.to_string(),
            json!({ "username": user, "password": password }),
        );
        self
    }

    /// An `auths` entry as `docker login` writes it for an identity token:
    /// `{"auth": base64("user:"), "identitytoken": token}`.
    pub fn identity_token(mut self, server: &str, user: &str, token: &str) -> DockerConfig {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        self.auths.insert(
            server.to_string(),
            json!({ "auth": b64, "identitytoken": token }),
        );
        self
    }

    /// An `auths` entry with any JSON value (malformed entries, extra fields).
    pub fn raw_auth(mut self, server: &str, entry: Value) -> DockerConfig {
        self.auths.insert(server.to_string(), entry);
        self
    }

    /// `credHelpers[server] = helper` (`docker-credential-<helper>` is run).
    pub fn cred_helper(mut self, server: &str, helper: &str) -> DockerConfig {
        self.cred_helpers.insert(server.to_string(), json!(helper));
        self
    }

    /// `credsStore = helper` (the helper for every server without another entry).
    pub fn creds_store(mut self, helper: &str) -> DockerConfig {
        self.creds_store = Some(helper.to_string());
        self
    }

    /// The JSON document (keys with nothing in them are omitted).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::Map::new();
        if !self.auths.is_empty() {
            v.insert("auths".into(), Value::Object(self.auths.clone()));
        }
        if !self.cred_helpers.is_empty() {
            v.insert(
                "credHelpers".into(),
                Value::Object(self.cred_helpers.clone()),
            );
        }
        if let Some(s) = &self.creds_store {
            v.insert("credsStore".into(), json!(s));
        }
        Value::Object(v)
    }

    /// Writes `dir/config.json` (creating `dir`; point `DOCKER_CONFIG` at `dir`)
    /// and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        fs::create_dir_all(dir).expect("create docker config dir");
        let path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.to_json()).expect("config json");
        fs::write(&path, text).expect("write docker config.json");
        path
    }
}
