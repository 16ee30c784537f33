//! Data in: the generator is deterministic and realistic (intercompany books mostly, not always,
//! reconcile); CSV and JSON Lines imports are typed, all or nothing, and name what is wrong.

mod support;

use std::collections::BTreeMap;

use psp_archive::RecordArchive;
use psp_archive::generate::{GenerateOptions, generate};
use psp_archive::import::{Format, import_file};
use psp_core::RowSelector;
use psp_core::archive::Archive;
use psp_core::query::{Aggregate, AggregateFunction, CompareOp, Decimal, Filter, Query, Value};

fn options(out: &std::path::Path, seed: u64, records: u64) -> GenerateOptions {
    GenerateOptions {
        out: out.to_owned(),
        seed,
        properties: 3,
        subsidiaries: 4,
        records,
    }
}

fn archive_bytes(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in walk(dir) {
        files.insert(
            entry.strip_prefix(dir).unwrap().display().to_string(),
            std::fs::read(&entry).unwrap(),
        );
    }
    files
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path))
        } else {
            out.push(path)
        }
    }
    out
}

#[test]
fn the_same_seed_writes_the_same_bytes() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(&options(a.path(), 11, 600)).unwrap();
    generate(&options(b.path(), 11, 600)).unwrap();
    generate(&options(c.path(), 12, 600)).unwrap();
    assert_eq!(archive_bytes(a.path()), archive_bytes(b.path()));
    assert_ne!(archive_bytes(a.path()), archive_bytes(c.path()));
}

#[test]
fn archive_sizes_follow_the_requested_record_count() {
    for records in [100u64, 20_000] {
        let dir = tempfile::tempdir().unwrap();
        let manifest = generate(&options(dir.path(), 3, records)).unwrap();
        assert_eq!(manifest.archives.len(), 7);
        for archive in &manifest.archives {
            assert!(
                archive.records >= records / 3 && archive.records <= records * 2 + 300,
                "{} holds {} records for a target of {records}",
                archive.id,
                archive.records
            );
            let opened = RecordArchive::open_config(&dir.path().join(&archive.config)).unwrap();
            assert_eq!(opened.total_records(), archive.records);
        }
    }
}

#[test]
fn intercompany_balances_mostly_but_not_always_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    generate(&options(dir.path(), 7, 2_000)).unwrap();
    // What each subsidiary books against each other one, per period and currency.
    let query = Query::aggregate(
        "ledger",
        ["counterparty", "period", "currency"],
        [Aggregate::of(AggregateFunction::Sum, "amount")],
    )
    .filter(Filter::In {
        field: "account".into(),
        values: vec![
            "intercompany_receivable".into(),
            "intercompany_payable".into(),
        ],
    });
    let mut books: BTreeMap<(String, String, String, String), Decimal> = BTreeMap::new();
    for i in 1..=4 {
        let owner = format!("sub-{i:02}");
        let archive =
            RecordArchive::open_config(&dir.path().join(&owner).join("archive.toml")).unwrap();
        for row in archive
            .query(&query, &RowSelector::All)
            .unwrap()
            .finalize(&query)
            .unwrap()
            .rows
        {
            let [
                Value::Text(cp),
                Value::Text(period),
                Value::Text(cur),
                Value::Decimal(amount),
            ] = &row[..]
            else {
                panic!("{row:?}")
            };
            books.insert(
                (owner.clone(), cp.clone(), period.clone(), cur.clone()),
                *amount,
            );
        }
    }
    let (mut matched, mut mismatched, mut one_sided) = (0, 0, 0);
    for ((owner, cp, period, cur), amount) in &books {
        if owner > cp {
            if !books.contains_key(&(cp.clone(), owner.clone(), period.clone(), cur.clone())) {
                one_sided += 1;
            }
            continue;
        }
        match books.get(&(cp.clone(), owner.clone(), period.clone(), cur.clone())) {
            None => one_sided += 1,
            Some(other) if other.checked_add(amount) == Decimal::new(0, 2) => matched += 1,
            Some(_) => mismatched += 1,
        }
    }
    let total = matched + mismatched + one_sided;
    assert_eq!(
        total,
        6 * 24,
        "every pair of four subsidiaries, every month"
    );
    assert!(
        matched * 100 >= total * 85,
        "{matched} of {total} reconcile"
    );
    assert!(
        mismatched > 0 && one_sided > 0,
        "{mismatched} mismatched, {one_sided} one-sided"
    );
}

#[test]
fn generated_tenants_never_leave_and_rents_only_in_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    generate(&options(dir.path(), 5, 1_000)).unwrap();
    let archive = RecordArchive::open_config(&dir.path().join("prop-01/archive.toml")).unwrap();
    let error = archive
        .query(&Query::rows("leases", ["tenant"]), &RowSelector::All)
        .unwrap_err();
    assert_eq!(error.code(), "policy.field-not-exposed");
    let error = archive
        .query(&Query::rows("leases", ["monthly_rent"]), &RowSelector::All)
        .unwrap_err();
    assert_eq!(error.code(), "policy.aggregate-only");
    let rents = Query::aggregate(
        "leases",
        ["tenant_class"],
        [Aggregate::of(AggregateFunction::Avg, "monthly_rent")],
    );
    assert!(archive.query(&rents, &RowSelector::All).is_ok());
}

#[test]
fn csv_and_json_lines_import_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let archive = support::open(dir.path());
    let csv = dir.path().join("ledger.csv");
    std::fs::write(
        &csv,
        "entry,period,account,amount\n1,2026-10,cash,1234.50\n2,2026-10,receivables,\n",
    )
    .unwrap();
    assert_eq!(
        import_file(&archive, "ledger", &csv, Format::Csv, 1).unwrap(),
        2
    );
    let jsonl = dir.path().join("ledger.jsonl");
    std::fs::write(&jsonl, "{\"entry\": 3, \"period\": \"2026-11\", \"amount\": 0.10}\n\n{\"entry\": 4, \"amount\": \"-7\", \"memo\": null}\n").unwrap();
    assert_eq!(
        import_file(&archive, "ledger", &jsonl, Format::JsonLines, 2).unwrap(),
        2
    );

    let q = Query::aggregate(
        "ledger",
        [],
        [
            Aggregate::count(),
            Aggregate::of(AggregateFunction::Sum, "amount"),
        ],
    );
    let row = &archive
        .query(&q, &RowSelector::All)
        .unwrap()
        .finalize(&q)
        .unwrap()
        .rows[0];
    assert_eq!(row[0], Value::Int(4));
    assert_eq!(row[1], Value::Decimal(Decimal::parse("1227.60").unwrap()));
    let cash =
        Query::rows("ledger", ["entry"]).filter(Filter::compare("account", CompareOp::Eq, "cash"));
    assert_eq!(
        archive
            .query(&cash, &RowSelector::All)
            .unwrap()
            .finalize(&cash)
            .unwrap()
            .rows,
        vec![vec![Value::Int(1)]]
    );
}

#[test]
fn a_bad_line_names_itself_and_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let archive = support::open(dir.path());
    let cases = [
        (
            "bad.csv",
            "entry,period,amount\n1,2026-10,5.00\n2,2026-10,12,5\n",
            "line 3",
        ),
        (
            "typo.csv",
            "entry,period,amount\n1,2026-10,5.00\n2,2026-10,1e3\n",
            "line 3: field \"amount\": \"1e3\" is not a decimal",
        ),
        ("column.csv", "entry,colour\n1,red\n", "no field \"colour\""),
        (
            "bad.jsonl",
            "{\"entry\": 1}\n{\"entry\": \"two\"}\n",
            "line 2: field \"entry\"",
        ),
        (
            "float.jsonl",
            "{\"entry\": 1.5}\n",
            "line 1: field \"entry\"",
        ),
        ("array.jsonl", "[1, 2]\n", "line 1: not a JSON object"),
    ];
    for (name, text, says) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let format = Format::from_path(&path).unwrap();
        let error = import_file(&archive, "ledger", &path, format, 1).unwrap_err();
        assert!(
            error.to_string().contains(says),
            "{name}: expected {says:?} in {error}"
        );
    }
    assert_eq!(
        archive.total_records(),
        0,
        "nothing from any bad file was appended"
    );
}
