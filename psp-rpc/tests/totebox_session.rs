//! A Totebox over real TLS on 127.0.0.1: pipelined queries, capability checks against the TLS
//! peer, expiry, commands, refusals with clear errors, limits and graceful shutdown.

mod support;

use std::time::{Duration, Instant};

use psp_core::query::{Aggregate, AggregateFunction, Query, Value};
use psp_core::{
    ArchiveSet, Chain, Grant, Operation, Scope, Verifier, Window, capability::VerifyPolicy,
};
use psp_rpc::client::{CommandSpec, ConnectError, ToteboxClient};
use psp_rpc::limits::Limits;
use support::{MemoryArchive, chain, machines, start};
use tokio::task::LocalSet;

fn rent_by_floor() -> Query {
    Query::aggregate(
        "units",
        ["floor"],
        [
            Aggregate::count(),
            Aggregate::of(AggregateFunction::Sum, "rent"),
        ],
    )
    .order_by("floor", false)
}

#[tokio::test]
async fn a_pipelined_query_answers_through_the_exposure_policy() {
    let m = machines();
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            assert_eq!(client.identity().expect("confirmed").archive, "tower-a");
            let query = rent_by_floor();
            let result = client
                .query(&chain(&m, &m.orchestrator, "tower-a", 60), &query)
                .await
                .unwrap();
            let table = result.finalize(&query).unwrap();
            assert_eq!(table.rows.len(), 3);
            assert_eq!(table.rows[0][1], Value::Int(4));
            // Projecting an aggregate-only field is refused by the Totebox, with its code.
            let error = client
                .query(
                    &chain(&m, &m.orchestrator, "tower-a", 60),
                    &Query::rows("units", ["rent"]),
                )
                .await
                .unwrap_err();
            assert_eq!(error.code, "policy.aggregate-only");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_chain_replayed_from_another_paired_machine_is_refused() {
    let m = machines();
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    LocalSet::new()
        .run_until(async {
            let stolen = chain(&m, &m.orchestrator, "tower-a", 60);
            let thief = ToteboxClient::connect(
                server.local_addr(),
                &m.second_orchestrator,
                m.totebox.public(),
                Limits::default(),
            )
            .await
            .unwrap();
            let error = thief.query(&stolen, &rent_by_floor()).await.unwrap_err();
            assert_eq!(error.code, "capability.wrong-holder", "{error}");
            // The rightful holder is served.
            let owner = support::connect(&m, server.local_addr(), Limits::default()).await;
            owner.query(&stolen, &rent_by_floor()).await.unwrap();
            // A chain for another archive is refused here too.
            let elsewhere = chain(&m, &m.orchestrator, "tower-b", 60);
            assert_eq!(
                owner
                    .query(&elsewhere, &rent_by_floor())
                    .await
                    .unwrap_err()
                    .code,
                "capability.archive-not-in-scope"
            );
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_session_is_refused_once_its_window_has_passed() {
    let m = machines();
    let strict = Verifier::new([m.owner.public()]).with_policy(VerifyPolicy {
        clock_skew: 0,
        ..VerifyPolicy::default()
    });
    let (server, _) = start(&m, MemoryArchive::new("tower-a"), strict, Limits::default()).await;
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            let now = psp_core::window::now();
            let short = psp_core::Chain::mint(
                &m.owner,
                psp_core::Grant {
                    holder: m.orchestrator.public(),
                    archives: psp_core::ArchiveSet::of_ids(["tower-a"]),
                    scope: psp_core::Scope::everything(vec![psp_core::Operation::Query]),
                    window: psp_core::Window::new(now - 1, now + 2).unwrap(),
                },
            )
            .unwrap();
            let session = client.open(&short).await.unwrap();
            session.query(&rent_by_floor()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2_100)).await;
            let error = session.query(&rent_by_floor()).await.unwrap_err();
            assert_eq!(error.code, "capability.expired", "{error}");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_unpaired_machine_is_told_so_at_connect() {
    let m = machines();
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    LocalSet::new()
        .run_until(async {
            let error = ToteboxClient::connect(
                server.local_addr(),
                &m.stranger,
                m.totebox.public(),
                Limits::default(),
            )
            .await
            .unwrap_err();
            assert!(matches!(error, ConnectError::NotPaired { .. }), "{error}");
            let text = error.to_string();
            assert!(
                text.contains("does not know key")
                    && text.contains(&m.stranger.public().to_string()),
                "{text}"
            );
            // And a client that pinned another key refuses this server.
            let error = ToteboxClient::connect(
                server.local_addr(),
                &m.orchestrator,
                m.stranger.public(),
                Limits::default(),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(error, ConnectError::UnknownServer { .. }),
                "{error}"
            );
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn commands_are_applied_once_per_key() {
    let m = machines();
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            let ping = CommandSpec {
                name: "ping".into(),
                collection: String::new(),
                idempotency_key: b"0123456789abcdef".to_vec(),
                arguments: Vec::new(),
            };
            let chain = chain(&m, &m.orchestrator, "tower-a", 60);
            assert!(client.command(&chain, &ping).await.unwrap().applied);
            assert!(
                !client.command(&chain, &ping).await.unwrap().applied,
                "the retry is a replay"
            );
            let seal = CommandSpec {
                name: "seal".into(),
                ..ping.clone()
            };
            assert_eq!(
                client.command(&chain, &seal).await.unwrap_err().code,
                "capability.operation-not-in-scope"
            );
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_without_harming_other_connections() {
    let m = machines();
    let limits = Limits {
        max_message_words: 4_096,
        ..Limits::default()
    };
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        limits,
    )
    .await;
    LocalSet::new()
        .run_until(async {
            let bystander = ToteboxClient::connect(
                server.local_addr(),
                &m.second_orchestrator,
                m.totebox.public(),
                Limits::default(),
            )
            .await
            .unwrap();
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            let huge = Query::rows("units", ["unit"]).filter(psp_core::query::Filter::In {
                field: "unit".into(),
                values: (0..4_000)
                    .map(|i| Value::from(format!("unit number {i} with a long name").as_str()))
                    .collect(),
            });
            let error = client
                .query(&chain(&m, &m.orchestrator, "tower-a", 60), &huge)
                .await
                .unwrap_err();
            // Told why, not reset: the documented code.
            assert_eq!(error.code, "limit.message", "{error}");
            bystander
                .query(
                    &chain(&m, &m.second_orchestrator, "tower-a", 60),
                    &rent_by_floor(),
                )
                .await
                .unwrap();
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_lets_a_running_query_finish_and_refuses_new_work() {
    let m = machines();
    let mut slow = MemoryArchive::new("tower-a");
    slow.scan_delay = Duration::from_millis(600);
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
            let client = support::connect(&m, address, Limits::default()).await;
            let chain = chain(&m, &m.orchestrator, "tower-a", 60);
            let query = rent_by_floor();
            let running = client.query(&chain, &query);
            let stopping = async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let started = Instant::now();
                server.shutdown(Duration::from_secs(5)).await;
                started.elapsed()
            };
            let (answer, took) = tokio::join!(running, stopping);
            answer.expect("the query running at shutdown still gets its answer");
            assert!(
                took < Duration::from_secs(5),
                "shutdown waited only for the running call: {took:?}"
            );
            let refused = ToteboxClient::connect(
                address,
                &m.orchestrator,
                m.totebox.public(),
                Limits::default(),
            )
            .await;
            assert!(refused.is_err(), "no new connections after shutdown");
        })
        .await;
}

#[tokio::test]
async fn calls_past_the_in_flight_limit_are_refused_not_queued() {
    let m = machines();
    let mut slow = MemoryArchive::new("tower-a");
    slow.scan_delay = Duration::from_millis(400);
    let limits = Limits {
        max_calls_in_flight: 1,
        ..Limits::default()
    };
    let (server, _) = start(&m, slow, Verifier::new([m.owner.public()]), limits).await;
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            let session = client
                .open(&chain(&m, &m.orchestrator, "tower-a", 60))
                .await
                .unwrap();
            let query = rent_by_floor();
            let (first, second) = tokio::join!(session.query(&query), async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                session.query(&query).await
            });
            first.unwrap();
            assert_eq!(second.unwrap_err().code, "limit.calls-in-flight");
            session
                .query(&query)
                .await
                .expect("served again once the first call is done");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_client_redials_until_the_totebox_comes_up() {
    let m = machines();
    // Reserve a port, then start the Totebox on it only after the client began dialing.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    LocalSet::new()
        .run_until(async {
            let dialing = ToteboxClient::connect_with_backoff(
                port,
                &m.orchestrator,
                m.totebox.public(),
                Limits::default(),
                psp_rpc::client::Backoff::new(
                    Duration::from_millis(20),
                    Duration::from_millis(200),
                ),
                Duration::from_secs(10),
            );
            let starting = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let service = psp_rpc::totebox_server::ToteboxService::new(
                    std::sync::Arc::new(MemoryArchive::new("tower-a")),
                    Verifier::new([m.owner.public()]),
                    Limits::default(),
                );
                let config = psp_rpc::tls::server_config(
                    &m.totebox,
                    psp_rpc::tls::PairedKeys::new([m.orchestrator.public()]),
                )
                .unwrap();
                let listener = tokio::net::TcpListener::bind(port).await.unwrap();
                psp_rpc::runtime::serve(
                    listener,
                    config,
                    service.bootstrap_factory(),
                    Limits::default(),
                )
                .unwrap()
            };
            let (client, server) = tokio::join!(dialing, starting);
            assert_eq!(
                client.unwrap().identity().expect("confirmed").archive,
                "tower-a"
            );
            // A refusal is not retried: it fails at once, long before the deadline.
            let started = Instant::now();
            let refused = ToteboxClient::connect_with_backoff(
                server.local_addr(),
                &m.stranger,
                m.totebox.public(),
                Limits::default(),
                psp_rpc::client::Backoff::new(
                    Duration::from_millis(20),
                    Duration::from_millis(200),
                ),
                Duration::from_secs(10),
            )
            .await;
            assert!(matches!(refused, Err(ConnectError::NotPaired { .. })));
            assert!(started.elapsed() < Duration::from_secs(2));
            server.shutdown(Duration::from_secs(1)).await;
        })
        .await;
}

#[tokio::test]
async fn a_peer_that_never_completes_the_handshake_is_dropped_at_the_deadline() {
    let m = machines();
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        limits,
    )
    .await;
    let mut silent = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut silent, &mut byte),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the server closed the silent connection: {read:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the deadline: {:?}",
        started.elapsed()
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_twenty_megabyte_message_gets_the_documented_error_not_a_reset() {
    let m = machines();
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    LocalSet::new()
        .run_until(async {
            let client = support::connect(&m, server.local_addr(), Limits::default()).await;
            // 4,000 values of 5,000 bytes: about 20 MB, over the default 16 MiB.
            let padding = "x".repeat(5_000);
            let huge = Query::rows("units", ["unit"]).filter(psp_core::query::Filter::In {
                field: "unit".into(),
                values: (0..4_000)
                    .map(|i| Value::from(format!("{i}{padding}").as_str()))
                    .collect(),
            });
            let error = client
                .query(&chain(&m, &m.orchestrator, "tower-a", 60), &huge)
                .await
                .unwrap_err();
            assert_eq!(error.code, "limit.message", "{error}");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// `as_machine`'s session with the test Totebox, dialed as the one serving `archive`, with its
/// first call sent beside `identify`.
async fn serving(
    m: &support::Machines,
    server: &psp_rpc::runtime::ServerHandle,
    as_machine: &psp_core::IdentityKey,
    archive: &str,
) -> ToteboxClient {
    ToteboxClient::connect_serving(
        server.local_addr(),
        as_machine,
        m.totebox.public(),
        archive,
        Limits::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_pipelined_session_that_fails_its_confirmation_answers_nothing() {
    let m = machines();
    let (server, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    LocalSet::new()
        .run_until(async {
            let query = rent_by_floor();
            // A machine the Totebox is not paired with: TLS comes up, the first query is refused
            // with the confirmation's reason, and the connection counts as down.
            let stranger = serving(&m, &server, &m.stranger, "tower-a").await;
            let error = stranger
                .query(&chain(&m, &m.stranger, "tower-a", 60), &query)
                .await
                .unwrap_err();
            assert_eq!(error.code, "transport.not-paired", "{error}");
            assert!(!stranger.is_connected());
            assert!(matches!(
                stranger.confirmation_error(),
                Some(ConnectError::NotPaired { .. })
            ));

            // Dialed as another archive's Totebox (a config pointing at the wrong machine): the
            // Totebox would answer a chain that reaches any archive, but the answer is not used.
            let misdialed = serving(&m, &server, &m.orchestrator, "tower-b").await;
            let anywhere = Chain::mint(
                &m.owner,
                Grant {
                    holder: m.orchestrator.public(),
                    archives: ArchiveSet::Any,
                    scope: Scope::everything(vec![Operation::Query]),
                    window: Window::lasting(psp_core::window::now() - 5, 65),
                },
            )
            .unwrap();
            let error = misdialed.query(&anywhere, &query).await.unwrap_err();
            assert_eq!(error.code, "transport.wrong-archive", "{error}");
            assert!(error.message.contains("tower-b"), "{error}");
            assert!(!misdialed.is_connected());
            // Every later call gives the same answer, and nothing more is sent. (What the first
            // call's end still sends, a `Finish` racing the session's close, is let arrive
            // first: the count is taken once it stays put.)
            let mut received = server.bytes_received();
            for _ in 0..40 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let now = server.bytes_received();
                if now == received {
                    break;
                }
                received = now;
            }
            let again = misdialed.query(&anywhere, &query).await.unwrap_err();
            assert_eq!(again.code, "transport.wrong-archive");
            assert_eq!(server.bytes_received(), received);

            // A command waits for the confirmation on a fresh session: the misdialed machine
            // never applies it. Sent again with the same key to the right archive, it is applied
            // there for the first time (not replayed).
            let ping = CommandSpec {
                name: "ping".into(),
                collection: String::new(),
                idempotency_key: b"misdialed-ping-0001".to_vec(),
                arguments: Vec::new(),
            };
            let commands_anywhere = Chain::mint(
                &m.owner,
                Grant {
                    holder: m.orchestrator.public(),
                    archives: ArchiveSet::Any,
                    scope: Scope::everything(vec![Operation::command("ping")]),
                    window: Window::lasting(psp_core::window::now() - 5, 65),
                },
            )
            .unwrap();
            let misdialed = serving(&m, &server, &m.orchestrator, "tower-b").await;
            let error = misdialed
                .command(&commands_anywhere, &ping)
                .await
                .unwrap_err();
            assert_eq!(error.code, "transport.wrong-archive", "{error}");
            let right = serving(&m, &server, &m.orchestrator, "tower-a").await;
            let answer = right.command(&commands_anywhere, &ping).await.unwrap();
            assert!(
                answer.applied,
                "the misdialed session applied it: {answer:?}"
            );
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_session_never_confirmed_closes_at_its_deadline_unasked() {
    let m = machines();
    // Completes TLS, then reads and never answers; says when its peer closed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = psp_rpc::tls::server_config(
        &m.totebox,
        psp_rpc::tls::PairedKeys::new([m.orchestrator.public()]),
    )
    .unwrap();
    let (closed, mut peer_closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = tokio_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .unwrap();
        let mut sink = [0u8; 1024];
        while matches!(
            tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await,
            Ok(n) if n > 0
        ) {}
        let _ = closed.send(());
    });
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    LocalSet::new()
        .run_until(async {
            let client = ToteboxClient::connect_serving(
                address,
                &m.orchestrator,
                m.totebox.public(),
                "tower-a",
                limits,
            )
            .await
            .unwrap();
            assert!(client.is_connected(), "pending, not failed");
            // Nobody calls or waits on it: past the deadline it is down and its socket closed.
            let closed = tokio::time::timeout(Duration::from_secs(3), &mut peer_closed).await;
            assert!(closed.is_ok(), "the socket stayed open past the deadline");
            assert!(!client.is_connected());
            assert!(matches!(
                client.confirmation_error(),
                Some(ConnectError::Timeout { .. })
            ));
        })
        .await;
}
