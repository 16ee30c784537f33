//! The query engine against a plain reference evaluator, on random records and random queries,
//! and the merge algebra: splitting the records over several archives and merging their answers
//! gives exactly the answer of one archive holding them all.

use std::collections::BTreeMap;

use proptest::prelude::*;
use psp_core::RowSelector;
use psp_core::query::wire::{read_result, write_result};
use psp_core::query::{
    Aggregate, AggregateFunction, CollectionSchema, CompareOp, Decimal, Exposure, Filter, Merged,
    Merger, Plan, Query, QueryResult, Shape, Table, Value, ValueType,
};

/// Fields: 0 id, 1 entity, 2 region, 3 amount (decimal), 4 qty, 5 score (float), 6 flag, 7 at.
fn schema() -> CollectionSchema {
    CollectionSchema::new("ledger", "id", 1)
        .field("id", ValueType::Int, Exposure::Value)
        .field("entity", ValueType::Text, Exposure::Value)
        .field("region", ValueType::Text, Exposure::Value)
        .field("amount", ValueType::Decimal, Exposure::Value)
        .field("qty", ValueType::Int, Exposure::Value)
        .field("score", ValueType::Float, Exposure::Value)
        .field("flag", ValueType::Bool, Exposure::Value)
        .field("at", ValueType::Timestamp, Exposure::Value)
}

const FIELDS: [&str; 8] = [
    "id", "entity", "region", "amount", "qty", "score", "flag", "at",
];
const GROUPABLE: [&str; 4] = ["entity", "region", "flag", "qty"];

fn maybe_null(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop_oneof![1 => Just(Value::Null), 6 => v]
}

fn field_value(field: usize) -> BoxedStrategy<Value> {
    match field {
        0 => (0i64..1000).prop_map(Value::Int).boxed(),
        1 => prop::sample::select(vec!["A", "B", "C", "D"])
            .prop_map(Value::from)
            .boxed(),
        2 => prop::sample::select(vec!["east", "west"])
            .prop_map(Value::from)
            .boxed(),
        3 => (-50_000i64..50_000, 0u8..3)
            .prop_map(|(u, s)| Value::Decimal(Decimal::new(u, s).unwrap()))
            .boxed(),
        4 => (-20i64..20).prop_map(Value::Int).boxed(),
        5 => prop::sample::select(vec![-1.5, 0.0, 0.25, 2.0, 7.75])
            .prop_map(Value::Float)
            .boxed(),
        6 => any::<bool>().prop_map(Value::Bool).boxed(),
        _ => (0i64..5)
            .prop_map(|d| Value::Timestamp(1_700_000_000_000_000 + d * 86_400_000_000))
            .boxed(),
    }
}

fn record() -> impl Strategy<Value = Vec<Value>> {
    (0..FIELDS.len())
        .map(|f| maybe_null(field_value(f)))
        .collect::<Vec<_>>()
}

fn filter() -> impl Strategy<Value = Filter> {
    let leaf = prop_oneof![
        Just(Filter::All),
        (
            0..FIELDS.len(),
            prop::sample::select(vec![
                CompareOp::Eq,
                CompareOp::Ne,
                CompareOp::Lt,
                CompareOp::Le,
                CompareOp::Gt,
                CompareOp::Ge,
            ])
        )
            .prop_flat_map(|(f, op)| maybe_null(field_value(f)).prop_map(move |v| {
                Filter::Compare {
                    field: FIELDS[f].into(),
                    op,
                    value: v,
                }
            })),
        (0..FIELDS.len()).prop_map(|f| Filter::IsNull(FIELDS[f].into())),
        (0..FIELDS.len()).prop_flat_map(|f| {
            prop::collection::vec(field_value(f), 0..4).prop_map(move |values| Filter::In {
                field: FIELDS[f].into(),
                values,
            })
        }),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Filter::And),
            prop::collection::vec(inner.clone(), 0..3).prop_map(Filter::Or),
            inner.prop_map(|f| Filter::Not(Box::new(f))),
        ]
    })
}

fn aggregate(exact_only: bool) -> impl Strategy<Value = Aggregate> {
    let numeric: Vec<&str> = if exact_only {
        vec!["amount", "qty"]
    } else {
        vec!["amount", "qty", "score"]
    };
    prop_oneof![
        Just(Aggregate::count()),
        prop::sample::select(FIELDS.to_vec())
            .prop_map(|f| Aggregate::of(AggregateFunction::Count, f)),
        prop::sample::select(numeric.clone())
            .prop_map(|f| Aggregate::of(AggregateFunction::Sum, f)),
        prop::sample::select(numeric).prop_map(|f| Aggregate::of(AggregateFunction::Avg, f)),
        prop::sample::select(FIELDS.to_vec())
            .prop_map(|f| Aggregate::of(AggregateFunction::Min, f)),
        prop::sample::select(FIELDS.to_vec())
            .prop_map(|f| Aggregate::of(AggregateFunction::Max, f)),
    ]
}

/// Random queries; `exact_only` leaves out float sums and averages (which depend on the order of
/// addition) and limits without a full order (which pick arbitrary rows).
fn query(exact_only: bool) -> impl Strategy<Value = Query> {
    let rows = (
        prop::sample::subsequence(FIELDS.to_vec(), 1..4),
        any::<bool>(),
    )
        .prop_map(|(fields, _)| Shape::Rows(fields.into_iter().map(String::from).collect()));
    let aggregate = (
        prop::sample::subsequence(GROUPABLE.to_vec(), 0..3),
        prop::collection::vec(aggregate(exact_only), 1..4),
    )
        .prop_map(|(group_by, mut aggregates)| {
            for (i, a) in aggregates.iter_mut().enumerate() {
                a.name = format!("a{i}");
            }
            Shape::Aggregate {
                group_by: group_by.into_iter().map(String::from).collect(),
                aggregates,
            }
        });
    (
        filter(),
        prop_oneof![rows, aggregate],
        any::<bool>(),
        0u64..6,
    )
        .prop_map(move |(filter, shape, descending, limit)| {
            let columns: Vec<String> = match &shape {
                Shape::Rows(f) => f.clone(),
                Shape::Aggregate {
                    group_by,
                    aggregates,
                } => group_by
                    .iter()
                    .cloned()
                    .chain(aggregates.iter().map(|a| a.name.clone()))
                    .collect(),
            };
            // Order by every column (the first one in the chosen direction): a total order on the
            // result, so a limit picks the same rows however the records were split.
            let order_by = columns
                .iter()
                .enumerate()
                .map(|(i, c)| psp_core::query::OrderKey {
                    column: c.clone(),
                    descending: descending && i == 0,
                })
                .collect();
            let limit = if exact_only && matches!(shape, Shape::Rows(_)) {
                limit
            } else {
                limit % 4
            };
            Query {
                collection: "ledger".into(),
                filter,
                shape,
                order_by,
                limit,
            }
        })
}

// ---- the reference evaluator: plain loops, no plan, no partial states ----

fn field_index(name: &str) -> usize {
    FIELDS.iter().position(|f| *f == name).unwrap()
}

fn reference_matches(filter: &Filter, record: &[Value]) -> bool {
    match filter {
        Filter::All => true,
        Filter::Compare { field, op, value } => {
            let v = &record[field_index(field)];
            if v.is_null() || value.is_null() {
                return false;
            }
            let o = v.cmp(value);
            match op {
                CompareOp::Eq => o.is_eq(),
                CompareOp::Ne => o.is_ne(),
                CompareOp::Lt => o.is_lt(),
                CompareOp::Le => o.is_le(),
                CompareOp::Gt => o.is_gt(),
                CompareOp::Ge => o.is_ge(),
            }
        }
        Filter::And(parts) => parts.iter().all(|p| reference_matches(p, record)),
        Filter::Or(parts) => parts.iter().any(|p| reference_matches(p, record)),
        Filter::Not(inner) => !reference_matches(inner, record),
        Filter::IsNull(field) => record[field_index(field)].is_null(),
        Filter::In { field, values } => {
            let v = &record[field_index(field)];
            !v.is_null() && values.iter().any(|x| x == v)
        }
    }
}

fn reference_aggregate(a: &Aggregate, records: &[&Vec<Value>]) -> Value {
    let Some(field) = &a.field else {
        return Value::Int(records.len() as i64);
    };
    let values: Vec<&Value> = records
        .iter()
        .map(|r| &r[field_index(field)])
        .filter(|v| !v.is_null())
        .collect();
    let sum = || -> Value {
        values.iter().fold(Value::Null, |acc, v| match (acc, v) {
            (Value::Null, v) => (*v).clone(),
            (Value::Int(a), Value::Int(b)) => Value::Int(a + b),
            (Value::Float(a), Value::Float(b)) => Value::Float(a + b),
            (Value::Decimal(a), Value::Decimal(b)) => Value::Decimal(a.checked_add(b).unwrap()),
            other => panic!("mixed sum {other:?}"),
        })
    };
    match a.function {
        AggregateFunction::Count => Value::Int(values.len() as i64),
        AggregateFunction::Sum => sum(),
        AggregateFunction::Min => values.iter().min().map_or(Value::Null, |v| (*v).clone()),
        AggregateFunction::Max => values.iter().max().map_or(Value::Null, |v| (*v).clone()),
        AggregateFunction::Avg => match sum() {
            Value::Null => Value::Null,
            Value::Int(s) => Value::Float(s as f64 / values.len() as f64),
            Value::Float(s) => Value::Float(s / values.len() as f64),
            Value::Decimal(d) => {
                Value::Decimal(d.div_round(values.len() as u64, d.scale() + 4).unwrap())
            }
            other => panic!("avg of {other:?}"),
        },
    }
}

fn reference(query: &Query, records: &[Vec<Value>]) -> Vec<Vec<Value>> {
    let matching: Vec<&Vec<Value>> = records
        .iter()
        .filter(|r| reference_matches(&query.filter, r))
        .collect();
    let mut rows: Vec<Vec<Value>> = match &query.shape {
        Shape::Rows(fields) => matching
            .iter()
            .map(|r| fields.iter().map(|f| r[field_index(f)].clone()).collect())
            .collect(),
        Shape::Aggregate {
            group_by,
            aggregates,
        } => {
            let mut groups: BTreeMap<Vec<Value>, Vec<&Vec<Value>>> = BTreeMap::new();
            for r in &matching {
                let key = group_by.iter().map(|f| r[field_index(f)].clone()).collect();
                groups.entry(key).or_default().push(r);
            }
            if group_by.is_empty() && groups.is_empty() {
                groups.insert(Vec::new(), Vec::new());
            }
            groups
                .into_iter()
                .map(|(key, members)| {
                    key.into_iter()
                        .chain(aggregates.iter().map(|a| reference_aggregate(a, &members)))
                        .collect()
                })
                .collect()
        }
    };
    let columns: Vec<String> = match &query.shape {
        Shape::Rows(f) => f.clone(),
        Shape::Aggregate {
            group_by,
            aggregates,
        } => group_by
            .iter()
            .cloned()
            .chain(aggregates.iter().map(|a| a.name.clone()))
            .collect(),
    };
    rows.sort_by(|a, b| {
        query
            .order_by
            .iter()
            .map(|k| {
                let i = columns.iter().position(|c| *c == k.column).unwrap();
                let o = a[i].cmp(&b[i]);
                if k.descending { o.reverse() } else { o }
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if query.limit > 0 {
        rows.truncate(query.limit as usize);
    }
    rows
}

// ---- the engine ----

fn evaluate(query: &Query, records: &[Vec<Value>]) -> QueryResult {
    let plan = Plan::new(query, &schema(), &RowSelector::All).unwrap();
    let mut acc = plan.accumulator();
    for r in records {
        acc.push(r).unwrap();
    }
    acc.finish(42).unwrap()
}

/// Through the wire and back, as an aggregator receives it.
/// Every part merged, in the order given.
fn merge_all(query: &Query, parts: impl IntoIterator<Item = QueryResult>) -> Merged {
    let mut merger = Merger::new(query, usize::MAX);
    for (i, part) in parts.into_iter().enumerate() {
        merger.add(i, part).unwrap();
    }
    merger.finish()
}

fn over_the_wire(result: &QueryResult) -> QueryResult {
    let mut message = capnp::message::Builder::new_default();
    write_result(result, message.init_root());
    let bytes = capnp::serialize::write_message_to_words(&message);
    let reader =
        capnp::serialize::read_message(&mut &bytes[..], capnp::message::ReaderOptions::new())
            .unwrap();
    read_result(reader.get_root().unwrap()).unwrap()
}

fn rows_equal(a: &Table, b: &[Vec<Value>]) -> bool {
    a.rows.len() == b.len()
        && a.rows.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| match (p, q) {
                    // Float averages and sums: same formula, but allow for summation order.
                    (Value::Float(p), Value::Float(q)) => (p - q).abs() <= 1e-9 * (1.0 + q.abs()),
                    _ => p == q,
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_agrees_with_the_reference(
        records in prop::collection::vec(record(), 0..60),
        query in query(false),
    ) {
        let table = evaluate(&query, &records).finalize(&query).unwrap();
        let expected = reference(&query, &records);
        prop_assert!(rows_equal(&table, &expected), "query {query:?}\nengine {:?}\nreference {expected:?}", table.rows);
    }

    #[test]
    fn merging_split_archives_equals_one_archive(
        records in prop::collection::vec(record(), 0..80),
        owners in prop::collection::vec(0usize..5, 80),
        parts in 1usize..6,
        query in query(true),
    ) {
        let mut split: Vec<Vec<Vec<Value>>> = vec![Vec::new(); parts];
        for (i, r) in records.iter().enumerate() {
            split[owners[i] % parts].push(r.clone());
        }
        let answers: Vec<QueryResult> = split.iter().map(|part| over_the_wire(&evaluate(&query, part))).collect();
        let merged = merge_all(&query, answers.clone());
        let single = evaluate(&query, &records).finalize(&query).unwrap();
        prop_assert_eq!(&merged.table, &single, "query {:?}", query);
        prop_assert_eq!(merged.scanned_records, records.len() as u64);
        // Arrival order never shows: the same answers in reverse give the same table.
        let mut merger = Merger::new(&query, usize::MAX);
        for (i, answer) in answers.into_iter().enumerate().rev() {
            merger.add(i, answer).unwrap();
        }
        prop_assert_eq!(&merger.finish().table, &merged.table);
    }

    /// A tree of aggregators: each region merges its archives' answers without finalizing
    /// (`into_partial`), its unfinished merge travels over the wire, and the top merges the
    /// regions' as it merges archives'. The table is the flat merge's, exactly.
    #[test]
    fn merging_through_regions_equals_merging_flat(
        records in prop::collection::vec(record(), 0..80),
        owners in prop::collection::vec(0usize..12, 80),
        archives in 1usize..8,
        regions in 1usize..4,
        query in query(true),
    ) {
        let mut split: Vec<Vec<Vec<Value>>> = vec![Vec::new(); archives];
        for (i, r) in records.iter().enumerate() {
            split[owners[i] % archives].push(r.clone());
        }
        let answers: Vec<QueryResult> = split.iter().map(|part| over_the_wire(&evaluate(&query, part))).collect();
        let flat = merge_all(&query, answers.clone());
        let mut top = Merger::new(&query, usize::MAX);
        for region in 0..regions {
            let mut merger = Merger::new(&query, usize::MAX);
            for (i, answer) in answers.iter().enumerate().filter(|(i, _)| i % regions == region) {
                merger.add(i, answer.clone()).unwrap();
            }
            let partial = merger.into_partial();
            prop_assert!(partial.overflows.is_empty());
            if let Some(result) = partial.result {
                top.add(region, over_the_wire(&result)).unwrap();
            }
        }
        let tree = top.finish();
        // Rows a limited query does not fully order may be any of the tied rows: compare sets
        // only where the order is total (exact_only queries order every limited query fully).
        prop_assert_eq!(&tree.table, &flat.table, "query {:?}", query);
        prop_assert_eq!(tree.scanned_records, records.len() as u64);
    }
}

#[test]
fn float_sums_merge_within_rounding() {
    let query = Query::aggregate(
        "ledger",
        [],
        [Aggregate::of(AggregateFunction::Sum, "score")],
    );
    let records: Vec<Vec<Value>> = (0..1000)
        .map(|i| {
            let mut r = vec![Value::Null; 8];
            r[5] = Value::Float(0.1 * f64::from(i % 7));
            r
        })
        .collect();
    let parts: Vec<QueryResult> = records.chunks(333).map(|c| evaluate(&query, c)).collect();
    let merged = merge_all(&query, parts.clone()).table;
    let single = evaluate(&query, &records).finalize(&query).unwrap();
    assert!(rows_equal(&merged, &single.rows));
    // Float sums are rounded once, so the order they arrive in does not change a bit.
    let reversed = merge_all(&query, parts.into_iter().rev()).table;
    assert_eq!(merged, reversed);
}

#[test]
fn exact_sums_refuse_to_overflow() {
    let query = Query::aggregate("ledger", [], [Aggregate::of(AggregateFunction::Sum, "qty")]);
    let plan = Plan::new(&query, &schema(), &RowSelector::All).unwrap();
    let mut acc = plan.accumulator();
    let mut r = vec![Value::Null; 8];
    r[4] = Value::Int(i64::MAX);
    acc.push(&r).unwrap();
    let error = acc.push(&r).unwrap_err();
    assert_eq!(error.code(), "query.overflow");
}

/// An answer larger than the archive's row limit is refused with `limit.rows`, for rows and for
/// groups alike, while a `limit` within it keeps the same scan answerable.
#[test]
fn answers_past_the_row_limit_are_refused() {
    let record = |id: i64| {
        let mut r = vec![Value::Null; 8];
        r[0] = Value::Int(id);
        r[4] = Value::Int(id);
        r
    };
    let rows = Query::rows("ledger", ["id"]);
    let plan = Plan::new(&rows, &schema(), &RowSelector::All)
        .unwrap()
        .with_max_rows(3);
    let mut acc = plan.accumulator();
    for id in 0..3 {
        acc.push(&record(id)).unwrap();
    }
    let error = acc.push(&record(3)).unwrap_err();
    assert_eq!(error.code(), "limit.rows");

    let limited = Query::rows("ledger", ["id"]).limit(2);
    let plan = Plan::new(&limited, &schema(), &RowSelector::All)
        .unwrap()
        .with_max_rows(3);
    let mut acc = plan.accumulator();
    for id in 0..10 {
        acc.push(&record(id)).unwrap();
    }
    assert!(acc.finish(0).is_ok());

    let groups = Query::aggregate("ledger", ["qty"], [Aggregate::count()]);
    let plan = Plan::new(&groups, &schema(), &RowSelector::All)
        .unwrap()
        .with_max_rows(3);
    let mut acc = plan.accumulator();
    for id in 0..3 {
        acc.push(&record(id)).unwrap();
    }
    acc.push(&record(1)).unwrap();
    let error = acc.push(&record(3)).unwrap_err();
    assert_eq!(error.code(), "limit.rows");
}

/// Found by the `query_eval` fuzz target: an ordered rows query whose limit is near `u64::MAX`
/// overflowed the buffer bound (`2 * limit`) as soon as 64 rows had matched, a panic in a debug
/// build of a Totebox. It now keeps every row (fewer than its limit) and answers.
#[test]
fn an_ordered_query_with_the_largest_limit_answers() {
    let records: Vec<Vec<Value>> = (0..200)
        .map(|id: i64| {
            let mut r = vec![Value::Null; 8];
            r[0] = Value::Int(id);
            r[4] = Value::Int(id % 7);
            r
        })
        .collect();
    for limit in [u64::MAX, u64::MAX / 2 + 1, usize::MAX as u64] {
        let query = Query::rows("ledger", ["id", "qty"])
            .order_by("qty", true)
            .limit(limit);
        let result = evaluate(&query, &records);
        assert_eq!(result.finalize(&query).unwrap().rows.len(), 200);
    }
}
