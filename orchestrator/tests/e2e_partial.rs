//! End to end, with every Totebox, the orchestrator and the console as separate processes:
//! one Totebox killed and one frozen still give an answer from the rest, with every source's
//! outcome typed, within the deadline.

mod support;

use std::time::{Duration, Instant};

use psp_core::Operation;
use support::processes::{Fleet, statuses};

#[test]
fn a_dead_and_a_frozen_totebox_leave_a_typed_partial_answer() {
    let fleet = Fleet::start(4, 0);
    let ids = ["prop-01", "prop-02", "prop-03", "prop-04"];
    let acme = fleet.operator("acme", &ids, vec![Operation::Query]);
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &format!("[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"property\" }}]\n", acme.key),
    );
    let orchestrator = fleet.serve(&config);
    let query = [
        "query",
        "--collection",
        "statements",
        "--aggregate",
        "count(*) as statements",
        "--source-timeout-ms",
        "1000",
        "--deadline-ms",
        "2500",
    ];
    let whole = orchestrator.json(&fleet, &acme, &query);
    assert_eq!(whole["complete"], true, "{whole}");
    assert_eq!(whole["table"]["rows"][0][0], 4 * 24);

    fleet.totebox("prop-01").process.signal("KILL");
    fleet.totebox("prop-02").process.signal("STOP");
    let asked = Instant::now();
    let partial = orchestrator.json(&fleet, &acme, &query);
    let took = asked.elapsed();
    assert_eq!(partial["complete"], false);
    assert_eq!(
        statuses(&partial),
        [
            ("prop-01".to_owned(), "unreachable".to_owned()),
            ("prop-02".to_owned(), "timed-out".to_owned()),
            ("prop-03".to_owned(), "ok".to_owned()),
            ("prop-04".to_owned(), "ok".to_owned()),
        ]
    );
    assert_eq!(
        partial["table"]["rows"][0][0],
        2 * 24,
        "never a silently short answer"
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: past the deadline"
    );

    // For people: the table, and which sources are missing and why.
    let output = orchestrator.console(&fleet, &acme, &query);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("2 of 4 sources did not answer"), "{text}");
    assert!(
        text.contains("prop-01  unreachable") && text.contains("prop-02  timed-out"),
        "{text}"
    );
    fleet.totebox("prop-02").process.signal("CONT");
}
