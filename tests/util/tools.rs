//! External tools: [`require_tool`], [`run_checked`], [`umoci_unpack`] (with
//! [`make_umoci_compatible`] for what umoci 0.4.7 cannot read), [`skopeo_copy`].
//! Tests fail loudly (never skip) when a tool is missing.

use std::env;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use super::layout::{
    DOCKER_MANIFEST_LIST, Descriptor, LayoutBuilder, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, REF_NAME,
    host_arch,
};

/// Debian packages providing the tools the tests use.
fn install_hint(name: &str) -> String {
    let pkg = match name {
        "umoci" => "umoci",
        "skopeo" => "skopeo",
        "setfattr" | "getfattr" => "attr",
        "tar" => "tar",
        "zstd" => "zstd",
        "gzip" => "gzip",
        "cp" => "coreutils",
        "htpasswd" => "apache2-utils",
        _ => name,
    };
    format!("apt-get install -y {pkg}")
}

/// Full path of an executable found on `PATH`, if any.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|p| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Returns the path of `name` on `PATH`, or panics with an install hint (tests
/// that need a tool must fail, never skip).
pub fn require_tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "required tool `{name}` not found on PATH; install it (e.g. `{}`) \
             — these tests fail rather than skip without it",
            install_hint(name)
        )
    })
}

/// Runs a command, panicking with its command line, exit status, stdout and stderr
/// unless it succeeds. Returns its output.
pub fn run_checked(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Effective uid of this process (the owner of `/proc/self`).
pub fn euid() -> u32 {
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// Unpacks image `tag` of `layout` with umoci into the new bundle directory `dest`
/// (umoci creates it) and returns `<dest>/rootfs`; panics with umoci's stderr on
/// failure. Needs root (umoci then applies owners, devices and all xattrs;
/// rootless unpacking would not be comparable).
///
/// umoci 0.4.7 only handles an OCI manifest with gzip or plain-tar layers: it
/// rejects `tar+zstd` layers ("blob is not correct mediatype"), Docker media types
/// ("descriptor does not point to ispec.MediaTypeImageManifest") and a tag naming a
/// multi-platform index ("tag is ambiguous"). For such images this function first
/// writes an equivalent layout with [`make_umoci_compatible`] (same uncompressed
/// layer tars in the same order, so the same merged tree) into a temporary
/// directory beside `dest`, and unpacks that. Otherwise it runs
/// `umoci unpack --image <layout>:<tag> <dest>` on the layout as is.
pub fn umoci_unpack(layout: &Path, tag: &str, dest: &Path) -> PathBuf {
    try_umoci_unpack(layout, tag, dest).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`umoci_unpack`] but returns the failure (umoci's command, status and
/// stderr, or why the conversion failed, e.g. a blob not matching its digest) as
/// `Err` instead of panicking, for cases umoci may reject. On failure umoci may
/// leave a partial bundle at `dest`.
pub fn try_umoci_unpack(layout: &Path, tag: &str, dest: &Path) -> Result<PathBuf, String> {
    if !needs_umoci_conversion(layout, tag) {
        return umoci_unpack_raw(layout, tag, dest);
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".umoci-compat-")
        .tempdir_in(parent)
        .expect("temp dir for the umoci-compatible layout");
    make_umoci_compatible(layout, tag, tmp.path())?;
    umoci_unpack_raw(tmp.path(), tag, dest)
}

/// Runs exactly `umoci unpack --image <layout>:<tag> <dest>` (no conversion) and
/// returns `<dest>/rootfs`, or umoci's failure as `Err`.
pub fn umoci_unpack_raw(layout: &Path, tag: &str, dest: &Path) -> Result<PathBuf, String> {
    let umoci = require_tool("umoci");
    assert_eq!(
        euid(),
        0,
        "umoci_unpack must run as root so that umoci applies owners, devices and xattrs"
    );
    let mut image = layout.as_os_str().to_owned();
    image.push(":");
    image.push(tag);
    let mut cmd = Command::new(umoci);
    cmd.arg("unpack").arg("--image").arg(&image).arg(dest);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
    if out.status.success() {
        Ok(dest.join("rootfs"))
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn read_json(layout: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let path = layout.join("blobs/sha256").join(hex);
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn is_index_type(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
}

/// The manifest descriptor `tag` resolves to: the `index.json` entry with that
/// ref name, through a nested index to the `linux/<host arch>` manifest (or its
/// only manifest).
pub fn resolve_manifest(layout: &Path, tag: &str) -> Value {
    let index_path = layout.join("index.json");
    let index: Value = serde_json::from_slice(
        &fs::read(&index_path).unwrap_or_else(|e| panic!("read {}: {e}", index_path.display())),
    )
    .expect("parse index.json");
    let found: Vec<&Value> = index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .filter(|d| d["annotations"][REF_NAME] == tag)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "tag {tag:?} in {}: {} entries",
        layout.display(),
        found.len()
    );
    let mut desc = found[0].clone();
    while is_index_type(desc["mediaType"].as_str().unwrap_or_default()) {
        let nested = read_json(layout, desc["digest"].as_str().expect("digest"));
        let list = nested["manifests"].as_array().expect("nested manifests");
        let pick = list
            .iter()
            .find(|d| {
                d["platform"]["os"] == "linux" && d["platform"]["architecture"] == host_arch()
            })
            .or(if list.len() == 1 { list.first() } else { None })
            .unwrap_or_else(|| panic!("no linux/{} manifest under tag {tag:?}", host_arch()));
        desc = pick.clone();
    }
    desc
}

/// Whether umoci 0.4.7 would refuse `tag` of `layout` for reasons unrelated to
/// the layer contents (see [`umoci_unpack`]).
pub fn needs_umoci_conversion(layout: &Path, tag: &str) -> bool {
    let index: Value = match fs::read(layout.join("index.json")) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        Err(_) => return false,
    };
    let Some(top) = index["manifests"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["annotations"][REF_NAME] == tag))
    else {
        return false;
    };
    if top["mediaType"] != OCI_MANIFEST {
        return true;
    }
    let manifest = read_json(layout, top["digest"].as_str().unwrap_or_default());
    manifest["layers"].as_array().is_some_and(|layers| {
        layers.iter().any(|l| {
            let mt = l["mediaType"].as_str().unwrap_or_default();
            mt != "application/vnd.oci.image.layer.v1.tar+gzip"
                && mt != "application/vnd.oci.image.layer.v1.tar"
        })
    })
}

/// Writes into the new layout `out` an image umoci 0.4.7 can unpack, tagged `tag`,
/// with the same merged content as `tag` of `layout`: the tag resolved to one
/// manifest ([`resolve_manifest`]), OCI media types, gzip and plain layer blobs
/// copied unchanged, zstd layers decompressed and stored as plain tar (so diff_ids
/// and the config blob stay valid and unchanged). Every blob read is checked
/// against its digest first, so corruption is reported (as `Err`) rather than
/// hidden by the conversion; an undecodable zstd layer is an `Err` too.
pub fn make_umoci_compatible(layout: &Path, tag: &str, out: &Path) -> Result<(), String> {
    let desc = resolve_manifest(layout, tag);
    let manifest = read_json(layout, desc["digest"].as_str().expect("manifest digest"));
    let lb = LayoutBuilder::new(out);
    let copy_blob = |digest: &str| -> Result<Vec<u8>, String> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let path = layout.join("blobs/sha256").join(hex);
        let data = fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let actual = super::sha256_hex(&data);
        if actual != hex {
            return Err(format!("blob {digest}: content has digest sha256:{actual}"));
        }
        lb.write_blob(&data);
        Ok(data)
    };
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config_data = copy_blob(config_digest)?;
    let mut layers = Vec::new();
    for l in manifest["layers"].as_array().expect("layers") {
        let mt = l["mediaType"].as_str().unwrap_or_default();
        let digest = l["digest"].as_str().expect("layer digest");
        let data = copy_blob(digest)?;
        let (blob, mt) = if mt.contains("zstd") {
            let tar = zstd::stream::decode_all(&data[..])
                .map_err(|e| format!("zstd layer {digest}: {e}"))?;
            (tar, "application/vnd.oci.image.layer.v1.tar")
        } else if mt.contains("gzip") {
            (data, "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (data, "application/vnd.oci.image.layer.v1.tar")
        };
        let digest = lb.write_blob(&blob);
        layers.push(json!({"mediaType": mt, "digest": digest, "size": blob.len()}));
    }
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_data.len()},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&m).expect("manifest json");
    let mdesc = Descriptor {
        media_type: OCI_MANIFEST.to_string(),
        digest: lb.write_blob(&bytes),
        size: bytes.len() as u64,
    };
    let mut lb = lb;
    lb.add_to_index(&mdesc, Some(tag));
    Ok(())
}

/// Runs `skopeo copy oci:<layout>:<tag> <dest_ref>` (e.g. `dir:/tmp/x` or
/// `oci:/tmp/other:tag`), panicking with its stderr on failure.
pub fn skopeo_copy(layout: &Path, tag: &str, dest_ref: &str) {
    let skopeo = require_tool("skopeo");
    let mut src = std::ffi::OsString::from("oci:");
    src.push(layout.as_os_str());
    src.push(":");
    src.push(tag);
    run_checked(
        Command::new(skopeo)
            .arg("--insecure-policy")
            .arg("copy")
            .arg("--quiet")
            .arg(&src)
            .arg(dest_ref),
    );
}
