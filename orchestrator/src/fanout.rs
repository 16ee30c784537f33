//! Fan-out: one request to many Toteboxes, with deadlines, bounded concurrency and one outcome
//! per source, over a pool of connections shared by every request and tenant.
//!
//! Totebox connections are capnp-rpc clients, which are `!Send`, so the pool lives on one thread
//! of its own (the fleet thread) and requests reach it over a channel. Each request carries its own
//! capability: connections are shared, authority never is.
//!
//! Time: each source has `source_timeout`, and nothing runs past the request's `deadline`; a
//! source still waiting for a concurrency slot at the deadline is reported as timed out, never
//! waited for. Every selected source ends with exactly one [`SourceOutcome`].
//!
//! A Totebox whose connection the diode guard cut is quarantined: it is not redialed until the
//! quarantine ends, and its outcome says why.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use psp_core::query::{Query, QueryResult, ResultBody};
use psp_core::{Chain, IdentityKey, PublicKey};
use psp_rpc::client::{CommandAnswer, CommandSpec, ConnectError, ToteboxClient};
use psp_rpc::limits::{CallError, Limits};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where to reach one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The archive id.
    pub archive: String,
    /// Its Totebox's address.
    pub address: SocketAddr,
    /// Its pinned key.
    pub key: PublicKey,
}

/// How one source ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceStatus {
    /// Answered in time.
    Ok,
    /// Did not answer within its timeout or the deadline.
    TimedOut,
    /// Could not be connected to.
    Unreachable(String),
    /// Refused the capability or the query (the code names the rule).
    Denied {
        /// The stable code, e.g. `capability.expired`.
        code: String,
        /// The message.
        message: String,
    },
    /// Failed otherwise.
    Error(String),
    /// Cut off for breaking the diode, not redialed until the quarantine ends.
    Quarantined(String),
    /// The request was cancelled before this source answered.
    Cancelled,
}

/// How a caller watches and steers a fan-out in flight.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Sources finished so far (answered or failed), for progress.
    pub answered: Arc<AtomicU32>,
    /// Cancelling it ends the fan-out at once: what arrived is kept, the rest is `Cancelled`.
    pub cancel: CancellationToken,
}

/// What happened at one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOutcome {
    /// The archive id.
    pub archive: String,
    /// How it ended.
    pub status: SourceStatus,
    /// From sending to the answer or failure.
    pub latency: Duration,
    /// The source's data time (0 without an answer).
    pub as_of: i64,
    /// Rows or groups it contributed.
    pub rows: u64,
    /// Groups it withheld under its minimum group size.
    pub suppressed_groups: u64,
}

/// Limits on one request's fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanOutLimits {
    /// One source's time to answer.
    pub source_timeout: Duration,
    /// The whole request's time.
    pub deadline: Duration,
    /// Sources asked at once.
    pub max_concurrency: usize,
    /// Most rows or groups accepted from one source; a hostile Totebox cannot flood the merge.
    pub max_rows_per_source: usize,
}

/// What a fan-out gathered: one outcome per source, and the answers of those that answered.
#[derive(Debug)]
pub struct Gathered {
    /// One per source, in the order the sources were given.
    pub outcomes: Vec<SourceOutcome>,
    /// Query answers, in the same order (`None` where the source did not answer).
    pub results: Vec<Option<QueryResult>>,
    /// Command answers, in the same order (empty for a query).
    pub commands: Vec<Option<CommandAnswer>>,
}

/// What the fleet thread asks each source.
enum Work {
    Query(Query),
    Command(CommandSpec),
}

/// What one source answered.
enum Answer {
    Result(QueryResult),
    Command(CommandAnswer),
}

struct Request {
    sources: Vec<Source>,
    chain: Vec<u8>,
    work: Work,
    limits: FanOutLimits,
    reply: oneshot::Sender<Gathered>,
    watch: Watch,
}

/// Reachability of one archive, as the fleet thread last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// Not contacted yet.
    #[default]
    Unknown,
    /// Answered last time.
    Up,
    /// Could not be reached or timed out last time.
    Down,
    /// Cut off for breaking the diode.
    Quarantined,
}

/// What the fleet thread last saw of one archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthReport {
    /// Reachability.
    pub health: Health,
    /// The last round trip.
    pub latency: Duration,
    /// When it last answered (microseconds since the epoch; 0 when never).
    pub last_seen: i64,
}

/// A handle on the fleet thread. Cheap to clone; every clone shares the pool.
#[derive(Debug, Clone)]
pub struct Fleet {
    requests: mpsc::UnboundedSender<Request>,
    health: Arc<Mutex<HashMap<String, HealthReport>>>,
}

/// How long a Totebox that broke the diode stays cut off.
pub const QUARANTINE: Duration = Duration::from_secs(300);

impl Fleet {
    /// Starts the fleet thread; it connects as `identity` with `limits` on each connection.
    pub fn start(identity: IdentityKey, limits: Limits) -> Fleet {
        let (requests, mut incoming) = mpsc::unbounded_channel::<Request>();
        let health = Arc::new(Mutex::new(HashMap::new()));
        let seen = health.clone();
        std::thread::Builder::new()
            .name("psp-fleet".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a fleet runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let pool = Rc::new(Pool {
                        identity,
                        limits,
                        connections: Default::default(),
                        health: seen,
                    });
                    while let Some(request) = incoming.recv().await {
                        tokio::task::spawn_local(pool.clone().serve(request));
                    }
                });
            })
            .expect("spawn the fleet thread");
        Fleet { requests, health }
    }

    /// What the fleet thread last saw of `archive`.
    pub fn health(&self, archive: &str) -> HealthReport {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(archive)
            .copied()
            .unwrap_or_default()
    }

    /// Asks every source `query` under `chain`, within `limits`.
    pub async fn query(
        &self,
        sources: Vec<Source>,
        chain: &Chain,
        query: Query,
        limits: FanOutLimits,
    ) -> Gathered {
        self.query_watched(sources, chain, query, limits, Watch::default())
            .await
    }

    /// [`Fleet::query`] under a [`Watch`]: progress is counted as sources finish, and a cancel
    /// returns what arrived with the rest marked cancelled.
    pub async fn query_watched(
        &self,
        sources: Vec<Source>,
        chain: &Chain,
        query: Query,
        limits: FanOutLimits,
        watch: Watch,
    ) -> Gathered {
        self.run(sources, chain, Work::Query(query), limits, watch)
            .await
    }

    /// Sends `command` to every source under `chain`: each answers for itself (its outcome, and
    /// its command answer), and a retry with the same idempotency key is a replay everywhere.
    pub async fn command(
        &self,
        sources: Vec<Source>,
        chain: &Chain,
        command: CommandSpec,
        limits: FanOutLimits,
    ) -> Gathered {
        self.run(
            sources,
            chain,
            Work::Command(command),
            limits,
            Watch::default(),
        )
        .await
    }

    async fn run(
        &self,
        sources: Vec<Source>,
        chain: &Chain,
        work: Work,
        limits: FanOutLimits,
        watch: Watch,
    ) -> Gathered {
        let (reply, answer) = oneshot::channel();
        let count = sources.len();
        let request = Request {
            sources: sources.clone(),
            chain: chain.to_bytes(),
            work,
            limits,
            reply,
            watch,
        };
        if self.requests.send(request).is_ok()
            && let Ok(gathered) = answer.await
        {
            return gathered;
        }
        // The fleet thread is gone: every source failed, none silently.
        Gathered {
            outcomes: sources
                .into_iter()
                .map(|s| {
                    outcome(
                        s.archive,
                        SourceStatus::Error("the fleet thread stopped".into()),
                        Duration::ZERO,
                    )
                })
                .collect(),
            results: vec![None; count],
            commands: vec![None; count],
        }
    }
}

fn outcome(archive: String, status: SourceStatus, latency: Duration) -> SourceOutcome {
    SourceOutcome {
        archive,
        status,
        latency,
        as_of: 0,
        rows: 0,
        suppressed_groups: 0,
    }
}

/// The pool, on the fleet thread.
struct Pool {
    identity: IdentityKey,
    limits: Limits,
    connections: std::cell::RefCell<HashMap<String, Slot>>,
    health: Arc<Mutex<HashMap<String, HealthReport>>>,
}

#[derive(Default)]
struct Slot {
    client: Option<Rc<ToteboxClient>>,
    /// Where `client` is connected, and to which key: a reloaded config may move an archive.
    endpoint: Option<(SocketAddr, PublicKey)>,
    quarantined_until: Option<Instant>,
    why: String,
}

impl Pool {
    /// The pooled connection to `source`, connecting if needed.
    async fn connection(&self, source: &Source) -> Result<Rc<ToteboxClient>, SourceStatus> {
        {
            let mut connections = self.connections.borrow_mut();
            let slot = connections.entry(source.archive.clone()).or_default();
            if let Some(until) = slot.quarantined_until {
                if Instant::now() < until {
                    return Err(SourceStatus::Quarantined(slot.why.clone()));
                }
                slot.quarantined_until = None;
            }
            if let Some(client) = &slot.client {
                let same_endpoint = slot.endpoint == Some((source.address, source.key));
                if same_endpoint && client.is_connected() && client.diode_violation().is_none() {
                    return Ok(client.clone());
                }
                slot.client = None;
            }
        }
        let client =
            ToteboxClient::connect(source.address, &self.identity, source.key, self.limits)
                .await
                .map_err(|e| match e {
                    ConnectError::Unreachable { .. } | ConnectError::Timeout { .. } => {
                        SourceStatus::Unreachable(e.to_string())
                    }
                    other => SourceStatus::Error(other.to_string()),
                })?;
        let client = Rc::new(client);
        let mut connections = self.connections.borrow_mut();
        let slot = connections.entry(source.archive.clone()).or_default();
        slot.client = Some(client.clone());
        slot.endpoint = Some((source.address, source.key));
        Ok(client)
    }

    /// Records a diode violation: drop the connection and quarantine the source.
    fn quarantine(&self, source: &Source, why: String) {
        tracing::error!(target: "psp::security", archive = %source.archive, "quarantined a Totebox: {why}");
        let mut connections = self.connections.borrow_mut();
        let slot = connections.entry(source.archive.clone()).or_default();
        slot.client = None;
        slot.quarantined_until = Some(Instant::now() + QUARANTINE);
        slot.why = why;
    }

    async fn ask(
        &self,
        source: &Source,
        chain: &Chain,
        work: &Work,
        limits: &FanOutLimits,
        deadline: Instant,
    ) -> (SourceStatus, Option<Answer>, Duration) {
        let started = Instant::now();
        let until = deadline.min(started + limits.source_timeout);
        let attempt = async {
            let client = self.connection(source).await?;
            let answer = match work {
                Work::Query(query) => client.query(chain, query).await.map(Answer::Result),
                Work::Command(command) => client.command(chain, command).await.map(Answer::Command),
            };
            match answer {
                Ok(answer) => Ok(answer),
                Err(e) => {
                    if let Some(why) = client.diode_violation() {
                        self.quarantine(source, why.clone());
                        return Err(SourceStatus::Quarantined(why));
                    }
                    Err(status_of(e))
                }
            }
        };
        let (status, result) = match tokio::time::timeout_at(until, attempt).await {
            Err(_) => (SourceStatus::TimedOut, None),
            Ok(Err(status)) => (status, None),
            Ok(Ok(Answer::Command(answer))) => (SourceStatus::Ok, Some(Answer::Command(answer))),
            Ok(Ok(Answer::Result(result))) => {
                let rows = match &result.body {
                    ResultBody::Rows(rows) => rows.len(),
                    ResultBody::Groups(groups) => groups.len(),
                };
                if rows > limits.max_rows_per_source {
                    (
                        SourceStatus::Error(format!(
                            "limit.rows: answered {rows} rows; at most {} are accepted from one source",
                            limits.max_rows_per_source
                        )),
                        None,
                    )
                } else {
                    (SourceStatus::Ok, Some(Answer::Result(result)))
                }
            }
        };
        let latency = started.elapsed();
        let health = match &status {
            SourceStatus::Ok | SourceStatus::Denied { .. } => Health::Up,
            SourceStatus::Quarantined(_) => Health::Quarantined,
            _ => Health::Down,
        };
        let mut seen = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let report = seen.entry(source.archive.clone()).or_default();
        report.health = health;
        if health == Health::Up {
            report.latency = latency;
            report.last_seen = now_micros();
        }
        drop(seen);
        (status, result, latency)
    }

    async fn serve(self: Rc<Self>, request: Request) {
        let deadline = Instant::now() + request.limits.deadline;
        let chain = match Chain::from_bytes(&request.chain) {
            Ok(chain) => chain,
            Err(e) => {
                let outcomes = request
                    .sources
                    .iter()
                    .map(|s| {
                        outcome(
                            s.archive.clone(),
                            SourceStatus::Error(e.to_string()),
                            Duration::ZERO,
                        )
                    })
                    .collect();
                let _ = request.reply.send(Gathered {
                    outcomes,
                    results: vec![None; request.sources.len()],
                    commands: vec![None; request.sources.len()],
                });
                return;
            }
        };
        let (chain, query, limits) = (&chain, &request.work, &request.limits);
        let pool = &self;
        let answered = &request.watch.answered;
        let arrived = std::cell::RefCell::new(Vec::with_capacity(request.sources.len()));
        let work = futures::stream::iter(request.sources.iter().enumerate())
            .map(|(i, source)| async move {
                if Instant::now() >= deadline {
                    return (i, SourceStatus::TimedOut, None, Duration::ZERO);
                }
                let (status, result, latency) =
                    pool.ask(source, chain, query, limits, deadline).await;
                answered.fetch_add(1, Ordering::Relaxed);
                (i, status, result, latency)
            })
            .buffer_unordered(limits.max_concurrency.max(1))
            .for_each(|answer| {
                arrived.borrow_mut().push(answer);
                futures::future::ready(())
            });
        // Whoever asked may stop waiting (a cancelled or dropped FleetQuery): then stop too, which
        // drops the calls in flight, and capnp-rpc tells each Totebox to finish them.
        let mut reply = request.reply;
        // A cancel keeps what arrived: dropping `work` drops only the calls still in flight.
        let unanswered = tokio::select! {
            () = work => SourceStatus::TimedOut,
            () = request.watch.cancel.cancelled() => SourceStatus::Cancelled,
            () = reply.closed() => return,
        };
        let answers: Vec<(usize, SourceStatus, Option<Answer>, Duration)> = arrived.into_inner();
        let mut outcomes: Vec<SourceOutcome> = request
            .sources
            .iter()
            .map(|s| outcome(s.archive.clone(), unanswered.clone(), Duration::ZERO))
            .collect();
        let mut results = vec![None; request.sources.len()];
        let mut commands = vec![None; request.sources.len()];
        for (i, status, answer, latency) in answers {
            let o = &mut outcomes[i];
            o.status = status;
            o.latency = latency;
            match answer {
                Some(Answer::Result(r)) => {
                    o.as_of = r.as_of;
                    o.suppressed_groups = r.suppressed_groups;
                    o.rows = match &r.body {
                        ResultBody::Rows(rows) => rows.len() as u64,
                        ResultBody::Groups(groups) => groups.len() as u64,
                    };
                    results[i] = Some(r);
                }
                Some(Answer::Command(c)) => {
                    o.as_of = c.as_of;
                    commands[i] = Some(c);
                }
                None => {}
            }
        }
        let _ = reply.send(Gathered {
            outcomes,
            results,
            commands,
        });
    }
}

/// A Totebox's refusal or failure, as an outcome.
fn status_of(error: CallError) -> SourceStatus {
    let prefix = error.code.split('.').next().unwrap_or("");
    match prefix {
        "capability" | "policy" | "query" | "limit" | "command" => SourceStatus::Denied {
            code: error.code,
            message: error.message,
        },
        _ if error.code == "transport.timeout" => SourceStatus::TimedOut,
        _ => SourceStatus::Error(error.to_string()),
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
