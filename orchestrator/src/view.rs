//! From gathered answers to the view a console gets: merged exactly, finalized (order and limit
//! after the merge), with one outcome per source, the oldest data time, and whether it is
//! complete. Never a silently short answer: a missing source is always in the outcomes, and in
//! strict mode any missing source fails the request.

use std::collections::BTreeMap;

use psp_core::query::{
    CellRef, Column, Merger, Nonconforming, Query, QueryResult, ResultBody, Shape, Table, Value,
    ValueType,
};
use psp_rpc::client::MALFORMED_ANSWER;

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
    /// Cells of `table` whose exact value leaves the 64-bit range (null in `table`).
    pub overflows: Vec<CellRef>,
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
}

impl ViewError {
    /// The stable wire code.
    pub fn code(&self) -> &'static str {
        match self {
            ViewError::Incomplete { .. } => "fanout.incomplete",
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

/// Merges and finalizes what a fan-out gathered for `query`: each answer is checked against
/// the query on its own (an answer that does not fit is that source's `rejected` outcome, never
/// a reason to refuse the others), then merged exactly.
pub fn view(query: &Query, gathered: Gathered, partial: Partial) -> Result<View, ViewError> {
    let Gathered {
        mut outcomes,
        results,
        ..
    } = gathered;
    let mut merger = Merger::new(query, usize::MAX);
    for (index, (outcome, result)) in outcomes.iter_mut().zip(results).enumerate() {
        if let Some(result) = result {
            fold(&mut merger, index, outcome, result);
        }
    }
    finish(merger, outcomes, partial)
}

/// Folds one source's answer into `merger`, or sets it aside as that source's own outcome.
pub(crate) fn fold(
    merger: &mut Merger,
    index: usize,
    outcome: &mut SourceOutcome,
    result: QueryResult,
) {
    if let Err(why) = merger.add(index, result) {
        reject(outcome, &why);
    }
}

/// Marks a source whose answer did not fit the query it was sent.
pub(crate) fn reject(outcome: &mut SourceOutcome, why: &Nonconforming) {
    tracing::warn!(
        target: "psp::security",
        archive = %outcome.archive,
        "set aside an answer that does not fit the query: {why}"
    );
    outcome.status = SourceStatus::Rejected {
        code: MALFORMED_ANSWER.into(),
        message: why.to_string(),
    };
    outcome.rows = 0;
    outcome.suppressed_groups = 0;
}

/// The view from a merger that has seen every answer, under the partial policy.
pub(crate) fn finish(
    merger: Merger,
    outcomes: Vec<SourceOutcome>,
    partial: Partial,
) -> Result<View, ViewError> {
    let (outcomes, missing) = enforce(partial, outcomes)?;
    let merged = merger.finish();
    Ok(View {
        complete: missing == 0,
        outcomes,
        as_of_oldest: merged.as_of_oldest,
        table: merged.table,
        overflows: merged.overflows,
    })
}
