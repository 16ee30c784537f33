//! Faults below the RPC layer, between a real `orchestrator serve` and one of its Toteboxes: the
//! fault proxy stalls, cuts mid-frame, resets, drips, garbles, duplicates or leaves half-open the
//! pooled connection, at its next bytes (the request's call, or the answer to it). Each fault gives that source its outcome within its
//! timeout plus 100 ms (the other source answers), the next request dials afresh and answers,
//! and the orchestrator's file descriptors and threads are back where they were.

mod support;

use std::time::{Duration, Instant};

use orchestrator::fanout::SourceStatus;
use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, Query};
use psp_core::{IdentityKey, Operation};
use psp_rpc::limits::Limits;
use support::faults::{FAULTS, Fault};
use support::processes::Fleet;
use tokio::task::LocalSet;

/// The orchestrator's per-source timeout here.
const SOURCE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How late past its deadline a source's outcome may arrive.
const MARGIN: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread")]
async fn each_fault_on_a_totebox_link_ends_that_source_alone_and_the_next_request_reconnects() {
    // A Totebox whose orchestrator fell silent behind a stall (a partition: no close crosses)
    // closes the connection at its idle limit; short for the faulted one, so the test can wait
    // for it (the other keeps the default: its pooled link must outlive every pause here).
    let mut fleet = Fleet::start_with(2, 0, |i| {
        if i == 0 {
            "idle_seconds = 2\n".into()
        } else {
            String::new()
        }
    });
    let proxy = fleet.behind_proxy(0);
    let operator = IdentityKey::generate().unwrap();
    // No background dialer: every reconnect is the next request's own.
    let config = fleet.acme_config(
        &format!(
            "source_timeout_ms = {}\ndeadline_ms = 3000\nredial_ms = 0\n",
            SOURCE_TIMEOUT.as_millis()
        ),
        &operator.public(),
        &["prop-01", "prop-02"],
    );
    let orchestrator = fleet.serve(&config);
    let grant = fleet.grant(&operator, &["prop-01", "prop-02"], vec![Operation::Query]);
    let count = Query::aggregate("statements", [], [Aggregate::count()]);
    let both = Selector::Ids(vec!["prop-01".into(), "prop-02".into()]);
    LocalSet::new()
        .run_until(async {
            let console = orchestrator.connect(&operator, Limits::default()).await;
            let warm = console.query(&both, &grant, &count).await.unwrap();
            assert!(warm.complete, "{:?}", warm.outcomes);
            let (files, tasks) = (
                orchestrator.process.settled_files().await,
                orchestrator.process.threads(),
            );
            // Warm again (the wait for steady files may outlast the faulted Totebox's short
            // idle limit): the link the first fault meets is pooled now.
            let again = console.query(&both, &grant, &count).await.unwrap();
            assert!(again.complete, "{:?}", again.outcomes);
            let accepted = proxy.accepted();
            for fault in FAULTS {
                proxy.inject(Some(fault));
                let started = Instant::now();
                let report = console.query(&both, &grant, &count).await.unwrap();
                let took = started.elapsed();
                let status = &report.outcomes[0].status;
                // The figures RELIABILITY.md quotes (`--nocapture`).
                eprintln!(
                    "{fault:?}: {status:?} after {:?} (console: {took:?})",
                    report.outcomes[0].latency
                );
                match fault {
                    // Nothing (or not enough) arrives in time: the source's timeout.
                    Fault::Stall | Fault::SlowDrip | Fault::HalfOpen => {
                        assert_eq!(status, &SourceStatus::TimedOut, "{fault:?}")
                    }
                    // The answer may be read whole before its copy arrives: it is authentic
                    // and complete, so `ok` is right (the copy then breaks the link, which the
                    // redial count below checks). Otherwise TLS refuses the copy mid-answer.
                    Fault::Duplicate => assert!(
                        status == &SourceStatus::Ok
                            || matches!(status, SourceStatus::Error(why) if why.starts_with("transport.")),
                        "{fault:?}: {status:?}"
                    ),
                    // The link breaks, or TLS refuses what arrives: a transport error at once.
                    _ => assert!(
                        matches!(status, SourceStatus::Error(why) if why.starts_with("transport.")),
                        "{fault:?}: {status:?}"
                    ),
                }
                // The source's end, as the orchestrator timed it; the console's wall clock
                // adds the request's own round trip and the merge.
                let latency = report.outcomes[0].latency;
                assert!(
                    latency <= SOURCE_TIMEOUT + MARGIN,
                    "{fault:?}: the outcome took {latency:?}"
                );
                assert!(
                    took <= SOURCE_TIMEOUT + Duration::from_secs(1),
                    "{fault:?}: {took:?}"
                );
                assert_eq!(report.outcomes[1].status, SourceStatus::Ok, "{fault:?}");
                if fault == Fault::Stall {
                    // The orchestrator retired the stalled connection and closed it; the close
                    // is kept from the Totebox (the fault must stay until it has been), so only
                    // the Totebox's idle limit can end it.
                    let until = Instant::now() + Duration::from_secs(1);
                    while proxy.withheld_closes() == 0 && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    assert_eq!(proxy.withheld_closes(), 1, "the close crossed the partition");
                }

                // Cleared: the very next request dials afresh and answers.
                proxy.inject(None);
                let next = console.query(&both, &grant, &count).await.unwrap();
                assert!(next.complete, "{fault:?}: then {:?}", next.outcomes);
                assert_eq!(next.body, warm.body, "{fault:?}");
            }
            // Every faulted connection is closed: the proxy holds only the live one, and the
            // orchestrator's files and threads are back where they were.
            let until = Instant::now() + Duration::from_secs(5);
            while proxy.open_connections() > 1 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(proxy.open_connections(), 1);
            // One per fault: each faulted link was replaced once.
            assert_eq!(proxy.accepted(), accepted + FAULTS.len());
            assert!(orchestrator.process.settled_files().await <= files);
            assert_eq!(orchestrator.process.threads(), tasks);
        })
        .await;
}
