//! The soak (issue 13, point 3): many consoles of several tenants send a mix of fleet queries,
//! configured views and commands through a real `orchestrator serve` to a fleet of real
//! `psp-totebox serve` processes for minutes on end, while a fault-injecting proxy in front of a
//! tenth of the Toteboxes stalls, cuts, resets, drips, garbles, duplicates or half-opens their
//! links now and then. It checks, and prints as Markdown:
//!
//! * **no wrong answer**: every report equals the sum of the per-archive figures (taken before
//!   the run) over exactly the sources it says answered;
//! * **no error outside the faults**: every source outcome that is not `ok` belongs to a faulted
//!   Totebox, and no request fails as a whole;
//! * **every command applied exactly once**: each console retries its `append`s with the same
//!   key until answered; afterwards every archive's file holds each acknowledged record once and
//!   nothing else;
//! * **p99 stable** (per minute after the warm-up), **orchestrator memory growth under 10%**
//!   after the warm-up, and **file descriptors flat**.
//!
//! ```text
//! cargo build --release -p orchestrator --bins --examples && cargo build --release -p psp-archive
//! target/release/examples/soak --seconds 600
//! ```
//!
//! `scripts/soak` does both; CI runs a smoke (`--toteboxes 10 --consoles 5 --seconds 20`).

#[path = "../tests/support/faults.rs"]
#[allow(dead_code, unreachable_pub)]
mod faults;

#[path = "support/binaries.rs"]
mod binaries;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use binaries::sibling_binary;
use clap::Parser;
use faults::{FAULTS, FaultProxy};
use orchestrator::console::{Console, Options};
use orchestrator::fanout::SourceOutcome;
use orchestrator::report::Report;
use orchestrator::selection::Selector;
use orchestrator::viewports::NamedViewport;
use psp_archive::RecordArchive;
use psp_archive::generate::{GenerateOptions, generate};
use psp_core::archive::Archive;
use psp_core::query::{Aggregate, AggregateFunction, CompareOp, Filter, Query, Value};
use psp_core::{
    ArchiveSet, Chain, Grant, IdentityKey, Operation, PublicKey, RowSelector, Scope, Window,
};
use psp_rpc::client::{CommandAnswer, CommandSpec};
use psp_rpc::limits::Limits;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Records the soak appends start at; the generated ledger's entries are far below, and the
/// queries read only those.
const BASE: i64 = 10_000_000;
/// Entries one console may append (its own range above `BASE`).
const PER_CONSOLE: i64 = 1_000_000;

#[derive(Parser, Debug)]
#[command(about = "Soaks a real orchestrator and fleet under load and injected faults")]
struct Args {
    /// Totebox processes.
    #[arg(long, default_value_t = 100)]
    toteboxes: usize,
    /// Consoles, spread over the tenants (each its own operator key and connection).
    #[arg(long, default_value_t = 50)]
    consoles: usize,
    /// Tenants the consoles belong to.
    #[arg(long, default_value_t = 5)]
    tenants: usize,
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// The first part of the run, in seconds, left out of the memory and p99 comparisons.
    #[arg(long, default_value_t = 60)]
    warm_up: u64,
    /// Percent of the Toteboxes behind a fault-injecting proxy.
    #[arg(long, default_value_t = 10)]
    faulted_percent: usize,
    /// A console's pause between requests, in milliseconds (uniform from half to one and a half
    /// times this).
    #[arg(long, default_value_t = 1_000)]
    think_ms: u64,
    /// The kill moments' and choices' seed (default: the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
}

/// A `psp-totebox serve` or `orchestrator serve` process, killed when dropped.
struct Served {
    child: Child,
    address: SocketAddr,
    key: PublicKey,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` and reads where it serves from its first line (`... ADDRESS as KEY`).
fn serve(mut command: Command, log: &Path) -> Result<Served, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{command:?}: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let line = lines
        .next()
        .ok_or_else(|| format!("{command:?} ended before serving"))?
        .map_err(|e| e.to_string())?;
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let words: Vec<&str> = line.split_whitespace().collect();
    let (address, key) = match words.as_slice() {
        [.., address, "as", key] => (address.parse(), key.parse()),
        _ => return Err(format!("unexpected first line: {line}")),
    };
    Ok(Served {
        address: address.map_err(|e| format!("{line}: {e}"))?,
        key: key.map_err(|e| format!("{line}: {e}"))?,
        child,
    })
}

/// The figures every request is checked against: per currency, (count, sum of entry).
type Figures = BTreeMap<String, (i64, i64)>;

/// The soak's query: per currency, how many generated ledger records and the sum of their
/// entry numbers (ints, so sums are exact and easy to check), untouched by the soak's appends.
fn soak_query() -> Query {
    Query::aggregate(
        "ledger",
        ["currency"],
        [
            Aggregate::count(),
            Aggregate::of(AggregateFunction::Sum, "entry"),
        ],
    )
    .filter(Filter::Compare {
        field: "entry".into(),
        op: CompareOp::Lt,
        value: Value::Int(BASE),
    })
}

/// The same figures as a configured viewport, grouped first by the `entity` label.
const VIEWPORT: &str = r#"
[[viewports]]
name = "soak"
[viewports.rollup]
labels = ["entity"]
query = { collection = "ledger", where = ["entry < 10000000"], group_by = ["currency"], aggregates = ["count(*)", "sum(entry)"] }
"#;

/// A report's table as figures, its first `labels` columns dropped.
fn figures(report: &Report, labels: usize) -> Result<Figures, String> {
    let table = report.table().ok_or("not a table")?;
    let mut out = Figures::new();
    for row in &table.rows {
        match &row[labels..] {
            [Value::Text(currency), Value::Int(count), Value::Int(sum)] => {
                out.insert(currency.clone(), (*count, *sum));
            }
            other => return Err(format!("unexpected row {other:?}")),
        }
    }
    Ok(out)
}

/// What the consoles saw.
#[derive(Default)]
struct Tally {
    requests: BTreeMap<&'static str, usize>,
    wrong: Vec<String>,
    unexpected: Vec<String>,
    injected: usize,
    /// (seconds since the start, latency, every source answered) of every request that got a
    /// report.
    latencies: Vec<(f64, Duration, bool)>,
    /// Per archive, the entries acknowledged.
    acknowledged: BTreeMap<String, BTreeSet<i64>>,
    replayed: usize,
    command_retries: usize,
}

/// Everything a console needs, shared.
struct Plan {
    ids: Vec<String>,
    faulted: BTreeSet<String>,
    baseline: BTreeMap<String, Figures>,
    orchestrator: SocketAddr,
    orchestrator_key: PublicKey,
    started: Instant,
    end: Instant,
    think: Duration,
    tally: Mutex<Tally>,
}

impl Plan {
    /// Checks a report: every failed source is a faulted one, and the figures are those of the
    /// sources that answered.
    fn check(&self, what: &'static str, report: &Report, labels: usize, took: Duration) {
        let mut expected = Figures::new();
        let mut tally = self.tally.lock().unwrap();
        *tally.requests.entry(what).or_default() += 1;
        tally
            .latencies
            .push((self.started.elapsed().as_secs_f64(), took, report.complete));
        for outcome in &report.outcomes {
            if outcome.status == orchestrator::fanout::SourceStatus::Ok {
                for (currency, (n, s)) in &self.baseline[&outcome.archive] {
                    let e = expected.entry(currency.clone()).or_default();
                    e.0 += n;
                    e.1 += s;
                }
            } else if self.faulted.contains(&outcome.archive) {
                tally.injected += 1;
            } else {
                tally
                    .unexpected
                    .push(format!("{what}: {} {:?}", outcome.archive, outcome.status));
            }
        }
        match figures(report, labels) {
            Ok(got) if got == expected => {}
            Ok(got) => tally
                .wrong
                .push(format!("{what}: got {got:?}, expected {expected:?}")),
            Err(e) => tally.wrong.push(format!("{what}: {e}")),
        }
    }

    fn failed(&self, what: &str, error: String) {
        self.tally
            .lock()
            .unwrap()
            .unexpected
            .push(format!("{what}: {error}"));
    }
}

async fn connect(plan: &Plan, operator: &IdentityKey) -> Result<Console, String> {
    let limits = Limits {
        call_timeout: Duration::from_secs(15),
        ..Limits::default()
    };
    Console::connect(plan.orchestrator, operator, plan.orchestrator_key, limits)
        .await
        .map_err(|e| e.to_string())
}

/// One console: queries, views and commands until the end, then settles its commands.
async fn console(plan: Arc<Plan>, index: usize, operator: IdentityKey, grant: Chain, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index as u64);
    let all = Selector::Ids(plan.ids.clone());
    let query = soak_query();
    let mut console = None;
    let mut viewport: Option<NamedViewport> = None;
    let mut next_entry = BASE + index as i64 * PER_CONSOLE;
    while Instant::now() < plan.end {
        let pause = plan.think.mul_f64(rng.random_range(0.5..1.5));
        tokio::time::sleep(pause).await;
        if console.as_ref().is_none_or(|c: &Console| !c.is_connected()) {
            match connect(&plan, &operator).await {
                Ok(c) => console = Some(c),
                Err(e) => {
                    plan.failed("connect", e);
                    continue;
                }
            }
        }
        let Some(c) = console.as_ref() else { continue };
        let started = Instant::now();
        match rng.random_range(0..10) {
            0..6 => match c.query(&all, &grant, &query).await {
                Ok(report) => plan.check("query", &report, 0, started.elapsed()),
                Err(e) => plan.failed("query", e.to_string()),
            },
            6..9 => {
                if viewport.is_none() {
                    match c.viewport("soak").await {
                        Ok(v) => viewport = Some(v),
                        Err(e) => {
                            plan.failed("viewport", e.to_string());
                            continue;
                        }
                    }
                }
                let copy = viewport.as_ref().expect("fetched above");
                let answer = match c.start_configured_view(&all, &grant, copy, Options::default()) {
                    Ok(view) => view.report().await,
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(report) => plan.check("view", &report, 1, started.elapsed()),
                    Err(e) => plan.failed("view", e.to_string()),
                }
            }
            _ => {
                let archive = plan.ids[rng.random_range(0..plan.ids.len())].clone();
                let entry = next_entry;
                next_entry += 1;
                command(&plan, c, &grant, &archive, entry).await;
            }
        }
    }
}

/// Sends one `append` to `archive` until it answers (applied now, or replayed), as a console
/// must when a source fails; a failure of a Totebox that is not faulted is an error.
async fn command(plan: &Plan, console: &Console, grant: &Chain, archive: &str, entry: i64) {
    let spec = CommandSpec {
        name: "append".into(),
        collection: "ledger".into(),
        idempotency_key: format!("soak-{entry:016}").into_bytes(),
        arguments: ledger_record(entry),
    };
    let selector = Selector::Ids(vec![archive.to_owned()]);
    let give_up = plan.end + Duration::from_secs(120);
    let mut tries = 0;
    while Instant::now() < give_up {
        tries += 1;
        let outcomes = match console
            .command(&selector, grant, &spec, Options::default())
            .await
        {
            Ok(outcomes) => outcomes,
            Err(e) => {
                plan.failed("command", e.to_string());
                return;
            }
        };
        if settle(plan, archive, entry, tries, &outcomes) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    plan.failed("command", format!("{archive} never answered entry {entry}"));
}

/// Records a command's answer; returns whether the archive answered (applied or replayed).
fn settle(
    plan: &Plan,
    archive: &str,
    entry: i64,
    tries: usize,
    outcomes: &[(SourceOutcome, Option<CommandAnswer>)],
) -> bool {
    let mut tally = plan.tally.lock().unwrap();
    if tries == 1 {
        *tally.requests.entry("command").or_default() += 1;
    } else {
        tally.command_retries += 1;
    }
    match outcomes.first() {
        Some((_, Some(answer))) => {
            tally.replayed += usize::from(!answer.applied);
            tally
                .acknowledged
                .entry(archive.to_owned())
                .or_default()
                .insert(entry);
            return true;
        }
        Some((_, None)) if plan.faulted.contains(archive) => tally.injected += 1,
        other => tally
            .unexpected
            .push(format!("command to {archive}: {other:?}")),
    }
    false
}

/// The serialized arguments of an `append` of one ledger record.
fn ledger_record(entry: i64) -> Vec<u8> {
    let row = vec![
        Value::Int(entry),
        "2026-12".into(),
        "cash".into(),
        "soak".into(),
        "USD".into(),
        Value::Decimal(psp_core::query::Decimal::new(100, 2).expect("a small decimal")),
    ];
    psp_archive::append_arguments(
        &[
            "entry",
            "period",
            "account",
            "counterparty",
            "currency",
            "amount",
        ],
        &[row],
    )
}

/// The orchestrator's resident memory (KiB) and open file descriptors.
fn footprint(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// The `p`th percentile of `values` (sorted here).
fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    if args.toteboxes == 0 || args.consoles == 0 || args.tenants == 0 {
        return Err("--toteboxes, --consoles and --tenants must be at least 1".into());
    }
    let totebox_bin = sibling_binary("psp-totebox")?;
    let orchestrator_bin = sibling_binary("orchestrator")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = dir.path().join("fleet");
    eprintln!("soak: seed {seed}; generating {} archives", args.toteboxes);
    let manifest = generate(&GenerateOptions {
        out: out.clone(),
        seed: 23,
        properties: 0,
        subsidiaries: args.toteboxes,
        records: 200,
    })
    .map_err(|e| e.to_string())?;

    // The fleet: every Totebox its own process and key; a tenth behind a fault proxy.
    let owner = IdentityKey::generate().map_err(|e| e.to_string())?;
    let orchestrator_key = IdentityKey::generate().map_err(|e| e.to_string())?;
    orchestrator_key
        .save(&dir.path().join("orchestrator.pem"))
        .map_err(|e| e.to_string())?;
    let faulted_count = (args.toteboxes * args.faulted_percent).div_ceil(100);
    let mut toteboxes = Vec::new();
    let mut proxies = Vec::new();
    let mut fleet_toml = String::new();
    for (i, entry) in manifest.archives.iter().enumerate() {
        let config = out.join(&entry.config);
        IdentityKey::generate()
            .and_then(|k| k.save(&config.with_file_name("identity.pem")))
            .map_err(|e| e.to_string())?;
        let mut text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
        // A short idle limit: an orchestrator's connection hidden by a stall goes soon.
        text.push_str(&format!(
            "\n[server]\nlisten = \"127.0.0.1:0\"\nidentity = \"identity.pem\"\npaired = [\"{}\"]\ntrusted_roots = [\"{}\"]\nidle_seconds = 10\n",
            orchestrator_key.public(),
            owner.public()
        ));
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let mut command = Command::new(&totebox_bin);
        command.arg("serve").arg("--config").arg(&config);
        let served = serve(command, &dir.path().join(format!("{}.log", entry.id)))?;
        let mut address = served.address;
        if i < faulted_count {
            let proxy = FaultProxy::start(address);
            address = proxy.address;
            proxies.push((entry.id.clone(), proxy));
        }
        fleet_toml.push_str(&format!(
            "[[fleet]]\nid = \"{}\"\naddress = \"{address}\"\nkey = \"{}\"\nlabels = {{ entity = \"subsidiary\" }}\n",
            entry.id, served.key
        ));
        toteboxes.push((entry.id.clone(), config, served));
    }
    let ids: Vec<String> = toteboxes.iter().map(|(id, ..)| id.clone()).collect();

    // Tenants, each with its share of the consoles' operator keys.
    let operators: Vec<IdentityKey> = (0..args.consoles)
        .map(|_| IdentityKey::generate().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut tenants = String::new();
    for t in 0..args.tenants {
        let keys: Vec<String> = operators
            .iter()
            .enumerate()
            .filter(|(i, _)| i % args.tenants == t)
            .map(|(_, k)| k.public().to_string())
            .collect();
        if keys.is_empty() {
            continue;
        }
        tenants.push_str(&format!(
            "[[tenants]]\nname = \"tenant-{t}\"\noperators = {keys:?}\narchives = {ids:?}\nquotas = {{ concurrent_queries = {}, archives_per_query = {}, requests_per_minute = 100000 }}\n",
            keys.len() * 2,
            ids.len()
        ));
    }
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(
        &config,
        format!(
            "identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 1000\ndeadline_ms = 3000\nredial_ms = 1000\n{fleet_toml}{tenants}{VIEWPORT}"
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut command = Command::new(&orchestrator_bin);
    command.arg("serve").arg("--config").arg(&config);
    let orchestrator = serve(command, &dir.path().join("orchestrator.log"))?;
    let pid = orchestrator.child.id();

    let grant = |operator: &IdentityKey| {
        Chain::mint(
            &owner,
            Grant {
                holder: operator.public(),
                archives: ArchiveSet::of_ids(ids.iter().map(String::as_str)),
                scope: Scope::everything(vec![Operation::Query, Operation::command("append")]),
                window: Window::lasting(
                    psp_core::window::now() - 5,
                    (args.seconds + 900).min(u32::MAX as u64) as u32,
                ),
            },
        )
        .map_err(|e| e.to_string())
    };

    // The per-archive figures, before any load or fault.
    let baseline = {
        let operator = &operators[0];
        let chain = grant(operator)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let local = tokio::task::LocalSet::new();
        let (address, key) = (orchestrator.address, orchestrator.key);
        local.block_on(&runtime, async {
            let console = Console::connect(address, operator, key, Limits::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut baseline = BTreeMap::new();
            for id in &ids {
                let report = console
                    .query(&Selector::Ids(vec![id.clone()]), &chain, &soak_query())
                    .await
                    .map_err(|e| format!("{id}: {e}"))?;
                if !report.complete {
                    return Err(format!("{id}: {:?}", report.outcomes));
                }
                baseline.insert(id.clone(), figures(&report, 0)?);
            }
            Ok::<_, String>(baseline)
        })?
    };

    let started = Instant::now();
    let plan = Arc::new(Plan {
        faulted: proxies.iter().map(|(id, _)| id.clone()).collect(),
        ids: ids.clone(),
        baseline,
        orchestrator: orchestrator.address,
        orchestrator_key: orchestrator.key,
        started,
        end: started + Duration::from_secs(args.seconds),
        think: Duration::from_millis(args.think_ms),
        tally: Mutex::default(),
    });
    eprintln!(
        "soak: {} Toteboxes ({faulted_count} faulted), {} consoles in {} tenants, {} s",
        args.toteboxes, args.consoles, args.tenants, args.seconds
    );

    // Faults: each faulted Totebox's link meets a random fault for 2-5 s every 5-15 s.
    let injected: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let mut injectors = Vec::new();
    for (i, (_, proxy)) in proxies.iter().enumerate() {
        let (proxy, end, injected) = (proxy.clone(), plan.end, injected.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0xfa17 + i as u64));
        injectors.push(std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(rng.random_range(5_000..15_000)));
                if Instant::now() >= end {
                    break;
                }
                let fault = FAULTS[rng.random_range(0..FAULTS.len())];
                *injected
                    .lock()
                    .unwrap()
                    .entry(format!("{fault:?}"))
                    .or_default() += 1;
                proxy.inject(Some(fault));
                std::thread::sleep(Duration::from_millis(rng.random_range(2_000..5_000)));
                proxy.inject(None);
            }
            proxy.inject(None);
        }));
    }

    // The consoles, on two threads (a console lives on one thread).
    let mut threads = Vec::new();
    for part in 0..2usize {
        let plan = plan.clone();
        let mine: Vec<(usize, IdentityKey, Chain)> = operators
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == part)
            .map(|(i, k)| Ok((i, k.clone(), grant(k)?)))
            .collect::<Result<_, String>>()?;
        threads.push(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async {
                let consoles = mine.into_iter().map(|(i, key, chain)| {
                    tokio::task::spawn_local(console(plan.clone(), i, key, chain, seed))
                });
                for c in consoles.collect::<Vec<_>>() {
                    let _ = c.await;
                }
            });
        }));
    }

    // The orchestrator's footprint every 5 s.
    let mut samples: Vec<(f64, u64, usize)> = Vec::new();
    while Instant::now() < plan.end {
        std::thread::sleep(Duration::from_secs(5).min(plan.end - Instant::now()));
        let (rss, fds) = footprint(pid);
        samples.push((started.elapsed().as_secs_f64(), rss, fds));
    }
    for t in injectors {
        let _ = t.join();
    }
    for t in threads {
        t.join().map_err(|_| "a console thread panicked")?;
    }
    // Settled: faults cleared, consoles gone, the dialer's connections steady.
    std::thread::sleep(Duration::from_secs(12));
    let (rss_end, fds_end) = footprint(pid);
    drop(orchestrator);

    // Every archive's file: the acknowledged appends, each once, and nothing else.
    let tally = plan.tally.lock().unwrap();
    let mut disk_problems = Vec::new();
    let mut on_disk_total = 0;
    for (id, config, served) in toteboxes {
        drop(served);
        let archive = RecordArchive::open_config(&config).map_err(|e| format!("{id}: {e}"))?;
        let query = Query::rows("ledger", ["entry"])
            .filter(Filter::Compare {
                field: "entry".into(),
                op: CompareOp::Ge,
                value: Value::Int(BASE),
            })
            .limit(10_000_000);
        let rows = archive
            .query(&query, &RowSelector::All)
            .and_then(|r| r.finalize(&query))
            .map_err(|e| format!("{id}: {e}"))?
            .rows;
        let mut seen = BTreeMap::<i64, usize>::new();
        for row in rows {
            if let Value::Int(e) = row[0] {
                *seen.entry(e).or_default() += 1;
            }
        }
        on_disk_total += seen.len();
        let expected = tally.acknowledged.get(&id).cloned().unwrap_or_default();
        let present: BTreeSet<i64> = seen.keys().copied().collect();
        let twice = seen.values().filter(|n| **n > 1).count();
        if present != expected || twice > 0 {
            disk_problems.push(format!(
                "{id}: {} acknowledged, {} on disk, {twice} twice",
                expected.len(),
                present.len()
            ));
        }
    }

    // The report.
    let warm = args.warm_up as f64;
    let after_warm: Vec<&(f64, u64, usize)> = samples.iter().filter(|s| s.0 >= warm).collect();
    let rss_warm = after_warm.first().map_or(0, |s| s.1);
    let rss_max = after_warm.iter().map(|s| s.1).max().unwrap_or(0);
    let fds_warm = after_warm.first().map_or(0, |s| s.2);
    let (fds_min, fds_max) = after_warm
        .iter()
        .fold((usize::MAX, 0), |(lo, hi), s| (lo.min(s.2), hi.max(s.2)));
    let growth = if rss_warm == 0 {
        0.0
    } else {
        (rss_max.max(rss_end) as f64 / rss_warm as f64 - 1.0) * 100.0
    };
    let mut minutes: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
    for (at, took, _) in &tally.latencies {
        minutes.entry((*at / 60.0) as u64).or_default().push(*took);
    }
    let mut all: Vec<Duration> = tally.latencies.iter().map(|l| l.1).collect();
    // Requests every source answered: what a request costs when no faulted link is in its way
    // (a request that meets a stalled link waits for that source's timeout, 1 s here).
    let mut clean: Vec<Duration> = tally
        .latencies
        .iter()
        .filter(|l| l.2)
        .map(|l| l.1)
        .collect();
    println!(
        "| minute | requests | p50 | p99 | orchestrator RSS at its end |\n| ---: | ---: | ---: | ---: | ---: |"
    );
    let mut p99s = Vec::new();
    for (minute, mut lat) in minutes {
        let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
        if (minute * 60) as f64 >= warm && lat.len() >= 50 {
            p99s.push(p99);
        }
        let rss = samples
            .iter()
            .take_while(|s| s.0 <= ((minute + 1) * 60) as f64)
            .last()
            .map_or(0, |s| s.1);
        println!(
            "| {} | {} | {:.1} ms | {:.1} ms | {rss} KiB |",
            minute + 1,
            lat.len(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    let p99_spread = match (p99s.iter().min(), p99s.iter().max()) {
        (Some(lo), Some(hi)) if !lo.is_zero() => hi.as_secs_f64() / lo.as_secs_f64(),
        _ => 1.0,
    };
    let acknowledged: usize = tally.acknowledged.values().map(BTreeSet::len).sum();
    println!();
    println!(
        "- requests: {:?}, p50 {:.1} ms, p99 {:.1} ms over the whole run",
        tally.requests,
        percentile(&mut all, 0.5).as_secs_f64() * 1e3,
        percentile(&mut all, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "- requests every source answered: {}, p50 {:.1} ms, p99 {:.1} ms",
        clean.len(),
        percentile(&mut clean, 0.5).as_secs_f64() * 1e3,
        percentile(&mut clean, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "- faults injected: {:?}; source outcomes they caused: {}",
        injected.lock().unwrap(),
        tally.injected
    );
    println!("- wrong answers: {}", tally.wrong.len());
    println!("- errors outside the faults: {}", tally.unexpected.len());
    println!(
        "- commands: {acknowledged} acknowledged ({} retries, {} answered `replayed`); on disk: {on_disk_total} records, problems: {}",
        tally.command_retries,
        tally.replayed,
        disk_problems.len()
    );
    println!(
        "- orchestrator RSS: {rss_warm} KiB after the warm-up, at most {rss_max} KiB, {rss_end} KiB at the end: growth {growth:.1}%"
    );
    println!(
        "- orchestrator file descriptors after the warm-up: {fds_warm} at first, {fds_min}..{fds_max}, {fds_end} at the end"
    );
    println!("- p99 per minute after the warm-up: largest / smallest = {p99_spread:.2}");
    for line in tally
        .wrong
        .iter()
        .chain(&tally.unexpected)
        .chain(&disk_problems)
        .take(20)
    {
        println!("  - {line}");
    }
    let mut failed = Vec::new();
    if !tally.wrong.is_empty() {
        failed.push("wrong answers");
    }
    if !tally.unexpected.is_empty() {
        failed.push("errors outside the faults");
    }
    if !disk_problems.is_empty() {
        failed.push("commands not applied exactly once");
    }
    if growth >= 10.0 {
        failed.push("orchestrator memory grew 10% or more");
    }
    if fds_end > fds_warm {
        failed.push("file descriptors grew");
    }
    if p99_spread > 2.0 {
        failed.push("p99 not stable (a minute's p99 over twice another's)");
    }
    if failed.is_empty() {
        println!("\nsoak: every check held");
        Ok(())
    } else {
        Err(format!("soak failed: {}", failed.join(", ")))
    }
}
