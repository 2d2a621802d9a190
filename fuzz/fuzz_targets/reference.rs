//! Image references (`clip::reference::Reference::parse`) and platforms
//! (`clip::oci::Platform::parse`): a registry reference prints as a string that
//! parses back to itself.
#![no_main]

use clip::reference::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(Reference::Registry(r)) = Reference::parse(s) {
        let _ = r.reference();
        let again = Reference::parse(&r.to_string())
            .unwrap_or_else(|e| panic!("{r} (from {s:?}) does not parse again: {e}"));
        assert_eq!(again, Reference::Registry(r), "from {s:?}");
    }
    if let Ok(p) = clip::oci::Platform::parse(s) {
        let again = clip::oci::Platform::parse(&p.to_string())
            .unwrap_or_else(|e| panic!("{p} (from {s:?}) does not parse again: {e}"));
        assert_eq!(again, p, "from {s:?}");
    }
});
