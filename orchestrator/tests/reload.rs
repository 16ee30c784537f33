//! Reloading the orchestrator's config while it serves: requests in flight finish under the
//! config they started with, new requests see the new one, removed operators are cut off, a
//! broken file changes nothing, and a reload is no way around a quota.

mod support;

use std::time::Duration;

use orchestrator::console::{Console, Options};
use orchestrator::fanout::SourceStatus;
use orchestrator::selection::Selector;
use orchestrator::server::RunningOrchestrator;
use orchestrator::spec::QuerySpec;
use psp_core::query::{Query, Value};
use psp_core::{IdentityKey, Operation};
use psp_rpc::delay_proxy::DelayProxy;
use psp_rpc::limits::Limits;
use support::{World, console, delegated_for, fleet_toml, world};
use tokio::task::LocalSet;

fn globex() -> IdentityKey {
    IdentityKey::from_seed([22; 32])
}

fn write_config(w: &World, acme: &[&str], with_globex: bool, rate: u32) {
    let mut text = format!(
        "identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 5000\ndeadline_ms = 8000\n{}[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = {acme:?}\nquotas = {{ requests_per_minute = {rate} }}\n",
        fleet_toml(w),
        w.operator.public(),
    );
    if with_globex {
        text.push_str(&format!(
            "[[tenants]]\nname = \"globex\"\noperators = [\"{}\"]\narchives = [\"prop-03\"]\n",
            globex().public()
        ));
    }
    std::fs::write(w.dir.path().join("orchestrator.toml"), text).unwrap();
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

async fn ids(console: &Console) -> Vec<String> {
    console
        .fleet()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_changes_new_requests_and_drops_none_in_flight() {
    let mut w = world(3).await;
    // prop-01 is 300 ms away each way (about 2 s to connect and answer), so a query over it is
    // in flight during the reload.
    let proxy = DelayProxy::start(w.sources[0].address, Duration::from_millis(300))
        .await
        .unwrap();
    w.sources[0].address = proxy.local_addr();
    w.orchestrator
        .save(&w.dir.path().join("orchestrator.pem"))
        .unwrap();
    write_config(&w, &["prop-01", "prop-02"], true, 600);
    let server = RunningOrchestrator::start(&w.dir.path().join("orchestrator.toml"))
        .await
        .unwrap();
    let all = ["prop-01", "prop-02", "prop-03"];
    let chain = delegated_for(&w, &w.operator, &all, vec![Operation::Query]);
    LocalSet::new()
        .run_until(async {
            let acme = console(server.local_addr(), &w, &w.operator).await;
            let globex_console = console(server.local_addr(), &w, &globex()).await;
            assert_eq!(ids(&acme).await, ["prop-01", "prop-02"]);

            let in_flight = acme
                .start_query(&Selector::All, &chain, &count(), Options::default())
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            // acme now has prop-02 and prop-03; globex is gone.
            write_config(&w, &["prop-02", "prop-03"], false, 600);
            server.reload().unwrap();

            let report = in_flight.report().await.unwrap();
            assert!(report.complete, "{:?}", report.outcomes);
            let asked: Vec<(&str, &SourceStatus)> = report
                .outcomes
                .iter()
                .map(|o| (o.archive.as_str(), &o.status))
                .collect();
            assert_eq!(
                asked,
                [
                    ("prop-01", &SourceStatus::Ok),
                    ("prop-02", &SourceStatus::Ok)
                ]
            );
            assert_eq!(report.table().unwrap().rows, vec![vec![Value::Int(48)]]);

            // The same connection sees the new config at once.
            assert_eq!(ids(&acme).await, ["prop-02", "prop-03"]);
            let error = acme
                .query(&Selector::Ids(vec!["prop-01".into()]), &chain, &count())
                .await
                .unwrap_err();
            assert_eq!(error.code, "tenant.archive-not-in-tenant");

            // globex's open connection was closed, and it cannot connect again.
            assert!(
                globex_console.fleet().await.is_err(),
                "a removed operator kept its connection"
            );
            let refused = Console::connect(
                server.local_addr(),
                &globex(),
                server.key(),
                Limits::default(),
            )
            .await
            .err()
            .unwrap();
            assert_eq!(refused.code, "tenant.not-an-operator", "{refused}");

            // A broken file changes nothing and says what is wrong.
            std::fs::write(
                w.dir.path().join("orchestrator.toml"),
                std::fs::read_to_string(w.dir.path().join("orchestrator.toml"))
                    .unwrap()
                    .replacen("key = \"ed25519:", "key = \"ed25519:zz", 1),
            )
            .unwrap();
            let error = server.reload().unwrap_err();
            assert!(
                error.contains("fleet[0]") && error.contains(".key"),
                "{error}"
            );
            assert_eq!(ids(&acme).await, ["prop-02", "prop-03"]);
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_is_no_way_around_a_quota() {
    let w = world(1).await;
    w.orchestrator
        .save(&w.dir.path().join("orchestrator.pem"))
        .unwrap();
    write_config(&w, &["prop-01"], false, 2);
    let server = RunningOrchestrator::start(&w.dir.path().join("orchestrator.toml"))
        .await
        .unwrap();
    let chain = delegated_for(&w, &w.operator, &["prop-01"], vec![Operation::Query]);
    LocalSet::new()
        .run_until(async {
            let acme = console(server.local_addr(), &w, &w.operator).await;
            for _ in 0..2 {
                acme.query(&Selector::All, &chain, &count()).await.unwrap();
            }
            server.reload().unwrap();
            let error = acme
                .query(&Selector::All, &chain, &count())
                .await
                .unwrap_err();
            assert_eq!(error.code, "tenant.rate", "the reload refilled the bucket");
            // A changed quota is a new budget.
            write_config(&w, &["prop-01"], false, 5);
            server.reload().unwrap();
            acme.query(&Selector::All, &chain, &count()).await.unwrap();
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}
