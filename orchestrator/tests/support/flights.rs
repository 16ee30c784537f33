//! A TCP proxy that counts round trips: it holds the server's bytes back for [`DELAY`] before
//! delivering them. Each time the client sends after bytes were delivered to it (or first), a
//! new flight starts, and a flight is a round trip once the server's answer to it is delivered.
//! Bytes the client sends without waiting (pipelined, or right behind its TLS Finished) join the
//! flight they follow. A flight the server never answers is not a round trip: capnp's finishes
//! and releases, TLS's close_notify, sent without waiting. TCP's own handshake is with the proxy
//! and not counted, so a fresh TLS connection plus one call counts 2; a network adds 1 for TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the server's bytes are held: far longer than a client takes to send what it sends
/// without waiting, on a loaded machine.
pub const DELAY: Duration = Duration::from_millis(250);

/// Server bytes that follow each other within this long are one flight.
const BURST: Duration = Duration::from_millis(30);

/// Round trips seen, over every connection through the proxy.
#[derive(Clone, Default)]
pub struct Flights {
    rounds: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl Flights {
    /// Round trips counted so far, connections still open (their current flight counts).
    pub fn so_far(&self) -> usize {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Round trips counted, once every connection through the proxy has closed (waits up to
    /// 10 s for that: the client has usually exited, but the proxy may not have seen it yet).
    pub fn count(&self) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.open.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.rounds.load(Ordering::SeqCst)
    }
}

/// Starts a proxy to `upstream` on a background thread; returns where to connect.
pub fn proxy(upstream: SocketAddr) -> (SocketAddr, Flights) {
    let flights = Flights::default();
    let counter = flights.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                counter.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, counter.clone()).await;
                    }
                    counter.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    });
    (address, flights)
}

async fn relay(client: TcpStream, server: TcpStream, flights: Flights) {
    // Whether bytes reached the client since it last sent: its next bytes begin a flight.
    let server_spoke = Arc::new(AtomicBool::new(true));
    // Whether the client's last flight is still unanswered: the next delivery answers it.
    let awaiting = Arc::new(AtomicBool::new(false));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = {
        let server_spoke = server_spoke.clone();
        let awaiting = awaiting.clone();
        async move {
            let mut buffer = vec![0; 64 * 1024];
            while let Ok(n) = client_read.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                if server_spoke.swap(false, Ordering::SeqCst) {
                    awaiting.store(true, Ordering::SeqCst);
                }
                if server_write.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
            // The client closed: whatever the server says now (its close, an abort) answers
            // nobody waiting.
            awaiting.store(false, Ordering::SeqCst);
            let _ = server_write.shutdown().await;
        }
    };
    let down = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            // Whatever the server sends in the same burst is one flight: gather it, so the
            // client is not handed half of an answer and made to speak in between.
            let mut flight = buffer[..n].to_vec();
            let mut closed = false;
            while let Ok(more) = tokio::time::timeout(BURST, server_read.read(&mut buffer)).await {
                match more {
                    Ok(0) | Err(_) => {
                        closed = true;
                        break;
                    }
                    Ok(m) => flight.extend_from_slice(&buffer[..m]),
                }
            }
            tokio::time::sleep(DELAY).await;
            if client_write.write_all(&flight).await.is_err() {
                break;
            }
            server_spoke.store(true, Ordering::SeqCst);
            if awaiting.swap(false, Ordering::SeqCst) {
                flights.rounds.fetch_add(1, Ordering::SeqCst);
            }
            if closed {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}
