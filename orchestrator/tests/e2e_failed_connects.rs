//! End to end with an `orchestrator serve` process: a Totebox that completes TLS and then never
//! confirms the session (closes, refuses `identify`, hangs) costs the orchestrator nothing that
//! lasts. After 100 failed connects its file descriptors are back where they were, and it still
//! serves consoles; a session that hangs is shared by the requests that meet it and closed at
//! its handshake deadline, with no request needed to notice. The background dialer is off here,
//! so that each request makes a connect of its own (the dialer's connects take the same path).

mod support;

use std::time::{Duration, Instant};

use orchestrator::fanout::SourceStatus;
use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, Query};
use psp_core::{IdentityKey, Operation};
use psp_rpc::limits::Limits;
use support::hostile::{Misbehaviour, Rogue};
use support::processes::Fleet;
use tokio::task::LocalSet;

/// The process's open files once the count holds still for a quarter of a second (a busy
/// machine may be closing a socket at the moment of any one reading); at most five seconds.
async fn settled(process: &support::processes::Proc) -> usize {
    let until = Instant::now() + Duration::from_secs(5);
    let mut last = process.open_files();
    let mut steady = 0;
    while steady < 5 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = process.open_files();
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_connects_leave_no_file_descriptor_behind() {
    let fleet = Fleet::start(1, 0);
    let rogue = Rogue::start(
        fleet.orchestrator.public(),
        vec![Misbehaviour::Close, Misbehaviour::RefuseIdentify],
    )
    .await;
    let hung = Rogue::start(fleet.orchestrator.public(), vec![Misbehaviour::Hang]).await;
    let operator = IdentityKey::generate().unwrap();
    let config = fleet.path("orchestrator.toml");
    std::fs::write(
        &config,
        format!(
            "identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 200\ndeadline_ms = 500\nredial_ms = 0\n{}{}{}[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = [\"rogue\", \"hung\", \"prop-01\"]\nquotas = {{ concurrent_queries = 100, requests_per_minute = 100000 }}\n",
            fleet.fleet_toml(),
            rogue.fleet_toml("rogue", "entity = \"property\""),
            hung.fleet_toml("hung", "entity = \"property\""),
            operator.public()
        ),
    )
    .unwrap();
    let orchestrator = fleet.serve(&config);
    let grant = {
        let w = support::World {
            dir: tempfile::tempdir().unwrap(),
            toteboxes: Vec::new(),
            sources: Vec::new(),
            owner: fleet.owner.clone(),
            operator: operator.clone(),
            orchestrator: fleet.orchestrator.clone(),
        };
        support::grant(
            &w,
            &operator,
            &["rogue", "hung", "prop-01"],
            vec![Operation::Query],
        )
    };
    let count = Query::aggregate("statements", [], [Aggregate::count()]);
    let failing = Selector::Ids(vec!["prop-01".into(), "rogue".into()]);
    LocalSet::new()
        .run_until(async {
            let console = orchestrator.connect(&operator, Limits::default()).await;
            // Warm: the honest Totebox's pooled connection and everything else a request opens.
            let first = console.query(&failing, &grant, &count).await.unwrap();
            assert_eq!(first.outcomes[0].status, SourceStatus::Ok);
            let baseline = settled(&orchestrator.process).await;

            // One after another, so each is a connect of its own (concurrent requests would
            // share one dial).
            for attempt in 0..100 {
                let report = console.query(&failing, &grant, &count).await.unwrap();
                assert_eq!(
                    report.outcomes[0].status,
                    SourceStatus::Ok,
                    "attempt {attempt}"
                );
                assert!(
                    !matches!(report.outcomes[1].status, SourceStatus::Ok),
                    "{:?}",
                    report.outcomes[1]
                );
            }
            assert!(rogue.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 100);

            // Every failed session is closed: once the last closes have happened, the count is
            // back where it was.
            let now = settled(&orchestrator.process).await;
            assert!(
                now <= baseline,
                "file descriptors: {baseline} before 100 failed connects, {now} after"
            );
            // And the orchestrator still serves.
            let last = console.query(&failing, &grant, &count).await.unwrap();
            assert_eq!(last.outcomes[0].status, SourceStatus::Ok);

            // A Totebox that hangs after TLS: each request times out on it, sharing its one
            // pending session rather than opening one each.
            let stalled = Selector::Ids(vec!["hung".into()]);
            for _ in 0..3 {
                let report = console.query(&stalled, &grant, &count).await.unwrap();
                assert_eq!(report.outcomes[0].status, SourceStatus::TimedOut);
            }
            assert_eq!(hung.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
            // Past the handshake deadline (the server's default, 5 s) the session is closed,
            // with no request to notice it: watched for up to 5 s more.
            let until =
                Instant::now() + Limits::default().handshake_timeout + Duration::from_secs(5);
            let mut now = settled(&orchestrator.process).await;
            while now > baseline && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(200)).await;
                now = settled(&orchestrator.process).await;
            }
            assert!(
                now <= baseline,
                "file descriptors: {baseline} before, {now} after a hung session's deadline"
            );
            // The next request dials again.
            console.query(&stalled, &grant, &count).await.unwrap();
            assert_eq!(hung.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        })
        .await;
}
