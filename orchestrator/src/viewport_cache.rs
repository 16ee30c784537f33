//! A console's copies of the config viewports it has asked for, kept between runs so that
//! `view --name` costs one call: the copy is sent with `viewConfigured`, and the orchestrator computes
//! it only if its config still holds that very definition (see `viewConfigured` in
//! `schema/orchestrator.capnp`). A copy is a hint, never trusted: a stale one is refused and
//! asked for again, and a file that cannot be read is ignored.
//!
//! Copies live under `$XDG_CACHE_HOME/os-orchestration/viewports/<orchestrator key>/` (or
//! `~/.cache/...`), one file per viewport, named by the hex of its name and holding its
//! `Viewport` as a Cap'n Proto message.

use std::path::{Path, PathBuf};

use capnp::message::{Builder, ReaderOptions};
use psp_core::PublicKey;
use psp_schema::orchestrator_capnp::viewport;

use crate::viewports::NamedViewport;
use crate::wire::{read_viewport, write_viewport};

/// Largest copy read back: a config viewport is a few hundred bytes.
const MAX_COPY_BYTES: u64 = 1 << 20;
/// Longest name given a file (its hex is twice as long).
const MAX_NAME_BYTES: usize = 100;

/// The copies of one orchestrator's viewports.
#[derive(Debug, Clone)]
pub struct ViewportCache {
    dir: PathBuf,
}

impl ViewportCache {
    /// The copies of `orchestrator`'s viewports in the user's cache directory, or `None` when
    /// neither `XDG_CACHE_HOME` nor `HOME` is set.
    pub fn for_user(orchestrator: &PublicKey) -> Option<ViewportCache> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|d| !d.is_empty())
                    .map(|home| Path::new(&home).join(".cache"))
            })?;
        let key = orchestrator.to_string().replace(':', "-");
        Some(ViewportCache::at(
            base.join("os-orchestration").join("viewports").join(key),
        ))
    }

    /// The copies kept in `dir`.
    pub fn at(dir: PathBuf) -> ViewportCache {
        ViewportCache { dir }
    }

    fn file(&self, name: &str) -> Option<PathBuf> {
        (!name.is_empty() && name.len() <= MAX_NAME_BYTES)
            .then(|| self.dir.join(format!("{}.viewport", hex::encode(name))))
    }

    /// The copy of viewport `name`, if one was kept and reads back as that viewport.
    pub fn get(&self, name: &str) -> Option<NamedViewport> {
        let file = self.file(name)?;
        let bytes = read_bounded(&file)?;
        let mut options = ReaderOptions::new();
        options.traversal_limit_in_words(Some(MAX_COPY_BYTES as usize / 8));
        let message =
            capnp::serialize::read_message_from_flat_slice(&mut &bytes[..], options).ok()?;
        let copy = message
            .get_root::<viewport::Reader<'_>>()
            .and_then(read_viewport)
            .ok()?;
        (copy.name == name).then_some(copy)
    }

    /// Keeps a copy of `viewport` (as the orchestrator just gave it). Failing to is not an
    /// error: the next `view --name` asks for it again.
    pub fn put(&self, viewport: &NamedViewport) {
        let Some(file) = self.file(&viewport.name) else {
            return;
        };
        let mut message = Builder::new_default();
        write_viewport(viewport, message.init_root());
        let bytes = capnp::serialize::write_message_to_words(&message);
        if let Err(e) = self.replace(&file, &bytes) {
            tracing::debug!("could not keep a copy of viewport {:?}: {e}", viewport.name);
        }
    }

    /// Writes `bytes` aside and renames them over `file`, so a concurrent reader sees the old
    /// copy or the new one. The folder is the user's alone (0700, as a tenant's viewports are
    /// not for other local users), and the file aside is created new (0600): a link placed where
    /// it is to be written is refused, never followed.
    fn replace(&self, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let aside = file.with_extension(format!("{}-{nanos}.tmp", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
            .and_then(|mut f| f.write_all(bytes))
            .and_then(|()| std::fs::rename(&aside, file));
        if written.is_err() {
            let _ = std::fs::remove_file(&aside);
        }
        written
    }

    /// Drops the copy of viewport `name` (the orchestrator refused it as stale).
    pub fn forget(&self, name: &str) {
        if let Some(file) = self.file(name) {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// The file's bytes, if it is a regular file (not a link, a pipe or a device: opening those could
/// read another file or block) no larger than a copy can be.
fn read_bounded(file: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(file)
        .ok()?;
    if !opened.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    opened
        .take(MAX_COPY_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= MAX_COPY_BYTES).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::viewports::Viewport;
    use psp_core::query::{Aggregate, Query};

    fn rollup(name: &str) -> NamedViewport {
        NamedViewport {
            name: name.into(),
            viewport: Viewport::Rollup {
                query: Query::aggregate("statements", [], [Aggregate::count()]),
                labels: vec!["region".into()],
            },
        }
    }

    #[test]
    fn a_copy_reads_back_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ViewportCache::at(dir.path().join("copies"));
        assert_eq!(cache.get("by-region"), None);
        cache.put(&rollup("by-region"));
        assert_eq!(cache.get("by-region"), Some(rollup("by-region")));
        // A name with a path in it is only a file name's hex.
        cache.put(&rollup("../../etc/passwd"));
        assert_eq!(
            cache.get("../../etc/passwd"),
            Some(rollup("../../etc/passwd"))
        );
        let mut kept: Vec<String> = std::fs::read_dir(dir.path().join("copies"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                format!("{}.viewport", hex::encode("../../etc/passwd")),
                format!("{}.viewport", hex::encode("by-region")),
            ]
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // The folder and its copies are the user's alone.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("copies")), 0o700);
        assert_eq!(mode(&cache.file("by-region").unwrap()), 0o600);
        cache.forget("by-region");
        assert_eq!(cache.get("by-region"), None);
    }

    #[test]
    fn a_damaged_or_misplaced_copy_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ViewportCache::at(dir.path().to_path_buf());
        cache.put(&rollup("a"));
        let file = cache.file("a").unwrap();
        // Cut short, garbage, empty, oversized: each reads as no copy.
        let whole = std::fs::read(&file).unwrap();
        for damaged in [
            whole[..whole.len() / 2].to_vec(),
            vec![0xff; 64],
            Vec::new(),
            vec![0; MAX_COPY_BYTES as usize + 8],
        ] {
            std::fs::write(&file, damaged).unwrap();
            assert_eq!(cache.get("a"), None);
        }
        // Another viewport's copy under this name's file is not this viewport.
        cache.put(&rollup("b"));
        std::fs::copy(cache.file("b").unwrap(), &file).unwrap();
        assert_eq!(cache.get("a"), None);
        // A link or a pipe where a copy should be is not read (nor waited on).
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(cache.file("b").unwrap(), &file).unwrap();
        assert_eq!(cache.get("a"), None);
        std::fs::remove_file(&file).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&file).status();
        assert!(made.unwrap().success());
        assert_eq!(cache.get("a"), None);
        // A name too long for a file is never kept.
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        cache.put(&rollup(&long));
        assert_eq!(cache.get(&long), None);
    }
}
