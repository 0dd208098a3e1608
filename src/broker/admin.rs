//! Operator requests to one worker's broker: the sans-IO half of the admin API.
//!
//! The runtime carries an [`AdminQuery`] from the HTTP thread to a worker and the
//! [`AdminAnswer`] back; here each is answered from this worker's state only. Sessions live on
//! their client id's home worker, so listing clients or subscriptions asks every worker and
//! merges; kicking asks only the client's home worker; retained messages are replicated on
//! every worker, so any one replica answers a read, and a delete goes through the topic's
//! owner like any retained update (`route.rs`), so every replica drops it.
//!
//! Listing clients or subscriptions visits every session of the worker, which can hold a
//! million: so a listing is an [`AdminScan`] the runtime advances a bounded number of session
//! slots per loop turn ([`Broker::admin_scan`]), and no turn does more than that budget of it.
//! A retained read with a wildcard filter is a scan too, over the retained store's message
//! slots (up to `retained_messages_max`); an exact topic is one lookup, answered at once.
//! A scan is not a snapshot: a session or message created or removed while it runs may be
//! missed.
//!
//! Invariants: every answer holds at most the `limit` the query carries (the HTTP side caps
//! it at `admin_list_max`), and also says how many matched in all; nothing here allocates in
//! proportion to the state beyond that limit.

use bytes::Bytes;

use super::connection::Phase;
use super::session::Session;
use super::{Broker, CloseReason, ConnId, Message, Millis, PeerAddr, SessionId};
use crate::protocol::{QoS, TopicFilter, TopicName};

/// A question from the admin API to one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminQuery {
    /// Sessions whose client id contains `search` (all when empty), at most `limit`.
    Clients { search: String, limit: usize },
    /// Subscriptions whose filter or client id contains `search`, at most `limit`.
    Subscriptions { search: String, limit: usize },
    /// Close the connection of `client_id`'s session, if it has one here.
    Kick { client_id: String },
    /// Retained messages whose topic matches `filter`, at most `limit`.
    Retained { filter: TopicFilter, limit: usize },
    /// Delete the retained message of `topic`.
    DeleteRetained { topic: TopicName },
}

/// One session as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminClient {
    pub client_id: String,
    /// The connection, when the session is connected.
    pub conn: Option<ConnId>,
    /// The connection's peer address, when connected and the kernel told it (Linux 6.7+).
    pub address: Option<PeerAddr>,
    pub persistent: bool,
    /// When the current connection was opened, on the runtime's clock.
    pub connected_since: Option<Millis>,
    pub keepalive_secs: u64,
    pub inflight: usize,
    pub queued: usize,
    pub subscriptions: usize,
}

/// One subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSubscription {
    pub client_id: String,
    pub filter: String,
    pub qos: QoS,
}

/// One retained message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRetained {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
}

/// The answer to an [`AdminQuery`]. `matched` counts every match, `items` holds at most the
/// limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminAnswer {
    Clients {
        items: Vec<AdminClient>,
        matched: usize,
    },
    Subscriptions {
        items: Vec<AdminSubscription>,
        matched: usize,
    },
    Retained {
        items: Vec<AdminRetained>,
        matched: usize,
    },
    /// Whether the kick or the delete found something to act on.
    Done(bool),
}

/// What [`Broker::handle_admin`] gives back: an answer, or a scan to advance.
#[derive(Debug)]
pub enum AdminProgress {
    Done(AdminAnswer),
    Scanning(AdminScan),
}

/// A listing of this worker's sessions in progress, advanced by [`Broker::admin_scan`].
#[derive(Debug)]
pub struct AdminScan {
    next_slot: usize,
    kind: ScanKind,
}

#[derive(Debug)]
enum ScanKind {
    Clients {
        search: String,
        limit: usize,
        items: Vec<AdminClient>,
        matched: usize,
    },
    Subscriptions {
        search: String,
        limit: usize,
        items: Vec<AdminSubscription>,
        matched: usize,
    },
    /// Over the retained store's slots, not the sessions'.
    Retained {
        filter: TopicFilter,
        limit: usize,
        items: Vec<AdminRetained>,
        matched: usize,
    },
    /// Answered.
    Done,
}

impl Broker {
    /// Takes one admin query: a kick or a delete acts at once (its actions are queued), a
    /// retained read of one exact topic answers at once, a listing or a wildcard retained read
    /// starts a scan.
    pub fn handle_admin(&mut self, query: AdminQuery, now: Millis) -> AdminProgress {
        let kind = match query {
            AdminQuery::Clients { search, limit } => {
                ScanKind::Clients { search, limit, items: Vec::new(), matched: 0 }
            }
            AdminQuery::Subscriptions { search, limit } => {
                ScanKind::Subscriptions { search, limit, items: Vec::new(), matched: 0 }
            }
            AdminQuery::Kick { client_id } => {
                let kicked = self.admin_kick(&client_id, now);
                self.settle(now);
                return AdminProgress::Done(AdminAnswer::Done(kicked));
            }
            AdminQuery::Retained { filter, limit } if !filter.has_wildcard() => {
                return AdminProgress::Done(self.admin_retained_exact(&filter, limit));
            }
            AdminQuery::Retained { filter, limit } => {
                ScanKind::Retained { filter, limit, items: Vec::new(), matched: 0 }
            }
            AdminQuery::DeleteRetained { topic } => {
                let deleted = self.admin_delete_retained(topic, now);
                self.settle(now);
                return AdminProgress::Done(AdminAnswer::Done(deleted));
            }
        };
        AdminProgress::Scanning(AdminScan { next_slot: 0, kind })
    }

    /// Advances `scan` over at most `slots_budget` slots (session slots, or the retained
    /// store's for a retained read); the answer once it has covered every slot.
    pub fn admin_scan(&self, scan: &mut AdminScan, slots_budget: usize) -> Option<AdminAnswer> {
        let slots = match scan.kind {
            ScanKind::Retained { .. } => self.retained.slots(),
            _ => self.sessions.slots(),
        };
        let end = scan.next_slot.saturating_add(slots_budget).min(slots);
        for slot in scan.next_slot..end {
            self.admin_scan_slot(&mut scan.kind, slot);
        }
        scan.next_slot = end;
        if end < slots {
            return None;
        }
        Some(match std::mem::replace(&mut scan.kind, ScanKind::Done) {
            ScanKind::Clients { items, matched, .. } => AdminAnswer::Clients { items, matched },
            ScanKind::Subscriptions { items, matched, .. } => {
                AdminAnswer::Subscriptions { items, matched }
            }
            ScanKind::Retained { items, matched, .. } => AdminAnswer::Retained { items, matched },
            ScanKind::Done => panic!("an admin scan advanced after its answer"),
        })
    }

    fn admin_scan_slot(&self, kind: &mut ScanKind, slot: usize) {
        match kind {
            ScanKind::Retained { filter, limit, items, matched } => {
                let Some(message) = self.retained.message_in_slot(slot) else { return };
                if filter.matches(&message.topic) {
                    *matched += 1;
                    if items.len() < *limit {
                        items.push(admin_retained_item(message));
                    }
                }
            }
            ScanKind::Clients { search, limit, items, matched } => {
                let Some(session) = self.session_in_slot(slot) else { return };
                if session.client_id.as_str().contains(search.as_str()) {
                    *matched += 1;
                    if items.len() < *limit {
                        items.push(self.admin_client(session));
                    }
                }
            }
            ScanKind::Subscriptions { search, limit, items, matched } => {
                let Some(session) = self.session_in_slot(slot) else { return };
                admin_subscriptions_of(
                    &self.subscriptions,
                    session,
                    search,
                    *limit,
                    items,
                    matched,
                );
            }
            ScanKind::Done => panic!("an admin scan advanced after its answer"),
        }
    }

    fn session_in_slot(&self, slot: usize) -> Option<&Session> {
        // Slots are below the slab's capacity, which holds fewer than 2^32 sessions.
        self.sessions.try_get(SessionId(slot as u32))
    }

    fn admin_client(&self, session: &Session) -> AdminClient {
        let conn = session.conn.and_then(|id| Some((id, self.conns.get(&id)?)));
        AdminClient {
            client_id: session.client_id.as_str().to_owned(),
            conn: conn.map(|(id, _)| id),
            address: conn.and_then(|(_, state)| state.peer()),
            persistent: session.persistent,
            connected_since: conn.map(|(_, state)| state.opened_at),
            // The broker keeps 1.5 times the keepalive [MQTT-3.1.2-24].
            keepalive_secs: conn
                .map_or(0, |(_, state)| u64::from(state.keepalive_grace_millis / 1500)),
            inflight: session.outgoing.inflight_len(),
            queued: session.outgoing.queued_len(),
            subscriptions: session.subscriptions.len(),
        }
    }

    /// Closes `client_id`'s connection if its session is here and connected.
    fn admin_kick(&mut self, client_id: &str, now: Millis) -> bool {
        let key = crate::protocol::Utf8Bytes::from(client_id.to_owned());
        let Some(session) = self.sessions.find(&key) else { return false };
        let Some(conn) = self.sessions.get(session).conn else { return false };
        let active =
            self.conns.get(&conn).is_some_and(|state| state.phase != Phase::AwaitingConnect);
        if active {
            self.close_conn(conn, Some(CloseReason::Kicked), now);
        }
        active
    }

    /// A filter without wildcards names one topic: one lookup.
    fn admin_retained_exact(&self, filter: &TopicFilter, limit: usize) -> AdminAnswer {
        let mut items = Vec::new();
        let mut matched = 0;
        self.retained.for_each_match(filter, |message| {
            matched += 1;
            if items.len() < limit {
                items.push(admin_retained_item(message));
            }
        });
        AdminAnswer::Retained { items, matched }
    }

    /// Deletes `topic`'s retained message in every replica (through its owner worker), as a
    /// retained PUBLISH with an empty payload would, but without delivering anything.
    fn admin_delete_retained(&mut self, topic: TopicName, now: Millis) -> bool {
        if self.retained.get(&topic).is_none() {
            return false;
        }
        let delete = Message { topic, payload: Bytes::new(), qos: QoS::AtMostOnce, retain: true };
        // No connection waits for it, so nothing to confirm.
        let _ = self.update_retained(&delete, None, now);
        true
    }
}

fn admin_subscriptions_of(
    index: &super::subscriptions::SubscriptionIndex,
    session: &Session,
    search: &str,
    limit: usize,
    items: &mut Vec<AdminSubscription>,
    matched: &mut usize,
) {
    let client_id = session.client_id.as_str();
    for &(node, qos) in session.subscriptions.as_slice() {
        let filter = index.filter_of(node);
        if !client_id.contains(search) && !filter.as_str().contains(search) {
            continue;
        }
        *matched += 1;
        if items.len() < limit {
            items.push(AdminSubscription {
                client_id: client_id.to_owned(),
                filter: filter.as_str().to_owned(),
                qos,
            });
        }
    }
}

fn admin_retained_item(message: &Message) -> AdminRetained {
    AdminRetained {
        topic: message.topic.as_str().to_owned(),
        payload: message.payload.clone(),
        qos: message.qos,
    }
}
