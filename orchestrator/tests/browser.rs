//! The web console in a real browser: headless Chromium loads every page of `console-web` over a
//! real fleet and orchestrator (processes), runs the page's own script under its content
//! security policy, and the DOM it ends with is checked against what the CLI prints for the
//! same viewports. A hostile string from the fleet must stay text. Each page is also saved as a
//! screenshot (`$PSP_SCREENSHOTS`, or `target/browser-screenshots/`), which CI keeps.
//!
//! Needs `chromium` on PATH (or `$PSP_CHROMIUM`); built only with `--features browser-tests`.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::web::{HOSTILE, Site, escaped, text};

/// Headless Chromium on `url` with `what` (`--dump-dom`, or `--screenshot=...`), given time for
/// the page's script to follow its viewport to the end. Returns stdout.
fn chromium(what: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let binary = std::env::var("PSP_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let output = Command::new(&binary)
        .args([
            "--headless",
            // CI runs as root in a container, where Chromium's sandbox cannot start; the
            // browser loads only this test's local pages.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1100",
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(what)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e} (install chromium)"));
    assert!(
        output.status.success(),
        "{binary} {what} {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn screenshots() -> PathBuf {
    let dir = std::env::var_os("PSP_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_page_shows_the_cli_figures_in_a_real_browser_and_the_fleet_stays_text() {
    let site = Site::start();
    let url = |path: &str| site.url(path);
    let pages = [
        ("fleet", "/".to_owned()),
        (
            "noi-by-region",
            "/view/noi-by-region?label=entity%3Dproperty".to_owned(),
        ),
        (
            "intercompany",
            "/view/intercompany?label=entity%3Dsubsidiary".to_owned(),
        ),
        (
            "executive-summary",
            "/view/executive-summary?label=entity%3Dproperty".to_owned(),
        ),
    ];
    let dir = screenshots();
    let mut doms = Vec::new();
    for (name, path) in &pages {
        let dom = chromium("--dump-dom", &url(path));
        // No element came from the fleet: the hostile label is a text node wherever it shows.
        assert!(
            !dom.contains(HOSTILE),
            "{name}: markup from the fleet:\n{dom}"
        );
        let shot = dir.join(format!("{name}.png"));
        chromium(&format!("--screenshot={}", shot.display()), &url(path));
        assert!(
            std::fs::metadata(&shot).unwrap().len() > 10_000,
            "{name}: an empty page"
        );
        doms.push(dom);
    }
    let [fleet, noi, intercompany, summary] = &doms[..] else {
        unreachable!()
    };

    for id in site.ids() {
        assert!(fleet.contains(&id), "{id} missing from the fleet page");
    }
    assert!(
        fleet.contains(&escaped(HOSTILE)),
        "the hostile label is shown as text"
    );

    // The viewport pages ran their script to the final view (the page marks it), and show
    // what the CLI prints.
    for (name, dom) in [
        ("noi", noi),
        ("intercompany", intercompany),
        ("summary", summary),
    ] {
        assert!(
            dom.contains("data-final=\"1\""),
            "{name}: the script never reached the end:\n{dom}"
        );
        assert!(dom.contains("class=\"complete\""), "{name}:\n{dom}");
    }
    assert!(noi.contains("<svg"), "the rollup is charted");
    let rows = site.cli("noi-by-region", "entity=property");
    for row in rows["table"]["rows"].as_array().unwrap() {
        for value in row.as_array().unwrap() {
            assert!(
                noi.contains(&escaped(&text(value))),
                "{value} missing:\n{noi}"
            );
        }
    }
    let entries = site.cli("intercompany", "entity=subsidiary")["reconciliation"]["entries"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        intercompany.contains(&format!("{entries} balances")),
        "{intercompany}"
    );
    for kpi in site.cli("executive-summary", "entity=property")["summary"]["kpis"]
        .as_array()
        .unwrap()
    {
        assert!(
            summary.contains(&text(&kpi["value"])),
            "{kpi} missing:\n{summary}"
        );
    }
    println!("screenshots in {}", dir.display());
}
