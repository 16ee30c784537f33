//! `orchestrator`: the PSP fleet aggregator's command.
//!
//! ```text
//! orchestrator keygen --out orchestrator.pem
//! orchestrator grant --key owner.pem --holder ed25519:<operator> --archives prop-01,prop-02 \
//!     --operations query,describe --lifetime 86400 --out operator.cap
//! orchestrator delegate --chain operator.cap --key operator.pem --holder ed25519:<orchestrator> \
//!     --lifetime 300 --out request.cap
//! orchestrator serve --config orchestrator.toml
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "The stateless PSP fleet aggregator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        /// Narrow to these operations.
        #[arg(long)]
        operations: Option<String>,
        /// Seconds it stays valid (never past the parent).
        #[arg(long, default_value_t = 300)]
        lifetime: u32,
        /// The capability file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Serves consoles, as the config says.
    Serve {
        /// The orchestrator's config file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Keygen { out } => psp_core::IdentityKey::generate()
            .map_err(|e| e.to_string())
            .and_then(|key| {
                key.save(&out).map_err(|e| e.to_string())?;
                println!("{}", key.public());
                Ok(())
            }),
        Command::Grant {
            key,
            holder,
            archives,
            operations,
            lifetime,
            out,
        } => orchestrator::cli::grant(
            &key,
            &holder,
            archives.as_deref(),
            &operations,
            lifetime,
            &out,
        )
        .map(|c| println!("wrote {} (capability {})", out.display(), c.last().id)),
        Command::Delegate {
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
        Command::Serve { config } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|runtime| {
                    runtime.block_on(orchestrator::cli::serve(
                        &config,
                        |address, key| println!("serving consoles on {address} as {key}"),
                        async {
                            use tokio::signal::unix::{SignalKind, signal};
                            let mut terminate =
                                signal(SignalKind::terminate()).expect("a signal handler");
                            tokio::select! {
                                _ = terminate.recv() => {}
                                _ = tokio::signal::ctrl_c() => {}
                            }
                        },
                    ))
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
