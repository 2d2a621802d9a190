//! The C ABI entry points that parse input: `clip_archive_open` (a `.clip` or a
//! Go-clip archive, written to a scratch file) with `clip_archive_info` and
//! `clip_archive_close`, and `clip_set_log_level`. Every call must answer a code,
//! never `CLIP_EPANIC`.
#![no_main]

use std::ffi::CString;
use std::ptr;
use std::sync::OnceLock;

use clip::ffi::*;
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static (tempfile::TempDir, CString) {
    static S: OnceLock<(tempfile::TempDir, CString)> = OnceLock::new();
    S.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = CString::new(
            d.path()
                .join("a.clip")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        (d, p)
    })
}

fuzz_target!(|data: &[u8]| {
    let (dir, path) = scratch();
    std::fs::write(dir.path().join("a.clip"), data).unwrap();
    let mut a = ptr::null_mut();
    let rc = clip_archive_open(&mut a, path.as_ptr());
    assert_ne!(rc, CLIP_EPANIC, "clip_archive_open panicked");
    if rc == CLIP_OK {
        let mut s = ptr::null_mut();
        assert_eq!(clip_archive_info(&mut s, a), CLIP_OK);
        clip_string_free(s);
    }
    clip_archive_close(a);

    // A log level: the first line of the input, up to a NUL.
    let line = data.split(|&b| b == b'\n' || b == 0).next().unwrap_or(&[]);
    if line.len() <= 32 {
        let level = CString::new(line).unwrap();
        assert_ne!(clip_set_log_level(level.as_ptr()), CLIP_EPANIC);
        assert_eq!(clip_set_log_level(c"off".as_ptr()), CLIP_OK);
    }
});
