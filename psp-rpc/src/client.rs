//! The Totebox client: what an aggregator uses to reach one Totebox.
//!
//! A client runs on a tokio `LocalSet` or `LocalRuntime` (capnp-rpc is single-threaded). Its
//! side of the connection exports nothing: no bootstrap capability, and no method it calls takes
//! a capability, so the Totebox has nothing to call back (the diode). Every session is confirmed by the Totebox's
//! `identify` answer, because with TLS 1.3 a client the server refuses only learns so at its
//! first exchange: [`ToteboxClient::connect`] waits for it, [`ToteboxClient::connect_serving`]
//! sends the first query alongside it and holds that query's answer until it arrives.
//!
//! [`ToteboxClient::query`] sends `Totebox.query(chain, q)`: the chain checked and the query run
//! in one call, one network round trip. Every call has a deadline.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use futures::FutureExt;
use futures::future::{Either, LocalBoxFuture, Shared};
use psp_core::query::wire::{read_result, write_query};
use psp_core::query::{Query, QueryResult};
use psp_core::{ArchiveDigest, Chain, IdentityKey, PublicKey};
use psp_schema::totebox_capnp::{session, totebox};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::diode::DiodeGuard;
use crate::limits::{CallError, Limits};
use crate::tls::{self, PairedKeys};

/// Why a connection to a Totebox could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing answered at the address.
    #[error("cannot reach {address}: {reason}")]
    Unreachable {
        /// Where.
        address: SocketAddr,
        /// What the network said.
        reason: String,
    },
    /// The connection or its confirmation did not finish in time.
    #[error("{address} did not complete a PSP session within {after:?}")]
    Timeout {
        /// Where.
        address: SocketAddr,
        /// The deadline.
        after: Duration,
    },
    /// The machine at the address is not the Totebox we pinned.
    #[error("the server at {address} is not the paired Totebox {expected}: {reason}")]
    UnknownServer {
        /// Where.
        address: SocketAddr,
        /// The key we pinned for it.
        expected: PublicKey,
        /// What TLS said.
        reason: String,
    },
    /// The Totebox refused our machine key.
    #[error("this Totebox does not know key {ours}; pair it on the Totebox first")]
    NotPaired {
        /// Our machine key.
        ours: PublicKey,
    },
    /// The Totebox broke the diode while the session was being set up (a `Bootstrap` or `Call`
    /// upstream, a capability where none belongs, an oversized frame): the connection was cut
    /// and the Totebox should be quarantined, not redialed at once.
    #[error("{address} broke the diode: it sent {reason}; the connection was cut")]
    DiodeViolation {
        /// Where.
        address: SocketAddr,
        /// What it sent.
        reason: String,
    },
    /// The Totebox announced another archive than the one it was dialed for: a config naming
    /// the wrong machine, which must not answer for the archive it was listed as.
    #[error("{address} serves archive {announced:?}, not {expected:?} as configured")]
    WrongArchive {
        /// Where.
        address: SocketAddr,
        /// The archive it was dialed for.
        expected: String,
        /// The archive it announced.
        announced: String,
    },
    /// TLS or PSP failed otherwise.
    #[error("session with {address} failed: {reason}")]
    Protocol {
        /// Where.
        address: SocketAddr,
        /// What failed.
        reason: String,
    },
}

/// Opens TCP and pinned-key TLS to the machine at `address`, which must prove `peer_key`.
/// The TLS 1.3 handshake completes before the server judges our key, so callers confirm the
/// session with a round trip of their own.
pub async fn dial(
    address: SocketAddr,
    identity: &IdentityKey,
    peer_key: PublicKey,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ConnectError> {
    let config = tls::client_config(identity, PairedKeys::new([peer_key])).map_err(|e| {
        ConnectError::Protocol {
            address,
            reason: e.to_string(),
        }
    })?;
    let tcp =
        tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| ConnectError::Unreachable {
                address,
                reason: e.to_string(),
            })?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).expect("a valid name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let reason = e.to_string();
            if reason.contains("ApplicationVerificationFailure") || reason.contains("certificate") {
                ConnectError::UnknownServer {
                    address,
                    expected: peer_key,
                    reason,
                }
            } else {
                ConnectError::Protocol { address, reason }
            }
        })
}

/// Dials `peer` at `address` as `identity` by `give_up`, and sets up the RPC system of a
/// downstream connection: every frame from the peer passes a [`DiodeGuard`] (returned, to ask
/// later whether it cut the connection) before capnp-rpc reads it, and this side exports
/// nothing for the peer to call. What a Totebox connection and a connection to a regional
/// orchestrator share.
pub async fn dial_guarded(
    address: SocketAddr,
    identity: &IdentityKey,
    peer: PublicKey,
    limits: Limits,
    give_up: tokio::time::Instant,
) -> Result<(RpcSystem<rpc_twoparty_capnp::Side>, DiodeGuard), ConnectError> {
    let guard = DiodeGuard::new(peer, limits.max_message_words);
    let stream = tokio::time::timeout_at(give_up, dial(address, identity, peer))
        .await
        .map_err(|_| ConnectError::Timeout {
            address,
            after: limits.handshake_timeout,
        })??;
    let (reader, writer) = tokio::io::split(stream);
    let (reader, writer) = guard.wrap(reader.compat(), writer.compat_write());
    // The guard holds every frame to the message limit; reading may traverse twice that,
    // because an answer is measured (`total_size`) before it is decoded.
    let network = twoparty::VatNetwork::new(
        reader,
        crate::coalesce::Coalesce::new(writer),
        rpc_twoparty_capnp::Side::Client,
        *limits
            .reader_options()
            .traversal_limit_in_words(Some(limits.max_message_words.saturating_mul(2))),
    );
    Ok((RpcSystem::new(Box::new(network), None), guard))
}

/// What a Totebox says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its archive id.
    pub archive: String,
    /// The capability format version it speaks.
    pub format_version: u16,
    /// Its clock, seconds since the epoch.
    pub now: i64,
}

impl Identity {
    /// Reads an `identify` answer.
    fn read(r: totebox::identify_results::Reader<'_>) -> capnp::Result<Identity> {
        Ok(Identity {
            archive: r.get_archive()?.to_string()?,
            format_version: r.get_format_version(),
            now: r.get_now(),
        })
    }
}

/// A command to send (see `Command` in `schema/totebox.capnp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// Its name.
    pub name: String,
    /// Its collection, or empty.
    pub collection: String,
    /// The idempotency key (16 to 64 bytes).
    pub idempotency_key: Vec<u8>,
    /// The serialized arguments.
    pub arguments: Vec<u8>,
}

/// What a Totebox answered to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAnswer {
    /// Applied now (`false`: replayed from an earlier call with the same key).
    pub applied: bool,
    /// The summary.
    pub message: String,
    /// The command-specific detail message.
    pub detail: Vec<u8>,
    /// The archive's data time after the command.
    pub as_of: i64,
}

/// The task running one connection's RPC system. Dropping it stops the task, which closes the
/// socket: a connection whose setup failed, timed out or was abandoned never outlives the attempt.
#[derive(Debug)]
struct RpcTask(tokio::task::JoinHandle<()>);

impl Drop for RpcTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection to one Totebox. Must be created and used on a `LocalSet` or `LocalRuntime`.
pub struct ToteboxClient {
    totebox: totebox::Client,
    peer: PublicKey,
    /// Its `identify` answer, which every call waits for before it answers.
    confirmation: Confirmation,
    /// The digest of the archive it serves: which inclusion proofs it is sent.
    archive: ArchiveDigest,
    limits: Limits,
    rpc: RpcTask,
    guard: DiodeGuard,
}

impl std::fmt::Debug for ToteboxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToteboxClient")
            .field("peer", &self.peer)
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

/// The code of an answer that does not read as what was asked: the source's fault.
pub const MALFORMED_ANSWER: &str = "source.malformed-answer";
/// The code of an answer larger than the caller accepts from one source.
pub const ANSWER_TOO_LARGE: &str = "source.answer-too-large";

/// A Totebox's answer that could not be read.
fn malformed(e: impl std::fmt::Display) -> CallError {
    CallError::new(MALFORMED_ANSWER, e.to_string())
}

/// Refuses an answer of `size` over `max_bytes` (measured in words, before decoding), with
/// [`ANSWER_TOO_LARGE`]: what every downstream call applies to one source's answer.
pub fn within_bytes(size: capnp::MessageSize, max_bytes: usize) -> Result<(), CallError> {
    let bytes = size.word_count.saturating_mul(8);
    if bytes > max_bytes as u64 {
        return Err(CallError::new(
            ANSWER_TOO_LARGE,
            format!(
                "answered {bytes} bytes; this request accepts at most {max_bytes} from one source"
            ),
        ));
    }
    Ok(())
}

/// A failed call explained: a diode violation if the guard cut the connection.
fn explain(guard: &DiodeGuard, error: CallError) -> CallError {
    match guard.violation() {
        Some(reason) => CallError::new(
            "diode.violation",
            format!("the Totebox sent {reason}; the connection was cut"),
        ),
        None => error,
    }
}

/// Runs `call` against the deadline, mapping failures to [`CallError`].
async fn within<T>(
    after: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, capnp::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(after, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(CallError::from_capnp(&e)),
        Err(_) => Err(CallError::timed_out(what, after)),
    }
}

/// Awaits the `identify` answer by `give_up`: the Totebox accepted our key, kept the diode and,
/// if `expected` is given, serves that archive.
async fn confirm(
    address: SocketAddr,
    ours: PublicKey,
    expected: Option<String>,
    guard: DiodeGuard,
    identify: capnp::capability::Promise<
        capnp::capability::Response<totebox::identify_results::Owned>,
        capnp::Error,
    >,
    (give_up, deadline): (tokio::time::Instant, Duration),
) -> Result<Rc<Identity>, ConnectError> {
    // Any failure may be the guard cutting a Totebox that broke the diode.
    let failed = |reason: String| match guard.violation() {
        Some(reason) => ConnectError::DiodeViolation { address, reason },
        None => ConnectError::Protocol { address, reason },
    };
    let response = match tokio::time::timeout_at(give_up, identify).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            let reason = e.to_string();
            return Err(
                if reason.contains("AccessDenied") && guard.violation().is_none() {
                    ConnectError::NotPaired { ours }
                } else {
                    failed(reason)
                },
            );
        }
        Err(_) => {
            return Err(match guard.violation() {
                Some(reason) => ConnectError::DiodeViolation { address, reason },
                None => ConnectError::Timeout {
                    address,
                    after: deadline,
                },
            });
        }
    };
    let identified = response
        .get()
        .and_then(Identity::read)
        .map_err(|e| failed(format!("a malformed identify answer: {e}")))?;
    match expected {
        Some(expected) if expected != identified.archive => Err(ConnectError::WrongArchive {
            address,
            expected,
            announced: identified.archive,
        }),
        _ => Ok(Rc::new(identified)),
    }
}

impl ConnectError {
    /// The stable code a call on a session whose confirmation failed this way ends with.
    pub fn code(&self) -> &'static str {
        match self {
            ConnectError::Unreachable { .. } => "transport.unreachable",
            ConnectError::Timeout { .. } => "transport.timeout",
            ConnectError::UnknownServer { .. } => "transport.unknown-server",
            ConnectError::NotPaired { .. } => "transport.not-paired",
            ConnectError::WrongArchive { .. } => "transport.wrong-archive",
            ConnectError::DiodeViolation { .. } => "diode.violation",
            ConnectError::Protocol { .. } => "transport.failed",
        }
    }
}

/// The Totebox's `identify` answer, awaited alongside the session's first calls: shared by every
/// call that needs it, and settled once.
type Confirmation = Shared<LocalBoxFuture<'static, Result<Rc<Identity>, ConnectError>>>;

/// A session opened (TCP and TLS done, `identify` sent) but not yet confirmed.
struct Opened {
    totebox: totebox::Client,
    rpc: RpcTask,
    guard: DiodeGuard,
    confirmation: Confirmation,
}

impl ToteboxClient {
    /// Connects to the Totebox at `address` whose machine key is `totebox_key`, as `identity`,
    /// and confirms the session with one round trip (`identify`). Everything happens within
    /// `limits.handshake_timeout`.
    pub async fn connect(
        address: SocketAddr,
        identity: &IdentityKey,
        totebox_key: PublicKey,
        limits: Limits,
    ) -> Result<Self, ConnectError> {
        let opened = Self::open_session(address, identity, totebox_key, None, limits).await?;
        let identified = opened.confirmation.clone().await?;
        Ok(Self::from_opened(
            opened,
            totebox_key,
            ArchiveDigest::of(&identified.archive),
            limits,
        ))
    }

    /// Connects to the Totebox that serves `archive`, returning as soon as TLS is up: its
    /// `identify` is sent but not awaited, so the session's first query travels in the same
    /// flight (one round trip after the handshake instead of two). A command waits for the
    /// answer: it must never be applied by a machine that serves another archive.
    ///
    /// Every call on the session still waits for the confirmation before it answers: if the
    /// Totebox refuses our key, breaks the diode, does not answer within
    /// `limits.handshake_timeout` or announces another archive than `archive`, the call fails
    /// with that reason ([`ConnectError::code`]) and the connection counts as down.
    pub async fn connect_serving(
        address: SocketAddr,
        identity: &IdentityKey,
        totebox_key: PublicKey,
        archive: &str,
        limits: Limits,
    ) -> Result<Self, ConnectError> {
        let opened =
            Self::open_session(address, identity, totebox_key, Some(archive), limits).await?;
        Ok(Self::from_opened(
            opened,
            totebox_key,
            ArchiveDigest::of(archive),
            limits,
        ))
    }

    fn from_opened(
        opened: Opened,
        peer: PublicKey,
        archive: ArchiveDigest,
        limits: Limits,
    ) -> Self {
        Self {
            totebox: opened.totebox,
            peer,
            archive,
            confirmation: opened.confirmation,
            limits,
            rpc: opened.rpc,
            guard: opened.guard,
        }
    }

    /// Dials, completes TLS and sends `identify`, within `limits.handshake_timeout`; the
    /// confirmation (the answer, checked against `expected` if given) must also arrive within it.
    async fn open_session(
        address: SocketAddr,
        identity: &IdentityKey,
        totebox_key: PublicKey,
        expected: Option<&str>,
        limits: Limits,
    ) -> Result<Opened, ConnectError> {
        let deadline = limits.handshake_timeout;
        let give_up = tokio::time::Instant::now() + deadline;
        let (mut rpc, guard) =
            dial_guarded(address, identity, totebox_key, limits, give_up).await?;
        let totebox: totebox::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
        // Held by the client (or by `connect` until confirmed): when it is dropped, the task
        // stops and the socket closes with it.
        let rpc = RpcTask(tokio::task::spawn_local(async move {
            if let Err(e) = rpc.await {
                tracing::debug!("Totebox connection ended: {e}");
            }
        }));
        let identify = totebox.identify_request().send().promise;
        let confirmation = confirm(
            address,
            identity.public(),
            expected.map(str::to_owned),
            guard.clone(),
            identify,
            (give_up, deadline),
        )
        .boxed_local()
        .shared();
        // Settled by its deadline even if no call waits for it: a session that fails its
        // confirmation (a Totebox that hangs after TLS, refuses our key, or announces another
        // archive) closes its socket then, rather than when its holder next looks at it.
        let stop = rpc.0.abort_handle();
        tokio::task::spawn_local(confirmation.clone().map(move |confirmed| {
            if confirmed.is_err() {
                stop.abort();
            }
        }));
        Ok(Opened {
            totebox,
            rpc,
            guard,
            confirmation,
        })
    }

    /// What the Totebox said about itself, once it has confirmed the session: waits for its
    /// `identify` answer (sent when the connection was made).
    pub async fn confirmed(&self) -> Result<Rc<Identity>, ConnectError> {
        self.confirmation.clone().await
    }

    /// The outcome of the call `send` makes, once the session is confirmed. On a session whose
    /// confirmation already failed nothing is sent; otherwise the call goes out at once, beside
    /// `identify` on a fresh session (or, with `confirmed_first`, only after its answer: for a
    /// command, which must never be applied by a machine that turns out to serve another
    /// archive). A call answered on a session that then fails its confirmation is refused with
    /// the confirmation's reason.
    async fn after_confirmation<T, F>(
        &self,
        confirmed_first: bool,
        send: impl FnOnce() -> F,
    ) -> Result<T, CallError>
    where
        F: std::future::Future<Output = Result<T, CallError>>,
    {
        let refused = |e: ConnectError| CallError::new(e.code(), e.to_string());
        match self.confirmation.peek() {
            Some(Err(e)) => return Err(refused(e.clone())),
            Some(Ok(_)) => return send().await.map_err(|e| explain(&self.guard, e)),
            None if confirmed_first => {
                self.confirmation.clone().await.map_err(refused)?;
                return send().await.map_err(|e| explain(&self.guard, e));
            }
            None => {}
        }
        // Whichever comes first: a failed confirmation ends the call at once (the session is
        // closed then, and its calls would only end at their own deadline).
        let call = std::pin::pin!(send());
        match futures::future::select(self.confirmation.clone(), call).await {
            Either::Left((Err(e), _)) => Err(refused(e)),
            Either::Left((Ok(_), call)) => call.await.map_err(|e| explain(&self.guard, e)),
            Either::Right((answered, confirmation)) => {
                confirmation.await.map_err(refused)?;
                answered.map_err(|e| explain(&self.guard, e))
            }
        }
    }

    /// The Totebox's machine key.
    pub fn peer(&self) -> &PublicKey {
        &self.peer
    }

    /// What the Totebox said about itself when the session was confirmed.
    /// `None` until its `identify` answer has arrived (see [`ToteboxClient::confirmed`]), or if
    /// the confirmation failed.
    pub fn identity(&self) -> Option<&Identity> {
        match self.confirmation.peek() {
            Some(Ok(identity)) => Some(identity),
            _ => None,
        }
    }

    /// Asks the Totebox to identify itself again: one round trip that needs no capability, for a
    /// liveness check (and the framework's cheapest call, which the overhead benchmark times).
    pub async fn identify(&self) -> Result<Identity, CallError> {
        let request = self.totebox.identify_request();
        let response = within(self.limits.call_timeout, "identify", request.send().promise)
            .await
            .map_err(|e| explain(&self.guard, e))?;
        response.get().and_then(Identity::read).map_err(malformed)
    }

    /// Why the diode guard cut this connection, if it did: the Totebox broke the one-way rule
    /// and should be quarantined, not redialed at once.
    pub fn diode_violation(&self) -> Option<String> {
        self.guard.violation()
    }

    /// Whether the connection is still up (its RPC system still running).
    /// Why the session's confirmation failed, if it has (and it has settled).
    pub fn confirmation_error(&self) -> Option<&ConnectError> {
        match self.confirmation.peek() {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }

    /// A session whose confirmation failed counts as down: nothing it answers is used.
    pub fn is_connected(&self) -> bool {
        !self.rpc.0.is_finished() && !matches!(self.confirmation.peek(), Some(Err(_)))
    }

    /// `Totebox.query(chain, q)`: the chain checked and the query run in one call, one round trip.
    pub async fn query(&self, chain: &Chain, query: &Query) -> Result<QueryResult, CallError> {
        self.query_bounded(chain, query, usize::MAX).await
    }

    /// [`ToteboxClient::query`], refusing an answer larger than `max_bytes` (counted in the
    /// message's words, before it is decoded) with `source.answer-too-large`, so an aggregator
    /// holds at most its budget of any one source's answer.
    ///
    /// Sent as `Totebox.query(chain, query)`: one call, one answer and one finish on the wire
    /// (the pipelined `open` and `Session.query` cost two of each and a release), with only this
    /// archive's proofs of the chain's archive sets.
    pub async fn query_bounded(
        &self,
        chain: &Chain,
        query: &Query,
        max_bytes: usize,
    ) -> Result<QueryResult, CallError> {
        let mut request = self.totebox.query_request();
        {
            let mut params = request.get();
            chain.write_for(params.reborrow().init_chain(), &self.archive);
            write_query(query, params.init_query());
        }
        let response = self
            .after_confirmation(false, || {
                within(self.limits.call_timeout, "query", request.send().promise)
            })
            .await?;
        let reader = response
            .get()
            .and_then(|r| r.get_result())
            .map_err(malformed)?;
        read_answer(reader, max_bytes)
    }

    /// `open(chain)` then the command, in one call (see [`ToteboxClient::query_bounded`]).
    pub async fn command(
        &self,
        chain: &Chain,
        command: &CommandSpec,
    ) -> Result<CommandAnswer, CallError> {
        self.command_bounded(chain, command, usize::MAX).await
    }

    /// [`ToteboxClient::command`], refusing an answer larger than `max_bytes` with
    /// `source.answer-too-large` (a command's outcome carries a message and a detail of the
    /// Totebox's choosing).
    pub async fn command_bounded(
        &self,
        chain: &Chain,
        command: &CommandSpec,
        max_bytes: usize,
    ) -> Result<CommandAnswer, CallError> {
        let mut request = self.totebox.command_request();
        {
            let mut params = request.get();
            chain.write_for(params.reborrow().init_chain(), &self.archive);
            write_command(command, params.init_command());
        }
        // A command waits for the confirmation on a fresh session (one round trip, once per
        // connection): a machine that announces another archive must never apply it.
        let response = self
            .after_confirmation(true, || {
                within(self.limits.call_timeout, "command", request.send().promise)
            })
            .await?;
        let outcome = response
            .get()
            .and_then(|r| r.get_outcome())
            .map_err(malformed)?;
        read_outcome(outcome, max_bytes)
    }

    /// `open(chain)` alone, waiting for the Totebox to accept it: one round trip. Later calls on
    /// the session cost one more each (see [`ToteboxClient::query`] for the pipelined form).
    pub async fn open(&self, chain: &Chain) -> Result<Session, CallError> {
        let mut open = self.totebox.open_request();
        chain.write_for(open.get().init_chain(), &self.archive);
        let response = self
            .after_confirmation(false, || {
                within(self.limits.call_timeout, "open", open.send().promise)
            })
            .await?;
        let session = response
            .get()
            .and_then(|r| r.get_session())
            .map_err(|e| CallError::from_capnp(&e))?;
        Ok(Session {
            session,
            limits: self.limits,
            guard: self.guard.clone(),
        })
    }
}

/// One collection as a Totebox describes it to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedCollection {
    /// Its name.
    pub name: String,
    /// Its key field.
    pub key: String,
    /// The fields the session may reference, and whether each may only be aggregated.
    pub fields: Vec<(String, bool)>,
    /// Groups smaller than this are withheld.
    pub min_group_size: u32,
    /// Records the session's rows reach.
    pub records: u64,
}

/// An open session on one Totebox.
pub struct Session {
    session: session::Client,
    limits: Limits,
    guard: DiodeGuard,
}

impl Session {
    /// The collections in scope, and the fields the exposure policy lets out.
    pub async fn describe(&self) -> Result<Vec<DescribedCollection>, CallError> {
        let request = self.session.describe_request();
        let response = within(self.limits.call_timeout, "describe", request.send().promise)
            .await
            .map_err(|e| explain(&self.guard, e))?;
        let read = || -> capnp::Result<Vec<DescribedCollection>> {
            response
                .get()?
                .get_collections()?
                .iter()
                .map(|c| {
                    Ok(DescribedCollection {
                        name: c.get_name()?.to_string()?,
                        key: c.get_key()?.to_string()?,
                        fields: c
                            .get_fields()?
                            .iter()
                            .map(|f| {
                                Ok((
                                    f.get_name()?.to_string()?,
                                    f.get_exposure()?
                                        == psp_schema::totebox_capnp::Exposure::AggregateOnly,
                                ))
                            })
                            .collect::<capnp::Result<_>>()?,
                        min_group_size: c.get_min_group_size(),
                        records: c.get_records(),
                    })
                })
                .collect()
        };
        read().map_err(malformed)
    }

    /// Runs a query.
    pub async fn query(&self, query: &Query) -> Result<QueryResult, CallError> {
        self.query_bounded(query, usize::MAX).await
    }

    /// Runs a query, refusing an answer over `max_bytes` (see
    /// [`ToteboxClient::query_bounded`]). An answer that cannot be read is the Totebox's fault,
    /// never the caller's: `source.malformed-answer`.
    pub async fn query_bounded(
        &self,
        query: &Query,
        max_bytes: usize,
    ) -> Result<QueryResult, CallError> {
        let mut request = self.session.query_request();
        write_query(query, request.get().init_query());
        let response = within(self.limits.call_timeout, "query", request.send().promise)
            .await
            .map_err(|e| explain(&self.guard, e))?;
        let reader = response
            .get()
            .and_then(|r| r.get_result())
            .map_err(malformed)?;
        read_answer(reader, max_bytes)
    }

    /// Applies a command.
    pub async fn command(&self, command: &CommandSpec) -> Result<CommandAnswer, CallError> {
        self.command_bounded(command, usize::MAX).await
    }

    /// Applies a command, refusing an answer over `max_bytes` (see
    /// [`ToteboxClient::command_bounded`]).
    pub async fn command_bounded(
        &self,
        command: &CommandSpec,
        max_bytes: usize,
    ) -> Result<CommandAnswer, CallError> {
        let mut request = self.session.command_request();
        write_command(command, request.get().init_command());
        let response = within(self.limits.call_timeout, "command", request.send().promise)
            .await
            .map_err(|e| explain(&self.guard, e))?;
        let outcome = response
            .get()
            .and_then(|r| r.get_outcome())
            .map_err(malformed)?;
        read_outcome(outcome, max_bytes)
    }
}

fn write_command(command: &CommandSpec, mut c: psp_schema::totebox_capnp::command::Builder<'_>) {
    c.set_name(&command.name);
    c.set_collection(&command.collection);
    c.set_idempotency_key(&command.idempotency_key);
    c.set_arguments(&command.arguments);
}

/// A query's answer, measured before it is decoded. An answer that cannot be read is the
/// Totebox's fault, never the caller's: `source.malformed-answer`.
fn read_answer(
    reader: psp_schema::query_capnp::query_result::Reader<'_>,
    max_bytes: usize,
) -> Result<QueryResult, CallError> {
    within_bytes(reader.total_size().map_err(malformed)?, max_bytes)?;
    read_result(reader).map_err(malformed)
}

/// A command's outcome, measured before it is decoded.
fn read_outcome(
    outcome: psp_schema::totebox_capnp::command_outcome::Reader<'_>,
    max_bytes: usize,
) -> Result<CommandAnswer, CallError> {
    within_bytes(outcome.total_size().map_err(malformed)?, max_bytes)?;
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, CallError> {
        t.and_then(|t| Ok(t.to_string()?)).map_err(malformed)
    };
    let applied = match outcome.get_status().map_err(malformed)? {
        psp_schema::totebox_capnp::CommandStatus::Applied => true,
        psp_schema::totebox_capnp::CommandStatus::Replayed => false,
    };
    Ok(CommandAnswer {
        applied,
        message: text(outcome.get_message())?,
        detail: outcome.get_detail().map_err(malformed)?.to_vec(),
        as_of: outcome.get_as_of(),
    })
}

/// Exponential backoff with full jitter, for redialing a Totebox that went away: each wait is
/// uniform in `[0, min(cap, base * 2^attempt))`, so a fleet of clients does not redial in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Waits start at `base` and never exceed `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let unit = getrandom::u64().unwrap_or(u64::MAX / 2) as f64 / u64::MAX as f64;
        ceiling.mul_f64(unit)
    }

    /// Starts over (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl ToteboxClient {
    /// Connects, redialing with [`Backoff`] while the Totebox is unreachable or slow, until
    /// `deadline` has passed. Refusals (not paired, wrong server) are permanent and returned at
    /// once: redialing would not change them.
    pub async fn connect_with_backoff(
        address: SocketAddr,
        identity: &IdentityKey,
        totebox_key: PublicKey,
        limits: Limits,
        mut backoff: Backoff,
        deadline: Duration,
    ) -> Result<Self, ConnectError> {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            match Self::connect(address, identity, totebox_key, limits).await {
                Ok(client) => return Ok(client),
                Err(e @ (ConnectError::Unreachable { .. } | ConnectError::Timeout { .. })) => {
                    let wait = backoff.next_delay();
                    if tokio::time::Instant::now() + wait >= give_up {
                        return Err(e);
                    }
                    tracing::debug!(%address, ?wait, "Totebox not reachable yet: {e}");
                    tokio::time::sleep(wait).await;
                }
                Err(permanent) => return Err(permanent),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let waits: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(2)));
        assert!(
            waits[..3].iter().all(|w| *w < Duration::from_millis(400)),
            "{waits:?}"
        );
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 6, "jittered waits differ: {waits:?}");
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(100));
    }
}
