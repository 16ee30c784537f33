//! # orchestrator: the stateless PSP fleet aggregator
//!
//! Will hold the config, fleet registry, tenancy, viewports, the console-facing service and the
//! `orchestrator` CLI (see `../shared/DESIGN.md`). It depends on `psp-rpc` and `psp-core` only and
//! never touches a Totebox's store. Nothing is implemented here yet.

#![forbid(unsafe_code)]

pub use psp_core;
pub use psp_rpc;
