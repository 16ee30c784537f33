//! Compiling a query against a collection: names resolved to positions, types checked, and the
//! exposure policy enforced before a single record is read.
//!
//! The policy rules, each refused with an error naming the field:
//!
//! * a field that does not exist or is never exposed cannot be referenced at all (both give the
//!   same error, so refusals do not reveal which fields exist);
//! * an aggregate-only field may appear only inside `sum`, `avg` or `count`: never projected,
//!   filtered on (which would let a query probe single values), grouped or ordered by, and never
//!   inside `min` or `max` (which return one record's value);
//! * aggregate groups smaller than the collection's minimum group size are withheld and counted.
//!
//! The minimum group size stops a query from isolating a small group, but not differencing: the
//! sum over all records minus the sum over all records but one still reveals that one. Stopping
//! that takes query auditing or noise, which PSP does not do; a collection that must resist it
//! should not expose the field, even aggregate-only.

use super::QueryError;
use super::model::{AggregateFunction, CompareOp, Filter, Query, Shape};
use super::result::Column;
use super::schema::{CollectionSchema, Exposure};
use super::value::{Value, ValueType};
use crate::rows::{KeySelector, RowSelector};

/// Deepest filter nesting a query may use.
pub(crate) const MAX_FILTER_DEPTH: usize = 32;
/// Most filter nodes (comparisons, and/or/not) a query may hold.
pub(crate) const MAX_FILTER_NODES: usize = 1024;
/// Most values an `in` list may hold.
pub(crate) const MAX_IN_VALUES: usize = 4096;
/// Rows or groups a Totebox returns at most, by default.
pub const DEFAULT_MAX_ROWS: usize = 100_000;

/// A filter with field names resolved to record positions.
#[derive(Debug, Clone)]
pub(crate) enum Compiled {
    True,
    Compare {
        field: usize,
        op: CompareOp,
        value: Value,
    },
    /// `field = text` (or `<>` when negated): compared byte-wise, the common filter made cheap.
    TextEquals {
        field: usize,
        text: String,
        negated: bool,
    },
    And(Vec<Compiled>),
    Or(Vec<Compiled>),
    Not(Box<Compiled>),
    IsNull(usize),
    /// Values sorted, for binary search.
    In {
        field: usize,
        values: Vec<Value>,
    },
}

/// What the plan produces per matching record.
#[derive(Debug, Clone)]
pub(crate) enum PlanShape {
    Rows(Vec<usize>),
    Aggregate {
        group_by: Vec<usize>,
        aggregates: Vec<(AggregateFunction, Option<usize>)>,
    },
}

/// A query compiled for one collection under one capability grant.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) query: Query,
    pub(crate) filter: Compiled,
    /// The grant's row selector and the key's position, when the grant restricts rows.
    pub(crate) rows: Option<(usize, KeySelector)>,
    pub(crate) shape: PlanShape,
    pub(crate) columns: Vec<Column>,
    pub(crate) min_group_size: u32,
    pub(crate) max_rows: usize,
}

impl Plan {
    /// Compiles `query` for the collection described by `schema`, restricted to the rows of the
    /// capability's `rows` selector. Refuses, naming the field, anything the schema or the
    /// exposure policy does not allow.
    pub fn new(
        query: &Query,
        schema: &CollectionSchema,
        rows: &RowSelector,
    ) -> Result<Plan, QueryError> {
        if query.collection != schema.name {
            return Err(QueryError::UnknownCollection(query.collection.clone()));
        }
        let resolver = Resolver { schema };
        let mut nodes = 0;
        let filter = resolver.filter(&query.filter, 0, &mut nodes)?;
        let (shape, columns) = match &query.shape {
            Shape::Rows(fields) => {
                if fields.is_empty() {
                    return Err(QueryError::Invalid(
                        "a rows query projects at least one field".into(),
                    ));
                }
                let mut positions = Vec::new();
                let mut columns = Vec::new();
                for name in fields {
                    let (i, ty) = resolver.value_field(name, "projected")?;
                    positions.push(i);
                    columns.push(Column {
                        name: name.clone(),
                        value_type: ty,
                    });
                }
                (PlanShape::Rows(positions), columns)
            }
            Shape::Aggregate {
                group_by,
                aggregates,
            } => {
                if group_by.is_empty() && aggregates.is_empty() {
                    return Err(QueryError::Invalid(
                        "an aggregate query needs a group-by field or an aggregate".into(),
                    ));
                }
                let mut columns = Vec::new();
                let mut groups = Vec::new();
                for name in group_by {
                    let (i, ty) = resolver.value_field(name, "grouped by")?;
                    groups.push(i);
                    columns.push(Column {
                        name: name.clone(),
                        value_type: ty,
                    });
                }
                let mut compiled = Vec::new();
                for aggregate in aggregates {
                    let (field, ty) = match &aggregate.field {
                        None if aggregate.function == AggregateFunction::Count => {
                            (None, ValueType::Int)
                        }
                        None => {
                            return Err(QueryError::Invalid(format!(
                                "{} needs a field",
                                aggregate.function.name()
                            )));
                        }
                        Some(name) => {
                            let (i, ty) = resolver.aggregated_field(name, aggregate.function)?;
                            (Some(i), ty)
                        }
                    };
                    let output = match aggregate.function {
                        AggregateFunction::Count => ValueType::Int,
                        AggregateFunction::Avg if ty == ValueType::Decimal => ValueType::Decimal,
                        AggregateFunction::Avg => ValueType::Float,
                        _ => ty,
                    };
                    compiled.push((aggregate.function, field));
                    columns.push(Column {
                        name: aggregate.name.clone(),
                        value_type: output,
                    });
                }
                (
                    PlanShape::Aggregate {
                        group_by: groups,
                        aggregates: compiled,
                    },
                    columns,
                )
            }
        };
        let mut names = std::collections::BTreeSet::new();
        if let Some(dup) = columns.iter().find(|c| !names.insert(c.name.as_str())) {
            return Err(QueryError::Invalid(format!(
                "column {:?} appears twice",
                dup.name
            )));
        }
        for key in &query.order_by {
            if !columns.iter().any(|c| c.name == key.column) {
                return Err(QueryError::Invalid(format!(
                    "order by {:?}: only result columns can be ordered on",
                    key.column
                )));
            }
        }
        let rows = match rows {
            RowSelector::All => None,
            RowSelector::Keys(selector) => {
                // The grant's selector names the key field; a selector on another field than the
                // collection's key cannot be applied, so it admits nothing.
                let key = schema
                    .key_index()
                    .filter(|&i| schema.fields[i].name == selector.field());
                let key = key.ok_or_else(|| {
                    QueryError::Invalid(format!(
                        "the capability selects rows by {:?}, which is not the key of {:?}",
                        selector.field(),
                        schema.name
                    ))
                })?;
                Some((key, selector.clone()))
            }
        };
        Ok(Plan {
            query: query.clone(),
            filter,
            rows,
            shape,
            columns,
            min_group_size: schema.min_group_size,
            max_rows: DEFAULT_MAX_ROWS,
        })
    }

    /// Sets the most rows or groups the answer may hold (default [`DEFAULT_MAX_ROWS`]).
    pub fn with_max_rows(mut self, max_rows: usize) -> Self {
        self.max_rows = max_rows;
        self
    }

    /// The query this plan runs.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// The result's columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The rows the capability allows, for an archive that can use an index to skip the rest
    /// (the plan re-checks every record anyway).
    pub fn row_selector(&self) -> Option<&KeySelector> {
        self.rows.as_ref().map(|(_, s)| s)
    }
}

/// Resolves names against the schema under the exposure policy.
struct Resolver<'s> {
    schema: &'s CollectionSchema,
}

impl Resolver<'_> {
    fn exposed(&self, name: &str) -> Result<(usize, &super::schema::FieldSchema), QueryError> {
        match self.schema.find(name) {
            Some((i, f)) if f.exposure != Exposure::Never => Ok((i, f)),
            _ => Err(QueryError::FieldNotExposed {
                collection: self.schema.name.clone(),
                field: name.to_owned(),
            }),
        }
    }

    /// A field used so that its individual values would show: must be exposed as values.
    fn value_field(
        &self,
        name: &str,
        usage: &'static str,
    ) -> Result<(usize, ValueType), QueryError> {
        let (i, f) = self.exposed(name)?;
        if f.exposure == Exposure::AggregateOnly {
            return Err(QueryError::AggregateOnly {
                field: name.to_owned(),
                usage,
            });
        }
        Ok((i, f.value_type))
    }

    fn aggregated_field(
        &self,
        name: &str,
        function: AggregateFunction,
    ) -> Result<(usize, ValueType), QueryError> {
        let (i, f) = self.exposed(name)?;
        match function {
            AggregateFunction::Min | AggregateFunction::Max
                if f.exposure == Exposure::AggregateOnly =>
            {
                return Err(QueryError::AggregateOnly {
                    field: name.to_owned(),
                    usage: if function == AggregateFunction::Min {
                        "inside min"
                    } else {
                        "inside max"
                    },
                });
            }
            AggregateFunction::Sum | AggregateFunction::Avg if !f.value_type.is_numeric() => {
                return Err(QueryError::TypeMismatch(format!(
                    "{} of {:?}, a {} field",
                    function.name(),
                    name,
                    f.value_type.name()
                )));
            }
            _ => {}
        }
        Ok((i, f.value_type))
    }

    fn filter(
        &self,
        filter: &Filter,
        depth: usize,
        nodes: &mut usize,
    ) -> Result<Compiled, QueryError> {
        *nodes += 1;
        if depth > MAX_FILTER_DEPTH || *nodes > MAX_FILTER_NODES {
            return Err(QueryError::TooLarge(format!(
                "filters nest at most {MAX_FILTER_DEPTH} deep with at most {MAX_FILTER_NODES} nodes"
            )));
        }
        Ok(match filter {
            Filter::All => Compiled::True,
            Filter::Compare { field, op, value } => {
                let (i, ty) = self.value_field(field, "in a filter")?;
                check_comparable(field, ty, value)?;
                match (op, value) {
                    (CompareOp::Eq | CompareOp::Ne, Value::Text(text)) => Compiled::TextEquals {
                        field: i,
                        text: text.clone(),
                        negated: *op == CompareOp::Ne,
                    },
                    _ => Compiled::Compare {
                        field: i,
                        op: *op,
                        value: value.clone(),
                    },
                }
            }
            Filter::And(parts) => Compiled::And(
                parts
                    .iter()
                    .map(|p| self.filter(p, depth + 1, nodes))
                    .collect::<Result<_, _>>()?,
            ),
            Filter::Or(parts) => Compiled::Or(
                parts
                    .iter()
                    .map(|p| self.filter(p, depth + 1, nodes))
                    .collect::<Result<_, _>>()?,
            ),
            Filter::Not(inner) => Compiled::Not(Box::new(self.filter(inner, depth + 1, nodes)?)),
            Filter::IsNull(field) => Compiled::IsNull(self.value_field(field, "in a filter")?.0),
            Filter::In { field, values } => {
                if values.len() > MAX_IN_VALUES {
                    return Err(QueryError::TooLarge(format!(
                        "an in-list holds at most {MAX_IN_VALUES} values"
                    )));
                }
                let (i, ty) = self.value_field(field, "in a filter")?;
                for v in values {
                    check_comparable(field, ty, v)?;
                }
                let mut values = values.clone();
                values.sort();
                Compiled::In { field: i, values }
            }
        })
    }
}

/// A constant may be compared with a field of the same type, numbers with numbers, and null
/// with anything (such a comparison is simply false).
fn check_comparable(field: &str, ty: ValueType, value: &Value) -> Result<(), QueryError> {
    let vt = value.value_type();
    if vt == ValueType::Null || vt == ty || (vt.is_numeric() && ty.is_numeric()) {
        Ok(())
    } else {
        Err(QueryError::TypeMismatch(format!(
            "{field:?} is {}, compared with a {} value",
            ty.name(),
            vt.name()
        )))
    }
}
