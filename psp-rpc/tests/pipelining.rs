//! Promise pipelining through a 50 ms one-way delay: `open(chain).session.query(q)` costs one
//! round trip, the unpipelined form two. Round trips are counted at the proxy, not timed.

mod support;

use std::time::{Duration, Instant};

use psp_core::Verifier;
use psp_core::query::{Aggregate, Query};
use psp_rpc::delay_proxy::DelayProxy;
use psp_rpc::limits::Limits;
use support::{MemoryArchive, chain, machines, start};
use tokio::task::LocalSet;

#[tokio::test]
async fn pipelined_open_and_query_take_one_round_trip_unpipelined_two() {
    let m = machines();
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    let one_way = Duration::from_millis(50);
    let proxy = DelayProxy::start(server.local_addr(), one_way)
        .await
        .unwrap();
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, proxy.local_addr(), Limits::default()).await;
            let query = Query::aggregate("units", [], [Aggregate::count()]);
            let chain = chain(&m, &m.orchestrator, "tower-a", 60);
            // Warm the Totebox's chain cache, so both measurements do the same work.
            client.query(&chain, &query).await.unwrap();

            proxy.reset();
            let started = Instant::now();
            client.query(&chain, &query).await.unwrap();
            let pipelined = (proxy.round_trips(), started.elapsed());

            proxy.reset();
            let started = Instant::now();
            let session = client.open(&chain).await.unwrap();
            session.query(&query).await.unwrap();
            let unpipelined = (proxy.round_trips(), started.elapsed());

            eprintln!(
                "pipelined: {pipelined:?}; unpipelined: {unpipelined:?}; round trip {:?}",
                one_way * 2
            );
            assert!(
                (pipelined.0 as f64) < 1.5,
                "pipelined open+query took {} round trips",
                pipelined.0
            );
            assert_eq!(unpipelined.0, 2, "open, then query on the session");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_proxy_delays_each_direction() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = echo.accept().await.unwrap();
        let mut b = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut b)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, &b)
            .await
            .unwrap();
    });
    let proxy = DelayProxy::start(target, Duration::from_millis(40))
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let started = Instant::now();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"ping")
        .await
        .unwrap();
    let mut b = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut b)
        .await
        .unwrap();
    assert_eq!(&b, b"ping");
    assert!(
        started.elapsed() >= Duration::from_millis(80),
        "two one-way delays: {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.round_trips(), 1);
}

#[tokio::test]
async fn a_fresh_connection_sends_its_first_query_beside_identify() {
    let m = machines();
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    let proxy = DelayProxy::start(server.local_addr(), Duration::from_millis(30))
        .await
        .unwrap();
    LocalSet::new()
        .run_until(async {
            let query = Query::aggregate("units", [], [Aggregate::count()]);
            let chain = chain(&m, &m.orchestrator, "tower-a", 60);

            // Confirmed first: the handshake, `identify`, then the query.
            proxy.reset();
            let client = support::connect(&m, proxy.local_addr(), Limits::default()).await;
            client.query(&chain, &query).await.unwrap();
            assert_eq!(proxy.round_trips(), 3, "handshake, identify, query");
            drop(client);

            // Pipelined: the query rides in the same flight as `identify`.
            proxy.reset();
            let client = psp_rpc::client::ToteboxClient::connect_serving(
                proxy.local_addr(),
                &m.orchestrator,
                m.totebox.public(),
                "tower-a",
                Limits::default(),
            )
            .await
            .unwrap();
            assert!(
                client.identity().is_none(),
                "not confirmed before any answer"
            );
            let counted = client.query(&chain, &query).await.unwrap();
            assert_eq!(counted.finalize(&query).unwrap().rows.len(), 1);
            assert_eq!(
                proxy.round_trips(),
                2,
                "handshake, then identify and query together"
            );
            assert_eq!(client.identity().expect("confirmed").archive, "tower-a");
            assert!(client.is_connected());
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}
