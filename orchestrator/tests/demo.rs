//! `orchestrator demo`, the README's first command, as a process: a fleet of 12 Toteboxes, a
//! rollup, a reconciliation and an executive summary, printed, and a clean exit within a
//! minute.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_demo_runs_three_viewports_over_twelve_toteboxes() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("demo")
        .output()
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(text.contains("started 12 Toteboxes"), "{text}");
    for section in [
        "== Portfolio rollup",
        "== Cross-entity reconciliation",
        "== Executive summary",
    ] {
        assert!(text.contains(section), "{section} missing:\n{text}");
    }
    // Every region's NOI, the reconciliation's verdicts, and every figure from all 8 properties.
    for region in ["north", "south", "east", "west"] {
        assert!(text.contains(&format!("\n{region} ")), "{region}:\n{text}");
    }
    assert!(
        text.contains("144 balances:") && text.contains("MISMATCHED"),
        "{text}"
    );
    assert_eq!(text.matches(" 8/8 ").count(), 6, "{text}");
    assert_eq!(text.matches("sources did not answer").count(), 0, "{text}");
}
