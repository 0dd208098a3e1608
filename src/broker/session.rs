//! Sessions: the state MQTT keeps per client id [MQTT-3.1.2-4..6], on its home worker.
//!
//! A session holds the client's subscriptions, its outgoing QoS 1/2 window and queue, and its
//! incoming QoS 2 ids. A clean session (CleanSession=1) lives exactly as long as its
//! connection and is discarded when it ends [MQTT-3.1.2-6]. A persistent session
//! (CleanSession=0) outlives its connection: its subscriptions stay, its window and queue
//! stay, and new QoS 1/2 messages for it are queued while it is offline [MQTT-3.1.2-5], until
//! a connection resumes it or it has been offline for `persistent_client_expiration_secs`.
//!
//! Invariants: at most `sessions_max` sessions; the client id map and the slab agree; a clean
//! session always has a connection; every subscription of a session is in the index, and a
//! discarded session leaves nothing in the index.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use slab::Slab;
use thin_vec::ThinVec;

use super::inflight::{Incoming, Outgoing};
use super::topic_trie::NodeId;
use super::{Broker, ConnId, Millis, SessionId};
use crate::persist::record::Record;
use crate::protocol::{QoS, Utf8Bytes};

/// One session. Its layout is part of issue 6's memory budget (docs/BENCHMARKS.md, "Density"):
/// the client id is inline when short (never a view of the CONNECT's receive buffer, which it
/// would keep alive), the filters are trie nodes, the QoS state is a pointer until first used,
/// and the table keys sessions by client id without a second copy of it.
#[derive(Debug)]
pub(super) struct Session {
    pub client_id: ClientId,
    pub conn: Option<ConnId>,
    /// The session's filters and granted QoS, at most `subscriptions_per_session_max`.
    pub subscriptions: Filters,
    pub outgoing: Outgoing,
    pub incoming: Incoming,
    pub offline_since: Millis,
    /// The identity the ACL checks (`auth.rs`); `None` for a client without a user name
    /// while no ACL was loaded at its CONNECT (it is then anonymous).
    pub auth: Option<Box<super::auth::SessionAuth>>,
    /// Bumped whenever the session goes offline, so an older expiry timer is recognised.
    pub epoch: u32,
    /// CleanSession=0: the session outlives its connection.
    pub persistent: bool,
}

impl Session {
    pub fn new(client_id: Utf8Bytes, persistent: bool, now: Millis) -> Self {
        Self {
            client_id: ClientId::new(&client_id),
            persistent,
            conn: None,
            subscriptions: Filters::None,
            outgoing: Outgoing::default(),
            incoming: Incoming::default(),
            epoch: 0,
            offline_since: now,
            auth: None,
        }
    }
}

/// Client ids of up to this many bytes are kept inside the session.
const CLIENT_ID_INLINE_BYTES: usize = 22;

/// A session's client id, in 24 bytes: inline up to [`CLIENT_ID_INLINE_BYTES`] bytes (most
/// ids: generated ones, the bench's `msub-<n>`; byte 0 is the length), else one exact heap
/// allocation. A `Utf8Bytes` was 32 bytes plus its allocation (issue 6's bytes per
/// connection). Made only from a `Utf8Bytes`, so it is always valid MQTT UTF-8.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum ClientId {
    Inline([u8; CLIENT_ID_INLINE_BYTES + 1]),
    Heap(Box<str>),
}

impl ClientId {
    pub fn new(id: &Utf8Bytes) -> Self {
        let bytes = id.as_bytes();
        if bytes.len() > CLIENT_ID_INLINE_BYTES {
            return Self::Heap(id.as_str().into());
        }
        let mut inline = [0; CLIENT_ID_INLINE_BYTES + 1];
        // The length fits in a u8: it is at most CLIENT_ID_INLINE_BYTES.
        inline[0] = bytes.len() as u8;
        inline[1..=bytes.len()].copy_from_slice(bytes);
        Self::Inline(inline)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline(inline) => &inline[1..=usize::from(inline[0])],
            Self::Heap(text) => text.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        // Cannot fail: the bytes are a whole `Utf8Bytes`, copied (checked ASCII is the common
        // case, which `from_utf8` passes at its fastest).
        std::str::from_utf8(self.as_bytes()).expect("a client id is UTF-8")
    }

    /// As a `Utf8Bytes` (a new allocation): for journal records and QoS 2 origins.
    pub fn to_utf8(&self) -> Utf8Bytes {
        Utf8Bytes::from(self.as_str().to_owned())
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A session's subscriptions: each filter as its node in the worker's subscription index,
/// with the QoS granted. The node holds the filter's levels once for all its subscribers and
/// lives as long as any session subscribes to it (the index's invariant), so a session keeps 8
/// bytes per filter, not the filter's text (`SubscriptionIndex::filter_of` spells it out where
/// needed). One filter, most sessions' case, is inline; several are in a thin vector, so the
/// whole is 16 bytes (a `Vec` of `(TopicFilter, QoS)` was 24, plus 40 on the heap per filter
/// and the filter's text: issue 6's bytes per connection).
///
/// Invariants: no node twice; `Many` holds at least two.
#[derive(Debug, Default)]
pub(super) enum Filters {
    #[default]
    None,
    One((NodeId, QoS)),
    Many(ThinVec<(NodeId, QoS)>),
}

impl Filters {
    pub fn as_slice(&self) -> &[(NodeId, QoS)] {
        match self {
            Self::None => &[],
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Self::None)
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.as_slice().iter().any(|&(existing, _)| existing == node)
    }

    /// Adds `node` at `qos`, or sets its QoS if it is there.
    pub fn set(&mut self, node: NodeId, qos: QoS) {
        match self {
            Self::None => *self = Self::One((node, qos)),
            Self::One(one) if one.0 == node => one.1 = qos,
            Self::One(one) => {
                let mut many = ThinVec::with_capacity(2);
                many.push(*one);
                many.push((node, qos));
                *self = Self::Many(many);
            }
            Self::Many(many) => match many.iter_mut().find(|(existing, _)| *existing == node) {
                Some(existing) => existing.1 = qos,
                None => {
                    // The first few grow one at a time (most sessions hold one or two
                    // filters); past that, the usual doubling.
                    if many.len() < 4 {
                        many.reserve_exact(1);
                    }
                    many.push((node, qos));
                }
            },
        }
    }

    /// Removes `node`; false if it was not there.
    pub fn remove(&mut self, node: NodeId) -> bool {
        match self {
            Self::None => false,
            Self::One(one) if one.0 != node => false,
            Self::One(_) => {
                *self = Self::None;
                true
            }
            Self::Many(many) => {
                let Some(index) = many.iter().position(|(existing, _)| *existing == node) else {
                    return false;
                };
                many.swap_remove(index);
                if many.len() == 1 {
                    *self = Self::One(many[0]);
                }
                true
            }
        }
    }
}

/// The sessions of one worker, by `SessionId` (slab index) and by client id. The client id
/// index holds only session ids (4 bytes an entry): a lookup compares against the client id in
/// the slab, so the id is stored once. Seeded per table (client ids are the clients' choice).
#[derive(Debug, Default)]
pub(super) struct SessionTable {
    slab: Slab<Session>,
    by_client_id: HashTable<SessionId>,
    hasher: std::collections::hash_map::RandomState,
}

impl SessionTable {
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    fn hash(&self, client_id: &[u8]) -> u64 {
        self.hasher.hash_one(client_id)
    }

    pub fn find(&self, client_id: &Utf8Bytes) -> Option<SessionId> {
        self.find_bytes(client_id.as_bytes())
    }

    fn find_bytes(&self, client_id: &[u8]) -> Option<SessionId> {
        let slab = &self.slab;
        self.by_client_id
            .find(self.hash(client_id), |id| slab[id.0 as usize].client_id.as_bytes() == client_id)
            .copied()
    }

    pub fn try_get(&self, id: SessionId) -> Option<&Session> {
        self.slab.get(id.0 as usize)
    }

    /// The session `id`; it must exist (ids come from the index or a connection, which only
    /// hold live sessions).
    pub fn get(&self, id: SessionId) -> &Session {
        self.slab.get(id.0 as usize).unwrap_or_else(|| panic!("{id:?} is not a live session"))
    }

    pub fn get_mut(&mut self, id: SessionId) -> &mut Session {
        self.slab.get_mut(id.0 as usize).unwrap_or_else(|| panic!("{id:?} is not a live session"))
    }

    pub fn insert(&mut self, session: Session) -> SessionId {
        assert!(
            self.find_bytes(session.client_id.as_bytes()).is_none(),
            "two sessions for one client id"
        );
        let hash = self.hash(session.client_id.as_bytes());
        let index = self.slab.insert(session);
        let id = SessionId(u32::try_from(index).expect("fewer than 2^32 sessions"));
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.by_client_id.insert_unique(hash, id, |id| {
            hasher.hash_one(slab[id.0 as usize].client_id.as_bytes())
        });
        id
    }

    pub fn remove(&mut self, id: SessionId) -> Session {
        let hash = self.hash(self.get(id).client_id.as_bytes());
        let entry = self.by_client_id.find_entry(hash, |&entry| entry == id);
        let entry = entry.unwrap_or_else(|_| panic!("client id map out of step with the slab"));
        entry.remove();
        self.slab.remove(id.0 as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.slab.iter().map(|(_, session)| session)
    }

    /// One past the highest slot a session can occupy now: what a scan by slot covers.
    pub fn slots(&self) -> usize {
        self.slab.capacity()
    }
}

impl Broker {
    /// A new session, or `None` at `sessions_max` (counted).
    pub(super) fn create_session(
        &mut self,
        client_id: Utf8Bytes,
        persistent: bool,
        now: Millis,
    ) -> Option<SessionId> {
        if self.sessions.len() >= self.config.sessions_max {
            self.stats.sessions_refused_full += 1;
            return None;
        }
        let id = self.sessions.insert(Session::new(client_id, persistent, now));
        if persistent {
            let client_id = self.sessions.get(id).client_id.to_utf8();
            let record = Record::SessionOpen { sid: id.0, client_id };
            self.journal(|| record);
        }
        Some(id)
    }

    /// Discards a session and everything it held (its subscriptions leave the index).
    pub(super) fn destroy_session(&mut self, id: SessionId) {
        assert!(self.sessions.get(id).conn.is_none(), "discarding a session still connected");
        let filters = std::mem::take(&mut self.sessions.get_mut(id).subscriptions);
        for &(node, _) in filters.as_slice() {
            self.remove_node_from_index(node, id);
        }
        self.forget_session_qos2_tokens(id);
        let mut session = self.sessions.remove(id);
        if session.persistent {
            self.journal_session_drop(id);
        }
        let (inflight, queued) = session.outgoing.clear();
        self.stats.inflight_messages -= inflight as u64;
        self.stats.queued_messages -= queued as u64;
    }

    /// The session's connection ended: a clean session is discarded [MQTT-3.1.2-6]; a
    /// persistent one goes offline and starts its expiry clock.
    pub(super) fn detach_session(&mut self, id: SessionId, conn: ConnId, now: Millis) {
        let session = self.sessions.get_mut(id);
        assert_eq!(session.conn, Some(conn), "detaching a connection the session does not have");
        session.conn = None;
        if !session.persistent {
            self.destroy_session(id);
            return;
        }
        session.epoch = session.epoch.wrapping_add(1);
        session.offline_since = now;
        self.file_session_timer(id);
    }

    /// Attaches `conn` to the session (which has none).
    pub(super) fn attach_session(&mut self, id: SessionId, conn: ConnId) {
        let session = self.sessions.get_mut(id);
        assert!(session.conn.is_none(), "attaching a second connection to a session");
        session.conn = Some(conn);
        // Any expiry timer filed while offline is now stale.
        session.epoch = session.epoch.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::subscriptions::SubscriptionIndex;
    use crate::protocol::TopicFilter;

    #[test]
    fn client_ids_are_inline_up_to_22_bytes_and_spell_back() {
        for text in [
            "",
            "c",
            "msub-123456-7",
            "exactly-22-bytes-long!",
            "twenty-three-bytes-long",
            "ü-ß-€-日本",
        ] {
            let id = ClientId::new(&Utf8Bytes::from(text.to_owned()));
            assert_eq!(id.as_str(), text);
            assert_eq!(id.as_bytes(), text.as_bytes());
            assert_eq!(id.to_utf8().as_str(), text);
            assert_eq!(matches!(id, ClientId::Inline(_)), text.len() <= 22, "{text}");
        }
        assert_eq!(std::mem::size_of::<ClientId>(), 24);
    }

    #[test]
    fn filters_hold_one_inline_and_more_in_a_vector() {
        let mut index = SubscriptionIndex::new();
        let mut node = |text: &str| {
            let filter = TopicFilter::try_from(text).expect("valid");
            index.subscribe_node(&filter, SessionId(0), QoS::AtMostOnce).0
        };
        let (a, b, c) = (node("a"), node("b"), node("c"));
        let mut filters = Filters::default();
        assert!(filters.is_empty() && !filters.remove(a));
        filters.set(a, QoS::AtMostOnce);
        filters.set(a, QoS::ExactlyOnce);
        assert!(matches!(filters, Filters::One(_)), "one filter, set twice, is inline");
        assert_eq!(filters.as_slice(), [(a, QoS::ExactlyOnce)]);
        filters.set(b, QoS::AtLeastOnce);
        filters.set(c, QoS::AtMostOnce);
        filters.set(b, QoS::AtMostOnce);
        assert_eq!(filters.len(), 3);
        assert!(filters.contains(b) && !filters.remove(NodeId::ROOT));
        assert!(filters.remove(a) && filters.remove(c));
        assert!(matches!(filters, Filters::One(_)), "back to one: inline again");
        assert_eq!(filters.as_slice(), [(b, QoS::AtMostOnce)]);
        assert!(filters.remove(b) && filters.is_empty());
    }
}
