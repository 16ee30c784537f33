//! End to end with real processes: strict mode answers only when every source does, and says
//! which did not; best-effort answers the same request with what arrived.

mod support;

use psp_core::Operation;
use support::processes::{Fleet, statuses};

#[test]
fn strict_mode_fails_whole_when_one_source_is_down() {
    let fleet = Fleet::start(3, 0);
    let acme = fleet.operator(
        "acme",
        &["prop-01", "prop-02", "prop-03"],
        vec![Operation::Query],
    );
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &format!("[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"property\" }}]\n", acme.key),
    );
    let orchestrator = fleet.serve(&config);
    let query = [
        "query",
        "--collection",
        "occupancy",
        "--aggregate",
        "sum(units_total) as units",
    ];
    let strict: Vec<&str> = query.iter().copied().chain(["--strict"]).collect();

    let whole = orchestrator.json(&fleet, &acme, &strict);
    assert_eq!(whole["complete"], true);
    let units = whole["table"]["rows"][0][0].as_i64().unwrap();
    assert!(units > 0);

    fleet.totebox("prop-03").process.signal("KILL");
    let error = orchestrator.refused(&fleet, &acme, &strict);
    assert!(error.contains("fanout.incomplete"), "{error}");
    assert!(error.contains("1 of 3 sources did not answer"), "{error}");

    let best: Vec<&str> = query.iter().copied().chain(["--best-effort"]).collect();
    let partial = orchestrator.json(&fleet, &acme, &best);
    assert_eq!(partial["complete"], false);
    assert_eq!(
        statuses(&partial)[2],
        ("prop-03".to_owned(), "unreachable".to_owned())
    );
    assert!(partial["table"]["rows"][0][0].as_i64().unwrap() < units);
}
