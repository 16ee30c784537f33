//! A merge handed up a tree of aggregators, unfinished: what a regional orchestrator answers the
//! orchestrator above it.
//!
//! [`Merger::into_partial`] turns the merged answers into one answer to the same query, shaped as
//! a single Totebox's (groups with their partial aggregate states, or rows), so the tier above
//! folds it in as it folds any source's, and the final table is the one a flat merge gives:
//!
//! * counts, min, max and integer or decimal sums are exact; an average travels as its sum and
//!   count, never as a rounded average;
//! * aggregate queries are not ordered or limited here (a group's final value is not known until
//!   every tier has merged); rows are ordered and cut to the query's limit, which is exact since
//!   the top rows of a union are among the top rows of its parts;
//! * a sum that leaves the 64-bit range cannot travel as a value: its cell is listed in the
//!   answer's overflows and the tier above keeps it overflowed ([`Merger::add_marked`]). A flat
//!   merge, which adds in 128 bits, could still bring such a sum back into range; the tree reports
//!   it overflowed instead, never a wrong number;
//! * values travel as they are, never converted: a `Merger` handed up must hold answers that
//!   declared the same column types (the caller keeps one per set of types, and sends each
//!   unfinished merge as its own part), so every value of a column has the column's type, as in
//!   one Totebox's answer; float sums are rounded once per tier.

use std::collections::BTreeMap;

use super::{Body, Cell, CellRef, Merger, most_declared, order_rows};
use crate::query::model::{AggregateFunction, Shape};
use crate::query::result::{Column, Group, Partial, QueryResult, ResultBody};
use crate::query::value::{Value, ValueType};

/// A merge not yet finalized: one answer to the merger's query, with the cells that left the
/// 64-bit range on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialMerge {
    /// Answers merged.
    pub parts: usize,
    /// The merged answers as one answer to the query (`None` when nothing was merged).
    pub result: Option<QueryResult>,
    /// Cells of `result` (row: the group's index; column: the column's index) whose exact value
    /// left the 64-bit range. Their state in `result` is empty; the tier above must keep them
    /// overflowed.
    pub overflows: Vec<CellRef>,
}

impl Merger {
    /// The answers merged so far as one unfinished answer (see the module docs).
    pub fn into_partial(self) -> PartialMerge {
        if self.parts == 0 {
            return PartialMerge {
                parts: 0,
                result: None,
                overflows: Vec::new(),
            };
        }
        let names: Vec<String> = super::expected_columns(&self.query)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut overflows = Vec::new();
        let (columns, body) = match self.body {
            Body::Rows(mut rows) => {
                order_rows(&mut rows, &self.query);
                (
                    declared_columns(&names, &self.declared),
                    ResultBody::Rows(rows.into_iter().map(|r| r.values).collect()),
                )
            }
            Body::Groups(groups) => {
                let functions: Vec<AggregateFunction> = match &self.query.shape {
                    Shape::Aggregate { aggregates, .. } => {
                        aggregates.iter().map(|a| a.function).collect()
                    }
                    Shape::Rows(_) => Vec::new(),
                };
                let key_columns = names.len() - functions.len();
                // Each group as a row of values (its key, then each aggregate's value as it
                // travels), with its records and counts beside it.
                let mut rows = Vec::with_capacity(groups.len());
                let mut counts = Vec::with_capacity(groups.len());
                for (g, (key, group)) in groups.into_iter().enumerate() {
                    let mut row = key;
                    let mut row_counts = Vec::with_capacity(functions.len());
                    for (i, cell) in group.cells.iter().enumerate().take(functions.len()) {
                        let (value, count) = match travelling(cell) {
                            Some(v) => v,
                            None => {
                                overflows.push(CellRef {
                                    row: g,
                                    column: key_columns + i,
                                });
                                // An empty state; a count keeps the group's records, so the
                                // part still conforms (`count(*)` is its group's records).
                                (Value::Null, 0)
                            }
                        };
                        row.push(value);
                        row_counts.push(count);
                    }
                    rows.push(row);
                    counts.push((group.records, row_counts));
                }
                let columns = declared_columns(&names, &self.declared);
                let marked: std::collections::HashSet<(usize, usize)> =
                    overflows.iter().map(|c| (c.row, c.column)).collect();
                let groups = rows
                    .into_iter()
                    .zip(counts)
                    .enumerate()
                    .map(|(g, (mut row, (records, row_counts)))| {
                        let values = row.split_off(key_columns);
                        let aggregates = values
                            .into_iter()
                            .zip(&functions)
                            .zip(row_counts)
                            .enumerate()
                            .map(|(i, ((value, function), count))| match function {
                                AggregateFunction::Count
                                    if marked.contains(&(g, key_columns + i)) =>
                                {
                                    Partial::Count(records)
                                }
                                _ => state(*function, value, count),
                            })
                            .collect();
                        Group {
                            key: row,
                            records,
                            aggregates,
                        }
                    })
                    .collect();
                (columns, ResultBody::Groups(groups))
            }
        };
        PartialMerge {
            parts: self.parts,
            result: Some(QueryResult {
                as_of: self.as_of.unwrap_or(0),
                columns,
                body,
                suppressed_groups: self.suppressed_groups,
                scanned_records: self.scanned_records,
            }),
            overflows,
        }
    }
}

/// One merged cell as it travels: its value (a count, a sum, a min or max) and how many values
/// it counted; `None` when it left the range.
fn travelling(cell: &Cell) -> Option<(Value, u64)> {
    match cell {
        Cell::Count(n) => Some((Value::Int(i64::try_from(*n).ok()?), *n)),
        Cell::Sum(s) if s.count == 0 => Some((Value::Null, 0)),
        // An average's sum travels unrounded, like a sum's: exact unless a float took part.
        Cell::Sum(s) => Some((s.total()?, s.count)),
        Cell::Min(v) | Cell::Max(v) => Some((v.clone(), 0)),
        Cell::Overflowed => None,
    }
}

/// The partial state of `function` from the value and count that travel.
fn state(function: AggregateFunction, value: Value, count: u64) -> Partial {
    match function {
        AggregateFunction::Count => Partial::Count(count),
        AggregateFunction::Sum => Partial::Sum { sum: value, count },
        AggregateFunction::Avg => Partial::Avg { sum: value, count },
        AggregateFunction::Min => Partial::Min(value),
        AggregateFunction::Max => Partial::Max(value),
    }
}

/// Each column with the type its answers declared (the most declared, should they differ).
fn declared_columns(names: &[String], declared: &[BTreeMap<ValueType, usize>]) -> Vec<Column> {
    names
        .iter()
        .enumerate()
        .map(|(c, name)| Column {
            name: name.clone(),
            value_type: declared.get(c).map_or(ValueType::Null, most_declared),
        })
        .collect()
}
