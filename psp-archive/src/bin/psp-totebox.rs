//! `psp-totebox`: the reference Totebox's command line.
//!
//! ```text
//! psp-totebox generate --out fleet --properties 8 --subsidiaries 4 --records 5000 --seed 7
//! psp-totebox init --config tower-a/archive.toml                 # a new, empty archive
//! psp-totebox import --config fleet/prop-01/archive.toml --collection leases leases.csv
//! psp-totebox repair --config fleet/prop-01/archive.toml         # moves a damaged tail aside
//! psp-totebox stats --config fleet/prop-01/archive.toml
//! psp-totebox keygen --out fleet/prop-01/identity.pem
//! psp-totebox serve --config fleet/prop-01/archive.toml    # needs a [server] section
//! ```
//!
//! `serve` reloads pairing, trusted roots and revocations on SIGHUP and shuts down gracefully on
//! SIGTERM or Ctrl-C. Logs go to stderr (`--log-format json` for machines); security events carry
//! the target `psp::security`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use psp_archive::RecordArchive;
use psp_archive::generate::{GenerateOptions, generate};
use psp_archive::import::{Format, format_timestamp, import_file};
use psp_core::archive::Archive;

#[derive(Parser)]
#[command(
    name = "psp-totebox",
    version,
    about = "The reference PSP Totebox: a memory-mapped record archive"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a sample fleet: property and subsidiary archives with realistic data.
    Generate {
        /// Folder to write into (must not hold archives already).
        #[arg(long)]
        out: PathBuf,
        /// Same seed, same data.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Property archives.
        #[arg(long, default_value_t = 8)]
        properties: usize,
        /// Subsidiary archives.
        #[arg(long, default_value_t = 4)]
        subsidiaries: usize,
        /// Roughly how many records per archive (100 to 10,000,000).
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
        records: u64,
    },
    /// Creates the archive a config describes: a new file holding no records yet. Every other
    /// command refuses an archive file that is missing, so a wrong path is never taken for an
    /// empty archive.
    Init {
        /// The archive's config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Moves a damaged tail aside: when the archive refuses to open because a complete frame
    /// is damaged, copies everything from there on into `<file>.damaged-at-<offset>` and cuts
    /// the archive there. Nothing is deleted.
    Repair {
        /// The archive's config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Imports a CSV or JSON Lines file into a collection (all or nothing).
    Import {
        /// The archive's config file.
        #[arg(long)]
        config: PathBuf,
        /// Create the archive first (its file must not exist yet).
        #[arg(long)]
        create: bool,
        /// The collection to append to.
        #[arg(long)]
        collection: String,
        /// The file format (default: from the file name).
        #[arg(long, value_parser = ["csv", "jsonl"])]
        format: Option<String>,
        /// The file to import.
        file: PathBuf,
    },
    /// Shows each collection's size and data time.
    Stats {
        /// The archive's config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Writes a new identity key (PKCS#8 PEM, mode 0600) and prints its public key.
    Keygen {
        /// Where to write it (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Serves the archive over PSP, as its config's `[server]` section says.
    Serve {
        /// The archive's config file.
        #[arg(long)]
        config: PathBuf,
        /// Log format on stderr.
        #[arg(long, default_value = "human", value_parser = ["human", "json"])]
        log_format: String,
        /// Serve Prometheus metrics (read-only, plain HTTP) on this address, e.g.
        /// `127.0.0.1:9465`; off by default.
        #[arg(long, value_name = "ADDRESS")]
        metrics: Option<std::net::SocketAddr>,
    },
}

/// The allocator: a fan-out allocates and frees a few small blocks per message on every
/// connection, and glibc's malloc spent about 13% of a 1,000-Totebox fan-out's CPU consolidating
/// and unlinking free chunks (`perf`, BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("psp-totebox: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Generate {
            out,
            seed,
            properties,
            subsidiaries,
            records,
        } => {
            let manifest = generate(&GenerateOptions {
                out: out.clone(),
                seed,
                properties,
                subsidiaries,
                records,
            })
            .map_err(|e| e.to_string())?;
            let total: u64 = manifest.archives.iter().map(|a| a.records).sum();
            println!(
                "wrote {} archives, {total} records, to {} (see manifest.toml)",
                manifest.archives.len(),
                out.display()
            );
            Ok(())
        }
        Command::Init { config } => {
            let archive = RecordArchive::create_config(&config).map_err(|e| e.to_string())?;
            println!(
                "created archive {} in {}",
                archive.id(),
                archive.path().display()
            );
            Ok(())
        }
        Command::Repair { config } => {
            let loaded = psp_archive::ArchiveConfig::load(&config).map_err(|e| e.to_string())?;
            match RecordArchive::repair(&loaded).map_err(|e| e.to_string())? {
                None => println!("{}: nothing to repair", loaded.file.display()),
                Some(report) => println!(
                    "moved {} damaged bytes from offset {} to {}; the archive now ends at the \
                     last good frame before them",
                    report.bytes,
                    report.offset,
                    report.moved_to.display()
                ),
            }
            Ok(())
        }
        Command::Import {
            config,
            create,
            collection,
            format,
            file,
        } => {
            let format = match format.as_deref() {
                Some("csv") => Format::Csv,
                Some(_) => Format::JsonLines,
                None => Format::from_path(&file).ok_or_else(|| {
                    format!(
                        "cannot tell the format of {}: pass --format csv or --format jsonl",
                        file.display()
                    )
                })?,
            };
            let archive = if create {
                RecordArchive::create_config(&config)
            } else {
                RecordArchive::open_config(&config)
            }
            .map_err(|e| e.to_string())?;
            let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64;
            let n = import_file(&archive, &collection, &file, format, now)
                .map_err(|e| e.to_string())?;
            println!("imported {n} records into {collection:?}");
            Ok(())
        }
        Command::Keygen { out } => {
            let key = psp_core::IdentityKey::generate().map_err(|e| e.to_string())?;
            key.save(&out).map_err(|e| e.to_string())?;
            println!("{}", key.public());
            Ok(())
        }
        Command::Serve {
            config,
            log_format,
            metrics,
        } => serve(&config, &log_format, metrics),
        Command::Stats { config } => {
            let archive = RecordArchive::open_config(&config).map_err(|e| e.to_string())?;
            let report = archive.open_report();
            if report.torn_bytes_cut > 0 {
                println!(
                    "recovered: cut a torn last append of {} bytes",
                    report.torn_bytes_cut
                );
            }
            println!(
                "archive {} ({} bytes)",
                archive.id(),
                archive.committed_len()
            );
            for schema in archive.collections() {
                let stats = archive.stats(&schema.name).unwrap_or_default();
                println!(
                    "  {:<12} {:>10} records  data time {}",
                    schema.name,
                    stats.records,
                    if stats.as_of == 0 {
                        "-".into()
                    } else {
                        format_timestamp(stats.as_of)
                    }
                );
            }
            Ok(())
        }
    }
}

fn serve(
    config: &std::path::Path,
    log_format: &str,
    metrics: Option<std::net::SocketAddr>,
) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Recording starts before the archive opens, so a recovery at open is counted.
        let metrics = match metrics {
            Some(address) => Some(psp_rpc::metrics::serve(address).await?),
            None => None,
        };
        let running = psp_archive::serve::RunningTotebox::start(config).await?;
        println!("serving {} as {}", running.local_addr(), running.key());
        if let Some(address) = metrics {
            println!("metrics on http://{address}/metrics");
        }
        let mut hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    if let Err(e) = running.reload() {
                        tracing::error!("reload refused, keeping the previous settings: {e}");
                    }
                }
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        tracing::info!("shutting down");
        running.shutdown(std::time::Duration::from_secs(10)).await;
        Ok(())
    })
}
