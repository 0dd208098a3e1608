//! Operator requests to one worker's broker: the sans-IO half of the admin API.
//!
//! The runtime carries an [`AdminQuery`] from the HTTP thread to a worker and the
//! [`AdminAnswer`] back; here each is answered from this worker's state only. Sessions live on
//! their client id's home worker, so listing clients or subscriptions asks every worker and
//! merges; kicking asks only the client's home worker; retained messages are replicated on
//! every worker, so any one replica answers a read, and a delete goes through the topic's
//! owner like any retained update (`route.rs`), so every replica drops it.
//!
//! Invariants: every answer holds at most the `limit` the query carries (the HTTP side caps
//! it at `admin_list_max`), and also says how many matched in all; nothing here allocates in
//! proportion to the state beyond that limit.

use bytes::Bytes;

use super::connection::Phase;
use super::{Broker, CloseReason, ConnId, Message, Millis};
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
    /// The connection, when the session is connected (the runtime adds its address).
    pub conn: Option<ConnId>,
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

impl Broker {
    /// Answers one admin query (a kick or a delete acts, and its actions are queued).
    pub fn handle_admin(&mut self, query: AdminQuery, now: Millis) -> AdminAnswer {
        let answer = match query {
            AdminQuery::Clients { search, limit } => self.admin_clients(&search, limit),
            AdminQuery::Subscriptions { search, limit } => self.admin_subscriptions(&search, limit),
            AdminQuery::Kick { client_id } => AdminAnswer::Done(self.admin_kick(&client_id, now)),
            AdminQuery::Retained { filter, limit } => self.admin_retained(&filter, limit),
            AdminQuery::DeleteRetained { topic } => {
                AdminAnswer::Done(self.admin_delete_retained(topic, now))
            }
        };
        self.settle(now);
        answer
    }

    fn admin_clients(&self, search: &str, limit: usize) -> AdminAnswer {
        let mut items = Vec::new();
        let mut matched = 0;
        for session in self.sessions.iter() {
            if !session.client_id.as_str().contains(search) {
                continue;
            }
            matched += 1;
            if items.len() >= limit {
                continue;
            }
            let conn = session.conn.and_then(|id| Some((id, self.conns.get(&id)?)));
            items.push(AdminClient {
                client_id: session.client_id.as_str().to_owned(),
                conn: conn.map(|(id, _)| id),
                persistent: session.persistent,
                connected_since: conn.map(|(_, state)| state.opened_at),
                // The broker keeps 1.5 times the keepalive [MQTT-3.1.2-24].
                keepalive_secs: conn.map_or(0, |(_, state)| state.keepalive_grace_millis / 1500),
                inflight: session.outgoing.inflight_len(),
                queued: session.outgoing.queued_len(),
                subscriptions: session.subscriptions.len(),
            });
        }
        AdminAnswer::Clients { items, matched }
    }

    fn admin_subscriptions(&self, search: &str, limit: usize) -> AdminAnswer {
        let mut items = Vec::new();
        let mut matched = 0;
        for session in self.sessions.iter() {
            let client_id = session.client_id.as_str();
            for (filter, qos) in &session.subscriptions {
                if !client_id.contains(search) && !filter.as_str().contains(search) {
                    continue;
                }
                matched += 1;
                if items.len() < limit {
                    items.push(AdminSubscription {
                        client_id: client_id.to_owned(),
                        filter: filter.as_str().to_owned(),
                        qos: *qos,
                    });
                }
            }
        }
        AdminAnswer::Subscriptions { items, matched }
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

    fn admin_retained(&self, filter: &TopicFilter, limit: usize) -> AdminAnswer {
        let mut items = Vec::new();
        let mut matched = 0;
        self.retained.for_each_match(filter, |message| {
            matched += 1;
            if items.len() < limit {
                items.push(AdminRetained {
                    topic: message.topic.as_str().to_owned(),
                    payload: message.payload.clone(),
                    qos: message.qos,
                });
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
