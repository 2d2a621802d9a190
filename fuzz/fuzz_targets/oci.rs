//! Manifests, indexes and image configs (`clip::oci::parse_manifest_or_index`,
//! `clip::oci::parse_config`) on arbitrary bytes; byte 0 picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(clip::oci::ManifestKind::Index(descs)) =
            clip::oci::parse_manifest_or_index(json, "manifest")
        {
            let _ = clip::oci::select_platform(&descs, &clip::oci::Platform::host(), "index");
        }
    } else {
        let _ = clip::oci::parse_config(json, "config");
    }
});
