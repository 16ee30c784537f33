//! A server closes connections nobody uses and connections that trickle: a peer that vanished
//! without closing, or that sends a byte now and then, must not hold a file descriptor and
//! buffers at the server forever. A connection in use is never closed for idleness.

mod support;

use std::time::{Duration, Instant};

use psp_core::Verifier;
use psp_core::query::{Aggregate, Query};
use psp_rpc::client::ToteboxClient;
use psp_rpc::limits::Limits;
use support::{MemoryArchive, chain, machines, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::LocalSet;

const IDLE: Duration = Duration::from_millis(400);
const MESSAGE: Duration = Duration::from_millis(600);
/// How late past a limit the server may close (its check runs on a timer, on a busy machine).
const MARGIN: Duration = Duration::from_millis(300);

fn limits() -> Limits {
    Limits {
        idle_timeout: IDLE,
        message_timeout: MESSAGE,
        ..Limits::default()
    }
}

/// A Totebox with the short limits, and the machines around it.
async fn serve() -> (support::Machines, psp_rpc::runtime::ServerHandle) {
    serve_with(MemoryArchive::new("tower-a"), limits()).await
}

/// A Totebox serving `archive` within `limits`, and the machines around it.
async fn serve_with(
    archive: MemoryArchive,
    limits: Limits,
) -> (support::Machines, psp_rpc::runtime::ServerHandle) {
    let m = machines();
    let (server, _) = start(&m, archive, Verifier::new([m.owner.public()]), limits).await;
    (m, server)
}

/// Asserts that a close `took` came at `limit`, not before and not much after.
fn closed_at(took: Duration, limit: Duration) {
    assert!(
        took >= limit - Duration::from_millis(20),
        "closed early: {took:?}"
    );
    assert!(took <= limit + MARGIN, "closed late: {took:?}");
}

fn count() -> Query {
    Query::aggregate("units", [], [Aggregate::count()])
}

/// Waits until `connected` turns false, at most `limit`; returns how long it took.
async fn until_closed(connected: impl Fn() -> bool, limit: Duration) -> Duration {
    let started = Instant::now();
    while connected() && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_the_idle_limit_and_one_in_use_is_not() {
    let (m, server) = serve().await;
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            let chain = chain(&m, &m.orchestrator, "tower-a", 60);
            // In use, a call every quarter of the idle limit, for three idle limits: kept.
            let until = Instant::now() + 3 * IDLE;
            let mut last_answer = Instant::now();
            while Instant::now() < until {
                client.query(&chain, &count()).await.unwrap();
                last_answer = Instant::now();
                tokio::time::sleep(IDLE / 4).await;
            }
            assert!(client.is_connected(), "a connection in use was closed");
            // Then left alone: closed once the idle limit has passed since the last answer.
            until_closed(|| client.is_connected(), IDLE * 10).await;
            let took = last_answer.elapsed();
            assert!(!client.is_connected(), "still open after {took:?}");
            closed_at(took, IDLE);
            // The client learns it at its next call, at once, and a new connection answers.
            let error = client.query(&chain, &count()).await.unwrap_err();
            assert_eq!(error.code, "transport.disconnected", "{error}");
            let again = support::connect(&m, server.local_addr(), Limits::default()).await;
            again.query(&chain, &count()).await.unwrap();
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_peer_that_vanishes_mid_session_loses_its_connection_at_the_idle_limit() {
    let (m, server) = serve().await;
    // A real TLS session that then says nothing, and never closes: what the server holds for a
    // peer behind a partition.
    let mut silent =
        psp_rpc::client::dial(server.local_addr(), &m.orchestrator, m.totebox.public())
            .await
            .unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(IDLE * 10, silent.read(&mut byte)).await;
    let took = started.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the server closed the silent session: {read:?}"
    );
    closed_at(took, IDLE);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_message_that_trickles_is_cut_at_the_message_limit_though_bytes_keep_coming() {
    let (m, server) = serve().await;
    let stream = psp_rpc::client::dial(server.local_addr(), &m.orchestrator, m.totebox.public())
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    // A frame of one segment of 64 words, sent a byte every 50 ms: a byte arrives well within
    // every idle period, but the message would take 26 s.
    let mut frame = vec![0u8, 0, 0, 0, 64, 0, 0, 0];
    frame.extend(std::iter::repeat_n(0u8, 64 * 8));
    let started = Instant::now();
    let trickle = async {
        for byte in frame {
            if writer.write_all(&[byte]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut sink = [0u8; 64];
    let closed = async {
        loop {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    let took = tokio::select! {
        took = closed => took,
        () = trickle => panic!("the whole trickled frame was read"),
        () = tokio::time::sleep(MESSAGE * 10) => panic!("never closed"),
    };
    closed_at(took, MESSAGE);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_call_running_longer_than_the_idle_limit_keeps_its_connection() {
    let mut archive = MemoryArchive::new("tower-a");
    // Nothing crosses the link while the query runs.
    archive.scan_delay = IDLE * 3;
    let (m, server) = serve_with(archive, limits()).await;
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            let chain = chain(&m, &m.orchestrator, "tower-a", 60);
            let started = Instant::now();
            client.query(&chain, &count()).await.unwrap();
            assert!(started.elapsed() >= IDLE * 3);
            assert!(client.is_connected(), "closed while a call ran");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_peer_past_its_connection_cap_is_refused_until_one_of_its_connections_closes() {
    let capped = Limits {
        max_connections_per_peer: 2,
        ..limits()
    };
    let (m, server) = serve_with(MemoryArchive::new("tower-a"), capped).await;
    let address = server.local_addr();
    let dial = |who: &'static str| {
        let key = if who == "second" {
            &m.second_orchestrator
        } else {
            &m.orchestrator
        };
        ToteboxClient::connect(address, key, m.totebox.public(), Limits::default())
    };
    LocalSet::new()
        .run_until(async {
            let first = dial("first").await.unwrap();
            let _second = dial("first").await.unwrap();
            assert!(
                dial("first").await.is_err(),
                "a third connection was admitted"
            );
            // Another machine has a count of its own.
            let other = dial("second").await.unwrap();
            other
                .query(&chain(&m, &m.second_orchestrator, "tower-a", 60), &count())
                .await
                .unwrap();
            drop(first);
            let until = Instant::now() + Duration::from_secs(2);
            let again = loop {
                match dial("first").await {
                    Ok(client) => break client,
                    Err(e) if Instant::now() >= until => panic!("still refused: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            again
                .query(&chain(&m, &m.orchestrator, "tower-a", 60), &count())
                .await
                .unwrap();
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// The large messages of the budget test: 150 KiB (one segment of 19,200 words), each begun
/// with 100 KiB of body and never finished.
const LARGE_WORDS: u32 = 150 * 1024 / 8;
const LARGE_BEGUN: u64 = 100 * 1024;

/// Opens a raw TLS connection to the Totebox as `key` and begins one large message on it. The
/// connection stays open, the message unfinished, until the returned task is aborted.
async fn begin_large(
    server: &psp_rpc::runtime::ServerHandle,
    m: &support::Machines,
    key: &psp_core::IdentityKey,
) -> tokio::task::JoinHandle<()> {
    let stream = psp_rpc::client::dial(server.local_addr(), key, m.totebox.public())
        .await
        .unwrap();
    tokio::spawn(async move {
        let (reader, mut writer) = tokio::io::split(stream);
        let mut frame = vec![0u8, 0, 0, 0];
        frame.extend(LARGE_WORDS.to_le_bytes());
        frame.extend(std::iter::repeat_n(0u8, LARGE_BEGUN as usize));
        let sent = writer.write_all(&frame).await.is_ok() && writer.flush().await.is_ok();
        assert!(sent, "the server closed the connection");
        std::future::pending::<()>().await;
        drop((reader, writer));
    })
}

/// Asserts that the server goes on to read `more` bytes past what it had read at `from`
/// within 5 s: `what` names the read in the failure.
async fn reads_on(server: &psp_rpc::runtime::ServerHandle, from: u64, more: u64, what: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while server.bytes_received() < from + more && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let read = server.bytes_received() - from;
    assert!(
        read >= more,
        "{what}: only {read} of {more} bytes were read"
    );
}

#[tokio::test]
async fn a_peer_trickling_large_messages_on_many_connections_holds_at_most_its_byte_budget() {
    let budgeted = Limits {
        max_partial_bytes_per_peer: 200 * 1024,
        // Long enough that only the test ends the stalled messages.
        message_timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    let (m, server) = serve_with(MemoryArchive::new("tower-a"), budgeted).await;
    let base = server.bytes_received();
    let first = begin_large(&server, &m, &m.orchestrator).await;
    reads_on(&server, base, 8 + LARGE_BEGUN, "the first message").await;
    // The same peer's second large message would pass the budget: its table is read, its
    // body waits unread.
    let second = begin_large(&server, &m, &m.orchestrator).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = server.bytes_received() - base;
    assert!(
        held < 8 + LARGE_BEGUN + 8 + 4096,
        "the second message's body was read past the budget: {held} bytes"
    );
    // Its small calls never wait on its large messages, and another peer has a budget of
    // its own.
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            client
                .query(&chain(&m, &m.orchestrator, "tower-a", 60), &count())
                .await
                .unwrap();
        })
        .await;
    let from = server.bytes_received();
    let other = begin_large(&server, &m, &m.second_orchestrator).await;
    reads_on(&server, from, 8 + LARGE_BEGUN, "another peer's message").await;
    // The first message's connection goes: its room is given back, and the second message's
    // body is read.
    first.abort();
    let from = server.bytes_received();
    reads_on(
        &server,
        from,
        LARGE_BEGUN,
        "the second message, once room was given back",
    )
    .await;
    second.abort();
    other.abort();
    server.shutdown(Duration::from_secs(1)).await;
}
