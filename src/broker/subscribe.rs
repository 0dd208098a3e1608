//! SUBSCRIBE and UNSUBSCRIBE [MQTT-3.8] [MQTT-3.10].
//!
//! Each filter of a SUBSCRIBE is handled in order and answered in one SUBACK with a return
//! code per filter [MQTT-3.8.4-4] [MQTT-3.8.4-5]: the granted QoS (the requested one: ringmq
//! supports all three), or 0x80 once the session holds `subscriptions_per_session_max` filters
//! (counted), or 0x80 for a filter the ACL gives no read access under (`auth.rs`). A filter the session already has is replaced, not duplicated [MQTT-3.8.4-3].
//! The retained messages matching each granted filter are sent with RETAIN=1 [MQTT-3.3.1-6]
//! [MQTT-3.3.1-8] — also for a replaced subscription, which the spec asks to re-send them.
//! They follow the SUBACK, as in Mosquitto, also when the SUBACK waits for other workers
//! (`interest.rs`): they are then looked up when it is released, so they are the retained
//! messages of that moment. The price: a live message delivered to the new subscription
//! while its SUBACK waits arrives before the retained ones (which carry RETAIN=1, so a client
//! can tell a stored message from a live one). Sending them at the SUBSCRIBE instead would
//! put PUBLISHes before the SUBACK, which [MQTT-3.8.4] permits but clients such as
//! `mosquitto_sub -C 1` do not expect (it would exit before its SUBACK).
//!
//! UNSUBSCRIBE removes the filters the session has (compared character by character
//! [MQTT-3.10.4-1]) and is always answered UNSUBACK, even when nothing matched
//! [MQTT-3.10.4-4] [MQTT-3.10.4-5]. Messages already queued or in flight stay.
//!
//! A filter's first local subscriber and its last leaving are told to every other worker
//! (`RemoteMsg::Interest`), so publishers elsewhere know to forward here; the SUBACK waits
//! until they have all applied it (`interest.rs`).

use super::delivery::Variants;
use super::topic_trie::NodeId;
use super::{Broker, ConnId, Message, Millis, SessionId};
use crate::persist::record::Record;
use crate::protocol::encode::remaining_length_bytes;
use crate::protocol::{Packet, QoS, Suback, SubackCode, Subscribe, TopicFilter, Unsubscribe};

/// What a SUBSCRIBE is answered with: its SUBACK, then the retained messages of each granted
/// filter.
#[derive(Debug)]
pub(super) struct SubscribeAnswer {
    pub suback: Suback,
    pub granted: Vec<(TopicFilter, QoS)>,
}

impl SubscribeAnswer {
    /// What holding it costs: the SUBACK's bytes and the granted filters' (the retained
    /// messages it still owes are looked up by them).
    pub fn held_bytes(&self) -> usize {
        let remaining = 2 + self.suback.return_codes.len();
        let suback = 1 + remaining_length_bytes(remaining) + remaining;
        suback + self.granted.iter().map(|(filter, _)| filter.as_str().len()).sum::<usize>()
    }
}

impl Broker {
    pub(super) fn handle_subscribe(
        &mut self,
        conn: ConnId,
        session: SessionId,
        subscribe: Subscribe,
        now: Millis,
    ) {
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::with_capacity(subscribe.filters.len());
        let mut waits_for = 0;
        for (filter, qos) in subscribe.filters {
            let (code, interest) = self.add_subscription(session, &filter, qos);
            return_codes.push(code);
            waits_for = waits_for.max(interest);
            if let SubackCode::Granted(qos) = code {
                granted.push((filter, qos));
            }
        }
        let suback = Suback { packet_id: subscribe.packet_id, return_codes };
        let answer = SubscribeAnswer { suback, granted };
        if let Some(answer) = self.hold_suback(conn, answer, waits_for) {
            self.complete_subscribe(conn, session, answer, now);
        }
    }

    /// Answers a SUBSCRIBE whose interest is known everywhere: now, or (a persistent session
    /// with persistence on) once its subscriptions are durable (`durable.rs`).
    pub(super) fn complete_subscribe(
        &mut self,
        conn: ConnId,
        session: SessionId,
        answer: SubscribeAnswer,
        now: Millis,
    ) {
        if let Some(answer) = self.hold_subscribe(conn, session, answer) {
            self.write_subscribe_answer(conn, session, answer, now);
        }
    }

    /// Writes the SUBACK, then the retained messages of each granted filter (Mosquitto's
    /// order), read from the replica now.
    pub(super) fn write_subscribe_answer(
        &mut self,
        conn: ConnId,
        session: SessionId,
        answer: SubscribeAnswer,
        now: Millis,
    ) {
        self.write_control(conn, &Packet::Suback(answer.suback));
        for (filter, granted) in &answer.granted {
            self.send_retained(session, filter, *granted, now);
        }
    }

    /// Adds or replaces one subscription. Returns its SUBACK code and the interest broadcast
    /// its SUBACK must wait for (0: none).
    fn add_subscription(
        &mut self,
        session: SessionId,
        filter: &TopicFilter,
        qos: QoS,
    ) -> (SubackCode, u64) {
        if !self.subscribe_allowed(session, filter.as_str()) {
            return (SubackCode::Failure, 0);
        }
        let max = self.config.subscriptions_per_session_max;
        let subscriptions = &self.sessions.get(session).subscriptions;
        let held =
            self.subscriptions.node_of(filter).is_some_and(|node| subscriptions.contains(node));
        if !held && subscriptions.len() >= max {
            self.stats.subscriptions_refused += 1;
            return (SubackCode::Failure, 0);
        }
        if self.sessions.get(session).persistent {
            self.journal(|| Record::Subscribe { sid: session.0, filter: filter.clone(), qos });
        }
        let (node, first) = self.subscriptions.subscribe_node(filter, session, qos);
        self.sessions.get_mut(session).subscriptions.set(node, qos);
        let waits_for = if first {
            self.broadcast_interest(filter, true)
        } else {
            self.interest_pending_for(filter)
        };
        (SubackCode::Granted(qos), waits_for)
    }

    /// A recovered subscription of an offline session (`durable.rs`).
    pub(super) fn restore_subscription(
        &mut self,
        session: SessionId,
        filter: &TopicFilter,
        qos: QoS,
    ) {
        // No interest broadcast: every other worker was given this worker's recovered filters
        // before any client is served (`Image::remote_interest`). Broadcasting them again
        // queued one message per session each way after the start, whose memory the
        // allocator then kept (+30% RSS after a restart with 300k sessions; docs/BENCHMARKS.md).
        let (node, _) = self.subscriptions.subscribe_node(filter, session, qos);
        self.sessions.get_mut(session).subscriptions.set(node, qos);
    }

    /// Sends the retained messages `filter` matches to `session`, at min(retained, granted).
    fn send_retained(
        &mut self,
        session: SessionId,
        filter: &TopicFilter,
        granted: QoS,
        now: Millis,
    ) {
        let mut found: Vec<Message> = Vec::new();
        self.retained.for_each_match(filter, |message| found.push(message.clone()));
        for message in &found {
            if !self.may_deliver(session, &message.topic) {
                continue;
            }
            let mut variants = Variants::new(true);
            self.deliver(session, message, message.qos.min(granted), &mut variants, now);
        }
    }

    pub(super) fn handle_unsubscribe(
        &mut self,
        conn: ConnId,
        session: SessionId,
        unsubscribe: Unsubscribe,
    ) {
        for filter in &unsubscribe.filters {
            let Some(node) = self.subscriptions.node_of(filter) else { continue };
            if !self.sessions.get_mut(session).subscriptions.remove(node) {
                continue;
            }
            self.remove_from_index(filter, session);
            if self.sessions.get(session).persistent {
                self.journal(|| Record::Unsubscribe { sid: session.0, filter: filter.clone() });
            }
        }
        self.write_durable_ack(conn, Packet::Unsuback(unsubscribe.packet_id));
    }

    /// [`Self::remove_from_index`] by the filter's node (a session's own subscription, so a
    /// live node): the filter's text is spelled out only when the other workers must hear
    /// that this worker's interest ended.
    pub(super) fn remove_node_from_index(&mut self, node: NodeId, session: SessionId) {
        if self.subscriptions.is_sole_subscriber(node, session) {
            let filter = self.subscriptions.filter_of(node);
            self.remove_from_index(&filter, session);
        } else {
            self.subscriptions.unsubscribe_node(node, session);
        }
    }

    /// Removes one subscription from the index, telling the other workers if it was the last.
    pub(super) fn remove_from_index(&mut self, filter: &TopicFilter, session: SessionId) {
        if self.subscriptions.unsubscribe(filter, session) {
            self.broadcast_interest(filter, false);
        }
    }
}
