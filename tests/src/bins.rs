//! Where the binaries under test are: next to the test executable's directory
//! (`target/<profile>/deps/e2e-…` → `target/<profile>/<bin>`).

use std::path::PathBuf;

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
    path
}
