//! Queries and results survive the trip through Cap'n Proto, and hostile messages come back as
//! typed errors, never as panics.

use capnp::message::{Builder, ReaderOptions};
use psp_core::query::wire::{read_query, read_result, write_query, write_result};
use psp_core::query::{
    Aggregate, AggregateFunction, Column, CompareOp, Decimal, Filter, Group, Partial, Query,
    QueryError, QueryResult, ResultBody, Value, ValueType,
};
use psp_schema::query_capnp::{filter, query};

fn to_bytes(q: &Query) -> Vec<u8> {
    let mut message = Builder::new_default();
    write_query(q, message.init_root());
    capnp::serialize::write_message_to_words(&message)
}

fn from_bytes(bytes: &[u8]) -> Result<Query, QueryError> {
    let message = capnp::serialize::read_message(&mut &bytes[..], ReaderOptions::new()).unwrap();
    read_query(message.get_root().unwrap())
}

fn sample() -> Query {
    Query::aggregate(
        "leases",
        ["region", "class"],
        [
            Aggregate::count(),
            Aggregate::of(AggregateFunction::Sum, "rent"),
            Aggregate::of(AggregateFunction::Avg, "rent").named("mean rent"),
        ],
    )
    .filter(Filter::And(vec![
        Filter::compare(
            "rent",
            CompareOp::Ge,
            Value::Decimal(Decimal::parse("1500.50").unwrap()),
        ),
        Filter::Not(Box::new(Filter::IsNull("end".into()))),
        Filter::Or(vec![
            Filter::In {
                field: "region".into(),
                values: vec!["east".into(), "west".into()],
            },
            Filter::compare(
                "start",
                CompareOp::Lt,
                Value::Timestamp(1_700_000_000_000_000),
            ),
        ]),
    ]))
    .order_by("mean rent", true)
    .limit(10)
}

#[test]
fn a_query_round_trips() {
    let q = sample();
    assert_eq!(from_bytes(&to_bytes(&q)).unwrap(), q);
    let rows = Query::rows("leases", ["lease_id", "rent"]).filter(Filter::compare(
        "flag",
        CompareOp::Eq,
        Value::Bool(true),
    ));
    assert_eq!(from_bytes(&to_bytes(&rows)).unwrap(), rows);
}

#[test]
fn a_result_round_trips() {
    let result = QueryResult {
        as_of: 1_700_000_000_000_000,
        columns: vec![
            Column {
                name: "region".into(),
                value_type: ValueType::Text,
            },
            Column {
                name: "n".into(),
                value_type: ValueType::Int,
            },
        ],
        body: ResultBody::Groups(vec![Group {
            key: vec!["east".into()],
            records: 12,
            aggregates: vec![
                Partial::Count(12),
                Partial::Sum {
                    sum: Value::Decimal(Decimal::parse("10.25").unwrap()),
                    count: 3,
                },
                Partial::Avg {
                    sum: Value::Float(2.5),
                    count: 2,
                },
                Partial::Min(Value::Text("a".into())),
                Partial::Max(Value::Null),
            ],
        }]),
        suppressed_groups: 2,
        scanned_records: 99,
    };
    let mut message = Builder::new_default();
    write_result(&result, message.init_root());
    let bytes = capnp::serialize::write_message_to_words(&message);
    let reader = capnp::serialize::read_message(&mut &bytes[..], ReaderOptions::new()).unwrap();
    assert_eq!(read_result(reader.get_root().unwrap()).unwrap(), result);
}

#[test]
fn a_filter_nested_too_deep_is_refused() {
    let mut message = Builder::new_default();
    let mut q = message.init_root::<query::Builder<'_>>();
    q.set_collection("leases");
    q.reborrow().init_shape().init_rows(1).set(0, "rent");
    let mut f: filter::Builder<'_> = q.init_filter();
    for _ in 0..40 {
        f = f.init_not();
    }
    f.set_all(());
    let bytes = capnp::serialize::write_message_to_words(&message);
    assert_eq!(from_bytes(&bytes).unwrap_err().code(), "limit.query");
}

#[test]
fn an_oversized_in_list_is_refused() {
    let q = Query::rows("leases", ["rent"]).filter(Filter::In {
        field: "rent".into(),
        values: (0..5_000).map(Value::Int).collect(),
    });
    assert_eq!(from_bytes(&to_bytes(&q)).unwrap_err().code(), "limit.query");
}

#[test]
fn an_unknown_operator_is_an_invalid_query() {
    // Comparison's data section holds only its operator; `ge` is 5. Find that word and make it
    // an operator no schema version defines.
    let q =
        Query::rows("leases", ["rent"]).filter(Filter::compare("rent", CompareOp::Ge, Value::Null));
    let mut bytes = to_bytes(&q);
    let target = 5u64.to_le_bytes();
    let hits: Vec<usize> = (8..bytes.len())
        .step_by(8)
        .filter(|&i| bytes[i..i + 8] == target)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "the operator word must be unique in this message"
    );
    bytes[hits[0]] = 99;
    let error = from_bytes(&bytes).unwrap_err();
    assert_eq!(error.code(), "query.invalid", "{error}");
}

#[test]
fn decimals_with_an_impossible_scale_are_invalid() {
    let mut message = Builder::new_default();
    let mut v = message
        .init_root::<psp_schema::query_capnp::value::Builder<'_>>()
        .init_decimal();
    v.set_units(1);
    v.set_scale(40);
    let reader = message
        .get_root_as_reader::<psp_schema::query_capnp::value::Reader<'_>>()
        .unwrap();
    let error = psp_core::query::wire::read_value(reader).unwrap_err();
    assert_eq!(error.code(), "query.invalid");
}
