//! Prometheus metrics for servers: one recorder per process (the `metrics` facade, rendered by
//! `metrics-exporter-prometheus`), and a read-only HTTP endpoint that serves it.
//!
//! Off unless a server is started with `--metrics ADDRESS`. The endpoint answers `GET` (and
//! `HEAD`) with the text exposition format and every other method with 405: it never accepts
//! a command or changes anything. It is plain HTTP, so it binds where the operator says
//! (loopback in the examples); each connection gets ten seconds, and at most eight are served
//! at once.
//!
//! Metric names start with `psp_`; the Totebox's are recorded here (see
//! [`crate::totebox_server`]) and by `psp-totebox serve`, the orchestrator's by the
//! orchestrator.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds, for every `*_seconds` histogram: a millisecond to half a minute.
const SECONDS_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// How long one scrape's connection may take, so a slow client cannot hold it.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a client may take to send its request's head.
const HEAD_DEADLINE: Duration = Duration::from_secs(2);

/// How often the recorder folds histogram samples (bounding their memory without scrapes).
const UPKEEP: Duration = Duration::from_secs(5);

/// Scrapes served at once; more wait to be accepted. With the deadline above, this bounds the
/// file descriptors and memory the endpoint can be made to hold, whoever connects to it.
const MAX_SCRAPES: usize = 8;

/// The process's recorder, installed on first use.
fn recorder() -> Result<&'static PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| b.install_recorder())
                .map_err(|e| format!("cannot record metrics: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The metrics as a scrape would read them now (empty until [`serve`] has installed the
/// recorder).
pub fn render() -> String {
    recorder().map(|h| h.render()).unwrap_or_default()
}

/// Starts recording metrics and serves them on `address` (port 0 picks one); returns the
/// address bound. Must run inside a tokio runtime. Metrics recorded before this call are lost.
pub async fn serve(address: SocketAddr) -> Result<SocketAddr, String> {
    let handle = recorder()?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    // The recorder keeps histogram samples until a scrape or an upkeep folds them: without a
    // scraper, only upkeep bounds the memory they take.
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |request| async move {
                    Ok::<_, Infallible>(answer(&request, handle))
                });
                // A client that does not finish its request's head in time loses its slot
                // early, so silent connections cannot keep scrapers out for long.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEAD_DEADLINE)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(SCRAPE_DEADLINE, connection).await;
            });
        }
    });
    Ok(bound)
}

/// The answer to one request: the metrics for a read, 405 for anything else.
fn answer(request: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let reply = Response::builder();
    let reply = if request.method() == Method::GET || request.method() == Method::HEAD {
        reply
            .header(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(handle.render())))
    } else {
        reply
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(ALLOW, "GET, HEAD")
            .body(Full::new(Bytes::from_static(
                b"read-only: the metrics endpoint answers GET\n",
            )))
    };
    reply.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
