//! `orchestrator`: the PSP fleet aggregator's command.
//!
//! ```text
//! orchestrator keygen --out orchestrator.pem
//! orchestrator grant --key owner.pem --holder ed25519:<operator> --archives prop-01,prop-02 \
//!     --operations query,describe --lifetime 86400 --out operator.cap
//! orchestrator delegate --chain operator.cap --key operator.pem --holder ed25519:<orchestrator> \
//!     --lifetime 300 --out request.cap
//! orchestrator serve --config orchestrator.toml [--log-format json]
//! orchestrator fleet --connect 10.0.0.5:7400 --orchestrator-key ed25519:<hex> --key operator.pem
//! orchestrator query   <connection> --chain operator.cap --label entity=property \
//!     --collection statements --where "period >= '2025-11'" --aggregate "sum(noi) as noi"
//! orchestrator view    <connection> --chain operator.cap --name noi-by-region
//! orchestrator command <connection> --chain operator.cap --name seal --collection ledger \
//!     --idempotency-key seal-2026-10-ledger
//! orchestrator demo
//! ```
//!
//! Console subcommands print tables; `--json` prints one JSON document for scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use orchestrator::operate::{self, Target};
use orchestrator::render;
use orchestrator::viewport_cache::ViewportCache;

#[derive(Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "The stateless PSP fleet aggregator"
)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Writes a new identity key (PKCS#8 PEM, mode 0600) and prints its public key.
    Keygen {
        /// Where to write it (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Mints a capability (as a trusted root) into a file.
    Grant {
        /// The issuing key (a root the Toteboxes trust).
        #[arg(long)]
        key: PathBuf,
        /// Who receives it (ed25519:<hex>).
        #[arg(long)]
        holder: String,
        /// Archive ids (comma-separated); every archive when left out.
        #[arg(long)]
        archives: Option<String>,
        /// query, describe, command:<name> (comma-separated).
        #[arg(long, default_value = "query,describe")]
        operations: String,
        /// Seconds it stays valid.
        #[arg(long, default_value_t = 86_400)]
        lifetime: u32,
        /// Let the holder delegate its commands unbound (by default it may pass each command
        /// on only bound to one command, so an orchestrator never chooses what to apply).
        #[arg(long)]
        unbound_commands: bool,
        /// The capability file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Delegates a capability you hold, narrowed, into a file.
    Delegate {
        /// The capability file you hold.
        #[arg(long)]
        chain: PathBuf,
        /// Your key (the holder of that capability).
        #[arg(long)]
        key: PathBuf,
        /// Who receives it (ed25519:<hex>), e.g. the orchestrator.
        #[arg(long)]
        holder: String,
        /// Narrow to these archive ids (comma-separated).
        #[arg(long)]
        archives: Option<String>,
        /// Narrow to these operations (default: the parent's, less the commands its holder may
        /// pass on only bound to one command, which a console binds per request).
        #[arg(long)]
        operations: Option<String>,
        /// Seconds it stays valid (never past the parent).
        #[arg(long, default_value_t = 300)]
        lifetime: u32,
        /// The capability file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks that the orchestrator this config describes is serving: connects to its
    /// `listen` address (loopback when it listens on every address) and completes a TLS
    /// handshake in which the server proves the config's identity key, as every console's
    /// connection starts. Exit status 0 when it does: a readiness probe (Kubernetes, systemd,
    /// a load balancer's health check). Sends no request.
    Probe {
        /// The orchestrator's config file.
        #[arg(long)]
        config: PathBuf,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2_000)]
        timeout_ms: u64,
    },
    /// Serves consoles, as the config says. SIGHUP reloads the config; SIGTERM stops gracefully.
    Serve {
        /// The orchestrator's config file.
        #[arg(long)]
        config: PathBuf,
        /// Log lines as `human` text or `json` objects (on stderr).
        #[arg(long, default_value = "human", value_parser = ["human", "json"])]
        log_format: String,
        /// Serve Prometheus metrics (read-only, plain HTTP) on this address, e.g.
        /// `127.0.0.1:9464`; off by default.
        #[arg(long, value_name = "ADDRESS")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Lists your tenant's archives with their health.
    Fleet {
        #[command(flatten)]
        connection: Connection,
    },
    /// Runs a query over many archives and prints the merged answer.
    Query {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        request: RequestArgs,
        /// The collection to read.
        #[arg(long)]
        collection: String,
        /// A filter term such as "period >= '2025-11'" (repeat: all must hold).
        #[arg(long = "where")]
        filter: Vec<String>,
        /// Fields to return per record (comma-separated), for a rows query.
        #[arg(long)]
        fields: Option<String>,
        /// Group-by fields (comma-separated).
        #[arg(long)]
        group_by: Option<String>,
        /// An aggregate such as "sum(noi) as noi" (repeat for several).
        #[arg(long)]
        aggregate: Vec<String>,
        /// An order key such as "noi desc" (repeat, most significant first).
        #[arg(long)]
        order: Vec<String>,
        /// At most this many rows after the merge.
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
    /// Computes a viewport: one defined in the orchestrator's config (--name) or in a file.
    View {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        request: RequestArgs,
        /// A viewport defined in the orchestrator's config. Its definition is kept under
        /// $XDG_CACHE_HOME/os-orchestration/ (or ~/.cache/) so the next run is one call; the
        /// orchestrator refuses a copy its config no longer matches, and it is asked for again.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        name: Option<String>,
        /// A TOML file with one viewport (as in the config's [[viewports]]).
        #[arg(long)]
        file: Option<PathBuf>,
        /// List only the balances of a reconciliation that did not match.
        #[arg(long)]
        exceptions: bool,
    },
    /// Sends a command to every selected archive and prints each archive's outcome.
    Command {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        request: RequestArgs,
        /// The command's name (e.g. ping, seal, snapshot, append).
        #[arg(long)]
        name: String,
        /// The collection it targets (empty: archive-wide).
        #[arg(long, default_value = "")]
        collection: String,
        /// 16 to 64 bytes naming this command; retrying with the same key never applies twice.
        #[arg(long)]
        idempotency_key: String,
        /// A file holding the command's serialized arguments.
        #[arg(long)]
        arguments: Option<PathBuf>,
        /// For `seal`: the period to close (e.g. 2026-10).
        #[arg(long)]
        period: Option<String>,
        /// For `snapshot`: the snapshot's file name.
        #[arg(long)]
        snapshot_name: Option<String>,
    },
    /// Serves a console in your browser: the fleet, and the config's viewports as charts,
    /// tables and figure tiles. It holds your key and grant and talks to the orchestrator as
    /// any console does; it listens on loopback unless you say otherwise.
    ConsoleWeb {
        #[command(flatten)]
        connection: Connection,
        /// The capability file you hold (delegated to the orchestrator per request).
        #[arg(long)]
        chain: PathBuf,
        /// Where to serve the pages.
        #[arg(long, default_value = "127.0.0.1:7480")]
        listen: std::net::SocketAddr,
        /// Offer commands on a page (each sent only after a confirmation page); off by
        /// default.
        #[arg(long)]
        commands: bool,
        /// A viewport of the orchestrator's config to offer (repeat for several), optionally
        /// over archives selected by label: `noi-by-region@entity=property` (labels
        /// comma-separated).
        #[arg(long = "viewport")]
        viewports: Vec<String>,
    },
    /// Starts a local fleet of 12 Toteboxes and an orchestrator, runs three viewports, exits;
    /// with --web, then serves the web console over them until Ctrl-C.
    #[cfg(feature = "demo")]
    Demo {
        /// Then serve the web console over the demo fleet (until Ctrl-C).
        #[arg(long)]
        web: bool,
        /// Where the web console listens.
        #[arg(long, default_value = "127.0.0.1:7480", requires = "web")]
        listen: std::net::SocketAddr,
    },
}

/// Where and as whom a console subcommand connects.
#[derive(Args)]
struct Connection {
    /// The orchestrator's console address (host:port).
    #[arg(long)]
    connect: String,
    /// The orchestrator's machine key (ed25519:<hex>), pinned.
    #[arg(long)]
    orchestrator_key: String,
    /// Your operator key file.
    #[arg(long)]
    key: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What a fan-out request carries besides its query.
#[derive(Args)]
struct RequestArgs {
    /// The capability file you hold (delegated to the orchestrator for this request) or one
    /// already delegated to the orchestrator.
    #[arg(long)]
    chain: PathBuf,
    /// Archive ids (comma-separated); every archive of your tenant when left out.
    #[arg(long)]
    archives: Option<String>,
    /// Select archives by label, key=value (repeat: all must match).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The whole request's deadline in milliseconds (default 30000; the orchestrator shortens
    /// it to its configured deadline). The capability delegated for the request ends with it.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// One archive's time to answer, in milliseconds.
    #[arg(long)]
    source_timeout_ms: Option<u64>,
    /// Fail unless every archive answers.
    #[arg(long, conflicts_with = "best_effort")]
    strict: bool,
    /// Answer with what arrived (the outcomes say what is missing).
    #[arg(long)]
    best_effort: bool,
}

impl RequestArgs {
    fn deadline(&self) -> std::time::Duration {
        self.deadline_ms
            .map_or(operate::DEFAULT_DEADLINE, std::time::Duration::from_millis)
    }

    fn options(&self) -> orchestrator::console::Options {
        use orchestrator::config::Partial;
        orchestrator::console::Options {
            deadline: Some(self.deadline()),
            source_timeout: self.source_timeout_ms.map(std::time::Duration::from_millis),
            partial: match (self.strict, self.best_effort) {
                (true, _) => Some(Partial::Strict),
                (_, true) => Some(Partial::BestEffort),
                _ => None,
            },
        }
    }
}

fn target(c: &Connection) -> Result<Target, String> {
    Target::new(&c.connect, &c.orchestrator_key, &c.key)
}

fn split(list: Option<&str>) -> Vec<String> {
    list.map(|l| {
        l.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

fn print_report(report: &orchestrator::report::Report, json: bool, exceptions_only: bool) {
    if json {
        println!("{}", render::report_json(report));
    } else {
        print!("{}", render::report(report, exceptions_only));
    }
}

fn init_logs(format: &str) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn probe(config: PathBuf, timeout_ms: u64) -> Result<(), String> {
    let config = orchestrator::config::Config::load(&config).map_err(|e| e.to_string())?;
    let identity = psp_core::IdentityKey::load(&config.identity).map_err(|e| e.to_string())?;
    let key = identity.public();
    let mut address: std::net::SocketAddr = tokio::net::lookup_host(&config.listen)
        .await
        .map_err(|e| format!("listen {:?}: {e}", config.listen))?
        .next()
        .ok_or_else(|| format!("listen {:?} names no address", config.listen))?;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    // The orchestrator's own key, which it refuses as it refuses any key that is no operator's,
    // but quietly (`PairedKeys::refuse_quietly`): the handshake completes on this side once the
    // server has proved its key, before it judges ours.
    let timeout = std::time::Duration::from_millis(timeout_ms);
    tokio::time::timeout(timeout, psp_rpc::client::dial(address, &identity, key))
        .await
        .map_err(|_| format!("{address}: no TLS handshake within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    println!("serving on {address} as {key}");
    Ok(())
}

async fn serve(config: PathBuf, metrics: Option<std::net::SocketAddr>) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let metrics = match metrics {
        Some(address) => Some(psp_rpc::metrics::serve(address).await?),
        None => None,
    };
    let server = orchestrator::server::RunningOrchestrator::start(&config).await?;
    println!(
        "serving consoles on {} as {}",
        server.local_addr(),
        server.key()
    );
    if let Some(address) = metrics {
        println!("metrics on http://{address}/metrics");
    }
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                if let Err(e) = server.reload() {
                    tracing::error!("kept the running config: {e}");
                }
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down: finishing running requests");
    server.shutdown(std::time::Duration::from_secs(10)).await;
    Ok(())
}

/// The allocator: a fan-out allocates and frees a few small blocks per message on every
/// connection, and glibc's malloc spent about 13% of a 1,000-Totebox fan-out's CPU consolidating
/// and unlinking free chunks (`perf`, BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Action::Keygen { out } => psp_core::IdentityKey::generate()
            .map_err(|e| e.to_string())
            .and_then(|key| {
                key.save(&out).map_err(|e| e.to_string())?;
                println!("{}", key.public());
                Ok(())
            }),
        Action::Grant {
            key,
            holder,
            archives,
            operations,
            lifetime,
            unbound_commands,
            out,
        } => orchestrator::cli::grant(
            &key,
            &holder,
            archives.as_deref(),
            &operations,
            lifetime,
            unbound_commands,
            &out,
        )
        .map(|c| println!("wrote {} (capability {})", out.display(), c.last().id)),
        Action::Delegate {
            chain,
            key,
            holder,
            archives,
            operations,
            lifetime,
            out,
        } => orchestrator::cli::delegate(
            &chain,
            &key,
            &holder,
            archives.as_deref(),
            operations.as_deref(),
            lifetime,
            &out,
        )
        .map(|c| println!("wrote {} (capability {})", out.display(), c.last().id)),
        Action::Serve {
            config,
            log_format,
            metrics,
        } => {
            init_logs(&log_format);
            tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|runtime| runtime.block_on(serve(config, metrics)))
        }
        Action::Probe { config, timeout_ms } => operate::run(probe(config, timeout_ms)),
        Action::Fleet { connection } => operate::run(async {
            // Connecting already asked `fleet()` to confirm the key; its answer is the listing.
            let console = target(&connection)?.connect().await?;
            let archives = console.listed_at_connect().to_vec();
            if connection.json {
                println!("{}", render::fleet_json(&archives));
            } else {
                print!("{}", render::fleet(&archives));
            }
            Ok(())
        }),
        Action::Query {
            connection,
            request,
            collection,
            filter,
            fields,
            group_by,
            aggregate,
            order,
            limit,
        } => operate::run(async {
            let query = orchestrator::spec::QuerySpec {
                collection,
                filter,
                fields: split(fields.as_deref()),
                group_by: split(group_by.as_deref()),
                aggregates: aggregate,
                order,
                limit,
            }
            .to_query()?;
            let selector = operate::selector(request.archives.as_deref(), &request.labels)?;
            let target = target(&connection)?;
            let grant = target.grant(&request.chain)?;
            let console = target.connect_for(&selector).await?;
            let in_flight = console
                .start_query(&selector, &grant, &query, request.options())
                .map_err(|e| e.to_string())?;
            let report = operate::wait(&in_flight).await.map_err(|e| e.to_string())?;
            print_report(&report, connection.json, false);
            Ok(())
        }),
        Action::View {
            connection,
            request,
            name,
            file,
            exceptions,
        } => operate::run(async {
            let selector = operate::selector(request.archives.as_deref(), &request.labels)?;
            let target = target(&connection)?;
            let grant = target.grant(&request.chain)?;
            let console = target.connect_for(&selector).await?;
            let report = match (name, file) {
                (Some(name), _) => {
                    let copies = ViewportCache::for_user(&target.orchestrator);
                    operate::view_by_name(
                        &console,
                        copies.as_ref(),
                        &selector,
                        &grant,
                        &name,
                        (request.options(), true),
                    )
                    .await?
                }
                (None, Some(file)) => {
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| format!("reading {}: {e}", file.display()))?;
                    let viewport = toml::from_str::<orchestrator::spec::ViewportSpec>(&text)
                        .map_err(|e| e.to_string())
                        .and_then(|spec| spec.to_viewport())
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    let in_flight = console
                        .start_view(&selector, &grant, &viewport, request.options())
                        .map_err(|e| e.to_string())?;
                    operate::wait(&in_flight).await.map_err(|e| e.to_string())?
                }
                (None, None) => return Err("give --name or --file".into()),
            };
            print_report(&report, connection.json, exceptions);
            Ok(())
        }),
        Action::Command {
            connection,
            request,
            name,
            collection,
            idempotency_key,
            arguments,
            period,
            snapshot_name,
        } => operate::run(async {
            let arguments = operate::command_arguments(
                &name,
                arguments.as_deref(),
                period.as_deref(),
                snapshot_name.as_deref(),
            )?;
            if !(16..=64).contains(&idempotency_key.len()) {
                return Err(format!(
                    "--idempotency-key is {} bytes; use 16 to 64 (e.g. what and when: seal-2026-10-ledger)",
                    idempotency_key.len()
                ));
            }
            let command = psp_rpc::client::CommandSpec {
                name,
                collection,
                idempotency_key: idempotency_key.into_bytes(),
                arguments,
            };
            let selector = operate::selector(request.archives.as_deref(), &request.labels)?;
            let target = target(&connection)?;
            let grant = target.grant(&request.chain)?;
            let console = target.connect_for(&selector).await?;
            let results = console
                .command(&selector, &grant, &command, request.options())
                .await
                .map_err(|e| e.to_string())?;
            if connection.json {
                println!("{}", render::commands_json(&results));
            } else {
                print!("{}", render::commands(&results));
            }
            Ok(())
        }),
        Action::ConsoleWeb {
            connection,
            chain,
            listen,
            commands,
            viewports,
        } => operate::run(async {
            let target = target(&connection)?;
            let grant = target.grant(&chain)?;
            // Connected with the tenant's listing: pages select all archives, or by label.
            let console = target
                .connect_for(&orchestrator::selection::Selector::All)
                .await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot serve the web console on {listen}: {e}"))?;
            let address = listener.local_addr().map_err(|e| e.to_string())?;
            let copies = ViewportCache::for_user(&target.orchestrator);
            let (viewports, selections) = viewports
                .iter()
                .map(|v| match v.split_once('@') {
                    Some((name, labels)) => (name.to_owned(), labels.to_owned()),
                    None => (v.clone(), String::new()),
                })
                .unzip();
            let web = std::rc::Rc::new(orchestrator::web::WebConsole::new(
                (console, target),
                grant,
                (viewports, selections),
                copies,
                (address, commands),
            ));
            // The key in it is this console's secret: whoever has the address can act as you.
            println!("web console on {}", web.url());
            if address.ip().is_loopback() {
                println!("bound to loopback: only this machine can open it");
            } else {
                println!(
                    "bound to {}: other machines can reach it; its key keeps them out",
                    address.ip()
                );
            }
            if commands {
                println!("commands are offered on the page, each after a confirmation");
            }
            orchestrator::web::serve(listener, web).await;
            Ok(())
        }),
        #[cfg(feature = "demo")]
        Action::Demo { web, listen } => {
            tempfile::tempdir()
                .map_err(|e| e.to_string())
                .and_then(|dir| {
                    // The console is `!Send`: it runs on a LocalSet; servers use the runtime's workers.
                    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
                    tokio::task::LocalSet::new().block_on(
                        &runtime,
                        orchestrator::demo::run(
                            dir.path(),
                            |line| println!("{line}"),
                            web.then_some(listen),
                        ),
                    )
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("orchestrator: {message}");
            ExitCode::FAILURE
        }
    }
}
