//! The console-facing service over real TLS, against a real fleet: a console sees and queries
//! only its tenant's archives, and the confused-deputy attack is refused before any Totebox is
//! called.

mod support;

use std::sync::Arc;
use std::time::Duration;

use orchestrator::config::Config;
use orchestrator::console::Console;
use orchestrator::fanout::{Health, SourceStatus};
use orchestrator::selection::Selector;
use orchestrator::service::OrchestratorService;
use psp_core::query::{Aggregate, AggregateFunction, Query, Value};
use psp_core::{IdentityKey, Operation};
use psp_rpc::limits::Limits;
use psp_rpc::runtime::ServerHandle;
use support::{World, world};
use tokio::task::LocalSet;

fn globex() -> IdentityKey {
    IdentityKey::from_seed([22; 32])
}

/// acme (the fleet's operator key) has the three properties; globex has prop-03 only.
fn config(w: &World) -> Config {
    let mut text = String::from("identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n");
    for (i, s) in w.sources.iter().enumerate() {
        let region = ["north", "south", "north"][i % 3];
        text.push_str(&format!(
            "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ entity = \"property\", region = \"{region}\" }}\n",
            s.archive, s.address, s.key
        ));
    }
    text.push_str(&format!(
        "[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"property\" }}]\n",
        w.operator.public()
    ));
    text.push_str(&format!(
        "[[tenants]]\nname = \"globex\"\noperators = [\"{}\"]\narchives = [\"prop-03\"]\n",
        globex().public()
    ));
    Config::parse(&text).unwrap()
}

async fn start(w: &World) -> (ServerHandle, Arc<OrchestratorService>) {
    support::serve(w, &config(w)).await
}

fn noi() -> Query {
    Query::aggregate(
        "statements",
        [],
        [
            Aggregate::of(AggregateFunction::Sum, "noi"),
            Aggregate::count(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_console_queries_its_tenants_fleet_in_one_view() {
    let w = world(3).await;
    let (server, _) = start(&w).await;
    LocalSet::new()
        .run_until(async {
            let console = Console::connect(
                server.local_addr(),
                &w.operator,
                w.orchestrator.public(),
                Limits::default(),
            )
            .await
            .unwrap();
            let fleet = console.fleet().await.unwrap();
            assert_eq!(
                fleet.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
                ["prop-01", "prop-02", "prop-03"]
            );
            let chain = support::delegated_for(
                &w,
                &w.operator,
                &["prop-01", "prop-02", "prop-03"],
                vec![Operation::Query],
            );
            let view = console.query(&Selector::All, &chain, &noi()).await.unwrap();
            assert!(view.complete, "{:?}", view.outcomes);
            assert!(view.outcomes.iter().all(|o| o.status == SourceStatus::Ok));
            assert_eq!(view.table().unwrap().rows[0][1], Value::Int(72));
            assert!(view.as_of_oldest > 0);
            // Health is now known.
            let fleet = console.fleet().await.unwrap();
            assert!(fleet.iter().all(|a| a.health == Health::Up), "{fleet:?}");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_sending_another_tenants_capability_reaches_no_totebox() {
    let w = world(3).await;
    let (server, service) = start(&w).await;
    LocalSet::new()
        .run_until(async {
            let acme = Console::connect(
                server.local_addr(),
                &w.operator,
                w.orchestrator.public(),
                Limits::default(),
            )
            .await
            .unwrap();
            // The background dialer connects the fleet: wait for it, then count what each
            // Totebox receives from here on.
            for s in &w.sources {
                while service.fleet().health(&s.archive).health != Health::Up {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            // Then let its last messages (the finish of each `identify`) land.
            let received =
                || -> Vec<u64> { w.toteboxes.iter().map(|t| t.bytes_received()).collect() };
            let mut before = received();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if received() == before {
                    break;
                }
                before = received();
            }
            // Globex's valid capability for prop-03, sent by acme's console.
            let stolen =
                support::delegated_for(&w, &globex(), &["prop-03"], vec![Operation::Query]);
            let error = acme
                .query(&Selector::Ids(vec!["prop-03".into()]), &stolen, &noi())
                .await
                .unwrap_err();
            assert_eq!(error.code, "tenant.not-your-capability", "{error}");
            assert_eq!(before, received(), "a Totebox was sent something");

            // Globex may not even name acme's archives.
            let globex_console = Console::connect(
                server.local_addr(),
                &globex(),
                w.orchestrator.public(),
                Limits::default(),
            )
            .await
            .unwrap();
            assert_eq!(globex_console.fleet().await.unwrap().len(), 1);
            let chain = support::delegated_for(&w, &globex(), &["prop-01"], vec![Operation::Query]);
            let error = globex_console
                .query(&Selector::Ids(vec!["prop-01".into()]), &chain, &noi())
                .await
                .unwrap_err();
            assert_eq!(error.code, "tenant.archive-not-in-tenant");

            // A key that is no operator cannot connect at all.
            let stranger = IdentityKey::from_seed([99; 32]);
            let error = Console::connect(
                server.local_addr(),
                &stranger,
                w.orchestrator.public(),
                Limits::default(),
            )
            .await
            .err()
            .unwrap();
            assert_eq!(error.code, "tenant.not-an-operator", "{error}");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_at_its_quota_leaves_other_tenants_answers_unchanged() {
    let mut w = world(3).await;
    // acme reaches prop-01 through a 1 s delay, so its queries stay running; its quota is 1.
    let proxy =
        psp_rpc::delay_proxy::DelayProxy::start(w.sources[0].address, Duration::from_secs(1))
            .await
            .unwrap();
    w.sources[0].address = proxy.local_addr();
    let mut config = config(&w);
    config.tenants[0].quotas.concurrent_queries = 1;
    let (server, _) = support::serve(&w, &config).await;
    LocalSet::new()
        .run_until(async {
            let acme = Console::connect(
                server.local_addr(),
                &w.operator,
                w.orchestrator.public(),
                Limits::default(),
            )
            .await
            .unwrap();
            let globex_console = Console::connect(
                server.local_addr(),
                &globex(),
                w.orchestrator.public(),
                Limits::default(),
            )
            .await
            .unwrap();
            let globex_chain =
                support::delegated_for(&w, &globex(), &["prop-03"], vec![Operation::Query]);
            let baseline = globex_console
                .query(&Selector::All, &globex_chain, &noi())
                .await
                .unwrap();

            let acme_chain = support::delegated_for(
                &w,
                &w.operator,
                &["prop-01", "prop-02", "prop-03"],
                vec![Operation::Query],
            );
            let query = noi();
            let running = acme.query(&Selector::All, &acme_chain, &query);
            let meanwhile = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let over_quota = acme
                    .query(&Selector::All, &acme_chain, &noi())
                    .await
                    .unwrap_err();
                let other_tenant = globex_console
                    .query(&Selector::All, &globex_chain, &noi())
                    .await
                    .unwrap();
                (over_quota, other_tenant)
            };
            let (first, (over_quota, other_tenant)) = tokio::join!(running, meanwhile);
            assert_eq!(over_quota.code, "tenant.quota", "{over_quota}");
            assert_eq!(
                other_tenant.table().unwrap(),
                baseline.table().unwrap(),
                "globex's answer is unchanged by acme's load"
            );
            assert!(other_tenant.complete);
            first.unwrap();
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollup_groups_by_archive_labels_through_the_console() {
    let w = world(3).await;
    let (server, _) = start(&w).await;
    LocalSet::new()
        .run_until(async {
            let console = Console::connect(
                server.local_addr(),
                &w.operator,
                w.orchestrator.public(),
                Limits::default(),
            )
            .await
            .unwrap();
            let chain = support::delegated_for(
                &w,
                &w.operator,
                &["prop-01", "prop-02", "prop-03"],
                vec![Operation::Query],
            );
            let by_region = console
                .rollup(&Selector::All, &chain, &noi(), &["region"])
                .await
                .unwrap();
            assert!(by_region.complete);
            assert_eq!(by_region.table().unwrap().columns[0].name, "region");
            let regions: Vec<(Value, Value)> = by_region
                .table()
                .unwrap()
                .rows
                .iter()
                .map(|r| (r[0].clone(), r[2].clone()))
                .collect();
            // prop-01 and prop-03 are north (2 x 24 statements), prop-02 south (24).
            assert_eq!(
                regions,
                vec![
                    (Value::from("north"), Value::Int(48)),
                    (Value::from("south"), Value::Int(24))
                ]
            );
            let total = console.query(&Selector::All, &chain, &noi()).await.unwrap();
            let sum = |rows: &[Vec<Value>]| {
                rows.iter().fold(
                    psp_core::query::Decimal::new(0, 2).unwrap(),
                    |acc, r| match &r[r.len() - 2] {
                        Value::Decimal(d) => acc.checked_add(d).unwrap(),
                        other => panic!("{other:?}"),
                    },
                )
            };
            assert_eq!(
                sum(&by_region.table().unwrap().rows),
                sum(&total.table().unwrap().rows),
                "the regions add up to the whole portfolio"
            );
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}
