//! The fault proxy itself, against an echo server and a raw TCP client: each fault does what it
//! says, so the fault tests that use it test the product, not the proxy.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::faults::{Fault, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An echo server that answers each read twice over ("ping" -> "pingping"), and counts the
/// connections whose client it saw close.
async fn echo() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let seen = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&[&b[..n], &b[..n]].concat()).await.is_err() {
                        break;
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (address, closed)
}

/// What a client that sends "ping" reads within `window`: the bytes, and how the read ended
/// (`Ok(true)` end of stream, `Ok(false)` still open, `Err` a reset or other error).
async fn ping(proxy: &FaultProxy, window: Duration) -> (Vec<u8>, std::io::Result<bool>) {
    let mut s = TcpStream::connect(proxy.address).await.unwrap();
    // Through the proxy faithfully first, so the fault meets an established connection.
    s.write_all(b"ping").await.unwrap();
    let mut first = [0u8; 8];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"pingping");
    ping_on(&mut s, window).await
}

/// Sends "ping" on `s` and reads for `window` (see [`ping`]).
async fn ping_on(s: &mut TcpStream, window: Duration) -> (Vec<u8>, std::io::Result<bool>) {
    s.write_all(b"ping").await.unwrap();
    let until = Instant::now() + window;
    let mut got = Vec::new();
    let mut b = [0u8; 64];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut b)).await {
            Err(_) => return (got, Ok(false)),
            Ok(Ok(0)) => return (got, Ok(true)),
            Ok(Ok(n)) => got.extend_from_slice(&b[..n]),
            Ok(Err(e)) => return (got, Err(e)),
        }
    }
}

/// What a client must read under a fault: the bytes, and how the read ended.
type Expected = fn(&[u8], &std::io::Result<bool>) -> bool;

#[tokio::test]
async fn each_fault_does_what_it_says() {
    let (server, _) = echo().await;
    let proxy = FaultProxy::start(server);
    let window = Duration::from_millis(1_500);

    let (got, end) = ping(&proxy, window).await;
    assert_eq!((got.as_slice(), end.unwrap()), (&b"pingping"[..], false));

    let cases: [(Fault, Expected); 7] = [
        (Fault::Stall, |got, end| {
            got.is_empty() && matches!(end, Ok(false))
        }),
        (Fault::CutMidFrame, |got, end| {
            got == b"ping" && matches!(end, Ok(true))
        }),
        (Fault::Reset, |got, end| {
            got.is_empty()
                && matches!(end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
        }),
        // 8 bytes at 100 ms each: the window sees most but not all of them.
        (Fault::SlowDrip, |got, end| {
            (3..8).contains(&got.len()) && b"pingping".starts_with(got) && matches!(end, Ok(false))
        }),
        (Fault::Garbage, |got, end| {
            got.len() == 8 && got != b"pingping" && matches!(end, Ok(false))
        }),
        (Fault::Duplicate, |got, end| {
            got == b"pingpingpingping" && matches!(end, Ok(false))
        }),
        // Silence, and no end of stream: the client cannot tell.
        (Fault::HalfOpen, |got, end| {
            got.is_empty() && matches!(end, Ok(false))
        }),
    ];
    for (fault, expected) in cases {
        proxy.inject(None);
        let mut s = TcpStream::connect(proxy.address).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut first = [0u8; 8];
        s.read_exact(&mut first).await.unwrap();
        proxy.inject(Some(fault));
        let window = if fault == Fault::SlowDrip {
            Duration::from_millis(650)
        } else {
            window
        };
        let (got, end) = ping_on(&mut s, window).await;
        assert!(
            expected(&got, &end),
            "{fault:?}: read {got:?}, then {end:?}"
        );
    }

    // Cleared, the proxy forwards faithfully again.
    proxy.inject(None);
    let (got, end) = ping(&proxy, Duration::from_millis(300)).await;
    assert_eq!((got.as_slice(), end.unwrap()), (&b"pingping"[..], false));
}

/// A stall is a partition: a client that gives up and closes is not heard by the server, whose
/// socket stays open until it closes it itself (what a server's idle limit is for). Once the
/// fault is cleared, a close crosses again.
#[tokio::test]
async fn a_stall_carries_no_close_across() {
    let (server, closed) = echo().await;
    let proxy = FaultProxy::start(server);
    let mut s = TcpStream::connect(proxy.address).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut first = [0u8; 8];
    s.read_exact(&mut first).await.unwrap();
    proxy.inject(Some(Fault::Stall));
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "the close crossed the partition"
    );
    assert_eq!(proxy.withheld_closes(), 1);
    assert_eq!(proxy.open_connections(), 1);

    proxy.inject(None);
    let mut s = TcpStream::connect(proxy.address).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    s.read_exact(&mut first).await.unwrap();
    drop(s);
    let until = Instant::now() + Duration::from_secs(2);
    while closed.load(Ordering::SeqCst) == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        closed.load(Ordering::SeqCst),
        1,
        "a close crosses once cleared"
    );
}
