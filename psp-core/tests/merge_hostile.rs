//! The merge, fed by hostile sources: answers of any shape (wrong columns, kinds, arity, types)
//! and well-formed answers with extreme numbers (64-bit edges, huge counts, NaN and infinities),
//! mixed with honest answers in any order.
//!
//! What must hold: nothing panics; an answer that does not fit the query changes nothing at all;
//! an answer that fits changes only the groups it names (its own contribution), so every other
//! group is exactly what the honest sources alone give; and arrival order never shows.

use std::collections::BTreeMap;

use proptest::prelude::*;
use psp_core::RowSelector;
use psp_core::query::{
    Aggregate, AggregateFunction, CollectionSchema, Column, Decimal, Exposure, Group, Merged,
    Merger, Partial, Plan, Query, QueryResult, ResultBody, Value, ValueType,
};

fn schema() -> CollectionSchema {
    CollectionSchema::new("ledger", "entry", 1)
        .field("entry", ValueType::Int, Exposure::Value)
        .field("region", ValueType::Text, Exposure::Value)
        .field("amount", ValueType::Decimal, Exposure::Value)
        .field("qty", ValueType::Int, Exposure::Value)
        .field("score", ValueType::Float, Exposure::Value)
}

fn query() -> Query {
    Query::aggregate(
        "ledger",
        ["region"],
        [
            Aggregate::of(AggregateFunction::Sum, "amount").named("total"),
            Aggregate::count().named("n"),
            Aggregate::of(AggregateFunction::Avg, "qty").named("mean"),
            Aggregate::of(AggregateFunction::Min, "amount").named("low"),
            Aggregate::of(AggregateFunction::Max, "qty").named("high"),
            Aggregate::of(AggregateFunction::Sum, "score").named("score"),
        ],
    )
    .order_by("total", true)
}

const REGIONS: [&str; 4] = ["east", "north", "south", "west"];

fn record() -> impl Strategy<Value = Vec<Value>> {
    (
        0usize..REGIONS.len(),
        -1_000_000i64..1_000_000,
        -50i64..50,
        -1e6f64..1e6,
    )
        .prop_map(|(r, cents, qty, score)| {
            vec![
                Value::Int(0),
                Value::from(REGIONS[r]),
                Value::Decimal(Decimal::new(cents, 2).unwrap()),
                Value::Int(qty),
                Value::Float(score),
            ]
        })
}

fn honest(records: &[Vec<Value>]) -> QueryResult {
    let plan = Plan::new(&query(), &schema(), &RowSelector::All).unwrap();
    let mut acc = plan.accumulator();
    for r in records {
        acc.push(r.as_slice()).unwrap();
    }
    acc.finish(1_000).unwrap()
}

fn extreme_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i64::MAX - 1),
        Just(0),
        any::<i64>()
    ]
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        extreme_int().prop_map(Value::Int),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            any::<f64>()
        ]
        .prop_map(Value::Float),
        "[a-z<>]{0,6}".prop_map(Value::Text),
        extreme_int().prop_map(Value::Timestamp),
        (extreme_int(), 0u8..=18).prop_map(|(u, s)| Value::Decimal(Decimal::new(u, s).unwrap())),
    ]
}

fn any_partial() -> impl Strategy<Value = Partial> {
    prop_oneof![
        any::<u64>().prop_map(Partial::Count),
        (any_value(), any::<u64>()).prop_map(|(sum, count)| Partial::Sum { sum, count }),
        (any_value(), any::<u64>()).prop_map(|(sum, count)| Partial::Avg { sum, count }),
        any_value().prop_map(Partial::Min),
        any_value().prop_map(Partial::Max),
    ]
}

fn any_type() -> impl Strategy<Value = ValueType> {
    prop_oneof![
        Just(ValueType::Null),
        Just(ValueType::Bool),
        Just(ValueType::Int),
        Just(ValueType::Float),
        Just(ValueType::Text),
        Just(ValueType::Timestamp),
        Just(ValueType::Decimal),
    ]
}

/// Anything at all: columns from a pool that holds the right names, any types, rows or groups.
fn anything() -> impl Strategy<Value = QueryResult> {
    let names = prop::sample::select(vec![
        "region", "total", "n", "mean", "low", "high", "score", "x",
    ]);
    let columns = prop::collection::vec(
        (names, any_type()).prop_map(|(n, t)| Column {
            name: n.to_owned(),
            value_type: t,
        }),
        0..8,
    );
    let group = (
        prop::collection::vec(any_value(), 0..3),
        any::<u64>(),
        prop::collection::vec(any_partial(), 0..8),
    )
        .prop_map(|(key, records, aggregates)| Group {
            key,
            records,
            aggregates,
        });
    let body = prop_oneof![
        prop::collection::vec(prop::collection::vec(any_value(), 0..8), 0..4)
            .prop_map(ResultBody::Rows),
        prop::collection::vec(group, 0..5).prop_map(ResultBody::Groups),
    ];
    (columns, body, extreme_int(), any::<u64>(), any::<u64>()).prop_map(
        |(columns, body, as_of, suppressed_groups, scanned_records)| QueryResult {
            as_of,
            columns,
            body,
            suppressed_groups,
            scanned_records,
        },
    )
}

/// The right shape with hostile numbers: often conforming, so the arithmetic is exercised.
fn well_formed_extremes() -> impl Strategy<Value = QueryResult> {
    let group = (
        prop::sample::select(vec!["east", "north", "mars", "<script>"]),
        1u64..u64::MAX,
        extreme_int(),
        extreme_int(),
        0u8..=18,
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(1e308),
            any::<f64>()
        ],
    )
        .prop_map(|(region, records, units, qty, scale, score)| Group {
            key: vec![Value::from(region)],
            records,
            aggregates: vec![
                Partial::Sum {
                    sum: Value::Decimal(Decimal::new(units, scale).unwrap()),
                    count: records,
                },
                Partial::Count(records),
                Partial::Avg {
                    sum: Value::Int(qty),
                    count: 1,
                },
                Partial::Min(Value::Decimal(Decimal::new(units, scale).unwrap())),
                Partial::Max(Value::Int(qty)),
                Partial::Sum {
                    sum: Value::Float(score),
                    count: 1,
                },
            ],
        });
    prop::collection::vec(group, 0..4).prop_map(|mut groups| {
        groups.sort_by(|a, b| a.key.cmp(&b.key));
        groups.dedup_by(|a, b| a.key == b.key);
        let types = [
            ("region", ValueType::Text),
            ("total", ValueType::Decimal),
            ("n", ValueType::Int),
            ("mean", ValueType::Float),
            ("low", ValueType::Decimal),
            ("high", ValueType::Int),
            ("score", ValueType::Float),
        ];
        QueryResult {
            as_of: 7,
            columns: types
                .iter()
                .map(|(n, t)| Column {
                    name: (*n).to_owned(),
                    value_type: *t,
                })
                .collect(),
            body: ResultBody::Groups(groups),
            suppressed_groups: u64::MAX,
            scanned_records: u64::MAX,
        }
    })
}

fn hostile() -> impl Strategy<Value = QueryResult> {
    prop_oneof![anything(), well_formed_extremes()]
}

/// Merged rows by group key.
fn by_key(merged: &Merged) -> BTreeMap<Value, Vec<Value>> {
    merged
        .table
        .rows
        .iter()
        .map(|r| (r[0].clone(), r.clone()))
        .collect()
}

/// Group keys an answer names.
fn keys_of(answer: &QueryResult) -> Vec<Value> {
    match &answer.body {
        ResultBody::Groups(groups) => groups
            .iter()
            .filter_map(|g| g.key.first().cloned())
            .collect(),
        ResultBody::Rows(_) => Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn hostile_answers_change_only_their_own_groups(
        parts in prop::collection::vec(prop::collection::vec(record(), 1..20), 1..5),
        hostiles in prop::collection::vec(hostile(), 1..4),
        order in any::<u64>(),
    ) {
        let q = query();
        let answers: Vec<QueryResult> = parts.iter().map(|p| honest(p)).collect();
        let mut alone = Merger::new(&q, 1_000);
        for (i, a) in answers.iter().enumerate() {
            alone.add(i, a.clone()).unwrap();
        }
        let alone = alone.finish();

        // Every answer in a shuffled order: honest ones are always accepted.
        let mut all: Vec<(usize, QueryResult, bool)> = answers
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, a)| (i, a, true))
            .chain(hostiles.iter().cloned().enumerate().map(|(i, h)| (answers.len() + i, h, false)))
            .collect();
        let n = all.len();
        for i in 0..n {
            all.swap(i, (order.rotate_left(i as u32) as usize) % n);
        }
        let mut merger = Merger::new(&q, 1_000);
        let mut touched = Vec::new();
        for (source, answer, is_honest) in all {
            let before = merger.clone().finish();
            let keys = keys_of(&answer);
            match merger.add(source, answer) {
                Ok(()) if !is_honest => touched.extend(keys),
                Ok(()) => {}
                Err(e) => {
                    prop_assert!(!is_honest, "an honest answer was refused: {e}");
                    prop_assert_eq!(&merger.clone().finish(), &before, "a refused answer changed the merge");
                }
            }
        }
        let merged = merger.finish();
        let (honest_rows, merged_rows) = (by_key(&alone), by_key(&merged));
        for (key, row) in &honest_rows {
            if !touched.contains(key) {
                prop_assert_eq!(Some(row), merged_rows.get(key), "group {:?} changed", key);
            }
        }
        // Overflowed cells are null and inside the table.
        for cell in &merged.overflows {
            prop_assert!(merged.table.rows[cell.row][cell.column].is_null());
        }
    }

    #[test]
    fn anything_at_all_never_panics(answers in prop::collection::vec(hostile(), 0..6)) {
        // An aggregate query, and a rows query ordered and limited (a short row once panicked
        // the ordering).
        let rows = Query::rows("ledger", ["region", "total"]).order_by("total", true).limit(3);
        for q in [query(), rows] {
            let mut merger = Merger::new(&q, 100);
            for (i, a) in answers.iter().cloned().enumerate() {
                let _ = merger.add(i, a);
            }
            let merged = merger.finish();
            for row in &merged.table.rows {
                prop_assert_eq!(row.len(), merged.table.columns.len());
            }
        }
    }
}

#[test]
fn a_short_row_under_an_order_is_set_aside_not_a_panic() {
    let q = Query::rows("ledger", ["region", "total"]).order_by("total", true);
    let columns = vec![
        Column {
            name: "region".into(),
            value_type: ValueType::Text,
        },
        Column {
            name: "total".into(),
            value_type: ValueType::Int,
        },
    ];
    let answer = |rows: Vec<Vec<Value>>| QueryResult {
        as_of: 1,
        columns: columns.clone(),
        body: ResultBody::Rows(rows),
        suppressed_groups: 0,
        scanned_records: 0,
    };
    let mut merger = Merger::new(&q, 100);
    merger
        .add(0, answer(vec![vec![Value::from("east"), Value::Int(5)]]))
        .unwrap();
    let short = merger.add(1, answer(vec![vec![Value::from("west")]]));
    assert!(
        short
            .unwrap_err()
            .to_string()
            .contains("1 values for 2 columns")
    );
    let long = merger.add(
        2,
        answer(vec![vec![Value::from("x"), Value::Int(1), Value::Int(2)]]),
    );
    assert!(long.is_err());
    merger
        .add(3, answer(vec![vec![Value::from("north"), Value::Int(9)]]))
        .unwrap();
    let rows = merger.finish().table.rows;
    assert_eq!(rows[0][1], Value::Int(9));
    assert_eq!(rows.len(), 2);
}

#[test]
fn a_sum_at_the_edge_of_64_bits_marks_its_group_not_the_request() {
    let q = query();
    let mut merger = Merger::new(&q, 100);
    let edge = |region: &str, units: i64| one_group(region, units, Value::Int(1));
    merger.add(0, edge("east", i64::MAX)).unwrap();
    merger.add(1, edge("east", 1)).unwrap();
    merger.add(2, edge("west", 250)).unwrap();
    let merged = merger.finish();
    let rows = by_key(&merged);
    assert_eq!(
        rows[&Value::from("west")][1],
        Value::Decimal(Decimal::new(250, 2).unwrap())
    );
    assert!(rows[&Value::from("east")][1].is_null());
    assert_eq!(
        rows[&Value::from("east")][2],
        Value::Int(2),
        "the rest of the group merged"
    );
    let east = merged
        .table
        .rows
        .iter()
        .position(|r| r[0] == Value::from("east"))
        .unwrap();
    assert_eq!(
        merged.overflows,
        vec![psp_core::query::CellRef {
            row: east,
            column: 1
        }]
    );

    // Past the 64-bit range and back: exact, in either order.
    for order in [[0, 1], [1, 0]] {
        let mut merger = Merger::new(&q, 100);
        let parts = [edge("east", i64::MAX), edge("east", -5)];
        for i in order {
            merger.add(i, parts[i].clone()).unwrap();
        }
        merger.add(2, edge("east", i64::MAX)).map(|_| ()).unwrap();
        let merged = merger.finish();
        assert!(merged.overflows.len() == 1, "2 * MAX - 5 does not fit");
    }
    // Two finite float sums past the float range: marked, not shown as infinity.
    let mut floats = edge("north", 1);
    if let ResultBody::Groups(groups) = &mut floats.body {
        groups[0].aggregates[5] = Partial::Sum {
            sum: Value::Float(f64::MAX),
            count: 1,
        };
    }
    let mut merger = Merger::new(&q, 100);
    merger.add(0, floats.clone()).unwrap();
    merger.add(1, floats).unwrap();
    let merged = merger.finish();
    assert!(merged.table.rows[0][6].is_null());
    assert_eq!(
        merged.overflows,
        vec![psp_core::query::CellRef { row: 0, column: 6 }]
    );

    let mut merger = Merger::new(&q, 100);
    merger.add(0, edge("east", i64::MAX)).unwrap();
    merger.add(1, edge("east", i64::MAX)).unwrap();
    merger.add(2, edge("east", i64::MIN)).unwrap();
    let merged = merger.finish();
    assert!(
        merged.overflows.is_empty(),
        "MAX + MAX + MIN = MAX - 1 fits"
    );
    assert_eq!(
        merged.table.rows[0][1],
        Value::Decimal(Decimal::new(i64::MAX - 1, 2).unwrap())
    );
}

/// One group's answer to [`query`] with the sum `total` (in cents) and the average's sum `mean`.
fn one_group(region: &str, total: i64, mean: Value) -> QueryResult {
    let mean_type = if mean.value_type() == ValueType::Decimal {
        ValueType::Decimal
    } else {
        ValueType::Float
    };
    QueryResult {
        as_of: 1,
        columns: [
            ("region", ValueType::Text),
            ("total", ValueType::Decimal),
            ("n", ValueType::Int),
            ("mean", mean_type),
            ("low", ValueType::Decimal),
            ("high", ValueType::Int),
            ("score", ValueType::Float),
        ]
        .into_iter()
        .map(|(n, t)| Column {
            name: n.into(),
            value_type: t,
        })
        .collect(),
        body: ResultBody::Groups(vec![Group {
            key: vec![Value::from(region)],
            records: 1,
            aggregates: vec![
                Partial::Sum {
                    sum: Value::Decimal(Decimal::new(total, 2).unwrap()),
                    count: 1,
                },
                Partial::Count(1),
                Partial::Avg {
                    sum: mean,
                    count: 1,
                },
                Partial::Min(Value::Null),
                Partial::Max(Value::Int(1)),
                Partial::Sum {
                    sum: Value::Null,
                    count: 0,
                },
            ],
        }]),
        suppressed_groups: 0,
        scanned_records: 1,
    }
}

#[test]
fn a_regions_overflowed_sum_stays_overflowed_above_it_and_nothing_else_does() {
    let q = query();
    let mut region = Merger::new(&q, 100);
    region
        .add(0, one_group("east", i64::MAX, Value::Int(1)))
        .unwrap();
    region.add(1, one_group("east", 1, Value::Int(3))).unwrap();
    region
        .add(2, one_group("west", 250, Value::Int(2)))
        .unwrap();
    let partial = region.into_partial();
    assert_eq!(
        partial.overflows,
        vec![psp_core::query::CellRef { row: 0, column: 1 }],
        "east's total left the range in the region"
    );
    let answer = partial.result.unwrap();
    let mut top = Merger::new(&q, 100);
    top.add_marked(0, answer.clone(), &partial.overflows)
        .unwrap();
    top.add(1, one_group("west", 50, Value::Int(4))).unwrap();
    let merged = top.finish();
    let rows = by_key(&merged);
    assert!(rows[&Value::from("east")][1].is_null(), "still overflowed");
    assert_eq!(rows[&Value::from("east")][2], Value::Int(2));
    assert_eq!(
        rows[&Value::from("east")][3],
        Value::Float(2.0),
        "the average travelled as its sum and count: (1 + 3) / 2"
    );
    assert_eq!(
        rows[&Value::from("west")][1],
        Value::Decimal(Decimal::new(300, 2).unwrap())
    );
    assert_eq!(rows[&Value::from("west")][3], Value::Float(3.0));

    // A mark on a cell that is no aggregate of the answer: the answer is set aside, whole.
    let mut top = Merger::new(&q, 100);
    for bad in [
        psp_core::query::CellRef { row: 5, column: 1 },
        psp_core::query::CellRef { row: 0, column: 0 },
        psp_core::query::CellRef { row: 0, column: 9 },
    ] {
        assert!(top.add_marked(0, answer.clone(), &[bad]).is_err());
    }
    assert_eq!(top.parts(), 0);
}

#[test]
fn archives_that_disagree_on_a_type_travel_in_separate_parts_and_merge_as_flat() {
    let q = query();
    let a = one_group("east", 100, Value::Int(1));
    let b = one_group("west", 100, Value::Decimal(Decimal::new(150, 2).unwrap()));
    let mut flat = Merger::new(&q, 100);
    flat.add(0, a.clone()).unwrap();
    flat.add(1, b.clone()).unwrap();
    let flat = flat.finish();
    // A region keeps one merger per set of declared column types, and sends each as a part.
    let mut top = Merger::new(&q, 100);
    for (i, answer) in [a, b].into_iter().enumerate() {
        let mut region = Merger::new(&q, 100);
        region.add(i, answer).unwrap();
        let part = region.into_partial();
        top.add_marked(i, part.result.unwrap(), &part.overflows)
            .expect("each part conforms as one Totebox's answer would");
    }
    let tree = top.finish();
    assert_eq!(tree.table, flat.table);
    let types = |m: &Merged| -> Vec<Vec<ValueType>> {
        m.table
            .rows
            .iter()
            .map(|r| r.iter().map(Value::value_type).collect())
            .collect()
    };
    assert_eq!(
        types(&tree),
        types(&flat),
        "no value changed type on the way"
    );
}

#[test]
fn a_mark_can_blank_no_minimum_and_no_figure_it_held() {
    let q = query();
    let answer = one_group("east", 100, Value::Int(1));
    let mut top = Merger::new(&q, 100);
    // "low" (min) is column 4; "total" (a sum that holds 1.00) is column 1.
    for cell in [(0, 4), (0, 5), (0, 1)] {
        let mark = psp_core::query::CellRef {
            row: cell.0,
            column: cell.1,
        };
        assert!(
            top.add_marked(0, answer.clone(), &[mark]).is_err(),
            "{cell:?}"
        );
    }
    assert_eq!(top.parts(), 0);
}
