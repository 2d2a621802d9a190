//! Archives written by the Go clip (github.com/beam-cloud/clip), which every
//! `.clip` and `.rclip` in a worker's registries and caches is today: read strictly
//! and served through the same [`Image`](crate::image::Image) as ours.
//!
//! Their layout (the Go clip's pkg/common/format.go): a 54-byte little-endian
//! header (9 start bytes `\x89CLIP\r\n\x1a\n`, a version byte `1`, then the index
//! length and position, the storage-info length and position as int64, and a
//! 12-byte storage type), a gob-encoded `[]*ClipNode` index, and for `.rclip` and
//! index-only archives a gob `StorageInfoWrapper{Type, Data}` whose `Data` is a gob
//! `S3StorageInfo` or `OCIStorageInfo`. A v1 archive with the data inside stores
//! each file as a block: a type byte (0), the bytes (`DataPos`, `DataLen` point
//! here), and the big-endian CRC-64/ISO of the bytes.
//!
//! Reading is strict: every position and length is checked against the file,
//! every gob value against the fields the Go clip's types have; anything else is
//! an error naming the archive and what is wrong. How each kind is served is in
//! [`serve`].

pub mod gob;
mod serve;
mod tree;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::limits;
use gob::Value;

pub use serve::{GOCLIP_DATA_MEDIA_TYPE, open_image};

/// The Go clip's start bytes. Our magic is its first 8; byte 8 tells them apart.
pub const START_BYTES: [u8; 9] = [0x89, b'C', b'L', b'I', b'P', 0x0d, 0x0a, 0x1a, 0x0a];
/// The Go clip's header size.
pub const HEADER_SIZE: usize = 54;
/// The only Go-clip format version.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes of the CRC-64 after each data block.
pub const CHECKSUM_SIZE: u64 = 8;
/// Largest index or storage info this reader accepts (neither is compressed: it
/// is read as stored, so the file's own size bounds it too). The index's nodes
/// are bounded by [`limits::MAX_IMAGE_ENTRIES`], their paths and symlink targets
/// by [`limits::MAX_PATH_LEN`] and [`limits::MAX_PATH_DEPTH`], the image's layers
/// by [`limits::MAX_LAYERS`].
const MAX_SECTION: u64 = 1 << 31;

/// Whether `prefix` (a file's first bytes) starts a Go-clip archive.
pub fn is_goclip(prefix: &[u8]) -> bool {
    prefix.len() >= START_BYTES.len() && prefix[..START_BYTES.len()] == START_BYTES
}

/// Whether the file at `path` is a Go-clip archive (false if it cannot be read).
pub fn is_goclip_file(path: &Path) -> bool {
    let mut b = [0u8; 9];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok_and(|_| is_goclip(&b))
}

/// The type of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    /// `"dir"`.
    Dir,
    /// `"file"`.
    File,
    /// `"symlink"`.
    Symlink,
}

/// Where a file's bytes are in an OCI layer (v2 archives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// The layer's blob digest (`sha256:...`).
    pub layer_digest: String,
    /// Offset of the bytes in the layer's uncompressed tar stream.
    pub offset: u64,
    /// Their length.
    pub length: u64,
}

/// One `ClipNode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Absolute path (`/`, `/etc/passwd`), raw bytes.
    pub path: Vec<u8>,
    /// Its type.
    pub node_type: NodeType,
    /// `st_mode` as the Go clip recorded it (type bits and `mode & 0777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Link count the source had.
    pub nlink: u32,
    /// Symlink target.
    pub target: Vec<u8>,
    /// sha256 hex of a file's content (v1; may be empty).
    pub content_hash: String,
    /// v1: offset of the file's bytes in the (full) archive.
    pub data_pos: u64,
    /// v1: their length.
    pub data_len: u64,
    /// v2: where the bytes are in a layer.
    pub remote: Option<RemoteRef>,
}

/// Where a Go-clip archive's file bytes are.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// In the archive itself (a v1 `.clip`).
    Local,
    /// In a full v1 archive in S3 (a `.rclip`).
    S3(S3Info),
    /// In the layers of an OCI image (an index-only v2 archive).
    Oci(Box<OciInfo>),
}

/// `S3StorageInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Info {
    /// Bucket.
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Object key of the full archive.
    pub key: String,
    /// Endpoint URL (empty: AWS).
    pub endpoint: String,
    /// Path-style addressing.
    pub force_path_style: bool,
}

/// `OCIStorageInfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct OciInfo {
    /// Registry host\[:port\].
    pub registry_url: String,
    /// Repository.
    pub repository: String,
    /// Tag or digest (the manifest digest after indexing).
    pub reference: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    /// Layer digest → sha256 hex of its uncompressed stream.
    pub decompressed_hash_by_layer: BTreeMap<String, String>,
    /// Layers with gzip checkpoints recorded (offsets only: not resumable).
    pub gzip_checkpoints: usize,
}

/// A Go-clip archive's metadata, read and checked.
#[derive(Debug, Clone)]
pub struct GoArchive {
    /// Storage type from the header (`""`, `"s3"`, `"oci"`).
    pub storage_type: String,
    /// Where the file bytes are.
    pub storage: Storage,
    /// The storage info as the Go clip's `encoding/json` would give it (Go field
    /// names): what `ExtractMetadata` hands beta9.
    pub storage_json: Option<serde_json::Value>,
    /// The index, in path order.
    pub nodes: Vec<Node>,
    /// Where the index starts (the data of a v1 archive ends before it).
    pub index_pos: u64,
    /// Size of the archive file.
    pub file_size: u64,
    /// sha256 of the header, index and storage info: names this archive.
    pub id: [u8; 32],
}

fn le_i64(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the Go-clip archive at `path`.
pub fn read(path: &Path) -> Result<GoArchive> {
    read_inner(path).map_err(|e| e.with_path(path))
}

fn read_inner(path: &Path) -> Result<GoArchive> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ctx("opening", path)?;
    let file_size = f.metadata().ctx("reading metadata of", path)?.len();
    parse_from(file_size, &|pos, len| {
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, pos).ctx("reading", path)?;
        Ok(b)
    })
}

/// Parses a Go-clip archive from its bytes (as [`read`] does a file).
pub fn parse(bytes: &[u8]) -> Result<GoArchive> {
    parse_from(bytes.len() as u64, &|pos, len| {
        // parse_from asks only for ranges it checked against the size.
        Ok(bytes[pos as usize..(pos + len) as usize].to_vec())
    })
}

/// Parses an archive of `file_size` bytes, read through `read_at(pos, len)`.
fn parse_from(file_size: u64, read_at: &dyn Fn(u64, u64) -> Result<Vec<u8>>) -> Result<GoArchive> {
    if file_size < HEADER_SIZE as u64 {
        return Err(Error::format(format!(
            "{file_size} bytes: too short for a Go-clip header ({HEADER_SIZE} bytes)"
        )));
    }
    let h: [u8; HEADER_SIZE] = read_at(0, HEADER_SIZE as u64)?
        .try_into()
        .map_err(|_| Error::format("short read of the Go-clip header"))?;
    if !is_goclip(&h) {
        return Err(Error::format("not a Go-clip archive (wrong start bytes)"));
    }
    if h[9] != FORMAT_VERSION {
        return Err(Error::Version {
            found: h[9] as u32,
            supported: FORMAT_VERSION as u32,
        });
    }
    let section = |name: &str, len_at: usize, pos_at: usize| -> Result<(u64, u64)> {
        let (len, pos) = (le_i64(&h, len_at), le_i64(&h, pos_at));
        if len == 0 {
            return Ok((0, 0));
        }
        if len as u64 > MAX_SECTION && len > 0 {
            return Err(limits::exceeded(
                format_args!("the header's {name}"),
                len,
                "bytes",
                MAX_SECTION,
                "goclip::MAX_SECTION",
            ));
        }
        if len < 0 || pos < HEADER_SIZE as i64 {
            return Err(Error::format(format!(
                "the header gives the {name} {len} bytes at {pos}"
            )));
        }
        let (len, pos) = (len as u64, pos as u64);
        if pos.checked_add(len).is_none_or(|e| e > file_size) {
            return Err(Error::format(format!(
                "the header puts the {name} ({len} bytes at {pos}) past the end of the file ({file_size} bytes): truncated?"
            )));
        }
        Ok((len, pos))
    };
    let (index_len, index_pos) = section("index", 10, 18)?;
    let (info_len, info_pos) = section("storage info", 26, 34)?;
    if index_len == 0 {
        return Err(Error::format("the header gives an empty index"));
    }
    let ty = &h[42..54];
    let ty_end = ty.iter().position(|&b| b == 0).unwrap_or(ty.len());
    if ty[ty_end..].iter().any(|&b| b != 0) {
        return Err(Error::format("the header's storage type is not NUL-padded"));
    }
    let storage_type = String::from_utf8(ty[..ty_end].to_vec())
        .map_err(|_| Error::format("the header's storage type is not UTF-8"))?;
    let index = read_at(index_pos, index_len)?;
    let info = if info_len > 0 {
        read_at(info_pos, info_len)?
    } else {
        Vec::new()
    };
    let mut id = sha2::Sha256::default();
    sha2::Digest::update(&mut id, h);
    sha2::Digest::update(&mut id, &index);
    sha2::Digest::update(&mut id, &info);
    let id: [u8; 32] = sha2::Digest::finalize(id).into();

    let nodes = decode_index(&index)?;
    let (storage, storage_json) = if info_len == 0 {
        if !storage_type.is_empty() {
            return Err(Error::format(format!(
                "the header names storage type {storage_type:?} but holds no storage info"
            )));
        }
        (Storage::Local, None)
    } else {
        decode_storage(&info, &storage_type)?
    };
    let a = GoArchive {
        storage_type,
        storage,
        storage_json,
        nodes,
        index_pos,
        file_size,
        id,
    };
    a.check()?;
    Ok(a)
}

fn gob_err(what: &str) -> impl Fn(gob::GobError) -> Error + '_ {
    move |e| Error::format(format!("{what}: {e}"))
}

/// Field accessors that insist on the type the Go clip's struct has.
struct Fields<'a> {
    v: &'a Value,
    what: &'a str,
}

impl Fields<'_> {
    fn of<'a>(v: &'a Value, what: &'a str) -> Result<Fields<'a>> {
        match v {
            Value::Struct(_) => Ok(Fields { v, what }),
            _ => Err(Error::format(format!("{what} is not a struct"))),
        }
    }
    fn bad(&self, name: &str, want: &str) -> Error {
        Error::format(format!("{}: field {name} is not {want}", self.what))
    }
    fn bytes(&self, name: &str) -> Result<Vec<u8>> {
        match self.v.field(name) {
            None => Ok(Vec::new()),
            Some(Value::Bytes(b)) => Ok(b.clone()),
            Some(_) => Err(self.bad(name, "a string")),
        }
    }
    fn string(&self, name: &str) -> Result<String> {
        String::from_utf8(self.bytes(name)?).map_err(|_| self.bad(name, "UTF-8"))
    }
    fn uint(&self, name: &str, max: u64) -> Result<u64> {
        match self.v.field(name) {
            None => Ok(0),
            Some(Value::Uint(u)) if *u <= max => Ok(*u),
            Some(_) => Err(self.bad(name, "an unsigned integer in range")),
        }
    }
    fn int(&self, name: &str) -> Result<u64> {
        match self.v.field(name) {
            None => Ok(0),
            Some(Value::Int(i)) if *i >= 0 => Ok(*i as u64),
            Some(_) => Err(self.bad(name, "a non-negative integer")),
        }
    }
    fn bool(&self, name: &str) -> Result<bool> {
        match self.v.field(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.bad(name, "a bool")),
        }
    }
    fn only(&self, names: &[&str]) -> Result<()> {
        if let Value::Struct(fs) = self.v {
            if let Some((n, _)) = fs.iter().find(|(n, _)| !names.contains(&&**n)) {
                return Err(Error::format(format!(
                    "{}: unexpected field {n} (not in the Go clip's type)",
                    self.what
                )));
            }
        }
        Ok(())
    }
}

fn decode_index(index: &[u8]) -> Result<Vec<Node>> {
    decode_index_with(index, limits::MAX_IMAGE_ENTRIES)
}

/// [`decode_index`], refusing more than `max_nodes` nodes (as each arrives).
fn decode_index_with(index: &[u8], max_nodes: u64) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    let mut failed: Option<Error> = None;
    let r = gob::decode_each(index, &mut |item| {
        let node = if nodes.len() as u64 >= max_nodes {
            Err(limits::exceeded(
                "index",
                format_args!("at least {}", nodes.len() + 1),
                "nodes",
                max_nodes,
                "limits::MAX_IMAGE_ENTRIES",
            ))
        } else {
            node_of(&item, nodes.len())
        };
        match node {
            Ok(n) => {
                nodes.push(n);
                Ok(())
            }
            Err(e) => {
                failed = Some(e);
                Err(gob::GobError {
                    offset: 0,
                    what: "stopped".into(),
                })
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    r.map_err(gob_err("index"))?;
    Ok(nodes)
}

/// One `ClipNode` of the index (the `i`th).
fn node_of(item: &Value, i: usize) -> Result<Node> {
    let what = format!("index node {i}");
    let f = Fields::of(item, &what)?;
    f.only(&[
        "NodeType",
        "Path",
        "Attr",
        "Target",
        "ContentHash",
        "DataPos",
        "DataLen",
        "Remote",
    ])?;
    let path = f.bytes("Path")?;
    limits::check_path(format_args!("index node {i}"), "path", &path)?;
    let what = format!("index node {}", String::from_utf8_lossy(&path));
    let f = Fields {
        v: item,
        what: &what,
    };
    let node_type = match f.bytes("NodeType")?.as_slice() {
        b"dir" => NodeType::Dir,
        b"file" => NodeType::File,
        b"symlink" => NodeType::Symlink,
        other => {
            return Err(Error::format(format!(
                "{what}: unknown node type {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let empty = Value::Struct(Vec::new());
    let attr_v = item.field("Attr").unwrap_or(&empty);
    let aw = format!("{what}: Attr");
    let a = Fields::of(attr_v, &aw)?;
    let owner_v = attr_v.field("Owner").unwrap_or(&empty);
    let ow = format!("{what}: Attr.Owner");
    let o = Fields::of(owner_v, &ow)?;
    let u32max = u32::MAX as u64;
    let remote = match item.field("Remote") {
        None => None,
        Some(r) => {
            let rw = format!("{what}: Remote");
            let r = Fields::of(r, &rw)?;
            r.only(&["LayerDigest", "UOffset", "ULength"])?;
            Some(RemoteRef {
                layer_digest: r.string("LayerDigest")?,
                offset: r.int("UOffset")?,
                length: r.int("ULength")?,
            })
        }
    };
    Ok(Node {
        node_type,
        mode: a.uint("Mode", u32max)? as u32,
        uid: o.uint("Uid", u32max)? as u32,
        gid: o.uint("Gid", u32max)? as u32,
        size: a.uint("Size", u64::MAX)?,
        mtime: a.uint("Mtime", u64::MAX)?,
        mtime_nsec: a.uint("Mtimensec", 999_999_999)? as u32,
        nlink: a.uint("Nlink", u32max)? as u32,
        target: {
            let t = f.bytes("Target")?;
            limits::check_path(&what, "target", &t)?;
            t
        },
        content_hash: f.string("ContentHash")?,
        data_pos: f.int("DataPos")?,
        data_len: f.int("DataLen")?,
        remote,
        path,
    })
}

fn decode_storage(info: &[u8], header_type: &str) -> Result<(Storage, Option<serde_json::Value>)> {
    let w = gob::decode(info).map_err(gob_err("storage info"))?;
    let f = Fields::of(&w, "storage info")?;
    f.only(&["Type", "Data"])?;
    let ty = f.string("Type")?;
    if ty != header_type {
        return Err(Error::format(format!(
            "storage info of type {ty:?} under a header naming {header_type:?}"
        )));
    }
    let data = f.bytes("Data")?;
    let what = format!("{ty} storage info");
    let v = gob::decode(&data).map_err(gob_err(&what))?;
    let s = Fields::of(&v, &what)?;
    let json = to_json(&v);
    let storage = match ty.as_str() {
        "s3" => {
            s.only(&["Bucket", "Region", "Key", "Endpoint", "ForcePathStyle"])?;
            Storage::S3(S3Info {
                bucket: s.string("Bucket")?,
                region: s.string("Region")?,
                key: s.string("Key")?,
                endpoint: s.string("Endpoint")?,
                force_path_style: s.bool("ForcePathStyle")?,
            })
        }
        "oci" => {
            s.only(&[
                "RegistryURL",
                "Repository",
                "Reference",
                "Layers",
                "GzipIdxByLayer",
                "ZstdIdxByLayer",
                "DecompressedHashByLayer",
                "ImageMetadata",
            ])?;
            let strings = |name: &str| -> Result<Vec<String>> {
                match v.field(name) {
                    None => Ok(Vec::new()),
                    Some(Value::List(l)) => l
                        .iter()
                        .map(|x| match x {
                            Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| s.bad(name, "a list of strings")),
                    Some(_) => Err(s.bad(name, "a list")),
                }
            };
            let mut hashes = BTreeMap::new();
            match v.field("DecompressedHashByLayer") {
                None => {}
                Some(Value::Map(m)) => {
                    for (k, x) in m {
                        match (k, x) {
                            (Value::Bytes(k), Value::Bytes(x)) => {
                                let k = String::from_utf8(k.clone());
                                let x = String::from_utf8(x.clone());
                                let (Ok(k), Ok(x)) = (k, x) else {
                                    return Err(s.bad("DecompressedHashByLayer", "UTF-8"));
                                };
                                hashes.insert(k, x);
                            }
                            _ => return Err(s.bad("DecompressedHashByLayer", "a string map")),
                        }
                    }
                }
                Some(_) => return Err(s.bad("DecompressedHashByLayer", "a map")),
            }
            let gzip_checkpoints = match v.field("GzipIdxByLayer") {
                Some(Value::Map(m)) => m.len(),
                _ => 0,
            };
            Storage::Oci(Box::new(OciInfo {
                registry_url: s.string("RegistryURL")?,
                repository: s.string("Repository")?,
                reference: s.string("Reference")?,
                layers: {
                    let l = strings("Layers")?;
                    limits::check_count(
                        &what,
                        l.len() as u64,
                        "layers",
                        limits::MAX_LAYERS as u64,
                        "limits::MAX_LAYERS",
                    )?;
                    l
                },
                decompressed_hash_by_layer: hashes,
                gzip_checkpoints,
            }))
        }
        other => {
            return Err(Error::format(format!(
                "unsupported storage info type {other:?} (the Go clip wrote \"s3\" and \"oci\")"
            )));
        }
    };
    Ok((storage, Some(json)))
}

/// A gob value as Go's `encoding/json` renders the struct it came from (zero
/// fields, which gob does not send, are left out; Go's decoder zeroes them).
fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Uint(u) => J::from(*u),
        Value::Bytes(b) => J::String(String::from_utf8_lossy(b).into_owned()),
        Value::List(l) => J::Array(l.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, x)| {
                    let k = match to_json(k) {
                        J::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, to_json(x))
                })
                .collect(),
        ),
        Value::Struct(fs) => J::Object(
            fs.iter()
                .map(|(n, x)| (n.to_string(), to_json(x)))
                .collect(),
        ),
        Value::Encoded(name, b) if name.as_ref() == "Time" || name.ends_with(".Time") => {
            go_time(b).map_or(J::Null, J::String)
        }
        Value::Encoded(_, b) => J::String(hex::encode(b)),
    }
}

/// Formats a Go `time.Time` from its `MarshalBinary` bytes as RFC 3339.
fn go_time(b: &[u8]) -> Option<String> {
    let (v, rest) = b.split_first()?;
    if !(*v == 1 && rest.len() == 14 || *v == 2 && rest.len() == 15) {
        return None;
    }
    let sec = i64::from_be_bytes(rest[0..8].try_into().ok()?);
    let nsec = i32::from_be_bytes(rest[8..12].try_into().ok()?);
    let off_min = i16::from_be_bytes(rest[12..14].try_into().ok()?);
    let off = if off_min == -1 {
        0
    } else {
        off_min as i64 * 60
    } + if *v == 2 { rest[14] as i8 as i64 } else { 0 };
    // Go counts seconds from 0001-01-01; shift to the Unix epoch and to local time.
    let unix = sec.checked_sub(62_135_596_800)?.checked_add(off)?;
    let days = unix.div_euclid(86_400);
    let tod = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let frac = if nsec == 0 {
        String::new()
    } else {
        format!(".{nsec:09}").trim_end_matches('0').to_string()
    };
    let zone = if off == 0 {
        "Z".to_string()
    } else {
        let a = off.abs();
        format!(
            "{}{:02}:{:02}",
            if off < 0 { '-' } else { '+' },
            a / 3600,
            a % 3600 / 60
        )
    };
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}{zone}",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    ))
}

/// Howard Hinnant's days-to-civil.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl GoArchive {
    /// Consistency checks of the index against the storage kind and the file.
    fn check(&self) -> Result<()> {
        let mut prev: Option<&[u8]> = None;
        for n in &self.nodes {
            let p = String::from_utf8_lossy(&n.path);
            if !n.path.starts_with(b"/")
                || n.path.contains(&0)
                || n.path[1..]
                    .split(|&c| c == b'/')
                    .any(|c| c == b".." || c == b".")
                || (n.path.len() > 1 && n.path.split(|&c| c == b'/').skip(1).any(|c| c.is_empty()))
            {
                return Err(Error::format(format!("index: bad path {p:?}")));
            }
            if prev.is_some_and(|q| q >= n.path.as_slice()) {
                return Err(Error::format(format!(
                    "index: {p:?} is out of order or listed twice"
                )));
            }
            prev = Some(&n.path);
            let want = match n.node_type {
                NodeType::Dir => crate::tree::S_IFDIR,
                NodeType::File => crate::tree::S_IFREG,
                NodeType::Symlink => crate::tree::S_IFLNK,
            };
            if n.mode & crate::tree::S_IFMT != want {
                return Err(Error::format(format!(
                    "index: {p:?} is a {:?} with mode {:o}",
                    n.node_type, n.mode
                )));
            }
            if n.node_type != NodeType::File {
                continue;
            }
            match (&self.storage, &n.remote) {
                (Storage::Oci(o), Some(r)) => {
                    if !o.layers.contains(&r.layer_digest) {
                        return Err(Error::format(format!(
                            "index: {p:?} is in layer {}, which the image does not have",
                            r.layer_digest
                        )));
                    }
                    if r.length != n.size {
                        return Err(Error::format(format!(
                            "index: {p:?} is {} bytes but its layer range is {}",
                            n.size, r.length
                        )));
                    }
                }
                (Storage::Oci(_), None) => {
                    return Err(Error::format(format!(
                        "index: file {p:?} of an index-only archive has no layer reference"
                    )));
                }
                (_, Some(_)) => {
                    return Err(Error::format(format!(
                        "index: file {p:?} of a v1 archive has a layer reference"
                    )));
                }
                (_, None) => {
                    if n.data_len != n.size {
                        return Err(Error::format(format!(
                            "index: {p:?} is {} bytes but its data block holds {}",
                            n.size, n.data_len
                        )));
                    }
                    if n.data_pos == 0 {
                        return Err(Error::format(format!("index: {p:?} has no data block")));
                    }
                    // Bounded here so that block arithmetic never overflows later.
                    if n.data_pos
                        .checked_add(n.data_len)
                        .and_then(|e| e.checked_add(CHECKSUM_SIZE))
                        .is_none_or(|e| e > i64::MAX as u64)
                    {
                        return Err(Error::format(format!(
                            "index: {p:?}'s data block ({} bytes at {}) is out of range",
                            n.data_len, n.data_pos
                        )));
                    }
                    if matches!(self.storage, Storage::Local)
                        && n.data_pos
                            .checked_add(n.data_len + CHECKSUM_SIZE)
                            .is_none_or(|e| e > self.index_pos)
                    {
                        return Err(Error::format(format!(
                            "index: {p:?}'s data ({} bytes at {}) runs past the data region (it ends at {})",
                            n.data_len, n.data_pos, self.index_pos
                        )));
                    }
                }
            }
        }
        if self.nodes.first().is_none_or(|n| n.path != b"/") {
            return Err(Error::format("index: no root directory"));
        }
        Ok(())
    }

    /// The storage kind in our terms: `"local"`, `"s3"` or `"oci"`.
    pub fn storage_kind(&self) -> &'static str {
        match self.storage {
            Storage::Local => crate::archive::STORAGE_LOCAL,
            Storage::S3(_) => crate::archive::STORAGE_S3,
            Storage::Oci(_) => crate::archive::STORAGE_OCI,
        }
    }

    /// The C ABI's archive description (`clip_archive_info`) of this archive: the
    /// keys our archives have where they apply, and `"goclip"` with the storage
    /// info as the Go clip's `ExtractMetadata` returns it.
    pub fn info_json(&self) -> String {
        let mut j = serde_json::json!({
            "format_version": 0,
            "index_only": matches!(self.storage, Storage::Oci(_)),
            "created_by": "the Go clip (gob format 1)",
            "source": "",
            "storage_type": self.storage_kind(),
            "registry": "",
            "repository": "",
            "reference": "",
            "manifest_digest": "",
            "layers": [],
            "inodes": self.nodes.len(),
            "goclip": {
                "format_version": FORMAT_VERSION,
                "storage_type": self.storage_type,
                "storage": self.storage_json,
            },
        });
        match &self.storage {
            Storage::Local => {}
            Storage::S3(s) => {
                j["s3"] = serde_json::json!({
                    "bucket": s.bucket, "key": s.key, "region": s.region,
                    "endpoint": s.endpoint, "path_style": s.force_path_style,
                });
            }
            Storage::Oci(o) => {
                j["registry"] = o.registry_url.clone().into();
                j["repository"] = o.repository.clone().into();
                j["reference"] = o.reference.clone().into();
                j["layers"] = o
                    .layers
                    .iter()
                    .map(|l| {
                        let h = o.decompressed_hash_by_layer.get(l);
                        serde_json::json!({
                            "digest": l,
                            "diff_id": h.map(|h| format!("sha256:{h}")).unwrap_or_default(),
                        })
                    })
                    .collect();
            }
        }
        j.to_string()
    }

    /// The tree the index describes (files of v2 archives name their layer by its
    /// position in the image's layers; v1 files point into the archive).
    pub fn tree(&self) -> Result<crate::tree::Tree> {
        tree::build(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_times() {
        // time.Date(2024, 3, 5, 7, 8, 9, 120000000, time.UTC).MarshalBinary()
        let b = [1, 0, 0, 0, 14, 221, 120, 187, 217, 7, 39, 14, 0, 255, 255];
        assert_eq!(go_time(&b).as_deref(), Some("2024-03-05T07:08:09.12Z"));
        // The zero time.
        let z = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255];
        assert_eq!(go_time(&z).as_deref(), Some("0001-01-01T00:00:00Z"));
        // time.Date(2024, 3, 5, 7, 8, 9, 0, time.FixedZone("x", -5*3600-30*60))
        let o = [1, 0, 0, 0, 14, 221, 121, 9, 49, 0, 0, 0, 0, 254, 182];
        assert_eq!(go_time(&o).as_deref(), Some("2024-03-05T07:08:09-05:30"));
    }

    #[test]
    fn times_and_empty_structs_in_gob() {
        // gob of struct{ Created time.Time; Ports map[string]struct{} }.
        let b = b"&\x7f\x03\x01\x01\x01M\x01\xff\x80\x00\x01\x02\x01\x07Created\x01\xff\x82\x00\x01\x05Ports\x01\xff\x86\x00\x00\x00\x10\xff\x81\x05\x01\x01\x04Time\x01\xff\x82\x00\x00\x00%\xff\x85\x04\x01\x01\x14map[string]struct {}\x01\xff\x86\x00\x01\x0c\x01\xff\x84\x00\x00\n\xff\x83\x03\x01\x02\xff\x84\x00\x00\x00\x1e\xff\x80\x01\x0f\x01\x00\x00\x00\x0e\xddx\xbb\xd9\x07'\x0e\x00\xff\xff\x01\x01\x0680/tcp\x00\x00";
        let v = gob::decode(b).unwrap();
        assert_eq!(
            to_json(&v),
            serde_json::json!({"Created": "2024-03-05T07:08:09.12Z", "Ports": {"80/tcp": {}}})
        );
    }

    #[test]
    fn the_index_is_bounded_in_nodes_paths_and_layers() {
        // A v1 archive the Go clip wrote (tests/goclip-gen), 4 nodes.
        let a = parse(include_bytes!("../../fuzz/corpus/goclip/v1")).unwrap();
        let n = a.nodes.len() as u64;
        let index = &include_bytes!("../../fuzz/corpus/goclip/v1")[a.index_pos as usize..];
        assert_eq!(decode_index_with(index, n).unwrap().len() as u64, n);
        let e = decode_index_with(index, n - 1).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "index: at least {n} nodes, more than the limit of {} (limits::MAX_IMAGE_ENTRIES)",
                n - 1
            )
        );
        // Paths and targets, checked as each node is decoded.
        let mut node = Value::Struct(vec![
            ("NodeType".into(), Value::Bytes(b"symlink".to_vec())),
            ("Path".into(), Value::Bytes(b"/l".to_vec())),
            ("Target".into(), Value::Bytes(b"a/".repeat(1100))),
        ]);
        let e = node_of(&node, 7).unwrap_err().to_string();
        assert_eq!(
            e,
            "index node /l: target: 1100 components, more than the limit of 1024 (limits::MAX_PATH_DEPTH)"
        );
        if let Value::Struct(fs) = &mut node {
            fs[1].1 = Value::Bytes([b"/".as_slice(), &[b'p'; 5000]].concat());
        }
        let e = node_of(&node, 7).unwrap_err().to_string();
        assert_eq!(
            e,
            "index node 7: path: 5001 bytes, more than the limit of 4096 (limits::MAX_PATH_LEN)"
        );
    }

    #[test]
    fn parse_checks_the_header_against_the_bytes() {
        assert!(parse(b"").is_err());
        let mut h = vec![0u8; HEADER_SIZE];
        h[..9].copy_from_slice(&START_BYTES);
        h[9] = FORMAT_VERSION;
        // An index of 10 bytes at 54: past the end of a 54-byte buffer.
        h[10..18].copy_from_slice(&10i64.to_le_bytes());
        h[18..26].copy_from_slice(&54i64.to_le_bytes());
        let e = parse(&h).unwrap_err().to_string();
        assert!(e.contains("past the end"), "{e}");
        // Present but not gob.
        h.extend_from_slice(&[0xff; 10]);
        assert!(parse(&h).is_err());
    }
}
