//! One benchmark connection's MQTT side, without I/O: packets in, bytes queued out, counts and
//! latencies recorded. The worker moves the bytes.
//!
//! A connection goes Connecting -> AwaitConnack -> (AwaitSuback, subscribers only) -> Ready,
//! and ends Closed. Publishers keep a window of unacknowledged QoS 1/2 messages indexed by
//! `packet id % window`; a packet id is reused only after its slot is free, so an ack always
//! finds the message it acknowledges.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use ringmq::protocol::{
    encode, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, SubackCode, Subscribe,
    TopicFilter, TopicName, Utf8Bytes,
};

use super::stats::Stats;
use crate::plan::Role;
use crate::stamp::{Arrival, SeqTracker, Stamp, STAMP_BYTES};

/// Bytes a publisher queues beyond what is in flight before it waits for the socket.
pub const TX_QUEUED_BYTES_MAX: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnState {
    /// Not opened yet.
    Unused,
    /// TCP connect submitted.
    Connecting,
    AwaitConnack,
    AwaitSuback,
    Ready,
    /// DISCONNECT queued at the end of the run.
    Closing,
    Closed,
}

impl ConnState {
    pub fn is_open(self) -> bool {
        matches!(self, Self::AwaitConnack | Self::AwaitSuback | Self::Ready)
    }
}

/// One QoS 1/2 message awaiting its acknowledgement.
#[derive(Clone, Copy, Debug, Default)]
struct Inflight {
    /// 0: the slot is free.
    packet_id: u16,
    sent_ns: u64,
}

#[derive(Debug)]
pub struct Publisher {
    /// The id stamped into payloads (publisher id base + index).
    pub stamp_id: u32,
    pub index: u32,
    topic: TopicName,
    /// A zeroed payload of the configured size; each message overwrites its stamp.
    template: Bytes,
    /// Messages sent, which is also the next sequence number.
    pub sent: u64,
    next_packet_id: PacketId,
    window: Box<[Inflight]>,
    outstanding: usize,
    /// Stopped publishing (count reached or run draining).
    pub done: bool,
}

impl Publisher {
    pub fn new(
        stamp_id: u32,
        index: u32,
        topic: TopicName,
        payload_bytes: usize,
        window: u16,
    ) -> Self {
        assert!(payload_bytes >= STAMP_BYTES);
        Self {
            stamp_id,
            index,
            topic,
            template: Bytes::from(vec![0u8; payload_bytes]),
            sent: 0,
            next_packet_id: PacketId::new(1).expect("1 is a valid packet id"),
            window: vec![Inflight::default(); usize::from(window)].into_boxed_slice(),
            outstanding: 0,
            done: false,
        }
    }

    fn slot(&self, packet_id: u16) -> usize {
        usize::from(packet_id) % self.window.len()
    }

    /// Whether a message at `qos` may be sent now.
    pub fn can_send(&self, qos: QoS) -> bool {
        qos == QoS::AtMostOnce || self.window[self.slot(self.next_packet_id.get())].packet_id == 0
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Appends one stamped PUBLISH to `tx`.
    pub fn publish(&mut self, qos: QoS, now_ns: u64, tx: &mut BytesMut) {
        let packet_id = (qos != QoS::AtMostOnce).then(|| {
            let id = self.next_packet_id;
            let slot = self.slot(id.get());
            assert_eq!(self.window[slot].packet_id, 0, "publish without a free window slot");
            self.window[slot] = Inflight { packet_id: id.get(), sent_ns: now_ns };
            self.outstanding += 1;
            self.next_packet_id = id.next();
            id
        });
        let packet = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: self.topic.clone(),
            packet_id,
            payload: self.template.clone(),
        });
        encode(&packet, tx);
        let payload_start = tx.len() - self.template.len();
        Stamp { publisher_id: self.stamp_id, sequence: self.sent, sent_ns: now_ns }
            .write(&mut tx[payload_start..]);
        self.sent += 1;
    }

    /// Completes the flow of `packet_id` (PUBACK, or PUBCOMP for QoS 2); returns its send time,
    /// or `None` if no such message was waiting (a broker bug we count).
    pub fn complete(&mut self, packet_id: PacketId) -> Option<u64> {
        let slot = self.slot(packet_id.get());
        let inflight = self.window[slot];
        if inflight.packet_id != packet_id.get() {
            return None;
        }
        self.window[slot] = Inflight::default();
        self.outstanding -= 1;
        Some(inflight.sent_ns)
    }

    /// Whether `packet_id` is awaiting an acknowledgement (checks a PUBREC).
    pub fn is_waiting(&self, packet_id: PacketId) -> bool {
        self.window[self.slot(packet_id.get())].packet_id == packet_id.get()
    }
}

#[derive(Debug, Default)]
pub struct Subscriber {
    pub index: u32,
    /// Sequence trackers by stamped publisher id.
    pub trackers: HashMap<u32, SeqTracker>,
}

#[derive(Debug)]
pub struct Conn {
    pub state: ConnState,
    pub role: Role,
    /// Global connection number (also names the client id).
    pub global: u64,
    pub rx: BytesMut,
    /// Bytes queued, not yet handed to the kernel.
    pub tx: BytesMut,
    /// Bytes of the send in flight; kept alive and unmoved until its completion.
    pub sending: BytesMut,
    pub send_offset: usize,
    pub send_in_flight: bool,
    pub recv_armed: bool,
    /// In the worker's list of connections with output to flush.
    pub dirty: bool,
    pub started_ns: u64,
    pub last_send_ns: u64,
    /// When the PINGREQ awaiting its PINGRESP was sent; 0: none.
    pub ping_sent_ns: u64,
    /// The first error of the ring's set-up chain (socket, options, bind); 0: none.
    pub setup_errno: i32,
    pub publisher: Option<Box<Publisher>>,
    pub subscriber: Option<Box<Subscriber>>,
}

/// What a connection needs from the run's configuration to handle packets.
#[derive(Debug)]
pub struct ConnContext<'a> {
    pub qos: QoS,
    pub keepalive_secs: u16,
    pub clean_session: bool,
    pub client_id_prefix: &'a str,
    /// Subscriber `j` subscribes to `<topic_prefix>/<topic of j>`.
    pub topic_prefix: &'a str,
    /// Where deliveries are counted for end-to-end flow control (`--e2e-window`).
    pub deliveries: Option<&'a DeliveryBoard>,
}

/// Distinct deliveries per local publisher, summed over all subscribers and shared by all
/// workers: a publisher with an end-to-end window sends only while
/// `sent < delivered / subscribers + window`.
#[derive(Debug)]
pub struct DeliveryBoard {
    publisher_id_base: u32,
    delivered: Vec<AtomicU64>,
}

impl DeliveryBoard {
    pub fn new(publisher_id_base: u32, publishers: u32) -> Self {
        Self { publisher_id_base, delivered: (0..publishers).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Counts one distinct delivery from the publisher stamped `stamp_id`, if it is ours.
    pub fn record(&self, stamp_id: u32) {
        let index = stamp_id.wrapping_sub(self.publisher_id_base) as usize;
        if let Some(count) = self.delivered.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn delivered(&self, index: u32) -> u64 {
        self.delivered[index as usize].load(Ordering::Relaxed)
    }
}

impl Conn {
    pub fn new(global: u64, role: Role) -> Self {
        Self {
            state: ConnState::Unused,
            role,
            global,
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            sending: BytesMut::new(),
            send_offset: 0,
            send_in_flight: false,
            recv_armed: false,
            dirty: false,
            started_ns: 0,
            last_send_ns: 0,
            ping_sent_ns: 0,
            setup_errno: 0,
            publisher: None,
            subscriber: None,
        }
    }

    pub fn queue(&mut self, packet: &Packet, now_ns: u64) {
        encode(packet, &mut self.tx);
        self.last_send_ns = now_ns;
    }

    /// TCP is up: say CONNECT.
    pub fn on_tcp_connected(&mut self, context: &ConnContext<'_>, now_ns: u64) {
        let client_id = format!("{}-{}", context.client_id_prefix, self.global);
        let connect = Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_session: context.clean_session,
            keep_alive_secs: context.keepalive_secs,
            client_id: Utf8Bytes::from(client_id),
            will: None,
            username: None,
            password: None,
        }));
        self.queue(&connect, now_ns);
        self.state = ConnState::AwaitConnack;
    }

    /// Handles one packet from the broker. An error closes this connection.
    pub fn on_packet(
        &mut self,
        packet: Packet,
        context: &ConnContext<'_>,
        now_ns: u64,
        stats: &mut Stats,
    ) -> Result<(), String> {
        match packet {
            Packet::Connack(connack) if self.state == ConnState::AwaitConnack => {
                if connack.code != ringmq::protocol::ConnectReturnCode::Accepted {
                    return Err(format!("CONNACK refused: {:?}", connack.code));
                }
                stats.connected(now_ns.saturating_sub(self.started_ns));
                self.after_connack(context, now_ns, stats)?;
            }
            Packet::Suback(suback) if self.state == ConnState::AwaitSuback => {
                if suback.return_codes.contains(&SubackCode::Failure) {
                    return Err("SUBACK refused the subscription".into());
                }
                self.state = ConnState::Ready;
                stats.counters.ready += 1;
            }
            Packet::Publish(publish) => self.on_publish(publish, context, now_ns, stats),
            Packet::Pubrel(packet_id) => {
                // QoS 2 delivery to us: the broker released it; complete the flow.
                self.queue(&Packet::Pubcomp(packet_id), now_ns);
            }
            Packet::Puback(packet_id) | Packet::Pubcomp(packet_id) => {
                self.on_publish_complete(packet_id, now_ns, stats)?;
            }
            Packet::Pubrec(packet_id) => {
                let waiting = self.publisher.as_ref().is_some_and(|p| p.is_waiting(packet_id));
                if !waiting {
                    return Err(format!("PUBREC for unknown {packet_id:?}"));
                }
                self.queue(&Packet::Pubrel(packet_id), now_ns);
            }
            Packet::Pingresp if self.ping_sent_ns != 0 => {
                stats.record_ping(now_ns.saturating_sub(self.ping_sent_ns));
                self.ping_sent_ns = 0;
            }
            other => return Err(format!("unexpected {} in state {:?}", other.name(), self.state)),
        }
        Ok(())
    }

    fn after_connack(
        &mut self,
        context: &ConnContext<'_>,
        now_ns: u64,
        stats: &mut Stats,
    ) -> Result<(), String> {
        let Role::Subscriber { topic, .. } = self.role else {
            self.state = ConnState::Ready;
            stats.counters.ready += 1;
            return Ok(());
        };
        let name = format!("{}/{topic}", context.topic_prefix);
        let filter = TopicFilter::try_from(name.as_str())
            .map_err(|error| format!("topic filter {name:?}: {error}"))?;
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).expect("1 is a valid packet id"),
            filters: vec![(filter, context.qos)],
        });
        self.queue(&subscribe, now_ns);
        self.state = ConnState::AwaitSuback;
        Ok(())
    }

    fn on_publish(
        &mut self,
        publish: Publish,
        context: &ConnContext<'_>,
        now_ns: u64,
        stats: &mut Stats,
    ) {
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let id = publish.packet_id.expect("decoded QoS 1 PUBLISH has a packet id");
                self.queue(&Packet::Puback(id), now_ns);
            }
            QoS::ExactlyOnce => {
                let id = publish.packet_id.expect("decoded QoS 2 PUBLISH has a packet id");
                self.queue(&Packet::Pubrec(id), now_ns);
            }
        }
        stats.counters.delivered += 1;
        stats.counters.delivered_bytes += publish.payload.len() as u64;
        let Ok(stamp) = Stamp::read(&publish.payload) else {
            stats.counters.foreign += 1;
            return;
        };
        let subscriber = self.subscriber.get_or_insert_with(Box::default);
        let arrival =
            subscriber.trackers.entry(stamp.publisher_id).or_default().observe(stamp.sequence);
        let distinct = matches!(arrival, Arrival::InOrder | Arrival::AfterGap(_) | Arrival::Late);
        if let (true, Some(board)) = (distinct, context.deliveries) {
            board.record(stamp.publisher_id);
        }
        match arrival {
            Arrival::InOrder | Arrival::AfterGap(_) => stats.counters.unique += 1,
            Arrival::Late => {
                stats.counters.unique += 1;
                stats.counters.reordered += 1;
            }
            Arrival::Duplicate => stats.counters.duplicates += 1,
            Arrival::Unknown => stats.counters.unknown += 1,
        }
        if let Arrival::AfterGap(gap) = arrival {
            stats.counters.gaps += gap;
        }
        if arrival == Arrival::Late {
            stats.counters.gaps = stats.counters.gaps.saturating_sub(1);
        }
        stats.record_delivery(now_ns, stamp.sent_ns);
    }

    fn on_publish_complete(
        &mut self,
        packet_id: PacketId,
        now_ns: u64,
        stats: &mut Stats,
    ) -> Result<(), String> {
        let publisher = self
            .publisher
            .as_mut()
            .ok_or_else(|| format!("ack {packet_id:?} to a non-publisher"))?;
        let sent_ns = publisher
            .complete(packet_id)
            .ok_or_else(|| format!("ack for unknown {packet_id:?}"))?;
        stats.counters.acked += 1;
        stats.record_ack(now_ns.saturating_sub(sent_ns));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq::protocol::{Connack, ConnectReturnCode};

    fn context() -> ConnContext<'static> {
        ConnContext {
            qos: QoS::AtLeastOnce,
            keepalive_secs: 30,
            clean_session: true,
            client_id_prefix: "t",
            topic_prefix: "t",
            deliveries: None,
        }
    }

    fn pid(value: u16) -> PacketId {
        PacketId::new(value).expect("non-zero")
    }

    #[test]
    fn publisher_window_blocks_when_full_and_frees_on_ack() {
        let mut publisher = Publisher::new(7, 0, TopicName::from_static("t/0"), 32, 2);
        let mut tx = BytesMut::new();
        assert!(publisher.can_send(QoS::AtLeastOnce));
        publisher.publish(QoS::AtLeastOnce, 10, &mut tx);
        publisher.publish(QoS::AtLeastOnce, 20, &mut tx);
        assert!(!publisher.can_send(QoS::AtLeastOnce), "window of 2 is full");
        assert!(publisher.can_send(QoS::AtMostOnce), "QoS 0 has no window");
        assert_eq!(publisher.complete(pid(9)), None, "never sent");
        assert_eq!(publisher.complete(pid(1)), Some(10));
        assert_eq!(publisher.complete(pid(1)), None, "acked twice");
        assert!(publisher.can_send(QoS::AtLeastOnce));
        assert_eq!(publisher.outstanding(), 1);
    }

    #[test]
    fn published_payload_carries_a_readable_stamp() {
        let mut publisher = Publisher::new(3, 0, TopicName::from_static("t/0"), 100, 4);
        let mut tx = BytesMut::new();
        publisher.publish(QoS::AtMostOnce, 555, &mut tx);
        publisher.publish(QoS::AtMostOnce, 556, &mut tx);
        let second = &tx[tx.len() - 100..];
        let stamp = Stamp::read(second).expect("stamped");
        assert_eq!((stamp.publisher_id, stamp.sequence, stamp.sent_ns), (3, 1, 556));
    }

    #[test]
    fn subscriber_counts_loss_reordering_and_foreign_payloads() {
        let mut conn = Conn::new(0, Role::Subscriber { index: 0, topic: 0 });
        conn.state = ConnState::Ready;
        let mut stats = Stats::new();
        let deliver = |conn: &mut Conn, stats: &mut Stats, payload: Vec<u8>| {
            let publish = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: TopicName::from_static("t/0"),
                packet_id: Some(pid(1)),
                payload: Bytes::from(payload),
            };
            conn.on_packet(Packet::Publish(publish), &context(), 1_000, stats).expect("accepted");
        };
        for sequence in [0, 2, 1, 4] {
            let mut payload = vec![0; 24];
            Stamp { publisher_id: 9, sequence, sent_ns: 400 }.write(&mut payload);
            deliver(&mut conn, &mut stats, payload);
        }
        deliver(&mut conn, &mut stats, b"not a benchmark payload".to_vec());
        let counters = &stats.counters;
        assert_eq!((counters.delivered, counters.unique, counters.foreign), (5, 4, 1));
        assert_eq!((counters.reordered, counters.gaps), (1, 1), "1 came late, 3 is missing");
        assert_eq!(stats.latency.len(), 4);
        assert_eq!(stats.latency.max(), 600);
        assert!(!conn.tx.is_empty(), "each QoS 1 delivery is acknowledged");
    }

    #[test]
    fn delivery_board_counts_only_its_own_publishers() {
        let board = DeliveryBoard::new(100, 2);
        for stamp_id in [100, 101, 101, 99, 102, 7] {
            board.record(stamp_id);
        }
        assert_eq!((board.delivered(0), board.delivered(1)), (1, 2));
    }

    #[test]
    fn refused_connack_and_stray_packets_are_errors() {
        let mut conn = Conn::new(0, Role::Idle);
        let mut stats = Stats::new();
        conn.on_tcp_connected(&context(), 0);
        let refused = Connack { session_present: false, code: ConnectReturnCode::NotAuthorized };
        assert!(conn.on_packet(Packet::Connack(refused), &context(), 1, &mut stats).is_err());
        assert!(conn.on_packet(Packet::Puback(pid(1)), &context(), 1, &mut stats).is_err());
        let accepted = Connack { session_present: false, code: ConnectReturnCode::Accepted };
        conn.on_packet(Packet::Connack(accepted), &context(), 5, &mut stats).expect("accepted");
        assert_eq!((conn.state, stats.counters.ready), (ConnState::Ready, 1));
    }
}
