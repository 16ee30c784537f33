//! Scopes: what a capability link allows inside the archives it names, and what a request asks for.
//!
//! "Fields in scope" means every field a request references: projected, filtered, grouped, ordered
//! or aggregated. The caller (the query engine) lists them all in [`Access::fields`].

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::capability::CapabilityError;
use crate::rows::{RowRequest, RowSelector};

/// What one link allows: collections (with fields and rows) and operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The collections reached.
    pub collections: Collections,
    /// The operations allowed. Empty: nothing.
    pub operations: Vec<Operation>,
}

/// The collections a scope reaches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Collections {
    /// Every collection, field and row.
    All,
    /// These collections, by name.
    Only(BTreeMap<String, CollectionGrant>),
}

/// Access to one collection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CollectionGrant {
    /// The fields a request may reference.
    pub fields: FieldSet,
    /// The rows it reaches.
    pub rows: RowSelector,
}

impl CollectionGrant {
    /// Every field and row of the collection.
    pub fn everything() -> Self {
        Self {
            fields: FieldSet::All,
            rows: RowSelector::All,
        }
    }
}

/// The fields of a collection a request may reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldSet {
    /// Any field (the archive's exposure policy still applies).
    All,
    /// Only these.
    Only(BTreeSet<String>),
}

impl FieldSet {
    /// The set of the named fields.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self::Only(names.into_iter().map(str::to_owned).collect())
    }

    /// Whether `field` may be referenced.
    pub fn contains(&self, field: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(fields) => fields.contains(field),
        }
    }

    /// Whether every field of `self` is in `parent`.
    pub fn is_within(&self, parent: &FieldSet) -> bool {
        match (self, parent) {
            (_, Self::All) => true,
            (Self::All, Self::Only(_)) => false,
            (Self::Only(child), Self::Only(parent)) => child.is_subset(parent),
        }
    }
}

/// The digest that binds a command capability to one command:
/// `SHA-256("PSP-CMD-v1\0" || u32be(len name) || name || u32be(len collection) || collection ||
/// u32be(len key) || key || arguments)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandDigest(pub(crate) [u8; 32]);

impl CommandDigest {
    /// The digest of a command as it travels (see `Command` in `schema/totebox.capnp`).
    pub fn of(name: &str, collection: &str, idempotency_key: &[u8], arguments: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"PSP-CMD-v1\0");
        for part in [name.as_bytes(), collection.as_bytes(), idempotency_key] {
            let len = u32::try_from(part.len()).expect("command parts are far below 4 GiB");
            hasher.update(len.to_be_bytes());
            hasher.update(part);
        }
        hasher.update(arguments);
        Self(hasher.finalize().into())
    }

    /// Wraps 32 digest bytes as read from the wire.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for CommandDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommandDigest({})", hex::encode(&self.0[..8]))
    }
}

/// One kind of call a link allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// List the collections and exposed fields in scope.
    Describe,
    /// Run read queries.
    Query,
    /// Apply the named command: any arguments (`digest: None`) or exactly one command.
    Command {
        /// The command's name.
        name: String,
        /// The one command allowed, if bound.
        digest: Option<CommandDigest>,
        /// Only meaningful unbound: the holder may pass the command on only bound to one digest
        /// (the next link must name it), so nobody it delegates to chooses what is applied.
        holder_binds: bool,
    },
}

impl Operation {
    /// A grant of the named command with any arguments.
    pub fn command(name: &str) -> Self {
        Self::Command {
            name: name.to_owned(),
            digest: None,
            holder_binds: false,
        }
    }

    /// A grant of the named command with any arguments that its holder may delegate only bound
    /// to one command at a time (what a fleet owner grants an operator).
    pub fn command_bound_by_holder(name: &str) -> Self {
        Self::Command {
            name: name.to_owned(),
            digest: None,
            holder_binds: true,
        }
    }

    /// A grant of exactly one command: `name` with the arguments and idempotency key `digest`
    /// commits to (what a console delegates per command).
    pub fn bound_command(name: &str, digest: CommandDigest) -> Self {
        Self::Command {
            name: name.to_owned(),
            digest: Some(digest),
            holder_binds: false,
        }
    }

    /// Whether `self` allows no more than `parent` does. Under a parent that makes its holder
    /// bind, an unbound command never is.
    fn is_within(&self, parent: &Operation) -> bool {
        match (self, parent) {
            (Self::Describe, Self::Describe) | (Self::Query, Self::Query) => true,
            (
                Self::Command { name, digest, .. },
                Self::Command {
                    name: parent_name,
                    digest: parent_digest,
                    holder_binds,
                },
            ) => {
                name == parent_name
                    && match parent_digest {
                        Some(bound) => digest.as_ref() == Some(bound),
                        None => digest.is_some() || !holder_binds,
                    }
            }
            _ => false,
        }
    }

    /// Whether this grant allows `action`.
    fn admits(&self, action: &Action<'_>) -> bool {
        match (self, action) {
            (Self::Describe, Action::Describe) | (Self::Query, Action::Query) => true,
            (
                Self::Command { name, digest, .. },
                Action::Command {
                    name: wanted,
                    digest: wanted_digest,
                },
            ) => name == wanted && digest.as_ref().is_none_or(|d| d == *wanted_digest),
            _ => false,
        }
    }

    /// Whether every grant of command `name` among `all` (one link's operations) is bound to
    /// exactly `digest`, and there is at least one: that link binds the command.
    pub fn binds_in(all: &[Operation], name: &str, digest: &CommandDigest) -> bool {
        let mut same_name = all.iter().filter_map(|op| match op {
            Operation::Command {
                name: n, digest: d, ..
            } if n == name => Some(d),
            _ => None,
        });
        let mut any = false;
        let all_bound = same_name.all(|d| {
            any = true;
            d.as_ref() == Some(digest)
        });
        any && all_bound
    }
}

/// The operation a request performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Describe the archive.
    Describe,
    /// Run a query.
    Query,
    /// Apply a command.
    Command {
        /// The command's name.
        name: &'a str,
        /// Its digest (see [`CommandDigest::of`]).
        digest: &'a CommandDigest,
    },
}

impl std::fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Describe => f.write_str("describe"),
            Action::Query => f.write_str("query"),
            Action::Command { name, .. } => write!(f, "command {name:?}"),
        }
    }
}

/// Everything a request asks of a capability, checked by [`Scope::authorize`].
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The operation.
    pub action: Action<'a>,
    /// The collection it touches, if any (archive-wide commands and describe touch none).
    pub collection: Option<&'a str>,
    /// Every field it references.
    pub fields: &'a [&'a str],
    /// The rows it names explicitly.
    pub rows: RowRequest<'a>,
}

/// What a request may touch in its collection once authorized: the evaluator restricts the query
/// to these fields and ANDs the row selector into it.
#[derive(Debug, Clone, Copy)]
pub struct CollectionAccess<'s> {
    /// The fields the request may reference.
    pub fields: &'s FieldSet,
    /// The rows it may reach.
    pub rows: &'s RowSelector,
}

static ALL_FIELDS: FieldSet = FieldSet::All;
static ALL_ROWS: RowSelector = RowSelector::All;

impl Scope {
    /// A scope with every collection and the given operations (for a fleet owner's root grant).
    pub fn everything(operations: Vec<Operation>) -> Self {
        Self {
            collections: Collections::All,
            operations,
        }
    }

    /// The grant for `collection`, if the scope reaches it.
    pub fn collection(&self, collection: &str) -> Option<CollectionAccess<'_>> {
        match &self.collections {
            Collections::All => Some(CollectionAccess {
                fields: &ALL_FIELDS,
                rows: &ALL_ROWS,
            }),
            Collections::Only(grants) => grants.get(collection).map(|g| CollectionAccess {
                fields: &g.fields,
                rows: &g.rows,
            }),
        }
    }

    /// Whether this scope binds command `name` to exactly `digest` (every grant of that command
    /// names the digest): the test for "the first link that binds the command".
    pub fn binds_command(&self, name: &str, digest: &CommandDigest) -> bool {
        Operation::binds_in(&self.operations, name, digest)
    }

    /// Checks that `self` grants nothing `parent` does not; the error says what widened.
    pub fn is_within(&self, parent: &Scope) -> Result<(), String> {
        for op in &self.operations {
            if !parent.operations.iter().any(|p| op.is_within(p)) {
                return Err(match op {
                    Operation::Command {
                        name, digest: None, ..
                    } if parent.operations.iter().any(|p| {
                        matches!(p, Operation::Command { name: n, digest: None, holder_binds: true } if n == name)
                    }) =>
                    {
                        format!(
                            "command {name:?} must be bound to one command (the parent makes its holder bind it)"
                        )
                    }
                    _ => format!("operation {op:?} is not granted by the parent"),
                });
            }
        }
        let grants = match (&self.collections, &parent.collections) {
            (_, Collections::All) => return Ok(()),
            (Collections::All, Collections::Only(_)) => {
                return Err("all collections, but the parent grants only some".into());
            }
            (Collections::Only(grants), Collections::Only(_)) => grants,
        };
        for (name, grant) in grants {
            let Some(parent_grant) = parent.collection(name) else {
                return Err(format!("collection {name:?} is not granted by the parent"));
            };
            if !grant.fields.is_within(parent_grant.fields) {
                return Err(format!("fields of collection {name:?} exceed the parent's"));
            }
            if !grant.rows.is_within(parent_grant.rows) {
                return Err(format!("rows of collection {name:?} exceed the parent's"));
            }
        }
        Ok(())
    }

    /// Checks a request against the scope: operation, collection, every referenced field, rows.
    /// Returns the collection's grant (if the request names one) for the evaluator to apply.
    pub fn authorize(
        &self,
        access: &Access<'_>,
    ) -> Result<Option<CollectionAccess<'_>>, CapabilityError> {
        if !self.operations.iter().any(|op| op.admits(&access.action)) {
            return Err(CapabilityError::OperationNotInScope {
                operation: access.action.to_string(),
            });
        }
        let Some(collection) = access.collection else {
            return Ok(None);
        };
        let grant =
            self.collection(collection)
                .ok_or_else(|| CapabilityError::CollectionNotInScope {
                    collection: collection.to_owned(),
                })?;
        if let Some(field) = access.fields.iter().find(|f| !grant.fields.contains(f)) {
            return Err(CapabilityError::FieldNotInScope {
                collection: collection.to_owned(),
                field: (*field).to_owned(),
            });
        }
        if !grant.rows.admits(&access.rows) {
            return Err(CapabilityError::RowsNotInScope {
                collection: collection.to_owned(),
            });
        }
        Ok(Some(grant))
    }
}
