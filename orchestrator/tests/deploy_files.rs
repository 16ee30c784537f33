//! The deployment files hold what the binaries accept: the Kubernetes ConfigMap's config loads
//! as an orchestrator config, and the service units' and manifests' command lines parse. (The
//! files' own formats are checked in CI: `systemd-analyze verify` and `kubernetes-validate`.)

use std::process::Command;

const MANIFEST: &str = include_str!("../../deploy/kubernetes/orchestrator.yaml");
const UNIT: &str = include_str!("../../deploy/systemd/orchestrator.service");
const TOTEBOX_UNIT: &str = include_str!("../../deploy/systemd/psp-totebox@.service");
const ORCHESTRATOR: &str = env!("CARGO_BIN_EXE_orchestrator");

/// The block scalar under `key: |` in `yaml`, without its indentation.
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines.next().expect("the key");
    let outer = head.len() - head.trim_start().len();
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > outer)
        .map(|l| l.get(outer + 2..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The items of the first YAML list under `key:` (`- item` lines, one level deeper).
fn list_after(yaml: &str, key: &str) -> Vec<String> {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != key);
    lines.next().expect("the key");
    lines
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_manifests_config_loads() {
    let text = block(MANIFEST, "orchestrator.toml");
    assert!(text.contains("[[fleet]]"), "{text}");
    let config = orchestrator::config::Config::parse(&text).unwrap();
    assert_eq!(config.listen, "0.0.0.0:7400");
    assert_eq!(config.fleet.len(), 1);
}

/// `--help` after a command line's arguments checks that every flag in it exists (clap
/// refuses unknown ones before printing help).
fn accepted(args: &[&str]) {
    accepted_by(std::path::Path::new(ORCHESTRATOR), args)
}

fn accepted_by(binary: &std::path::Path, args: &[&str]) {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_units_and_manifests_command_lines_parse() {
    let exec = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/orchestrator "))
        .unwrap();
    accepted(&exec.split_whitespace().collect::<Vec<_>>());
    // The container's arguments and the readiness probe's command, as the manifest has them.
    let args = list_after(MANIFEST, "args:");
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    accepted(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let probe = list_after(MANIFEST, "command:");
    assert_eq!(
        probe.first().map(String::as_str),
        Some("orchestrator"),
        "{probe:?}"
    );
    accepted(&probe[1..].iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn the_totebox_units_command_line_parses() {
    let exec = TOTEBOX_UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/psp-totebox "))
        .unwrap()
        .replace("%i", "prop-01");
    // psp-totebox is built beside the orchestrator (`cargo test --workspace` builds both).
    let binary = std::path::Path::new(ORCHESTRATOR).with_file_name("psp-totebox");
    accepted_by(&binary, &exec.split_whitespace().collect::<Vec<_>>());
}
