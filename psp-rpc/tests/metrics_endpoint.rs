//! The metrics endpoint, scraped and parsed as Prometheus would: a Totebox's queries by code,
//! refusals by rule and records per collection; reads answered, anything else refused with 405
//! and nothing changed.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use psp_core::Verifier;
use psp_core::query::{Aggregate, Query};
use psp_rpc::limits::Limits;
use support::scrape::{http, scrape, value};
use support::{MemoryArchive, chain, machines, start};
use tokio::task::LocalSet;

/// `http` off the async threads (the endpoint runs on them).
async fn ask(address: SocketAddr, method: &'static str) -> (String, String) {
    tokio::task::spawn_blocking(move || http(address, method))
        .await
        .unwrap()
}

async fn scraped(address: SocketAddr) -> Vec<(String, f64)> {
    tokio::task::spawn_blocking(move || scrape(address))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_reads_queries_refusals_and_records_and_nothing_else_is_accepted() {
    let address = psp_rpc::metrics::serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let m = machines();
    let (server, service) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    service.record_sizes();
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            let count = Query::aggregate("units", [], [Aggregate::count()]);
            client
                .query(&chain(&m, &m.orchestrator, "tower-a", 60), &count)
                .await
                .unwrap();
            // A chain for another archive: refused by the capability rule.
            let refused = client
                .query(&chain(&m, &m.orchestrator, "tower-b", 60), &count)
                .await
                .unwrap_err();
            let samples = scraped(address).await;
            let at = |key: &str| value(&samples, key);
            assert_eq!(at("psp_totebox_queries_total{code=ok}"), Some(1.0));
            let code = &refused.code;
            assert_eq!(
                at(&format!("psp_totebox_queries_total{{code={code}}}")),
                Some(1.0),
                "{refused}"
            );
            assert_eq!(
                at(&format!("psp_totebox_refusals_total{{rule={code}}}")),
                Some(1.0)
            );
            // The same chain offered to `open`: refused by the same rule, and counted too.
            let opened = client
                .open(&chain(&m, &m.orchestrator, "tower-b", 60))
                .await
                .err()
                .expect("open refused");
            assert_eq!(&opened.code, code);
            let samples = scraped(address).await;
            let at = |key: &str| value(&samples, key);
            assert_eq!(
                at(&format!("psp_totebox_refusals_total{{rule={code}}}")),
                Some(2.0),
                "a refused open is a refusal"
            );
            assert_eq!(at("psp_totebox_records{collection=units}"), Some(12.0));
        })
        .await;
    // Read-only: a write is refused, and changes nothing.
    // (Families come in any order: compare the lines as a set.)
    let lines = |body: String| {
        let mut lines: Vec<String> = body.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    let before = lines(ask(address, "GET").await.1);
    for method in ["POST", "PUT", "DELETE"] {
        let (status, _) = ask(address, method).await;
        assert!(status.contains("405"), "{method}: {status}");
    }
    assert_eq!(lines(ask(address, "GET").await.1), before);
    server.shutdown(Duration::from_secs(1)).await;
}

/// Silent connections hold at most the endpoint's eight slots: a scrape behind them waits (it
/// is not refused, and nothing grows), and is answered once they go.
#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_hold_at_most_eight_scrapes_and_a_scrape_gets_through_after() {
    let address = psp_rpc::metrics::serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let silent: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(address).unwrap())
        .collect();
    // Accepted by now (the endpoint takes a slot at each accept).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let answer = http(address, "GET");
        (answer, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a ninth scrape was served beside eight"
    );
    drop(silent);
    let ((status, _), took) = waiting.await.unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(took >= Duration::from_millis(500), "{took:?}");
}
