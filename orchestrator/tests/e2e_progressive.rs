//! End to end with real processes: progressive results. A console follows a fan-out with
//! `FleetQuery.next` (the orchestrator never calls a console): with one source stalled, the
//! first update arrives before that source has ended, with the others' outcomes and figures,
//! and the final update is exactly what `view()` returns.

mod support;

use orchestrator::console::Options;
use orchestrator::fanout::SourceStatus;
use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, AggregateFunction, Query};
use psp_core::{IdentityKey, Operation};
use psp_rpc::limits::Limits;
use support::acme_tenant;
use support::faults::Fault;
use support::processes::Fleet;

#[test]
fn updates_arrive_before_a_stalled_source_ends_and_the_last_is_the_view() {
    let mut fleet = Fleet::start(3, 0);
    let stalled = fleet.behind_proxy(2);
    let ids = ["prop-01", "prop-02", "prop-03"];
    let acme = fleet.operator("acme", &ids, vec![Operation::Query]);
    let config = fleet.orchestrator_config("orchestrator.toml", &acme_tenant(acme.key, &ids));
    let orchestrator = fleet.serve(&config);
    let operator = IdentityKey::load(&fleet.path("acme.pem")).unwrap();
    let grant = fleet.grant(&operator, &ids, vec![Operation::Query]);
    let query = Query::aggregate(
        "statements",
        ["period"],
        [Aggregate::of(AggregateFunction::Sum, "noi").named("noi")],
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let console = orchestrator.connect(&operator, Limits::default()).await;
        // Warm, so the stall is the only thing that holds prop-03 up.
        console.query(&Selector::All, &grant, &query).await.unwrap();
        stalled.inject(Some(Fault::Stall));
        let in_flight = console
            .start_query(&Selector::All, &grant, &query, Options::default())
            .unwrap();

        let first = in_flight.next(0).await.unwrap();
        assert!(!first.done, "{first:?}");
        assert!(first.answered >= 1 && first.answered < 3, "{first:?}");
        assert_eq!(first.total, 3);
        let names: Vec<&str> = first
            .report
            .outcomes
            .iter()
            .map(|o| o.archive.as_str())
            .collect();
        assert!(
            !names.contains(&"prop-03"),
            "the stalled source has not ended: {names:?}"
        );
        assert!(
            first
                .report
                .outcomes
                .iter()
                .all(|o| o.status == SourceStatus::Ok)
        );
        assert!(!first.report.complete);
        let rows = first.report.table().unwrap().rows.len();
        assert!(rows > 0, "the figures so far are there");

        // Then until the end: each update has more sources than the last, the last is final.
        let mut after = first.answered;
        let last = loop {
            let update = in_flight.next(after).await.unwrap();
            if update.done {
                break update;
            }
            assert!(update.answered > after, "{update:?}");
            after = update.answered;
        };
        assert_eq!(last.answered, 3);
        let view = in_flight.report().await.unwrap();
        assert_eq!(last.report, view, "the final update is the view");
        let stalled_outcome = view
            .outcomes
            .iter()
            .find(|o| o.archive == "prop-03")
            .unwrap();
        assert_eq!(stalled_outcome.status, SourceStatus::TimedOut);
        // Asked again after the end, it answers the final view at once.
        assert_eq!(in_flight.next(3).await.unwrap().report, view);

        // A summary so far: each figure is judged against its own sources (the stalled one is
        // neither a source nor missing while it has not ended), and no source is listed twice.
        let viewport = console.viewport("executive-summary").await.unwrap();
        let in_flight = console
            .start_view(&Selector::All, &grant, &viewport, Options::default())
            .unwrap();
        let first = in_flight.next(0).await.unwrap();
        assert!(!first.done, "{first:?}");
        let orchestrator::report::Body::Summary(kpis) = &first.report.body else {
            panic!("{first:?}")
        };
        for kpi in kpis {
            assert!(
                !kpi.sources.contains(&"prop-03".to_owned())
                    && !kpi.missing.contains(&"prop-03".to_owned()),
                "{kpi:?}"
            );
        }
        let mut names: Vec<&str> = first
            .report
            .outcomes
            .iter()
            .map(|o| o.archive.as_str())
            .collect();
        let listed = names.len();
        names.dedup();
        assert_eq!(names.len(), listed, "{names:?}");
        assert!(first.answered <= first.total);

        // A console asking past the total gets no view so far: only the end answers it.
        let past = in_flight.next(u32::MAX).await.unwrap();
        assert!(past.done, "{past:?}");
        assert_eq!(past.report, in_flight.report().await.unwrap());
    });
}
