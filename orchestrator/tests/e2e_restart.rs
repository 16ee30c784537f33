//! End to end with real processes: the orchestrator keeps nothing but logs, so killing it
//! loses nothing acknowledged: the restarted process answers exactly as before, and a command
//! acknowledged before the crash is replayed, not applied again, when retried after it.

mod support;

use std::time::Duration;

use psp_core::Operation;
use support::acme_tenant;
use support::processes::Fleet;

#[test]
fn a_killed_orchestrator_restarts_and_answers_as_before() {
    let fleet = Fleet::start(2, 1);
    let ids = ["prop-01", "prop-02", "sub-01"];
    let ops = vec![Operation::Query, Operation::command("snapshot")];
    let ops_lead = fleet.operator("lead", &ids, ops);
    let config = fleet.orchestrator_config("orchestrator.toml", &acme_tenant(ops_lead.key, &ids));
    let rollup = [
        "view",
        "--label",
        "entity=property",
        "--name",
        "noi-by-region",
    ];
    let snapshot = [
        "command",
        "--archives",
        "sub-01",
        "--name",
        "snapshot",
        "--snapshot-name",
        "nightly-2026-11-28",
        "--idempotency-key",
        "nightly-snapshot-2026-11-28",
    ];
    // Everything in the folder but logs (and the consoles' kept viewport copies, which are the
    // consoles' own), before any orchestrator ran.
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(fleet.path(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".log") && n != "cache")
            .collect();
        names.sort();
        names
    };
    let files_before = files();

    let first = fleet.serve(&config);
    let before = first.json(&fleet, &ops_lead, &rollup);
    let applied = first.json(&fleet, &ops_lead, &snapshot);
    assert_eq!(applied[0]["outcome"]["status"], "applied", "{applied}");
    first.process.signal("KILL");
    drop(first);

    let second = fleet.serve(&config);
    let after = second.json(&fleet, &ops_lead, &rollup);
    assert_eq!(
        after["table"], before["table"],
        "the same answer after a restart"
    );
    let retried = second.json(&fleet, &ops_lead, &snapshot);
    assert_eq!(retried[0]["outcome"]["status"], "replayed", "{retried}");
    assert_eq!(
        retried[0]["outcome"]["message"],
        applied[0]["outcome"]["message"]
    );

    // Stateless: the orchestrator wrote nothing but its logs.
    assert_eq!(files(), files_before);

    // SIGTERM: a clean exit.
    second.process.signal("TERM");
    assert!(
        second.process.wait(Duration::from_secs(15)),
        "no clean exit on SIGTERM"
    );
}
