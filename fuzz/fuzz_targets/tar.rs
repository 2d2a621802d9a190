//! The push-based tar parser (`clip::tar::TarParser`) fed in uneven chunks (byte
//! 0 picks the chunk size): the entries and the verdict must not depend on how the
//! stream was cut.
#![no_main]

use clip::tar::{Entry, TarError, TarParser};
use libfuzzer_sys::fuzz_target;

fn run(data: &[u8], chunk: usize) -> (Vec<Entry>, Result<(), TarError>) {
    let mut p = TarParser::new();
    let mut entries = Vec::new();
    let mut verdict = Ok(());
    for c in data.chunks(chunk) {
        if let Err(e) = p.push(c, &mut |e| -> Result<(), TarError> {
            entries.push(e);
            Ok(())
        }) {
            verdict = Err(e);
            break;
        }
    }
    if verdict.is_ok() {
        verdict = p.finish();
    }
    (entries, verdict)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = run(rest, rest.len().max(1));
    let cut = run(rest, 1 + first as usize * 3);
    assert_eq!(whole.0, cut.0, "entries depend on chunking");
    assert_eq!(whole.1, cut.1, "verdict depends on chunking");
});
