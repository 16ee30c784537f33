//! Merging many archives' answers to one query into one table, as they arrive.
//!
//! A [`Merger`] holds the merged groups (or rows), never every source's answer: each answer is
//! checked against the query ([`super::conform`]), folded in and dropped. The result is the one
//! table a single archive holding every source's records would give, and it does not depend on
//! the order answers arrive in:
//!
//! * integer and decimal sums are exact: they accumulate in 128 bits at the largest scale seen,
//!   so a sum that passes the 64-bit range on the way and comes back is still exact, and an int
//!   sum merged with a decimal one widens to a decimal without rounding;
//! * float sums are exactly rounded (the sum of the exact values, rounded once, as Python's
//!   `math.fsum`), so they too are the same whatever the order;
//! * ties in min and max, and group keys that are equal numbers of different types (`2` and
//!   `2.00`), keep the representation with the lowest type, whoever answered first.
//!
//! Nothing a source sends can make the merge panic or fail: arithmetic is checked, and a value
//! that leaves the 64-bit range (or a float sum of finite parts that leaves the float range)
//! marks only its own cell ([`Merged::overflows`]), whose value is then null. The rest of the
//! table is unaffected.

use std::collections::BTreeMap;

use super::QueryError;
use super::conform::{Nonconforming, check, expected_columns};
use super::model::{AggregateFunction, Query, Shape};
use super::result::{Column, Partial, QueryResult, ResultBody, Table, sort_and_limit_by};
use super::value::{Decimal, MAX_SCALE, Value, ValueType};

mod tier;
pub use tier::PartialMerge;

/// One cell of a merged table, by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellRef {
    /// The row, in the final table.
    pub row: usize,
    /// The column.
    pub column: usize,
}

/// A merged, finalized answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// Aggregates finalized, then ordered and limited as the query asks.
    pub table: Table,
    /// Cells whose exact value leaves the 64-bit range (their value in `table` is null).
    pub overflows: Vec<CellRef>,
    /// The oldest data time among the answers (0 when there were none).
    pub as_of_oldest: i64,
    /// Groups the sources withheld under their minimum group size.
    pub suppressed_groups: u64,
    /// Records the sources examined.
    pub scanned_records: u64,
    /// Answers merged.
    pub parts: usize,
}

/// Merges answers to one query as they arrive (see the module docs).
#[derive(Debug, Clone)]
pub struct Merger {
    query: Query,
    max_rows: usize,
    /// Per column: how many answers declared each type.
    declared: Vec<BTreeMap<ValueType, usize>>,
    body: Body,
    parts: usize,
    as_of: Option<i64>,
    suppressed_groups: u64,
    scanned_records: u64,
}

#[derive(Debug, Clone)]
enum Body {
    /// Rows with where they came from, so the final order never depends on arrival.
    Rows(Vec<SourcedRow>),
    Groups(BTreeMap<Vec<Value>, MergedGroup>),
}

#[derive(Debug, Clone)]
struct SourcedRow {
    source: usize,
    index: usize,
    values: Vec<Value>,
}

#[derive(Debug, Clone)]
struct MergedGroup {
    records: u64,
    cells: Vec<Cell>,
}

/// The merged state of one aggregate in one group.
#[derive(Debug, Clone)]
enum Cell {
    Count(u64),
    /// A sum, or an average's sum and count.
    Sum(Sum),
    Min(Value),
    Max(Value),
    /// Left the representable range; stays so.
    Overflowed,
}

#[derive(Debug, Clone, Default)]
struct Sum {
    /// The int and decimal parts, exactly.
    exact: Option<Exact>,
    /// The float parts, exactly until rounded once.
    float: FloatSum,
    /// Values added.
    count: u64,
}

/// `units / 10^scale`, in 128 bits; `decimal` unless every part was an int.
#[derive(Debug, Clone, Copy)]
struct Exact {
    units: i128,
    scale: u8,
    decimal: bool,
}

impl Exact {
    fn of(value: &Value) -> Option<Exact> {
        match value {
            Value::Int(i) => Some(Exact {
                units: i128::from(*i),
                scale: 0,
                decimal: false,
            }),
            Value::Decimal(d) => Some(Exact {
                units: i128::from(d.units()),
                scale: d.scale(),
                decimal: true,
            }),
            _ => None,
        }
    }

    fn rescaled(self, scale: u8) -> Option<i128> {
        let factor = 10i128.checked_pow(u32::from(scale.checked_sub(self.scale)?))?;
        self.units.checked_mul(factor)
    }

    fn checked_add(self, other: Exact) -> Option<Exact> {
        let scale = self.scale.max(other.scale);
        Some(Exact {
            units: self.rescaled(scale)?.checked_add(other.rescaled(scale)?)?,
            scale,
            decimal: self.decimal || other.decimal,
        })
    }

    fn to_f64(self) -> f64 {
        self.units as f64 / 10f64.powi(i32::from(self.scale))
    }

    /// The value, or `None` when it leaves the 64-bit range.
    fn to_value(self) -> Option<Value> {
        let units = i64::try_from(self.units).ok()?;
        Some(if self.decimal {
            Value::Decimal(Decimal::new(units, self.scale)?)
        } else {
            Value::Int(units)
        })
    }

    /// `self / count`, rounded half away from zero to four more digits (at most 18), as a
    /// single archive's average is.
    fn average(self, count: u64) -> Option<Value> {
        let scale = (self.scale + 4).min(MAX_SCALE.max(self.scale));
        let numerator = self.rescaled(scale)?;
        let count = i128::from(count);
        let (quotient, remainder) = (numerator / count, numerator % count);
        let rounded = if 2 * remainder.abs() >= count {
            quotient + numerator.signum()
        } else {
            quotient
        };
        Some(Value::Decimal(Decimal::new(
            i64::try_from(rounded).ok()?,
            scale,
        )?))
    }
}

/// An exactly rounded float sum: a list of non-overlapping partial sums (Shewchuk), rounded
/// once at the end, so the result is the same in any order of addition.
#[derive(Debug, Clone, Default)]
struct FloatSum {
    partials: Vec<f64>,
    /// Infinities and NaNs, added plainly: they absorb everything else.
    special: Option<f64>,
    any: bool,
}

impl FloatSum {
    fn add(&mut self, mut x: f64) {
        self.any = true;
        if !x.is_finite() {
            self.special = Some(self.special.map_or(x, |s| s + x));
            return;
        }
        let mut kept = 0;
        for i in 0..self.partials.len() {
            let mut y = self.partials[i];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let high = x + y;
            let low = y - (high - x);
            if low != 0.0 {
                self.partials[kept] = low;
                kept += 1;
            }
            x = high;
        }
        self.partials.truncate(kept);
        self.partials.push(x);
    }

    fn merge(&mut self, other: &FloatSum) {
        for &p in &other.partials {
            self.add(p);
        }
        if let Some(s) = other.special {
            self.add(s);
        }
        self.any |= other.any;
    }

    /// The sum rounded once, or `None` when finite parts add up past the float range (an
    /// infinity or NaN a source sent is its value, not an overflow).
    fn checked_total(&self) -> Option<f64> {
        let total = self.total();
        (total.is_finite() || self.special.is_some()).then_some(total)
    }

    /// The sum, rounded once (half to even), as CPython's `math.fsum` rounds it.
    fn total(&self) -> f64 {
        if let Some(special) = self.special {
            return special;
        }
        let p = &self.partials;
        let Some(mut n) = p.len().checked_sub(1) else {
            return 0.0;
        };
        let mut high = p[n];
        let mut low = 0.0;
        while n > 0 {
            let x = high;
            let y = p[n - 1];
            n -= 1;
            high = x + y;
            low = y - (high - x);
            if low != 0.0 {
                break;
            }
        }
        if n > 0 && ((low < 0.0 && p[n - 1] < 0.0) || (low > 0.0 && p[n - 1] > 0.0)) {
            let y = low * 2.0;
            let x = high + y;
            if y == x - high {
                high = x;
            }
        }
        high
    }
}

impl Sum {
    fn of(sum: &Value, count: u64) -> Sum {
        let mut s = Sum {
            count,
            ..Sum::default()
        };
        match sum {
            Value::Float(x) => s.float.add(*x),
            other => s.exact = Exact::of(other),
        }
        s
    }

    /// Adds another part; `None` when a count or the exact sum leaves 128 bits.
    fn merge(&mut self, other: &Sum) -> Option<()> {
        self.count = self.count.checked_add(other.count)?;
        self.exact = match (self.exact, other.exact) {
            (Some(a), Some(b)) => Some(a.checked_add(b)?),
            (a, b) => a.or(b),
        };
        self.float.merge(&other.float);
        Some(())
    }

    /// The merged sum: exact unless a float took part; `None` when it leaves the range.
    fn total(&self) -> Option<Value> {
        if self.count == 0 {
            return Some(Value::Null);
        }
        match (self.exact, self.float.any) {
            (Some(exact), false) => exact.to_value(),
            (exact, _) => {
                let mut all = self.float.clone();
                if let Some(e) = exact {
                    all.add(e.to_f64());
                }
                all.checked_total().map(Value::Float)
            }
        }
    }

    /// The merged average: a decimal of decimals (rounded as one archive rounds it), otherwise
    /// a float; `None` when a decimal average leaves the range.
    fn average(&self) -> Option<Value> {
        if self.count == 0 {
            return Some(Value::Null);
        }
        let count = self.count as f64;
        match (self.exact, self.float.any) {
            (Some(exact), false) if exact.decimal => exact.average(self.count),
            (Some(exact), false) => Some(Value::Float(exact.units as f64 / count)),
            (exact, _) => {
                let mut all = self.float.clone();
                if let Some(e) = exact {
                    all.add(e.to_f64());
                }
                all.checked_total().map(|total| Value::Float(total / count))
            }
        }
    }
}

/// Lower is preferred when two equal values differ only in type (`2` and `2.00`).
fn type_rank(values: &[Value]) -> Vec<ValueType> {
    values.iter().map(Value::value_type).collect()
}

impl Cell {
    fn of(partial: Partial) -> Cell {
        match partial {
            Partial::Count(n) => Cell::Count(n),
            Partial::Sum { sum, count } | Partial::Avg { sum, count } => {
                Cell::Sum(Sum::of(&sum, count))
            }
            Partial::Min(v) => Cell::Min(v),
            Partial::Max(v) => Cell::Max(v),
        }
    }

    fn merge(&mut self, other: Cell) {
        let merged = match (&mut *self, other) {
            (Cell::Overflowed, _) | (_, Cell::Overflowed) => None,
            (Cell::Count(a), Cell::Count(b)) => a.checked_add(b).map(|n| *a = n),
            (Cell::Sum(a), Cell::Sum(b)) => a.merge(&b),
            (Cell::Min(a), Cell::Min(b)) => {
                *a = pick(
                    std::mem::replace(a, Value::Null),
                    b,
                    std::cmp::Ordering::Less,
                );
                Some(())
            }
            (Cell::Max(a), Cell::Max(b)) => {
                *a = pick(
                    std::mem::replace(a, Value::Null),
                    b,
                    std::cmp::Ordering::Greater,
                );
                Some(())
            }
            // The answers were checked against the same query, so kinds agree; if they ever did
            // not, the cell is marked rather than the merge failing.
            _ => None,
        };
        if merged.is_none() {
            *self = Cell::Overflowed;
        }
    }

    /// The final value; `None` when it leaves the range.
    fn finalize(&self, avg: bool) -> Option<Value> {
        match self {
            Cell::Count(n) => i64::try_from(*n).ok().map(Value::Int),
            Cell::Sum(s) if avg => s.average(),
            Cell::Sum(s) => s.total(),
            Cell::Min(v) | Cell::Max(v) => Some(v.clone()),
            Cell::Overflowed => None,
        }
    }
}

/// The smaller (`Less`) or larger (`Greater`) of two values, nulls ignored; between equal values
/// of different types, the lower type.
fn pick(current: Value, candidate: Value, wanted: std::cmp::Ordering) -> Value {
    if candidate.is_null() {
        return current;
    }
    if current.is_null() {
        return candidate;
    }
    match candidate.cmp(&current) {
        o if o == wanted => candidate,
        std::cmp::Ordering::Equal if candidate.value_type() < current.value_type() => candidate,
        _ => current,
    }
}

impl Merger {
    /// A merger for answers to `query`, accepting at most `max_rows` rows or groups per answer.
    pub fn new(query: &Query, max_rows: usize) -> Merger {
        let columns = expected_columns(query).len();
        Merger {
            query: query.clone(),
            max_rows,
            declared: vec![BTreeMap::new(); columns],
            body: match query.shape {
                Shape::Rows(_) => Body::Rows(Vec::new()),
                Shape::Aggregate { .. } => Body::Groups(BTreeMap::new()),
            },
            parts: 0,
            as_of: None,
            suppressed_groups: 0,
            scanned_records: 0,
        }
    }

    /// The query whose answers this merges.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// Answers merged so far.
    pub fn parts(&self) -> usize {
        self.parts
    }

    /// Checks `answer` against the query and folds it in. `source` (the source's position in the
    /// request) orders rows that the query does not order. A non-conforming answer changes
    /// nothing and says why.
    pub fn add(&mut self, source: usize, answer: QueryResult) -> Result<(), Nonconforming> {
        self.add_marked(source, answer, &[])
    }

    /// [`Merger::add`] for an unfinished merge from a tier below ([`Merger::into_partial`]):
    /// the cells `overflowed` names (row: the group's index in `answer`; column: the column's)
    /// left the 64-bit range there, and stay overflowed here whatever their state says. A
    /// reference to a cell that is not an aggregate of `answer` makes it nonconforming.
    pub fn add_marked(
        &mut self,
        source: usize,
        answer: QueryResult,
        overflowed: &[CellRef],
    ) -> Result<(), Nonconforming> {
        check(&self.query, &answer, self.max_rows)?;
        let marks = check_marks(&self.query, &answer, overflowed)?;
        for (seen, column) in self.declared.iter_mut().zip(&answer.columns) {
            *seen.entry(column.value_type).or_default() += 1;
        }
        self.parts += 1;
        self.as_of = Some(self.as_of.map_or(answer.as_of, |a| a.min(answer.as_of)));
        self.suppressed_groups = self
            .suppressed_groups
            .saturating_add(answer.suppressed_groups);
        self.scanned_records = self.scanned_records.saturating_add(answer.scanned_records);
        match (&mut self.body, answer.body) {
            (Body::Rows(rows), ResultBody::Rows(more)) => {
                rows.extend(
                    more.into_iter()
                        .enumerate()
                        .map(|(index, values)| SourcedRow {
                            source,
                            index,
                            values,
                        }),
                );
                let limit = usize::try_from(self.query.limit).unwrap_or(usize::MAX);
                // A limited query never needs more than `limit` rows: keep the buffer within
                // twice that by ordering and cutting whenever it grows past it.
                if self.query.limit > 0 && rows.len() >= limit.saturating_mul(2).max(64) {
                    order_rows(rows, &self.query);
                }
            }
            (Body::Groups(groups), ResultBody::Groups(more)) => {
                for (g, group) in more.into_iter().enumerate() {
                    let cells = group
                        .aggregates
                        .into_iter()
                        .enumerate()
                        .map(|(i, partial)| {
                            if marks.contains(&(g, i)) {
                                Cell::Overflowed
                            } else {
                                Cell::of(partial)
                            }
                        })
                        .collect();
                    let incoming = MergedGroup {
                        records: group.records,
                        cells,
                    };
                    fold_group(groups, group.key, incoming);
                }
            }
            // `check` has matched the body to the query's shape.
            _ => unreachable!("a conforming answer has the query's shape"),
        }
        Ok(())
    }

    /// The merged table: aggregates finalized, ordered and limited.
    ///
    /// A query without group-by over no records answers one row (count 0, other aggregates
    /// null), as SQL does, unless a source withheld that group. With no answers at all the
    /// table has no columns.
    pub fn finish(self) -> Merged {
        let as_of_oldest = self.as_of.unwrap_or(0);
        if self.parts == 0 {
            return Merged {
                table: Table {
                    columns: Vec::new(),
                    rows: Vec::new(),
                },
                overflows: Vec::new(),
                as_of_oldest,
                suppressed_groups: 0,
                scanned_records: 0,
                parts: 0,
            };
        }
        let query = &self.query;
        let (group_columns, averages): (usize, Vec<bool>) = match &query.shape {
            Shape::Aggregate {
                group_by,
                aggregates,
            } => (
                group_by.len(),
                aggregates
                    .iter()
                    .map(|a| a.function == AggregateFunction::Avg)
                    .collect(),
            ),
            Shape::Rows(_) => (0, Vec::new()),
        };
        // Each row with the columns of it that overflowed.
        let mut rows: Vec<(Vec<Value>, Vec<usize>)> = match self.body {
            Body::Rows(mut rows) => {
                order_rows(&mut rows, query);
                rows.into_iter().map(|r| (r.values, Vec::new())).collect()
            }
            Body::Groups(groups) => {
                let mut rows = Vec::with_capacity(groups.len().max(1));
                for (key, group) in groups {
                    let mut row = key;
                    let mut overflowed = Vec::new();
                    for (i, cell) in group.cells.iter().enumerate() {
                        match cell.finalize(averages.get(i).copied().unwrap_or(false)) {
                            Some(v) => row.push(v),
                            None => {
                                overflowed.push(group_columns + i);
                                row.push(Value::Null);
                            }
                        }
                    }
                    rows.push((row, overflowed));
                }
                if let Shape::Aggregate {
                    group_by,
                    aggregates,
                } = &query.shape
                    && group_by.is_empty()
                    && rows.is_empty()
                    && self.suppressed_groups == 0
                {
                    let empty = aggregates
                        .iter()
                        .map(|a| match a.function {
                            AggregateFunction::Count => Value::Int(0),
                            _ => Value::Null,
                        })
                        .collect();
                    rows.push((empty, Vec::new()));
                }
                rows
            }
        };
        let columns = column_types(query, &self.declared, rows.iter().map(|(r, _)| r));
        // Order keys were checked to be result columns; a missing one leaves the order as is.
        let names = expected_columns(query);
        let _ = sort_and_limit_by(
            &mut rows,
            |(row, _): &(Vec<Value>, Vec<usize>)| row.as_slice(),
            &names,
            query,
        );
        let overflows = rows
            .iter()
            .enumerate()
            .flat_map(|(row, (_, cols))| cols.iter().map(move |&column| CellRef { row, column }))
            .collect();
        Merged {
            table: Table {
                columns,
                rows: rows.into_iter().map(|(r, _)| r).collect(),
            },
            overflows,
            as_of_oldest,
            suppressed_groups: self.suppressed_groups,
            scanned_records: self.scanned_records,
            parts: self.parts,
        }
    }
}

/// Checks the overflow marks of an unfinished merge handed up (see [`Merger::add_marked`]):
/// each names a count, or a sum or average whose state is empty, of `answer`. Returns them as
/// (group, aggregate) pairs.
pub fn check_marks(
    query: &Query,
    answer: &QueryResult,
    overflowed: &[CellRef],
) -> Result<std::collections::BTreeSet<(usize, usize)>, Nonconforming> {
    let key_columns = match &query.shape {
        Shape::Aggregate { group_by, .. } => group_by.len(),
        Shape::Rows(_) => 0,
    };
    let mut marks = std::collections::BTreeSet::new();
    for cell in overflowed {
        // Only a count, a sum or an average can overflow, and a sum's or an average's state
        // is then empty: a mark can blank no minimum, maximum or figure it did not hold.
        let fits = match &answer.body {
            ResultBody::Groups(groups) => groups
                .get(cell.row)
                .zip(cell.column.checked_sub(key_columns))
                .and_then(|(group, i)| group.aggregates.get(i))
                .is_some_and(|state| match state {
                    Partial::Count(_) => true,
                    Partial::Sum { sum, count } | Partial::Avg { sum, count } => {
                        sum.is_null() && *count == 0
                    }
                    Partial::Min(_) | Partial::Max(_) => false,
                }),
            ResultBody::Rows(_) => false,
        };
        if !fits {
            return Err(Nonconforming(format!(
                "marks cell ({}, {}) overflowed, which is no emptied count, sum or average \
                 of its answer",
                cell.row, cell.column
            )));
        }
        marks.insert((cell.row, cell.column - key_columns));
    }
    Ok(marks)
}

/// Folds one group into the merged groups.
fn fold_group(
    groups: &mut BTreeMap<Vec<Value>, MergedGroup>,
    key: Vec<Value>,
    incoming: MergedGroup,
) {
    let Some((existing_key, _)) = groups.get_key_value(&key) else {
        groups.insert(key, incoming);
        return;
    };
    // Equal keys of different types (`2` and `2.00`): keep the lower types, whatever the order.
    let rekey = type_rank(&key) < type_rank(existing_key);
    let (old_key, mut group) = groups.remove_entry(&key).expect("the key was just found");
    group.records = group.records.saturating_add(incoming.records);
    for (cell, more) in group.cells.iter_mut().zip(incoming.cells) {
        cell.merge(more);
    }
    groups.insert(if rekey { key } else { old_key }, group);
}

/// Orders rows as the query asks, then by source and position (so the same answers always give
/// the same rows, in any arrival order), and keeps the query's limit.
fn order_rows(rows: &mut Vec<SourcedRow>, query: &Query) {
    rows.sort_by_key(|r| (r.source, r.index));
    let names = expected_columns(query);
    // Order keys are result columns (the query was checked); a missing one leaves the order.
    let _ = sort_and_limit_by(rows, |r: &SourcedRow| r.values.as_slice(), &names, query);
}

fn most_declared(types: &BTreeMap<ValueType, usize>) -> ValueType {
    types
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map_or(ValueType::Null, |(t, _)| *t)
}

/// Each column's type: its values' type when they agree; the widest number when numbers of
/// several types meet (int, then decimal, then float); otherwise the type most answers declared.
fn column_types<'a>(
    query: &Query,
    declared: &[BTreeMap<ValueType, usize>],
    rows: impl Iterator<Item = &'a Vec<Value>>,
) -> Vec<Column> {
    let names = expected_columns(query);
    let mut seen: Vec<Vec<ValueType>> = vec![Vec::new(); names.len()];
    for row in rows {
        for (types, value) in seen.iter_mut().zip(row) {
            let t = value.value_type();
            if t != ValueType::Null && !types.contains(&t) {
                types.push(t);
            }
        }
    }
    names
        .into_iter()
        .zip(seen)
        .zip(declared)
        .map(|((name, types), declared)| {
            let value_type = match types.as_slice() {
                [one] => *one,
                several if several.iter().all(|t| t.is_numeric()) && !several.is_empty() => {
                    if several.contains(&ValueType::Float) {
                        ValueType::Float
                    } else {
                        ValueType::Decimal
                    }
                }
                _ => most_declared(declared),
            };
            Column {
                name: name.to_owned(),
                value_type,
            }
        })
        .collect()
}

impl QueryResult {
    /// The final table for `query` from this one answer: aggregates finalized, then ordered and
    /// limited. The same algebra as [`Merger`] with one part; an answer that does not fit the
    /// query is [`QueryError::Invalid`], a value out of range [`QueryError::Overflow`].
    pub fn finalize(&self, query: &Query) -> Result<Table, QueryError> {
        let mut merger = Merger::new(query, usize::MAX);
        merger
            .add(0, self.clone())
            .map_err(|e| QueryError::Invalid(e.to_string()))?;
        let merged = merger.finish();
        if let Some(cell) = merged.overflows.first() {
            return Err(QueryError::Overflow(format!(
                "column {:?} leaves the 64-bit range",
                merged
                    .table
                    .columns
                    .get(cell.column)
                    .map_or("?", |c| c.name.as_str())
            )));
        }
        Ok(merged.table)
    }
}
