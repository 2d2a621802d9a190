//! Creating an index-only archive from an image: resolve the image, index its layers
//! in parallel (bounded), merge them, and write the archive atomically.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::archive::{self, Archive, Meta, StorageRef};
use crate::codec::{DEFAULT_SPAN_SIZE, MAX_SPAN_SIZE, MIN_SPAN_SIZE};
use crate::error::{Error, Result};
use crate::index::cache::{self as layer_cache, LayerIndexStore};
use crate::index::{self, LayerIndex};
use crate::layout::Layout;
use crate::oci::{Platform, ResolvedImage};
use crate::reference::{Reference, RegistryRef};
use crate::registry::{Client, RegistryOptions};
use crate::tier::{Outcome, Tier, TierError};

/// Stage of a layer's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The layer is about to be read.
    Starting,
    /// Bytes were processed.
    Progress,
    /// The layer is indexed.
    Completed,
}

/// A progress event for one layer.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Stage.
    pub stage: Stage,
    /// 1-based index of the layer.
    pub layer_index: usize,
    /// Number of layers.
    pub total_layers: usize,
    /// The layer's digest.
    pub layer_digest: String,
    /// Compressed bytes read so far.
    pub compressed_done: u64,
    /// Compressed size of the layer.
    pub compressed_total: u64,
    /// Uncompressed bytes so far (the total once completed).
    pub uncompressed_done: u64,
    /// Layers completed so far (set on `Completed`).
    pub completed_layers: usize,
    /// Files in the layer (set on `Completed`).
    pub files: usize,
    /// Where the layer's bytes come from: `"registry"` or `"local-layout"`, or
    /// `"index-cache"` ([`SOURCE_INDEX_CACHE`]) when its index came from the
    /// layer-index cache and none of its bytes were read.
    pub source: &'static str,
}

/// [`Progress::source`] of a layer whose index came from the layer-index cache.
pub const SOURCE_INDEX_CACHE: &str = "index-cache";
/// [`Progress::source`] of a layer whose compressed blob was read from the
/// content tier.
pub const SOURCE_CONTENT_CACHE: &str = "content-cache";

/// A progress callback, called from indexing threads; returning `false` stops the
/// call, which then fails with [`Error::Canceled`].
pub type ProgressFn = Arc<dyn Fn(&Progress) -> bool + Send + Sync>;

/// Options for creating an archive.
#[derive(Clone)]
pub struct CreateOptions {
    /// Uncompressed bytes per span (default 2 MiB).
    pub span_size: u64,
    /// Platform to pick from a multi-platform image (default: this host).
    pub platform: Option<Platform>,
    /// Registry reference to record as where a mount fetches layers from.
    pub storage_ref: Option<String>,
    /// Layers indexed at once (0: the number of CPUs).
    pub concurrency: usize,
    /// Set to true to cancel.
    pub cancel: Arc<AtomicBool>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// How to reach registries (credentials, plain HTTP, retries).
    pub registry: RegistryOptions,
    /// Where per-layer index artifacts are looked up before a layer is read, and
    /// stored after it is indexed ([`crate::index::cache`]); `None` for no cache.
    /// A miss, a bad artifact or a failed store only costs time.
    pub layer_index_cache: Option<Arc<dyn LayerIndexStore>>,
    /// A shared content tier ([`crate::tier`]): a layer's compressed blob is read
    /// from it (key: the bare hex of the layer digest) when it says it holds it
    /// with exactly the layer's size, the digest verified as it streams (any
    /// failure: the layer source is read instead); a blob read from the layer
    /// source is stored into it afterwards, best effort.
    pub content_tier: Option<Arc<Tier>>,
    /// Where a blob is spooled while it is indexed, to store it into the content
    /// tier (default: the system's temporary directory).
    pub spool_dir: Option<std::path::PathBuf>,
}

impl Default for CreateOptions {
    fn default() -> CreateOptions {
        CreateOptions {
            span_size: DEFAULT_SPAN_SIZE,
            platform: None,
            storage_ref: None,
            concurrency: 0,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: None,
            registry: RegistryOptions::default(),
            layer_index_cache: None,
            content_tier: None,
            spool_dir: None,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Archive size in bytes.
    pub archive_size: u64,
    /// Number of layers.
    pub layers: usize,
    /// Sum of compressed layer sizes.
    pub compressed_size: u64,
    /// Sum of uncompressed layer sizes.
    pub uncompressed_size: u64,
    /// Inodes in the merged tree.
    pub inodes: usize,
    /// Manifest digest.
    pub manifest_digest: String,
}

/// Indexes the image `tag` of the OCI layout at `layout_dir` into `out`.
pub fn index_layout(
    layout_dir: &Path,
    tag: Option<&str>,
    out: &Path,
    opts: &CreateOptions,
) -> Result<Summary> {
    check_options(opts)?;
    if let Some(s) = &opts.storage_ref {
        parse_storage_ref(s)?;
    }
    let layout = Layout::open(layout_dir)?;
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let image = layout.resolve(tag, &platform)?;
    let source = format!(
        "oci:{}{}",
        layout_dir.display(),
        tag.map(|t| format!(":{t}")).unwrap_or_default()
    );
    let layers = index_layers(&image, opts, "local-layout", &|i| {
        let l = &image.layers[i];
        let f = layout.open_blob(&l.desc)?;
        Ok(Box::new(std::io::BufReader::with_capacity(0, f)) as Box<dyn std::io::Read + Send>)
    })?;
    finish(image, layers, source, out, opts)
}

/// Indexes the image named by `reference`: a registry image (`host/repo:tag`,
/// `repo@sha256:..`, `ubuntu`), streamed layer by layer with no blob written to
/// disk, or a local layout (`oci:/path[:tag]`). For a registry image the archive's
/// storage reference defaults to the image itself (with the manifest digest), so a
/// mount fetches from where the image was indexed.
pub fn create_from_image(reference: &str, out: &Path, opts: &CreateOptions) -> Result<Summary> {
    match Reference::parse(reference)? {
        Reference::Layout { path, tag } => index_layout(&path, tag.as_deref(), out, opts),
        Reference::Registry(r) => index_registry(&r, out, opts),
    }
}

fn index_registry(r: &RegistryRef, out: &Path, opts: &CreateOptions) -> Result<Summary> {
    check_options(opts)?;
    // Check the storage reference before any network traffic.
    if let Some(s) = &opts.storage_ref {
        parse_storage_ref(s)?;
    }
    let client = Arc::new(Client::new(&r.registry, &r.repository, &opts.registry)?);
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let image = client.resolve(&r.reference(), &platform)?;
    let layers = index_layers(&image, opts, "registry", &|i| {
        Ok(Box::new(client.open_blob(&image.layers[i].desc)) as Box<dyn std::io::Read + Send>)
    })?;
    let mut opts = opts.clone();
    if opts.storage_ref.is_none() {
        opts.storage_ref = Some(r.to_string());
    }
    finish(image, layers, r.to_string(), out, &opts)
}

fn check_options(opts: &CreateOptions) -> Result<()> {
    if !(MIN_SPAN_SIZE..=MAX_SPAN_SIZE).contains(&opts.span_size) {
        return Err(Error::Invalid(format!(
            "span size {} is outside {MIN_SPAN_SIZE}..={MAX_SPAN_SIZE}",
            opts.span_size
        )));
    }
    Ok(())
}

type OpenLayer<'a> = dyn Fn(usize) -> Result<Box<dyn std::io::Read + Send>> + Sync + 'a;

/// Indexes all layers of `image`, `opts.concurrency` at a time.
fn index_layers(
    image: &ResolvedImage,
    opts: &CreateOptions,
    source: &'static str,
    open: &OpenLayer<'_>,
) -> Result<Vec<LayerIndex>> {
    let n = image.layers.len();
    let workers = match opts.concurrency {
        0 => std::thread::available_parallelism().map_or(2, |p| p.get()),
        c => c,
    }
    .min(n.max(1));
    let next = AtomicUsize::new(0);
    let completed = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<LayerIndex>>>> =
        Mutex::new((0..n).map(|_| None).collect());
    // Set when a layer fails or the progress callback says stop: the other layers
    // stop too. Kept apart from the caller's cancel token, which only the caller sets.
    let stop = AtomicBool::new(false);
    // All layers' entries stay in memory until the merge: bounded per image.
    let budget = crate::limits::ImageBudget::default();
    let image_what = format!("image {}", image.manifest_digest);
    let admit = |r: Result<LayerIndex>| -> Result<LayerIndex> {
        let li = r?;
        let bytes = li.entries.iter().map(crate::limits::entry_bytes).sum();
        budget.add_layer(&image_what, li.entries.len() as u64, bytes)?;
        Ok(li)
    };
    let stopped = || stop.load(Ordering::Relaxed) || opts.cancel.load(Ordering::Relaxed);
    let tell = |p: &Progress| {
        if let Some(f) = &opts.progress
            && !f(p)
        {
            stop.store(true, Ordering::Relaxed);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n || stopped() {
                        break;
                    }
                    let layer = &image.layers[i];
                    let event = |stage,
                                 done: index::layer::LayerProgress,
                                 completed_layers,
                                 files| Progress {
                        stage,
                        layer_index: i + 1,
                        total_layers: n,
                        layer_digest: layer.desc.digest.to_string(),
                        compressed_done: done.compressed_done,
                        compressed_total: layer.desc.size,
                        uncompressed_done: done.uncompressed_done,
                        completed_layers,
                        files,
                        source,
                    };
                    if let Some(li) = cached(opts, layer) {
                        let li = match admit(Ok(li)) {
                            Ok(li) => li,
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                results.lock().expect("results lock")[i] = Some(Err(e));
                                continue;
                            }
                        };
                        let ev = |stage, c, files| Progress {
                            source: SOURCE_INDEX_CACHE,
                            ..event(stage, Default::default(), c, files)
                        };
                        tell(&ev(Stage::Starting, 0, 0));
                        let c = completed.fetch_add(1, Ordering::SeqCst) + 1;
                        let mut done = ev(Stage::Completed, c, li.entries.len());
                        done.compressed_done = li.record.compressed_size;
                        done.uncompressed_done = li.record.codec.uncompressed_size;
                        tell(&done);
                        results.lock().expect("results lock")[i] = Some(Ok(li));
                        continue;
                    }
                    // The content tier first, if it holds the blob; else the source,
                    // spooling the blob for the tier when it lacks it.
                    let mut spool = false;
                    let mut told = false;
                    if let Some(t) = &opts.content_tier {
                        let key = layer.desc.digest.hex();
                        match t.exists(&key, layer.desc.size) {
                            Outcome::Done(Some(true)) => {
                                let ev = |stage, done, c, files| Progress {
                                    source: SOURCE_CONTENT_CACHE,
                                    ..event(stage, done, c, files)
                                };
                                tell(&ev(Stage::Starting, Default::default(), 0, 0));
                                told = true;
                                let mut rd = TierBlobReader::new(t.clone(), key, layer.desc.size);
                                let mut last = std::time::Instant::now();
                                match index::index_layer(&mut rd, layer, opts.span_size, &stopped, &mut |done| {
                                    if opts.progress.is_some()
                                        && last.elapsed() >= std::time::Duration::from_millis(500)
                                    {
                                        last = std::time::Instant::now();
                                        tell(&ev(Stage::Progress, done, 0, 0));
                                    }
                                }) {
                                    Ok(li) => {
                                        let li = match admit(Ok(li)) {
                                            Ok(li) => li,
                                            Err(e) => {
                                                stop.store(true, Ordering::Relaxed);
                                                results.lock().expect("results lock")[i] = Some(Err(e));
                                                continue;
                                            }
                                        };
                                        store_cached(opts, &li);
                                        let c = completed.fetch_add(1, Ordering::SeqCst) + 1;
                                        let done = index::layer::LayerProgress {
                                            compressed_done: li.record.compressed_size,
                                            uncompressed_done: li.record.codec.uncompressed_size,
                                        };
                                        tell(&ev(Stage::Completed, done, c, li.entries.len()));
                                        results.lock().expect("results lock")[i] = Some(Ok(li));
                                        continue;
                                    }
                                    Err(e) if stopped() => {
                                        results.lock().expect("results lock")[i] = Some(Err(e));
                                        continue;
                                    }
                                    Err(e) => {
                                        tracing::warn!(
                                            "content tier {}: {e}; reading the layer from its source",
                                            t.describe()
                                        );
                                        spool = true;
                                    }
                                }
                            }
                            Outcome::Done(_) | Outcome::Error(TierError::Miss) => spool = true,
                            _ => {}
                        }
                    }
                    if !told {
                        tell(&event(Stage::Starting, Default::default(), 0, 0));
                    }
                    // A registry blob whose bytes fail verification (corrupted in
                    // flight) is fetched again from its start, a bounded number of
                    // times; a local blob is what it is.
                    let refetches = if source == "registry" { opts.registry.refetches } else { 0 };
                    let mut fetched = 0;
                    let (r, spool) = loop {
                        fetched += 1;
                        let spool = if spool { Spool::create(opts, layer) } else { None };
                        let r = open(i)
                            .map_err(|e| e.with_layer(layer.desc.digest))
                            .and_then(|rd| {
                                let mut rd = Tee { inner: rd, spool: spool.as_ref() };
                                let mut last = std::time::Instant::now();
                                index::index_layer(
                                    &mut rd,
                                    layer,
                                    opts.span_size,
                                    &stopped,
                                    &mut |done| {
                                        if opts.progress.is_some()
                                            && last.elapsed() >= std::time::Duration::from_millis(500)
                                        {
                                            last = std::time::Instant::now();
                                            tell(&event(Stage::Progress, done, 0, 0));
                                        }
                                    },
                                )
                            });
                        match r {
                            Err(e) if refetches > 0 && is_mismatch(&e) => {
                                if fetched > refetches || stopped() {
                                    let note = format!(" (fetched {fetched} times)");
                                    let e = match with_note(e, &note) {
                                        e @ Error::WithLayer { .. } => e,
                                        e => e.with_layer(layer.desc.digest),
                                    };
                                    break (Err(e), spool);
                                }
                                tracing::warn!(layer = %layer.desc.digest, error = %e, "layer failed verification; fetching it again from its start");
                            }
                            r => break (r, spool),
                        }
                    };
                    let r = admit(r);
                    if let (Ok(_), Some(sp), Some(t)) = (&r, spool, &opts.content_tier) {
                        sp.store(t, layer);
                    }
                    match &r {
                        Ok(li) => {
                            store_cached(opts, li);
                            let c = completed.fetch_add(1, Ordering::SeqCst) + 1;
                            let done = index::layer::LayerProgress {
                                compressed_done: li.record.compressed_size,
                                uncompressed_done: li.record.codec.uncompressed_size,
                            };
                            tell(&event(Stage::Completed, done, c, li.entries.len()));
                        }
                        Err(_) => stop.store(true, Ordering::Relaxed),
                    }
                    results.lock().expect("results lock")[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().expect("results lock");
    // Report the first real failure, not the cancellations it caused.
    let mut first_cancel = None;
    let mut out = Vec::with_capacity(n);
    for r in results {
        match r {
            Some(Ok(li)) => out.push(li),
            Some(Err(e)) if e.code() == crate::error::ErrorCode::Canceled => {
                first_cancel.get_or_insert(e);
            }
            Some(Err(e)) => return Err(e),
            None => {
                first_cancel.get_or_insert(Error::Canceled);
            }
        }
    }
    match first_cancel {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The layer's index from the layer-index cache, if it holds a valid artifact
/// for it; anything else (a miss, a store error, a corrupt or mismatching
/// artifact) is `None`, with a warning for the failures.
fn cached(opts: &CreateOptions, layer: &crate::oci::Layer) -> Option<LayerIndex> {
    let store = opts.layer_index_cache.as_ref()?;
    let key = layer_cache::key(&layer.desc.digest, opts.span_size);
    let bytes = match store.get(&key) {
        Ok(Some(b)) => b,
        Ok(None) => {
            tracing::debug!(key, "layer-index cache miss in {}", store.describe());
            return None;
        }
        Err(e) => {
            tracing::warn!(
                key,
                "layer-index cache {}: {e}; indexing the layer",
                store.describe()
            );
            return None;
        }
    };
    match layer_cache::decode(&bytes, &key, layer, opts.span_size) {
        Ok(li) => {
            tracing::debug!(key, "layer-index cache hit in {}", store.describe());
            Some(li)
        }
        Err(e) => {
            tracing::warn!("{e} (from {}); indexing the layer", store.describe());
            None
        }
    }
}

/// Stores a layer's index in the layer-index cache, best effort: a failure is a
/// warning, never an error of the build.
fn store_cached(opts: &CreateOptions, li: &LayerIndex) {
    let Some(store) = &opts.layer_index_cache else {
        return;
    };
    let key = layer_cache::key(&li.record.digest, opts.span_size);
    let r = layer_cache::encode(li, opts.span_size).and_then(|b| store.put(&key, &b));
    if let Err(e) = r {
        tracing::warn!("storing {key} in {}: {e}", store.describe());
    }
}

/// Sequential reads of a blob from the content tier, 4 MiB per (bounded) call.
struct TierBlobReader {
    tier: Arc<Tier>,
    key: String,
    pos: u64,
    size: u64,
    buf: Vec<u8>,
    at: usize,
}

impl TierBlobReader {
    fn new(tier: Arc<Tier>, key: String, size: u64) -> TierBlobReader {
        TierBlobReader {
            tier,
            key,
            pos: 0,
            size,
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl std::io::Read for TierBlobReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos == self.size {
                return Ok(0);
            }
            let len = (self.size - self.pos).min(4 << 20) as usize;
            match self.tier.read(&self.key, self.pos, len) {
                Outcome::Done(b) => {
                    self.pos += b.len() as u64;
                    self.buf = b;
                    self.at = 0;
                }
                other => {
                    return Err(std::io::Error::other(format!(
                        "reading blob {} at {} from the content tier: {other:?}",
                        self.key, self.pos
                    )));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A blob being written to a temporary file as it is indexed, to store it into
/// the content tier afterwards.
struct Spool {
    file: Mutex<Option<std::io::BufWriter<tempfile::NamedTempFile>>>,
}

impl Spool {
    /// A spool for `layer`, if its directory has room for it (and a margin).
    fn create(opts: &CreateOptions, layer: &crate::oci::Layer) -> Option<Spool> {
        let dir = opts.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
        let free = rustix::fs::statvfs(&dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0);
        if free < layer.desc.size.saturating_add(1 << 30) {
            tracing::warn!(
                "{} has too little room to spool layer {} for the content tier",
                dir.display(),
                layer.desc.digest
            );
            return None;
        }
        match tempfile::Builder::new()
            .prefix(".clip-blob-")
            .tempfile_in(&dir)
        {
            Ok(f) => Some(Spool {
                file: Mutex::new(Some(std::io::BufWriter::with_capacity(1 << 20, f))),
            }),
            Err(e) => {
                tracing::warn!("cannot spool a blob in {}: {e}", dir.display());
                None
            }
        }
    }

    fn write(&self, data: &[u8]) {
        let mut g = self.file.lock().expect("spool lock");
        if let Some(w) = g.as_mut()
            && std::io::Write::write_all(w, data).is_err()
        {
            *g = None; // give up spooling; indexing goes on
        }
    }

    /// Stores the spooled blob into the tier under the layer digest's hex.
    fn store(self, tier: &Tier, layer: &crate::oci::Layer) {
        let Some(w) = self.file.into_inner().expect("spool lock") else {
            return;
        };
        let r = w
            .into_inner()
            .map_err(|e| e.into_error().to_string())
            .and_then(|f| {
                tier.store_file(&layer.desc.digest.hex(), f.path())
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = r {
            tracing::warn!(
                "cannot store blob {} in content tier {}: {e}",
                layer.desc.digest,
                tier.describe()
            );
        }
    }
}

/// A reader that copies what it reads into a [`Spool`].
struct Tee<'a> {
    inner: Box<dyn std::io::Read + Send>,
    spool: Option<&'a Spool>,
}

impl std::io::Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(s) = self.spool {
            s.write(&buf[..n]);
        }
        Ok(n)
    }
}

/// Whether `e` is a digest mismatch (perhaps naming its layer).
fn is_mismatch(e: &Error) -> bool {
    match e {
        Error::DigestMismatch { .. } => true,
        Error::WithLayer { inner, .. } => is_mismatch(inner),
        _ => false,
    }
}

/// A digest mismatch with `note` appended to what was verified.
fn with_note(e: Error, note: &str) -> Error {
    match e {
        Error::WithLayer { digest, inner } => Error::WithLayer {
            digest,
            inner: Box::new(with_note(*inner, note)),
        },
        Error::DigestMismatch {
            what,
            expected,
            actual,
        } => Error::DigestMismatch {
            what: what + note,
            expected,
            actual,
        },
        e => e,
    }
}

fn parse_storage_ref(s: &str) -> Result<RegistryRef> {
    match Reference::parse(s)? {
        Reference::Registry(r) => Ok(r),
        Reference::Layout { .. } => Err(Error::Invalid(format!(
            "storage reference {s:?} must name a registry image"
        ))),
    }
}

fn storage_ref(opts: &CreateOptions, image: &ResolvedImage) -> Result<Option<StorageRef>> {
    let Some(s) = &opts.storage_ref else {
        return Ok(None);
    };
    let r = parse_storage_ref(s)?;
    Ok(Some(StorageRef {
        kind: "oci".into(),
        registry: r.registry,
        repository: r.repository,
        reference: image.manifest_digest.to_string(),
        ..Default::default()
    }))
}

fn finish(
    image: ResolvedImage,
    layers: Vec<LayerIndex>,
    source: String,
    out: &Path,
    opts: &CreateOptions,
) -> Result<Summary> {
    let storage = storage_ref(opts, &image)?;
    let tree = index::merge(&layers)?;
    let summary_layers = layers.len();
    let compressed_size = layers.iter().map(|l| l.record.compressed_size).sum();
    let uncompressed_size = layers
        .iter()
        .map(|l| l.record.codec.uncompressed_size)
        .sum();
    let archive = Archive {
        meta: Meta {
            created_by: format!("clip {}", crate::VERSION),
            source,
            storage,
            manifest_digest: Some(image.manifest_digest),
            platform: image.platform.clone(),
            config: image.config.clone(),
            span_size: opts.span_size,
        },
        layers: layers.into_iter().map(|l| l.record).collect(),
        tree,
        data: None,
        profile: None,
    };
    if opts.cancel.load(Ordering::Relaxed) {
        return Err(Error::Canceled);
    }
    let inodes = archive.tree.inodes.len();
    let archive_size = archive::write(&archive, out)?;
    Ok(Summary {
        archive_size,
        layers: summary_layers,
        compressed_size,
        uncompressed_size,
        inodes,
        manifest_digest: image.manifest_digest.to_string(),
    })
}
