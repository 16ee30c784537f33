//! # orchestrator: the stateless PSP fleet aggregator
//!
//! One operator's view over many Toteboxes, without holding a record or a key to any of them.
//! This crate holds the config (fleet, tenants, defaults) and the rules that decide, before any
//! Totebox is called, which archives a request may reach (tenancy, the confused-deputy check,
//! the capability's archive set). The fan-out, merge, viewports, console service and the
//! `orchestrator` command are being built on these (see the project's issues).
//!
//! It depends on `psp-rpc` and `psp-core` only and never touches a Totebox's store.

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
