//! Tenants share the orchestrator's one connection to each Totebox, and a Totebox refuses calls
//! past its per-connection limit. One tenant flooding a slow fleet with executive summaries
//! (far more calls than that limit) must leave another tenant's requests to the same Toteboxes
//! unaffected: answered, not refused with `limit.calls-in-flight`.

mod support;

use std::time::Duration;

use orchestrator::config::Config;
use orchestrator::console::{Console, Options};
use orchestrator::fanout::SourceStatus;
use orchestrator::report::Report;
use orchestrator::selection::Selector;
use orchestrator::viewports::{Kpi, NamedViewport, Viewport};
use psp_core::query::{Aggregate, AggregateFunction, Query};
use psp_core::{IdentityKey, Operation};
use psp_rpc::limits::Limits;
use support::slow::SlowTotebox;
use tokio::task::LocalSet;

/// Ten key figures: ten calls to every Totebox per summary.
fn summary() -> NamedViewport {
    let kpis = (0..10)
        .map(|i| Kpi {
            name: format!("rent {i}"),
            query: Query::aggregate(
                "units",
                [],
                [Aggregate::of(AggregateFunction::Sum, "rent").named(&format!("rent{i}"))],
            ),
            unit: "USD".into(),
        })
        .collect();
    NamedViewport {
        name: "summary".into(),
        viewport: Viewport::Summary(kpis),
    }
}

fn all_answered(report: &Report) -> bool {
    report.outcomes.iter().all(|o| o.status == SourceStatus::Ok)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_tenant_leaves_another_tenants_requests_unaffected() {
    let w = support::world(0).await;
    let flooder = IdentityKey::from_seed([31; 32]);
    let neighbour = IdentityKey::from_seed([32; 32]);
    let mut toteboxes = Vec::new();
    for id in ["slow-01", "slow-02"] {
        toteboxes.push(
            SlowTotebox::start(
                id,
                Duration::from_millis(400),
                w.orchestrator.public(),
                w.owner.public(),
            )
            .await,
        );
    }
    let mut text = String::from(
        "identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 8000\ndeadline_ms = 9000\n",
    );
    for t in &toteboxes {
        text.push_str(&t.fleet_toml());
    }
    for (name, key) in [("flood", &flooder), ("neighbour", &neighbour)] {
        text.push_str(&format!(
            "[[tenants]]\nname = \"{name}\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"property\" }}]\nquotas = {{ concurrent_queries = 16, requests_per_minute = 10000 }}\n",
            key.public()
        ));
    }
    let (server, _) = support::serve(&w, &Config::parse(&text).unwrap()).await;
    let ids = ["slow-01", "slow-02"];
    let flood_grant = support::grant(&w, &flooder, &ids, vec![Operation::Query]);
    let neighbour_grant = support::grant(&w, &neighbour, &ids, vec![Operation::Query]);
    LocalSet::new()
        .run_until(async {
            let address = server.local_addr();
            let orchestrator = w.orchestrator.public();
            let flood = Console::connect(address, &flooder, orchestrator, Limits::default())
                .await
                .unwrap();
            let next_door = Console::connect(address, &neighbour, orchestrator, Limits::default())
                .await
                .unwrap();
            // The pool is warm: one connection to each Totebox, shared by both tenants.
            let count = Query::aggregate("units", [], [Aggregate::count()]);
            let warm = next_door
                .query(&Selector::All, &neighbour_grant, &count)
                .await
                .unwrap();
            assert!(all_answered(&warm));
            // Eight summaries at once: 80 calls to each Totebox, whose limit is 64.
            let summaries: Vec<_> = (0..8)
                .map(|_| {
                    flood
                        .start_view(&Selector::All, &flood_grant, &summary(), Options::default())
                        .unwrap()
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(150)).await;

            let report = next_door
                .query(&Selector::All, &neighbour_grant, &count)
                .await
                .unwrap();
            assert!(
                all_answered(&report),
                "the neighbour's request was affected: {:?}",
                report.outcomes
            );

            // The flood itself waits its turn rather than being refused.
            for in_flight in &summaries {
                let report = in_flight.report().await.unwrap();

                assert!(all_answered(&report), "{:?}", report.outcomes);
            }
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}
