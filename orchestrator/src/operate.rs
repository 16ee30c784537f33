//! The console subcommands (`fleet`, `query`, `view`, `command`): connect as an operator, send
//! one request, print its answer as a table or as JSON.
//!
//! The capability given with `--chain` may be held by the operator (the console then delegates,
//! per request, a link to the orchestrator naming only what the request needs and ending with
//! its deadline plus clock skew; a command's link is bound to that one command) or already by the
//! orchestrator (sent as it is).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use psp_core::{Chain, IdentityKey, PublicKey};
use psp_rpc::limits::{CallError, Limits};

use crate::console::{Console, InFlight, Options};
use crate::fanout::SourceStatus;
use crate::report::Report;
use crate::selection::Selector;
use crate::viewport_cache::ViewportCache;

pub use crate::console::DEFAULT_DEADLINE;
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

    /// Connects, with a deadline long enough for a fan-out's own deadline to pass first, and
    /// confirms the session with the tenant's listing (which selections by label or all need).
    pub async fn connect(&self) -> Result<Console, String> {
        Console::connect(
            self.address,
            &self.identity,
            self.orchestrator,
            Self::limits(),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Connects for one request that selects `selector`: by id, without asking anything first,
    /// so the request leaves in the flight after the TLS handshake (an unknown operator key is
    /// refused by the request itself); by label or all, with the listing ([`Target::connect`]).
    pub async fn connect_for(&self, selector: &Selector) -> Result<Console, String> {
        match selector {
            Selector::Ids(_) => Console::open(
                self.address,
                &self.identity,
                self.orchestrator,
                Self::limits(),
            )
            .await
            .map_err(|e| e.to_string()),
            _ => self.connect().await,
        }
    }

    fn limits() -> Limits {
        Limits {
            call_timeout: Duration::from_secs(120),
            ..Limits::default()
        }
    }

    /// Reads the capability file given with `--chain`: held by this operator (the console
    /// delegates a narrowed link from it per request) or already by the orchestrator.
    pub fn grant(&self, chain: &Path) -> Result<Chain, String> {
        let bytes =
            std::fs::read(chain).map_err(|e| format!("reading {}: {e}", chain.display()))?;
        let grant = Chain::from_bytes(&bytes).map_err(|e| format!("{}: {e}", chain.display()))?;
        let holder = grant.last().holder;
        if holder != self.orchestrator && holder != self.identity.public() {
            return Err(format!(
                "{} is held by {holder}, which is neither your key ({}) nor the orchestrator's",
                chain.display(),
                self.identity.public()
            ));
        }
        Ok(grant)
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

/// Waits for a fan-out's report. On a terminal, a fan-out that takes longer than a second is
/// followed with progressive results (`next`, at most four a second) and shows a progress line
/// on stderr (sources answered, and those that failed so far, by outcome), erased when the
/// report arrives. Against an orchestrator without `next`, it waits for the report alone.
pub async fn wait(in_flight: &InFlight) -> Result<Report, CallError> {
    wait_showing(in_flight, true).await
}

/// [`wait`], showing progress only when `show` (a server, such as the web console, never
/// writes progress lines to its terminal).
pub async fn wait_showing(in_flight: &InFlight, show: bool) -> Result<Report, CallError> {
    if !show || !std::io::stderr().is_terminal() {
        return in_flight.report().await;
    }
    tokio::select! {
        report = in_flight.report() => return report,
        () = tokio::time::sleep(PROGRESS_AFTER) => {}
    }
    let mut after = 0;
    let report = loop {
        let update = match in_flight.next(after).await {
            Ok(update) => update,
            Err(e) if e.code.ends_with("unimplemented") => {
                break in_flight.report().await;
            }
            Err(e) => break Err(e),
        };
        if update.done {
            break Ok(update.report);
        }
        after = update.answered;
        eprint!("\r\x1b[2K{}", progress_line(&update));
        let _ = std::io::stderr().flush();
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprint!("\r\x1b[2K");
    report
}

/// "answered/total sources answered..." with the sources that failed so far, by outcome.
fn progress_line(update: &crate::console::Update) -> String {
    let mut failed: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &update.report.outcomes {
        if o.status != SourceStatus::Ok {
            *failed.entry(o.status.word()).or_default() += 1;
        }
    }
    let failed: Vec<String> = failed.iter().map(|(w, n)| format!("{n} {w}")).collect();
    let mut line = format!("{}/{} sources answered", update.answered, update.total);
    if !failed.is_empty() {
        line.push_str(&format!(" ({})", failed.join(", ")));
    }
    line.push_str("...");
    line
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

/// Codes that say a kept viewport copy cannot be used as it is: stale, gone, or an orchestrator
/// that cannot check a copy. The definition is asked for again.
const COPY_REFUSED: [&str; 3] = [
    "viewport.changed",
    "viewport.unknown",
    "transport.unimplemented",
];

/// The config viewport `name` computed under `grant`: from the copy kept in `copies` (one call,
/// if the config still holds it), else by asking for the definition, keeping it, and computing
/// it (two calls). Progress is shown on a terminal when `show`.
pub async fn view_by_name(
    console: &Console,
    copies: Option<&ViewportCache>,
    selector: &Selector,
    grant: &Chain,
    name: &str,
    (options, show): (Options, bool),
) -> Result<Report, String> {
    if let Some(copy) = copies.and_then(|c| c.get(name)) {
        let in_flight = console
            .start_configured_view(selector, grant, &copy, options)
            .map_err(|e| e.to_string())?;
        match wait_showing(&in_flight, show).await {
            Ok(report) => return Ok(report),
            Err(e) if COPY_REFUSED.contains(&e.code.as_str()) => {
                tracing::debug!("the kept copy of viewport {name:?} is stale: {e}");
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let viewport = console.viewport(name).await.map_err(|e| {
        if let Some(copies) = copies {
            copies.forget(name);
        }
        e.to_string()
    })?;
    if let Some(copies) = copies {
        copies.put(&viewport);
    }
    let in_flight = console
        .start_view(selector, grant, &viewport, options)
        .map_err(|e| e.to_string())?;
    wait_showing(&in_flight, show)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use psp_core::{ArchiveSet, Grant, Operation, Scope, Window};

    use super::*;

    #[test]
    fn a_chain_held_by_someone_else_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let owner = IdentityKey::from_seed([1; 32]);
        let operator = IdentityKey::from_seed([2; 32]);
        let chain = Chain::mint(
            &owner,
            Grant {
                holder: operator.public(),
                archives: ArchiveSet::of_ids(["prop-01"]),
                scope: Scope::everything(vec![Operation::Query]),
                window: Window::lasting(psp_core::window::now(), 3_600),
            },
        )
        .unwrap();
        std::fs::write(dir.path().join("operator.cap"), chain.to_bytes()).unwrap();
        let mut target = Target {
            address: "127.0.0.1:1".parse().unwrap(),
            orchestrator: IdentityKey::from_seed([3; 32]).public(),
            identity: operator,
        };
        assert!(target.grant(&dir.path().join("operator.cap")).is_ok());
        target.identity = IdentityKey::from_seed([9; 32]);
        let error = target.grant(&dir.path().join("operator.cap")).unwrap_err();
        assert!(error.contains("neither your key"), "{error}");
    }
}
