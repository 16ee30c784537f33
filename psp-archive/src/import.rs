//! Importing records from CSV and JSON Lines, typed by the collection's schema.
//!
//! An import is all or nothing: every line is read and checked first, and only a file without
//! errors is appended (in batches). An error names the line and the field.
//!
//! * **CSV**: the header names fields of the collection (any subset, any order; fields not named
//!   are null). An empty cell is null.
//! * **JSON Lines**: one object per line; keys are field names; `null` or a missing key is null.
//!
//! Values by field type: `int` an integer; `float` a number; `decimal` a number or a string,
//! parsed exactly ("1234.50", never through a float); `bool` true/false (CSV also 1/0);
//! `timestamp` RFC 3339 text ("2026-10-01T00:00:00Z") or integer microseconds since the epoch;
//! `text` anything.

use std::io::BufRead;
use std::path::Path;

use psp_core::query::{CollectionSchema, Decimal, Value, ValueType};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::RecordArchive;

/// The file formats an import reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl Format {
    /// The format a file name suggests (`.csv`, `.jsonl`/`.ndjson`).
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// Why an import wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line does not fit the schema.
    #[error("{path}, line {line}: {message}")]
    Line {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: u64,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The collection does not exist.
    #[error("the archive has no collection {0:?}")]
    UnknownCollection(String),
    /// The archive refused the records (a sealed period, say).
    #[error("appending: {0}")]
    Append(String),
}

/// Records per appended batch.
const BATCH: usize = 4096;

/// Imports a file into `collection`, stamping the batches with data time `at`. Returns the
/// number of records appended.
pub fn import_file(
    archive: &RecordArchive,
    collection: &str,
    path: &Path,
    format: Format,
    at: i64,
) -> Result<u64, ImportError> {
    let (_, schema) = archive
        .collection(collection)
        .ok_or_else(|| ImportError::UnknownCollection(collection.to_owned()))?;
    let schema = schema.clone();
    // Pass 1 checks everything; pass 2 appends. Nothing is written unless every line is good.
    let total = read_rows(&schema, path, format, |_| Ok(()))?;
    let mut batch = Vec::with_capacity(BATCH.min(total as usize));
    read_rows(&schema, path, format, |row| {
        batch.push(row);
        if batch.len() == BATCH {
            archive
                .append_records(collection, &batch, at)
                .map_err(|e| ImportError::Append(e.to_string()))?;
            batch.clear();
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        archive
            .append_records(collection, &batch, at)
            .map_err(|e| ImportError::Append(e.to_string()))?;
    }
    Ok(total)
}

/// Reads every row of a file, passing each to `sink`; returns how many there were.
fn read_rows(
    schema: &CollectionSchema,
    path: &Path,
    format: Format,
    mut sink: impl FnMut(Vec<Value>) -> Result<(), ImportError>,
) -> Result<u64, ImportError> {
    let shown = path.display().to_string();
    let io = |source| ImportError::Io {
        path: shown.clone(),
        source,
    };
    let line_error = |line: u64, message: String| ImportError::Line {
        path: shown.clone(),
        line,
        message,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut count = 0;
    match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(file);
            let headers = reader
                .headers()
                .map_err(|e| line_error(1, e.to_string()))?
                .clone();
            let mut positions = Vec::new();
            for name in headers.iter() {
                let (i, _) = schema.find(name).ok_or_else(|| {
                    line_error(
                        1,
                        format!("collection {:?} has no field {name:?}", schema.name),
                    )
                })?;
                positions.push(i);
            }
            for (n, record) in reader.records().enumerate() {
                let line = n as u64 + 2;
                let record = record.map_err(|e| line_error(line, e.to_string()))?;
                let mut row = vec![Value::Null; schema.fields.len()];
                for (cell, &i) in record.iter().zip(&positions) {
                    let field = &schema.fields[i];
                    row[i] = parse_text(cell, field.value_type, true)
                        .map_err(|m| line_error(line, format!("field {:?}: {m}", field.name)))?;
                }
                sink(row)?;
                count += 1;
            }
        }
        Format::JsonLines => {
            for (n, text) in std::io::BufReader::new(file).lines().enumerate() {
                let line = n as u64 + 1;
                let text = text.map_err(io)?;
                if text.trim().is_empty() {
                    continue;
                }
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&text)
                        .map_err(|e| line_error(line, format!("not a JSON object: {e}")))?;
                let mut row = vec![Value::Null; schema.fields.len()];
                for (name, json) in object {
                    let (i, field) = schema.find(&name).ok_or_else(|| {
                        line_error(
                            line,
                            format!("collection {:?} has no field {name:?}", schema.name),
                        )
                    })?;
                    row[i] = parse_json(&json, field.value_type)
                        .map_err(|m| line_error(line, format!("field {name:?}: {m}")))?;
                }
                sink(row)?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// A value from text (a CSV cell, or a JSON string).
fn parse_text(text: &str, ty: ValueType, empty_is_null: bool) -> Result<Value, String> {
    if empty_is_null && text.is_empty() {
        return Ok(Value::Null);
    }
    let bad = || format!("{text:?} is not a {}", ty.name());
    Ok(match ty {
        ValueType::Null => Value::Null,
        ValueType::Text => Value::Text(text.to_owned()),
        ValueType::Int => Value::Int(text.trim().parse().map_err(|_| bad())?),
        ValueType::Float => Value::Float(text.trim().parse().map_err(|_| bad())?),
        ValueType::Decimal => Value::Decimal(Decimal::parse(text).ok_or_else(bad)?),
        ValueType::Bool => match text.trim() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(bad()),
        },
        ValueType::Timestamp => Value::Timestamp(parse_timestamp(text.trim()).ok_or_else(bad)?),
    })
}

/// RFC 3339 text or integer microseconds.
fn parse_timestamp(text: &str) -> Option<i64> {
    if let Ok(micros) = text.parse::<i64>() {
        return Some(micros);
    }
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000).ok()
}

fn parse_json(json: &serde_json::Value, ty: ValueType) -> Result<Value, String> {
    use serde_json::Value as J;
    match (json, ty) {
        (J::Null, _) => Ok(Value::Null),
        (J::String(s), _) => parse_text(s, ty, false),
        (J::Bool(b), ValueType::Bool) => Ok(Value::Bool(*b)),
        // With arbitrary precision, a JSON number keeps its exact digits: decimals never pass
        // through a float.
        (
            J::Number(n),
            ValueType::Int | ValueType::Float | ValueType::Decimal | ValueType::Timestamp,
        ) => parse_text(&n.to_string(), ty, false),
        (other, _) => Err(format!("{other} is not a {}", ty.name())),
    }
}

/// Formats a timestamp as RFC 3339 (for exports and the generator's CSV).
pub fn format_timestamp(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| micros.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_by_type() {
        assert_eq!(parse_text("", ValueType::Int, true).unwrap(), Value::Null);
        assert_eq!(
            parse_text("12.50", ValueType::Decimal, true)
                .unwrap()
                .to_string(),
            "12.50"
        );
        assert!(parse_text("12,5", ValueType::Decimal, true).is_err());
        assert_eq!(
            parse_text("2026-10-01T00:00:00Z", ValueType::Timestamp, true).unwrap(),
            Value::Timestamp(1_790_812_800_000_000)
        );
        let exact: serde_json::Value =
            serde_json::from_str("0.1000000000000000055511151231257827").unwrap();
        assert!(
            parse_json(&exact, ValueType::Decimal).is_err(),
            "too many digits is an error, not a rounding"
        );
        let money: serde_json::Value = serde_json::from_str("1234.56").unwrap();
        assert_eq!(
            parse_json(&money, ValueType::Decimal).unwrap().to_string(),
            "1234.56"
        );
        assert_eq!(
            format_timestamp(1_790_812_800_000_000),
            "2026-10-01T00:00:00Z"
        );
    }
}
