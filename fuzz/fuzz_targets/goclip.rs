//! The Go-clip archive reader (`clip::goclip::parse`): header, gob index, storage
//! info and the consistency checks; for an accepted archive, its JSON description
//! and the merged tree built from it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = clip::goclip::parse(data) {
        let _ = a.info_json();
        let _ = a.storage_kind();
        let _ = a.tree();
    }
});
