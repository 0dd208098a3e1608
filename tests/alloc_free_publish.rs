//! Steady-state publishing allocates nothing per subscriber per message.
//!
//! A counting global allocator (it must be this test binary's only allocator, hence its own
//! file) counts allocations while one broker fans publishes out to many subscribers. What may
//! allocate: once per publish (the shared PUBLISH header of each QoS variant), and each
//! connection's output buffer growing (doubling, so O(log bytes) per connection per send
//! cycle; an idle connection keeps no buffer by design). What must not: anything per
//! (subscriber, message) — matching, packet ids, inflight entries, queue entries, actions.
//!
//! The check: publishing K more messages in a cycle costs at most a constant per message plus
//! one buffer doubling per subscriber — orders of magnitude below K x N.

use bytes::BytesMut;
use ringmq::broker::{Action, Broker, BrokerConfig, ConnId, Millis, WorkerId};
use ringmq::protocol::{
    decode, encode, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe,
    TopicFilter, TopicName, Utf8Bytes,
};

mod counting_alloc;

use counting_alloc::{counted, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

const NOW: Millis = Millis(0);

/// A PUBLISH as the codec hands it over: payload and topic are slices of a receive buffer.
fn decoded_publish(id: u16, qos: QoS) -> Packet {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::from_static("bench/topic"),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(id).expect("non-zero")),
        payload: vec![42u8; 64].into(),
    });
    let mut buf = BytesMut::new();
    encode(&packet, &mut buf);
    decode(&mut buf, usize::MAX).expect("valid").expect("complete")
}

struct Bench {
    broker: Broker,
    publisher: ConnId,
    subscribers: Vec<ConnId>,
    segments: Vec<bytes::Bytes>,
    next_id: u16,
}

impl Bench {
    fn new(subscribers: u32, granted: QoS) -> Self {
        let config = BrokerConfig {
            sys_interval_secs: 0,
            max_inflight_messages: 0,
            ..BrokerConfig::default()
        };
        let mut broker = Broker::new(config, WorkerId(0), 1, NOW);
        let mut open = |slot: u32| {
            let conn = ConnId::new(slot, 0);
            broker.handle_open(conn, NOW);
            let connect = Connect {
                protocol: ProtocolVersion::V311,
                clean_session: true,
                keep_alive_secs: 0,
                client_id: Utf8Bytes::from(format!("client-{slot}")),
                will: None,
                username: None,
                password: None,
            };
            broker.handle_packet(conn, Packet::Connect(Box::new(connect)), NOW);
            conn
        };
        let publisher = open(0);
        let subscribers: Vec<ConnId> = (1..=subscribers).map(&mut open).collect();
        for &conn in &subscribers {
            let filter = TopicFilter::try_from("bench/+").expect("valid");
            let packet_id = PacketId::new(1).expect("non-zero");
            let subscribe = Subscribe { packet_id, filters: vec![(filter, granted)] };
            broker.handle_packet(conn, Packet::Subscribe(subscribe), NOW);
        }
        let mut bench = Self { broker, publisher, subscribers, segments: Vec::new(), next_id: 0 };
        bench.drain();
        bench
    }

    /// Plays the runtime and the clients: takes all output, reports it sent, acknowledges.
    fn drain(&mut self) {
        let mut sends = Vec::new();
        while let Some(action) = self.broker.poll_action() {
            if let Action::Send(conn) = action {
                sends.push(conn);
            }
        }
        for conn in sends {
            self.segments.clear();
            let taken = self.broker.take_output(conn, &mut self.segments);
            let mut buf = BytesMut::new();
            for segment in &self.segments {
                buf.extend_from_slice(segment);
            }
            self.broker.handle_sent(conn, taken, NOW);
            while let Some(packet) = decode(&mut buf, usize::MAX).expect("valid output") {
                if let Packet::Publish(Publish { packet_id: Some(id), .. }) = packet {
                    self.broker.handle_packet(conn, Packet::Puback(id), NOW);
                }
            }
        }
        while self.broker.poll_action().is_some() {}
    }

    fn packets(&mut self, count: usize, qos: QoS) -> Vec<Packet> {
        (0..count)
            .map(|_| {
                self.next_id = self.next_id % 60_000 + 1;
                decoded_publish(self.next_id, qos)
            })
            .collect()
    }

    /// Publishes `packets` without draining; returns the allocations it made.
    fn publish(&mut self, packets: Vec<Packet>) -> usize {
        let (broker, publisher) = (&mut self.broker, self.publisher);
        let ((), allocations) = counted(|| {
            for packet in packets {
                broker.handle_packet(publisher, packet, NOW);
            }
        });
        allocations
    }
}

/// Publishes `k` messages in one cycle after warm-up cycles; returns allocations.
fn cycle_allocations(bench: &mut Bench, k: usize, qos: QoS) -> usize {
    for _ in 0..3 {
        let warm = bench.packets(k, qos);
        bench.publish(warm);
        bench.drain();
    }
    let packets = bench.packets(k, qos);
    let allocations = bench.publish(packets);
    bench.drain();
    allocations
}

#[test]
fn fan_out_allocates_per_publish_not_per_subscriber() {
    let subscribers = 200usize;
    for (published, granted) in
        [(QoS::AtMostOnce, QoS::AtMostOnce), (QoS::AtLeastOnce, QoS::AtLeastOnce)]
    {
        let mut bench = Bench::new(subscribers as u32, granted);
        assert_eq!(bench.subscribers.len(), subscribers);
        let small = cycle_allocations(&mut bench, 64, published);
        let large = cycle_allocations(&mut bench, 128, published);
        let marginal = large.saturating_sub(small);
        let per_delivery = large as f64 / (128 * subscribers) as f64;
        println!(
            "{published:?}: 64 msgs x {subscribers} subs: {small} allocations; 128 msgs: {large} \
             ({per_delivery:.4} per delivery); 64 more messages cost {marginal}"
        );
        // 64 more messages: a few per message (the variant's header, the publisher's ack) and
        // at most two buffer doublings per subscriber — not 64 x 200 = 12,800.
        assert!(marginal <= 64 * 4 + subscribers * 2, "marginal {marginal}");
        assert!(per_delivery < 0.1, "{per_delivery} allocations per delivery");
    }
}
