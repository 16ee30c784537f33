//! End to end with real processes: SIGHUP reloads the orchestrator's config in place; a query
//! running across the reload is answered, not dropped; a broken config is logged and ignored.

mod support;

use std::process::Command;
use std::time::Duration;

use psp_core::Operation;
use support::processes::{Fleet, ORCHESTRATOR, statuses};

#[test]
fn sighup_reloads_without_dropping_a_running_query() {
    let fleet = Fleet::start(3, 0);
    let ids = ["prop-01", "prop-02", "prop-03"];
    let acme = fleet.operator("acme", &ids, vec![Operation::Query]);
    let tenant = |archives: &[&str]| {
        format!(
            "[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = {archives:?}\n",
            acme.key
        )
    };
    let config = fleet.orchestrator_config("orchestrator.toml", &tenant(&ids[..2]));
    let orchestrator = fleet.serve(&config);
    let listed = || {
        let list = orchestrator.json(&fleet, &acme, &["fleet"]);
        list.as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(), ["prop-01", "prop-02"]);

    // A query held up by a frozen prop-02 (it answers once thawed), across a reload.
    fleet.totebox("prop-02").process.signal("STOP");
    let console = |args: &[&str]| {
        let mut command = Command::new(ORCHESTRATOR);
        command
            .args(args)
            .args([
                "--connect",
                &orchestrator.address,
                "--orchestrator-key",
                &orchestrator.key,
                "--key",
            ])
            .arg(fleet.path("acme.pem"))
            .arg("--chain")
            .arg(fleet.path("acme.cap"))
            .arg("--json");
        command
    };
    let running = console(&[
        "query",
        "--collection",
        "statements",
        "--aggregate",
        "count(*) as n",
    ])
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    fleet.orchestrator_config("orchestrator.toml", &tenant(&ids[1..]));
    orchestrator.process.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    fleet.totebox("prop-02").process.signal("CONT");
    let answer = running.wait_with_output().unwrap();
    assert!(answer.status.success(), "{answer:?}");
    let report: serde_json::Value = serde_json::from_slice(&answer.stdout).unwrap();
    assert_eq!(
        statuses(&report),
        [
            ("prop-01".to_owned(), "ok".to_owned()),
            ("prop-02".to_owned(), "ok".to_owned())
        ],
        "the running query kept the config it started with"
    );
    assert_eq!(listed(), ["prop-02", "prop-03"]);

    // A broken config is logged, and the running one kept.
    std::fs::write(&config, "listen = 42").unwrap();
    orchestrator.process.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(listed(), ["prop-02", "prop-03"]);
    let log = orchestrator.process.stderr_text();
    assert!(log.contains("kept the running config"), "{log}");
    assert!(log.contains("reloaded the config"), "{log}");
}
