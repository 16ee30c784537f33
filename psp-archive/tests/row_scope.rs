//! A capability limited to some rows learns nothing of the other rows from an archive's
//! answers: not how many there are, and not when they were last written.

mod support;

use std::collections::BTreeMap;

use psp_core::archive::Archive;
use psp_core::query::{Aggregate, Query};
use psp_core::{
    CollectionGrant, Collections, FieldSet, KeySelector, Operation, RowKey, RowSelector, Scope,
};

#[test]
fn counts_and_data_times_reach_a_row_restricted_capability_for_its_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let archive = support::open(dir.path());
    // Entries 0..10 written at 1,000; entries 10..20, someone else's, later at 9,000.
    archive
        .append_records("ledger", &support::rows(0..10, "2026-09"), 1_000)
        .unwrap();
    archive
        .append_records("ledger", &support::rows(10..20, "2026-09"), 9_000)
        .unwrap();
    let mine = RowSelector::Keys(KeySelector::new(
        "entry",
        [RowKey::Int(2), RowKey::Int(3)],
        [],
    ));

    let count = Query::aggregate("ledger", [], [Aggregate::count()]);
    let answer = archive.query(&count, &mine).unwrap();
    assert_eq!(answer.scanned_records, 2);
    assert_eq!(
        answer.as_of, 1_000,
        "the data time of its rows, not of the others"
    );
    let all = archive.query(&count, &RowSelector::All).unwrap();
    assert_eq!((all.scanned_records, all.as_of), (20, 9_000));

    let mut grants = BTreeMap::new();
    grants.insert(
        "ledger".to_owned(),
        CollectionGrant {
            fields: FieldSet::All,
            rows: mine,
        },
    );
    let scope = Scope {
        collections: Collections::Only(grants),
        operations: vec![Operation::Describe],
    };
    let [described] = archive.describe(&scope).try_into().unwrap();
    assert_eq!((described.stats.records, described.stats.as_of), (2, 1_000));
}
