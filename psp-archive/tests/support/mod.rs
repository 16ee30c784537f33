//! A small archive for psp-archive's tests: one `ledger` collection with a period field.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use psp_archive::{ArchiveConfig, Loaded, RecordArchive};
use psp_core::query::{Decimal, Value};

pub const CONFIG: &str = r#"
id = "sub-01"
file = "sub-01.psp"

[[collections]]
name = "ledger"
key = "entry"
period = "period"
min_group_size = 1
fields = [
  { name = "entry", type = "int" },
  { name = "period", type = "text" },
  { name = "account", type = "text" },
  { name = "amount", type = "decimal" },
  { name = "memo", type = "text", exposure = "never" },
]
"#;

pub fn loaded(dir: &Path) -> Loaded {
    let config: ArchiveConfig = toml::from_str(CONFIG).unwrap();
    config.resolve(dir).unwrap()
}

/// The test archive in `dir`: created on first use, opened after.
pub fn open(dir: &Path) -> RecordArchive {
    if dir.join("sub-01.psp").exists() {
        RecordArchive::open(loaded(dir)).unwrap()
    } else {
        RecordArchive::create(loaded(dir)).unwrap()
    }
}

/// A ledger row: entry n in `period`, amount n.25, a memo that must never leave.
pub fn row(n: i64, period: &str) -> Vec<Value> {
    vec![
        Value::Int(n),
        Value::from(period),
        Value::from(if n % 2 == 0 { "cash" } else { "receivables" }),
        Value::Decimal(Decimal::new(n * 100 + 25, 2).unwrap()),
        Value::from(format!("memo for entry {n}").as_str()),
    ]
}

pub fn rows(range: std::ops::Range<i64>, period: &str) -> Vec<Vec<Value>> {
    range.map(|n| row(n, period)).collect()
}
