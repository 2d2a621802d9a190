//! `clipctl`: the command line over the clip library. Parsing, typed options, one
//! call into the library, and an exit code; no logic lives here.

use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use clip::create::{CreateOptions, Progress, Stage};
use clip::extract::{ExtractOptions, extract};
use clip::image::{Image, SourceOptions};
use clip::oci::Platform;
use clip::tree::{Kind, Tree};

#[derive(Parser)]
#[command(
    name = "clipctl",
    version,
    about = "Lazy-loading container images: index, inspect, read"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); also CLIP_LOG_LEVEL.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Append logs to this file instead of stderr (useful with `mount --daemon`).
    #[arg(long, global = true)]
    log_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum ProfileCmd {
    /// Embed the profile FILE (from `clipctl mount --record`) in ARCHIVE,
    /// replacing any there; the archive is rewritten atomically.
    Add {
        /// The archive.
        archive: PathBuf,
        /// The profile file.
        file: PathBuf,
    },
    /// Remove the embedded profile of ARCHIVE.
    Remove {
        /// The archive.
        archive: PathBuf,
    },
    /// Print the embedded profile of ARCHIVE as JSON (nothing if it has none).
    Show {
        /// The archive.
        archive: PathBuf,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Index an image of a local OCI layout into an index-only .clip archive.
    IndexLayout {
        /// The OCI layout directory.
        #[arg(long)]
        layout: PathBuf,
        /// The image's tag (org.opencontainers.image.ref.name); optional if the layout holds one image.
        #[arg(long)]
        tag: Option<String>,
        /// Where to write the archive.
        #[arg(long)]
        out: PathBuf,
        /// Registry reference to record as where a mount fetches layers from.
        #[arg(long)]
        storage_ref: Option<String>,
        #[command(flatten)]
        idx: IndexArgs,
    },
    /// Index an image by reference: a registry image (`host/repo:tag`,
    /// `repo@sha256:..`) streamed from the registry, or `oci:/path[:tag]`.
    Create {
        /// Image reference.
        image_ref: String,
        #[command(flatten)]
        reg: RegistryArgs,
        /// Where to write the archive.
        #[arg(long)]
        out: PathBuf,
        /// Registry reference to record as where a mount fetches layers from.
        #[arg(long)]
        storage_ref: Option<String>,
        #[command(flatten)]
        idx: IndexArgs,
    },
    /// Archive a directory tree (or flatten an image) into a v1 .clip that carries
    /// its file data; with --s3, upload it and write the metadata-only .rclip.
    Archive {
        /// The directory to archive (everything below it, symlinks not followed).
        #[arg(required_unless_present = "image", conflicts_with = "image")]
        dir: Option<PathBuf>,
        /// Flatten this image instead (`host/repo:tag`, `oci:/path[:tag]`), with the
        /// whiteout rules of a mount.
        #[arg(long)]
        image: Option<String>,
        /// Where to write the archive (the .rclip with --s3).
        #[arg(long)]
        out: PathBuf,
        /// Uncompressed bytes per chunk (KiB/MiB suffix): smaller chunks make cold
        /// reads cheaper and the archive larger.
        #[arg(long, default_value = "2MiB")]
        chunk_size: String,
        /// zstd level of the chunks (1..=19).
        #[arg(long, default_value_t = clip::pack::DEFAULT_LEVEL)]
        level: i32,
        /// Compression threads (default: one more than the number of CPUs).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Platform to pick from a multi-platform image (os/arch[/variant]).
        #[arg(long)]
        platform: Option<String>,
        #[command(flatten)]
        reg: RegistryArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Summarise an archive.
    Inspect {
        /// The archive.
        archive: PathBuf,
        /// Print everything as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List files of an archive like `ls -l`.
    Ls {
        /// The archive.
        archive: PathBuf,
        /// A directory or file in the image (default: /).
        path: Option<String>,
        /// List recursively.
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// Print a file's bytes, read by random access from the layers.
    Cat {
        /// The archive.
        archive: PathBuf,
        /// The file in the image.
        path: String,
        /// The OCI layout holding the layers (default: the registry the archive
        /// names, else the layout it was indexed from).
        #[arg(long)]
        layout: Option<PathBuf>,
        #[command(flatten)]
        reg: RegistryArgs,
        #[command(flatten)]
        s3: S3Args,
        /// Start at this byte.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Read at most this many bytes.
        #[arg(long)]
        length: Option<u64>,
        /// Print read statistics to stderr as JSON.
        #[arg(long)]
        stats: bool,
    },
    /// Mount an archive read-only with FUSE; file bytes are fetched on demand.
    Mount {
        /// The archive.
        archive: PathBuf,
        /// Where to mount (created if missing).
        mountpoint: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Let other users access the mount.
        #[arg(long)]
        allow_other: bool,
        /// Detach once the mount is live. Errors until then are printed here;
        /// logs after go to --log-file (without one, nowhere).
        #[arg(long)]
        daemon: bool,
        /// Keep a JSON file of read statistics up to date here.
        #[arg(long)]
        stats_file: Option<PathBuf>,
        /// Internal: print "ready" on stdout once mounted (used by --daemon).
        #[arg(long, hide = true)]
        notify_ready: bool,
        /// Record a startup profile: when the mount ends, write to FILE which
        /// layer ranges reads touched, in order, with their timing (record on a
        /// fresh mount: reads the page cache serves are not seen).
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Replay this startup profile at mount, fetching its spans in parallel
        /// ahead of the workload (instead of the archive's embedded profile). An
        /// unreadable or stale profile is ignored with a warning.
        #[arg(long, value_name = "FILE", conflicts_with = "no_prefetch")]
        prefetch: Option<PathBuf>,
        /// Do not replay the archive's embedded startup profile.
        #[arg(long)]
        no_prefetch: bool,
        /// Spans a profile's replay fetches at once.
        #[arg(long, default_value_t = clip::mount::DEFAULT_REPLAY_THREADS)]
        prefetch_threads: usize,
    },
    /// Embed, show or remove an archive's startup profile (replayed by default
    /// at mount).
    Profile {
        #[command(subcommand)]
        cmd: ProfileCmd,
    },
    /// Fetch and verify every span of every layer into the span cache (from the
    /// shared content tier first), so that a mount then reads nothing from the
    /// layer sources; layers the tier lacks are stored into it.
    Prefetch {
        /// The archive.
        archive: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Runs of spans fetched at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Unmount a clip mount.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Materialise the image's merged tree into a directory.
    Extract {
        /// The archive.
        archive: PathBuf,
        /// Destination directory (created; must be empty).
        dest: PathBuf,
        /// The OCI layout holding the layers (default: the registry the archive
        /// names, else the layout it was indexed from).
        #[arg(long)]
        layout: Option<PathBuf>,
        #[command(flatten)]
        reg: RegistryArgs,
        #[command(flatten)]
        s3: S3Args,
        /// Print read statistics to stderr as JSON.
        #[arg(long)]
        stats: bool,
    },
}

/// How to reach registries.
#[derive(clap::Args)]
struct RegistryArgs {
    /// Registry user name (with --password or --password-stdin).
    #[arg(long)]
    username: Option<String>,
    /// Registry password (visible to other users in `ps`; prefer --password-stdin).
    #[arg(long)]
    password: Option<String>,
    /// Read the registry password from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// A docker config.json or podman auth.json to take credentials from.
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Reach this registry (host[:port]) over plain HTTP (loopback ones always are).
    #[arg(long = "plain-http", value_name = "REGISTRY")]
    plain_http: Vec<String>,
    /// Try this mirror before REGISTRY (host[:port] or a prefix such as
    /// docker.io/library): MIRROR is http://host[:port][/ns] (plain HTTP),
    /// https://... or host[:port][/ns]. Repeatable; tried in the order given.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=MIRROR")]
    registry_mirror: Vec<String>,
    /// A containers-registries.conf(5) file with [[registry.mirror]] entries (also
    /// CLIP_REGISTRIES_CONF; /etc/containers/registries.conf only if named).
    #[arg(long = "registries-conf", value_name = "FILE")]
    registries_conf: Option<PathBuf>,
    /// Abandon a registry response that makes no progress (no byte arrives) for
    /// this many seconds, and retry it on a fresh connection [default: 5].
    #[arg(long, value_name = "SECS")]
    stall_timeout: Option<f64>,
    /// Attempts per registry request on 429, 5xx, resets and stalls [default: 5].
    #[arg(long, value_name = "N")]
    registry_attempts: Option<u32>,
    /// The most seconds one registry request waits between its attempts
    /// (Retry-After and backoff) [default: 30].
    #[arg(long, value_name = "SECS")]
    retry_budget: Option<f64>,
    /// A lazy read that makes no progress for this many seconds sends a second,
    /// hedged request for the rest of its range: SECS, `auto` (4 times the usual
    /// time to first byte, 0.1 s at least, half the stall timeout at most) or
    /// `off` [default: auto].
    #[arg(long, value_name = "SECS|auto|off")]
    hedge_after: Option<clip::registry::Hedge>,
}

impl RegistryArgs {
    fn options(&self) -> Result<clip::registry::RegistryOptions> {
        let password = if self.password_stdin {
            let mut p = String::new();
            std::io::stdin().read_line(&mut p)?;
            Some(p.trim_end_matches(['\n', '\r']).to_string())
        } else {
            self.password.clone()
        };
        let credential = match (&self.username, password) {
            (Some(u), Some(p)) => Some(clip::registry::Credential::Basic {
                username: u.clone(),
                password: p,
            }),
            (None, None) => None,
            _ => bail!("--username needs --password or --password-stdin, and the other way round"),
        };
        let mut registries = clip::registry::RegistriesConf::default();
        for m in &self.registry_mirror {
            let Some((registry, url)) = m.split_once('=') else {
                bail!("--registry-mirror {m:?}: expected REGISTRY=MIRROR");
            };
            registries.add_mirror(registry, clip::registry::Mirror::from_url(url)?);
        }
        let secs = |flag: &str, v: Option<f64>, default: std::time::Duration| match v {
            None => Ok(default),
            Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => {
                Ok(std::time::Duration::from_secs_f64(s))
            }
            Some(s) => Err(anyhow::anyhow!(
                "--{flag} {s}: expected a positive number of seconds"
            )),
        };
        let d = clip::registry::RegistryOptions::default();
        let opts = clip::registry::RegistryOptions {
            credential,
            auth_file: self.auth_file.clone(),
            plain_http: self.plain_http.clone(),
            registries,
            registries_conf: self.registries_conf.clone(),
            stall_timeout: secs("stall-timeout", self.stall_timeout, d.stall_timeout)?,
            retry_budget: secs("retry-budget", self.retry_budget, d.retry_budget)?,
            attempts: self.registry_attempts.unwrap_or(d.attempts).max(1),
            hedge: self.hedge_after.unwrap_or(d.hedge),
            ..d
        };
        // A bad registries.conf fails now, naming the file, not at the first
        // registry request (a mount's, say).
        opts.effective_registries()?;
        Ok(opts)
    }

    fn sources(&self, layout: Option<PathBuf>, s3: &S3Args) -> Result<SourceOptions> {
        self.sources_with(layout, s3, None)
    }

    /// [`RegistryArgs::sources`] for a command with a remote-cache option.
    fn sources_with(
        &self,
        layout: Option<PathBuf>,
        s3: &S3Args,
        tier: Option<&TierArgs>,
    ) -> Result<SourceOptions> {
        let tier = tier.is_some_and(|t| t.remote_cache.is_some());
        Ok(SourceOptions {
            layout,
            registry: self.options()?,
            s3: s3.location_with(tier)?,
            data_archive: s3.data_archive.clone(),
            ..Default::default()
        })
    }
}

/// Where v1 data lives in S3, and where a .rclip's data is read from.
#[derive(clap::Args)]
struct S3Args {
    /// `s3://BUCKET/KEY` of the full archive: where `archive` uploads it, or (for
    /// a .rclip) where to read the data instead of the location it names.
    #[arg(long, value_name = "s3://BUCKET/KEY")]
    s3: Option<String>,
    /// S3 endpoint URL (default: AWS, or $AWS_ENDPOINT_URL).
    #[arg(long)]
    endpoint: Option<String>,
    /// S3 region (default: $AWS_REGION, else us-east-1).
    #[arg(long)]
    region: Option<String>,
    /// Path-style S3 requests (most non-AWS servers need them).
    #[arg(long)]
    path_style: bool,
    /// For a .rclip: read the data from this local full archive instead of S3.
    #[arg(long, value_name = "FILE.clip")]
    data_archive: Option<PathBuf>,
}

impl S3Args {
    /// The location given, if any. Credentials come from the `AWS_*` variables.
    /// `--endpoint`, `--region` and `--path-style` go with `--s3` or, where the
    /// command has one, `--remote-cache` (`tier`).
    fn location_with(&self, tier: bool) -> Result<Option<clip::s3::S3Location>> {
        let Some(url) = &self.s3 else {
            if !tier && (self.endpoint.is_some() || self.region.is_some() || self.path_style) {
                bail!("--endpoint, --region and --path-style go with --s3 or --remote-cache");
            }
            return Ok(None);
        };
        let mut loc = clip::s3::S3Location::parse_url(url)?;
        self.apply(&mut loc);
        Ok(Some(loc))
    }

    /// [`S3Args::location_with`] for a command without a remote cache.
    fn location(&self) -> Result<Option<clip::s3::S3Location>> {
        self.location_with(false)
    }

    /// Sets endpoint, region and path style on `loc` as given.
    fn apply(&self, loc: &mut clip::s3::S3Location) {
        if let Some(e) = &self.endpoint {
            loc.endpoint = e.clone();
        }
        if let Some(r) = &self.region {
            loc.region = r.clone();
        }
        loc.path_style |= self.path_style;
    }
}

/// Where a mount's (or a prefetch's) bytes come from and where they are cached.
#[derive(clap::Args)]
struct StoreArgs {
    /// The OCI layout holding the layers (default: the registry the archive
    /// names, else the layout it was indexed from).
    #[arg(long)]
    layout: Option<PathBuf>,
    #[command(flatten)]
    reg: RegistryArgs,
    #[command(flatten)]
    s3: S3Args,
    /// Span cache directory (default: $CLIP_CACHE_DIR, ~/.cache/clip).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Span cache size limit (a number with an optional KiB/MiB/GiB suffix).
    #[arg(long, default_value = "10GiB")]
    cache_size: String,
    #[command(flatten)]
    tier: TierArgs,
}

impl StoreArgs {
    /// The image of `archive`, bound to its sources.
    fn image(&self, archive: &std::path::Path) -> Result<Image> {
        let mut src = self
            .reg
            .sources_with(self.layout.clone(), &self.s3, Some(&self.tier))?;
        if let Some(d) = &self.cache_dir {
            src.goclip_dir = Some(d.join("goclip"));
        }
        Ok(Image::open(archive, &src)?)
    }

    /// Mount options with the cache and tier given.
    fn mount_options(&self) -> Result<clip::mount::MountOptions> {
        let mut opts = clip::mount::MountOptions {
            cache_max_bytes: parse_size(&self.cache_size)?,
            ..Default::default()
        };
        self.tier.apply(&mut opts, &self.s3)?;
        if let Some(d) = &self.cache_dir {
            opts.cache_dir = d.clone();
        }
        Ok(opts)
    }
}

/// The span cache's floor and the shared content tier.
#[derive(clap::Args)]
struct TierArgs {
    /// Free space the span cache leaves on its file system (default: 10% of it,
    /// at most 16GiB).
    #[arg(long, value_name = "SIZE")]
    cache_min_free: Option<String>,
    /// A shared content tier in an S3-compatible bucket (`s3://BUCKET/PREFIX`;
    /// --endpoint, --region and --path-style apply, credentials from AWS_*):
    /// spans missing here are read from it before the layer source, and layers
    /// it lacks are stored into it.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    remote_cache: Option<String>,
    /// The longest a read waits for the remote cache, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    remote_cache_timeout_ms: u64,
    /// Only read the remote cache; never store layers into it.
    #[arg(long)]
    remote_cache_read_only: bool,
}

impl TierArgs {
    /// Applies the options to `opts`; `s3` gives endpoint, region and path style.
    fn apply(&self, opts: &mut clip::mount::MountOptions, s3: &S3Args) -> Result<()> {
        if let Some(m) = &self.cache_min_free {
            opts.cache_min_free_bytes = parse_size(m)?;
        }
        let Some(url) = &self.remote_cache else {
            return Ok(());
        };
        let mut loc = clip::s3::S3Location::parse_url(url)?;
        s3.apply(&mut loc);
        opts.tier = Some(s3_tier(
            &loc,
            self.remote_cache_timeout_ms,
            self.remote_cache_read_only,
        )?);
        Ok(())
    }
}

/// The content tier on the bucket prefix `loc` (credentials from AWS_*).
fn s3_tier(
    loc: &clip::s3::S3Location,
    timeout_ms: u64,
    read_only: bool,
) -> Result<Arc<clip::tier::Tier>> {
    // A tier is only worth asking if it answers fast: few retries, short waits.
    let s3_opts = clip::s3::S3Options {
        retries: 1,
        timeout: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    let t = clip::tier::S3Tier::open(loc, &s3_opts)?;
    let topts = clip::tier::TierOptions {
        timeout: std::time::Duration::from_millis(timeout_ms),
        warm: !read_only,
        ..Default::default()
    };
    Ok(Arc::new(clip::tier::Tier::new(Arc::new(t), topts)))
}

#[derive(clap::Args)]
struct IndexArgs {
    /// Platform to pick from a multi-platform image (os/arch[/variant]).
    #[arg(long)]
    platform: Option<String>,
    /// Uncompressed bytes per span: a number with an optional KiB/MiB suffix.
    #[arg(long, default_value = "2MiB")]
    span_size: String,
    /// Layers indexed at once (default: number of CPUs).
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Print per-layer progress to stderr.
    #[arg(long)]
    progress: bool,
    /// Keep per-layer index artifacts in this directory (created if missing,
    /// bounded to 1 GiB, shareable between processes): a layer indexed before,
    /// in this image or another, is not read again. A directory that cannot be
    /// used is a warning.
    #[arg(long, value_name = "DIR")]
    layer_index_cache: Option<PathBuf>,
    /// A shared content tier in an S3-compatible bucket (`s3://BUCKET/PREFIX`,
    /// credentials from AWS_*): a layer blob it holds is read from it (digest
    /// verified) instead of the registry, and blobs read from the registry are
    /// stored into it.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    remote_cache: Option<String>,
    /// S3 endpoint URL of --remote-cache (default: AWS, or $AWS_ENDPOINT_URL).
    #[arg(long)]
    endpoint: Option<String>,
    /// S3 region of --remote-cache (default: $AWS_REGION, else us-east-1).
    #[arg(long)]
    region: Option<String>,
    /// Path-style S3 requests for --remote-cache.
    #[arg(long)]
    path_style: bool,
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1 << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("invalid size {s:?}"))?;
    Ok(n * mult)
}

impl IndexArgs {
    fn options(&self, storage_ref: Option<String>) -> Result<CreateOptions> {
        let mut o = CreateOptions {
            span_size: parse_size(&self.span_size)?,
            platform: self.platform.as_deref().map(Platform::parse).transpose()?,
            storage_ref,
            concurrency: self.concurrency,
            ..Default::default()
        };
        if let Some(url) = &self.remote_cache {
            let mut loc = clip::s3::S3Location::parse_url(url)?;
            if let Some(e) = &self.endpoint {
                loc.endpoint = e.clone();
            }
            if let Some(r) = &self.region {
                loc.region = r.clone();
            }
            loc.path_style |= self.path_style;
            o.content_tier = Some(s3_tier(&loc, 2000, false)?);
        } else if self.endpoint.is_some() || self.region.is_some() || self.path_style {
            bail!("--endpoint, --region and --path-style go with --remote-cache");
        }
        if let Some(dir) = &self.layer_index_cache {
            // A cache only saves time: one that cannot be opened is a warning.
            match clip::index::cache::DiskLayerIndexStore::open(dir, 0) {
                Ok(store) => o.layer_index_cache = Some(Arc::new(store)),
                Err(e) => tracing::warn!("layer-index cache not used: {e}"),
            }
        }
        if !self.progress && std::io::stderr().is_terminal() {
            o.progress = Some(progress_bar());
        }
        if self.progress {
            o.progress = Some(Arc::new(|p: &Progress| -> bool {
                let stage = match p.stage {
                    Stage::Starting => "starting",
                    Stage::Progress => "progress",
                    Stage::Completed => "completed",
                };
                eprintln!(
                    "layer {}/{} {stage} {}: {} of {} compressed bytes, {} uncompressed (from {})",
                    p.layer_index,
                    p.total_layers,
                    p.layer_digest,
                    p.compressed_done,
                    p.compressed_total,
                    p.uncompressed_done,
                    p.source
                );
                true
            }));
        }
        Ok(o)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("CLIP_LOG_LEVEL").ok())
        .unwrap_or_else(|| "warn".into());
    let filter = tracing_subscriber::EnvFilter::new(level);
    let log_file = cli.log_file.as_ref().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    });
    match log_file {
        Some(Ok(f)) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        Some(Err(e)) => {
            eprintln!("clipctl: error: opening log file: {e}");
            return ExitCode::FAILURE;
        }
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("clipctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::IndexLayout {
            layout,
            tag,
            out,
            storage_ref,
            idx,
        } => {
            let s = clip::create::index_layout(
                &layout,
                tag.as_deref(),
                &out,
                &idx.options(storage_ref)?,
            )?;
            eprintln!(
                "wrote {} ({} bytes): {} layers, {} inodes, manifest {}",
                out.display(),
                s.archive_size,
                s.layers,
                s.inodes,
                s.manifest_digest
            );
        }
        Cmd::Create {
            image_ref,
            reg,
            out,
            storage_ref,
            idx,
        } => {
            let mut opts = idx.options(storage_ref)?;
            opts.registry = reg.options()?;
            let s = clip::create::create_from_image(&image_ref, &out, &opts)?;
            let (requests, bytes) = clip::registry::client::transfer_snapshot();
            eprintln!(
                "wrote {} ({} bytes): {} layers, {} inodes, manifest {}{}",
                out.display(),
                s.archive_size,
                s.layers,
                s.inodes,
                s.manifest_digest,
                if requests > 0 {
                    format!("; {requests} registry requests, {bytes} bytes received")
                } else {
                    String::new()
                }
            );
        }
        Cmd::Archive {
            dir,
            image,
            out,
            chunk_size,
            level,
            threads,
            platform,
            reg,
            s3,
        } => archive_cmd(ArchiveCmd {
            dir,
            image,
            out,
            opts: clip::pack::PackOptions {
                chunk_size: parse_size(&chunk_size)?,
                level,
                threads,
                ..Default::default()
            },
            platform,
            reg,
            s3,
        })?,
        Cmd::Inspect { archive, json } => inspect(&archive, json)?,
        Cmd::Ls {
            archive,
            path,
            recursive,
        } => {
            let tree = if clip::goclip::is_goclip_file(&archive) {
                clip::goclip::read(&archive)?.tree()?
            } else {
                clip::archive::read(&archive)?.tree
            };
            let path = path.unwrap_or_else(|| "/".into());
            let ino = tree
                .resolve(path.as_bytes())
                .with_context(|| format!("{path}: no such file in the image"))?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            ls(&tree, ino, &path, recursive, &mut out)?;
            out.flush()?;
        }
        Cmd::Cat {
            archive,
            path,
            layout,
            reg,
            s3,
            offset,
            length,
            stats,
        } => {
            let img = Image::open(&archive, &reg.sources(layout, &s3)?)?;
            let ino = img
                .tree()
                .resolve(path.as_bytes())
                .with_context(|| format!("{path}: no such file in the image"))?;
            let inode = img.tree().inode(ino).expect("resolved");
            if inode.kind() != Kind::File {
                bail!("{path}: not a regular file");
            }
            let end = length.map_or(inode.size, |l| offset.saturating_add(l).min(inode.size));
            let mut pos = offset.min(end);
            let mut buf = vec![0u8; 4 << 20];
            let mut out = std::io::stdout().lock();
            while pos < end {
                let n = ((end - pos) as usize).min(buf.len());
                let got = img.read(ino, pos, &mut buf[..n])?;
                out.write_all(&buf[..got])?;
                pos += got as u64;
            }
            out.flush()?;
            if stats {
                eprintln!("{}", stats_json(serde_json::to_value(img.stats())?));
            }
        }
        Cmd::Mount {
            archive,
            mountpoint,
            store,
            allow_other,
            daemon,
            stats_file,
            notify_ready,
            record,
            prefetch,
            no_prefetch,
            prefetch_threads,
        } => {
            if daemon {
                return daemonize();
            }
            let img = store.image(&archive)?;
            let mut opts = store.mount_options()?;
            opts.allow_other = allow_other;
            opts.record_profile = record.is_some();
            opts.replay_threads = prefetch_threads;
            opts.profile = match (prefetch, no_prefetch) {
                (Some(f), _) => clip::mount::ProfileChoice::File(f),
                (None, true) => clip::mount::ProfileChoice::Off,
                (None, false) => clip::mount::ProfileChoice::Embedded,
            };
            let m = std::sync::Arc::new(clip::mount::Mount::new(img, &mountpoint, &opts)?);
            if notify_ready {
                println!("ready");
                std::io::stdout().flush()?;
                // Our stdout and stderr are the pipes of the `--daemon` parent,
                // which returns now: anything written to them later (the logs
                // without --log-file, an error at the end) would fail with EPIPE.
                detach_stdio();
            }
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            let waiter = {
                let m = m.clone();
                std::thread::spawn(move || m.wait())
            };
            // The counters are for whoever watches the mount: failing to write
            // them is a warning (once), never the end of a mount that serves.
            let stats_warned = std::cell::Cell::new(false);
            let write_stats = |m: &clip::mount::Mount| {
                if let Some(p) = &stats_file
                    && let Err(e) = write_stats_file(p, m)
                    && !stats_warned.replace(true)
                {
                    tracing::warn!("cannot write the stats file {}: {e:#}", p.display());
                }
            };
            while !waiter.is_finished() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    m.unmount()?;
                }
                write_stats(&m);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            write_stats(&m);
            let served = waiter
                .join()
                .map_err(|_| anyhow::anyhow!("mount thread panicked"))?;
            if let (Some(path), Some(p)) = (&record, m.recorded_profile()) {
                p.write(path)?;
                tracing::info!("recorded {} spans into {}", p.spans.len(), path.display());
            }
            // Layers being stored into the remote cache: finish them (however the
            // session ended), or the next machine pays for them again.
            if !m
                .store()
                .wait_background(std::time::Duration::from_millis(200))
            {
                tracing::info!("finishing stores into the remote cache");
                m.store()
                    .wait_background(std::time::Duration::from_secs(3600));
            }
            write_stats(&m);
            served?;
        }
        Cmd::Profile { cmd } => profile_cmd(cmd)?,
        Cmd::Prefetch {
            archive,
            store,
            concurrency,
        } => {
            let img = store.image(&archive)?;
            let opts = store.mount_options()?;
            let store = clip::store::Store::with_options(
                std::sync::Arc::new(img),
                &opts.cache_dir,
                opts.store_options(),
            )?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            let mut progress = |p: clip::store::PrepareProgress| {
                eprintln!(
                    "prefetch: {}/{} layers, {} bytes",
                    p.completed, p.total, p.bytes
                );
                true
            };
            store.prepare(concurrency, &mut progress, &stop)?;
            eprintln!("{}", stats_json(serde_json::to_value(store.stats())?));
        }
        Cmd::Umount { mountpoint } => clip::mount::unmount_path(&mountpoint)?,
        Cmd::Extract {
            archive,
            dest,
            layout,
            reg,
            s3,
            stats,
        } => {
            let img = Image::open(&archive, &reg.sources(layout, &s3)?)?;
            let s = extract(&img, &dest, ExtractOptions::default())?;
            eprintln!(
                "extracted {} inodes, {} bytes into {}",
                s.inodes,
                s.bytes,
                dest.display()
            );
            if stats {
                eprintln!("{}", stats_json(serde_json::to_value(img.stats())?));
            }
        }
    }
    Ok(())
}

/// Read statistics plus this process's registry traffic.
fn stats_json(mut v: serde_json::Value) -> String {
    let (requests, bytes) = clip::registry::client::transfer_snapshot();
    if let Some(o) = v.as_object_mut() {
        o.insert("registry_requests".into(), requests.into());
        o.insert("registry_bytes".into(), bytes.into());
        let h = &clip::registry::hedge::HEDGES;
        o.insert(
            "registry_hedges".into(),
            h.sent.load(std::sync::atomic::Ordering::Relaxed).into(),
        );
        o.insert(
            "registry_hedges_won".into(),
            h.won.load(std::sync::atomic::Ordering::Relaxed).into(),
        );
    }
    v.to_string()
}

/// A one-line progress bar on the terminal: layers done, compressed bytes read.
fn progress_bar() -> clip::create::ProgressFn {
    #[derive(Default)]
    struct Bar {
        done: std::collections::HashMap<usize, (u64, u64)>,
        completed: usize,
        total_layers: usize,
    }
    let bar = std::sync::Mutex::new(Bar::default());
    Arc::new(move |p: &Progress| -> bool {
        let mut b = bar.lock().expect("progress lock");
        b.total_layers = p.total_layers;
        b.done
            .insert(p.layer_index, (p.compressed_done, p.compressed_total));
        if p.stage == Stage::Completed {
            b.completed += 1;
        }
        let (done, total) = b
            .done
            .values()
            .fold((0, 0), |(d, t), (dd, tt)| (d + dd, t + tt));
        let frac = if total > 0 {
            done as f64 / total as f64
        } else {
            0.0
        };
        let width = 30;
        let filled = ((frac * width as f64) as usize).min(width);
        eprint!(
            "\r[{}{}] {}/{} layers, {:.1}/{:.1} MiB ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            b.completed,
            b.total_layers,
            done as f64 / 1048576.0,
            total as f64 / 1048576.0
        );
        if b.completed == b.total_layers {
            eprintln!();
        }
        true
    })
}

fn inspect(path: &std::path::Path, json: bool) -> Result<()> {
    if clip::goclip::is_goclip_file(path) {
        return inspect_goclip(path, json);
    }
    let a = clip::archive::read(path)?;
    let size = std::fs::metadata(path)?.len();
    let layers: Vec<serde_json::Value> = a
        .layers
        .iter()
        .map(|l| {
            let block = l
                .codec
                .checkpoints
                .iter()
                .filter(|c| c.kind == clip::codec::CheckpointKind::Block)
                .count();
            let window_bytes: usize = l
                .codec
                .checkpoints
                .iter()
                .filter_map(|c| c.window.as_ref())
                .map(|w| w.len())
                .sum();
            let max_span = (0..l.codec.spans.len())
                .map(|i| {
                    let (s, e) = l.codec.span_range(i);
                    e - s
                })
                .max()
                .unwrap_or(0);
            let own = l
                .codec
                .spans
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    l.codec.checkpoints[s.checkpoint as usize].out_offset
                        == l.codec.span_range(*i).0
                })
                .count();
            serde_json::json!({
                "digest": l.digest.to_string(),
                "media_type": l.media_type,
                "compression": l.compression,
                "compressed_size": l.compressed_size,
                "uncompressed_size": l.codec.uncompressed_size,
                "diff_id": l.diff_id.to_string(),
                "checkpoints": l.codec.checkpoints.len(),
                "block_checkpoints": block,
                "spans": l.codec.spans.len(),
                "spans_with_own_checkpoint": own,
                "max_span_bytes": max_span,
                "window_bytes": window_bytes,
            })
        })
        .collect();
    let v = serde_json::json!({
        "format_version": clip::archive::FORMAT_VERSION,
        "archive_size": size,
        "meta": a.meta,
        "layers": layers,
        "inodes": a.tree.inodes.len(),
        "dirents": a.tree.dirents.len(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "archive:   {} ({size} bytes, format v{})",
        path.display(),
        clip::archive::FORMAT_VERSION
    );
    match &a.meta.manifest_digest {
        Some(d) => println!("image:     {d} ({})", a.meta.platform),
        None => println!("image:     (a directory; no manifest)"),
    }
    println!("source:    {}", a.meta.source);
    match &a.meta.storage {
        Some(s) if s.kind == clip::archive::STORAGE_LOCAL => println!(
            "storage:   local (v1: file data in this archive, {} bytes at offset {})",
            a.layers[0].compressed_size,
            s.data_offset.unwrap_or_default()
        ),
        Some(s) if s.kind == clip::archive::STORAGE_S3 => {
            let l = s.s3.clone().unwrap_or_default();
            println!(
                "storage:   s3 (v1 metadata only: data in s3://{}/{} region={:?} endpoint={:?} path_style={})",
                l.bucket, l.key, l.region, l.endpoint, l.path_style
            )
        }
        Some(s) => println!(
            "storage:   {} {}/{}@{}",
            s.kind, s.registry, s.repository, s.reference
        ),
        None => println!("storage:   (none recorded; mount with a layout)"),
    }
    println!(
        "files:     {} inodes, {} entries",
        a.tree.inodes.len(),
        a.tree.dirents.len()
    );
    let c = &a.meta.config;
    println!(
        "config:    entrypoint={:?} cmd={:?} user={:?} workdir={:?} env={}",
        c.entrypoint,
        c.cmd,
        c.user,
        c.working_dir,
        c.env.len()
    );
    for (i, l) in layers.iter().enumerate() {
        println!(
            "layer {i}:   {} {} {} -> {} bytes, {} checkpoints ({} in-stream), {} spans ({} with their own checkpoint), windows {} bytes",
            l["digest"].as_str().unwrap_or(""),
            l["compression"].as_str().unwrap_or(""),
            l["compressed_size"],
            l["uncompressed_size"],
            l["checkpoints"],
            l["block_checkpoints"],
            l["spans"],
            l["spans_with_own_checkpoint"],
            l["window_bytes"],
        );
    }
    Ok(())
}

struct ArchiveCmd {
    dir: Option<PathBuf>,
    image: Option<String>,
    out: PathBuf,
    opts: clip::pack::PackOptions,
    platform: Option<String>,
    reg: RegistryArgs,
    s3: S3Args,
}

fn archive_cmd(c: ArchiveCmd) -> Result<()> {
    if c.s3.data_archive.is_some() {
        bail!("--data-archive is for reading a .rclip, not for archive");
    }
    let loc = c.s3.location()?;
    // With --s3 the full archive is built next to the .rclip, uploaded, removed.
    let full = match &loc {
        None => c.out.clone(),
        Some(_) => {
            let dir = c.out.parent().filter(|p| !p.as_os_str().is_empty());
            let dir = dir.unwrap_or(std::path::Path::new("."));
            tempfile::Builder::new()
                .prefix(".clip-full-")
                .suffix(".clip")
                .tempfile_in(dir)?
                .into_temp_path()
                .keep()?
        }
    };
    let _cleanup = loc.as_ref().map(|_| RemoveOnDrop(full.clone()));
    let s = match (&c.dir, &c.image) {
        (Some(dir), _) => clip::pack::pack_dir(dir, &full, &c.opts)?,
        (None, Some(image)) => {
            let src = CreateOptions {
                platform: c.platform.as_deref().map(Platform::parse).transpose()?,
                registry: c.reg.options()?,
                ..Default::default()
            };
            clip::pack::pack_image(image, &full, &c.opts, &src)?
        }
        (None, None) => bail!("give a directory or --image"),
    };
    eprintln!(
        "wrote {} ({} bytes): {} inodes, {} files, {} bytes of data in {} chunks ({} stored), {} bytes deduplicated{}",
        full.display(),
        s.archive_size,
        s.inodes,
        s.files,
        s.data_bytes,
        s.chunks,
        s.stored_bytes,
        s.dedup_bytes,
        if s.skipped > 0 {
            format!(", {} entries skipped (sockets)", s.skipped)
        } else {
            String::new()
        }
    );
    if let Some(loc) = loc {
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let tty = std::io::stderr().is_terminal();
        clip::pack::upload(
            &full,
            &c.out,
            &loc,
            &clip::s3::S3Options::default(),
            &mut |p| {
                if tty {
                    eprint!("\ruploading: {p:3}%");
                    if p == 100 {
                        eprintln!();
                    }
                }
                true
            },
            &cancel,
        )?;
        eprintln!(
            "uploaded to s3://{}/{}; wrote {}",
            loc.bucket,
            loc.key,
            c.out.display()
        );
    }
    Ok(())
}

/// Removes a file when dropped (the temporary full archive of `archive --s3`).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ls(tree: &Tree, ino: u64, path: &str, recursive: bool, out: &mut dyn Write) -> Result<()> {
    let inode = tree.inode(ino).expect("valid");
    if inode.kind() != Kind::Dir {
        return ls_line(tree, ino, path, out);
    }
    writeln!(out, "{path}:")?;
    let mut subdirs = Vec::new();
    for d in tree.children(ino) {
        let name = String::from_utf8_lossy(tree.name(&d)).into_owned();
        ls_line(tree, d.ino as u64, &name, out)?;
        if recursive
            && tree
                .inode(d.ino as u64)
                .is_some_and(|i| i.kind() == Kind::Dir)
        {
            subdirs.push((
                d.ino as u64,
                format!("{}/{}", path.trim_end_matches('/'), name),
            ));
        }
    }
    for (ino, p) in subdirs {
        writeln!(out)?;
        ls(tree, ino, &p, recursive, out)?;
    }
    Ok(())
}

fn ls_line(tree: &Tree, ino: u64, name: &str, out: &mut dyn Write) -> Result<()> {
    let i = tree.inode(ino).expect("valid");
    let t = match i.kind() {
        Kind::Dir => 'd',
        Kind::File => '-',
        Kind::Symlink => 'l',
        Kind::CharDevice => 'c',
        Kind::BlockDevice => 'b',
        Kind::Fifo => 'p',
    };
    let p = i.perm();
    let bit = |m: u32, c: char| if p & m != 0 { c } else { '-' };
    let x = |m: u32, special: u32, s: char, big: char| match (p & m != 0, p & special != 0) {
        (true, true) => s,
        (false, true) => big,
        (true, false) => 'x',
        (false, false) => '-',
    };
    let perms: String = [
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        x(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        x(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        x(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect();
    let size = match i.kind() {
        Kind::CharDevice | Kind::BlockDevice => {
            let (ma, mi) = i.device();
            format!("{ma}, {mi}")
        }
        _ => i.size.to_string(),
    };
    let target = if i.kind() == Kind::Symlink {
        format!(" -> {}", String::from_utf8_lossy(tree.symlink_target(ino)))
    } else {
        String::new()
    };
    writeln!(
        out,
        "{t}{perms} {:>3} {:>5} {:>5} {:>10} {:>11} {name}{target}",
        i.nlink, i.uid, i.gid, size, i.mtime
    )?;
    Ok(())
}

/// Runs this same command without `--daemon` in a new process group and returns
/// once it reports the mount live.
/// Writes the mount's counters to `path` by temp file and rename. The temp file
/// is this process's own: a mount that is ending may still write the same stats
/// path while a new mount at the same place starts.
fn write_stats_file(path: &std::path::Path, m: &clip::mount::Mount) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, stats_json(serde_json::to_value(m.stats())?))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

/// Points stdout and stderr at /dev/null (best effort).
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}

fn daemonize() -> Result<()> {
    use std::io::{BufRead, Read};
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    // The child gets pipes, not our stdout/stderr: whoever waits for our output
    // must see it end when we return, not when the mount goes away.
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .arg("--notify-ready")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Few malloc arenas: the mount's threads decode spans in turn, and glibc's
        // default of 8 arenas per core keeps their buffers resident.
        .env(
            "MALLOC_ARENA_MAX",
            std::env::var_os("MALLOC_ARENA_MAX").unwrap_or_else(|| "2".into()),
        )
        .process_group(0)
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if line.trim() == "ready" {
        return Ok(());
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)?;
    let status = child.wait()?;
    eprint!("{err}");
    bail!("mount failed ({status})")
}

/// `inspect` of an archive of the Go clip: its storage info as the Go clip's
/// `ExtractMetadata` gives it, and the index's size.
fn inspect_goclip(path: &std::path::Path, json: bool) -> Result<()> {
    let g = clip::goclip::read(path)?;
    if json {
        println!("{}", g.info_json());
        return Ok(());
    }
    println!(
        "archive:      {} (the Go clip's gob format 1)",
        path.display()
    );
    println!("storage:      {}", g.storage_kind());
    println!("nodes:        {}", g.nodes.len());
    if let Some(s) = &g.storage_json {
        println!("storage info: {}", serde_json::to_string_pretty(s)?);
    }
    Ok(())
}

/// `clipctl profile`: the archive's embedded startup profile.
fn profile_cmd(cmd: ProfileCmd) -> Result<()> {
    match cmd {
        ProfileCmd::Add { archive, file } => {
            let profile = clip::profile::Profile::read(&file)?;
            let a = clip::archive::read(&archive)?;
            let plan = profile.plan(&a);
            let what = file.display().to_string();
            if plan.spans.is_empty() {
                bail!(
                    "profile {what}: none of its {} entries is a range of the layers of {}: not embedded",
                    profile.spans.len(),
                    archive.display()
                );
            }
            if let Some(w) = plan.warning(&what, profile.spans.len()) {
                tracing::warn!("{w}");
            }
            let size = clip::archive::set_profile(&archive, Some(&profile.to_bytes()))?;
            println!(
                "{}: profile of {} spans embedded ({size} bytes)",
                archive.display(),
                plan.spans.len()
            );
        }
        ProfileCmd::Remove { archive } => {
            let size = clip::archive::set_profile(&archive, None)?;
            println!("{}: no profile ({size} bytes)", archive.display());
        }
        ProfileCmd::Show { archive } => {
            let a = clip::archive::read(&archive)?;
            if let Some(p) = &a.profile {
                std::io::stdout().write_all(p)?;
                println!();
            }
        }
    }
    Ok(())
}
