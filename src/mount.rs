//! Mounting an image: the FUSE session around [`crate::fs::ClipFs`], its lifetime
//! (live on return, explicit unmount and wait) and its options. The CLI and the C
//! ABI both use [`Mount`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::error::{Error, IoContext, Result};
use crate::fs::{Capabilities, ClipFs, ReadObserver};
use crate::image::Image;
use crate::profile::Profile;
use crate::store::{DEFAULT_MAX_BYTES, Store, StoreOptions, StoreStats};
use crate::tier::Tier;

/// How to mount.
#[derive(Clone)]
pub struct MountOptions {
    /// The span cache directory (shared by mounts and processes).
    pub cache_dir: PathBuf,
    /// Size limit of the span cache.
    pub cache_max_bytes: u64,
    /// Free space the span cache leaves on its file system (0: 10% of it, at
    /// most 16 GiB).
    pub cache_min_free_bytes: u64,
    /// The shared content tier between the span cache and the layer sources.
    pub tier: Option<Arc<Tier>>,
    /// Let other users access the mount (`allow_other`).
    pub allow_other: bool,
    /// Threads serving file reads.
    pub read_threads: usize,
    /// Threads reading FUSE requests.
    pub event_threads: usize,
    /// Told of every file read the mount serves (see [`ReadObserver`]); `None`
    /// costs nothing.
    pub read_observer: Option<ReadObserver>,
    /// The kernel capabilities to ask for (`None`: all, less those
    /// `$CLIP_FUSE_DISABLE` names; see [`crate::fs::Capabilities`]).
    pub capabilities: Option<Capabilities>,
    /// The startup profile replayed at mount (default: the archive's embedded
    /// one, if it has one).
    pub profile: ProfileChoice,
    /// Record the spans reads touch, for [`Mount::recorded_profile`].
    pub record_profile: bool,
    /// Spans a profile's replay fetches at once.
    pub replay_threads: usize,
}

/// Which startup profile a mount replays ([`crate::profile`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProfileChoice {
    /// The archive's embedded profile, if it has one.
    #[default]
    Embedded,
    /// None.
    Off,
    /// The profile file at this path (instead of an embedded one). A file that
    /// cannot be read or is not a valid profile is ignored with a warning: the
    /// mount works as without one.
    File(PathBuf),
    /// This profile.
    Given(Profile),
}

/// Spans a replay fetches at once by default: enough to hide a registry's round
/// trip behind the others, few enough not to crowd out the workload's reads.
pub const DEFAULT_REPLAY_THREADS: usize = 8;

impl std::fmt::Debug for MountOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountOptions")
            .field("cache_dir", &self.cache_dir)
            .field("cache_max_bytes", &self.cache_max_bytes)
            .field("cache_min_free_bytes", &self.cache_min_free_bytes)
            .field("tier", &self.tier)
            .field("allow_other", &self.allow_other)
            .field("read_threads", &self.read_threads)
            .field("event_threads", &self.event_threads)
            .field(
                "read_observer",
                &self.read_observer.as_ref().map(|_| "<fn>"),
            )
            .field("capabilities", &self.capabilities)
            .field("profile", &self.profile)
            .field("record_profile", &self.record_profile)
            .field("replay_threads", &self.replay_threads)
            .finish()
    }
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            cache_dir: default_cache_dir(),
            cache_max_bytes: DEFAULT_MAX_BYTES,
            cache_min_free_bytes: 0,
            tier: None,
            allow_other: false,
            read_threads: 8,
            event_threads: 2,
            read_observer: None,
            capabilities: None,
            profile: ProfileChoice::Embedded,
            record_profile: false,
            replay_threads: DEFAULT_REPLAY_THREADS,
        }
    }
}

impl MountOptions {
    /// The store options these mount options imply.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            max_bytes: self.cache_max_bytes,
            min_free_bytes: self.cache_min_free_bytes,
            tier: self.tier.clone(),
            observer: self.read_observer.clone(),
        }
    }
}

/// `$CLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/clip`, else `~/.cache/clip`, else
/// `/var/cache/clip`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CLIP_CACHE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&d).join("clip");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return Path::new(&h).join(".cache").join("clip");
    }
    PathBuf::from("/var/cache/clip")
}

/// A live mount.
pub struct Mount {
    mountpoint: PathBuf,
    store: Arc<Store>,
    session: Mutex<Option<BackgroundSession>>,
    /// Set once the session has ended (here or in a waiter): the mount point may then
    /// hold another mount already (a new one at the same path), which
    /// [`Mount::unmount`] must leave alone.
    ended: std::sync::atomic::AtomicBool,
    /// The lock on the mount point's directory ([`lock_mountpoint`]), released
    /// once the session is torn down.
    lock: Mutex<Option<std::fs::File>>,
}

impl Mount {
    /// Mounts `image` at `mountpoint` (created if missing). Returns once the kernel
    /// has the mount.
    ///
    /// A dead FUSE mount left at `mountpoint` (its process was killed: every access
    /// fails with `ENOTCONN`) is detached first, with a warning.
    pub fn new(image: Image, mountpoint: &Path, opts: &MountOptions) -> Result<Mount> {
        detach_stale(mountpoint)?;
        std::fs::create_dir_all(mountpoint).ctx("creating mount point", mountpoint)?;
        let mountpoint = std::fs::canonicalize(mountpoint).ctx("resolving", mountpoint)?;
        let lock = lock_mountpoint(&mountpoint);
        let store = Store::with_options(Arc::new(image), &opts.cache_dir, opts.store_options())?;
        if opts.record_profile {
            store.start_recording();
        }
        let mut warnings = Vec::new();
        // The replay starts at once: its first fetches overlap the mount's setup.
        if let Some((profile, what)) = choose_profile(&opts.profile, store.image(), &mut warnings) {
            let plan = profile.plan(store.image().archive());
            if let Some(w) = plan.warning(&what, profile.spans.len()) {
                warnings.push(w);
            }
            tracing::debug!("replaying {} spans of profile {what}", plan.spans.len());
            store.replay(plan.spans, opts.replay_threads);
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let caps = match opts.capabilities {
            Some(c) => c,
            None => Capabilities::from_env()?,
        };
        let mut fs = ClipFs::new(store.clone(), opts.read_threads).with_capabilities(caps);
        if let Some(o) = &opts.read_observer {
            fs = fs.with_read_observer(o.clone());
        }
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::FSName("clip".into()),
            MountOption::Subtype("clip".into()),
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        if rustix::process::geteuid().is_root() {
            // Images carry setuid programs and device nodes that must work in a container.
            config
                .mount_options
                .extend([MountOption::Dev, MountOption::Suid]);
        }
        if opts.allow_other {
            config.acl = SessionACL::All;
        }
        config.n_threads = Some(opts.event_threads.max(1));
        config.clone_fd = true;
        let session = fuser::spawn_mount(fs, &mountpoint, &config)
            .map_err(|e| Error::io("mounting at", &mountpoint, e))?;
        Ok(Mount {
            mountpoint,
            store,
            session: Mutex::new(Some(session)),
            ended: std::sync::atomic::AtomicBool::new(false),
            lock: Mutex::new(lock),
        })
    }

    /// The startup profile recorded so far (with
    /// [`MountOptions::record_profile`]; `None` without).
    pub fn recorded_profile(&self) -> Option<Profile> {
        self.store.recorded_profile()
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The store's counters.
    pub fn stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// The store behind the mount.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Unmounts (if still mounted) and waits for the session to end. Idempotent.
    pub fn unmount(&self) -> Result<()> {
        let session = self.session.lock().expect("session lock").take();
        match session {
            Some(s) => {
                let r = s
                    .umount_and_join()
                    .map_err(|e| Error::io("unmounting", &self.mountpoint, e));
                // Ended here: a wait() that comes late, and the drop, leave the
                // path alone.
                self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
                self.lock.lock().expect("lock lock").take();
                r
            }
            // A waiter holds the session: unmounting the path ends it (unless
            // it ended already and the path is someone else's mount now).
            None if !self.ended.load(std::sync::atomic::Ordering::SeqCst)
                && is_mounted(&self.mountpoint) =>
            {
                unmount_path(&self.mountpoint)
            }
            None => Ok(()),
        }
    }

    /// Blocks until the file system is unmounted from outside (`clipctl umount`,
    /// `fusermount3 -u`, `umount`).
    pub fn wait(&self) -> Result<()> {
        let session = self.session.lock().expect("session lock").take();
        let Some(session) = session else {
            return Ok(());
        };
        let r = session
            .join()
            .map_err(|e| Error::io("serving", &self.mountpoint, e));
        self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        self.lock.lock().expect("lock lock").take();
        r
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// The profile `choice` names for `image`, and how to name it in warnings;
/// `None` if there is none, or (with a warning in `warnings`) it is unusable.
fn choose_profile(
    choice: &ProfileChoice,
    image: &Image,
    warnings: &mut Vec<String>,
) -> Option<(Profile, String)> {
    let (r, what) = match choice {
        ProfileChoice::Off => return None,
        ProfileChoice::Given(p) => return Some((p.clone(), "given".into())),
        ProfileChoice::File(path) => (Profile::read(path), path.display().to_string()),
        ProfileChoice::Embedded => {
            let bytes = image.archive().profile.as_ref()?;
            let what = "embedded in the archive".to_string();
            (Profile::from_bytes(bytes, &what), what)
        }
    };
    match r {
        Ok(p) => Some((p, what)),
        Err(e) => {
            warnings.push(format!("{e}: ignored, the mount fetches on demand only"));
            None
        }
    }
}

/// How long a new mount waits for the session that last served its mount point
/// to be torn down.
const MOUNTPOINT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Locks the directory `mountpoint` (before anything is mounted on it) until this
/// mount's session is torn down, and first waits for the lock of a mount that
/// served it before. The FUSE library, tearing a session down after the kernel
/// ended it (`umount` from outside), unmounts the path once more: without the
/// lock, that hits a new mount made at the same path in the meantime (a worker
/// restarting a container), in this process or another. Best effort: a
/// directory that cannot be opened or locked is mounted on without a lock, and
/// after [`MOUNTPOINT_LOCK_WAIT`] with a warning.
fn lock_mountpoint(mountpoint: &Path) -> Option<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    let dir = std::fs::File::open(mountpoint).ok()?;
    let started = std::time::Instant::now();
    loop {
        match flock(&dir, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Some(dir),
            Err(rustix::io::Errno::WOULDBLOCK) if started.elapsed() < MOUNTPOINT_LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                tracing::warn!(
                    mountpoint = %mountpoint.display(),
                    "the last mount at this path is still being torn down after {}s; mounting anyway",
                    MOUNTPOINT_LOCK_WAIT.as_secs()
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(
                    mountpoint = %mountpoint.display(),
                    "cannot lock the mount point ({e}); mounting without waiting for its last mount to end"
                );
                return None;
            }
        }
    }
}

/// Detaches a dead FUSE mount at `mountpoint`: one whose server is gone, so that
/// requests to it fail with `ENOTCONN`. Anything else is left alone.
fn detach_stale(mountpoint: &Path) -> Result<()> {
    let abs = std::path::absolute(mountpoint).ctx("resolving", mountpoint)?;
    if !mount_type(&abs).is_some_and(|t| t.starts_with("fuse")) {
        return Ok(());
    }
    // statfs always reaches the server (a stat may be answered from the kernel's
    // attribute cache even on a dead mount).
    if rustix::fs::statvfs(&abs).err() != Some(rustix::io::Errno::NOTCONN) {
        return Ok(());
    }
    tracing::warn!(
        mountpoint = %abs.display(),
        "detaching a dead FUSE mount (its process is gone) before mounting again"
    );
    match rustix::mount::unmount(&abs, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Not root: fusermount3 -uz.
            let ok = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&abs)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                Ok(())
            } else {
                Err(Error::io("detaching the dead mount at", &abs, e.into()))
            }
        }
    }
}

/// The file system type of the mount exactly at `path` (per
/// `/proc/self/mountinfo`; the last one if several are stacked).
fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let mp = f.nth(4)?;
        if unescape_mountinfo(mp) != want {
            return None;
        }
        // After the optional fields, "-", then the type.
        let mut rest = f.skip_while(|x| *x != "-");
        rest.next();
        rest.next().map(str::to_string)
    })
}

/// Unmounts whatever clip mount is at `mountpoint` (for `clipctl umount`).
pub fn unmount_path(mountpoint: &Path) -> Result<()> {
    match rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Not root: let fusermount3 do it.
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(mountpoint)
                .status();
            match status {
                Ok(s) if s.success() => Ok(()),
                _ => Err(Error::io("unmounting", mountpoint, e.into())),
            }
        }
    }
}

/// Whether something is mounted exactly at `path` (per `/proc/self/mountinfo`).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    })
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
