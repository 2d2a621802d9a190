//! Running the `clipctl` binary built for this test run.

use std::path::Path;
use std::process::{Command, Output};

/// A `clipctl` command (the binary cargo built for these tests).
pub fn clipctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clipctl"))
}

/// A fresh temporary directory named `<prefix>XXXXXX`.
pub fn tmp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

/// Runs `cmd`, asserting success; returns its output.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn clipctl");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Runs a command expected to fail; returns its stderr.
pub fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn clipctl");
    assert!(!out.status.success(), "{cmd:?} unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `clipctl index-layout --layout LAYOUT --tag TAG --out OUT`, asserting success.
pub fn index(layout: &Path, tag: &str, out: &Path) {
    ok(clipctl()
        .args(["index-layout", "--layout"])
        .arg(layout)
        .args(["--tag", tag, "--out"])
        .arg(out));
}
