//! `orchestrator demo`, the README's first command, as a process: a fleet of 12 Toteboxes, a
//! rollup, a reconciliation and an executive summary, printed, and a clean exit within a
//! minute.

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
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

#[test]
fn demo_web_serves_the_web_console_over_the_demo_fleet_until_interrupted() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["demo", "--web", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    // "web console on http://127.0.0.1:PORT/?key=... (bound to loopback: ...); Ctrl-C stops ..."
    let (address, key) = loop {
        let line = lines
            .next()
            .expect("the demo ended before serving")
            .unwrap();
        if line.starts_with("web console on http://") {
            assert!(line.contains("bound to loopback"), "{line}");
            break support::web::web_address(&line);
        }
    };
    let cookie = format!("psp_console={key}");
    let get = |path: &str| {
        support::web::send(
            &address,
            &format!("GET {path}"),
            &address,
            &[("Cookie", &cookie)],
            "",
        )
    };
    let (status, _, fleet) = get("/");
    assert_eq!(status, 200);
    assert_eq!(fleet.matches("class=\"health-up\"").count(), 12, "{fleet}");
    let (status, _, summary) = get("/view/executive-summary?final&label=entity%3Dproperty");
    assert_eq!(status, 200, "{summary}");
    assert_eq!(
        summary.matches("8/8 sources · as of").count(),
        6,
        "{summary}"
    );
    assert!(summary.contains("8/8 sources answered"), "{summary}");
    // The nav links select as the demo does.
    assert!(
        fleet.contains("/view/noi-by-region?label=entity%3Dproperty"),
        "{fleet}"
    );
    unsafe {
        libc::kill(demo.id() as i32, libc::SIGINT);
    }
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = demo.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < until, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
}
