//! `WWW-Authenticate` challenges (`clip::registry::auth::parse_challenge`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let _ = clip::registry::auth::parse_challenge(s);
});
