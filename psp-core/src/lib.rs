//! # psp-core: the PointSav Protocol's pure core
//!
//! Protocol logic with no networking and no async: machine identities, signed capabilities
//! (mint, delegate, verify, cache), and the scope model requests are checked against. It sits under
//! `psp-rpc` (TLS, RPC, the Totebox server and client) the way `quinn-proto` sits under `quinn`:
//! everything here is deterministic given its inputs (verification takes `now` as an argument), so
//! it is tested without sockets or clocks. The only I/O is reading and writing identity key files.
//!
//! ## Structure
//!
//! * [`identity`]: Ed25519 machine keys, their printable form, key files with 0600 permissions.
//! * [`capability`]: capability chains (see its docs for a runnable example) and their verifier.
//! * [`scope`], [`rows`], [`archive_set`], [`window`]: what a link grants, and the "only narrows"
//!   relation between a link and its parent.
//!
//! ## Example
//!
//! ```
//! use psp_core::IdentityKey;
//!
//! let key = IdentityKey::from_seed([42; 32]);
//! let printed = key.public().to_string();
//! assert!(printed.starts_with("ed25519:"));
//! assert_eq!(printed.parse::<psp_core::PublicKey>().unwrap(), key.public());
//! ```

#![forbid(unsafe_code)]

pub mod archive;
pub mod archive_set;
pub mod capability;
pub mod identity;
pub mod merkle;
pub mod query;
pub mod rows;
pub mod scope;
pub mod window;

pub use archive_set::{ArchiveDigest, ArchiveSet};
pub use capability::{CapabilityError, Chain, Grant, Verifier};
pub use identity::{IdentityKey, KeyFileError, PublicKey};
pub use rows::{KeyRange, KeySelector, RowKey, RowRequest, RowSelector};
pub use scope::{
    Access, Action, CollectionAccess, CollectionGrant, Collections, CommandDigest, FieldSet,
    Operation, Scope,
};
pub use window::{UnixSeconds, Window};
