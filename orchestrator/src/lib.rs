//! # orchestrator: the stateless PSP fleet aggregator
//!
//! One operator's view over many Toteboxes, without holding a record or a key to any of them.
//! It depends on `psp-rpc` and `psp-core` only and never touches a Totebox's store.
//!
//! ## Structure
//!
//! * [`config`]: the fleet, the tenants and their quotas, the defaults; validated at load, with
//!   errors that name the key to fix.
//! * [`selection`]: what a request may reach, decided before any Totebox is called: the
//!   tenant's archives only, the chain's last issuer must be the console's operator (no confused
//!   deputy), and only archives the chain names are asked.
//! * [`fanout`]: the fleet thread, which pools one connection per Totebox for every request and
//!   tenant. Each source gets its own timeout under the request's deadline, concurrency is
//!   bounded, every source ends with one typed outcome, diode violators are quarantined, and a
//!   fan-out nobody waits for any more is cancelled downstream.
//! * [`view`]: exact merges into one view (best-effort or strict), with label rollups.
//! * [`viewports`]: cross-entity reconciliation and executive summaries.
//! * [`service`] and [`console`]: the console-facing `Orchestrator` interface over pinned-key
//!   TLS, scoped per tenant with quotas, and a Rust console for it.
//! * [`cli`]: the `orchestrator` command's subcommands (`keygen`, `grant`, `delegate`, `serve`).

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod console;
pub mod fanout;
pub mod selection;
pub mod service;
pub mod view;
pub mod viewports;

pub use psp_core;
pub use psp_rpc;
