//! Fan-out: one request to many Toteboxes, with deadlines, bounded concurrency and one outcome
//! per source, over a pool of connections shared by every request and tenant.
//!
//! Totebox connections are capnp-rpc clients, which are `!Send`, so the pool lives on one thread
//! of its own (the fleet thread, in the private `pool` module) and requests reach it over a channel. Each
//! request carries its own capability: connections are shared, authority never is.
//!
//! Answers stream back as they arrive ([`Fleet::stream`]): one [`Arrival`] per source, so the
//! caller folds each answer into its merge and drops it, and a request holds the merged groups,
//! never every source's answer. Each source may send at most its share of the request's byte
//! budget ([`FanOutLimits::max_answer_bytes`]).
//!
//! Time: each source has `source_timeout`, and nothing runs past the request's `deadline`; a
//! source still waiting for a concurrency slot at the deadline is reported as timed out, never
//! waited for. Every selected source ends with exactly one [`SourceOutcome`].
//!
//! A Totebox whose connection the diode guard cut, during the session's setup or after, is
//! quarantined: it is not redialed until the quarantine ends, and its outcome says why.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use psp_core::query::{Query, QueryResult, ResultBody};
use psp_core::{Chain, IdentityKey, PublicKey};
use psp_rpc::client::{CommandAnswer, CommandSpec};
use psp_rpc::limits::Limits;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::MemberKind;
use crate::console::ArchiveStatus;
use crate::gate::TenantId;
use crate::pool::{Job, Request};
use crate::region::RegionAnswer;
use crate::tier::RegionAsk;

/// Where to reach one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The archive id (for a regional orchestrator, its fleet id).
    pub archive: String,
    /// Its Totebox's (or regional orchestrator's) address.
    pub address: SocketAddr,
    /// Its pinned key.
    pub key: PublicKey,
    /// What it is, and for a region, what this request asks of it.
    pub member: Member,
}

/// What a source is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Member {
    /// A Totebox.
    #[default]
    Totebox,
    /// A regional orchestrator, with what this request asks of it (see [`crate::tier`]).
    Region(Arc<RegionAsk>),
}

impl Source {
    /// The source a member of the fleet config is asked as (a region: for all its archives).
    pub fn of(archive: &crate::config::FleetArchive) -> Source {
        Source {
            archive: archive.id.clone(),
            address: archive.address,
            key: archive.key,
            member: match archive.kind {
                MemberKind::Totebox => Member::Totebox,
                MemberKind::Orchestrator => Member::Region(Arc::new(RegionAsk {
                    labels: archive.labels.clone(),
                    select: crate::selection::Selector::All,
                    leaves: Vec::new(),
                })),
            },
        }
    }
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
    /// Answered, but the answer was set aside: it does not fit the query sent
    /// (`source.malformed-answer`) or is larger than the request accepts from one source
    /// (`source.answer-too-large`). The view is computed as if the source had not answered.
    Rejected {
        /// The stable code.
        code: String,
        /// What was wrong with the answer.
        message: String,
    },
}

impl SourceStatus {
    /// The status as one word (`ok`, `timed-out`, `unreachable`, `denied`, `error`,
    /// `quarantined`, `cancelled`, `rejected`), as the CLI and the metrics show it.
    pub fn word(&self) -> &'static str {
        match self {
            SourceStatus::Ok => "ok",
            SourceStatus::TimedOut => "timed-out",
            SourceStatus::Unreachable(_) => "unreachable",
            SourceStatus::Denied { .. } => "denied",
            SourceStatus::Error(_) => "error",
            SourceStatus::Quarantined(_) => "quarantined",
            SourceStatus::Cancelled => "cancelled",
            SourceStatus::Rejected { .. } => "rejected",
        }
    }
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

impl SourceOutcome {
    /// An outcome with no answer behind it.
    pub fn without_answer(archive: String, status: SourceStatus, latency: Duration) -> Self {
        Self {
            archive,
            status,
            latency,
            as_of: 0,
            rows: 0,
            suppressed_groups: 0,
        }
    }
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
    /// Most bytes of answer accepted from one source (its share of the request's budget),
    /// measured on the wire before the answer is decoded.
    pub max_answer_bytes: usize,
    /// A call left unanswered this long takes its connection out of the pool (the link may be
    /// stalled or dripping). The operator's configured per-source timeout: a request that asks
    /// for a shorter timeout, or whose deadline cuts its call short, never retires a connection
    /// other tenants share.
    pub retire_after: Duration,
}

impl Default for FanOutLimits {
    fn default() -> Self {
        Self {
            source_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(5),
            max_concurrency: 64,
            max_rows_per_source: 100_000,
            max_answer_bytes: 16 << 20,
            retire_after: Duration::from_secs(2),
        }
    }
}

/// What the fleet thread asks each source.
#[derive(Debug, Clone)]
pub enum Work {
    /// Run a query.
    Query(Query),
    /// Apply a command.
    Command(CommandSpec),
}

/// Each archive's outcome of a command, with its answer when it answered.
pub type CommandResults = Vec<(SourceOutcome, Option<CommandAnswer>)>;

/// What one source answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A query's result.
    Result(QueryResult),
    /// A command's outcome.
    Command(CommandAnswer),
    /// A regional orchestrator's unfinished merge and its archives' outcomes.
    Region(RegionAnswer),
    /// A regional orchestrator's archives' outcomes of a command, as it reports them.
    RegionCommands(CommandResults),
}

/// One source's end of a fan-out, as soon as it ends.
#[derive(Debug)]
pub struct Arrival {
    /// The source's position in the request.
    pub index: usize,
    /// How it ended.
    pub outcome: SourceOutcome,
    /// Its answer, when it answered.
    pub answer: Option<Answer>,
}

/// The ends of a fan-out's sources, as they happen: see [`Fleet::stream`]. A fleet thread hands
/// over the answers that ended close together as one batch, so the request folding them is woken
/// once per batch, not once per answer.
#[derive(Debug)]
pub struct Arrivals {
    batches: mpsc::Receiver<Vec<Arrival>>,
    held: std::vec::IntoIter<Arrival>,
}

impl Arrivals {
    /// The next source's end, or `None` once every source has ended. Cancel-safe (usable in
    /// `select!`): nothing is taken from the fleet threads unless it is kept.
    pub async fn recv(&mut self) -> Option<Arrival> {
        loop {
            if let Some(arrival) = self.held.next() {
                return Some(arrival);
            }
            self.held = self.batches.recv().await?.into_iter();
        }
    }
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
    /// A regional orchestrator's report of a command, in the same order (`None` for a Totebox
    /// or a region that did not answer): each of its archives' outcome, as it reports them.
    pub regions: Vec<Option<CommandResults>>,
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

/// A handle on the fleet's workers. Cheap to clone; every clone shares the pool.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// One per worker thread; a Totebox's connection lives on worker `worker_of(archive)`.
    workers: Arc<[mpsc::UnboundedSender<Job>]>,
    health: Arc<Mutex<HashMap<String, HealthReport>>>,
    directories: Directories,
}

/// Each regional orchestrator's directory as it last listed it, by its fleet id.
pub(crate) type Directories = Arc<Mutex<HashMap<String, Arc<Vec<ArchiveStatus>>>>>;

/// Which of `workers` owns `archive`'s connection: a fixed hash of its id, so every request
/// finds the same pooled connection (and the same quarantine) on the same thread.
fn worker_of(archive: &str, workers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable for the life of the process, spread over the workers.
    let mut hasher = std::hash::DefaultHasher::new();
    archive.hash(&mut hasher);
    (hasher.finish() % workers as u64) as usize
}

/// How long a Totebox that broke the diode stays cut off.
pub const QUARANTINE: Duration = Duration::from_secs(300);

/// Batches of answers queued between the fleet threads and the request folding them (each of
/// at most [`crate::pool::ARRIVALS_TOGETHER`], so at most 16 answers): enough to keep the fleet
/// threads busy, few enough that a slow fold holds back the Toteboxes, not memory.
const BATCHES_QUEUED: usize = 2;

impl Fleet {
    /// Starts one fleet worker per core; they connect as `identity` with `limits` on each
    /// connection.
    ///
    /// On each Totebox connection a worker runs at most three quarters of
    /// `limits.max_calls_in_flight` calls at once (the Toteboxes' own default limit is the same
    /// number), shared fairly among tenants (see [`crate::gate`]).
    pub fn start(identity: IdentityKey, limits: Limits) -> Fleet {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_workers(identity, limits, cores)
    }

    /// [`Fleet::start`] with `workers` threads (at least one).
    pub fn with_workers(identity: IdentityKey, limits: Limits, workers: usize) -> Fleet {
        let health = Arc::new(Mutex::new(HashMap::new()));
        let directories = Directories::default();
        let workers = (0..workers.max(1))
            .map(|index| {
                let (requests, incoming) = mpsc::unbounded_channel::<Job>();
                crate::pool::spawn(
                    index,
                    identity.clone(),
                    limits,
                    incoming,
                    (health.clone(), directories.clone()),
                );
                requests
            })
            .collect();
        Fleet {
            workers,
            health,
            directories,
        }
    }

    /// Keeps `sources` (the fleet in config) connected from now on: each worker dials its share
    /// at once and redials any that drop every `redial`; `None` stops
    /// that. Call again after a reload: the new list replaces the old, and Toteboxes no longer in
    /// it are let go.
    pub fn keep_connected(&self, sources: &[Source], redial: Option<Duration>) {
        let count = self.workers.len();
        let mut shares: Vec<Vec<Source>> = vec![Vec::new(); count];
        for source in sources {
            shares[worker_of(&source.archive, count)].push(source.clone());
        }
        for (worker, share) in self.workers.iter().zip(shares) {
            let _ = worker.send(Job::Maintain(share, redial));
        }
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

    /// The directory of the regional orchestrator `region` (its fleet id) as it last listed it,
    /// if it has since this orchestrator started.
    pub fn directory(&self, region: &str) -> Option<Arc<Vec<ArchiveStatus>>> {
        self.directories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(region)
            .cloned()
    }

    /// Starts `work` at every source under `chain`, for `tenant` (whose calls share each Totebox
    /// connection fairly with other tenants'). Each source's end arrives on the returned
    /// receiver as soon as it happens: exactly one [`Arrival`] per source, then the receiver
    /// closes. Dropping the receiver cancels the calls still in flight.
    pub fn stream(
        &self,
        tenant: TenantId,
        sources: Vec<Source>,
        chain: &Chain,
        work: Work,
        limits: FanOutLimits,
        watch: Watch,
    ) -> Arrivals {
        self.stream_labelled(tenant, sources, chain, work, &[], limits, watch)
    }

    /// [`Fleet::stream`] for a merge grouped first by the archive labels `labels`: a regional
    /// orchestrator among the sources is asked for those its entry does not set (see
    /// [`crate::tier`]).
    #[allow(clippy::too_many_arguments)]
    pub fn stream_labelled(
        &self,
        tenant: TenantId,
        sources: Vec<Source>,
        chain: &Chain,
        work: Work,
        labels: &[String],
        limits: FanOutLimits,
        watch: Watch,
    ) -> Arrivals {
        let labels: Arc<[String]> = labels.into();
        let (arrivals, batches) = mpsc::channel(BATCHES_QUEUED);
        let deadline = tokio::time::Instant::now() + limits.deadline;
        let count = self.workers.len();
        let mut shares: Vec<Vec<(usize, Source)>> = vec![Vec::new(); count];
        for (index, source) in sources.into_iter().enumerate() {
            shares[worker_of(&source.archive, count)].push((index, source));
        }
        // Each worker asks at most its part of the request's concurrency.
        let limits = FanOutLimits {
            max_concurrency: limits.max_concurrency.div_ceil(count).max(1),
            ..limits
        };
        let chain = Arc::new(chain.clone());
        for (worker, sources) in self.workers.iter().zip(shares) {
            if sources.is_empty() {
                continue;
            }
            let request = Request {
                tenant: tenant.clone(),
                sources,
                chain: chain.clone(),
                work: work.clone(),
                labels: labels.clone(),
                limits,
                deadline,
                arrivals: arrivals.clone(),
                watch: watch.clone(),
            };
            if worker.send(Job::Fan(Box::new(request))).is_err() {
                // The worker is gone (it panicked): its sources never arrive, and whoever folds
                // the arrivals reports each as "the fan-out ended without this source".
                tracing::error!("a fleet worker stopped; its sources fail");
            }
        }
        Arrivals {
            batches,
            held: Vec::new().into_iter(),
        }
    }

    /// Asks every source `query` under `chain`, within `limits`, and gathers every answer.
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
        let names = sources.iter().map(|s| s.archive.clone()).collect();
        gather(
            self.stream(
                TenantId::from(""),
                sources,
                chain,
                Work::Query(query),
                limits,
                watch,
            ),
            names,
        )
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
        self.command_as(TenantId::from(""), sources, chain, command, limits)
            .await
    }

    /// [`Fleet::command`] for `tenant`, whose calls share each Totebox connection fairly.
    pub async fn command_as(
        &self,
        tenant: TenantId,
        sources: Vec<Source>,
        chain: &Chain,
        command: CommandSpec,
        limits: FanOutLimits,
    ) -> Gathered {
        let names = sources.iter().map(|s| s.archive.clone()).collect();
        gather(
            self.stream(
                tenant,
                sources,
                chain,
                Work::Command(command),
                limits,
                Watch::default(),
            ),
            names,
        )
        .await
    }
}

/// Collects a stream's arrivals in source order (`names`: the sources' archive ids).
async fn gather(mut arrivals: Arrivals, names: Vec<String>) -> Gathered {
    let count = names.len();
    let mut outcomes: Vec<Option<SourceOutcome>> = vec![None; count];
    let mut results = vec![None; count];
    let mut commands = vec![None; count];
    let mut regions = vec![None; count];
    while let Some(arrival) = arrivals.recv().await {
        let Some(slot) = outcomes.get_mut(arrival.index) else {
            continue;
        };
        let mut outcome = arrival.outcome;
        match arrival.answer {
            Some(Answer::Result(r)) => results[arrival.index] = Some(r),
            Some(Answer::Command(c)) => commands[arrival.index] = Some(c),
            Some(Answer::RegionCommands(r)) => regions[arrival.index] = Some(r),
            // Gathered, a region is one source: its unfinished merge is an answer to the query
            // like a Totebox's (`crate::report::run` reports its archives one by one). A merge
            // with overflowed cells, or in parts, cannot be one answer, so it is set aside.
            Some(Answer::Region(mut r))
                if r.parts.len() <= 1 && r.parts.iter().all(|p| p.overflows.is_empty()) =>
            {
                results[arrival.index] = r.parts.pop().and_then(|p| p.result);
            }
            Some(Answer::Region(_)) => {
                outcome.status = SourceStatus::Rejected {
                    code: "source.not-one-answer".into(),
                    message: "the regional orchestrator's merge has overflowed cells or parts \
                              of several column types; report::run merges it"
                        .into(),
                };
            }
            None => {}
        }
        *slot = Some(outcome);
    }
    Gathered {
        outcomes: outcomes
            .into_iter()
            .zip(names)
            .map(|(o, archive)| {
                o.unwrap_or_else(|| {
                    SourceOutcome::without_answer(
                        archive,
                        SourceStatus::Error("the fan-out ended without this source".into()),
                        Duration::ZERO,
                    )
                })
            })
            .collect(),
        results,
        commands,
        regions,
    }
}

/// Rows or groups in a result.
pub(crate) fn rows_of(result: &QueryResult) -> usize {
    match &result.body {
        ResultBody::Rows(rows) => rows.len(),
        ResultBody::Groups(groups) => groups.len(),
    }
}
