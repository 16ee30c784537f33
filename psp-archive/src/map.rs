//! The archive's one `unsafe`: mapping its file into memory.

use std::fs::File;

use memmap2::{Mmap, MmapOptions};

/// A read-only map of the archive file's first `len` bytes (its committed prefix).
#[derive(Debug)]
pub(crate) struct ArchiveMap {
    /// `None` for an empty prefix: a zero-length mapping is not allowed.
    map: Option<Mmap>,
}

impl ArchiveMap {
    /// Maps the first `len` bytes of `file`.
    pub(crate) fn new(file: &File, len: u64) -> std::io::Result<Self> {
        if len == 0 {
            return Ok(Self { map: None });
        }
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        // SAFETY: a map is only sound while nobody changes the mapped bytes. `RecordArchive`
        // holds an exclusive lock on the file for as long as it is open (so no other well-behaved
        // process writes it), only ever appends beyond `len` (torn tails are cut at open, before
        // any map exists), and maps exactly the committed prefix, which is never rewritten. A
        // process that ignores the lock and rewrites the file could change bytes under us;
        // that is outside what this store defends against, as for any database file.
        let map = unsafe { MmapOptions::new().len(len).map(file)? };
        Ok(Self { map: Some(map) })
    }

    /// The mapped bytes (8-byte aligned: maps start on a page).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
