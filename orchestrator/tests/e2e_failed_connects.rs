//! End to end with an `orchestrator serve` process: a Totebox that completes TLS and then never
//! confirms the session (closes, refuses `identify`, hangs) costs the orchestrator nothing that
//! lasts. After 100 failed connects its file descriptors are back where they were, and it still
//! serves consoles; a session that hangs is closed when the request that met it times out. The
//! background dialer is off here, so that each request makes a connect of its own (the dialer's
//! connects take the same path).

mod support;

use orchestrator::fanout::SourceStatus;
use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, Query};
use psp_core::{IdentityKey, Operation};
use psp_rpc::limits::Limits;
use support::hostile::{Misbehaviour, Rogue};
use support::processes::Fleet;
use tokio::task::LocalSet;

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
    let grant = fleet.grant(
        &operator,
        &["rogue", "hung", "prop-01"],
        vec![Operation::Query],
    );
    let count = Query::aggregate("statements", [], [Aggregate::count()]);
    let failing = Selector::Ids(vec!["prop-01".into(), "rogue".into()]);
    LocalSet::new()
        .run_until(async {
            let console = orchestrator.connect(&operator, Limits::default()).await;
            // Warm: the honest Totebox's pooled connection and everything else a request opens.
            let first = console.query(&failing, &grant, &count).await.unwrap();
            assert_eq!(first.outcomes[0].status, SourceStatus::Ok);
            let baseline = orchestrator.process.settled_files().await;

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
            let now = orchestrator.process.settled_files().await;
            assert!(
                now <= baseline,
                "file descriptors: {baseline} before 100 failed connects, {now} after"
            );
            // And the orchestrator still serves.
            let last = console.query(&failing, &grant, &count).await.unwrap();
            assert_eq!(last.outcomes[0].status, SourceStatus::Ok);

            // A Totebox that hangs after TLS: each request times out on it, and each timed-out
            // session is retired and closed at once (a stalled link is not queued behind).
            let stalled = Selector::Ids(vec!["hung".into()]);
            for _ in 0..3 {
                let report = console.query(&stalled, &grant, &count).await.unwrap();
                assert_eq!(report.outcomes[0].status, SourceStatus::TimedOut);
            }
            assert_eq!(hung.accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
            let now = orchestrator.process.settled_files().await;
            assert!(
                now <= baseline,
                "file descriptors: {baseline} before, {now} after three hung sessions"
            );
            // The next request dials again.
            console.query(&stalled, &grant, &count).await.unwrap();
            assert_eq!(hung.accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
        })
        .await;
}
