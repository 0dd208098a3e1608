//! A recovered state: what a broker is restored from. Plain values of the protocol's types, so
//! this module depends on the codec only (the broker converts them into its own structures).

use bytes::Bytes;

use crate::protocol::{PacketId, QoS, TopicFilter, TopicName, Utf8Bytes};

/// A message as it was published (its QoS and RETAIN flag as received).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredMessage {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// A retained message and when it was set (wall clock, milliseconds since the Unix epoch;
/// `None` when the file did not record it: taken as set at the restart).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RetainedImage {
    pub message: StoredMessage,
    pub set_at_unix_millis: Option<u64>,
}

/// Where one of a session's outgoing QoS 1/2 messages stood.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EntryState {
    /// Not yet written to the client.
    Queued,
    /// Written with this packet id, awaiting PUBACK or PUBREC.
    Sent(PacketId),
    /// QoS 2, PUBREC received: awaiting PUBCOMP (only the id is re-sent, as PUBREL).
    Released(PacketId),
}

/// One outgoing message of a session, in the session's order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EntryImage {
    pub message: StoredMessage,
    /// The QoS it is sent at (min of published and granted).
    pub qos: QoS,
    /// The RETAIN flag it is sent with.
    pub retain: bool,
    pub state: EntryState,
}

/// A persistent session.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionImage {
    pub client_id: Utf8Bytes,
    pub subscriptions: Vec<(TopicFilter, QoS)>,
    /// Outgoing QoS 1/2 messages, oldest first.
    pub entries: Vec<EntryImage>,
    /// Incoming QoS 2 packet ids delivered and awaiting PUBREL.
    pub awaiting_pubrel: Vec<PacketId>,
    /// Where outgoing packet ids continue (after the last one known sent).
    pub next_packet_id: Option<PacketId>,
}

/// A QoS 2 message (origin client id, packet id) whose copies the persistent sessions homed
/// at `worker` among `workers` workers hold (`workers` 0: the epoch's worker count, filled in
/// by `store::partition`). A re-sent PUBLISH with that id, after a crash lost it at the
/// origin, is not delivered to them again; sessions keep this however they are re-homed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct HeldQos2 {
    pub origin: Utf8Bytes,
    pub packet_id: PacketId,
    pub workers: u16,
    pub worker: u16,
}

/// Everything recovered: for one worker, or for the whole process before it is partitioned.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Image {
    pub sessions: Vec<SessionImage>,
    /// Retained messages: every worker gets all of them (each keeps a full replica).
    pub retained: Vec<RetainedImage>,
    /// In a worker's share: the filters other workers' recovered sessions subscribe to, by
    /// worker index. Applied before any client is served, so a publish that arrives before
    /// those workers' interest broadcasts is still routed to them.
    pub remote_interest: Vec<(u16, TopicFilter)>,
    /// QoS 2 messages from persistent sessions whose copies persistent sessions hold and
    /// whose ids are not yet released (`Record::Qos2Forwarded` and `Qos2Held`).
    pub qos2_forwarded: Vec<HeldQos2>,
}

impl Image {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.retained.is_empty() && self.qos2_forwarded.is_empty()
    }

    /// Outgoing messages held across all sessions.
    pub fn entry_count(&self) -> usize {
        self.sessions.iter().map(|session| session.entries.len()).sum()
    }
}
