//! Rust bindings for the PointSav Protocol (PSP) schema.
//!
//! The protocol is defined in Cap'n Proto in `schema/`, the source of truth for every language:
//!
//! | module | schema | what it defines |
//! | --- | --- | --- |
//! | [`capability_capnp`] | `capability.capnp` | signed capability links, delegation chains, scopes |
//! | [`query_capnp`] | `query.capnp` | typed values, filters, queries, result tables, mergeable aggregates |
//! | [`totebox_capnp`] | `totebox.capnp` | the `Totebox` and `Session` interfaces, commands |
//! | [`orchestrator_capnp`] | `orchestrator.capnp` | the console-facing `Orchestrator`, fleet queries, viewports |
//! | [`archive_capnp`] | `archive.capnp` | the reference Totebox store's on-disk log (not the wire protocol) |
//!
//! The code in `src/generated/` is produced by `capnpc` and committed, so building needs only the Rust
//! toolchain. `build.rs` refuses to build when `schema/` changed without the bindings being remade;
//! run `scripts/regenerate-bindings` (needs the `capnp` compiler) after editing a schema.
//!
//! # Example
//!
//! ```
//! use psp_schema::capability_capnp::capability_body;
//!
//! let mut message = capnp::message::Builder::new_default();
//! let mut body = message.init_root::<capability_body::Builder>();
//! body.set_version(psp_schema::capability_capnp::FORMAT_VERSION);
//! body.set_not_before(1_700_000_000);
//! body.set_not_after(1_700_000_900);
//! let reader = body.into_reader();
//! assert_eq!(reader.get_not_after() - reader.get_not_before(), 900);
//! ```

#![forbid(unsafe_code)]

/// Bindings for `schema/capability.capnp`: capability bodies, signed links and chains.
pub mod capability_capnp {
    #![allow(clippy::all, clippy::unimplemented, missing_docs, unreachable_pub)]
    include!("generated/capability_capnp.rs");
}

/// Bindings for `schema/query.capnp`: values, filters, queries and results.
pub mod query_capnp {
    #![allow(clippy::all, clippy::unimplemented, missing_docs, unreachable_pub)]
    include!("generated/query_capnp.rs");
}

/// Bindings for `schema/totebox.capnp`: the Totebox and Session interfaces.
pub mod totebox_capnp {
    #![allow(clippy::all, clippy::unimplemented, missing_docs, unreachable_pub)]
    include!("generated/totebox_capnp.rs");
}

/// Bindings for `schema/archive.capnp`: the reference store's on-disk log.
pub mod archive_capnp {
    #![allow(clippy::all, clippy::unimplemented, missing_docs, unreachable_pub)]
    include!("generated/archive_capnp.rs");
}

/// Bindings for `schema/orchestrator.capnp`: the console-facing Orchestrator interface.
pub mod orchestrator_capnp {
    #![allow(clippy::all, clippy::unimplemented, missing_docs, unreachable_pub)]
    include!("generated/orchestrator_capnp.rs");
}

#[cfg(test)]
mod schema_docs;
