//! `orchestrator console-web`: a console in a browser. A small web server, on loopback unless
//! told otherwise, that holds the operator's key and grant and talks PSP to the orchestrator as
//! any console does (the orchestrator gains no listener and never calls it). It serves the
//! fleet page and one page per config viewport: rollups as charts with the table beside them,
//! reconciliations by break, and key figures as tiles, each with its sources and freshness.
//!
//! Every page is HTML written on the server: each string that came over the network is escaped
//! (`maud` escapes every interpolation), charts are SVG drawn here ([`charts`]), and every answer
//! carries a strict content security policy (only this console's own script and style, no
//! framing). Every request must carry the console's secret, printed once in its address and
//! then kept in a `SameSite=Strict` cookie, so neither another user of the machine nor another
//! site's page can use the operator's key through it; on loopback, only this address's own
//! names are answered (a page elsewhere cannot rebind a name to it). Pages are GET; a command
//! (with `--commands`) is a POST from the console's own form ([`commands`]).

pub mod charts;
pub mod commands;
pub mod pages;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::HOST;
use hyper::{Method, Request, Response, StatusCode};
use psp_core::Chain;

use std::cell::RefCell;

use crate::console::{Console, InFlight, Options};
use crate::operate::Target;
use crate::selection::Selector;
use crate::viewport_cache::ViewportCache;

/// What every answer says about what the page may load and do.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The page's style sheet (served from here: the policy allows no other).
const STYLE: &str = include_str!("style.css");
/// The page's only script, hand-written: it follows a running viewport (`/run/<id>`) and puts
/// each view so far, written and escaped here, in its place.
const SCRIPT: &str = include_str!("console.js");
/// Viewports running for pages at once; starting one more lets the oldest go. (Each followed run
/// holds two of the connection's calls in flight: its fan-out and its `next`.)
const MOST_RUNS: usize = 16;

/// How long the tenant's listing a page selects archives by is used before it is asked again.
const LISTING_AGE: Duration = Duration::from_secs(60);

/// A request's head (and a command form's body) must arrive within this.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);

/// The console a browser drives: its connection to the orchestrator, the operator's grant, the
/// viewports it offers, and where it listens.
pub struct WebConsole {
    /// The connection to the orchestrator, as the operator, and when it was made (see
    /// [`WebConsole::console`]).
    console: RefCell<(Rc<Console>, Instant)>,
    /// Where and as whom it connects again.
    target: Target,
    /// The operator's grant, delegated per request.
    pub grant: Chain,
    /// The config viewports offered, by name.
    pub viewports: Vec<String>,
    /// For each viewport offered, the labels its link selects archives by (`key=value`, may be
    /// empty: all archives), in the same order.
    pub selections: Vec<String>,
    /// Where the kept viewport definitions live (as the CLI keeps them).
    pub copies: Option<ViewportCache>,
    /// Where this server listens (the `Host` it answers to).
    pub address: SocketAddr,
    /// The viewports running for pages, by run id, oldest first, each with the connection it
    /// runs on (kept open for it).
    pub runs: RefCell<Vec<(String, InFlight, Rc<Console>)>>,
    /// When commands are offered (`--commands`), the token their forms carry; `None`: no page
    /// offers or accepts a command.
    pub commands: Option<String>,
    /// The secret every request must carry (random per start): in the address this console
    /// prints (`?key=...`) once, then as a cookie only this console's pages send.
    pub secret: String,
}

impl WebConsole {
    /// A web console at `address`, offering `viewports` (each selecting archives by the labels
    /// of `selections`, `key=value,...`, in the same order), and commands when `commands`.
    pub fn new(
        (console, target): (Console, Target),
        grant: Chain,
        (viewports, selections): (Vec<String>, Vec<String>),
        copies: Option<ViewportCache>,
        (address, commands): (SocketAddr, bool),
    ) -> WebConsole {
        let random = || {
            psp_core::capability::CapabilityId::random()
                .map(|id| hex::encode(id.0))
                .unwrap_or_default()
        };
        let token = commands.then(random);
        WebConsole {
            secret: random(),
            console: RefCell::new((Rc::new(console), Instant::now())),
            target,
            grant,
            viewports,
            selections,
            copies,
            address,
            runs: RefCell::default(),
            commands: token.filter(|t| !t.is_empty()),
        }
    }

    /// The connection to the orchestrator: the one held, or a new one when it has closed (the
    /// orchestrator closes one idle for its `idle_ms`) or its listing of the tenant's archives
    /// (what selections by label or all name) is older than a minute.
    pub async fn console(&self) -> Result<Rc<Console>, String> {
        let (held, since) = self.console.borrow().clone();
        if held.is_connected() && since.elapsed() < LISTING_AGE {
            return Ok(held);
        }
        let fresh = Rc::new(self.target.connect().await?);
        *self.console.borrow_mut() = (fresh.clone(), Instant::now());
        Ok(fresh)
    }

    /// The address to open: this console's, with its secret (printed once at start).
    pub fn url(&self) -> String {
        format!("http://{}/?key={}", self.address, self.secret)
    }
}

/// HTTP connections served at once. Past it the listener stops accepting, so newcomers wait in
/// the kernel's backlog: a local program opening connections without end cannot take every
/// file descriptor, and the console's own connection to the orchestrator needs one. A place is
/// given back when its connection goes: one that sends nothing is closed after 5 s, one
/// refused (4xx) after the refusal, and any after [`CONNECTION_LIFETIME`] (its request in
/// hand given up to a minute more), so a program that holds every place by asking again and
/// again, or by never reading, still lets the operator in within a few minutes.
pub const MOST_CONNECTIONS: usize = 128;

/// How long one HTTP connection is served before it is asked to close (a browser opens another
/// for its next request; the page's script asks at most five times a second).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The cookie the secret travels in after the first visit.
const COOKIE: &str = "psp_console";

/// Serves `web` on `listener` until the task is dropped. Call on a tokio `LocalSet` (the
/// console's connection is `!Send`).
pub async fn serve(listener: tokio::net::TcpListener, web: Rc<WebConsole>) {
    let places = Arc::new(tokio::sync::Semaphore::new(MOST_CONNECTIONS));
    loop {
        // Never closed, so this waits for a place rather than failing.
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let web = web.clone();
        tokio::task::spawn_local(async move {
            let _place = place;
            let service = hyper::service::service_fn(move |request| {
                let web = web.clone();
                async move { Ok::<_, Infallible>(answer(&web, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_DEADLINE)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    // The request in hand (a page following a run waits on the fleet) may
                    // finish; then the connection closes and its place is free.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
                }
            }
        });
    }
}

/// Whether `host` (a request's `Host` header) names this server: its address, or `localhost`
/// at its port.
/// On loopback: a page elsewhere could rebind its own name to this address, so only the names
/// this address has are answered. Elsewhere (`--listen` on another address) any name is, and
/// the secret alone keeps others out.
fn known_host(host: &str, address: SocketAddr) -> bool {
    if !address.ip().is_loopback() {
        return true;
    }
    let port = address.port();
    let names = [address.ip().to_string(), "localhost".to_owned()];
    names
        .iter()
        .any(|name| host == format!("{name}:{port}") || (port == 80 && host == name.as_str()))
}

/// Whether `request` carries this console's secret, as a cookie or (the first visit) as
/// `?key=`; the second says to set the cookie.
fn carries_secret(web: &WebConsole, request: &Request<Incoming>) -> (bool, bool) {
    let in_query = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|p| p.strip_prefix("key=") == Some(web.secret.as_str()));
    let in_cookie = request
        .headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|c| {
            c.trim()
                .strip_prefix(COOKIE)
                .and_then(|c| c.strip_prefix('='))
                == Some(web.secret.as_str())
        });
    (in_query || in_cookie, in_query)
}

async fn answer(web: &WebConsole, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let host = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !known_host(host, web.address) {
        return page(
            StatusCode::MISDIRECTED_REQUEST,
            "text/plain",
            "this console answers only to its own address".into(),
        );
    }
    // A request another site's page makes (an image, a form) is refused whatever it carries.
    if request
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return page(
            StatusCode::FORBIDDEN,
            "text/plain",
            "not from another site".into(),
        );
    }
    let (allowed, first_visit) = carries_secret(web, &request);
    if !allowed {
        return page(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "open the address this console printed when it started (it carries its key)".into(),
        );
    }
    if first_visit {
        // The secret moves to a cookie only this console's own pages send, and out of the
        // address bar and history.
        let mut response = page(StatusCode::SEE_OTHER, "text/plain", String::new());
        let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", web.secret);
        // The same page, without the key (and with the rest of its query).
        let rest: Vec<&str> = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("key="))
            .collect();
        let mut location = request.uri().path().to_owned();
        if !rest.is_empty() {
            location.push('?');
            location.push_str(&rest.join("&"));
        }
        for (name, value) in [("set-cookie", cookie), ("location", location)] {
            if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        return response;
    }
    if request.method() == Method::POST
        && request.uri().path() == "/command"
        && let Some(token) = &web.commands
    {
        return post_command(web, token, request).await;
    }
    if request.method() != Method::GET {
        return page(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served".into(),
        );
    }
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or("");
    match path {
        "/command" if web.commands.is_some() => {
            html(commands::form(web, web.commands.as_deref().unwrap_or("")))
        }
        "/style.css" => page(StatusCode::OK, "text/css", STYLE.into()),
        "/console.js" => page(StatusCode::OK, "text/javascript", SCRIPT.into()),
        "/" => {
            let labels = label_filter(query);
            let fleet = match web.console().await {
                Ok(console) => console.fleet().await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match fleet {
                Ok(archives) => html(pages::fleet(web, &archives, &labels)),
                Err(e) => html_status(
                    StatusCode::BAD_GATEWAY,
                    pages::failed(web, "fleet", &e.to_string()),
                ),
            }
        }
        _ if path.starts_with("/run/") => follow(web, &path["/run/".len()..], query).await,
        _ => match path.strip_prefix("/view/").map(percent_decode) {
            Some(name) if web.viewports.contains(&name) => {
                let name = name.as_str();
                // `?label=key=value` selects the archives by label; all of them otherwise.
                let labels = label_filter(query);
                let selector = if labels.is_empty() {
                    Selector::All
                } else {
                    Selector::Labels(labels.into_iter().collect())
                };
                // Without a script, the page waits for the final view (`<noscript>` links
                // here with `final`).
                if !query.split('&').any(|p| p == "final") {
                    return match start(web, name, &selector).await {
                        Ok(run) => html(pages::running(web, name, &run, query)),
                        Err(e) => {
                            html_status(StatusCode::BAD_GATEWAY, pages::failed(web, name, &e))
                        }
                    };
                }
                let console = match web.console().await {
                    Ok(console) => console,
                    Err(e) => {
                        return html_status(StatusCode::BAD_GATEWAY, pages::failed(web, name, &e));
                    }
                };
                let report = crate::operate::view_by_name(
                    &console,
                    web.copies.as_ref(),
                    &selector,
                    &web.grant,
                    name,
                    (Options::default(), false),
                )
                .await;
                match report {
                    Ok(report) => html(pages::viewport(web, name, &report)),
                    Err(e) => html_status(StatusCode::BAD_GATEWAY, pages::failed(web, name, &e)),
                }
            }
            _ => html_status(
                StatusCode::NOT_FOUND,
                pages::failed(web, "not found", "no such page"),
            ),
        },
    }
}

/// Starts viewport `name` for a page, and returns the run id the page follows it by.
async fn start(web: &WebConsole, name: &str, selector: &Selector) -> Result<String, String> {
    let console = web.console().await?;
    let viewport = console.viewport(name).await.map_err(|e| e.to_string())?;
    let in_flight = console
        .start_view(selector, &web.grant, &viewport, Options::default())
        .map_err(|e| e.to_string())?;
    let run = psp_core::capability::CapabilityId::random()
        .map(|id| hex::encode(id.0))
        .map_err(|e| e.to_string())?;
    let mut runs = web.runs.borrow_mut();
    if runs.len() >= MOST_RUNS {
        // Dropping its `FleetQuery` stops the oldest's fan-out at the orchestrator.
        runs.remove(0);
    }
    runs.push((run.clone(), in_flight, console));
    Ok(run)
}

/// `/run/<id>?after=N`: the view so far of a running viewport, as the fragment the page puts in
/// place, once more than N sources have ended (or the final view, after which the run is let
/// go). `x-answered` and `x-final` say where it stands.
async fn follow(web: &WebConsole, run: &str, query: &str) -> Response<Full<Bytes>> {
    let after = query
        .split('&')
        .find_map(|p| p.strip_prefix("after="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // The call is made on a handle to the fan-out, not under the borrow: other pages go on.
    let Some(handle) = web
        .runs
        .borrow()
        .iter()
        .find(|(id, _, _)| id == run)
        .map(|(_, in_flight, _)| in_flight.clone())
    else {
        return page(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no such run (it ended or was let go)".into(),
        );
    };
    match handle.next(after).await {
        Ok(update) => {
            if update.done {
                web.runs.borrow_mut().retain(|(id, _, _)| id != run);
            }
            final_fragment(&update)
        }
        // An orchestrator older than `next`: the final view alone, from `view()`.
        Err(e) if e.code.ends_with("unimplemented") => {
            let report = handle.report().await;
            web.runs.borrow_mut().retain(|(id, _, _)| id != run);
            match report {
                Ok(report) => {
                    let total = report.outcomes.len() as u32;
                    final_fragment(&crate::console::Update {
                        answered: total,
                        total,
                        done: true,
                        report,
                    })
                }
                Err(e) => html_status(StatusCode::BAD_GATEWAY, pages::refused(&e.to_string())),
            }
        }
        Err(e) => {
            web.runs.borrow_mut().retain(|(id, _, _)| id != run);
            html_status(StatusCode::BAD_GATEWAY, pages::refused(&e.to_string()))
        }
    }
}

/// A command form posted: refused unless it comes from this console's own page (its origin,
/// when the browser names one, and the form's token); the first post shows the confirmation,
/// the confirmed one applies the command and shows each archive's outcome.
async fn post_command(
    web: &WebConsole,
    token: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let refused = |why: &str| page(StatusCode::FORBIDDEN, "text/plain", why.to_owned());
    if let Some(origin) = request.headers().get(hyper::header::ORIGIN) {
        let own = [
            format!("http://{}", web.address),
            format!("http://localhost:{}", web.address.port()),
        ];
        if !own.iter().any(|o| origin.as_bytes() == o.as_bytes()) {
            return refused("a command is accepted only from this console's own page");
        }
    }
    let body = http_body_util::Limited::new(request.into_body(), commands::MAX_FORM_BYTES);
    let bytes = match tokio::time::timeout(HEAD_DEADLINE, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => {
            return page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "the form is too large or too slow".into(),
            );
        }
    };
    let form = commands::Form::parse(&String::from_utf8_lossy(&bytes));
    if !form.carries(token) {
        return refused("the form is not this console's (its token does not match)");
    }
    let checked = form.command().and_then(|c| form.selector().map(|s| (c, s)));
    let (command, selector) = match checked {
        Ok(checked) => checked,
        Err(e) => return html_status(StatusCode::BAD_REQUEST, pages::failed(web, "command", &e)),
    };
    if !form.confirmed() {
        let console = match web.console().await {
            Ok(console) => console,
            Err(e) => {
                return html_status(StatusCode::BAD_GATEWAY, pages::failed(web, "command", &e));
            }
        };
        return match console.selected(&selector) {
            Ok(archives) if archives.is_empty() => html_status(
                StatusCode::BAD_REQUEST,
                pages::failed(
                    web,
                    "command",
                    "no archive of your tenant matches the selection",
                ),
            ),
            Ok(archives) => html(commands::confirm(web, &form, &command, &archives)),
            Err(e) => html_status(
                StatusCode::BAD_REQUEST,
                pages::failed(web, "command", &e.to_string()),
            ),
        };
    }
    match commands::run(web, &form).await {
        Ok((command, results)) => html(commands::outcomes(web, &command, &results)),
        Err(e) => html_status(StatusCode::BAD_GATEWAY, pages::failed(web, "command", &e)),
    }
}

/// A view so far (or the final view) as the fragment a page puts in place, with where it
/// stands in `x-answered` and `x-final`.
fn final_fragment(update: &crate::console::Update) -> Response<Full<Bytes>> {
    let mut response = html(pages::progress(update));
    for (name, value) in [
        ("x-answered", update.answered.to_string()),
        ("x-final", u8::from(update.done).to_string()),
    ] {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// `label=key=value` pairs of a query string (percent-decoded).
fn label_filter(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("label="))
        .filter_map(|label| {
            let decoded = percent_decode(label);
            decoded
                .split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// `%XX` and `+` decoded; anything malformed is left as it is.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn html(body: maud::Markup) -> Response<Full<Bytes>> {
    html_status(StatusCode::OK, body)
}

fn html_status(status: StatusCode, body: maud::Markup) -> Response<Full<Bytes>> {
    page(status, "text/html; charset=utf-8", body.into_string())
}

fn page(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-type", content_type),
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        if let Ok(value) = hyper::header::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    if status.is_client_error() {
        // A refused client gets no kept-alive connection to ask again on: asking again means
        // waiting for a place like anyone else (see MOST_CONNECTIONS).
        headers.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_for_another_host_is_not_answered() {
        let address: SocketAddr = "127.0.0.1:7480".parse().unwrap();
        assert!(known_host("127.0.0.1:7480", address));
        assert!(known_host("localhost:7480", address));
        assert!(!known_host("evil.example:7480", address));
        assert!(!known_host("127.0.0.1:80", address));
    }

    #[test]
    fn label_filters_are_read_from_the_query_string() {
        assert_eq!(
            label_filter("label=region%3Dnorth&x=1&label=entity=property"),
            vec![
                ("region".to_owned(), "north".to_owned()),
                ("entity".to_owned(), "property".to_owned())
            ]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(
            percent_decode("%+A%20b"),
            "% A b",
            "only two hex digits decode"
        );
    }
}
