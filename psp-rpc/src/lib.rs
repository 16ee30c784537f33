//! # psp-rpc: the PointSav Protocol's RPC framework
//!
//! Will hold the pinned-key TLS transport, the capnp-rpc glue on tokio, the Totebox server that
//! wraps any `Archive`, the Totebox client and the diode guard (see `../shared/DESIGN.md`, crate
//! table). It builds on [`psp_core`], which already verifies the capabilities this crate's server
//! will receive. Nothing is implemented here yet: the crate exists so the workspace has its final
//! shape and dependency direction (`psp-rpc` depends on `psp-core`, never the reverse).

#![forbid(unsafe_code)]

pub use psp_core;
