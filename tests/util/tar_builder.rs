//! [`TarBuilder`]: a hand-made tar writer that emits exactly what it is told.
//!
//! Unlike the `tar` crate, nothing is normalised: paths are raw bytes (non-UTF-8,
//! absolute, `../x`, `./x`, trailing slashes or not), entries are written in the
//! order they were added, directories may come after their children, whiteouts and
//! hardlinks may point anywhere. Each entry chooses how its long names are written
//! ([`NameStyle`]).
//!
//! Header format: POSIX ustar (`"ustar\0"` magic, `"00"` version) for
//! [`NameStyle::Auto`] and [`NameStyle::Pax`]; old-GNU magic (`"ustar  \0"`) for
//! [`NameStyle::Gnu`], as GNU tar writes it. Numeric fields are zero-padded octal
//! with a NUL terminator; values too big for octal are written in GNU base-256
//! (first byte `0x80`, or `0xff` for negative values), which Go's `archive/tar` (and
//! so umoci) reads. The checksum is the sum of all header bytes with the checksum
//! field taken as spaces, written as six octal digits, NUL, space.

/// Size of one tar block.
pub const BLOCK: usize = 512;

/// mtime given to entries that do not set one (2023-11-14T22:13:20Z).
pub const DEFAULT_MTIME: i64 = 1_700_000_000;

/// How an entry's path and link target are written when they are long.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NameStyle {
    /// ustar `name` (<= 100 bytes) or `prefix`/`name` split (<= 155 + 100 bytes at a
    /// `/`) when the path fits, else a PAX `path` record; link targets longer than
    /// 100 bytes get a PAX `linkpath` record. Header magic `"ustar\0"` `"00"`.
    #[default]
    Auto,
    /// GNU `././@LongLink` entries: type `'L'` before the header for a path longer
    /// than 100 bytes, type `'K'` for a link target longer than 100 bytes (the header
    /// fields then hold the first 100 bytes). Never uses the ustar prefix. All
    /// headers of the entry use the old-GNU magic `"ustar  \0"`.
    Gnu,
    /// Always a PAX extended header carrying `path` (and `linkpath` for links), even
    /// for short names; the ustar fields hold the name as well as it fits.
    Pax,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file (type `'0'`) with this content.
    File(Vec<u8>),
    /// Directory (type `'5'`).
    Dir,
    /// Symbolic link (type `'2'`) to this target.
    Symlink(Vec<u8>),
    /// Hard link (type `'1'`) to this path (as written in the archive).
    Hardlink(Vec<u8>),
    /// Character device (type `'3'`).
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// Block device (type `'4'`).
    BlockDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// Named pipe (type `'6'`).
    Fifo,
}

impl Kind {
    /// The ustar type flag of this kind.
    pub fn typeflag(&self) -> u8 {
        match self {
            Kind::File(_) => b'0',
            Kind::Hardlink(_) => b'1',
            Kind::Symlink(_) => b'2',
            Kind::CharDevice { .. } => b'3',
            Kind::BlockDevice { .. } => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }

    fn default_mode(&self) -> u32 {
        match self {
            Kind::Dir => 0o755,
            Kind::Symlink(_) => 0o777,
            _ => 0o644,
        }
    }
}

/// One tar entry, fully specified. Created by the [`TarBuilder`] methods (which fill
/// in defaults: mode 0644 for files, devices, fifos and hardlinks, 0755 for
/// directories, 0777 for symlinks; uid/gid 0; empty uname/gname; mtime
/// [`DEFAULT_MTIME`]; the builder's current [`NameStyle`]) and adjusted with the
/// chainable setters.
#[derive(Clone, Debug)]
pub struct TarEntry {
    /// Path bytes exactly as written into the archive.
    pub path: Vec<u8>,
    /// Entry type and its payload (content, link target, device numbers).
    pub kind: Kind,
    /// Mode field, written as given (normally permission bits incl.
    /// setuid/setgid/sticky; type bits may be added deliberately).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// `uname` field (at most 32 bytes are written).
    pub uname: Vec<u8>,
    /// `gname` field (at most 32 bytes are written).
    pub gname: Vec<u8>,
    /// Modification time, whole seconds since the epoch.
    pub mtime: i64,
    /// Sub-second part of the mtime; when set a PAX `mtime` record
    /// `"<secs>.<9 digits>"` is emitted.
    pub mtime_nanos: Option<u32>,
    /// Extended attributes, emitted in this order as PAX `SCHILY.xattr.<name>`
    /// records (values are raw bytes, may contain NUL).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Extra PAX records (key, value), emitted after everything else.
    pub pax_records: Vec<(Vec<u8>, Vec<u8>)>,
    /// How long names are written.
    pub name_style: NameStyle,
    /// Overrides the type flag byte (the payload still follows `kind`).
    pub typeflag: Option<u8>,
}

impl TarEntry {
    /// A new entry with the defaults described on [`TarEntry`].
    pub fn new(path: impl AsRef<[u8]>, kind: Kind) -> TarEntry {
        TarEntry {
            path: path.as_ref().to_vec(),
            mode: kind.default_mode(),
            kind,
            uid: 0,
            gid: 0,
            uname: Vec::new(),
            gname: Vec::new(),
            mtime: DEFAULT_MTIME,
            mtime_nanos: None,
            xattrs: Vec::new(),
            pax_records: Vec::new(),
            name_style: NameStyle::Auto,
            typeflag: None,
        }
    }

    /// Sets the mode field (e.g. `0o4755` for setuid).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    /// Sets the numeric owner.
    pub fn uid(&mut self, uid: u64) -> &mut Self {
        self.uid = uid;
        self
    }

    /// Sets the numeric group.
    pub fn gid(&mut self, gid: u64) -> &mut Self {
        self.gid = gid;
        self
    }

    /// Sets numeric owner and group.
    pub fn owner(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Sets the `uname` header field.
    pub fn uname(&mut self, name: impl AsRef<[u8]>) -> &mut Self {
        self.uname = name.as_ref().to_vec();
        self
    }

    /// Sets the `gname` header field.
    pub fn gname(&mut self, name: impl AsRef<[u8]>) -> &mut Self {
        self.gname = name.as_ref().to_vec();
        self
    }

    /// Sets the mtime in whole seconds (no PAX record).
    pub fn mtime(&mut self, secs: i64) -> &mut Self {
        self.mtime = secs;
        self.mtime_nanos = None;
        self
    }

    /// Sets the mtime with nanoseconds (adds a PAX `mtime` record).
    pub fn mtime_nanos(&mut self, secs: i64, nanos: u32) -> &mut Self {
        assert!(nanos < 1_000_000_000, "nanos out of range");
        self.mtime = secs;
        self.mtime_nanos = Some(nanos);
        self
    }

    /// Adds an extended attribute (PAX `SCHILY.xattr.<name>`).
    pub fn xattr(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.xattrs
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    /// Adds an arbitrary PAX record.
    pub fn pax(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.pax_records
            .push((key.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    /// Sets how long names of this entry are written.
    pub fn style(&mut self, style: NameStyle) -> &mut Self {
        self.name_style = style;
        self
    }

    /// Overrides the type flag byte.
    pub fn typeflag(&mut self, flag: u8) -> &mut Self {
        self.typeflag = Some(flag);
        self
    }
}

/// Builds a tar stream entry by entry, in the given order, with full control over
/// every header field. See the module docs for the format written.
///
/// ```ignore
/// let mut t = TarBuilder::new();
/// t.dir("etc/");
/// t.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n").mode(0o600).mtime(0);
/// t.symlink("etc/localtime", "/usr/share/zoneinfo/UTC");
/// t.whiteout("etc", "old.conf");
/// let bytes = t.finish();
/// ```
#[derive(Clone, Debug, Default)]
pub struct TarBuilder {
    items: Vec<Item>,
    style: NameStyle,
}

/// What the builder emits, in order.
#[derive(Clone, Debug)]
enum Item {
    Entry(TarEntry),
    Raw(Vec<u8>),
}

impl TarBuilder {
    /// An empty builder (name style [`NameStyle::Auto`]).
    pub fn new() -> TarBuilder {
        TarBuilder::default()
    }

    /// Sets the name style given to entries added from now on.
    pub fn name_style(&mut self, style: NameStyle) -> &mut Self {
        self.style = style;
        self
    }

    /// The entries added so far (without [`raw`](Self::raw) bytes).
    pub fn entries(&self) -> Vec<&TarEntry> {
        self.items
            .iter()
            .filter_map(|i| match i {
                Item::Entry(e) => Some(e),
                Item::Raw(_) => None,
            })
            .collect()
    }

    /// Appends a fully specified entry (its own name style is kept).
    pub fn entry(&mut self, entry: TarEntry) -> &mut TarEntry {
        self.items.push(Item::Entry(entry));
        match self.items.last_mut() {
            Some(Item::Entry(e)) => e,
            _ => unreachable!("just pushed an entry"),
        }
    }

    /// Appends bytes verbatim at this point of the stream (no padding): for
    /// hand-made headers, garbage, stray zero blocks, truncated payloads.
    pub fn raw(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.items.push(Item::Raw(bytes.as_ref().to_vec()));
        self
    }

    /// Appends a PAX global header (type `'g'`, named `pax_global_header` as
    /// `git archive` writes it) carrying these records.
    pub fn pax_global(&mut self, records: &[(&[u8], &[u8])]) -> &mut TarEntry {
        let e = self.push(
            b"pax_global_header",
            Kind::File(encode_pax_records(records)),
        );
        e.typeflag = Some(b'g');
        e.mode = 0o666;
        e
    }

    fn push(&mut self, path: &[u8], kind: Kind) -> &mut TarEntry {
        let mut e = TarEntry::new(path, kind);
        e.name_style = self.style;
        self.entry(e)
    }

    /// Appends a regular file with this content.
    pub fn file(&mut self, path: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> &mut TarEntry {
        self.push(path.as_ref(), Kind::File(content.as_ref().to_vec()))
    }

    /// Appends a directory. The path is written as given: pass `"dir/"` for the
    /// conventional trailing slash.
    pub fn dir(&mut self, path: impl AsRef<[u8]>) -> &mut TarEntry {
        self.push(path.as_ref(), Kind::Dir)
    }

    /// Appends a symbolic link `path -> target`.
    pub fn symlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut TarEntry {
        self.push(path.as_ref(), Kind::Symlink(target.as_ref().to_vec()))
    }

    /// Appends a hard link `path` to the archive path `target`.
    pub fn hardlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut TarEntry {
        self.push(path.as_ref(), Kind::Hardlink(target.as_ref().to_vec()))
    }

    /// Appends a character device.
    pub fn char_device(&mut self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> &mut TarEntry {
        self.push(path.as_ref(), Kind::CharDevice { major, minor })
    }

    /// Appends a block device.
    pub fn block_device(
        &mut self,
        path: impl AsRef<[u8]>,
        major: u32,
        minor: u32,
    ) -> &mut TarEntry {
        self.push(path.as_ref(), Kind::BlockDevice { major, minor })
    }

    /// Appends a named pipe.
    pub fn fifo(&mut self, path: impl AsRef<[u8]>) -> &mut TarEntry {
        self.push(path.as_ref(), Kind::Fifo)
    }

    /// Appends the whiteout `dir/.wh.<name>` (an empty regular file) that deletes
    /// `dir/name` from lower layers. `dir` may be empty (whiteout at the root).
    pub fn whiteout(&mut self, dir: impl AsRef<[u8]>, name: impl AsRef<[u8]>) -> &mut TarEntry {
        let mut leaf = b".wh.".to_vec();
        leaf.extend_from_slice(name.as_ref());
        let path = join(dir.as_ref(), &leaf);
        self.push(&path, Kind::File(Vec::new()))
    }

    /// Appends the opaque marker `dir/.wh..wh..opq` (an empty regular file) that hides
    /// everything lower layers put in `dir`.
    pub fn opaque(&mut self, dir: impl AsRef<[u8]>) -> &mut TarEntry {
        let path = join(dir.as_ref(), b".wh..wh..opq");
        self.push(&path, Kind::File(Vec::new()))
    }

    /// Serialises all entries followed by two zero blocks (end of archive).
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.finish_unterminated();
        out.resize(out.len() + 2 * BLOCK, 0);
        out
    }

    /// Serialises all entries without the two terminating zero blocks.
    pub fn finish_unterminated(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for item in &self.items {
            match item {
                Item::Entry(e) => write_entry(&mut out, e),
                Item::Raw(b) => out.extend_from_slice(b),
            }
        }
        out
    }
}

/// `dir + "/" + leaf`, without doubling a trailing slash; just `leaf` if `dir` is
/// empty.
fn join(dir: &[u8], leaf: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() && !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(leaf);
    p
}

const MAGIC_USTAR: &[u8; 8] = b"ustar\x0000";
const MAGIC_GNU: &[u8; 8] = b"ustar  \x00";

/// Fields of one 512-byte header, before serialisation.
struct Header<'a> {
    name: &'a [u8],
    mode: u64,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    typeflag: u8,
    linkname: &'a [u8],
    magic: &'static [u8; 8],
    uname: &'a [u8],
    gname: &'a [u8],
    devmajor: u64,
    devminor: u64,
    prefix: &'a [u8],
}

impl Header<'_> {
    fn to_block(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        put_bytes(&mut b[0..100], self.name);
        put_num(&mut b[100..108], i128::from(self.mode));
        put_num(&mut b[108..116], i128::from(self.uid));
        put_num(&mut b[116..124], i128::from(self.gid));
        put_num(&mut b[124..136], i128::from(self.size));
        put_num(&mut b[136..148], i128::from(self.mtime));
        b[156] = self.typeflag;
        put_bytes(&mut b[157..257], self.linkname);
        b[257..265].copy_from_slice(self.magic);
        put_bytes(&mut b[265..297], self.uname);
        put_bytes(&mut b[297..329], self.gname);
        put_num(&mut b[329..337], i128::from(self.devmajor));
        put_num(&mut b[337..345], i128::from(self.devminor));
        put_bytes(&mut b[345..500], self.prefix);
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }
}

/// Copies as much of `v` as fits (no terminator needed when full).
fn put_bytes(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

/// Zero-padded octal with NUL terminator, or GNU base-256 when it does not fit.
fn put_num(field: &mut [u8], v: i128) {
    let w = field.len();
    let digits = w - 1;
    if v >= 0 && v < (1i128 << (3 * digits)) {
        let s = format!("{:0width$o}", v, width = digits);
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        let be = v.to_be_bytes();
        field.copy_from_slice(&be[be.len() - w..]);
        if v >= 0 {
            assert!(field[0] == 0, "value {v} too large even for base-256");
            field[0] = 0x80;
        } else {
            assert!(field[0] == 0xff, "value {v} too small even for base-256");
        }
    }
}

/// Appends `data` padded with zeros to a whole number of blocks.
fn put_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let rem = data.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

/// Splits a path into ustar `(prefix, name)`, if it fits.
fn split_ustar(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    if path.len() > 256 {
        return None;
    }
    (1..path.len().min(156)).find_map(|i| {
        let name = &path[i + 1..];
        (path[i] == b'/' && !name.is_empty() && name.len() <= 100).then(|| (&path[..i], name))
    })
}

/// Encodes PAX records (`"<len> <key>=<value>\n"` each), e.g. as the content of a
/// hand-made `'x'` or `'g'` entry.
pub fn encode_pax_records(records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        pax_record(&mut out, k, v);
    }
    out
}

/// One PAX record `"<len> <key>=<value>\n"`, where len counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Last path component (ignoring trailing slashes), for PAX header names.
fn basename(path: &[u8]) -> &[u8] {
    let trimmed = match path.iter().rposition(|&c| c != b'/') {
        Some(end) => &path[..=end],
        None => path,
    };
    match trimmed.iter().rposition(|&c| c == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

fn max_octal(width: usize) -> u64 {
    (1u64 << (3 * (width - 1))) - 1
}

fn write_entry(out: &mut Vec<u8>, e: &TarEntry) {
    let (content, link, devs): (&[u8], Option<&[u8]>, (u64, u64)) = match &e.kind {
        Kind::File(c) => (c, None, (0, 0)),
        Kind::Symlink(t) | Kind::Hardlink(t) => (&[], Some(t.as_slice()), (0, 0)),
        Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
            (&[], None, (u64::from(*major), u64::from(*minor)))
        }
        Kind::Dir | Kind::Fifo => (&[], None, (0, 0)),
    };
    let link = link.unwrap_or(&[]);
    let path = e.path.as_slice();
    let mut pax = Vec::new();
    let mut gnu_name: Option<&[u8]> = None;
    let mut gnu_link: Option<&[u8]> = None;
    let (mut prefix, mut name): (&[u8], &[u8]) = (&[], &path[..path.len().min(100)]);
    let magic = if e.name_style == NameStyle::Gnu {
        MAGIC_GNU
    } else {
        MAGIC_USTAR
    };
    match e.name_style {
        NameStyle::Auto | NameStyle::Pax => {
            match split_ustar(path) {
                Some((p, n)) => (prefix, name) = (p, n),
                None => pax_record(&mut pax, b"path", path),
            }
            if e.name_style == NameStyle::Pax && split_ustar(path).is_some() {
                pax_record(&mut pax, b"path", path);
            }
            if link.len() > 100 || (e.name_style == NameStyle::Pax && !link.is_empty()) {
                pax_record(&mut pax, b"linkpath", link);
            }
        }
        NameStyle::Gnu => {
            if path.len() > 100 {
                gnu_name = Some(path);
            }
            if link.len() > 100 {
                gnu_link = Some(link);
            }
        }
    }
    if e.name_style == NameStyle::Pax {
        if e.uid > max_octal(8) {
            pax_record(&mut pax, b"uid", e.uid.to_string().as_bytes());
        }
        if e.gid > max_octal(8) {
            pax_record(&mut pax, b"gid", e.gid.to_string().as_bytes());
        }
    }
    if let Some(ns) = e.mtime_nanos {
        let v = format!("{}.{:09}", e.mtime, ns);
        pax_record(&mut pax, b"mtime", v.as_bytes());
    }
    for (k, v) in &e.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        pax_record(&mut pax, &key, v);
    }
    for (k, v) in &e.pax_records {
        pax_record(&mut pax, k, v);
    }

    let special = |flag: u8, name: &'static [u8], size: usize, magic: &'static [u8; 8]| {
        let root: &'static [u8] = if magic == MAGIC_GNU { b"root" } else { b"" };
        Header {
            name,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: size as u64,
            mtime: if flag == b'x' { e.mtime } else { 0 },
            typeflag: flag,
            linkname: &[],
            magic,
            uname: root,
            gname: root,
            devmajor: 0,
            devminor: 0,
            prefix: &[],
        }
    };
    for (flag, long) in [(b'K', gnu_link), (b'L', gnu_name)] {
        if let Some(long) = long {
            let mut data = long.to_vec();
            data.push(0);
            let h = special(flag, b"././@LongLink", data.len(), MAGIC_GNU);
            out.extend_from_slice(&h.to_block());
            put_padded(out, &data);
        }
    }
    if !pax.is_empty() {
        let mut pname = b"PaxHeaders.0/".to_vec();
        pname.extend_from_slice(basename(path));
        pname.truncate(100);
        let mut h = special(b'x', b"", pax.len(), MAGIC_USTAR);
        h.name = &pname;
        out.extend_from_slice(&h.to_block());
        put_padded(out, &pax);
    }
    let h = Header {
        name,
        mode: u64::from(e.mode),
        uid: e.uid,
        gid: e.gid,
        size: content.len() as u64,
        mtime: e.mtime,
        typeflag: e.typeflag.unwrap_or(e.kind.typeflag()),
        linkname: &link[..link.len().min(100)],
        magic,
        uname: &e.uname,
        gname: &e.gname,
        devmajor: devs.0,
        devminor: devs.1,
        prefix,
    };
    out.extend_from_slice(&h.to_block());
    put_padded(out, content);
}
