//! Why a capability chain or a request under it was refused: one variant per rule.

use crate::identity::PublicKey;
use crate::window::UnixSeconds;

use super::CapabilityId;

/// A capability chain was refused, or a request asked for more than the chain allows.
///
/// Each variant names exactly one rule; [`CapabilityError::rule`] gives its stable code, which the
/// wire carries as `capability.<rule>`. `link` fields count from 0 (the root).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapabilityError {
    /// The chain has no links.
    #[error("the capability chain is empty")]
    EmptyChain,
    /// More links than the verifier accepts.
    #[error("the capability chain has {depth} links; at most {max} are accepted")]
    ChainTooDeep {
        /// Links in the chain.
        depth: usize,
        /// The verifier's limit.
        max: usize,
    },
    /// The chain's encoding is larger than the verifier accepts.
    #[error("the capability chain is {bytes} bytes; at most {max} are accepted")]
    ChainTooLarge {
        /// Size of the link or of the whole chain, in bytes.
        bytes: usize,
        /// The limit it broke.
        max: usize,
    },
    /// A link is not a well-formed body and signature.
    #[error("link {link} is malformed: {reason}")]
    Malformed {
        /// The link.
        link: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A link's body uses a format version this verifier does not know.
    #[error("link {link} has body format version {version}; this verifier accepts version 1")]
    UnsupportedVersion {
        /// The link.
        link: usize,
        /// The version it claims.
        version: u16,
    },
    /// The root link was not signed by a key this Totebox trusts.
    #[error("the chain's root issuer {issuer} is not a trusted root")]
    UntrustedRoot {
        /// The root's issuer.
        issuer: PublicKey,
    },
    /// A link's issuer is not the holder of the link before it.
    #[error("link {link} was issued by {issuer}, but link {} was granted to {expected}", link - 1)]
    BrokenDelegation {
        /// The link.
        link: usize,
        /// Who issued it.
        issuer: PublicKey,
        /// The previous link's holder, who alone may delegate.
        expected: PublicKey,
    },
    /// A link's signature does not verify under its issuer's key.
    #[error("link {link} has an invalid signature")]
    BadSignature {
        /// The link.
        link: usize,
    },
    /// A link's `parent` field does not name the link before it (or a root names a parent).
    #[error("link {link} is not bound to the link before it (its parent field does not match)")]
    ParentMismatch {
        /// The link.
        link: usize,
    },
    /// A link's window is empty (`notAfter <= notBefore`).
    #[error("link {link} has an empty validity window")]
    EmptyWindow {
        /// The link.
        link: usize,
    },
    /// A link names archives its parent does not.
    #[error("link {link} names archives its parent does not grant")]
    WidenedArchives {
        /// The link.
        link: usize,
    },
    /// A link grants more than its parent: collections, fields, rows or operations.
    #[error("link {link} widens its parent's scope: {detail}")]
    WidenedScope {
        /// The link.
        link: usize,
        /// What it widened.
        detail: String,
    },
    /// A link's window reaches outside its parent's.
    #[error("link {link} is valid outside its parent's window")]
    WidenedWindow {
        /// The link.
        link: usize,
    },
    /// The chain is not valid yet, even allowing for clock skew.
    #[error("the capability is not valid before {not_before} (now {now}, skew allowed)")]
    NotYetValid {
        /// When it becomes valid.
        not_before: UnixSeconds,
        /// The verifier's clock.
        now: UnixSeconds,
    },
    /// The chain has expired, even allowing for clock skew.
    #[error("the capability expired at {not_after} (now {now}, skew allowed)")]
    Expired {
        /// When it expired.
        not_after: UnixSeconds,
        /// The verifier's clock.
        now: UnixSeconds,
    },
    /// The last link lives longer than this Totebox accepts for a presented capability.
    #[error("the last link is valid for {lifetime} s; at most {max} s is accepted")]
    LifetimeTooLong {
        /// The last link's lifetime, in seconds.
        lifetime: i64,
        /// The verifier's cap, in seconds.
        max: i64,
    },
    /// A link has been revoked.
    #[error("link {link} (id {id}) has been revoked")]
    Revoked {
        /// The link.
        link: usize,
        /// Its capability id.
        id: CapabilityId,
    },
    /// The chain was granted to another machine than the one presenting it.
    #[error("the capability was granted to {holder}, not to the presenting peer {peer}")]
    WrongHolder {
        /// The last link's holder.
        holder: PublicKey,
        /// The TLS-authenticated peer.
        peer: PublicKey,
    },
    /// This archive is not in the chain's archive set.
    #[error("the capability does not name this archive")]
    ArchiveNotInScope,
    /// The requested operation is not granted.
    #[error("the capability does not allow {operation}")]
    OperationNotInScope {
        /// The operation asked for.
        operation: String,
    },
    /// The requested collection is not granted.
    #[error("the capability does not reach collection {collection:?}")]
    CollectionNotInScope {
        /// The collection asked for.
        collection: String,
    },
    /// A referenced field is not granted.
    #[error("the capability does not reach field {field:?} of collection {collection:?}")]
    FieldNotInScope {
        /// The collection.
        collection: String,
        /// The field asked for.
        field: String,
    },
    /// The request names rows outside the chain's row selector.
    #[error(
        "the request names rows of collection {collection:?} outside the capability's row selector"
    )]
    RowsNotInScope {
        /// The collection.
        collection: String,
    },
}

impl CapabilityError {
    /// The stable, machine-readable name of the failed rule (the wire code is `capability.<rule>`).
    pub fn rule(&self) -> &'static str {
        match self {
            Self::EmptyChain => "empty-chain",
            Self::ChainTooDeep { .. } => "chain-too-deep",
            Self::ChainTooLarge { .. } => "chain-too-large",
            Self::Malformed { .. } => "malformed",
            Self::UnsupportedVersion { .. } => "unsupported-version",
            Self::UntrustedRoot { .. } => "untrusted-root",
            Self::BrokenDelegation { .. } => "broken-delegation",
            Self::BadSignature { .. } => "bad-signature",
            Self::ParentMismatch { .. } => "parent-mismatch",
            Self::EmptyWindow { .. } => "empty-window",
            Self::WidenedArchives { .. } => "widened-archives",
            Self::WidenedScope { .. } => "widened-scope",
            Self::WidenedWindow { .. } => "widened-window",
            Self::NotYetValid { .. } => "not-yet-valid",
            Self::Expired { .. } => "expired",
            Self::LifetimeTooLong { .. } => "lifetime-too-long",
            Self::Revoked { .. } => "revoked",
            Self::WrongHolder { .. } => "wrong-holder",
            Self::ArchiveNotInScope => "archive-not-in-scope",
            Self::OperationNotInScope { .. } => "operation-not-in-scope",
            Self::CollectionNotInScope { .. } => "collection-not-in-scope",
            Self::FieldNotInScope { .. } => "field-not-in-scope",
            Self::RowsNotInScope { .. } => "rows-not-in-scope",
        }
    }

    pub(crate) fn malformed(link: usize, reason: impl std::fmt::Display) -> Self {
        Self::Malformed {
            link,
            reason: reason.to_string(),
        }
    }
}

/// Why a grant could not be minted or delegated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DelegationError {
    /// Only the holder of a chain's last link may delegate it.
    #[error("only the chain's holder {holder} may delegate it, not {signer}")]
    NotTheHolder {
        /// The last link's holder.
        holder: PublicKey,
        /// The key that tried to sign.
        signer: PublicKey,
    },
    /// The new link would grant more than its parent.
    #[error("a delegation may only narrow its parent: {0}")]
    Widens(String),
    /// The operating system's random number generator failed while choosing a link id.
    #[error("cannot choose a capability id: {0}")]
    Random(String),
}
