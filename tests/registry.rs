//! clip against a real registry (create by reference, mount with Range reads,
//! credentials, expiring tokens, the build flow, a registry ignoring Range), after
//! self-tests of the registry test infrastructure ([`TestRegistry`], the token
//! server, the credential helper and `config.json` writers), with skopeo and raw
//! HTTP as the clients. They need `docker-registry`, `skopeo`, `htpasswd`, `openssl`
//! and `python3` (`scripts/deps.sh`): without them they fail, never skip.

mod util;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

const USER: &str = "clipuser";
const PASSWORD: &str = "s3cret pass:word";

/// A two-layer image (gzip + zstd) tagged `tag` in a new layout at `dir`.
fn small_layout(dir: &Path, tag: &str) -> ImageInfo {
    let mut base = TarBuilder::new();
    base.dir("etc/");
    base.file("etc/passwd", PASSWD_V1);
    let mut top = TarBuilder::new();
    top.dir("data/");
    top.file("data/random.bin", pseudo_random_bytes(7, 100_000));
    let mut lb = LayoutBuilder::new(dir);
    lb.add_layer(&base.finish(), Compression::Gzip);
    lb.add_layer(&top.finish(), Compression::Zstd);
    lb.image_mut().cmd(&["/bin/sh"]);
    lb.write_image(Some(tag))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_inspect_ok(reg: &TestRegistry, out: &Output, info: &ImageInfo) {
    assert!(
        out.status.success(),
        "skopeo inspect failed: {}\n--- registry log ---\n{}\n--- token server ---\n{}",
        stderr(out),
        reg.log(),
        reg.token_server_log()
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("skopeo inspect JSON");
    assert_eq!(v["Digest"], info.manifest.digest, "{v:#}");
    let layers: Vec<&str> = v["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let want: Vec<&str> = info.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, want);
}

fn assert_unauthorized(out: &Output) {
    assert!(
        !out.status.success(),
        "skopeo inspect without credentials succeeded"
    );
    let err = stderr(out).to_lowercase();
    assert!(
        err.contains("unauthorized") || err.contains("authentication required"),
        "expected an unauthorized error, got: {err}"
    );
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn anonymous_registry_push_and_inspect() {
    let t0 = Instant::now();
    let reg = TestRegistry::start(RegistryAuth::None);
    let started = t0.elapsed();
    let dir = tmp("clip-reg-test-");
    let info = small_layout(dir.path(), "v1");
    let digest = reg.push(dir.path(), "v1", "app:v1");
    assert_eq!(
        digest, info.manifest.digest,
        "--preserve-digests kept the digest"
    );
    assert_inspect_ok(&reg, &reg.skopeo_inspect("app:v1", None, false), &info);

    let v2 = http_get(&format!("{}/v2/", reg.url()), &[]);
    assert_eq!(v2.status, 200);
    // The manifest bytes are the layout's, and blobs are where blob_path says.
    let m = http_get(
        &format!("{}/v2/app/manifests/v1", reg.url()),
        &[("Accept", MANIFEST_ACCEPT)],
    );
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(sha256_digest(&m.body), digest);
    for l in &info.layers {
        let on_disk = std::fs::read(reg.blob_path(&l.digest)).expect("blob in storage");
        assert_eq!(sha256_digest(&on_disk), l.digest);
    }
    assert!(reg.log().contains("GET /v2/app/manifests/v1"), "access log");
    assert_eq!(reg.tokens_issued(), 0);
    eprintln!("anonymous registry ready in {started:?}");
}

#[test]
fn htpasswd_registry_requires_credentials() {
    let reg = TestRegistry::start(RegistryAuth::htpasswd(USER, PASSWORD));
    let dir = tmp("clip-reg-test-");
    let info = small_layout(dir.path(), "v1");
    reg.push(dir.path(), "v1", "app:v1");

    assert_unauthorized(&reg.skopeo_inspect("app:v1", None, false));
    assert_unauthorized(&reg.skopeo_inspect("app:v1", Some(&format!("{USER}:wrong")), false));
    let creds = reg.creds().unwrap();
    assert_inspect_ok(
        &reg,
        &reg.skopeo_inspect("app:v1", Some(&creds), false),
        &info,
    );

    let v2 = http_get(&format!("{}/v2/", reg.url()), &[]);
    assert_eq!(v2.status, 401);
    assert_eq!(
        v2.header("www-authenticate"),
        Some(format!("Basic realm=\"{HTPASSWD_REALM}\"").as_str())
    );
}

#[test]
fn token_registry_requires_credentials() {
    let t0 = Instant::now();
    let reg = TestRegistry::start(RegistryAuth::token(USER, PASSWORD, 300));
    eprintln!("token registry ready in {:?}", t0.elapsed());
    let dir = tmp("clip-reg-test-");
    let info = small_layout(dir.path(), "v1");
    reg.push(dir.path(), "v1", "team/app:v1");
    let after_push = reg.tokens_issued();
    assert!(after_push > 0, "skopeo push got no token");

    assert_unauthorized(&reg.skopeo_inspect("team/app:v1", None, false));
    assert_unauthorized(&reg.skopeo_inspect("team/app:v1", Some(&format!("{USER}:wrong")), false));
    assert_eq!(
        reg.tokens_issued(),
        after_push,
        "refused requests got tokens"
    );
    let creds = reg.creds().unwrap();
    assert_inspect_ok(
        &reg,
        &reg.skopeo_inspect("team/app:v1", Some(&creds), false),
        &info,
    );
    assert!(reg.tokens_issued() > after_push);
    let last = reg.token_requests().pop().unwrap();
    assert_eq!(last["sub"], USER);
    assert_eq!(last["scopes"][0], "repository:team/app:pull", "{last}");
    assert_eq!(last["access"][0]["actions"][0], "pull", "{last}");

    let v2 = http_get(&format!("{}/v2/", reg.url()), &[]);
    assert_eq!(v2.status, 401);
    let challenge = v2.header("www-authenticate").unwrap_or_default();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}\",service=\"{TOKEN_SERVICE}\"",
            reg.realm().unwrap()
        )
    );
    // A token for one repository does not open another.
    let token = reg.fetch_token("repository:other:pull");
    let m = http_get(
        &format!("{}/v2/team/app/manifests/v1", reg.url()),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Accept", MANIFEST_ACCEPT),
        ],
    );
    assert_eq!(m.status, 401, "{}", m.text());
}

#[test]
fn token_expires_after_ttl() {
    let ttl = 2;
    let reg = TestRegistry::start(RegistryAuth::token(USER, PASSWORD, ttl));
    let dir = tmp("clip-reg-test-");
    let info = small_layout(dir.path(), "v1");
    reg.push(dir.path(), "v1", "app:v1");
    let url = format!("{}/v2/app/manifests/v1", reg.url());
    let get = |token: &str| {
        http_get(
            &url,
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Accept", MANIFEST_ACCEPT),
            ],
        )
    };

    let issued = Instant::now();
    let token = reg.fetch_token("repository:app:pull");
    let fresh = get(&token);
    assert_eq!(fresh.status, 200, "{}\n{}", fresh.text(), reg.log());
    assert_eq!(sha256_digest(&fresh.body), info.manifest.digest);

    // Valid for at least ttl seconds, refused at most ttl + 1 seconds after issue.
    let mut last_ok = Duration::ZERO;
    let refused_at = loop {
        let r = get(&token);
        let at = issued.elapsed();
        match r.status {
            200 => last_ok = at,
            401 => break at,
            s => panic!("unexpected status {s}: {}", r.text()),
        }
        assert!(
            at < Duration::from_secs(ttl + 5),
            "token still accepted {at:?} after issue (ttl {ttl} s)\n{}",
            reg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("ttl {ttl} s: last accepted at {last_ok:?}, refused at {refused_at:?}");
    assert!(
        refused_at >= Duration::from_secs(ttl),
        "refused after only {refused_at:?}"
    );
    assert!(
        refused_at <= Duration::from_millis(ttl * 1000 + 1300),
        "refused only after {refused_at:?}"
    );
    let refused = get(&token);
    assert_eq!(refused.status, 401);
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|h| h.contains("error=\"invalid_token\"")),
        "{:?}",
        refused.headers
    );
    assert!(reg.log().contains("token not to be used after"));

    // A new token works again.
    assert_eq!(get(&reg.fetch_token("repository:app:pull")).status, 200);
}

#[test]
fn public_token_registry_allows_anonymous_pull_only() {
    let reg = TestRegistry::start(RegistryAuth::public_token(USER, PASSWORD, 300));
    let dir = tmp("clip-reg-test-");
    let info = small_layout(dir.path(), "v1");
    reg.push(dir.path(), "v1", "app:v1");
    assert_inspect_ok(&reg, &reg.skopeo_inspect("app:v1", None, false), &info);
    let anon = reg.token_requests().pop().unwrap();
    assert_eq!(anon["via"], "anonymous", "{anon}");

    // An anonymous token for pull,push grants only pull.
    let realm = reg.realm().unwrap();
    let r = http_get(
        &format!("{realm}?service={TOKEN_SERVICE}&scope=repository:app:pull,push"),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let last = reg.token_requests().pop().unwrap();
    assert_eq!(last["access"][0]["actions"], serde_json::json!(["pull"]));
}

#[test]
fn token_server_grants() {
    let reg = TestRegistry::start(RegistryAuth::token(USER, PASSWORD, 300));
    let realm = reg.realm().unwrap();
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let scope = "repository:app:pull";

    // Anonymous and wrong credentials: 401.
    let anon = http_get(
        &format!("{realm}?service={TOKEN_SERVICE}&scope={scope}"),
        &[],
    );
    assert_eq!(anon.status, 401);
    let wrong = client
        .get(&realm)
        .query(&[("service", TOKEN_SERVICE), ("scope", scope)])
        .basic_auth(USER, Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // GET with offline_token=true: token + refresh token; expires_in is the ttl.
    let v: Value = client
        .get(&realm)
        .query(&[
            ("service", TOKEN_SERVICE),
            ("scope", scope),
            ("offline_token", "true"),
        ])
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .unwrap()
        .bytes()
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert_eq!(v["expires_in"], 300);
    assert_eq!(v["token"], v["access_token"]);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["refresh_token"].as_str(), reg.refresh_token().as_deref());

    // OAuth2 POST: password and refresh_token grants; a wrong refresh token is 401.
    let post = |form: &[(&str, &str)]| client.post(&realm).form(form).send().unwrap();
    let r = post(&[
        ("grant_type", "password"),
        ("username", USER),
        ("password", PASSWORD),
        ("service", TOKEN_SERVICE),
        ("scope", scope),
        ("client_id", "clip-test"),
    ]);
    assert_eq!(r.status(), 200);
    let refresh = reg.refresh_token().unwrap();
    let r = post(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", TOKEN_SERVICE),
        ("scope", scope),
        ("client_id", "clip-test"),
    ]);
    assert_eq!(r.status(), 200);
    let body: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    let token = body["access_token"].as_str().unwrap().to_string();
    let r = post(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", "nope"),
        ("service", TOKEN_SERVICE),
        ("scope", scope),
    ]);
    assert_eq!(r.status(), 401);
    let vias: Vec<String> = reg
        .token_requests()
        .iter()
        .map(|t| t["via"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(vias, ["basic", "oauth-password", "oauth-refresh"]);

    // The registry accepts the refreshed token (a missing repository is 404, not 401).
    let m = http_get(
        &format!("{}/v2/app/manifests/v1", reg.url()),
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(m.status, 404, "{}", m.text());
}

fn run_helper(helper: &Path, action: &str, input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(helper)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run credential helper");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn credential_helper_protocol() {
    let dir = tmp("clip-cred-helper-");
    let helper = write_credential_helper(
        dir.path(),
        &[
            HelperCredential::new("127.0.0.1:5000", "alice", "it's \"quoted\""),
            HelperCredential::new("other.example:443", "<token>", "idtok"),
        ],
    );
    assert!(helper.ends_with("docker-credential-cliptest"));

    let out = run_helper(&helper, "get", "127.0.0.1:5000");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("helper JSON");
    assert_eq!(
        v,
        serde_json::json!({"ServerURL": "127.0.0.1:5000", "Username": "alice", "Secret": "it's \"quoted\""})
    );
    let out = run_helper(&helper, "get", "unknown.example\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "credentials not found in native keychain"
    );
    let out = run_helper(&helper, "list", "");
    let v: Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    assert_eq!(v["other.example:443"], "<token>");
    assert_eq!(
        credential_helper_calls(dir.path()),
        ["get 127.0.0.1:5000", "get unknown.example", "list"]
    );
    let config = DockerConfig::new()
        .auth("a.example", "u", "p")
        .cred_helper("127.0.0.1:5000", CRED_HELPER_NAME)
        .creds_store("desktop")
        .to_json();
    assert_eq!(config["auths"]["a.example"]["auth"], "dTpw");
    assert_eq!(config["credHelpers"]["127.0.0.1:5000"], "cliptest");
    assert_eq!(config["credsStore"], "desktop");
}

/// skopeo (containers/image) as a real client of the config.json files and the
/// helper: `credHelpers` and `auths` against htpasswd, `identitytoken` (OAuth2
/// refresh-token grant) against the token server.
#[test]
fn docker_config_files_work_with_skopeo() {
    let reg = TestRegistry::start(RegistryAuth::htpasswd(USER, PASSWORD));
    let dir = tmp("clip-reg-test-");
    let layout = dir.path().join("layout");
    let info = small_layout(&layout, "v1");
    reg.push(&layout, "v1", "app:v1");
    let image = format!("docker://{}/app:v1", reg.host());
    let inspect = |config: &Path, path: &std::ffi::OsStr| {
        Command::new(require_tool("skopeo"))
            .env("PATH", path)
            .args(["inspect", "--tls-verify=false", "--authfile"])
            .arg(config)
            .arg(&image)
            .output()
            .unwrap()
    };

    let helper_dir = dir.path().join("bin");
    std::fs::create_dir(&helper_dir).unwrap();
    write_credential_helper(
        &helper_dir,
        &[HelperCredential::new(&reg.host(), USER, PASSWORD)],
    );
    let config = DockerConfig::new()
        .cred_helper(&reg.host(), CRED_HELPER_NAME)
        .write(&dir.path().join("helper"));
    assert_inspect_ok(&reg, &inspect(&config, &path_with(&helper_dir)), &info);
    assert!(
        credential_helper_calls(&helper_dir).contains(&format!("get {}", reg.host())),
        "{:?}",
        credential_helper_calls(&helper_dir)
    );

    let path = std::env::var_os("PATH").unwrap_or_default();
    let config = DockerConfig::new()
        .auth(&reg.host(), USER, PASSWORD)
        .write(&dir.path().join("auths"));
    assert_inspect_ok(&reg, &inspect(&config, &path), &info);
    let config = DockerConfig::new()
        .auth(&reg.host(), USER, "wrong")
        .write(&dir.path().join("bad"));
    assert_unauthorized(&inspect(&config, &path));

    let treg = TestRegistry::start(RegistryAuth::token(USER, PASSWORD, 300));
    treg.push(&layout, "v1", "app:v1");
    let config = DockerConfig::new()
        .identity_token(&treg.host(), USER, &treg.refresh_token().unwrap())
        .write(&dir.path().join("idtoken"));
    let out = Command::new(require_tool("skopeo"))
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(&config)
        .arg(format!("docker://{}/app:v1", treg.host()))
        .output()
        .unwrap();
    assert_inspect_ok(&treg, &out, &info);
    let last = treg.token_requests().pop().unwrap();
    assert_eq!(last["via"], "oauth-refresh", "{last}");
}

// ---------------------------------------------------------------------------
// clip against the registry: create by reference, mount fetching with Range,
// credentials, expiring tokens, the build flow, a registry that ignores Range.

/// `clipctl ls -R /` of an archive: the whole tree, as text.
fn listing(archive: &Path) -> String {
    let out = ok(clipctl().arg("ls").arg("-R").arg(archive));
    String::from_utf8(out.stdout).unwrap()
}

/// The layers of `inspect --json` (digests, sizes, checkpoints, spans).
fn layers_json(archive: &Path) -> Value {
    let out = ok(clipctl().arg("inspect").arg("--json").arg(archive));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["layers"].clone()
}

/// `inspect --json`'s storage reference.
fn storage_json(archive: &Path) -> Value {
    let out = ok(clipctl().arg("inspect").arg("--json").arg(archive));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["meta"]["storage"].clone()
}

fn mount_args<'a>(extra: &'a [&'a str]) -> Vec<&'a OsStr> {
    extra.iter().map(OsStr::new).collect()
}

#[test]
fn create_from_registry_equals_index_of_layout_and_mounts_from_registry() {
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-reg-create-");
    let layout = d.path().join("layout");
    tricky_layout(&layout, "t");
    let digest = reg.push(&layout, "t", "tricky:v1");

    let from_layout = d.path().join("l.clip");
    index(&layout, "t", &from_layout);
    let from_registry = d.path().join("r.clip");
    let r = format!("{}/tricky:v1", reg.host());
    let out = ok(clipctl()
        .arg("create")
        .arg(&r)
        .arg("--out")
        .arg(&from_registry));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&digest),
        "create should report the manifest digest {digest}"
    );
    assert_eq!(listing(&from_registry), listing(&from_layout));
    assert_eq!(layers_json(&from_registry), layers_json(&from_layout));
    let s = storage_json(&from_registry);
    assert_eq!(s["registry"], reg.host().as_str());
    assert_eq!(s["repository"], "tricky");
    assert_eq!(s["reference"], digest.as_str());

    // A mount with no layout fetches from the registry the archive names.
    let m = mount_matches_umoci(&from_registry, &layout, d.path(), "clip mount (registry)");
    let errs = check_tricky_tree(&m.dir);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    let st = m.stats();
    assert!(
        st["registry_requests"].as_u64().unwrap() > 0,
        "the mount should have fetched from the registry: {st}"
    );
    m.unmount();
}

#[test]
fn unknown_image_and_unreachable_registry_are_clear_errors() {
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-reg-bad-");
    let out = d.path().join("x.clip");
    let e = fails(
        clipctl()
            .arg("create")
            .arg(format!("{}/nope:v1", reg.host()))
            .arg("--out")
            .arg(&out),
    );
    assert!(e.contains("nope") && e.contains("manifest"), "{e}");
    // A port nothing listens on: a network error naming the registry, after retries.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = fails(
        clipctl()
            .arg("create")
            .arg(format!("127.0.0.1:{port}/app:v1"))
            .arg("--out")
            .arg(&out),
    );
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
}

#[test]
fn htpasswd_credentials_from_arguments_config_json_and_helper() {
    let reg = TestRegistry::start(RegistryAuth::htpasswd("clipuser", "s3cret-pass"));
    let d = tmp("clip-reg-auth-");
    let layout = d.path().join("layout");
    small_layout(&layout, "t");
    reg.push(&layout, "t", "private:v1");
    let r = format!("{}/private:v1", reg.host());
    let out = d.path().join("p.clip");
    let empty_home = d.path().join("home");
    std::fs::create_dir_all(&empty_home).unwrap();
    let create = || {
        let mut c = clipctl();
        c.arg("create")
            .arg(&r)
            .arg("--out")
            .arg(&out)
            .env("HOME", &empty_home)
            .env("DOCKER_CONFIG", d.path().join("no-docker-config"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR");
        c
    };

    // No credentials: a clear "unauthorized" naming the registry and repository.
    let e = fails(&mut create());
    assert!(e.contains("unauthorized"), "{e}");
    assert!(e.contains(&reg.host()) && e.contains("private"), "{e}");
    assert!(!out.exists());
    // Wrong password: refused, and the password is not echoed.
    let e = fails(create().args(["--username", "clipuser", "--password", "wrong-pass"]));
    assert!(e.contains("unauthorized"), "{e}");
    assert!(!e.contains("wrong-pass"), "secret in error: {e}");

    // Arguments.
    ok(create().args(["--username", "clipuser", "--password", "s3cret-pass"]));
    assert!(out.exists());
    std::fs::remove_file(&out).unwrap();

    // A docker config.json with an auths entry, found through DOCKER_CONFIG.
    let cfg_dir = d.path().join("docker");
    DockerConfig::new()
        .auth(&reg.host(), "clipuser", "s3cret-pass")
        .write(&cfg_dir);
    ok(create().env("DOCKER_CONFIG", &cfg_dir));
    std::fs::remove_file(&out).unwrap();
    // The same file given with --auth-file.
    ok(create().arg("--auth-file").arg(cfg_dir.join("config.json")));
    std::fs::remove_file(&out).unwrap();

    // A credential helper program named by credHelpers.
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_credential_helper(
        &bin,
        &[HelperCredential::new(
            &reg.host(),
            "clipuser",
            "s3cret-pass",
        )],
    );
    let helper_cfg = d.path().join("docker-helper");
    DockerConfig::new()
        .cred_helper(&reg.host(), CRED_HELPER_NAME)
        .write(&helper_cfg);
    ok(create()
        .env("DOCKER_CONFIG", &helper_cfg)
        .env("PATH", path_with(&bin)));
    assert!(
        !credential_helper_calls(&bin).is_empty(),
        "the helper should have been asked"
    );

    // The mount reads with the same credentials (from the helper).
    let m = {
        require_fuse();
        let mut c = clipctl();
        c.arg("mount")
            .arg(&out)
            .arg(d.path().join("mnt"))
            .arg("--cache-dir")
            .arg(d.path().join("cache"))
            .arg("--daemon")
            .env("DOCKER_CONFIG", &helper_cfg)
            .env("PATH", path_with(&bin));
        ok(&mut c);
        std::fs::canonicalize(d.path().join("mnt")).unwrap()
    };
    assert_eq!(std::fs::read(m.join("etc/passwd")).unwrap(), PASSWD_V1);
    ok(clipctl().arg("umount").arg(&m));
}

#[test]
fn mount_keeps_reading_across_token_expiry() {
    let ttl = 2;
    let reg = TestRegistry::start(RegistryAuth::token("tokuser", "tokpass", ttl));
    let d = tmp("clip-reg-token-");
    let layout = d.path().join("layout");
    multi_span_layout(&layout, "t");
    reg.push(&layout, "t", "app:v1");
    let archive = d.path().join("a.clip");
    ok(clipctl()
        .arg("create")
        .arg(format!("{}/app:v1", reg.host()))
        .arg("--out")
        .arg(&archive)
        .args(["--username", "tokuser", "--password", "tokpass"]));
    let m = Mounted::with_args(
        &archive,
        &d.path().join("mnt"),
        &d.path().join("cache"),
        &mount_args(&["--username", "tokuser", "--password", "tokpass"]),
    );
    let before = reg.tokens_issued();
    assert_eq!(
        std::fs::read(m.dir.join("data/blob0")).unwrap(),
        pseudo_random_bytes(0, 3 << 20)
    );
    // Past the token's life (see REGISTRY_TOKEN_LEEWAY_SECS): the next cold read
    // needs a new token.
    std::thread::sleep(Duration::from_millis(ttl * 1000 + 1500));
    assert_eq!(
        std::fs::read(m.dir.join("data/blob3")).unwrap(),
        pseudo_random_bytes(3, 3 << 20)
    );
    assert_eq!(
        std::fs::read(m.dir.join("data/text")).unwrap(),
        compressible_bytes(5 << 20)
    );
    assert!(
        reg.tokens_issued() > before,
        "a fresh token should have been fetched after expiry ({} then {})",
        before,
        reg.tokens_issued()
    );
    m.unmount();
}

#[test]
fn build_flow_index_layout_with_storage_ref_push_then_mount_from_registry() {
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-reg-build-");
    let layout = d.path().join("layout");
    tricky_layout(&layout, "t");
    let archive = d.path().join("b.clip");
    let storage = format!("{}/built/app:v7", reg.host());
    let requests_before = registry_requests(&reg);
    ok(clipctl()
        .arg("index-layout")
        .arg("--layout")
        .arg(&layout)
        .args(["--tag", "t", "--out"])
        .arg(&archive)
        .arg("--storage-ref")
        .arg(&storage));
    assert_eq!(
        registry_requests(&reg),
        requests_before,
        "indexing a layout must not touch the registry"
    );
    let digest = reg.push(&layout, "t", "built/app:v7");
    let s = storage_json(&archive);
    assert_eq!(
        s["reference"],
        digest.as_str(),
        "storage records the manifest digest"
    );
    assert_eq!(s["repository"], "built/app");

    let m = mount_matches_umoci(&archive, &layout, d.path(), "clip mount (registry)");
    m.unmount();
}

/// Mounts `archive` under `work` with no layout (layers come from the registry it
/// names) and checks the tree against `umoci unpack` of tag `t` of `layout`.
fn mount_matches_umoci(archive: &Path, layout: &Path, work: &Path, label: &str) -> Mounted {
    let m = Mounted::with_args(archive, &work.join("mnt"), &work.join("cache"), &[]);
    let theirs = umoci_unpack(layout, "t", &work.join("bundle"));
    assert_same_tree(&m.dir, &theirs, &DiffOptions::labelled(label, "umoci"));
    m
}

/// Requests the registry has answered so far, from its access log.
fn registry_requests(reg: &TestRegistry) -> usize {
    reg.log().matches("response completed").count()
}

#[test]
fn registry_that_ignores_range_still_works_and_small_reads_fetch_one_span() {
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-reg-norange-");
    let layout = d.path().join("layout");
    multi_span_layout(&layout, "t");
    reg.push(&layout, "t", "app:v1");

    // Through a proxy that forwards Range: a small file costs one span.
    let ranged = Proxy::start(&reg.host(), false);
    let archive = d.path().join("a.clip");
    ok(clipctl()
        .arg("create")
        .arg(format!("{}/app:v1", ranged.host()))
        .arg("--out")
        .arg(&archive));
    let before = ranged.bytes();
    let out = ok(clipctl()
        .arg("cat")
        .arg(&archive)
        .arg("/etc/motd")
        .arg("--stats"));
    assert_eq!(out.stdout, b"hello from the top layer\n");
    let st: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let span_bytes = st["compressed_bytes_read"].as_u64().unwrap();
    let moved = ranged.bytes() - before;
    assert_eq!(st["registry_requests"], 1, "{st}");
    assert!(
        moved <= span_bytes + 2048,
        "{moved} bytes through the proxy for a {span_bytes}-byte span"
    );

    // Through a proxy that strips Range: the registry answers 200 with the whole
    // blob; clip reads through the stream to what it needs.
    let plain = Proxy::start(&reg.host(), true);
    let archive2 = d.path().join("b.clip");
    ok(clipctl()
        .arg("create")
        .arg(format!("{}/app:v1", plain.host()))
        .arg("--out")
        .arg(&archive2));
    assert_eq!(listing(&archive2), listing(&archive));
    let m = mount_matches_umoci(&archive2, &layout, d.path(), "clip mount (no Range)");
    m.unmount();
}

#[test]
fn flaky_registry_503s_and_cut_connections_are_retried() {
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-reg-flaky-");
    let layout = d.path().join("layout");
    multi_span_layout(&layout, "t");
    reg.push(&layout, "t", "app:v1");
    // Every 3rd request fails with 503; every 4th response is cut after 100 KiB,
    // in the middle of a layer stream or a span's range.
    let flaky = Proxy::with_faults(
        &reg.host(),
        false,
        Faults {
            fail_every: 3,
            cut_every: 4,
            cut_after: 100 << 10,
            ..Faults::default()
        },
    );
    let archive = d.path().join("a.clip");
    ok(clipctl()
        .arg("create")
        .arg(format!("{}/app:v1", flaky.host()))
        .arg("--out")
        .arg(&archive));
    let clean = d.path().join("l.clip");
    index(&layout, "t", &clean);
    assert_eq!(layers_json(&archive), layers_json(&clean));
    for i in [0, 3] {
        let out = ok(clipctl()
            .arg("cat")
            .arg(&archive)
            .arg(format!("/data/blob{i}")));
        assert!(
            out.stdout == pseudo_random_bytes(i, 3 << 20),
            "blob{i} differs"
        );
    }
    let out = ok(clipctl().arg("cat").arg(&archive).arg("/data/text"));
    assert!(out.stdout == compressible_bytes(5 << 20), "text differs");
}

#[test]
fn secrets_never_reach_logs_or_errors() {
    let reg = TestRegistry::start(RegistryAuth::token("tokuser", "tok-secret-pw", 30));
    let d = tmp("clip-reg-secrets-");
    let layout = d.path().join("layout");
    small_layout(&layout, "t");
    reg.push(&layout, "t", "app:v1");
    let archive = d.path().join("a.clip");
    let out = ok(clipctl()
        .args(["--log-level", "trace", "create"])
        .arg(format!("{}/app:v1", reg.host()))
        .arg("--out")
        .arg(&archive)
        .args(["--username", "tokuser", "--password", "tok-secret-pw"]));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("registry credentials"),
        "trace log expected: {log}"
    );
    let token = reg.fetch_token("repository:app:pull");
    let token_head = &token[..token.len().min(24)];
    for secret in ["tok-secret-pw", token_head] {
        assert!(
            !log.contains(secret),
            "secret {secret:?} in the log:\n{log}"
        );
    }
    let e = fails(
        clipctl()
            .arg("create")
            .arg(format!("{}/app:v1", reg.host()))
            .arg("--out")
            .arg(d.path().join("b.clip"))
            .args(["--username", "tokuser", "--password", "not-the-pw"]),
    );
    assert!(
        e.contains("unauthorized") && !e.contains("not-the-pw"),
        "{e}"
    );
}

#[test]
fn multi_platform_index_in_registry_selects_platform() {
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-reg-multi-");
    let layout = d.path().join("layout");
    multi_platform_layout(&layout, "multi", Flavor::Oci);
    reg.push(&layout, "multi", "multi:v1");
    for (platform, want) in [
        ("linux/amd64", "docker amd64\n"),
        ("linux/arm64", "arm64 v8\n"),
    ] {
        let archive = d
            .path()
            .join(format!("{}.clip", platform.replace('/', "-")));
        ok(clipctl()
            .arg("create")
            .arg(format!("{}/multi:v1", reg.host()))
            .args(["--platform", platform, "--out"])
            .arg(&archive));
        let out = ok(clipctl().arg("cat").arg(&archive).arg("/etc/which"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    }
    let e = fails(
        clipctl()
            .arg("create")
            .arg(format!("{}/multi:v1", reg.host()))
            .args(["--platform", "linux/s390x", "--out"])
            .arg(d.path().join("x.clip")),
    );
    assert!(
        e.contains("linux/s390x") && e.contains("linux/arm64"),
        "{e}"
    );
}
