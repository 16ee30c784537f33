//! The Totebox server: serves any [`Archive`] over PSP.
//!
//! `open(chain)` verifies the capability against the TLS-authenticated peer (never against
//! anything the request says) and this archive, through the shared verified-chain cache, and
//! returns a session that allows only what the chain allows. Every session call re-checks the
//! window, revocations and root trust, so a session ends when its capability does. Commands, and
//! queries the archive does not call quick ([`Archive::quick_to_scan`]), run on the blocking
//! pool, so a long scan never stalls the connection's other calls or other connections. Refusals are logged as security events with the peer's key.

use std::rc::Rc;
use std::sync::{Arc, RwLock};

use psp_core::archive::{Archive, CommandOutcome, CommandRequest, CommandStatus};
use psp_core::capability::{Presenter, VerifiedChain, links_from_reader};
use psp_core::query::wire::{read_value, type_to_wire, write_result};
use psp_core::query::{Exposure, QueryResult, Value};
use psp_core::{
    Access, Action, ArchiveDigest, CapabilityError, PublicKey, RowKey, RowRequest, Verifier,
};
use psp_schema::totebox_capnp::{append_arguments, session, totebox};

use crate::limits::{CallError, Limits};
use crate::runtime::Connection;

/// What every connection of one Totebox shares: the archive, the verifier and the limits.
pub struct ToteboxService {
    archive: Arc<dyn Archive>,
    digest: ArchiveDigest,
    verifier: RwLock<Arc<Verifier>>,
    limits: Limits,
}

impl std::fmt::Debug for ToteboxService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToteboxService")
            .field("archive", &self.archive.id())
            .finish_non_exhaustive()
    }
}

impl ToteboxService {
    /// A service for `archive`, verifying capabilities with `verifier`.
    pub fn new(archive: Arc<dyn Archive>, verifier: Verifier, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            digest: ArchiveDigest::of(archive.id()),
            archive,
            verifier: RwLock::new(Arc::new(verifier)),
            limits,
        })
    }

    /// Sets the records gauge (`psp_totebox_records{collection}`) of every collection: at
    /// start, and after each command, the only way an archive changes while served.
    pub fn record_sizes(&self) {
        for collection in self.archive.collections() {
            if let Some(stats) = self.archive.stats(&collection.name) {
                metrics::gauge!(RECORDS, "collection" => collection.name).set(stats.records as f64);
            }
        }
    }

    /// Replaces the verifier (trusted roots, revocations) for every later call, including calls
    /// on sessions already open. Pass the old verifier's cache to keep it warm.
    pub fn replace_verifier(&self, verifier: Verifier) {
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(verifier);
    }

    /// The verifier in force.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The bootstrap capability for one connection (call on the connection's thread).
    pub fn bootstrap(self: &Arc<Self>, connection: Rc<Connection>) -> totebox::Client {
        capnp_rpc::new_client(ToteboxServer {
            service: self.clone(),
            peer: connection.peer,
            connection,
        })
    }

    /// The runtime's bootstrap factory for this service.
    pub fn bootstrap_factory(self: &Arc<Self>) -> crate::runtime::Bootstrap {
        let service = self.clone();
        Arc::new(move |connection| service.bootstrap(connection).client)
    }

    fn presenter_check(
        &self,
        chain: &VerifiedChain,
        peer: &PublicKey,
    ) -> Result<(), CapabilityError> {
        let presenter = Presenter {
            peer,
            archive: &self.digest,
        };
        self.verifier()
            .check_context(chain, &presenter, psp_core::window::now())
    }
}

/// Queries answered or refused, by code (`ok` or the error's code).
const QUERIES: &str = "psp_totebox_queries_total";
/// Commands applied, replayed or refused, by code.
const COMMANDS: &str = "psp_totebox_commands_total";
/// Queries and commands refused by a capability or exposure rule, by rule.
const REFUSALS: &str = "psp_totebox_refusals_total";
/// Records each collection holds.
const RECORDS: &str = "psp_totebox_records";

/// Counts a finished query or command under `what` by its code, and a refusal by its rule
/// (`capability.*` or `policy.*`), for the metrics endpoint (a no-op without one).
fn counted(what: &'static str, result: Result<(), capnp::Error>) -> Result<(), capnp::Error> {
    let code = match &result {
        Ok(()) => "ok".to_owned(),
        Err(e) => CallError::from_capnp(e).code,
    };
    count_refusal(&code);
    metrics::counter!(what, "code" => code).increment(1);
    result
}

/// Counts `code` among the refusals by rule when it is one (`capability.*` or `policy.*`).
fn count_refusal(code: &str) {
    if code.starts_with("capability.") || code.starts_with("policy.") {
        metrics::counter!(REFUSALS, "rule" => code.to_owned()).increment(1);
    }
}

fn refused(peer: &PublicKey, error: &CapabilityError) -> capnp::Error {
    tracing::warn!(target: "psp::security", peer = %peer, rule = error.rule(), "refused a capability: {error}");
    CallError::new(format!("capability.{}", error.rule()), error.to_string()).to_capnp()
}

struct ToteboxServer {
    service: Arc<ToteboxService>,
    peer: PublicKey,
    connection: Rc<Connection>,
}

impl totebox::Server for ToteboxServer {
    async fn identify(
        self: Rc<Self>,
        _: totebox::IdentifyParams,
        mut results: totebox::IdentifyResults,
    ) -> Result<(), capnp::Error> {
        let mut r = results.get();
        r.set_archive(self.service.archive.id());
        r.set_format_version(psp_schema::capability_capnp::FORMAT_VERSION);
        r.set_now(psp_core::window::now());
        Ok(())
    }

    async fn open(
        self: Rc<Self>,
        params: totebox::OpenParams,
        mut results: totebox::OpenResults,
    ) -> Result<(), capnp::Error> {
        let _running = self.connection.begin_call()?;
        // Not a query or a command yet: only a refusal is counted.
        let session = self
            .session(params.get()?.get_chain()?)
            .inspect_err(|e| count_refusal(&CallError::from_capnp(e).code))?;
        results.get().set_session(capnp_rpc::new_client(session));
        Ok(())
    }

    async fn query(
        self: Rc<Self>,
        params: totebox::QueryParams,
        mut results: totebox::QueryResults,
    ) -> Result<(), capnp::Error> {
        counted(
            QUERIES,
            async {
                let _running = self.connection.begin_call()?;
                let params = params.get()?;
                let session = self.session(params.get_chain()?)?;
                let result = session.prepare_query(params.get_query()?)?.await?;
                write_result(&result, results.get().init_result());
                Ok(())
            }
            .await,
        )
    }

    async fn command(
        self: Rc<Self>,
        params: totebox::CommandParams,
        mut results: totebox::CommandResults,
    ) -> Result<(), capnp::Error> {
        counted(
            COMMANDS,
            async {
                let _running = self.connection.begin_call()?;
                let params = params.get()?;
                let session = self.session(params.get_chain()?)?;
                let outcome = session.prepare_command(params.get_command()?)?.await?;
                write_outcome(&outcome, results.get().init_outcome());
                self.service.record_sizes();
                Ok(())
            }
            .await,
        )
    }
}

impl ToteboxServer {
    /// Verifies `chain` as presented by this connection's peer to this archive (what `open`
    /// does), and returns the session it allows.
    fn session(
        &self,
        chain: psp_schema::capability_capnp::chain::Reader<'_>,
    ) -> Result<SessionServer, capnp::Error> {
        let links = links_from_reader(chain).map_err(|e| refused(&self.peer, &e))?;
        let presenter = Presenter {
            peer: &self.peer,
            archive: &self.service.digest,
        };
        let verified = self
            .service
            .verifier()
            .check_chain(&links, &presenter, psp_core::window::now())
            .map_err(|e| refused(&self.peer, &e))?;
        tracing::info!(
            target: "psp::audit",
            peer = %self.peer,
            issuers = ?verified.links().iter().map(|l| l.issuer.to_string()).collect::<Vec<_>>(),
            "opened a session"
        );
        Ok(SessionServer {
            service: self.service.clone(),
            peer: self.peer,
            chain: verified,
            connection: self.connection.clone(),
        })
    }
}

struct SessionServer {
    service: Arc<ToteboxService>,
    peer: PublicKey,
    chain: Arc<VerifiedChain>,
    connection: Rc<Connection>,
}

impl SessionServer {
    /// The per-call checks, then the scope check for `access`.
    fn authorize(
        &self,
        access: &Access<'_>,
    ) -> Result<Option<psp_core::RowSelector>, capnp::Error> {
        self.service
            .presenter_check(&self.chain, &self.peer)
            .map_err(|e| refused(&self.peer, &e))?;
        let grant = self
            .chain
            .authorize(access)
            .map_err(|e| refused(&self.peer, &e))?;
        Ok(grant.map(|g| g.rows.clone()))
    }
}

/// Runs blocking archive work off the RPC thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, capnp::Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CallError::new("internal", format!("archive task failed: {e}")).to_capnp())
}

impl session::Server for SessionServer {
    async fn describe(
        self: Rc<Self>,
        _: session::DescribeParams,
        mut results: session::DescribeResults,
    ) -> Result<(), capnp::Error> {
        let _running = self.connection.begin_call()?;
        self.authorize(&Access {
            action: Action::Describe,
            collection: None,
            fields: &[],
            rows: RowRequest::Unrestricted,
        })?;
        let archive = self.service.archive.clone();
        let scope = self.chain.scope().clone();
        let described = blocking(move || archive.describe(&scope)).await?;
        let mut r = results.get();
        r.set_as_of(described.iter().map(|c| c.stats.as_of).max().unwrap_or(0));
        let mut list = r.init_collections(described.len() as u32);
        for (i, c) in described.iter().enumerate() {
            let mut info = list.reborrow().get(i as u32);
            info.set_name(&c.name);
            info.set_key(&c.key);
            info.set_min_group_size(c.min_group_size);
            info.set_records(c.stats.records);
            let mut fields = info.init_fields(c.fields.len() as u32);
            for (j, f) in c.fields.iter().enumerate() {
                let mut field = fields.reborrow().get(j as u32);
                field.set_name(&f.name);
                field.set_type(type_to_wire(f.value_type));
                field.set_exposure(match f.exposure {
                    Exposure::AggregateOnly => psp_schema::totebox_capnp::Exposure::AggregateOnly,
                    _ => psp_schema::totebox_capnp::Exposure::Value,
                });
            }
        }
        Ok(())
    }

    async fn query(
        self: Rc<Self>,
        params: session::QueryParams,
        mut results: session::QueryResults,
    ) -> Result<(), capnp::Error> {
        counted(
            QUERIES,
            async {
                let _running = self.connection.begin_call()?;
                let result = self.prepare_query(params.get()?.get_query()?)?.await?;
                write_result(&result, results.get().init_result());
                Ok(())
            }
            .await,
        )
    }

    async fn command(
        self: Rc<Self>,
        params: session::CommandParams,
        mut results: session::CommandResults,
    ) -> Result<(), capnp::Error> {
        counted(
            COMMANDS,
            async {
                let _running = self.connection.begin_call()?;
                let outcome = self.prepare_command(params.get()?.get_command()?)?.await?;
                write_outcome(&outcome, results.get().init_outcome());
                self.service.record_sizes();
                Ok(())
            }
            .await,
        )
    }
}

impl SessionServer {
    /// Reads and authorizes `query`, then returns the work that runs it. Nothing of the request
    /// message is held by the work, so the caller may await it after the message is gone.
    fn prepare_query(
        &self,
        query: psp_schema::query_capnp::query::Reader<'_>,
    ) -> Result<impl Future<Output = Result<QueryResult, capnp::Error>> + 'static, capnp::Error>
    {
        let query = psp_core::query::wire::read_query(query)
            .map_err(|e| CallError::new(e.code(), e.to_string()).to_capnp())?;
        let referenced = query.referenced_fields();
        let fields: Vec<&str> = referenced.iter().copied().collect();
        let rows = self
            .authorize(&Access {
                action: Action::Query,
                collection: Some(&query.collection),
                fields: &fields,
                rows: RowRequest::Unrestricted,
            })?
            .unwrap_or(psp_core::RowSelector::All);
        let archive = self.service.archive.clone();
        let peer = self.peer;
        // A small collection is scanned here, on the connection's thread: handing the work to
        // the blocking pool and back would cost more than the scan (two thread wake-ups).
        let small = archive.quick_to_scan(&query.collection);
        Ok(async move {
            let answer = if small {
                archive.query(&query, &rows)
            } else {
                blocking(move || archive.query(&query, &rows)).await?
            };
            answer.map_err(|e| {
                if e.code().starts_with("policy.") {
                    tracing::warn!(target: "psp::security", peer = %peer, code = e.code(), "refused a query: {e}");
                }
                CallError::new(e.code(), e.to_string()).to_capnp()
            })
        })
    }

    /// Reads and authorizes `command`, then returns the work that applies it (see `query`).
    fn prepare_command(
        &self,
        command: psp_schema::totebox_capnp::command::Reader<'_>,
    ) -> Result<impl Future<Output = Result<CommandOutcome, capnp::Error>> + 'static, capnp::Error>
    {
        let name = command.get_name()?.to_str()?.to_owned();
        let collection = command.get_collection()?.to_str()?.to_owned();
        let key = command.get_idempotency_key()?.to_vec();
        let arguments = command.get_arguments()?.to_vec();
        let digest = psp_core::CommandDigest::of(&name, &collection, &key, &arguments);
        // Authority before arguments: a caller who may not run this command at all is refused
        // with the rule, and learns nothing from how its arguments would have been read.
        self.authorize(&Access {
            action: Action::Command {
                name: &name,
                digest: &digest,
            },
            collection: None,
            fields: &[],
            rows: RowRequest::Unrestricted,
        })?;
        // An append touches fields and rows: the capability must reach each of them.
        let (fields, keys, key_field) = if name == "append" {
            append_reach(&*self.service.archive, &collection, &arguments)?
        } else {
            (Vec::new(), Vec::new(), String::new())
        };
        let field_refs: Vec<&str> = fields.iter().map(String::as_str).collect();
        let rows = if key_field.is_empty() {
            RowRequest::Unrestricted
        } else {
            RowRequest::Keys {
                field: &key_field,
                keys: &keys,
            }
        };
        self.authorize(&Access {
            action: Action::Command {
                name: &name,
                digest: &digest,
            },
            collection: (!collection.is_empty()).then_some(collection.as_str()),
            fields: &field_refs,
            rows,
        })?;
        let archive = self.service.archive.clone();
        // Namespaced by a key upstream of the peer, never by one the peer signs with.
        let namespace = *self.chain.idempotency_namespace(&name, &digest);
        Ok(async move {
            blocking(move || {
                archive.apply(&CommandRequest {
                    namespace: &namespace,
                    name: &name,
                    collection: &collection,
                    idempotency_key: &key,
                    arguments: &arguments,
                })
            })
            .await?
            .map_err(|e| CallError::new(e.code(), e.to_string()).to_capnp())
        })
    }
}

fn write_outcome(
    outcome: &CommandOutcome,
    mut r: psp_schema::totebox_capnp::command_outcome::Builder<'_>,
) {
    r.set_status(match outcome.status {
        CommandStatus::Applied => psp_schema::totebox_capnp::CommandStatus::Applied,
        CommandStatus::Replayed => psp_schema::totebox_capnp::CommandStatus::Replayed,
    });
    r.set_message(&outcome.message);
    r.set_detail(&outcome.detail);
    r.set_as_of(outcome.as_of);
}

/// The fields an append names and the keys of its records, so the capability can be checked
/// against both before anything is written. Arguments that do not read as `AppendArguments` are
/// `command.invalid-arguments` (the caller's fault, never `query.*`).
fn append_reach(
    archive: &dyn Archive,
    collection: &str,
    arguments: &[u8],
) -> Result<(Vec<String>, Vec<RowKey>, String), capnp::Error> {
    let invalid = |e: &dyn std::fmt::Display| {
        CallError::new(
            "command.invalid-arguments",
            format!("the append's arguments: {e}"),
        )
        .to_capnp()
    };
    let key_field = archive
        .collections()
        .into_iter()
        .find(|c| c.name == collection)
        .map(|c| c.key)
        .ok_or_else(|| invalid(&format!("no collection {collection:?}")))?;
    let options = *capnp::message::ReaderOptions::new()
        .traversal_limit_in_words(Some(arguments.len() / 4 + 1024));
    let message =
        capnp::serialize::read_message(&mut &arguments[..], options).map_err(|e| invalid(&e))?;
    let args = message
        .get_root::<append_arguments::Reader<'_>>()
        .map_err(|e| invalid(&e))?;
    let mut fields = Vec::new();
    for f in args.get_fields().map_err(|e| invalid(&e))?.iter() {
        fields.push(
            f.and_then(|t| Ok(t.to_str()?.to_owned()))
                .map_err(|e| invalid(&e))?,
        );
    }
    let mut keys = Vec::new();
    if let Some(position) = fields.iter().position(|f| *f == key_field) {
        for record in args.get_records().map_err(|e| invalid(&e))?.iter() {
            let values = record.get_values().map_err(|e| invalid(&e))?;
            if position < values.len() as usize {
                match read_value(values.get(position as u32)).map_err(|e| invalid(&e))? {
                    Value::Int(i) => keys.push(RowKey::Int(i)),
                    Value::Text(t) => keys.push(RowKey::Text(t)),
                    _ => {}
                }
            }
        }
    }
    Ok((fields, keys, key_field))
}
