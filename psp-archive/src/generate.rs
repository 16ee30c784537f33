//! Sample data: a realistic fleet of archives, deterministic from a seed.
//!
//! * **Properties** of a real-estate portfolio, one archive each: `leases` (tenant names never
//!   leave; rents only in aggregates of 3 or more), `rent_roll` (billed and collected rent per
//!   lease per month), `occupancy`, `statements` (monthly revenue, operating expenses, net
//!   operating income), `opex` (expenses by category) and `valuations` (quarterly).
//! * **Subsidiaries** of a holding company, one archive each: a `ledger` with revenue, expenses,
//!   cash, and intercompany balances with the other subsidiaries. What A records as receivable
//!   from B, B records as payable to A (opposite sign); most pairs agree, a few disagree by a
//!   small amount or are recorded on one side only, as real books do.
//!
//! The same options always write the same bytes (data times included), so tests and benchmarks
//! can rely on the content. Records are written in key order, in batches, so the key index can
//! skip batches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use psp_core::query::{Decimal, Value};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::RecordArchive;
use crate::config::{ArchiveConfig, CollectionConfig, FieldConfig};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// The folder to write into (one subfolder per archive, plus `manifest.toml`).
    pub out: PathBuf,
    /// The seed: the same seed gives the same data.
    pub seed: u64,
    /// How many property archives.
    pub properties: usize,
    /// How many subsidiary archives.
    pub subsidiaries: usize,
    /// Roughly how many records each archive holds (at least about 100).
    pub records: u64,
}

/// What was generated: the archives and the labels an orchestrator's fleet config would give
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// The archives.
    pub archives: Vec<ManifestEntry>,
}

/// One generated archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestEntry {
    /// Its id.
    pub id: String,
    /// Its config file, relative to the manifest.
    pub config: PathBuf,
    /// Labels: entity (property or subsidiary), region, portfolio.
    pub labels: BTreeMap<String, String>,
    /// Records written.
    pub records: u64,
}

/// The data time stamped on generated records: 2026-11-01T00:00:00Z.
pub const AS_OF: i64 = 1_793_491_200_000_000;
/// Months of history: 2024-11 to 2026-10.
const MONTHS: usize = 24;
const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
const TENANT_CLASSES: [&str; 4] = ["retail", "office", "healthcare", "logistics"];
const OPEX: [&str; 6] = [
    "utilities",
    "maintenance",
    "insurance",
    "taxes",
    "management",
    "security",
];
const BATCH: usize = 4096;

fn period(month: usize) -> String {
    let index = 2024 * 12 + 10 + month; // month 0 is 2024-11
    format!("{}-{:02}", index / 12, index % 12 + 1)
}

/// Whole dollars as cents.
const fn dollars(n: i64) -> i64 {
    n * 100
}

fn money(cents: i64) -> Value {
    Value::Decimal(Decimal::new(cents, 2).expect("scale 2"))
}

fn field(name: &str, value_type: &str, exposure: &str) -> FieldConfig {
    FieldConfig {
        name: name.into(),
        value_type: value_type.into(),
        exposure: exposure.into(),
    }
}

fn collection(
    name: &str,
    key: &str,
    period: Option<&str>,
    min: u32,
    fields: Vec<FieldConfig>,
) -> CollectionConfig {
    CollectionConfig {
        name: name.into(),
        key: key.into(),
        period: period.map(str::to_owned),
        min_group_size: min,
        fields,
    }
}

/// Why generation stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// Writing failed.
    #[error("generating into {path}: {message}")]
    Write {
        /// Where.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Writes the fleet and its manifest.
pub fn generate(options: &GenerateOptions) -> Result<Manifest, GenerateError> {
    let fail = |path: &Path, message: String| GenerateError::Write {
        path: path.to_owned(),
        message,
    };
    std::fs::create_dir_all(&options.out).map_err(|e| fail(&options.out, e.to_string()))?;
    let mut archives = Vec::new();
    for i in 0..options.properties {
        let id = format!("prop-{:02}", i + 1);
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ (0x5052_4f50_0000 + i as u64));
        let labels = BTreeMap::from([
            ("entity".to_owned(), "property".to_owned()),
            ("region".to_owned(), REGIONS[i % REGIONS.len()].to_owned()),
            (
                "portfolio".to_owned(),
                if i % 3 == 2 { "value-add" } else { "core" }.to_owned(),
            ),
        ]);
        let written = write_archive(options, &id, property_config(&id), |archive| {
            property(archive, &mut rng, options.records)
        })
        .map_err(|m| fail(&options.out.join(&id), m))?;
        archives.push(ManifestEntry {
            config: PathBuf::from(&id).join("archive.toml"),
            id,
            labels,
            records: written,
        });
    }
    let books = intercompany(options);
    for i in 0..options.subsidiaries {
        let id = subsidiary_id(i);
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ (0x5355_4253_0000 + i as u64));
        let labels = BTreeMap::from([
            ("entity".to_owned(), "subsidiary".to_owned()),
            (
                "region".to_owned(),
                REGIONS[(i + 1) % REGIONS.len()].to_owned(),
            ),
            ("portfolio".to_owned(), "holding".to_owned()),
        ]);
        let mine: Vec<&Balance> = books.iter().filter(|b| b.owner == id).collect();
        let written = write_archive(options, &id, subsidiary_config(&id), |archive| {
            ledger(archive, &mut rng, options.records, &mine)
        })
        .map_err(|m| fail(&options.out.join(&id), m))?;
        archives.push(ManifestEntry {
            config: PathBuf::from(&id).join("archive.toml"),
            id,
            labels,
            records: written,
        });
    }
    let manifest = Manifest { archives };
    let text = toml::to_string(&manifest).map_err(|e| fail(&options.out, e.to_string()))?;
    let path = options.out.join("manifest.toml");
    std::fs::write(&path, text).map_err(|e| fail(&path, e.to_string()))?;
    Ok(manifest)
}

fn subsidiary_id(i: usize) -> String {
    format!("sub-{:02}", i + 1)
}

fn write_archive(
    options: &GenerateOptions,
    id: &str,
    config: ArchiveConfig,
    fill: impl FnOnce(&RecordArchive) -> Result<u64, String>,
) -> Result<u64, String> {
    let dir = options.out.join(id);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let data = dir.join(&config.file);
    if data.exists() {
        return Err(format!(
            "{} already exists; generate into an empty folder",
            data.display()
        ));
    }
    std::fs::write(
        dir.join("archive.toml"),
        toml::to_string(&config).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let archive =
        RecordArchive::create_at(config.resolve(&dir)?, AS_OF).map_err(|e| e.to_string())?;
    fill(&archive)
}

/// Appends rows in batches as they are made, so a ten-million-record archive never sits in
/// memory whole.
struct Appender<'a> {
    archive: &'a RecordArchive,
    collection: &'static str,
    batch: Vec<Vec<Value>>,
    written: u64,
}

impl<'a> Appender<'a> {
    fn new(archive: &'a RecordArchive, collection: &'static str) -> Self {
        Self {
            archive,
            collection,
            batch: Vec::with_capacity(BATCH),
            written: 0,
        }
    }

    /// Rows pushed so far (written or waiting).
    fn count(&self) -> u64 {
        self.written + self.batch.len() as u64
    }

    fn push(&mut self, row: Vec<Value>) -> Result<(), String> {
        self.batch.push(row);
        if self.batch.len() == BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if !self.batch.is_empty() {
            self.archive
                .append_records(self.collection, &self.batch, AS_OF)
                .map_err(|e| e.to_string())?;
            self.written += self.batch.len() as u64;
            self.batch.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<u64, String> {
        self.flush()?;
        Ok(self.written)
    }
}

/// Appends a small, already built set of rows.
fn append(
    archive: &RecordArchive,
    collection: &'static str,
    rows: Vec<Vec<Value>>,
) -> Result<u64, String> {
    let mut appender = Appender::new(archive, collection);
    for row in rows {
        appender.push(row)?;
    }
    appender.finish()
}

fn property_config(id: &str) -> ArchiveConfig {
    ArchiveConfig {
        id: id.into(),
        file: PathBuf::from("archive.psp"),
        snapshots: PathBuf::from("snapshots"),
        server: None,
        collections: vec![
            collection(
                "leases",
                "lease_id",
                None,
                3,
                vec![
                    field("lease_id", "text", "value"),
                    field("unit", "text", "value"),
                    field("tenant", "text", "never"),
                    field("tenant_class", "text", "value"),
                    field("sqft", "int", "value"),
                    field("start", "timestamp", "value"),
                    field("end", "timestamp", "value"),
                    field("monthly_rent", "decimal", "aggregate-only"),
                ],
            ),
            collection(
                "rent_roll",
                "entry",
                Some("period"),
                3,
                vec![
                    field("entry", "int", "value"),
                    field("period", "text", "value"),
                    field("lease_id", "text", "value"),
                    field("billed", "decimal", "aggregate-only"),
                    field("collected", "decimal", "aggregate-only"),
                ],
            ),
            collection(
                "occupancy",
                "period",
                Some("period"),
                1,
                vec![
                    field("period", "text", "value"),
                    field("units_total", "int", "value"),
                    field("units_occupied", "int", "value"),
                ],
            ),
            collection(
                "statements",
                "period",
                Some("period"),
                1,
                vec![
                    field("period", "text", "value"),
                    field("revenue", "decimal", "value"),
                    field("operating_expenses", "decimal", "value"),
                    field("noi", "decimal", "value"),
                ],
            ),
            collection(
                "opex",
                "entry",
                Some("period"),
                1,
                vec![
                    field("entry", "int", "value"),
                    field("period", "text", "value"),
                    field("category", "text", "value"),
                    field("amount", "decimal", "value"),
                ],
            ),
            collection(
                "valuations",
                "period",
                None,
                1,
                vec![
                    field("period", "text", "value"),
                    field("value", "decimal", "value"),
                    field("method", "text", "value"),
                ],
            ),
        ],
    }
}

fn property(archive: &RecordArchive, rng: &mut impl Rng, records: u64) -> Result<u64, String> {
    // Most records are the rent roll: one per lease per month.
    let leases = ((records as f64 * 0.85) / MONTHS as f64).round().max(3.0) as usize;
    let units = leases + leases / 8 + 1;
    let month_micros = 30 * 86_400 * 1_000_000i64;
    let start_of_history = 1_730_419_200_000_000i64; // 2024-11-01

    let mut lease_rows = Vec::with_capacity(leases);
    let mut terms = Vec::with_capacity(leases);
    for l in 0..leases {
        let rent_cents = rng.random_range(dollars(800)..dollars(12_000));
        let start_month = rng.random_range(0..MONTHS as i64) - 12; // some began before the history
        let months = rng.random_range(12..61i64);
        terms.push((start_month, start_month + months, rent_cents));
        lease_rows.push(vec![
            Value::from(format!("L{:06}", l + 1).as_str()),
            Value::from(format!("U{:04}", l + 1).as_str()),
            Value::from(
                format!("Tenant {} {}", l + 1, ["Ltd", "LLC", "Inc", "Co"][l % 4]).as_str(),
            ),
            Value::from(TENANT_CLASSES[rng.random_range(0..TENANT_CLASSES.len())]),
            Value::Int(rng.random_range(400..20_000)),
            Value::Timestamp(start_of_history + start_month * month_micros),
            Value::Timestamp(start_of_history + (start_month + months) * month_micros),
            money(rent_cents),
        ]);
    }
    let mut written = append(archive, "leases", lease_rows)?;

    let mut rent = Appender::new(archive, "rent_roll");
    let mut revenue = [0i64; MONTHS];
    let mut occupied = [0i64; MONTHS];
    for (l, &(start, end, cents)) in terms.iter().enumerate() {
        for (m, (revenue, occupied)) in revenue.iter_mut().zip(occupied.iter_mut()).enumerate() {
            let month = m as i64;
            if month < start || month >= end {
                continue;
            }
            // Most tenants pay in full; some pay part; a few pay nothing that month.
            let collected = match rng.random_range(0..100) {
                0..=3 => 0,
                4..=11 => cents * rng.random_range(40..100) / 100,
                _ => cents,
            };
            *revenue += collected;
            *occupied += 1;
            rent.push(vec![
                Value::Int(rent.count() as i64 + 1),
                Value::from(period(m).as_str()),
                Value::from(format!("L{:06}", l + 1).as_str()),
                money(cents),
                money(collected),
            ])?;
        }
    }
    written += rent.finish()?;

    let occupancy = (0..MONTHS)
        .map(|m| {
            vec![
                Value::from(period(m).as_str()),
                Value::Int(units as i64),
                Value::Int(occupied[m]),
            ]
        })
        .collect();
    written += append(archive, "occupancy", occupancy)?;

    let mut opex = Vec::new();
    let mut expenses = [0i64; MONTHS];
    for (m, expense) in expenses.iter_mut().enumerate() {
        for category in OPEX {
            let cents = rng.random_range(dollars(500)..dollars(units as i64 * 150 + 1_000));
            *expense += cents;
            opex.push(vec![
                Value::Int(opex.len() as i64 + 1),
                Value::from(period(m).as_str()),
                Value::from(category),
                money(cents),
            ]);
        }
    }
    written += append(archive, "opex", opex)?;

    let statements = (0..MONTHS)
        .map(|m| {
            vec![
                Value::from(period(m).as_str()),
                money(revenue[m]),
                money(expenses[m]),
                money(revenue[m] - expenses[m]),
            ]
        })
        .collect();
    written += append(archive, "statements", statements)?;

    let annual_noi: i64 = revenue
        .iter()
        .zip(&expenses)
        .skip(MONTHS - 12)
        .map(|(r, e)| r - e)
        .sum();
    let valuations = (0..MONTHS)
        .step_by(3)
        .map(|m| {
            // A cap rate between 5% and 7.5%, drifting quarter to quarter.
            let cap_bp = rng.random_range(500..750i64);
            vec![
                Value::from(period(m).as_str()),
                money(annual_noi.max(dollars(100_000)) * 10_000 / cap_bp),
                Value::from(if m % 12 == 0 {
                    "appraisal"
                } else {
                    "income-approach"
                }),
            ]
        })
        .collect();
    written += append(archive, "valuations", valuations)?;
    Ok(written)
}

fn subsidiary_config(id: &str) -> ArchiveConfig {
    ArchiveConfig {
        id: id.into(),
        file: PathBuf::from("archive.psp"),
        snapshots: PathBuf::from("snapshots"),
        server: None,
        collections: vec![collection(
            "ledger",
            "entry",
            Some("period"),
            1,
            vec![
                field("entry", "int", "value"),
                field("period", "text", "value"),
                field("account", "text", "value"),
                field("counterparty", "text", "value"),
                field("currency", "text", "value"),
                field("amount", "decimal", "value"),
                field("memo", "text", "never"),
            ],
        )],
    }
}

/// One intercompany balance as one subsidiary books it.
#[derive(Debug, Clone)]
struct Balance {
    owner: String,
    counterparty: String,
    month: usize,
    currency: &'static str,
    cents: i64,
}

/// Intercompany balances between every pair of subsidiaries, each month: the lender books a
/// receivable (+), the borrower a payable (-). About 5% disagree by a small amount and 2% are
/// booked by the lender only.
fn intercompany(options: &GenerateOptions) -> Vec<Balance> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x4943_0000);
    let mut books = Vec::new();
    for a in 0..options.subsidiaries {
        for b in a + 1..options.subsidiaries {
            let (lender, borrower) = if rng.random_range(0..2) == 0 {
                (a, b)
            } else {
                (b, a)
            };
            for month in 0..MONTHS {
                let currency = if rng.random_range(0..4) == 0 {
                    "EUR"
                } else {
                    "USD"
                };
                let cents = rng.random_range(dollars(10_000)..dollars(500_000));
                books.push(Balance {
                    owner: subsidiary_id(lender),
                    counterparty: subsidiary_id(borrower),
                    month,
                    currency,
                    cents,
                });
                match rng.random_range(0..100) {
                    0..=1 => {} // booked by the lender only
                    2..=6 => books.push(Balance {
                        owner: subsidiary_id(borrower),
                        counterparty: subsidiary_id(lender),
                        month,
                        currency,
                        cents: -(cents + rng.random_range(1..50_000)),
                    }),
                    _ => books.push(Balance {
                        owner: subsidiary_id(borrower),
                        counterparty: subsidiary_id(lender),
                        month,
                        currency,
                        cents: -cents,
                    }),
                }
            }
        }
    }
    books
}

fn ledger(
    archive: &RecordArchive,
    rng: &mut impl Rng,
    records: u64,
    intercompany: &[&Balance],
) -> Result<u64, String> {
    let mut rows = Appender::new(archive, "ledger");
    let per_month = ((records as usize).saturating_sub(intercompany.len()) / MONTHS).max(2);
    for month in 0..MONTHS {
        for entry in intercompany.iter().filter(|b| b.month == month) {
            let account = if entry.cents >= 0 {
                "intercompany_receivable"
            } else {
                "intercompany_payable"
            };
            rows.push(vec![
                Value::Int(rows.count() as i64 + 1),
                Value::from(period(month).as_str()),
                Value::from(account),
                Value::from(entry.counterparty.as_str()),
                Value::from(entry.currency),
                money(entry.cents),
                Value::from(
                    format!("intercompany {} {}", entry.counterparty, period(month)).as_str(),
                ),
            ])?;
        }
        for _ in 0..per_month {
            let (account, sign) = match rng.random_range(0..3) {
                0 => ("revenue", 1),
                1 => ("expense", -1),
                _ => ("cash", if rng.random_range(0..2) == 0 { 1 } else { -1 }),
            };
            rows.push(vec![
                Value::Int(rows.count() as i64 + 1),
                Value::from(period(month).as_str()),
                Value::from(account),
                Value::from("external"),
                Value::from(if rng.random_range(0..5) == 0 {
                    "EUR"
                } else {
                    "USD"
                }),
                money(sign * rng.random_range(dollars(100)..dollars(250_000))),
                Value::from(format!("invoice {}", rng.random_range(100_000..999_999)).as_str()),
            ])?;
        }
    }
    rows.finish()
}
