//! End to end with real processes: two orchestrator replicas serve one fleet side by side.
//! They give the same answers, and a command sent through one and retried through the other
//! is applied once, because the Toteboxes, not the orchestrators, keep the idempotency keys.

mod support;

use psp_core::Operation;
use support::processes::Fleet;

#[test]
fn two_replicas_answer_alike_and_share_no_state() {
    let fleet = Fleet::start(3, 0);
    let ids = ["prop-01", "prop-02", "prop-03"];
    let acme = fleet.operator(
        "acme",
        &ids,
        vec![Operation::Query, Operation::command("snapshot")],
    );
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &format!("[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"property\" }}]\n", acme.key),
    );
    let a = fleet.serve(&config);
    let b = fleet.serve(&config);
    assert_ne!(a.address, b.address);

    let query = [
        "query",
        "--collection",
        "statements",
        "--group-by",
        "period",
        "--aggregate",
        "sum(noi) as noi",
        "--order",
        "period desc",
        "--limit",
        "6",
    ];
    let from_a = a.json(&fleet, &acme, &query);
    let from_b = b.json(&fleet, &acme, &query);
    assert_eq!(from_a["table"], from_b["table"]);
    assert_eq!(from_a["table"]["rows"].as_array().unwrap().len(), 6);
    assert_eq!(from_a["table"]["rows"][0][0], "2026-10");
    let summary = ["view", "--name", "executive-summary"];
    assert_eq!(
        a.json(&fleet, &acme, &summary)["summary"],
        b.json(&fleet, &acme, &summary)["summary"]
    );

    let snapshot = [
        "command",
        "--name",
        "snapshot",
        "--snapshot-name",
        "nightly-2026-11-28",
        "--idempotency-key",
        "nightly-snapshot-2026-11-28",
    ];
    let through_a = a.json(&fleet, &acme, &snapshot);
    let through_b = b.json(&fleet, &acme, &snapshot);
    for (first, retry) in through_a
        .as_array()
        .unwrap()
        .iter()
        .zip(through_b.as_array().unwrap())
    {
        assert_eq!(first["outcome"]["status"], "applied", "{first}");
        assert_eq!(retry["outcome"]["status"], "replayed", "{retry}");
    }
}
