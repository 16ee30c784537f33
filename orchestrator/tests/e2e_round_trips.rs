//! Round trips counted at a proxy on either hop of a real `orchestrator serve`: in front of it
//! (the console's hop) and in front of a Totebox (downstream). TCP's own handshake is not
//! counted: add 1 for it on a network.

mod support;

use psp_core::Operation;
use support::acme_tenant;
use support::flights::{self, Flights};
use support::processes::{Fleet, Operator, Orchestrator};

/// `orchestrator serve` over `fleet` with one tenant, acme, whose operator is `operator`,
/// reached by consoles through a round-trip counting proxy.
fn behind_a_proxy(fleet: &Fleet, operator: &Operator) -> (Orchestrator, Flights) {
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &acme_tenant(operator.key, &["prop-01", "prop-02"]),
    );
    let mut orchestrator = fleet.serve(&config);
    let (proxy, counted) = flights::proxy(orchestrator.address.parse().unwrap());
    orchestrator.address = proxy.to_string();
    (orchestrator, counted)
}

#[test]
fn fleet_is_the_tls_handshake_and_one_call() {
    let fleet = Fleet::start(2, 0);
    let operator = fleet.operator("acme", &["prop-01", "prop-02"], vec![Operation::Query]);
    let (orchestrator, counted) = behind_a_proxy(&fleet, &operator);

    let listed = orchestrator.json(&fleet, &operator, &["fleet"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    // The handshake, then `fleet()`, whose answer both confirms the operator's key and is the
    // listing printed: asking again would cost another round trip.
    assert_eq!(counted.count(), 2);
}

#[test]
fn the_first_query_after_start_is_one_round_trip_downstream() {
    let mut fleet = Fleet::start(1, 0);
    let operator = fleet.operator("acme", &["prop-01"], vec![Operation::Query]);
    // The orchestrator reaches the Totebox only through the counting proxy.
    let (proxy, counted) = flights::proxy(fleet.toteboxes[0].address.parse().unwrap());
    fleet.toteboxes[0].address = proxy.to_string();
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &acme_tenant(operator.key, &["prop-01"]),
    );
    let orchestrator = fleet.serve(&config);
    // The background dialer connects the Totebox without being asked: TLS, then `identify`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let listed = orchestrator.json(&fleet, &operator, &["fleet"]);
        if listed[0]["health"] == "up" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never connected: {listed}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(counted.so_far(), 2, "the handshake and identify");
    // The first query: one round trip downstream, the call and its answer.
    let answered = orchestrator.json(
        &fleet,
        &operator,
        &[
            "query",
            "--collection",
            "statements",
            "--aggregate",
            "sum(noi) as noi",
        ],
    );
    assert_eq!(answered["outcomes"][0]["status"], "ok", "{answered}");
    assert_eq!(counted.so_far(), 3, "one more round trip for the query");
}

#[test]
fn without_the_dialer_a_first_query_sends_its_call_beside_identify() {
    let mut fleet = Fleet::start(1, 0);
    let operator = fleet.operator("acme", &["prop-01"], vec![Operation::Query]);
    let (proxy, counted) = flights::proxy(fleet.toteboxes[0].address.parse().unwrap());
    fleet.toteboxes[0].address = proxy.to_string();
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &acme_tenant(operator.key, &["prop-01"]),
    );
    // No background dialer: the query finds no connection and dials it.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[defaults]\n", "[defaults]\nredial_ms = 0\n", 1),
    )
    .unwrap();
    let orchestrator = fleet.serve(&config);
    let answered = orchestrator.json(
        &fleet,
        &operator,
        &[
            "query",
            "--collection",
            "statements",
            "--aggregate",
            "sum(noi) as noi",
        ],
    );
    assert_eq!(answered["outcomes"][0]["status"], "ok", "{answered}");
    // The handshake, then `identify` and the query in one flight: not identify, then the query.
    assert_eq!(counted.count(), 2);
}

#[test]
fn a_request_by_id_is_the_tls_handshake_and_one_call() {
    let fleet = Fleet::start(2, 0);
    let operator = fleet.operator("acme", &["prop-01", "prop-02"], vec![Operation::Query]);
    let stranger = fleet.operator("stranger", &["prop-01"], vec![Operation::Query]);
    let (mut orchestrator, counted) = behind_a_proxy(&fleet, &operator);

    let query = [
        "query",
        "--archives",
        "prop-01,prop-02",
        "--collection",
        "statements",
        "--aggregate",
        "sum(noi) as noi",
    ];
    let answered = orchestrator.json(&fleet, &operator, &query);
    assert_eq!(answered["complete"], true, "{answered}");
    // The handshake, then the request itself: no call before it to confirm the key.
    assert_eq!(counted.count(), 2);

    // A key the orchestrator does not know is refused by that request, with the code a
    // confirming call would have given.
    let refused = orchestrator.refused(&fleet, &stranger, &query);
    assert!(refused.contains("tenant.not-an-operator"), "{refused}");

    // A config viewport by name, the first time: its definition, then the view (the console
    // needs the definition to narrow the request link to the viewport's collections and fields).
    let view = [
        "view",
        "--name",
        "noi-by-region",
        "--archives",
        "prop-01,prop-02",
    ];
    let (proxy, counted) = flights::proxy(orchestrator.address.parse().unwrap());
    orchestrator.address = proxy.to_string();
    let first = orchestrator.json(&fleet, &operator, &view);
    assert_eq!(first["complete"], true, "{first}");
    assert_eq!(counted.count(), 3);

    // Again: the console kept the definition, and sends it to be computed if the config still
    // has it, in one call.
    let (proxy, counted) = flights::proxy(orchestrator.address.parse().unwrap());
    orchestrator.address = proxy.to_string();
    let again = orchestrator.json(&fleet, &operator, &view);
    assert_eq!(again["table"], first["table"]);
    assert_eq!(counted.count(), 2);
}

#[test]
fn a_kept_viewport_the_config_no_longer_has_is_asked_for_again() {
    let fleet = Fleet::start(2, 0);
    let operator = fleet.operator("acme", &["prop-01", "prop-02"], vec![Operation::Query]);
    let (before, _) = behind_a_proxy(&fleet, &operator);
    let view = [
        "view",
        "--name",
        "noi-by-region",
        "--archives",
        "prop-01,prop-02",
    ];
    let by_region = before.json(&fleet, &operator, &view);
    assert!(
        by_region["table"].to_string().contains("region"),
        "{by_region}"
    );

    // The same orchestrator key, its config's "noi-by-region" now grouped by portfolio.
    let changed = fleet.orchestrator_config(
        "changed.toml",
        &acme_tenant(operator.key, &["prop-01", "prop-02"]),
    );
    let text = std::fs::read_to_string(&changed).unwrap();
    std::fs::write(
        &changed,
        text.replacen("labels = [\"region\"]", "labels = [\"portfolio\"]", 1),
    )
    .unwrap();
    let mut after = fleet.serve(&changed);
    let (proxy, counted) = flights::proxy(after.address.parse().unwrap());
    after.address = proxy.to_string();
    let by_portfolio = after.json(&fleet, &operator, &view);
    // The kept copy is refused, the definition asked for, and the view computed from it.
    assert_eq!(
        counted.count(),
        4,
        "handshake, stale copy, definition, view"
    );
    assert_ne!(by_portfolio["table"], by_region["table"]);
    assert!(
        by_portfolio["table"].to_string().contains("portfolio"),
        "{by_portfolio}"
    );
    // And the new copy is kept: one call next time.
    let (proxy, counted) = flights::proxy(after.address.parse().unwrap());
    after.address = proxy.to_string();
    let again = after.json(&fleet, &operator, &view);
    assert_eq!(again["table"], by_portfolio["table"]);
    assert_eq!(counted.count(), 2);
}
