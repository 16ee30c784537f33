//! End to end with real processes: a command fans out with one outcome per archive, a retry
//! with the same idempotency key is replayed everywhere and applied nowhere, and a chain
//! without the command is denied by every Totebox with the rule.

mod support;

use capnp::message::Builder;
use psp_core::Operation;
use psp_core::query::wire::write_value;
use psp_core::query::{Decimal, Value};
use psp_schema::totebox_capnp::append_arguments;
use support::processes::Fleet;

fn append_one(path: &std::path::Path, cents: i64) {
    let mut message = Builder::new_default();
    let mut args = message.init_root::<append_arguments::Builder<'_>>();
    let fields = [
        "entry",
        "period",
        "account",
        "counterparty",
        "currency",
        "amount",
    ];
    let mut names = args.reborrow().init_fields(fields.len() as u32);
    for (i, f) in fields.iter().enumerate() {
        names.set(i as u32, *f);
    }
    let row = [
        Value::Int(9_999_999),
        "2026-11".into(),
        "cash".into(),
        "external".into(),
        "USD".into(),
        Value::Decimal(Decimal::new(cents, 2).unwrap()),
    ];
    let mut values = args.init_records(1).get(0).init_values(row.len() as u32);
    for (i, v) in row.iter().enumerate() {
        write_value(v.as_ref(), values.reborrow().get(i as u32));
    }
    std::fs::write(path, capnp::serialize::write_message_to_words(&message)).unwrap();
}

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
    append_one(&arguments, 12_345);
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
    append_one(std::path::Path::new(&arguments), 99_999);
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
