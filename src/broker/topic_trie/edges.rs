//! The trie's edge table, grown incrementally so that no single insert stalls the worker.
//!
//! A hash table that doubles rehashes every entry at once; for the trie that means touching
//! every node (an entry's hash is computed from its node), which at a million subscriptions
//! took half a second inside one SUBSCRIBE, with every connection of the worker waiting. So
//! when the table is full, a new one of twice the capacity becomes `current` and the old one
//! `retiring`; each insert and each removal then moves the entries of `MOVED_BUCKETS_PER_STEP`
//! of the old table's buckets (about 28 entries, a few microseconds). Lookups and removals look
//! in both until `retiring` is empty, so while a growth is under way a lookup of an edge not yet
//! moved, or of an absent one, costs a second probe. A growth ends after 1/28 of the old
//! capacity in inserts and removals; a trie that stops changing mid-growth keeps paying that
//! second probe (routing does not change the trie, and cannot move entries).
//!
//! Invariants: every edge is in exactly one of the two tables; after an insert, an empty
//! `retiring` holds no memory and `cursor` is 0. The old table has at most 8/7 buckets per entry
//! it can hold, so moving 32 buckets per step empties it after at most 1/28 of its capacity in
//! inserts, while `current` has room for at least its whole capacity more: `current` never
//! grows during a move.

use hashbrown::HashTable;

use super::NodeId;

const MOVED_BUCKETS_PER_STEP: usize = 32;

/// Tables below this capacity are never shrunk (shrinking a small table saves nothing worth a
/// rehash); also the first capacity a grown table gets.
pub(super) const SHRINK_CAPACITY_MIN: usize = 1024;

#[derive(Default)]
pub(super) struct Edges {
    current: HashTable<NodeId>,
    retiring: HashTable<NodeId>,
    /// The next bucket of `retiring` to move.
    cursor: usize,
}

impl Edges {
    pub(super) fn len(&self) -> usize {
        self.current.len() + self.retiring.len()
    }

    // Inlined into the routing loop: callgrind counted 15% fewer instructions per publish.
    #[inline(always)]
    pub(super) fn find(&self, hash: u64, eq: impl Fn(&NodeId) -> bool + Copy) -> Option<NodeId> {
        if let Some(&id) = self.current.find(hash, eq) {
            return Some(id);
        }
        if self.retiring.is_empty() {
            return None;
        }
        self.retiring.find(hash, eq).copied()
    }

    /// Adds the edge to `id`, hashing to `hash`; `hash_of` gives any other entry's hash.
    pub(super) fn insert(&mut self, hash: u64, id: NodeId, hash_of: impl Fn(&NodeId) -> u64) {
        if self.retiring.is_empty() && self.current.len() == self.current.capacity() {
            let capacity = (self.current.capacity() * 2).max(SHRINK_CAPACITY_MIN);
            self.retiring =
                std::mem::replace(&mut self.current, HashTable::with_capacity(capacity));
            self.cursor = 0;
        }
        self.current.insert_unique(hash, id, &hash_of);
        self.move_some(&hash_of);
    }

    /// Moves the entries of the next few buckets of `retiring` to `current`; drops `retiring`
    /// once it is empty (moved, or emptied by removals).
    fn move_some(&mut self, hash_of: &impl Fn(&NodeId) -> u64) {
        if !self.retiring.is_empty() {
            let end = (self.cursor + MOVED_BUCKETS_PER_STEP).min(self.retiring.num_buckets());
            for bucket in self.cursor..end {
                if let Ok(entry) = self.retiring.get_bucket_entry(bucket) {
                    let (id, _) = entry.remove();
                    self.current.insert_unique(hash_of(&id), id, hash_of);
                }
            }
            self.cursor = end;
        }
        if self.retiring.is_empty() && self.retiring.capacity() > 0 {
            self.retiring = HashTable::new();
            self.cursor = 0;
        }
    }

    /// Removes the edge to `id`, which must be present; `hash_of` as for `insert`.
    pub(super) fn remove(&mut self, hash: u64, id: NodeId, hash_of: impl Fn(&NodeId) -> u64) {
        if let Ok(entry) = self.current.find_entry(hash, |&other| other == id) {
            entry.remove();
        } else {
            let Ok(entry) = self.retiring.find_entry(hash, |&other| other == id) else {
                panic!("a live node is the target of exactly one edge (the trie's invariant)");
            };
            entry.remove();
        }
        self.move_some(&hash_of);
    }

    /// Gives memory back when the table is mostly empty (not while a growth is under way).
    pub(super) fn shrink_if_sparse(&mut self, hash_of: impl Fn(&NodeId) -> u64) {
        let capacity = self.current.capacity();
        if self.len() == 0 {
            *self = Self::default();
        } else if self.retiring.is_empty()
            && capacity > SHRINK_CAPACITY_MIN
            && self.current.len() * 4 < capacity
        {
            self.current.shrink_to(self.current.len() * 2, hash_of);
        }
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.current.capacity() + self.retiring.capacity()
    }

    #[cfg(test)]
    pub(super) fn growing(&self) -> bool {
        !self.retiring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(id: &NodeId) -> u64 {
        u64::from(id.0).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn growth_moves_every_entry_without_growing_the_new_table() {
        let mut edges = Edges::default();
        let mut grew = 0;
        let mut capacity_when_growth_began = 0;
        for n in 0..50_000 {
            let was_growing = edges.growing();
            edges.insert(hash_of(&NodeId(n)), NodeId(n), hash_of);
            if edges.growing() && !was_growing {
                grew += 1;
                capacity_when_growth_began = edges.current.capacity();
            }
            if edges.growing() {
                assert_eq!(edges.current.capacity(), capacity_when_growth_began, "at {n}");
            }
            if n % 997 == 0 {
                for m in (0..=n).step_by(101) {
                    assert_eq!(
                        edges.find(hash_of(&NodeId(m)), |&id| id == NodeId(m)),
                        Some(NodeId(m))
                    );
                }
            }
        }
        assert!(grew >= 5, "grew {grew} times");
        assert_eq!(edges.len(), 50_000);
        for n in 0..50_000 {
            edges.remove(hash_of(&NodeId(n)), NodeId(n), hash_of);
            edges.shrink_if_sparse(hash_of);
        }
        assert_eq!(edges.len(), 0);
        assert_eq!(edges.capacity(), 0);
    }

    #[test]
    fn removals_find_edges_in_the_retiring_table() {
        let mut edges = Edges::default();
        let mut n = 0;
        while !edges.growing() {
            edges.insert(hash_of(&NodeId(n)), NodeId(n), hash_of);
            n += 1;
        }
        assert!(edges.retiring.len() > 100);
        for m in (0..n).rev() {
            edges.remove(hash_of(&NodeId(m)), NodeId(m), hash_of);
            assert_eq!(edges.find(hash_of(&NodeId(m)), |&id| id == NodeId(m)), None);
        }
        assert_eq!(edges.len(), 0);
    }
}
