//! The `orchestrator` command as real processes: keygen, grant and delegate write files any PSP
//! implementation can read; `serve` answers a console over real TLS and stops on SIGTERM.

mod support;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orchestrator::console::Console;
use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, AggregateFunction, Query, Value};
use psp_core::{Chain, IdentityKey};
use psp_rpc::limits::Limits;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str]) -> String {
    let output = Command::new(BIN).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_grant_delegate_and_serve_work_as_commands() {
    let w = support::world(2).await;
    let dir = w.dir.path();
    let path = |name: &str| dir.join(name).display().to_string();
    // Printed keys are the saved keys.
    let printed = run(&["keygen", "--out", &path("spare.pem")]);
    assert_eq!(
        printed.trim(),
        IdentityKey::load(&dir.join("spare.pem"))
            .unwrap()
            .public()
            .to_string()
    );
    w.owner.save(&dir.join("owner.pem")).unwrap();
    w.operator.save(&dir.join("operator.pem")).unwrap();
    w.orchestrator.save(&dir.join("orchestrator.pem")).unwrap();

    run(&[
        "grant",
        "--key",
        &path("owner.pem"),
        "--holder",
        &w.operator.public().to_string(),
        "--archives",
        "prop-01,prop-02",
        "--out",
        &path("operator.cap"),
    ]);
    run(&[
        "delegate",
        "--chain",
        &path("operator.cap"),
        "--key",
        &path("operator.pem"),
        "--holder",
        &w.orchestrator.public().to_string(),
        "--lifetime",
        "120",
        "--out",
        &path("request.cap"),
    ]);
    let chain = Chain::from_bytes(&std::fs::read(dir.join("request.cap")).unwrap()).unwrap();
    assert_eq!(chain.links().len(), 2);
    assert_eq!(chain.last().holder, w.orchestrator.public());
    // Delegating more than you hold is refused.
    let widened = Command::new(BIN)
        .args([
            "delegate",
            "--chain",
            &path("operator.cap"),
            "--key",
            &path("operator.pem"),
            "--holder",
            &w.orchestrator.public().to_string(),
            "--operations",
            "query,command:seal",
            "--out",
            &path("wide.cap"),
        ])
        .output()
        .unwrap();
    assert!(!widened.status.success());
    assert!(String::from_utf8_lossy(&widened.stderr).contains("may only narrow"));

    let mut config = String::from("identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:0\"\n");
    for s in &w.sources {
        config.push_str(&format!(
            "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\n",
            s.archive, s.address, s.key
        ));
    }
    config.push_str(&format!("[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = [\"prop-01\", \"prop-02\"]\n", w.operator.public()));
    std::fs::write(dir.join("orchestrator.toml"), config).unwrap();

    let mut server = Running(
        Command::new(BIN)
            .args(["serve", "--config", &path("orchestrator.toml")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address: std::net::SocketAddr = line.split_whitespace().nth(3).unwrap().parse().unwrap();

    let query = Query::aggregate(
        "statements",
        [],
        [
            Aggregate::of(AggregateFunction::Sum, "noi"),
            Aggregate::count(),
        ],
    );
    let view = tokio::task::LocalSet::new()
        .run_until(async {
            let console = Console::connect(
                address,
                &w.operator,
                w.orchestrator.public(),
                Limits::default(),
            )
            .await
            .unwrap();
            console.query(&Selector::All, &chain, &query).await.unwrap()
        })
        .await;
    assert!(view.complete, "{:?}", view.outcomes);
    assert_eq!(view.table().unwrap().rows[0][1], Value::Int(48));

    Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "no clean stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}
