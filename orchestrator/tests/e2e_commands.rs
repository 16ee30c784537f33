//! End to end with real processes: a command fans out with one outcome per archive, a retry
//! with the same idempotency key is replayed everywhere and applied nowhere, and a chain
//! without the command is denied by every Totebox with the rule.

mod support;

use psp_core::Operation;
use support::processes::Fleet;

#[test]
fn a_retried_command_is_replayed_everywhere_and_applied_once() {
    let fleet = Fleet::start(0, 3);
    let subs = ["sub-01", "sub-02", "sub-03"];
    let clerk = fleet.operator(
        "clerk",
        &subs,
        vec![Operation::Query, Operation::command("append")],
    );
    let reader = fleet.operator("reader", &subs, vec![Operation::Query]);
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &format!(
            "[[tenants]]\nname = \"holding\"\noperators = [\"{}\", \"{}\"]\nselectors = [{{ entity = \"subsidiary\" }}]\n",
            clerk.key, reader.key
        ),
    );
    let orchestrator = fleet.serve(&config);
    let arguments = fleet.path("append.bin");
    std::fs::write(
        &arguments,
        support::ledger_record(9_999_999, "external", 12_345),
    )
    .unwrap();
    let arguments = arguments.display().to_string();
    let command = [
        "command",
        "--name",
        "append",
        "--collection",
        "ledger",
        "--idempotency-key",
        "clerk-2026-11-append-0001",
        "--arguments",
        &arguments,
    ];

    let outcome = |results: &serde_json::Value| -> Vec<String> {
        results
            .as_array()
            .unwrap()
            .iter()
            .map(|r| match r["outcome"]["status"].as_str() {
                Some(s) => format!("{} {s}", r["source"]["archive"].as_str().unwrap()),
                None => format!(
                    "{} {}",
                    r["source"]["archive"].as_str().unwrap(),
                    r["source"]["detail"]["code"].as_str().unwrap_or("?")
                ),
            })
            .collect()
    };
    let first = orchestrator.json(&fleet, &clerk, &command);
    assert_eq!(
        outcome(&first),
        ["sub-01 applied", "sub-02 applied", "sub-03 applied"]
    );
    let retry = orchestrator.json(&fleet, &clerk, &command);
    assert_eq!(
        outcome(&retry),
        ["sub-01 replayed", "sub-02 replayed", "sub-03 replayed"]
    );

    let appended = orchestrator.json(
        &fleet,
        &clerk,
        &[
            "query",
            "--collection",
            "ledger",
            "--where",
            "entry = 9999999",
            "--group-by",
            "counterparty",
            "--aggregate",
            "count(*) as n",
        ],
    );
    assert_eq!(
        appended["table"]["rows"],
        serde_json::json!([["external", 3]]),
        "one record per archive"
    );

    // The same key with other arguments is an error, not a silent replay.
    std::fs::write(
        &arguments,
        support::ledger_record(9_999_999, "external", 99_999),
    )
    .unwrap();
    let reused = orchestrator.json(&fleet, &clerk, &command);
    assert_eq!(
        outcome(&reused),
        [
            "sub-01 command.key-reused",
            "sub-02 command.key-reused",
            "sub-03 command.key-reused"
        ]
    );

    // Without the command in its capability, every Totebox denies it with the rule.
    let denied = orchestrator.json(
        &fleet,
        &reader,
        &[
            "command",
            "--name",
            "append",
            "--collection",
            "ledger",
            "--idempotency-key",
            "reader-2026-11-append-0001",
        ],
    );
    for line in outcome(&denied) {
        assert!(
            line.ends_with("capability.operation-not-in-scope"),
            "{line}"
        );
    }
}
