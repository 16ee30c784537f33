//! Fan-out over a real fleet (generated property archives served over real TLS): exact merges,
//! one outcome per source, dead and slow sources reported within the deadline, never a hang.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use orchestrator::fanout::{FanOutLimits, Fleet, Source, SourceStatus, Watch, Work};
use psp_core::query::{Aggregate, AggregateFunction, Merger, Query, QueryResult, Value};
use support::{chain, world};

mod support;
use psp_rpc::delay_proxy::DelayProxy;
use psp_rpc::limits::Limits;

fn limits() -> FanOutLimits {
    FanOutLimits {
        source_timeout: Duration::from_millis(800),
        deadline: Duration::from_secs(2),
        max_concurrency: 8,
        max_rows_per_source: 10_000,
        ..FanOutLimits::default()
    }
}

fn noi() -> Query {
    Query::aggregate(
        "statements",
        [],
        [
            Aggregate::of(AggregateFunction::Sum, "noi"),
            Aggregate::count(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollup_merges_exactly_what_each_source_answered() {
    let w = world(3).await;
    let fleet = Fleet::start(w.orchestrator.clone(), Limits::default());
    let ids: Vec<&str> = w.sources.iter().map(|s| s.archive.as_str()).collect();
    let gathered = fleet
        .query(w.sources.clone(), &chain(&w, &ids), noi(), limits())
        .await;
    assert!(
        gathered
            .outcomes
            .iter()
            .all(|o| o.status == SourceStatus::Ok),
        "{:?}",
        gathered.outcomes
    );
    assert!(gathered.outcomes.iter().all(|o| o.as_of > 0 && o.rows == 1));
    let answers: Vec<QueryResult> = gathered.results.into_iter().map(Option::unwrap).collect();
    let one_by_one: Vec<Value> = answers
        .iter()
        .map(|r| r.finalize(&noi()).unwrap().rows[0][0].clone())
        .collect();
    let mut merger = Merger::new(&noi(), 10_000);
    for (i, answer) in answers.into_iter().enumerate() {
        merger.add(i, answer).unwrap();
    }
    let merged = merger.finish().table;
    let Value::Decimal(total) = &merged.rows[0][0] else {
        panic!("decimal NOI")
    };
    let expected = one_by_one.iter().fold(
        psp_core::query::Decimal::new(0, 2).unwrap(),
        |acc, v| match v {
            Value::Decimal(d) => acc.checked_add(d).unwrap(),
            other => panic!("{other:?}"),
        },
    );
    assert_eq!(*total, expected);
    assert_eq!(
        merged.rows[0][1],
        Value::Int(72),
        "24 months from each of 3 properties"
    );

    // The second request reuses the pooled connections: it needs no handshakes, and works.
    let again = fleet
        .query(w.sources.clone(), &chain(&w, &ids), noi(), limits())
        .await;
    assert!(again.outcomes.iter().all(|o| o.status == SourceStatus::Ok));
    for t in w.toteboxes {
        t.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_slow_and_refusing_sources_each_get_their_outcome_within_the_deadline() {
    let w = world(3).await;
    let fleet = Fleet::start(w.orchestrator.clone(), Limits::default());
    let mut sources = w.sources.clone();
    // prop-02 answers through a 2 s one-way delay: too slow for an 800 ms source timeout.
    let proxy = DelayProxy::start(sources[1].address, Duration::from_secs(2))
        .await
        .unwrap();
    sources[1].address = proxy.local_addr();
    // A fourth source nobody listens for.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    sources.push(Source {
        archive: "prop-99".into(),
        address: port,
        key: w.orchestrator.public(),
        member: Default::default(),
    });
    // The chain leaves prop-03 out: its Totebox refuses with the failed rule.
    let chain = chain(&w, &["prop-01", "prop-02", "prop-99"]);

    let started = Instant::now();
    let gathered = fleet.query(sources, &chain, noi(), limits()).await;
    let took = started.elapsed();
    let status: Vec<(String, SourceStatus)> = gathered
        .outcomes
        .iter()
        .map(|o| (o.archive.clone(), o.status.clone()))
        .collect();
    assert_eq!(status[0], ("prop-01".into(), SourceStatus::Ok));
    assert_eq!(status[1], ("prop-02".into(), SourceStatus::TimedOut));
    assert!(
        matches!(&status[2].1, SourceStatus::Denied { code, .. } if code == "capability.archive-not-in-scope"),
        "{status:?}"
    );
    assert!(
        matches!(&status[3].1, SourceStatus::Unreachable(_)),
        "{status:?}"
    );
    assert!(
        took < Duration::from_millis(1_800),
        "bounded by the source timeout, not the slow source: {took:?}"
    );
    assert!(gathered.results[0].is_some() && gathered.results[1..].iter().all(Option::is_none));
    for t in w.toteboxes {
        t.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn views_are_strict_or_best_effort_and_rollups_group_by_archive_labels() {
    use orchestrator::config::Partial;
    use orchestrator::view::{labelled_query, view, with_labels};
    let w = world(3).await;
    let fleet = Fleet::start(w.orchestrator.clone(), Limits::default());
    let chain = chain(&w, &["prop-01", "prop-02"]); // prop-03 will refuse
    let query = Query::aggregate(
        "occupancy",
        [],
        [Aggregate::of(AggregateFunction::Sum, "units_occupied")],
    );

    let strict = view(
        &query,
        fleet
            .query(w.sources.clone(), &chain, query.clone(), limits())
            .await,
        Partial::Strict,
    )
    .unwrap_err();
    assert_eq!(strict.code(), "fanout.incomplete");

    let partial = view(
        &query,
        fleet
            .query(w.sources.clone(), &chain, query.clone(), limits())
            .await,
        Partial::BestEffort,
    )
    .unwrap();
    assert!(!partial.complete);
    assert_eq!(
        partial
            .outcomes
            .iter()
            .filter(|o| o.status == SourceStatus::Ok)
            .count(),
        2
    );
    assert_eq!(partial.table.rows.len(), 1);
    assert!(partial.as_of_oldest > 0);

    // A rollup by the archives' region label: each source's groups carry its region.
    let regions = ["north", "south"];
    let gathered = fleet
        .query(w.sources[..2].to_vec(), &chain, query.clone(), limits())
        .await;
    let keys = vec!["region".to_owned()];
    let results = gathered
        .results
        .into_iter()
        .zip(regions)
        .map(|(r, region)| {
            r.map(|r| {
                with_labels(
                    r,
                    &keys,
                    &std::collections::BTreeMap::from([("region".to_owned(), region.to_owned())]),
                )
            })
        })
        .collect();
    let rollup = view(
        &labelled_query(&query, &keys),
        orchestrator::fanout::Gathered {
            outcomes: gathered.outcomes,
            results,
            commands: Vec::new(),
            regions: Vec::new(),
        },
        Partial::Strict,
    )
    .unwrap();
    assert_eq!(rollup.table.columns[0].name, "region");
    let labels: Vec<Value> = rollup.table.rows.iter().map(|r| r[0].clone()).collect();
    assert_eq!(labels, vec![Value::from("north"), Value::from("south")]);
    for t in w.toteboxes {
        t.shutdown(Duration::from_secs(1)).await;
    }
}

/// A fold that stops reading while every source answers, then cancels: each source still
/// arrives exactly once, answered or `Cancelled`, never lost in a send the cancel cut short.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_while_the_fold_reads_nothing_loses_no_source() {
    let w = world(40).await;
    let fleet = Fleet::with_workers(w.orchestrator.clone(), Limits::default(), 2);
    let ids: Vec<&str> = w.sources.iter().map(|s| s.archive.as_str()).collect();
    let watch = Watch::default();
    let mut arrivals = fleet.stream(
        "acme".into(),
        w.sources.clone(),
        &chain(&w, &ids),
        Work::Query(noi()),
        FanOutLimits {
            max_concurrency: 40,
            deadline: Duration::from_secs(20),
            source_timeout: Duration::from_secs(10),
            ..limits()
        },
        watch.clone(),
    );
    // The fold reads nothing, so the queue between the workers and it (two batches of at most
    // 8) fills, and each worker waits in a send with a batch in hand, asking no further: the
    // count of answered sources settles short of all 40 (at most 16 queued and 8 in each hand).
    let asked = Instant::now();
    let (mut answered, mut settled_since) = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = watch.answered.load(Ordering::Relaxed);
        if now != answered {
            (answered, settled_since) = (now, Instant::now());
        } else if answered > 0 && settled_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(15),
            "the sources are slow"
        );
    }
    assert!(
        answered < 40,
        "a fold that reads nothing holds the fan-out back"
    );
    watch.cancel.cancel();
    // The workers see the cancel while their sends still wait (reading now would let a send
    // through first, and the stream behind it with it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen = vec![0; 40];
    let (mut ok, mut cancelled) = (0, 0);
    while let Some(arrival) = arrivals.recv().await {
        seen[arrival.index] += 1;
        match arrival.outcome.status {
            SourceStatus::Ok => ok += 1,
            SourceStatus::Cancelled => cancelled += 1,
            other => panic!("source {} ended {other:?}", arrival.index),
        }
    }
    assert!(
        seen.iter().all(|&n| n == 1),
        "arrivals per source: {seen:?}"
    );
    // What was queued arrives answered; a batch a worker held when the cancel came ends
    // cancelled with the sources never asked.
    assert!(
        (1..=answered).contains(&ok),
        "the queued answers arrive as answered ({ok} of {answered} answered)"
    );
    assert!(
        cancelled >= 40 - answered,
        "the sources held back end cancelled"
    );
    assert_eq!(ok + cancelled, 40);
}
