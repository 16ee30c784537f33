//! Query results, mergeable partial aggregates, and the merge algebra.

use super::QueryError;
use super::model::{AggregateFunction, Query};
use super::value::{Value, ValueRef, ValueType};

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
                    *n = n.saturating_add(1);
                }
                return Ok(());
            }
            Some(v) if v.is_null() => return Ok(()),
            Some(v) => v,
        };
        match self {
            Partial::Count(n) => *n = n.saturating_add(1),
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
                *count = count.saturating_add(1);
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

/// Orders rows by the query's order keys (nulls first ascending, last descending) and applies
/// its limit.
pub(crate) fn sort_and_limit(
    rows: &mut Vec<Vec<Value>>,
    columns: &[Column],
    query: &Query,
) -> Result<(), QueryError> {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    sort_and_limit_by(rows, |r: &Vec<Value>| r.as_slice(), &names, query)
}

/// [`sort_and_limit`] over any rows: `row` gives each one's values, `names` the column names.
/// Stable, so rows the order keys do not tell apart keep their order; a row too short for a key
/// sorts first rather than failing.
pub(crate) fn sort_and_limit_by<T>(
    rows: &mut Vec<T>,
    row: impl Fn(&T) -> &[Value],
    names: &[&str],
    query: &Query,
) -> Result<(), QueryError> {
    let keys: Vec<(usize, bool)> = query
        .order_by
        .iter()
        .map(|k| {
            names
                .iter()
                .position(|c| *c == k.column)
                .map(|i| (i, k.descending))
                .ok_or_else(|| {
                    QueryError::Invalid(format!("order by {:?}: not a result column", k.column))
                })
        })
        .collect::<Result<_, _>>()?;
    if !keys.is_empty() {
        rows.sort_by(|a, b| {
            let (a, b) = (row(a), row(b));
            keys.iter()
                .map(|&(i, descending)| {
                    let ordering = match (a.get(i), b.get(i)) {
                        (Some(x), Some(y)) => x.cmp(y),
                        (x, y) => x.is_some().cmp(&y.is_some()),
                    };
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
