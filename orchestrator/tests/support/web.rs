//! A browser's request, by hand: one HTTP/1.1 exchange over a socket, for the web console's
//! tests (the pages are plain HTML; what a real browser does with them is for the browser tests).

use std::io::{Read, Write};

/// One HTTP/1.1 request to `address` naming `host`; the status code, the head (lowercase) and
/// the body.
pub fn fetch(address: &str, method: &str, path: &str, host: &str) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_owned())
}
