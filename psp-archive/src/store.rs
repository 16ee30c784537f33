//! `RecordArchive`: the reference Totebox store.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use capnp::message::ReaderOptions;
use psp_core::PublicKey;
use psp_core::archive::{Archive, CollectionStats, CommandError, CommandOutcome, CommandRequest};
use psp_core::query::{Accumulator, CollectionSchema, Plan, QueryError, ValueType};
use psp_schema::archive_capnp::log_entry;

use crate::config::{ArchiveConfig, Loaded};
use crate::index::BatchIndex;
use crate::log::{self, FrameRef, LogError};
use crate::map::ArchiveMap;
use crate::record::MappedRecord;

/// Collections of at most this many records are quick to scan (see `Archive::quick_to_scan`).
const QUICK_SCAN_RECORDS: u64 = 4_096;

/// Why an archive could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The file system refused.
    #[error("archive file {path}: {source}")]
    Io {
        /// The archive file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process has the archive open.
    #[error("archive file {0} is in use by another process")]
    Locked(PathBuf),
    /// The file is not an archive, or is damaged before its tail.
    #[error("archive file {path}: {source}")]
    Log {
        /// The archive file.
        path: PathBuf,
        /// What is wrong.
        source: LogError,
    },
    /// The file and the config disagree, or the config is invalid.
    #[error("archive {path}: {message}")]
    Invalid {
        /// The archive or config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Where a collection's special fields are.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) schema: usize,
    pub(crate) key: usize,
    pub(crate) period: Option<usize>,
}

/// An immutable view of the archive: what queries read. Appends build a new one.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) map: Arc<ArchiveMap>,
    pub(crate) collections: HashMap<String, Arc<CollectionView>>,
}

/// One collection's batches and stats.
#[derive(Debug, Clone, Default)]
pub(crate) struct CollectionView {
    pub(crate) batches: Vec<Arc<BatchIndex>>,
    pub(crate) records: u64,
    pub(crate) as_of: i64,
}

/// A command applied earlier, remembered (and rebuilt from the log) for replays.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) digest: Vec<u8>,
    pub(crate) message: String,
    pub(crate) detail: Vec<u8>,
    pub(crate) at: i64,
}

/// State only the single writer touches.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) file: File,
    /// Committed length: everything before it is on disk.
    pub(crate) len: u64,
    pub(crate) next_seq: u32,
    /// The last frame's payload CRC, which the next frame chains to.
    pub(crate) last_crc: u32,
    pub(crate) applied: HashMap<(PublicKey, Vec<u8>), Applied>,
    pub(crate) sealed: HashSet<(String, String)>,
    /// Set when a failed write could not be taken back: the file may then hold bytes past
    /// `len`, so nothing more is written until a restart's recovery has read the file again.
    pub(crate) broken: Option<String>,
}

/// What opening found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// Frames (appends, seals, snapshots) in the log.
    pub frames: usize,
    /// Bytes of a torn last append that were cut off (0 when the file ended cleanly).
    pub torn_bytes_cut: u64,
}

/// An append-only, memory-mapped archive of Cap'n Proto records (see the crate docs).
#[derive(Debug)]
pub struct RecordArchive {
    pub(crate) id: String,
    pub(crate) path: PathBuf,
    pub(crate) snapshots: PathBuf,
    pub(crate) schemas: Vec<CollectionSchema>,
    pub(crate) layouts: HashMap<String, Layout>,
    pub(crate) writer: Mutex<Writer>,
    pub(crate) view: RwLock<Arc<View>>,
    report: OpenReport,
}

/// Reader options for messages in the archive's own file. Every frame passed its checksum and was
/// written by this store, and a scan reads each record's fields several times, so the traversal
/// limit is off; nesting stays at the default. (Frames are opened with
/// `read_message_from_flat_slice`, which parses the segment table once per frame; the no-alloc
/// variant re-parses it on every pointer followed, which cost 40% of a scan.)
pub(crate) fn log_reader_options() -> ReaderOptions {
    *ReaderOptions::new().traversal_limit_in_words(None)
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64
}

impl RecordArchive {
    /// Opens the archive a config file describes (it must exist: see [`RecordArchive::create`]).
    pub fn open_config(config: &Path) -> Result<Self, ArchiveError> {
        Self::open(Self::load_config(config)?)
    }

    /// Creates the archive a config file describes (its file must not exist yet), then opens it.
    pub fn create_config(config: &Path) -> Result<Self, ArchiveError> {
        Self::create(Self::load_config(config)?)
    }

    fn load_config(config: &Path) -> Result<Loaded, ArchiveError> {
        ArchiveConfig::load(config).map_err(|e| ArchiveError::Invalid {
            path: config.to_owned(),
            message: e.to_string(),
        })
    }

    /// Creates a new archive file for a loaded config, then opens it. The file appears whole or
    /// not at all: it is written under another name (the header and the `created` entry naming
    /// the archive), synced, and renamed into place. Refuses if the file exists.
    pub fn create(loaded: Loaded) -> Result<Self, ArchiveError> {
        Self::create_at(loaded, now_micros())
    }

    /// [`RecordArchive::create`] with the creation time `at` (microseconds since the epoch):
    /// what a generator that must write the same bytes for the same seed uses.
    pub fn create_at(loaded: Loaded, at: i64) -> Result<Self, ArchiveError> {
        let path = loaded.file.clone();
        let io = |source| ArchiveError::Io {
            path: path.clone(),
            source,
        };
        if path.exists() {
            return Err(ArchiveError::Invalid {
                path: path.clone(),
                message: "already exists; an archive is created once".into(),
            });
        }
        let entry = crate::commands::created_entry(&loaded.config.id, at);
        let (frame, _) = log::encode_frame(0, log::first_link(), &entry);
        let creating = path.with_extension("creating");
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&creating)
                .map_err(io)?;
            file.write_all(&log::file_header()).map_err(io)?;
            file.write_all(&frame).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&creating, &path).map_err(io)?;
        sync_dir(&path).map_err(io)?;
        Self::open(loaded)
    }

    /// Opens the archive file of a loaded config: locks it, cuts a torn tail, maps it, and
    /// rebuilds the index, the idempotency ledger and the sealed periods from the log. A file
    /// that is missing, empty, cut to its header, or another archive's is an error naming it.
    pub fn open(loaded: Loaded) -> Result<Self, ArchiveError> {
        let path = loaded.file.clone();
        let io = |source| ArchiveError::Io {
            path: path.clone(),
            source,
        };
        let invalid = |message: String| ArchiveError::Invalid {
            path: path.clone(),
            message,
        };
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid(
                    "does not exist: check the config's `file`, or create the archive with \
                     `psp-totebox init` (or generate or import --create)"
                        .into(),
                ));
            }
            Err(e) => return Err(io(e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(ArchiveError::Locked(path)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(invalid(
                "is empty: it is not an archive (was it truncated, or never written?)".into(),
            ));
        }
        let scan = {
            let map = ArchiveMap::new(&file, len).map_err(io)?;
            log::scan(map.bytes()).map_err(|source| ArchiveError::Log {
                path: path.clone(),
                source,
            })?
        };
        if scan.frames.is_empty() {
            return Err(invalid(
                "holds no log, not even the entry that created it: it was cut to its header. \
                 Restore it from a snapshot"
                    .into(),
            ));
        }
        if scan.torn_bytes > 0 {
            // Only the torn last append goes; every earlier byte stays as it is.
            file.set_len(scan.valid_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let map = Arc::new(ArchiveMap::new(&file, scan.valid_len).map_err(io)?);

        let mut layouts = HashMap::new();
        for (i, (schema, config)) in loaded
            .schemas
            .iter()
            .zip(&loaded.config.collections)
            .enumerate()
        {
            layouts.insert(
                schema.name.clone(),
                Layout {
                    schema: i,
                    key: schema.key_index().expect("validated schemas have a key"),
                    period: config
                        .period
                        .as_ref()
                        .and_then(|p| schema.find(p).map(|(i, _)| i)),
                },
            );
        }
        let mut writer = Writer {
            file,
            len: scan.valid_len,
            next_seq: scan.frames.len() as u32,
            last_crc: scan.last_crc,
            applied: HashMap::new(),
            sealed: HashSet::new(),
            broken: None,
        };
        let owner = created_by(&map, scan.frames[0]).map_err(invalid)?;
        if owner != loaded.config.id {
            return Err(invalid(format!(
                "belongs to archive {owner:?}, not {:?}: check the config's `file`",
                loaded.config.id
            )));
        }
        let mut collections: HashMap<String, CollectionView> = HashMap::new();
        for frame in &scan.frames {
            let empty = |_: &str| CollectionView::default();
            absorb(
                &layouts,
                &map,
                *frame,
                &mut collections,
                &empty,
                &mut writer,
            )
            .map_err(|message| ArchiveError::Invalid {
                path: path.clone(),
                message,
            })?;
        }
        let view = View {
            map,
            collections: collections
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
        };
        Ok(Self {
            id: loaded.config.id.clone(),
            path,
            snapshots: loaded.snapshots,
            schemas: loaded.schemas,
            layouts,
            writer: Mutex::new(writer),
            view: RwLock::new(Arc::new(view)),
            report: OpenReport {
                frames: scan.frames.len(),
                torn_bytes_cut: scan.torn_bytes,
            },
        })
    }

    /// What opening found (frames read, torn bytes cut).
    pub fn open_report(&self) -> OpenReport {
        self.report
    }

    /// The archive file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the archive file that are committed.
    pub fn committed_len(&self) -> u64 {
        self.lock_writer().len
    }

    pub(crate) fn current_view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // The writer's fields are updated only after a frame is durable, so they stay consistent
        // even if a previous holder panicked.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one log entry (a serialized `LogEntry` message): written, synced to disk, then
    /// made visible to queries. Nothing is acknowledged before the sync returns.
    pub(crate) fn commit(&self, writer: &mut Writer, payload: &[u8]) -> Result<(), String> {
        if let Some(why) = &writer.broken {
            return Err(format!(
                "{}: {why}; restart the Totebox so its recovery reads the file again",
                self.path.display()
            ));
        }
        let (frame, crc) = log::encode_frame(writer.next_seq, writer.last_crc, payload);
        let written = (|| {
            writer.file.seek(SeekFrom::Start(writer.len))?;
            writer.file.write_all(&frame)?;
            writer.file.sync_data()
        })();
        if let Err(e) = written {
            take_back(writer);
            return Err(format!("writing {}: {e}", self.path.display()));
        }
        let new_len = writer.len + frame.len() as u64;
        let map = match ArchiveMap::new(&writer.file, new_len) {
            Ok(map) => Arc::new(map),
            Err(e) => {
                // The frame is on disk but cannot be served. The caller is told the write
                // failed, so the file must not keep it: a later, shorter frame written at the
                // same place would leave its tail behind as damage.
                take_back(writer);
                return Err(format!("mapping {}: {e}", self.path.display()));
            }
        };
        let frame_ref = FrameRef {
            offset: (writer.len as usize) + log::FRAME_HEADER_LEN,
            len: payload.len(),
            seq: writer.next_seq,
            crc,
        };
        writer.len = new_len;
        writer.next_seq += 1;
        writer.last_crc = crc;
        let old = self.current_view();
        let mut touched: HashMap<String, CollectionView> = HashMap::new();
        let seed = |name: &str| {
            old.collections
                .get(name)
                .map(|c| CollectionView::clone(c))
                .unwrap_or_default()
        };
        absorb(&self.layouts, &map, frame_ref, &mut touched, &seed, writer)?;
        let mut collections = old.collections.clone();
        for (name, view) in touched {
            collections.insert(name, Arc::new(view));
        }
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(View { map, collections });
        Ok(())
    }

    /// The layout and schema of a collection.
    pub(crate) fn collection(&self, name: &str) -> Option<(&Layout, &CollectionSchema)> {
        self.layouts
            .get(name)
            .map(|layout| (layout, &self.schemas[layout.schema]))
    }

    /// Visits every record of `collection` in place, in append order (for tools that export or
    /// inspect an archive). Nothing is copied: text values point into the memory map.
    pub fn visit(
        &self,
        collection: &str,
        mut f: impl FnMut(&dyn psp_core::query::Record),
    ) -> Result<(), QueryError> {
        let view = self.current_view();
        let Some(records) = view.collections.get(collection) else {
            return if self.layouts.contains_key(collection) {
                Ok(())
            } else {
                Err(QueryError::UnknownCollection(collection.to_owned()))
            };
        };
        for batch in &records.batches {
            with_batch(&view.map, batch, |records| {
                for record in records.iter() {
                    f(&MappedRecord::new(record));
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Runs `f` over the archive's committed bytes as mapped (header and frames): what a plain
    /// pass over the file reads, for comparing a query's speed with raw memory bandwidth.
    pub fn with_mapped_bytes<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        f(self.current_view().map.bytes())
    }

    /// The address range of the current memory map, so a caller can check that values handed out
    /// by [`RecordArchive::visit`] point into it rather than into copies.
    pub fn mapped_address_range(&self) -> std::ops::Range<usize> {
        let view = self.current_view();
        let bytes = view.map.bytes();
        bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len()
    }

    /// Records held, over all collections.
    pub fn total_records(&self) -> u64 {
        self.current_view()
            .collections
            .values()
            .map(|c| c.records)
            .sum()
    }
}

/// Folds one log entry into the collections' views and the writer's ledger. Used both when
/// replaying the log at open and after each append, so the two can never disagree. A collection
/// not yet in `collections` starts from `seed` (empty at open; the current view after an append).
fn absorb(
    layouts: &HashMap<String, Layout>,
    map: &ArchiveMap,
    frame: FrameRef,
    collections: &mut HashMap<String, CollectionView>,
    seed: &dyn Fn(&str) -> CollectionView,
    writer: &mut Writer,
) -> Result<(), String> {
    let at_frame = |e: &dyn std::fmt::Display| format!("log entry {}: {e}", frame.seq);
    let mut payload = frame.payload(map.bytes());
    let message =
        capnp::serialize::read_message_from_flat_slice(&mut payload, log_reader_options())
            .map_err(|e| at_frame(&e))?;
    let entry = message
        .get_root::<log_entry::Reader<'_>>()
        .map_err(|e| at_frame(&e))?;
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, String> {
        Ok(t.map_err(|e| at_frame(&e))?
            .to_str()
            .map_err(|e| at_frame(&e))?
            .to_owned())
    };
    let issuer = entry.get_issuer().map_err(|e| at_frame(&e))?;
    let key = entry.get_idempotency_key().map_err(|e| at_frame(&e))?;
    if let (Some(issuer), false) = (PublicKey::from_slice(issuer), key.is_empty()) {
        writer.applied.insert(
            (issuer, key.to_vec()),
            Applied {
                digest: entry.get_digest().map_err(|e| at_frame(&e))?.to_vec(),
                message: text(entry.get_message())?,
                detail: entry.get_detail().map_err(|e| at_frame(&e))?.to_vec(),
                at: entry.get_at(),
            },
        );
    }
    match entry.which().map_err(|e| at_frame(&e))? {
        log_entry::Append(batch) => {
            let batch = batch.map_err(|e| at_frame(&e))?;
            let name = text(batch.get_collection())?;
            let layout = layouts.get(&name).ok_or_else(|| {
                at_frame(&format!(
                    "the log holds records of collection {name:?}, which the config does not name"
                ))
            })?;
            let records = batch.get_records().map_err(|e| at_frame(&e))?;
            let view = collections.entry(name).or_insert_with_key(|n| seed(n));
            view.records += u64::from(records.len());
            view.as_of = view.as_of.max(entry.get_at());
            view.batches.push(Arc::new(BatchIndex::build(
                frame,
                records,
                layout.key,
                entry.get_at(),
            )));
        }
        log_entry::Seal(seal) => {
            let seal = seal.map_err(|e| at_frame(&e))?;
            writer
                .sealed
                .insert((text(seal.get_collection())?, text(seal.get_period())?));
        }
        log_entry::Snapshot(_) => {}
        log_entry::Created(_) if frame.seq == 0 => {}
        log_entry::Created(_) => {
            return Err(at_frame(&"a `created` entry after the first frame"));
        }
    }
    Ok(())
}

/// The archive id named by the first frame, which must be a `created` entry.
fn created_by(map: &ArchiveMap, frame: FrameRef) -> Result<String, String> {
    let not_created = |e: &dyn std::fmt::Display| {
        format!("its first entry does not say which archive it belongs to ({e})")
    };
    let mut payload = frame.payload(map.bytes());
    let message =
        capnp::serialize::read_message_from_flat_slice(&mut payload, log_reader_options())
            .map_err(|e| not_created(&e))?;
    let entry = message
        .get_root::<log_entry::Reader<'_>>()
        .map_err(|e| not_created(&e))?;
    match entry.which().map_err(|e| not_created(&e))? {
        log_entry::Created(created) => Ok(created
            .and_then(|c| Ok(c.get_archive()?.to_string()?))
            .map_err(|e| not_created(&e))?),
        _ => Err(not_created(&"it records a change instead")),
    }
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Where the damaged tail started (the archive now ends there).
    pub offset: u64,
    /// Where its bytes were moved, whole.
    pub moved_to: PathBuf,
    /// How many bytes were moved.
    pub bytes: u64,
}

impl RecordArchive {
    /// Moves a damaged tail aside: when the archive refuses to open because a complete frame is
    /// damaged, copies every byte from that frame on into `<file>.damaged-at-<offset>` (synced),
    /// then cuts the archive there. Nothing is deleted. Returns `None` when there is nothing to
    /// repair. The archive must not be open elsewhere.
    pub fn repair(loaded: &Loaded) -> Result<Option<RepairReport>, ArchiveError> {
        let path = loaded.file.clone();
        let io = |source| ArchiveError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(ArchiveError::Locked(path)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let bytes = std::fs::read(&path).map_err(io)?;
        let offset = match log::scan(&bytes) {
            Ok(_) => return Ok(None),
            Err(LogError::Corrupt { offset, .. }) => offset,
            Err(other) => {
                return Err(ArchiveError::Log {
                    path,
                    source: other,
                });
            }
        };
        // A name no earlier repair used: an interrupted repair, or damage at the same place
        // again, must not make the next one fail or overwrite what was moved aside before.
        let base = format!("{}.damaged-at-{offset}", path.display());
        let mut moved_to = PathBuf::from(&base);
        let mut n = 1;
        let mut aside = loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&moved_to)
            {
                Ok(file) => break file,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {
                    n += 1;
                    moved_to = PathBuf::from(format!("{base}.{n}"));
                }
                Err(e) => {
                    return Err(ArchiveError::Io {
                        path: moved_to,
                        source: e,
                    });
                }
            }
        };
        let aside_io = |source| ArchiveError::Io {
            path: moved_to.clone(),
            source,
        };
        aside
            .write_all(&bytes[offset as usize..])
            .map_err(aside_io)?;
        aside.sync_all().map_err(aside_io)?;
        drop(aside);
        sync_dir(&moved_to).map_err(aside_io)?;
        file.set_len(offset).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Some(RepairReport {
            offset,
            moved_to,
            bytes: bytes.len() as u64 - offset,
        }))
    }
}

/// Opens the records of one appended batch, as mapped, for `read`.
fn with_batch<T>(
    map: &ArchiveMap,
    batch: &BatchIndex,
    read: impl FnOnce(
        capnp::struct_list::Reader<'_, psp_schema::archive_capnp::record::Owned>,
    ) -> Result<T, QueryError>,
) -> Result<T, QueryError> {
    let damaged = |e: capnp::Error| {
        QueryError::Archive(format!("reading log entry {}: {e}", batch.frame.seq))
    };
    let mut payload = batch.frame.payload(map.bytes());
    let message =
        capnp::serialize::read_message_from_flat_slice(&mut payload, log_reader_options())
            .map_err(damaged)?;
    let entry = message
        .get_root::<log_entry::Reader<'_>>()
        .map_err(damaged)?;
    let log_entry::Append(records) = entry.which().map_err(|e| damaged(e.into()))? else {
        return Err(QueryError::Archive(
            "an indexed frame is not an append".into(),
        ));
    };
    read(records.map_err(damaged)?.get_records().map_err(damaged)?)
}

/// Makes a new file's directory entry durable.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

impl Archive for RecordArchive {
    fn id(&self) -> &str {
        &self.id
    }

    fn collections(&self) -> Vec<CollectionSchema> {
        self.schemas.clone()
    }

    fn stats(&self, collection: &str) -> Option<CollectionStats> {
        self.layouts.get(collection)?;
        let view = self.current_view();
        Some(
            view.collections
                .get(collection)
                .map(|c| CollectionStats {
                    records: c.records,
                    as_of: c.as_of,
                })
                .unwrap_or_default(),
        )
    }

    fn quick_to_scan(&self, collection: &str) -> bool {
        // Memory-mapped records scan at gigabytes a second: a few thousand take microseconds.
        self.stats(collection)
            .is_some_and(|s| s.records <= QUICK_SCAN_RECORDS)
    }

    fn scan(&self, plan: &Plan, accumulator: &mut Accumulator<'_>) -> Result<i64, QueryError> {
        let name = &plan.query().collection;
        let (layout, _) = self
            .collection(name)
            .ok_or_else(|| QueryError::UnknownCollection(name.clone()))?;
        let view = self.current_view();
        let Some(collection) = view.collections.get(name) else {
            return Ok(0);
        };
        let selector = plan.row_selector();
        // Under a row selector, only writes holding rows in scope date the answer.
        let mut as_of_in_scope = 0;
        for batch in &collection.batches {
            if accumulator.is_satisfied() {
                break;
            }
            if selector.is_some_and(|s| !batch.may_contain(s)) {
                continue;
            }
            let before = accumulator.scanned();
            with_batch(&view.map, batch, |records| {
                match selector {
                    Some(selector) => {
                        for position in batch.candidates(selector, records, layout.key) {
                            accumulator.push(&MappedRecord::new(records.get(position)))?;
                        }
                    }
                    None => {
                        for record in records.iter() {
                            accumulator.push(&MappedRecord::new(record))?;
                        }
                    }
                }
                Ok(())
            })?;
            if accumulator.scanned() > before {
                as_of_in_scope = as_of_in_scope.max(batch.at);
            }
        }
        Ok(if selector.is_some() {
            as_of_in_scope
        } else {
            collection.as_of
        })
    }

    fn apply(&self, command: &CommandRequest<'_>) -> Result<CommandOutcome, CommandError> {
        crate::commands::apply(self, command)
    }
}

/// Whether a value of type `found` may be stored in a field of type `field`.
pub(crate) fn storable(field: ValueType, found: ValueType) -> bool {
    found == ValueType::Null || found == field
}

/// Cuts the file back to the committed length after a failed write, durably; if that fails
/// too, marks the writer broken rather than let a later write land after unknown bytes.
fn take_back(writer: &mut Writer) {
    let undone = writer
        .file
        .set_len(writer.len)
        .and_then(|()| writer.file.sync_data());
    if let Err(e) = undone {
        writer.broken = Some(format!("a failed write could not be taken back ({e})"));
    }
}
