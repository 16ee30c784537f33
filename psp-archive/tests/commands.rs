//! The standard commands: a retry never applies twice (even across a restart), a reused key with
//! another payload is refused, seals close periods durably, snapshots are consistent copies.

mod support;

use capnp::message::Builder;
use psp_archive::RecordArchive;
use psp_core::archive::{Archive, CommandError, CommandRequest, CommandStatus};
use psp_core::query::{Aggregate, Query, Value};
use psp_core::{IdentityKey, PublicKey, RowSelector};
use psp_schema::totebox_capnp::{seal_arguments, snapshot_arguments};

use psp_archive::append_arguments as append_args;

fn seal_args(period: &str) -> Vec<u8> {
    let mut message = Builder::new_default();
    message
        .init_root::<seal_arguments::Builder<'_>>()
        .set_period(period);
    capnp::serialize::write_message_to_words(&message)
}

fn snapshot_args(name: &str) -> Vec<u8> {
    let mut message = Builder::new_default();
    message
        .init_root::<snapshot_arguments::Builder<'_>>()
        .set_name(name);
    capnp::serialize::write_message_to_words(&message)
}

fn operator() -> PublicKey {
    IdentityKey::from_seed([8; 32]).public()
}

fn command<'a>(
    issuer: &'a PublicKey,
    name: &'a str,
    collection: &'a str,
    key: &'a [u8],
    arguments: &'a [u8],
) -> CommandRequest<'a> {
    CommandRequest {
        namespace: issuer,
        name,
        collection,
        idempotency_key: key,
        arguments,
    }
}

fn records(archive: &RecordArchive) -> Value {
    let q = Query::aggregate("ledger", [], [Aggregate::count()]);
    archive
        .query(&q, &RowSelector::All)
        .unwrap()
        .finalize(&q)
        .unwrap()
        .rows[0][0]
        .clone()
}

const KEY: &[u8] = b"0123456789abcdef-retry-1";

#[test]
fn a_retried_append_applies_once_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = operator();
    let args = append_args(
        &["entry", "period", "amount"],
        &[
            vec![Value::Int(1), "2026-10".into(), Value::Null],
            vec![Value::Int(2), "2026-10".into(), Value::Null],
        ],
    );
    {
        let archive = support::open(dir.path());
        let first = archive
            .apply(&command(&issuer, "append", "ledger", KEY, &args))
            .unwrap();
        assert_eq!(first.status, CommandStatus::Applied);
        let retry = archive
            .apply(&command(&issuer, "append", "ledger", KEY, &args))
            .unwrap();
        assert_eq!(retry.status, CommandStatus::Replayed);
        assert_eq!(
            (retry.message.as_str(), &retry.detail),
            (first.message.as_str(), &first.detail)
        );
        assert_eq!(records(&archive), Value::Int(2));
    }
    let archive = support::open(dir.path());
    let after_restart = archive
        .apply(&command(&issuer, "append", "ledger", KEY, &args))
        .unwrap();
    assert_eq!(after_restart.status, CommandStatus::Replayed);
    assert_eq!(
        records(&archive),
        Value::Int(2),
        "the retry after a restart applied nothing"
    );

    // Another operator's identical key is another namespace: applied, not replayed.
    let other = IdentityKey::from_seed([9; 32]).public();
    let theirs = archive
        .apply(&command(&other, "append", "ledger", KEY, &args))
        .unwrap();
    assert_eq!(theirs.status, CommandStatus::Applied);
    assert_eq!(records(&archive), Value::Int(4));
}

#[test]
fn a_key_reused_for_a_different_command_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let archive = support::open(dir.path());
    let issuer = operator();
    let one = append_args(&["entry"], &[vec![Value::Int(1)]]);
    let two = append_args(&["entry"], &[vec![Value::Int(2)]]);
    archive
        .apply(&command(&issuer, "append", "ledger", KEY, &one))
        .unwrap();
    let error = archive
        .apply(&command(&issuer, "append", "ledger", KEY, &two))
        .unwrap_err();
    assert_eq!(error, CommandError::KeyReused);
    assert_eq!(error.code(), "command.key-reused");
    assert_eq!(records(&archive), Value::Int(1));
}

#[test]
fn bad_appends_are_refused_whole_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let archive = support::open(dir.path());
    let issuer = operator();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown field",
            append_args(&["entry", "nope"], &[vec![Value::Int(1), Value::Null]]),
            "nope",
        ),
        (
            "wrong type",
            append_args(&["entry", "amount"], &[vec![Value::Int(1), "lots".into()]]),
            "amount",
        ),
        (
            "null key",
            append_args(&["period"], &[vec!["2026-10".into()]]),
            "key",
        ),
        (
            "short row",
            append_args(&["entry", "period"], &[vec![Value::Int(1)]]),
            "values",
        ),
        ("not a message", b"garbage!".to_vec(), ""),
    ];
    for (i, (name, args, says)) in cases.iter().enumerate() {
        let key = format!("bad-append-key-{i:04}");
        let error = archive
            .apply(&command(&issuer, "append", "ledger", key.as_bytes(), args))
            .unwrap_err();
        assert_eq!(error.code(), "command.invalid-arguments", "{name}: {error}");
        assert!(error.to_string().contains(says), "{name}: {error}");
    }
    // One good and one bad record: all or nothing.
    let mixed = append_args(
        &["entry", "amount"],
        &[
            vec![Value::Int(1), Value::Null],
            vec![Value::Int(2), "x".into()],
        ],
    );
    archive
        .apply(&command(
            &issuer,
            "append",
            "ledger",
            b"mixed-append-key-1",
            &mixed,
        ))
        .unwrap_err();
    assert_eq!(records(&archive), Value::Int(0));
    let short = archive
        .apply(&command(&issuer, "append", "ledger", b"short", &mixed))
        .unwrap_err();
    assert_eq!(short.code(), "command.bad-idempotency-key");
    let unknown = archive
        .apply(&command(&issuer, "reboot", "", KEY, &[]))
        .unwrap_err();
    assert_eq!(unknown.code(), "command.unknown");
}

#[test]
fn a_sealed_period_refuses_appends_durably() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = operator();
    {
        let archive = support::open(dir.path());
        archive
            .append_records("ledger", &support::rows(0..3, "2026-09"), 1)
            .unwrap();
        let sealed = archive
            .apply(&command(
                &issuer,
                "seal",
                "ledger",
                b"seal-2026-09-key-1",
                &seal_args("2026-09"),
            ))
            .unwrap();
        assert!(
            sealed.message.contains("sealed period 2026-09"),
            "{}",
            sealed.message
        );
    }
    let archive = support::open(dir.path());
    let late = append_args(
        &["entry", "period"],
        &[vec![Value::Int(9), "2026-09".into()]],
    );
    let error = archive
        .apply(&command(
            &issuer,
            "append",
            "ledger",
            b"late-entry-key-001",
            &late,
        ))
        .unwrap_err();
    assert_eq!(error.code(), "command.refused");
    assert!(error.to_string().contains("2026-09"), "{error}");
    assert!(
        archive
            .append_records("ledger", &support::rows(10..11, "2026-09"), 2)
            .is_err(),
        "imports obey seals too"
    );
    let open = append_args(
        &["entry", "period"],
        &[vec![Value::Int(9), "2026-10".into()]],
    );
    archive
        .apply(&command(
            &issuer,
            "append",
            "ledger",
            b"next-period-key-01",
            &open,
        ))
        .unwrap();
    assert_eq!(records(&archive), Value::Int(4));
}

#[test]
fn a_snapshot_is_a_consistent_archive_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = operator();
    let archive = support::open(dir.path());
    archive
        .append_records("ledger", &support::rows(0..50, "2026-10"), 1)
        .unwrap();
    let taken = archive
        .apply(&command(
            &issuer,
            "snapshot",
            "",
            b"snapshot-key-00001",
            &snapshot_args("before-close.psp"),
        ))
        .unwrap();
    assert!(taken.message.contains("50 records"), "{}", taken.message);
    archive
        .append_records("ledger", &support::rows(50..60, "2026-10"), 2)
        .unwrap();

    // Open the copy as an archive of its own: it holds exactly what was there when it was taken.
    let copy_dir = dir.path().join("snapshots");
    std::fs::rename(
        copy_dir.join("before-close.psp"),
        copy_dir.join("sub-01.psp"),
    )
    .unwrap();
    let copy = RecordArchive::open(support::loaded(&copy_dir)).unwrap();
    assert_eq!(records(&copy), Value::Int(50));
    assert_eq!(records(&archive), Value::Int(60));

    for bad in ["../escape", "a/b", "", ".."] {
        let key = format!("bad-snapshot-{:05}", bad.len());
        let error = archive
            .apply(&command(
                &issuer,
                "snapshot",
                "",
                key.as_bytes(),
                &snapshot_args(bad),
            ))
            .unwrap_err();
        assert_eq!(error.code(), "command.invalid-arguments", "{bad:?}");
    }
}

#[test]
fn ping_answers_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let archive = support::open(dir.path());
    let before = archive.committed_len();
    let pong = archive
        .apply(&command(
            &operator(),
            "ping",
            "",
            b"ping-key-000000001",
            &[],
        ))
        .unwrap();
    assert_eq!(pong.message, "pong");
    assert_eq!(archive.committed_len(), before);
}

/// A command the disk fails is `internal`, records nothing, and keeps its key: once the disk is
/// fixed, the same retry is applied (and only once).
#[test]
fn a_failed_write_is_internal_and_leaves_the_key_unused() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = operator();
    let archive = support::open(dir.path());
    // A plain file where the snapshots folder belongs: the copy cannot be written.
    let snapshots = dir.path().join("snapshots");
    std::fs::write(&snapshots, b"not a folder").unwrap();
    let before = archive.committed_len();
    let arguments = snapshot_args("month-end.psp");
    let snapshot = command(&issuer, "snapshot", "", b"snapshot-key-disk-01", &arguments);
    let error = archive.apply(&snapshot).unwrap_err();
    assert_eq!(error.code(), "internal", "{error}");
    assert_eq!(archive.committed_len(), before);

    std::fs::remove_file(&snapshots).unwrap();
    let taken = archive.apply(&snapshot).unwrap();
    assert_eq!(taken.status, CommandStatus::Applied);
    let again = archive.apply(&snapshot).unwrap();
    assert_eq!(again.status, CommandStatus::Replayed);
    assert!(snapshots.join("month-end.psp").is_file());
}
