//! A trie of topic levels, shared by the subscription index and the retained store.
//!
//! Nodes live in an arena of fixed-size chunks addressed by a `u32` [`NodeId`]; each node holds
//! its level's bytes (inline up to [`LABEL_INLINE_BYTES`]), its parent, its child count and a
//! caller's value `T`. Every parent-to-child edge lives in one hash table keyed by
//! (parent, level) that stores only the child's id, so finding a child is one probe whether the
//! parent has one child or a million, and a leaf (most nodes) pays for no map of its own.
//! The trie does not enumerate children; a user that needs to (the retained store) keeps its
//! own sibling links in `T`.
//!
//! A lookup takes a [`Level`]: the level's bytes hashed once (seeded per trie). Routing a topic
//! probes several nodes with the same level, so the bytes are hashed once per level, not once
//! per probe; an edge's hash is a cheap mix of the level's hash and the parent's id.
//!
//! Invariants: node 0 is the root, which has no label and is never freed; every other live node
//! is the target of exactly one edge, keyed by its parent and its label; `children` counts the
//! live nodes whose parent it is; a freed slot is on the free list, holds `T::default()` and is
//! in no edge. The chunked arena never moves a node and wastes at most one chunk of capacity,
//! where a single growing `Vec` could hold twice what it needs.

use std::fmt;
use std::hash::BuildHasher;

use thin_vec::ThinVec;

use edges::Edges;

mod edges;

/// Levels of up to this many bytes are stored in the node itself; longer ones on the heap.
pub(crate) const LABEL_INLINE_BYTES: usize = 14;

/// Nodes per arena chunk (a power of two, so indexing is a shift and a mask).
const CHUNK_NODES: usize = 4096;
const CHUNK_SHIFT: u32 = CHUNK_NODES.trailing_zeros();

/// A node of one trie. Meaningless in any other trie.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) struct NodeId(u32);

impl NodeId {
    pub(crate) const ROOT: Self = Self(0);
    /// Marks "no node" in packed fields (the root's parent, empty links).
    pub(crate) const NONE: Self = Self(u32::MAX);

    pub(crate) const fn index(self) -> usize {
        self.0 as usize
    }
}

/// One level's bytes: inline when short (most levels are), else in a thin heap vector, so a
/// label costs 16 bytes in the node either way. Inline, byte 0 is the length.
#[derive(Clone)]
enum Label {
    Inline([u8; LABEL_INLINE_BYTES + 1]),
    Heap(ThinVec<u8>),
}

/// `level` packed as an inline label, if it is short enough.
fn pack(level: &[u8]) -> Option<[u8; LABEL_INLINE_BYTES + 1]> {
    (level.len() <= LABEL_INLINE_BYTES).then(|| {
        let mut packed = [0; LABEL_INLINE_BYTES + 1];
        // The length fits in a u8: it is at most LABEL_INLINE_BYTES.
        packed[0] = level.len() as u8;
        packed[1..=level.len()].copy_from_slice(level);
        packed
    })
}

impl Label {
    fn new(level: &[u8]) -> Self {
        match pack(level) {
            Some(packed) => Self::Inline(packed),
            None => Self::Heap(ThinVec::from(level)),
        }
    }

    const EMPTY: Self = Self::Inline([0; LABEL_INLINE_BYTES + 1]);

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline(packed) => &packed[1..=usize::from(packed[0])],
            Self::Heap(bytes) => bytes,
        }
    }

    fn equals(&self, level: &Level<'_>) -> bool {
        self.as_bytes() == level.bytes
    }
}

/// A level prepared for lookups in one trie: see the module docs. Made by [`TopicTrie::level`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Level<'a> {
    bytes: &'a [u8],
    hash: u64,
}

impl<'a> Level<'a> {
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

struct Node<T> {
    label: Label,
    parent: NodeId,
    children: u32,
    value: T,
}

/// A trie of topic levels with a value of type `T` at each node. See the module docs.
pub(crate) struct TopicTrie<T> {
    chunks: Vec<Vec<Node<T>>>,
    free: Vec<NodeId>,
    edges: Edges,
    /// Seeded per trie, so clients cannot pick topic levels that collide on every broker.
    hasher: foldhash::fast::RandomState,
    /// Mixed with a parent's id in an edge's hash; from the same seed.
    parent_seed: u64,
    /// Live nodes, the root excluded.
    live: usize,
}

/// The hash of the edge from `parent` by a level whose bytes hash to `level_hash`: one
/// widening multiply that folds both into 64 bits (foldhash's own mixing step).
fn edge_hash(parent_seed: u64, parent: NodeId, level_hash: u64) -> u64 {
    let product = u128::from(level_hash) * u128::from(u64::from(parent.0) ^ parent_seed);
    (product as u64) ^ ((product >> 64) as u64)
}

/// The edge hash of an existing node, for resizing the edge table.
fn node_hash<T>(
    chunks: &[Vec<Node<T>>],
    hasher: &foldhash::fast::RandomState,
    parent_seed: u64,
    id: NodeId,
) -> u64 {
    let node = node_in(chunks, id);
    edge_hash(parent_seed, node.parent, hasher.hash_one(node.label.as_bytes()))
}

fn node_in<T>(chunks: &[Vec<Node<T>>], id: NodeId) -> &Node<T> {
    &chunks[id.index() >> CHUNK_SHIFT][id.index() & (CHUNK_NODES - 1)]
}

impl<T: Default> TopicTrie<T> {
    pub(crate) fn new() -> Self {
        let root =
            Node { label: Label::EMPTY, parent: NodeId::NONE, children: 0, value: T::default() };
        let hasher = foldhash::fast::RandomState::default();
        // Odd, so the multiply in `edge_hash` never has a zero factor from the seed alone.
        let parent_seed = hasher.hash_one(u64::MAX) | 1;
        Self {
            chunks: vec![vec![root]],
            free: Vec::new(),
            edges: Edges::default(),
            hasher,
            parent_seed,
            live: 0,
        }
    }

    fn node(&self, id: NodeId) -> &Node<T> {
        node_in(&self.chunks, id)
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node<T> {
        &mut self.chunks[id.index() >> CHUNK_SHIFT][id.index() & (CHUNK_NODES - 1)]
    }

    /// `bytes` prepared for lookups in this trie.
    pub(crate) fn level<'a>(&self, bytes: &'a [u8]) -> Level<'a> {
        Level { bytes, hash: self.hasher.hash_one(bytes) }
    }

    /// The child of `parent` for `level`, if there is one.
    #[inline]
    pub(crate) fn child(&self, parent: NodeId, level: &Level<'_>) -> Option<NodeId> {
        let hash = edge_hash(self.parent_seed, parent, level.hash);
        let chunks = &self.chunks;
        self.edges.find(hash, |&id| {
            let node = node_in(chunks, id);
            node.parent == parent && node.label.equals(level)
        })
    }

    /// The child of `parent` for `level`, created with `T::default()` if absent; the flag says
    /// whether it was created.
    pub(crate) fn child_or_insert(&mut self, parent: NodeId, level: &Level<'_>) -> (NodeId, bool) {
        match self.child(parent, level) {
            Some(id) => (id, false),
            None => (self.add_child(parent, level), true),
        }
    }

    /// Adds a child of `parent` for `level`, which must not exist yet.
    pub(crate) fn add_child(&mut self, parent: NodeId, level: &Level<'_>) -> NodeId {
        assert!(self.child(parent, level).is_none(), "duplicate edge");
        let node =
            Node { label: Label::new(level.bytes), parent, children: 0, value: T::default() };
        let id = match self.free.pop() {
            Some(id) => {
                *self.node_mut(id) = node;
                id
            }
            None => self.push_node(node),
        };
        self.node_mut(parent).children += 1;
        self.live += 1;
        let hash = edge_hash(self.parent_seed, parent, level.hash);
        let (chunks, hasher, seed) = (&self.chunks, &self.hasher, self.parent_seed);
        self.edges.insert(hash, id, |&other| node_hash(chunks, hasher, seed, other));
        id
    }

    fn push_node(&mut self, node: Node<T>) -> NodeId {
        // The chunks vector is never empty: chunk 0 holds the root.
        let last = self.chunks.last_mut().expect("the root's chunk exists");
        if last.len() == CHUNK_NODES {
            let mut chunk = Vec::with_capacity(CHUNK_NODES);
            chunk.push(node);
            self.chunks.push(chunk);
        } else {
            // Chunk 0 grows by doubling up to CHUNK_NODES (a power of two), so small tries stay
            // small; later chunks are allocated whole.
            last.push(node);
        }
        let index =
            (self.chunks.len() - 1) * CHUNK_NODES + self.chunks.last().map_or(0, Vec::len) - 1;
        assert!(index < NodeId::NONE.index(), "topic trie full");
        NodeId(index as u32)
    }

    /// Removes `id`, which must be a live non-root node without children; returns its value.
    pub(crate) fn remove_leaf(&mut self, id: NodeId) -> T {
        assert!(id != NodeId::ROOT, "the root is never removed");
        let node = self.node(id);
        assert!(node.parent != NodeId::NONE, "removing a free node");
        assert_eq!(node.children, 0, "removing a node with children");
        let parent = node.parent;
        let hash = node_hash(&self.chunks, &self.hasher, self.parent_seed, id);
        let (chunks, hasher, seed) = (&self.chunks, &self.hasher, self.parent_seed);
        self.edges.remove(hash, id, |&other| node_hash(chunks, hasher, seed, other));
        let freed =
            Node { label: Label::EMPTY, parent: NodeId::NONE, children: 0, value: T::default() };
        let old = std::mem::replace(self.node_mut(id), freed);
        self.node_mut(parent).children -= 1;
        self.live -= 1;
        self.free.push(id);
        self.shrink_if_sparse();
        old.value
    }

    /// Gives memory back after mass removals: the edge table when it is mostly empty (a
    /// rehash of what is left, so rare: at a quarter full), the arena when no node is left. (A
    /// partly emptied arena keeps its chunks for reuse.)
    fn shrink_if_sparse(&mut self) {
        if self.live == 0 {
            self.chunks.truncate(1);
            self.chunks[0].truncate(1);
            self.chunks[0].shrink_to_fit();
            self.free = Vec::new();
        }
        let (chunks, hasher, seed) = (&self.chunks, &self.hasher, self.parent_seed);
        self.edges.shrink_if_sparse(|&other| node_hash(chunks, hasher, seed, other));
    }

    pub(crate) fn value(&self, id: NodeId) -> &T {
        &self.node(id).value
    }

    pub(crate) fn value_mut(&mut self, id: NodeId) -> &mut T {
        &mut self.node_mut(id).value
    }

    /// The parent of `id`; `None` for the root.
    pub(crate) fn parent(&self, id: NodeId) -> Option<NodeId> {
        let parent = self.node(id).parent;
        (parent != NodeId::NONE).then_some(parent)
    }

    pub(crate) fn child_count(&self, id: NodeId) -> u32 {
        self.node(id).children
    }

    pub(crate) fn label(&self, id: NodeId) -> &[u8] {
        self.node(id).label.as_bytes()
    }

    /// Live nodes, the root excluded.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The node for a whole path of levels, if every level exists.
    pub(crate) fn find<'a>(&self, levels: impl Iterator<Item = &'a [u8]>) -> Option<NodeId> {
        levels
            .into_iter()
            .try_fold(NodeId::ROOT, |node, level| self.child(node, &self.level(level)))
    }
}

impl<T> fmt::Debug for TopicTrie<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicTrie")
            .field("nodes", &self.live)
            .field("free", &self.free.len())
            .field("edges", &self.edges.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(trie: &mut TopicTrie<u32>, parent: NodeId, bytes: &[u8]) -> NodeId {
        let level = trie.level(bytes);
        trie.add_child(parent, &level)
    }

    fn child(trie: &TopicTrie<u32>, parent: NodeId, bytes: &[u8]) -> Option<NodeId> {
        trie.child(parent, &trie.level(bytes))
    }

    #[test]
    fn node_and_label_stay_small() {
        // The per-subscription memory budget rests on these sizes.
        assert_eq!(std::mem::size_of::<Label>(), 16);
        assert_eq!(std::mem::size_of::<Node<[u32; 3]>>(), 40);
        assert_eq!(std::mem::size_of::<Option<[u8; LABEL_INLINE_BYTES + 1]>>(), 16);
    }

    #[test]
    fn labels_round_trip_inline_and_on_the_heap() {
        let trie = TopicTrie::<u32>::new();
        for level in [&b""[..], b"a", b"fourteen bytes", b"fifteen bytes!!", &[b'x'; 300]] {
            let label = Label::new(level);
            assert_eq!(label.as_bytes(), level);
            assert!(label.equals(&trie.level(level)));
            assert!(!label.equals(&trie.level(b"fifteen bytes!?")));
            assert!(!label.equals(&trie.level(b"b")));
        }
    }

    #[test]
    fn children_are_found_by_parent_and_level() {
        let mut trie = TopicTrie::<u32>::new();
        let a = add(&mut trie, NodeId::ROOT, b"a");
        let b = add(&mut trie, a, b"b");
        let a2 = add(&mut trie, b, b"a");
        assert_eq!(child(&trie, NodeId::ROOT, b"a"), Some(a));
        assert_eq!(child(&trie, a, b"b"), Some(b));
        assert_eq!(child(&trie, b, b"a"), Some(a2));
        assert_eq!(child(&trie, a, b"a"), None);
        assert_eq!(trie.find([&b"a"[..], b"b", b"a"].into_iter()), Some(a2));
        assert_eq!(trie.child_count(a), 1);
        assert_eq!(trie.len(), 3);
        assert_eq!(trie.parent(a2), Some(b));
        assert_eq!(trie.parent(NodeId::ROOT), None);
    }

    #[test]
    fn removed_slots_are_reused_and_an_empty_trie_shrinks() {
        let mut trie = TopicTrie::<u32>::new();
        let ids: Vec<_> = (0..10_000u32)
            .map(|n| add(&mut trie, NodeId::ROOT, n.to_string().as_bytes()))
            .collect();
        assert_eq!(trie.chunks.len(), 3);
        *trie.value_mut(ids[5]) = 7;
        assert_eq!(trie.remove_leaf(ids[5]), 7);
        assert_eq!(child(&trie, NodeId::ROOT, b"5"), None);
        let again = add(&mut trie, NodeId::ROOT, b"again");
        assert_eq!(again, ids[5]);
        assert_eq!(*trie.value(again), 0);
        trie.remove_leaf(again);
        for (n, id) in ids.iter().enumerate().filter(|(n, _)| *n != 5) {
            assert_eq!(child(&trie, NodeId::ROOT, n.to_string().as_bytes()), Some(*id));
            trie.remove_leaf(*id);
        }
        assert_eq!(trie.len(), 0);
        assert_eq!(trie.child_count(NodeId::ROOT), 0);
        assert_eq!(trie.chunks.len(), 1);
        assert_eq!(trie.edges.capacity(), 0);
    }

    #[test]
    #[should_panic(expected = "removing a node with children")]
    fn removing_an_inner_node_is_a_bug() {
        let mut trie = TopicTrie::<u32>::new();
        let a = add(&mut trie, NodeId::ROOT, b"a");
        add(&mut trie, a, b"b");
        trie.remove_leaf(a);
    }
}
