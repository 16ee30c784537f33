//! Crash safety and damage: an append torn at any byte of its frame is cut off on the next open
//! (and every earlier record survives untouched), while a complete frame damaged at any byte is
//! refused with its offset and never cut; `repair` moves such a tail aside, keeping it.

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

/// Opens the test archive, expecting it to refuse with damage at `offset`.
fn refuses_at(dir: &std::path::Path, offset: u64, what: &str) {
    match RecordArchive::open(support::loaded(dir)) {
        Err(psp_archive::ArchiveError::Log {
            source: LogError::Corrupt { offset: found, .. },
            ..
        }) => assert_eq!(found, offset, "{what}"),
        Err(other) => panic!("{what}: {other}"),
        Ok(_) => panic!("{what}: opened a damaged archive"),
    }
}

#[test]
fn a_torn_append_is_cut_and_a_damaged_frame_refused_at_every_byte_of_the_last_two() {
    let dir = tempfile::tempdir().unwrap();
    let (frame_starts, intact, full) = {
        let archive = support::open(dir.path());
        archive
            .append_records("ledger", &support::rows(0..40, "2026-09"), 1)
            .unwrap();
        let mut starts = vec![archive.committed_len()];
        let mut intact = vec![count_and_sum(&archive)];
        archive
            .append_records("ledger", &support::rows(40..70, "2026-10"), 2)
            .unwrap();
        starts.push(archive.committed_len());
        intact.push(count_and_sum(&archive));
        archive
            .append_records("ledger", &support::rows(70..75, "2026-10"), 3)
            .unwrap();
        (starts, intact, std::fs::read(archive.path()).unwrap())
    };
    let path = dir.path().join("sub-01.psp");
    let mut checked = 0;
    // The last two frames: [starts[0], starts[1]) and [starts[1], end).
    for (i, &frame_start) in frame_starts.iter().enumerate() {
        let frame_end = frame_starts.get(i + 1).map_or(full.len(), |&e| e as usize);
        for offset in frame_start as usize..frame_end {
            // Torn: the file ends at `offset`. Everything acknowledged before that frame stays;
            // the frames from it on were never acknowledged by this file.
            std::fs::write(&path, &full[..offset]).unwrap();
            let archive = RecordArchive::open(support::loaded(dir.path())).unwrap();
            assert_eq!(
                archive.open_report().torn_bytes_cut,
                (offset - frame_start as usize) as u64,
                "truncated at {offset}"
            );
            assert_eq!(count_and_sum(&archive), intact[i], "truncated at {offset}");
            drop(archive);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                full[..frame_start as usize],
                "cut back to the last complete frame, earlier bytes untouched"
            );

            // Damaged: one byte of a complete frame flipped. Not a crash: refused, naming the
            // frame, and nothing is cut.
            let mut damaged = full.clone();
            damaged[offset] ^= 0x5a;
            std::fs::write(&path, &damaged).unwrap();
            refuses_at(dir.path(), frame_start, &format!("byte {offset} flipped"));
            assert_eq!(std::fs::read(&path).unwrap(), damaged, "nothing was cut");
            checked += 1;
        }
    }
    assert_eq!(checked, full.len() - frame_starts[0] as usize);

    // An archive cut back this way keeps working: the next append lands after it.
    std::fs::write(&path, &full[..frame_starts[1] as usize + 7]).unwrap();
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
fn a_frame_planted_in_record_data_is_only_data() {
    let dir = tempfile::tempdir().unwrap();
    // A record whose memo holds, byte for byte, a complete frame that passes every check
    // (magic, length, checksums): one whose bytes happen to be ASCII, so text stores them as is.
    let fake = (0u64..1 << 20)
        .map(|n| {
            let mut payload = [0u8; 64];
            payload[..8].copy_from_slice(&(n & 0x3f3f_3f3f).to_le_bytes());
            psp_archive::log::encode_frame(2, (n >> 32) as u32 & 0x3f3f_3f3f, &payload).0
        })
        .find(|frame| frame.is_ascii())
        .expect("about one frame in 256 is ASCII");
    let memo = String::from_utf8(fake.clone()).unwrap();
    let (before_plant, full) = {
        let archive = support::open(dir.path());
        archive
            .append_records("ledger", &support::rows(0..10, "2026-09"), 1)
            .unwrap();
        let before = archive.committed_len();
        let mut row = support::row(10, "2026-09");
        row[4] = Value::Text(memo);
        archive.append_records("ledger", &[row], 2).unwrap();
        (before, std::fs::read(archive.path()).unwrap())
    };
    let path = dir.path().join("sub-01.psp");
    assert!(
        full.windows(fake.len()).any(|w| w == fake.as_slice()),
        "the planted frame is in the file as it is"
    );
    // Torn in the middle of the frame holding the plant: cut, whatever the plant looks like.
    for cut in [full.len() - 8, full.len() - 40, before_plant as usize + 100] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let archive = RecordArchive::open(support::loaded(dir.path())).unwrap();
        assert_eq!(count_and_sum(&archive)[0], Value::Int(10), "cut at {cut}");
        drop(archive);
    }
}

#[test]
fn repair_moves_a_damaged_tail_aside_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (second, full) = {
        let archive = support::open(dir.path());
        archive
            .append_records("ledger", &support::rows(0..10, "2026-09"), 1)
            .unwrap();
        let second = archive.committed_len();
        archive
            .append_records("ledger", &support::rows(10..20, "2026-09"), 2)
            .unwrap();
        archive
            .append_records("ledger", &support::rows(20..30, "2026-09"), 3)
            .unwrap();
        (second, std::fs::read(archive.path()).unwrap())
    };
    let path = dir.path().join("sub-01.psp");
    let mut damaged = full.clone();
    damaged[second as usize + 50] ^= 1;
    std::fs::write(&path, &damaged).unwrap();
    refuses_at(dir.path(), second, "damaged second frame");
    let report = RecordArchive::repair(&support::loaded(dir.path()))
        .unwrap()
        .expect("something to repair");
    assert_eq!(report.offset, second);
    assert_eq!(
        std::fs::read(&report.moved_to).unwrap(),
        damaged[second as usize..],
        "the damaged tail is kept, byte for byte"
    );
    let archive = RecordArchive::open(support::loaded(dir.path())).unwrap();
    assert_eq!(count_and_sum(&archive)[0], Value::Int(10));
    drop(archive);
    assert!(
        RecordArchive::repair(&support::loaded(dir.path()))
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_missing_empty_cut_or_foreign_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub-01.psp");
    let error = RecordArchive::open(support::loaded(dir.path())).unwrap_err();
    assert!(
        error.to_string().contains("sub-01.psp") && error.to_string().contains("does not exist"),
        "{error}"
    );
    assert!(!path.exists(), "opening never creates");

    std::fs::write(&path, b"").unwrap();
    let error = RecordArchive::open(support::loaded(dir.path())).unwrap_err();
    assert!(error.to_string().contains("is empty"), "{error}");

    std::fs::remove_file(&path).unwrap();
    drop(support::open(dir.path())); // created
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..psp_archive::log::HEADER_LEN]).unwrap();
    let error = RecordArchive::open(support::loaded(dir.path())).unwrap_err();
    assert!(error.to_string().contains("cut to its header"), "{error}");

    // Another archive's file under this archive's config.
    std::fs::remove_file(&path).unwrap();
    let other: psp_archive::ArchiveConfig =
        toml::from_str(&support::CONFIG.replace("id = \"sub-01\"", "id = \"sub-02\"")).unwrap();
    drop(RecordArchive::create(other.resolve(dir.path()).unwrap()).unwrap());
    let error = RecordArchive::open(support::loaded(dir.path())).unwrap_err();
    assert!(
        error.to_string().contains("belongs to archive \"sub-02\""),
        "{error}"
    );
    // And creating over an existing file is refused.
    let again = RecordArchive::create(support::loaded(dir.path())).unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
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

/// Acknowledged frames erased to zeros (a bad copy, a sparse restore) are refused, not cut as
/// if they were one unwritten append; repair keeps them, and a second repair at the same place
/// (after the same damage again) keeps both copies instead of failing.
#[test]
fn erased_frames_are_refused_and_repairs_never_overwrite_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (first, full) = {
        let archive = support::open(dir.path());
        archive
            .append_records("ledger", &support::rows(0..10, "2026-09"), 1)
            .unwrap();
        let first = archive.committed_len();
        for (i, at) in [(10..20, 2), (20..30, 3), (30..40, 4)] {
            archive
                .append_records("ledger", &support::rows(i, "2026-09"), at)
                .unwrap();
        }
        (first, std::fs::read(archive.path()).unwrap())
    };
    let path = dir.path().join("sub-01.psp");
    let mut erased = full.clone();
    erased[first as usize..].fill(0);
    std::fs::write(&path, &erased).unwrap();
    refuses_at(dir.path(), first, "three acknowledged frames zeroed");

    let once = RecordArchive::repair(&support::loaded(dir.path()))
        .unwrap()
        .expect("something to repair");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), first);
    std::fs::write(&path, &erased).unwrap();
    let twice = RecordArchive::repair(&support::loaded(dir.path()))
        .unwrap()
        .expect("something to repair");
    assert_ne!(once.moved_to, twice.moved_to);
    for moved in [&once.moved_to, &twice.moved_to] {
        assert_eq!(std::fs::read(moved).unwrap(), erased[first as usize..]);
    }
    let archive = RecordArchive::open(support::loaded(dir.path())).unwrap();
    assert_eq!(count_and_sum(&archive)[0], Value::Int(10));
}
