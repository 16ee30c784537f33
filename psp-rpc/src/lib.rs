//! # psp-rpc: the PointSav Protocol's RPC framework
//!
//! Turns any [`psp_core::archive::Archive`] into a PSP Totebox on the network and gives
//! aggregators a client for it, with machine pairing and the one-way command discipline
//! enforced by code.
//!
//! ## Structure
//!
//! * [`tls`]: pinned-key mutual TLS 1.3 (rustls with `ring`): self-signed certificates derived
//!   from identity keys, verifiers that accept only paired keys.
//!
//! The Totebox server, its client, the diode guard and the delay proxy are being built on this
//! layer (see the project's issues).

#![forbid(unsafe_code)]

pub use psp_core;

pub mod client;
pub mod delay_proxy;
pub mod diode;
pub mod limits;
pub mod runtime;
pub mod tls;
pub mod totebox_server;
