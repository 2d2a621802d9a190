//! The checked-in C header `include/clip.h` is exactly what cbindgen generates from
//! `src/ffi.rs` (build.rs writes it to `$OUT_DIR`), and its version macros match
//! `Cargo.toml`. `make header` (CLIP_UPDATE_HEADER=1) refreshes the checked-in copy.

use std::path::Path;

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
            "{} differs from the header generated from src/ffi.rs, first at line {}:\n  checked in: {:?}\n  generated:  {:?}\nrun `make header` and commit include/clip.h",
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
