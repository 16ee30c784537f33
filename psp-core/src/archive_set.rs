//! Archive sets: which archives a capability is good for, named by digest.

use sha2::{Digest, Sha256};

/// Domain prefix of an archive digest, so it can never collide with another PSP hash.
const ARCHIVE_DOMAIN: &[u8] = b"PSP-ARCHIVE-v1\0";

/// `SHA-256("PSP-ARCHIVE-v1\0" || archive id)`: how capabilities name an archive.
///
/// Naming archives by digest means a Totebox that checks whether it is in a chain's archive set
/// learns nothing about the other members it could not already guess.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArchiveDigest(pub(crate) [u8; 32]);

impl ArchiveDigest {
    /// The digest of an archive id.
    pub fn of(archive_id: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(ARCHIVE_DOMAIN);
        hasher.update(archive_id.as_bytes());
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

impl std::fmt::Debug for ArchiveDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArchiveDigest({})", hex::encode(&self.0[..8]))
    }
}

/// The archives a capability link names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ArchiveSet {
    /// Every archive that trusts the chain's root (for a fleet owner's root grant).
    Any,
    /// These archives. Kept sorted and free of duplicates, as the wire format requires.
    Members(Vec<ArchiveDigest>),
}

impl ArchiveSet {
    /// The set of the named archive ids.
    pub fn of_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        Self::of_digests(ids.into_iter().map(ArchiveDigest::of))
    }

    /// The set of the given digests (sorted and deduplicated here).
    pub fn of_digests(digests: impl IntoIterator<Item = ArchiveDigest>) -> Self {
        let mut members: Vec<ArchiveDigest> = digests.into_iter().collect();
        members.sort_unstable();
        members.dedup();
        Self::Members(members)
    }

    /// Whether the archive with this digest is in the set.
    pub fn contains(&self, archive: &ArchiveDigest) -> bool {
        match self {
            Self::Any => true,
            Self::Members(members) => members.binary_search(archive).is_ok(),
        }
    }

    /// Whether every archive of `self` is also in `parent`.
    pub fn is_within(&self, parent: &ArchiveSet) -> bool {
        match (self, parent) {
            (_, Self::Any) => true,
            (Self::Any, Self::Members(_)) => false,
            (Self::Members(child), Self::Members(_)) => child.iter().all(|d| parent.contains(d)),
        }
    }
}
