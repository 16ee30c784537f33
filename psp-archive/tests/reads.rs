//! Reads: values point into the memory map (no copy), the key index reads only what a row
//! selector can match and answers exactly what a full scan would, configs say what is wrong.

mod support;

use proptest::prelude::*;
use psp_archive::{ArchiveConfig, RecordArchive};
use psp_core::archive::Archive;
use psp_core::query::{CompareOp, Filter, Query, ResultBody, Value, ValueRef};
use psp_core::{KeyRange, KeySelector, RowKey, RowSelector};

#[test]
fn text_values_point_into_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let archive = support::open(dir.path());
    archive
        .append_records("ledger", &support::rows(0..100, "2026-10"), 1)
        .unwrap();
    archive
        .append_records("ledger", &support::rows(100..200, "2026-11"), 2)
        .unwrap();
    let mapped = archive.mapped_address_range();
    let mut texts = 0;
    archive
        .visit("ledger", |record| {
            for field in [1, 2, 4] {
                let ValueRef::Text(text) = record.value(field) else {
                    panic!("text field {field}")
                };
                let at = text.as_ptr() as usize;
                assert!(
                    mapped.contains(&at) && at + text.len() <= mapped.end,
                    "{text:?} is a copy"
                );
                texts += 1;
            }
        })
        .unwrap();
    assert_eq!(texts, 600);
}

fn keyed_rows(archive: &RecordArchive) {
    // 20 batches of 500, keys 0..10_000 in order: what a ledger written over time looks like.
    for batch in 0..20 {
        archive
            .append_records(
                "ledger",
                &support::rows(batch * 500..(batch + 1) * 500, "2026-10"),
                batch,
            )
            .unwrap();
    }
}

#[test]
fn a_row_scoped_query_reads_only_matching_records() {
    let dir = tempfile::tempdir().unwrap();
    let archive = support::open(dir.path());
    keyed_rows(&archive);
    let selector = RowSelector::Keys(KeySelector::new(
        "entry",
        [RowKey::Int(7), RowKey::Int(4_321), RowKey::Int(99_999)],
        [KeyRange::new(9_990, 10_010).unwrap()],
    ));
    let query = Query::rows("ledger", ["entry"]);
    let scoped = archive.query(&query, &selector).unwrap();
    let ResultBody::Rows(rows) = &scoped.body else {
        panic!("rows")
    };
    let keys: Vec<Value> = rows.iter().map(|r| r[0].clone()).collect();
    let mut expected = vec![Value::Int(7), Value::Int(4_321)];
    expected.extend((9_990..10_000).map(Value::Int));
    assert_eq!(keys, expected);
    assert_eq!(
        scoped.scanned_records, 12,
        "only the matching records were read, not 10,000"
    );

    let full = archive.query(&query, &RowSelector::All).unwrap();
    assert_eq!(full.scanned_records, 10_000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 60, ..ProptestConfig::default() })]

    /// Whatever the keys and the selector, the index answers exactly what a full scan filtered by
    /// the same keys answers.
    #[test]
    fn the_index_agrees_with_a_full_scan(
        batches in prop::collection::vec(prop::collection::vec(-50i64..50, 1..40), 1..6),
        values in prop::collection::vec(-60i64..60, 0..5),
        ranges in prop::collection::vec((-60i64..60, 1i64..20), 0..3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let archive = support::open(dir.path());
        for (b, keys) in batches.iter().enumerate() {
            let rows: Vec<Vec<Value>> = keys.iter().map(|&k| support::row(k, "2026-10")).collect();
            archive.append_records("ledger", &rows, b as i64).unwrap();
        }
        let selector = KeySelector::new(
            "entry",
            values.iter().map(|&v| RowKey::Int(v)),
            ranges.iter().map(|&(lo, len)| KeyRange::new(lo, lo + len).unwrap()),
        );
        let query = Query::rows("ledger", ["entry", "account"]).order_by("entry", false).order_by("account", false);
        let indexed = archive.query(&query, &RowSelector::Keys(selector.clone())).unwrap();
        let scanned = archive.query(&query, &RowSelector::All).unwrap();
        let (ResultBody::Rows(indexed_rows), ResultBody::Rows(all_rows)) = (&indexed.body, &scanned.body) else {
            panic!("rows")
        };
        let expected: Vec<&Vec<Value>> = all_rows
            .iter()
            .filter(|r| matches!(&r[0], Value::Int(k) if selector.contains(&RowKey::Int(*k))))
            .collect();
        prop_assert_eq!(indexed_rows.iter().collect::<Vec<_>>(), expected);
        prop_assert!(indexed.scanned_records <= scanned.scanned_records);
    }
}

#[test]
fn queries_see_appends_at_once_and_filters_apply_to_mapped_records() {
    let dir = tempfile::tempdir().unwrap();
    let archive = support::open(dir.path());
    let query =
        Query::rows("ledger", ["entry"]).filter(Filter::compare("account", CompareOp::Eq, "cash"));
    assert_eq!(
        archive.query(&query, &RowSelector::All).unwrap().body,
        ResultBody::Rows(vec![])
    );
    archive
        .append_records("ledger", &support::rows(0..4, "2026-10"), 1)
        .unwrap();
    let ResultBody::Rows(rows) = archive.query(&query, &RowSelector::All).unwrap().body else {
        panic!()
    };
    assert_eq!(rows, vec![vec![Value::Int(0)], vec![Value::Int(2)]]);
    assert_eq!(archive.stats("ledger").unwrap().records, 4);
}

#[test]
fn config_errors_name_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            support::CONFIG.replace("type = \"decimal\"", "type = \"money\""),
            "collections[0] (\"ledger\").fields[3] (\"amount\").type",
        ),
        (
            support::CONFIG.replace("exposure = \"never\"", "exposure = \"secret\""),
            "exposure",
        ),
        (
            support::CONFIG.replace("key = \"entry\"", "key = \"nope\""),
            "key field \"nope\"",
        ),
        (
            support::CONFIG.replace("period = \"period\"", "period = \"month\""),
            "period",
        ),
        (
            support::CONFIG.replace("min_group_size = 1", "min_group_size = 1\ncolour = \"red\""),
            "colour",
        ),
        (
            support::CONFIG
                .replace("key = \"entry\"", "key = \"memo\"")
                .replace(
                    "{ name = \"memo\", type = \"text\", exposure = \"never\" }",
                    "{ name = \"memo\", type = \"float\" }",
                ),
            "int or text",
        ),
    ];
    for (text, says) in cases {
        let path = dir.path().join("archive.toml");
        std::fs::write(&path, &text).unwrap();
        let error = ArchiveConfig::load(&path).unwrap_err();
        assert!(
            error.to_string().contains(says),
            "expected {says:?} in: {error}"
        );
    }
}
