//! v1 archives (file data inside): a directory tree archived, extracted and
//! mounted equals its source entry by entry (the tricky fixtures unpacked by umoci
//! and a debootstrap tree); `--image` flattens with the mount's rules; unreadable,
//! changing and odd files; a corrupt chunk is EIO for the files that use it only;
//! truncated or corrupt archives are clear errors.

mod util;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use util::*;

/// The tricky fixture tree as `umoci unpack` lays it out (devices, fifos,
/// hardlinks, xattrs, setuid/sticky modes, long and non-UTF-8 names).
fn tricky_rootfs(d: &Path) -> PathBuf {
    let layout = d.join("layout");
    tricky_layout(&layout, "t");
    umoci_unpack(&layout, "t", &d.join("bundle"))
}

fn archive_dir(src: &Path, out: &Path, extra: &[&str]) -> String {
    let o = ok(clipctl()
        .arg("archive")
        .arg(src)
        .arg("--out")
        .arg(out)
        .args(extra));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn exact() -> DiffOptions {
    DiffOptions {
        compare_root_mtime: true,
        ..DiffOptions::labelled("from the v1 archive", "source")
    }
}

#[test]
fn tricky_tree_round_trips_through_extract_and_mount() {
    let d = tmp("clip-v1-");
    let src = tricky_rootfs(d.path());
    let archive = d.path().join("t.clip");
    archive_dir(&src, &archive, &[]);
    let out = d.path().join("out");
    ok(clipctl().arg("extract").arg(&archive).arg(&out));
    assert_same_tree(&out, &src, &exact());
    let errs = check_tricky_tree(&out);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    let m = Mounted::with_args(
        &archive,
        &d.path().join("mnt"),
        &d.path().join("cache"),
        &[],
    );
    assert_same_tree(&m.dir, &src, &exact());
    m.unmount();
    // The reader tells v1 from index-only by the header, not the file name.
    let renamed = d.path().join("no-extension");
    std::fs::copy(&archive, &renamed).unwrap();
    let o = ok(clipctl().arg("inspect").arg(&renamed).arg("--json"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["meta"]["storage"]["type"], "local", "{v}");
    let o = ok(clipctl().arg("ls").arg(&renamed).arg("/").arg("-R"));
    assert!(!o.stdout.is_empty());
}

/// A debootstrap minbase tree, built once per machine under target/ (Debian's
/// mirror is reachable from here and from CI).
fn debootstrap_tree() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debootstrap-minbase");
    let done = dir.with_extension("done");
    if done.exists() {
        return dir;
    }
    require_tool("debootstrap");
    let _ = std::fs::remove_dir_all(&dir);
    let mirror = std::env::var("CLIP_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let o = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&dir)
        .arg(&mirror)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "debootstrap failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(&done, b"").unwrap();
    dir
}

#[test]
fn debootstrap_tree_round_trips() {
    let d = tmp("clip-v1-deb-");
    let src = debootstrap_tree();
    let archive = d.path().join("deb.clip");
    archive_dir(&src, &archive, &[]);
    let out = d.path().join("out");
    ok(clipctl().arg("extract").arg(&archive).arg(&out));
    assert_same_tree(&out, &src, &exact());
    let m = Mounted::with_args(
        &archive,
        &d.path().join("mnt"),
        &d.path().join("cache"),
        &[],
    );
    assert_same_tree(&m.dir, &src, &exact());
    // Programs run from the mount, with its own loader and libraries.
    let o = Command::new("chroot")
        .arg(&m.dir)
        .args(["/usr/bin/sha256sum", "/etc/os-release"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = sha256_hex(&std::fs::read(src.join("etc/os-release")).unwrap());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(&want));
    m.unmount();
}

#[test]
fn image_flattens_with_the_mount_rules() {
    let d = tmp("clip-v1-img-");
    let layout = d.path().join("layout");
    tricky_layout(&layout, "t");
    let theirs = umoci_unpack(&layout, "t", &d.path().join("bundle"));
    let archive = d.path().join("img.clip");
    ok(clipctl()
        .arg("archive")
        .arg("--image")
        .arg(format!("oci:{}:t", layout.display()))
        .arg("--out")
        .arg(&archive));
    let out = d.path().join("out");
    ok(clipctl().arg("extract").arg(&archive).arg(&out));
    assert_same_tree(
        &out,
        &theirs,
        &DiffOptions::labelled("v1 of the image", "umoci"),
    );
    let errs = check_tricky_tree(&out);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    // The layout is not needed any more, and the image's config is kept.
    std::fs::remove_dir_all(&layout).unwrap();
    let m = Mounted::with_args(
        &archive,
        &d.path().join("mnt"),
        &d.path().join("cache"),
        &[],
    );
    assert_same_tree(&m.dir, &theirs, &DiffOptions::labelled("v1 mount", "umoci"));
    m.unmount();
    let o = ok(clipctl().arg("inspect").arg(&archive).arg("--json"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["meta"]["manifest_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{v}"
    );
}

#[test]
fn identical_contents_are_stored_once_and_incompressible_chunks_raw() {
    let d = tmp("clip-v1-dedup-");
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(src.join("b")).unwrap();
    let big = pseudo_random_bytes(7, 3 << 20); // incompressible, larger than a chunk
    std::fs::write(src.join("a/big"), &big).unwrap();
    std::fs::write(src.join("b/big-copy"), &big).unwrap();
    std::fs::write(src.join("a/small"), b"hello").unwrap();
    std::fs::write(src.join("b/small-copy"), b"hello").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    let archive = d.path().join("d.clip");
    let msg = archive_dir(&src, &archive, &[]);
    assert!(
        msg.contains(&format!("{} bytes deduplicated", big.len() + 5)),
        "{msg}"
    );
    let a = clip::archive::read(&archive).unwrap();
    let l = &a.layers[0];
    assert_eq!(l.codec.uncompressed_size, big.len() as u64 + 5);
    // Raw frames: stored size is the data plus 9 bytes a frame and 3 a block.
    assert!(
        l.compressed_size < l.codec.uncompressed_size + 4096,
        "{l:?}"
    );
    let out = d.path().join("out");
    ok(clipctl().arg("extract").arg(&archive).arg(&out));
    assert_same_tree(&out, &src, &exact());
}

#[test]
fn sockets_are_skipped_with_a_warning_and_symlinks_never_followed() {
    let d = tmp("clip-v1-odd-");
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    std::os::unix::fs::symlink("/etc", src.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", src.join("dangling")).unwrap();
    let archive = d.path().join("o.clip");
    let msg = archive_dir(&src, &archive, &[]);
    assert!(msg.contains("skipping socket"), "{msg}");
    let o = ok(clipctl().arg("ls").arg(&archive).arg("/"));
    let ls = String::from_utf8_lossy(&o.stdout);
    assert!(!ls.contains("sock"), "{ls}");
    assert!(ls.contains("etc-link -> /etc"), "{ls}");
    let o = ok(clipctl().arg("ls").arg(&archive).arg("/").arg("-R"));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("passwd"));
}

#[test]
fn unreadable_and_changing_files_fail_naming_them_and_leave_nothing() {
    let d = tmp("clip-v1-bad-");
    // Unreadable: run as nobody over a tree with a mode-000 file.
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ok"), b"fine").unwrap();
    std::fs::write(src.join("secret"), b"no").unwrap();
    let chmod = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    chmod(&src.join("secret"), 0o000);
    chmod(d.path(), 0o777);
    let out_dir = d.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    chmod(&out_dir, 0o777);
    let archive = out_dir.join("x.clip");
    let o = Command::new(require_tool("setpriv"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_clipctl"))
        .arg("archive")
        .arg(&src)
        .arg("--out")
        .arg(&archive)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("secret") && err.contains("ermission denied"),
        "{err}"
    );
    assert_empty(&out_dir);

    // Changing: a file that grows while it is read.
    let src2 = d.path().join("src2");
    std::fs::create_dir_all(&src2).unwrap();
    let grow = src2.join("growing.log");
    std::fs::write(&grow, compressible_bytes(64 << 20)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (grow, stop) = (grow.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(&grow)
                .unwrap();
            let block = vec![b'x'; 64 << 10];
            while !stop.load(Ordering::Relaxed) {
                std::io::Write::write_all(&mut &f, &block).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let archive2 = out_dir.join("y.clip");
    let err = fails(
        clipctl()
            .arg("archive")
            .arg(&src2)
            .arg("--out")
            .arg(&archive2),
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        err.contains("growing.log") && err.contains("changed while it was being archived"),
        "{err}"
    );
    assert_empty(&out_dir);
    // Not a directory.
    let err = fails(
        clipctl()
            .arg("archive")
            .arg(src.join("ok"))
            .arg("--out")
            .arg(&archive),
    );
    assert!(err.contains("is not a directory"), "{err}");
}

/// Fails unless `dir` is empty: a failed command leaves nothing behind.
fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "left files behind in {}: {left:?}",
        dir.display()
    );
}

/// The file offset of chunk `k`'s frame in the archive.
fn chunk_offset(archive: &Path, k: usize) -> u64 {
    let a = clip::archive::read(archive).unwrap();
    a.data.unwrap().offset + a.layers[0].codec.checkpoints[k].in_offset
}

#[test]
fn a_corrupt_chunk_fails_only_the_files_that_use_it() {
    let d = tmp("clip-v1-corrupt-");
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Three files, each filling its own chunk (64 KiB chunks).
    for (i, name) in ["first", "second", "third"].into_iter().enumerate() {
        let mut data = pseudo_random_bytes(i as u64, 16 << 10);
        data.extend_from_slice(&compressible_bytes(48 << 10));
        std::fs::write(src.join(name), data).unwrap();
    }
    let archive = d.path().join("c.clip");
    archive_dir(&src, &archive, &["--chunk-size", "64KiB"]);
    let a = clip::archive::read(&archive).unwrap();
    assert_eq!(a.layers[0].codec.spans.len(), 3, "one chunk per file");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&archive)
        .unwrap();
    let at = chunk_offset(&archive, 1) + 40;
    let mut b = [0u8; 1];
    std::fs::File::open(&archive)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0x55], at).unwrap();
    drop(f);
    // clipctl cat: a clear error naming the span.
    let err = fails(clipctl().arg("cat").arg(&archive).arg("/second"));
    assert!(err.contains("span 1 "), "{err}");
    let m = Mounted::with_args(
        &archive,
        &d.path().join("mnt"),
        &d.path().join("cache"),
        &[],
    );
    let e = std::fs::read(m.dir.join("second")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_eio()), "{e}");
    assert_eq!(
        std::fs::read(m.dir.join("first")).unwrap(),
        std::fs::read(src.join("first")).unwrap()
    );
    assert_eq!(
        std::fs::read(m.dir.join("third")).unwrap(),
        std::fs::read(src.join("third")).unwrap()
    );
    m.unmount();
    let log = std::fs::read_to_string(d.path().join("mnt.log")).unwrap_or_default();
    assert!(
        log.contains("second") || log.contains("span 1"),
        "log: {log}"
    );
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn truncated_or_corrupt_archives_are_clear_errors() {
    let d = tmp("clip-v1-trunc-");
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), compressible_bytes(300 << 10)).unwrap();
    let archive = d.path().join("a.clip");
    archive_dir(&src, &archive, &["--chunk-size", "64KiB"]);
    let bytes = std::fs::read(&archive).unwrap();
    for cut in [0, 10, 63, 64, 1000, bytes.len() / 2, bytes.len() - 1] {
        let p = d.path().join(format!("cut-{cut}.clip"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = fails(clipctl().arg("ls").arg(&p));
        assert!(
            err.contains("not a valid clip archive"),
            "cut at {cut}: {err}"
        );
    }
    // A flipped byte anywhere in the metadata is caught at open; in the data, at read.
    let meta_start = {
        let a = clip::archive::read(&archive).unwrap();
        let d = a.data.unwrap();
        d.offset + d.len
    } as usize;
    for at in [meta_start + 3, bytes.len() - 30, 20] {
        let mut b = bytes.clone();
        b[at] ^= 0x40;
        let p = d.path().join(format!("flip-{at}.clip"));
        std::fs::write(&p, &b).unwrap();
        let err = fails(clipctl().arg("ls").arg(&p));
        assert!(
            err.contains("not a valid clip archive") || err.contains("version"),
            "flip at {at}: {err}"
        );
    }
    let mut b = bytes.clone();
    b[100] ^= 0x40;
    let p = d.path().join("flip-data.clip");
    std::fs::write(&p, &b).unwrap();
    ok(clipctl().arg("ls").arg(&p));
    let err = fails(clipctl().arg("cat").arg(&p).arg("/f"));
    assert!(err.contains("span 0 "), "{err}");
}

/// `clipctl` with the test server's credentials in the standard AWS variables.
fn clipctl_s3(_s3: &S3Server, secret: &str) -> Command {
    let mut c = clipctl();
    c.env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", S3_REGION)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL");
    c
}

fn s3_args(s3: &S3Server, url: &str) -> Vec<String> {
    vec![
        "--s3".into(),
        url.into(),
        "--endpoint".into(),
        s3.endpoint(),
        "--region".into(),
        S3_REGION.into(),
        "--path-style".into(),
    ]
}

#[test]
fn s3_upload_then_mount_the_rclip_with_one_get_per_cold_chunk() {
    let s3 = S3Server::start();
    s3.create_bucket("images");
    let d = tmp("clip-v1-s3-");
    let src = tricky_rootfs(d.path());
    let work = d.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let rclip = work.join("t.rclip");
    ok(clipctl_s3(&s3, S3_SECRET_KEY)
        .arg("archive")
        .arg(&src)
        .arg("--out")
        .arg(&rclip)
        .args(["--chunk-size", "256KiB"])
        .args(s3_args(&s3, "s3://images/app/t.clip")));
    // Only the .rclip is left locally: the full archive went to the bucket.
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("t.rclip")]);
    let object = s3.root().join("images/app/t.clip");
    let a = clip::archive::read(&rclip).unwrap();
    assert!(a.data.is_none());
    let s = a.meta.storage.clone().unwrap();
    assert_eq!(s.kind, "s3");
    let loc = s.s3.unwrap();
    assert_eq!(
        (loc.bucket.as_str(), loc.key.as_str()),
        ("images", "app/t.clip")
    );
    assert!(
        std::fs::metadata(&rclip).unwrap().len() * 10 < std::fs::metadata(&object).unwrap().len()
    );
    let full = clip::archive::read(&object).unwrap();
    assert_eq!(
        full.layers, a.layers,
        "the .rclip indexes the uploaded archive"
    );

    // A cold read of one small file is one ranged GET (no HEAD, no listing).
    let small = first_small_file(&src);
    let before = s3.requests().len();
    let o = ok(clipctl_s3(&s3, S3_SECRET_KEY)
        .arg("cat")
        .arg(&rclip)
        .arg(Path::new("/").join(&small)));
    assert_eq!(o.stdout, std::fs::read(src.join(&small)).unwrap());
    let after = s3.requests();
    assert_eq!(
        after[before..]
            .iter()
            .map(|(op, _)| op.as_str())
            .collect::<Vec<_>>(),
        vec!["s3_GetObject"],
        "one ranged GET for one cold chunk"
    );

    // The mounted .rclip equals the source; every chunk is fetched at most once.
    let chunks = a.layers[0].codec.spans.len();
    let gets0 = s3.gets();
    let mnt = d.path().join("mnt");
    let env = [
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ("AWS_REGION", S3_REGION),
    ];
    let m = Mounted::with_env(&rclip, &mnt, &d.path().join("cache"), &[], &env);
    assert_same_tree(&m.dir, &src, &exact());
    let gets = s3.gets() - gets0;
    assert!(
        gets >= 1 && gets <= chunks,
        "{gets} GETs for {chunks} chunks"
    );
    m.unmount();
    // Extract through S3 too.
    let out = d.path().join("out");
    ok(clipctl_s3(&s3, S3_SECRET_KEY)
        .arg("extract")
        .arg(&rclip)
        .arg(&out));
    assert_same_tree(&out, &src, &exact());

    // The worker's local override: the .rclip's metadata over a local full archive.
    let local = d.path().join("full.clip");
    std::fs::copy(&object, &local).unwrap();
    let gets0 = s3.gets();
    let out2 = d.path().join("out2");
    ok(clipctl()
        .arg("extract")
        .arg(&rclip)
        .arg(&out2)
        .arg("--data-archive")
        .arg(&local));
    assert_same_tree(&out2, &src, &exact());
    assert_eq!(s3.gets(), gets0, "the local override reads nothing from S3");
}

/// A regular file of 1 byte to 64 KiB below `root`, relative to it.
fn first_small_file(root: &Path) -> PathBuf {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut ents: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let m = e.path().symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && (1..=64 << 10).contains(&m.len()) {
                return e.path().strip_prefix(root).unwrap().to_path_buf();
            }
        }
    }
    panic!("no small file below {}", root.display())
}

#[test]
fn s3_errors_are_clear_and_leave_nothing() {
    let s3 = S3Server::start();
    s3.create_bucket("images");
    let d = tmp("clip-v1-s3err-");
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), compressible_bytes(100 << 10)).unwrap();
    let work = d.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // A missing bucket.
    let rclip = work.join("x.rclip");
    let err = fails(
        clipctl_s3(&s3, S3_SECRET_KEY)
            .arg("archive")
            .arg(&src)
            .arg("--out")
            .arg(&rclip)
            .args(s3_args(&s3, "s3://no-such-bucket/x.clip")),
    );
    assert!(err.contains("no-such-bucket"), "{err}");
    assert_empty(&work);
    // Wrong credentials: refused, named, and the secret never shown.
    let wrong = "wrong-secret-1234567890";
    let err = fails(
        clipctl_s3(&s3, wrong)
            .arg("archive")
            .arg(&src)
            .arg("--out")
            .arg(&rclip)
            .args(s3_args(&s3, "s3://images/x.clip")),
    );
    assert!(err.contains("images") && !err.contains(wrong), "{err}");
    assert_empty(&work);
    // Right credentials, then a read with wrong ones.
    ok(clipctl_s3(&s3, S3_SECRET_KEY)
        .arg("archive")
        .arg(&src)
        .arg("--out")
        .arg(&rclip)
        .args(s3_args(&s3, "s3://images/x.clip")));
    let err = fails(clipctl_s3(&s3, wrong).arg("cat").arg(&rclip).arg("/f"));
    assert!(err.contains("images") && !err.contains(wrong), "{err}");
    // Upload progress through the library: 0 first, 100 last, never backwards.
    let full = d.path().join("full.clip");
    clip::pack::pack_dir(&src, &full, &Default::default()).unwrap();
    let mut seen = Vec::new();
    clip::pack::upload(
        &full,
        &work.join("y.rclip"),
        &s3.location("images", "y.clip"),
        &s3.options(),
        &mut |p| {
            seen.push(p);
            true
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(seen.first(), Some(&0));
    assert_eq!(seen.last(), Some(&100));
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
}

#[test]
fn an_archive_written_inside_its_tree_leaves_itself_out() {
    let d = tmp("clip-v1-self-");
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), compressible_bytes(3 << 20)).unwrap();
    let archive = src.join("self.clip");
    archive_dir(&src, &archive, &[]);
    let o = ok(clipctl().arg("ls").arg(&archive).arg("/"));
    let ls = String::from_utf8_lossy(&o.stdout);
    assert!(ls.contains(" f\n") || ls.ends_with(" f"), "{ls}");
    assert!(!ls.contains(".clip"), "{ls}");
}
