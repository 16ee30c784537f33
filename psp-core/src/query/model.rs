//! The query model: the Rust form of `Query` in `schema/query.capnp`.

use std::collections::BTreeSet;

use super::value::Value;

/// A read query over one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The collection read.
    pub collection: String,
    /// Which records take part.
    pub filter: Filter,
    /// Rows or groups.
    pub shape: Shape,
    /// Sort keys over the result's columns, most significant first.
    pub order_by: Vec<OrderKey>,
    /// At most this many rows after ordering; 0 means no limit.
    pub limit: u64,
}

/// What a query returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// These fields of each matching record.
    Rows(Vec<String>),
    /// One row per group of matching records.
    Aggregate {
        /// Fields whose values form the group key (empty: one group).
        group_by: Vec<String>,
        /// The aggregate columns.
        aggregates: Vec<Aggregate>,
    },
}

/// A boolean expression over a record's fields. Comparisons with null are false.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every record.
    All,
    /// `field op value`.
    Compare {
        /// The field.
        field: String,
        /// The comparison.
        op: CompareOp,
        /// The constant.
        value: Value,
    },
    /// Every sub-filter matches.
    And(Vec<Filter>),
    /// At least one sub-filter matches.
    Or(Vec<Filter>),
    /// The sub-filter does not match.
    Not(Box<Filter>),
    /// The field is null.
    IsNull(String),
    /// The field equals one of the values.
    In {
        /// The field.
        field: String,
        /// The values.
        values: Vec<Value>,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Ge,
}

impl CompareOp {
    /// Whether `ordering` (field compared with the constant) satisfies the operator.
    pub fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CompareOp::Eq => ordering == Equal,
            CompareOp::Ne => ordering != Equal,
            CompareOp::Lt => ordering == Less,
            CompareOp::Le => ordering != Greater,
            CompareOp::Gt => ordering == Greater,
            CompareOp::Ge => ordering != Less,
        }
    }
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateFunction {
    /// Number of records, or of non-null values of a field.
    Count,
    /// Exact sum of non-null values.
    Sum,
    /// Smallest non-null value.
    Min,
    /// Largest non-null value.
    Max,
    /// Mean of non-null values (carried as sum and count).
    Avg,
}

impl AggregateFunction {
    /// The function's name as the schema spells it.
    pub fn name(self) -> &'static str {
        match self {
            AggregateFunction::Count => "count",
            AggregateFunction::Sum => "sum",
            AggregateFunction::Min => "min",
            AggregateFunction::Max => "max",
            AggregateFunction::Avg => "avg",
        }
    }
}

/// One aggregate column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// What to compute.
    pub function: AggregateFunction,
    /// The input field; `None` only for count(*).
    pub field: Option<String>,
    /// The output column's name.
    pub name: String,
}

impl Aggregate {
    /// `function(field)`, named like that.
    pub fn of(function: AggregateFunction, field: &str) -> Self {
        Self {
            function,
            field: Some(field.to_owned()),
            name: format!("{}({field})", function.name()),
        }
    }

    /// `count(*)`: the number of records in each group.
    pub fn count() -> Self {
        Self {
            function: AggregateFunction::Count,
            field: None,
            name: "count(*)".to_owned(),
        }
    }

    /// The same aggregate under another column name.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    /// A result column.
    pub column: String,
    /// High to low.
    pub descending: bool,
}

impl Query {
    /// A projection of `fields` from every record of `collection`.
    pub fn rows<'a>(collection: &str, fields: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            collection: collection.to_owned(),
            filter: Filter::All,
            shape: Shape::Rows(fields.into_iter().map(str::to_owned).collect()),
            order_by: Vec::new(),
            limit: 0,
        }
    }

    /// Aggregates of `collection` grouped by `group_by`.
    pub fn aggregate<'a>(
        collection: &str,
        group_by: impl IntoIterator<Item = &'a str>,
        aggregates: impl IntoIterator<Item = Aggregate>,
    ) -> Self {
        Self {
            collection: collection.to_owned(),
            filter: Filter::All,
            shape: Shape::Aggregate {
                group_by: group_by.into_iter().map(str::to_owned).collect(),
                aggregates: aggregates.into_iter().collect(),
            },
            order_by: Vec::new(),
            limit: 0,
        }
    }

    /// The same query with a filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// The same query ordered by one more key.
    pub fn order_by(mut self, column: &str, descending: bool) -> Self {
        self.order_by.push(OrderKey {
            column: column.to_owned(),
            descending,
        });
        self
    }

    /// The same query with a row limit.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// Every field the query references: filtered, projected, grouped, aggregated, or ordered on
    /// (order keys naming an aggregate's output column are not fields). This is what a
    /// capability's field set must cover.
    pub fn referenced_fields(&self) -> BTreeSet<&str> {
        let mut fields = BTreeSet::new();
        self.filter.collect_fields(&mut fields);
        let outputs: BTreeSet<&str> = match &self.shape {
            Shape::Rows(projected) => {
                fields.extend(projected.iter().map(String::as_str));
                BTreeSet::new()
            }
            Shape::Aggregate {
                group_by,
                aggregates,
            } => {
                fields.extend(group_by.iter().map(String::as_str));
                fields.extend(aggregates.iter().filter_map(|a| a.field.as_deref()));
                aggregates.iter().map(|a| a.name.as_str()).collect()
            }
        };
        fields.extend(
            self.order_by
                .iter()
                .map(|k| k.column.as_str())
                .filter(|c| !outputs.contains(c)),
        );
        fields
    }
}

impl Filter {
    /// `field op value`.
    pub fn compare(field: &str, op: CompareOp, value: impl Into<Value>) -> Self {
        Filter::Compare {
            field: field.to_owned(),
            op,
            value: value.into(),
        }
    }

    fn collect_fields<'a>(&'a self, fields: &mut BTreeSet<&'a str>) {
        match self {
            Filter::All => {}
            Filter::Compare { field, .. } | Filter::IsNull(field) | Filter::In { field, .. } => {
                fields.insert(field);
            }
            Filter::And(parts) | Filter::Or(parts) => {
                parts.iter().for_each(|p| p.collect_fields(fields));
            }
            Filter::Not(inner) => inner.collect_fields(fields),
        }
    }
}
