//! SUBSCRIBE and UNSUBSCRIBE [MQTT-3.8] [MQTT-3.10].
//!
//! Each filter of a SUBSCRIBE is handled in order and answered in one SUBACK with a return
//! code per filter [MQTT-3.8.4-4] [MQTT-3.8.4-5]: the granted QoS (the requested one: ringmq
//! supports all three), or 0x80 once the session holds `subscriptions_per_session_max` filters
//! (counted). A filter the session already has is replaced, not duplicated [MQTT-3.8.4-3].
//! After the SUBACK, the retained messages matching each granted filter are sent with
//! RETAIN=1 [MQTT-3.3.1-6] [MQTT-3.3.1-8] — also for a replaced subscription, which the spec
//! asks to re-send them.
//!
//! UNSUBSCRIBE removes the filters the session has (compared character by character
//! [MQTT-3.10.4-1]) and is always answered UNSUBACK, even when nothing matched
//! [MQTT-3.10.4-4] [MQTT-3.10.4-5]. Messages already queued or in flight stay.
//!
//! A filter's first local subscriber and its last leaving are told to every other worker
//! (`RemoteMsg::Interest`), so publishers elsewhere know to forward here.

use super::delivery::Variants;
use super::{Broker, ConnId, Message, RemoteMsg, SessionId, WorkerId};
use crate::protocol::{Packet, QoS, Suback, SubackCode, Subscribe, TopicFilter, Unsubscribe};

impl Broker {
    pub(super) fn handle_subscribe(
        &mut self,
        conn: ConnId,
        session: SessionId,
        subscribe: Subscribe,
    ) {
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        for (filter, qos) in &subscribe.filters {
            return_codes.push(self.add_subscription(session, filter, *qos));
        }
        let suback = Suback { packet_id: subscribe.packet_id, return_codes };
        self.write_control(conn, &Packet::Suback(suback.clone()));
        for ((filter, _), code) in subscribe.filters.iter().zip(&suback.return_codes) {
            if let SubackCode::Granted(granted) = code {
                self.send_retained(session, filter, *granted);
            }
        }
    }

    fn add_subscription(
        &mut self,
        session: SessionId,
        filter: &TopicFilter,
        qos: QoS,
    ) -> SubackCode {
        let max = self.config.subscriptions_per_session_max;
        let subscriptions = &mut self.sessions.get_mut(session).subscriptions;
        let count = subscriptions.len();
        match subscriptions.iter_mut().find(|(existing, _)| existing == filter) {
            Some(existing) => existing.1 = qos,
            None if count >= max => {
                self.stats.subscriptions_refused += 1;
                return SubackCode::Failure;
            }
            None => subscriptions.push((filter.clone(), qos)),
        }
        if self.subscriptions.subscribe(filter, session, qos) {
            self.broadcast_interest(filter, true);
        }
        SubackCode::Granted(qos)
    }

    /// Sends the retained messages `filter` matches to `session`, at min(retained, granted).
    fn send_retained(&mut self, session: SessionId, filter: &TopicFilter, granted: QoS) {
        let mut found: Vec<Message> = Vec::new();
        self.retained.for_each_match(filter, |message| found.push(message.clone()));
        for message in &found {
            let mut variants = Variants::new(true);
            self.deliver(session, message, message.qos.min(granted), &mut variants);
        }
    }

    pub(super) fn handle_unsubscribe(
        &mut self,
        conn: ConnId,
        session: SessionId,
        unsubscribe: Unsubscribe,
    ) {
        for filter in &unsubscribe.filters {
            let subscriptions = &mut self.sessions.get_mut(session).subscriptions;
            let Some(index) = subscriptions.iter().position(|(existing, _)| existing == filter)
            else {
                continue;
            };
            subscriptions.swap_remove(index);
            self.remove_from_index(filter, session);
        }
        self.write_control(conn, &Packet::Unsuback(unsubscribe.packet_id));
    }

    /// Removes one subscription from the index, telling the other workers if it was the last.
    pub(super) fn remove_from_index(&mut self, filter: &TopicFilter, session: SessionId) {
        if self.subscriptions.unsubscribe(filter, session) {
            self.broadcast_interest(filter, false);
        }
    }

    fn broadcast_interest(&mut self, filter: &TopicFilter, interested: bool) {
        for index in 0..self.workers {
            let worker = WorkerId(index);
            if worker != self.me {
                let msg = RemoteMsg::Interest { filter: filter.clone(), interested };
                self.send_remote(worker, msg);
            }
        }
    }
}
