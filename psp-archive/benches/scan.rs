//! Scan speed of the memory-mapped archive, next to the raw read bandwidth of the same mapped
//! file measured in the same run.
//!
//! Run: `cargo bench -p psp-archive --bench scan` (records: `PSP_BENCH_RECORDS`, default
//! 2,000,000; the archive is generated into a temporary folder first, outside the timings).
//!
//! * `scan/raw-pass`: one pass over every byte of the mapped file (summing it as 64-bit words),
//!   the ceiling any query over the file can reach.
//! * `scan/filter-sum`: `sum(amount) where account = 'cash'` over the ledger through the query
//!   engine, reading records in place. Goal: at least 0.3 of the raw pass's bytes per second.
//!
//! Both report bytes of the file per second; `records/filter-sum` reports records per second.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use psp_archive::RecordArchive;
use psp_archive::generate::{GenerateOptions, generate};
use psp_core::RowSelector;
use psp_core::archive::Archive;
use psp_core::query::{Aggregate, AggregateFunction, CompareOp, Filter, Query};

fn scan(c: &mut Criterion) {
    let records: u64 = std::env::var("PSP_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().expect("temporary folder");
    generate(&GenerateOptions {
        out: dir.path().to_owned(),
        seed: 1,
        properties: 0,
        subsidiaries: 1,
        records,
    })
    .expect("generate the ledger");
    let archive =
        RecordArchive::open_config(&dir.path().join("sub-01/archive.toml")).expect("open");
    let bytes = archive.committed_len();
    let total = archive.total_records();
    let query = Query::aggregate(
        "ledger",
        [],
        [Aggregate::of(AggregateFunction::Sum, "amount")],
    )
    .filter(Filter::compare("account", CompareOp::Eq, "cash"));
    eprintln!(
        "ledger: {total} records, {bytes} bytes ({:.1} bytes/record)",
        bytes as f64 / total as f64
    );

    let mut group = c.benchmark_group("scan");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("raw-pass", |b| {
        b.iter(|| {
            archive.with_mapped_bytes(|mapped| {
                let (words, _) = mapped.as_chunks::<8>();
                words
                    .iter()
                    .fold(0u64, |sum, w| sum.wrapping_add(u64::from_le_bytes(*w)))
            })
        })
    });
    group.bench_function("filter-sum", |b| {
        b.iter(|| {
            black_box(
                archive
                    .query(black_box(&query), &RowSelector::All)
                    .expect("query"),
            )
        })
    });
    group.finish();

    let mut group = c.benchmark_group("records");
    group.sample_size(20);
    group.throughput(Throughput::Elements(total));
    group.bench_function("filter-sum", |b| {
        b.iter(|| {
            black_box(
                archive
                    .query(black_box(&query), &RowSelector::All)
                    .expect("query"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
