//! Counters one worker keeps: the source of `$SYS` and, later, `/metrics`.
//!
//! Counters only grow; gauges (marked) are the current value and are refreshed by the broker
//! at the end of every event it handles, so [`super::Broker::stats`] is always current. Every
//! limit the broker enforces has a counter for what happened at it.

use super::CloseReason;

/// Plain counters, bumped on the message path (no log line per packet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Gauge: connections with an accepted CONNECT.
    pub clients_connected: u64,
    /// Gauge: sessions held, connected or persistent and offline (Mosquitto's
    /// `$SYS/broker/clients/total`).
    pub clients_total: u64,
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH packets written to clients (first sends and redeliveries).
    pub messages_sent: u64,
    /// `messages_received` by the QoS they were published with (index = QoS).
    pub messages_received_by_qos: [u64; 3],
    /// `messages_sent` by the QoS they were written with (index = QoS).
    pub messages_sent_by_qos: [u64; 3],
    /// Bytes of packets received (their encoded size).
    pub bytes_received: u64,
    /// Bytes the runtime reported sent.
    pub bytes_sent: u64,
    /// Gauge: local subscriptions, once per (session, filter).
    pub subscriptions: u64,
    /// Gauge: retained messages in this worker's replica.
    pub retained_messages: u64,
    /// Gauge: QoS 1/2 messages sent and not yet acknowledged.
    pub inflight_messages: u64,
    /// Gauge: messages waiting in session queues.
    pub queued_messages: u64,

    /// QoS 0 messages not written because the connection's output was at `outbuf_bytes_max`.
    pub qos0_dropped_outbuf: u64,
    /// Messages not queued because the session queue was at `max_queued_messages` or
    /// `max_queued_bytes`.
    pub messages_dropped_queue_full: u64,
    /// CONNECTs answered with a refusal.
    pub connects_refused: u64,
    /// Of those, refused for bad credentials or as not authorized (CONNACK 4 or 5).
    pub connects_refused_auth: u64,
    /// New sessions refused at `sessions_max`.
    pub sessions_refused_full: u64,
    /// Persistent sessions removed after `persistent_client_expiration_secs` offline.
    pub sessions_expired: u64,
    /// Filters refused (0x80) at `subscriptions_per_session_max`.
    pub subscriptions_refused: u64,
    /// New retained topics not stored at `retained_messages_max`.
    pub retained_refused_full: u64,
    /// Retained messages removed after `retained_expiry_secs`.
    pub retained_expired: u64,
    /// Wills published.
    pub wills_published: u64,
    /// CONNECTs handed to their session's home worker.
    pub handoffs: u64,
    /// SUBACKs held until every other worker acknowledged a new interest.
    pub subacks_held: u64,
    /// PUBACKs/PUBRECs held until every other worker applied their retained update.
    pub retained_acks_held: u64,
    /// PUBACK/PUBREC/PUBCOMP for a packet id not awaiting that acknowledgement (ignored).
    pub unexpected_acks: u64,
    /// CONNECTs refused 0x04: unknown user, wrong or missing password.
    pub connects_refused_credentials: u64,
    /// CONNECTs refused 0x05 because the ACL does not let the client write its will's topic.
    pub connects_refused_unauthorised: u64,
    /// CONNECTs refused 0x05 because their address failed `auth_failures_max` times.
    pub connects_rate_limited: u64,
    /// CONNECTs refused 0x03 because the password verifier's queue was full.
    pub connects_refused_busy: u64,
    /// Failures not tracked: the limiter held `auth_failure_addresses_max` live addresses.
    pub auth_limiter_full: u64,
    /// PUBLISHes the ACL did not let their client write (acknowledged, dropped).
    pub publishes_denied: u64,
    /// SUBSCRIBE filters answered 0x80 by the ACL.
    pub subscriptions_denied: u64,
    /// Messages not delivered to a subscriber the ACL does not let read their topic.
    pub deliveries_denied: u64,
    /// Connections closed, by reason.
    pub closes: CloseCounts,
}

/// Connections closed, one counter per [`CloseReason`] plus closes the peer started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseCounts {
    pub client_disconnect: u64,
    pub protocol_error: u64,
    pub protocol_violation: u64,
    pub connect_refused: u64,
    pub keepalive_timeout: u64,
    pub connect_timeout: u64,
    pub taken_over: u64,
    pub slow_consumer: u64,
    pub shutdown: u64,
    /// An operator closed it through the admin API.
    pub kicked: u64,
    /// A password file reload removed its user or changed its password.
    pub credentials_revoked: u64,
    /// The socket went away (`handle_closed`) without the broker asking.
    pub peer_closed: u64,
}

impl CloseCounts {
    pub fn count(&mut self, reason: Option<CloseReason>) {
        let counter = match reason {
            Some(CloseReason::ClientDisconnect) => &mut self.client_disconnect,
            Some(CloseReason::ProtocolError(_)) => &mut self.protocol_error,
            Some(CloseReason::ProtocolViolation(_)) => &mut self.protocol_violation,
            Some(CloseReason::ConnectRefused(_)) => &mut self.connect_refused,
            Some(CloseReason::KeepaliveTimeout) => &mut self.keepalive_timeout,
            Some(CloseReason::ConnectTimeout) => &mut self.connect_timeout,
            Some(CloseReason::TakenOver) => &mut self.taken_over,
            Some(CloseReason::SlowConsumer) => &mut self.slow_consumer,
            Some(CloseReason::Shutdown) => &mut self.shutdown,
            Some(CloseReason::Kicked) => &mut self.kicked,
            Some(CloseReason::CredentialsRevoked) => &mut self.credentials_revoked,
            None => &mut self.peer_closed,
        };
        *counter += 1;
    }

    fn add(&mut self, other: &Self) {
        self.client_disconnect += other.client_disconnect;
        self.protocol_error += other.protocol_error;
        self.protocol_violation += other.protocol_violation;
        self.connect_refused += other.connect_refused;
        self.keepalive_timeout += other.keepalive_timeout;
        self.connect_timeout += other.connect_timeout;
        self.taken_over += other.taken_over;
        self.slow_consumer += other.slow_consumer;
        self.shutdown += other.shutdown;
        self.kicked += other.kicked;
        self.credentials_revoked += other.credentials_revoked;
        self.peer_closed += other.peer_closed;
    }
}

impl WorkerStats {
    /// Adds `other`'s counters and gauges to this one's, for the process-wide aggregate.
    /// `retained_messages` is not summed: every worker holds a full replica, so the aggregate
    /// keeps the largest replica's count.
    pub fn add(&mut self, other: &Self) {
        self.clients_connected += other.clients_connected;
        self.clients_total += other.clients_total;
        self.messages_received += other.messages_received;
        self.messages_sent += other.messages_sent;
        for qos in 0..3 {
            self.messages_received_by_qos[qos] += other.messages_received_by_qos[qos];
            self.messages_sent_by_qos[qos] += other.messages_sent_by_qos[qos];
        }
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.subscriptions += other.subscriptions;
        self.retained_messages = self.retained_messages.max(other.retained_messages);
        self.inflight_messages += other.inflight_messages;
        self.queued_messages += other.queued_messages;
        self.qos0_dropped_outbuf += other.qos0_dropped_outbuf;
        self.messages_dropped_queue_full += other.messages_dropped_queue_full;
        self.connects_refused += other.connects_refused;
        self.connects_refused_auth += other.connects_refused_auth;
        self.sessions_refused_full += other.sessions_refused_full;
        self.sessions_expired += other.sessions_expired;
        self.subscriptions_refused += other.subscriptions_refused;
        self.retained_refused_full += other.retained_refused_full;
        self.retained_expired += other.retained_expired;
        self.wills_published += other.wills_published;
        self.handoffs += other.handoffs;
        self.subacks_held += other.subacks_held;
        self.retained_acks_held += other.retained_acks_held;
        self.unexpected_acks += other.unexpected_acks;
        self.connects_refused_credentials += other.connects_refused_credentials;
        self.connects_refused_unauthorised += other.connects_refused_unauthorised;
        self.connects_rate_limited += other.connects_rate_limited;
        self.auth_limiter_full += other.auth_limiter_full;
        self.connects_refused_busy += other.connects_refused_busy;
        self.publishes_denied += other.publishes_denied;
        self.subscriptions_denied += other.subscriptions_denied;
        self.deliveries_denied += other.deliveries_denied;
        self.closes.add(&other.closes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sums_counters_and_keeps_the_largest_retained_replica() {
        let one = WorkerStats {
            clients_connected: 2,
            messages_sent: 10,
            retained_messages: 5,
            closes: CloseCounts { peer_closed: 1, ..CloseCounts::default() },
            ..WorkerStats::default()
        };
        let two = WorkerStats {
            clients_connected: 3,
            messages_sent: 1,
            retained_messages: 4,
            closes: CloseCounts { peer_closed: 2, ..CloseCounts::default() },
            ..WorkerStats::default()
        };
        let mut total = one.clone();
        total.add(&two);
        assert_eq!(total.clients_connected, 5);
        assert_eq!(total.messages_sent, 11);
        assert_eq!(total.retained_messages, 5);
        assert_eq!(total.closes.peer_closed, 3);
    }
}
