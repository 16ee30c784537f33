//! Reconciliation and executive summaries over a real fleet of generated archives.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use orchestrator::fanout::{FanOutLimits, Fleet};
use orchestrator::viewports::{Convention, Kpi, MatchStatus, Reconciliation, summarize};
use psp_core::query::{Aggregate, AggregateFunction, CompareOp, Decimal, Filter, Query, Value};
use psp_rpc::limits::Limits;
use support::{chain, world_of};

fn limits() -> FanOutLimits {
    FanOutLimits {
        source_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(4),
        max_concurrency: 8,
        max_rows_per_source: 10_000,
        ..FanOutLimits::default()
    }
}

fn intercompany() -> Reconciliation {
    Reconciliation {
        collection: "ledger".into(),
        counterparty_field: "counterparty".into(),
        period_field: "period".into(),
        currency_field: "currency".into(),
        amount_field: "amount".into(),
        entity_label: String::new(),
        filter: Filter::In {
            field: "account".into(),
            values: vec![
                "intercompany_receivable".into(),
                "intercompany_payable".into(),
            ],
        },
        convention: Convention::Opposite,
        tolerance: Decimal::new(0, 2).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn intercompany_books_reconcile_mostly_and_say_where_not() {
    let w = world_of(0, 4).await;
    let fleet = Fleet::start(w.orchestrator.clone(), Limits::default());
    let spec = intercompany();
    let ids: Vec<&str> = w.sources.iter().map(|s| s.archive.as_str()).collect();
    let gathered = fleet
        .query(w.sources.clone(), &chain(&w, &ids), spec.query(), limits())
        .await;
    let mut books = BTreeMap::new();
    for (outcome, result) in gathered.outcomes.iter().zip(gathered.results) {
        books.insert(
            outcome.archive.clone(),
            result.unwrap().finalize(&spec.query()).unwrap(),
        );
    }
    let entries = spec.reconcile(&books, &BTreeSet::new());
    assert_eq!(
        entries.len(),
        6 * 24,
        "every pair of four subsidiaries, every month"
    );
    let count = |s: MatchStatus| entries.iter().filter(|e| e.status == s).count();
    assert!(
        count(MatchStatus::Matched) * 100 >= entries.len() * 85,
        "{} matched",
        count(MatchStatus::Matched)
    );
    assert!(count(MatchStatus::Mismatched) > 0);
    assert!(count(MatchStatus::LeftOnly) + count(MatchStatus::RightOnly) > 0);
    for e in entries
        .iter()
        .filter(|e| e.status == MatchStatus::Mismatched)
    {
        assert!(
            matches!(e.difference, Value::Decimal(d) if d.units() != 0),
            "{e:?}"
        );
    }

    // With sub-04's archive unanswered, its balances cannot be judged one-sided.
    books.remove("sub-04");
    let partial = spec.reconcile(&books, &BTreeSet::from(["sub-04".to_owned()]));
    // A balance only sub-04 booked is invisible without it; every other one is still listed.
    let visible = entries
        .iter()
        .filter(|e| {
            let other_side = if e.left == "sub-04" {
                &e.right_amount
            } else if e.right == "sub-04" {
                &e.left_amount
            } else {
                return true;
            };
            !other_side.is_null()
        })
        .count();
    assert_eq!(partial.len(), visible);
    for e in partial
        .iter()
        .filter(|e| e.left == "sub-04" || e.right == "sub-04")
    {
        assert_eq!(e.status, MatchStatus::Unknown, "{e:?}");
    }
    for t in w.toteboxes {
        t.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_executive_summary_reports_each_figure_with_provenance_and_freshness() {
    let w = world_of(3, 0).await;
    let fleet = Fleet::start(w.orchestrator.clone(), Limits::default());
    let kpis = vec![
        Kpi {
            name: "Net operating income".into(),
            query: Query::aggregate(
                "statements",
                [],
                [Aggregate::of(AggregateFunction::Sum, "noi")],
            ),
            unit: "USD".into(),
        },
        Kpi {
            name: "Occupied units, Oct 2026".into(),
            query: Query::aggregate(
                "occupancy",
                [],
                [Aggregate::of(AggregateFunction::Sum, "units_occupied")],
            )
            .filter(Filter::compare("period", CompareOp::Eq, "2026-10")),
            unit: "units".into(),
        },
        Kpi {
            name: "Average monthly rent".into(),
            query: Query::aggregate(
                "leases",
                [],
                [Aggregate::of(AggregateFunction::Avg, "monthly_rent")],
            ),
            unit: "USD".into(),
        },
    ];
    let mut sources = w.sources.clone();
    // A fourth property whose Totebox is gone: the figures exclude it and say so.
    sources.push(orchestrator::fanout::Source {
        archive: "prop-09".into(),
        address: std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(),
        key: w.orchestrator.public(),
        member: Default::default(),
    });
    let chain = chain(&w, &["prop-01", "prop-02", "prop-03", "prop-09"]);
    let summary = summarize(&fleet, &sources, &chain, &kpis, limits()).await;
    assert_eq!(summary.len(), 3);
    for kpi in &summary {
        assert_eq!(
            kpi.sources,
            ["prop-01", "prop-02", "prop-03"],
            "{}",
            kpi.name
        );
        assert_eq!(kpi.missing, ["prop-09"], "{}", kpi.name);
        assert!(kpi.as_of_oldest > 0);
        assert!(!kpi.value.is_null(), "{}", kpi.name);
    }
    assert!(matches!(summary[1].value, Value::Int(n) if n > 0));
    assert_eq!(
        fleet.health("prop-09").health,
        orchestrator::fanout::Health::Down
    );
    for t in w.toteboxes {
        t.shutdown(Duration::from_secs(1)).await;
    }
}
