//! The subscription index: which local sessions, and which other workers, want a topic.
//!
//! A trie of filter levels ([`TopicTrie`]): the node reached by a filter's levels holds that
//! filter's local subscribers and the set of other workers with subscribers of exactly that
//! filter (the summary that lets a publish go only to interested workers, at a cost that does not
//! grow with the uninterested ones). Routing a topic walks the trie level by level, following the
//! exact level, `+` and `#` children of each node reached so far; it visits only nodes of filters
//! that can match, so its cost depends on the topic's depth and the matching filters, not on the
//! number of subscriptions.
//!
//! Invariants: a node exists only while it, or a node below it, has a local subscriber or a
//! remote worker (unsubscribing prunes what is left empty); a node's subscribers are inline when
//! there is one (the common case) and in a shared set when there are several, never an empty set
//! nor a set of one; `subscriptions` counts (session, filter) pairs held.

use std::fmt;

use slab::Slab;

use super::ids::{SessionId, WorkerId, WorkerSet};
use super::topic_trie::{Level, NodeId, TopicTrie};
use crate::protocol::{QoS, TopicFilter, TopicName};

/// What one topic matched: local sessions (each once, at the highest granted QoS of its
/// matching filters [MQTT-3.3.5-1]) and the other workers with at least one matching filter.
/// Reuse one across calls: after the first few topics, matching allocates nothing.
#[derive(Debug, Default)]
pub struct Matches {
    pub sessions: Vec<(SessionId, QoS)>,
    pub workers: WorkerSet,
    /// Trie nodes reached by the levels seen so far, and those reached by the next level.
    frontier: Vec<NodeId>,
    next: Vec<NodeId>,
}

impl Matches {
    pub fn clear(&mut self) {
        self.sessions.clear();
        self.workers = WorkerSet::empty();
    }
}

/// The local subscribers of one filter.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
enum Local {
    #[default]
    None,
    /// One subscriber, whose session is in `Slot::session`.
    One(QoS),
    /// Several, in `SubscriptionIndex::shared[Slot::session]`.
    Many,
}

/// Whether a node has a `+` or `#` child, so routing probes for them only where they exist.
const HAS_PLUS: u8 = 1;
const HAS_HASH: u8 = 2;
const NO_REMOTE: u32 = u32::MAX;
/// Marks a `Slot::remote` that names its one other worker inline. A filter with its own topic
/// (one subscriber, so one interested worker) is the common case at density: every other
/// worker holds such an entry, so a set in the slab for it would cost ~25 bytes per filter per
/// worker (issue 6).
const ONE_REMOTE: u32 = 1 << 31;

/// What a trie node holds: 12 bytes, so a node is 40.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The one subscriber's session id, or the key of the shared set (see [`Local`]).
    session: u32,
    /// This filter's other workers: `NO_REMOTE`; one worker, inline (`ONE_REMOTE | index`);
    /// or the key of a set of several in `SubscriptionIndex::remote`.
    remote: u32,
    local: Local,
    wildcard_children: u8,
}

impl Default for Slot {
    fn default() -> Self {
        Self { session: 0, remote: NO_REMOTE, local: Local::None, wildcard_children: 0 }
    }
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.local == Local::None && self.remote == NO_REMOTE
    }
}

/// The subscribers of a filter held by more than one session. A fixed hash seed keeps the order
/// of `Matches::sessions` a function of the operations done, for deterministic tests; session
/// ids are the broker's, not a client's, choice.
type SharedSessions = hashbrown::HashMap<SessionId, QoS, foldhash::fast::FixedState>;

const PLUS: &[u8] = b"+";
const HASH: &[u8] = b"#";

pub struct SubscriptionIndex {
    trie: TopicTrie<Slot>,
    /// The wildcard levels, hashed once.
    plus: Level<'static>,
    hash: Level<'static>,
    shared: Slab<SharedSessions>,
    remote: Slab<WorkerSet>,
    subscriptions: usize,
}

impl Default for SubscriptionIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SubscriptionIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("subscriptions", &self.subscriptions)
            .field("trie", &self.trie)
            .field("shared_sets", &self.shared.len())
            .field("remote_sets", &self.remote.len())
            .finish()
    }
}

/// The worker an inline `Slot::remote` names.
fn one_remote(remote: u32) -> WorkerId {
    // Cannot fail: inline values are made from a u16 worker index (see `set_remote_interest`).
    WorkerId(u16::try_from(remote & !ONE_REMOTE).expect("an inline worker index"))
}

impl SubscriptionIndex {
    pub fn new() -> Self {
        let trie = TopicTrie::new();
        let (plus, hash) = (trie.level(PLUS), trie.level(HASH));
        Self { trie, plus, hash, shared: Slab::new(), remote: Slab::new(), subscriptions: 0 }
    }

    /// The node for `filter`, created (with its path) if absent.
    fn node_or_insert(&mut self, filter: &TopicFilter) -> NodeId {
        let mut node = NodeId::ROOT;
        for level in filter.levels() {
            let (child, created) = self.trie.child_or_insert(node, &self.trie.level(level));
            if created {
                self.trie.value_mut(node).wildcard_children |= wildcard_flag(level);
            }
            node = child;
        }
        node
    }

    /// Removes `node` and its ancestors while they hold nothing.
    fn prune(&mut self, mut node: NodeId) {
        while node != NodeId::ROOT
            && self.trie.child_count(node) == 0
            && self.trie.value(node).is_empty()
        {
            // A non-root node has a parent.
            let parent = self.trie.parent(node).expect("non-root node has a parent");
            let flag = wildcard_flag(self.trie.label(node));
            self.trie.remove_leaf(node);
            self.trie.value_mut(parent).wildcard_children &= !flag;
            node = parent;
        }
    }

    /// Adds or replaces `session`'s subscription to `filter`. Returns true when this is the
    /// first local subscription to `filter` (the other workers must hear of the interest).
    pub fn subscribe(&mut self, filter: &TopicFilter, session: SessionId, qos: QoS) -> bool {
        self.subscribe_node(filter, session, qos).1
    }

    /// [`Self::subscribe`], also giving the filter's node: what a session keeps of its
    /// filter (`session.rs`), since the node holds the filter's levels once for all its
    /// subscribers and stays while the session is one of them.
    pub(crate) fn subscribe_node(
        &mut self,
        filter: &TopicFilter,
        session: SessionId,
        qos: QoS,
    ) -> (NodeId, bool) {
        let node = self.node_or_insert(filter);
        (node, self.subscribe_at(node, session, qos))
    }

    fn subscribe_at(&mut self, node: NodeId, session: SessionId, qos: QoS) -> bool {
        let slot = self.trie.value_mut(node);
        match slot.local {
            Local::None => {
                slot.local = Local::One(qos);
                slot.session = session.0;
                self.subscriptions += 1;
                true
            }
            Local::One(_) if slot.session == session.0 => {
                slot.local = Local::One(qos);
                false
            }
            Local::One(old_qos) => {
                let mut set = SharedSessions::default();
                set.insert(SessionId(slot.session), old_qos);
                set.insert(session, qos);
                let key = self.shared.insert(set);
                slot.session = u32::try_from(key).expect("fewer than 2^32 shared sets");
                slot.local = Local::Many;
                self.subscriptions += 1;
                false
            }
            Local::Many => {
                let set = &mut self.shared[slot.session as usize];
                if set.insert(session, qos).is_none() {
                    self.subscriptions += 1;
                }
                false
            }
        }
    }

    /// Removes `session`'s subscription to `filter`. Returns true when it was the last local
    /// subscription to `filter`. Removing an absent subscription changes nothing.
    pub fn unsubscribe(&mut self, filter: &TopicFilter, session: SessionId) -> bool {
        let Some(node) = self.trie.find(filter.levels()) else {
            return false;
        };
        self.unsubscribe_node(node, session)
    }

    /// [`Self::unsubscribe`] by the filter's node, which must be live (a session's own
    /// subscription's node is: the session keeps it alive).
    pub(crate) fn unsubscribe_node(&mut self, node: NodeId, session: SessionId) -> bool {
        let slot = self.trie.value_mut(node);
        match slot.local {
            Local::None => false,
            Local::One(_) if slot.session != session.0 => false,
            Local::One(_) => {
                slot.local = Local::None;
                self.subscriptions -= 1;
                self.prune(node);
                true
            }
            Local::Many => {
                let key = slot.session as usize;
                let set = &mut self.shared[key];
                if set.remove(&session).is_some() {
                    self.subscriptions -= 1;
                }
                if set.len() == 1 {
                    // Back to one subscriber: inline again, so a set of one never exists.
                    let set = self.shared.remove(key);
                    let (&remaining, &qos) = set.iter().next().expect("the set holds one");
                    slot.session = remaining.0;
                    slot.local = Local::One(qos);
                }
                false
            }
        }
    }

    /// The node of `filter`, if the index has one (a subscriber or an interested worker).
    pub(crate) fn node_of(&self, filter: &TopicFilter) -> Option<NodeId> {
        self.trie.find(filter.levels())
    }

    /// The filter whose levels lead to `node`, a live non-root node: its labels from the root
    /// down, joined by `/`. Sessions keep nodes, not filter text; this spells a filter out
    /// where its text is needed (snapshots, session info, the admin API, the interest
    /// broadcast when a session's last subscriber leaves), never on the routing path.
    pub(crate) fn filter_of(&self, node: NodeId) -> TopicFilter {
        assert!(node != NodeId::ROOT, "the root names no filter");
        let mut path = Vec::new();
        let mut at = node;
        let mut bytes = 0;
        while let Some(parent) = self.trie.parent(at) {
            path.push(at);
            bytes += self.trie.label(at).len() + 1;
            at = parent;
        }
        assert!(at == NodeId::ROOT, "{node:?} is not a live node");
        let mut text = Vec::with_capacity(bytes - 1);
        for (depth, &level) in path.iter().rev().enumerate() {
            if depth > 0 {
                text.push(b'/');
            }
            text.extend_from_slice(self.trie.label(level));
        }
        // The levels are those of a filter that was valid when subscribed, split at '/':
        // UTF-8, and joined back they are that filter.
        let text = String::from_utf8(text).expect("a filter's levels are UTF-8");
        TopicFilter::new(text.into()).expect("a subscribed filter's own levels are valid")
    }

    /// Whether `session` is the only local subscriber at `node` (so unsubscribing it ends
    /// this worker's interest in the filter).
    pub(crate) fn is_sole_subscriber(&self, node: NodeId, session: SessionId) -> bool {
        let slot = self.trie.value(node);
        matches!(slot.local, Local::One(_)) && slot.session == session.0
    }

    /// Records whether worker `worker` has local subscribers of `filter`.
    pub fn set_remote_interest(
        &mut self,
        filter: &TopicFilter,
        worker: WorkerId,
        interested: bool,
    ) {
        assert!(u32::from(worker.0) < ONE_REMOTE, "worker {worker:?} out of range");
        if interested {
            let node = self.node_or_insert(filter);
            let slot = self.trie.value_mut(node);
            match slot.remote {
                NO_REMOTE => slot.remote = ONE_REMOTE | u32::from(worker.0),
                one if one & ONE_REMOTE != 0 => {
                    let existing = one_remote(one);
                    if existing != worker {
                        let mut workers = WorkerSet::empty();
                        workers.insert(existing);
                        workers.insert(worker);
                        let key = self.remote.insert(workers);
                        slot.remote = u32::try_from(key)
                            .ok()
                            .filter(|&key| key < ONE_REMOTE)
                            .expect("fewer than 2^31 remote sets");
                    }
                }
                key => self.remote[key as usize].insert(worker),
            }
            return;
        }
        let Some(node) = self.trie.find(filter.levels()) else {
            return;
        };
        let slot = self.trie.value_mut(node);
        let emptied = match slot.remote {
            NO_REMOTE => false,
            one if one & ONE_REMOTE != 0 => one_remote(one) == worker,
            key => {
                let workers = &mut self.remote[key as usize];
                workers.remove(worker);
                let emptied = workers.is_empty();
                if emptied {
                    self.remote.remove(key as usize);
                }
                emptied
            }
        };
        if emptied {
            slot.remote = NO_REMOTE;
            self.prune(node);
        }
    }

    /// The other workers a `Slot::remote` names (not `NO_REMOTE`).
    fn remote_workers(&self, remote: u32) -> WorkerSet {
        if remote & ONE_REMOTE != 0 {
            let mut workers = WorkerSet::empty();
            workers.insert(one_remote(remote));
            workers
        } else {
            self.remote[remote as usize]
        }
    }

    /// Fills `out` (cleared first) with everything `topic` matches.
    ///
    /// Walks the topic's levels breadth-first: `out.frontier` holds the nodes whose filters
    /// match the levels seen so far. A node is reached at most once (its depth fixes the step,
    /// and two nodes at one step have different parents or labels), so the walk is bounded by
    /// the matching filters' nodes, and sessions need deduplicating only when more than one
    /// node contributed some.
    pub fn match_topic(&self, topic: &TopicName, out: &mut Matches) {
        out.clear();
        let mut frontier = std::mem::take(&mut out.frontier);
        let mut next = std::mem::take(&mut out.next);
        frontier.clear();
        frontier.push(NodeId::ROOT);
        let mut contributors = 0;
        // Wildcards at the first level do not match `$` topics [MQTT-4.7.2-1].
        let mut wildcards_allowed = !topic.is_dollar();
        for level in topic.levels() {
            let level = self.trie.level(level);
            next.clear();
            for &node in &frontier {
                let flags = self.trie.value(node).wildcard_children;
                if wildcards_allowed && flags & HAS_HASH != 0 {
                    // `#` matches this level and all below it.
                    let hash = self.trie.child(node, &self.hash).expect("flagged `#` child exists");
                    contributors += self.collect(hash, out);
                }
                if wildcards_allowed && flags & HAS_PLUS != 0 {
                    next.push(self.trie.child(node, &self.plus).expect("flagged `+` child exists"));
                }
                if let Some(child) = self.trie.child(node, &level) {
                    next.push(child);
                }
            }
            std::mem::swap(&mut frontier, &mut next);
            wildcards_allowed = true;
            if frontier.is_empty() {
                break;
            }
        }
        for &node in &frontier {
            contributors += self.collect(node, out);
            // "sport/#" matches "sport": `#` also matches the parent level [MQTT-4.7.1-2].
            if self.trie.value(node).wildcard_children & HAS_HASH != 0 {
                let hash = self.trie.child(node, &self.hash).expect("flagged `#` child exists");
                contributors += self.collect(hash, out);
            }
        }
        if contributors > 1 {
            // Highest QoS first within a session, then keep the first of each session.
            out.sessions.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            out.sessions.dedup_by_key(|entry| entry.0);
        }
        out.frontier = frontier;
        out.next = next;
    }

    /// Adds `node`'s subscribers and workers to `out`; returns 1 if it had local subscribers.
    fn collect(&self, node: NodeId, out: &mut Matches) -> usize {
        let slot = self.trie.value(node);
        if slot.remote != NO_REMOTE {
            out.workers = out.workers.union(self.remote_workers(slot.remote));
        }
        match slot.local {
            Local::None => 0,
            Local::One(qos) => {
                out.sessions.push((SessionId(slot.session), qos));
                1
            }
            Local::Many => {
                let set = &self.shared[slot.session as usize];
                out.sessions.extend(set.iter().map(|(&session, &qos)| (session, qos)));
                1
            }
        }
    }

    /// Local subscriptions held, counted once per (session, filter).
    pub fn len(&self) -> usize {
        self.subscriptions
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions == 0
    }

    /// Trie nodes held (the root excluded): zero once every subscription and remote interest is
    /// gone.
    pub fn node_count(&self) -> usize {
        self.trie.len()
    }
}

fn wildcard_flag(level: &[u8]) -> u8 {
    match level {
        PLUS => HAS_PLUS,
        HASH => HAS_HASH,
        _ => 0,
    }
}

#[cfg(test)]
#[path = "subscriptions_tests.rs"]
mod tests;
