//! A console's client for the orchestrator: what the `orchestrator` command's console
//! subcommands and other Rust consoles use. Must be created and used on a tokio `LocalSet`.

use std::net::SocketAddr;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use std::collections::BTreeMap;
use std::time::Duration;

use psp_core::query::Query;
use psp_core::query::wire::write_query;
use psp_core::{Chain, IdentityKey, PublicKey};
use psp_rpc::client::{CommandAnswer, CommandSpec, ConnectError, dial};
use psp_rpc::limits::{CallError, Limits};
use psp_schema::orchestrator_capnp::{fleet_query, fleet_request, orchestrator};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::config::Partial;
use crate::fanout::{Health, SourceOutcome};
use crate::report::Report;
use crate::selection::Selector;
use crate::viewports::{NamedViewport, Viewport};
use crate::wire::{
    read_command_result, read_report, read_viewport, write_selector, write_viewport,
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
    /// The whole request ends by then.
    pub deadline: Option<Duration>,
    /// One source's time to answer.
    pub source_timeout: Option<Duration>,
    /// Strict or best-effort.
    pub partial: Option<Partial>,
}

/// A fan-out running at the orchestrator: poll its progress, cancel it, or wait for its report.
pub struct InFlight {
    fleet_query: fleet_query::Client,
    limits: Limits,
}

impl InFlight {
    /// (answered, total) so far.
    pub async fn progress(&self) -> Result<(u32, u32), CallError> {
        let response = within(
            self.limits.call_timeout,
            "progress",
            self.fleet_query.progress_request().send().promise,
        )
        .await?;
        let r = response.get().map_err(failed)?;
        Ok((r.get_answered(), r.get_total()))
    }

    /// Stops the fan-out; [`InFlight::report`] then returns what arrived.
    pub async fn cancel(&self) -> Result<(), CallError> {
        within(
            self.limits.call_timeout,
            "cancel",
            self.fleet_query.cancel_request().send().promise,
        )
        .await
        .map(drop)
    }

    /// Waits for the report (never past the request's deadline at the orchestrator, nor past
    /// this console's call timeout).
    pub async fn report(&self) -> Result<Report, CallError> {
        let response = within(
            self.limits.call_timeout,
            "view",
            self.fleet_query.view_request().send().promise,
        )
        .await?;
        read_report(response.get().and_then(|r| r.get_view()).map_err(failed)?).map_err(failed)
    }
}

async fn within<T>(
    timeout: Duration,
    what: &str,
    call: impl std::future::Future<Output = capnp::Result<T>>,
) -> Result<T, CallError> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| CallError::timed_out(what, timeout))?
        .map_err(failed)
}

/// A connection to the orchestrator, as one operator.
pub struct Console {
    orchestrator: orchestrator::Client,
    limits: Limits,
    rpc: tokio::task::JoinHandle<()>,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.rpc.abort();
    }
}

fn failed(e: capnp::Error) -> CallError {
    CallError::from_capnp(&e)
}

impl Console {
    /// Connects as `identity` to the orchestrator whose key is `orchestrator_key`, and confirms
    /// the session (an operator key the orchestrator does not know is refused here).
    pub async fn connect(
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
            let network = twoparty::VatNetwork::new(
                reader.compat(),
                writer.compat_write(),
                rpc_twoparty_capnp::Side::Client,
                limits.reader_options(),
            );
            let mut rpc = RpcSystem::new(Box::new(network), None);
            let orchestrator: orchestrator::Client =
                rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
            let rpc = tokio::task::spawn_local(async move {
                let _ = rpc.await;
            });
            let console = Console {
                orchestrator,
                limits,
                rpc,
            };
            console.fleet().await.map_err(|e| {
                if e.message.contains("AccessDenied") {
                    CallError::new(
                        "tenant.not-an-operator",
                        format!("this orchestrator does not know key {}", identity.public()),
                    )
                } else {
                    e
                }
            })?;
            Ok(console)
        };
        tokio::time::timeout(limits.handshake_timeout, attempt)
            .await
            .map_err(|_| CallError::timed_out("connect", limits.handshake_timeout))?
    }

    /// The tenant's archives with their health.
    pub async fn fleet(&self) -> Result<Vec<ArchiveStatus>, CallError> {
        let response = within(
            self.limits.call_timeout,
            "fleet",
            self.orchestrator.fleet_request().send().promise,
        )
        .await?;
        let read = || -> capnp::Result<Vec<ArchiveStatus>> {
            let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> capnp::Result<String> {
                Ok(t?.to_string()?)
            };
            response
                .get()?
                .get_archives()?
                .iter()
                .map(|a| {
                    Ok(ArchiveStatus {
                        id: text(a.get_id())?,
                        key: text(a.get_key())?,
                        labels: a
                            .get_labels()?
                            .iter()
                            .map(|l| Ok((text(l.get_key())?, text(l.get_value())?)))
                            .collect::<capnp::Result<_>>()?,
                        health: match a.get_health()? {
                            psp_schema::orchestrator_capnp::Health::Unknown => Health::Unknown,
                            psp_schema::orchestrator_capnp::Health::Up => Health::Up,
                            psp_schema::orchestrator_capnp::Health::Down => Health::Down,
                            psp_schema::orchestrator_capnp::Health::Quarantined => {
                                Health::Quarantined
                            }
                        },
                        latency: Duration::from_micros(a.get_latency_micros()),
                        last_seen: a.get_last_seen(),
                    })
                })
                .collect()
        };
        read().map_err(failed)
    }

    /// Starts a fleet query; its report comes from the returned [`InFlight`].
    pub fn start_query(
        &self,
        selector: &Selector,
        chain: &Chain,
        query: &Query,
        options: Options,
    ) -> InFlight {
        let mut request = self.orchestrator.query_request();
        {
            let mut params = request.get();
            write_query(query, params.reborrow().init_query());
            fill_request(params.init_request(), selector, chain, options);
        }
        self.in_flight(request.send().pipeline.get_fleet_query())
    }

    /// Runs a fleet query and waits for its report: `query(...).fleetQuery.view()`, pipelined.
    pub async fn query(
        &self,
        selector: &Selector,
        chain: &Chain,
        query: &Query,
    ) -> Result<Report, CallError> {
        self.start_query(selector, chain, query, Options::default())
            .report()
            .await
    }

    /// Starts computing a viewport; its report comes from the returned [`InFlight`].
    pub fn start_view(
        &self,
        selector: &Selector,
        chain: &Chain,
        viewport: &NamedViewport,
        options: Options,
    ) -> InFlight {
        let mut request = self.orchestrator.view_request();
        {
            let mut params = request.get();
            fill_request(params.reborrow().init_request(), selector, chain, options);
            write_viewport(viewport, params.init_viewport());
        }
        self.in_flight(request.send().pipeline.get_fleet_query())
    }

    /// Computes a viewport and waits for its report.
    pub async fn view(
        &self,
        selector: &Selector,
        chain: &Chain,
        viewport: &NamedViewport,
    ) -> Result<Report, CallError> {
        self.start_view(selector, chain, viewport, Options::default())
            .report()
            .await
    }

    /// A portfolio rollup: `query` over the selected archives, grouped first by the archive
    /// labels `labels` (e.g. "region"), merged exactly.
    pub async fn rollup(
        &self,
        selector: &Selector,
        chain: &Chain,
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
        self.view(selector, chain, &viewport).await
    }

    /// A viewport defined in the orchestrator's config, by name.
    pub async fn viewport(&self, name: &str) -> Result<NamedViewport, CallError> {
        let mut request = self.orchestrator.viewport_request();
        request.get().set_name(name);
        let response = within(self.limits.call_timeout, "viewport", request.send().promise).await?;
        read_viewport(
            response
                .get()
                .and_then(|r| r.get_viewport())
                .map_err(failed)?,
        )
        .map_err(failed)
    }

    /// Sends a command to every selected archive; one outcome per archive, with the archive's
    /// answer where it answered. Retrying with the same idempotency key never applies it twice.
    pub async fn command(
        &self,
        selector: &Selector,
        chain: &Chain,
        command: &CommandSpec,
        options: Options,
    ) -> Result<Vec<(SourceOutcome, Option<CommandAnswer>)>, CallError> {
        let mut request = self.orchestrator.command_request();
        {
            let mut params = request.get();
            fill_request(params.reborrow().init_request(), selector, chain, options);
            let mut c = params.init_command();
            c.set_name(&command.name);
            c.set_collection(&command.collection);
            c.set_idempotency_key(&command.idempotency_key);
            c.set_arguments(&command.arguments);
        }
        let response = within(self.limits.call_timeout, "command", request.send().promise).await?;
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
            limits: self.limits,
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
