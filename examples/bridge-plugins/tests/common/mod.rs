//! The binaries the process tests run.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// `framex-pair-bridge`: the stock bridge command line with this crate's plugins linked in.
pub fn bridge_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_framex-pair-bridge"))
}

/// `service-framework` beside the bridge binary; it belongs to another package, so it is
/// built here (a no-op when up to date).
pub fn service_framework() -> PathBuf {
    let sf = bridge_binary().with_file_name("service-framework");
    let bin_dir = sf.parent().expect("binary folder");
    let mut build = std::process::Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "service-framework",
            "--bin",
            "service-framework",
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
        .arg("--target-dir")
        .arg(bin_dir.parent().expect("target folder"));
    if bin_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        build.arg("--release");
    }
    let built = build.stdin(Stdio::null()).status().expect("cargo runs");
    assert!(
        built.success() && sf.is_file(),
        "building {} failed",
        sf.display()
    );
    sf
}
