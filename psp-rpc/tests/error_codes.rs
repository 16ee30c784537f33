//! Codes a Totebox and its client send that no other test names, each shown against a real
//! server (the table in `docs/protocol.md` points here).

mod support;

use std::time::Duration;

use psp_core::Verifier;
use psp_core::query::{Aggregate, CompareOp, Filter, Query};
use psp_rpc::limits::Limits;
use support::{MemoryArchive, chain, machines, start};
use tokio::task::LocalSet;

#[tokio::test]
async fn query_and_transport_codes_are_the_documented_ones() {
    let m = machines();
    let mut slow = MemoryArchive::new("tower-a");
    slow.scan_delay = Duration::from_millis(300);
    let (server, _) = start(
        &m,
        slow,
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    LocalSet::new()
        .run_until(async {
            let client = support::connect(
                &m,
                server.local_addr(),
                Limits {
                    call_timeout: Duration::from_millis(100),
                    ..Limits::default()
                },
            )
            .await;
            let chain = chain(&m, &m.orchestrator, "tower-a", 60);
            let code = |e: psp_rpc::limits::CallError| e.code;

            let nowhere = Query::aggregate("no-such-collection", [], [Aggregate::count()]);
            let e = client.query(&chain, &nowhere).await.unwrap_err();
            assert_eq!(code(e), "query.unknown-collection");

            let mismatched = Query::aggregate("units", [], [Aggregate::count()])
                .filter(Filter::compare("floor", CompareOp::Eq, "three"));
            let e = client.query(&chain, &mismatched).await.unwrap_err();
            assert_eq!(code(e), "query.type-mismatch");

            // The archive takes 300 ms; this client waits 100 ms for any call.
            let count = Query::aggregate("units", [], [Aggregate::count()]);
            let e = client.query(&chain, &count).await.unwrap_err();
            assert_eq!(code(e), "transport.timeout");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// A Totebox that closes the connection under a running call: the caller is told
/// `transport.disconnected` at once, not left to its deadline.
#[tokio::test]
async fn a_connection_closed_under_a_call_is_transport_disconnected() {
    let m = machines();
    let mut slow = MemoryArchive::new("tower-a");
    slow.scan_delay = Duration::from_secs(2);
    let (server, _) = start(
        &m,
        slow,
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    let address = server.local_addr();
    LocalSet::new()
        .run_until(async {
            let client = support::connect(
                &m,
                address,
                Limits {
                    call_timeout: Duration::from_secs(30),
                    ..Limits::default()
                },
            )
            .await;
            let chain = chain(&m, &m.orchestrator, "tower-a", 60);
            let count = Query::aggregate("units", [], [Aggregate::count()]);
            let started = std::time::Instant::now();
            let call = tokio::task::spawn_local(async move { client.query(&chain, &count).await });
            tokio::time::sleep(Duration::from_millis(200)).await;
            // No grace: the running call is cut with its connection.
            server.shutdown(Duration::ZERO).await;
            let e = call.await.unwrap().unwrap_err();
            assert_eq!(e.code, "transport.disconnected", "{e}");
            assert!(started.elapsed() < Duration::from_secs(10));
        })
        .await;
}
