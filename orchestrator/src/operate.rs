//! The console subcommands (`fleet`, `query`, `view`, `command`): connect as an operator, send
//! one request, print its answer as a table or as JSON.
//!
//! The capability given with `--chain` may be held by the operator (the CLI then delegates a
//! five-minute link to the orchestrator, narrowed to nothing wider than the chain) or already by
//! the orchestrator (sent as it is).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use psp_core::{Chain, Grant, IdentityKey, PublicKey, Window};
use psp_rpc::limits::{CallError, Limits};

use crate::console::{Console, InFlight};
use crate::report::Report;
use crate::selection::Selector;

/// How long a delegated request link lasts.
const REQUEST_LIFETIME: u32 = 300;
/// A fan-out running longer than this gets a progress line (on a terminal).
const PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// Where and as whom a console subcommand connects.
#[derive(Debug)]
pub struct Target {
    /// The orchestrator's console address.
    pub address: SocketAddr,
    /// The orchestrator's pinned key.
    pub orchestrator: PublicKey,
    /// The operator's own key.
    pub identity: IdentityKey,
}

impl Target {
    /// Reads the operator key and parses the address and pinned key.
    pub fn new(address: &str, orchestrator: &str, key: &Path) -> Result<Target, String> {
        Ok(Target {
            address: address
                .parse()
                .map_err(|e| format!("--connect {address:?}: {e}"))?,
            orchestrator: orchestrator
                .parse()
                .map_err(|e| format!("--orchestrator-key: {e}"))?,
            identity: IdentityKey::load(key).map_err(|e| e.to_string())?,
        })
    }

    /// Connects, with a deadline long enough for a fan-out's own deadline to pass first.
    pub async fn connect(&self) -> Result<Console, String> {
        let limits = Limits {
            call_timeout: Duration::from_secs(120),
            ..Limits::default()
        };
        Console::connect(self.address, &self.identity, self.orchestrator, limits)
            .await
            .map_err(|e| e.to_string())
    }

    /// The chain to send for one request: `chain` as it is when the orchestrator holds it,
    /// or delegated to the orchestrator by this operator when the operator holds it.
    pub fn request_chain(&self, chain: &Path) -> Result<Chain, String> {
        let bytes =
            std::fs::read(chain).map_err(|e| format!("reading {}: {e}", chain.display()))?;
        let parent = Chain::from_bytes(&bytes).map_err(|e| format!("{}: {e}", chain.display()))?;
        let last = parent.last().clone();
        if last.holder == self.orchestrator {
            return Ok(parent);
        }
        if last.holder != self.identity.public() {
            return Err(format!(
                "{} is held by {}, which is neither your key ({}) nor the orchestrator's",
                chain.display(),
                last.holder,
                self.identity.public()
            ));
        }
        let now = psp_core::window::now();
        let window = Window::lasting(now, REQUEST_LIFETIME)
            .intersect(&last.window)
            .ok_or_else(|| format!("{} is not valid now", chain.display()))?;
        parent
            .delegate(
                &self.identity,
                Grant {
                    holder: self.orchestrator,
                    archives: last.archives.clone(),
                    scope: last.scope.clone(),
                    window,
                },
            )
            .map_err(|e| e.to_string())
    }
}

/// Parses `--archives a,b` and `--label k=v` into a selector (every archive without either).
pub fn selector(archives: Option<&str>, labels: &[String]) -> Result<Selector, String> {
    match (archives, labels.is_empty()) {
        (Some(_), false) => Err("choose archives by --archives or by --label, not both".into()),
        (Some(ids), true) => Ok(Selector::Ids(
            ids.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
        (None, true) => Ok(Selector::All),
        (None, false) => labels
            .iter()
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| format!("--label {l:?}: expected key=value"))
            })
            .collect::<Result<_, _>>()
            .map(Selector::Labels),
    }
}

/// Waits for a fan-out's report. On a terminal, a fan-out that takes longer than a second
/// shows a progress line on stderr, erased when the report arrives.
pub async fn wait(in_flight: &InFlight) -> Result<Report, CallError> {
    let show = std::io::stderr().is_terminal();
    let progress = async {
        if !show {
            return std::future::pending::<std::convert::Infallible>().await;
        }
        tokio::time::sleep(PROGRESS_AFTER).await;
        loop {
            if let Ok((answered, total)) = in_flight.progress().await {
                eprint!("\r\x1b[2K{answered}/{total} sources answered...");
                let _ = std::io::stderr().flush();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let started = std::time::Instant::now();
    let report = tokio::select! {
        report = in_flight.report() => report,
        never = progress => match never {},
    };
    if show && started.elapsed() >= PROGRESS_AFTER {
        eprint!("\r\x1b[2K");
    }
    report
}

/// Runs a console subcommand's future on a fresh current-thread runtime (the console's RPC
/// system is `!Send`, so it runs on a `LocalSet`).
pub fn run<T>(work: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    tokio::task::LocalSet::new().block_on(&runtime, work)
}

/// A command's argument message: the file's bytes as they are, or for the commands whose
/// arguments `schema/totebox.capnp` defines as one text field, built from that text
/// (`seal --period 2026-10`, `snapshot --snapshot-name nightly-2026-11-28`).
pub fn command_arguments(
    name: &str,
    file: Option<&Path>,
    period: Option<&str>,
    snapshot_name: Option<&str>,
) -> Result<Vec<u8>, String> {
    use psp_schema::totebox_capnp::{seal_arguments, snapshot_arguments};
    let mut message = capnp::message::Builder::new_default();
    match (file, period, snapshot_name) {
        (Some(file), None, None) => {
            return std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()));
        }
        (None, None, None) => return Ok(Vec::new()),
        (None, Some(period), None) if name == "seal" => message
            .init_root::<seal_arguments::Builder<'_>>()
            .set_period(period),
        (None, None, Some(snapshot)) if name == "snapshot" => message
            .init_root::<snapshot_arguments::Builder<'_>>()
            .set_name(snapshot),
        _ => {
            return Err(
                "give --arguments FILE, or --period for seal, or --snapshot-name for snapshot"
                    .into(),
            );
        }
    }
    Ok(capnp::serialize::write_message_to_words(&message))
}
