//! Retained messages: one per topic, found by topic filter.
//!
//! PLACEHOLDER: a linear scan with the same API as the topic trie that replaces it (issue 3).

use super::ids::Millis;
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

#[derive(Debug)]
pub struct RetainedStore {
    messages: Vec<(Message, Millis)>,
    capacity: usize,
}

impl RetainedStore {
    pub fn new(retained_messages_max: usize) -> Self {
        Self { messages: Vec::new(), capacity: retained_messages_max }
    }

    /// Stores `message` for its topic (an empty payload deletes) as of `now`.
    pub fn set(&mut self, message: Message, now: Millis) -> RetainOutcome {
        let existing = self.messages.iter().position(|(m, _)| m.topic == message.topic);
        match (existing, message.payload.is_empty()) {
            (Some(index), true) => {
                self.messages.swap_remove(index);
                RetainOutcome::Deleted
            }
            (None, true) => RetainOutcome::NothingToDelete,
            (Some(index), false) => {
                self.messages[index] = (message, now);
                RetainOutcome::Replaced
            }
            (None, false) if self.messages.len() >= self.capacity => RetainOutcome::Full,
            (None, false) => {
                self.messages.push((message, now));
                RetainOutcome::Stored
            }
        }
    }

    pub fn get(&self, topic: &TopicName) -> Option<&Message> {
        self.messages.iter().find(|(m, _)| &m.topic == topic).map(|(m, _)| m)
    }

    /// Calls `visit` with every retained message whose topic `filter` matches.
    pub fn for_each_match(&self, filter: &TopicFilter, mut visit: impl FnMut(&Message)) {
        for (message, _) in &self.messages {
            if filter.matches(&message.topic) {
                visit(message);
            }
        }
    }

    /// Removes messages set at or before `now - expiry_secs`; returns how many.
    pub fn expire(&mut self, now: Millis, expiry_secs: u64) -> usize {
        let before = self.messages.len();
        self.messages.retain(|(_, set_at)| now.since(*set_at) < expiry_secs.saturating_mul(1000));
        before - self.messages.len()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}
