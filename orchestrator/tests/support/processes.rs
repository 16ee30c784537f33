//! End-to-end harness with real processes: every Totebox is a `psp-totebox serve` process with
//! its own key, the orchestrator is an `orchestrator serve` process, and the console is the
//! `orchestrator` command run as a process whose `--json` output the tests read.
//!
//! `psp-totebox` is another package's binary, so cargo does not hand its path to these tests:
//! it is found next to the `orchestrator` binary. `cargo test --workspace` (the README's test
//! command) builds it; a narrower run must build it first (`cargo build -p psp-archive`), and
//! is told so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use psp_archive::generate::{GenerateOptions, generate};
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, PublicKey, Scope, Window};
use serde_json::Value as Json;

/// The orchestrator binary.
pub const ORCHESTRATOR: &str = env!("CARGO_BIN_EXE_orchestrator");

/// How long a process may take to say where it listens.
const STARTUP: Duration = Duration::from_secs(30);

/// The `psp-totebox` binary of this build.
pub fn totebox_binary() -> PathBuf {
    let bin = Path::new(ORCHESTRATOR).with_file_name("psp-totebox");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p psp-archive` first (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A child process, killed when dropped, with its stderr kept in a file.
pub struct Proc {
    child: Child,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `command` and waits for its first stdout line (where it listens).
    pub fn start(command: Command, stderr: PathBuf) -> (Proc, String) {
        let (proc, mut lines) = Proc::start_lines(command, stderr, 1);
        (proc, lines.remove(0))
    }

    /// Starts `command` and waits for its first `count` stdout lines.
    pub fn start_lines(mut command: Command, stderr: PathBuf, count: usize) -> (Proc, Vec<String>) {
        let log = std::fs::File::create(&stderr).unwrap();
        let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for _ in 0..count {
                let _ = tx.send(lines.next());
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let proc = Proc { child, stderr };
        let mut read = Vec::new();
        let until = std::time::Instant::now() + STARTUP;
        while read.len() < count {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(Some(Ok(line))) => read.push(line),
                other => panic!(
                    "{:?} did not start ({other:?}): {}",
                    command,
                    proc.stderr_text()
                ),
            }
        }
        (proc, read)
    }

    /// Sends a signal by name (`KILL`, `STOP`, `CONT`, `HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills it with SIGKILL (`kill -9`: no handler runs, nothing is flushed) and reaps it, so
    /// whatever it held (ports, file locks) is free when this returns.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit (up to `limit`) and returns whether it exited cleanly.
    pub fn wait(mut self, limit: Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                std::time::Instant::now() < until,
                "the process did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its open file descriptors now.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Its open files once the count holds still for a quarter of a second (a busy machine may
    /// be closing a socket at the moment of any one reading); at most five seconds.
    pub async fn settled_files(&self) -> usize {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let (mut last, mut steady) = (self.open_files(), 0);
        while steady < 5 && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.open_files();
            steady = if now == last { steady + 1 } else { 0 };
            last = now;
        }
        last
    }

    /// Its threads now.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Its resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// What it logged so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One archive's Totebox process.
pub struct Totebox {
    /// The archive id.
    pub id: String,
    /// Its labels, as a TOML inline table body.
    pub labels: String,
    /// Where it listens.
    pub address: String,
    /// Its machine key.
    pub key: String,
    /// The process.
    pub process: Proc,
}

/// A fleet of Totebox processes, the keys around it, and the files consoles need.
pub struct Fleet {
    /// Everything lives here.
    pub dir: tempfile::TempDir,
    /// The Toteboxes, in manifest order.
    pub toteboxes: Vec<Totebox>,
    /// The root the Toteboxes trust.
    pub owner: IdentityKey,
    /// The orchestrator's machine key (saved as `orchestrator.pem`).
    pub orchestrator: IdentityKey,
}

impl Fleet {
    /// Generates `properties` + `subsidiaries` archives and serves each from its own process.
    pub fn start(properties: usize, subsidiaries: usize) -> Fleet {
        Fleet::start_with(properties, subsidiaries, |_| String::new())
    }

    /// [`Fleet::start`], with `server(i)` (TOML lines) added to the `i`th Totebox's `[server]`.
    pub fn start_with(
        properties: usize,
        subsidiaries: usize,
        server: impl Fn(usize) -> String,
    ) -> Fleet {
        Fleet::start_paired(properties, subsidiaries, server, &[])
    }

    /// [`Fleet::start_with`], every Totebox also paired with `also` (regional orchestrators'
    /// keys, say).
    pub fn start_paired(
        properties: usize,
        subsidiaries: usize,
        server: impl Fn(usize) -> String,
        also: &[PublicKey],
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let owner = IdentityKey::generate().unwrap();
        let orchestrator = IdentityKey::generate().unwrap();
        orchestrator
            .save(&dir.path().join("orchestrator.pem"))
            .unwrap();
        let manifest = generate(&GenerateOptions {
            out: dir.path().join("fleet"),
            seed: 17,
            properties,
            subsidiaries,
            records: 400,
        })
        .unwrap();
        let bin = totebox_binary();
        let toteboxes = manifest
            .archives
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let config = dir.path().join("fleet").join(&entry.config);
                IdentityKey::generate()
                    .unwrap()
                    .save(&config.with_file_name("identity.pem"))
                    .unwrap();
                let mut text = std::fs::read_to_string(&config).unwrap();
                let paired: Vec<String> = std::iter::once(orchestrator.public())
                    .chain(also.iter().copied())
                    .map(|k| k.to_string())
                    .collect();
                text.push_str(&format!(
                    "\n[server]\nlisten = \"127.0.0.1:0\"\nidentity = \"identity.pem\"\npaired = {paired:?}\ntrusted_roots = [\"{}\"]\n{}",
                    owner.public(),
                    server(i)
                ));
                std::fs::write(&config, text).unwrap();
                let mut command = Command::new(&bin);
                command.arg("serve").arg("--config").arg(&config);
                let (process, line) =
                    Proc::start(command, dir.path().join(format!("{}.log", entry.id)));
                // "serving 127.0.0.1:PORT as ed25519:..."
                let words: Vec<&str> = line.split_whitespace().collect();
                let labels: Vec<String> = entry
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k} = {v:?}"))
                    .collect();
                Totebox {
                    id: entry.id.clone(),
                    labels: labels.join(", "),
                    address: words[1].to_owned(),
                    key: words[3].to_owned(),
                    process,
                }
            })
            .collect();
        Fleet {
            dir,
            toteboxes,
            owner,
            orchestrator,
        }
    }

    /// A path in the fleet's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The Totebox serving `id`.
    pub fn totebox(&self, id: &str) -> &Totebox {
        self.toteboxes.iter().find(|t| t.id == id).unwrap()
    }

    /// The `[[fleet]]` section of an orchestrator config.
    pub fn fleet_toml(&self) -> String {
        self.toteboxes
            .iter()
            .map(|t| {
                format!(
                    "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ {} }}\n",
                    t.id, t.address, t.key, t.labels
                )
            })
            .collect()
    }

    /// Puts a fault proxy (forwarding faithfully until told otherwise) in front of Totebox `i`:
    /// an orchestrator config written after this dials the proxy.
    pub fn behind_proxy(&mut self, i: usize) -> super::faults::FaultProxy {
        let proxy = super::faults::FaultProxy::start(self.toteboxes[i].address.parse().unwrap());
        self.toteboxes[i].address = proxy.address.to_string();
        proxy
    }

    /// Writes `orchestrator.toml`: the fleet, `defaults` (TOML lines for `[defaults]`), and one
    /// tenant, `acme`, whose only operator is `operator` and which names `archives`.
    pub fn acme_config(&self, defaults: &str, operator: &PublicKey, archives: &[&str]) -> PathBuf {
        let path = self.path("orchestrator.toml");
        std::fs::write(
            &path,
            format!(
                "identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\n{defaults}{}[[tenants]]\nname = \"acme\"\noperators = [\"{operator}\"]\narchives = {archives:?}\n",
                self.fleet_toml()
            ),
        )
        .unwrap();
        path
    }

    /// The owner's grant of `operations` on `archives` to `holder`, for an hour (for a console
    /// run in the test's own process).
    pub fn grant(
        &self,
        holder: &IdentityKey,
        archives: &[&str],
        operations: Vec<Operation>,
    ) -> Chain {
        Chain::mint(
            &self.owner,
            Grant {
                holder: holder.public(),
                archives: ArchiveSet::of_ids(archives.iter().copied()),
                scope: Scope::everything(operations),
                window: Window::lasting(psp_core::window::now() - 5, 3_600),
            },
        )
        .unwrap()
    }

    /// A new operator: its key saved as `<name>.pem`, and a capability from the owner for
    /// `archives` and `operations` saved as `<name>.cap`.
    pub fn operator(&self, name: &str, archives: &[&str], operations: Vec<Operation>) -> Operator {
        let key = IdentityKey::generate().unwrap();
        key.save(&self.path(&format!("{name}.pem"))).unwrap();
        let chain = Chain::mint(
            &self.owner,
            Grant {
                holder: key.public(),
                archives: ArchiveSet::of_ids(archives.iter().copied()),
                scope: Scope::everything(operations),
                window: Window::lasting(psp_core::window::now() - 5, 3_600),
            },
        )
        .unwrap();
        std::fs::write(self.path(&format!("{name}.cap")), chain.to_bytes()).unwrap();
        Operator {
            name: name.to_owned(),
            key: key.public(),
        }
    }

    /// Writes an orchestrator config named `name` (tenants given as TOML) and returns its path.
    /// It includes the demo's viewports.
    pub fn orchestrator_config(&self, name: &str, tenants: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(
            &path,
            format!(
                "identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 3000\ndeadline_ms = 6000\n{}{tenants}{}",
                self.fleet_toml(),
                orchestrator::demo::VIEWPORTS
            ),
        )
        .unwrap();
        path
    }

    /// Starts `orchestrator serve` on `config` (JSON logs).
    pub fn serve(&self, config: &Path) -> Orchestrator {
        let mut command = Command::new(ORCHESTRATOR);
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--log-format")
            .arg("json");
        let log = config.with_extension(format!(
            "{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let (process, line) = Proc::start(command, log);
        // "serving consoles on 127.0.0.1:PORT as ed25519:..."
        let words: Vec<&str> = line.split_whitespace().collect();
        Orchestrator {
            address: words[3].to_owned(),
            key: words[5].to_owned(),
            process,
        }
    }
}

/// An operator's name (its files are `<name>.pem` and `<name>.cap`) and key.
pub struct Operator {
    /// The file stem.
    pub name: String,
    /// Its public key.
    pub key: PublicKey,
}

/// A running `orchestrator serve`.
pub struct Orchestrator {
    /// Where consoles connect.
    pub address: String,
    /// Its key.
    pub key: String,
    /// The process.
    pub process: Proc,
}

impl Orchestrator {
    /// A Rust console connected as `operator` (call on a `LocalSet`).
    pub async fn connect(
        &self,
        operator: &IdentityKey,
        limits: psp_rpc::limits::Limits,
    ) -> orchestrator::console::Console {
        orchestrator::console::Console::connect(
            self.address.parse().unwrap(),
            operator,
            self.key.parse().unwrap(),
            limits,
        )
        .await
        .unwrap()
    }

    /// Runs a console subcommand as `operator` and returns its output.
    pub fn console(&self, fleet: &Fleet, operator: &Operator, args: &[&str]) -> Output {
        let key = fleet.path(&format!("{}.pem", operator.name));
        let mut command = Command::new(ORCHESTRATOR);
        // The console's kept viewport copies live with the fleet, not in the runner's home.
        command.env("XDG_CACHE_HOME", fleet.path("cache"));
        command.arg(args[0]).args([
            "--connect",
            &self.address,
            "--orchestrator-key",
            &self.key,
            "--key",
        ]);
        command.arg(key);
        if args[0] != "fleet" {
            command
                .arg("--chain")
                .arg(fleet.path(&format!("{}.cap", operator.name)));
        }
        command.args(&args[1..]).output().unwrap()
    }

    /// Runs a console subcommand with `--json` that must succeed, and parses its output.
    pub fn json(&self, fleet: &Fleet, operator: &Operator, args: &[&str]) -> Json {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let output = self.console(fleet, operator, &with_json);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Waits (at most 20 s) until `operator`'s listing of its archives holds `paths` paths
    /// through regional orchestrators (each region has listed its archives), plus `others`.
    pub fn wait_listed(&self, fleet: &Fleet, operator: &Operator, paths: usize, others: usize) {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let listed = self.json(fleet, operator, &["fleet"]);
            let ids: Vec<&str> = listed
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].as_str().unwrap())
                .collect();
            let through = ids.iter().filter(|id| id.contains('/')).count();
            if through == paths && ids.len() == paths + others {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "the regions never listed their archives: {listed}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a console subcommand that must fail, and returns its stderr.
    pub fn refused(&self, fleet: &Fleet, operator: &Operator, args: &[&str]) -> String {
        let output = self.console(fleet, operator, args);
        assert!(
            !output.status.success(),
            "{args:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

/// The status of each source in a report's JSON, by archive.
pub fn statuses(report: &Json) -> Vec<(String, String)> {
    report["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["archive"].as_str().unwrap().to_owned(),
                o["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
