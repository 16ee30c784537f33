//! A browser's request, by hand: one HTTP/1.1 exchange over a socket, for the web console's
//! tests (the pages are plain HTML; what a real browser does with them is for the browser tests).

use std::io::{Read, Write};
use std::process::Command;

use psp_core::Operation;
use serde_json::Value as Json;

use super::processes::{Fleet, Operator, Orchestrator, Proc};

/// A string no page may turn into markup.
pub const HOSTILE: &str = "<script>alert(1)</script>";

/// A real fleet (4 properties, 2 subsidiaries; one archive's region label is [`HOSTILE`]), an
/// orchestrator over it, and `orchestrator console-web` over that, offering the demo's three
/// viewports, as processes.
pub struct Site {
    /// The fleet and its files.
    pub fleet: Fleet,
    /// The operator of tenant `acme`, whose key and grant the web console holds.
    pub acme: Operator,
    /// The orchestrator.
    pub orchestrator: Orchestrator,
    /// The web console's process.
    pub web: Proc,
    /// Where the web console listens (`127.0.0.1:PORT`).
    pub address: String,
    /// Its secret (printed in its address), which every request must carry.
    pub key: String,
}

impl Site {
    /// Starts it all.
    pub fn start() -> Site {
        Site::offering(false)
    }

    /// Starts it all, offering commands on the page when `commands` (the operator may then send
    /// snapshots).
    pub fn offering(commands: bool) -> Site {
        let mut fleet = Fleet::start(4, 2);
        // The hostile label reaches the fleet page, a rollup's group key and its chart.
        let labels = fleet.toteboxes[0].labels.clone();
        let region = labels
            .split(", ")
            .find(|l| l.starts_with("region = "))
            .unwrap()
            .to_owned();
        fleet.toteboxes[0].labels = labels.replace(&region, &format!("region = {HOSTILE:?}"));
        let ids: Vec<String> = fleet.toteboxes.iter().map(|t| t.id.clone()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut operations = vec![Operation::Query];
        if commands {
            operations.push(Operation::command("snapshot"));
        }
        let acme = fleet.operator("acme", &ids, operations);
        let config =
            fleet.orchestrator_config("orchestrator.toml", &super::acme_tenant(acme.key, &ids));
        let orchestrator = fleet.serve(&config);
        let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        command.env("XDG_CACHE_HOME", fleet.path("cache"));
        command.args([
            "console-web",
            "--connect",
            &orchestrator.address,
            "--orchestrator-key",
            &orchestrator.key,
            "--listen",
            "127.0.0.1:0",
            "--viewport",
            "noi-by-region@entity=property",
            "--viewport",
            "intercompany@entity=subsidiary",
            "--viewport",
            "executive-summary@entity=property",
            "--key",
        ]);
        command.arg(fleet.path("acme.pem"));
        command.arg("--chain").arg(fleet.path("acme.cap"));
        if commands {
            command.arg("--commands");
        }
        let (web, line) = Proc::start(command, fleet.path("web.log"));
        let (address, key) = web_address(&line);
        Site {
            fleet,
            acme,
            orchestrator,
            web,
            address,
            key,
        }
    }

    /// The address to open in a browser (with the secret, as printed).
    pub fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("http://{}{path}{sep}key={}", self.address, self.key)
    }

    /// A GET of `path` as the console's own page makes it (with its cookie).
    pub fn get(&self, path: &str) -> (u16, String, String) {
        let cookie = format!("psp_console={}", self.key);
        send(
            &self.address,
            &format!("GET {path}"),
            &self.address,
            &[("Cookie", &cookie)],
            "",
        )
    }

    /// A form posted to `path` as the console's own page posts it (with its cookie), with
    /// `headers` besides.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], form: &str) -> (u16, String, String) {
        let cookie = format!("psp_console={}", self.key);
        let mut all = vec![("Cookie", cookie.as_str())];
        all.extend_from_slice(headers);
        post(&self.address, path, &all, form)
    }

    /// The archive ids.
    pub fn ids(&self) -> Vec<String> {
        self.fleet.toteboxes.iter().map(|t| t.id.clone()).collect()
    }

    /// What the CLI's `view --name <name> --json` prints, over the archives `labels` select.
    pub fn cli(&self, name: &str, label: &str) -> Json {
        self.orchestrator.json(
            &self.fleet,
            &self.acme,
            &["view", "--name", name, "--label", label],
        )
    }
}

/// The address and the secret in a web console's "web console on http://ADDRESS/?key=SECRET"
/// line.
pub fn web_address(line: &str) -> (String, String) {
    let url = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let (address, key) = url.split_once("/?key=").unwrap_or_else(|| panic!("{line}"));
    (address.to_owned(), key.to_owned())
}

/// A cell as the CLI's JSON gives it, as the pages print it.
pub fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// `s` as HTML text.
pub fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One HTTP/1.1 request to `address` naming `host`; the status code, the head (lowercase) and
/// the body.
pub fn fetch(address: &str, method: &str, path: &str, host: &str) -> (u16, String, String) {
    send(address, &format!("{method} {path}"), host, &[], "")
}

/// A form posted to `path` at `address` (by its own name), with `headers` besides.
pub fn post(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: &str,
) -> (u16, String, String) {
    let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    send(address, &format!("POST {path}"), address, &all, form)
}

/// One raw HTTP/1.1 exchange: `request_line` (`GET /path`), `Host: host`, `headers`, `body`.
pub fn send(
    address: &str,
    request_line: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{request_line} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_owned())
}
