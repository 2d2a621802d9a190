//! Archives written by the ORIGINAL Go clip (github.com/beam-cloud/clip, at the
//! version the beta9 worker pins), through the `tests/goclip-gen` CLI.
//!
//! [`goclip_gen`] builds that CLI once per test process into
//! `target/goclip-gen/goclip-gen` (again when `main.go`, `go.mod` or `go.sum` is
//! newer than the binary), under a file lock so parallel test binaries don't
//! clash, and atomically (build to a temporary name, then rename). Module
//! downloads come from the Go module proxy with the default `-mod=readonly`: the
//! committed `go.sum` is complete. Tests fail loudly (never skip) when `go` is
//! missing or the build fails.
//!
//! Go clip v2 indexes gzip layers only (`gzip.NewReader` on every layer blob), so
//! [`tricky_gzip_layout`] is the tricky fixture with every layer gzip-compressed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::SystemTime;

use serde_json::Value;

use super::fixtures::tricky_layers;
use super::layout::{Compression, ImageInfo, LayoutBuilder};
use super::s3::S3Server;
use super::tools::find_tool;

/// The Go clip version the generator is built against (its go.mod's require).
pub const GOCLIP_VERSION: &str = "v0.0.0-20260802023200-1316f48c56cc";

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goclip-gen")
}

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/goclip-gen")
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Whether `bin` exists and is newer than every source of the generator.
fn up_to_date(bin: &Path) -> bool {
    let Some(built) = mtime(bin) else {
        return false;
    };
    ["main.go", "go.mod", "go.sum"].iter().all(|f| {
        let p = src_dir().join(f);
        mtime(&p).map(|t| t <= built).unwrap_or(true)
    })
}

fn build() -> PathBuf {
    let go = find_tool("go").unwrap_or_else(|| {
        panic!(
            "required tool `go` not found on PATH: the tests generating archives with the \
             original Go clip build tests/goclip-gen with it (install Go >= 1.21, e.g. \
             `apt-get install -y golang-go` — scripts/deps.sh does; a newer toolchain is \
             fetched per go.mod) — these tests fail rather than skip without it"
        )
    });
    let dir = out_dir();
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let bin = dir.join("goclip-gen");
    let lock_path = dir.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", lock_path.display()));
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    if up_to_date(&bin) {
        return bin;
    }
    let tmp = dir.join(format!("goclip-gen.tmp.{}", std::process::id()));
    let mut cmd = Command::new(&go);
    cmd.current_dir(src_dir())
        .args(["build", "-trimpath", "-o"])
        .arg(&tmp)
        .arg(".")
        // -mod=mod would hide an incomplete go.sum; the default (readonly) is wanted.
        .env_remove("GOFLAGS")
        .env("CGO_ENABLED", "0");
    // go.mod names go 1.25.0; an older `go` fetches that toolchain itself unless
    // its go.env says GOTOOLCHAIN=local (Debian's does).
    if std::env::var_os("GOTOOLCHAIN").is_none() {
        cmd.env("GOTOOLCHAIN", "auto");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        panic!(
            "building the Go clip generator failed: {cmd:?} in {} ({}):\n{}{}",
            src_dir().display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::rename(&tmp, &bin)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", tmp.display(), bin.display()));
    bin
}

/// The path of the built generator (built on first use in this process).
pub fn goclip_gen() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build).clone()
}

/// A `goclip-gen` command with no docker credentials from the machine
/// (`DOCKER_CONFIG` points at an empty directory) and Go clip's logs at warn.
pub fn goclip_cmd() -> Command {
    static EMPTY: OnceLock<PathBuf> = OnceLock::new();
    let empty = EMPTY.get_or_init(|| {
        let d = out_dir().join("docker-config");
        fs::create_dir_all(&d).expect("empty DOCKER_CONFIG dir");
        d
    });
    let mut cmd = Command::new(goclip_gen());
    cmd.env("DOCKER_CONFIG", empty)
        .env_remove("CLIP_OCI_AUTH")
        .env_remove("AWS_PROFILE");
    cmd
}

/// Runs `cmd`, panicking with its command line, status and output on failure.
pub fn goclip_run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The FIFOs and sockets under `root` (not following symlinks). Go clip's v1
/// writer takes them for regular files and reads them whole to hash them: a FIFO
/// blocks it forever, a socket fails it (ENXIO).
pub fn fifos_and_sockets(root: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for e in rd {
            let e = e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_fifo() || ft.is_socket() {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found
}

/// Removes [`fifos_and_sockets`] under `root` (so Go clip v1 can archive it);
/// returns what it removed.
pub fn remove_fifos_and_sockets(root: &Path) -> Vec<PathBuf> {
    let found = fifos_and_sockets(root);
    for p in &found {
        fs::remove_file(p).unwrap_or_else(|e| panic!("removing {}: {e}", p.display()));
    }
    found
}

fn check_v1_source(src: &Path) {
    let bad = fifos_and_sockets(src);
    assert!(
        bad.is_empty(),
        "Go clip v1 cannot archive {}: it reads FIFOs and sockets as regular files (a FIFO \
         hangs it); remove them first (remove_fifos_and_sockets): {bad:?}",
        src.display()
    );
}

/// A v1 archive of the directory `src` (data inside) at `out`:
/// `clip.CreateArchive`. Panics if `src` holds a FIFO or socket (see
/// [`fifos_and_sockets`]).
pub fn goclip_v1(src: &Path, out: &Path) {
    check_v1_source(src);
    goclip_run(goclip_cmd().arg("v1").arg(src).arg(out));
}

/// An `.rclip` of `src` at `out`, the full `.clip` uploaded to `bucket`/`key` on
/// `s3` (path style): `clip.CreateAndUploadArchive` with an `S3StorageInfo`.
pub fn goclip_rclip(src: &Path, out: &Path, s3: &S3Server, bucket: &str, key: &str) {
    check_v1_source(src);
    goclip_run(
        goclip_cmd()
            .arg("rclip")
            .arg(src)
            .arg(out)
            .args(["--bucket", bucket, "--key", key, "--endpoint"])
            .arg(s3.endpoint())
            .args(["--region", s3.region(), "--path-style"])
            .env("AWS_ACCESS_KEY_ID", s3.access_key())
            .env("AWS_SECRET_ACCESS_KEY", s3.secret_key())
            // Nothing from the machine's AWS setup: aws-sdk-go-v2 fails with Go
            // clip's plain *http.Client when AWS_CA_BUNDLE is set ("unable to add
            // custom RootCAs HTTPClient").
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    );
}

/// A v2 (index-only, OCI storage) archive of `image_ref` (e.g.
/// `127.0.0.1:PORT/app:v1`, plain HTTP on loopback) at `out`:
/// `clip.CreateFromOCIImage` with 2 MiB checkpoints.
pub fn goclip_v2(image_ref: &str, out: &Path) {
    goclip_run(goclip_cmd().arg("v2").arg(image_ref).arg(out));
}

/// Like [`goclip_v2`] reading the OCI layout `layout` instead of the registry
/// (`image_ref` is still what the archive records).
pub fn goclip_v2_layout(image_ref: &str, layout: &Path, out: &Path) {
    goclip_run(
        goclip_cmd()
            .arg("v2")
            .arg(image_ref)
            .arg(out)
            .arg("--layout")
            .arg(layout),
    );
}

/// What Go clip's `ExtractMetadata` reads from `archive`: `{storage_type,
/// storage, header, nodes}` (Go field names; see tests/goclip-gen/main.go).
pub fn goclip_meta(archive: &Path) -> Value {
    let out = goclip_run(goclip_cmd().arg("meta").arg(archive));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "goclip-gen meta {}: bad JSON ({e}):\n{}",
            archive.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The node at `path` in a [`goclip_meta`] result.
pub fn goclip_node<'a>(meta: &'a Value, path: &str) -> Option<&'a Value> {
    let want = hex::encode(path.as_bytes());
    meta["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["PathHex"].as_str() == Some(&want))
}

/// A [`goclip_meta`] node's path as raw bytes (from `PathHex`: `Path` is
/// lossy for non-UTF-8 names).
pub fn goclip_node_path(node: &Value) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let h = node["PathHex"].as_str().expect("PathHex");
    std::ffi::OsString::from_vec(hex::decode(h).expect("PathHex is hex"))
}

/// [`tricky_layers`](super::fixtures::tricky_layers) with every layer gzip
/// (what Go clip v2 can index), tagged `tag` in a new layout at `dir`, with the
/// same config as [`tricky_layout`](super::fixtures::tricky_layout).
pub fn tricky_gzip_layout(dir: &Path, tag: &str) -> ImageInfo {
    super::fixtures::tricky_layout_as(dir, tag, Some(Compression::Gzip))
}

/// The tricky fixture tree unpacked by umoci under `d`, minus its FIFOs and
/// sockets (the Go clip's v1 hangs on a FIFO).
pub fn tricky_rootfs_for_go(d: &Path) -> PathBuf {
    let layout = d.join("layout");
    super::fixtures::tricky_layout(&layout, "t");
    let rootfs = super::tools::umoci_unpack(&layout, "t", &d.join("bundle"));
    let removed = remove_fifos_and_sockets(&rootfs);
    eprintln!("removed for Go clip v1: {removed:?}");
    rootfs
}
