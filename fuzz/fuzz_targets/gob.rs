//! The strict gob decoder of Go-clip archives (`clip::goclip::gob`), as one value
//! and value by value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = clip::goclip::gob::decode(data);
    let mut n = 0usize;
    let each = clip::goclip::gob::decode_each(data, &mut |_| {
        n += 1;
        Ok(())
    });
    let _ = (whole, each);
});
