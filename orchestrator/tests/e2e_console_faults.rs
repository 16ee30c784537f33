//! Faults below the RPC layer between a console and a real `orchestrator serve`: the fault
//! proxy stalls (a partition: not even a close crosses), cuts mid-frame, resets, drips,
//! garbles, duplicates or leaves half-open the console's connection, at its next bytes (the
//! request, or the report coming back). Each time:
//!
//! * the console's call ends within its call timeout plus 100 ms, with a `transport.*` code
//!   (or `ok` when a duplicated report was read whole before its copy);
//! * a console whose link failed knows it: its next call fails at once instead of waiting
//!   behind the broken link, and a new connection answers;
//! * the orchestrator lets go of the connection (at its idle limit when the console vanished
//!   behind a partition), so its file descriptors, threads and memory return to where they were.

mod support;

use std::time::{Duration, Instant};

use orchestrator::console::Console;
use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, Query};
use psp_core::{IdentityKey, Operation};
use psp_rpc::limits::Limits;
use support::faults::{FAULTS, Fault, FaultProxy};
use support::processes::Fleet;
use tokio::task::LocalSet;

/// The console's call timeout here.
const CALL_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How late past its timeout a call may end.
const MARGIN: Duration = Duration::from_millis(100);
/// The orchestrator's idle limit here: how long it keeps a connection nobody uses (longer than
/// the console's call timeout, so the console is the first to give up on a stalled link).
const IDLE: Duration = Duration::from_millis(2_000);
/// Memory the orchestrator may keep after the faults (allocator caches, the pool's buffers);
/// a leaked connection's TLS and RPC buffers per fault would pass it within a few faults.
const MEMORY_SLACK_KIB: u64 = 4 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn each_fault_on_a_console_link_ends_that_call_alone_and_the_orchestrator_lets_go() {
    let fleet = Fleet::start(2, 0);
    let operator = IdentityKey::generate().unwrap();
    let config = fleet.acme_config(
        &format!("idle_ms = {}\n", IDLE.as_millis()),
        &operator.public(),
        &["prop-01", "prop-02"],
    );
    let orchestrator = fleet.serve(&config);
    let proxy = FaultProxy::start(orchestrator.address.parse().unwrap());
    let key = orchestrator.key.parse().unwrap();
    let limits = Limits {
        call_timeout: CALL_TIMEOUT,
        ..Limits::default()
    };
    let grant = fleet.grant(&operator, &["prop-01", "prop-02"], vec![Operation::Query]);
    let count = Query::aggregate("statements", [], [Aggregate::count()]);
    let both = Selector::Ids(vec!["prop-01".into(), "prop-02".into()]);
    let connect = || Console::connect(proxy.address, &operator, key, limits);
    LocalSet::new()
        .run_until(async {
            // Warm: the fleet connected, one console come and gone.
            let warm = {
                let console = connect().await.unwrap();
                console.query(&both, &grant, &count).await.unwrap()
            };
            assert!(warm.complete, "{:?}", warm.outcomes);
            wait_for(|| proxy.open_connections() == 0, Duration::from_secs(5)).await;
            let (files, threads, rss) = (
                orchestrator.process.settled_files().await,
                orchestrator.process.threads(),
                orchestrator.process.rss_kib(),
            );
            for fault in FAULTS {
                let console = connect().await.unwrap();
                proxy.inject(Some(fault));
                let started = Instant::now();
                // A second call, sent half a timeout later, waits on the same link: when the
                // first closes it, the second must end then too, not at its own timeout.
                let ((answer, took), second) = tokio::join!(
                    async {
                        let answer = console.query(&both, &grant, &count).await;
                        (answer, started.elapsed())
                    },
                    async {
                        tokio::time::sleep(CALL_TIMEOUT / 2).await;
                        let answer = console.query(&both, &grant, &count).await;
                        (answer, started.elapsed())
                    }
                );
                // The figures RELIABILITY.md quotes (`--nocapture`).
                let shown = answer.as_ref().map(|_| "ok").map_err(|e| e.to_string());
                eprintln!("{fault:?}: {shown:?} after {took:?}");
                let code = answer.as_ref().err().map(|e| e.code.clone());
                match fault {
                    // Nothing (or not enough) comes back: the call's timeout, and the link it
                    // waited on is closed.
                    Fault::Stall | Fault::SlowDrip | Fault::HalfOpen => {
                        assert_eq!(code.as_deref(), Some("transport.timeout"), "{fault:?}");
                        assert!(took >= CALL_TIMEOUT, "{fault:?}: {took:?}");
                        assert!(!console.is_connected(), "{fault:?}: the stuck link is kept");
                        let (answer, ended) = second;
                        assert!(answer.is_err(), "{fault:?}: the second call answered");
                        assert!(
                            ended <= CALL_TIMEOUT + MARGIN,
                            "{fault:?}: the second call ended at {ended:?}, after the link closed"
                        );
                    }
                    // The report may be read whole before its copy arrives (then it is right).
                    Fault::Duplicate if answer.is_ok() => {
                        assert_eq!(answer.as_ref().unwrap().body, warm.body)
                    }
                    // The link breaks, or TLS refuses what arrives: a transport error at once.
                    _ => assert!(
                        code.as_deref().is_some_and(|c| c.starts_with("transport.")),
                        "{fault:?}: {shown:?}"
                    ),
                }
                assert!(took <= CALL_TIMEOUT + MARGIN, "{fault:?}: took {took:?}");
                if answer.is_err() {
                    // The console knows its link is gone: the next call fails at once.
                    let closed = wait_for(|| !console.is_connected(), Duration::from_secs(1)).await;
                    assert!(closed, "{fault:?}: the console kept a broken link");
                    let again = Instant::now();
                    let next = console.query(&both, &grant, &count).await;
                    assert!(next.is_err(), "{fault:?}: a call on a broken link answered");
                    assert!(
                        again.elapsed() <= MARGIN,
                        "{fault:?}: {:?}",
                        again.elapsed()
                    );
                }
                drop(console);
                if fault == Fault::Stall {
                    // The console's close is kept from the orchestrator (the fault must stay
                    // until it has been): only the orchestrator's idle limit can end it now.
                    let withheld = wait_for(|| proxy.withheld_closes() >= 1, MARGIN * 10).await;
                    assert!(withheld, "the console's close crossed the partition");
                }

                // Cleared: a new connection answers, the same figures.
                proxy.inject(None);
                let fresh = connect().await.unwrap();
                let next = fresh.query(&both, &grant, &count).await.unwrap();
                assert!(next.complete, "{fault:?}: then {:?}", next.outcomes);
                assert_eq!(next.body, warm.body, "{fault:?}");
            }
            // Every connection is let go: the one a partition hid from the orchestrator at its
            // idle limit, the others at once. Its files, threads and memory are back.
            let closed = wait_for(|| proxy.open_connections() == 0, IDLE * 5).await;
            assert!(
                closed,
                "{} connections still open",
                proxy.open_connections()
            );
            assert!(orchestrator.process.settled_files().await <= files);
            assert_eq!(orchestrator.process.threads(), threads);
            let after = orchestrator.process.rss_kib();
            eprintln!("orchestrator RSS: {rss} KiB before the faults, {after} KiB after");
            assert!(after <= rss + MEMORY_SLACK_KIB, "{rss} KiB -> {after} KiB");
            assert_eq!(proxy.accepted(), 1 + 2 * FAULTS.len());
        })
        .await;
}

/// Polls `done` until it holds, at most `limit`; returns whether it held.
async fn wait_for(done: impl Fn() -> bool, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while !done() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}
