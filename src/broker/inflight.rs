//! The QoS state machines of one session, both directions [MQTT-4.3].
//!
//! Outgoing (broker to client): a QoS 1/2 PUBLISH takes a packet id and a place in the
//! inflight window (`max_inflight_messages`) when it is written; it leaves on PUBACK (QoS 1) or
//! goes PUBLISH -> PUBREC -> PUBREL -> PUBCOMP (QoS 2). Messages that cannot be written yet (the
//! window is full, the connection's output is at `outbuf_bytes_max`, or the client is offline)
//! wait in the session queue in arrival order; the queue is bounded by `max_queued_messages`
//! and `max_queued_bytes` (payload bytes). Once anything is queued, later QoS 1/2 messages queue
//! behind it, so a session's QoS 1/2 messages reach the client in the order they reached the
//! session [MQTT-4.6.0-6]. QoS 0 is never held back for QoS 1/2: it is written
//! at once or dropped, as MQTT's order rule is per topic *and QoS*.
//!
//! Incoming (client to broker), QoS 2 uses Method B of [MQTT-4.3.3-2] (figure 4.3): the packet
//! id is stored and the message delivered onwards when the PUBLISH arrives; a PUBLISH re-sent
//! with a stored id is acknowledged but not delivered again; PUBREL discards the id. Method B
//! delivers without waiting a round trip and keeps a publisher's QoS 2 messages in order with
//! its QoS 0/1 ones. The stored ids are bounded by `max_awaiting_pubrel`.
//!
//! On resuming a session every inflight message is re-sent [MQTT-4.4.0-1] in order
//! [MQTT-4.6.0-1], as the output bound lets it (`delivery.rs`): the entries not yet re-sent on
//! the new connection are the last `redeliver_left` of the window; nothing newer is written
//! before they are.
//!
//! Invariants: packet ids in the window are distinct; the window never exceeds its size; the
//! queue never exceeds its bounds; `queued_bytes` is the sum of the queued payload lengths;
//! `redeliver_left` is at most the window's length;
//! when `inflight_ordered` is set, the window's ids run front to back in the order ids are
//! handed out (see [`Outgoing::allocate_packet_id`]).

use std::collections::{HashSet, VecDeque};

use super::ids::IdBuildHasher;
use super::{Message, QoS};
use crate::protocol::PacketId;

/// What an outgoing inflight message waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Awaiting {
    Puback,
    Pubrec,
    Pubcomp,
}

/// A QoS 1/2 message written to the client and not yet fully acknowledged.
#[derive(Debug)]
pub(super) struct Inflight {
    pub packet_id: PacketId,
    pub message: Message,
    /// The QoS it was sent with: min(published, granted).
    pub qos: QoS,
    /// The RETAIN flag it was sent with (1 only for a new subscription's retained message).
    pub retain: bool,
    pub awaiting: Awaiting,
    /// Its journal entry (`durable.rs`); 0 when not journaled.
    pub seq: u64,
}

/// A message waiting to be written.
#[derive(Debug)]
pub(super) struct Queued {
    pub message: Message,
    pub qos: QoS,
    pub retain: bool,
    /// Its journal entry (`durable.rs`); 0 when not journaled.
    pub seq: u64,
}

/// The session queue's bounds, from the configuration.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueueLimits {
    pub messages_max: usize,
    pub bytes_max: usize,
}

/// The queue is at one of its bounds; the message was not queued.
#[derive(Debug)]
pub(super) struct QueueFull;

/// What a PUBREC did to the outgoing state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum PubrecOutcome {
    /// The QoS 2 message (journal entry `seq`) moved on to awaiting PUBCOMP: answer PUBREL.
    Released { seq: u64 },
    /// Already released (a repeated PUBREC): answer PUBREL again.
    AlreadyReleased,
    /// No QoS 2 message with this id is in flight.
    Unknown,
}

/// The broker-to-client direction of one session: its state made at the first message that
/// needs it (a packet id, an inflight entry, a queued message). An idle subscriber never
/// receives one, and the state inline would cost every session 88 bytes (issue 6); once made it
/// stays until the session ends, so a session that is sent to pays for the box once.
#[derive(Debug, Default)]
pub(super) struct Outgoing {
    state: Option<Box<OutgoingState>>,
}

#[derive(Debug)]
struct OutgoingState {
    inflight: VecDeque<Inflight>,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// QoS 0 messages in `queue` (queued while offline with `queue_qos0_messages`).
    queued_qos0: usize,
    next_packet_id: PacketId,
    /// The inflight ids, front to back, each further from the front's in hand-out order
    /// (1, 2, .., 65535, 1, ..) than the one before: then every id in the window lies between
    /// the front's and the back's, and one further than the back's is free without a search.
    /// Set while the window is empty; kept by pushing the next ids in sequence and by any
    /// removal; cleared by a push out of sequence (a restored window, or an id skipped because
    /// an old message still held it) until a search finds the order again.
    inflight_ordered: bool,
    /// The last this many inflight entries are not yet re-sent on the current connection
    /// (set on resume; the window is at most 65535 ids, so it fits).
    redeliver_left: u16,
}

/// How far `to` lies after `from` in the order packet ids are handed out: 0..=65534.
fn id_distance(from: PacketId, to: PacketId) -> u32 {
    const IDS: u32 = u16::MAX as u32; // 1..=65535
    let (from, to) = (u32::from(from.get()), u32::from(to.get()));
    if to >= from {
        to - from
    } else {
        to + IDS - from
    }
}

impl Default for OutgoingState {
    fn default() -> Self {
        Self {
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_qos0: 0,
            next_packet_id: FIRST_PACKET_ID,
            inflight_ordered: true,
            redeliver_left: 0,
        }
    }
}

impl Outgoing {
    fn state(&mut self) -> &mut OutgoingState {
        self.state.get_or_insert_with(Box::default)
    }

    pub fn inflight_len(&self) -> usize {
        self.state.as_ref().map_or(0, |state| state.inflight.len())
    }

    pub fn queued_len(&self) -> usize {
        self.state.as_ref().map_or(0, |state| state.queue.len())
    }

    /// Payload bytes queued (what `max_queued_bytes` bounds).
    pub fn queued_bytes(&self) -> usize {
        self.state.as_ref().map_or(0, |state| state.queued_bytes)
    }

    pub fn has_queued(&self) -> bool {
        self.state.as_ref().is_some_and(|state| !state.queue.is_empty())
    }

    /// Whether QoS 0 messages wait in the queue (a new QoS 0 one must then queue behind them).
    pub fn has_queued_qos0(&self) -> bool {
        self.state.as_ref().is_some_and(|state| state.queued_qos0 > 0)
    }

    /// The session resumed on a new connection: every inflight entry is to be re-sent.
    pub fn start_redelivery(&mut self) {
        if let Some(state) = self.state.as_mut() {
            let len = u16::try_from(state.inflight.len()).expect("the window is under 65536");
            state.redeliver_left = len;
        }
    }

    /// Whether inflight entries still wait to be re-sent on this connection (nothing newer
    /// may be written before them [MQTT-4.6.0-1]).
    pub fn redelivery_pending(&self) -> bool {
        self.state.as_ref().is_some_and(|state| state.redeliver_left > 0)
    }

    /// The next inflight entry to re-send, oldest first.
    pub fn next_redelivery(&self) -> Option<&Inflight> {
        let state = self.state.as_ref()?;
        let left = usize::from(state.redeliver_left);
        (left > 0).then(|| &state.inflight[state.inflight.len() - left])
    }

    /// The entry `next_redelivery` gave was re-sent.
    pub fn redelivered(&mut self) {
        let state = self.state.as_mut().expect("an entry was re-sent");
        state.redeliver_left -= 1;
    }

    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.state.iter().flat_map(|state| state.inflight.iter())
    }

    pub fn queued(&self) -> impl Iterator<Item = &Queued> {
        self.state.iter().flat_map(|state| state.queue.iter())
    }

    pub fn front_queued(&self) -> Option<&Queued> {
        self.state.as_ref()?.queue.front()
    }

    /// See [`OutgoingState::allocate_packet_id`].
    pub fn allocate_packet_id(&mut self) -> PacketId {
        self.state().allocate_packet_id()
    }

    /// Where packet ids continue (persisted so a restart does not reuse recent ones).
    pub fn next_packet_id(&self) -> PacketId {
        self.state.as_ref().map_or(FIRST_PACKET_ID, |state| state.next_packet_id)
    }

    /// See [`OutgoingState::set_next_packet_id`].
    pub fn set_next_packet_id(&mut self, id: PacketId) {
        self.state().next_packet_id = id;
    }

    pub fn push_inflight(&mut self, entry: Inflight, window: usize) {
        self.state().push_inflight(entry, window);
    }

    pub fn enqueue(&mut self, queued: Queued, limits: QueueLimits) -> Result<(), QueueFull> {
        self.state().enqueue(queued, limits)
    }

    pub fn dequeue(&mut self) -> Option<Queued> {
        self.state.as_mut()?.dequeue()
    }

    /// PUBACK: the QoS 1 message with `id` is done; its journal seq, or `None` if none was
    /// awaiting it.
    pub fn on_puback(&mut self, id: PacketId) -> Option<u64> {
        self.state.as_mut()?.remove_awaiting(id, Awaiting::Puback)
    }

    /// PUBCOMP: the QoS 2 message with `id` is done; as `on_puback`.
    pub fn on_pubcomp(&mut self, id: PacketId) -> Option<u64> {
        self.state.as_mut()?.remove_awaiting(id, Awaiting::Pubcomp)
    }

    pub fn on_pubrec(&mut self, id: PacketId) -> PubrecOutcome {
        self.state.as_mut().map_or(PubrecOutcome::Unknown, |state| state.on_pubrec(id))
    }

    /// Drops everything (the session is being discarded); returns (inflight, queued) counts.
    pub fn clear(&mut self) -> (usize, usize) {
        self.state.take().map_or((0, 0), |state| (state.inflight.len(), state.queue.len()))
    }
}

/// The first packet id handed out.
const FIRST_PACKET_ID: PacketId = match PacketId::new(1) {
    Some(id) => id,
    None => unreachable!(),
};

impl OutgoingState {
    /// Takes a packet id no inflight message uses. The window is smaller than the id space,
    /// so one is free; ids are handed out in sequence, so with acknowledgements arriving
    /// roughly in order the next one is free at the first try, and while the window is in
    /// hand-out order (`inflight_ordered`) that is known from its front and back alone: no
    /// search of the window per message.
    pub fn allocate_packet_id(&mut self) -> PacketId {
        assert!(self.inflight.len() < usize::from(u16::MAX), "packet id space exhausted");
        loop {
            let candidate = self.next_packet_id;
            self.next_packet_id = candidate.next();
            if self.id_is_free(candidate) {
                return candidate;
            }
        }
    }

    /// Whether no inflight message uses `id`. Searches the window only when its order does
    /// not answer, and then checks the order again (a window out of order becomes ordered
    /// again as its old entries are acknowledged).
    fn id_is_free(&mut self, id: PacketId) -> bool {
        let (Some(front), Some(back)) = (self.inflight.front(), self.inflight.back()) else {
            return true;
        };
        let front = front.packet_id;
        if self.inflight_ordered && id_distance(front, id) > id_distance(front, back.packet_id) {
            return true;
        }
        let mut free = true;
        let mut ordered = true;
        let mut previous = None;
        for entry in &self.inflight {
            free &= entry.packet_id != id;
            let distance = id_distance(front, entry.packet_id);
            ordered &= previous.is_none_or(|previous| distance > previous);
            previous = Some(distance);
        }
        self.inflight_ordered = ordered;
        free
    }

    pub fn push_inflight(&mut self, entry: Inflight, window: usize) {
        assert!(self.inflight.len() < window, "inflight window of {window} overrun");
        assert!(entry.qos != QoS::AtMostOnce, "QoS 0 is never in flight");
        self.inflight_ordered = match (self.inflight.front(), self.inflight.back()) {
            (Some(front), Some(back)) => {
                let front = front.packet_id;
                self.inflight_ordered
                    && id_distance(front, entry.packet_id) > id_distance(front, back.packet_id)
            }
            _ => true,
        };
        self.inflight.push_back(entry);
    }

    pub fn enqueue(&mut self, queued: Queued, limits: QueueLimits) -> Result<(), QueueFull> {
        let bytes = queued.message.payload.len();
        if self.queue.len() >= limits.messages_max
            || self.queued_bytes.saturating_add(bytes) > limits.bytes_max
        {
            return Err(QueueFull);
        }
        self.queued_bytes += bytes;
        self.queued_qos0 += usize::from(queued.qos == QoS::AtMostOnce);
        self.queue.push_back(queued);
        Ok(())
    }

    pub fn dequeue(&mut self) -> Option<Queued> {
        let queued = self.queue.pop_front()?;
        self.queued_bytes -= queued.message.payload.len();
        self.queued_qos0 -= usize::from(queued.qos == QoS::AtMostOnce);
        Some(queued)
    }

    pub fn on_pubrec(&mut self, id: PacketId) -> PubrecOutcome {
        let Some(entry) = self.inflight.iter_mut().find(|entry| entry.packet_id == id) else {
            return PubrecOutcome::Unknown;
        };
        match entry.awaiting {
            Awaiting::Pubrec => {
                entry.awaiting = Awaiting::Pubcomp;
                // Only the id is needed from now on [MQTT-4.3.3-1]; let the payload go.
                entry.message.payload = bytes::Bytes::new();
                PubrecOutcome::Released { seq: entry.seq }
            }
            Awaiting::Pubcomp => PubrecOutcome::AlreadyReleased,
            Awaiting::Puback => PubrecOutcome::Unknown,
        }
    }

    fn remove_awaiting(&mut self, id: PacketId, awaiting: Awaiting) -> Option<u64> {
        // Acknowledgements usually come in order: the search ends at the front.
        let found = self
            .inflight
            .iter()
            .position(|entry| entry.packet_id == id && entry.awaiting == awaiting)?;
        // Acknowledged before its re-send (the client had it from the old connection): it
        // leaves the entries still to re-send.
        if found >= self.inflight.len() - usize::from(self.redeliver_left) {
            self.redeliver_left -= 1;
        }
        Some(self.inflight.remove(found)?.seq)
    }
}

/// The client-to-broker direction of one session: QoS 2 packet ids awaiting PUBREL. Boxed
/// and made at the first QoS 2 PUBLISH: most sessions never send one, and an empty set would
/// still cost every session 32 bytes (issue 6: bytes per idle connection).
#[derive(Debug, Default)]
pub(super) struct Incoming {
    // Boxed on purpose (the lint's "just use the set" would cost 24 bytes more per session).
    #[allow(clippy::box_collection)]
    awaiting_pubrel: Option<Box<HashSet<PacketId, IdBuildHasher>>>,
}

/// What a QoS 2 PUBLISH from the client means for delivery.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum IncomingQos2 {
    /// A new message: deliver it, then answer PUBREC.
    Deliver,
    /// A re-sent PUBLISH for a stored id: answer PUBREC, do not deliver again.
    Duplicate,
    /// `max_awaiting_pubrel` ids are stored already.
    Full,
}

impl Incoming {
    pub fn on_publish(&mut self, id: PacketId, awaiting_max: usize) -> IncomingQos2 {
        let awaiting = self.awaiting_pubrel.get_or_insert_with(Box::default);
        if awaiting.contains(&id) {
            return IncomingQos2::Duplicate;
        }
        if awaiting.len() >= awaiting_max {
            return IncomingQos2::Full;
        }
        awaiting.insert(id);
        IncomingQos2::Deliver
    }

    /// PUBREL: forget the id. PUBCOMP is answered either way [MQTT-3.6.4-1].
    pub fn on_pubrel(&mut self, id: PacketId) -> bool {
        self.awaiting_pubrel.as_mut().is_some_and(|awaiting| awaiting.remove(&id))
    }

    pub fn len(&self) -> usize {
        self.awaiting_pubrel.as_ref().map_or(0, |awaiting| awaiting.len())
    }

    /// The ids awaiting PUBREL, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = PacketId> + '_ {
        self.awaiting_pubrel.iter().flat_map(|awaiting| awaiting.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::TopicName;

    fn pid(value: u16) -> PacketId {
        PacketId::new(value).expect("non-zero")
    }

    fn message(payload: &'static [u8]) -> Message {
        Message {
            topic: TopicName::from_static("t"),
            payload: Bytes::from_static(payload),
            qos: QoS::ExactlyOnce,
            retain: false,
        }
    }

    fn entry(id: PacketId, qos: QoS) -> Inflight {
        let awaiting = if qos == QoS::AtLeastOnce { Awaiting::Puback } else { Awaiting::Pubrec };
        Inflight { packet_id: id, message: message(b"x"), qos, retain: false, awaiting, seq: 0 }
    }

    #[test]
    fn packet_ids_skip_those_still_in_flight_and_never_use_zero() {
        let mut out = Outgoing::default();
        out.set_next_packet_id(pid(u16::MAX));
        let first = out.allocate_packet_id();
        assert_eq!(first, pid(u16::MAX));
        out.push_inflight(entry(first, QoS::AtLeastOnce), 10);
        out.push_inflight(entry(pid(1), QoS::AtLeastOnce), 10);
        // 65535 wraps to 1 [MQTT-2.3.1-1], which is in use, so 2 comes next.
        assert_eq!(out.allocate_packet_id(), pid(2));
    }

    #[test]
    fn an_old_message_still_in_flight_is_skipped_when_the_ids_come_round() {
        // One message never acknowledged while 65535 others pass: its id must not be reused
        // [MQTT-2.3.1-4], however the window's order is tracked.
        let mut out = Outgoing::default();
        let stuck = out.allocate_packet_id();
        out.push_inflight(entry(stuck, QoS::AtLeastOnce), 10);
        for _ in 0..70_000 {
            let id = out.allocate_packet_id();
            assert_ne!(id, stuck);
            out.push_inflight(entry(id, QoS::AtLeastOnce), 10);
            assert!(out.on_puback(id).is_some());
        }
        assert_eq!(out.inflight_len(), 1);
    }

    /// What the window may see: new messages, acknowledgements of any of its messages, and a
    /// restored entry with any id (persistence) or a moved id counter.
    #[derive(Clone, Debug)]
    enum Step {
        Send,
        Ack(usize),
        Restore(u16),
        Counter(u16),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            6 => Just(Step::Send),
            4 => (0usize..64).prop_map(Step::Ack),
            1 => (1u16..=u16::MAX).prop_map(Step::Restore),
            1 => (1u16..=u16::MAX).prop_map(Step::Counter),
        ]
    }

    proptest::proptest! {
        /// The allocator never hands out an id in flight (nor 0) [MQTT-2.3.1-4], and its order
        /// bookkeeping says "ordered" only when the window is in hand-out order.
        #[test]
        fn allocated_ids_are_never_in_flight(steps in proptest::collection::vec(step(), 1..400)) {
            const WINDOW: usize = 64;
            let mut out = Outgoing::default();
            for step in steps {
                match step {
                    Step::Send if out.inflight_len() < WINDOW => {
                        let id = out.allocate_packet_id();
                        proptest::prop_assert!(out.inflight().all(|e| e.packet_id != id));
                        out.push_inflight(entry(id, QoS::AtLeastOnce), WINDOW);
                    }
                    Step::Ack(index) if index < out.inflight_len() => {
                        let id = out.inflight().nth(index).map(|e| e.packet_id).expect("exists");
                        proptest::prop_assert!(out.on_puback(id).is_some());
                    }
                    Step::Restore(id) if out.inflight_len() < WINDOW => {
                        let id = pid(id);
                        if out.inflight().all(|e| e.packet_id != id) {
                            out.push_inflight(entry(id, QoS::AtLeastOnce), WINDOW);
                        }
                    }
                    Step::Counter(id) => out.set_next_packet_id(pid(id)),
                    _ => {}
                }
                if out.state.as_ref().is_some_and(|state| state.inflight_ordered) {
                    let front = out.inflight().next().map(|e| e.packet_id);
                    let distances: Vec<u32> =
                        out.inflight().map(|e| id_distance(front.expect("non-empty"), e.packet_id)).collect();
                    proptest::prop_assert!(distances.windows(2).all(|pair| pair[0] < pair[1]));
                }
            }
        }
    }

    #[test]
    fn qos2_outgoing_goes_pubrec_then_pubcomp() {
        let mut out = Outgoing::default();
        out.push_inflight(entry(pid(5), QoS::ExactlyOnce), 1);
        assert!(out.on_puback(pid(5)).is_none(), "a QoS 2 message is not finished by PUBACK");
        assert!(out.on_pubcomp(pid(5)).is_none(), "nor by PUBCOMP before PUBREC");
        assert_eq!(out.on_pubrec(pid(5)), PubrecOutcome::Released { seq: 0 });
        assert_eq!(out.on_pubrec(pid(5)), PubrecOutcome::AlreadyReleased);
        assert!(out.on_pubcomp(pid(5)).is_some());
        assert_eq!(out.inflight_len(), 0);
        assert_eq!(out.on_pubrec(pid(5)), PubrecOutcome::Unknown);
    }

    #[test]
    fn the_queue_stops_at_either_bound() {
        let limits = QueueLimits { messages_max: 2, bytes_max: 5 };
        let queued = |payload| Queued {
            message: message(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            seq: 0,
        };
        let mut out = Outgoing::default();
        out.enqueue(queued(b"abc"), limits).expect("room");
        assert!(out.enqueue(queued(b"abc"), limits).is_err(), "6 bytes > 5");
        out.enqueue(queued(b"ab"), limits).expect("exactly 5 bytes");
        assert!(out.enqueue(queued(b""), limits).is_err(), "2 messages already");
        assert_eq!(out.dequeue().map(|q| q.message.payload.len()), Some(3));
        assert_eq!(out.queued_bytes(), 2);
    }

    #[test]
    fn incoming_qos2_delivers_once_until_pubrel() {
        // [MQTT-4.3.3-2] Method B: store the id, deliver once, forget it on PUBREL.
        let mut incoming = Incoming::default();
        assert_eq!(incoming.on_publish(pid(9), 2), IncomingQos2::Deliver);
        assert_eq!(incoming.on_publish(pid(9), 2), IncomingQos2::Duplicate);
        assert_eq!(incoming.on_publish(pid(10), 2), IncomingQos2::Deliver);
        assert_eq!(incoming.on_publish(pid(11), 2), IncomingQos2::Full);
        assert!(incoming.on_pubrel(pid(9)));
        assert!(!incoming.on_pubrel(pid(9)));
        assert_eq!(incoming.on_publish(pid(9), 2), IncomingQos2::Deliver);
    }
}
