//! Registry mirrors and proxies against real registries: a pull-through
//! `docker-registry` (`proxy.remoteurl`) in front of another, a mirror that is
//! down, a mirror's own credentials, `pull-from-mirror = "digest-only"`,
//! registries.conf errors, and `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` through a
//! forward proxy the test runs.
//! They need `docker-registry`, `skopeo` and `umoci` (`scripts/deps.sh`), and the
//! mounts /dev/fuse: without them they fail, never skip.

mod util;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

/// Proxy variables of the environment the tests run in, removed from every
/// clipctl they start (each test sets the ones it means).
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "CLIP_REGISTRIES_CONF",
];

fn clip() -> Command {
    let mut c = clipctl();
    for v in PROXY_VARS {
        c.env_remove(v);
    }
    c
}

/// Two gzip layers, files over several 2 MiB spans and a few small ones.
fn layout(dir: &Path, tag: &str) -> ImageInfo {
    let mut lb = LayoutBuilder::new(dir);
    let mut t = TarBuilder::new();
    t.dir("data/");
    for i in 0..2 {
        t.file(format!("data/blob{i}"), pseudo_random_bytes(i, 3 << 20));
    }
    t.file("data/small", b"small file\n");
    lb.add_layer(&t.finish(), Compression::Gzip);
    let mut t = TarBuilder::new();
    t.dir("etc/");
    t.file("etc/motd", b"hello from the top layer\n");
    t.file("data/text", compressible_bytes(3 << 20));
    lb.add_layer(&t.finish(), Compression::Gzip);
    lb.write_image(Some(tag))
}

/// Requests in a registry's access log made by clip (its User-Agent).
fn clip_requests(reg: &TestRegistry) -> Vec<String> {
    reg.log()
        .lines()
        .filter(|l| l.contains("response completed") && l.contains("clip/"))
        .map(str::to_string)
        .collect()
}

/// Of [`clip_requests`], those whose `Host` was `host` (the registry itself, or a
/// proxy in front of it that passed the client's `Host` on).
fn clip_requests_to(reg: &TestRegistry, host: &str) -> Vec<String> {
    let h = format!("http.request.host=\"{host}\"");
    clip_requests(reg)
        .into_iter()
        .filter(|l| l.contains(&h))
        .collect()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn mount_args(args: &[String]) -> Vec<&OsStr> {
    args.iter().map(OsStr::new).collect()
}

#[test]
fn mount_through_pull_through_mirror_reads_every_file_after_upstream_stops() {
    let upstream = TestRegistry::start(RegistryAuth::None);
    let mirror = TestRegistry::start_mirror(&upstream);
    let d = tmp("clip-mirror-");
    let layout_dir = d.path().join("layout");
    let info = layout(&layout_dir, "t");
    upstream.push(&layout_dir, "t", "app:v1");
    let theirs = umoci_unpack(&layout_dir, "t", &d.path().join("bundle"));

    // Indexed from the upstream, with no mirror: the archive names the upstream.
    let archive = d.path().join("a.clip");
    ok(clip()
        .arg("create")
        .arg(format!("{}/app:v1", upstream.host()))
        .arg("--out")
        .arg(&archive));
    let before = clip_requests(&upstream).len();
    let args = vec![
        "--registry-mirror".to_string(),
        format!("{}=http://{}", upstream.host(), mirror.host()),
    ];

    // First mount: every read goes to the mirror, which fetches from the upstream.
    let m = Mounted::with_args(
        &archive,
        &d.path().join("mnt1"),
        &d.path().join("cache1"),
        &mount_args(&args),
    );
    assert_same_tree(
        &m.dir,
        &theirs,
        &DiffOptions::labelled("clip mount via mirror (warm-up)", "umoci"),
    );
    m.unmount();
    assert_eq!(
        clip_requests(&upstream).len(),
        before,
        "clip should not have gone to the upstream with a working mirror:\n{}",
        clip_requests(&upstream)[before..].join("\n")
    );
    let via_mirror = clip_requests(&mirror);
    assert!(
        via_mirror.iter().any(|l| l.contains("/blobs/")),
        "the mirror saw no blob request from clip:\n{}",
        mirror.log()
    );

    // The mirror stores a blob in the background after serving it; wait until it
    // has every layer.
    let t = Instant::now();
    while !info
        .layers
        .iter()
        .all(|l| mirror.blob_path(&l.digest).exists())
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the mirror did not store every layer:\n{}",
            mirror.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The upstream goes away (killed, its storage deleted).
    let upstream_host = upstream.host();
    drop(upstream);
    assert!(
        std::net::TcpStream::connect(&upstream_host).is_err(),
        "the upstream still answers"
    );

    // Second mount, cold cache: every file still reads, byte for byte.
    let served = clip_requests(&mirror).len();
    let m = Mounted::with_args(
        &archive,
        &d.path().join("mnt2"),
        &d.path().join("cache2"),
        &mount_args(&args),
    );
    assert_same_tree(
        &m.dir,
        &theirs,
        &DiffOptions::labelled("clip mount via mirror (upstream stopped)", "umoci"),
    );
    let st = m.stats();
    m.unmount();
    assert!(
        clip_requests(&mirror).len() > served,
        "the second mount should have read from the mirror: {st}"
    );
}

#[test]
fn mirror_that_is_down_is_skipped_and_the_upstream_serves() {
    let upstream = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-mirror-down-");
    let layout_dir = d.path().join("layout");
    layout(&layout_dir, "t");
    upstream.push(&layout_dir, "t", "app:v1");
    let dead = format!("127.0.0.1:{}", closed_port());
    let archive = d.path().join("a.clip");
    let t = Instant::now();
    let out = ok(clip()
        .arg("--log-level")
        .arg("warn")
        .arg("create")
        .arg(format!("{}/app:v1", upstream.host()))
        .arg("--registry-mirror")
        .arg(format!("{}=http://{dead}", upstream.host()))
        .arg("--out")
        .arg(&archive));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("registry mirror failed").count(),
        1,
        "one warning for the dead mirror:\n{err}"
    );
    assert!(err.contains(&dead), "{err}");
    // Skipped after its first failure, not retried per request with backoff.
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "create took {:?}",
        t.elapsed()
    );
    let out = ok(clip()
        .arg("cat")
        .arg(&archive)
        .arg("/etc/motd")
        .arg("--registry-mirror")
        .arg(format!("{}={dead}", upstream.host())));
    assert_eq!(out.stdout, b"hello from the top layer\n");
    assert!(!clip_requests(&upstream).is_empty());
}

#[test]
fn mirror_gets_its_own_credentials_never_the_upstreams() {
    let (user, pass) = ("clipuser", "upstream-pass");
    // Anonymous (distribution 2.8's proxy mode cannot log in to an htpasswd
    // upstream), but the credentials clip is given are the upstream's all the same.
    let upstream = TestRegistry::start(RegistryAuth::None);
    // The mirror accepts that user and password: if clip sent the upstream's
    // credentials to it, it would serve.
    let mirror = TestRegistry::start_mirror_with(&upstream, RegistryAuth::htpasswd(user, pass));
    let d = tmp("clip-mirror-auth-");
    let layout_dir = d.path().join("layout");
    layout(&layout_dir, "t");
    upstream.push(&layout_dir, "t", "app:v1");
    let create = |out: &str| {
        let mut c = clip();
        c.arg("create")
            .arg(format!("{}/app:v1", upstream.host()))
            .arg("--username")
            .arg(user)
            .arg("--password")
            .arg(pass)
            .arg("--registry-mirror")
            .arg(format!("{}=http://{}", upstream.host(), mirror.host()))
            .arg("--out")
            .arg(d.path().join(out));
        c
    };
    let served = |reg: &TestRegistry| {
        clip_requests(reg)
            .iter()
            .filter(|l| l.contains("http.response.status=200"))
            .count()
    };
    // --username is for the upstream only: the mirror refuses the anonymous
    // client and the upstream serves.
    let out = ok(create("a.clip").arg("--log-level").arg("warn"));
    assert_eq!(served(&mirror), 0, "the mirror served:\n{}", mirror.log());
    assert!(served(&upstream) > 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("registry mirror failed"), "{err}");
    assert!(!err.contains(pass), "{err}");

    // Credentials for the mirror's own host are used there.
    let key = mirror.host().replace(['.', ':'], "_");
    let before = served(&upstream);
    ok(create("b.clip")
        .env(format!("CLIP_REGISTRY_USER_{key}"), user)
        .env(format!("CLIP_REGISTRY_PASS_{key}"), pass));
    assert!(served(&mirror) > 0, "{}", mirror.log());
    // (The mirror's own fetches from the upstream do not carry clip's agent.)
    assert_eq!(served(&upstream), before, "{}", upstream.log());
}

/// Writes a registries.conf with one mirror of `registry`.
fn conf_with_mirror(path: &Path, registry: &str, mirror: &str, pull: &str) {
    std::fs::write(
        path,
        format!(
            "unqualified-search-registries = [\"docker.io\"]\n\n\
             [[registry]]\nprefix = \"{registry}\"\nlocation = \"{registry}\"\ninsecure = true\n\n\
             [[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\npull-from-mirror = \"{pull}\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn digest_only_mirror_is_not_asked_for_tags() {
    let upstream = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-mirror-digest-");
    let layout_dir = d.path().join("layout");
    let info = layout(&layout_dir, "t");
    upstream.push(&layout_dir, "t", "app:v1");
    // The "mirror": a counting proxy in front of the upstream.
    let mirror = Proxy::start(&upstream.host(), false);
    let conf = d.path().join("registries.conf");
    conf_with_mirror(&conf, &upstream.host(), mirror.host(), "digest-only");

    let archive = d.path().join("a.clip");
    ok(clip()
        .arg("create")
        .arg(format!("{}/app:v1", upstream.host()))
        .arg("--registries-conf")
        .arg(&conf)
        .arg("--out")
        .arg(&archive));
    let lines = mirror.request_lines();
    assert!(
        !lines.iter().any(|l| l.contains("/manifests/v1")),
        "a digest-only mirror was asked for a tag: {lines:#?}"
    );
    for l in &info.layers {
        assert!(
            lines
                .iter()
                .any(|x| x.contains(&format!("/blobs/{}", l.digest))),
            "layer {} should come from the mirror: {lines:#?}",
            l.digest
        );
    }
    // The tag went straight to the upstream, the blobs through the mirror.
    let direct = clip_requests_to(&upstream, &upstream.host());
    assert_eq!(
        direct
            .iter()
            .filter(|l| l.contains("uri=/v2/app/manifests/v1 "))
            .count(),
        1,
        "{direct:#?}"
    );
    assert!(
        !direct.iter().any(|l| l.contains("/blobs/")),
        "blobs should come from the mirror: {direct:#?}"
    );
    // A manifest by digest may come from it.
    let by_digest = format!("{}/app@{}", upstream.host(), info.manifest.digest);
    ok(clip()
        .env("CLIP_REGISTRIES_CONF", &conf)
        .arg("create")
        .arg(&by_digest)
        .arg("--out")
        .arg(d.path().join("b.clip")));
    let lines = mirror.request_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("/manifests/{}", info.manifest.digest))),
        "{lines:#?}"
    );

    // pull-from-mirror = "all" (the default): the tag goes to the mirror too, and
    // the upstream sees no request from clip.
    conf_with_mirror(&conf, &upstream.host(), mirror.host(), "all");
    let before = clip_requests_to(&upstream, &upstream.host()).len();
    ok(clip()
        .env("CLIP_REGISTRIES_CONF", &conf)
        .arg("create")
        .arg(format!("{}/app:v1", upstream.host()))
        .arg("--out")
        .arg(d.path().join("c.clip")));
    assert!(
        mirror
            .request_lines()
            .iter()
            .any(|l| l.contains("/manifests/v1")),
        "an all mirror should be asked for the tag"
    );
    let direct = clip_requests_to(&upstream, &upstream.host());
    assert_eq!(
        direct.len(),
        before,
        "with an all mirror nothing should reach the upstream directly: {:#?}",
        &direct[before..]
    );
}

#[test]
fn malformed_registries_conf_is_an_error_naming_the_file() {
    let d = tmp("clip-mirror-conf-");
    let conf = d.path().join("registries.conf");
    std::fs::write(
        &conf,
        "[[registry]]\nlocation = \"x.io\"\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"sometimes\"\n",
    )
    .unwrap();
    let out = d.path().join("a.clip");
    for env in [false, true] {
        let mut c = clip();
        c.arg("create").arg("x.io/app:v1").arg("--out").arg(&out);
        if env {
            c.env("CLIP_REGISTRIES_CONF", &conf);
        } else {
            c.arg("--registries-conf").arg(&conf);
        }
        // The file is read before the registry is contacted.
        let e = fails(&mut c);
        assert!(
            e.contains(&conf.display().to_string()) && e.contains("pull-from-mirror"),
            "{e}"
        );
    }
    std::fs::write(&conf, "[[registry]\n").unwrap();
    let e = fails(
        clip()
            .arg("create")
            .arg("x.io/app:v1")
            .arg("--registries-conf")
            .arg(&conf)
            .arg("--out")
            .arg(&out),
    );
    assert!(e.contains(&conf.display().to_string()), "{e}");
    let e = fails(
        clip()
            .arg("create")
            .arg("x.io/app:v1")
            .arg("--registry-mirror")
            .arg("x.io")
            .arg("--out")
            .arg(&out),
    );
    assert!(e.contains("REGISTRY=MIRROR"), "{e}");
    assert!(!out.exists());
}

#[test]
fn http_proxy_env_is_used_no_proxy_and_loopback_bypass_it() {
    let reg = TestRegistry::start(RegistryAuth::None);
    let d = tmp("clip-proxy-");
    let layout_dir = d.path().join("layout");
    layout(&layout_dir, "t");
    reg.push(&layout_dir, "t", "app:v1");
    // A forward proxy: every request goes to the registry, whatever host it names.
    let proxy = Proxy::start(&reg.host(), false);
    let proxy_url = format!("http://{}", proxy.host());
    // A name that resolves nowhere (.invalid is reserved): only the proxy can
    // reach it.
    let name = "registry.invalid:5000";

    let archive = d.path().join("a.clip");
    ok(clip()
        .env("HTTP_PROXY", &proxy_url)
        .arg("create")
        .arg(format!("{name}/app:v1"))
        .arg("--plain-http")
        .arg(name)
        .arg("--out")
        .arg(&archive));
    let lines = proxy.request_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("GET http://{name}/v2/app/manifests/v1 "))),
        "{lines:#?}"
    );
    // Lower case works too, and reads of a mount-less cat go the same way.
    let n = proxy.requests();
    let out = ok(clip()
        .env("http_proxy", &proxy_url)
        .arg("cat")
        .arg(&archive)
        .arg("/etc/motd")
        .arg("--plain-http")
        .arg(name));
    assert_eq!(out.stdout, b"hello from the top layer\n");
    assert!(proxy.requests() > n);

    // NO_PROXY (domain suffix, with or without the port) bypasses it: the name
    // does not resolve, so the request fails without reaching the proxy.
    for no_proxy in ["invalid", ".registry.invalid", "registry.invalid:5000", "*"] {
        let n = proxy.requests();
        let e = fails(
            clip()
                .env("HTTP_PROXY", &proxy_url)
                .env("NO_PROXY", no_proxy)
                .arg("create")
                .arg(format!("{name}/app:v1"))
                .arg("--plain-http")
                .arg(name)
                .arg("--out")
                .arg(d.path().join("b.clip")),
        );
        assert!(e.contains("registry.invalid"), "{e}");
        assert_eq!(proxy.requests(), n, "NO_PROXY={no_proxy} was not honoured");
    }
    // A NO_PROXY entry for another port does not apply.
    let n = proxy.requests();
    ok(clip()
        .env("HTTP_PROXY", &proxy_url)
        .env("NO_PROXY", "registry.invalid:443,other.example")
        .arg("create")
        .arg(format!("{name}/app:v1"))
        .arg("--plain-http")
        .arg(name)
        .arg("--out")
        .arg(d.path().join("c.clip")));
    assert!(proxy.requests() > n);

    // Loopback registries are never proxied.
    let n = proxy.requests();
    ok(clip()
        .env("HTTP_PROXY", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .arg("create")
        .arg(format!("{}/app:v1", reg.host()))
        .arg("--out")
        .arg(d.path().join("d.clip")));
    assert_eq!(
        proxy.requests(),
        n,
        "a loopback registry went through the proxy"
    );

    // HTTPS goes through the proxy with CONNECT (this proxy cannot tunnel, so
    // the request then fails).
    let _ = fails(
        clip()
            .env("HTTPS_PROXY", &proxy_url)
            .arg("create")
            .arg("secure.invalid/app:v1")
            .arg("--out")
            .arg(d.path().join("e.clip")),
    );
    assert!(
        proxy
            .request_lines()
            .iter()
            .any(|l| l.starts_with("CONNECT secure.invalid:443 ")),
        "{:#?}",
        proxy.request_lines()
    );
    // A proxy URL that is not one is a clear error naming the variable.
    let e = fails(
        clip()
            .env("HTTPS_PROXY", "socks5://127.0.0.1:1")
            .arg("create")
            .arg("secure.invalid/app:v1")
            .arg("--out")
            .arg(d.path().join("f.clip")),
    );
    assert!(e.contains("HTTPS_PROXY"), "{e}");
}
