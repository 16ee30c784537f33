//! Archive sets: which archives a capability is good for, named by digest.

use sha2::{Digest, Sha256};

use crate::merkle::{self, Hash, MerkleTree};

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

impl ArchiveSet {
    /// The members' digests, ascending; `None` for any archive.
    pub fn members(&self) -> Option<&[ArchiveDigest]> {
        match self {
            Self::Any => None,
            Self::Members(members) => Some(members),
        }
    }
}

/// Sets of at most this many archives are listed in a link's body; larger ones are committed by
/// a Merkle root. Listing costs 32 bytes per member sent to every Totebox; a commitment costs 36
/// bytes plus about `32 * log2(n)` bytes of proof per Totebox, which is smaller from 5 members on.
pub const LISTED_AT_MOST: usize = 4;

/// A Merkle commitment to an archive set (`ArchiveSet.committed` in the schema): the root of the
/// RFC 9162 tree over the ascending member digests, and their count.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetCommitment {
    /// The Merkle Tree Hash.
    pub root: Hash,
    /// How many members (at least 1).
    pub size: u32,
}

impl std::fmt::Debug for SetCommitment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SetCommitment({}.., {} members)",
            hex::encode(&self.root[..8]),
            self.size
        )
    }
}

/// How one link's signed body names its archives: what a verifier sees without any proof.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkArchives {
    /// Every archive that trusts the chain's root.
    Any,
    /// These archives, listed (ascending, unique).
    Listed(Vec<ArchiveDigest>),
    /// The archives committed to by a Merkle root; which they are travels beside the chain.
    Committed(SetCommitment),
}

impl LinkArchives {
    /// The form a signer writes for `set`: listed up to [`LISTED_AT_MOST`] members, committed
    /// beyond. Also returns the tree of a committed set, from which its proofs are read.
    pub fn for_set(set: &ArchiveSet) -> (Self, Option<std::sync::Arc<MemberTree>>) {
        match set {
            ArchiveSet::Any => (Self::Any, None),
            ArchiveSet::Members(members) if members.len() <= LISTED_AT_MOST => {
                (Self::Listed(members.clone()), None)
            }
            ArchiveSet::Members(members) => {
                // Sorted and deduplicated again: the variant's field is public, and a tree is
                // only defined over ascending, unique digests.
                let mut members = members.clone();
                members.sort_unstable();
                members.dedup();
                let tree = MemberTree::new(members)
                    .expect("more than LISTED_AT_MOST members, now ascending and unique");
                (
                    Self::Committed(tree.commitment()),
                    Some(std::sync::Arc::new(tree)),
                )
            }
        }
    }

    /// Whether `archive` is in this set, given the `proof` that travelled with the link. A listed
    /// or any-archive set needs none (and ignores one); a committed set needs the archive's
    /// inclusion proof or the whole member list.
    pub fn admits(&self, archive: &ArchiveDigest, proof: &ArchiveProof<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::Listed(members) => members.binary_search(archive).is_ok(),
            Self::Committed(commitment) => match proof {
                ArchiveProof::None => false,
                ArchiveProof::Inclusion { index, path } => {
                    let (hashes, rest) = path.as_chunks::<32>();
                    rest.is_empty()
                        && merkle::verify_inclusion(
                            &commitment.root,
                            u64::from(commitment.size),
                            u64::from(*index),
                            &merkle::leaf_hash(archive.as_bytes()),
                            hashes,
                        )
                }
                ArchiveProof::Members(bytes) => MemberTree::from_wire(bytes).is_some_and(|tree| {
                    tree.commitment() == *commitment && tree.position(archive).is_some()
                }),
            },
        }
    }

    /// Whether a link with this set may follow a parent with `parent`'s set, as far as the two
    /// bodies alone can tell (the rule of `capability.widened-archives`). A committed set on
    /// either side cannot be compared here; a Totebox checks instead that every link's set admits
    /// it, which is what narrowing means for the one archive it serves.
    pub fn may_follow(&self, parent: &LinkArchives) -> bool {
        match (self, parent) {
            (_, Self::Any) => true,
            (Self::Any, _) => false,
            (Self::Listed(child), Self::Listed(parent)) => {
                child.iter().all(|d| parent.binary_search(d).is_ok())
            }
            (Self::Committed(_), _) | (_, Self::Committed(_)) => true,
        }
    }
}

impl From<ArchiveSet> for LinkArchives {
    /// The set listed in full, whatever its size (what [`LinkArchives::for_set`] does for small
    /// sets; for building bodies by hand).
    fn from(set: ArchiveSet) -> Self {
        match set {
            ArchiveSet::Any => Self::Any,
            ArchiveSet::Members(members) => Self::Listed(members),
        }
    }
}

/// The unsigned evidence that travels with one link (`ArchiveProof` in the schema), borrowed
/// from the received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveProof<'a> {
    /// Nothing.
    #[default]
    None,
    /// The whole member list, digests concatenated in ascending order.
    Members(&'a [u8]),
    /// One archive's leaf index and audit path (32-byte hashes concatenated, leaf to root).
    Inclusion {
        /// The leaf index.
        index: u32,
        /// The audit path's bytes.
        path: &'a [u8],
    },
}

/// The Merkle tree of an archive set's members: the commitment a signer signs, and each member's
/// inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberTree {
    /// The members as they travel (`ArchiveProof.members`): digests concatenated, ascending.
    wire: Vec<u8>,
    tree: MerkleTree,
}

impl MemberTree {
    /// The tree over `members`, which must be ascending and unique (as [`ArchiveSet`] keeps
    /// them); `None` when empty or out of order.
    pub fn new(members: Vec<ArchiveDigest>) -> Option<Self> {
        Self::over(&members.iter().map(|d| d.0).collect::<Vec<_>>())
    }

    /// The tree over a member list as it travels (`ArchiveProof.members`); `None` when the bytes
    /// are not whole, ascending, unique digests.
    pub fn from_wire(bytes: &[u8]) -> Option<Self> {
        let (digests, rest) = bytes.as_chunks::<32>();
        if !rest.is_empty() {
            return None;
        }
        Self::over(digests)
    }

    fn over(digests: &[[u8; 32]]) -> Option<Self> {
        if u32::try_from(digests.len()).is_err() || digests.windows(2).any(|p| p[0] >= p[1]) {
            return None;
        }
        let tree = MerkleTree::new(digests)?;
        Some(Self {
            wire: digests.concat(),
            tree,
        })
    }

    fn digests(&self) -> &[[u8; 32]] {
        self.wire.as_chunks::<32>().0
    }

    /// What a link signs for this set.
    pub fn commitment(&self) -> SetCommitment {
        SetCommitment {
            root: self.tree.root(),
            // At most u32::MAX leaves: checked when the tree was built.
            size: self.tree.size() as u32,
        }
    }

    /// The members, ascending.
    pub fn members(&self) -> impl Iterator<Item = ArchiveDigest> + '_ {
        self.digests().iter().map(|d| ArchiveDigest(*d))
    }

    /// The members as they travel: digests concatenated, ascending.
    pub fn member_bytes(&self) -> &[u8] {
        &self.wire
    }

    /// The leaf index of `archive`, if it is a member.
    pub fn position(&self, archive: &ArchiveDigest) -> Option<usize> {
        self.digests().binary_search(&archive.0).ok()
    }

    /// The inclusion proof of `archive`: its leaf index and audit path, or `None` when it is not
    /// a member.
    pub fn inclusion(&self, archive: &ArchiveDigest) -> Option<(u32, Vec<Hash>)> {
        let index = self.position(archive)?;
        Some((index as u32, self.tree.inclusion(index)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example in `docs/protocol.md` ("Committed archive sets"); the Python client's
    /// interop test checks the same figures.
    #[test]
    fn the_documented_example_holds() {
        let set = ArchiveSet::of_ids(["prop-01", "prop-02", "prop-03", "prop-04", "prop-05"]);
        let tree = MemberTree::new(set.members().unwrap().to_vec()).unwrap();
        let commitment = tree.commitment();
        assert_eq!(
            hex::encode(commitment.root),
            "10ef39b9728b5d6bef82e57a8db3aa87e1ef82d1702710021acfc4c4d17d38f7"
        );
        assert_eq!(commitment.size, 5);
        let (index, path) = tree.inclusion(&ArchiveDigest::of("prop-03")).unwrap();
        assert_eq!(index, 2);
        assert_eq!(
            path.iter().map(hex::encode).collect::<Vec<_>>(),
            [
                "b62a3bcc0b25a2eb4a7d694cd968fdea5bbdca72544e4332d34d64eb5a753222",
                "036d4265f3e38dfe4ce87879307f023c0891afec025911feead41c80a9b27f4a",
                "95ef78098dde52f6b80b2ec45f1c96c21ba27b9e54feb2ede17b8a0accc50bfa",
            ]
        );
        let (form, _) = LinkArchives::for_set(&set);
        assert_eq!(form, LinkArchives::Committed(commitment));
        let path = path.concat();
        let proof = ArchiveProof::Inclusion { index, path: &path };
        assert!(form.admits(&ArchiveDigest::of("prop-03"), &proof));
        assert!(!form.admits(&ArchiveDigest::of("prop-02"), &proof));
        assert!(form.admits(
            &ArchiveDigest::of("prop-02"),
            &ArchiveProof::Members(tree.member_bytes())
        ));
        assert!(!form.admits(
            &ArchiveDigest::of("prop-06"),
            &ArchiveProof::Members(tree.member_bytes())
        ));
        // Four or fewer are listed.
        let four = ArchiveSet::of_ids(["prop-01", "prop-02", "prop-03", "prop-04"]);
        assert!(matches!(
            LinkArchives::for_set(&four).0,
            LinkArchives::Listed(_)
        ));
    }

    #[test]
    fn extreme_indexes_and_sizes_prove_nothing_and_never_panic() {
        let archive = ArchiveDigest::of("prop-03");
        let leaf = merkle::leaf_hash(archive.as_bytes());
        for size in [1, 2, u32::MAX - 1, u32::MAX] {
            let set = LinkArchives::Committed(SetCommitment { root: leaf, size });
            for index in [0, 1, size / 2, size - 1, size, u32::MAX] {
                for hashes in [0usize, 1, 31, 32, 33, 64] {
                    let path = vec![0x5a; 32 * hashes];
                    let proof = ArchiveProof::Inclusion { index, path: &path };
                    let admitted = set.admits(&archive, &proof);
                    // Only the one-leaf tree whose root is the leaf itself, with no path.
                    assert_eq!(
                        admitted,
                        size == 1 && index == 0 && hashes == 0,
                        "size {size} index {index} hashes {hashes}"
                    );
                }
            }
        }
    }
}
