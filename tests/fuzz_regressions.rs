//! Inputs the fuzz targets (fuzz/, `make fuzz`) found a crash, a hang or an
//! out-of-memory with, kept in tests/fuzz-regressions/ and named
//! `<target>-<what>`: each is fed to the parser of its target, which must answer
//! (Ok or an error) without a panic and without a single allocation larger than
//! [`MAX_ALLOC`] (a hostile header's length is never allocated up front).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest single allocation a regression input may cause.
const MAX_ALLOC: usize = 64 << 20;

struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only recording the sizes asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs the parser of fuzz target `target` on `data`; a description of the answer.
fn run(target: &str, data: &[u8]) -> String {
    match target {
        "archive" => format!("{:?}", clip::archive::parse(data).map(|_| ())),
        "goclip" => format!("{:?}", clip::goclip::parse(data).map(|_| ())),
        other => panic!("no runner for fuzz target {other:?}"),
    }
}

#[test]
fn fuzz_regressions_answer_without_panic_or_huge_allocation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        let data = std::fs::read(dir.join(&name)).unwrap();
        // Targets are named with underscores, inputs' descriptions with dashes.
        let (target, _) = name.split_once('-').expect("<target>-<what>");
        LARGEST.store(0, Ordering::Relaxed);
        let answer = run(target, &data);
        let largest = LARGEST.load(Ordering::Relaxed);
        eprintln!("{name}: {answer} (largest allocation {largest} bytes)");
        assert!(
            largest <= MAX_ALLOC,
            "{name}: an allocation of {largest} bytes"
        );
    }
}
