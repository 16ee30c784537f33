//! A console's client for the orchestrator: what the `orchestrator` command's console
//! subcommands and other Rust consoles use. Must be created and used on a tokio `LocalSet`.

use std::net::SocketAddr;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use psp_core::query::wire::{read_value, type_from_wire, write_query};
use psp_core::query::{Column, Query, Table};
use psp_core::{Chain, IdentityKey, PublicKey};
use psp_rpc::client::{ConnectError, dial};
use psp_rpc::limits::{CallError, Limits};
use psp_schema::orchestrator_capnp::{orchestrator, source_outcome};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::selection::Selector;

/// One source's outcome as the console reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The archive.
    pub archive: String,
    /// `ok`, `timed-out`, `unreachable`, `denied`, `error`, `cancelled` or `quarantined`.
    pub status: &'static str,
    /// The denial code, or the reason, when there is one.
    pub detail: String,
}

/// A merged view as the console reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewReply {
    /// Every source answered.
    pub complete: bool,
    /// One per selected source.
    pub outcomes: Vec<Outcome>,
    /// The oldest data time among the answers.
    pub as_of_oldest: i64,
    /// The merged table.
    pub table: Table,
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

    /// The tenant's archives: (id, health).
    pub async fn fleet(&self) -> Result<Vec<(String, String)>, CallError> {
        let response = tokio::time::timeout(
            self.limits.call_timeout,
            self.orchestrator.fleet_request().send().promise,
        )
        .await
        .map_err(|_| CallError::timed_out("fleet", self.limits.call_timeout))?
        .map_err(failed)?;
        let archives = response
            .get()
            .and_then(|r| r.get_archives())
            .map_err(failed)?;
        archives
            .iter()
            .map(|a| {
                Ok((
                    a.get_id()
                        .and_then(|t| Ok(t.to_string()?))
                        .map_err(failed)?,
                    format!("{:?}", a.get_health().map_err(|e| failed(e.into()))?),
                ))
            })
            .collect()
    }

    /// Runs a fleet query and waits for its view: `query(...).fleetQuery.view()`, pipelined.
    pub async fn query(
        &self,
        selector: &Selector,
        chain: &Chain,
        query: &Query,
    ) -> Result<ViewReply, CallError> {
        let mut request = self.orchestrator.query_request();
        {
            let mut params = request.get();
            write_query(query, params.reborrow().init_query());
            fill_request(params.init_request(), selector, chain);
        }
        self.wait_for_view(request.send().pipeline.get_fleet_query())
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
    ) -> Result<ViewReply, CallError> {
        let mut request = self.orchestrator.view_request();
        {
            let mut params = request.get();
            fill_request(params.reborrow().init_request(), selector, chain);
            let mut viewport = params.init_viewport();
            viewport.set_name("rollup");
            let mut rollup = viewport.init_rollup();
            write_query(query, rollup.reborrow().init_query());
            let mut list = rollup.init_group_by_labels(labels.len() as u32);
            for (i, label) in labels.iter().enumerate() {
                list.set(i as u32, *label);
            }
        }
        self.wait_for_view(request.send().pipeline.get_fleet_query())
            .await
    }

    async fn wait_for_view(
        &self,
        fleet_query: psp_schema::orchestrator_capnp::fleet_query::Client,
    ) -> Result<ViewReply, CallError> {
        let response = tokio::time::timeout(
            self.limits.call_timeout,
            fleet_query.view_request().send().promise,
        )
        .await
        .map_err(|_| CallError::timed_out("view", self.limits.call_timeout))?
        .map_err(failed)?;
        let v = response.get().and_then(|r| r.get_view()).map_err(failed)?;
        let outcomes = v
            .get_outcomes()
            .map_err(failed)?
            .iter()
            .map(read_outcome)
            .collect::<Result<_, _>>()?;
        let psp_schema::orchestrator_capnp::view::body::Table(table) =
            v.get_body().which().map_err(|e| failed(e.into()))?
        else {
            return Err(CallError::new("transport.failed", "expected a table"));
        };
        let table = table.map_err(failed)?;
        let columns = table
            .get_columns()
            .map_err(failed)?
            .iter()
            .map(|c| {
                Ok(Column {
                    name: c
                        .get_name()
                        .and_then(|t| Ok(t.to_string()?))
                        .map_err(failed)?,
                    value_type: type_from_wire(c.get_type().map_err(|e| failed(e.into()))?),
                })
            })
            .collect::<Result<_, CallError>>()?;
        let rows = table
            .get_rows()
            .map_err(failed)?
            .iter()
            .map(|row| {
                row.get_values()
                    .map_err(failed)?
                    .iter()
                    .map(|v| read_value(v).map_err(|e| CallError::new(e.code(), e.to_string())))
                    .collect()
            })
            .collect::<Result<_, CallError>>()?;
        Ok(ViewReply {
            complete: v.get_complete(),
            outcomes,
            as_of_oldest: v.get_as_of_oldest(),
            table: Table { columns, rows },
        })
    }
}

/// Writes the archives and capability of a fleet request.
fn fill_request(
    mut r: psp_schema::orchestrator_capnp::fleet_request::Builder<'_>,
    selector: &Selector,
    chain: &Chain,
) {
    chain.write(r.reborrow().init_chain());
    let mut archives = r.init_archives();
    match selector {
        Selector::All => archives.set_all(()),
        Selector::Ids(ids) => {
            let mut list = archives.init_ids(ids.len() as u32);
            for (i, id) in ids.iter().enumerate() {
                list.set(i as u32, id);
            }
        }
        Selector::Labels(labels) => {
            let mut list = archives.init_labels(labels.len() as u32);
            for (i, (k, v)) in labels.iter().enumerate() {
                let mut l = list.reborrow().get(i as u32);
                l.set_key(k);
                l.set_value(v);
            }
        }
    }
}

fn read_outcome(o: source_outcome::Reader<'_>) -> Result<Outcome, CallError> {
    use psp_schema::orchestrator_capnp::source_outcome::status;
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, CallError> {
        t.and_then(|t| Ok(t.to_string()?)).map_err(failed)
    };
    let (status, detail) = match o.get_status().which().map_err(|e| failed(e.into()))? {
        status::Ok(()) => ("ok", String::new()),
        status::TimedOut(()) => ("timed-out", String::new()),
        status::Unreachable(why) => ("unreachable", text(why)?),
        status::Denied(d) => ("denied", text(d.map_err(failed)?.get_code())?),
        status::Error(why) => ("error", text(why)?),
        status::Cancelled(()) => ("cancelled", String::new()),
        status::Quarantined(why) => ("quarantined", text(why)?),
    };
    Ok(Outcome {
        archive: text(o.get_archive())?,
        status,
        detail,
    })
}
