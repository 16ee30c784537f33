//! A TCP proxy that injects faults into the connections through it, for the fault tests (like
//! the counting proxy, test-only). It forwards faithfully until a fault is injected; from then
//! on, every connection through it (open or new) meets the fault at its next bytes, until the
//! fault is cleared. It sits outside TLS, as a network does, so garbage and duplicated bytes
//! reach the peer's TLS layer, which must refuse them.
//!
//! "Server" is the side the proxy dials (a Totebox, or the orchestrator for a console), "client"
//! the side that dialed the proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing more is forwarded either way (bytes are read and dropped), not even a close:
    /// a side that closes meanwhile leaves the other's socket open and silent, as across a
    /// network partition.
    Stall,
    /// Half of the server's next bytes are forwarded, then both sides are closed: a FIN in the
    /// middle of a frame.
    CutMidFrame,
    /// Both sides are reset (RST) at the next bytes either way.
    Reset,
    /// The server's bytes reach the client one per 100 ms.
    SlowDrip,
    /// The server's next bytes are replaced by as many bytes of garbage.
    Garbage,
    /// The server's next bytes are delivered twice.
    Duplicate,
    /// At the next bytes, the server's side is closed (it reads end of stream) while the
    /// client's stays open and silent: its bytes are read and dropped, nothing reaches it and no
    /// FIN either, as when a peer vanishes without closing (a half-open connection).
    HalfOpen,
}

/// Every fault, in the order the tests inject them.
pub const FAULTS: [Fault; 7] = [
    Fault::Stall,
    Fault::CutMidFrame,
    Fault::Reset,
    Fault::SlowDrip,
    Fault::Garbage,
    Fault::Duplicate,
    Fault::HalfOpen,
];

/// A running fault proxy.
#[derive(Clone)]
pub struct FaultProxy {
    /// Where clients connect.
    pub address: SocketAddr,
    fault: Arc<Mutex<Option<Fault>>>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    withheld: Arc<AtomicUsize>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a background thread, forwarding faithfully.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = FaultProxy {
            address: listener.local_addr().unwrap(),
            fault: Arc::default(),
            open: Arc::default(),
            accepted: Arc::default(),
            withheld: Arc::default(),
        };
        let shared = proxy.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                while let Ok((client, _)) = listener.accept().await {
                    let proxy = shared.clone();
                    proxy.accepted.fetch_add(1, Ordering::SeqCst);
                    proxy.open.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            proxy.relay(client, server).await;
                        }
                        proxy.open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        });
        proxy
    }

    /// Injects `fault` from now on (`None`: forward faithfully again).
    pub fn inject(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Connections through the proxy still open (neither side has closed).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Closes a stall kept from the other side so far (one per side that closed).
    pub fn withheld_closes(&self) -> usize {
        self.withheld.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn fault(&self) -> Option<Fault> {
        *self.fault.lock().unwrap()
    }

    /// Relays one connection until either side closes or a fault ends it.
    async fn relay(&self, client: TcpStream, server: TcpStream) {
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let end = Ending::default();
        let up = self.pump(client_read, server_write, false, &end);
        let down = self.pump(server_read, client_write, true, &end);
        tokio::join!(up, down);
    }

    /// Forwards `from` to `to` (toward the client if `toward_client`), applying the fault in force
    /// at each chunk, until the connection ends or either side closes.
    async fn pump(
        &self,
        mut from: OwnedReadHalf,
        mut to: OwnedWriteHalf,
        toward_client: bool,
        end: &Ending,
    ) {
        let peer_closed = self.forward(&mut from, &mut to, toward_client, end).await;
        // Half-open: the way toward the client goes silent, but its socket stays open until the
        // client closes it (the other way keeps reading it).
        let silent = toward_client && end.half_open.is_cancelled();
        // Partitioned: a close does not cross either; the other side's socket stays open until
        // that side closes it.
        let partitioned = peer_closed && self.fault() == Some(Fault::Stall);
        if partitioned {
            self.withheld.fetch_add(1, Ordering::SeqCst);
        }
        if end.reset.load(Ordering::SeqCst) || silent || partitioned {
            // Dropping a write half would send a FIN (before the RST, or to a side that must
            // hear nothing): leave the socket to close when its read half goes.
            to.forget();
        }
        if !silent && !partitioned {
            end.stop.cancel();
        }
    }

    /// Returns whether it ended because `from` closed (or failed).
    async fn forward(
        &self,
        from: &mut OwnedReadHalf,
        to: &mut OwnedWriteHalf,
        toward_client: bool,
        end: &Ending,
    ) -> bool {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut half_open = false;
        loop {
            let n = tokio::select! {
                () = end.stop.cancelled() => return false,
                // The other way met `HalfOpen`: go silent toward the client, or close toward
                // the server.
                () = end.half_open.cancelled(), if !half_open => {
                    half_open = true;
                    if toward_client {
                        return false;
                    }
                    let _ = to.shutdown().await;
                    continue;
                }
                read = from.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => n,
                },
            };
            let chunk = &buffer[..n];
            let delivered = match (self.fault(), toward_client) {
                _ if half_open => Ok(()),
                (None, _) => to.write_all(chunk).await,
                (Some(Fault::Stall), _) => Ok(()),
                (Some(Fault::Reset), _) => {
                    // A zero linger: closing sends an RST (and never blocks, which is why tokio
                    // deprecates lingering in general).
                    #[allow(deprecated)]
                    {
                        let _ = from.as_ref().set_linger(Some(Duration::ZERO));
                        let _ = to.as_ref().set_linger(Some(Duration::ZERO));
                    }
                    end.reset.store(true, Ordering::SeqCst);
                    return false;
                }
                (Some(Fault::HalfOpen), _) => {
                    half_open = true;
                    end.half_open.cancel();
                    if toward_client {
                        return false;
                    }
                    to.shutdown().await
                }
                (Some(_), false) => to.write_all(chunk).await,
                (Some(Fault::CutMidFrame), true) => {
                    let _ = to.write_all(&chunk[..n.div_ceil(2)]).await;
                    return false;
                }
                (Some(Fault::SlowDrip), true) => {
                    let mut dripped = Ok(());
                    for byte in chunk {
                        tokio::select! {
                            () = end.stop.cancelled() => return false,
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                        dripped = to.write_all(std::slice::from_ref(byte)).await;
                        if dripped.is_err() {
                            break;
                        }
                    }
                    dripped
                }
                (Some(Fault::Garbage), true) => to.write_all(&garbage(n)).await,
                (Some(Fault::Duplicate), true) => match to.write_all(chunk).await {
                    Ok(()) => to.write_all(chunk).await,
                    e => e,
                },
            };
            if delivered.is_err() {
                return false;
            }
        }
    }
}

/// How one relayed connection ends: `stop` ends both ways; `reset` says to close with an RST;
/// `half_open` closes the server's side and silences the client's.
#[derive(Default)]
struct Ending {
    stop: CancellationToken,
    half_open: CancellationToken,
    reset: std::sync::atomic::AtomicBool,
}

/// `n` bytes of noise (a fixed xorshift sequence: the same each run).
fn garbage(n: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
