//! End to end with real processes: `orchestrator console-web` over a real fleet and
//! orchestrator. Its pages show what the CLI prints for the same viewports; a hostile string
//! from the fleet is text, never markup; every page carries the strict content security policy;
//! only GET, and only to its own address, is served.

mod support;

use support::web::{HOSTILE, Site, escaped, fetch, post, text};

#[test]
fn the_pages_show_the_cli_figures_escape_the_fleet_and_refuse_what_they_must() {
    let mut site = Site::start();
    let address = &site.address;
    let ids = site.ids();
    let get = |path: &str| site.get(path);
    // Without its secret, nothing: not another user of the machine, not another site's page.
    let (status, _, _) = fetch(address, "GET", "/", address);
    assert_eq!(status, 401);
    let first = fetch(address, "GET", &format!("/?key={}", site.key), address);
    assert_eq!(first.0, 303, "the first visit moves the key to a cookie");
    assert!(first.1.contains("set-cookie: psp_console=") && first.1.contains("samesite=strict"));
    let deep = fetch(
        address,
        "GET",
        &format!(
            "/view/noi-by-region?label=entity%3Dproperty&key={}",
            site.key
        ),
        address,
    );
    assert!(
        deep.1
            .contains("location: /view/noi-by-region?label=entity%3dproperty\r\n"),
        "the page asked for, without its key: {}",
        deep.1
    );
    let (status, _, _) = send_cross_site(&site);
    assert_eq!(
        status, 403,
        "a request another site's page makes is refused"
    );

    // The fleet: every archive, the hostile label as text.
    let (status, head, body) = get("/");
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    for id in &ids {
        assert!(body.contains(id.as_str()), "{id} missing");
    }
    assert!(
        body.contains(&escaped(HOSTILE)),
        "the label is shown, escaped"
    );
    assert!(!body.contains(HOSTILE), "the label never becomes markup");
    let (_, _, filtered) = get("/?label=entity%3Dsubsidiary");
    assert!(filtered.contains("sub-01") && !filtered.contains("prop-01"));

    // Each viewport: the figures the CLI prints for it.
    let properties = "entity=property";
    let (status, _, rollup) = get("/view/noi-by-region?final&label=entity%3Dproperty");
    assert_eq!(status, 200, "{rollup}");
    assert!(rollup.contains("<svg"), "the rollup is charted");
    assert!(
        !rollup.contains(HOSTILE),
        "no markup from the fleet, in the table or the chart"
    );
    let noi = site.cli("noi-by-region", properties);
    for row in noi["table"]["rows"].as_array().unwrap() {
        for value in row.as_array().unwrap() {
            assert!(rollup.contains(&escaped(&text(value))), "{value} missing");
        }
    }
    let (_, _, recon) = get("/view/intercompany?final&label=entity%3Dsubsidiary");
    let entries = site.cli("intercompany", "entity=subsidiary")["reconciliation"]["entries"]
        .as_array()
        .unwrap()
        .len();
    assert!(recon.contains(&format!("{entries} balances")), "{recon}");
    let (_, _, summary) = get("/view/executive-summary?final&label=entity%3Dproperty");
    for kpi in site.cli("executive-summary", properties)["summary"]["kpis"]
        .as_array()
        .unwrap()
    {
        assert!(summary.contains(&escaped(kpi["name"].as_str().unwrap())));
        assert!(summary.contains(&text(&kpi["value"])), "{kpi}");
    }

    // Progressive: the page starts the request and follows it with its one script, asking
    // for the view so far until it is final; the last view has the figures.
    let (status, _, shell) = get("/view/noi-by-region?label=entity%3Dproperty");
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
    for row in noi["table"]["rows"].as_array().unwrap() {
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

    // What it refuses. Without --commands, no command page, and no POST at all.
    assert_eq!(get("/command").0, 404);
    let p = site.post("/command", &[], "name=ping");
    assert_eq!(p.0, 405, "{p:?}");
    assert_eq!(get("/view/not-offered").0, 404);
    assert_eq!(fetch(address, "POST", "/", address).0, 401);
    assert_eq!(site.post("/", &[], "").0, 405);
    let (status, _, _) = fetch(address, "GET", "/", "rebound.example:80");
    assert_eq!(
        status, 421,
        "a page elsewhere cannot read it through another name"
    );

    // The orchestrator restarts (its connections close, as after its idle limit): the next
    // page connects again.
    let config = site.fleet.path("orchestrator.toml");
    let listen = format!("listen = \"{}\"", site.orchestrator.address);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("listen = \"127.0.0.1:0\"", &listen)).unwrap();
    site.orchestrator.process.kill();
    site.orchestrator = site.fleet.serve(&config);
    let (status, _, body) = site.get("/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("prop-01"));
}

#[test]
fn a_command_is_offered_only_when_asked_confirmed_first_and_refused_from_elsewhere() {
    let site = Site::offering(true);
    let address = site.address.as_str();
    let (status, _, form) = site.get("/command");
    assert_eq!(status, 200, "{form}");
    let token = form
        .split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let fields = format!(
        "token={token}&name=snapshot&snapshot_name=web-nightly&labels=entity%3Dproperty&idempotency_key=web-snapshot-0000000001"
    );
    let own = format!("http://{address}");

    // Refused: no token, another token, another origin.
    let without = fields.replace(&format!("token={token}&"), "");
    assert_eq!(site.post("/command", &[], &without).0, 403);
    let forged = fields.replace(&token, "0000");
    assert_eq!(site.post("/command", &[], &forged).0, 403);
    let elsewhere = site.post("/command", &[("Origin", "http://evil.example")], &fields);
    assert_eq!(elsewhere.0, 403);
    assert_eq!(
        post(address, "/command", &[], &fields).0,
        401,
        "no secret, no command"
    );
    // A form past 16 KiB is refused whole (413), though its token and origin are right.
    let padded = format!("{fields}&padding={}", "a".repeat(16 * 1024));
    assert_eq!(site.post("/command", &[("Origin", &own)], &padded).0, 413);

    // First the confirmation, naming every archive it will reach; nothing is applied yet.
    let (status, _, confirm) = site.post("/command", &[("Origin", &own)], &fields);
    assert_eq!(status, 200, "{confirm}");
    for id in ["prop-01", "prop-02", "prop-03", "prop-04"] {
        assert!(confirm.contains(id), "{id} missing: {confirm}");
    }
    assert!(!confirm.contains("sub-01"), "{confirm}");
    assert!(confirm.contains("name=\"confirm\" value=\"yes\""));

    // Confirmed: applied on each, once; again: a replay on each.
    let confirmed = format!("{fields}&confirm=yes");
    let (status, _, applied) = site.post("/command", &[("Origin", &own)], &confirmed);
    assert_eq!(status, 200, "{applied}");
    assert_eq!(
        applied.matches(">applied<").count(),
        4,
        "the preview applied nothing: {applied}"
    );
    let (_, _, again) = site.post("/command", &[], &confirmed);
    assert_eq!(again.matches(">replayed<").count(), 4, "{again}");
}

/// A GET with the secret that a browser marks as made by another site's page.
fn send_cross_site(site: &Site) -> (u16, String, String) {
    let cookie = format!("psp_console={}", site.key);
    support::web::send(
        &site.address,
        "GET /view/noi-by-region",
        &site.address,
        &[("Cookie", &cookie), ("Sec-Fetch-Site", "cross-site")],
        "",
    )
}

#[test]
fn connections_past_the_cap_wait_unaccepted_and_are_served_once_places_free() {
    const CAP: usize = orchestrator::web::MOST_CONNECTIONS;
    let site = Site::start();
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{}/fd", site.web.pid()))
            .unwrap()
            .count()
    };
    let before = descriptors();
    // A local program opens far more connections than the cap and says nothing on them.
    let silent: Vec<std::net::TcpStream> = (0..CAP * 3)
        .map(|_| std::net::TcpStream::connect(&site.address).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let held = descriptors().saturating_sub(before);
    assert!(
        (CAP - 8..=CAP + 8).contains(&held),
        "{held} descriptors for {} silent connections (cap {CAP})",
        silent.len()
    );
    // The operator's page waits behind them, unaccepted...
    let (address, cookie) = (site.address.clone(), format!("psp_console={}", site.key));
    let page = std::thread::spawn(move || {
        support::web::send(&address, "GET /", &address, &[("Cookie", &cookie)], "")
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!page.is_finished(), "served past the cap");
    // ...and is served once they go.
    drop(silent);
    let (status, _, body) = page.join().unwrap();
    assert_eq!(status, 200, "{body}");

    // A refused request (no secret), though it asks to keep its connection, loses it: a place
    // is not held by asking again and again on one connection.
    use std::io::{Read, Write};
    let mut refused = std::net::TcpStream::connect(&site.address).unwrap();
    refused
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(refused, "GET / HTTP/1.1\r\nHost: {}\r\n\r\n", site.address).unwrap();
    let mut answer = String::new();
    refused
        .read_to_string(&mut answer)
        .expect("the server closes a refused client's connection");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
}
