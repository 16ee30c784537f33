//! Checking an answer against the query that was sent, never against other answers.
//!
//! An aggregator must not let one source decide what the others' answers should look like (the
//! first answer to arrive, or the first source in order, setting the columns): a hostile source
//! would then turn every honest answer into a mismatch. So each answer is judged on its own,
//! against what the query it answers implies:
//!
//! * the shape (rows for a rows query, groups for an aggregate query) and the column names, in
//!   order: the projected fields, or the group-by fields then the aggregates' names;
//! * column types that the function allows: `count` is an int, `sum` a number, `avg` a decimal
//!   or a float; no column is of type null;
//! * every value null or of its column's type, every row as long as the header, every group key
//!   as long as the group-by, one partial state per aggregate and of the aggregate's kind;
//! * the arithmetic a Totebox cannot get wrong: a sum is null exactly when it counted nothing, no
//!   aggregate counted more values than its group has records, `count(*)` is the group's records;
//! * group keys strictly ascending (so unique), at most one group without a group-by, and no more
//!   rows than the query's limit or the caller's row limit.
//!
//! What the query cannot say (which of two numeric types a field has) is left to the merge, which
//! widens exactly (see [`Merger`](super::Merger)). A source can still lie consistently about its own
//! records; it can never make another source's answer unusable.

use std::cmp::Ordering;

use super::model::{AggregateFunction, Query, Shape};
use super::result::{Column, Group, Partial, QueryResult, ResultBody};
use super::value::{Value, ValueType};

/// Why an answer does not fit the query it answers (code `source.malformed-answer`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Nonconforming(pub String);

fn wrong(message: impl Into<String>) -> Nonconforming {
    Nonconforming(message.into())
}

/// The column names an answer to `query` has, in order.
pub fn expected_columns(query: &Query) -> Vec<&str> {
    match &query.shape {
        Shape::Rows(fields) => fields.iter().map(String::as_str).collect(),
        Shape::Aggregate {
            group_by,
            aggregates,
        } => group_by
            .iter()
            .map(String::as_str)
            .chain(aggregates.iter().map(|a| a.name.as_str()))
            .collect(),
    }
}

/// Checks `answer` against `query`, allowing at most `max_rows` rows or groups.
pub fn check(query: &Query, answer: &QueryResult, max_rows: usize) -> Result<(), Nonconforming> {
    let expected = expected_columns(query);
    let names: Vec<&str> = answer.columns.iter().map(|c| c.name.as_str()).collect();
    if names != expected {
        return Err(wrong(format!(
            "answered columns {names:?}; the query asks for {expected:?}"
        )));
    }
    if let Some(c) = answer
        .columns
        .iter()
        .find(|c| c.value_type == ValueType::Null)
    {
        return Err(wrong(format!("column {:?} has no type", c.name)));
    }
    match (&query.shape, &answer.body) {
        (Shape::Rows(_), ResultBody::Rows(rows)) => {
            let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
            let most = if query.limit > 0 {
                limit.min(max_rows)
            } else {
                max_rows
            };
            if rows.len() > most {
                return Err(wrong(format!(
                    "answered {} rows; at most {most} are accepted",
                    rows.len()
                )));
            }
            for (r, row) in rows.iter().enumerate() {
                values(&answer.columns, row, &format!("row {r}"))?;
            }
            Ok(())
        }
        (
            Shape::Aggregate {
                group_by,
                aggregates,
            },
            ResultBody::Groups(groups),
        ) => {
            let (key_columns, aggregate_columns) = answer.columns.split_at(group_by.len());
            for (column, aggregate) in aggregate_columns.iter().zip(aggregates) {
                let allowed = match aggregate.function {
                    AggregateFunction::Count => column.value_type == ValueType::Int,
                    AggregateFunction::Sum => column.value_type.is_numeric(),
                    AggregateFunction::Avg => {
                        matches!(column.value_type, ValueType::Decimal | ValueType::Float)
                    }
                    AggregateFunction::Min | AggregateFunction::Max => true,
                };
                if !allowed {
                    return Err(wrong(format!(
                        "column {:?} ({}) is a {}",
                        column.name,
                        aggregate.function.name(),
                        column.value_type.name()
                    )));
                }
            }
            if group_by.is_empty() && groups.len() > 1 {
                return Err(wrong(format!(
                    "answered {} groups to a query without group-by",
                    groups.len()
                )));
            }
            if groups.len() > max_rows {
                return Err(wrong(format!(
                    "answered {} groups; at most {max_rows} are accepted",
                    groups.len()
                )));
            }
            for (g, group) in groups.iter().enumerate() {
                let at = format!("group {g}");
                values(key_columns, &group.key, &at)?;
                if group.records == 0 {
                    return Err(wrong(format!("{at} holds no records")));
                }
                if group.aggregates.len() != aggregates.len() {
                    return Err(wrong(format!(
                        "{at} has {} aggregates; the query asks for {}",
                        group.aggregates.len(),
                        aggregates.len()
                    )));
                }
                for ((partial, aggregate), column) in group
                    .aggregates
                    .iter()
                    .zip(aggregates)
                    .zip(aggregate_columns)
                {
                    partial_state(partial, aggregate, column, group, &at)?;
                }
            }
            for (g, pair) in groups.windows(2).enumerate() {
                if compare_keys(&pair[0].key, &pair[1].key) != Ordering::Less {
                    return Err(wrong(format!(
                        "groups {g} and {} are out of order or repeat a key",
                        g + 1
                    )));
                }
            }
            Ok(())
        }
        (Shape::Rows(_), ResultBody::Groups(_)) => Err(wrong("answered groups to a rows query")),
        (Shape::Aggregate { .. }, ResultBody::Rows(_)) => {
            Err(wrong("answered rows to an aggregate query"))
        }
    }
}

/// Group keys in the order a Totebox sorts them (the values' total order, then length).
fn compare_keys(a: &[Value], b: &[Value]) -> Ordering {
    a.cmp(b)
}

/// Every value null or of its column's type, and exactly one per column.
fn values(columns: &[Column], values: &[Value], at: &str) -> Result<(), Nonconforming> {
    if values.len() != columns.len() {
        return Err(wrong(format!(
            "{at} has {} values for {} columns",
            values.len(),
            columns.len()
        )));
    }
    for (value, column) in values.iter().zip(columns) {
        typed(value, column.value_type, &column.name, at)?;
    }
    Ok(())
}

fn typed(value: &Value, expected: ValueType, column: &str, at: &str) -> Result<(), Nonconforming> {
    let found = value.value_type();
    if found == ValueType::Null || found == expected {
        Ok(())
    } else {
        Err(wrong(format!(
            "{at}: column {column:?} is {} but holds a {} value",
            expected.name(),
            found.name()
        )))
    }
}

/// One partial aggregate state: its kind, its types and its counts.
fn partial_state(
    partial: &Partial,
    aggregate: &super::model::Aggregate,
    column: &Column,
    group: &Group,
    at: &str,
) -> Result<(), Nonconforming> {
    let name = &column.name;
    let counted = |count: u64| {
        if count > group.records {
            Err(wrong(format!(
                "{at}: {name:?} counted {count} values in a group of {} records",
                group.records
            )))
        } else {
            Ok(())
        }
    };
    let summed = |sum: &Value, count: u64, allowed: &[ValueType]| {
        counted(count)?;
        if sum.is_null() != (count == 0) {
            return Err(wrong(format!(
                "{at}: {name:?} is {} after counting {count} values",
                if sum.is_null() { "null" } else { "a number" }
            )));
        }
        if !sum.is_null() && !allowed.contains(&sum.value_type()) {
            return Err(wrong(format!(
                "{at}: {name:?} sums {} values",
                sum.value_type().name()
            )));
        }
        Ok(())
    };
    match (aggregate.function, partial) {
        (AggregateFunction::Count, Partial::Count(n)) => {
            if aggregate.field.is_none() && *n != group.records {
                return Err(wrong(format!(
                    "{at}: {name:?} counts {n} records in a group of {}",
                    group.records
                )));
            }
            counted(*n)
        }
        (AggregateFunction::Sum, Partial::Sum { sum, count }) => {
            summed(sum, *count, &[column.value_type])
        }
        (AggregateFunction::Avg, Partial::Avg { sum, count }) => {
            // An average of decimals is a decimal; of ints or floats, a float.
            let allowed: &[ValueType] = if column.value_type == ValueType::Decimal {
                &[ValueType::Decimal]
            } else {
                &[ValueType::Int, ValueType::Float]
            };
            summed(sum, *count, allowed)
        }
        (AggregateFunction::Min, Partial::Min(v)) | (AggregateFunction::Max, Partial::Max(v)) => {
            typed(v, column.value_type, name, at)
        }
        (function, other) => Err(wrong(format!(
            "{at}: {name:?} is a {} but arrived as {}",
            function.name(),
            match other {
                Partial::Count(_) => "a count",
                Partial::Sum { .. } => "a sum",
                Partial::Avg { .. } => "an average",
                Partial::Min(_) => "a minimum",
                Partial::Max(_) => "a maximum",
            }
        ))),
    }
}
