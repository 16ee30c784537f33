//! What the console subcommands print: aligned tables for people, JSON for scripts.
//!
//! Every string that came from the network (archive ids, labels, values, error messages) passes
//! through [`clean`] before it reaches a terminal, so a hostile Totebox or a strange record
//! cannot move the cursor, retitle the window or forge lines of output.

use std::fmt::Write as _;

use psp_core::query::{CellRef, Table, Value};
use psp_rpc::client::CommandAnswer;
use serde_json::{Value as Json, json};

use crate::console::ArchiveStatus;
use crate::fanout::{SourceOutcome, SourceStatus};
use crate::report::{Body, Report};
use crate::viewports::MatchStatus;

/// `text` with every control character escaped (`\n`, `\u{1b}`, ...).
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A value for a table cell.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        other => clean(&other.to_string()),
    }
}

/// A value for JSON: exact decimals as strings (a JSON number would be read as a float), the
/// rest as their JSON counterparts.
pub fn json_value(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(x) => json!(x),
        Value::Decimal(d) => json!(d.to_string()),
        Value::Text(t) => json!(t),
        Value::Timestamp(t) => json!(t),
    }
}

/// Lays out rows under a header, numbers right-aligned. A row with more cells than the header
/// (from a peer that sent one) is shown whole, never a reason to fail.
pub fn grid(header: &[&str], rows: &[Vec<String>], numeric: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            let width = c.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut parts = Vec::new();
        for (i, c) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            parts.push(if numeric.get(i).copied().unwrap_or(false) {
                format!("{c:>w$}")
            } else {
                format!("{c:<w$}")
            });
        }
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut out, &mut header.iter().copied());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &mut rule.iter().map(String::as_str));
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

/// A merged table; cells that left the 64-bit range read `overflow`.
pub fn table_with(t: &Table, overflows: &[CellRef]) -> String {
    let header: Vec<String> = t.columns.iter().map(|c| clean(&c.name)).collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let numeric: Vec<bool> = t
        .columns
        .iter()
        .map(|c| c.value_type.is_numeric())
        .collect();
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .enumerate()
        .map(|(r, row)| {
            row.iter()
                .enumerate()
                .map(|(c, v)| {
                    if overflows.contains(&CellRef { row: r, column: c }) {
                        OVERFLOW.to_owned()
                    } else {
                        cell(v)
                    }
                })
                .collect()
        })
        .collect();
    let mut out = grid(&header, &rows, &numeric);
    if !overflows.is_empty() {
        let _ = writeln!(
            out,
            "{} cell(s) left the 64-bit range and are shown as {OVERFLOW}; the rest are exact",
            overflows.len()
        );
    }
    out
}

/// What a cell whose exact value left the 64-bit range shows.
pub(crate) const OVERFLOW: &str = "overflow";

/// A merged table.
pub fn table(t: &Table) -> String {
    table_with(t, &[])
}

fn status_word(s: &SourceStatus) -> (&'static str, String) {
    let detail = match s {
        SourceStatus::Unreachable(why)
        | SourceStatus::Error(why)
        | SourceStatus::Quarantined(why) => clean(why),
        SourceStatus::Denied { code, message } | SourceStatus::Rejected { code, message } => {
            clean(&format!("{code}: {message}"))
        }
        SourceStatus::Ok | SourceStatus::TimedOut | SourceStatus::Cancelled => String::new(),
    };
    (s.word(), detail)
}

/// One line per source that did not answer, or nothing when every source did.
pub fn outcomes(list: &[SourceOutcome]) -> String {
    let failed: Vec<Vec<String>> = list
        .iter()
        .filter(|o| o.status != SourceStatus::Ok)
        .map(|o| {
            let (word, detail) = status_word(&o.status);
            vec![
                clean(&o.archive),
                word.to_owned(),
                format!("{} ms", o.latency.as_millis()),
                detail,
            ]
        })
        .collect();
    if failed.is_empty() {
        return format!("all {} sources answered\n", list.len());
    }
    format!(
        "{} of {} sources did not answer:\n{}",
        failed.len(),
        list.len(),
        grid(
            &["archive", "outcome", "latency", "detail"],
            &failed,
            &[false, false, true, false]
        )
    )
}

/// A report for people; with `exceptions_only`, a reconciliation lists only the balances that
/// did not match (its count line still covers every balance).
pub fn report(r: &Report, exceptions_only: bool) -> String {
    let body = match &r.body {
        Body::Table(t) => table_with(t, &r.overflows),
        Body::Reconciliation(entries) => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .filter(|e| !exceptions_only || e.status != MatchStatus::Matched)
                .map(|e| {
                    vec![
                        clean(&e.left),
                        clean(&e.right),
                        cell(&e.period),
                        cell(&e.currency),
                        cell(&e.left_amount),
                        cell(&e.right_amount),
                        cell(&e.difference),
                        if e.overflowed {
                            format!("{} ({OVERFLOW})", match_word(e.status))
                        } else {
                            match_word(e.status).to_owned()
                        },
                    ]
                })
                .collect();
            let count = |s: MatchStatus| entries.iter().filter(|e| e.status == s).count();
            format!(
                "{}{} balances: {} matched, {} mismatched, {} one-sided, {} unknown\n",
                grid(
                    &[
                        "left",
                        "right",
                        "period",
                        "currency",
                        "left",
                        "right",
                        "difference",
                        "status"
                    ],
                    &rows,
                    &[false, false, false, false, true, true, true, false]
                ),
                entries.len(),
                count(MatchStatus::Matched),
                count(MatchStatus::Mismatched),
                count(MatchStatus::LeftOnly) + count(MatchStatus::RightOnly),
                count(MatchStatus::Unknown),
            )
        }
        Body::Summary(kpis) => {
            let rows: Vec<Vec<String>> = kpis
                .iter()
                .map(|k| {
                    vec![
                        clean(&k.name),
                        if k.overflowed {
                            OVERFLOW.to_owned()
                        } else {
                            cell(&k.value)
                        },
                        clean(&k.unit),
                        format!("{}/{}", k.sources.len(), k.sources.len() + k.missing.len()),
                        as_of(k.as_of_oldest),
                    ]
                })
                .collect();
            grid(
                &["figure", "value", "unit", "sources", "as of"],
                &rows,
                &[false, true, false, true, false],
            )
        }
    };
    format!(
        "{body}\n{}data as of {}\n",
        outcomes(&r.outcomes),
        as_of(r.as_of_oldest)
    )
}

pub(crate) fn match_word(s: MatchStatus) -> &'static str {
    match s {
        MatchStatus::Matched => "matched",
        MatchStatus::Mismatched => "MISMATCHED",
        MatchStatus::LeftOnly => "left only",
        MatchStatus::RightOnly => "right only",
        MatchStatus::Unknown => "unknown",
    }
}

pub(crate) fn as_of(micros: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000);
    match at {
        _ if micros == 0 => "unknown".into(),
        Ok(at) => at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| format!("{micros} us")),
        Err(_) => format!("{micros} us"),
    }
}

fn outcome_json(o: &SourceOutcome) -> Json {
    let (word, detail) = match &o.status {
        SourceStatus::Denied { code, message } => {
            ("denied", json!({"code": code, "message": message}))
        }
        SourceStatus::Rejected { code, message } => {
            ("rejected", json!({"code": code, "message": message}))
        }
        other => {
            let (word, detail) = status_word(other);
            (
                word,
                if detail.is_empty() {
                    Json::Null
                } else {
                    json!(detail)
                },
            )
        }
    };
    json!({
        "archive": o.archive,
        "status": word,
        "detail": detail,
        "latency_us": o.latency.as_micros() as u64,
        "as_of": o.as_of,
        "rows": o.rows,
        "suppressed_groups": o.suppressed_groups,
    })
}

/// A report for scripts.
pub fn report_json(r: &Report) -> Json {
    let body = match &r.body {
        Body::Table(t) => json!({
            "columns": t.columns.iter().map(|c| json!({"name": c.name, "type": c.value_type.name()})).collect::<Vec<_>>(),
            "rows": t.rows.iter().map(|row| row.iter().map(json_value).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "overflows": r.overflows.iter().map(|c| json!({"row": c.row, "column": c.column})).collect::<Vec<_>>(),
        }),
        Body::Reconciliation(entries) => json!({
            "entries": entries.iter().map(|e| json!({
                "left": e.left, "right": e.right,
                "period": json_value(&e.period), "currency": json_value(&e.currency),
                "left_amount": json_value(&e.left_amount), "right_amount": json_value(&e.right_amount),
                "difference": json_value(&e.difference),
                "status": match_word(e.status).to_lowercase().replace(' ', "-"),
                "overflowed": e.overflowed,
            })).collect::<Vec<_>>(),
        }),
        Body::Summary(kpis) => json!({
            "kpis": kpis.iter().map(|k| json!({
                "name": k.name, "value": json_value(&k.value), "unit": k.unit,
                "sources": k.sources, "missing": k.missing, "as_of_oldest": k.as_of_oldest,
                "overflowed": k.overflowed,
            })).collect::<Vec<_>>(),
        }),
    };
    let kind = match &r.body {
        Body::Table(_) => "table",
        Body::Reconciliation(_) => "reconciliation",
        Body::Summary(_) => "summary",
    };
    json!({
        "complete": r.complete,
        "as_of_oldest": r.as_of_oldest,
        "outcomes": r.outcomes.iter().map(outcome_json).collect::<Vec<_>>(),
        kind: body,
    })
}

/// The fleet listing for people.
pub fn fleet(archives: &[ArchiveStatus]) -> String {
    let rows: Vec<Vec<String>> = archives
        .iter()
        .map(|a| {
            vec![
                clean(&a.id),
                format!("{:?}", a.health).to_lowercase(),
                if a.latency.is_zero() {
                    String::new()
                } else {
                    format!("{:.1} ms", a.latency.as_secs_f64() * 1e3)
                },
                clean(
                    &a.labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                clean(&a.key),
            ]
        })
        .collect();
    grid(
        &["archive", "health", "latency", "labels", "key"],
        &rows,
        &[false, false, true, false, false],
    )
}

/// The fleet listing for scripts.
pub fn fleet_json(archives: &[ArchiveStatus]) -> Json {
    json!(
        archives
            .iter()
            .map(|a| json!({
                "id": a.id, "labels": a.labels, "key": a.key,
                "health": format!("{:?}", a.health).to_lowercase(),
                "latency_us": a.latency.as_micros() as u64, "last_seen": a.last_seen,
            }))
            .collect::<Vec<_>>()
    )
}

/// A command's per-archive results for people.
pub fn commands(results: &[(SourceOutcome, Option<CommandAnswer>)]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(o, a)| {
            let (word, detail) = status_word(&o.status);
            match a {
                Some(a) => vec![
                    clean(&o.archive),
                    if a.applied { "applied" } else { "replayed" }.to_owned(),
                    clean(&a.message),
                ],
                None => vec![clean(&o.archive), word.to_owned(), detail],
            }
        })
        .collect();
    grid(
        &["archive", "outcome", "detail"],
        &rows,
        &[false, false, false],
    )
}

/// A command's per-archive results for scripts.
pub fn commands_json(results: &[(SourceOutcome, Option<CommandAnswer>)]) -> Json {
    json!(
        results
            .iter()
            .map(|(o, a)| json!({
                "source": outcome_json(o),
                "outcome": a.as_ref().map(|a| json!({
                    "status": if a.applied { "applied" } else { "replayed" },
                    "message": a.message, "as_of": a.as_of,
                })),
            }))
            .collect::<Vec<_>>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let hostile = "prop-01\u{1b}]0;pwned\u{7}\r\nfake line";
        let shown = clean(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}") && shown.contains("\\r\\n"));
        assert_eq!(clean("plain"), "plain");
        let t = Table {
            columns: vec![psp_core::query::Column {
                name: "x\u{1b}[2J".into(),
                value_type: psp_core::query::ValueType::Text,
            }],
            rows: vec![vec![Value::Text("a\u{8}b".into())]],
        };
        assert!(!table(&t).chars().any(|c| c.is_control() && c != '\n'));
    }

    #[test]
    fn a_row_longer_than_its_header_is_shown_not_a_panic() {
        let out = grid(
            &["a"],
            &[vec!["x".into(), "extra".into(), "more".into()]],
            &[false],
        );
        assert!(out.contains("extra") && out.contains("more"), "{out}");
        let t = Table {
            columns: vec![],
            rows: vec![vec![Value::Int(1), Value::Int(2)]],
        };
        assert!(table(&t).contains('2'));
    }

    #[test]
    fn numbers_align_right_and_decimals_stay_exact_in_json() {
        let out = grid(
            &["a", "n"],
            &[
                vec!["x".into(), "1".into()],
                vec!["yy".into(), "100".into()],
            ],
            &[false, true],
        );
        assert_eq!(out, "a     n\n--  ---\nx     1\nyy  100\n");
        let d = psp_core::query::Decimal::parse("12345678901234.57").unwrap();
        assert_eq!(json_value(&Value::Decimal(d)), json!("12345678901234.57"));
    }
}
