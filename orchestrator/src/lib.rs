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
//!   bounded, every source ends with one typed outcome, diode violators are quarantined (during
//!   connect too), answers stream back as they arrive within a per-source share of the request's
//!   byte budget, and a fan-out nobody waits for any more is cancelled downstream. [`gate`]
//!   shares each Totebox connection's calls fairly among tenants.
//! * [`view`]: every answer checked against the query sent (a hostile source changes only its
//!   own outcome), exact merges into one view (best-effort or strict), with label rollups.
//! * [`viewports`]: cross-entity reconciliation and executive summaries; [`report`] runs any
//!   viewport (or a plain query) end to end.
//! * [`spec`]: queries and viewports as text, for the command line and the config.
//! * [`service`] and [`console`]: the console-facing `Orchestrator` interface over pinned-key
//!   TLS, scoped per tenant with [`quota`]s, and a Rust console for it, which delegates each
//!   request a link narrowed to what it needs ([`request_link`]; a command's is bound to its
//!   digest); [`wire`] converts between the two and `schema/orchestrator.capnp`.
//! * [`metrics`]: what `orchestrator serve --metrics` exposes to Prometheus.
//! * [`cli`], [`server`], [`operate`] and [`render`]: the `orchestrator` command: capability
//!   files (`grant`, `delegate`), the reloadable server (`serve`), and the console subcommands
//!   (`fleet`, `query`, `view`, `command`) with their table and JSON output.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod console;
#[cfg(feature = "demo")]
pub mod demo;
mod downstream;
pub mod fanout;
pub mod gate;
pub mod live;
pub mod metrics;
pub mod operate;
mod pool;
pub mod quota;
pub mod region;
pub mod render;
pub mod report;
pub mod request_link;
pub mod selection;
pub mod server;
pub mod service;
pub mod spec;
pub mod tier;
pub mod view;
pub mod viewport_cache;
pub mod viewports;
pub mod web;
pub mod wire;

pub use psp_core;
pub use psp_rpc;
