//! PUBLISH from a client, and routing any message (a client's, a will, `$SYS`) to its
//! subscribers here and on other workers [MQTT-3.3] [MQTT-4.3].
//!
//! Inbound QoS: 0 is routed; 1 is routed and answered PUBACK [MQTT-4.3.2-2]; 2 follows
//! Method B (see `inflight.rs`): routed once when first seen, answered PUBREC, its id held
//! until PUBREL, which is answered PUBCOMP [MQTT-4.3.3-2] [MQTT-3.6.4-1].
//!
//! Routing: a RETAIN=1 message updates the retained store through the topic's owner
//! [MQTT-3.3.1-5] (an empty payload deletes [MQTT-3.3.1-10]), and a QoS 1/2 one's PUBACK or
//! PUBREC waits until every worker's replica has it (`retain_confirm.rs`); then the index gives the local
//! sessions (each once, at its highest granted QoS [MQTT-3.3.5-1]) and the interested workers.
//! Local sessions get min(published, granted) QoS [MQTT-3.8.4-6] with RETAIN=0
//! [MQTT-3.3.1-9]; each interested worker gets one `RemoteMsg::Publish`.
//!
//! ACL (`auth.rs`): a PUBLISH its client may not write is acknowledged and dropped
//! [MQTT-3.3.5-2]; each subscriber the ACL does not let read the topic is skipped.
//!
//! The fan-out encodes the PUBLISH once per QoS it is delivered at (`Variants`), never per
//! subscriber, and reuses the broker's `Matches` buffer, so a steady stream of publishes
//! allocates nothing per subscriber.

use super::delivery::Variants;
use super::inflight::IncomingQos2;
use super::retain_confirm::Ack;
use super::{Broker, CloseReason, ConnId, Message, Millis, RetainToken, SessionId};
use crate::protocol::{PacketId, Publish, QoS};

impl Broker {
    pub(super) fn handle_publish(
        &mut self,
        conn: ConnId,
        session: SessionId,
        publish: Publish,
        now: Millis,
    ) {
        self.stats.messages_received += 1;
        self.stats.messages_received_by_qos[publish.qos as usize] += 1;
        let packet_id = publish.packet_id;
        let message = Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
        };
        let id = match (message.qos, packet_id) {
            (QoS::AtMostOnce, None) => None,
            (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => Some(id),
            _ => {
                let violation =
                    CloseReason::ProtocolViolation("packet id iff QoS > 0 [MQTT-2.3.1-5]");
                return self.close_conn(conn, Some(violation), now);
            }
        };
        if !self.may_publish(session, &message.topic) {
            // [MQTT-3.3.5-2]: acknowledged by the normal QoS rules, not routed or retained.
            match (message.qos, id) {
                (QoS::AtLeastOnce, Some(id)) => self.write_ack(conn, Ack::Puback(id)),
                (QoS::ExactlyOnce, Some(id)) => self.write_ack(conn, Ack::Pubrec(id)),
                _ => {}
            }
            return;
        }
        let Some(id) = id else {
            return self.route_publish(message, now);
        };
        if message.qos == QoS::AtLeastOnce {
            let token = self.route_acknowledged(conn, message, now);
            self.answer(conn, Ack::Puback(id), token);
            return;
        }
        self.receive_qos2(conn, session, id, message, now);
    }

    /// Routes a QoS 1/2 message from `conn`; a retained one returns the token of the update
    /// its acknowledgement waits for (`retain_confirm.rs`), if any.
    fn route_acknowledged(
        &mut self,
        conn: ConnId,
        message: Message,
        now: Millis,
    ) -> Option<RetainToken> {
        self.journal_begin_route();
        let token =
            if message.retain { self.update_retained(&message, Some(conn), now) } else { None };
        self.route_to_subscribers(&message, now);
        token
    }

    /// Writes `ack`, or holds it until retained update `token` is in effect everywhere.
    fn answer(&mut self, conn: ConnId, ack: Ack, token: Option<RetainToken>) {
        match token {
            Some(token) => self.hold_ack(conn, ack, token),
            None => self.write_ack(conn, ack),
        }
    }

    fn receive_qos2(
        &mut self,
        conn: ConnId,
        session: SessionId,
        id: PacketId,
        message: Message,
        now: Millis,
    ) {
        let awaiting_max = self.config.max_awaiting_pubrel;
        let token = match self.sessions.get_mut(session).incoming.on_publish(id, awaiting_max) {
            IncomingQos2::Deliver => {
                self.journal_origin(session, id);
                let token = self.route_acknowledged(conn, message, now);
                if self.sessions.get(session).persistent {
                    // Before the PUBREC is decided, which then waits for it (`durable.rs`).
                    self.journal_qos2_received(session, id);
                }
                if let Some(token) = token {
                    self.note_qos2_token(session, id, token);
                }
                token
            }
            // Not routed again; its PUBREC waits for the first copy's retained update, if any.
            IncomingQos2::Duplicate => self.qos2_token(conn, session, id),
            IncomingQos2::Full => {
                let violation = CloseReason::ProtocolViolation(
                    "more QoS 2 PUBLISHes awaiting PUBREL than max_awaiting_pubrel",
                );
                return self.close_conn(conn, Some(violation), now);
            }
        };
        self.answer(conn, Ack::Pubrec(id), token);
    }

    pub(super) fn handle_pubrel(&mut self, conn: ConnId, session: SessionId, id: PacketId) {
        // An unknown id still gets PUBCOMP: the client may be finishing an exchange whose
        // PUBCOMP it never saw [MQTT-4.3.3-2] [MQTT-3.6.4-1].
        let state = self.sessions.get_mut(session);
        let persistent = state.persistent;
        let released = state.incoming.on_pubrel(id);
        if released {
            self.forget_qos2_token(session, id);
        }
        if released && persistent {
            self.journal_qos2_released(session, id);
        }
        if persistent {
            // Known or not (a crash may have lost the id here but not a copy's elsewhere).
            self.release_forwarded_everywhere(session, Some(id));
        }
        // PUBCOMP lets the client reuse the id: only once the release is durable (the final
        // write goes through `write_durable_ack`).
        self.write_ack(conn, Ack::Pubcomp(id));
    }

    /// Routes a message published here with no acknowledgement to wait for it (a client's QoS
    /// 0, a will, `$SYS`).
    pub(super) fn route_publish(&mut self, message: Message, now: Millis) {
        if message.retain {
            self.update_retained(&message, None, now);
        }
        self.route_to_subscribers(&message, now);
    }

    /// Delivers `message` to the local subscribers and sends it to the interested workers.
    fn route_to_subscribers(&mut self, message: &Message, now: Millis) {
        let mut matches = std::mem::take(&mut self.matches);
        self.subscriptions.match_topic(&message.topic, &mut matches);
        self.fan_out(message, &matches.sessions, now);
        for worker in matches.workers.iter() {
            if worker != self.me {
                let msg = self.remote_publish(message);
                self.send_remote(worker, msg);
            }
        }
        self.matches = matches;
    }

    /// Delivers a message another worker routed here to the local subscribers only.
    pub(super) fn deliver_from_remote(&mut self, message: &Message, now: Millis) {
        let mut matches = std::mem::take(&mut self.matches);
        self.subscriptions.match_topic(&message.topic, &mut matches);
        self.fan_out(message, &matches.sessions, now);
        self.matches = matches;
    }

    fn fan_out(&mut self, message: &Message, sessions: &[(SessionId, QoS)], now: Millis) {
        let mut variants = Variants::new(false);
        for &(session, granted) in sessions {
            // Read access per delivered message (`auth.rs`); free without an ACL.
            if !self.may_deliver(session, &message.topic) {
                continue;
            }
            self.deliver(session, message, message.qos.min(granted), &mut variants, now);
        }
    }
}
