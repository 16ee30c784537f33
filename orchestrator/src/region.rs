//! A regional orchestrator as one member of this orchestrator's fleet: the connection this
//! orchestrator holds to it, as a console of one of its tenants.
//!
//! The connection is pinned-key TLS like a Totebox's, and every frame from the regional
//! orchestrator passes the same diode guard: it may answer our calls and nothing else, so a
//! region can never call up the tree. The session is confirmed by `fleet()`, whose answer (the
//! archives of our tenant there) is the region's *directory*: how a selection by label or "all"
//! reaches its archives, how each archive is named (`<region>/<archive>`), and how they are
//! reported one by one when the region itself does not answer.
//!
//! For each request, the capability the console delegated to us is delegated one step further,
//! to the region's key, with the same scope and window and only the region's archives the
//! request asks for: the region's tenancy rules see us as the operator, and the Toteboxes check
//! the whole chain.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};
use psp_core::query::wire::{read_result, write_query};
use psp_core::query::{PartialMerge, Query};
use psp_core::{ArchiveDigest, ArchiveSet, Chain, Grant, IdentityKey, PublicKey};
use psp_rpc::client::{CommandSpec, ConnectError, MALFORMED_ANSWER, dial_guarded, within_bytes};
use psp_rpc::diode::DiodeGuard;
use psp_rpc::limits::{CallError, Limits};
use psp_schema::orchestrator_capnp::{PartialPolicy, orchestrator};

use crate::console::ArchiveStatus;
use crate::fanout::{CommandResults, SourceOutcome};
use crate::selection::Selector;
use crate::wire::{read_archives, read_cells, read_command_result, read_outcome, write_selector};

/// Most archives a region's directory may list; a longer listing fails the confirmation.
pub const MAX_DIRECTORY: usize = 100_000;

/// A region's answer to one query: its unfinished merge and each of its sources' outcomes (named
/// as the region names them).
#[derive(Debug, Clone, PartialEq)]
pub struct RegionAnswer {
    /// The unfinished merge, one part per set of column types its sources declared (none when
    /// none of them answered).
    pub parts: Vec<PartialMerge>,
    /// One per source it asked.
    pub outcomes: Vec<SourceOutcome>,
}

type Confirmation = Shared<LocalBoxFuture<'static, Result<Rc<Vec<ArchiveStatus>>, ConnectError>>>;

/// A connection to a regional orchestrator. Must live on a tokio `LocalSet` or `LocalRuntime`.
pub struct RegionClient {
    orchestrator: orchestrator::Client,
    rpc: tokio::task::JoinHandle<()>,
    guard: DiodeGuard,
    limits: Limits,
    address: SocketAddr,
    peer: PublicKey,
    confirmation: Confirmation,
    /// The last round trip measured (the confirmation's, then each ping's).
    rtt: Rc<Cell<Duration>>,
}

impl Drop for RegionClient {
    fn drop(&mut self) {
        self.rpc.abort();
    }
}

fn malformed(e: impl std::fmt::Display) -> CallError {
    CallError::new(MALFORMED_ANSWER, e.to_string())
}

impl RegionClient {
    /// Connects to the regional orchestrator at `address` whose key is `peer`, as `identity`,
    /// returning once TLS is up: the confirming `fleet()` is in flight (see
    /// [`RegionClient::confirmed`]), and a first request may go out beside it.
    pub async fn connect(
        address: SocketAddr,
        identity: &IdentityKey,
        peer: PublicKey,
        limits: Limits,
    ) -> Result<RegionClient, ConnectError> {
        let give_up = tokio::time::Instant::now() + limits.handshake_timeout;
        let (mut rpc, guard) = dial_guarded(address, identity, peer, limits, give_up).await?;
        let orchestrator: orchestrator::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
        let rpc = tokio::task::spawn_local(async move {
            if let Err(e) = rpc.await {
                tracing::debug!("regional orchestrator connection ended: {e}");
            }
        });
        let listing = orchestrator.fleet_request().send().promise;
        // The round trip the confirmation takes (and each ping's after it): what a region's
        // deadline must leave room for.
        let (sent, rtt) = (
            tokio::time::Instant::now(),
            Rc::new(Cell::new(Duration::ZERO)),
        );
        let measured = rtt.clone();
        let (ours, check) = (identity.public(), guard.clone());
        let confirmation = async move {
            let refused = |reason: String| match check.violation() {
                Some(why) => ConnectError::DiodeViolation {
                    address,
                    reason: why,
                },
                None if reason.contains("AccessDenied") || reason.contains("not-an-operator") => {
                    ConnectError::NotPaired { ours }
                }
                None => ConnectError::Protocol { address, reason },
            };
            let answer = tokio::time::timeout_at(give_up, listing)
                .await
                .map_err(|_| ConnectError::Timeout {
                    address,
                    after: limits.handshake_timeout,
                })?
                .map_err(|e| refused(e.to_string()))?;
            measured.set(sent.elapsed());
            let list = answer
                .get()
                .and_then(|r| r.get_archives())
                .map_err(|e| refused(e.to_string()))?;
            if list.len() as usize > MAX_DIRECTORY {
                return Err(refused(format!(
                    "it lists {} archives; at most {MAX_DIRECTORY} are accepted",
                    list.len()
                )));
            }
            read_archives(list)
                .map(|listed| Rc::new(sane(listed)))
                .map_err(|e| refused(e.to_string()))
        }
        .boxed_local()
        .shared();
        // Settled by its deadline even if nobody waits: a failed confirmation closes the socket.
        let stop = rpc.abort_handle();
        tokio::task::spawn_local(confirmation.clone().map(move |confirmed| {
            if confirmed.is_err() {
                stop.abort();
            }
        }));
        Ok(RegionClient {
            orchestrator,
            rpc,
            guard,
            limits,
            address,
            peer,
            confirmation,
            rtt,
        })
    }

    /// The region's directory as it listed it when the session was confirmed.
    pub async fn confirmed(&self) -> Result<Rc<Vec<ArchiveStatus>>, ConnectError> {
        self.confirmation.clone().await
    }

    /// Why the confirmation failed, once it has.
    pub fn confirmation_error(&self) -> Option<&ConnectError> {
        match self.confirmation.peek() {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }

    /// Why the diode guard cut this connection, if it did.
    pub fn diode_violation(&self) -> Option<String> {
        self.guard.violation()
    }

    /// Whether the connection is up and not refused.
    pub fn is_connected(&self) -> bool {
        !self.rpc.is_finished() && !matches!(self.confirmation.peek(), Some(Err(_)))
    }

    /// Lists the region's archives again (a liveness check that refreshes the directory).
    pub async fn directory(&self) -> Result<Vec<ArchiveStatus>, CallError> {
        let request = self.orchestrator.fleet_request();
        let sent = tokio::time::Instant::now();
        let answer = self.call("fleet", request.send().promise).await?;
        self.rtt.set(sent.elapsed());
        let list = answer
            .get()
            .and_then(|r| r.get_archives())
            .map_err(malformed)?;
        if list.len() as usize > MAX_DIRECTORY {
            return Err(malformed(format!(
                "listed {} archives; at most {MAX_DIRECTORY} are accepted",
                list.len()
            )));
        }
        read_archives(list).map(sane).map_err(malformed)
    }

    /// Asks the region for its unfinished merge of `query` over the archives `select` names,
    /// with `labels` as leading columns, under `chain` (the console's, delegated here one step
    /// further to the region), answering within `deadline`. Refuses an answer over `max_bytes`.
    pub async fn partial(
        &self,
        identity: &IdentityKey,
        chain: &Chain,
        ask: &PartialAsk<'_>,
        max_bytes: usize,
    ) -> Result<RegionAnswer, CallError> {
        // Confirmed first: the link names the archives its directory lists, and the region's
        // time is what is left after the wait.
        let directory = self
            .confirmed()
            .await
            .map_err(|e| CallError::new(e.code(), e.to_string()))?;
        let chain = self.delegated(identity, chain, ask.select, &directory)?;
        let mut request = self.orchestrator.partial_request();
        {
            let mut params = request.get();
            write_query(ask.query, params.reborrow().init_query());
            let mut labels = params.reborrow().init_labels(ask.labels.len() as u32);
            for (i, key) in ask.labels.iter().enumerate() {
                labels.set(i as u32, key);
            }
            let mut r = params.init_request();
            write_selector(ask.select, r.reborrow().init_archives());
            chain.write(r.reborrow().init_chain());
            set_options(r.init_options(), ask.until, self.rtt.get());
        }
        let response = self
            .call_within("partial", request.send().promise, max_bytes)
            .await?;
        let answer = response
            .get()
            .and_then(|r| r.get_answer())
            .map_err(malformed)?;
        let listed = answer.get_parts().map_err(malformed)?;
        if listed.len() > MAX_PARTS {
            return Err(malformed(format!(
                "answered {} parts; at most {MAX_PARTS} are accepted",
                listed.len()
            )));
        }
        let mut parts = Vec::with_capacity(listed.len() as usize);
        for part in listed {
            parts.push(PartialMerge {
                parts: part.get_answers() as usize,
                result: Some(
                    read_result(part.get_result().map_err(malformed)?)
                        .map_err(|e| malformed(e.to_string()))?,
                ),
                overflows: read_cells(part.get_overflows().map_err(malformed)?),
            });
        }
        let outcomes = answer
            .get_outcomes()
            .map_err(malformed)?
            .iter()
            .map(read_outcome)
            .collect::<capnp::Result<Vec<_>>>()
            .map_err(malformed)?;
        Ok(RegionAnswer { parts, outcomes })
    }

    /// Sends `command` to the region's archives that `select` names, under `chain` delegated to
    /// the region, answering within `deadline`: each archive's outcome, as the region reports
    /// it. Refuses an answer over `max_bytes`.
    pub async fn command(
        &self,
        identity: &IdentityKey,
        chain: &Chain,
        select: &Selector,
        command: &CommandSpec,
        (until, max_bytes): (tokio::time::Instant, usize),
    ) -> Result<CommandResults, CallError> {
        // A command goes only to a region whose session is confirmed (it is the region it was
        // configured as), under a link naming only the archives its directory lists.
        let directory = self
            .confirmed()
            .await
            .map_err(|e| CallError::new(e.code(), e.to_string()))?;
        let chain = self.delegated(identity, chain, select, &directory)?;
        let mut request = self.orchestrator.command_request();
        {
            let mut params = request.get();
            let mut r = params.reborrow().init_request();
            write_selector(select, r.reborrow().init_archives());
            chain.write(r.reborrow().init_chain());
            set_options(r.init_options(), until, self.rtt.get());
            let mut c = params.init_command();
            c.set_name(&command.name);
            c.set_collection(&command.collection);
            c.set_idempotency_key(&command.idempotency_key);
            c.set_arguments(&command.arguments);
        }
        let response = self
            .call_within("command", request.send().promise, max_bytes)
            .await?;
        let list = response
            .get()
            .and_then(|r| r.get_outcomes())
            .map_err(malformed)?;
        list.iter()
            .map(read_command_result)
            .collect::<capnp::Result<Vec<_>>>()
            .map_err(malformed)
    }

    /// The console's chain delegated to the region's key: the same scope and window.
    ///
    /// The link names only the region's archives the request asks for (by id, or those of its
    /// `directory` the selection matches): a region can spend it on its own archives, never on
    /// another region's or on a Totebox this orchestrator reaches directly.
    fn delegated(
        &self,
        identity: &IdentityKey,
        chain: &Chain,
        select: &Selector,
        directory: &[ArchiveStatus],
    ) -> Result<Chain, CallError> {
        let last = chain.last();
        // The archives the region is asked for: by id, or those of its directory the selection
        // matches; never the rest of the console's selection.
        let ids: Vec<&str> = match select {
            Selector::Ids(ids) => ids.iter().map(String::as_str).collect(),
            Selector::All => directory.iter().map(|a| a.id.as_str()).collect(),
            Selector::Labels(labels) => directory
                .iter()
                .filter(|a| labels.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
                .map(|a| a.id.as_str())
                .collect(),
        };
        let archives = ArchiveSet::of_digests(
            ids.into_iter()
                .map(|id| ArchiveDigest::of(crate::tier::archive_of(id)))
                .filter(|d| chain.reaches(d)),
        );
        chain
            .delegate(
                identity,
                Grant {
                    holder: self.peer,
                    archives,
                    scope: last.scope.clone(),
                    window: last.window,
                },
            )
            .map_err(|e| {
                CallError::new(
                    "capability.not-delegable",
                    format!("could not delegate the request to {}: {e}", self.address),
                )
            })
    }

    /// [`RegionClient::call`], refusing an answer larger than `max_bytes` before any of it is
    /// read (a region answers for many archives, and its share is theirs together).
    async fn call_within<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = capnp::Result<capnp::capability::Response<T>>>,
        max_bytes: usize,
    ) -> Result<capnp::capability::Response<T>, CallError> {
        let response = self.call(what, call).await?;
        let size = response
            .hook
            .get()
            .and_then(|root| root.target_size())
            .map_err(malformed)?;
        within_bytes(size, max_bytes)?;
        Ok(response)
    }

    async fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = capnp::Result<T>>,
    ) -> Result<T, CallError> {
        let explain = |e: CallError| match self.guard.violation() {
            Some(why) => CallError::new(
                "diode.violation",
                format!("the regional orchestrator sent {why}; the connection was cut"),
            ),
            None => e,
        };
        match tokio::time::timeout(self.limits.call_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(explain(CallError::from_capnp(&e))),
            Err(_) => Err(CallError::timed_out(what, self.limits.call_timeout)),
        }
    }
}

/// Longest archive id, label key or label value taken from a region's directory.
const MAX_NAME: usize = 256;
/// Most labels taken from one archive of a region's directory.
const MAX_LABELS: usize = 64;

/// A region's directory as this orchestrator uses it: entries whose id is empty, long, holds a
/// control character or repeats an earlier one are left out (logged), and so are labels beyond
/// the first 64 or longer than 256 bytes. A region names its archives; it cannot make one
/// unreadable in a listing or a path.
fn sane(listed: Vec<ArchiveStatus>) -> Vec<ArchiveStatus> {
    let fits = |t: &str| !t.is_empty() && t.len() <= MAX_NAME && !t.chars().any(char::is_control);
    let mut seen = std::collections::HashSet::new();
    listed
        .into_iter()
        .filter_map(|mut a| {
            if !fits(&a.id) || a.key.len() > MAX_NAME || !seen.insert(a.id.clone()) {
                tracing::warn!(target: "psp::security", "left out a regional orchestrator's listing of {:?}", a.id.escape_debug().to_string());
                return None;
            }
            a.labels = std::mem::take(&mut a.labels)
                .into_iter()
                .filter(|(k, v)| fits(k) && v.len() <= MAX_NAME && !v.chars().any(char::is_control))
                .take(MAX_LABELS)
                .collect();
            Some(a)
        })
        .collect()
}

/// Most parts one `partial` answer may carry (one per set of column types).
const MAX_PARTS: u32 = 64;

/// How long a regional orchestrator has to answer a call that must end by `until`: the time
/// left now, less a margin for the request and its answer to travel and be read: a fifth of the
/// time left, at least 50 ms, and at least twice the last round trip `rtt` measured to it. So a
/// slow archive is reported timed out by its region, not the whole region as lost, unless the
/// time left is not even that margin (see `docs/protocol.md`).
pub fn region_deadline(until: tokio::time::Instant, rtt: Duration) -> Duration {
    let left = until.saturating_duration_since(tokio::time::Instant::now());
    let margin = (left / 5)
        .max(Duration::from_millis(50))
        .max(rtt.saturating_mul(2));
    left.saturating_sub(margin).max(Duration::from_millis(1))
}

/// A request's options for a region: best effort, by the deadline left before `until`.
fn set_options(
    mut options: psp_schema::orchestrator_capnp::fan_out_options::Builder<'_>,
    until: tokio::time::Instant,
    rtt: Duration,
) {
    let millis = u32::try_from(region_deadline(until, rtt).as_millis()).unwrap_or(u32::MAX);
    options.set_deadline_millis(millis.max(1));
    options.set_partial(PartialPolicy::BestEffort);
}

/// What one region is asked for one request.
#[derive(Debug, Clone, Copy)]
pub struct PartialAsk<'a> {
    /// Its archives the request reaches.
    pub select: &'a Selector,
    /// The query.
    pub query: &'a Query,
    /// Label keys to prepend ("" for the archive id).
    pub labels: &'a [String],
    /// When the call must have ended (the region is given the time left less a margin).
    pub until: tokio::time::Instant,
}

#[cfg(test)]
mod tests {
    use super::{region_deadline, sane};
    use crate::console::ArchiveStatus;
    use crate::fanout::Health;
    use std::time::Duration;

    #[test]
    fn a_hostile_directory_is_cut_to_what_a_listing_and_a_path_can_show() {
        let archive = |id: &str, key: &str, labels: Vec<(String, String)>| ArchiveStatus {
            id: id.to_owned(),
            labels: labels.into_iter().collect(),
            key: key.to_owned(),
            health: Health::Up,
            latency: Duration::ZERO,
            last_seen: 0,
        };
        let many: Vec<(String, String)> =
            (0..100).map(|i| (format!("k{i:03}"), "v".into())).collect();
        let listed = sane(vec![
            archive("prop-01", "ed25519:00", many),
            archive("prop-01", "ed25519:00", vec![]),
            archive("", "ed25519:00", vec![]),
            archive("bell\u{7}", "ed25519:00", vec![]),
            archive(&"x".repeat(300), "ed25519:00", vec![]),
            archive("prop-02", &"k".repeat(300), vec![]),
            archive(
                "prop-03",
                "ed25519:00",
                vec![
                    ("ok".into(), "v".into()),
                    ("bad".into(), "line\nbreak".into()),
                ],
            ),
        ]);
        let ids: Vec<&str> = listed.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            ["prop-01", "prop-03"],
            "empty, control, long, repeated and long-keyed entries go"
        );
        assert_eq!(listed[0].labels.len(), 64, "at most 64 labels");
        assert_eq!(listed[1].labels.keys().collect::<Vec<_>>(), ["ok"]);
    }

    #[test]
    fn a_region_is_given_the_time_left_less_a_fifth_fifty_ms_or_two_round_trips() {
        let ms = Duration::from_millis;
        let within = |left: u64, rtt: u64| {
            let until = tokio::time::Instant::now() + ms(left);
            region_deadline(until, ms(rtt)).as_millis()
        };
        // Measured from a moment ago: a few milliseconds may have passed.
        assert!((790..=800).contains(&within(1000, 0)));
        assert!((390..=400).contains(&within(1000, 300)));
        assert!((190..=200).contains(&within(250, 20)));
        assert_eq!(
            within(40, 0),
            1,
            "less time than the margin: the least, never zero"
        );
    }
}
