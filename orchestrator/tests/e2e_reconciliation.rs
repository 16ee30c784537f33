//! End to end with real processes: the intercompany reconciliation defined in the
//! orchestrator's config, run from the console command; a subsidiary that stops answering
//! turns its balances to "unknown" instead of one-sided.

mod support;

use psp_core::Operation;
use support::processes::Fleet;

fn count(report: &serde_json::Value, status: &str) -> usize {
    report["reconciliation"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == status)
        .count()
}

#[test]
fn the_config_reconciliation_runs_from_the_console_command() {
    let fleet = Fleet::start(1, 4);
    let ids = ["prop-01", "sub-01", "sub-02", "sub-03", "sub-04"];
    let cfo = fleet.operator("cfo", &ids, vec![Operation::Query]);
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &format!("[[tenants]]\nname = \"holding\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"subsidiary\" }}, {{ entity = \"property\" }}]\n", cfo.key),
    );
    let orchestrator = fleet.serve(&config);
    let view = [
        "view",
        "--label",
        "entity=subsidiary",
        "--name",
        "intercompany",
    ];
    let report = orchestrator.json(&fleet, &cfo, &view);
    assert_eq!(report["complete"], true);
    let entries = report["reconciliation"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 6 * 24);
    assert!(count(&report, "matched") * 100 >= entries.len() * 85);
    let mismatched = entries
        .iter()
        .find(|e| e["status"] == "mismatched")
        .unwrap();
    assert_ne!(mismatched["difference"], "0.00", "{mismatched}");
    assert!(
        mismatched["difference"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .is_ok(),
        "exact decimals travel as strings"
    );

    // The table for people lists exceptions only with --exceptions, and always the totals.
    let text = orchestrator.console(&fleet, &cfo, &[&view[..], &["--exceptions"]].concat());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("144 balances:") && !text.contains(" matched\n"),
        "{text}"
    );

    // Once sub-02 is gone, every balance another subsidiary records with it is unknown (a
    // balance only sub-02 recorded has nobody left to report it).
    let expected_unknown = entries
        .iter()
        .filter(|e| {
            (e["left"] == "sub-02" && !e["right_amount"].is_null())
                || (e["right"] == "sub-02" && !e["left_amount"].is_null())
        })
        .count();
    assert!(expected_unknown > 3 * 20, "{expected_unknown}");
    fleet.totebox("sub-02").process.signal("KILL");
    let report = orchestrator.json(&fleet, &cfo, &view);
    assert_eq!(report["complete"], false);
    for e in report["reconciliation"]["entries"].as_array().unwrap() {
        let involves = e["left"] == "sub-02" || e["right"] == "sub-02";
        assert_eq!(e["status"] == "unknown", involves, "{e}");
    }
    assert_eq!(count(&report, "unknown"), expected_unknown);
}
