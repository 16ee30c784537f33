//! Why a query was refused or failed.

/// A query the Totebox will not run, or could not finish. [`QueryError::code`] gives the stable
/// wire code (`query.*`, `policy.*` or `limit.*`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The query is not well-formed (missing collection, bad aggregate, ...).
    #[error("invalid query: {0}")]
    Invalid(String),
    /// The collection does not exist, or is not exposed.
    #[error("collection {0:?} is not exposed by this archive")]
    UnknownCollection(String),
    /// The field does not exist or the policy never exposes it (the two are indistinguishable on
    /// purpose: the answer must not reveal which fields exist).
    #[error("field {field:?} is not exposed by collection {collection:?}")]
    FieldNotExposed {
        /// The collection.
        collection: String,
        /// The field.
        field: String,
    },
    /// An aggregate-only field used where individual values would show.
    #[error("field {field:?} may only be used inside sum, avg or count, not {usage}")]
    AggregateOnly {
        /// The field.
        field: String,
        /// How the query tried to use it ("in a filter", "as min", ...).
        usage: &'static str,
    },
    /// Values of the wrong type for a field or operation.
    #[error("type mismatch: {0}")]
    TypeMismatch(String),
    /// An exact sum left the 64-bit range.
    #[error("overflow: {0}")]
    Overflow(String),
    /// The query itself is larger than the Totebox accepts.
    #[error("query too large: {0}")]
    TooLarge(String),
    /// The answer would hold more rows than the Totebox returns at once.
    #[error("the answer exceeds {limit} rows; add a limit or narrow the filter")]
    TooManyRows {
        /// The Totebox's row limit.
        limit: usize,
    },
    /// The archive failed while reading its records.
    #[error("archive error: {0}")]
    Archive(String),
}

impl QueryError {
    /// The stable wire code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Invalid(_) => "query.invalid",
            QueryError::UnknownCollection(_) => "query.unknown-collection",
            QueryError::FieldNotExposed { .. } => "policy.field-not-exposed",
            QueryError::AggregateOnly { .. } => "policy.aggregate-only",
            QueryError::TypeMismatch(_) => "query.type-mismatch",
            QueryError::Overflow(_) => "query.overflow",
            QueryError::TooLarge(_) => "limit.query",
            QueryError::TooManyRows { .. } => "limit.rows",
            QueryError::Archive(_) => "internal",
        }
    }
}
