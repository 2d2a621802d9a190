//! The C ABI's surface: the checked-in header `include/clip.h` is exactly what
//! cbindgen generates from `src/ffi/` (build.rs writes it to `$OUT_DIR`; `make
//! header`, i.e. CLIP_UPDATE_HEADER=1, refreshes the checked-in copy) and its version
//! macros match `Cargo.toml`; the shared library has the SONAME `libclip.so.0` and
//! exports exactly the `clip_*` functions the header declares, nothing else.
//! (`tests/c/` exercises the functions themselves.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/clip.h"));

fn checked_in_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include/clip.h")
}

#[test]
fn header_is_up_to_date() {
    let path = checked_in_path();
    if std::env::var_os("CLIP_UPDATE_HEADER").is_some() {
        std::fs::write(&path, GENERATED).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make header`)", path.display()));
    if checked_in != GENERATED {
        let first = checked_in
            .lines()
            .zip(GENERATED.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(checked_in.lines().count().min(GENERATED.lines().count()));
        panic!(
            "{} differs from the header generated from src/ffi/, first at line {}:\n  checked in: {:?}\n  generated:  {:?}\nrun `make header` and commit include/clip.h",
            path.display(),
            first + 1,
            checked_in.lines().nth(first).unwrap_or("<end of file>"),
            GENERATED.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn header_version_matches_the_crate() {
    let want = [
        (
            "CLIP_VERSION_MAJOR",
            env!("CARGO_PKG_VERSION_MAJOR").to_string(),
        ),
        (
            "CLIP_VERSION_MINOR",
            env!("CARGO_PKG_VERSION_MINOR").to_string(),
        ),
        (
            "CLIP_VERSION_PATCH",
            env!("CARGO_PKG_VERSION_PATCH").to_string(),
        ),
        (
            "CLIP_VERSION_STRING",
            format!("\"{}\"", env!("CARGO_PKG_VERSION")),
        ),
    ];
    let header = std::fs::read_to_string(checked_in_path()).unwrap();
    for (name, value) in want {
        let line = format!("#define {name} {value}");
        assert!(
            header.lines().any(|l| l.trim() == line),
            "include/clip.h lacks `{line}`"
        );
    }
    assert_eq!(clip::VERSION, env!("CARGO_PKG_VERSION"));
}

#[test]
fn header_has_guard_and_only_clip_names() {
    let header = std::fs::read_to_string(checked_in_path()).unwrap();
    assert!(header.contains("#ifndef CLIP_H\n#define CLIP_H"));
    for l in header.lines() {
        if let Some(rest) = l.strip_prefix("#define ") {
            assert!(
                rest.starts_with("CLIP_"),
                "macro without the CLIP_ prefix: {l}"
            );
        }
        if let Some(name) = l.strip_prefix("typedef struct ") {
            assert!(
                name.starts_with("clip_"),
                "type without the clip_ prefix: {l}"
            );
        }
    }
}

/// The cdylib built with this test binary: `target/<profile>/deps/libclip.so`, next
/// to it (cargo builds every crate type of the library for the tests, but copies
/// it up to `target/<profile>/` only on `cargo build`).
fn shared_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let so = exe.with_file_name("libclip.so");
    assert!(so.is_file(), "{} is missing", so.display());
    so
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (make deps installs binutils)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn shared_library_soname() {
    let dynamic = run(Command::new("readelf").arg("-d").arg(shared_library()));
    assert!(
        dynamic
            .lines()
            .any(|l| l.contains("(SONAME)") && l.contains("[libclip.so.0]")),
        "no SONAME libclip.so.0 in:\n{dynamic}"
    );
}

#[test]
fn shared_library_exports_only_the_header_functions() {
    let nm = run(Command::new("nm")
        .args(["-D", "--defined-only", "--format=posix"])
        .arg(shared_library()));
    let exported: BTreeSet<&str> = nm
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let header = std::fs::read_to_string(checked_in_path()).unwrap();
    let declared: BTreeSet<&str> = header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("typedef") && l.contains("clip_"))
        .filter_map(|l| {
            let name = l.split('(').next()?.rsplit([' ', '*']).next()?;
            (l.contains('(') && name.starts_with("clip_")).then_some(name)
        })
        .collect();
    assert!(
        declared.len() > 20,
        "parsed too few declarations: {declared:?}"
    );
    let stray: Vec<_> = exported.difference(&declared).collect();
    assert!(stray.is_empty(), "exported but not in clip.h: {stray:?}");
    let missing: Vec<_> = declared.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "in clip.h but not exported: {missing:?}"
    );
}
