//! Commands fanned out downstream: each archive answers for itself, and a retried command is
//! replayed, never applied twice.

mod support;

use std::time::Duration;

use orchestrator::fanout::{FanOutLimits, Fleet, SourceStatus};
use psp_core::query::{Aggregate, CompareOp, Filter, Query, Value};
use psp_core::{ArchiveSet, Chain, Grant, Operation, Scope, Window};
use psp_rpc::client::CommandSpec;
use psp_rpc::limits::Limits;
use support::world_of;

fn limits() -> FanOutLimits {
    FanOutLimits {
        source_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(4),
        max_concurrency: 8,
        max_rows_per_source: 10_000,
        ..FanOutLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_command_applies_once_per_archive_even_when_retried() {
    let w = world_of(0, 3).await;
    let fleet = Fleet::start(w.orchestrator.clone(), Limits::default());
    let ids: Vec<&str> = w.sources.iter().map(|s| s.archive.as_str()).collect();
    let now = psp_core::window::now();
    let scope = Scope::everything(vec![Operation::Query, Operation::command("append")]);
    let archives = ArchiveSet::of_ids(ids.iter().copied());
    let chain = Chain::mint(
        &w.owner,
        Grant {
            holder: w.operator.public(),
            archives: archives.clone(),
            scope: scope.clone(),
            window: Window::lasting(now - 5, 3_600),
        },
    )
    .unwrap()
    .delegate(
        &w.operator,
        Grant {
            holder: w.orchestrator.public(),
            archives,
            scope,
            window: Window::lasting(now - 5, 300),
        },
    )
    .unwrap();
    let command = CommandSpec {
        name: "append".into(),
        collection: "ledger".into(),
        idempotency_key: b"console-7f3a-append-0001".to_vec(),
        arguments: support::ledger_record(9_999_999, "external", 12_345),
    };

    let first = fleet
        .command(w.sources.clone(), &chain, command.clone(), limits())
        .await;
    assert!(
        first.outcomes.iter().all(|o| o.status == SourceStatus::Ok),
        "{:?}",
        first.outcomes
    );
    assert!(first.commands.iter().all(|c| c.as_ref().unwrap().applied));
    let retry = fleet
        .command(w.sources.clone(), &chain, command, limits())
        .await;
    assert!(
        retry.commands.iter().all(|c| !c.as_ref().unwrap().applied),
        "every archive replays the first outcome"
    );

    let count = Query::aggregate("ledger", [], [Aggregate::count()]).filter(Filter::compare(
        "entry",
        CompareOp::Eq,
        Value::Int(9_999_999),
    ));
    let gathered = fleet
        .query(w.sources.clone(), &chain, count.clone(), limits())
        .await;
    for result in gathered.results {
        assert_eq!(
            result.unwrap().finalize(&count).unwrap().rows[0][0],
            Value::Int(1),
            "applied exactly once"
        );
    }

    // A chain that does not allow the command is refused by every Totebox, with the rule.
    let read_only = support::chain(&w, &ids);
    let ping = CommandSpec {
        name: "append".into(),
        collection: "ledger".into(),
        idempotency_key: b"console-7f3a-append-0002".to_vec(),
        arguments: support::ledger_record(9_999_999, "external", 12_345),
    };
    let refused = fleet
        .command(w.sources.clone(), &read_only, ping, limits())
        .await;
    for o in &refused.outcomes {
        assert!(
            matches!(&o.status, SourceStatus::Denied { code, .. } if code == "capability.operation-not-in-scope"),
            "{o:?}"
        );
    }
    for t in w.toteboxes {
        t.shutdown(Duration::from_secs(1)).await;
    }
}
