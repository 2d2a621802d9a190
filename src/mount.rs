//! Mounting an image: the FUSE session around [`crate::fs::ClipFs`], its lifetime
//! (live on return, explicit unmount and wait) and its options. The CLI and the C
//! ABI both use [`Mount`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::error::{Error, IoContext, Result};
use crate::fs::{Capabilities, ClipFs, ReadObserver};
use crate::image::Image;
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
}

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
        let store = Store::with_options(Arc::new(image), &opts.cache_dir, opts.store_options())?;
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
        })
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
            Some(s) => s
                .umount_and_join()
                .map_err(|e| Error::io("unmounting", &self.mountpoint, e)),
            // A waiter holds the session: unmounting the path ends it.
            None if is_mounted(&self.mountpoint) => unmount_path(&self.mountpoint),
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
        session
            .join()
            .map_err(|e| Error::io("serving", &self.mountpoint, e))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.unmount();
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
