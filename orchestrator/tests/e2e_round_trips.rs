//! Round trips on the console's hop, counted at a proxy in front of a real `orchestrator serve`
//! (TCP's own handshake is not counted: add 1 for it on a network).

mod support;

use psp_core::Operation;
use support::flights;
use support::processes::Fleet;

#[test]
fn fleet_is_the_tls_handshake_and_one_call() {
    let fleet = Fleet::start(2, 0);
    let operator = fleet.operator("acme", &["prop-01", "prop-02"], vec![Operation::Query]);
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &format!(
            "[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = [\"prop-01\", \"prop-02\"]\n",
            operator.key
        ),
    );
    let mut orchestrator = fleet.serve(&config);
    let (proxy, counted) = flights::proxy(orchestrator.address.parse().unwrap());
    orchestrator.address = proxy.to_string();

    let listed = orchestrator.json(&fleet, &operator, &["fleet"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    // The handshake, then `fleet()`, whose answer both confirms the operator's key and is the
    // listing printed: asking again would cost another round trip.
    assert_eq!(counted.count(), 2);
}
