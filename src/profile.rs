//! Startup profiles: which parts of which layers a workload read, in the order it
//! first read them and when, so that a later mount of the same image can fetch them
//! ahead of the workload, many at once, instead of one cold round trip after
//! another.
//!
//! A profile names layer bytes, not span numbers: each entry is a range of a
//! layer's uncompressed stream (the span the mount read), keyed by the layer's
//! blob digest. It therefore stays valid for another archive of the same layers
//! indexed with another span size, and entries for layers an archive does not
//! have are simply skipped. A profile is recorded by a mount
//! ([`crate::mount::MountOptions::record_profile`]), kept in a file
//! ([`Profile::write`]) or embedded in the archive (section PROFILE, see
//! docs/FORMAT.md), and replayed at mount ([`crate::store::Store::replay`]).
//!
//! The file is JSON: `{"clip_profile": 1, "spans": [{"layer": "sha256:…",
//! "offset": 0, "length": 2097152, "at_ms": 12}, …]}`. Readers refuse another
//! version and entries that make no sense; a mount then ignores the profile with a
//! warning and works as without one.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::archive::Archive;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

/// The profile format version this build reads and writes.
pub const PROFILE_VERSION: u32 = 1;

/// Most entries a profile may hold (a 2 MiB-span profile of this size covers
/// 2 TiB of layers).
pub const MAX_ENTRIES: usize = 1 << 20;

/// Largest profile file a reader accepts.
pub const MAX_PROFILE_BYTES: u64 = 128 << 20;

/// A recorded start: layer ranges in the order the workload first read them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Format version ([`PROFILE_VERSION`]).
    pub clip_profile: u32,
    /// The ranges, in first-read order.
    pub spans: Vec<ProfileSpan>,
}

/// One range of a layer the workload read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSpan {
    /// The layer's blob digest.
    pub layer: Digest,
    /// Start of the range in the layer's uncompressed stream.
    pub offset: u64,
    /// Length of the range (more than 0).
    pub length: u64,
    /// When the workload first read it, in milliseconds since the mount began.
    pub at_ms: u64,
}

impl Profile {
    /// Parses and checks a profile; `what` names it in errors (a path, or "the
    /// archive's embedded profile").
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Profile> {
        let bad = |m: String| Error::format(format!("profile {what}: {m}"));
        if bytes.len() as u64 > MAX_PROFILE_BYTES {
            return Err(bad(format!(
                "{} bytes is more than the {MAX_PROFILE_BYTES} a profile may have",
                bytes.len()
            )));
        }
        // The version first, so that a newer profile says so rather than failing
        // on a field it added.
        #[derive(Deserialize)]
        struct Version {
            clip_profile: Option<u32>,
        }
        let v: Version = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a clip profile (JSON: {e})")))?;
        match v.clip_profile {
            Some(PROFILE_VERSION) => {}
            Some(n) => {
                return Err(bad(format!(
                    "profile version {n} (this build reads version {PROFILE_VERSION})"
                )));
            }
            None => return Err(bad("no \"clip_profile\" version field".into())),
        }
        let p: Profile = serde_json::from_slice(bytes).map_err(|e| bad(format!("{e}")))?;
        if p.spans.len() > MAX_ENTRIES {
            return Err(bad(format!(
                "{} entries is more than the {MAX_ENTRIES} a profile may have",
                p.spans.len()
            )));
        }
        for (i, s) in p.spans.iter().enumerate() {
            if s.length == 0 || s.offset.checked_add(s.length).is_none() {
                return Err(bad(format!(
                    "entry {i}: range {}+{} of layer {} is empty or overflows",
                    s.offset, s.length, s.layer
                )));
            }
        }
        Ok(p)
    }

    /// The profile as JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a profile encodes")
    }

    /// Reads and checks the profile file at `path`.
    pub fn read(path: &Path) -> Result<Profile> {
        use std::io::Read;
        // At most one byte past the limit, however large the file (or a pipe):
        // from_bytes then names the limit.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PROFILE_BYTES + 1).read_to_end(&mut bytes))
            .ctx("reading profile", path)?;
        Profile::from_bytes(&bytes, &path.display().to_string())
    }

    /// Writes the profile to `path` atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".clip-profile-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .ctx("creating a temporary file in", dir)?;
        use std::io::Write;
        tmp.write_all(&self.to_bytes()).ctx("writing", tmp.path())?;
        tmp.as_file().sync_all().ctx("syncing", tmp.path())?;
        tmp.persist(path)
            .map_err(|e| Error::io("renaming into", path, e.error))?;
        Ok(())
    }

    /// The spans of `archive` to fetch for this profile, in the profile's order,
    /// each once.
    pub fn plan(&self, archive: &Archive) -> Plan {
        let mut plan = Plan::default();
        let mut seen = HashSet::new();
        for s in &self.spans {
            let Some(li) = archive.layers.iter().position(|l| l.digest == s.layer) else {
                plan.skipped += 1;
                continue;
            };
            let codec = &archive.layers[li].codec;
            // Checked again: a profile built in memory skipped from_bytes.
            let Some(end) = s
                .offset
                .checked_add(s.length)
                .filter(|&e| s.length > 0 && e <= codec.uncompressed_size)
            else {
                plan.skipped += 1;
                continue;
            };
            let (Some(first), Some(last)) = (codec.span_at(s.offset), codec.span_at(end - 1))
            else {
                plan.skipped += 1;
                continue;
            };
            for k in first..=last {
                if seen.insert((li, k)) {
                    plan.spans.push((li, k));
                }
            }
        }
        plan
    }
}

/// What a profile asks of one archive ([`Profile::plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// `(layer, span)` indexes, in the order to fetch them.
    pub spans: Vec<(usize, usize)>,
    /// Entries that name a layer the archive lacks, or bytes past its end.
    pub skipped: usize,
}

impl Plan {
    /// A warning about a profile (`what` names it) that does not fit the
    /// archive, if it does not; `None` if every entry fits.
    pub fn warning(&self, what: &str, entries: usize) -> Option<String> {
        if self.skipped == 0 {
            return None;
        }
        if self.spans.is_empty() {
            return Some(format!(
                "profile {what}: none of its {entries} entries is a range of this archive's layers (a profile of another image?): ignored"
            ));
        }
        Some(format!(
            "profile {what}: {} of its {entries} entries are not ranges of this archive's layers: they are skipped",
            self.skipped
        ))
    }
}

/// Records the spans a mount's reads touch, each the first time.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    seen: HashSet<(usize, usize)>,
    spans: Vec<(usize, usize, u64)>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            seen: HashSet::new(),
            spans: Vec::new(),
        }
    }

    /// Notes a read of span `k` of `layer`; only the first read of each counts.
    pub fn note(&mut self, layer: usize, k: usize) {
        if self.spans.len() < MAX_ENTRIES && self.seen.insert((layer, k)) {
            let at = self.started.elapsed().as_millis() as u64;
            self.spans.push((layer, k, at));
        }
    }

    /// The profile of what was noted, in the terms of `archive`'s layers.
    pub fn profile(&self, archive: &Archive) -> Profile {
        let spans = self
            .spans
            .iter()
            .map(|&(l, k, at_ms)| {
                let layer = &archive.layers[l];
                let (s, e) = layer.codec.span_range(k);
                ProfileSpan {
                    layer: layer.digest,
                    offset: s,
                    length: e - s,
                    at_ms,
                }
            })
            .collect();
        Profile {
            clip_profile: PROFILE_VERSION,
            spans,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let e = Profile::from_bytes(b"garbage", "p.json").unwrap_err();
        assert!(
            e.to_string().contains("profile p.json: not a clip profile"),
            "{e}"
        );
        let e = Profile::from_bytes(br#"{"clip_profile": 9, "spans": []}"#, "p").unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
        let e = Profile::from_bytes(br#"{"spans": []}"#, "p").unwrap_err();
        assert!(e.to_string().contains("version field"), "{e}");
        let d = format!("sha256:{}", "ab".repeat(32));
        let zero = format!(
            r#"{{"clip_profile": 1, "spans": [{{"layer": "{d}", "offset": 5, "length": 0, "at_ms": 0}}]}}"#
        );
        let e = Profile::from_bytes(zero.as_bytes(), "p").unwrap_err();
        assert!(e.to_string().contains("entry 0"), "{e}");
        let ok = format!(
            r#"{{"clip_profile": 1, "spans": [{{"layer": "{d}", "offset": 5, "length": 7, "at_ms": 3}}]}}"#
        );
        let p = Profile::from_bytes(ok.as_bytes(), "p").unwrap();
        assert_eq!(Profile::from_bytes(&p.to_bytes(), "p").unwrap(), p);
    }
}
