//! Finding this build's binaries from an example (cargo gives examples no path to them).

use std::path::{Path, PathBuf};

/// The binary `name` of this build: beside the examples' folder (`target/<profile>/`).
pub(crate) fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .ok_or("cannot place this executable")?;
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build --release -p orchestrator -p psp-archive --bins --examples)",
            path.display()
        ))
    }
}
