//! End to end with real processes: an operator cannot list, name, query, view or command an
//! archive outside its tenant, nor spend another tenant's capability; refusals are logged as
//! security events in the orchestrator's JSON log, and no Totebox outside the tenant is called.

mod support;

use psp_core::Operation;
use support::processes::Fleet;

#[test]
fn every_method_stays_inside_the_tenant() {
    let fleet = Fleet::start(3, 0);
    let all = ["prop-01", "prop-02", "prop-03"];
    let ops = vec![Operation::Query, Operation::command("seal")];
    let acme = fleet.operator("acme", &all, ops.clone());
    let globex = fleet.operator("globex", &all, ops.clone());
    let stranger = fleet.operator("stranger", &all, ops);
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &format!(
            "[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = [\"prop-01\", \"prop-02\"]\n[[tenants]]\nname = \"globex\"\noperators = [\"{}\"]\narchives = [\"prop-03\"]\n",
            acme.key, globex.key
        ),
    );
    let orchestrator = fleet.serve(&config);

    // fleet: each tenant sees its own archives only.
    let listed = |who| {
        let list = orchestrator.json(&fleet, who, &["fleet"]);
        list.as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&globex), ["prop-03"]);
    assert_eq!(listed(&acme), ["prop-01", "prop-02"]);

    // query, view and command naming acme's archive, and one that does not exist: the same
    // refusal, so globex cannot map the fleet.
    for archive in ["prop-01", "prop-99"] {
        for args in [
            vec![
                "query",
                "--archives",
                archive,
                "--collection",
                "statements",
                "--aggregate",
                "count(*)",
            ],
            vec!["view", "--archives", archive, "--name", "noi-by-region"],
            vec![
                "command",
                "--archives",
                archive,
                "--name",
                "seal",
                "--collection",
                "statements",
                "--idempotency-key",
                "seal-statements-2026-11",
            ],
        ] {
            let error = orchestrator.refused(&fleet, &globex, &args);
            assert!(
                error.contains("tenant.archive-not-in-tenant"),
                "{args:?}: {error}"
            );
            assert!(error.contains(&format!("{archive:?}")), "{error}");
        }
    }
    // By label, globex's selection only ever matches its own archives.
    let view = orchestrator.json(
        &fleet,
        &globex,
        &[
            "view",
            "--label",
            "entity=property",
            "--name",
            "noi-by-region",
        ],
    );
    assert_eq!(view["outcomes"].as_array().unwrap().len(), 1);
    assert_eq!(view["outcomes"][0]["archive"], "prop-03");

    // acme spending globex's capability, delegated by globex to the orchestrator (a copy of
    // the file), is refused before any call: the last issuer is not acme's operator key.
    let delegated = std::process::Command::new(support::processes::ORCHESTRATOR)
        .args(["delegate", "--holder", &orchestrator.key, "--chain"])
        .arg(fleet.path("globex.cap"))
        .arg("--key")
        .arg(fleet.path("globex.pem"))
        .arg("--out")
        .arg(fleet.path("acme.cap"))
        .output()
        .unwrap();
    assert!(delegated.status.success(), "{delegated:?}");
    let error = orchestrator.refused(
        &fleet,
        &acme,
        &[
            "query",
            "--collection",
            "statements",
            "--aggregate",
            "count(*)",
        ],
    );
    assert!(error.contains("tenant.not-your-capability"), "{error}");

    // A key of no tenant cannot even connect.
    let error = orchestrator.refused(&fleet, &stranger, &["fleet"]);
    assert!(error.contains("tenant.not-an-operator"), "{error}");

    // Security events are marked in the JSON log.
    let log = orchestrator.process.stderr_text();
    let security: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["target"] == "psp::security")
        .collect();
    assert!(security.len() >= 6, "{log}");
    assert!(
        security.iter().all(|l| l["level"] == "WARN"),
        "{security:?}"
    );
    // prop-01 and prop-02 were never asked on globex's behalf: their Toteboxes logged no
    // session from the orchestrator.
    for id in ["prop-01", "prop-02"] {
        let log = fleet.totebox(id).process.stderr_text();
        assert!(!log.contains("opened a session"), "{id}: {log}");
    }
}
