//! The fleet's workers: one thread per core, each owning the pooled connections of its share of
//! the Toteboxes (capnp-rpc is single-threaded, so a connection lives on one thread), shared by
//! every request and tenant. A fan-out is split by worker, and each worker sends its sources'
//! ends straight to the request's merge as they happen.
//!
//! Each connection has a [`Gate`] that shares its calls fairly among tenants. A connection whose
//! setup or use the diode guard cut is dropped and its Totebox quarantined; a connection that
//! failed any other way is dropped too (its socket closes with it), so failed connects never
//! accumulate.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{LocalBoxFuture, Shared, WeakShared};
use futures::{FutureExt, StreamExt};
use psp_core::{Chain, IdentityKey, PublicKey};
use psp_rpc::client::{ANSWER_TOO_LARGE, ConnectError, ToteboxClient};
use psp_rpc::limits::{CallError, Limits};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::console::ArchiveStatus;
use crate::downstream::Downstream;
use crate::fanout::{
    Answer, Arrival, FanOutLimits, Health, HealthReport, QUARANTINE, Source, SourceOutcome,
    SourceStatus, Watch, Work, rows_of,
};
use crate::fanout::{Directories, Member};
use crate::gate::{Gate, TenantId};
use crate::region::{PartialAsk, RegionClient};

/// What a fleet worker is asked to do.
pub(crate) enum Job {
    /// Its share of a fan-out.
    Fan(Box<Request>),
    /// Keep these Toteboxes connected from now on (the fleet in config, its share): dial them
    /// now and redial any that drop at this interval, so a request finds its connections up
    /// (`None`: stop; a request then dials what it needs). Replaces the last list; connections
    /// to Toteboxes no longer listed are let go.
    Maintain(Vec<Source>, Option<Duration>),
}

/// Dials a worker's maintenance round runs at once.
const MAINTENANCE_DIALS: usize = 64;
/// Most answers a worker hands to a request's fold in one go (a batch). At 1,000 archives
/// batches held about five and a half answers on average, so this rarely binds; it bounds what
/// a worker holds in hand while the fold is slow.
pub(crate) const ARRIVALS_TOGETHER: usize = 8;
/// How long a worker holds an answer for others to go with it. Each hand-off wakes the fold on
/// its thread; Toteboxes answering one at a time, as they do at a thousand, woke it once per
/// answer, which cost the orchestrator more than reading the answer. A progressive view is
/// built at most every 200 ms, so 2 ms is never seen; the last answers go when the last ends.
const ARRIVALS_GATHERED_FOR: Duration = Duration::from_millis(2);
/// The dialer pings a pooled connection every this many rounds (every 30 s at the default
/// `redial_ms`, a tenth of a Totebox's default idle limit).
const PING_ROUNDS: u32 = 6;

/// One worker's share of a fan-out.
pub(crate) struct Request {
    pub(crate) tenant: TenantId,
    /// This worker's sources, each with its position in the whole request.
    pub(crate) sources: Vec<(usize, Source)>,
    /// The chain, shared by every worker (read once, its member trees built once).
    pub(crate) chain: Arc<Chain>,
    pub(crate) work: Work,
    /// The archive labels the merge groups by first (a region is asked for those its entry
    /// does not set).
    pub(crate) labels: Arc<[String]>,
    pub(crate) limits: FanOutLimits,
    /// When the whole request ends, whatever the sources do.
    pub(crate) deadline: Instant,
    /// Where the sources' ends go, in batches.
    pub(crate) arrivals: mpsc::Sender<Vec<Arrival>>,
    pub(crate) watch: Watch,
}

/// Starts one fleet worker (thread `psp-fleet-<index>`), serving `incoming` requests until every
/// sender is gone.
pub(crate) fn spawn(
    index: usize,
    identity: IdentityKey,
    limits: Limits,
    mut incoming: mpsc::UnboundedReceiver<Job>,
    (health, directories): (Arc<Mutex<HashMap<String, HealthReport>>>, Directories),
) {
    std::thread::Builder::new()
        .name(format!("psp-fleet-{index}"))
        .spawn(move || {
            // A local runtime, not a `LocalSet` on a current-thread one: a `LocalSet` task woken
            // by the I/O driver wakes the set through the driver's eventfd, one `write` per
            // socket event, two per Totebox per query in a profile of a 1,000-archive fan-out.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build_local(Default::default())
                .expect("a fleet runtime");
            runtime.block_on(async move {
                let pool = Rc::new(Pool {
                    identity,
                    limits,
                    calls_per_connection: (limits.max_calls_in_flight * 3 / 4).max(1),
                    connections: Default::default(),
                    health,
                    directories,
                    maintained: Default::default(),
                });
                let mut maintainer: Option<tokio::task::JoinHandle<()>> = None;
                while let Some(job) = incoming.recv().await {
                    match job {
                        Job::Fan(request) => {
                            tokio::task::spawn_local(pool.clone().serve(*request));
                        }
                        Job::Maintain(sources, redial) => {
                            pool.maintain(sources);
                            // One maintenance task per worker, restarted with the new interval.
                            if let Some(task) = maintainer.take() {
                                task.abort();
                            }
                            maintainer = redial.map(|every| {
                                tokio::task::spawn_local(pool.clone().keep_connected(every))
                            });
                        }
                    }
                }
                if let Some(task) = maintainer {
                    task.abort();
                }
            });
        })
        .expect("spawn a fleet worker");
}

/// The pool, on the fleet thread.
struct Pool {
    identity: IdentityKey,
    limits: Limits,
    calls_per_connection: usize,
    connections: RefCell<HashMap<String, Slot>>,
    health: Arc<Mutex<HashMap<String, HealthReport>>>,
    /// Each regional orchestrator's directory, refreshed by its confirmations and pings.
    directories: Directories,
    /// The Toteboxes this worker keeps connected (its share of the fleet in config).
    maintained: RefCell<Vec<Source>>,
}

/// A connection being dialed, shared by every request that needs it meanwhile.
type Dial = LocalBoxFuture<'static, Result<Downstream, SourceStatus>>;

struct Slot {
    client: Option<Downstream>,
    /// The dial in progress, if any: concurrent requests wait for it instead of each opening a
    /// connection of their own. Held weakly: when every request waiting for it gives up, the
    /// attempt is dropped (and its socket closed) rather than parked here.
    dialing: Option<(WeakShared<Dial>, (SocketAddr, PublicKey))>,
    /// Where `client` is connected, and to which key: a reloaded config may move an archive.
    endpoint: Option<(SocketAddr, PublicKey)>,
    quarantined_until: Option<Instant>,
    why: String,
    /// When the background dialer last pinged the pooled connection.
    pinged: Option<Instant>,
    /// The tenants' shares of this Totebox's calls.
    gate: Rc<Gate>,
}

use std::net::SocketAddr;

impl Slot {
    /// The pooled connection, if it is up and to `source`'s endpoint, of its kind (a reloaded
    /// config may have moved the archive).
    fn live(&self, source: &Source) -> Option<&Downstream> {
        let endpoint = (source.address, source.key);
        // A reload may also turn a member from a Totebox into a region, or back.
        let region = matches!(source.member, Member::Region(_));
        self.client.as_ref().filter(|c| {
            self.endpoint == Some(endpoint)
                && matches!(c, Downstream::Region(_)) == region
                && c.is_connected()
        })
    }
}

impl Pool {
    fn slot<'a>(&self, connections: &'a mut HashMap<String, Slot>, archive: &str) -> &'a mut Slot {
        connections
            .entry(archive.to_owned())
            .or_insert_with(|| Slot {
                client: None,
                dialing: None,
                endpoint: None,
                quarantined_until: None,
                why: String::new(),
                pinged: None,
                gate: Gate::new(self.calls_per_connection),
            })
    }

    fn gate(&self, source: &Source) -> Rc<Gate> {
        let mut connections = self.connections.borrow_mut();
        self.slot(&mut connections, &source.archive).gate.clone()
    }

    /// The pooled connection to `source`, connecting if needed (one dial at a time per source).
    async fn connection(self: &Rc<Self>, source: &Source) -> Result<Downstream, SourceStatus> {
        let endpoint = (source.address, source.key);
        let dialing = {
            let mut connections = self.connections.borrow_mut();
            let slot = self.slot(&mut connections, &source.archive);
            if let Some(until) = slot.quarantined_until {
                if Instant::now() < until {
                    return Err(SourceStatus::Quarantined(slot.why.clone()));
                }
                slot.quarantined_until = None;
            }
            // The guard may have cut the pooled connection between requests (a Bootstrap or a
            // Call sent while idle, or after an answer): that is a violation like any other.
            let violation = slot.client.as_ref().and_then(|c| c.diode_violation());
            if let Some(why) = violation {
                drop(connections);
                let why = format!("broke the diode: it sent {why}");
                self.quarantine(source, why.clone());
                return Err(SourceStatus::Quarantined(why));
            }
            if let Some(client) = slot.live(source) {
                return Ok(client.clone());
            }
            // Dropping our reference closes it once calls still holding it end.
            slot.client = None;
            let joined = slot
                .dialing
                .as_ref()
                .filter(|(_, to)| *to == endpoint)
                .and_then(|(dial, _)| dial.upgrade());
            match joined {
                Some(dial) => dial,
                None => {
                    let dial: Shared<Dial> =
                        self.clone().dial(source.clone()).boxed_local().shared();
                    slot.dialing = dial.downgrade().map(|weak| (weak, endpoint));
                    dial
                }
            }
        };
        dialing.await
    }

    /// Dials `source` and, once TLS is up, pools the connection: its `identify` is in flight,
    /// and the first request's call goes out beside it (each call waits for the confirmation
    /// before it answers, and a failed confirmation marks the connection down).
    async fn dial(self: Rc<Self>, source: Source) -> Result<Downstream, SourceStatus> {
        // A failed attempt leaves nothing open behind it: the client closes what it opened.
        let connected = match source.member {
            Member::Totebox => ToteboxClient::connect_serving(
                source.address,
                &self.identity,
                source.key,
                &source.archive,
                self.limits,
            )
            .await
            .map(|c| Downstream::Totebox(Rc::new(c))),
            Member::Region(_) => {
                RegionClient::connect(source.address, &self.identity, source.key, self.limits)
                    .await
                    .map(|c| {
                        let client = Rc::new(c);
                        self.learn_directory(&source.archive, client.clone());
                        Downstream::Region(client)
                    })
            }
        };
        let endpoint = (source.address, source.key);
        {
            let mut connections = self.connections.borrow_mut();
            let slot = self.slot(&mut connections, &source.archive);
            if slot.dialing.as_ref().is_some_and(|(_, to)| *to == endpoint) {
                slot.dialing = None;
            }
        }
        let client = connected.map_err(|e| self.unconfirmed(&source, e))?;
        let mut connections = self.connections.borrow_mut();
        let slot = self.slot(&mut connections, &source.archive);
        // Quarantined while this dial was under way (a violation on an older connection): the
        // new one is not used either.
        if let Some(until) = slot.quarantined_until
            && Instant::now() < until
        {
            return Err(SourceStatus::Quarantined(slot.why.clone()));
        }
        slot.client = Some(client.clone());
        slot.endpoint = Some(endpoint);
        Ok(client)
    }

    /// A connection that could not be made or confirmed, as `source`'s outcome: a Totebox that
    /// broke the diode doing so is quarantined.
    fn unconfirmed(&self, source: &Source, error: ConnectError) -> SourceStatus {
        match error {
            ConnectError::DiodeViolation { reason, .. } => {
                let why = format!(
                    "broke the diode while connecting: it sent {}",
                    bounded(reason, MAX_TEXT)
                );
                self.quarantine(source, why.clone());
                SourceStatus::Quarantined(why)
            }
            // The archive it named may be another tenant's: that goes to the operator's log,
            // not into this tenant's outcome.
            e @ ConnectError::WrongArchive { .. } => {
                tracing::warn!(archive = %source.archive, "{e}");
                SourceStatus::Error(format!(
                    "{}: the Totebox at {} serves another archive (the orchestrator's log names it)",
                    e.code(),
                    source.address
                ))
            }
            e @ (ConnectError::Unreachable { .. } | ConnectError::Timeout { .. }) => {
                SourceStatus::Unreachable(bounded(e.to_string(), MAX_TEXT))
            }
            // May quote the Totebox's own exception text.
            other => SourceStatus::Error(bounded(other.to_string(), MAX_TEXT)),
        }
    }

    /// Replaces the list of Toteboxes to keep connected, letting go of the connections of any
    /// no longer in it (a request still using one keeps it until it ends).
    fn maintain(&self, sources: Vec<Source>) {
        let kept: std::collections::HashSet<&str> =
            sources.iter().map(|s| s.archive.as_str()).collect();
        self.connections
            .borrow_mut()
            .retain(|archive, _| kept.contains(archive.as_str()));
        // An archive the config no longer lists has no health to report, and stops counting
        // as connected.
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        for gone in self.maintained.borrow().iter() {
            if kept.contains(gone.archive.as_str()) {
                continue;
            }
            if health
                .remove(&gone.archive)
                .is_some_and(|report| report.health == Health::Up)
            {
                crate::metrics::connected(false);
            }
        }
        drop(health);
        *self.maintained.borrow_mut() = sources;
    }

    /// Stores a region's directory once its session is confirmed (a refused or failed
    /// confirmation leaves the last one known).
    fn learn_directory(self: &Rc<Self>, region: &str, client: Rc<RegionClient>) {
        let (pool, region) = (self.clone(), region.to_owned());
        tokio::task::spawn_local(async move {
            if let Ok(directory) = client.confirmed().await {
                pool.store_directory(&region, (*directory).clone());
            }
        });
    }

    fn store_directory(&self, region: &str, directory: Vec<ArchiveStatus>) {
        self.directories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(region.to_owned(), Arc::new(directory));
    }

    /// The background dialer: every `every`, connects each maintained Totebox that is not
    /// connected (not one that is quarantined) and pings each that is (every few rounds), and
    /// reports what it found in the health map,
    /// so the first request after start, or after a Totebox comes back, finds its connection
    /// up: one round trip downstream instead of four.
    async fn keep_connected(self: Rc<Self>, every: Duration) {
        let ping_every = every * PING_ROUNDS;
        loop {
            let sources = self.maintained.borrow().clone();
            let (pooled, down): (Vec<_>, Vec<_>) = sources.into_iter().partition(|source| {
                self.connections
                    .borrow()
                    .get(&source.archive)
                    .is_some_and(|slot| slot.live(source).is_some())
            });
            // Apart, so that dialing many Toteboxes that are down (each may take a handshake
            // timeout) never delays the pings that keep the others' links alive.
            let pings =
                futures::stream::iter(pooled).for_each_concurrent(MAINTENANCE_DIALS, |source| {
                    let pool = self.clone();
                    async move { pool.ping(&source, ping_every).await }
                });
            let dials =
                futures::stream::iter(down).for_each_concurrent(MAINTENANCE_DIALS, |source| {
                    let pool = self.clone();
                    async move { pool.keep(&source).await }
                });
            futures::join!(pings, dials);
            tokio::time::sleep(every).await;
        }
    }

    /// Pings `source`'s pooled connection (`identify`) if it has not been pinged for
    /// `ping_every`, and records how that went. The ping keeps a quiet link from reaching the
    /// Totebox's idle limit (where a request could meet the Totebox closing it) and keeps its
    /// health current. A ping that goes unanswered marks the Totebox down but does not retire
    /// the link: it may be busy carrying a large answer, and a request that finds it stalled
    /// retires it after its own timeout.
    async fn ping(self: &Rc<Self>, source: &Source, ping_every: Duration) {
        let client = {
            let mut connections = self.connections.borrow_mut();
            let Some(slot) = connections.get_mut(&source.archive) else {
                return;
            };
            if slot.pinged.is_some_and(|at| at.elapsed() < ping_every) {
                return;
            }
            slot.pinged = Some(Instant::now());
            match slot.live(source) {
                Some(client) => client.clone(),
                None => return,
            }
        };
        let started = Instant::now();
        let mut status =
            match tokio::time::timeout(self.limits.handshake_timeout, client.ping()).await {
                Ok(Ok(directory)) => {
                    if let Some(directory) = directory {
                        self.store_directory(&source.archive, directory);
                    }
                    SourceStatus::Ok
                }
                Ok(Err(e)) => status_of(e),
                Err(_) => SourceStatus::TimedOut,
            };
        if let Some(why) = client.diode_violation() {
            let why = format!("broke the diode: it sent {why}");
            self.quarantine(source, why.clone());
            status = SourceStatus::Quarantined(why);
        } else if status != SourceStatus::Ok {
            tracing::debug!(archive = %source.archive, ?status, "a pooled connection failed its ping");
        }
        self.record_health(source, &status, started.elapsed());
    }

    /// Connects `source` if it is not connected, and records how that went.
    async fn keep(self: &Rc<Self>, source: &Source) {
        let connected = self
            .connections
            .borrow()
            .get(&source.archive)
            .is_some_and(|slot| slot.live(source).is_some());
        if connected {
            return;
        }
        let started = Instant::now();
        let deadline = started + self.limits.handshake_timeout + Duration::from_secs(1);
        // Connected means confirmed: the health it reports is the Totebox's `identify` answer.
        let dialed: RefCell<Option<Downstream>> = RefCell::new(None);
        let confirmed = async {
            let client = self.connection(source).await?;
            *dialed.borrow_mut() = Some(client.clone());
            client
                .confirmed()
                .await
                .map_err(|e| self.unconfirmed(source, e))
        };
        let status = match tokio::time::timeout_at(deadline, confirmed).await {
            Ok(Ok(_)) => SourceStatus::Ok,
            Ok(Err(status)) => status,
            Err(_) => {
                // Never confirmed: a request must not spend its timeout on it.
                if let Some(client) = dialed.take() {
                    self.retire(source, &client);
                }
                SourceStatus::TimedOut
            }
        };
        if status != SourceStatus::Ok {
            tracing::debug!(archive = %source.archive, ?status, "could not connect a Totebox");
        }
        self.record_health(source, &status, started.elapsed());
    }

    /// Whether `client` is still `source`'s pooled connection (not retired or replaced).
    fn is_pooled(&self, source: &Source, client: &Downstream) -> bool {
        self.connections
            .borrow()
            .get(&source.archive)
            .and_then(|slot| slot.client.as_ref())
            .is_some_and(|pooled| pooled.same(client))
    }

    /// Takes `client` out of the pool after a call on it timed out: the link may be stalled,
    /// half-open or dripping (or its stream cut short under TLS), and a new request must not
    /// queue behind it. Calls still running on it keep it until they end (so no other tenant's
    /// call is cut); the next request dials a fresh connection. A Totebox that is only slow
    /// costs one reconnect per timeout.
    fn retire(&self, source: &Source, client: &Downstream) {
        let mut connections = self.connections.borrow_mut();
        if let Some(slot) = connections.get_mut(&source.archive)
            && slot.client.as_ref().is_some_and(|c| c.same(client))
        {
            tracing::debug!(archive = %source.archive, "retired a connection after a timeout");
            slot.client = None;
        }
    }

    /// Records a diode violation: drop the connection and quarantine the source.
    fn quarantine(&self, source: &Source, why: String) {
        tracing::error!(target: "psp::security", archive = %source.archive, "quarantined a Totebox: {why}");
        crate::metrics::quarantined(&source.archive);
        let mut connections = self.connections.borrow_mut();
        let slot = self.slot(&mut connections, &source.archive);
        slot.client = None;
        slot.quarantined_until = Some(Instant::now() + QUARANTINE);
        slot.why = why;
    }

    async fn ask(
        self: &Rc<Self>,
        tenant: &TenantId,
        source: &Source,
        chain: &Chain,
        (work, labels): (&Work, &[String]),
        limits: &FanOutLimits,
        deadline: Instant,
    ) -> (SourceStatus, Option<Answer>, Duration) {
        let started = Instant::now();
        let until = deadline.min(started + limits.source_timeout);
        // The connection a call went out on, if one did: what a timeout retires.
        let sent_on: RefCell<Option<Downstream>> = RefCell::new(None);
        let attempt = async {
            let mut client = self.connection(source).await?;
            // The tenant's fair share of this connection; the wait counts against the timeout.
            let gate = self.gate(source);
            let _permit = gate.enter(tenant).await;
            // Retired while this call waited its turn: not sent on a link another call found
            // stalled.
            if !self.is_pooled(source, &client) {
                client = self.connection(source).await?;
            }
            *sent_on.borrow_mut() = Some(client.clone());
            let answer = match (&client, work) {
                (Downstream::Totebox(client), Work::Query(query)) => client
                    .query_bounded(chain, query, limits.max_answer_bytes)
                    .await
                    .map(Answer::Result),
                (Downstream::Totebox(client), Work::Command(command)) => client
                    .command_bounded(chain, command, limits.max_answer_bytes)
                    .await
                    .map(|mut answer| {
                        answer.message = bounded(answer.message, MAX_TEXT);
                        Answer::Command(answer)
                    }),
                (Downstream::Region(client), Work::Query(query)) => {
                    let Member::Region(region) = &source.member else {
                        return Err(SourceStatus::Error(
                            "a regional orchestrator listed as a Totebox".into(),
                        ));
                    };
                    let asked = crate::tier::asked_keys(labels, &region.labels);
                    let ask = PartialAsk {
                        select: &region.select,
                        query,
                        labels: &asked,
                        until,
                    };
                    // One share of the request's answers per archive it answers for.
                    let most = limits
                        .max_answer_bytes
                        .saturating_mul(region.leaves.len().max(1));
                    client
                        .partial(&self.identity, chain, &ask, most)
                        .await
                        .map(Answer::Region)
                }
                (Downstream::Region(client), Work::Command(command)) => {
                    let Member::Region(region) = &source.member else {
                        return Err(SourceStatus::Error(
                            "a regional orchestrator listed as a Totebox".into(),
                        ));
                    };
                    let within = (
                        until,
                        limits
                            .max_answer_bytes
                            .saturating_mul(region.leaves.len().max(1)),
                    );
                    client
                        .command(&self.identity, chain, &region.select, command, within)
                        .await
                        .map(Answer::RegionCommands)
                }
            };
            match answer {
                Ok(answer) => Ok(answer),
                Err(e) => {
                    if let Some(why) = client.diode_violation() {
                        self.quarantine(source, why.clone());
                        return Err(SourceStatus::Quarantined(why));
                    }
                    // The session itself was refused (not paired, another archive): say so,
                    // as a connect that waited for the confirmation would have.
                    if let Some(refused) = client.confirmation_error() {
                        return Err(self.unconfirmed(source, refused.clone()));
                    }
                    Err(status_of(e))
                }
            }
        };
        let (status, answer) = match tokio::time::timeout_at(until, attempt).await {
            Err(_) => match sent_on.take() {
                // The guard cut it meanwhile: a violation, whatever else happened.
                Some(client) if client.diode_violation().is_some() => {
                    let why = format!(
                        "broke the diode: it sent {}",
                        client.diode_violation().unwrap_or_default()
                    );
                    self.quarantine(source, why.clone());
                    (SourceStatus::Quarantined(why), None)
                }
                // Unanswered for the operator's whole timeout: the link may be stalled.
                Some(client) if until >= started + limits.retire_after => {
                    self.retire(source, &client);
                    (SourceStatus::TimedOut, None)
                }
                _ => (SourceStatus::TimedOut, None),
            },
            Ok(Err(status)) => (status, None),
            Ok(Ok(Answer::Result(result))) if rows_of(&result) > limits.max_rows_per_source => (
                SourceStatus::Rejected {
                    code: ANSWER_TOO_LARGE.into(),
                    message: format!(
                        "answered {} rows or groups; at most {} are accepted from one source",
                        rows_of(&result),
                        limits.max_rows_per_source
                    ),
                },
                None,
            ),
            Ok(Ok(answer)) => (SourceStatus::Ok, Some(answer)),
        };
        let latency = started.elapsed();
        self.record_health(source, &status, latency);
        crate::metrics::source_ended(&source.archive, &status, latency);
        (status, answer, latency)
    }

    fn record_health(&self, source: &Source, status: &SourceStatus, latency: Duration) {
        let health = match status {
            SourceStatus::Ok | SourceStatus::Denied { .. } | SourceStatus::Rejected { .. } => {
                Health::Up
            }
            SourceStatus::Quarantined(_) => Health::Quarantined,
            _ => Health::Down,
        };
        let mut seen = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let report = seen.entry(source.archive.clone()).or_default();
        if (report.health == Health::Up) != (health == Health::Up) {
            crate::metrics::connected(health == Health::Up);
        }
        report.health = health;
        if health == Health::Up {
            report.latency = latency;
            report.last_seen = now_micros();
        }
    }

    /// Runs this worker's share of one fan-out, sending each source's end as it happens.
    async fn serve(self: Rc<Self>, request: Request) {
        let Request {
            tenant,
            sources,
            chain,
            work,
            labels,
            limits,
            deadline,
            arrivals,
            watch,
        } = request;
        // tokio wakes its driver (an eventfd write, then one more turn of the worker's loop)
        // for each timer set earlier than the earliest it knew of at its last turn, and a
        // worker that had no timer knew of none: each call's two deadlines then cost a write,
        // most of a fleet thread's writes at 1,000 archives. One timer first, no later than
        // any call's deadline, then one turn of the driver, and the calls' timers wake nothing.
        let now = Instant::now();
        let floor = [limits.source_timeout, self.limits.call_timeout]
            .into_iter()
            .filter_map(|after| now.checked_add(after))
            .fold(deadline, Instant::min);
        let mut floor = std::pin::pin!(tokio::time::sleep_until(floor));
        let _ = futures::poll!(floor.as_mut());
        tokio::task::yield_now().await;
        let arrivals_to = &arrivals;
        let ended = RefCell::new(vec![false; sources.len()]);
        let (pool, chain, work, limits, tenant) =
            (&self, &*chain, (&work, &*labels), &limits, &tenant);
        let answered = &watch.answered;
        let asks = futures::stream::iter(sources.iter().enumerate())
            .map(|(local, (index, source))| async move {
                if Instant::now() >= deadline {
                    return (local, *index, SourceStatus::TimedOut, None, Duration::ZERO);
                }
                let (status, answer, latency) = pool
                    .ask(tenant, source, chain, work, limits, deadline)
                    .await;
                answered.fetch_add(1, Ordering::Relaxed);
                (local, *index, status, answer, latency)
            })
            .buffer_unordered(limits.max_concurrency.max(1));
        // The answers that end within a couple of milliseconds of each other go to the fold as
        // one batch, one message on the channel, which wakes its thread once. Sent one by one,
        // each answer woke it again, the largest single cost of a fleet thread in a profile
        // (BENCHMARKS.md).
        let asks =
            tokio_stream::StreamExt::chunks_timeout(asks, ARRIVALS_TOGETHER, ARRIVALS_GATHERED_FOR)
                .for_each(|ready| {
                    let locals: Vec<usize> = ready.iter().map(|(local, ..)| *local).collect();
                    let batch: Vec<Arrival> = ready
                        .into_iter()
                        .map(|(local, index, status, answer, latency)| {
                            arrival(&sources[local].1, index, status, answer, latency)
                        })
                        .collect();
                    let (sender, ended) = (arrivals_to, &ended);
                    async move {
                        // Ended once sent: a cancel during the send ends the batch below.
                        if sender.send(batch).await.is_ok() {
                            let mut ended = ended.borrow_mut();
                            for local in locals {
                                ended[local] = true;
                            }
                        }
                    }
                });
        // Whoever asked may stop waiting (a cancelled or dropped FleetQuery): then stop too, which
        // drops the calls in flight, and capnp-rpc tells each Totebox to finish them.
        let unanswered = tokio::select! {
            () = asks => SourceStatus::TimedOut,
            () = watch.cancel.cancelled() => SourceStatus::Cancelled,
            () = arrivals.closed() => return,
        };
        // A cancel keeps what arrived; the rest end now, each with its outcome.
        end_the_rest(&arrivals, &sources, &ended.into_inner(), unanswered).await;
    }
}

/// Sends every source not yet `ended` its end with `status` (no answer), as one batch.
pub(crate) async fn end_the_rest(
    arrivals: &mpsc::Sender<Vec<Arrival>>,
    sources: &[(usize, Source)],
    ended: &[bool],
    status: SourceStatus,
) {
    let rest: Vec<Arrival> = sources
        .iter()
        .enumerate()
        .filter(|(local, _)| !ended.get(*local).copied().unwrap_or(false))
        .map(|(_, (index, source))| Arrival {
            index: *index,
            outcome: SourceOutcome::without_answer(
                source.archive.clone(),
                status.clone(),
                Duration::ZERO,
            ),
            answer: None,
        })
        .collect();
    if !rest.is_empty() {
        // Nobody listening any more is no error: there is no one left to tell.
        let _ = arrivals.send(rest).await;
    }
}

/// One source's end as an arrival, its outcome filled in from its answer.
fn arrival(
    source: &Source,
    index: usize,
    status: SourceStatus,
    answer: Option<Answer>,
    latency: Duration,
) -> Arrival {
    let mut outcome = SourceOutcome::without_answer(source.archive.clone(), status, latency);
    match &answer {
        Some(Answer::Result(r)) => {
            outcome.as_of = r.as_of;
            outcome.suppressed_groups = r.suppressed_groups;
            outcome.rows = rows_of(r) as u64;
        }
        Some(Answer::Command(c)) => outcome.as_of = c.as_of,
        Some(Answer::RegionCommands(_)) => {}
        Some(Answer::Region(r)) => {
            for result in r.parts.iter().filter_map(|p| p.result.as_ref()) {
                outcome.as_of = if outcome.as_of == 0 {
                    result.as_of
                } else {
                    outcome.as_of.min(result.as_of)
                };
                outcome.rows = outcome.rows.saturating_add(rows_of(result) as u64);
            }
        }
        None => {}
    }
    Arrival {
        index,
        outcome,
        answer,
    }
}

/// Longest text from a Totebox (an error message, a command's summary) an outcome carries: a
/// source may say what went wrong, not fill the view.
const MAX_TEXT: usize = 1024;
/// Longest error code an outcome carries.
const MAX_CODE: usize = 64;

/// `text` cut to at most `max` bytes (at a character boundary), marked when cut.
pub(crate) fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// A Totebox's refusal or failure, as an outcome. Its code and message are the Totebox's own
/// words: kept to a bounded length.
fn status_of(error: CallError) -> SourceStatus {
    let code = bounded(error.code, MAX_CODE);
    let message = bounded(error.message, MAX_TEXT);
    let prefix = code.split('.').next().unwrap_or("");
    match prefix {
        "source" => SourceStatus::Rejected { code, message },
        "capability" | "policy" | "query" | "limit" | "command" => {
            SourceStatus::Denied { code, message }
        }
        _ if code == "transport.timeout" => SourceStatus::TimedOut,
        _ => SourceStatus::Error(format!("{code}: {message}")),
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
