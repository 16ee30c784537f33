//! The console-facing service (`Orchestrator` in `schema/orchestrator.capnp`).
//!
//! The console listener completes TLS only for operator keys, and each connection's bootstrap is
//! scoped to that operator's tenant. A query is checked (tenancy, the confused-deputy rule, the
//! tenant's quotas) before any Totebox is called, then fanned out in the background: the console
//! gets a `FleetQuery` at once and pipelines `view()` on it. Dropping or cancelling the
//! `FleetQuery` cancels the downstream calls.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use psp_core::query::wire::{read_query, type_to_wire, write_value};
use psp_core::{Chain, IdentityKey, PublicKey};
use psp_rpc::limits::{CallError, Limits};
use psp_rpc::runtime::{Bootstrap, Connection};
use psp_schema::orchestrator_capnp::{
    archive_selector, fleet_query, orchestrator, source_outcome, view as wire_view,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, Partial};
use crate::fanout::{FanOutLimits, Fleet, Health, Source, SourceOutcome, SourceStatus};
use crate::selection::{Refusal, Selector, reach, select};
use crate::view::{View, ViewError, labelled_query, view, with_labels};

/// Most rows or groups accepted from one Totebox.
const MAX_ROWS_PER_SOURCE: usize = 100_000;

/// What every console connection shares.
#[derive(Debug)]
pub struct OrchestratorService {
    config: Config,
    key: PublicKey,
    fleet: Fleet,
    running: HashMap<String, Arc<Semaphore>>,
}

impl OrchestratorService {
    /// A service over `config`'s fleet, reaching Toteboxes as `identity`.
    pub fn new(config: Config, identity: &IdentityKey, limits: Limits) -> Arc<Self> {
        let running = config
            .tenants
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    Arc::new(Semaphore::new(t.quotas.concurrent_queries)),
                )
            })
            .collect();
        Arc::new(Self {
            fleet: Fleet::start(identity.clone(), limits),
            key: identity.public(),
            config,
            running,
        })
    }

    /// The runtime's bootstrap factory: each console gets an `Orchestrator` scoped to its tenant.
    pub fn bootstrap_factory(self: &Arc<Self>) -> Bootstrap {
        let service = self.clone();
        Arc::new(move |connection: Rc<Connection>| {
            let client: orchestrator::Client = capnp_rpc::new_client(Console {
                service: service.clone(),
                connection,
            });
            client.client
        })
    }

    /// The fleet handle (for health).
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }
}

struct Console {
    service: Arc<OrchestratorService>,
    connection: Rc<Connection>,
}

fn refuse(code: &str, message: impl std::fmt::Display) -> capnp::Error {
    CallError::new(code, message.to_string()).to_capnp()
}

impl Console {
    fn tenant(&self) -> Result<&crate::config::Tenant, capnp::Error> {
        let operator = &self.connection.peer;
        self.service.config.tenant_of(operator).ok_or_else(|| {
            let refusal = Refusal::NotAnOperator(*operator);
            refuse(refusal.code(), refusal)
        })
    }
}

fn read_selector(reader: archive_selector::Reader<'_>) -> Result<Selector, capnp::Error> {
    Ok(match reader.which()? {
        archive_selector::All(()) => Selector::All,
        archive_selector::Ids(ids) => Selector::Ids(
            ids?.iter()
                .map(|t| Ok(t?.to_string()?))
                .collect::<Result<_, capnp::Error>>()?,
        ),
        archive_selector::Labels(labels) => Selector::Labels(
            labels?
                .iter()
                .map(|l| Ok((l.get_key()?.to_string()?, l.get_value()?.to_string()?)))
                .collect::<Result<_, capnp::Error>>()?,
        ),
    })
}

impl orchestrator::Server for Console {
    async fn fleet(
        self: Rc<Self>,
        _: orchestrator::FleetParams,
        mut results: orchestrator::FleetResults,
    ) -> Result<(), capnp::Error> {
        let tenant = self.tenant()?;
        let archives: Vec<_> = self
            .service
            .config
            .fleet
            .iter()
            .filter(|a| tenant.reaches(a))
            .collect();
        let mut list = results.get().init_archives(archives.len() as u32);
        for (i, a) in archives.iter().enumerate() {
            let mut entry = list.reborrow().get(i as u32);
            entry.set_id(&a.id);
            entry.set_key(a.key.to_string());
            let seen = self.service.fleet.health(&a.id);
            entry.set_health(match seen.health {
                Health::Unknown => psp_schema::orchestrator_capnp::Health::Unknown,
                Health::Up => psp_schema::orchestrator_capnp::Health::Up,
                Health::Down => psp_schema::orchestrator_capnp::Health::Down,
                Health::Quarantined => psp_schema::orchestrator_capnp::Health::Quarantined,
            });
            entry.set_latency_micros(seen.latency.as_micros() as u64);
            entry.set_last_seen(seen.last_seen);
            let mut labels = entry.init_labels(a.labels.len() as u32);
            for (j, (k, v)) in a.labels.iter().enumerate() {
                let mut label = labels.reborrow().get(j as u32);
                label.set_key(k);
                label.set_value(v);
            }
        }
        Ok(())
    }

    async fn query(
        self: Rc<Self>,
        params: orchestrator::QueryParams,
        mut results: orchestrator::QueryResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let query = read_query(params.get_query()?).map_err(|e| refuse(e.code(), e))?;
        let fleet_query = self.start(params.get_request()?, query, Vec::new())?;
        results.get().set_fleet_query(fleet_query);
        Ok(())
    }

    async fn view(
        self: Rc<Self>,
        params: orchestrator::ViewParams,
        mut results: orchestrator::ViewResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let viewport = params.get_viewport()?;
        let fleet_query = match viewport.which()? {
            psp_schema::orchestrator_capnp::viewport::Rollup(rollup) => {
                let rollup = rollup?;
                let query = read_query(rollup.get_query()?).map_err(|e| refuse(e.code(), e))?;
                let labels = rollup
                    .get_group_by_labels()?
                    .iter()
                    .map(|l| Ok(l?.to_string()?))
                    .collect::<Result<Vec<String>, capnp::Error>>()?;
                self.start(params.get_request()?, query, labels)?
            }
            _ => {
                return Err(refuse(
                    "viewport.unsupported",
                    "this orchestrator answers rollup viewports over the console; reconciliation and summaries are computed with the library for now",
                ));
            }
        };
        results.get().set_fleet_query(fleet_query);
        Ok(())
    }
}

impl Console {
    /// Checks a request (tenancy, the confused-deputy rule, quotas) and starts its fan-out in the
    /// background; `labels` (a rollup's) are prepended to every source's groups before the merge.
    fn start(
        &self,
        request: psp_schema::orchestrator_capnp::fleet_request::Reader<'_>,
        query: psp_core::query::Query,
        labels: Vec<String>,
    ) -> Result<fleet_query::Client, capnp::Error> {
        let chain = Chain::from_reader(request.get_chain()?)
            .map_err(|e| refuse(&format!("capability.{}", e.rule()), e))?;
        let options = request.get_options()?;
        let config = &self.service.config;
        let cap = |asked: u32, default: Duration| {
            if asked == 0 {
                default
            } else {
                Duration::from_millis(u64::from(asked)).min(default)
            }
        };
        let deadline = cap(options.get_deadline_millis(), config.deadline);
        let source_timeout =
            cap(options.get_source_timeout_millis(), config.source_timeout).min(deadline);
        let partial = match options.get_partial() {
            Ok(psp_schema::orchestrator_capnp::PartialPolicy::Strict) => Partial::Strict,
            Ok(psp_schema::orchestrator_capnp::PartialPolicy::BestEffort) => Partial::BestEffort,
            _ => config.partial,
        };

        let tenant = self.tenant()?;
        let selected = select(config, tenant, &read_selector(request.get_archives()?)?)
            .map_err(|e| refuse(e.code(), e))?;
        let reached = reach(&chain, &self.connection.peer, &self.service.key, selected).map_err(|e| {
            tracing::warn!(target: "psp::security", operator = %self.connection.peer, "refused a request: {e}");
            refuse(e.code(), e)
        })?;
        let permit: OwnedSemaphorePermit = self.service.running[&tenant.name]
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                refuse(
                    "tenant.quota",
                    format!(
                        "tenant {:?} already runs {} requests, its limit",
                        tenant.name, tenant.quotas.concurrent_queries
                    ),
                )
            })?;

        let source_labels: Vec<std::collections::BTreeMap<String, String>> =
            reached.asked.iter().map(|a| a.labels.clone()).collect();
        let sources: Vec<Source> = reached
            .asked
            .iter()
            .map(|a| Source {
                archive: a.id.clone(),
                address: a.address,
                key: a.key,
            })
            .collect();
        let not_asked: Vec<SourceOutcome> = reached
            .outside_capability
            .iter()
            .map(|a| SourceOutcome {
                archive: a.id.clone(),
                status: SourceStatus::Denied {
                    code: "capability.archive-not-in-scope".into(),
                    message: "the capability does not name this archive; it was not asked".into(),
                },
                latency: Duration::ZERO,
                as_of: 0,
                rows: 0,
                suppressed_groups: 0,
            })
            .collect();
        let state = Rc::new(Pending {
            result: RefCell::new(None),
            done: Notify::new(),
            answered: Arc::new(AtomicU32::new(0)),
            total: (sources.len() + not_asked.len()) as u32,
        });
        let (fleet, pending) = (self.service.fleet.clone(), state.clone());
        let limits = FanOutLimits {
            source_timeout,
            deadline,
            max_concurrency: config.max_concurrency,
            max_rows_per_source: MAX_ROWS_PER_SOURCE,
        };
        let task = tokio::task::spawn_local(async move {
            let _permit = permit;
            let mut gathered = fleet
                .query_counting(
                    sources,
                    &chain,
                    query.clone(),
                    limits,
                    pending.answered.clone(),
                )
                .await;
            pending
                .answered
                .fetch_add(not_asked.len() as u32, Ordering::Relaxed);
            gathered.results.extend(not_asked.iter().map(|_| None));
            gathered.outcomes.extend(not_asked);
            if !labels.is_empty() {
                gathered.results = gathered
                    .results
                    .into_iter()
                    .zip(&source_labels)
                    .map(|(r, l)| r.map(|r| with_labels(r, &labels, l)))
                    .collect();
            }
            let finalize = labelled_query(&query, &labels);
            *pending.result.borrow_mut() = Some(view(&finalize, gathered, partial));
            pending.done.notify_waiters();
        });
        Ok(capnp_rpc::new_client(FleetQueryServer { state, task }))
    }
}

/// A fan-out's state, shared by its task and its `FleetQuery`.
struct Pending {
    result: RefCell<Option<Result<View, ViewError>>>,
    done: Notify,
    answered: Arc<AtomicU32>,
    total: u32,
}

struct FleetQueryServer {
    state: Rc<Pending>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FleetQueryServer {
    fn drop(&mut self) {
        // Nobody can read the answer any more: stop asking for it.
        self.task.abort();
    }
}

impl fleet_query::Server for FleetQueryServer {
    async fn view(
        self: Rc<Self>,
        _: fleet_query::ViewParams,
        mut results: fleet_query::ViewResults,
    ) -> Result<(), capnp::Error> {
        loop {
            let notified = self.state.done.notified();
            if let Some(result) = self.state.result.borrow().as_ref() {
                return match result {
                    Ok(view) => {
                        write_view(view, results.get().init_view());
                        Ok(())
                    }
                    Err(e) => Err(refuse(e.code(), e)),
                };
            }
            if self.task.is_finished() {
                return Err(refuse("fanout.cancelled", "the request was cancelled"));
            }
            notified.await;
        }
    }

    async fn progress(
        self: Rc<Self>,
        _: fleet_query::ProgressParams,
        mut results: fleet_query::ProgressResults,
    ) -> Result<(), capnp::Error> {
        let mut r = results.get();
        r.set_answered(
            self.state
                .answered
                .load(Ordering::Relaxed)
                .min(self.state.total),
        );
        r.set_total(self.state.total);
        Ok(())
    }

    async fn cancel(
        self: Rc<Self>,
        _: fleet_query::CancelParams,
        _: fleet_query::CancelResults,
    ) -> Result<(), capnp::Error> {
        self.task.abort();
        self.state.done.notify_waiters();
        Ok(())
    }
}

fn write_outcome(o: &SourceOutcome, mut b: source_outcome::Builder<'_>) {
    b.set_archive(&o.archive);
    b.set_latency_micros(o.latency.as_micros() as u64);
    b.set_as_of(o.as_of);
    b.set_rows(o.rows);
    b.set_suppressed_groups(o.suppressed_groups);
    let mut status = b.get_status();
    match &o.status {
        SourceStatus::Ok => status.set_ok(()),
        SourceStatus::TimedOut => status.set_timed_out(()),
        SourceStatus::Unreachable(why) => status.set_unreachable(why),
        SourceStatus::Denied { code, message } => {
            let mut d = status.init_denied();
            d.set_code(code);
            d.set_message(message);
        }
        SourceStatus::Error(why) => status.set_error(why),
        SourceStatus::Quarantined(why) => status.set_quarantined(why),
    }
}

fn write_view(v: &View, mut b: wire_view::Builder<'_>) {
    b.set_complete(v.complete);
    b.set_as_of_oldest(v.as_of_oldest);
    let mut outcomes = b.reborrow().init_outcomes(v.outcomes.len() as u32);
    for (i, o) in v.outcomes.iter().enumerate() {
        write_outcome(o, outcomes.reborrow().get(i as u32));
    }
    let mut table = b.init_body().init_table();
    let mut columns = table.reborrow().init_columns(v.table.columns.len() as u32);
    for (i, c) in v.table.columns.iter().enumerate() {
        let mut column = columns.reborrow().get(i as u32);
        column.set_name(&c.name);
        column.set_type(type_to_wire(c.value_type));
    }
    let mut rows = table.init_rows(v.table.rows.len() as u32);
    for (i, row) in v.table.rows.iter().enumerate() {
        let mut values = rows.reborrow().get(i as u32).init_values(row.len() as u32);
        for (j, value) in row.iter().enumerate() {
            write_value(value.as_ref(), values.reborrow().get(j as u32));
        }
    }
}
