//! The subscription index: which local sessions, and which other workers, want a topic.
//!
//! PLACEHOLDER: a linear scan with the same API as the trie that replaces it (issue 3). Keep the
//! API; replace the body.

use smallvec::SmallVec;

use super::ids::{SessionId, WorkerId, WorkerSet};
use crate::protocol::{QoS, TopicFilter, TopicName};

/// What one topic matched: local sessions (each once, at the highest granted QoS of its
/// matching filters) and the other workers with at least one matching filter.
#[derive(Debug, Default)]
pub struct Matches {
    pub sessions: Vec<(SessionId, QoS)>,
    pub workers: WorkerSet,
}

impl Matches {
    pub fn clear(&mut self) {
        self.sessions.clear();
        self.workers = WorkerSet::empty();
    }
}

#[derive(Debug, Default)]
struct Entry {
    filter: Option<TopicFilter>,
    sessions: SmallVec<[(SessionId, QoS); 1]>,
    workers: WorkerSet,
}

#[derive(Debug, Default)]
pub struct SubscriptionIndex {
    entries: Vec<Entry>,
    subscriptions: usize,
}

impl SubscriptionIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, filter: &TopicFilter) -> &mut Entry {
        let found = self.entries.iter().position(|e| e.filter.as_ref() == Some(filter));
        let index = found.unwrap_or_else(|| {
            self.entries.push(Entry { filter: Some(filter.clone()), ..Entry::default() });
            self.entries.len() - 1
        });
        &mut self.entries[index]
    }

    /// Adds or replaces `session`'s subscription to `filter`. Returns true when this is the
    /// first local subscription to `filter` (the other workers must hear of the interest).
    pub fn subscribe(&mut self, filter: &TopicFilter, session: SessionId, qos: QoS) -> bool {
        let entry = self.entry(filter);
        let first = entry.sessions.is_empty();
        if let Some(existing) = entry.sessions.iter_mut().find(|(s, _)| *s == session) {
            existing.1 = qos;
            return false;
        }
        entry.sessions.push((session, qos));
        self.subscriptions += 1;
        first
    }

    /// Removes `session`'s subscription to `filter`. Returns true when it was the last local
    /// subscription to `filter`. Removing an absent subscription changes nothing.
    pub fn unsubscribe(&mut self, filter: &TopicFilter, session: SessionId) -> bool {
        let entry = self.entry(filter);
        let before = entry.sessions.len();
        entry.sessions.retain(|(s, _)| *s != session);
        let removed = entry.sessions.len() < before;
        let last = removed && entry.sessions.is_empty();
        if removed {
            self.subscriptions -= 1;
        }
        self.entries.retain(|e| !e.sessions.is_empty() || !e.workers.is_empty());
        last
    }

    /// Records whether worker `worker` has local subscribers of `filter`.
    pub fn set_remote_interest(
        &mut self,
        filter: &TopicFilter,
        worker: WorkerId,
        interested: bool,
    ) {
        let entry = self.entry(filter);
        if interested {
            entry.workers.insert(worker);
        } else {
            entry.workers.remove(worker);
        }
        self.entries.retain(|e| !e.sessions.is_empty() || !e.workers.is_empty());
    }

    /// Fills `out` (cleared first) with everything `topic` matches.
    pub fn match_topic(&self, topic: &TopicName, out: &mut Matches) {
        out.clear();
        for entry in &self.entries {
            let Some(filter) = &entry.filter else {
                continue;
            };
            if !filter.matches(topic) {
                continue;
            }
            out.workers = out.workers.union(entry.workers);
            for &(session, qos) in &entry.sessions {
                match out.sessions.iter_mut().find(|(s, _)| *s == session) {
                    Some(existing) => existing.1 = existing.1.max(qos),
                    None => out.sessions.push((session, qos)),
                }
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
}
