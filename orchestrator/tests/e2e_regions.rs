//! Regions, simulated: three regional orchestrators, each behind a delay proxy 40 ms (round
//! trip) from the orchestrator above them, each over its share of 102 Totebox processes 1 ms
//! away. One query through the tree costs one round trip on each link it uses, counted at the
//! proxies (so its wall time is one top round trip plus one regional one, plus the work); its
//! answers equal the flat fleet's; a region whose orchestrator is dead is reported archive by
//! archive.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psp_core::query::{Aggregate, AggregateFunction, Query};
use psp_core::{Chain, IdentityKey};
use psp_rpc::delay_proxy::DelayProxy;
use psp_rpc::limits::Limits;
use support::processes::{Fleet, statuses};
use support::tree::Tree;

/// Between the top and a region: 40 ms round trip.
const TOP_ONE_WAY: Duration = Duration::from_millis(20);
/// Inside a region: 1 ms round trip.
const REGION_ONE_WAY: Duration = Duration::from_micros(500);

#[test]
fn three_regions_answer_in_one_round_trip_per_link_and_exactly_as_the_flat_fleet() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let keys: Vec<IdentityKey> = (0..3).map(|_| IdentityKey::generate().unwrap()).collect();
    let mut fleet = Fleet::start_paired(
        99,
        3,
        |_| String::new(),
        &keys.iter().map(IdentityKey::public).collect::<Vec<_>>(),
    );
    // Each Totebox 1 ms from whoever dials it (its region, and the flat orchestrator).
    let inside: Vec<DelayProxy> = fleet
        .toteboxes
        .iter_mut()
        .map(|t| {
            let proxy = runtime
                .block_on(DelayProxy::start(
                    t.address.parse().unwrap(),
                    REGION_ONE_WAY,
                ))
                .unwrap();
            t.address = proxy.local_addr().to_string();
            proxy
        })
        .collect();
    let above: Arc<Mutex<Vec<DelayProxy>>> = Arc::default();
    let (handle, sink) = (runtime.handle().clone(), above.clone());
    let tree = Tree::over(
        fleet,
        keys,
        // No keepalive ping inside the few seconds round trips are counted in.
        "redial_ms = 600000",
        Box::new(move |_, real| {
            let proxy = handle
                .block_on(DelayProxy::start(real.parse().unwrap(), TOP_ONE_WAY))
                .unwrap();
            let address = proxy.local_addr().to_string();
            sink.lock().unwrap().push(proxy);
            address
        }),
    );
    let (fleet, acme) = (&tree.fleet, &tree.acme);
    assert_eq!(tree.members.iter().map(Vec::len).sum::<usize>(), 102);

    // Exact: every view through the tree is the flat fleet's.
    for args in [
        vec!["view", "--name", "noi-by-region"],
        vec!["view", "--name", "intercompany"],
        vec!["view", "--name", "executive-summary"],
    ] {
        let flat = tree.flat.json(fleet, acme, &args);
        let through = tree.top.json(fleet, acme, &args);
        for kind in ["table", "reconciliation"] {
            assert_eq!(through[kind], flat[kind], "{args:?}");
        }
        if let Some(kpis) = flat["summary"]["kpis"].as_array() {
            for (a, b) in kpis
                .iter()
                .zip(through["summary"]["kpis"].as_array().unwrap())
            {
                assert_eq!(a["value"], b["value"], "{}", a["name"]);
            }
        }
        assert_eq!(statuses(&through).len(), 102);
    }
    // One query from a console already connected: one round trip on each link.
    let operator = IdentityKey::load(&tree.path("acme.pem")).unwrap();
    let grant = Chain::from_bytes(&std::fs::read(tree.path("acme.cap")).unwrap()).unwrap();
    let query = Query::aggregate(
        "statements",
        ["period"],
        [Aggregate::of(AggregateFunction::Sum, "noi").named("noi")],
    );
    let selector = orchestrator::selection::Selector::Labels(
        [("entity".to_owned(), "property".to_owned())].into(),
    );
    let local = tokio::task::LocalSet::new();
    // The warm query's wall time at `orchestrator`, after `before` (with `reset` between).
    let timed = |orchestrator: &support::processes::Orchestrator, before: &dyn Fn()| {
        local.block_on(&runtime, async {
            let console = orchestrator.connect(&operator, Limits::default()).await;
            // Warm: every link is up and every region's directory known.
            console.query(&selector, &grant, &query).await.unwrap();
            before();
            let started = Instant::now();
            let report = console.query(&selector, &grant, &query).await.unwrap();
            (started.elapsed(), report)
        })
    };
    let (flat_wall, _) = timed(&tree.flat, &|| {});
    // Nothing else dials the Toteboxes while round trips are counted.
    let mut tree = tree;
    tree.flat.process.kill();
    let (wall, report) = timed(&tree.top, &|| {
        for proxy in above.lock().unwrap().iter().chain(&inside) {
            proxy.reset();
        }
    });
    assert!(report.complete, "{:?}", report.outcomes);
    assert_eq!(report.outcomes.len(), 99);
    let top_trips: Vec<usize> = above
        .lock()
        .unwrap()
        .iter()
        .map(DelayProxy::round_trips)
        .collect();
    assert_eq!(top_trips, vec![1, 1, 1], "one round trip to each region");
    let region_trips: Vec<usize> = inside.iter().map(DelayProxy::round_trips).collect();
    assert_eq!(
        region_trips.iter().filter(|&&n| n == 1).count(),
        99,
        "one round trip to each property's Totebox: {region_trips:?}"
    );
    assert_eq!(region_trips.iter().sum::<usize>(), 99, "{region_trips:?}");
    println!(
        "regions: one warm query over 99 archives took {:.1} ms through 3 regions 40 ms away, \
         {:.1} ms from one flat orchestrator (each Totebox 1 ms away in both)",
        wall.as_secs_f64() * 1e3,
        flat_wall.as_secs_f64() * 1e3
    );

    // A dead region: each of its archives is reported, by path; the others still answer.
    drop(tree.regions[2].take());
    let report = tree.top.json(
        &tree.fleet,
        &tree.acme,
        &["view", "--name", "noi-by-region"],
    );
    assert_eq!(report["complete"], false);
    let outcomes = statuses(&report);
    assert_eq!(outcomes.len(), 102);
    for (name, status) in &outcomes {
        let dead = name.starts_with("region-2/");
        assert_eq!(
            status != "ok",
            dead || name.contains("/sub-"),
            "{name}: {status}"
        );
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|(n, _)| n.starts_with("region-2/"))
            .count(),
        34
    );
}
