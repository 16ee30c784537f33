//! # psp-rpc: the PointSav Protocol's RPC framework
//!
//! Turns any [`psp_core::archive::Archive`] into a PSP Totebox on the network and gives
//! aggregators a client for it, with machine pairing and the one-way command discipline
//! enforced by code.
//!
//! ## Structure
//!
//! * [`tls`]: pinned-key mutual TLS 1.3 (rustls with `ring`): self-signed certificates derived
//!   from identity keys, verifiers that accept only paired keys, no session resumption.
//! * [`runtime`]: the accept loop. Each connection's RPC system runs on one worker thread
//!   (capnp-rpc is `!Send`), with one worker per core; graceful shutdown; re-checks of
//!   connected peers after re-pairing.
//! * [`totebox_server`]: [`totebox_server::ToteboxService`] serves any `Archive`. `open`
//!   verifies the capability against the TLS peer, every call re-checks it, queries run on the
//!   blocking pool, refusals are logged as security events.
//! * [`client`]: [`client::ToteboxClient`] connects and sends its first call beside the
//!   session's confirming `identify`; a query or command is one call (`Totebox.query(chain, q)`),
//!   and `open(...).query(...)` still goes pipelined as one round trip. It redials with backoff.
//! * [`diode`]: the guard on every connection toward a Totebox, which cuts it when the Totebox
//!   tries to call, bootstrap, or hand over a capability upstream.
//! * [`coalesce`]: every connection's writer sends each message whole, one TLS record in one
//!   system call, where capnp's separate writes of a segment table and segments made two.
//! * [`limits`]: message size, nesting, calls in flight, deadlines; the `code: message` errors.
//! * [`activity`]: when a server closes a connection that is idle or trickles.
//! * [`delay_proxy`]: a user-space delay proxy that counts round trips, for tests and benchmarks.
//!
//! See `examples/embed_totebox.rs` in the repository for a store served in under 100 lines.

#![forbid(unsafe_code)]

pub use psp_core;

pub mod activity;
pub mod client;
pub mod coalesce;
pub mod delay_proxy;
pub mod diode;
pub mod frame_limit;
pub mod limits;
pub mod metrics;
mod peer_count;
pub mod runtime;
pub mod tls;
pub mod totebox_server;
