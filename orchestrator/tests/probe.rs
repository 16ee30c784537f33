//! `orchestrator probe --config`: the readiness check the deployment files use. It passes only
//! when the orchestrator the config describes is serving TLS with the config's key.

mod support;

use std::process::Command;

use psp_core::IdentityKey;
use support::processes::{Fleet, ORCHESTRATOR};

fn probe(config: &std::path::Path) -> std::process::Output {
    Command::new(ORCHESTRATOR)
        .args(["probe", "--timeout-ms", "2000", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn a_probe_passes_only_against_a_serving_orchestrator_with_the_configs_key() {
    let fleet = Fleet::start(1, 0);
    // A fixed port, so the probe can find the orchestrator from its config alone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = fleet.path("orchestrator.toml");
    let text = format!(
        "identity = \"orchestrator.pem\"\nlisten = \"0.0.0.0:{port}\"\n{}",
        fleet.fleet_toml()
    );
    std::fs::write(&config, &text).unwrap();

    // Nothing serves yet.
    let down = probe(&config);
    assert!(!down.status.success());
    assert!(!String::from_utf8_lossy(&down.stderr).is_empty());

    let orchestrator = fleet.serve(&config);
    let up = probe(&config);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let said = String::from_utf8_lossy(&up.stdout);
    assert!(said.contains(&orchestrator.key), "{said}");
    assert!(said.contains(&format!("127.0.0.1:{port}")), "{said}");
    // The probe presents the orchestrator's own key: refused, and not logged as an attack.
    for _ in 0..3 {
        assert!(probe(&config).status.success());
    }
    let log = orchestrator.process.stderr_text();
    assert!(
        !log.contains("not paired"),
        "a probe logged as a refusal: {log}"
    );

    // That key is still no operator's: a console presenting it is refused, and a key nobody
    // paired is still logged as a security event.
    let fleet_as = |key_file: &str| {
        Command::new(ORCHESTRATOR)
            .args(["fleet", "--connect", &orchestrator.address])
            .args(["--orchestrator-key", &orchestrator.key, "--key"])
            .arg(fleet.path(key_file))
            .output()
            .unwrap()
    };
    let own_key = fleet_as("orchestrator.pem");
    assert!(!own_key.status.success());
    let refused = String::from_utf8_lossy(&own_key.stderr);
    assert!(refused.contains("tenant.not-an-operator"), "{refused}");
    IdentityKey::generate()
        .unwrap()
        .save(&fleet.path("stranger.pem"))
        .unwrap();
    let stranger = fleet_as("stranger.pem");
    assert!(!stranger.status.success());
    let asked = std::time::Instant::now();
    while !orchestrator.process.stderr_text().contains("not paired") {
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(5),
            "a stranger's key was not logged"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // A config with another key, pointed at the same address: the server cannot prove it.
    IdentityKey::generate()
        .unwrap()
        .save(&fleet.path("impostor.pem"))
        .unwrap();
    let other = fleet.path("other.toml");
    std::fs::write(&other, text.replace("orchestrator.pem", "impostor.pem")).unwrap();
    let wrong = probe(&other);
    assert!(!wrong.status.success(), "passed against another key");
}
