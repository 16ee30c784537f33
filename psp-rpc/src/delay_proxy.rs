//! A TCP proxy that adds a fixed one-way delay in each direction, for tests and benchmarks on
//! machines without `tc netem`. Bytes keep their order; each chunk is held for the delay.
//!
//! It also records the order in which chunks arrive from each side, so a test can count round
//! trips without trusting wall time: consecutive chunks in one direction form a burst, and every
//! burst from the server that follows a burst from the client is one round trip. (The traffic is
//! TLS, so the proxy cannot see calls; causality alone orders the bursts: an answer cannot leave
//! before its question arrived.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which way a chunk travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting side to the target.
    ToServer,
    /// From the target back.
    ToClient,
}

/// A running delay proxy.
#[derive(Debug)]
pub struct DelayProxy {
    address: SocketAddr,
    log: Arc<Mutex<Vec<Direction>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayProxy {
    /// Listens on 127.0.0.1 and forwards every connection to `target`, `one_way` late each way.
    pub async fn start(target: SocketAddr, one_way: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let events = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let (client_read, client_write) = inbound.into_split();
                let (server_read, server_write) = outbound.into_split();
                tokio::spawn(pump(
                    client_read,
                    server_write,
                    one_way,
                    Direction::ToServer,
                    events.clone(),
                ));
                tokio::spawn(pump(
                    server_read,
                    client_write,
                    one_way,
                    Direction::ToClient,
                    events.clone(),
                ));
            }
        });
        Ok(Self { address, log, task })
    }

    /// Where clients should connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Forgets the traffic seen so far (call before the exchange to measure).
    pub fn reset(&self) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Round trips since the last reset: bursts toward the client that follow a burst toward
    /// the server.
    pub fn round_trips(&self) -> usize {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let mut trips = 0;
        let mut asked = false;
        let mut previous = None;
        for &direction in log.iter() {
            if previous != Some(direction) {
                match direction {
                    Direction::ToServer => asked = true,
                    Direction::ToClient if asked => {
                        trips += 1;
                        asked = false;
                    }
                    Direction::ToClient => {}
                }
            }
            previous = Some(direction);
        }
        trips
    }
}

/// Copies one direction, holding each chunk for `delay`, in order.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    direction: Direction,
    log: Arc<Mutex<Vec<Direction>>>,
) {
    let (queue, mut due) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(direction);
                if queue
                    .send((tokio::time::Instant::now() + delay, buffer[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(queue);
    let _ = writer.await;
}
