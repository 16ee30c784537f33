//! Query results, mergeable partial aggregates, and the merge algebra.

use std::collections::BTreeMap;

use super::QueryError;
use super::model::{AggregateFunction, Query, Shape};
use super::value::{MAX_SCALE, Value, ValueRef, ValueType};

fn sum_overflow() -> QueryError {
    QueryError::Overflow("a sum exceeds the 64-bit range".into())
}

/// One column of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name: a field or an aggregate's output name.
    pub name: String,
    /// The type of its values.
    pub value_type: ValueType,
}

/// The mergeable state of one aggregate over one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partial {
    /// Records, or non-null values. Merge: add.
    Count(u64),
    /// Exact sum and count of non-null values. Merge: add both.
    Sum {
        /// The sum (null when count is 0).
        sum: Value,
        /// Values added.
        count: u64,
    },
    /// The smallest value seen (null when none). Merge: the smaller.
    Min(Value),
    /// The largest value seen (null when none). Merge: the larger.
    Max(Value),
    /// Sum and count, finalized as sum / count. Merge: add both.
    Avg {
        /// The sum (null when count is 0).
        sum: Value,
        /// Values added.
        count: u64,
    },
}

impl Partial {
    /// The state of an aggregate that has seen nothing.
    pub fn empty(function: AggregateFunction) -> Self {
        match function {
            AggregateFunction::Count => Partial::Count(0),
            AggregateFunction::Sum => Partial::Sum {
                sum: Value::Null,
                count: 0,
            },
            AggregateFunction::Min => Partial::Min(Value::Null),
            AggregateFunction::Max => Partial::Max(Value::Null),
            AggregateFunction::Avg => Partial::Avg {
                sum: Value::Null,
                count: 0,
            },
        }
    }

    /// Adds one input value (`None` for count(*), which counts the record itself).
    pub(crate) fn add(&mut self, value: Option<ValueRef<'_>>) -> Result<(), QueryError> {
        let value = match value {
            None => {
                if let Partial::Count(n) = self {
                    *n += 1;
                }
                return Ok(());
            }
            Some(v) if v.is_null() => return Ok(()),
            Some(v) => v,
        };
        match self {
            Partial::Count(n) => *n += 1,
            Partial::Sum { sum, count } | Partial::Avg { sum, count } => {
                // Add in place for the common types; anything else goes the general way.
                match (&mut *sum, &value) {
                    (Value::Decimal(s), ValueRef::Decimal(v)) => {
                        *s = s.checked_add(v).ok_or_else(sum_overflow)?;
                    }
                    (Value::Int(s), ValueRef::Int(v)) => {
                        *s = s.checked_add(*v).ok_or_else(sum_overflow)?;
                    }
                    _ => *sum = sum.as_ref().checked_add(&value)?,
                }
                *count += 1;
            }
            Partial::Min(current) => {
                if current.is_null() || value.total_cmp(&current.as_ref()).is_lt() {
                    *current = value.to_owned();
                }
            }
            Partial::Max(current) => {
                if current.is_null() || value.total_cmp(&current.as_ref()).is_gt() {
                    *current = value.to_owned();
                }
            }
        }
        Ok(())
    }

    /// Combines another archive's state of the same aggregate into this one.
    pub fn merge(&mut self, other: &Partial) -> Result<(), QueryError> {
        match (self, other) {
            (Partial::Count(a), Partial::Count(b)) => *a += b,
            (Partial::Sum { sum, count }, Partial::Sum { sum: s, count: c })
            | (Partial::Avg { sum, count }, Partial::Avg { sum: s, count: c }) => {
                *sum = sum.as_ref().checked_add(&s.as_ref())?;
                *count += c;
            }
            (Partial::Min(a), Partial::Min(b)) => {
                if a.is_null() || (!b.is_null() && b < a) {
                    *a = b.clone();
                }
            }
            (Partial::Max(a), Partial::Max(b)) => {
                if a.is_null() || (!b.is_null() && b > a) {
                    *a = b.clone();
                }
            }
            (a, b) => {
                return Err(QueryError::Invalid(format!(
                    "cannot merge partial aggregates of different kinds ({a:?} and {b:?})"
                )));
            }
        }
        Ok(())
    }

    /// The final answer: the count, sum, min, max, or sum / count for an average.
    pub fn finalize(&self) -> Result<Value, QueryError> {
        Ok(match self {
            Partial::Count(n) => Value::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
            Partial::Sum { sum, .. } | Partial::Min(sum) | Partial::Max(sum) => sum.clone(),
            Partial::Avg { count: 0, .. } => Value::Null,
            Partial::Avg { sum, count } => match sum {
                Value::Int(s) => Value::Float(*s as f64 / *count as f64),
                Value::Float(s) => Value::Float(s / *count as f64),
                Value::Decimal(d) => {
                    // Four more digits than the inputs, rounded half away from zero.
                    let scale = (d.scale() + 4).min(MAX_SCALE.max(d.scale()));
                    Value::Decimal(d.div_round(*count, scale).ok_or_else(|| {
                        QueryError::Overflow("an average left the decimal range".into())
                    })?)
                }
                other => {
                    return Err(QueryError::TypeMismatch(format!(
                        "cannot average {}",
                        other.value_type().name()
                    )));
                }
            },
        })
    }
}

/// One group of an aggregate result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group-by values.
    pub key: Vec<Value>,
    /// Records in the group.
    pub records: u64,
    /// One partial state per aggregate.
    pub aggregates: Vec<Partial>,
}

/// The rows or groups of a result.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultBody {
    /// Projected rows.
    Rows(Vec<Vec<Value>>),
    /// Groups with partial aggregates, sorted by key.
    Groups(Vec<Group>),
}

/// What a Totebox returns for a query (`QueryResult` in the schema), or a merge of several.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// The data time of the answer (for a merge: the oldest of its parts).
    pub as_of: i64,
    /// The columns.
    pub columns: Vec<Column>,
    /// Rows or groups.
    pub body: ResultBody,
    /// Groups withheld under the minimum group size.
    pub suppressed_groups: u64,
    /// Records examined.
    pub scanned_records: u64,
}

/// A final table: aggregates finalized, ordered and limited.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The columns.
    pub columns: Vec<Column>,
    /// The rows.
    pub rows: Vec<Vec<Value>>,
}

impl QueryResult {
    /// Combines the results of one query from many archives into the result one archive holding
    /// all their records would give (exactly, for integer and decimal aggregates; groups that
    /// some source suppressed are missing that source's records, as `suppressed_groups` says).
    pub fn merge(parts: impl IntoIterator<Item = QueryResult>) -> Result<QueryResult, QueryError> {
        let mut parts = parts.into_iter();
        let Some(mut merged) = parts.next() else {
            return Err(QueryError::Invalid("nothing to merge".into()));
        };
        let mut groups: Option<BTreeMap<Vec<Value>, Group>> = None;
        if let ResultBody::Groups(first) = &mut merged.body {
            groups = Some(
                std::mem::take(first)
                    .into_iter()
                    .map(|g| (g.key.clone(), g))
                    .collect(),
            );
        }
        for part in parts {
            if part.columns != merged.columns {
                return Err(QueryError::Invalid(
                    "cannot merge results with different columns".into(),
                ));
            }
            merged.as_of = merged.as_of.min(part.as_of);
            merged.suppressed_groups += part.suppressed_groups;
            merged.scanned_records += part.scanned_records;
            match (&mut merged.body, part.body, &mut groups) {
                (ResultBody::Rows(rows), ResultBody::Rows(more), _) => rows.extend(more),
                (ResultBody::Groups(_), ResultBody::Groups(more), Some(groups)) => {
                    for group in more {
                        match groups.get_mut(&group.key) {
                            Some(existing) => {
                                existing.records += group.records;
                                for (a, b) in existing.aggregates.iter_mut().zip(&group.aggregates)
                                {
                                    a.merge(b)?;
                                }
                            }
                            None => {
                                groups.insert(group.key.clone(), group);
                            }
                        }
                    }
                }
                _ => {
                    return Err(QueryError::Invalid(
                        "cannot merge row results with group results".into(),
                    ));
                }
            }
        }
        if let Some(groups) = groups {
            merged.body = ResultBody::Groups(groups.into_values().collect());
        }
        Ok(merged)
    }

    /// The final table for `query`: aggregates finalized, then ordered and limited.
    ///
    /// A query without group-by over no records answers one row (count 0, other aggregates
    /// null), as SQL does, unless a source suppressed that group.
    pub fn finalize(&self, query: &Query) -> Result<Table, QueryError> {
        let mut rows: Vec<Vec<Value>> = match &self.body {
            ResultBody::Rows(rows) => rows.clone(),
            ResultBody::Groups(groups) => {
                let mut rows = Vec::with_capacity(groups.len().max(1));
                for g in groups {
                    let mut row = g.key.clone();
                    for partial in &g.aggregates {
                        row.push(partial.finalize()?);
                    }
                    rows.push(row);
                }
                if let Shape::Aggregate {
                    group_by,
                    aggregates,
                } = &query.shape
                    && group_by.is_empty()
                    && rows.is_empty()
                    && self.suppressed_groups == 0
                {
                    let empty: Result<Vec<Value>, QueryError> = aggregates
                        .iter()
                        .map(|a| Partial::empty(a.function).finalize())
                        .collect();
                    rows.push(empty?);
                }
                rows
            }
        };
        sort_and_limit(&mut rows, &self.columns, query)?;
        Ok(Table {
            columns: self.columns.clone(),
            rows,
        })
    }
}

/// Orders rows by the query's order keys (nulls first ascending, last descending) and applies
/// its limit.
pub(crate) fn sort_and_limit(
    rows: &mut Vec<Vec<Value>>,
    columns: &[Column],
    query: &Query,
) -> Result<(), QueryError> {
    let keys: Vec<(usize, bool)> = query
        .order_by
        .iter()
        .map(|k| {
            columns
                .iter()
                .position(|c| c.name == k.column)
                .map(|i| (i, k.descending))
                .ok_or_else(|| {
                    QueryError::Invalid(format!("order by {:?}: not a result column", k.column))
                })
        })
        .collect::<Result<_, _>>()?;
    if !keys.is_empty() {
        rows.sort_by(|a, b| {
            keys.iter()
                .map(|&(i, descending)| {
                    let ordering = a[i].cmp(&b[i]);
                    if descending {
                        ordering.reverse()
                    } else {
                        ordering
                    }
                })
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    if query.limit > 0 {
        rows.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
    }
    Ok(())
}
