//! A console's client for the orchestrator: what the `orchestrator` command's console
//! subcommands and other Rust consoles use. Must be created and used on a tokio `LocalSet`.

use std::net::SocketAddr;
use std::rc::Rc;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use std::collections::BTreeMap;
use std::time::Duration;

use psp_core::query::Query;
use psp_core::query::wire::write_query;
use psp_core::{Chain, IdentityKey, PublicKey};
use psp_rpc::activity::Activity;
use psp_rpc::client::{CommandAnswer, CommandSpec, ConnectError, dial};
use psp_rpc::frame_limit::FrameLimit;
use psp_rpc::limits::{CallError, Limits};
use psp_schema::orchestrator_capnp::{fleet_query, fleet_request, orchestrator};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::config::{PATH_SEPARATOR, Partial};
use crate::fanout::{Health, SourceOutcome};
use crate::report::Report;
use crate::request_link::{self, Needs};
use crate::selection::Selector;
use crate::viewports::{NamedViewport, Viewport};
use crate::wire::{
    read_archives, read_command_result, read_report, read_viewport, write_selector, write_viewport,
};

/// One archive of the tenant, as `fleet` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveStatus {
    /// Its id.
    pub id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its pinned key, printed.
    pub key: String,
    /// Whether it is reachable now.
    pub health: Health,
    /// The last measured round trip (zero when unknown).
    pub latency: Duration,
    /// When it last answered (microseconds since the epoch; 0: never).
    pub last_seen: i64,
}

/// How a request fans out; `None` takes the orchestrator's configured default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// The whole request ends by then (its request link too, plus clock skew).
    pub deadline: Option<Duration>,
    /// One source's time to answer.
    pub source_timeout: Option<Duration>,
    /// Strict or best-effort.
    pub partial: Option<Partial>,
}

/// The deadline a request asks for when its options name none (the orchestrator shortens it to
/// its own configured deadline).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

impl Options {
    /// The deadline asked for, or [`DEFAULT_DEADLINE`].
    pub fn deadline_or_default(&self) -> Duration {
        self.deadline.unwrap_or(DEFAULT_DEADLINE)
    }
}

/// A fan-out's view so far ([`InFlight::next`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Sources ended so far (answered, failed or timed out).
    pub answered: u32,
    /// Sources in all.
    pub total: u32,
    /// The fan-out is over and `report` is its final view.
    pub done: bool,
    /// The view merged from the sources ended so far: their outcomes (the rest are not listed
    /// yet) and their figures; the final view once `done`.
    pub report: Report,
}

/// A fan-out running at the orchestrator: poll its progress, cancel it, or wait for its report.
/// A clone is another handle on the same fan-out, which stops once every handle is dropped.
#[derive(Clone)]
pub struct InFlight {
    fleet_query: fleet_query::Client,
    link: Link,
}

impl InFlight {
    /// (answered, total) so far.
    pub async fn progress(&self) -> Result<(u32, u32), CallError> {
        let response = self
            .link
            .within(
                "progress",
                self.fleet_query.progress_request().send().promise,
            )
            .await?;
        let r = response.get().map_err(failed)?;
        Ok((r.get_answered(), r.get_total()))
    }

    /// Progressive results: waits until more than `after` sources have ended, and returns the
    /// view merged so far, or the final view once the fan-out is over ([`Update::done`]; the
    /// same as [`InFlight::report`]'s). Call again with [`Update::answered`] for the next.
    pub async fn next(&self, after: u32) -> Result<Update, CallError> {
        let mut request = self.fleet_query.next_request();
        request.get().set_after(after);
        let response = self.link.within("next", request.send().promise).await?;
        let read = || -> capnp::Result<Update> {
            let update = response.get()?.get_update()?;
            Ok(Update {
                answered: update.get_answered(),
                total: update.get_total(),
                done: update.get_final(),
                report: read_report(update.get_view()?)?,
            })
        };
        read().map_err(failed)
    }

    /// Stops the fan-out; [`InFlight::report`] then returns what arrived.
    pub async fn cancel(&self) -> Result<(), CallError> {
        self.link
            .within("cancel", self.fleet_query.cancel_request().send().promise)
            .await
            .map(drop)
    }

    /// Waits for the report (never past the request's deadline at the orchestrator, nor past
    /// this console's call timeout).
    pub async fn report(&self) -> Result<Report, CallError> {
        let response = self
            .link
            .within("view", self.fleet_query.view_request().send().promise)
            .await?;
        read_report(response.get().and_then(|r| r.get_view()).map_err(failed)?).map_err(failed)
    }
}

/// Bytes that show a link alive during a call's wait even without a whole message: a large
/// report streaming in. A link dripping a byte now and then never reaches it.
const ALIVE_BYTES: u64 = 64 * 1024;

/// The connection a console's calls travel: its limits, what arrives on it, and the way to
/// close it.
#[derive(Clone)]
struct Link {
    limits: Limits,
    activity: Rc<Activity>,
    rpc: tokio::task::AbortHandle,
    /// Set when a call closed the link (the task ends at the runtime's next turn).
    closed: Rc<std::cell::Cell<bool>>,
}

impl Link {
    /// Whether the connection is open (the task may end only at the runtime's next turn).
    fn is_open(&self) -> bool {
        !self.closed.get() && !self.rpc.is_finished()
    }

    /// Waits for `call` up to the call timeout. A call that times out while the connection
    /// showed no sign of life (no whole message, and less than [`ALIVE_BYTES`]) closes it: the
    /// link is stalled, dripping or half-open (an answer to any other call, or a large report
    /// still streaming in, would have shown it alive), and the calls waiting on it, and any
    /// later, must fail at once rather than wait behind it. A slow request on a live link
    /// leaves the link open.
    async fn within<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = capnp::Result<T>>,
    ) -> Result<T, CallError> {
        if !self.is_open() {
            // A call on a closed link would wait for an answer that cannot come.
            return Err(CallError::new(
                "transport.disconnected",
                "the connection to the orchestrator is closed: connect again",
            ));
        }
        let (sent, bytes) = (tokio::time::Instant::now(), self.activity.bytes());
        match tokio::time::timeout(self.limits.call_timeout, call).await {
            Ok(answer) => answer.map_err(failed),
            Err(_) => {
                let alive = self.activity.message_arrived_since(sent)
                    || self.activity.bytes() - bytes >= ALIVE_BYTES;
                if !alive {
                    tracing::debug!(
                        "closed the connection to the orchestrator: nothing arrived while {what} waited"
                    );
                    self.closed.set(true);
                    // Through the reader: the RPC system ends and fails every waiting call.
                    self.activity.abort();
                }
                Err(CallError::timed_out(what, self.limits.call_timeout))
            }
        }
    }
}

/// A connection to the orchestrator, as one operator.
///
/// Every request method takes the operator's grant (a chain whose last holder is the operator)
/// and delegates, for that request alone, a link to the orchestrator that names only what the
/// request needs and ends with it (see [`crate::request_link`]); a command's link is bound to
/// the command's digest, so the orchestrator can apply that command and no other, once. A chain
/// already held by the orchestrator is sent as it is.
pub struct Console {
    orchestrator: orchestrator::Client,
    link: Link,
    rpc: tokio::task::JoinHandle<()>,
    identity: IdentityKey,
    orchestrator_key: PublicKey,
    /// The tenant's archives as the orchestrator listed them when the session was confirmed:
    /// how a selection by label or "all" becomes the archive ids a request link names. `None`
    /// for a console opened without asking ([`Console::open`]).
    archives: Option<Vec<ArchiveStatus>>,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.rpc.abort();
    }
}

fn failed(e: capnp::Error) -> CallError {
    let error = CallError::from_capnp(&e);
    // With pinned-key TLS the handshake "succeeds" on the console's side even when the
    // orchestrator does not know its key; the orchestrator's refusal arrives as a TLS alert on
    // the first call, whichever call that is.
    if error.message.contains("AccessDenied") {
        return CallError::new(
            "tenant.not-an-operator",
            format!(
                "the orchestrator refused this console's key: it is no operator of any tenant ({})",
                error.message
            ),
        );
    }
    error
}

impl Console {
    /// Connects as `identity` to the orchestrator whose key is `orchestrator_key`, and confirms
    /// the session by asking for the tenant's archives (an operator key the orchestrator does
    /// not know is refused here, with `tenant.not-an-operator`): the TLS handshake and one round
    /// trip. The listing is what selections by label or "all" are resolved against.
    pub async fn connect(
        address: SocketAddr,
        identity: &IdentityKey,
        orchestrator_key: PublicKey,
        limits: Limits,
    ) -> Result<Console, CallError> {
        let attempt = async {
            let mut console = Self::open(address, identity, orchestrator_key, limits).await?;
            console.archives = Some(console.fleet().await?);
            Ok(console)
        };
        tokio::time::timeout(limits.handshake_timeout, attempt)
            .await
            .map_err(|_| CallError::timed_out("connect", limits.handshake_timeout))?
    }

    /// Connects without asking anything: the TLS handshake only, so the first request goes out
    /// in the next flight and the session costs one round trip less. An unknown operator key
    /// is then refused by that first request (`tenant.not-an-operator`). Requests from an opened
    /// console select archives by id: a selection by label or "all" needs the tenant's listing
    /// ([`Console::connect`]) and is refused with `tenant.nothing-selected`.
    pub async fn open(
        address: SocketAddr,
        identity: &IdentityKey,
        orchestrator_key: PublicKey,
        limits: Limits,
    ) -> Result<Console, CallError> {
        let attempt = async {
            let stream = dial(address, identity, orchestrator_key)
                .await
                .map_err(|e| match e {
                    ConnectError::Unreachable { .. } => {
                        CallError::new("transport.unreachable", e.to_string())
                    }
                    other => CallError::new("transport.tls", other.to_string()),
                })?;
            let (reader, writer) = tokio::io::split(stream);
            let activity = Rc::new(Activity::default());
            let reader =
                FrameLimit::new(reader.compat(), limits.max_message_words, activity.clone());
            let network = twoparty::VatNetwork::new(
                reader,
                psp_rpc::coalesce::Coalesce::new(writer.compat_write()),
                rpc_twoparty_capnp::Side::Client,
                limits.reader_options(),
            );
            let mut rpc = RpcSystem::new(Box::new(network), None);
            let orchestrator: orchestrator::Client =
                rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
            let rpc = tokio::task::spawn_local(async move {
                let _ = rpc.await;
            });
            Ok(Console {
                orchestrator,
                link: Link {
                    limits,
                    activity,
                    rpc: rpc.abort_handle(),
                    closed: Rc::default(),
                },
                rpc,
                identity: identity.clone(),
                orchestrator_key,
                archives: None,
            })
        };
        tokio::time::timeout(limits.handshake_timeout, attempt)
            .await
            .map_err(|_| CallError::timed_out("connect", limits.handshake_timeout))?
    }

    /// Whether the connection is still open. A call that times out while no message at all
    /// arrives closes it (the link is stalled, dripping or half-open), and so does the
    /// orchestrator after its idle limit; a console that finds it closed connects again.
    pub fn is_connected(&self) -> bool {
        self.link.is_open()
    }

    /// The tenant's archives with their health as listed when this console connected (the
    /// answer that confirmed the operator's key), at no further round trip; empty for a
    /// console that was [opened](Console::open). Call [`Console::fleet`] for health as it is
    /// now.
    pub fn listed_at_connect(&self) -> &[ArchiveStatus] {
        self.archives.as_deref().unwrap_or_default()
    }

    /// The tenant's archives with their health.
    pub async fn fleet(&self) -> Result<Vec<ArchiveStatus>, CallError> {
        let response = self
            .link
            .within("fleet", self.orchestrator.fleet_request().send().promise)
            .await?;
        response
            .get()
            .and_then(|r| read_archives(r.get_archives()?))
            .map_err(failed)
    }

    /// The archive ids `selector` names, as this console last saw the tenant's archives. A
    /// console [opened](Console::open) without the listing can only name archives by id.
    pub fn selected(&self, selector: &Selector) -> Result<Vec<String>, CallError> {
        let listed = || {
            self.archives.as_deref().ok_or_else(|| {
                CallError::new(
                    "tenant.nothing-selected",
                    "this console was opened without the tenant's listing: select archives by id, or connect (Console::connect) to select by label or all",
                )
            })
        };
        Ok(match selector {
            // A regional orchestrator named by its id stands for every archive listed below it
            // (`eu-west/...`), when this console has the listing.
            Selector::Ids(ids) => ids
                .iter()
                .flat_map(|id| {
                    let prefix = format!("{id}{PATH_SEPARATOR}");
                    let below: Vec<String> = self
                        .archives
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .filter(|a| a.id.starts_with(&prefix))
                        .map(|a| a.id.clone())
                        .collect();
                    if below.is_empty() {
                        vec![id.clone()]
                    } else {
                        below
                    }
                })
                .collect(),
            Selector::All => listed()?.iter().map(|a| a.id.clone()).collect(),
            Selector::Labels(labels) => listed()?
                .iter()
                .filter(|a| labels.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
                .map(|a| a.id.clone())
                .collect(),
        })
    }

    /// The chain to send for one request: `grant` delegated to the orchestrator with only what
    /// `needs` names, until `deadline` plus clock skew; or `grant` as it is when the
    /// orchestrator already holds it.
    pub fn request_chain(
        &self,
        grant: &Chain,
        needs: &Needs,
        deadline: Duration,
    ) -> Result<Chain, CallError> {
        let holder = grant.last().holder;
        if holder == self.orchestrator_key {
            return Ok(grant.clone());
        }
        if holder != self.identity.public() {
            return Err(CallError::new(
                "capability.wrong-holder",
                format!(
                    "the capability is held by {holder}, neither this operator ({}) nor the orchestrator",
                    self.identity.public()
                ),
            ));
        }
        request_link::delegate(
            grant,
            &self.identity,
            self.orchestrator_key,
            needs,
            deadline,
            psp_core::window::now(),
        )
        .map_err(|e| CallError::new("capability.delegation", e.to_string()))
    }

    /// Starts a fleet query under `grant`; its report comes from the returned [`InFlight`].
    pub fn start_query(
        &self,
        selector: &Selector,
        grant: &Chain,
        query: &Query,
        options: Options,
    ) -> Result<InFlight, CallError> {
        let needs = Needs::query(query, self.selected(selector)?);
        let chain = self.request_chain(grant, &needs, options.deadline_or_default())?;
        let mut request = self.orchestrator.query_request();
        {
            let mut params = request.get();
            write_query(query, params.reborrow().init_query());
            fill_request(params.init_request(), selector, &chain, options);
        }
        Ok(self.in_flight(request.send().pipeline.get_fleet_query()))
    }

    /// Runs a fleet query and waits for its report: `query(...).fleetQuery.view()`, pipelined.
    pub async fn query(
        &self,
        selector: &Selector,
        grant: &Chain,
        query: &Query,
    ) -> Result<Report, CallError> {
        self.start_query(selector, grant, query, Options::default())?
            .report()
            .await
    }

    /// Starts computing a viewport under `grant`; its report comes from the returned
    /// [`InFlight`].
    pub fn start_view(
        &self,
        selector: &Selector,
        grant: &Chain,
        viewport: &NamedViewport,
        options: Options,
    ) -> Result<InFlight, CallError> {
        let needs = Needs::viewport(&viewport.viewport, self.selected(selector)?);
        let chain = self.request_chain(grant, &needs, options.deadline_or_default())?;
        let mut request = self.orchestrator.view_request();
        {
            let mut params = request.get();
            fill_request(params.reborrow().init_request(), selector, &chain, options);
            write_viewport(viewport, params.init_viewport());
        }
        Ok(self.in_flight(request.send().pipeline.get_fleet_query()))
    }

    /// [`Console::start_view`] of a copy of the config's viewport `copy.name` (from an earlier
    /// [`Console::viewport`]): one call instead of two. The orchestrator computes it only if its
    /// config still holds that very definition, and otherwise refuses with `viewport.changed`
    /// (ask for it again) or `viewport.unknown`; one that predates the check answers
    /// `transport.unimplemented`.
    ///
    /// The request link is narrowed to the copy's collections and fields, so a definition that
    /// changed is refused whole rather than run under a link that no longer covers it.
    pub fn start_configured_view(
        &self,
        selector: &Selector,
        grant: &Chain,
        copy: &NamedViewport,
        options: Options,
    ) -> Result<InFlight, CallError> {
        let needs = Needs::viewport(&copy.viewport, self.selected(selector)?);
        let chain = self.request_chain(grant, &needs, options.deadline_or_default())?;
        let mut request = self.orchestrator.view_configured_request();
        {
            let mut params = request.get();
            fill_request(params.reborrow().init_request(), selector, &chain, options);
            write_viewport(copy, params.init_viewport());
        }
        Ok(self.in_flight(request.send().pipeline.get_fleet_query()))
    }

    /// Computes a viewport and waits for its report.
    pub async fn view(
        &self,
        selector: &Selector,
        grant: &Chain,
        viewport: &NamedViewport,
    ) -> Result<Report, CallError> {
        self.start_view(selector, grant, viewport, Options::default())?
            .report()
            .await
    }

    /// A portfolio rollup: `query` over the selected archives, grouped first by the archive
    /// labels `labels` (e.g. "region"), merged exactly.
    pub async fn rollup(
        &self,
        selector: &Selector,
        grant: &Chain,
        query: &Query,
        labels: &[&str],
    ) -> Result<Report, CallError> {
        let viewport = NamedViewport {
            name: "rollup".into(),
            viewport: Viewport::Rollup {
                query: query.clone(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
            },
        };
        self.view(selector, grant, &viewport).await
    }

    /// A viewport defined in the orchestrator's config, by name.
    pub async fn viewport(&self, name: &str) -> Result<NamedViewport, CallError> {
        let mut request = self.orchestrator.viewport_request();
        request.get().set_name(name);
        let response = self.link.within("viewport", request.send().promise).await?;
        read_viewport(
            response
                .get()
                .and_then(|r| r.get_viewport())
                .map_err(failed)?,
        )
        .map_err(failed)
    }

    /// Sends a command to every selected archive; one outcome per archive, with the archive's
    /// answer where it answered. The request link is bound to this command's digest, and a
    /// retry with the same idempotency key (under a new link) never applies it twice.
    pub async fn command(
        &self,
        selector: &Selector,
        grant: &Chain,
        command: &CommandSpec,
        options: Options,
    ) -> Result<Vec<(SourceOutcome, Option<CommandAnswer>)>, CallError> {
        let needs = Needs::command(command, self.selected(selector)?);
        let chain = self.request_chain(grant, &needs, options.deadline_or_default())?;
        let mut request = self.orchestrator.command_request();
        {
            let mut params = request.get();
            fill_request(params.reborrow().init_request(), selector, &chain, options);
            let mut c = params.init_command();
            c.set_name(&command.name);
            c.set_collection(&command.collection);
            c.set_idempotency_key(&command.idempotency_key);
            c.set_arguments(&command.arguments);
        }
        let response = self.link.within("command", request.send().promise).await?;
        let read = || -> capnp::Result<Vec<(SourceOutcome, Option<CommandAnswer>)>> {
            response
                .get()?
                .get_outcomes()?
                .iter()
                .map(read_command_result)
                .collect()
        };
        read().map_err(failed)
    }

    fn in_flight(&self, fleet_query: fleet_query::Client) -> InFlight {
        InFlight {
            fleet_query,
            link: self.link.clone(),
        }
    }
}

/// Writes the archives, capability and options of a fleet request.
fn fill_request(
    mut r: fleet_request::Builder<'_>,
    selector: &Selector,
    chain: &Chain,
    options: Options,
) {
    chain.write(r.reborrow().init_chain());
    write_selector(selector, r.reborrow().init_archives());
    let mut o = r.init_options();
    let millis =
        |d: Option<Duration>| d.map_or(0, |d| d.as_millis().clamp(1, u32::MAX as u128) as u32);
    o.set_deadline_millis(millis(options.deadline));
    o.set_source_timeout_millis(millis(options.source_timeout));
    o.set_partial(match options.partial {
        None => psp_schema::orchestrator_capnp::PartialPolicy::Default,
        Some(Partial::BestEffort) => psp_schema::orchestrator_capnp::PartialPolicy::BestEffort,
        Some(Partial::Strict) => psp_schema::orchestrator_capnp::PartialPolicy::Strict,
    });
}
