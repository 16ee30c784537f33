//! From gathered answers to the view a console gets: merged exactly, finalized (order and limit
//! after the merge), with one outcome per source, the oldest data time, and whether it is
//! complete. Never a silently short answer: a missing source is always in the outcomes, and in
//! strict mode any missing source fails the request.

use std::collections::BTreeMap;

use psp_core::query::{Column, Query, QueryResult, ResultBody, Shape, Table, Value, ValueType};

use crate::config::Partial;
use crate::fanout::{Gathered, SourceOutcome, SourceStatus};

/// A merged answer over many archives.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Every selected source answered.
    pub complete: bool,
    /// One per selected source.
    pub outcomes: Vec<SourceOutcome>,
    /// The oldest data time among the sources that answered (0 when none did).
    pub as_of_oldest: i64,
    /// The merged, finalized table.
    pub table: Table,
}

/// Why no view was produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// Strict mode and some source did not answer; the outcomes say which and why.
    #[error("{} of {} sources did not answer (strict mode)", missing, outcomes.len())]
    Incomplete {
        /// How many did not answer.
        missing: usize,
        /// Every source's outcome.
        outcomes: Vec<SourceOutcome>,
    },
    /// The answers could not be merged.
    #[error("cannot merge the answers: {0}")]
    Merge(String),
}

impl ViewError {
    /// The stable wire code.
    pub fn code(&self) -> &'static str {
        match self {
            ViewError::Incomplete { .. } => "fanout.incomplete",
            ViewError::Merge(_) => "fanout.merge",
        }
    }
}

/// Prepends archive labels to every group of an aggregate answer (a rollup by region, say).
pub fn with_labels(
    mut result: QueryResult,
    keys: &[String],
    labels: &BTreeMap<String, String>,
) -> QueryResult {
    if keys.is_empty() {
        return result;
    }
    let label_columns = keys.iter().map(|k| Column {
        name: k.clone(),
        value_type: ValueType::Text,
    });
    result.columns = label_columns.chain(result.columns).collect();
    let label_values: Vec<Value> = keys
        .iter()
        .map(|k| {
            labels
                .get(k)
                .map_or(Value::Null, |v| Value::Text(v.clone()))
        })
        .collect();
    match &mut result.body {
        ResultBody::Groups(groups) => {
            for g in groups {
                g.key = label_values
                    .iter()
                    .cloned()
                    .chain(std::mem::take(&mut g.key))
                    .collect();
            }
        }
        ResultBody::Rows(rows) => {
            for r in rows {
                *r = label_values
                    .iter()
                    .cloned()
                    .chain(std::mem::take(r))
                    .collect();
            }
        }
    }
    result
}

/// The query that finalizes a labelled merge: the labels become leading group-by fields.
pub fn labelled_query(query: &Query, keys: &[String]) -> Query {
    let mut q = query.clone();
    match &mut q.shape {
        Shape::Aggregate { group_by, .. } => {
            *group_by = keys
                .iter()
                .cloned()
                .chain(std::mem::take(group_by))
                .collect();
        }
        Shape::Rows(fields) => {
            *fields = keys.iter().cloned().chain(std::mem::take(fields)).collect();
        }
    }
    q
}

/// Applies the partial policy: in strict mode any source that did not answer fails the request.
/// Returns the outcomes and how many sources are missing.
pub(crate) fn enforce(
    partial: Partial,
    outcomes: Vec<SourceOutcome>,
) -> Result<(Vec<SourceOutcome>, usize), ViewError> {
    let missing = outcomes
        .iter()
        .filter(|o| o.status != SourceStatus::Ok)
        .count();
    if partial == Partial::Strict && missing > 0 {
        return Err(ViewError::Incomplete { missing, outcomes });
    }
    Ok((outcomes, missing))
}

/// Merges and finalizes what a fan-out gathered for `query`.
pub fn view(query: &Query, gathered: Gathered, partial: Partial) -> Result<View, ViewError> {
    let Gathered {
        mut outcomes,
        results,
        ..
    } = gathered;
    // Sources must agree on the columns; the first answer sets them, and a source that disagrees
    // (a schema that drifted) is reported, not merged.
    let mut columns: Option<Vec<Column>> = None;
    let mut answers = Vec::new();
    for (outcome, result) in outcomes.iter_mut().zip(results) {
        let Some(result) = result else { continue };
        match &columns {
            Some(c) if *c != result.columns => {
                outcome.status = SourceStatus::Error(
                    "answered with other columns than the rest of the fleet".into(),
                );
            }
            _ => {
                columns.get_or_insert_with(|| result.columns.clone());
                answers.push(result);
            }
        }
    }
    let (outcomes, missing) = enforce(partial, outcomes)?;
    let as_of_oldest = answers.iter().map(|a| a.as_of).min().unwrap_or(0);
    let table = if answers.is_empty() {
        Table {
            columns: Vec::new(),
            rows: Vec::new(),
        }
    } else {
        QueryResult::merge(answers)
            .and_then(|merged| merged.finalize(query))
            .map_err(|e| ViewError::Merge(e.to_string()))?
    };
    Ok(View {
        complete: missing == 0,
        outcomes,
        as_of_oldest,
        table,
    })
}
