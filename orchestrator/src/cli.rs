//! The `orchestrator` command's subcommands, as library functions (main only parses arguments).

use std::path::Path;

use psp_core::capability::CapabilityError;
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, PublicKey, Scope, Window};

/// Parses `query,describe,command:append` into operations.
pub fn operations(list: &str) -> Result<Vec<Operation>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|op| match op {
            "query" => Ok(Operation::Query),
            "describe" => Ok(Operation::Describe),
            other => other
                .strip_prefix("command:")
                .filter(|name| !name.is_empty())
                .map(Operation::command)
                .ok_or_else(|| {
                    format!("unknown operation {other:?}: use query, describe or command:<name>")
                }),
        })
        .collect()
}

fn archives(list: Option<&str>) -> ArchiveSet {
    match list {
        None => ArchiveSet::Any,
        Some(ids) => ArchiveSet::of_ids(ids.split(',').map(str::trim).filter(|s| !s.is_empty())),
    }
}

fn write_chain(chain: &Chain, out: &Path) -> Result<(), String> {
    std::fs::write(out, chain.to_bytes()).map_err(|e| format!("writing {}: {e}", out.display()))
}

/// Makes every unbound command of `ops` one its holder may pass on only bound to a single
/// command (see `holderBinds` in `schema/capability.capnp`).
pub fn bound_by_holder(ops: Vec<Operation>) -> Vec<Operation> {
    ops.into_iter()
        .map(|op| match op {
            Operation::Command {
                name, digest: None, ..
            } => Operation::command_bound_by_holder(&name),
            other => other,
        })
        .collect()
}

/// Mints a root capability with `key` for `holder` into `out`. Unless `unbound_commands`, the
/// holder may pass its commands on only bound to one command each: whoever it delegates to (an
/// orchestrator) can never choose which command to apply, or apply one twice.
pub fn grant(
    key: &Path,
    holder: &str,
    archive_ids: Option<&str>,
    ops: &str,
    lifetime: u32,
    unbound_commands: bool,
    out: &Path,
) -> Result<Chain, String> {
    let issuer = IdentityKey::load(key).map_err(|e| e.to_string())?;
    let holder: PublicKey = holder.parse().map_err(|e| format!("--holder: {e}"))?;
    let operations = operations(ops)?;
    let grant = Grant {
        holder,
        archives: archives(archive_ids),
        scope: Scope::everything(if unbound_commands {
            operations
        } else {
            bound_by_holder(operations)
        }),
        window: Window::lasting(psp_core::window::now(), lifetime),
    };
    let chain = Chain::mint(&issuer, grant).map_err(|e| e.to_string())?;
    write_chain(&chain, out)?;
    Ok(chain)
}

/// Delegates the capability in `chain` (held by `key`) to `holder`, narrowed, into `out`.
pub fn delegate(
    chain: &Path,
    key: &Path,
    holder: &str,
    archive_ids: Option<&str>,
    ops: Option<&str>,
    lifetime: u32,
    out: &Path,
) -> Result<Chain, String> {
    let parent = Chain::from_bytes(
        &std::fs::read(chain).map_err(|e| format!("reading {}: {e}", chain.display()))?,
    )
    .map_err(|e: CapabilityError| format!("{}: {e}", chain.display()))?;
    let signer = IdentityKey::load(key).map_err(|e| e.to_string())?;
    let last = parent.last();
    let now = psp_core::window::now();
    let window = Window::lasting(now, lifetime)
        .intersect(&last.window)
        .ok_or_else(|| {
            format!(
                "{} is not valid now (its window ended or has not begun)",
                chain.display()
            )
        })?;
    let grant = Grant {
        holder: holder.parse().map_err(|e| format!("--holder: {e}"))?,
        archives: match archive_ids {
            None => parent.archives().clone(),
            some => archives(some),
        },
        scope: match ops {
            // The parent's operations, less the commands its holder may pass on only bound to
            // one command (a console binds those per request; a file cannot).
            None => Scope {
                collections: last.scope.collections.clone(),
                operations: last
                    .scope
                    .operations
                    .iter()
                    .filter(|op| {
                        !matches!(
                            op,
                            Operation::Command {
                                digest: None,
                                holder_binds: true,
                                ..
                            }
                        )
                    })
                    .cloned()
                    .collect(),
            },
            Some(ops) => Scope {
                collections: last.scope.collections.clone(),
                operations: operations(ops)?,
            },
        },
        window,
    };
    let chain = parent.delegate(&signer, grant).map_err(|e| e.to_string())?;
    write_chain(&chain, out)?;
    Ok(chain)
}
