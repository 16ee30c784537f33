//! `psp-totebox serve` as a real process: it answers PSP over real TLS, SIGHUP un-pairs an
//! orchestrator (its open connection is closed, a new one is refused), SIGTERM stops it cleanly.

mod support;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use psp_core::query::{Aggregate, Query, Value};
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, Scope, Window};
use psp_rpc::client::{ConnectError, ToteboxClient};
use psp_rpc::limits::Limits;

/// Kills the server if the test fails half way.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn config(paired: &[String], roots: &[String]) -> String {
    format!(
        "{}\n[server]\nlisten = \"127.0.0.1:0\"\nidentity = \"identity.pem\"\npaired = {:?}\ntrusted_roots = {:?}\n",
        support::CONFIG,
        paired,
        roots
    )
}

#[test]
fn serve_answers_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let totebox = IdentityKey::generate().unwrap();
    totebox.save(&dir.path().join("identity.pem")).unwrap();
    let orchestrator = IdentityKey::from_seed([3; 32]);
    let owner = IdentityKey::from_seed([1; 32]);
    let path = dir.path().join("archive.toml");
    std::fs::write(
        &path,
        config(
            &[orchestrator.public().to_string()],
            &[owner.public().to_string()],
        ),
    )
    .unwrap();
    // Created explicitly, with the command an operator runs.
    let init = Command::new(env!("CARGO_BIN_EXE_psp-totebox"))
        .args(["init", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    {
        let archive = psp_archive::RecordArchive::open_config(&path).unwrap();
        archive
            .append_records("ledger", &support::rows(0..10, "2026-10"), 1)
            .unwrap();
    }

    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_psp-totebox"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "serving 127.0.0.1:PORT as ed25519:..."
    let mut words = line.split_whitespace().skip(1);
    let address: std::net::SocketAddr = words.next().unwrap().parse().unwrap();
    assert_eq!(words.nth(1).unwrap(), totebox.public().to_string());

    let now = psp_core::window::now();
    let chain = Chain::mint(
        &owner,
        Grant {
            holder: orchestrator.public(),
            archives: ArchiveSet::of_ids(["sub-01"]),
            scope: Scope::everything(vec![Operation::Query]),
            window: Window::lasting(now - 5, 300),
        },
    )
    .unwrap();
    let query = Query::aggregate("ledger", [], [Aggregate::count()]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(tokio::task::LocalSet::new().run_until(async {
        let client =
            ToteboxClient::connect(address, &orchestrator, totebox.public(), Limits::default())
                .await
                .unwrap();
        let table = client
            .query(&chain, &query)
            .await
            .unwrap()
            .finalize(&query)
            .unwrap();
        assert_eq!(table.rows[0][0], Value::Int(10));

        // Un-pair the orchestrator and reload.
        std::fs::write(&path, config(&[], &[owner.public().to_string()])).unwrap();
        signal(&server.0, "-HUP");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            client.query(&chain, &query).await.is_err(),
            "the un-paired connection was closed"
        );
        let refused =
            ToteboxClient::connect(address, &orchestrator, totebox.public(), Limits::default())
                .await
                .unwrap_err();
        assert!(
            matches!(refused, ConnectError::NotPaired { .. }),
            "{refused}"
        );

        // A broken config on reload changes nothing (and says why on stderr).
        std::fs::write(&path, "not = [valid toml").unwrap();
        signal(&server.0, "-HUP");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            ToteboxClient::connect(address, &orchestrator, totebox.public(), Limits::default())
                .await
                .is_err()
        );
    }));

    signal(&server.0, "-TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "psp-totebox did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit: {status}");
}

#[test]
fn serve_without_a_server_section_says_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("archive.toml");
    std::fs::write(&path, support::CONFIG).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_psp-totebox"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no [server] section"), "{stderr}");
}
