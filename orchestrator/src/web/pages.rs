//! The web console's pages. `maud` escapes every interpolated string, so an archive id, a label,
//! a group key or a Totebox's error text from the network is always text, never markup.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::console::{ArchiveStatus, Update};
use crate::fanout::{Health, SourceOutcome, SourceStatus};
use crate::render::{OVERFLOW, as_of, cell, clean, match_word};
use crate::report::{Body, Report};
use crate::viewports::{Entry, KpiValue, MatchStatus};
use psp_core::query::{CellRef, Table};

use super::WebConsole;
use super::charts::{chart, key_columns};

/// The frame around every page: where to go, and where this console is bound.
pub(crate) fn layout(web: &WebConsole, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · os-orchestration" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    strong { "os-orchestration" }
                    a href="/" { "Fleet" }
                    @for (i, name) in web.viewports.iter().enumerate() {
                        a href=(link(name, web.selections.get(i).map_or("", String::as_str))) { (name) }
                    }
                    @if web.commands.is_some() { a href="/command" { "Command" } }
                    span class="note" { "console on " (web.address.to_string()) }
                }
                main { (content) }
            }
        }
    }
}

/// A viewport's link, selecting archives by `labels` (`key=value,...`; empty: all).
fn link(name: &str, labels: &str) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect()
    };
    let query: Vec<String> = labels
        .split(',')
        .filter(|l| !l.is_empty())
        .map(|l| format!("label={}", encode(l)))
        .collect();
    let mut href = format!("/view/{}", encode(name));
    if !query.is_empty() {
        href.push('?');
        href.push_str(&query.join("&"));
    }
    href
}

fn health_word(h: Health) -> &'static str {
    match h {
        Health::Unknown => "unknown",
        Health::Up => "up",
        Health::Down => "down",
        Health::Quarantined => "quarantined",
    }
}

/// The fleet: each archive's health, latency and freshness, filtered by label.
pub fn fleet(web: &WebConsole, archives: &[ArchiveStatus], labels: &[(String, String)]) -> Markup {
    let shown: Vec<&ArchiveStatus> = archives
        .iter()
        .filter(|a| labels.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
        .collect();
    let content = html! {
        h1 { "Fleet" }
        form class="filter" method="get" action="/" {
            label { "Filter by label " input type="text" name="label" placeholder="region=north"; }
            " " button type="submit" { "Filter" }
            @for (k, v) in labels { " " span { (k) "=" (v) } }
        }
        p { (shown.len()) " of " (archives.len()) " archives" }
        table id="fleet" {
            thead { tr { th { "archive" } th { "health" } th { "latency" } th { "last answered" } th { "labels" } } }
            tbody {
                @for a in &shown {
                    tr {
                        td { (clean(&a.id)) }
                        td class={ "health-" (health_word(a.health)) } { (health_word(a.health)) }
                        td class="number" {
                            @if !a.latency.is_zero() { (format!("{:.1} ms", a.latency.as_secs_f64() * 1e3)) }
                        }
                        td { (as_of(a.last_seen)) }
                        td { (a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")) }
                    }
                }
            }
        }
    };
    layout(web, "Fleet", content)
}

/// A viewport's report: its figures, then every source's outcome.
pub fn viewport(web: &WebConsole, name: &str, report: &Report) -> Markup {
    let content = html! {
        h1 { (name) }
        (figures(report, true))
    };
    layout(web, name, content)
}

/// A viewport running: the page follows it (`/run/<id>`) with its only script, filling in the
/// figures as sources answer; without a script, a link waits for the final view.
pub fn running(web: &WebConsole, name: &str, run: &str, query: &str) -> Markup {
    let content = html! {
        h1 { (name) }
        div id="run" data-run=(run) {
            p class="status" { "asking the fleet..." }
        }
        noscript { p { a href={ (link(name, "")) "?final&" (query) } { "Show the view when every source has answered" } } }
        script src="/console.js" {}
    };
    layout(web, name, content)
}

/// The view so far of a running viewport, as the fragment its page puts in place.
pub fn progress(update: &Update) -> Markup {
    html! {
        @if !update.done {
            // A summary asks every source once per key figure: these are answers, not sources.
            p class="status" { (update.answered) "/" (update.total) " answers in; figures so far" }
        }
        (figures(&update.report, update.done))
    }
}

/// What a running viewport's page shows when its request was refused.
pub fn refused(why: &str) -> Markup {
    html! { p class="incomplete" { (why) } }
}

/// A report's figures and outcomes, after its status line when it is `final` (a view so far
/// lists only the sources ended yet).
fn figures(report: &Report, last: bool) -> Markup {
    let answered = report
        .outcomes
        .iter()
        .filter(|o| o.status == SourceStatus::Ok)
        .count();
    html! {
        @if last {
            p class={ @if report.complete { "complete" } @else { "incomplete" } } {
                (answered) "/" (report.outcomes.len()) " sources answered; data as of "
                (as_of(report.as_of_oldest))
            }
        }
        @match &report.body {
            Body::Table(t) => (rollup(t, &report.overflows)),
            Body::Reconciliation(entries) => (reconciliation(entries)),
            Body::Summary(kpis) => (summary(kpis)),
        }
        (outcomes(&report.outcomes))
    }
}

fn rollup(t: &Table, overflows: &[CellRef]) -> Markup {
    let svg = chart(t, key_columns(t));
    html! {
        div class="views" {
            @if let Some(svg) = svg {
                // Drawn here by the `svg` crate, which escapes every text node.
                (PreEscaped(svg))
            }
            (table(t, overflows))
        }
    }
}

/// A merged table, numbers aligned right, overflowed cells named as the CLI names them.
pub fn table(t: &Table, overflows: &[CellRef]) -> Markup {
    html! {
        table class="figures" {
            thead { tr { @for c in &t.columns { th { (clean(&c.name)) } } } }
            tbody {
                @for (r, row) in t.rows.iter().enumerate() {
                    tr {
                        @for (c, v) in row.iter().enumerate() {
                            @let numeric = t.columns.get(c).is_some_and(|c| c.value_type.is_numeric());
                            td class=[numeric.then_some("number")] {
                                @if overflows.contains(&CellRef { row: r, column: c }) { (OVERFLOW) }
                                @else { (cell(v)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn reconciliation(entries: &[Entry]) -> Markup {
    let breaks: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.status != MatchStatus::Matched)
        .collect();
    html! {
        p { (entries.len()) " balances; " (entries.len() - breaks.len()) " matched, "
            (breaks.len()) " breaks" }
        h2 { "Breaks" }
        (entry_table(&breaks))
        h2 { "Matched" }
        (entry_table(&entries.iter().filter(|e| e.status == MatchStatus::Matched).collect::<Vec<_>>()))
    }
}

fn entry_table(entries: &[&Entry]) -> Markup {
    html! {
        table class="reconciliation" {
            thead { tr { th { "left" } th { "right" } th { "period" } th { "currency" }
                th { "left amount" } th { "right amount" } th { "difference" } th { "status" } } }
            tbody {
                @for e in entries {
                    @let word = match_word(e.status);
                    tr {
                        td { (clean(&e.left)) } td { (clean(&e.right)) }
                        td { (cell(&e.period)) } td { (cell(&e.currency)) }
                        td class="number" { (cell(&e.left_amount)) }
                        td class="number" { (cell(&e.right_amount)) }
                        td class="number" { (cell(&e.difference)) }
                        td class={ "match-" (word.to_lowercase().replace(' ', "-")) } {
                            (word) @if e.overflowed { " (" (OVERFLOW) ")" }
                        }
                    }
                }
            }
        }
    }
}

fn summary(kpis: &[KpiValue]) -> Markup {
    html! {
        div class="tiles" {
            @for k in kpis {
                div class="tile" {
                    div class="name" { (clean(&k.name)) }
                    div class="value" {
                        @if k.overflowed { (OVERFLOW) } @else { (cell(&k.value)) }
                        " " span class="unit" { (clean(&k.unit)) }
                    }
                    div class="meta" {
                        (k.sources.len()) "/" (k.sources.len() + k.missing.len()) " sources · as of "
                        (as_of(k.as_of_oldest))
                    }
                    @if !k.missing.is_empty() {
                        div class="meta" { "missing: " (k.missing.join(", ")) }
                    }
                }
            }
        }
    }
}

/// Every source's outcome, failures named with their code.
fn outcomes(list: &[SourceOutcome]) -> Markup {
    html! {
        h2 { "Sources" }
        table class="outcomes" {
            thead { tr { th { "archive" } th { "outcome" } th { "latency" } th { "detail" } } }
            tbody {
                @for o in list {
                    @let ok = o.status == SourceStatus::Ok;
                    tr {
                        td { (clean(&o.archive)) }
                        td class=(if ok { "status-ok" } else { "status-bad" }) { (o.status.word()) }
                        td class="number" { (format!("{:.1} ms", o.latency.as_secs_f64() * 1e3)) }
                        td { (detail(&o.status)) }
                    }
                }
            }
        }
    }
}

pub(crate) fn detail(status: &SourceStatus) -> String {
    match status {
        SourceStatus::Denied { code, message } | SourceStatus::Rejected { code, message } => {
            clean(&format!("{code}: {message}"))
        }
        SourceStatus::Unreachable(why)
        | SourceStatus::Error(why)
        | SourceStatus::Quarantined(why) => clean(why),
        _ => String::new(),
    }
}

/// A page saying what failed.
pub fn failed(web: &WebConsole, what: &str, why: &str) -> Markup {
    layout(
        web,
        what,
        html! { h1 { (what) } p class="incomplete" { (why) } },
    )
}
