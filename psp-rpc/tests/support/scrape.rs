//! Scraping a metrics endpoint as Prometheus would, for the tests of both servers (the
//! orchestrator's tests include this file too).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// Sends `method /metrics` over HTTP/1.1 and returns the status line and the body.
pub fn http(address: SocketAddr, method: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "{method} /metrics HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// A `GET`, parsed: every sample as (`name{label=value,...}` with the labels sorted, value); a
/// histogram's value is its count.
pub fn scrape(address: SocketAddr) -> Vec<(String, f64)> {
    let (status, body) = http(address, "GET");
    assert!(status.contains("200"), "{status}");
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    parsed
        .samples
        .iter()
        .map(|s| {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let value = match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                _ => f64::NAN,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), value)
        })
        .collect()
}

/// The value of the sample `key` (as [`scrape`] writes it), if present.
pub fn value(samples: &[(String, f64)], key: &str) -> Option<f64> {
    samples.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}
