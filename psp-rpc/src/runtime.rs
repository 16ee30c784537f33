//! The server runtime: accept TLS connections and run each one's RPC system on a worker thread.
//!
//! capnp-rpc is single-threaded (`!Send`), so each connection lives on one thread, on a
//! `LocalSet`; connections are spread over one worker per core (`LocalPoolHandle`), one pool per
//! process however many servers it runs (a host may serve many Toteboxes). Shutdown is
//! graceful: stop accepting, refuse new calls (`transport.shutting-down`), let calls already
//! running finish within a deadline, then disconnect. A connection with no call running and
//! nothing received for the idle limit, or whose message trickles past the message limit, is
//! closed (see [`crate::activity`]).

use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use futures::FutureExt;
use psp_core::PublicKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use tokio_util::task::LocalPoolHandle;

use crate::activity::{Activity, Expired};
use crate::limits::{CallError, Limits};
use crate::peer_count::PeerConnections;
use crate::tls;

/// The state of one connection that its servers and the runtime share.
#[derive(Debug)]
pub struct Connection {
    /// The TLS-authenticated peer.
    pub peer: PublicKey,
    in_flight: Cell<usize>,
    draining: Cell<bool>,
    max_in_flight: usize,
    activity: Rc<Activity>,
}

impl Connection {
    /// Starts a call: refused when the connection is draining or at its in-flight limit. The
    /// returned guard ends the call when dropped.
    pub fn begin_call(self: &Rc<Self>) -> Result<CallGuard, capnp::Error> {
        if self.draining.get() {
            return Err(
                CallError::new("transport.shutting-down", "the server is shutting down").to_capnp(),
            );
        }
        if self.in_flight.get() >= self.max_in_flight {
            return Err(CallError::new(
                "limit.calls-in-flight",
                format!(
                    "at most {} calls may run at once on one connection",
                    self.max_in_flight
                ),
            )
            .to_capnp());
        }
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(CallGuard(self.clone()))
    }

    /// Counts work that belongs to a call already admitted (a background fan-out, or waiting for
    /// its answer) as running, without refusing it while draining: graceful shutdown then waits
    /// for it, within the grace period, instead of cutting an accepted request short.
    pub fn hold(self: &Rc<Self>) -> CallGuard {
        self.in_flight.set(self.in_flight.get() + 1);
        CallGuard(self.clone())
    }

    /// Calls running now.
    pub fn calls_in_flight(&self) -> usize {
        self.in_flight.get()
    }
}

/// A running call; ends it when dropped.
#[derive(Debug)]
pub struct CallGuard(Rc<Connection>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
        self.0.activity.call_ended();
    }
}

/// Makes the bootstrap capability of a new connection (called on the connection's thread).
pub type Bootstrap = Arc<dyn Fn(Rc<Connection>) -> capnp::capability::Client + Send + Sync>;

/// Decides whether a connected peer may stay connected (after a config reload).
pub type PeerCheck = Arc<dyn Fn(&PublicKey) -> bool + Send + Sync>;

/// The worker threads every server of this process spreads its connections over: one per core.
/// Shared, so that a process serving a thousand Toteboxes runs two threads, not two thousand.
pub fn workers() -> LocalPoolHandle {
    static POOL: OnceLock<LocalPoolHandle> = OnceLock::new();
    POOL.get_or_init(|| {
        LocalPoolHandle::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
    .clone()
}

/// A running server.
pub struct ServerHandle {
    address: SocketAddr,
    received: Arc<AtomicU64>,
    shutdown: watch::Sender<Option<Duration>>,
    recheck: watch::Sender<Option<PeerCheck>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Bytes its peers have sent it so far, over all connections: the Cap'n Proto frames, after
    /// TLS (what the protocol costs a server, without the record framing).
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Closes, at once, every connection whose peer `allowed` no longer accepts (e.g. after
    /// re-pairing on a config reload). New handshakes are judged by the TLS config's own keys.
    pub fn recheck(&self, allowed: PeerCheck) {
        let _ = self.recheck.send(Some(allowed));
    }

    /// Stops accepting, lets running calls finish for up to `grace`, then closes every
    /// connection. Returns when all connections are closed.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(Some(grace));
        let _ = self.task.await;
    }
}

/// Serves `listener` with pinned-key TLS, one RPC system per connection.
pub fn serve(
    listener: TcpListener,
    tls_config: Arc<rustls::ServerConfig>,
    bootstrap: Bootstrap,
    limits: Limits,
) -> std::io::Result<ServerHandle> {
    let address = listener.local_addr()?;
    let (shutdown, mut signal) = watch::channel(None::<Duration>);
    let (recheck, peers) = watch::channel(None::<PeerCheck>);
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        let pool = workers();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
        let mut connections = tokio::task::JoinSet::new();
        let open = PeerConnections::default();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, from) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let (acceptor, bootstrap, signal, peers, counter, open) =
                        (acceptor.clone(), bootstrap.clone(), signal.clone(), peers.clone(), counter.clone(), open.clone());
                    connections.spawn(pool.spawn_pinned(move || async move {
                        if let Err(e) = connection(tcp, acceptor, bootstrap, limits, signal, peers, (counter, open)).await {
                            tracing::debug!(%from, "connection ended: {e}");
                        }
                    }));
                }
                _ = signal.changed() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    });
    Ok(ServerHandle {
        address,
        received,
        shutdown,
        recheck,
        task,
    })
}

async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    bootstrap: Bootstrap,
    limits: Limits,
    mut signal: watch::Receiver<Option<Duration>>,
    mut peers: watch::Receiver<Option<PeerCheck>>,
    (received, open): (Arc<AtomicU64>, PeerConnections),
) -> Result<(), String> {
    let stream = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let peer = tls::peer_key(stream.get_ref().1).ok_or("the peer presented no identity key")?;
    let Some(slot) = open.admit(peer, limits.max_connections_per_peer) else {
        tracing::warn!(target: "psp::security", %peer, "refused a connection: the peer has {} open", limits.max_connections_per_peer);
        return Ok(());
    };
    let activity = Rc::new(Activity::default());
    let state = Rc::new(Connection {
        peer,
        in_flight: Cell::new(0),
        draining: Cell::new(false),
        max_in_flight: limits.max_calls_in_flight,
        activity: activity.clone(),
    });
    let (reader, writer) = tokio::io::split(stream);
    // A message over the limit is refused with `limit.message`, which the peer can read, rather
    // than a reset.
    let reader = crate::frame_limit::FrameLimit::new(
        Counted {
            inner: reader.compat(),
            received,
        },
        limits.max_message_words,
        activity.clone(),
    )
    .with_budget(slot.budget(limits.max_partial_bytes_per_peer));
    let network = twoparty::VatNetwork::new(
        reader,
        crate::coalesce::Coalesce::new(writer.compat_write()),
        rpc_twoparty_capnp::Side::Server,
        limits.reader_options(),
    );
    let rpc = RpcSystem::new(Box::new(network), Some(bootstrap(state.clone())));
    let disconnector = rpc.get_disconnector();
    let mut rpc = rpc.fuse();
    let (idle, message) = (limits.idle_timeout, limits.message_timeout);
    let check = tokio::time::sleep_until(activity.next_check(0, idle, message));
    tokio::pin!(check);
    loop {
        tokio::select! {
            result = &mut rpc => return result.map_err(|e| e.to_string()),
            () = &mut check => {
                let calls = state.calls_in_flight();
                if let Some(expired) = activity.expired(calls, idle, message) {
                    match expired {
                        Expired::Idle(_) => tracing::debug!(%peer, "closed a connection: {expired}"),
                        // A peer holding a connection open by trickling bytes, or a link that
                        // broke mid-message: either way, worth an operator's eye.
                        Expired::SlowMessage(_) => tracing::warn!(target: "psp::security", %peer, "closed a connection: {expired}"),
                    }
                    // Not through the disconnector: it waits on the peer, which is gone or
                    // stalling. Dropping the RPC system closes the socket now.
                    return Ok(());
                }
                check.as_mut().reset(activity.next_check(calls, idle, message));
            }
            _ = signal.changed() => break,
            Ok(()) = peers.changed() => {
                let still_allowed = peers.borrow().as_ref().is_none_or(|allowed| allowed(&peer));
                if !still_allowed {
                    tracing::warn!(target: "psp::security", %peer, "closed the connection of a peer that is no longer paired");
                    let _ = tokio::time::timeout(Duration::from_secs(1), disconnector).await;
                    return Ok(());
                }
            }
        }
    }
    // Draining: refuse new calls, give running ones until the grace deadline.
    let grace = signal.borrow().unwrap_or_default();
    state.draining.set(true);
    let deadline = tokio::time::Instant::now() + grace;
    while state.calls_in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            result = &mut rpc => return result.map_err(|e| e.to_string()),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), disconnector).await;
    Ok(())
}

/// A reader that adds what it reads to a shared count.
struct Counted<R> {
    inner: R,
    received: Arc<AtomicU64>,
}

impl<R: futures::AsyncRead + Unpin> futures::AsyncRead for Counted<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.inner).poll_read(cx, out);
        if let Poll::Ready(Ok(n)) = &read {
            this.received.fetch_add(*n as u64, Ordering::Relaxed);
        }
        read
    }
}
