//! Build script: gives the shared library its SONAME so a worker image can carry
//! `libclip.so.0`, and generates the C header from `src/ffi/` into
//! `$OUT_DIR/clip.h` (`tests/header.rs` checks it equals the checked-in
//! `include/clip.h`; `make header` refreshes that).
use std::path::PathBuf;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libclip.so.0");
    // Only clip_* is exported: dependencies with C APIs of their own (crc-fast,
    // through object_store) would otherwise export theirs from libclip.so too.
    // Their code comes from rlib archives, whose symbols this hides.
    println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("clip.h");
    let mut config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("reading cbindgen.toml");
    let v = |k: &str| std::env::var(k).expect("cargo sets the package version");
    config.after_includes = Some(format!(
        "\n/** The version of this header (compare with clip_version() at run time). */\n\
         #define CLIP_VERSION_MAJOR {}\n#define CLIP_VERSION_MINOR {}\n#define CLIP_VERSION_PATCH {}\n\
         #define CLIP_VERSION_STRING \"{}\"\n",
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
        v("CARGO_PKG_VERSION"),
    ));
    // Only src/ffi/ is parsed: it is the whole C ABI, and no other module's
    // constants belong in the header. cbindgen follows the `mod` declarations of
    // src/ffi/mod.rs, in their order, which is the header's order.
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/ffi/mod.rs"))
        .generate()
        .expect("generating the C header from src/ffi/")
        .write_to_file(&out);
}
