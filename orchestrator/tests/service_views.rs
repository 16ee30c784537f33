//! Every viewport through the console protocol: config-defined viewports fetched by name,
//! reconciliations and executive summaries computed by the orchestrator, checked against the
//! library computing the same over the same Toteboxes; bad viewports refused; a summary that
//! is missing a source says so.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use orchestrator::config::{Config, Partial};
use orchestrator::console::Options;
use orchestrator::fanout::{FanOutLimits, Fleet, SourceStatus};
use orchestrator::report::Body;
use orchestrator::selection::Selector;
use orchestrator::spec::QuerySpec;
use orchestrator::viewports::{Kpi, MatchStatus, NamedViewport, Viewport};
use psp_core::Operation;
use psp_core::query::Value;
use psp_rpc::limits::Limits;
use support::{World, console, delegated_for, fleet_toml, serve, world_of};
use tokio::task::LocalSet;

fn config(w: &World) -> Config {
    Config::parse(&format!(
        "identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 2000\ndeadline_ms = 4000\n{}[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\nselectors = [{{ portfolio = \"core\" }}, {{ portfolio = \"value-add\" }}, {{ portfolio = \"holding\" }}]\n{}",
        fleet_toml(w),
        w.operator.public(),
        orchestrator::demo::VIEWPORTS
    ))
    .unwrap()
}

fn label(k: &str, v: &str) -> Selector {
    Selector::Labels([(k.to_owned(), v.to_owned())].into())
}

fn everything(w: &World) -> psp_core::Chain {
    let ids: Vec<&str> = w.sources.iter().map(|s| s.archive.as_str()).collect();
    delegated_for(w, &w.operator, &ids, vec![Operation::Query])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_reconciliation_through_the_console_equals_the_librarys() {
    let w = world_of(2, 4).await;
    let config = config(&w);
    let (server, _) = serve(&w, &config).await;
    let chain = everything(&w);
    LocalSet::new()
        .run_until(async {
            let console = console(server.local_addr(), &w, &w.operator).await;
            let viewport = console.viewport("intercompany").await.unwrap();
            assert_eq!(
                &viewport,
                config
                    .viewports
                    .iter()
                    .find(|v| v.name == "intercompany")
                    .unwrap()
            );
            let report = console
                .view(&label("entity", "subsidiary"), &chain, &viewport)
                .await
                .unwrap();
            assert!(report.complete);
            assert_eq!(report.outcomes.len(), 4);
            let Body::Reconciliation(entries) = &report.body else {
                panic!("not a reconciliation: {:?}", report.body)
            };
            assert_eq!(
                entries.len(),
                6 * 24,
                "every pair of four subsidiaries, every month"
            );
            let matched = entries
                .iter()
                .filter(|e| e.status == MatchStatus::Matched)
                .count();
            assert!(matched * 100 >= entries.len() * 85, "{matched} matched");
            assert!(entries.iter().any(|e| e.status == MatchStatus::Mismatched));

            // The same computed by the library over the same Toteboxes.
            let Viewport::Reconciliation(spec) = &viewport.viewport else {
                unreachable!()
            };
            let fleet = Fleet::start(w.orchestrator.clone(), Limits::default());
            let subs: Vec<_> = w
                .sources
                .iter()
                .filter(|s| s.archive.starts_with("sub-"))
                .cloned()
                .collect();
            let limits = FanOutLimits {
                source_timeout: Duration::from_secs(2),
                deadline: Duration::from_secs(4),
                max_concurrency: 8,
                max_rows_per_source: 10_000,
                ..FanOutLimits::default()
            };
            let gathered = fleet.query(subs, &chain, spec.query(), limits).await;
            let books: BTreeMap<String, _> = gathered
                .outcomes
                .iter()
                .zip(gathered.results)
                .map(|(o, r)| {
                    (
                        o.archive.clone(),
                        r.unwrap().finalize(&spec.query()).unwrap(),
                    )
                })
                .collect();
            assert_eq!(entries, &spec.reconcile(&books, &BTreeSet::new()));
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_summary_gives_each_figure_its_sources_and_says_which_are_missing() {
    let mut w = world_of(3, 0).await;
    let config = config(&w);
    let (server, _) = serve(&w, &config).await;
    let chain = everything(&w);
    LocalSet::new()
        .run_until(async {
            let console = console(server.local_addr(), &w, &w.operator).await;
            let viewport = console.viewport("executive-summary").await.unwrap();
            let report = console
                .view(&Selector::All, &chain, &viewport)
                .await
                .unwrap();
            assert!(report.complete, "{:?}", report.outcomes);
            let Body::Summary(kpis) = &report.body else {
                panic!("{:?}", report.body)
            };
            assert_eq!(kpis.len(), 6);
            // Each figure equals the plain fleet query of its definition.
            let Viewport::Summary(defs) = &viewport.viewport else {
                unreachable!()
            };
            for (kpi, def) in kpis.iter().zip(defs) {
                let direct = console
                    .query(&Selector::All, &chain, &def.query)
                    .await
                    .unwrap();
                assert_eq!(
                    kpi.value,
                    direct.table().unwrap().rows[0][0],
                    "{}",
                    kpi.name
                );
                assert_eq!(kpi.sources, ["prop-01", "prop-02", "prop-03"]);
                assert!(kpi.missing.is_empty() && kpi.as_of_oldest > 0);
            }
        })
        .await;

    // prop-02 goes away: every figure names it missing; strict mode refuses to answer.
    w.toteboxes
        .remove(1)
        .shutdown(Duration::from_millis(100))
        .await;
    LocalSet::new()
        .run_until(async {
            let console = console(server.local_addr(), &w, &w.operator).await;
            let viewport = console.viewport("executive-summary").await.unwrap();
            let report = console
                .view(&Selector::All, &chain, &viewport)
                .await
                .unwrap();
            assert!(!report.complete);
            let Body::Summary(kpis) = &report.body else {
                panic!()
            };
            for kpi in kpis {
                assert_eq!(kpi.sources, ["prop-01", "prop-03"], "{}", kpi.name);
                assert_eq!(kpi.missing, ["prop-02"], "{}", kpi.name);
            }
            let down = report
                .outcomes
                .iter()
                .find(|o| o.archive == "prop-02")
                .unwrap();
            assert!(
                matches!(down.status, SourceStatus::Unreachable(_)),
                "{down:?}"
            );
            let strict = Options {
                partial: Some(Partial::Strict),
                ..Options::default()
            };
            let error = console
                .start_view(&Selector::All, &chain, &viewport, strict)
                .unwrap()
                .report()
                .await
                .unwrap_err();
            assert_eq!(error.code, "fanout.incomplete", "{error}");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn viewports_that_cannot_be_computed_are_refused_with_the_reason() {
    let w = world_of(1, 0).await;
    let (server, _) = serve(&w, &config(&w)).await;
    let chain = everything(&w);
    let query = |spec: QuerySpec| spec.to_query().unwrap();
    let rows = query(QuerySpec {
        collection: "statements".into(),
        fields: vec!["period".into()],
        ..QuerySpec::default()
    });
    let grouped = query(QuerySpec {
        collection: "statements".into(),
        group_by: vec!["period".into()],
        aggregates: vec!["sum(noi)".into()],
        ..QuerySpec::default()
    });
    let bad = [
        Viewport::Rollup {
            query: rows,
            labels: vec!["region".into()],
        },
        Viewport::Summary(vec![Kpi {
            name: "by period".into(),
            query: grouped,
            unit: String::new(),
        }]),
        Viewport::Summary(Vec::new()),
    ];
    LocalSet::new()
        .run_until(async {
            let console = console(server.local_addr(), &w, &w.operator).await;
            for viewport in bad {
                let named = NamedViewport {
                    name: "bad".into(),
                    viewport,
                };
                let error = console
                    .view(&Selector::All, &chain, &named)
                    .await
                    .unwrap_err();
                assert_eq!(error.code, "viewport.invalid", "{error}");
            }
            let error = console.viewport("no-such-view").await.unwrap_err();
            assert_eq!(error.code, "viewport.unknown", "{error}");
            assert!(error.message.contains("noi-by-region"), "{error}");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollup_from_the_config_groups_by_region_and_sums_exactly() {
    let w = world_of(4, 1).await;
    let (server, _) = serve(&w, &config(&w)).await;
    let chain = everything(&w);
    LocalSet::new()
        .run_until(async {
            let console = console(server.local_addr(), &w, &w.operator).await;
            let viewport = console.viewport("noi-by-region").await.unwrap();
            let by_region = console
                .view(&label("entity", "property"), &chain, &viewport)
                .await
                .unwrap();
            let table = by_region.table().unwrap();
            assert_eq!(table.columns[0].name, "region");
            assert_eq!(table.rows.len(), 4, "four properties in four regions");
            // Ordered by NOI, descending, after the merge.
            let noi: Vec<&Value> = table.rows.iter().map(|r| &r[2]).collect();
            assert!(noi.windows(2).all(|p| p[0] >= p[1]), "{noi:?}");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}
