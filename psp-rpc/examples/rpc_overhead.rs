//! What psp-rpc costs on top of capnp-rpc: calls per second of the same call (`identify`) over
//! the same pinned-key TLS, through psp-rpc's server runtime and client (per-call gating, the
//! frame limit, the diode guard, deadlines, and each message sent as one TLS record) and through
//! a bare capnp-rpc server and client, one after the other in one run, sequentially and with 100
//! calls in flight. A third contender is bare capnp-rpc sending each message as one record too
//! (`psp_rpc::coalesce`), so that what psp-rpc's checks alone cost shows beside what it saves.
//!
//! ```text
//! cargo run --release -p psp-rpc --example rpc_overhead [-- --rounds 3 --calls 20000]
//! ```
//!
//! Both servers run their connections on psp-rpc's worker pool, and both clients on this thread,
//! so the only difference is the framework.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use psp_core::archive::{Archive, CollectionStats, CommandError, CommandOutcome, CommandRequest};
use psp_core::query::{Accumulator, CollectionSchema, Plan, QueryError};
use psp_core::{IdentityKey, Verifier};
use psp_rpc::client::{ToteboxClient, dial};
use psp_rpc::limits::Limits;
use psp_rpc::totebox_server::ToteboxService;
use psp_rpc::{runtime, tls};
use psp_schema::totebox_capnp::totebox;
use tokio::task::LocalSet;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// An archive with nothing in it: `identify` is all that is called.
struct Empty;

impl Archive for Empty {
    fn id(&self) -> &str {
        "bench"
    }
    fn collections(&self) -> Vec<CollectionSchema> {
        Vec::new()
    }
    fn stats(&self, _: &str) -> Option<CollectionStats> {
        None
    }
    fn scan(&self, _: &Plan, _: &mut Accumulator<'_>) -> Result<i64, QueryError> {
        Ok(0)
    }
    fn apply(&self, command: &CommandRequest<'_>) -> Result<CommandOutcome, CommandError> {
        Err(CommandError::UnknownCommand(command.name.to_owned()))
    }
}

/// The bare server: `identify` answered the way the Totebox server answers it.
struct Bare;

impl totebox::Server for Bare {
    async fn identify(
        self: Rc<Self>,
        _: totebox::IdentifyParams,
        mut results: totebox::IdentifyResults,
    ) -> Result<(), capnp::Error> {
        let mut r = results.get();
        r.set_archive("bench");
        r.set_format_version(1);
        r.set_now(psp_core::window::now());
        Ok(())
    }
}

fn argument(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds = argument("--rounds", 3);
    let calls = argument("--calls", 20_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&runtime, async move {
        let [server_key, client_key] = [(); 2].map(|_| IdentityKey::generate().expect("random"));
        let tls_config = tls::server_config(&server_key, tls::PairedKeys::new([client_key.public()]))?;
        let limits = Limits::default();

        // psp-rpc: the Totebox server runtime and the orchestrator's client.
        let service = ToteboxService::new(Arc::new(Empty), Verifier::new([]), limits);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let psp_server = runtime::serve(listener, tls_config.clone(), service.bootstrap_factory(), limits)?;
        let psp = ToteboxClient::connect(psp_server.local_addr(), &client_key, server_key.public(), limits).await?;

        // Bare capnp-rpc over the same TLS.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let bare_address = listener.local_addr()?;
        tokio::spawn(serve_bare(listener, tls_config.clone(), false));
        let bare = connect_bare(bare_address, &client_key, server_key.public(), false).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let whole_address = listener.local_addr()?;
        tokio::spawn(serve_bare(listener, tls_config.clone(), true));
        let whole = connect_bare(whole_address, &client_key, server_key.public(), true).await?;

        let mut figures = Vec::new();
        for round in 0..rounds {
            let psp_sequential = sequential(calls, || psp.identify()).await;
            let bare_sequential = sequential(calls, || identify(&bare)).await;
            let psp_flight = in_flight(calls * 5, 100, || psp.identify()).await;
            let bare_flight = in_flight(calls * 5, 100, || identify(&bare)).await;
            let whole_sequential = sequential(calls, || identify(&whole)).await;
            let whole_flight = in_flight(calls * 5, 100, || identify(&whole)).await;
            eprintln!(
                "round {round}: sequential {psp_sequential:.0} vs {bare_sequential:.0} (whole {whole_sequential:.0}) calls/s, 100 in flight {psp_flight:.0} vs {bare_flight:.0} (whole {whole_flight:.0}) calls/s"
            );
            figures.push([
                psp_sequential,
                bare_sequential,
                whole_sequential,
                psp_flight,
                bare_flight,
                whole_flight,
            ]);
        }
        // Medians of a figure, or of a ratio taken round by round.
        let median = |pick: &dyn Fn(&[f64; 6]) -> f64| {
            let mut v: Vec<f64> = figures.iter().map(pick).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "| calls | psp-rpc | bare capnp-rpc | psp-rpc / bare | bare, one record a message | psp-rpc / that |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        for (what, at) in [("sequential", 0), ("100 in flight", 3)] {
            println!(
                "| {what} | {:.0}/s | {:.0}/s | {:.2} | {:.0}/s | {:.2} |",
                median(&|f| f[at]),
                median(&|f| f[at + 1]),
                median(&|f| f[at] / f[at + 1]),
                median(&|f| f[at + 2]),
                median(&|f| f[at] / f[at + 2]),
            );
        }
        println!("\n(median of {rounds} rounds; each ratio is the median of the rounds' ratios)");
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

async fn sequential<F, Fut, T, E>(calls: usize, call: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    let started = Instant::now();
    for _ in 0..calls {
        call().await.expect("a call");
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

async fn in_flight<F, Fut, T, E>(calls: usize, width: usize, call: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    let started = Instant::now();
    let mut running = FuturesUnordered::new();
    let mut sent = 0;
    while sent < calls.min(width) {
        running.push(call());
        sent += 1;
    }
    while let Some(done) = running.next().await {
        done.expect("a call");
        if sent < calls {
            running.push(call());
            sent += 1;
        }
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

async fn identify(client: &totebox::Client) -> Result<(), capnp::Error> {
    let response = client.identify_request().send().promise.await?;
    response.get()?.get_archive()?;
    Ok(())
}

/// A bare capnp-rpc server; `whole`: each message sent as one TLS record.
async fn serve_bare(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    whole: bool,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        runtime::workers().spawn_pinned(move || async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let (reader, writer) = tokio::io::split(stream);
            let network = network(reader, writer, rpc_twoparty_capnp::Side::Server, whole);
            let client: totebox::Client = capnp_rpc::new_client(Bare);
            let _ = RpcSystem::new(Box::new(network), Some(client.client)).await;
        });
    }
}

async fn connect_bare(
    address: SocketAddr,
    identity: &IdentityKey,
    key: psp_core::PublicKey,
    whole: bool,
) -> Result<totebox::Client, Box<dyn std::error::Error>> {
    let stream = dial(address, identity, key).await?;
    let (reader, writer) = tokio::io::split(stream);
    let network = network(reader, writer, rpc_twoparty_capnp::Side::Client, whole);
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let client: totebox::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
    tokio::task::spawn_local(rpc);
    Ok(client)
}

/// capnp-rpc's two-party network over a TLS stream's halves; `whole`: each message sent as one
/// TLS record (psp-rpc's writer), else as capnp writes it (a segment table, then each segment).
fn network<S>(
    reader: tokio::io::ReadHalf<S>,
    writer: tokio::io::WriteHalf<S>,
    side: rpc_twoparty_capnp::Side,
    whole: bool,
) -> twoparty::VatNetwork<tokio_util::compat::Compat<tokio::io::ReadHalf<S>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let reader = reader.compat();
    if whole {
        let writer = psp_rpc::coalesce::Coalesce::new(writer.compat_write());
        twoparty::VatNetwork::new(reader, writer, side, Default::default())
    } else {
        twoparty::VatNetwork::new(reader, writer.compat_write(), side, Default::default())
    }
}
