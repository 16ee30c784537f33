//! The attacker's side of the exposure policy: every way to learn a field the policy protects,
//! each refused with an error naming the field, and tiny groups withheld.

use psp_core::query::{
    Aggregate, AggregateFunction, CollectionSchema, CompareOp, Decimal, Exposure, Filter, Plan,
    Query, QueryError, QueryResult, ResultBody, Value, ValueType,
};
use psp_core::{KeySelector, RowKey, RowSelector};

/// `salary` and `bonus` leave only inside sums, averages and counts over groups of at least
/// three; `ssn` never leaves.
fn payroll() -> CollectionSchema {
    CollectionSchema::new("payroll", "employee", 3)
        .field("employee", ValueType::Text, Exposure::Value)
        .field("department", ValueType::Text, Exposure::Value)
        .field("grade", ValueType::Int, Exposure::Value)
        .field("salary", ValueType::Decimal, Exposure::AggregateOnly)
        .field("bonus", ValueType::Int, Exposure::AggregateOnly)
        .field("ssn", ValueType::Text, Exposure::Never)
}

/// Five engineers, two in sales, one in legal.
fn staff() -> Vec<Vec<Value>> {
    let person = |name: &str, dept: &str, grade: i64, salary: &str, ssn: &str| {
        vec![
            Value::from(name),
            Value::from(dept),
            Value::Int(grade),
            Value::Decimal(Decimal::parse(salary).unwrap()),
            Value::Int(grade * 100),
            Value::from(ssn),
        ]
    };
    vec![
        person("ada", "eng", 3, "120000.00", "111"),
        person("bob", "eng", 2, "95000.00", "222"),
        person("cy", "eng", 2, "97000.00", "333"),
        person("di", "eng", 1, "80000.00", "444"),
        person("ed", "eng", 3, "125000.00", "555"),
        person("fay", "sales", 2, "70000.00", "666"),
        person("gus", "sales", 1, "65000.00", "777"),
        person("hal", "legal", 3, "150000.00", "888"),
    ]
}

fn run(query: &Query) -> Result<QueryResult, QueryError> {
    run_with(query, &RowSelector::All)
}

fn run_with(query: &Query, rows: &RowSelector) -> Result<QueryResult, QueryError> {
    let plan = Plan::new(query, &payroll(), rows)?;
    let mut acc = plan.accumulator();
    for r in staff() {
        acc.push(&r)?;
    }
    acc.finish(0)
}

fn sum_salary() -> Aggregate {
    Aggregate::of(AggregateFunction::Sum, "salary")
}

#[test]
fn every_way_to_reach_a_protected_field_is_refused() {
    let eq = |field: &str, v: Value| Filter::compare(field, CompareOp::Eq, v);
    let grand = Decimal::parse("120000.00").unwrap();
    let attacks: Vec<(&str, Query, &str, &str)> = vec![
        (
            "project a never-exposed field",
            Query::rows("payroll", ["employee", "ssn"]),
            "policy.field-not-exposed",
            "ssn",
        ),
        (
            "project an aggregate-only field",
            Query::rows("payroll", ["employee", "salary"]),
            "policy.aggregate-only",
            "salary",
        ),
        (
            "probe values with a comparison",
            Query::aggregate("payroll", [], [Aggregate::count()])
                .filter(eq("salary", Value::Decimal(grand))),
            "policy.aggregate-only",
            "salary",
        ),
        (
            "probe values with a range",
            Query::rows("payroll", ["employee"]).filter(Filter::compare(
                "salary",
                CompareOp::Gt,
                Value::Decimal(grand),
            )),
            "policy.aggregate-only",
            "salary",
        ),
        (
            "probe values with an in-list",
            Query::rows("payroll", ["employee"]).filter(Filter::In {
                field: "bonus".into(),
                values: vec![Value::Int(300)],
            }),
            "policy.aggregate-only",
            "bonus",
        ),
        (
            "probe nulls",
            Query::rows("payroll", ["employee"]).filter(Filter::IsNull("salary".into())),
            "policy.aggregate-only",
            "salary",
        ),
        (
            "hide the probe under not/or",
            Query::rows("payroll", ["employee"]).filter(Filter::Not(Box::new(Filter::Or(vec![
                Filter::All,
                eq("bonus", Value::Int(1)),
            ])))),
            "policy.aggregate-only",
            "bonus",
        ),
        (
            "group by an aggregate-only field",
            Query::aggregate("payroll", ["salary"], [Aggregate::count()]),
            "policy.aggregate-only",
            "salary",
        ),
        (
            "min of an aggregate-only field",
            Query::aggregate(
                "payroll",
                ["department"],
                [Aggregate::of(AggregateFunction::Min, "salary")],
            ),
            "policy.aggregate-only",
            "salary",
        ),
        (
            "max of an aggregate-only field",
            Query::aggregate(
                "payroll",
                [],
                [Aggregate::of(AggregateFunction::Max, "bonus")],
            ),
            "policy.aggregate-only",
            "bonus",
        ),
        (
            "order rows by an aggregate-only field",
            Query::rows("payroll", ["employee"]).order_by("salary", true),
            "query.invalid",
            "salary",
        ),
        (
            "filter on a never-exposed field",
            Query::rows("payroll", ["employee"]).filter(eq("ssn", "111".into())),
            "policy.field-not-exposed",
            "ssn",
        ),
        (
            "count a never-exposed field",
            Query::aggregate(
                "payroll",
                [],
                [Aggregate::of(AggregateFunction::Count, "ssn")],
            ),
            "policy.field-not-exposed",
            "ssn",
        ),
        (
            "group by a never-exposed field",
            Query::aggregate("payroll", ["ssn"], [Aggregate::count()]),
            "policy.field-not-exposed",
            "ssn",
        ),
        (
            "sum a never-exposed field",
            Query::aggregate(
                "payroll",
                [],
                [Aggregate::of(AggregateFunction::Sum, "ssn")],
            ),
            "policy.field-not-exposed",
            "ssn",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, query, code, field) in &attacks {
        match run(query) {
            Ok(result) => wrong.push(format!("{name}: answered {:?}", result.body)),
            Err(e) if e.code() != *code || !e.to_string().contains(field) => wrong.push(format!(
                "{name}: refused as {} ({e}), expected {code} naming {field}",
                e.code()
            )),
            Err(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} attacks wrong:\n{}",
        wrong.len(),
        attacks.len(),
        wrong.join("\n")
    );
}

#[test]
fn a_never_exposed_field_looks_exactly_like_a_missing_one() {
    let never = run(&Query::rows("payroll", ["ssn"])).unwrap_err();
    let missing = run(&Query::rows("payroll", ["home_address"])).unwrap_err();
    assert_eq!(never.code(), missing.code());
    assert_eq!(
        never.to_string().replace("ssn", "X"),
        missing.to_string().replace("home_address", "X")
    );
}

#[test]
fn groups_below_the_minimum_size_are_withheld_and_counted() {
    let query = Query::aggregate(
        "payroll",
        ["department"],
        [Aggregate::count(), sum_salary()],
    );
    let result = run(&query).unwrap();
    let ResultBody::Groups(groups) = &result.body else {
        panic!("groups expected")
    };
    // Only engineering (5 people) reaches the minimum of 3; sales (2) and legal (1) are withheld.
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].key, vec![Value::from("eng")]);
    assert_eq!(result.suppressed_groups, 2);
    let table = result.finalize(&query).unwrap();
    assert_eq!(
        table.rows[0][2],
        Value::Decimal(Decimal::parse("517000.00").unwrap())
    );
}

#[test]
fn a_filter_that_isolates_one_person_gets_nothing() {
    // The classic attack: narrow the group to one record with value fields, then aggregate.
    for query in [
        Query::aggregate("payroll", [], [sum_salary()]).filter(Filter::compare(
            "employee",
            CompareOp::Eq,
            "hal",
        )),
        Query::aggregate(
            "payroll",
            ["employee"],
            [Aggregate::of(AggregateFunction::Avg, "salary")],
        ),
        Query::aggregate("payroll", ["department", "grade"], [sum_salary()]),
    ] {
        let result = run(&query).unwrap();
        let ResultBody::Groups(groups) = &result.body else {
            panic!("groups expected")
        };
        assert!(
            groups.iter().all(|g| g.records >= 3),
            "{query:?} let a group of fewer than 3 out: {groups:?}"
        );
        assert!(result.suppressed_groups > 0);
        assert!(
            result.finalize(&query).unwrap().rows.is_empty(),
            "a suppressed single group shows no row"
        );
    }
}

/// The minimum group size does not stop differencing, and this test pins that down so nobody
/// mistakes it for protection: two permitted queries, each over at least three people, differ by
/// exactly one salary. (See the docs of `psp_core::query::Plan`.)
#[test]
fn differencing_is_not_stopped_by_the_minimum_group_size() {
    let everyone = Query::aggregate("payroll", [], [sum_salary()]);
    let all_but_ada = everyone
        .clone()
        .filter(Filter::compare("employee", CompareOp::Ne, "ada"));
    let total = |q: &Query| run(q).unwrap().finalize(q).unwrap().rows[0][0].clone();
    let (Value::Decimal(a), Value::Decimal(b)) = (total(&everyone), total(&all_but_ada)) else {
        panic!("decimal sums expected")
    };
    let difference = a
        .checked_add(&Decimal::new(-b.units(), b.scale()).unwrap())
        .unwrap();
    assert_eq!(
        difference,
        Decimal::parse("120000.00").unwrap(),
        "ada's salary, recovered"
    );
}

#[test]
fn the_capability_row_selector_is_anded_into_every_query() {
    let only = RowSelector::Keys(KeySelector::new(
        "employee",
        [RowKey::from("ada"), RowKey::from("bob")],
        [],
    ));
    let result = run_with(&Query::rows("payroll", ["employee"]), &only).unwrap();
    let ResultBody::Rows(rows) = result.body else {
        panic!("rows expected")
    };
    assert_eq!(
        rows,
        vec![vec![Value::from("ada")], vec![Value::from("bob")]]
    );
    assert_eq!(
        result.scanned_records, 2,
        "records examined count only the capability's rows: the other six stay unseen, even as \
         a count"
    );

    let wrong_field = RowSelector::Keys(KeySelector::new("department", [RowKey::from("eng")], []));
    let error = run_with(&Query::rows("payroll", ["employee"]), &wrong_field).unwrap_err();
    assert_eq!(error.code(), "query.invalid");
}

#[test]
fn aggregates_of_protected_fields_over_large_groups_are_answered() {
    let query = Query::aggregate(
        "payroll",
        [],
        [
            Aggregate::count(),
            sum_salary(),
            Aggregate::of(AggregateFunction::Avg, "bonus"),
        ],
    );
    let table = run(&query).unwrap().finalize(&query).unwrap();
    assert_eq!(table.rows[0][0], Value::Int(8));
    assert_eq!(
        table.rows[0][1],
        Value::Decimal(Decimal::parse("802000.00").unwrap())
    );
    assert_eq!(table.rows[0][2], Value::Float(212.5));
}
