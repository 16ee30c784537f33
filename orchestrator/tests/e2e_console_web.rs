//! End to end with real processes: `orchestrator console-web` over a real fleet and
//! orchestrator. Its pages show what the CLI prints for the same viewports; a hostile string
//! from the fleet is text, never markup; every page carries the strict content security policy;
//! only GET, and only to its own address, is served.

mod support;

use std::process::Command;

use psp_core::Operation;
use serde_json::Value as Json;
use support::processes::{Fleet, Proc};
use support::web::fetch;

const HOSTILE: &str = "<script>alert(1)</script>";

/// A cell as the CLI's JSON gives it, as the pages print it.
fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[test]
fn the_pages_show_the_cli_figures_escape_the_fleet_and_refuse_what_they_must() {
    let mut fleet = Fleet::start(4, 2);
    // One archive's region label is hostile: it reaches the fleet page, a rollup's group key
    // and its chart.
    let labels = fleet.toteboxes[0].labels.clone();
    let region = labels
        .split(", ")
        .find(|l| l.starts_with("region = "))
        .unwrap()
        .to_owned();
    fleet.toteboxes[0].labels = labels.replace(&region, &format!("region = {HOSTILE:?}"));
    let ids: Vec<String> = fleet.toteboxes.iter().map(|t| t.id.clone()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let acme = fleet.operator("acme", &ids, vec![Operation::Query]);
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &format!(
            "[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = {ids:?}\n",
            acme.key
        ),
    );
    let orchestrator = fleet.serve(&config);
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command.env("XDG_CACHE_HOME", fleet.path("cache"));
    command.args([
        "console-web",
        "--connect",
        &orchestrator.address,
        "--orchestrator-key",
        &orchestrator.key,
        "--listen",
        "127.0.0.1:0",
        "--viewport",
        "noi-by-region",
        "--viewport",
        "intercompany",
        "--viewport",
        "executive-summary",
        "--key",
    ]);
    command.arg(fleet.path("acme.pem"));
    command.arg("--chain").arg(fleet.path("acme.cap"));
    let (_web, line) = Proc::start(command, fleet.path("web.log"));
    // "web console on http://127.0.0.1:PORT/"
    let address = line
        .trim()
        .strip_prefix("web console on http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let get = |path: &str| fetch(&address, "GET", path, &address);

    // The fleet: every archive, the hostile label as text.
    let (status, head, body) = get("/");
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    for id in &ids {
        assert!(body.contains(id), "{id} missing");
    }
    assert!(
        body.contains(&escaped(HOSTILE)),
        "the label is shown, escaped"
    );
    assert!(!body.contains(HOSTILE), "the label never becomes markup");
    let (_, _, filtered) = get("/?label=entity%3Dsubsidiary");
    assert!(filtered.contains("sub-01") && !filtered.contains("prop-01"));

    // Each viewport: the figures the CLI prints for it.
    let cli = |name: &str| -> Json { orchestrator.json(&fleet, &acme, &["view", "--name", name]) };
    let (status, _, rollup) = get("/view/noi-by-region?final");
    assert_eq!(status, 200, "{rollup}");
    assert!(rollup.contains("<svg"), "the rollup is charted");
    assert!(
        !rollup.contains(HOSTILE),
        "no markup from the fleet, in the table or the chart"
    );
    for row in cli("noi-by-region")["table"]["rows"].as_array().unwrap() {
        for value in row.as_array().unwrap() {
            assert!(rollup.contains(&escaped(&text(value))), "{value} missing");
        }
    }
    let (_, _, recon) = get("/view/intercompany?final");
    let entries = cli("intercompany")["reconciliation"]["entries"]
        .as_array()
        .unwrap()
        .len();
    assert!(recon.contains(&format!("{entries} balances")), "{recon}");
    let (_, _, summary) = get("/view/executive-summary?final");
    for kpi in cli("executive-summary")["summary"]["kpis"]
        .as_array()
        .unwrap()
    {
        assert!(summary.contains(&escaped(kpi["name"].as_str().unwrap())));
        assert!(summary.contains(&text(&kpi["value"])), "{kpi}");
    }

    // Progressive: the page starts the request and follows it with its one script, asking
    // for the view so far until it is final; the last view has the figures.
    let (status, _, shell) = get("/view/noi-by-region");
    assert_eq!(status, 200);
    assert!(shell.contains("<script src=\"/console.js\">"), "{shell}");
    let run = shell
        .split("data-run=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("{shell}"))
        .to_owned();
    let mut after = 0;
    let last = loop {
        let (status, head, fragment) = get(&format!("/run/{run}?after={after}"));
        assert_eq!(status, 200, "{fragment}");
        if head.contains("x-final: 1") {
            break fragment;
        }
        let answered: u32 = head
            .lines()
            .find_map(|l| l.strip_prefix("x-answered: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            answered > after,
            "each view so far has more sources than the last"
        );
        after = answered;
    };
    for row in cli("noi-by-region")["table"]["rows"].as_array().unwrap() {
        assert!(
            last.contains(&escaped(&text(&row[1]))),
            "{row} missing from the last view"
        );
    }
    assert_eq!(
        get(&format!("/run/{run}?after=0")).0,
        404,
        "a finished run is let go"
    );
    let (status, head, script) = get("/console.js");
    assert_eq!(status, 200);
    assert!(head.contains("text/javascript") && script.contains("/run/"));

    // What it refuses.
    assert_eq!(get("/view/not-offered").0, 404);
    assert_eq!(fetch(&address, "POST", "/", &address).0, 405);
    let (status, _, _) = fetch(&address, "GET", "/", "rebound.example:80");
    assert_eq!(
        status, 421,
        "a page elsewhere cannot read it through another name"
    );
}
