//! End to end with real processes: what the console command prints. Tables for people with
//! every control character escaped (a hostile record cannot drive the terminal), one JSON
//! document for scripts, and a progress line on a terminal's stderr when a fan-out takes over a
//! second; never on a pipe.

mod support;

use std::process::Command;

use psp_core::Operation;
use support::processes::{Fleet, ORCHESTRATOR};

/// A ledger record whose counterparty tries to retitle the terminal and forge a line.
const HOSTILE: &str = "evil\u{1b}]0;pwned\u{7}\r\nsub-01  matched";

#[test]
fn tables_escape_json_is_exact_and_progress_shows_only_on_a_terminal() {
    let fleet = Fleet::start(0, 2);
    let ops = vec![Operation::Query, Operation::command("append")];
    let clerk = fleet.operator("clerk", &["sub-01", "sub-02"], ops);
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &format!("[[tenants]]\nname = \"holding\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"subsidiary\" }}]\n", clerk.key),
    );
    let orchestrator = fleet.serve(&config);
    let arguments = fleet.path("hostile.bin");
    std::fs::write(&arguments, support::ledger_record(8_888_888, HOSTILE, 100)).unwrap();
    let arguments = arguments.display().to_string();
    orchestrator.json(
        &fleet,
        &clerk,
        &[
            "command",
            "--archives",
            "sub-01",
            "--name",
            "append",
            "--collection",
            "ledger",
            "--idempotency-key",
            "hostile-record-0000001",
            "--arguments",
            &arguments,
        ],
    );

    let query = [
        "query",
        "--collection",
        "ledger",
        "--where",
        "entry = 8888888",
        "--group-by",
        "counterparty",
        "--aggregate",
        "sum(amount) as amount",
    ];
    let table = orchestrator.console(&fleet, &clerk, &query);
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(
        text.contains(r"evil\u{1b}]0;pwned\u{7}\r\nsub-01  matched"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("sub-01")).count(),
        0,
        "a forged line: {text}"
    );

    // JSON carries the value exactly (JSON escapes it), and the amount as an exact decimal.
    let json = orchestrator.json(&fleet, &clerk, &query);
    assert_eq!(
        json["table"]["rows"],
        serde_json::json!([[HOSTILE, "1.00"]])
    );
    assert!(table.stderr.is_empty(), "nothing on a pipe's stderr");

    // A fan-out held up by a frozen Totebox for 2.5 s: on a terminal, a progress line.
    fleet.totebox("sub-02").process.signal("STOP");
    let line = format!(
        "{ORCHESTRATOR} query --connect {} --orchestrator-key {} --key {} --chain {} --source-timeout-ms 2500 --collection ledger --aggregate 'count(*)' >/dev/null",
        orchestrator.address,
        orchestrator.key,
        fleet.path("clerk.pem").display(),
        fleet.path("clerk.cap").display(),
    );
    let on_tty = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&on_tty.stdout);
    assert!(on_tty.status.success(), "{shown}");
    assert!(shown.contains("1/2 sources answered..."), "{shown:?}");
    // Piped, the same request prints no progress.
    let piped = orchestrator.console(
        &fleet,
        &clerk,
        &[
            "query",
            "--source-timeout-ms",
            "1500",
            "--collection",
            "ledger",
            "--aggregate",
            "count(*)",
        ],
    );
    assert!(piped.status.success());
    assert!(
        piped.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&piped.stderr)
    );
    fleet.totebox("sub-02").process.signal("CONT");
}
