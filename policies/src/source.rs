//! The only file-system access in this crate: reading policy and case files.

use std::path::{Path, PathBuf};

use crate::{LoadError, PolicyFile};

/// Reads every `*.cedar` file directly in `dir` (not in subdirectories),
/// sorted by file name. Hidden files (names starting with `.`, such as
/// editor swap files) are skipped.
///
/// # Errors
///
/// [`LoadError::Io`] if the directory or a file cannot be read (including
/// a file that is not UTF-8), [`LoadError::NoPolicyFiles`] if the
/// directory holds no `*.cedar` file.
pub fn read_policy_dir(dir: &Path) -> Result<Vec<PolicyFile>, LoadError> {
    let paths = list_dir(dir, "cedar")?;
    if paths.is_empty() {
        return Err(LoadError::NoPolicyFiles { dir: dir.to_path_buf() });
    }
    paths
        .into_iter()
        .map(|(name, path)| {
            let text = read_text(&path)?;
            Ok(PolicyFile { name, text })
        })
        .collect()
}

/// Lists the regular (or symlinked), non-hidden files in `dir` whose names end in
/// `.<extension>`, as `(file name, path)` sorted by name.
pub(crate) fn list_dir(dir: &Path, extension: &str) -> Result<Vec<(String, PathBuf)>, LoadError> {
    let io_error = |source| LoadError::Io { path: dir.to_path_buf(), source };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let wanted = !name.starts_with('.') && path.extension().and_then(|e| e.to_str()) == Some(extension);
        // metadata() follows symlinks: Kubernetes mounts ConfigMap files as links.
        if wanted && std::fs::metadata(&path).map_err(|source| LoadError::Io { path: path.clone(), source })?.is_file()
        {
            found.push((name.to_owned(), path));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads a whole UTF-8 file.
pub(crate) fn read_text(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })
}
