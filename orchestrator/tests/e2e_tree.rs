//! End to end with real processes: orchestrators of orchestrators. Three regional
//! orchestrators each serve a share of the Toteboxes; one above them has each region as a fleet
//! member (`kind = "orchestrator"`). Every query and viewport through the tree equals the flat
//! fleet's, exactly; every archive keeps its own outcome, named by its path; a slow archive is
//! reported timed out by its own region, and a dead region is reported archive by archive.

mod support;

use serde_json::Value as Json;
use support::faults::Fault;
use support::processes::statuses;
use support::tree::Tree;

const ROLLUP: [&str; 17] = [
    "query",
    "--collection",
    "statements",
    "--group-by",
    "period",
    "--aggregate",
    "sum(noi) as noi",
    "--aggregate",
    "avg(noi) as mean",
    "--aggregate",
    "count(*) as n",
    "--aggregate",
    "min(revenue) as low",
    "--aggregate",
    "max(revenue) as high",
    "--order",
    "period desc",
];

/// A report's body without its outcomes (whose names differ: the tree's are paths).
fn body(report: &Json) -> Json {
    let mut report = report.clone();
    let object = report.as_object_mut().unwrap();
    object.remove("outcomes");
    if let Some(summary) = object.get_mut("summary") {
        for kpi in summary["kpis"].as_array_mut().unwrap() {
            let kpi = kpi.as_object_mut().unwrap();
            let sources = kpi.remove("sources").unwrap();
            let missing = kpi.remove("missing").unwrap();
            kpi.insert("answered".into(), sources.as_array().unwrap().len().into());
            kpi.insert("missing".into(), missing.as_array().unwrap().len().into());
        }
    }
    report
}

#[test]
fn a_tree_answers_every_view_exactly_as_the_flat_fleet_with_each_archive_by_its_path() {
    let tree = Tree::start(6, 3, 3, "", Box::new(|_, real| real.to_owned()));
    let (fleet, acme) = (&tree.fleet, &tree.acme);
    for (what, args) in [
        ("a rollup", ROLLUP.to_vec()),
        ("rollup by label", vec!["view", "--name", "noi-by-region"]),
        ("reconciliation", vec!["view", "--name", "intercompany"]),
        ("summary", vec!["view", "--name", "executive-summary"]),
    ] {
        let flat = tree.flat.json(fleet, acme, &args);
        let through = tree.top.json(fleet, acme, &args);
        assert_eq!(body(&through), body(&flat), "{what}");
        let mut paths: Vec<(String, String)> = statuses(&through);
        paths.sort();
        let mut expected: Vec<(String, String)> = statuses(&flat)
            .into_iter()
            .map(|(id, status)| (format!("{}/{id}", tree.region_of(&id)), status))
            .collect();
        expected.sort();
        assert_eq!(paths, expected, "{what}");
    }
    // The reconciliation found pairs across regions (sub-01 and sub-02 sit in different ones).
    let recon = tree
        .top
        .json(fleet, acme, &["view", "--name", "intercompany"]);
    assert!(
        recon["reconciliation"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["status"] == "matched"),
        "{recon}"
    );
    assert_ne!(tree.region_of("sub-01"), tree.region_of("sub-02"));

    // Each archive is listed by its path, with its region entry's labels over its own.
    let listed = tree.top.json(fleet, acme, &["fleet"]);
    let prop = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == format!("{}/prop-01", tree.region_of("prop-01")))
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(prop["labels"]["site"], tree.region_of("prop-01"), "{prop}");
    assert!(prop["labels"]["region"].is_string(), "{prop}");

    // Selecting by a label the region entries do not set reaches the archives that have it,
    // wherever they are.
    let subsidiaries = tree.top.json(
        fleet,
        acme,
        &[ROLLUP.as_slice(), &["--label", "entity=subsidiary"]].concat(),
    );
    let names: Vec<String> = statuses(&subsidiaries)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n.contains("/sub-")), "{names:?}");
    assert_eq!(
        body(&subsidiaries),
        body(&tree.flat.json(
            fleet,
            acme,
            &[ROLLUP.as_slice(), &["--label", "entity=subsidiary"]].concat()
        ))
    );
    // By path, one archive of one region.
    let one = tree.top.json(
        fleet,
        acme,
        &[ROLLUP.as_slice(), &["--archives", "region-1/prop-02"]].concat(),
    );
    assert_eq!(
        statuses(&one),
        vec![("region-1/prop-02".to_owned(), "ok".to_owned())]
    );
}

#[test]
fn a_dead_region_is_reported_archive_by_archive_and_the_rest_still_answers() {
    let mut tree = Tree::start(4, 2, 3, "", Box::new(|_, real| real.to_owned()));
    let dead = tree.regions[1].take().unwrap();
    drop(dead);
    let by_property = [ROLLUP.as_slice(), &["--label", "entity=property"]].concat();
    let report = tree.top.json(&tree.fleet, &tree.acme, &by_property);
    assert_eq!(report["complete"], false);
    let outcomes = statuses(&report);
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    for id in tree.members[1].iter().filter(|id| id.starts_with("prop-")) {
        let (_, status) = outcomes
            .iter()
            .find(|(n, _)| *n == format!("region-1/{id}"))
            .unwrap_or_else(|| panic!("{id} missing from {outcomes:?}"));
        assert_ne!(status, "ok", "{id}");
    }
    let ok = outcomes.iter().filter(|(_, s)| s == "ok").count();
    let dead = tree.members[1]
        .iter()
        .filter(|id| id.starts_with("prop-"))
        .count();
    assert_eq!(ok, 4 - dead, "{outcomes:?}");
}

#[test]
fn a_slow_archive_times_out_in_its_region_and_its_region_still_answers() {
    // The region's archives answer within 1 s or are timed out there; the top gives the region
    // 3 s and the region 2.4 s of them, so the region always answers in time.
    let keys: Vec<psp_core::IdentityKey> = (0..2)
        .map(|_| psp_core::IdentityKey::generate().unwrap())
        .collect();
    let mut fleet = support::processes::Fleet::start_paired(
        4,
        0,
        |_| String::new(),
        &keys.iter().map(|k| k.public()).collect::<Vec<_>>(),
    );
    // prop-01 is region-0's: put a proxy before it, to stall it later.
    let proxy = fleet.behind_proxy(0);
    let tree = Tree::over(
        fleet,
        keys,
        "source_timeout_ms = 1000\ndeadline_ms = 5000",
        Box::new(|_, real| real.to_owned()),
    );
    assert_eq!(tree.region_of("prop-01"), "region-0");
    proxy.inject(Some(Fault::Stall));
    let started = std::time::Instant::now();
    let report = tree.top.json(&tree.fleet, &tree.acme, &ROLLUP);
    let outcomes = statuses(&report);
    assert!(
        outcomes.contains(&("region-0/prop-01".into(), "timed-out".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("region-0/prop-03".into(), "ok".into())),
        "the rest of its region answered: {outcomes:?}"
    );
    assert_eq!(outcomes.iter().filter(|(_, s)| s == "ok").count(), 3);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[test]
fn a_command_through_the_tree_is_applied_once_per_archive_whichever_way_it_is_retried() {
    let tree = Tree::start(3, 0, 2, "", Box::new(|_, real| real.to_owned()));
    let (fleet, acme) = (&tree.fleet, &tree.acme);
    let snapshot = [
        "command",
        "--name",
        "snapshot",
        "--snapshot-name",
        "through-the-tree",
        "--idempotency-key",
        "snapshot-through-the-tree-0001",
    ];
    let names = |answers: &Json, status: &str| -> Vec<String> {
        let mut names: Vec<String> = answers
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["outcome"]["status"] == status)
            .map(|a| a["source"]["archive"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let first = tree.top.json(fleet, acme, &snapshot);
    assert_eq!(
        names(&first, "applied"),
        vec!["region-0/prop-01", "region-0/prop-03", "region-1/prop-02"],
        "{first}"
    );
    let again = tree.top.json(fleet, acme, &snapshot);
    assert_eq!(names(&again, "replayed").len(), 3, "{again}");
    // The Toteboxes keep the idempotency keys: the flat orchestrator's retry is a replay too.
    let flat = tree.flat.json(fleet, acme, &snapshot);
    assert_eq!(names(&flat, "replayed").len(), 3, "{flat}");
}

#[test]
fn a_region_that_let_an_archive_go_since_it_was_listed_reports_it_and_answers_the_rest() {
    let tree = Tree::start(3, 0, 1, "", Box::new(|_, real| real.to_owned()));
    // The region no longer lets the top reach prop-03; the top's listing of it is older.
    let config = tree.path("region-0.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let narrowed = text.replace(
        "archives = [\"prop-01\", \"prop-02\", \"prop-03\"]",
        "archives = [\"prop-01\", \"prop-02\"]",
    );
    assert_ne!(text, narrowed);
    std::fs::write(&config, narrowed).unwrap();
    let region = tree.regions[0].as_ref().unwrap();
    region.process.signal("HUP");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !region.process.stderr_text().contains("reloaded the config") {
        assert!(
            std::time::Instant::now() < until,
            "the region never reloaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let report = tree.top.json(&tree.fleet, &tree.acme, &ROLLUP);
    let mut outcomes = statuses(&report);
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![
            ("region-0/prop-01".to_owned(), "ok".to_owned()),
            ("region-0/prop-02".to_owned(), "ok".to_owned()),
            ("region-0/prop-03".to_owned(), "denied".to_owned()),
        ],
        "{report}"
    );
    assert!(
        report.to_string().contains("tenant.archive-not-in-tenant"),
        "{report}"
    );
}
