//! Delivery to one session: write now, queue, or drop — and refill from the queue as the
//! client acknowledges and the socket drains.
//!
//! Output policy (every branch counted in the statistics):
//! - A connection's pending output is what sits in its `OutBuf` plus what the runtime took
//!   and has not yet reported sent. A packet fits when that is zero or the packet keeps it
//!   within `outbuf_bytes_max`.
//! - QoS 0 to an online session is written if it fits, else dropped (`qos0_dropped_outbuf`).
//!   To an offline persistent session it is queued only with `queue_qos0_messages`; while
//!   such QoS 0 messages are still queued, a new one queues behind them (or is dropped at the
//!   queue's bound), so it cannot overtake them.
//! - QoS 1/2 is written if it fits, the inflight window has room and nothing is queued ahead of
//!   it; otherwise it joins the session queue. A full queue drops the new message
//!   (`messages_dropped_queue_full`), online or offline. An online client is closed as a slow
//!   consumer only when it stays at the bound without acknowledging anything (PUBACK, PUBREC,
//!   PUBCOMP) for `slow_consumer_timeout_secs`: the first drop since it last made progress
//!   starts the clock, an acknowledgement or the queue moving stops it, and the timing wheel
//!   checks it (`keepalive.rs`). A persistent session keeps what it had. So a client that
//!   reconnects to a full queue and acknowledges its window is never cut off for messages that
//!   arrive before its acknowledgements do.
//! - Fan-out writes from an [`EncodedPublish`] per (QoS, retain) variant, encoded once per
//!   publish; the queue and redelivery paths write the header by hand around the shared
//!   payload. Neither allocates per subscriber (beyond amortised buffer growth).

use super::connection::Phase;
use super::inflight::{
    Awaiting, Inflight, Outgoing, PubrecOutcome, QueueFull, QueueLimits, Queued,
};
use super::keepalive::start_slow_consumer_clock;
use super::stats::WorkerStats;
use super::{Broker, ConnId, Message, Millis, SessionId};
use crate::persist::record::Record;
use crate::protocol::encode::remaining_length_bytes;
use crate::protocol::encode::SHARED_PAYLOAD_BYTES_MIN;
use crate::protocol::{EncodedPublish, OutBuf, Packet, PacketId, QoS};

/// One publish's encodings, one per QoS, all with the same RETAIN flag. A variant is encoded
/// on its second use: the first subscriber at a QoS gets the packet written directly, so a
/// message with one subscriber (unicast) costs no shared encoding (an allocation, and a
/// reference to the payload taken and dropped).
#[derive(Debug)]
pub(super) struct Variants {
    retain: bool,
    encoded: [Option<EncodedPublish>; 3],
    written: [bool; 3],
    /// The journal id of the message's body once stored (persistence, `durable.rs`).
    stored: Option<u64>,
}

impl Variants {
    /// `retain`: the RETAIN flag on the wire — 0 for established subscriptions
    /// [MQTT-3.3.1-9], 1 for a new subscription's retained messages [MQTT-3.3.1-8].
    pub fn new(retain: bool) -> Self {
        Self { retain, encoded: [None, None, None], written: [false; 3], stored: None }
    }

    /// Writes `message` at `qos` (with `packet_id` iff QoS 1 or 2) to `out`.
    fn write(
        &mut self,
        message: &Message,
        qos: QoS,
        packet_id: Option<PacketId>,
        out: &mut OutBuf,
    ) {
        let index = usize::from(qos.as_u8());
        let retain = self.retain;
        if !std::mem::replace(&mut self.written[index], true) {
            write_publish(out, message, qos, retain, false, packet_id);
            return;
        }
        self.encoded[index]
            .get_or_insert_with(|| {
                EncodedPublish::new(&message.topic, message.payload.clone(), qos, retain, false)
            })
            .write(packet_id, out);
    }
}

/// Whether a packet of `len` bytes may join `pending` bytes of output under `max`. An empty
/// connection always takes one packet, so a message larger than the bound still moves.
pub(super) fn fits(pending: usize, len: usize, max: usize) -> bool {
    pending == 0 || pending.saturating_add(len) <= max
}

/// Re-sends inflight entries not yet re-sent on this connection, oldest first, while they fit
/// the output bound; whether none is left.
fn redeliver_within_bound(
    outgoing: &mut Outgoing,
    conn: &mut super::connection::Conn,
    outbuf_bytes_max: usize,
    stats: &mut WorkerStats,
) -> bool {
    while let Some(entry) = outgoing.next_redelivery() {
        let len = match entry.awaiting {
            Awaiting::Puback | Awaiting::Pubrec => publish_len(&entry.message, entry.qos),
            Awaiting::Pubcomp => PUBREL_BYTES,
        };
        if !fits(conn.pending_bytes(), len, outbuf_bytes_max) {
            return false;
        }
        match entry.awaiting {
            Awaiting::Puback | Awaiting::Pubrec => {
                let id = Some(entry.packet_id);
                write_publish(&mut conn.out, &entry.message, entry.qos, entry.retain, true, id);
                stats.messages_sent += 1;
                stats.messages_sent_by_qos[entry.qos as usize] += 1;
            }
            Awaiting::Pubcomp => conn.out.put_packet(&Packet::Pubrel(entry.packet_id)),
        }
        outgoing.redelivered();
    }
    true
}

/// A PUBREL's encoded size: fixed header and packet id.
const PUBREL_BYTES: usize = 4;

/// The remaining length of a PUBLISH of `message` at `qos`: topic, packet id, payload.
fn publish_remaining(message: &Message, qos: QoS) -> usize {
    2 + message.topic.as_bytes().len()
        + if qos == QoS::AtMostOnce { 0 } else { 2 }
        + message.payload.len()
}

/// The encoded size of a PUBLISH of `message` at `qos`.
fn publish_len(message: &Message, qos: QoS) -> usize {
    let remaining = publish_remaining(message, qos);
    1 + remaining_length_bytes(remaining) + remaining
}

/// Writes one PUBLISH to `out` without an intermediate buffer: the header is built on the
/// stack, the payload is shared or copied as `OutBuf` decides.
pub(super) fn write_publish(
    out: &mut OutBuf,
    message: &Message,
    qos: QoS,
    retain: bool,
    dup: bool,
    packet_id: Option<PacketId>,
) {
    assert_eq!(packet_id.is_some(), qos != QoS::AtMostOnce, "packet id iff QoS 1 or 2");
    let topic = message.topic.as_bytes();
    let remaining = publish_remaining(message, qos);
    let copied_payload_bytes =
        if message.payload.len() < SHARED_PAYLOAD_BYTES_MIN { message.payload.len() } else { 0 };
    out.reserve(
        1 + remaining_length_bytes(remaining) + remaining - message.payload.len()
            + copied_payload_bytes,
    );
    let mut header = [0u8; 5];
    header[0] = 0x30 | (u8::from(dup) << 3) | (qos.as_u8() << 1) | u8::from(retain);
    let mut used = 1;
    let mut length = remaining;
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        header[used] = byte;
        used += 1;
        if length == 0 {
            break;
        }
    }
    out.put_slice(&header[..used]);
    let topic_len = u16::try_from(topic.len()).expect("a topic name fits its u16 prefix");
    out.put_slice(&topic_len.to_be_bytes());
    out.put_slice(topic);
    if let Some(id) = packet_id {
        out.put_slice(&id.get().to_be_bytes());
    }
    out.put_shared(&message.payload);
}

impl Broker {
    /// Delivers `message` at `qos` (already min(published, granted) [MQTT-3.8.4-6]) to
    /// `session_id`, with the RETAIN flag of `variants`.
    pub(super) fn deliver(
        &mut self,
        session_id: SessionId,
        message: &Message,
        qos: QoS,
        variants: &mut Variants,
        now: Millis,
    ) {
        let Self { sessions, conns, actions, stats, config, timers, durability, .. } = self;
        let session = sessions.get_mut(session_id);
        if session.persistent
            && durability.as_deref().is_some_and(|d| d.holds_copy(session.client_id.as_bytes()))
        {
            return; // a QoS 2 message it got before a crash lost the id (`durable.rs`)
        }
        let retain = variants.retain;
        // A persistent session's QoS 1/2 message is journaled (one test when persistence is off).
        let seq = match durability.as_deref_mut() {
            Some(journal) if session.persistent && qos != QoS::AtMostOnce => {
                journal.log_enqueue(session_id, message, qos, retain, &mut variants.stored)
            }
            _ => 0,
        };
        let queued = |message: &Message| Queued { message: message.clone(), qos, retain, seq };
        let Some(conn_id) = session.conn else {
            assert!(session.persistent, "a clean session exists only while connected");
            if qos == QoS::AtMostOnce && !config.queue_qos0_messages {
                return; // QoS 0 is at most once: an offline client simply misses it.
            }
            if !enqueue(&mut session.outgoing, queued(message), config.queue_limits(), stats) {
                journal_dropped(durability, seq);
            }
            return;
        };
        let conn = conns.get_mut(&conn_id).expect("an online session's connection is known");
        let window = config.inflight_window();
        let room = fits(conn.pending_bytes(), publish_len(message, qos), config.outbuf_bytes_max);
        if qos == QoS::AtMostOnce && session.outgoing.has_queued_qos0() {
            // Behind QoS 0 queued while offline: queue too, or drop; never a slow-consumer
            // close for QoS 0.
            enqueue(&mut session.outgoing, queued(message), config.queue_limits(), stats);
            return;
        }
        if qos == QoS::AtMostOnce {
            if room {
                variants.write(message, qos, None, &mut conn.out);
                stats.messages_sent += 1;
                stats.messages_sent_by_qos[0] += 1;
                conn.flag_send(conn_id, actions);
            } else {
                stats.qos0_dropped_outbuf += 1;
            }
            return;
        }
        let outgoing = &mut session.outgoing;
        let behind = outgoing.has_queued() || outgoing.redelivery_pending();
        if room && !behind && outgoing.inflight_len() < window {
            let packet_id = outgoing.allocate_packet_id();
            if let Some(journal) = durability.as_deref_mut().filter(|_| seq != 0) {
                journal.append(&Record::Sent { seq, packet_id });
            }
            variants.write(message, qos, Some(packet_id), &mut conn.out);
            outgoing.push_inflight(inflight_entry(packet_id, queued(message)), window);
            stats.messages_sent += 1;
            stats.messages_sent_by_qos[qos as usize] += 1;
            stats.inflight_messages += 1;
            conn.flag_send(conn_id, actions);
            return;
        }
        if !enqueue(outgoing, queued(message), config.queue_limits(), stats) {
            journal_dropped(durability, seq);
            // Dropped, as for an offline session; the client is closed only if it stays at
            // the bound without acknowledging anything (`keepalive.rs`).
            let timeout_secs = config.slow_consumer_timeout_secs;
            start_slow_consumer_clock(conn, conn_id, now, timeout_secs, timers);
        }
    }

    /// Moves queued messages to the connection while the window and the output bound allow.
    pub(super) fn refill(&mut self, conn_id: ConnId) {
        let Self { sessions, conns, actions, stats, config, durability, .. } = self;
        let Some(conn) = conns.get_mut(&conn_id) else {
            return;
        };
        let Phase::Active(session_id) = conn.phase else {
            return;
        };
        let outgoing = &mut sessions.get_mut(session_id).outgoing;
        if !redeliver_within_bound(outgoing, conn, config.outbuf_bytes_max, stats) {
            conn.flag_send(conn_id, actions);
            return; // Nothing newer goes before the re-sends [MQTT-4.6.0-1].
        }
        let window = config.inflight_window();
        let queued_before = outgoing.queued_len();
        while let Some(front) = outgoing.front_queued() {
            let len = publish_len(&front.message, front.qos);
            if !fits(conn.pending_bytes(), len, config.outbuf_bytes_max) {
                break;
            }
            if front.qos != QoS::AtMostOnce && outgoing.inflight_len() >= window {
                break;
            }
            let queued = outgoing.dequeue().expect("the front exists");
            stats.queued_messages -= 1;
            stats.messages_sent += 1;
            stats.messages_sent_by_qos[queued.qos as usize] += 1;
            if queued.qos == QoS::AtMostOnce {
                write_publish(
                    &mut conn.out,
                    &queued.message,
                    queued.qos,
                    queued.retain,
                    false,
                    None,
                );
                continue;
            }
            let packet_id = outgoing.allocate_packet_id();
            if let Some(journal) = durability.as_deref_mut().filter(|_| queued.seq != 0) {
                journal.append(&Record::Sent { seq: queued.seq, packet_id });
            }
            let (qos, retain) = (queued.qos, queued.retain);
            write_publish(&mut conn.out, &queued.message, qos, retain, false, Some(packet_id));
            outgoing.push_inflight(inflight_entry(packet_id, queued), window);
            stats.inflight_messages += 1;
        }
        if outgoing.queued_len() < queued_before {
            // The queue moved: no longer stuck at its bound.
            conn.clear_queue_full_since();
        }
        conn.flag_send(conn_id, actions);
    }

    /// On resuming a session: re-send every unacknowledged PUBLISH with DUP=1 and every
    /// unacknowledged PUBREL, in their original order [MQTT-4.4.0-1] [MQTT-4.6.0-1], then
    /// refill from the queue. The re-sends keep to `outbuf_bytes_max` like any PUBLISH: those
    /// that do not fit yet follow as the socket drains (`refill`), so a window of large
    /// messages never lands in one connection's output at once (fuzz finding
    /// `broker-output-bound-3f7826eb`).
    pub(super) fn redeliver(&mut self, conn_id: ConnId, session_id: SessionId) {
        self.sessions.get_mut(session_id).outgoing.start_redelivery();
        self.refill(conn_id);
    }

    pub(super) fn handle_puback(&mut self, conn: ConnId, session: SessionId, id: PacketId) {
        if let Some(seq) = self.sessions.get_mut(session).outgoing.on_puback(id) {
            self.journal_done(seq);
            self.stats.inflight_messages -= 1;
            self.client_progressed(conn);
            self.refill(conn);
        } else {
            self.stats.unexpected_acks += 1;
        }
    }

    pub(super) fn handle_pubrec(&mut self, conn: ConnId, session: SessionId, id: PacketId) {
        // PUBREL is held until the release is durable: a client that delivers on PUBREL
        // (Method A) then never sees the message again after a crash.
        match self.sessions.get_mut(session).outgoing.on_pubrec(id) {
            PubrecOutcome::Released { seq } => {
                if seq != 0 {
                    self.journal(|| Record::Released { seq });
                }
                self.client_progressed(conn);
                self.write_durable_ack(conn, Packet::Pubrel(id));
            }
            PubrecOutcome::AlreadyReleased => self.write_durable_ack(conn, Packet::Pubrel(id)),
            PubrecOutcome::Unknown => self.stats.unexpected_acks += 1,
        }
    }

    pub(super) fn handle_pubcomp(&mut self, conn: ConnId, session: SessionId, id: PacketId) {
        if let Some(seq) = self.sessions.get_mut(session).outgoing.on_pubcomp(id) {
            self.journal_done(seq);
            self.stats.inflight_messages -= 1;
            self.client_progressed(conn);
            self.refill(conn);
        } else {
            self.stats.unexpected_acks += 1;
        }
    }

    fn journal_done(&mut self, seq: u64) {
        if seq != 0 {
            self.journal(|| Record::Done { seq });
        }
    }

    /// The client acknowledged a message: it is not a stuck slow consumer.
    fn client_progressed(&mut self, conn: ConnId) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.clear_queue_full_since();
        }
    }
}

/// A journaled message was dropped at the queue's bound after its `Enqueue` was written:
/// the journal forgets it too.
fn journal_dropped(durability: &mut Option<Box<super::durable::Durability>>, seq: u64) {
    if let Some(journal) = durability.as_deref_mut().filter(|_| seq != 0) {
        journal.append(&Record::Done { seq });
    }
}

/// Queues `queued`, counting it, or counts it dropped at the queue's bounds (false).
fn enqueue(
    outgoing: &mut Outgoing,
    queued: Queued,
    limits: QueueLimits,
    stats: &mut WorkerStats,
) -> bool {
    match outgoing.enqueue(queued, limits) {
        Ok(()) => {
            stats.queued_messages += 1;
            true
        }
        Err(QueueFull) => {
            stats.messages_dropped_queue_full += 1;
            false
        }
    }
}

fn inflight_entry(packet_id: PacketId, queued: Queued) -> Inflight {
    let awaiting = match queued.qos {
        QoS::AtLeastOnce => Awaiting::Puback,
        QoS::ExactlyOnce => Awaiting::Pubrec,
        QoS::AtMostOnce => unreachable!("QoS 0 is never in flight"),
    };
    Inflight {
        packet_id,
        message: queued.message,
        qos: queued.qos,
        retain: queued.retain,
        awaiting,
        seq: queued.seq,
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::protocol::{encode, Publish, TopicName};

    #[test]
    fn write_publish_matches_the_codec_for_every_shape() {
        for (qos, retain, dup, payload_len) in [
            (QoS::AtMostOnce, false, false, 0),
            (QoS::AtLeastOnce, true, true, 100),
            (QoS::ExactlyOnce, false, true, 20_000),
            (QoS::AtLeastOnce, false, false, 600),
        ] {
            let message = Message {
                topic: TopicName::from_static("sensors/a/temperature"),
                payload: Bytes::from(vec![3u8; payload_len]),
                qos,
                retain: false,
            };
            let packet_id = (qos != QoS::AtMostOnce).then(|| PacketId::new(77).expect("non-zero"));
            let mut out = OutBuf::new();
            write_publish(&mut out, &message, qos, retain, dup, packet_id);
            assert_eq!(out.len(), publish_len(&message, qos));
            let mut segments = Vec::new();
            out.take_into(&mut segments);

            let mut expected = BytesMut::new();
            let packet = Packet::Publish(Publish {
                dup,
                qos,
                retain,
                topic: message.topic.clone(),
                packet_id,
                payload: message.payload.clone(),
            });
            encode(&packet, &mut expected);
            assert_eq!(segments.concat(), expected.to_vec(), "{qos:?} {payload_len}");
        }
    }

    #[test]
    fn fits_takes_one_packet_into_an_empty_buffer_and_then_respects_the_bound() {
        assert!(fits(0, 10_000, 100));
        assert!(fits(50, 50, 100));
        assert!(!fits(50, 51, 100));
    }
}
