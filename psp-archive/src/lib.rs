//! # psp-archive: the reference PSP Totebox store
//!
//! An archive is one append-only file of Cap'n Proto messages, memory-mapped and read in place:
//! a query walks the records' own bytes (text values are `&str`s pointing into the map), so a
//! scan costs memory bandwidth, not parsing. It implements [`psp_core::archive::Archive`], so the
//! PSP Totebox server can serve it as it would any integrator's store.
//!
//! * **Durability.** Each append is one checksummed frame, written and synced before it is
//!   acknowledged. A torn last frame (power lost mid-append) is found on open and cut off without
//!   touching earlier records; damage before the tail refuses to open instead of losing data
//!   (see [`log`]).
//! * **Commands.** `ping`, `append` (a batch, all or nothing), `seal` (close a period to later
//!   appends) and `snapshot` (a consistent copy), each applied at most once per idempotency key,
//!   which survives restarts because the key is logged with the change.
//! * **Index.** Per batch, the key range and a key-sorted order of its records: a query limited
//!   to some rows by its capability reads only the batches and records that can match.
//! * **Data in.** CSV and JSON Lines import with a typed schema per collection ([`import`]), and a
//!   deterministic sample data generator ([`generate`]).
//!
//! ```
//! use psp_archive::{ArchiveConfig, RecordArchive};
//! use psp_core::archive::Archive;
//! use psp_core::query::{Aggregate, AggregateFunction, Query, Value};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config: ArchiveConfig = toml::from_str(r#"
//!     id = "tower-a"
//!     file = "tower-a.psp"
//!     [[collections]]
//!     name = "units"
//!     key = "unit"
//!     fields = [{ name = "unit", type = "text" }, { name = "sqft", type = "int" }]
//! "#).unwrap();
//! let archive = RecordArchive::create(config.resolve(dir.path()).unwrap()).unwrap();
//! archive.append_records("units", &[
//!     vec![Value::from("101"), Value::Int(850)],
//!     vec![Value::from("102"), Value::Int(1_200)],
//! ], 1).unwrap();
//!
//! let query = Query::aggregate("units", [], [Aggregate::of(AggregateFunction::Sum, "sqft")]);
//! let result = archive.query(&query, &psp_core::RowSelector::All).unwrap();
//! assert_eq!(result.finalize(&query).unwrap().rows, vec![vec![Value::Int(2_050)]]);
//! ```

mod commands;
pub use commands::append_arguments;
pub mod config;
pub mod generate;
pub mod import;
mod index;
pub mod log;
mod map;
mod record;
pub mod serve;
mod store;

pub use config::{
    ArchiveConfig, CollectionConfig, ConfigError, FieldConfig, Loaded, ServerSection, Trust,
};
pub use store::{ArchiveError, OpenReport, RecordArchive};
