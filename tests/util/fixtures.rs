//! The fixture catalogue: [`tricky_layers`] / [`tricky_layout`] (three layers,
//! gzip + zstd + plain, full of edge cases) with an independent oracle
//! [`check_tricky_tree`], and [`escaping_layer`] / [`escaping_layout`] (paths that
//! try to leave the root), kept apart because they are not about merging.
//!
//! What umoci 0.4.7 (the reference, run as root) does with the catalogue — all of
//! it unpacks without error through [`umoci_unpack`](super::umoci_unpack), which
//! first stores the zstd layer as plain tar because umoci 0.4.7 rejects
//! `tar+zstd` ("blob is not correct mediatype"). Observed, and checked by
//! [`check_tricky_tree`]:
//!
//! - whiteouts `.wh.<name>` delete files and whole directories of lower layers; a
//!   whiteout of a name that does not exist is ignored; no `.wh.` name appears.
//! - the opaque marker `.wh..wh..opq` removes everything lower layers put in the
//!   directory but keeps what its own layer put there, before or after the marker
//!   in tar order; in a directory new in its layer it changes nothing.
//! - a file replaces a directory (with or without a whiteout before it), a
//!   directory replaces a file or a symlink, a symlink a file, a file a symlink.
//! - a directory re-emitted by an upper layer keeps its children but takes all of
//!   the new header's metadata: mode, owner, mtime, and its xattrs replace (not
//!   merge with) the lower ones.
//! - hardlinks (in the layer, chained, and to a lower layer's file) share one inode;
//!   deleting the original path with a whiteout leaves the other links with the
//!   content and the right link count.
//! - symlinks are created as written (absolute, relative, dangling); their owner
//!   and mtime are applied.
//! - a directory header after its children applies its mode, owner and mtime.
//!   (A parent created implicitly, without any header, gets the time of unpacking
//!   and bumps its own parent's mtime: the catalogue gives every directory a header
//!   so that two unpacks are identical.)
//! - ustar prefix, PAX `path`/`linkpath`, GNU `L`/`K` long names and long link
//!   targets, non-UTF-8 bytes (also inside long names and symlink targets), a
//!   newline in a name: all honoured byte for byte.
//! - PAX `SCHILY.xattr.*`: `user.*`, `trusted.*` and the binary
//!   `security.capability` are applied to files and directories (the capability
//!   survives the chown).
//! - setuid/setgid/sticky bits (also on directories), owners up to 3000000
//!   (base-256), mtimes 0, 1000, 2100-01-01 and a base-256 one (9000000000, year
//!   2255) are applied exactly; a PAX sub-second mtime is applied (only whole
//!   seconds are compared). umoci cannot apply mtimes after 2262 (Go's
//!   `UnixNano` overflows: 10000000000 came out as -2147483648), so the catalogue
//!   stays below that.
//! - char and block devices (also minor > 255) and fifos are created with mknod.
//! - the `./` root entry sets the root's mode and xattrs (and owner); the root's
//!   mtime is not stable in umoci (time of unpacking, or whatever the last entry
//!   left), which is why [`DiffOptions`](super::DiffOptions) skips it by default.
//! - `./etc/x` and `etc/x` name the same path.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::layout::{Compression, Flavor, ImageInfo, LayoutBuilder};
use super::tar_builder::{NameStyle, TarBuilder};
use super::tree_diff::{file_sha256, read_xattrs, scan_tree, show_bytes};

/// Deterministic pseudo-random bytes (splitmix64), incompressible in practice.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic, highly compressible text of `len` bytes (numbered lines).
pub fn compressible_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i:08}: the quick brown fox jumps over the lazy dog\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// `security.capability` value (VFS_CAP_REVISION_2, effective) granting
/// `cap_net_bind_service` (bit 10) permitted: what `setcap cap_net_bind_service+ep`
/// writes.
pub const CAP_NET_BIND_SERVICE_EP: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Content of `etc/passwd` in the bottom layer (overwritten by layer 3).
pub const PASSWD_V1: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n";
/// Content of `etc/passwd` written by layer 3 (without the `./` prefix).
pub const PASSWD_V3: &[u8] =
    b"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/sbin/nologin\n";

/// Path (ustar prefix/name split) of a 150-byte file name in layer 3.
pub fn long_ustar_path() -> Vec<u8> {
    [b"long/".as_slice(), &[b'p'; 90], b"/", &[b'n'; 54]].concat()
}

/// Path (> 255 bytes, PAX `path`) of a file in layer 3.
pub fn long_pax_path() -> Vec<u8> {
    [
        b"long/".as_slice(),
        &[b'a'; 200],
        b"/",
        &[b'b'; 200],
        b"/file",
    ]
    .concat()
}

/// Path (> 255 bytes, GNU `L` entry) of a file in layer 3.
pub fn long_gnu_path() -> Vec<u8> {
    [b"long/".as_slice(), &[b'g'; 120], b"/", &[b'h'; 150]].concat()
}

/// Target (> 100 bytes, PAX `linkpath`) of symlink `long/sym_pax`.
pub fn long_pax_target() -> Vec<u8> {
    [b"/".as_slice(), &[b't'; 150], b"/target"].concat()
}

/// Target (> 100 bytes, GNU `K` entry) of symlink `long/sym_gnu`.
pub fn long_gnu_target() -> Vec<u8> {
    [b"../".as_slice(), &[b'u'; 200]].concat()
}

/// A non-UTF-8 long name (GNU `L` entry) in layer 3.
pub fn long_non_utf8_path() -> Vec<u8> {
    [b"weird/gnu_".as_slice(), &[0xe9; 110]].concat()
}

/// Layer 1 (gzip): the base. Docker-style `./` prefixes on part of it.
fn layer1() -> Vec<u8> {
    let mut t = TarBuilder::new();
    // The root entry itself, as docker writes it.
    t.dir("./")
        .mode(0o751)
        .mtime(1_600_000_000)
        .xattr("user.root", "1");
    t.dir("./etc/");
    t.file("./etc/passwd", PASSWD_V1);
    t.file("./etc/hostname", b"");
    t.file("./etc/shadow", b"root:*:19000:0:99999:7:::\n")
        .mode(0o640)
        .gid(42);
    t.dir("bin/");
    t.file("bin/sh", b"#!fake shell\n").mode(0o755);
    t.file("bin/su", b"#!fake su\n").mode(0o4755);
    t.dir("usr/");
    t.dir("usr/bin/");
    t.file("usr/bin/wall", b"#!fake wall\n").mode(0o2755).gid(5);
    t.dir("tmp/").mode(0o1777);
    t.dir("shared/").mode(0o2775).gid(100);
    t.dir("stickydir/").mode(0o3777);
    t.file("bin/all_bits", b"suid+sgid+sticky\n").mode(0o7755);
    // Whiteout targets.
    t.dir("wh/");
    t.file("wh/file_gone", b"deleted by layer 2\n");
    t.dir("wh/dir_gone/");
    t.file("wh/dir_gone/a", b"a\n");
    t.dir("wh/dir_gone/sub/");
    t.file("wh/dir_gone/sub/b", b"b\n");
    t.file("wh/kept", b"kept\n");
    // Opaque directory target.
    t.dir("opq/").mode(0o755);
    t.file("opq/lower_file", b"hidden by opaque\n");
    t.dir("opq/lower_dir/");
    t.file("opq/lower_dir/x", b"hidden by opaque\n");
    t.file("opq/keep_name", b"lower\n");
    // Type replacements.
    t.dir("repl/");
    t.file("repl/file_to_dir", b"becomes a dir\n");
    t.dir("repl/dir_to_file/");
    t.file("repl/dir_to_file/child", b"gone with its dir\n");
    t.dir("repl/dir_to_file_wh/");
    t.file("repl/dir_to_file_wh/child", b"gone with its dir\n");
    t.file("repl/file_to_symlink", b"becomes a symlink\n");
    t.symlink("repl/symlink_to_file", "file_to_symlink");
    t.symlink("repl/symlink_to_dir", "../etc");
    // Hardlinks and symlinks.
    t.dir("links/");
    t.file("links/orig", b"original content\n")
        .mode(0o640)
        .owner(1000, 1000);
    t.hardlink("links/hl_same_layer", "links/orig");
    t.hardlink("links/hl_chain", "links/hl_same_layer");
    t.file("links/doomed", b"doomed path, surviving links\n");
    t.hardlink("./links/doomed_link", "./links/doomed");
    t.symlink("links/abs", "/etc/passwd");
    t.symlink("links/rel", "../etc/passwd");
    t.symlink("links/dangling", "/nonexistent/target");
    t.symlink("links/to_dir", "../etc");
    t.symlink("links/to_dir_abs", "/usr/bin");
    t.symlink("links/owned", "orig")
        .owner(1000, 1001)
        .mtime(1_234_567_890);
    // Directory headers after their children.
    t.file("late/child1", b"child before its dir\n");
    t.file("late/sub/child2", b"grandchild before its dirs\n");
    t.dir("late/sub/").mode(0o700).mtime(1_111_111_111);
    t.dir("late/")
        .mode(0o750)
        .owner(1234, 1234)
        .mtime(1_222_222_222);
    // Devices.
    t.dir("dev/");
    t.char_device("dev/null", 1, 3).mode(0o666);
    t.block_device("dev/loop0", 7, 0).mode(0o660).gid(6);
    t.char_device("dev/bigminor", 254, 70_000).mode(0o600);
    // Owners.
    t.dir("owners/");
    t.file("owners/u1000", b"1000\n").owner(1000, 1000);
    t.file("owners/u100000", b"100000\n")
        .owner(100_000, 100_000);
    t.file("owners/nobody", b"65534\n").owner(65_534, 65_534);
    t.file("owners/base256", b"base-256 uid/gid\n")
        .owner(3_000_000, 3_000_001);
    t.dir("owners/dir_u5/").owner(5, 5);
    // Times.
    t.dir("times/");
    t.file("times/epoch", b"mtime 0\n").mtime(0);
    t.file("times/y2100", b"2100-01-01\n").mtime(4_102_444_800);
    t.file("times/base256", b"year 2255\n").mtime(9_000_000_000);
    t.file("times/nanos", b"sub-second mtime\n")
        .mtime_nanos(1_700_000_000, 123_456_789);
    t.dir("times/dir_epoch/").mtime(0);
    t.symlink("times/symlink_old", "epoch").mtime(1000);
    // Empty things.
    t.dir("empty/");
    t.file("empty/zero", b"");
    t.dir("empty/dir/");
    // Incompressible big file.
    t.dir("big/");
    t.file("big/random.bin", pseudo_random_bytes(1, 1_536 * 1024));
    // Xattrs.
    t.dir("xattr/");
    t.file("xattr/file", b"has xattrs\n")
        .xattr("user.comment", "hello")
        .xattr("user.binary", b"\x00\x01\xff\xfe");
    t.file("xattr/cap", b"#!fake capability binary\n")
        .mode(0o755)
        .xattr("security.capability", CAP_NET_BIND_SERVICE_EP);
    t.dir("xattr/dir/")
        .xattr("user.dirattr", "d")
        .xattr("trusted.clip", "t");
    t.dir("xattr/redir/")
        .owner(7, 7)
        .xattr("user.old", "replaced in layer 2");
    t.file("xattr/redir/child", b"child of a re-emitted dir\n");
    t.finish()
}

/// Layer 2 (zstd): whiteouts, the opaque directory, replacements, cross-layer
/// hardlinks, a compressible multi-MiB file.
fn layer2() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.whiteout("wh", "file_gone");
    t.whiteout("wh", "dir_gone");
    // Metadata changes of existing directories (mode, owner, xattrs replaced).
    t.dir("etc/").mode(0o750).mtime(1_650_000_000);
    t.dir("xattr/redir/").xattr("user.new", "layer 2");
    t.whiteout("etc", "does_not_exist");
    // Opaque: own entries before and after the marker.
    t.dir("opq/").mode(0o770).mtime(1_650_000_001);
    t.file("opq/own_before", b"upper, before the marker\n");
    t.file("opq/keep_name", b"upper\n");
    t.opaque("opq");
    t.file("opq/own_after", b"upper, after the marker\n");
    t.dir("opq/own_dir_after/");
    t.file("opq/own_dir_after/x", b"upper\n");
    // Opaque marker in a directory that is new in this layer.
    t.dir("new_opq/");
    t.opaque("new_opq/");
    t.file("new_opq/f", b"f\n");
    // Replacements.
    t.dir("repl/file_to_dir/");
    t.file("repl/file_to_dir/inner", b"inner\n");
    t.file("repl/dir_to_file", b"was a dir (implicit replacement)\n");
    t.whiteout("repl", "dir_to_file_wh");
    t.file("repl/dir_to_file_wh", b"was a dir (whiteout first)\n");
    t.dir("repl/symlink_to_dir/");
    t.file(
        "repl/symlink_to_dir/inside",
        b"inside a dir that was a symlink\n",
    );
    // Hardlinks to files of layer 1.
    t.hardlink("links/hl_from_upper", "links/orig");
    t.hardlink("links/doomed_link2", "links/doomed");
    // Compressible multi-MiB file.
    t.file("big/compressible.txt", compressible_bytes(4 * 1024 * 1024));
    t.finish()
}

/// Layer 3 (plain tar): deletion of a hardlink's original, overwrites, long names,
/// non-UTF-8 names, another big random file, a fifo and a device.
fn layer3() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.whiteout("links", "doomed");
    t.file("etc/passwd", PASSWD_V3);
    t.symlink("repl/file_to_symlink", "/etc/hostname");
    t.file("repl/symlink_to_file", b"was a symlink\n");
    // Long names.
    t.dir("long/");
    // Every directory gets a header: implicitly created parents would get the
    // time of extraction (and bump their parent's mtime) in umoci.
    let ustar = long_ustar_path();
    t.dir(&ustar[..ustar.iter().rposition(|&c| c == b'/').expect("slash") + 1]);
    t.file(&ustar, b"ustar prefix + name\n");
    let pax = long_pax_path();
    t.dir(&pax[..206]);
    t.dir(&pax[..407]);
    t.file(&pax, b"PAX path\n");
    t.file("long/pax_short", b"short name, PAX anyway\n")
        .style(NameStyle::Pax);
    t.name_style(NameStyle::Gnu);
    t.dir(&long_gnu_path()[..126]);
    t.file(long_gnu_path(), b"GNU long name\n");
    let gnu_dir = [b"long/gnu_dir_".as_slice(), &[b'x'; 110], b"/"].concat();
    t.dir(&gnu_dir).mode(0o711);
    t.symlink("long/sym_gnu", long_gnu_target());
    let gnu_hl = [b"long/".as_slice(), &[b'k'; 130]].concat();
    t.hardlink(&gnu_hl, long_gnu_path());
    t.file(long_non_utf8_path(), b"non-UTF-8 GNU long name\n");
    t.name_style(NameStyle::Auto);
    t.symlink("long/sym_pax", long_pax_target());
    t.hardlink("long/hl_pax", long_pax_path());
    // Non-UTF-8 and odd names.
    t.dir("weird/");
    t.file(b"weird/caf\xe9", b"latin-1 name\n");
    t.dir(b"weird/\xff\xfe\xfd/");
    t.file(b"weird/\xff\xfe\xfd/inner", b"under a non-UTF-8 dir\n");
    t.symlink(b"weird/sym\x80", b"caf\xe9");
    t.file("weird/ünïcødé", b"UTF-8 name\n");
    t.file("weird/new\nline", b"newline in name\n");
    t.file("weird/trailing space ", b"trailing space\n");
    // More big random data, a fifo, a device, an xattr in a plain layer.
    t.file("big/random2.bin", pseudo_random_bytes(2, 1_100 * 1024));
    t.dir("run/");
    t.fifo("run/fifo").mode(0o600);
    t.char_device("dev/tty", 5, 0).mode(0o666).gid(5);
    t.file("xattr/later", b"xattr in the plain layer\n")
        .xattr("user.layer", "3");
    t.finish()
}

/// The catalogue's three layers, bottom first: gzip, zstd, plain tar. Edge cases
/// covered (see the module docs for umoci's behaviour on each):
///
/// - whiteouts of files and of whole directories of lower layers, and of a name
///   that never existed;
/// - an opaque directory with own entries before and after the marker, and a
///   marker in a directory new in its layer;
/// - file -> directory, directory -> file (implicit and after a whiteout),
///   file <-> symlink, symlink -> directory;
/// - hardlinks in a layer (also chained), to a lower layer's file, and a group
///   whose original path is deleted by a later whiteout;
/// - absolute, relative, dangling and directory symlinks, one with owner and mtime;
/// - directory headers after their children;
/// - ustar prefix, PAX and GNU long names (> 100 and > 255 bytes), long link
///   targets (PAX `linkpath`, GNU `K`), long hardlink targets;
/// - non-UTF-8 names (also in a GNU long name and a symlink target), a newline and
///   a trailing space in names;
/// - PAX xattrs (`user.*`, `trusted.*`, binary `security.capability`) on files
///   and directories;
/// - setuid, setgid, sticky (and all three), a setgid directory;
/// - char/block devices (minor > 255 too), fifos;
/// - uid/gid 0, 5, 1000, 65534, 100000, 3000000 (base-256);
/// - mtimes 0, 1000, 2100-01-01, base-256 year 2255, sub-second PAX mtime; a
///   directory's metadata changed by an upper layer; the `./` root entry;
/// - empty files and directories; a 1.5 MiB and a 1.1 MiB pseudo-random file and a
///   4 MiB compressible one;
/// - `./`-prefixed paths (layer 1, in part) and bare ones naming the same files.
pub fn tricky_layers() -> Vec<(Vec<u8>, Compression)> {
    vec![
        (layer1(), Compression::Gzip),
        (layer2(), Compression::Zstd),
        (layer3(), Compression::None),
    ]
}

/// Writes [`tricky_layers`] as one OCI image tagged `tag` into a new layout at
/// `dir` (with some config: Env, Cmd, Entrypoint, User, WorkingDir, Labels).
pub fn tricky_layout(dir: &Path, tag: &str) -> ImageInfo {
    tricky_layout_as(dir, tag, None)
}

/// [`tricky_layout`] with every layer compressed as `all` (`None`: each layer its
/// own compression).
pub fn tricky_layout_as(dir: &Path, tag: &str, all: Option<Compression>) -> ImageInfo {
    let mut lb = LayoutBuilder::new(dir);
    for (tar, c) in tricky_layers() {
        lb.add_layer(&tar, all.unwrap_or(c));
    }
    lb.image_mut()
        .env("CLIP_TEST=tricky")
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo hello"])
        .user("1000:1000")
        .working_dir("/tmp")
        .label("org.example.fixture", "tricky");
    lb.write_image(Some(tag))
}

/// Independent oracle for the merged tree of [`tricky_layers`] (the OCI
/// semantics, written out by hand): returns one line per violated expectation,
/// empty when `rootfs` looks right. Checks presence/absence after whiteouts and the
/// opaque directory, replacements, hardlink groups and link counts, contents,
/// modes, owners, devices, xattrs, symlink targets, long and non-UTF-8 names, and
/// that no `.wh.` name survived.
pub fn check_tricky_tree(rootfs: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    let p = |rel: &[u8]| rootfs.join(std::ffi::OsStr::from_bytes(rel));
    let exists = |rel: &[u8]| fs::symlink_metadata(p(rel)).is_ok();

    for rel in [
        b"wh/file_gone".as_slice(),
        b"wh/dir_gone",
        b"opq/lower_file",
        b"opq/lower_dir",
        b"links/doomed",
        b"etc/does_not_exist",
        b"repl/dir_to_file_wh/child",
    ] {
        if exists(rel) {
            errs.push(format!("{} should not exist", show_bytes(rel)));
        }
    }
    let files: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"etc/passwd".to_vec(), PASSWD_V3.to_vec()),
        (b"etc/hostname".to_vec(), b"".to_vec()),
        (b"wh/kept".to_vec(), b"kept\n".to_vec()),
        (b"opq/keep_name".to_vec(), b"upper\n".to_vec()),
        (
            b"opq/own_before".to_vec(),
            b"upper, before the marker\n".to_vec(),
        ),
        (
            b"opq/own_after".to_vec(),
            b"upper, after the marker\n".to_vec(),
        ),
        (b"opq/own_dir_after/x".to_vec(), b"upper\n".to_vec()),
        (b"new_opq/f".to_vec(), b"f\n".to_vec()),
        (b"repl/file_to_dir/inner".to_vec(), b"inner\n".to_vec()),
        (
            b"repl/dir_to_file".to_vec(),
            b"was a dir (implicit replacement)\n".to_vec(),
        ),
        (
            b"repl/dir_to_file_wh".to_vec(),
            b"was a dir (whiteout first)\n".to_vec(),
        ),
        (
            b"repl/symlink_to_dir/inside".to_vec(),
            b"inside a dir that was a symlink\n".to_vec(),
        ),
        (
            b"repl/symlink_to_file".to_vec(),
            b"was a symlink\n".to_vec(),
        ),
        (
            b"links/doomed_link".to_vec(),
            b"doomed path, surviving links\n".to_vec(),
        ),
        (
            b"links/doomed_link2".to_vec(),
            b"doomed path, surviving links\n".to_vec(),
        ),
        (
            b"links/hl_from_upper".to_vec(),
            b"original content\n".to_vec(),
        ),
        (
            b"late/sub/child2".to_vec(),
            b"grandchild before its dirs\n".to_vec(),
        ),
        (long_ustar_path(), b"ustar prefix + name\n".to_vec()),
        (long_pax_path(), b"PAX path\n".to_vec()),
        (
            b"long/pax_short".to_vec(),
            b"short name, PAX anyway\n".to_vec(),
        ),
        (long_gnu_path(), b"GNU long name\n".to_vec()),
        (
            [b"long/".as_slice(), &[b'k'; 130]].concat(),
            b"GNU long name\n".to_vec(),
        ),
        (b"long/hl_pax".to_vec(), b"PAX path\n".to_vec()),
        (long_non_utf8_path(), b"non-UTF-8 GNU long name\n".to_vec()),
        (b"weird/caf\xe9".to_vec(), b"latin-1 name\n".to_vec()),
        (
            b"weird/\xff\xfe\xfd/inner".to_vec(),
            b"under a non-UTF-8 dir\n".to_vec(),
        ),
        (
            "weird/ünïcødé".as_bytes().to_vec(),
            b"UTF-8 name\n".to_vec(),
        ),
        (b"weird/new\nline".to_vec(), b"newline in name\n".to_vec()),
        (
            b"weird/trailing space ".to_vec(),
            b"trailing space\n".to_vec(),
        ),
        (b"empty/zero".to_vec(), b"".to_vec()),
    ];
    for (rel, want) in &files {
        match fs::symlink_metadata(p(rel)) {
            Ok(md) if md.file_type().is_file() => {
                if fs::read(p(rel)).ok().as_ref() != Some(want) {
                    errs.push(format!("{}: wrong content", show_bytes(rel)));
                }
            }
            Ok(_) => errs.push(format!("{}: not a regular file", show_bytes(rel))),
            Err(e) => errs.push(format!("{}: {e}", show_bytes(rel))),
        }
    }
    let big = [
        ("big/random.bin", pseudo_random_bytes(1, 1_536 * 1024)),
        ("big/random2.bin", pseudo_random_bytes(2, 1_100 * 1024)),
        ("big/compressible.txt", compressible_bytes(4 * 1024 * 1024)),
    ];
    for (rel, data) in big {
        if file_sha256(&p(rel.as_bytes())).ok() != Some(super::sha256_hex(&data)) {
            errs.push(format!("{rel}: wrong content"));
        }
    }
    for rel in [
        b"repl/file_to_dir".as_slice(),
        b"repl/symlink_to_dir",
        b"opq/own_dir_after",
        b"empty/dir",
        b"weird/\xff\xfe\xfd",
    ] {
        if !fs::symlink_metadata(p(rel)).is_ok_and(|m| m.is_dir()) {
            errs.push(format!("{}: not a directory", show_bytes(rel)));
        }
    }
    let symlinks: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"repl/file_to_symlink".to_vec(), b"/etc/hostname".to_vec()),
        (b"links/abs".to_vec(), b"/etc/passwd".to_vec()),
        (b"links/rel".to_vec(), b"../etc/passwd".to_vec()),
        (b"links/dangling".to_vec(), b"/nonexistent/target".to_vec()),
        (b"links/to_dir".to_vec(), b"../etc".to_vec()),
        (b"links/owned".to_vec(), b"orig".to_vec()),
        (b"long/sym_pax".to_vec(), long_pax_target()),
        (b"long/sym_gnu".to_vec(), long_gnu_target()),
        (b"weird/sym\x80".to_vec(), b"caf\xe9".to_vec()),
    ];
    for (rel, want) in &symlinks {
        match fs::read_link(p(rel)) {
            Ok(t) if t.as_os_str().as_bytes() == want.as_slice() => {}
            other => errs.push(format!(
                "{}: symlink target {other:?}, want {}",
                show_bytes(rel),
                show_bytes(want)
            )),
        }
    }
    let groups: [&[&[u8]]; 3] = [
        &[
            b"links/orig",
            b"links/hl_same_layer",
            b"links/hl_chain",
            b"links/hl_from_upper",
        ],
        &[b"links/doomed_link", b"links/doomed_link2"],
        &[b"long/hl_pax", &long_pax_path()],
    ];
    for group in groups {
        let inodes: BTreeSet<(u64, u64, u64)> = group
            .iter()
            .filter_map(|rel| fs::symlink_metadata(p(rel)).ok())
            .map(|m| (m.dev(), m.ino(), m.nlink()))
            .collect();
        let want_nlink = group.len() as u64;
        if inodes.len() != 1 || inodes.iter().any(|i| i.2 != want_nlink) {
            let names: Vec<String> = group.iter().map(|g| show_bytes(g)).collect();
            errs.push(format!(
                "hardlink group [{}]: (dev, ino, nlink) {inodes:?}, \
                 want one inode with nlink {want_nlink}",
                names.join(", ")
            ));
        }
    }
    let modes: [(&str, u32, u32, u32); 16] = [
        (".", 0o751, 0, 0),
        ("xattr/redir", 0o755, 0, 0),
        ("bin/su", 0o4755, 0, 0),
        ("usr/bin/wall", 0o2755, 0, 5),
        ("bin/all_bits", 0o7755, 0, 0),
        ("tmp", 0o1777, 0, 0),
        ("shared", 0o2775, 0, 100),
        ("stickydir", 0o3777, 0, 0),
        ("etc", 0o750, 0, 0),
        ("opq", 0o770, 0, 0),
        ("late", 0o750, 1234, 1234),
        ("late/sub", 0o700, 0, 0),
        ("links/orig", 0o640, 1000, 1000),
        ("owners/u100000", 0o644, 100_000, 100_000),
        ("owners/base256", 0o644, 3_000_000, 3_000_001),
        ("run/fifo", 0o600, 0, 0),
    ];
    for (rel, mode, uid, gid) in modes {
        match fs::symlink_metadata(p(rel.as_bytes())) {
            Ok(m) if (m.mode() & 0o7777, m.uid(), m.gid()) == (mode, uid, gid) => {}
            Ok(m) => errs.push(format!(
                "{rel}: mode/uid/gid {:04o} {}:{}, want {mode:04o} {uid}:{gid}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            )),
            Err(e) => errs.push(format!("{rel}: {e}")),
        }
    }
    let mtimes: [(&str, i64); 8] = [
        ("times/epoch", 0),
        ("times/y2100", 4_102_444_800),
        ("times/base256", 9_000_000_000),
        ("times/nanos", 1_700_000_000),
        ("times/dir_epoch", 0),
        ("times/symlink_old", 1000),
        ("late", 1_222_222_222),
        ("late/sub", 1_111_111_111),
    ];
    for (rel, want) in mtimes {
        match fs::symlink_metadata(p(rel.as_bytes())) {
            Ok(m) if m.mtime() == want => {}
            Ok(m) => errs.push(format!("{rel}: mtime {}, want {want}", m.mtime())),
            Err(e) => errs.push(format!("{rel}: {e}")),
        }
    }
    let devices: [(&str, bool, u64); 4] = [
        ("dev/null", true, (1 << 8) | 3),
        ("dev/loop0", false, 7 << 8),
        ("dev/tty", true, 5 << 8),
        // makedev(254, 70000): minor low 8 bits, then major, then minor high bits.
        (
            "dev/bigminor",
            true,
            ((70_000 & 0xff) | (254 << 8) | ((70_000 & !0xff) << 12)),
        ),
    ];
    for (rel, is_char, rdev) in devices {
        match fs::symlink_metadata(p(rel.as_bytes())) {
            Ok(m)
                if m.rdev() == rdev
                    && (if is_char {
                        m.file_type().is_char_device()
                    } else {
                        m.file_type().is_block_device()
                    }) => {}
            Ok(m) => errs.push(format!("{rel}: wrong device (rdev {:#x})", m.rdev())),
            Err(e) => errs.push(format!("{rel}: {e}")),
        }
    }
    let xattrs: [(&str, &str, &[u8]); 8] = [
        (".", "user.root", b"1"),
        ("xattr/redir", "user.new", b"layer 2"),
        ("xattr/file", "user.comment", b"hello"),
        ("xattr/file", "user.binary", b"\x00\x01\xff\xfe"),
        ("xattr/cap", "security.capability", &CAP_NET_BIND_SERVICE_EP),
        ("xattr/dir", "user.dirattr", b"d"),
        ("xattr/dir", "trusted.clip", b"t"),
        ("xattr/later", "user.layer", b"3"),
    ];
    for (rel, name, value) in xattrs {
        match read_xattrs(&p(rel.as_bytes())) {
            Ok(x) if x.get(name.as_bytes()).map(Vec::as_slice) == Some(value) => {}
            Ok(x) => errs.push(format!(
                "{rel}: xattr {name} = {:?}, want {}",
                x.get(name.as_bytes()).map(|v| show_bytes(v)),
                show_bytes(value)
            )),
            Err(e) => errs.push(format!("{rel}: {e}")),
        }
    }
    if read_xattrs(&p(b"xattr/redir")).is_ok_and(|x| x.contains_key(b"user.old".as_slice())) {
        errs.push("xattr/redir: user.old should have been dropped by layer 2's header".into());
    }
    for rel in scan_tree(rootfs).keys() {
        if rel.split(|&c| c == b'/').any(|c| c.starts_with(b".wh.")) {
            errs.push(format!(
                "{}: whiteout name in the merged tree",
                show_bytes(rel)
            ));
        }
    }
    errs
}

/// A layer whose paths try to leave the root: `../escape_dotdot`,
/// `/abs_file`, `escape/../../escape_mid`, `/absdir/f`, hardlinks to
/// `/etc/passwd` and `../../etc/passwd`, a symlink to `/` followed by a file
/// written through it, and a symlink pointing far up (harmless in itself).
/// Meant to sit on top of a base layer with `etc/passwd` (see
/// [`escaping_layout`]).
///
/// umoci 0.4.7 does not reject any of it: every path is resolved inside the root
/// with securejoin semantics, as if the root were `/` (`..` at the root stays at
/// the root, absolute paths and absolute symlinks are taken relative to the
/// root). So `../escape_dotdot` becomes `escape_dotdot`, `/abs_file` becomes
/// `abs_file`, `escape/../../escape_mid` becomes `escape_mid`, `/absdir/f` becomes
/// `absdir/f`, both hardlinks link to the image's `etc/passwd`, and the file
/// written through `escape/sym_root/through_symlink` lands at `through_symlink`
/// (the symlink itself is kept). Nothing is written outside the bundle. See
/// [`check_escaping_tree`].
pub fn escaping_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.dir("escape/");
    t.file("../escape_dotdot", b"dotdot\n");
    t.file("/abs_file", b"absolute\n");
    t.file("escape/../../escape_mid", b"dotdot in the middle\n");
    t.dir("/absdir/");
    t.file("/absdir/f", b"under an absolute dir\n");
    t.hardlink("escape/hl_abs", "/etc/passwd");
    t.hardlink("escape/hl_up", "../../etc/passwd");
    t.symlink("escape/link_up", "../../../../outside");
    t.symlink("escape/sym_root", "/");
    t.file(
        "escape/sym_root/through_symlink",
        b"written through a symlink to /\n",
    );
    t.finish()
}

/// Content of `etc/passwd` in the base layer of [`escaping_layout`].
pub const ESCAPING_PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n";

/// Writes a two-layer image tagged `tag` into a new layout at `dir`: a gzip base
/// layer with `etc/passwd` ([`ESCAPING_PASSWD`]), then [`escaping_layer`] (gzip).
pub fn escaping_layout(dir: &Path, tag: &str) -> ImageInfo {
    let mut base = TarBuilder::new();
    base.dir("etc/");
    base.file("etc/passwd", ESCAPING_PASSWD);
    let mut lb = LayoutBuilder::new(dir);
    lb.add_layer(&base.finish(), Compression::Gzip);
    lb.add_layer(&escaping_layer(), Compression::Gzip);
    lb.write_image(Some(tag))
}

/// What umoci made of [`escaping_layout`] (see [`escaping_layer`]): returns one line
/// per difference from that; empty when `rootfs` has every escaping entry clamped
/// inside the root.
pub fn check_escaping_tree(rootfs: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    let files: [(&str, &[u8]); 7] = [
        ("escape_dotdot", b"dotdot\n"),
        ("abs_file", b"absolute\n"),
        ("escape_mid", b"dotdot in the middle\n"),
        ("absdir/f", b"under an absolute dir\n"),
        ("escape/hl_abs", ESCAPING_PASSWD),
        ("escape/hl_up", ESCAPING_PASSWD),
        ("through_symlink", b"written through a symlink to /\n"),
    ];
    for (rel, want) in files {
        let path = rootfs.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && fs::read(&path).ok().as_deref() == Some(want) => {}
            Ok(_) => errs.push(format!("{rel}: not a file with the expected content")),
            Err(e) => errs.push(format!("{rel}: {e}")),
        }
    }
    let passwd = fs::symlink_metadata(rootfs.join("etc/passwd")).map(|m| m.nlink());
    if passwd.as_ref().ok() != Some(&3) {
        errs.push(format!("etc/passwd: nlink {passwd:?}, want 3"));
    }
    for (rel, want) in [
        ("escape/sym_root", "/"),
        ("escape/link_up", "../../../../outside"),
    ] {
        match fs::read_link(rootfs.join(rel)) {
            Ok(t) if t.as_os_str() == want => {}
            other => errs.push(format!("{rel}: symlink {other:?}, want {want}")),
        }
    }
    errs
}

/// Text with some entropy, so DEFLATE makes many blocks with real back-references.
pub fn compressible_mixed(len: usize) -> Vec<u8> {
    let words = pseudo_random_bytes(99, len / 4);
    let mut out = Vec::with_capacity(len);
    let dict: Vec<&str> = "the of and to in is that it for on with as was at by an be this from or have are not but had his they which one you were all her she there would their we him been has when who will more no if out so said what up its about into than them can only other new some could time these two may then do first any my now such like our over man me even most made after also did many before must through back years where much your way well down should because each just those people how too little state good very make world still own see men work long get here between both life being under never day same another know while last might us great old year off come since against go came right used take three".split(' ').collect();
    let mut i = 0;
    while out.len() < len {
        let w = words[i % words.len()] as usize;
        out.extend_from_slice(dict[w % dict.len()].as_bytes());
        out.push(if w % 13 == 0 { b'\n' } else { b' ' });
        if w % 7 == 0 {
            out.extend_from_slice(format!("{}", w * 31 + i).as_bytes());
        }
        i += 1;
    }
    out.truncate(len);
    out
}

/// A two-platform image tagged `tag` in a new layout at `dir` (of `flavor`):
/// `linux/amd64` whose `/etc/which` says "docker amd64", and `linux/arm64/v8` whose
/// `/etc/which` says "arm64 v8".
pub fn multi_platform_layout(dir: &Path, tag: &str, flavor: Flavor) {
    let mut lb = LayoutBuilder::new(dir);
    lb.flavor(flavor);
    let mut t = TarBuilder::new();
    t.dir("etc").mode(0o755);
    t.file("etc/which", "docker amd64\n").mode(0o644);
    lb.add_layer(&t.finish(), Compression::Gzip);
    let amd = lb.take_image();
    let mut t = TarBuilder::new();
    t.file("etc/which", "arm64 v8\n").mode(0o644);
    lb.add_layer(&t.finish(), Compression::Gzip);
    let arm = lb.take_image();
    lb.write_index_image(
        Some(tag),
        &[
            ("linux", "amd64", None, &amd),
            ("linux", "arm64", Some("v8"), &arm),
        ],
    );
}

/// A two-layer gzip image with files over several 2 MiB spans (4 x 3 MiB of random
/// bytes below, 5 MiB of compressible text and a small file above): reads need
/// several fetches from each layer.
pub fn multi_span_layout(dir: &Path, tag: &str) -> ImageInfo {
    let mut lb = LayoutBuilder::new(dir);
    let mut t = TarBuilder::new();
    t.dir("data/");
    for i in 0..4 {
        t.file(format!("data/blob{i}"), pseudo_random_bytes(i, 3 << 20));
    }
    lb.add_layer(&t.finish(), Compression::Gzip);
    let mut t = TarBuilder::new();
    t.dir("etc/");
    t.file("etc/motd", b"hello from the top layer\n");
    t.file("data/text", compressible_bytes(5 << 20));
    lb.add_layer(&t.finish(), Compression::Gzip);
    lb.write_image(Some(tag))
}
