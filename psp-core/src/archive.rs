//! The `Archive` trait: what an integrator implements to serve PSP from their own store.
//!
//! An archive only has to list its collections, offer its records to a query's accumulator, and
//! apply commands. Everything that keeps data inside the Totebox happens in code it does not
//! write: the plan refuses queries the exposure policy forbids before any record is read, the
//! accumulator re-checks every offered record against the capability's rows and the filter, and
//! finishing withholds small groups. An archive that offers too many records (ignores the row
//! hint, say) costs time, never leaks.

use crate::identity::PublicKey;
use crate::query::{
    Accumulator, CollectionSchema, Exposure, FieldSchema, Plan, Query, QueryError, QueryResult,
};
use crate::rows::RowSelector;
use crate::scope::{CommandDigest, Scope};

/// A store served as a PSP Totebox.
///
/// Implementations must be cheap to share across threads (`Send + Sync`): the Totebox server runs
/// queries on a blocking pool, several at once.
pub trait Archive: Send + Sync + 'static {
    /// The archive's id: what capabilities name (by digest) and consoles select.
    fn id(&self) -> &str;

    /// Every collection, with its schema and exposure policy.
    fn collections(&self) -> Vec<CollectionSchema>;

    /// How many records a collection holds and its data time (microseconds since the epoch).
    fn stats(&self, collection: &str) -> Option<CollectionStats>;

    /// Whether a query of `collection` is quick enough to run on the connection's own thread:
    /// tens of microseconds, such as a few thousand records already in memory. A server then
    /// skips the hand-off to its blocking pool, which costs more than such a scan. The default,
    /// `false`, sends every query to the blocking pool, as storage that may block needs.
    fn quick_to_scan(&self, collection: &str) -> bool {
        let _ = collection;
        false
    }

    /// Offers the records of `plan.query().collection` to `accumulator`, and returns the data time
    /// the answer reflects. `plan.row_selector()` names the only rows that can match: an archive
    /// with an index should offer just those. Stop early when `accumulator.is_satisfied()`.
    /// Under a row selector, the data time is that of the newest write holding one of those
    /// rows, so a capability limited to some rows never learns when the others were written.
    fn scan(&self, plan: &Plan, accumulator: &mut Accumulator<'_>) -> Result<i64, QueryError>;

    /// Applies a command at most once per (namespace, idempotency key): a repeat of the same command
    /// returns the first outcome as [`CommandStatus::Replayed`]; the same key with a different
    /// command is [`CommandError::KeyReused`].
    fn apply(&self, command: &CommandRequest<'_>) -> Result<CommandOutcome, CommandError>;

    /// Runs `query` under a capability that allows `rows` of its collection.
    fn query(&self, query: &Query, rows: &RowSelector) -> Result<QueryResult, QueryError> {
        let schema = self
            .collections()
            .into_iter()
            .find(|c| c.name == query.collection)
            .ok_or_else(|| QueryError::UnknownCollection(query.collection.clone()))?;
        let plan = Plan::new(query, &schema, rows)?;
        let mut accumulator = plan.accumulator();
        let as_of = self.scan(&plan, &mut accumulator)?;
        accumulator.finish(as_of)
    }

    /// The collections and fields a capability with `scope` may see, as `describe` answers.
    fn describe(&self, scope: &Scope) -> Vec<CollectionDescription> {
        self.collections()
            .into_iter()
            .filter_map(|schema| {
                let grant = scope.collection(&schema.name)?;
                let mut stats = self.stats(&schema.name).unwrap_or_default();
                if let RowSelector::Keys(_) = grant.rows {
                    // A capability limited to some rows sees how many of those there are and
                    // when they were written, never the size or last write of the collection.
                    stats = self.stats_in(&schema, grant.rows);
                }
                let fields = schema
                    .exposed_fields()
                    .filter(|f| grant.fields.contains(&f.name))
                    .cloned()
                    .collect();
                Some(CollectionDescription {
                    name: schema.name.clone(),
                    key: schema.key.clone(),
                    fields,
                    min_group_size: schema.min_group_size,
                    stats,
                })
            })
            .collect()
    }
}

/// Records of a collection within a row selector and their data time, from a scan the archive's
/// index can narrow (zero when the selector cannot be applied).
trait RowCount {
    fn stats_in(&self, schema: &CollectionSchema, rows: &RowSelector) -> CollectionStats;
}

impl<A: Archive + ?Sized> RowCount for A {
    fn stats_in(&self, schema: &CollectionSchema, rows: &RowSelector) -> CollectionStats {
        let query = Query::aggregate(&schema.name, [], [crate::query::Aggregate::count()]);
        let Ok(plan) = Plan::new(&query, schema, rows) else {
            return CollectionStats::default();
        };
        let mut accumulator = plan.accumulator();
        match self.scan(&plan, &mut accumulator) {
            Ok(as_of) => CollectionStats {
                records: accumulator.scanned(),
                as_of,
            },
            Err(_) => CollectionStats::default(),
        }
    }
}

/// Size and freshness of one collection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectionStats {
    /// Records held.
    pub records: u64,
    /// Data time: when the newest record was written (microseconds since the epoch).
    pub as_of: i64,
}

/// One collection as `describe` shows it: only exposed fields within the capability's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionDescription {
    /// The collection's name.
    pub name: String,
    /// Its key field.
    pub key: String,
    /// The fields a query may reference, with how each may be used. Never exposed fields and
    /// fields outside the scope are left out.
    pub fields: Vec<FieldSchema>,
    /// The minimum group size for aggregates.
    pub min_group_size: u32,
    /// Size and freshness.
    pub stats: CollectionStats,
}

impl CollectionDescription {
    /// Whether every field shown may be returned as a value.
    pub fn fully_exposed(&self) -> bool {
        self.fields.iter().all(|f| f.exposure == Exposure::Value)
    }
}

/// A command as the Totebox hands it to the archive, after the capability allowed it.
#[derive(Debug, Clone, Copy)]
pub struct CommandRequest<'a> {
    /// The idempotency namespace the key lives in
    /// ([`VerifiedChain::idempotency_namespace`](crate::capability::VerifiedChain::idempotency_namespace)):
    /// the operator whose console bound the command, never a key the presenting machine chose,
    /// so two operators' keys never collide and a delegate cannot replay a command as new.
    pub namespace: &'a PublicKey,
    /// The command's name.
    pub name: &'a str,
    /// The collection it targets (empty for archive-wide commands).
    pub collection: &'a str,
    /// The console's idempotency key.
    pub idempotency_key: &'a [u8],
    /// The serialized arguments.
    pub arguments: &'a [u8],
}

impl CommandRequest<'_> {
    /// The command's digest: what a capability bound to this one command names.
    pub fn digest(&self) -> CommandDigest {
        CommandDigest::of(
            self.name,
            self.collection,
            self.idempotency_key,
            self.arguments,
        )
    }
}

/// Whether a command took effect now or earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    /// Applied by this call.
    Applied,
    /// Applied by an earlier call with the same idempotency key; this is its outcome.
    Replayed,
}

/// What happened to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// Now or earlier.
    pub status: CommandStatus,
    /// A short human summary.
    pub message: String,
    /// The command-specific result message (serialized), or empty.
    pub detail: Vec<u8>,
    /// The archive's data time after the command.
    pub as_of: i64,
}

/// Why a command was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The archive has no command of that name.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// The arguments do not fit the command.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The idempotency key was used before for a different command.
    #[error("idempotency key already used for a different command")]
    KeyReused,
    /// The idempotency key is shorter than 16 or longer than 64 bytes.
    #[error("idempotency keys are 16 to 64 bytes, not {0}")]
    BadKey(usize),
    /// The archive refuses it in its current state (e.g. an append into a sealed period).
    #[error("refused: {0}")]
    Refused(String),
    /// The capability does not allow what the command would touch.
    #[error(transparent)]
    Capability(#[from] crate::capability::CapabilityError),
    /// The store failed; nothing was applied.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl CommandError {
    /// The stable wire code of the error.
    pub fn code(&self) -> String {
        match self {
            CommandError::UnknownCommand(_) => "command.unknown".into(),
            CommandError::InvalidArguments(_) => "command.invalid-arguments".into(),
            CommandError::KeyReused => "command.key-reused".into(),
            CommandError::BadKey(_) => "command.bad-idempotency-key".into(),
            CommandError::Refused(_) => "command.refused".into(),
            CommandError::Capability(e) => format!("capability.{}", e.rule()),
            CommandError::Storage(_) => "internal".into(),
        }
    }
}

/// Checks an idempotency key's length (16 to 64 bytes).
pub fn check_idempotency_key(key: &[u8]) -> Result<(), CommandError> {
    if (16..=64).contains(&key.len()) {
        Ok(())
    } else {
        Err(CommandError::BadKey(key.len()))
    }
}
