//! Merkle roots over an epoch's payouts, and proofs per node.
//!
//! Leaves are the `(node_id, amount)` pairs sorted by node id (the 32-byte public key). Encoding,
//! with SHA-256 and domain-separation prefixes so a leaf can never pass for an inner node:
//!
//! ```text
//! leaf  = SHA-256(0x00 ‖ node_id (32 bytes) ‖ amount (u64, big-endian))
//! inner = SHA-256(0x01 ‖ left ‖ right)
//! ```
//! A level with an odd count carries its last hash up unchanged. The root of no leaves is 32 zero
//! bytes. A proof is the sibling hashes from the leaf up, with the leaf's index and the count,
//! which fix at each level whether the sibling is on the left or the right.

use sha2::{Digest, Sha256};

/// A 32-byte SHA-256 hash.
pub type Hash = [u8; 32];

/// The leaf hash of one payout.
pub fn leaf(node_id: &[u8; 32], amount: u64) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(node_id);
    h.update(amount.to_be_bytes());
    h.finalize().into()
}

fn inner(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn next_level(level: &[Hash]) -> Vec<Hash> {
    level
        .chunks(2)
        .map(|p| {
            if p.len() == 2 {
                inner(&p[0], &p[1])
            } else {
                p[0]
            }
        })
        .collect()
}

/// The root over `payouts`, which must be sorted by node id with no duplicates.
pub fn root(payouts: &[([u8; 32], u64)]) -> Hash {
    let mut level: Vec<Hash> = payouts
        .iter()
        .map(|(id, amount)| leaf(id, *amount))
        .collect();
    if level.is_empty() {
        return [0; 32];
    }
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

/// A proof that one payout is in an epoch's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Index of the leaf among the sorted leaves.
    pub index: u64,
    /// Number of leaves.
    pub count: u64,
    /// Sibling hashes, leaf level first (levels where the node has no sibling are skipped).
    pub siblings: Vec<Hash>,
}

/// Every level of a tree, leaves first: built once, it gives any leaf's proof in O(log n).
#[derive(Debug, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// The tree over `payouts` (sorted by node id).
    pub fn new(payouts: &[([u8; 32], u64)]) -> Self {
        let mut levels = vec![
            payouts
                .iter()
                .map(|(id, amount)| leaf(id, *amount))
                .collect::<Vec<_>>(),
        ];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let next = next_level(levels.last().expect("non-empty"));
            levels.push(next);
        }
        Self { levels }
    }

    /// Every level, leaves first (the last holds the root).
    pub fn levels(&self) -> &[Vec<Hash>] {
        &self.levels
    }

    /// The root (32 zero bytes for no leaves).
    pub fn root(&self) -> Hash {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or([0; 32])
    }

    /// The proof for leaf `index`.
    pub fn proof(&self, index: usize) -> Option<Proof> {
        let count = self.levels.first()?.len();
        if index >= count {
            return None;
        }
        let mut i = index;
        let mut siblings = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = if i.is_multiple_of(2) { i + 1 } else { i - 1 };
            if sibling < level.len() {
                siblings.push(level[sibling]);
            }
            i /= 2;
        }
        Some(Proof {
            index: index as u64,
            count: count as u64,
            siblings,
        })
    }
}

/// The proof for leaf `index` of a tree of `count` leaves whose hashes are read with
/// `hash_at(level, position)` (level 0 = leaves): what a stored tree answers, one sibling per
/// level.
pub fn proof_from(
    index: u64,
    count: u64,
    mut hash_at: impl FnMut(usize, u64) -> Option<Hash>,
) -> Option<Proof> {
    if index >= count {
        return None;
    }
    let (mut i, mut len, mut level) = (index, count, 0);
    let mut siblings = Vec::new();
    while len > 1 {
        let sibling = i ^ 1;
        if sibling < len {
            siblings.push(hash_at(level, sibling)?);
        }
        i /= 2;
        len = len.div_ceil(2);
        level += 1;
    }
    Some(Proof {
        index,
        count,
        siblings,
    })
}

/// The proof for leaf `index` of `payouts` (sorted by node id).
pub fn prove(payouts: &[([u8; 32], u64)], index: usize) -> Option<Proof> {
    if index >= payouts.len() {
        return None;
    }
    let mut level: Vec<Hash> = payouts
        .iter()
        .map(|(id, amount)| leaf(id, *amount))
        .collect();
    let mut i = index;
    let mut siblings = Vec::new();
    while level.len() > 1 {
        let sibling = if i.is_multiple_of(2) { i + 1 } else { i - 1 };
        if sibling < level.len() {
            siblings.push(level[sibling]);
        }
        level = next_level(&level);
        i /= 2;
    }
    Some(Proof {
        index: index as u64,
        count: payouts.len() as u64,
        siblings,
    })
}

/// Checks that `(node_id, amount)` is leaf `proof.index` of a tree whose root is `root`.
pub fn verify(root: &Hash, node_id: &[u8; 32], amount: u64, proof: &Proof) -> bool {
    if proof.index >= proof.count {
        return false;
    }
    let mut hash = leaf(node_id, amount);
    let (mut i, mut len) = (proof.index, proof.count);
    let mut siblings = proof.siblings.iter();
    while len > 1 {
        let sibling = if i.is_multiple_of(2) { i + 1 } else { i - 1 };
        if sibling < len {
            let Some(s) = siblings.next() else {
                return false;
            };
            hash = if i.is_multiple_of(2) {
                inner(&hash, s)
            } else {
                inner(s, &hash)
            };
        }
        i /= 2;
        len = len.div_ceil(2);
    }
    siblings.next().is_none() && &hash == root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payouts(n: usize) -> Vec<([u8; 32], u64)> {
        (0..n)
            .map(|i| ([i as u8 + 1; 32], 1000 * i as u64 + 7))
            .collect()
    }

    #[test]
    fn every_payout_proves_and_a_tampered_one_does_not() {
        for n in 1..=17 {
            let p = payouts(n);
            let r = root(&p);
            for (i, (id, amount)) in p.iter().enumerate() {
                let proof = prove(&p, i).unwrap();
                assert!(verify(&r, id, *amount, &proof), "n={n} i={i}");
                assert!(
                    !verify(&r, id, amount + 1, &proof),
                    "tampered amount must fail (n={n} i={i})"
                );
                let mut wrong_index = proof.clone();
                wrong_index.index = (wrong_index.index + 1) % wrong_index.count;
                if n > 1 {
                    assert!(
                        !verify(&r, id, *amount, &wrong_index),
                        "wrong position must fail (n={n} i={i})"
                    );
                }
            }
        }
    }

    #[test]
    fn the_tree_gives_the_same_root_and_proofs() {
        for n in 0..=9 {
            let p = payouts(n);
            let t = Tree::new(&p);
            assert_eq!(t.root(), root(&p));
            for i in 0..n {
                assert_eq!(t.proof(i), prove(&p, i));
            }
            assert_eq!(t.proof(n), None);
        }
    }

    #[test]
    fn the_root_depends_on_every_leaf_and_is_stable() {
        let p = payouts(5);
        assert_eq!(root(&p), root(&p.clone()));
        let mut q = p.clone();
        q[3].1 += 1;
        assert_ne!(root(&p), root(&q));
        assert_eq!(root(&[]), [0; 32]);
    }

    #[test]
    fn a_leaf_cannot_pose_as_an_inner_node() {
        let p = payouts(2);
        let l0 = leaf(&p[0].0, p[0].1);
        let l1 = leaf(&p[1].0, p[1].1);
        assert_ne!(root(&p), l0);
        assert_ne!(inner(&l0, &l1), leaf(&p[0].0, 0));
    }
}
