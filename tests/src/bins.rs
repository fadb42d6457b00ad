//! Where the binaries under test are: next to the test executable's directory
//! (`target/<profile>/deps/e2e-…` → `target/<profile>/<bin>`).

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::SystemTime;

/// Path of a workspace binary built by `cargo build --workspace --bins`.
///
/// # Panics
/// If the binary is missing: run `scripts/test`, which builds it first.
#[must_use]
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("the test executable has a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} does not exist: build the binaries first with `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    static STALE_CHECK: Once = Once::new();
    STALE_CHECK.call_once(|| warn_if_stale(&dir));
    path
}

/// `cargo test` rebuilds the libraries but not the binaries: a binary older
/// than the library of its own crate (rebuilt whenever the crate or one of
/// its Palisade dependencies changes) was most likely not rebuilt, and a
/// failure would then be about old code. Printed with the test's output.
fn warn_if_stale(dir: &Path) {
    for (bin, lib) in [
        ("palisade-broker", "libpalisade_broker-"),
        ("palisade-connector", "libpalisade_connector-"),
        ("palisade", "libpalisade_client-"),
    ] {
        let Some(newest_lib) = newest_rlib(&dir.join("deps"), lib) else { continue };
        let built = std::fs::metadata(dir.join(bin)).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        if built < newest_lib {
            eprintln!(
                "warning: {bin} is older than its library: run `cargo build --workspace --bins` \
                 (scripts/test does) or the tests run stale binaries"
            );
        }
    }
}

/// When the newest `<prefix>*.rlib` in `deps` was written.
fn newest_rlib(deps: &Path, prefix: &str) -> Option<SystemTime> {
    std::fs::read_dir(deps)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix) && name.ends_with(".rlib")
        })
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}
