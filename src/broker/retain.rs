//! Retained messages: one per topic, found by topic filter.
//!
//! The messages hang off a [`TopicTrie`] of topic levels, so `for_each_match` walks only the
//! branches a filter can match: an exact level is one hash probe, `+` visits the node's children,
//! `#` its whole subtree. The trie does not enumerate children, so each node keeps its own
//! doubly linked sibling list (first child, previous, next) here, which makes unlinking O(1).
//!
//! Expiry: the messages also form a doubly linked list in the order they were set (a
//! replacement moves to the newest end). `expire` pops from the oldest end while the oldest is
//! due, so a call costs one step per expired message plus one, never a scan of the store, and
//! the list needs no memory beyond two indices per message and never holds stale entries.
//! Times are the driver's monotonic clock; a `now` earlier than the newest message's (which a
//! monotonic clock never gives) is raised to it, so the list stays in order. A message restored
//! after a restart keeps its age (`set_aged`), which may reach before the clock's zero: set
//! times are kept offset by `SET_AT_BIAS_MILLIS` so they never go below zero.
//!
//! Invariants: at most `retained_messages_max` messages; a trie node exists only while it or a
//! node below it holds a message (deleting prunes); a node's `message` and a message's `node`
//! point at each other.

use std::fmt;

use slab::Slab;
use smallvec::SmallVec;

use super::ids::Millis;
use super::topic_trie::{Level, NodeId, TopicTrie};
use super::Message;
use crate::protocol::{TopicFilter, TopicName};

/// The outcome of offering a retained message to the store.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RetainOutcome {
    Stored,
    Replaced,
    Deleted,
    /// An empty payload for a topic with nothing retained.
    NothingToDelete,
    /// A new topic while `retained_messages_max` are held: not stored.
    Full,
}

const NONE: u32 = u32::MAX;

/// Added to every stored set time: a restored message's age may reach before `Millis(0)`
/// (about 140,000 years of room).
const SET_AT_BIAS_MILLIS: u64 = 1 << 52;

/// A trie node's links: its children's list, its place in its parent's, and its message.
#[derive(Clone, Copy, Debug)]
struct Links {
    first_child: NodeId,
    previous: NodeId,
    next: NodeId,
    /// Key in `RetainedStore::messages`, or `NONE`.
    message: u32,
}

impl Default for Links {
    fn default() -> Self {
        Self {
            first_child: NodeId::NONE,
            previous: NodeId::NONE,
            next: NodeId::NONE,
            message: NONE,
        }
    }
}

#[derive(Debug)]
struct Retained {
    message: Message,
    /// When it was set: `Millis` plus `SET_AT_BIAS_MILLIS`.
    set_at: u64,
    node: NodeId,
    /// Neighbours in set-time order (keys in `messages`, or `NONE`).
    older: u32,
    newer: u32,
}

pub struct RetainedStore {
    trie: TopicTrie<Links>,
    messages: Slab<Retained>,
    capacity: usize,
    oldest: u32,
    newest: u32,
}

impl fmt::Debug for RetainedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("messages", &self.messages.len())
            .field("capacity", &self.capacity)
            .field("trie", &self.trie)
            .finish()
    }
}

impl RetainedStore {
    pub fn new(retained_messages_max: usize) -> Self {
        assert!(retained_messages_max < NONE as usize, "retained_messages_max beyond u32 keys");
        Self {
            trie: TopicTrie::new(),
            messages: Slab::new(),
            capacity: retained_messages_max,
            oldest: NONE,
            newest: NONE,
        }
    }

    fn message_at(&self, topic: &TopicName) -> Option<u32> {
        let node = self.trie.find(topic.levels())?;
        let key = self.trie.value(node).message;
        (key != NONE).then_some(key)
    }

    /// Stores `message` for its topic (an empty payload deletes) as of `now`.
    pub fn set(&mut self, message: Message, now: Millis) -> RetainOutcome {
        self.set_aged(message, now, 0)
    }

    /// `set`, for a message set `age_millis` before `now` (restored after a restart, so
    /// `retained_expiry_secs` counts from when it was first set). Restore in set-time order:
    /// a message cannot be older than the newest one held (its age is cut to fit).
    pub fn set_aged(&mut self, message: Message, now: Millis, age_millis: u64) -> RetainOutcome {
        let set_at = (now.0.saturating_add(SET_AT_BIAS_MILLIS)).saturating_sub(age_millis);
        let existing = self.message_at(&message.topic);
        match (existing, message.payload.is_empty()) {
            (Some(key), true) => {
                self.remove(key);
                RetainOutcome::Deleted
            }
            (None, true) => RetainOutcome::NothingToDelete,
            (Some(key), false) => {
                self.unlink_message(key);
                let set_at = self.clamp(set_at);
                let retained = &mut self.messages[key as usize];
                retained.message = message;
                retained.set_at = set_at;
                self.link_newest(key);
                RetainOutcome::Replaced
            }
            (None, false) if self.messages.len() >= self.capacity => RetainOutcome::Full,
            (None, false) => {
                let node = self.node_or_insert(&message.topic);
                let set_at = self.clamp(set_at);
                let entry = Retained { message, set_at, node, older: NONE, newer: NONE };
                let key = self.messages.insert(entry) as u32;
                self.trie.value_mut(node).message = key;
                self.link_newest(key);
                RetainOutcome::Stored
            }
        }
    }

    /// Calls `visit` with every retained message, in no particular order.
    pub fn for_each(&self, mut visit: impl FnMut(&Message)) {
        for (_, retained) in &self.messages {
            visit(&retained.message);
        }
    }

    /// Calls `visit` with every retained message and when it was set, in milliseconds of the
    /// driver's clock (negative: before its zero, a message restored with its age).
    pub fn for_each_set_at(&self, mut visit: impl FnMut(&Message, i64)) {
        for (_, retained) in &self.messages {
            // Cannot fail: both are under 2^63 (the bias is 2^52, clock values far below).
            let set_at = i64::try_from(retained.set_at).expect("under 2^63")
                - i64::try_from(SET_AT_BIAS_MILLIS).expect("2^52");
            visit(&retained.message, set_at);
        }
    }

    /// One past the highest key a message can have now: the range a sliced scan walks with
    /// [`Self::message_in_slot`].
    pub fn slots(&self) -> usize {
        self.messages.capacity()
    }

    /// The message stored under key `slot`, if any (for the admin API's sliced read).
    pub fn message_in_slot(&self, slot: usize) -> Option<&Message> {
        self.messages.get(slot).map(|retained| &retained.message)
    }

    pub fn get(&self, topic: &TopicName) -> Option<&Message> {
        self.message_at(topic).map(|key| &self.messages[key as usize].message)
    }

    /// Calls `visit` with every retained message whose topic `filter` matches.
    ///
    /// Depth-first over (node, filter level) pairs on a small stack: an exact level follows one
    /// edge, `+` every child, `#` the node itself (the parent level [MQTT-4.7.1-2]) and its whole
    /// subtree. A filter starting with a wildcard skips `$` topics [MQTT-4.7.2-1].
    pub fn for_each_match(&self, filter: &TopicFilter, mut visit: impl FnMut(&Message)) {
        // Each level hashed once, however many nodes `+` makes it probe.
        let levels: SmallVec<[Level<'_>; 8]> =
            filter.levels().map(|level| self.trie.level(level)).collect();
        let mut stack: SmallVec<[(NodeId, usize); 16]> = SmallVec::new();
        stack.push((NodeId::ROOT, 0));
        while let Some((node, depth)) = stack.pop() {
            let Some(level) = levels.get(depth) else {
                self.visit_node(node, &mut visit);
                continue;
            };
            let skip_dollar = node == NodeId::ROOT;
            match level.bytes() {
                b"#" => {
                    self.visit_node(node, &mut visit);
                    self.visit_subtree(node, skip_dollar, &mut visit);
                }
                b"+" => {
                    for child in self.children(node) {
                        if !(skip_dollar && self.trie.label(child).first() == Some(&b'$')) {
                            stack.push((child, depth + 1));
                        }
                    }
                }
                _ => {
                    if let Some(child) = self.trie.child(node, level) {
                        stack.push((child, depth + 1));
                    }
                }
            }
        }
    }

    fn visit_node(&self, node: NodeId, visit: &mut impl FnMut(&Message)) {
        let key = self.trie.value(node).message;
        if key != NONE {
            visit(&self.messages[key as usize].message);
        }
    }

    /// Visits every message strictly below `top`.
    fn visit_subtree(&self, top: NodeId, skip_dollar: bool, visit: &mut impl FnMut(&Message)) {
        let mut stack: SmallVec<[NodeId; 16]> = self
            .children(top)
            .filter(|&child| !(skip_dollar && self.trie.label(child).first() == Some(&b'$')))
            .collect();
        while let Some(node) = stack.pop() {
            self.visit_node(node, visit);
            stack.extend(self.children(node));
        }
    }

    fn children(&self, node: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let first = self.trie.value(node).first_child;
        std::iter::successors((first != NodeId::NONE).then_some(first), |&child| {
            let next = self.trie.value(child).next;
            (next != NodeId::NONE).then_some(next)
        })
    }

    /// Removes messages set at or before `now - expiry_secs`; returns how many. An
    /// `expiry_secs` of 0 means "kept forever" (`retained_expiry_secs`), so nothing expires.
    pub fn expire(&mut self, now: Millis, expiry_secs: u64) -> usize {
        if expiry_secs == 0 {
            return 0;
        }
        let mut expired = 0;
        let now = now.0.saturating_add(SET_AT_BIAS_MILLIS);
        while self.oldest != NONE
            && now.saturating_sub(self.messages[self.oldest as usize].set_at)
                >= expiry_secs.saturating_mul(1000)
        {
            self.remove(self.oldest);
            expired += 1;
        }
        expired
    }

    /// When the oldest message falls due under `expiry_secs` (for the broker's next deadline);
    /// `None` when nothing is held or nothing expires.
    pub fn next_expiry(&self, expiry_secs: u64) -> Option<Millis> {
        if expiry_secs == 0 || self.oldest == NONE {
            return None;
        }
        let due = self.messages[self.oldest as usize]
            .set_at
            .saturating_add(expiry_secs.saturating_mul(1000));
        Some(Millis(due.saturating_sub(SET_AT_BIAS_MILLIS)))
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Trie nodes held (the root excluded): zero when the store is empty.
    pub fn node_count(&self) -> usize {
        self.trie.len()
    }

    fn clamp(&self, set_at: u64) -> u64 {
        match self.newest {
            NONE => set_at,
            key => set_at.max(self.messages[key as usize].set_at),
        }
    }

    fn node_or_insert(&mut self, topic: &TopicName) -> NodeId {
        let mut node = NodeId::ROOT;
        for level in topic.levels() {
            let (child, created) = self.trie.child_or_insert(node, &self.trie.level(level));
            if created {
                let first = self.trie.value(node).first_child;
                if first != NodeId::NONE {
                    self.trie.value_mut(first).previous = child;
                }
                self.trie.value_mut(child).next = first;
                self.trie.value_mut(node).first_child = child;
            }
            node = child;
        }
        node
    }

    /// Deletes message `key` and prunes the trie nodes it leaves empty.
    fn remove(&mut self, key: u32) {
        self.unlink_message(key);
        let mut node = self.messages.remove(key as usize).node;
        self.trie.value_mut(node).message = NONE;
        while node != NodeId::ROOT
            && self.trie.child_count(node) == 0
            && self.trie.value(node).message == NONE
        {
            // A non-root node has a parent.
            let parent = self.trie.parent(node).expect("non-root node has a parent");
            let links = self.trie.remove_leaf(node);
            if links.previous == NodeId::NONE {
                self.trie.value_mut(parent).first_child = links.next;
            } else {
                self.trie.value_mut(links.previous).next = links.next;
            }
            if links.next != NodeId::NONE {
                self.trie.value_mut(links.next).previous = links.previous;
            }
            node = parent;
        }
    }

    fn unlink_message(&mut self, key: u32) {
        let Retained { older, newer, .. } = self.messages[key as usize];
        match older {
            NONE => self.oldest = newer,
            older => self.messages[older as usize].newer = newer,
        }
        match newer {
            NONE => self.newest = older,
            newer => self.messages[newer as usize].older = older,
        }
    }

    fn link_newest(&mut self, key: u32) {
        let previous = self.newest;
        let retained = &mut self.messages[key as usize];
        retained.older = previous;
        retained.newer = NONE;
        match previous {
            NONE => self.oldest = key,
            previous => self.messages[previous as usize].newer = key,
        }
        self.newest = key;
    }
}

#[cfg(test)]
#[path = "retain_tests.rs"]
mod tests;
