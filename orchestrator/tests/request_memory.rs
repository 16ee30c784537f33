//! A request's memory is bounded across its sources, not only per message: each source may send
//! its share of the request's budget (`max_request_bytes` / sources), answers merge as they
//! arrive and are dropped, so a request holds the merged groups, never every source's answer.
//!
//! Sources that each try to send an answer far past their share are set aside
//! (`source.answer-too-large`); honest sources still answer. The test also reports the peak
//! resident memory of the request, so it doubles as the measurement behind the figure in the
//! notes: `PSP_MEMORY_SOURCES=20 PSP_MEMORY_GROUPS=60000 cargo test --release -p orchestrator
//! --test request_memory -- --nocapture` (CI runs it small). The orchestrator runs as its own
//! process, so its memory is measured alone; `PSP_MEMORY_BUDGET=17179869184` shows what the old
//! per-message bound alone let one request hold.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use orchestrator::fanout::SourceStatus;
use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, Query, Value};
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, Scope, Window};
use psp_rpc::limits::Limits;
use support::hostile::HostileTotebox;
use support::processes::Fleet;
use tokio::task::LocalSet;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of process `pid`, in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples the resident memory of `pid` every few milliseconds until stopped; returns the peak.
fn watch_peak(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(resident(pid)));
    let (s, p) = (stop.clone(), peak.clone());
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            p.fetch_max(resident(pid), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
        p.load(Ordering::Relaxed)
    });
    (stop, thread)
}

fn by_period() -> Query {
    Query::aggregate("statements", ["period"], [Aggregate::count().named("n")])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_holds_its_budget_not_every_sources_answer() {
    let flooding = setting("PSP_MEMORY_SOURCES", 6);
    let groups = setting("PSP_MEMORY_GROUPS", 6_000);
    let fleet = Fleet::start(2, 0);
    let sources = flooding + fleet.toteboxes.len();
    // By default each source gets 64 KiB: far less than a flood, plenty for 24 honest groups.
    // PSP_MEMORY_BUDGET set very high shows what a per-message bound alone allows.
    let budget = setting("PSP_MEMORY_BUDGET", 64 * 1024 * sources);
    // Sources asked at once: 1 shows what a request holds, apart from the frames on the wire.
    let concurrency = setting("PSP_MEMORY_CONCURRENCY", 64);
    let mut hostile = Vec::new();
    for i in 0..flooding {
        hostile.push(
            HostileTotebox::start(
                &format!("flood-{i:02}"),
                fleet.orchestrator.public(),
                support::hostile::flood(format!("{i:04}"), groups),
            )
            .await,
        );
    }
    let operator = IdentityKey::generate().unwrap();
    let mut text = format!(
        "identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 20000\ndeadline_ms = 30000\nmax_request_bytes = {budget}\nmax_concurrency = {concurrency}\n{}",
        fleet.fleet_toml()
    );
    for h in &hostile {
        text.push_str(&h.fleet_toml("entity = \"property\""));
    }
    text.push_str(&format!(
        "[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"property\" }}]\n",
        operator.public()
    ));
    let config = fleet.path("orchestrator.toml");
    std::fs::write(&config, text).unwrap();
    let orchestrator = fleet.serve(&config);
    let pid = orchestrator.process.pid();
    let mut ids: Vec<String> = fleet.toteboxes.iter().map(|t| t.id.clone()).collect();
    ids.extend(hostile.iter().map(|h| h.archive.clone()));
    let grant = Chain::mint(
        &fleet.owner,
        Grant {
            holder: operator.public(),
            archives: ArchiveSet::of_ids(ids.iter().map(String::as_str)),
            scope: Scope::everything(vec![Operation::Query]),
            window: Window::lasting(psp_core::window::now() - 5, 3_600),
        },
    )
    .unwrap();
    LocalSet::new()
        .run_until(async {
            let limits = Limits {
                call_timeout: Duration::from_secs(60),
                ..Limits::default()
            };
            let console = orchestrator.connect(&operator, limits).await;
            // From a fresh orchestrator: the growth includes dialing every Totebox. (After a
            // first request the allocator keeps what it freed, which would hide the peak.)
            let before = resident(pid);
            let (stop, peak) = watch_peak(pid);
            let report = console.query(&Selector::All, &grant, &by_period()).await;
            stop.store(true, Ordering::Relaxed);
            let peak = peak.join().unwrap();
            let growth = peak.saturating_sub(before) as f64 / (1 << 20) as f64;
            let report = match report {
                Ok(report) => report,
                Err(e) => {
                    // Only when measuring without a budget: the merged view itself is then too
                    // large to send back.
                    assert!(std::env::var_os("PSP_MEMORY_BUDGET").is_some(), "{e}");
                    eprintln!(
                        "{flooding} sources each answering {groups} groups, budget {} KiB, {concurrency} at once: \
                         peak resident growth {growth:.1} MiB; the merged view could not be sent ({e})",
                        budget / 1024
                    );
                    return;
                }
            };
            let rejected = report
                .outcomes
                .iter()
                .filter(|o| {
                    matches!(&o.status, SourceStatus::Rejected { code, .. } if code == "source.answer-too-large")
                })
                .count();
            eprintln!(
                "{flooding} sources each answering {groups} groups, budget {} KiB ({} KiB a source), \
                 {concurrency} at once: {rejected} set aside, {} rows merged, peak resident growth \
                 {growth:.1} MiB",
                budget / 1024,
                budget / sources / 1024,
                report.table().map_or(0, |t| t.rows.len()),
            );
            if std::env::var_os("PSP_MEMORY_BUDGET").is_none() {
                assert_eq!(rejected, flooding, "{:?}", report.outcomes);
                let table = report.table().unwrap();
                assert_eq!(table.rows.len(), 24, "the honest periods, merged");
                assert!(table.rows.iter().all(|r| r[1] == Value::Int(2)));
            }
        })
        .await;
}
