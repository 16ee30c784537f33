//! `--metrics` on both servers, as real processes, scraped and parsed as Prometheus would: the
//! orchestrator's requests by tenant, kind and code, refusals by rule, source outcomes and
//! per-archive latency histograms, connected Toteboxes; a Totebox's queries, refusals and
//! records. Both endpoints refuse anything but a read.

mod support;

#[path = "../../psp-rpc/tests/support/scrape.rs"]
#[allow(unreachable_pub)]
mod scrape;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, Query};
use psp_core::{IdentityKey, Operation};
use psp_rpc::limits::Limits;
use scrape::{http, scrape, value};
use support::acme_tenant;
use support::processes::{Fleet, ORCHESTRATOR, Proc, totebox_binary};
use tokio::task::LocalSet;

/// A port free now (the server binds it a moment later).
/// The address a server printed as `metrics on http://ADDRESS/metrics`: each binds port 0 and
/// says which port it got, so no two tests can race for one.
fn metrics_address(line: &str) -> SocketAddr {
    line.strip_prefix("metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn both_servers_expose_what_they_did_and_accept_nothing() {
    let mut fleet = Fleet::start(2, 0);
    // prop-01 again, now with its metrics endpoint.
    fleet.toteboxes[0].process.kill();
    let mut command = Command::new(totebox_binary());
    command
        .arg("serve")
        .arg("--config")
        .arg(fleet.path("fleet/prop-01/archive.toml"))
        .args(["--metrics", "127.0.0.1:0"]);
    let (process, lines) = Proc::start_lines(command, fleet.path("prop-01.metrics.log"), 2);
    fleet.toteboxes[0].process = process;
    fleet.toteboxes[0].address = lines[0].split_whitespace().nth(1).unwrap().to_owned();
    let totebox_metrics = metrics_address(&lines[1]);

    let operator = IdentityKey::generate().unwrap();
    let config = fleet.path("orchestrator.toml");
    std::fs::write(
        &config,
        format!(
            "identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:0\"\n{}{}",
            fleet.fleet_toml(),
            acme_tenant(operator.public(), &["prop-01", "prop-02"])
        ),
    )
    .unwrap();
    let mut command = Command::new(ORCHESTRATOR);
    command
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--metrics", "127.0.0.1:0"]);
    let (orchestrator, lines) = Proc::start_lines(command, fleet.path("orchestrator.log"), 2);
    let orchestrator_metrics = metrics_address(&lines[1]);
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    let (address, key) = (words[3].parse().unwrap(), words[5].parse().unwrap());

    let grant = fleet.grant(&operator, &["prop-01", "prop-02"], vec![Operation::Query]);
    let count = Query::aggregate("statements", [], [Aggregate::count()]);
    LocalSet::new()
        .run_until(async {
            let console =
                orchestrator::console::Console::connect(address, &operator, key, Limits::default())
                    .await
                    .unwrap();
            let both = Selector::Ids(vec!["prop-01".into(), "prop-02".into()]);
            let report = console.query(&both, &grant, &count).await.unwrap();
            assert!(report.complete, "{:?}", report.outcomes);
            // An archive outside the tenant: refused before any Totebox is called.
            let refused = console
                .query(&Selector::Ids(vec!["prop-99".into()]), &grant, &count)
                .await
                .unwrap_err();
            let samples = tokio::task::spawn_blocking(move || scrape(orchestrator_metrics))
                .await
                .unwrap();
            let at = |key: &str| value(&samples, key);
            assert_eq!(
                at("psp_orchestrator_requests_total{code=ok,kind=query,tenant=acme}"),
                Some(1.0),
                "{samples:?}"
            );
            assert_eq!(
                at(&format!(
                    "psp_orchestrator_requests_total{{code={},kind=query,tenant=acme}}",
                    refused.code
                )),
                Some(1.0),
                "{refused}: {samples:?}"
            );
            assert_eq!(
                at(&format!(
                    "psp_orchestrator_refusals_total{{rule={}}}",
                    refused.code
                )),
                Some(1.0)
            );
            assert_eq!(
                at("psp_orchestrator_source_outcomes_total{status=ok}"),
                Some(2.0)
            );
            // Latency: one fleet-wide histogram by status, and one gauge per archive (a
            // histogram per archive was ~150,000 series at 10,000 archives).
            assert_eq!(
                at("psp_orchestrator_source_latency_seconds{status=ok}"),
                Some(2.0),
                "{samples:?}"
            );
            for archive in ["prop-01", "prop-02"] {
                assert!(
                    at(&format!(
                        "psp_orchestrator_source_last_latency_seconds{{archive={archive}}}"
                    ))
                    .is_some_and(|seconds| seconds > 0.0),
                    "{archive}: {samples:?}"
                );
            }
            assert!(
                samples.iter().all(|(key, _)| !key
                    .starts_with("psp_orchestrator_source_latency_seconds")
                    || !key.contains("archive=")),
                "{samples:?}"
            );
            assert_eq!(at("psp_orchestrator_connected_toteboxes{}"), Some(2.0));
            // What the console named is nowhere in the labels: no peer grows the label set.
            assert!(
                samples.iter().all(|(key, _)| !key.contains("prop-99")),
                "{samples:?}"
            );

            let samples = tokio::task::spawn_blocking(move || scrape(totebox_metrics))
                .await
                .unwrap();
            assert_eq!(
                value(&samples, "psp_totebox_queries_total{code=ok}"),
                Some(1.0),
                "{samples:?}"
            );
            assert!(
                value(&samples, "psp_totebox_records{collection=statements}")
                    .is_some_and(|n| n > 0.0),
                "{samples:?}"
            );
        })
        .await;
    for endpoint in [orchestrator_metrics, totebox_metrics] {
        let (status, _) = tokio::task::spawn_blocking(move || http(endpoint, "POST"))
            .await
            .unwrap();
        assert!(status.contains("405"), "{endpoint}: {status}");
    }

    // A reload that drops prop-02 from the config: it no longer counts as connected.
    let prop_01 = &fleet.toteboxes[0];
    std::fs::write(
        &config,
        format!(
            "identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:0\"\n[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ {} }}\n{}",
            prop_01.id,
            prop_01.address,
            prop_01.key,
            prop_01.labels,
            acme_tenant(operator.public(), &["prop-01"])
        ),
    )
    .unwrap();
    orchestrator.signal("HUP");
    let asked = std::time::Instant::now();
    while !orchestrator.stderr_text().contains("reloaded the config") {
        assert!(asked.elapsed() < Duration::from_secs(10), "no reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    let connected = loop {
        let samples = tokio::task::spawn_blocking(move || scrape(orchestrator_metrics))
            .await
            .unwrap();
        let connected = value(&samples, "psp_orchestrator_connected_toteboxes{}");
        if connected == Some(1.0) || asked.elapsed() > Duration::from_secs(10) {
            break connected;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        connected,
        Some(1.0),
        "a dropped archive still counts as connected"
    );
    drop(orchestrator);
}
