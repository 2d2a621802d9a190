//! `Content-Range` values of 206 answers
//! (`clip::registry::client::content_range_start`): a value it accepts starts
//! with `bytes <first>`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Some(first) = clip::registry::client::content_range_start(s) {
        assert!(s.starts_with("bytes "), "{s:?}");
        let _ = first;
    }
});
