//! [`Mounted`]: a `clipctl mount --daemon` for tests, unmounted when dropped, and
//! [`require_fuse`]: FUSE tests fail loudly (never skip) without /dev/fuse.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::cli::clipctl;
use super::tools::require_tool;

/// Panics unless /dev/fuse and fusermount3 are there.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: FUSE tests need it (modprobe fuse, or run the container with --device /dev/fuse)"
    );
    require_tool("fusermount3");
}

/// Whether `p` is a mount point of this process's mount namespace.
pub fn is_mounted(p: &Path) -> bool {
    let p = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

/// A `clipctl mount --daemon` that is unmounted when dropped.
pub struct Mounted {
    /// The mount point (canonical).
    pub dir: PathBuf,
    /// The daemon's `--stats-file`.
    pub stats: PathBuf,
}

impl Mounted {
    /// Mounts `archive` at `dir` with its layers from `layout`.
    pub fn new(archive: &Path, layout: &Path, dir: &Path, cache: &Path) -> Mounted {
        Mounted::with_args(
            archive,
            dir,
            cache,
            &[OsStr::new("--layout"), layout.as_os_str()],
        )
    }

    /// Mounts `archive` at `dir` with extra `clipctl mount` arguments (no
    /// `--layout`: layers come from the registry the archive names).
    pub fn with_args(archive: &Path, dir: &Path, cache: &Path, extra: &[&OsStr]) -> Mounted {
        Mounted::with_env(archive, dir, cache, extra, &[])
    }

    /// Like [`with_args`](Self::with_args), with extra environment variables for
    /// the mount daemon (S3 credentials, say).
    pub fn with_env(
        archive: &Path,
        dir: &Path,
        cache: &Path,
        extra: &[&OsStr],
        env: &[(&str, &str)],
    ) -> Mounted {
        require_fuse();
        // One stats file per mount: a daemon that is ending writes its counters
        // a last time, which must not pass for those of a new mount at `dir`.
        static MOUNTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MOUNTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stats = dir.with_extension(format!("{n}.stats.json"));
        let out = clipctl()
            .envs(env.iter().copied())
            .arg("mount")
            .arg(archive)
            .arg(dir)
            .args(extra)
            .arg("--cache-dir")
            .arg(cache)
            .arg("--stats-file")
            .arg(&stats)
            .arg("--daemon")
            .arg("--log-file")
            .arg(dir.with_extension("log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = std::fs::canonicalize(dir).unwrap();
        assert!(
            is_mounted(&dir),
            "{} is not mounted after mount returned",
            dir.display()
        );
        Mounted { dir, stats }
    }

    /// The daemon's counters (it rewrites the file every 100 ms).
    pub fn stats(&self) -> serde_json::Value {
        std::thread::sleep(Duration::from_millis(300));
        serde_json::from_slice(&std::fs::read(&self.stats).unwrap()).unwrap()
    }

    /// Unmounts and waits until the mount is gone.
    pub fn unmount(&self) {
        unmount_and_wait(&self.dir);
    }
}

/// `clipctl umount DIR` (if mounted), then waits (at most 10 s) until the mount
/// is gone.
pub fn unmount_and_wait(dir: &Path) {
    if is_mounted(dir) {
        let out = clipctl().arg("umount").arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let t = Instant::now();
    while is_mounted(dir) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(dir), "stale mount at {}", dir.display());
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Kills the `clipctl mount` process of `archive` with SIGKILL, as a crashed
/// worker dies: its mount point is left dead.
pub fn sigkill_mount(archive: &Path) {
    let status = std::process::Command::new("pkill")
        .arg("-KILL")
        .arg("-f")
        .arg(format!("clipctl mount {}", archive.display()))
        .status()
        .unwrap();
    assert!(status.success(), "no mount process to kill");
}

/// The pid of the `clipctl mount` process serving `mountpoint` (the daemon's
/// child, which got `--notify-ready`).
pub fn mount_pid(mountpoint: &Path) -> u32 {
    use std::os::unix::ffi::OsStrExt;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serves = args.iter().any(|a| {
            std::fs::canonicalize(std::ffi::OsStr::from_bytes(a)).is_ok_and(|p| p == mountpoint)
        });
        if serves
            && args.contains(&b"mount".as_slice())
            && args.contains(&b"--notify-ready".as_slice())
        {
            return pid;
        }
    }
    panic!("no clipctl mount process for {}", mountpoint.display());
}
