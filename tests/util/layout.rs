//! [`LayoutBuilder`]: writes an OCI image layout directory (what `skopeo copy
//! ... oci:DIR:TAG` and `umoci` produce): `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>`.
//!
//! Output is deterministic: gzip via flate2 (level 6, header mtime 0), zstd level 3,
//! a fixed `created` time, and JSON with sorted keys.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::sha256_hex;

/// Annotation naming a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2) media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// `created` time written into configs and history unless overridden.
pub const DEFAULT_CREATED: &str = "2024-01-01T00:00:00Z";

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (flate2, level 6).
    Gzip,
    /// zstd (level 3, one frame).
    Zstd,
    /// Plain tar.
    None,
}

impl Compression {
    /// Compresses `data` this way (deterministically).
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                enc.write_all(data).expect("gzip");
                enc.finish().expect("gzip")
            }
            Compression::Zstd => zstd::stream::encode_all(data, 3).expect("zstd"),
            Compression::None => data.to_vec(),
        }
    }
}

/// Media-type family of an image (manifest, config and layers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavor {
    /// `application/vnd.oci.image.*`.
    #[default]
    Oci,
    /// `application/vnd.docker.*` (schema 2). Docker has no zstd layer media type;
    /// zstd layers use the OCI `tar+zstd` type, as buildah/podman do. Neither
    /// umoci 0.4.7 nor skopeo 1.9 reads such an image straight from an OCI layout
    /// (skopeo's `oci:` transport skips `index.json` entries with Docker media types:
    /// "no descriptor found for reference"); [`umoci_unpack`](super::umoci_unpack)
    /// converts it first.
    Docker,
}

impl Flavor {
    /// Layer media type for this compression.
    pub fn layer_media_type(self, c: Compression) -> &'static str {
        match (self, c) {
            (Flavor::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (_, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Flavor::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (Flavor::Docker, Compression::Gzip) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
            (Flavor::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
        }
    }

    /// Image manifest media type.
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_MANIFEST,
            Flavor::Docker => DOCKER_MANIFEST,
        }
    }

    /// Image config media type.
    pub fn config_media_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_CONFIG,
            Flavor::Docker => DOCKER_CONFIG,
        }
    }

    /// Image index / manifest list media type.
    pub fn index_media_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_INDEX,
            Flavor::Docker => DOCKER_MANIFEST_LIST,
        }
    }
}

/// A content descriptor (`mediaType`, `digest`, `size`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    /// Blob size in bytes.
    pub size: u64,
}

impl Descriptor {
    /// As a JSON descriptor object.
    pub fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// A layer written into the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the (compressed) blob.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Layer media type.
    pub media_type: String,
    /// Compression used (`None` also for [`LayoutBuilder::add_layer_raw`] blobs).
    pub compression: Compression,
}

impl LayerInfo {
    /// The layer's descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
        }
    }
}

/// What [`LayoutBuilder::write_manifest`] / [`LayoutBuilder::write_image`] wrote.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    /// The manifest blob.
    pub manifest: Descriptor,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<LayerInfo>,
}

/// Description of one image: its layers and everything in its config.
#[derive(Clone, Debug)]
pub struct Image {
    /// Media-type family.
    pub flavor: Flavor,
    /// Layers, bottom first (their blobs must already be in the layout).
    pub layers: Vec<LayerInfo>,
    /// Config `architecture` (default: the host's, in Go's naming, e.g. `amd64`).
    pub architecture: String,
    /// Config `os` (default `linux`).
    pub os: String,
    /// Config `variant` (e.g. `v8`), omitted when `None`.
    pub variant: Option<String>,
    /// Config `created`.
    pub created: String,
    /// `config.Env` entries (`KEY=value`).
    pub env: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.User`.
    pub user: Option<String>,
    /// `config.WorkingDir`.
    pub working_dir: Option<String>,
    /// `config.Labels`.
    pub labels: BTreeMap<String, String>,
    /// Config `history`; when `None`, one entry per layer is generated.
    pub history: Option<Vec<Value>>,
    /// Manifest `annotations` (omitted when empty).
    pub annotations: BTreeMap<String, String>,
}

/// The host architecture in OCI/Go naming.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

impl Default for Image {
    fn default() -> Image {
        Image {
            flavor: Flavor::Oci,
            layers: Vec::new(),
            architecture: host_arch().to_string(),
            os: "linux".to_string(),
            variant: None,
            created: DEFAULT_CREATED.to_string(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: None,
            entrypoint: None,
            user: None,
            working_dir: None,
            labels: BTreeMap::new(),
            history: None,
            annotations: BTreeMap::new(),
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Image {
    /// An image with the defaults (OCI, host arch, linux, a PATH env, no layers).
    pub fn new() -> Image {
        Image::default()
    }

    /// Appends a layer.
    pub fn layer(&mut self, layer: LayerInfo) -> &mut Self {
        self.layers.push(layer);
        self
    }

    /// Sets the flavor.
    pub fn flavor(&mut self, flavor: Flavor) -> &mut Self {
        self.flavor = flavor;
        self
    }

    /// Sets os, architecture and variant.
    pub fn platform(&mut self, os: &str, arch: &str, variant: Option<&str>) -> &mut Self {
        self.os = os.to_string();
        self.architecture = arch.to_string();
        self.variant = variant.map(str::to_string);
        self
    }

    /// Appends an `Env` entry (`"KEY=value"`).
    pub fn env(&mut self, kv: &str) -> &mut Self {
        self.env.push(kv.to_string());
        self
    }

    /// Sets `Cmd`.
    pub fn cmd(&mut self, cmd: &[&str]) -> &mut Self {
        self.cmd = Some(strings(cmd));
        self
    }

    /// Sets `Entrypoint`.
    pub fn entrypoint(&mut self, ep: &[&str]) -> &mut Self {
        self.entrypoint = Some(strings(ep));
        self
    }

    /// Sets `User`.
    pub fn user(&mut self, user: &str) -> &mut Self {
        self.user = Some(user.to_string());
        self
    }

    /// Sets `WorkingDir`.
    pub fn working_dir(&mut self, dir: &str) -> &mut Self {
        self.working_dir = Some(dir.to_string());
        self
    }

    /// Adds a label.
    pub fn label(&mut self, key: &str, value: &str) -> &mut Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a manifest annotation.
    pub fn annotation(&mut self, key: &str, value: &str) -> &mut Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// Sets the config history explicitly (each a JSON object such as
    /// `{"created_by": "...", "empty_layer": true}`).
    pub fn history(&mut self, history: Vec<Value>) -> &mut Self {
        self.history = Some(history);
        self
    }

    /// The image config JSON.
    pub fn config_json(&self) -> Value {
        let mut cfg = serde_json::Map::new();
        if !self.env.is_empty() {
            cfg.insert("Env".into(), json!(self.env));
        }
        if let Some(v) = &self.cmd {
            cfg.insert("Cmd".into(), json!(v));
        }
        if let Some(v) = &self.entrypoint {
            cfg.insert("Entrypoint".into(), json!(v));
        }
        if let Some(v) = &self.user {
            cfg.insert("User".into(), json!(v));
        }
        if let Some(v) = &self.working_dir {
            cfg.insert("WorkingDir".into(), json!(v));
        }
        if !self.labels.is_empty() {
            cfg.insert("Labels".into(), json!(self.labels));
        }
        let history = self.history.clone().unwrap_or_else(|| {
            (0..self.layers.len())
                .map(|i| {
                    let by = format!("clip test layer {i}");
                    json!({"created": self.created, "created_by": by})
                })
                .collect()
        });
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        let mut v = json!({
            "created": self.created,
            "architecture": self.architecture,
            "os": self.os,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(variant) = &self.variant {
            v["variant"] = json!(variant);
        }
        v
    }
}

/// Writes an OCI image layout directory. Typical use:
///
/// ```ignore
/// let mut lb = LayoutBuilder::new(&dir);
/// lb.add_layer(&tar1, Compression::Gzip);
/// lb.add_layer(&tar2, Compression::Zstd);
/// lb.image_mut().env("FOO=bar").cmd(&["/bin/sh"]);
/// lb.write_image(Some("latest"));      // index.json now lists "latest"
/// lb.add_layer(&tar3, Compression::None);
/// lb.write_image(Some("other"));       // a second, independent image
/// ```
///
/// `oci-layout` and `index.json` are written at once and `index.json` is rewritten
/// after every change, so the directory is a valid layout at all times.
#[derive(Debug)]
pub struct LayoutBuilder {
    dir: PathBuf,
    current: Image,
    index: Vec<Value>,
}

/// Accepts `sha256:<hex>` or bare `<hex>`.
fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

impl LayoutBuilder {
    /// Creates `dir` (or reuses it, keeping its blobs), writing `oci-layout`, an
    /// empty `index.json` (replacing any existing one) and `blobs/sha256/`.
    pub fn new(dir: impl AsRef<Path>) -> LayoutBuilder {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(dir.join("blobs/sha256")).expect("create layout dir");
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write oci-layout");
        let lb = LayoutBuilder {
            dir,
            current: Image::default(),
            index: Vec::new(),
        };
        lb.write_index_json();
        lb
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets the flavor of the image being built; set it before adding layers, as
    /// it chooses their media types.
    pub fn flavor(&mut self, flavor: Flavor) -> &mut Self {
        self.current.flavor = flavor;
        self
    }

    /// The image being built (config setters: `env`, `cmd`, `user`, ...).
    pub fn image_mut(&mut self) -> &mut Image {
        &mut self.current
    }

    /// Stores `data` as a blob, returning `sha256:<hex>`.
    pub fn write_blob(&self, data: &[u8]) -> String {
        let hex = sha256_hex(data);
        fs::write(self.dir.join("blobs/sha256").join(&hex), data).expect("write blob");
        format!("sha256:{hex}")
    }

    /// Path of a blob (`sha256:<hex>` or `<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest_hex(digest))
    }

    /// Compresses `tar`, stores it and appends it to the current image.
    pub fn add_layer(&mut self, tar: &[u8], compression: Compression) -> LayerInfo {
        let blob = compression.compress(tar);
        let info = LayerInfo {
            digest: self.write_blob(&blob),
            diff_id: format!("sha256:{}", sha256_hex(tar)),
            size: blob.len() as u64,
            media_type: self
                .current
                .flavor
                .layer_media_type(compression)
                .to_string(),
            compression,
        };
        self.current.layers.push(info.clone());
        info
    }

    /// Stores a pre-made layer blob with the given diff_id (`sha256:<hex>`) and media
    /// type, and appends it to the current image (for multi-member gzip, multi-frame
    /// zstd, wrong media types, wrong diff_ids, ...).
    pub fn add_layer_raw(&mut self, blob: &[u8], diff_id: &str, media_type: &str) -> LayerInfo {
        let info = LayerInfo {
            digest: self.write_blob(blob),
            diff_id: diff_id.to_string(),
            size: blob.len() as u64,
            media_type: media_type.to_string(),
            compression: Compression::None,
        };
        self.current.layers.push(info.clone());
        info
    }

    /// Writes config and manifest blobs for `image` (no `index.json` entry).
    pub fn write_manifest(&self, image: &Image) -> ImageInfo {
        let config_bytes = serde_json::to_vec(&image.config_json()).expect("config json");
        let config = Descriptor {
            media_type: image.flavor.config_media_type().to_string(),
            digest: self.write_blob(&config_bytes),
            size: config_bytes.len() as u64,
        };
        let layers: Vec<Value> = image
            .layers
            .iter()
            .map(|l| l.descriptor().to_json())
            .collect();
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": image.flavor.manifest_media_type(),
            "config": config.to_json(),
            "layers": layers,
        });
        if !image.annotations.is_empty() {
            manifest["annotations"] = json!(image.annotations);
        }
        let bytes = serde_json::to_vec(&manifest).expect("manifest json");
        ImageInfo {
            manifest: Descriptor {
                media_type: image.flavor.manifest_media_type().to_string(),
                digest: self.write_blob(&bytes),
                size: bytes.len() as u64,
            },
            config,
            layers: image.layers.clone(),
        }
    }

    /// Adds a descriptor to `index.json`, with the ref-name annotation when `tag` is
    /// given (a tag already present is not removed: both entries stay).
    pub fn add_to_index(&mut self, desc: &Descriptor, tag: Option<&str>) {
        let mut v = desc.to_json();
        if let Some(tag) = tag {
            v["annotations"] = json!({ REF_NAME: tag });
        }
        self.index.push(v);
        self.write_index_json();
    }

    /// Writes the current image (config + manifest) and lists it in `index.json`
    /// under `tag`; then starts a fresh current image (same flavor, no layers,
    /// default config).
    pub fn write_image(&mut self, tag: Option<&str>) -> ImageInfo {
        let image = self.take_image();
        let info = self.write_manifest(&image);
        self.add_to_index(&info.manifest, tag);
        info
    }

    /// Returns the current image description without writing it (for
    /// [`write_index_image`](Self::write_index_image)) and starts a fresh one (same
    /// flavor).
    pub fn take_image(&mut self) -> Image {
        let flavor = self.current.flavor;
        let fresh = Image {
            flavor,
            ..Image::default()
        };
        std::mem::replace(&mut self.current, fresh)
    }

    /// Writes a multi-platform image: one manifest per `(os, architecture, variant,
    /// image)` (the image's config gets that platform), a nested image index (OCI
    /// index, or Docker manifest list when the first image is Docker-flavoured)
    /// listing them with their `platform`, and an `index.json` entry for that nested
    /// index under `tag`. Returns the nested index's descriptor.
    pub fn write_index_image(
        &mut self,
        tag: Option<&str>,
        images: &[(&str, &str, Option<&str>, &Image)],
    ) -> Descriptor {
        let flavor = images.first().map_or(Flavor::Oci, |i| i.3.flavor);
        let mut manifests = Vec::new();
        for (os, arch, variant, image) in images {
            let mut image = (*image).clone();
            image.platform(os, arch, *variant);
            let info = self.write_manifest(&image);
            let mut d = info.manifest.to_json();
            let mut platform = json!({"architecture": arch, "os": os});
            if let Some(v) = variant {
                platform["variant"] = json!(v);
            }
            d["platform"] = platform;
            manifests.push(d);
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": flavor.index_media_type(),
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&index).expect("index json");
        let desc = Descriptor {
            media_type: flavor.index_media_type().to_string(),
            digest: self.write_blob(&bytes),
            size: bytes.len() as u64,
        };
        self.add_to_index(&desc, tag);
        desc
    }

    fn write_index_json(&self) {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": self.index,
        });
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).expect("index json"),
        )
        .expect("write index.json");
    }

    /// Flips (xor 0xff) the byte in the middle of a blob.
    pub fn corrupt_blob(&self, digest: &str) {
        let len = fs::metadata(self.blob_path(digest)).expect("blob").len();
        assert!(len > 0, "cannot corrupt an empty blob");
        self.corrupt_blob_at(digest, len / 2);
    }

    /// Flips (xor 0xff) the byte at `offset` of a blob.
    pub fn corrupt_blob_at(&self, digest: &str, offset: u64) {
        let path = self.blob_path(digest);
        let mut data = fs::read(&path).expect("read blob");
        let i = usize::try_from(offset).expect("offset");
        assert!(
            i < data.len(),
            "offset {offset} beyond blob of {}",
            data.len()
        );
        data[i] ^= 0xff;
        fs::write(&path, data).expect("write blob");
    }

    /// Truncates a blob to `len` bytes.
    pub fn truncate_blob(&self, digest: &str, len: u64) {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(self.blob_path(digest))
            .expect("open blob");
        f.set_len(len).expect("truncate blob");
    }

    /// Deletes a blob.
    pub fn remove_blob(&self, digest: &str) {
        fs::remove_file(self.blob_path(digest)).expect("remove blob");
    }
}
