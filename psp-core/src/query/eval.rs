//! Running a compiled plan over records.

use std::collections::BTreeMap;

use super::QueryError;
use super::plan::{Compiled, Plan, PlanShape};
use super::result::{Group, Partial, QueryResult, ResultBody, sort_and_limit};
use super::value::{Value, ValueRef};

/// One record, seen field by field in the collection's field order. Implementations may hand out
/// values borrowed from wherever the record lives (a memory map, a database row buffer).
pub trait Record {
    /// The value of the field at `index`; null when the record has no such field.
    fn value(&self, index: usize) -> ValueRef<'_>;

    /// The bytes of a text field, for byte-wise equality filters: `None` when the field is null
    /// or not text. A store that keeps text as bytes can answer without validating UTF-8 (bytes
    /// equal to a valid UTF-8 constant are that string); the default goes through [`value`].
    ///
    /// [`value`]: Record::value
    fn text_bytes(&self, index: usize) -> Option<&[u8]> {
        match self.value(index) {
            ValueRef::Text(text) => Some(text.as_bytes()),
            _ => None,
        }
    }
}

impl Record for [Value] {
    fn value(&self, index: usize) -> ValueRef<'_> {
        self.get(index).map_or(ValueRef::Null, Value::as_ref)
    }
}

impl Record for Vec<Value> {
    fn value(&self, index: usize) -> ValueRef<'_> {
        self.as_slice().value(index)
    }
}

impl Compiled {
    fn matches(&self, record: &(impl Record + ?Sized)) -> bool {
        match self {
            Compiled::True => true,
            Compiled::Compare { field, op, value } => {
                let v = record.value(*field);
                !v.is_null() && !value.is_null() && op.holds(v.total_cmp(&value.as_ref()))
            }
            Compiled::And(parts) => parts.iter().all(|p| p.matches(record)),
            Compiled::Or(parts) => parts.iter().any(|p| p.matches(record)),
            Compiled::Not(inner) => !inner.matches(record),
            Compiled::TextEquals {
                field,
                text,
                negated,
            } => record
                .text_bytes(*field)
                .is_some_and(|bytes| (bytes == text.as_bytes()) != *negated),
            Compiled::IsNull(field) => record.value(*field).is_null(),
            Compiled::In { field, values } => {
                let v = record.value(*field);
                !v.is_null()
                    && values
                        .binary_search_by(|candidate| candidate.as_ref().total_cmp(&v))
                        .is_ok()
            }
        }
    }
}

/// Collects a plan's answer one record at a time.
#[derive(Debug)]
pub struct Accumulator<'p> {
    plan: &'p Plan,
    scanned: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    Rows(Vec<Vec<Value>>),
    /// The one group of an aggregate without group-by: no key to build per record.
    Single {
        records: u64,
        partials: Vec<Partial>,
    },
    Groups {
        groups: BTreeMap<Vec<Value>, (u64, Vec<Partial>)>,
        /// Reused for each record's key, so a lookup of an existing group allocates nothing
        /// beyond copying text values.
        key: Vec<Value>,
    },
}

impl Plan {
    /// A fresh accumulator for this plan.
    pub fn accumulator(&self) -> Accumulator<'_> {
        let state = match &self.shape {
            PlanShape::Rows(_) => State::Rows(Vec::new()),
            PlanShape::Aggregate {
                group_by,
                aggregates,
            } if group_by.is_empty() => State::Single {
                records: 0,
                partials: aggregates.iter().map(|(f, _)| Partial::empty(*f)).collect(),
            },
            PlanShape::Aggregate { .. } => State::Groups {
                groups: BTreeMap::new(),
                key: Vec::new(),
            },
        };
        Accumulator {
            plan: self,
            scanned: 0,
            state,
        }
    }
}

impl Accumulator<'_> {
    /// Offers one record: counted as scanned if the capability's row selector admits it, then
    /// kept only if the query's filter admits it too.
    pub fn push(&mut self, record: &(impl Record + ?Sized)) -> Result<(), QueryError> {
        let plan = self.plan;
        if let Some((key, selector)) = &plan.rows
            && !selector.contains_value(&record.value(*key))
        {
            // Outside the capability's rows: not even counted, so a row-restricted capability
            // learns nothing of how many other records there are.
            return Ok(());
        }
        self.scanned += 1;
        if !plan.filter.matches(record) {
            return Ok(());
        }
        match (&mut self.state, &plan.shape) {
            (State::Rows(rows), PlanShape::Rows(fields)) => {
                rows.push(fields.iter().map(|&i| record.value(i).to_owned()).collect());
                // Without an order, the first `limit` rows are the answer; with one, keep the
                // buffer bounded by sorting and cutting whenever it doubles.
                let limit = usize::try_from(plan.query.limit).unwrap_or(usize::MAX);
                if plan.query.limit > 0
                    && !plan.query.order_by.is_empty()
                    && rows.len() >= limit.max(64).saturating_mul(2)
                {
                    sort_and_limit(rows, &plan.columns, &plan.query)?;
                }
                if rows.len() > plan.max_rows && (plan.query.limit == 0 || limit > plan.max_rows) {
                    return Err(QueryError::TooManyRows {
                        limit: plan.max_rows,
                    });
                }
            }
            (State::Single { records, partials }, PlanShape::Aggregate { aggregates, .. }) => {
                *records += 1;
                add_all(partials, aggregates, record)?;
            }
            (
                State::Groups { groups, key },
                PlanShape::Aggregate {
                    group_by,
                    aggregates,
                },
            ) => {
                key.clear();
                key.extend(group_by.iter().map(|&i| record.value(i).to_owned()));
                let entry = match groups.get_mut(key.as_slice()) {
                    Some(entry) => entry,
                    None => {
                        if groups.len() >= plan.max_rows {
                            return Err(QueryError::TooManyRows {
                                limit: plan.max_rows,
                            });
                        }
                        let partials = aggregates.iter().map(|(f, _)| Partial::empty(*f)).collect();
                        groups.entry(key.clone()).or_insert((0, partials))
                    }
                };
                entry.0 += 1;
                add_all(&mut entry.1, aggregates, record)?;
            }
            _ => unreachable!("the state is made from the same plan shape"),
        }
        Ok(())
    }

    /// Records offered so far that the capability's rows admit.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Whether further records cannot change the answer (a rows query without order has its
    /// `limit` rows), so a scan may stop early.
    pub fn is_satisfied(&self) -> bool {
        match &self.state {
            State::Rows(rows) => {
                self.plan.query.limit > 0
                    && self.plan.query.order_by.is_empty()
                    && rows.len() as u64 >= self.plan.query.limit
            }
            _ => false,
        }
    }

    /// The answer, with `as_of` as its data time: rows ordered and limited; groups smaller than
    /// the minimum group size withheld and counted.
    pub fn finish(self, as_of: i64) -> Result<QueryResult, QueryError> {
        let min = u64::from(self.plan.min_group_size);
        let mut suppressed = 0;
        let body = match self.state {
            State::Rows(mut rows) => {
                sort_and_limit(&mut rows, &self.plan.columns, &self.plan.query)?;
                ResultBody::Rows(rows)
            }
            State::Single { records, partials } => {
                // No records: no group at all (finalizing makes the SQL-style empty row).
                let mut groups = Vec::new();
                if records > 0 && records < min {
                    suppressed += 1;
                } else if records > 0 {
                    groups.push(Group {
                        key: Vec::new(),
                        records,
                        aggregates: partials,
                    });
                }
                ResultBody::Groups(groups)
            }
            State::Groups { groups, .. } => ResultBody::Groups(
                groups
                    .into_iter()
                    .filter(|(_, (records, _))| {
                        let keep = *records >= min;
                        suppressed += u64::from(!keep);
                        keep
                    })
                    .map(|(key, (records, aggregates))| Group {
                        key,
                        records,
                        aggregates,
                    })
                    .collect(),
            ),
        };
        Ok(QueryResult {
            as_of,
            columns: self.plan.columns.clone(),
            body,
            suppressed_groups: suppressed,
            scanned_records: self.scanned,
        })
    }
}

fn add_all(
    partials: &mut [Partial],
    aggregates: &[(super::model::AggregateFunction, Option<usize>)],
    record: &(impl Record + ?Sized),
) -> Result<(), QueryError> {
    for (partial, (_, field)) in partials.iter_mut().zip(aggregates) {
        partial.add(field.map(|i| record.value(i)))?;
    }
    Ok(())
}
