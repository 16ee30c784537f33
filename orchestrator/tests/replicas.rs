//! Statelessness: two replicas serve one fleet side by side with the same answers, and a replica
//! restarted from nothing answers exactly as before (it held nothing to lose).

mod support;

use std::time::Duration;

use orchestrator::config::Config;
use orchestrator::console::Console;
use orchestrator::selection::Selector;
use orchestrator::service::OrchestratorService;
use psp_core::query::{Aggregate, AggregateFunction, Query};
use psp_rpc::limits::Limits;
use psp_rpc::runtime::ServerHandle;
use psp_rpc::tls::{self, PairedKeys};
use support::{World, chain, world};
use tokio::task::LocalSet;

async fn replica(w: &World) -> ServerHandle {
    let mut text = String::from("identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n");
    for s in &w.sources {
        text.push_str(&format!(
            "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\n",
            s.archive, s.address, s.key
        ));
    }
    let ids: Vec<String> = w
        .sources
        .iter()
        .map(|s| format!("{:?}", s.archive))
        .collect();
    text.push_str(&format!(
        "[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = [{}]\n",
        w.operator.public(),
        ids.join(", ")
    ));
    let config = Config::parse(&text).unwrap();
    let service = OrchestratorService::new(config.clone(), &w.orchestrator, Limits::default());
    let tls = tls::server_config(&w.orchestrator, PairedKeys::new(config.operator_keys())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    psp_rpc::runtime::serve(
        listener,
        tls,
        service.bootstrap_factory(),
        Limits::default(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_agree_and_a_restart_loses_nothing() {
    let w = world(3).await;
    let ids: Vec<&str> = w.sources.iter().map(|s| s.archive.as_str()).collect();
    let query = Query::aggregate(
        "rent_roll",
        ["period"],
        [
            Aggregate::of(AggregateFunction::Sum, "collected"),
            Aggregate::count(),
        ],
    )
    .order_by("period", false);
    let ask = |address| {
        let (w, query, ids) = (&w, &query, &ids);
        async move {
            let console = Console::connect(
                address,
                &w.operator,
                w.orchestrator.public(),
                Limits::default(),
            )
            .await
            .unwrap();
            console
                .query(&Selector::All, &chain(w, ids), query)
                .await
                .unwrap()
        }
    };
    let (one, two) = (replica(&w).await, replica(&w).await);
    LocalSet::new()
        .run_until(async {
            let (a, b) = tokio::join!(ask(one.local_addr()), ask(two.local_addr()));
            assert!(a.complete && b.complete);
            assert_eq!(
                a.table().unwrap(),
                b.table().unwrap(),
                "two replicas, one answer"
            );
            assert_eq!(a.table().unwrap().rows.len(), 24);

            // Restart replica one from nothing: same fleet, same answer.
            one.shutdown(Duration::from_secs(1)).await;
            let restarted = replica(&w).await;
            let c = ask(restarted.local_addr()).await;
            assert_eq!(c.table().unwrap(), a.table().unwrap());
            restarted.shutdown(Duration::from_secs(1)).await;
        })
        .await;
    two.shutdown(Duration::from_secs(1)).await;
}
