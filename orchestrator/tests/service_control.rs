//! Steering requests through the console protocol: cancelling keeps what arrived, the rate
//! quota refuses one tenant without touching another, and commands fan out with one outcome
//! per archive, replayed on retry, never outside the tenant.

mod support;

use std::time::Duration;

use orchestrator::config::Config;
use orchestrator::console::Options;
use orchestrator::fanout::{Health, SourceStatus};
use orchestrator::selection::Selector;
use orchestrator::spec::QuerySpec;
use psp_core::query::{Query, Value};
use psp_core::{IdentityKey, Operation};
use psp_rpc::client::CommandSpec;
use psp_rpc::delay_proxy::DelayProxy;
use support::{World, console, delegated_for, fleet_toml, serve, world, world_of};
use tokio::task::LocalSet;

fn globex() -> IdentityKey {
    IdentityKey::from_seed([22; 32])
}

/// acme reaches every archive; globex only the last one.
fn config(w: &World, acme_quotas: &str) -> Config {
    let last = &w.sources.last().unwrap().archive;
    Config::parse(&format!(
        "identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 5000\ndeadline_ms = 8000\n{}[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\nselectors = [{{ portfolio = \"core\" }}, {{ portfolio = \"value-add\" }}, {{ portfolio = \"holding\" }}]\nquotas = {{ {acme_quotas} }}\n[[tenants]]\nname = \"globex\"\noperators = [\"{}\"]\narchives = [\"{last}\"]\n",
        fleet_toml(w),
        w.operator.public(),
        globex().public(),
    ))
    .unwrap()
}

fn count() -> Query {
    QuerySpec {
        collection: "statements".into(),
        aggregates: vec!["count(*) as n".into()],
        ..QuerySpec::default()
    }
    .to_query()
    .unwrap()
}

fn ids(w: &World) -> Vec<&str> {
    w.sources.iter().map(|s| s.archive.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_returns_what_arrived_and_marks_the_rest_cancelled() {
    let mut w = world(3).await;
    // prop-01 answers only after 3 s (1.5 s each way).
    let proxy = DelayProxy::start(w.sources[0].address, Duration::from_millis(1_500))
        .await
        .unwrap();
    w.sources[0].address = proxy.local_addr();
    let (server, _) = serve(&w, &config(&w, "")).await;
    let chain = delegated_for(&w, &w.operator, &ids(&w), vec![Operation::Query]);
    LocalSet::new()
        .run_until(async {
            let console = console(server.local_addr(), &w, &w.operator).await;
            let asked = tokio::time::Instant::now();
            let in_flight = console
                .start_query(&Selector::All, &chain, &count(), Options::default())
                .unwrap();
            // Wait until the two quick sources have answered.
            loop {
                let (answered, total) = in_flight.progress().await.unwrap();
                assert_eq!(total, 3);
                if answered == 2 {
                    break;
                }
                assert!(
                    asked.elapsed() < Duration::from_secs(2),
                    "the quick sources are slow"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            in_flight.cancel().await.unwrap();
            let report = in_flight.report().await.unwrap();
            assert!(
                asked.elapsed() < Duration::from_millis(2_500),
                "cancel did not stop it"
            );
            assert!(!report.complete);
            let status = |id: &str| {
                report
                    .outcomes
                    .iter()
                    .find(|o| o.archive == id)
                    .unwrap()
                    .status
                    .clone()
            };
            assert_eq!(status("prop-01"), SourceStatus::Cancelled);
            assert_eq!(status("prop-02"), SourceStatus::Ok);
            assert_eq!(status("prop-03"), SourceStatus::Ok);
            // The two answers are merged: 24 monthly statements each.
            assert_eq!(report.table().unwrap().rows, vec![vec![Value::Int(48)]]);
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_over_its_rate_is_refused_and_another_tenant_is_not() {
    let w = world(2).await;
    let (server, _) = serve(&w, &config(&w, "requests_per_minute = 3")).await;
    let acme_chain = delegated_for(&w, &w.operator, &ids(&w), vec![Operation::Query]);
    let globex_chain = delegated_for(&w, &globex(), &["prop-02"], vec![Operation::Query]);
    LocalSet::new()
        .run_until(async {
            let acme = console(server.local_addr(), &w, &w.operator).await;
            let globex_console = console(server.local_addr(), &w, &globex()).await;
            for _ in 0..3 {
                acme.query(&Selector::All, &acme_chain, &count())
                    .await
                    .unwrap();
            }
            let error = acme
                .query(&Selector::All, &acme_chain, &count())
                .await
                .unwrap_err();
            assert_eq!(error.code, "tenant.rate", "{error}");
            assert!(error.message.contains("retry in"), "{error}");
            // Another connection of the same tenant shares the quota.
            let acme_again = console(server.local_addr(), &w, &w.operator).await;
            let error = acme_again
                .query(&Selector::All, &acme_chain, &count())
                .await
                .unwrap_err();
            assert_eq!(error.code, "tenant.rate");
            // Globex is untouched.
            for _ in 0..5 {
                let report = globex_console
                    .query(&Selector::All, &globex_chain, &count())
                    .await
                    .unwrap();
                assert!(report.complete);
            }
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_through_the_console_apply_once_and_stay_in_the_tenant() {
    let w = world_of(0, 3).await;
    let (server, service) = serve(&w, &config(&w, "")).await;
    let ops = vec![Operation::Query, Operation::command("append")];
    let chain = delegated_for(&w, &w.operator, &ids(&w), ops.clone());
    let command = CommandSpec {
        name: "append".into(),
        collection: "ledger".into(),
        idempotency_key: b"console-7f3a-append-0001".to_vec(),
        arguments: support::ledger_record(9_999_999, "external", 12_345),
    };
    let external = QuerySpec {
        collection: "ledger".into(),
        filter: vec!["counterparty = external".into(), "entry = 9999999".into()],
        aggregates: vec!["count(*) as n".into()],
        ..QuerySpec::default()
    }
    .to_query()
    .unwrap();
    LocalSet::new()
        .run_until(async {
            let acme = console(server.local_addr(), &w, &w.operator).await;
            let first = acme.command(&Selector::All, &chain, &command, Options::default()).await.unwrap();
            assert_eq!(first.len(), 3);
            for (outcome, answer) in &first {
                assert_eq!(outcome.status, SourceStatus::Ok, "{outcome:?}");
                assert!(answer.as_ref().unwrap().applied);
            }
            let retry = acme.command(&Selector::All, &chain, &command, Options::default()).await.unwrap();
            for (outcome, answer) in &retry {
                assert_eq!(outcome.status, SourceStatus::Ok);
                assert!(!answer.as_ref().unwrap().applied, "{} applied it twice", outcome.archive);
            }
            let report = acme.query(&Selector::All, &chain, &external).await.unwrap();
            assert_eq!(report.table().unwrap().rows, vec![vec![Value::Int(3)]], "one record per archive");

            // A read-only chain: every archive denies it with the rule, and says so.
            let read_only = delegated_for(&w, &w.operator, &ids(&w), vec![Operation::Query]);
            let denied = acme
                .command(&Selector::All, &read_only, &command, Options::default())
                .await
                .unwrap();
            for (outcome, answer) in &denied {
                assert!(answer.is_none());
                assert!(
                    matches!(&outcome.status, SourceStatus::Denied { code, .. } if code == "capability.operation-not-in-scope"),
                    "{outcome:?}"
                );
            }

            // Globex may not command acme's archives, nor learn whether they exist.
            let globex_console = console(server.local_addr(), &w, &globex()).await;
            let globex_chain = delegated_for(&w, &globex(), &["sub-01"], ops.clone());
            let before = service.fleet().health("sub-01");
            for name in ["sub-01", "sub-99"] {
                let error = globex_console
                    .command(&Selector::Ids(vec![name.into()]), &globex_chain, &command, Options::default())
                    .await
                    .unwrap_err();
                assert_eq!(error.code, "tenant.archive-not-in-tenant", "{name}: {error}");
                assert!(!error.message.contains("exist"), "{error}");
            }
            assert_eq!(service.fleet().health("sub-01"), before, "sub-01 was called");
            assert_ne!(before.health, Health::Unknown);

            // A key outside 16..=64 bytes is refused before anything is sent.
            let short = CommandSpec { idempotency_key: b"short".to_vec(), ..command.clone() };
            let error = acme.command(&Selector::All, &chain, &short, Options::default()).await.unwrap_err();
            assert_eq!(error.code, "command.bad-idempotency-key");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_shutdown_lets_a_running_request_finish_and_refuses_new_ones() {
    let mut w = world(2).await;
    // prop-01 is 300 ms away each way: about 2 s to connect and answer.
    let proxy = DelayProxy::start(w.sources[0].address, Duration::from_millis(300))
        .await
        .unwrap();
    w.sources[0].address = proxy.local_addr();
    let (server, _) = serve(&w, &config(&w, "")).await;
    let address = server.local_addr();
    let chain = delegated_for(&w, &w.operator, &ids(&w), vec![Operation::Query]);
    LocalSet::new()
        .run_until(async {
            let console = console(address, &w, &w.operator).await;
            let in_flight = console
                .start_query(&Selector::All, &chain, &count(), Options::default())
                .unwrap();
            // The view is waiting at the orchestrator before the shutdown starts.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let stopping = tokio::spawn(server.shutdown(Duration::from_secs(10)));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let refused = console.fleet().await.unwrap_err();
            assert_eq!(refused.code, "transport.shutting-down", "{refused}");
            let report = in_flight.report().await.unwrap();
            assert!(report.complete, "{:?}", report.outcomes);
            assert_eq!(report.table().unwrap().rows, vec![vec![Value::Int(48)]]);
            stopping.await.unwrap();
        })
        .await;
}
