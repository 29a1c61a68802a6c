//! The Merkle tree of the audit log in the RFC 6962 / RFC 9162 shape: leaf hash
//! `SHA-256(0x00 || data)`, node hash `SHA-256(0x01 || left || right)`, the tree over `n` leaves
//! split at the largest power of two below `n`.
//!
//! - Proof *generation* works over stored nodes: every complete aligned subtree (2^level leaves
//!   starting at a multiple of 2^level, a [`NodeId`]) is stored once when it completes and never
//!   changes, and every subtree a proof names decomposes into a few of them ([`decompose`]). So
//!   an inclusion or consistency proof needs O(log² n) stored nodes, never the whole log.
//! - [`Frontier`]: the right edge of the tree, enough to append leaves and compute the root.
//! - Proof *verification* ([`verify_inclusion`], [`verify_consistency`]) follows RFC 9162
//!   §2.1.3.2 and §2.1.4.2 and needs nothing but the proof.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[0x00], data])
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// A complete aligned subtree: the 2^`level` leaves starting at leaf `index << level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

/// A subtree `D[start:end]` as RFC 6962 names them in proofs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The complete aligned subtrees that make up `range`, left to right (each smaller than the
/// one before). Holds for every subtree RFC 6962 proofs name: their start is a multiple of a
/// power of two at least their size.
pub fn decompose(range: Range) -> Vec<NodeId> {
    let mut parts = Vec::new();
    let mut start = range.start;
    while start < range.end {
        let mut level = if start == 0 { 63 } else { start.trailing_zeros() };
        while (1u64 << level) > range.end - start {
            level -= 1;
        }
        // `level` ≤ 63 by construction, so the cast is exact.
        parts.push(NodeId { level: level as u8, index: start >> level });
        start += 1 << level;
    }
    parts
}

/// The hash of `range` from the hashes of its [`decompose`] parts (`D[a:b]` =
/// `H(P1, H(P2, … Pk))`). `None` when a part is missing from `nodes`.
pub fn range_hash(range: Range, nodes: &HashMap<NodeId, Hash>) -> Option<Hash> {
    let parts = decompose(range);
    let (last, rest) = parts.split_last()?;
    let mut hash = *nodes.get(last)?;
    for part in rest.iter().rev() {
        hash = node_hash(nodes.get(part)?, &hash);
    }
    Some(hash)
}

/// The subtrees whose hashes form the inclusion proof of leaf `index` in a tree of `size`
/// leaves (RFC 6962 `PATH(m, D[n])`), in proof order. Empty when `index >= size`.
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<Range> {
    let mut out = Vec::new();
    if index < size {
        path(index, Range { start: 0, end: size }, &mut out);
    }
    out
}

fn path(index: u64, range: Range, out: &mut Vec<Range>) {
    let n = range.end - range.start;
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    let middle = range.start + k;
    if index < middle {
        path(index, Range { start: range.start, end: middle }, out);
        out.push(Range { start: middle, end: range.end });
    } else {
        path(index, Range { start: middle, end: range.end }, out);
        out.push(Range { start: range.start, end: middle });
    }
}

/// The subtrees whose hashes form the consistency proof from tree size `old` to `new` (RFC 6962
/// `PROOF(m, D[n])`), in proof order. Empty when `old` is 0, `old == new` or `old > new`.
pub fn consistency_ranges(old: u64, new: u64) -> Vec<Range> {
    let mut out = Vec::new();
    if old > 0 && old < new {
        subproof(old, Range { start: 0, end: new }, true, &mut out);
    }
    out
}

fn subproof(m: u64, range: Range, whole: bool, out: &mut Vec<Range>) {
    let n = range.end - range.start;
    if m == n {
        if !whole {
            out.push(range);
        }
        return;
    }
    let k = split_point(n);
    let middle = range.start + k;
    if m <= k {
        subproof(m, Range { start: range.start, end: middle }, whole, out);
        out.push(Range { start: middle, end: range.end });
    } else {
        subproof(m - k, Range { start: middle, end: range.end }, false, out);
        out.push(Range { start: range.start, end: middle });
    }
}

/// Every node the hashes of `ranges` need.
pub fn nodes_for(ranges: &[Range]) -> Vec<NodeId> {
    ranges.iter().flat_map(|range| decompose(*range)).collect()
}

/// The right edge of a tree: the hashes of the complete aligned subtrees covering its leaves,
/// largest (leftmost) first. Appending a leaf yields the nodes it completes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The nodes the frontier of a tree of `size` leaves is made of, largest first.
    pub fn node_ids(size: u64) -> Vec<NodeId> {
        (0..64u8)
            .rev()
            .filter(|level| size & (1u64 << level) != 0)
            .map(|level| NodeId { level, index: (size >> level) - 1 })
            .collect()
    }

    /// The frontier of a tree of `size` leaves from its [`Frontier::node_ids`] hashes.
    pub fn from_nodes(size: u64, nodes: &HashMap<NodeId, Hash>) -> Option<Frontier> {
        let hashes = Frontier::node_ids(size)
            .iter()
            .map(|id| nodes.get(id).copied())
            .collect::<Option<Vec<_>>>()?;
        Some(Frontier { size, hashes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash; returns the new nodes (the leaf, then each subtree it completes).
    pub fn append(&mut self, leaf: Hash) -> Vec<(NodeId, Hash)> {
        let mut created = vec![(NodeId { level: 0, index: self.size }, leaf)];
        let mut hash = leaf;
        let mut index = self.size;
        let mut level = 0u8;
        while index & 1 == 1 {
            let Some(left) = self.hashes.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            index >>= 1;
            level += 1;
            created.push((NodeId { level, index }, hash));
        }
        self.hashes.push(hash);
        self.size += 1;
        created
    }

    /// The root hash of the tree.
    pub fn root(&self) -> Hash {
        let Some((last, rest)) = self.hashes.split_last() else {
            return empty_root();
        };
        rest.iter().rev().fold(*last, |right, left| node_hash(left, &right))
    }
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &r == root
}

/// Checks a consistency proof from (`old`, `old_root`) to (`new`, `new_root`) (RFC 9162
/// §2.1.4.2). The empty tree is consistent with every tree.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    &fr == old_root && &sr == new_root && s == 0
}

/// Every node of a tree held in memory: for tests, tools and small logs.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    frontier: Frontier,
    nodes: HashMap<NodeId, Hash>,
}

impl MemoryTree {
    pub fn push(&mut self, leaf: Hash) {
        for (id, hash) in self.frontier.append(leaf) {
            self.nodes.insert(id, hash);
        }
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn nodes(&self) -> &HashMap<NodeId, Hash> {
        &self.nodes
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        if size == 0 {
            return Some(empty_root());
        }
        range_hash(Range { start: 0, end: size }, &self.nodes)
    }

    /// The inclusion proof of `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        inclusion_ranges(index, size).into_iter().map(|r| range_hash(r, &self.nodes)).collect()
    }

    /// The consistency proof from `old` to `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        consistency_ranges(old, new).into_iter().map(|r| range_hash(r, &self.nodes)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 6962 §2.1, literally.
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn naive_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split_point(n as u64) as usize;
        if m < k {
            let mut proof = naive_path(m, &leaves[..k]);
            proof.push(naive_root(&leaves[k..]));
            proof
        } else {
            let mut proof = naive_path(m - k, &leaves[k..]);
            proof.push(naive_root(&leaves[..k]));
            proof
        }
    }

    fn naive_subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if whole { Vec::new() } else { vec![naive_root(leaves)] };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut proof = naive_subproof(m, &leaves[..k], whole);
            proof.push(naive_root(&leaves[k..]));
            proof
        } else {
            let mut proof = naive_subproof(m - k, &leaves[k..], false);
            proof.push(naive_root(&leaves[..k]));
            proof
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("record {i}").as_bytes())).collect()
    }

    fn build(leaves: &[Hash]) -> MemoryTree {
        let mut tree = MemoryTree::default();
        for leaf in leaves {
            tree.push(*leaf);
        }
        tree
    }

    #[test]
    fn the_empty_tree_and_the_hashes_are_those_of_rfc_6962() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Leaf and node hashes are domain-separated: the same bytes hash differently.
        let leaf = leaf_hash(b"");
        assert_eq!(
            hex::encode(leaf),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_ne!(node_hash(&leaf, &leaf), leaf_hash(&[leaf, leaf].concat()));
        assert_eq!(Frontier::default().root(), empty_root());
    }

    #[test]
    fn every_proof_of_small_trees_matches_the_reference_and_verifies() {
        for n in 1..=33usize {
            let leaves = leaves(n);
            let tree = build(&leaves);
            let root = naive_root(&leaves);
            assert_eq!(tree.root_at(n as u64), Some(root), "root of {n}");
            assert_eq!(tree.frontier.root(), root);
            for m in 0..n {
                let proof = tree.inclusion_proof(m as u64, n as u64).expect("nodes");
                assert_eq!(proof, naive_path(m, &leaves), "path {m} of {n}");
                assert!(verify_inclusion(m as u64, n as u64, &leaves[m], &proof, &root));
                assert!(
                    !verify_inclusion(m as u64, n as u64, &leaves[(m + 1) % n], &proof, &root)
                        || n == 1
                );
            }
            for old in 1..=n {
                let old_root = naive_root(&leaves[..old]);
                let proof = tree.consistency_proof(old as u64, n as u64).expect("nodes");
                let expected =
                    if old == n { Vec::new() } else { naive_subproof(old, &leaves, true) };
                assert_eq!(proof, expected, "consistency {old} → {n}");
                assert!(verify_consistency(old as u64, n as u64, &old_root, &root, &proof));
            }
        }
    }

    #[test]
    fn proofs_fail_for_wrong_sizes_roots_and_tampered_paths() {
        let leaves = leaves(11);
        let tree = build(&leaves);
        let root = tree.root_at(11).expect("root");
        let proof = tree.inclusion_proof(4, 11).expect("proof");
        assert!(verify_inclusion(4, 11, &leaves[4], &proof, &root));
        assert!(!verify_inclusion(5, 11, &leaves[4], &proof, &root), "another index");
        assert!(!verify_inclusion(4, 5, &leaves[4], &proof, &root), "another size");
        assert!(!verify_inclusion(11, 11, &leaves[4], &proof, &root), "outside the tree");
        assert!(!verify_inclusion(4, 11, &leaves[4], &proof[1..], &root), "short");
        let mut long = proof.clone();
        long.push(root);
        assert!(!verify_inclusion(4, 11, &leaves[4], &long, &root), "long");
        let old_root = tree.root_at(6).expect("old");
        let consistency = tree.consistency_proof(6, 11).expect("proof");
        assert!(verify_consistency(6, 11, &old_root, &root, &consistency));
        assert!(!verify_consistency(6, 11, &root, &root, &consistency), "wrong old root");
        assert!(!verify_consistency(11, 6, &root, &old_root, &consistency), "shrinking");
        assert!(!verify_consistency(6, 11, &old_root, &root, &[]), "no proof");
        let other = build(&leaves[..10]).root_at(10).expect("other");
        assert!(!verify_consistency(6, 10, &old_root, &other, &consistency));
    }

    #[test]
    fn the_frontier_rebuilt_from_stored_nodes_continues_the_same_tree() {
        let leaves = leaves(23);
        let full = build(&leaves);
        let prefix = build(&leaves[..13]);
        let mut frontier = Frontier::from_nodes(13, prefix.nodes()).expect("frontier nodes");
        let mut nodes = prefix.nodes().clone();
        for leaf in &leaves[13..] {
            nodes.extend(frontier.append(*leaf));
        }
        assert_eq!(frontier.root(), naive_root(&leaves));
        assert_eq!(&nodes, full.nodes());
    }

    proptest! {
        #[test]
        fn proofs_match_the_naive_reference(n in 1usize..300, m_seed in any::<u64>(), old_seed in any::<u64>()) {
            let leaves = leaves(n);
            let tree = build(&leaves);
            let m = (m_seed % n as u64) as usize;
            let old = 1 + (old_seed % n as u64) as usize;
            let root = naive_root(&leaves);
            let proof = tree.inclusion_proof(m as u64, n as u64).expect("nodes");
            prop_assert_eq!(&proof, &naive_path(m, &leaves));
            prop_assert!(verify_inclusion(m as u64, n as u64, &leaves[m], &proof, &root));
            let consistency = tree.consistency_proof(old as u64, n as u64).expect("nodes");
            let expected = if old == n { Vec::new() } else { naive_subproof(old, &leaves, true) };
            prop_assert_eq!(&consistency, &expected);
            let old_root = naive_root(&leaves[..old]);
            prop_assert!(verify_consistency(old as u64, n as u64, &old_root, &root, &consistency));
            if old < n {
                let mut broken = consistency.clone();
                broken[0][0] ^= 1;
                prop_assert!(!verify_consistency(old as u64, n as u64, &old_root, &root, &broken));
            }
        }
    }
}
