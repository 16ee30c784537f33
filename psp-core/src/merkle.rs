//! Merkle trees over archive sets, exactly as RFC 9162 (Certificate Transparency 2.0, §2.1)
//! defines them with SHA-256, so any language with a SHA-256 can check a proof.
//!
//! ```text
//! leaf hash  = SHA-256(0x00 || leaf)
//! node hash  = SHA-256(0x01 || left || right)
//! MTH([d0])  = leaf hash of d0
//! MTH(D[n])  = node hash of MTH(D[0:k]) and MTH(D[k:n]), k the largest power of two below n
//! ```
//!
//! A link with a large archive set signs only the tree's root and size; each Totebox is then
//! sent its own leaf's inclusion proof (about `log2(n)` hashes) instead of every member, which is
//! what keeps the bytes sent to one Totebox from growing with the fleet.
//!
//! The RFC's recursive split is the same tree as pairing nodes level by level and carrying an
//! unpaired last node up unchanged; [`MerkleTree`] builds it that way, keeping every level, so an
//! inclusion proof is a read of one sibling per level.

use sha2::{Digest, Sha256};

/// One node of the tree: a SHA-256 output.
pub type Hash = [u8; 32];

/// The hash of a leaf's bytes (`0x00` domain, so no leaf can pass for an inner node).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// The hash of an inner node over its two children (`0x01` domain).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// A whole tree, every level kept: built once, it answers any leaf's inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    /// `levels[0]` holds the leaf hashes; the last level holds only the root.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// The tree over `leaves`, in their order. `None` for no leaves (an archive set is never
    /// committed empty: an empty set grants nothing and is listed).
    pub fn new<L: AsRef<[u8]>>(leaves: &[L]) -> Option<Self> {
        if leaves.is_empty() {
            return None;
        }
        let mut levels = vec![
            leaves
                .iter()
                .map(|l| leaf_hash(l.as_ref()))
                .collect::<Vec<_>>(),
        ];
        while let Some(below) = levels.last().filter(|level| level.len() > 1) {
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    // An unpaired last node moves up as it is (RFC 9162's split puts it in a
                    // right subtree of its own).
                    [alone] => *alone,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(above);
        }
        Some(Self { levels })
    }

    /// The tree's root (the Merkle Tree Hash of the leaves).
    pub fn root(&self) -> Hash {
        self.levels.last().expect("a tree has a level")[0]
    }

    /// How many leaves it has.
    pub fn size(&self) -> usize {
        self.levels[0].len()
    }

    /// The inclusion proof of leaf `index`: the sibling hashes from the leaf up to the root, in
    /// the order RFC 9162 §2.1.3.1 lists them. `None` when there is no such leaf.
    pub fn inclusion(&self, index: usize) -> Option<Vec<Hash>> {
        if index >= self.size() {
            return None;
        }
        let mut path = Vec::with_capacity(self.levels.len());
        let mut at = index;
        for level in &self.levels[..self.levels.len() - 1] {
            // A last node without a partner has no sibling at this level: it moved up alone.
            if let Some(sibling) = level.get(at ^ 1) {
                path.push(*sibling);
            }
            at /= 2;
        }
        Some(path)
    }
}

/// Whether `path` proves that the leaf hashing to `leaf` is leaf `index` of a tree of `size`
/// leaves with this `root`: the verification algorithm of RFC 9162 §2.1.3.2.
pub fn verify_inclusion(root: &Hash, size: u64, index: u64, leaf: &Hash, path: &[Hash]) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut hash = *leaf;
    for sibling in path {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node_hash(sibling, &hash);
            // Climb past the levels where this node had no partner.
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && hash == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaves of RFC 6962's reference test vectors (as used by Certificate Transparency
    /// implementations), and the tree heads of their first 1..=8 leaves.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves(n: usize) -> Vec<Vec<u8>> {
        LEAVES[..n]
            .iter()
            .map(|l| hex::decode(l).unwrap())
            .collect()
    }

    /// RFC 9162's recursive definition, written as the RFC writes it, to check the level-by-level
    /// build against.
    fn recursive_root(leaves: &[Vec<u8>]) -> Hash {
        if leaves.len() == 1 {
            return leaf_hash(&leaves[0]);
        }
        // The largest power of two below n: the highest bit of n - 1.
        let k = 1 << (usize::BITS - 1 - (leaves.len() - 1).leading_zeros());
        node_hash(&recursive_root(&leaves[..k]), &recursive_root(&leaves[k..]))
    }

    #[test]
    fn roots_match_the_reference_vectors() {
        for (n, expected) in ROOTS.iter().enumerate() {
            let tree = MerkleTree::new(&leaves(n + 1)).unwrap();
            assert_eq!(hex::encode(tree.root()), *expected, "{} leaves", n + 1);
        }
        assert!(MerkleTree::new::<Vec<u8>>(&[]).is_none());
    }

    #[test]
    fn the_level_build_is_the_recursive_definition() {
        let many: Vec<Vec<u8>> = (0u32..200).map(|i| i.to_be_bytes().to_vec()).collect();
        for n in 1..=many.len() {
            let tree = MerkleTree::new(&many[..n]).unwrap();
            assert_eq!(tree.root(), recursive_root(&many[..n]), "{n} leaves");
        }
    }

    #[test]
    fn every_leaf_proves_and_nothing_else_does() {
        let many: Vec<Vec<u8>> = (0u32..70).map(|i| i.to_be_bytes().to_vec()).collect();
        for n in 1..=many.len() {
            let tree = MerkleTree::new(&many[..n]).unwrap();
            let (root, size) = (tree.root(), n as u64);
            for (i, leaf) in many[..n].iter().enumerate() {
                let path = tree.inclusion(i).unwrap();
                // At most ceil(log2 n) hashes: what a Totebox receives.
                assert!(path.len() <= (n as f64).log2().ceil() as usize);
                let hashed = leaf_hash(leaf);
                assert!(verify_inclusion(&root, size, i as u64, &hashed, &path));
                // Another index, another root, another leaf or a cut path: refused. (Another
                // size may pass for a leaf on the left edge: RFC 9162 proofs bind the root, and
                // links sign the size beside it.)
                assert!(!verify_inclusion(&root, size, i as u64 + 1, &hashed, &path));
                assert!(!verify_inclusion(
                    &leaf_hash(b"root"),
                    size,
                    i as u64,
                    &hashed,
                    &path
                ));
                assert!(!verify_inclusion(
                    &root,
                    size,
                    i as u64,
                    &leaf_hash(b"x"),
                    &path
                ));
                if let Some((_, shorter)) = path.split_last() {
                    assert!(!verify_inclusion(&root, size, i as u64, &hashed, shorter));
                }
                let mut longer = path.clone();
                longer.push(root);
                assert!(!verify_inclusion(&root, size, i as u64, &hashed, &longer));
            }
            assert!(tree.inclusion(n).is_none());
            assert!(!verify_inclusion(
                &root,
                size,
                size,
                &leaf_hash(&many[0]),
                &[]
            ));
        }
    }

    #[test]
    fn an_inner_node_cannot_pass_for_a_leaf() {
        let four = leaves(4);
        let tree = MerkleTree::new(&four).unwrap();
        // The left inner node over leaves 0 and 1, offered as a leaf of a 2-leaf tree.
        let inner = node_hash(&leaf_hash(&four[0]), &leaf_hash(&four[1]));
        let right = node_hash(&leaf_hash(&four[2]), &leaf_hash(&four[3]));
        assert!(!verify_inclusion(
            &tree.root(),
            2,
            0,
            &leaf_hash(&inner),
            &[right]
        ));
    }
}
