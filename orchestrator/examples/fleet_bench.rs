//! The fleet benchmark: one `sum(noi)` rollup over N Toteboxes, through a real orchestrator.
//!
//! Every Totebox is its own TLS endpoint with its own machine key, serving its own archive of
//! about 100 records; many share a process (at most [`PER_PROCESS`] each), as a host serving many
//! archives would. The orchestrator is the real `orchestrator serve` process; the console is this
//! process, speaking PSP to it. For each N it measures the first query (the orchestrator dials
//! every Totebox) and warm queries (p50, p99), the orchestrator's CPU per query and per archive,
//! its resident memory per connected archive, the Toteboxes' CPU per query per archive, and the
//! bytes each Totebox receives per query. With `--split`, every N runs twice more: Toteboxes and
//! console pinned to core 0 and the orchestrator to core 1 (`taskset`), so the orchestrator's own
//! cost is visible.
//!
//! ```text
//! cargo build --release -p orchestrator --bins --examples
//! target/release/examples/fleet_bench --sizes 1,10,100,1000 --split
//! ```
//!
//! It prints a Markdown table; `scripts/bench` runs it with every size and puts the table in
//! BENCHMARKS.md. CI runs a smoke (`--sizes 1,10 --queries 5`).

#[path = "support/binaries.rs"]
mod binaries;

/// The allocator `psp-totebox` runs with, so that the Toteboxes this process serves cost what
/// that binary's would.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use binaries::sibling_binary;
use clap::Parser;
use orchestrator::console::Console;
use orchestrator::selection::Selector;
use psp_archive::generate::{GenerateOptions, generate};
use psp_archive::serve::RunningTotebox;
use psp_core::query::{Aggregate, AggregateFunction, Query};
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, PublicKey, Scope, Window};
use psp_rpc::limits::Limits;

/// Toteboxes served by one process at most (file descriptors: a listener, a connection and the
/// archive's files each).
const PER_PROCESS: usize = 2_500;

/// Records per archive.
const RECORDS: u64 = 100;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks one rollup over N Toteboxes through a real orchestrator")]
struct Args {
    /// Fleet sizes to run, comma-separated.
    #[arg(long, default_value = "1,10,100,1000", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Warm queries per size (at least 5).
    #[arg(long, default_value_t = 30)]
    queries: usize,
    /// Also run each size with the Toteboxes and console on core 0 and the orchestrator on core 1.
    #[arg(long)]
    split: bool,
    /// The orchestrator's fleet worker threads to run each size with (0: one per core).
    #[arg(long, default_value = "0", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Internal: serve Toteboxes `from..to` of the fleet in `dir` (a child process).
    #[arg(long, hide = true, num_args = 2)]
    serve: Option<Vec<usize>>,
    /// Internal: the fleet folder of a child process.
    #[arg(long, hide = true)]
    dir: Option<PathBuf>,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if let (Some(range), Some(dir)) = (&args.serve, &args.dir) {
        return serve_toteboxes(dir, range[0], range[1]);
    }
    if args.queries < 5 {
        return Err("--queries must be at least 5".into());
    }
    let orchestrator_bin = sibling_binary("orchestrator")?;
    let mut rows = Vec::new();
    for &n in &args.sizes {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let fleet = Fleet::prepare(dir.path(), n)?;
        let modes: &[bool] = if args.split { &[false, true] } else { &[false] };
        for &split in modes {
            for &workers in &args.workers {
                let row = run(&fleet, &orchestrator_bin, split, workers, args.queries)?;
                eprintln!("{}", row.line());
                rows.push(row);
            }
        }
    }
    println!("{}", render(&rows));
    Ok(())
}

/// A generated fleet and the keys of its parties, on disk.
struct Fleet {
    dir: PathBuf,
    ids: Vec<String>,
    owner: IdentityKey,
    operator: IdentityKey,
}

impl Fleet {
    fn prepare(dir: &Path, n: usize) -> Result<Fleet, String> {
        let started = Instant::now();
        let manifest = generate(&GenerateOptions {
            out: dir.join("fleet"),
            seed: 12,
            properties: n,
            subsidiaries: 0,
            records: RECORDS,
        })
        .map_err(|e| e.to_string())?;
        let key = |name: &str| -> Result<IdentityKey, String> {
            let key = IdentityKey::generate().map_err(|e| e.to_string())?;
            key.save(&dir.join(format!("{name}.pem")))
                .map_err(|e| e.to_string())?;
            Ok(key)
        };
        let (owner, operator, orchestrator) =
            (key("owner")?, key("operator")?, key("orchestrator")?);
        let mut ids = Vec::new();
        for entry in &manifest.archives {
            let config = dir.join("fleet").join(&entry.config);
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&config)
                .map_err(|e| format!("{}: {e}", config.display()))?;
            writeln!(
                file,
                "\n[server]\nlisten = \"127.0.0.1:0\"\nidentity = \"identity.pem\"\npaired = [\"{}\"]\ntrusted_roots = [\"{}\"]",
                orchestrator.public(),
                owner.public()
            )
            .map_err(|e| e.to_string())?;
            IdentityKey::generate()
                .and_then(|k| k.save(&config.with_file_name("identity.pem")))
                .map_err(|e| e.to_string())?;
            ids.push(entry.id.clone());
        }
        eprintln!(
            "generated {n} archives of ~{RECORDS} records in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(Fleet {
            dir: dir.to_path_buf(),
            ids,
            owner,
            operator,
        })
    }
}

/// A child process serving some of the fleet's Toteboxes.
struct ToteboxProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ToteboxProcess {
    /// Asks for its CPU time (ns) and the bytes its Toteboxes have received.
    fn stats(&mut self) -> Result<(u64, u64), String> {
        writeln!(self.stdin, "stats").map_err(|e| e.to_string())?;
        let line = read_line(&mut self.stdout)?;
        let mut words = line.split_whitespace().map(str::parse::<u64>);
        match (words.next(), words.next()) {
            (Some(Ok(cpu)), Some(Ok(bytes))) => Ok((cpu, bytes)),
            _ => Err(format!("a Totebox process said {line:?}")),
        }
    }
}

impl Drop for ToteboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("a child process ended early".into()),
        Ok(_) => Ok(line.trim_end().to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn pinned(program: &Path, core: Option<usize>) -> Command {
    match core {
        Some(core) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// One size in one placement: the figures of one table row.
struct Row {
    n: usize,
    split: bool,
    /// Fleet worker threads (0: one per core).
    workers: usize,
    first: Duration,
    /// Sources that did not answer the first query (dials that timed out).
    first_missing: usize,
    warm: Vec<Duration>,
    orchestrator_cpu: Duration,
    totebox_cpu: Duration,
    bytes_per_totebox: f64,
    rss_per_archive: f64,
    queries: usize,
}

impl Row {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.warm.clone();
        sorted.sort();
        sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
    }

    fn per_query_per_archive(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.queries as f64 / self.n as f64
    }

    fn line(&self) -> String {
        format!(
            "n={} split={} workers={} first={:.1}ms p50={:.2}ms p99={:.2}ms orchestrator={:.1}us/archive toteboxes={:.1}us/archive bytes={:.0}/totebox rss={:.1}KiB/archive",
            self.n,
            self.split,
            self.workers,
            ms(self.first),
            ms(self.percentile(0.5)),
            ms(self.percentile(0.99)),
            self.per_query_per_archive(self.orchestrator_cpu),
            self.per_query_per_archive(self.totebox_cpu),
            self.bytes_per_totebox,
            self.rss_per_archive / 1024.0
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(
    fleet: &Fleet,
    orchestrator_bin: &Path,
    split: bool,
    workers: usize,
    queries: usize,
) -> Result<Row, String> {
    let n = fleet.ids.len();
    let this = std::env::current_exe().map_err(|e| e.to_string())?;
    // The Toteboxes, PER_PROCESS to a process.
    let mut processes = Vec::new();
    let mut fleet_toml = String::new();
    for from in (0..n).step_by(PER_PROCESS) {
        let to = (from + PER_PROCESS).min(n);
        let mut child = pinned(&this, split.then_some(0))
            .arg("--serve")
            .arg(from.to_string())
            .arg(to.to_string())
            .arg("--dir")
            .arg(&fleet.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting a Totebox process: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        for _ in from..to {
            fleet_toml.push_str(&read_line(&mut stdout)?);
            fleet_toml.push('\n');
        }
        processes.push(ToteboxProcess {
            child,
            stdin,
            stdout,
        });
    }
    // The dialer connects the fleet at start and then stays quiet for the run: its keepalive
    // pings would otherwise land in the measured bytes and CPU.
    let config = format!(
        "identity = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n[defaults]\nsource_timeout_ms = 20000\ndeadline_ms = 60000\nmax_concurrency = 1024\nfleet_workers = {workers}\nredial_ms = 600000\n\n[[tenants]]\nname = \"bench\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"property\" }}]\nquotas = {{ archives_per_query = {n}, requests_per_minute = 1000000 }}\n{}",
        fleet.dir.join("orchestrator.pem").display(),
        fleet.operator.public(),
        fleet_toml.replace("\\n", "\n"),
    );
    let config_path = fleet.dir.join("orchestrator.toml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let mut orchestrator = pinned(orchestrator_bin, split.then_some(1))
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the orchestrator: {e}"))?;
    let mut orchestrator_out = BufReader::new(orchestrator.stdout.take().ok_or("no stdout")?);
    let killed = KillOnDrop(&mut orchestrator);
    let pid = killed.0.id();
    let line = read_line(&mut orchestrator_out)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let (address, key): (SocketAddr, PublicKey) = match words.as_slice() {
        ["serving", "consoles", "on", address, "as", key] => (
            address.parse().map_err(|e| format!("{e}"))?,
            key.parse().map_err(|e| format!("{e:?}"))?,
        ),
        _ => return Err(format!("the orchestrator said {line:?}")),
    };
    let rss_before = rss(pid)?;

    let grant = Chain::mint(
        &fleet.owner,
        Grant {
            holder: fleet.operator.public(),
            archives: ArchiveSet::of_ids(fleet.ids.iter().map(String::as_str)),
            scope: Scope::everything(vec![Operation::Query]),
            window: Window::lasting(psp_core::window::now() - 5, 3_600),
        },
    )
    .map_err(|e| e.to_string())?;
    let query = Query::aggregate(
        "statements",
        [],
        [Aggregate::of(AggregateFunction::Sum, "noi")],
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let operator = fleet.operator.clone();
    let (first, warm, orchestrator_cpu, totebox_cpu, received) =
        local.block_on(&runtime, async {
            let console = Console::connect(address, &operator, key, Limits::default())
                .await
                .map_err(|e| e.to_string())?;
            // One request; its wall time and how many sources did not answer.
            let ask = || async {
                let started = Instant::now();
                let report = console
                    .query(&Selector::All, &grant, &query)
                    .await
                    .map_err(|e| e.to_string())?;
                let missing = report
                    .outcomes
                    .iter()
                    .filter(|o| !matches!(o.status, orchestrator::fanout::SourceStatus::Ok))
                    .count();
                if report.outcomes.len() != n {
                    return Err(format!(
                        "{} outcomes for {n} archives",
                        report.outcomes.len()
                    ));
                }
                Ok::<_, String>((started.elapsed(), missing))
            };
            // The first query dials every Totebox; at the largest sizes some dials may time out
            // (they are then dialed again by the next query), so warm up until every source answers.
            let first = ask().await?;
            let mut complete = 0;
            for _ in 0..10 {
                if ask().await?.1 == 0 {
                    complete += 1;
                    if complete == 2 {
                        break;
                    }
                }
            }
            if complete < 2 {
                return Err("the fleet never answered whole".into());
            }
            let complete = || async {
                match ask().await? {
                    (elapsed, 0) => Ok(elapsed),
                    (_, missing) => Err(format!("{missing} sources did not answer a warm query")),
                }
            };
            let cpu_before = cpu_ns(pid)?;
            let mut totebox_before = (0, 0);
            for p in &mut processes {
                let (cpu, bytes) = p.stats()?;
                totebox_before = (totebox_before.0 + cpu, totebox_before.1 + bytes);
            }
            let mut warm = Vec::with_capacity(queries);
            for _ in 0..queries {
                warm.push(complete().await?);
            }
            let orchestrator_cpu = cpu_ns(pid)? - cpu_before;
            let mut totebox_after = (0, 0);
            for p in &mut processes {
                let (cpu, bytes) = p.stats()?;
                totebox_after = (totebox_after.0 + cpu, totebox_after.1 + bytes);
            }
            Ok::<_, String>((
                first,
                warm,
                Duration::from_nanos(orchestrator_cpu),
                Duration::from_nanos(totebox_after.0 - totebox_before.0),
                totebox_after.1 - totebox_before.1,
            ))
        })?;
    let rss_after = rss(pid)?;
    drop(killed);
    drop(orchestrator_out);
    drop(processes);
    Ok(Row {
        n,
        split,
        workers,
        first: first.0,
        first_missing: first.1,
        warm,
        orchestrator_cpu,
        totebox_cpu,
        bytes_per_totebox: received as f64 / queries as f64 / n as f64,
        rss_per_archive: (rss_after.saturating_sub(rss_before)) as f64 / n as f64,
        queries,
    })
}

struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process's resident memory in bytes.
fn rss(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no VmRSS".to_owned())
}

/// A process's CPU time over all its threads, in nanoseconds (the scheduler's own count, finer
/// than the 10 ms ticks of `/proc/<pid>/stat`).
fn cpu_ns(pid: u32) -> Result<u64, String> {
    let mut total = 0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    for task in tasks.flatten() {
        // A thread may end between listing and reading: it then counts nothing more.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// The child: serve Toteboxes `from..to`, print each one's fleet entry, then answer `stats`.
fn serve_toteboxes(dir: &Path, from: usize, to: usize) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ids: Vec<String> = {
        let manifest =
            std::fs::read_to_string(dir.join("fleet/manifest.toml")).map_err(|e| e.to_string())?;
        let manifest: toml::Table = manifest.parse().map_err(|e| format!("{e}"))?;
        manifest
            .get("archives")
            .and_then(toml::Value::as_array)
            .ok_or("the manifest lists no archives")?
            .iter()
            .filter_map(|a| a.get("id")?.as_str().map(str::to_owned))
            .collect()
    };
    let served = ids
        .get(from..to)
        .ok_or_else(|| format!("archives {from}..{to} of {}", ids.len()))?;
    let toteboxes = runtime.block_on(async {
        let mut toteboxes = Vec::new();
        let mut out = std::io::stdout().lock();
        for id in served {
            let config = dir.join("fleet").join(id).join("archive.toml");
            let totebox = RunningTotebox::start(&config)
                .await
                .map_err(|e| format!("{id}: {e}"))?;
            // One line per entry (TOML newlines escaped), read back by the parent.
            writeln!(
                out,
                "[[fleet]]\\nid = {:?}\\naddress = \"{}\"\\nkey = \"{}\"\\nlabels = {{ entity = \"property\" }}",
                id,
                totebox.local_addr(),
                totebox.key()
            )
            .map_err(|e| e.to_string())?;
            toteboxes.push(totebox);
        }
        out.flush().map_err(|e| e.to_string())?;
        Ok::<_, String>(toteboxes)
    })?;
    let pid = std::process::id();
    for line in std::io::stdin().lock().lines() {
        match line.map_err(|e| e.to_string())?.as_str() {
            "stats" => {
                let bytes: u64 = toteboxes.iter().map(RunningTotebox::bytes_received).sum();
                println!("{} {bytes}", cpu_ns(pid)?);
            }
            _ => break,
        }
    }
    Ok(())
}

fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| archives | placement | first query | warm p50 | warm p99 | orchestrator CPU per query | per archive | Toteboxes' CPU per archive | bytes to each Totebox | orchestrator memory per connected archive |"
    );
    let _ = writeln!(
        out,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} ms{} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} µs | {:.1} µs | {:.0} B | {:.1} KiB |",
            row.n,
            match (row.split, row.workers) {
                (false, 0) => "shared".to_owned(),
                (true, 0) => "split".to_owned(),
                (split, w) => format!(
                    "{}, {w} fleet worker{}",
                    if split { "split" } else { "shared" },
                    if w == 1 { "" } else { "s" }
                ),
            },
            ms(row.first),
            match row.first_missing {
                0 => String::new(),
                missing => format!(" ({missing} dials timed out)"),
            },
            ms(row.percentile(0.5)),
            ms(row.percentile(0.99)),
            row.orchestrator_cpu.as_secs_f64() * 1e3 / row.queries as f64,
            row.per_query_per_archive(row.orchestrator_cpu),
            row.per_query_per_archive(row.totebox_cpu),
            row.bytes_per_totebox,
            row.rss_per_archive / 1024.0
        );
    }
    // The one ratio the issue asks for: a large fleet's warm query against one archive's, in
    // the same run and placement.
    let mut ratios = BTreeMap::new();
    for row in rows {
        ratios
            .entry((row.split, row.workers))
            .or_insert_with(Vec::new)
            .push((
                row.n,
                row.percentile(0.5),
                row.rss_per_archive * row.n as f64,
            ));
    }
    for ((split, _), sizes) in ratios {
        // What each further connection costs, without the fixed overhead that dominates small
        // fleets: the slope of the memory growth between the two largest sizes.
        if let [.., (small, _, small_rss), (large, _, large_rss)] = sizes.as_slice() {
            let _ = writeln!(
                out,
                "\n{} placement, memory per connected archive between {small} and {large} archives: {:.1} KiB.",
                if split { "Split" } else { "Shared" },
                (large_rss - small_rss) / (large - small) as f64 / 1024.0
            );
        }
        let Some(one) = sizes.iter().find(|(n, _, _)| *n == 1) else {
            continue;
        };
        let against: Vec<String> = sizes
            .iter()
            .filter(|(n, _, _)| *n > 1)
            .map(|(n, p50, _)| {
                format!(
                    "{n} archives {:.1}×",
                    p50.as_secs_f64() / one.1.as_secs_f64()
                )
            })
            .collect();
        if !against.is_empty() {
            let _ = writeln!(
                out,
                "\n{} placement, warm p50 against one archive's: {}.",
                if split { "Split" } else { "Shared" },
                against.join(", ")
            );
        }
    }
    out
}
