//! Crash safety: an append torn at any byte of its frame, or corrupted at any byte, is cut off
//! on the next open and every earlier record survives untouched.

mod support;

use psp_archive::RecordArchive;
use psp_archive::log::LogError;
use psp_core::RowSelector;
use psp_core::archive::Archive;
use psp_core::query::{Aggregate, AggregateFunction, Query, Value};

fn count_and_sum(archive: &RecordArchive) -> Vec<Value> {
    let q = Query::aggregate(
        "ledger",
        [],
        [
            Aggregate::count(),
            Aggregate::of(AggregateFunction::Sum, "amount"),
        ],
    );
    archive
        .query(&q, &RowSelector::All)
        .unwrap()
        .finalize(&q)
        .unwrap()
        .rows
        .remove(0)
}

#[test]
fn a_torn_or_corrupted_last_append_is_cut_at_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (before, intact, full) = {
        let archive = support::open(dir.path());
        archive
            .append_records("ledger", &support::rows(0..40, "2026-09"), 1)
            .unwrap();
        archive
            .append_records("ledger", &support::rows(40..70, "2026-10"), 2)
            .unwrap();
        let before = archive.committed_len();
        let intact = count_and_sum(&archive);
        archive
            .append_records("ledger", &support::rows(70..75, "2026-10"), 3)
            .unwrap();
        (before, intact, std::fs::read(archive.path()).unwrap())
    };
    let path = dir.path().join("sub-01.psp");
    let last_frame = before as usize..full.len();
    assert!(
        last_frame.len() > 100,
        "the last frame spans {} bytes",
        last_frame.len()
    );

    let mut checked = 0;
    for offset in last_frame.clone() {
        // Torn: the file ends at `offset`, inside the last frame.
        std::fs::write(&path, &full[..offset]).unwrap();
        let archive = RecordArchive::open(support::loaded(dir.path())).unwrap();
        let report = archive.open_report();
        assert_eq!(
            report.torn_bytes_cut,
            (offset - before as usize) as u64,
            "truncated at {offset}"
        );
        assert_eq!(count_and_sum(&archive), intact, "truncated at {offset}");
        drop(archive);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            before,
            "cut back to the last good frame"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            full[..before as usize],
            "earlier bytes untouched"
        );

        // Corrupted: one byte of the last frame flipped, the length intact.
        let mut damaged = full.clone();
        damaged[offset] ^= 0x5a;
        std::fs::write(&path, &damaged).unwrap();
        let archive = RecordArchive::open(support::loaded(dir.path())).unwrap();
        assert_eq!(count_and_sum(&archive), intact, "byte {offset} flipped");
        assert_eq!(
            archive.open_report().torn_bytes_cut,
            (full.len() - before as usize) as u64
        );
        drop(archive);
        assert_eq!(std::fs::read(&path).unwrap(), full[..before as usize]);
        checked += 1;
    }
    assert_eq!(checked, last_frame.len());

    // And an archive cut back this way keeps working: the next append lands after it.
    std::fs::write(&path, &full[..before as usize + 7]).unwrap();
    let archive = RecordArchive::open(support::loaded(dir.path())).unwrap();
    archive
        .append_records("ledger", &support::rows(100..101, "2026-11"), 4)
        .unwrap();
    drop(archive);
    let archive = RecordArchive::open(support::loaded(dir.path())).unwrap();
    assert_eq!(archive.open_report().torn_bytes_cut, 0);
    assert_eq!(count_and_sum(&archive)[0], Value::Int(71));
}

#[test]
fn damage_before_the_tail_refuses_to_open_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first_end = {
        let archive = support::open(dir.path());
        archive
            .append_records("ledger", &support::rows(0..10, "2026-09"), 1)
            .unwrap();
        let first_end = archive.committed_len();
        archive
            .append_records("ledger", &support::rows(10..20, "2026-09"), 2)
            .unwrap();
        archive
            .append_records("ledger", &support::rows(20..30, "2026-09"), 3)
            .unwrap();
        first_end
    };
    let path = dir.path().join("sub-01.psp");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[first_end as usize + 40] ^= 0xff; // inside the second of three frames
    std::fs::write(&path, &bytes).unwrap();
    let error = RecordArchive::open(support::loaded(dir.path())).unwrap_err();
    let psp_archive::ArchiveError::Log {
        source: LogError::Corrupt { offset, .. },
        ..
    } = &error
    else {
        panic!("expected corruption, got {error}");
    };
    assert_eq!(*offset, first_end);
    assert!(error.to_string().contains("refusing"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");
}

#[test]
fn a_second_process_cannot_open_the_same_archive() {
    let dir = tempfile::tempdir().unwrap();
    let first = support::open(dir.path());
    let error = RecordArchive::open(support::loaded(dir.path())).unwrap_err();
    assert!(
        matches!(error, psp_archive::ArchiveError::Locked(_)),
        "{error}"
    );
    drop(first);
    support::open(dir.path());
}

#[test]
fn a_file_that_is_not_an_archive_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sub-01.psp"), b"name,amount\nfoo,1\n").unwrap();
    let error = RecordArchive::open(support::loaded(dir.path())).unwrap_err();
    assert!(error.to_string().contains("not a PSP archive"), "{error}");
}
