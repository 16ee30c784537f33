//! The console-facing service (`Orchestrator` in `schema/orchestrator.capnp`).
//!
//! The console listener completes TLS only for operator keys, and each connection's bootstrap is
//! scoped to that operator's tenant. A request is checked (tenancy, the confused-deputy rule, the
//! tenant's quotas) before any Totebox is called, then fanned out in the background: the console
//! gets a `FleetQuery` at once and pipelines `view()` on it. Dropping the `FleetQuery` stops the
//! downstream calls; `cancel()` stops them too but keeps what already arrived.
//!
//! The config can be replaced while serving ([`OrchestratorService::reload`]): each request reads
//! one snapshot when it starts and keeps it to the end, so a reload never changes or drops a
//! request in flight.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use psp_core::query::wire::{read_query, write_result};
use psp_core::{Chain, IdentityKey, PublicKey};
use psp_rpc::client::CommandSpec;
use psp_rpc::limits::Limits;
use psp_rpc::runtime::{Bootstrap, Connection};
use psp_schema::orchestrator_capnp::{fleet_query, fleet_request, orchestrator};
use tokio::sync::Notify;

use crate::config::{Config, MemberKind, PATH_SEPARATOR, Partial, Tenant};
use crate::console::ArchiveStatus;
use crate::fanout::{
    CommandResults, FanOutLimits, Fleet, Health, Member, Source, SourceOutcome, SourceStatus, Watch,
};
use crate::gate::TenantId;
use crate::live::Live;
use crate::quota::TenantQuota;
use crate::report::{Reach, Report, Run, run};
use crate::selection::{Refusal, Selector, reach, select};
use crate::tier::{expand_commands, region_ask};
use crate::view::ViewError;
use crate::viewports::Viewport;
use crate::wire::{
    read_selector, read_viewport, refuse, write_archive, write_cells, write_command_result,
    write_outcome, write_report, write_viewport,
};

/// Most rows or groups accepted from one Totebox.
const MAX_ROWS_PER_SOURCE: usize = 100_000;

/// One config and the quota state of its tenants.
#[derive(Debug)]
struct Snapshot {
    config: Arc<Config>,
    quotas: HashMap<String, Arc<TenantQuota>>,
}

/// Every archive of `config`'s fleet, as the fleet workers dial it.
fn sources_of(config: &Config) -> Vec<Source> {
    config.fleet.iter().map(Source::of).collect()
}

/// What every console connection shares.
#[derive(Debug)]
pub struct OrchestratorService {
    key: PublicKey,
    fleet: Fleet,
    /// The largest message a Totebox connection reads: no source's share exceeds it.
    message_limit: usize,
    current: RwLock<Arc<Snapshot>>,
}

impl OrchestratorService {
    /// A service over `config`'s fleet, reaching Toteboxes as `identity`.
    pub fn new(config: Config, identity: &IdentityKey, limits: Limits) -> Arc<Self> {
        let fleet = Fleet::with_workers(identity.clone(), limits, config.fleet_workers);
        fleet.keep_connected(&sources_of(&config), config.redial);
        let snapshot = Snapshot::new(config, None);
        Arc::new(Self {
            fleet,
            message_limit: limits.max_message_words.saturating_mul(8),
            key: identity.public(),
            current: RwLock::new(Arc::new(snapshot)),
        })
    }

    /// Replaces the config. Requests in flight finish under the config they started with; a
    /// tenant whose quotas did not change keeps its running count and rate state, so a reload
    /// is no way around a quota.
    pub fn reload(&self, config: Config) {
        self.fleet
            .keep_connected(&sources_of(&config), config.redial);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(Snapshot::new(config, Some(&current)));
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.snapshot().config.clone()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

impl Snapshot {
    fn new(config: Config, previous: Option<&Snapshot>) -> Self {
        let quotas = config
            .tenants
            .iter()
            .map(|t| {
                let kept = previous
                    .and_then(|p| p.quotas.get(&t.name))
                    .filter(|q| q.quotas() == t.quotas)
                    .cloned();
                let state = kept.unwrap_or_else(|| Arc::new(TenantQuota::new(t.quotas)));
                (t.name.clone(), state)
            })
            .collect();
        Self {
            config: Arc::new(config),
            quotas,
        }
    }
}

struct Console {
    service: Arc<OrchestratorService>,
    connection: Rc<Connection>,
}

/// A request that passed every check, ready to fan out.
struct Admitted {
    tenant: TenantId,
    reach: Reach,
    chain: Chain,
    limits: FanOutLimits,
    partial: Partial,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Console {
    fn tenant<'c>(&self, config: &'c Config) -> Result<&'c Tenant, capnp::Error> {
        let operator = &self.connection.peer;
        config.tenant_of(operator).ok_or_else(|| {
            let refusal = Refusal::NotAnOperator(*operator);
            refuse(refusal.code(), refusal)
        })
    }

    /// Every check a request passes before any Totebox is called: the tenant, the archives it
    /// names, the capability's issuer and holder, and the tenant's quotas. Counted by tenant,
    /// `kind` (query, view or command) and code for the metrics endpoint.
    fn admit(
        &self,
        request: fleet_request::Reader<'_>,
        kind: &'static str,
        what: &str,
        answers_per_source: usize,
    ) -> capnp::Result<Admitted> {
        // An orchestrator above asks by its last listing of our archives, which may be stale:
        // an archive no longer ours is reported as such, not a reason to refuse the rest.
        let admitted = self.checked(request, what, answers_per_source, kind == "partial");
        let config = self.service.config();
        let tenant = config
            .tenant_of(&self.connection.peer)
            .map_or("", |t| t.name.as_str());
        crate::metrics::request(tenant, kind, admitted.as_ref().err());
        admitted
    }

    fn checked(
        &self,
        request: fleet_request::Reader<'_>,
        what: &str,
        answers_per_source: usize,
        lenient: bool,
    ) -> capnp::Result<Admitted> {
        let snapshot = self.service.snapshot();
        let config = &snapshot.config;
        let operator = self.connection.peer;
        let chain = Chain::from_reader(request.get_chain()?)
            .map_err(|e| refuse(&format!("capability.{}", e.rule()), e))?;
        let options = request.get_options()?;
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
        let tenant = self.tenant(config)?;
        let refused = |e: Refusal| {
            tracing::warn!(target: "psp::security", %operator, tenant = %tenant.name, "refused a {what}: {e}");
            refuse(e.code(), e)
        };
        let mut selector = read_selector(request.get_archives()?)?;
        let mut not_asked = Vec::new();
        if let (true, Selector::Ids(ids)) = (lenient, &selector) {
            let (known, gone): (Vec<String>, Vec<String>) = ids.iter().cloned().partition(|id| {
                !matches!(
                    select(config, tenant, &Selector::Ids(vec![id.clone()])),
                    Err(Refusal::ArchiveNotInTenant(_))
                )
            });
            not_asked.extend(gone.into_iter().map(|id| {
                let refusal = Refusal::ArchiveNotInTenant(id.clone());
                SourceOutcome::without_answer(
                    id,
                    SourceStatus::Denied {
                        code: refusal.code().into(),
                        message: refusal.to_string(),
                    },
                    Duration::ZERO,
                )
            }));
            selector = Selector::Ids(known);
        }
        let selected = match &selector {
            Selector::Ids(ids) if ids.is_empty() && !not_asked.is_empty() => Vec::new(),
            _ => select(config, tenant, &selector).map_err(refused)?,
        };
        let reached = reach(&chain, &operator, &self.service.key, selected).map_err(refused)?;
        let mut sources = Vec::with_capacity(reached.asked.len());
        let mut labels = Vec::with_capacity(reached.asked.len());
        let mut archives = 0usize;
        // One archive reached two ways (directly and through a region, or through two regions)
        // is asked once, by the first: its records must count once.
        let mut seen: HashMap<String, String> = HashMap::new();
        let twice = |path: &str, first: &str| {
            SourceOutcome::without_answer(
                path.to_owned(),
                SourceStatus::Error(format!(
                    "the same archive is reached as {first}; it was asked once, there"
                )),
                Duration::ZERO,
            )
        };
        for a in &reached.asked {
            let mut source = Source::of(a);
            if a.kind == MemberKind::Totebox {
                if let Some(first) = seen.get(&a.id) {
                    not_asked.push(twice(&a.id, first));
                    continue;
                }
                seen.insert(a.id.clone(), a.id.clone());
            }
            if a.kind == MemberKind::Orchestrator {
                let directory = self.service.fleet.directory(&a.id);
                let (ask, outside) = region_ask(
                    a,
                    directory.as_deref().map(Vec::as_slice),
                    &selector,
                    &chain,
                )
                .map_err(refused)?;
                not_asked.extend(outside);
                let Some(mut ask) = ask else { continue };
                if !ask.leaves.is_empty() {
                    ask.leaves.retain(|leaf| {
                        let path = format!("{}{PATH_SEPARATOR}{}", a.id, leaf.id);
                        let archive = crate::tier::archive_of(&leaf.id).to_owned();
                        match seen.get(&archive) {
                            Some(first) => {
                                not_asked.push(twice(&path, first));
                                false
                            }
                            None => {
                                seen.insert(archive, path);
                                true
                            }
                        }
                    });
                    if ask.leaves.is_empty() {
                        continue;
                    }
                    ask.select = Selector::Ids(ask.leaves.iter().map(|l| l.id.clone()).collect());
                }
                archives += ask.leaves.len().max(1);
                source.member = Member::Region(Arc::new(ask));
            } else {
                archives += 1;
            }
            sources.push(source);
            labels.push(a.labels.clone());
        }
        // The quota counts archives, wherever they are reached.
        if archives > tenant.quotas.archives_per_query {
            return Err(refused(Refusal::TooManyArchives {
                count: archives,
                max: tenant.quotas.archives_per_query,
            }));
        }
        if sources.is_empty() && not_asked.is_empty() {
            return Err(refused(Refusal::NothingSelected));
        }
        let permit = snapshot.quotas[&tenant.name].admit().map_err(|e| {
            tracing::info!(tenant = %tenant.name, "refused a {what}: {e}");
            refuse(e.code(), format!("tenant {:?}: {e}", tenant.name))
        })?;
        tracing::info!(
            target: "psp::audit",
            %operator,
            tenant = %tenant.name,
            archives,
            capability = %chain.last().id,
            "{what}"
        );
        let reach = Reach {
            sources,
            labels,
            not_asked: reached
                .outside_capability
                .iter()
                .map(|a| {
                    SourceOutcome::without_answer(
                        a.id.clone(),
                        SourceStatus::Denied {
                            code: "capability.archive-not-in-scope".into(),
                            message: "the capability does not name this archive; it was not asked"
                                .into(),
                        },
                        Duration::ZERO,
                    )
                })
                .chain(not_asked)
                .collect(),
        };
        // Each source's share of the request's answer budget: a request never holds more,
        // however many sources answer, and no source can take the others' shares.
        // Counted by archive: a region gets one share per archive it answers for.
        let answers = archives.saturating_mul(answers_per_source.max(1));
        let max_answer_bytes = config.source_share(answers, self.service.message_limit);
        Ok(Admitted {
            tenant: TenantId::from(tenant.name.as_str()),
            reach,
            chain,
            limits: FanOutLimits {
                source_timeout,
                deadline,
                max_concurrency: config.max_concurrency,
                max_rows_per_source: MAX_ROWS_PER_SOURCE,
                max_answer_bytes,
                retire_after: config.source_timeout,
            },
            partial,
            _permit: permit,
        })
    }

    /// Admits a request and starts its fan-out in the background.
    fn start(
        &self,
        request: fleet_request::Reader<'_>,
        viewport: Viewport,
        kind: &'static str,
        what: &str,
    ) -> capnp::Result<fleet_query::Client> {
        let per_source = match &viewport {
            Viewport::Summary(kpis) => kpis.len(),
            _ => 1,
        };
        let admitted = self.admit(request, kind, what, per_source)?;
        let watch = Watch::default();
        watch
            .answered
            .fetch_add(admitted.reach.not_asked.len() as u32, Ordering::Relaxed);
        let state = Rc::new(Pending {
            result: RefCell::new(None),
            done: Notify::new(),
            total: admitted.reach.answers_expected(&viewport),
            watch: watch.clone(),
            live: Rc::default(),
        });
        // The archives reported without being asked count as answered from the start.
        state.live.merged(admitted.reach.not_asked.len() as u32);
        let (fleet, pending) = (self.service.fleet.clone(), state.clone());
        // The fan-out counts as running until its answer is ready.
        let running = self.connection.hold();
        let task = tokio::task::spawn_local(async move {
            let _running = running;
            let how = Run {
                tenant: admitted.tenant.clone(),
                fleet: &fleet,
                chain: &admitted.chain,
                limits: admitted.limits,
                partial: admitted.partial,
                watch,
                live: Some(pending.live.clone()),
            };
            let report = run(&viewport, &admitted.reach, &how).await;
            drop(admitted); // the quota slot is free once the answer is ready
            *pending.result.borrow_mut() = Some(report);
            pending.done.notify_waiters();
        });
        Ok(capnp_rpc::new_client(FleetQueryServer {
            state,
            task,
            connection: self.connection.clone(),
            max_view_bytes: self.service.message_limit,
        }))
    }
}

impl orchestrator::Server for Console {
    async fn fleet(
        self: Rc<Self>,
        _: orchestrator::FleetParams,
        mut results: orchestrator::FleetResults,
    ) -> Result<(), capnp::Error> {
        // Counted against the connection's calls-in-flight limit; a draining server refuses it.
        let _running = self.connection.begin_call()?;
        let config = self.service.config();
        let tenant = self.tenant(&config)?;
        let mut listed: Vec<ArchiveStatus> = Vec::new();
        for a in config.fleet.iter().filter(|a| tenant.reaches(a)) {
            let seen = self.service.fleet.health(&a.id);
            let own = ArchiveStatus {
                id: a.id.clone(),
                labels: a.labels.clone(),
                key: a.key.to_string(),
                health: seen.health,
                latency: seen.latency,
                last_seen: seen.last_seen,
            };
            match (a.kind, self.service.fleet.directory(&a.id)) {
                // A region's archives, by path, with its entry's labels over their own; while
                // the region is not up, neither are they (as far as this orchestrator can tell).
                (MemberKind::Orchestrator, Some(directory)) => {
                    listed.extend(directory.iter().map(|leaf| {
                        let mut labels = leaf.labels.clone();
                        labels.extend(a.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                        ArchiveStatus {
                            id: format!("{}{PATH_SEPARATOR}{}", a.id, leaf.id),
                            labels,
                            key: leaf.key.clone(),
                            health: if seen.health == Health::Up {
                                leaf.health
                            } else {
                                seen.health
                            },
                            latency: leaf.latency,
                            last_seen: leaf.last_seen,
                        }
                    }));
                }
                _ => listed.push(own),
            }
        }
        let message_limit = self.service.message_limit;
        let mut list = results.get().init_archives(listed.len() as u32);
        for (i, a) in listed.iter().enumerate() {
            write_archive(a, list.reborrow().get(i as u32));
        }
        let size = results.get().reborrow_as_reader().total_size();
        fits(size, message_limit, "fleet listing")?;
        Ok(())
    }

    async fn query(
        self: Rc<Self>,
        params: orchestrator::QueryParams,
        mut results: orchestrator::QueryResults,
    ) -> Result<(), capnp::Error> {
        // Counted against the connection's calls-in-flight limit; a draining server refuses it.
        let _running = self.connection.begin_call()?;
        let params = params.get()?;
        let query = read_query(params.get_query()?).map_err(|e| refuse(e.code(), e))?;
        let viewport = Viewport::Rollup {
            query,
            labels: Vec::new(),
        };
        let fleet_query = self.start(params.get_request()?, viewport, "query", "query")?;
        results.get().set_fleet_query(fleet_query);
        Ok(())
    }

    async fn view(
        self: Rc<Self>,
        params: orchestrator::ViewParams,
        mut results: orchestrator::ViewResults,
    ) -> Result<(), capnp::Error> {
        // Counted against the connection's calls-in-flight limit; a draining server refuses it.
        let _running = self.connection.begin_call()?;
        let params = params.get()?;
        let viewport = read_viewport(params.get_viewport()?)?;
        let what = format!("viewport {:?}", viewport.name);
        let fleet_query = self.start(params.get_request()?, viewport.viewport, "view", &what)?;
        results.get().set_fleet_query(fleet_query);
        Ok(())
    }

    async fn view_configured(
        self: Rc<Self>,
        params: orchestrator::ViewConfiguredParams,
        mut results: orchestrator::ViewConfiguredResults,
    ) -> Result<(), capnp::Error> {
        // Counted against the connection's calls-in-flight limit; a draining server refuses it.
        let _running = self.connection.begin_call()?;
        let params = params.get()?;
        let copy = read_viewport(params.get_viewport()?)?;
        // A console's copy of a config viewport: computed only as the config has it now. As
        // `viewport(name)` does, only a tenant's operator learns what the config holds.
        let config = self.service.config();
        self.tenant(&config)?;
        match config.viewports.iter().find(|v| v.name == copy.name) {
            Some(configured) if *configured == copy => {}
            Some(_) => {
                return Err(refuse(
                    "viewport.changed",
                    format!(
                        "the config's viewport {:?} is not the copy this console sent: ask for it again",
                        copy.name
                    ),
                ));
            }
            None => {
                return Err(refuse(
                    "viewport.unknown",
                    format!("no viewport {:?} in the config", copy.name),
                ));
            }
        }
        let what = format!("viewport {:?}", copy.name);
        let fleet_query = self.start(params.get_request()?, copy.viewport, "view", &what)?;
        results.get().set_fleet_query(fleet_query);
        Ok(())
    }

    async fn viewport(
        self: Rc<Self>,
        params: orchestrator::ViewportParams,
        mut results: orchestrator::ViewportResults,
    ) -> Result<(), capnp::Error> {
        // Counted against the connection's calls-in-flight limit; a draining server refuses it.
        let _running = self.connection.begin_call()?;
        let config = self.service.config();
        self.tenant(&config)?;
        let name = params.get()?.get_name()?.to_str()?;
        let viewport = config
            .viewports
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = config.viewports.iter().map(|v| v.name.as_str()).collect();
                refuse(
                    "viewport.unknown",
                    format!("no viewport {name:?} in the config (it has {known:?})"),
                )
            })?;
        write_viewport(viewport, results.get().init_viewport());
        Ok(())
    }

    async fn partial(
        self: Rc<Self>,
        params: orchestrator::PartialParams,
        mut results: orchestrator::PartialResults,
    ) -> Result<(), capnp::Error> {
        // Counted against the connection's calls-in-flight limit; a draining server refuses it.
        let _running = self.connection.begin_call()?;
        let params = params.get()?;
        let query = read_query(params.get_query()?).map_err(|e| refuse(e.code(), e))?;
        let labels = params
            .get_labels()?
            .iter()
            .map(|t| Ok(t?.to_string()?))
            .collect::<capnp::Result<Vec<String>>>()?;
        check_label_keys(&labels)?;
        let admitted = self.admit(params.get_request()?, "partial", "partial merge", 1)?;
        let how = Run {
            tenant: admitted.tenant.clone(),
            fleet: &self.service.fleet,
            chain: &admitted.chain,
            limits: admitted.limits,
            partial: Partial::BestEffort,
            watch: Watch::default(),
            live: None,
        };
        let (parts, outcomes) =
            crate::report::partial(&query, &labels, &admitted.reach, &how).await;
        let mut answer = results.get().init_answer();
        let mut list = answer.reborrow().init_parts(parts.len() as u32);
        for (i, part) in parts.iter().enumerate() {
            let mut b = list.reborrow().get(i as u32);
            b.set_answers(u32::try_from(part.parts).unwrap_or(u32::MAX));
            if let Some(result) = &part.result {
                write_result(result, b.reborrow().init_result());
            }
            write_cells(
                &part.overflows,
                b.init_overflows(part.overflows.len() as u32),
            );
        }
        let mut list = answer.init_outcomes(outcomes.len() as u32);
        for (i, o) in outcomes.iter().enumerate() {
            write_outcome(o, list.reborrow().get(i as u32));
        }
        let size = results.get().reborrow_as_reader().total_size();
        fits(size, self.service.message_limit, "partial merge")
    }

    async fn command(
        self: Rc<Self>,
        params: orchestrator::CommandParams,
        mut results: orchestrator::CommandResults,
    ) -> Result<(), capnp::Error> {
        // Counted against the connection's calls-in-flight limit; a draining server refuses it.
        let _running = self.connection.begin_call()?;
        let params = params.get()?;
        let command = params.get_command()?;
        let spec = CommandSpec {
            name: command.get_name()?.to_string()?,
            collection: command.get_collection()?.to_string()?,
            idempotency_key: command.get_idempotency_key()?.to_vec(),
            arguments: command.get_arguments()?.to_vec(),
        };
        if !(16..=64).contains(&spec.idempotency_key.len()) {
            return Err(refuse(
                "command.bad-idempotency-key",
                "an idempotency key is 16 to 64 bytes",
            ));
        }
        let what = format!("command {:?}", spec.name);
        let admitted = self.admit(params.get_request()?, "command", &what, 1)?;
        let gathered = self
            .service
            .fleet
            .command_as(
                admitted.tenant.clone(),
                admitted.reach.sources.clone(),
                &admitted.chain,
                spec,
                admitted.limits,
            )
            .await;
        // Each archive's outcome: a Totebox's own, a region's archives' one by one.
        let mut ended: CommandResults = Vec::new();
        let rows = gathered
            .outcomes
            .into_iter()
            .zip(gathered.commands)
            .zip(gathered.regions)
            .zip(&admitted.reach.sources);
        for (((outcome, answer), region), source) in rows {
            match &source.member {
                Member::Region(ask) => ended.extend(expand_commands(
                    &source.archive,
                    ask,
                    region,
                    &outcome.status,
                    outcome.latency,
                )),
                Member::Totebox => ended.push((outcome, answer)),
            }
        }
        ended.extend(admitted.reach.not_asked.iter().map(|o| (o.clone(), None)));
        let mut list = results.get().init_outcomes(ended.len() as u32);
        for (i, (o, a)) in ended.iter().enumerate() {
            write_command_result(o, a.as_ref(), list.reborrow().get(i as u32));
        }
        let size = results.get().reborrow_as_reader().total_size();
        fits(size, self.service.message_limit, "list of command outcomes")
    }
}

/// Most label columns one `partial` call may ask for.
const MAX_LABEL_KEYS: usize = 16;

/// Refuses `partial`'s label keys unless they are few, short and distinct.
fn check_label_keys(labels: &[String]) -> capnp::Result<()> {
    let distinct: std::collections::BTreeSet<&String> = labels.iter().collect();
    if labels.len() > MAX_LABEL_KEYS
        || distinct.len() != labels.len()
        || labels.iter().any(|k| k.len() > 256)
    {
        return Err(refuse(
            "query.bad-labels",
            format!("at most {MAX_LABEL_KEYS} distinct label keys of at most 256 bytes"),
        ));
    }
    Ok(())
}

/// A fan-out's state, shared by its task and its `FleetQuery`.
struct Pending {
    result: RefCell<Option<Result<Report, ViewError>>>,
    done: Notify,
    total: u32,
    watch: Watch,
    /// The view so far, made when a console asks (`next`).
    live: Rc<Live>,
}

struct FleetQueryServer {
    state: Rc<Pending>,
    task: tokio::task::JoinHandle<()>,
    connection: Rc<Connection>,
    /// The largest view a console reads (the default message limit): a larger one would end
    /// the console's connection, so it is refused instead.
    max_view_bytes: usize,
}

/// Refuses a reply larger than a console reads: sending it would not fail the request alone but
/// cut the console's whole connection (its reader refuses the message).
fn fits(size: capnp::Result<capnp::MessageSize>, max: usize, what: &str) -> capnp::Result<()> {
    let bytes = size?.word_count.saturating_mul(8);
    // Room for the RPC envelope around the view.
    if bytes.saturating_add(4096) > max as u64 {
        return Err(refuse(
            "fanout.too-large",
            format!(
                "the {what} is {bytes} bytes, more than a console reads ({max}): add a limit, \
                 a filter or fewer group-by fields, or select fewer archives"
            ),
        ));
    }
    Ok(())
}

impl Drop for FleetQueryServer {
    fn drop(&mut self) {
        // Nobody can read the answer any more: stop asking for it.
        self.task.abort();
    }
}

impl FleetQueryServer {
    /// The fan-out's end, once it has come: its report, written by `write`; its refusal; or
    /// that it stopped without an answer. `None` while it runs.
    fn ended(&self, write: impl FnOnce(&Report) -> capnp::Result<()>) -> Option<capnp::Result<()>> {
        if let Some(result) = self.state.result.borrow().as_ref() {
            return Some(match result {
                Ok(report) => write(report),
                Err(e) => Err(refuse(e.code(), e)),
            });
        }
        self.task.is_finished().then(|| {
            Err(refuse(
                "fanout.failed",
                "the request stopped without an answer",
            ))
        })
    }
}

impl fleet_query::Server for FleetQueryServer {
    async fn view(
        self: Rc<Self>,
        _: fleet_query::ViewParams,
        mut results: fleet_query::ViewResults,
    ) -> Result<(), capnp::Error> {
        // Part of a request already admitted: counted, so a graceful shutdown lets it finish,
        // and answered even while the server drains.
        let _running = self.connection.hold();
        loop {
            let notified = self.state.done.notified();
            let max = self.max_view_bytes;
            if let Some(ended) = self.ended(|report| {
                write_report(report, results.get().init_view());
                fits(
                    results.get().reborrow_as_reader().total_size(),
                    max,
                    "merged view",
                )
            }) {
                return ended;
            }
            notified.await;
        }
    }

    async fn next(
        self: Rc<Self>,
        params: fleet_query::NextParams,
        mut results: fleet_query::NextResults,
    ) -> Result<(), capnp::Error> {
        // Counted against the connection's calls in flight: a console cannot hold more waits
        // than its calls allow.
        let _running = self.connection.begin_call()?;
        let after = params.get()?.get_after();
        let total = self.state.total;
        // Bounded: the fan-out ends by its deadline, and its end wakes this; the second-long
        // wake-up notices a fan-out task that stopped without an answer.
        loop {
            let published = self.state.live.published();
            let done = self.state.done.notified();
            let max = self.max_view_bytes;
            if let Some(ended) = self.ended(|report| {
                let mut update = results.get().init_update();
                update.set_total(total);
                update.set_answered(total);
                update.set_final(true);
                write_report(report, update.init_view());
                fits(
                    results.get().reborrow_as_reader().total_size(),
                    max,
                    "merged view",
                )
            }) {
                return ended;
            }
            let live = &self.state.live;
            if let Some((answered, report)) = live.latest_after(after) {
                let mut update = results.get().init_update();
                update.set_total(total);
                update.set_answered(answered.min(total));
                write_report(&report, update.init_view());
                let size = results.get().reborrow_as_reader().total_size();
                return fits(size, self.max_view_bytes, "view so far");
            }
            if after < total {
                if live.answered() > after {
                    // Merged since: the view is made as soon as it may be.
                    live.want();
                } else {
                    // Nothing new yet: the view is made at the next arrival.
                    live.want_next();
                }
            }
            // `after` at or past the total asks for no view: only the end answers it.
            tokio::select! {
                () = published => {}
                () = done => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn progress(
        self: Rc<Self>,
        _: fleet_query::ProgressParams,
        mut results: fleet_query::ProgressResults,
    ) -> Result<(), capnp::Error> {
        let mut r = results.get();
        let answered = self.state.watch.answered.load(Ordering::Relaxed);
        r.set_answered(answered.min(self.state.total));
        r.set_total(self.state.total);
        Ok(())
    }

    async fn cancel(
        self: Rc<Self>,
        _: fleet_query::CancelParams,
        _: fleet_query::CancelResults,
    ) -> Result<(), capnp::Error> {
        // The fan-out stops now and keeps what arrived; `view` returns it with the rest marked
        // cancelled.
        self.state.watch.cancel.cancel();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_label_keys;

    #[test]
    fn an_upper_orchestrator_asks_for_few_short_distinct_label_keys_or_is_refused() {
        let keys = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
        assert!(check_label_keys(&keys(16)).is_ok());
        assert!(check_label_keys(&keys(17)).is_err());
        assert!(check_label_keys(&["a".into(), "a".into()]).is_err());
        assert!(check_label_keys(&["x".repeat(257)]).is_err());
        assert!(
            check_label_keys(&[String::new()]).is_ok(),
            "the archive id's key"
        );
    }
}
