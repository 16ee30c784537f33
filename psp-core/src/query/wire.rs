//! Moving queries, values and results between the Rust model and Cap'n Proto messages
//! (`schema/query.capnp`). Reading checks what the type system cannot: unknown enum values,
//! out-of-range decimals, filter size and depth, invalid UTF-8. Each problem is a
//! [`QueryError`], never a panic.

use psp_schema::query_capnp::{
    self as wire, column, filter, group, partial_aggregate, query, query_result, value,
};

use super::QueryError;
use super::model::{Aggregate, AggregateFunction, CompareOp, Filter, OrderKey, Query, Shape};
use super::plan::{MAX_FILTER_DEPTH, MAX_FILTER_NODES, MAX_IN_VALUES};
use super::result::{Column, Group, Partial, QueryResult, ResultBody};
use super::value::{Decimal, Value, ValueRef, ValueType};

/// Most fields a query may project, group by or order by, and most aggregates it may compute.
const MAX_LIST: u32 = 256;

fn bad(e: impl std::fmt::Display) -> QueryError {
    QueryError::Invalid(e.to_string())
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, QueryError> {
    Ok(t.map_err(bad)?.to_str().map_err(bad)?.to_owned())
}

fn bounded(len: u32, what: &str) -> Result<(), QueryError> {
    if len > MAX_LIST {
        return Err(QueryError::TooLarge(format!("at most {MAX_LIST} {what}")));
    }
    Ok(())
}

/// Reads a value.
pub fn read_value(reader: value::Reader<'_>) -> Result<Value, QueryError> {
    Ok(match reader.which().map_err(bad)? {
        value::Null(()) => Value::Null,
        value::Bool(b) => Value::Bool(b),
        value::Int(i) => Value::Int(i),
        value::Float(x) => Value::Float(x),
        value::Text(t) => Value::Text(text(t)?),
        value::Timestamp(t) => Value::Timestamp(t),
        value::Decimal(d) => Value::Decimal(
            Decimal::new(d.get_units(), d.get_scale())
                .ok_or_else(|| bad(format!("decimal scale {} is over 18", d.get_scale())))?,
        ),
    })
}

/// Writes a value.
pub fn write_value(v: ValueRef<'_>, mut builder: value::Builder<'_>) {
    match v {
        ValueRef::Null => builder.set_null(()),
        ValueRef::Bool(b) => builder.set_bool(b),
        ValueRef::Int(i) => builder.set_int(i),
        ValueRef::Float(x) => builder.set_float(x),
        ValueRef::Text(t) => builder.set_text(t),
        ValueRef::Timestamp(t) => builder.set_timestamp(t),
        ValueRef::Decimal(d) => {
            let mut b = builder.init_decimal();
            b.set_units(d.units());
            b.set_scale(d.scale());
        }
    }
}

fn write_values(values: &[Value], mut list: capnp::struct_list::Builder<'_, value::Owned>) {
    for (i, v) in values.iter().enumerate() {
        write_value(v.as_ref(), list.reborrow().get(i as u32));
    }
}

fn read_values(
    list: capnp::struct_list::Reader<'_, value::Owned>,
) -> Result<Vec<Value>, QueryError> {
    list.iter().map(read_value).collect()
}

/// The wire enum of a value type.
pub fn type_to_wire(t: ValueType) -> wire::ValueType {
    match t {
        ValueType::Null => wire::ValueType::Null,
        ValueType::Bool => wire::ValueType::Bool,
        ValueType::Int => wire::ValueType::Int,
        ValueType::Float => wire::ValueType::Float,
        ValueType::Text => wire::ValueType::Text,
        ValueType::Timestamp => wire::ValueType::Timestamp,
        ValueType::Decimal => wire::ValueType::Decimal,
    }
}

/// The value type of a wire enum.
pub fn type_from_wire(t: wire::ValueType) -> ValueType {
    match t {
        wire::ValueType::Null => ValueType::Null,
        wire::ValueType::Bool => ValueType::Bool,
        wire::ValueType::Int => ValueType::Int,
        wire::ValueType::Float => ValueType::Float,
        wire::ValueType::Text => ValueType::Text,
        wire::ValueType::Timestamp => ValueType::Timestamp,
        wire::ValueType::Decimal => ValueType::Decimal,
    }
}

/// Reads a query, enforcing the size limits on its parts.
pub fn read_query(reader: query::Reader<'_>) -> Result<Query, QueryError> {
    let mut nodes = 0;
    let filter = if reader.has_filter() {
        read_filter(reader.get_filter().map_err(bad)?, 0, &mut nodes)?
    } else {
        Filter::All
    };
    let shape = match reader.get_shape().which().map_err(bad)? {
        query::shape::Rows(fields) => {
            let fields = fields.map_err(bad)?;
            bounded(fields.len(), "projected fields")?;
            Shape::Rows(fields.iter().map(text).collect::<Result<_, _>>()?)
        }
        query::shape::Aggregate(aggregation) => {
            let aggregation = aggregation.map_err(bad)?;
            let group_by = aggregation.get_group_by().map_err(bad)?;
            let aggregates = aggregation.get_aggregates().map_err(bad)?;
            bounded(group_by.len(), "group-by fields")?;
            bounded(aggregates.len(), "aggregates")?;
            let mut parsed = Vec::new();
            for a in aggregates.iter() {
                let function = match a.get_function().map_err(bad)? {
                    wire::AggregateFunction::Count => AggregateFunction::Count,
                    wire::AggregateFunction::Sum => AggregateFunction::Sum,
                    wire::AggregateFunction::Min => AggregateFunction::Min,
                    wire::AggregateFunction::Max => AggregateFunction::Max,
                    wire::AggregateFunction::Avg => AggregateFunction::Avg,
                };
                let field = Some(text(a.get_field())?).filter(|f| !f.is_empty());
                let name = text(a.get_name())?;
                let name = if name.is_empty() {
                    format!("{}({})", function.name(), field.as_deref().unwrap_or("*"))
                } else {
                    name
                };
                parsed.push(Aggregate {
                    function,
                    field,
                    name,
                });
            }
            Shape::Aggregate {
                group_by: group_by.iter().map(text).collect::<Result<_, _>>()?,
                aggregates: parsed,
            }
        }
    };
    let order = reader.get_order_by().map_err(bad)?;
    bounded(order.len(), "order keys")?;
    let order_by = order
        .iter()
        .map(|k| {
            Ok(OrderKey {
                column: text(k.get_column())?,
                descending: k.get_descending(),
            })
        })
        .collect::<Result<_, QueryError>>()?;
    Ok(Query {
        collection: text(reader.get_collection())?,
        filter,
        shape,
        order_by,
        limit: reader.get_limit(),
    })
}

/// Reads a filter on its own (a reconciliation's, say), enforcing the same limits as in a query.
pub fn read_filter_alone(reader: filter::Reader<'_>) -> Result<Filter, QueryError> {
    read_filter(reader, 0, &mut 0)
}

fn read_filter(
    reader: filter::Reader<'_>,
    depth: usize,
    nodes: &mut usize,
) -> Result<Filter, QueryError> {
    *nodes += 1;
    if depth > MAX_FILTER_DEPTH || *nodes > MAX_FILTER_NODES {
        return Err(QueryError::TooLarge(format!(
            "filters nest at most {MAX_FILTER_DEPTH} deep with at most {MAX_FILTER_NODES} nodes"
        )));
    }
    let parts = |list: capnp::Result<capnp::struct_list::Reader<'_, filter::Owned>>,
                 nodes: &mut usize| {
        list.map_err(bad)?
            .iter()
            .map(|f| read_filter(f, depth + 1, nodes))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match reader.which().map_err(bad)? {
        filter::All(()) => Filter::All,
        filter::Compare(c) => {
            let c = c.map_err(bad)?;
            let op = match c.get_op().map_err(bad)? {
                wire::CompareOp::Eq => CompareOp::Eq,
                wire::CompareOp::Ne => CompareOp::Ne,
                wire::CompareOp::Lt => CompareOp::Lt,
                wire::CompareOp::Le => CompareOp::Le,
                wire::CompareOp::Gt => CompareOp::Gt,
                wire::CompareOp::Ge => CompareOp::Ge,
            };
            Filter::Compare {
                field: text(c.get_field())?,
                op,
                value: read_value(c.get_value().map_err(bad)?)?,
            }
        }
        filter::And(list) => Filter::And(parts(list, nodes)?),
        filter::Or(list) => Filter::Or(parts(list, nodes)?),
        filter::Not(inner) => Filter::Not(Box::new(read_filter(
            inner.map_err(bad)?,
            depth + 1,
            nodes,
        )?)),
        filter::IsNull(field) => Filter::IsNull(text(field)?),
        filter::In(m) => {
            let m = m.map_err(bad)?;
            let values = m.get_values().map_err(bad)?;
            if values.len() as usize > MAX_IN_VALUES {
                return Err(QueryError::TooLarge(format!(
                    "an in-list holds at most {MAX_IN_VALUES} values"
                )));
            }
            Filter::In {
                field: text(m.get_field())?,
                values: read_values(values)?,
            }
        }
    })
}

/// Writes a query.
pub fn write_query(q: &Query, mut builder: query::Builder<'_>) {
    builder.set_collection(&q.collection);
    write_filter(&q.filter, builder.reborrow().init_filter());
    match &q.shape {
        Shape::Rows(fields) => {
            let mut list = builder
                .reborrow()
                .init_shape()
                .init_rows(fields.len() as u32);
            for (i, f) in fields.iter().enumerate() {
                list.set(i as u32, f);
            }
        }
        Shape::Aggregate {
            group_by,
            aggregates,
        } => {
            let mut a = builder.reborrow().init_shape().init_aggregate();
            let mut groups = a.reborrow().init_group_by(group_by.len() as u32);
            for (i, f) in group_by.iter().enumerate() {
                groups.set(i as u32, f);
            }
            let mut list = a.init_aggregates(aggregates.len() as u32);
            for (i, agg) in aggregates.iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_function(match agg.function {
                    AggregateFunction::Count => wire::AggregateFunction::Count,
                    AggregateFunction::Sum => wire::AggregateFunction::Sum,
                    AggregateFunction::Min => wire::AggregateFunction::Min,
                    AggregateFunction::Max => wire::AggregateFunction::Max,
                    AggregateFunction::Avg => wire::AggregateFunction::Avg,
                });
                b.set_field(agg.field.as_deref().unwrap_or(""));
                b.set_name(&agg.name);
            }
        }
    }
    let mut order = builder.reborrow().init_order_by(q.order_by.len() as u32);
    for (i, k) in q.order_by.iter().enumerate() {
        let mut b = order.reborrow().get(i as u32);
        b.set_column(&k.column);
        b.set_descending(k.descending);
    }
    builder.set_limit(q.limit);
}

/// Writes a filter.
pub fn write_filter(f: &Filter, mut builder: filter::Builder<'_>) {
    let list = |parts: &[Filter], mut list: capnp::struct_list::Builder<'_, filter::Owned>| {
        for (i, p) in parts.iter().enumerate() {
            write_filter(p, list.reborrow().get(i as u32));
        }
    };
    match f {
        Filter::All => builder.set_all(()),
        Filter::Compare { field, op, value } => {
            let mut c = builder.init_compare();
            c.set_field(field);
            c.set_op(match op {
                CompareOp::Eq => wire::CompareOp::Eq,
                CompareOp::Ne => wire::CompareOp::Ne,
                CompareOp::Lt => wire::CompareOp::Lt,
                CompareOp::Le => wire::CompareOp::Le,
                CompareOp::Gt => wire::CompareOp::Gt,
                CompareOp::Ge => wire::CompareOp::Ge,
            });
            write_value(value.as_ref(), c.init_value());
        }
        Filter::And(parts) => list(parts, builder.init_and(parts.len() as u32)),
        Filter::Or(parts) => list(parts, builder.init_or(parts.len() as u32)),
        Filter::Not(inner) => write_filter(inner, builder.init_not()),
        Filter::IsNull(field) => builder.set_is_null(field),
        Filter::In { field, values } => {
            let mut m = builder.init_in();
            m.set_field(field);
            write_values(values, m.init_values(values.len() as u32));
        }
    }
}

/// Writes a query result.
pub fn write_result(r: &QueryResult, mut builder: query_result::Builder<'_>) {
    builder.set_as_of(r.as_of);
    builder.set_suppressed_groups(r.suppressed_groups);
    builder.set_scanned_records(r.scanned_records);
    let mut columns = builder.reborrow().init_columns(r.columns.len() as u32);
    for (i, c) in r.columns.iter().enumerate() {
        let mut b = columns.reborrow().get(i as u32);
        b.set_name(&c.name);
        b.set_type(type_to_wire(c.value_type));
    }
    match &r.body {
        ResultBody::Rows(rows) => {
            let mut list = builder.init_body().init_rows(rows.len() as u32);
            for (i, row) in rows.iter().enumerate() {
                write_values(
                    row,
                    list.reborrow().get(i as u32).init_values(row.len() as u32),
                );
            }
        }
        ResultBody::Groups(groups) => {
            let mut list = builder.init_body().init_groups(groups.len() as u32);
            for (i, g) in groups.iter().enumerate() {
                write_group(g, list.reborrow().get(i as u32));
            }
        }
    }
}

fn write_group(g: &Group, mut builder: group::Builder<'_>) {
    write_values(&g.key, builder.reborrow().init_key(g.key.len() as u32));
    builder.set_records(g.records);
    let mut list = builder.init_aggregates(g.aggregates.len() as u32);
    for (i, p) in g.aggregates.iter().enumerate() {
        let mut b = list.reborrow().get(i as u32);
        match p {
            Partial::Count(n) => b.set_count(*n),
            Partial::Sum { sum, count } => {
                let mut s = b.init_sum();
                write_value(sum.as_ref(), s.reborrow().init_sum());
                s.set_count(*count);
            }
            Partial::Avg { sum, count } => {
                let mut s = b.init_avg();
                write_value(sum.as_ref(), s.reborrow().init_sum());
                s.set_count(*count);
            }
            Partial::Min(v) => write_value(v.as_ref(), b.init_min()),
            Partial::Max(v) => write_value(v.as_ref(), b.init_max()),
        }
    }
}

/// Reads a query result (what an aggregator does with each Totebox's answer).
pub fn read_result(reader: query_result::Reader<'_>) -> Result<QueryResult, QueryError> {
    let columns = reader
        .get_columns()
        .map_err(bad)?
        .iter()
        .map(|c: column::Reader<'_>| {
            Ok(Column {
                name: text(c.get_name())?,
                value_type: type_from_wire(c.get_type().map_err(bad)?),
            })
        })
        .collect::<Result<Vec<_>, QueryError>>()?;
    let body = match reader.get_body().which().map_err(bad)? {
        query_result::body::Rows(rows) => ResultBody::Rows(
            rows.map_err(bad)?
                .iter()
                .map(|row| read_values(row.get_values().map_err(bad)?))
                .collect::<Result<_, _>>()?,
        ),
        query_result::body::Groups(groups) => ResultBody::Groups(
            groups
                .map_err(bad)?
                .iter()
                .map(read_group)
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(QueryResult {
        as_of: reader.get_as_of(),
        columns,
        body,
        suppressed_groups: reader.get_suppressed_groups(),
        scanned_records: reader.get_scanned_records(),
    })
}

fn read_group(g: group::Reader<'_>) -> Result<Group, QueryError> {
    let aggregates = g
        .get_aggregates()
        .map_err(bad)?
        .iter()
        .map(|p| {
            Ok(match p.which().map_err(bad)? {
                partial_aggregate::Count(n) => Partial::Count(n),
                partial_aggregate::Sum(s) => {
                    let s = s.map_err(bad)?;
                    Partial::Sum {
                        sum: read_value(s.get_sum().map_err(bad)?)?,
                        count: s.get_count(),
                    }
                }
                partial_aggregate::Avg(s) => {
                    let s = s.map_err(bad)?;
                    Partial::Avg {
                        sum: read_value(s.get_sum().map_err(bad)?)?,
                        count: s.get_count(),
                    }
                }
                partial_aggregate::Min(v) => Partial::Min(read_value(v.map_err(bad)?)?),
                partial_aggregate::Max(v) => Partial::Max(read_value(v.map_err(bad)?)?),
            })
        })
        .collect::<Result<_, QueryError>>()?;
    Ok(Group {
        key: read_values(g.get_key().map_err(bad)?)?,
        records: g.get_records(),
        aggregates,
    })
}
