//! Queries inside a Totebox: the query model, the exposure policy, evaluation over any record
//! source, and the merge algebra that combines many archives' answers exactly.
//!
//! The flow inside a Totebox is: decode the wire query ([`wire`]), compile it against the
//! collection's schema and the capability's grant ([`Plan::new`], which enforces the exposure
//! policy and names the first field it refuses), run the plan over the records
//! ([`Accumulator`]), and let out only what the policy allows ([`Accumulator::finish`] suppresses
//! groups under the minimum size). An aggregator checks each answer against the query it sent
//! ([`conform`]) and folds it into a [`Merger`] as it arrives; one answer alone becomes a table
//! with [`QueryResult::finalize`].
//!
//! Aggregate results travel as mergeable partial states (sum and count, never an average), so
//! merging the results of archives A and B gives exactly the result of one archive holding A's
//! and B's records, for integers and decimals, in any order of arrival. Each archive adds its own
//! floats in record order, so a merged float sum can differ from a single archive's in the last
//! bits; the merge itself rounds float sums once, so it does not depend on arrival order.
//!
//! ```
//! use psp_core::query::*;
//!
//! let schema = CollectionSchema::new("leases", "lease_id", 2)
//!     .field("lease_id", ValueType::Text, Exposure::Value)
//!     .field("region", ValueType::Text, Exposure::Value)
//!     .field("rent", ValueType::Int, Exposure::AggregateOnly);
//! let query = Query::aggregate("leases", ["region"], [Aggregate::of(AggregateFunction::Sum, "rent")]);
//! let plan = Plan::new(&query, &schema, &psp_core::RowSelector::All).unwrap();
//! let mut acc = plan.accumulator();
//! for (id, region, rent) in [("L1", "east", 100), ("L2", "east", 50), ("L3", "west", 70)] {
//!     acc.push(&[Value::from(id), Value::from(region), Value::Int(rent)][..]).unwrap();
//! }
//! let result = acc.finish(0).unwrap();
//! assert_eq!(result.suppressed_groups, 1); // "west" has one lease, below the minimum of 2
//! let table = result.finalize(&query).unwrap();
//! assert_eq!(table.rows, vec![vec![Value::from("east"), Value::Int(150)]]);
//! ```

pub mod conform;
mod error;
mod eval;
mod merge;
mod model;
mod plan;
mod result;
mod schema;
mod value;
pub mod wire;

pub use conform::Nonconforming;
pub use error::QueryError;
pub use eval::{Accumulator, Record};
pub use merge::{CellRef, Merged, Merger, PartialMerge, check_marks};
pub use model::{Aggregate, AggregateFunction, CompareOp, Filter, OrderKey, Query, Shape};
pub use plan::{DEFAULT_MAX_ROWS, Plan};
pub use result::{Column, Group, Partial, QueryResult, ResultBody, Table};
pub use schema::{CollectionSchema, Exposure, FieldSchema};
pub use value::{Decimal, MAX_SCALE, Value, ValueRef, ValueType};
