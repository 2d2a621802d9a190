//! Build script: gives the shared library its SONAME so a worker image can carry
//! `libclip.so.0` (the C header is generated here too once the C ABI lands).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libclip.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
