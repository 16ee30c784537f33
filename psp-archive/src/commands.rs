//! The standard commands (`ping`, `append`, `seal`, `snapshot`) and the idempotency ledger.
//!
//! Every command that changes the archive is written to the log together with its issuer,
//! idempotency key, digest and outcome, in one frame: either the change and its record of having
//! been applied are both durable, or neither is. A retry finds the record (also after a restart)
//! and gets the first outcome back instead of a second application.

use std::io::Write;

use capnp::message::{Builder, ReaderOptions};
use psp_core::archive::{
    CommandError, CommandOutcome, CommandRequest, CommandStatus, check_idempotency_key,
};
use psp_core::query::wire::{read_value, write_value};
use psp_core::query::{CollectionSchema, Value};
use psp_schema::archive_capnp::log_entry;
use psp_schema::totebox_capnp::{
    append_arguments, append_outcome, seal_arguments, snapshot_arguments, snapshot_outcome,
};

use crate::store::{Layout, RecordArchive, Writer, now_micros, storable, sync_dir};

/// Who applied a change and under which key, for the log entry.
struct Provenance<'a> {
    command: &'a CommandRequest<'a>,
    digest: [u8; 32],
    message: String,
    detail: Vec<u8>,
}

/// The serialized arguments of an `append` (`AppendArguments` in `schema/totebox.capnp`): one
/// row per record, one value per named field. What a client sends to add records.
pub fn append_arguments(fields: &[&str], rows: &[Vec<Value>]) -> Vec<u8> {
    let mut message = Builder::new_default();
    let mut args = message.init_root::<append_arguments::Builder<'_>>();
    let mut names = args.reborrow().init_fields(fields.len() as u32);
    for (i, f) in fields.iter().enumerate() {
        names.set(i as u32, *f);
    }
    let mut list = args.init_records(rows.len() as u32);
    for (i, row) in rows.iter().enumerate() {
        let mut values = list.reborrow().get(i as u32).init_values(row.len() as u32);
        for (j, v) in row.iter().enumerate() {
            write_value(v.as_ref(), values.reborrow().get(j as u32));
        }
    }
    capnp::serialize::write_message_to_words(&message)
}

pub(crate) fn apply(
    archive: &RecordArchive,
    command: &CommandRequest<'_>,
) -> Result<CommandOutcome, CommandError> {
    check_idempotency_key(command.idempotency_key)?;
    let digest = *command.digest().as_bytes();
    let mut writer = archive.lock_writer();
    let ledger_key = (*command.namespace, command.idempotency_key.to_vec());
    if let Some(previous) = writer.applied.get(&ledger_key) {
        if previous.digest != digest {
            return Err(CommandError::KeyReused);
        }
        return Ok(CommandOutcome {
            status: CommandStatus::Replayed,
            message: previous.message.clone(),
            detail: previous.detail.clone(),
            as_of: previous.at,
        });
    }
    let at = now_micros();
    match command.name {
        // Changes nothing, so it is not logged; every call answers afresh.
        "ping" => Ok(outcome("pong".into(), Vec::new(), at)),
        "append" => append(archive, &mut writer, command, digest, at),
        "seal" => seal(archive, &mut writer, command, digest, at),
        "snapshot" => snapshot(archive, &mut writer, command, digest, at),
        other => Err(CommandError::UnknownCommand(other.to_owned())),
    }
}

fn outcome(message: String, detail: Vec<u8>, at: i64) -> CommandOutcome {
    CommandOutcome {
        status: CommandStatus::Applied,
        message,
        detail,
        as_of: at,
    }
}

fn invalid(e: impl std::fmt::Display) -> CommandError {
    CommandError::InvalidArguments(e.to_string())
}

/// Reads a command's argument message under limits sized by the message itself.
fn arguments<T>(
    bytes: &[u8],
    read: impl FnOnce(
        capnp::message::Reader<capnp::serialize::OwnedSegments>,
    ) -> Result<T, CommandError>,
) -> Result<T, CommandError> {
    let options = *ReaderOptions::new()
        .traversal_limit_in_words(Some(bytes.len() / 4 + 1024))
        .nesting_limit(16);
    let message = capnp::serialize::read_message(&mut &bytes[..], options).map_err(invalid)?;
    read(message)
}

fn serialize(fill: impl FnOnce(&mut Builder<capnp::message::HeapAllocator>)) -> Vec<u8> {
    let mut message = Builder::new_default();
    fill(&mut message);
    capnp::serialize::write_message_to_words(&message)
}

fn append(
    archive: &RecordArchive,
    writer: &mut Writer,
    command: &CommandRequest<'_>,
    digest: [u8; 32],
    at: i64,
) -> Result<CommandOutcome, CommandError> {
    let (layout, schema) = archive
        .collection(command.collection)
        .ok_or_else(|| invalid(format!("no collection {:?}", command.collection)))?;
    let rows = arguments(command.arguments, |message| {
        let args = message
            .get_root::<append_arguments::Reader<'_>>()
            .map_err(invalid)?;
        let mut positions = Vec::new();
        for name in args.get_fields().map_err(invalid)?.iter() {
            let name = name.map_err(invalid)?.to_str().map_err(invalid)?;
            let (i, _) = schema.find(name).ok_or_else(|| {
                invalid(format!(
                    "collection {:?} has no field {name:?}",
                    schema.name
                ))
            })?;
            if positions.contains(&i) {
                return Err(invalid(format!("field {name:?} is named twice")));
            }
            positions.push(i);
        }
        let mut rows = Vec::new();
        for (r, row) in args.get_records().map_err(invalid)?.iter().enumerate() {
            let values = row.get_values().map_err(invalid)?;
            if values.len() as usize != positions.len() {
                return Err(invalid(format!(
                    "record {r} has {} values for {} fields",
                    values.len(),
                    positions.len()
                )));
            }
            let mut full = vec![Value::Null; schema.fields.len()];
            for (value, &i) in values.iter().zip(&positions) {
                full[i] = read_value(value).map_err(invalid)?;
            }
            rows.push(full);
        }
        Ok(rows)
    })?;
    check_rows(schema, layout, &rows, writer, command.collection)?;
    let n = rows.len() as u64;
    let detail = serialize(|m| m.init_root::<append_outcome::Builder<'_>>().set_appended(n));
    let message = format!("appended {n} records to {:?}", command.collection);
    let provenance = Provenance {
        command,
        digest,
        message: message.clone(),
        detail: detail.clone(),
    };
    let entry = log_entry_bytes(at, Some(&provenance), |e| {
        write_batch(e, command.collection, &rows)
    });
    archive
        .commit(writer, &entry)
        .map_err(CommandError::Storage)?;
    Ok(outcome(message, detail, at))
}

/// Checks rows against the schema before anything is written: field types, a key on every
/// record, no record in a sealed period.
pub(crate) fn check_rows(
    schema: &CollectionSchema,
    layout: &Layout,
    rows: &[Vec<Value>],
    writer: &Writer,
    collection: &str,
) -> Result<(), CommandError> {
    for (r, row) in rows.iter().enumerate() {
        if row.len() != schema.fields.len() {
            return Err(invalid(format!(
                "record {r} has {} values for {} fields",
                row.len(),
                schema.fields.len()
            )));
        }
        for (value, field) in row.iter().zip(&schema.fields) {
            if !storable(field.value_type, value.value_type()) {
                return Err(invalid(format!(
                    "record {r}: field {:?} is {}, got a {} value",
                    field.name,
                    field.value_type.name(),
                    value.value_type().name()
                )));
            }
        }
        if row[layout.key].is_null() {
            return Err(invalid(format!(
                "record {r}: key field {:?} is null",
                schema.key
            )));
        }
        if let Some(p) = layout.period
            && !row[p].is_null()
        {
            let period = row[p].to_string();
            if writer
                .sealed
                .contains(&(collection.to_owned(), period.clone()))
            {
                return Err(CommandError::Refused(format!(
                    "record {r}: period {period} of {collection:?} is sealed"
                )));
            }
        }
    }
    Ok(())
}

fn write_batch(entry: log_entry::Builder<'_>, collection: &str, rows: &[Vec<Value>]) {
    let mut batch = entry.init_append();
    batch.set_collection(collection);
    let mut list = batch.init_records(rows.len() as u32);
    for (i, row) in rows.iter().enumerate() {
        let mut values = list.reborrow().get(i as u32).init_values(row.len() as u32);
        for (j, v) in row.iter().enumerate() {
            write_value(v.as_ref(), values.reborrow().get(j as u32));
        }
    }
}

/// A serialized log entry with its provenance (none for imports and generated data).
fn log_entry_bytes(
    at: i64,
    provenance: Option<&Provenance<'_>>,
    body: impl FnOnce(log_entry::Builder<'_>),
) -> Vec<u8> {
    serialize(|m| {
        let mut entry = m.init_root::<log_entry::Builder<'_>>();
        entry.set_at(at);
        if let Some(p) = provenance {
            entry.set_issuer(p.command.namespace.as_bytes());
            entry.set_idempotency_key(p.command.idempotency_key);
            entry.set_digest(&p.digest);
            entry.set_message(&p.message);
            entry.set_detail(&p.detail);
        }
        body(entry);
    })
}

fn seal(
    archive: &RecordArchive,
    writer: &mut Writer,
    command: &CommandRequest<'_>,
    digest: [u8; 32],
    at: i64,
) -> Result<CommandOutcome, CommandError> {
    let (layout, _) = archive
        .collection(command.collection)
        .ok_or_else(|| invalid(format!("no collection {:?}", command.collection)))?;
    if layout.period.is_none() {
        return Err(invalid(format!(
            "collection {:?} has no period field",
            command.collection
        )));
    }
    let period = arguments(command.arguments, |m| {
        let args = m
            .get_root::<seal_arguments::Reader<'_>>()
            .map_err(invalid)?;
        Ok(args
            .get_period()
            .map_err(invalid)?
            .to_str()
            .map_err(invalid)?
            .to_owned())
    })?;
    if period.is_empty() {
        return Err(invalid("a seal names a period"));
    }
    let key = (command.collection.to_owned(), period.clone());
    if writer.sealed.contains(&key) {
        return Ok(outcome(
            format!(
                "period {period} of {:?} was already sealed",
                command.collection
            ),
            Vec::new(),
            at,
        ));
    }
    let message = format!("sealed period {period} of {:?}", command.collection);
    let provenance = Provenance {
        command,
        digest,
        message: message.clone(),
        detail: Vec::new(),
    };
    let entry = log_entry_bytes(at, Some(&provenance), |e| {
        let mut seal = e.init_seal();
        seal.set_collection(command.collection);
        seal.set_period(&period);
    });
    archive
        .commit(writer, &entry)
        .map_err(CommandError::Storage)?;
    Ok(outcome(message, Vec::new(), at))
}

/// A snapshot name: a plain file name, never a path.
fn valid_snapshot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn snapshot(
    archive: &RecordArchive,
    writer: &mut Writer,
    command: &CommandRequest<'_>,
    digest: [u8; 32],
    at: i64,
) -> Result<CommandOutcome, CommandError> {
    let name = arguments(command.arguments, |m| {
        let args = m
            .get_root::<snapshot_arguments::Reader<'_>>()
            .map_err(invalid)?;
        Ok(args
            .get_name()
            .map_err(invalid)?
            .to_str()
            .map_err(invalid)?
            .to_owned())
    })?;
    if !valid_snapshot_name(&name) {
        return Err(invalid(format!(
            "snapshot name {name:?}: use letters, digits, '-', '_' and '.' only"
        )));
    }
    let target = archive.snapshots.join(&name);
    if target.exists() {
        return Err(CommandError::Refused(format!(
            "snapshot {name:?} already exists"
        )));
    }
    // The writer lock is held, so the mapped prefix is exactly the committed archive: a
    // consistent copy, made while queries go on reading.
    let view = archive.current_view();
    let bytes = view.map.bytes();
    let storage =
        |e: std::io::Error| CommandError::Storage(format!("writing snapshot {name:?}: {e}"));
    std::fs::create_dir_all(&archive.snapshots).map_err(storage)?;
    let partial = archive.snapshots.join(format!("{name}.partial"));
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(storage)?;
        file.write_all(bytes).map_err(storage)?;
        file.sync_all().map_err(storage)?;
    }
    std::fs::rename(&partial, &target).map_err(storage)?;
    sync_dir(&target).map_err(storage)?;

    let records = archive.total_records();
    let size = bytes.len() as u64;
    let detail = serialize(|m| {
        let mut out = m.init_root::<snapshot_outcome::Builder<'_>>();
        out.set_name(&name);
        out.set_bytes(size);
        out.set_records(records);
    });
    let message = format!("snapshot {name:?}: {size} bytes, {records} records");
    let provenance = Provenance {
        command,
        digest,
        message: message.clone(),
        detail: detail.clone(),
    };
    let entry = log_entry_bytes(at, Some(&provenance), |e| {
        let mut taken = e.init_snapshot();
        taken.set_name(&name);
        taken.set_bytes(size);
    });
    archive
        .commit(writer, &entry)
        .map_err(CommandError::Storage)?;
    Ok(outcome(message, detail, at))
}

/// The serialized `created` entry that opens every archive's log.
pub(crate) fn created_entry(archive: &str, at: i64) -> Vec<u8> {
    log_entry_bytes(at, None, |e| e.init_created().set_archive(archive))
}

impl RecordArchive {
    /// Appends records outside PSP (imports, generated data): checked like an `append` command,
    /// written and synced as one batch, with no idempotency key. `at` is the batch's data time.
    pub fn append_records(
        &self,
        collection: &str,
        rows: &[Vec<Value>],
        at: i64,
    ) -> Result<u64, CommandError> {
        let (layout, schema) = self
            .collection(collection)
            .ok_or_else(|| invalid(format!("no collection {collection:?}")))?;
        let mut writer = self.lock_writer();
        check_rows(schema, layout, rows, &writer, collection)?;
        let entry = log_entry_bytes(at, None, |e| write_batch(e, collection, rows));
        self.commit(&mut writer, &entry)
            .map_err(CommandError::Storage)?;
        Ok(rows.len() as u64)
    }
}
