//! The broker core's fan-out: one PUBLISH in, delivered to N local subscribers, their output
//! taken, reported sent and (QoS 1) acknowledged — everything a worker does per message except
//! the codec and the syscalls.
//!
//! `cargo bench --bench broker_core` measures wall-clock time with criterion. For repeatable
//! instruction counts, run one fixed workload under callgrind:
//! `BROKER_CORE_MESSAGES=100 valgrind --tool=callgrind target/release/deps/broker_core-*`
//! and subtract a run with `BROKER_CORE_MESSAGES=0` (the set-up).
//!
//! `BROKER_CORE_PAIRS=<rounds>` runs the other shape instead: unicast pairs (the compare
//! script's `unicast_q1`), each subscriber's inflight window full and a backlog queued, so every
//! message takes the queue path: PUBLISH in (queued, PUBACK out), then the subscriber's PUBACK
//! in (the window refilled from the queue). See [`Pairs`].

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use ringmq::broker::{Action, Broker, BrokerConfig, ConnId, Millis, WorkerId};
use ringmq::protocol::{
    decode, encode, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe,
    TopicFilter, TopicName, Utf8Bytes,
};

const NOW: Millis = Millis(0);
const SUBSCRIBERS: u32 = 1000;

struct Bench {
    broker: Broker,
    publisher: ConnId,
    segments: Vec<Bytes>,
    sends: Vec<ConnId>,
    inbox: BytesMut,
    next_id: u16,
    qos: QoS,
}

fn connect(client_id: String) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V311,
        clean_session: true,
        keep_alive_secs: 0,
        client_id: Utf8Bytes::from(client_id),
        will: None,
        username: None,
        password: None,
    }))
}

impl Bench {
    fn new(subscribers: u32, qos: QoS) -> Self {
        let config = BrokerConfig { sys_interval_secs: 0, ..BrokerConfig::default() };
        let mut broker = Broker::new(config, WorkerId(0), 1, NOW);
        for slot in 0..=subscribers {
            let conn = ConnId::new(slot, 0);
            broker.handle_open(conn, NOW);
            broker.handle_packet(conn, connect(format!("client-{slot}")), NOW);
            if slot > 0 {
                let filter = TopicFilter::try_from("bench/+").expect("valid filter");
                let packet_id = PacketId::new(1).expect("non-zero");
                let subscribe = Subscribe { packet_id, filters: vec![(filter, qos)] };
                broker.handle_packet(conn, Packet::Subscribe(subscribe), NOW);
            }
        }
        let mut bench = Self {
            broker,
            publisher: ConnId::new(0, 0),
            segments: Vec::new(),
            sends: Vec::new(),
            inbox: BytesMut::new(),
            next_id: 0,
            qos,
        };
        bench.drain();
        bench
    }

    /// A PUBLISH as the codec hands it over (payload a slice of the receive buffer).
    fn packet(&mut self) -> Packet {
        self.next_id = self.next_id % 60_000 + 1;
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: self.qos,
            retain: false,
            topic: TopicName::from_static("bench/topic"),
            packet_id: (self.qos != QoS::AtMostOnce).then(|| PacketId::new(self.next_id)).flatten(),
            payload: Bytes::from_static(&[42; 64]),
        });
        let mut buf = BytesMut::new();
        encode(&packet, &mut buf);
        decode(&mut buf, usize::MAX).expect("valid").expect("complete")
    }

    /// The runtime's and the clients' part: take, report sent, acknowledge QoS 1.
    fn drain(&mut self) {
        while let Some(action) = self.broker.poll_action() {
            if let Action::Send(conn) = action {
                self.sends.push(conn);
            }
        }
        for conn in std::mem::take(&mut self.sends) {
            self.segments.clear();
            let taken = self.broker.take_output(conn, &mut self.segments);
            self.broker.handle_sent(conn, taken, NOW);
            if self.qos == QoS::AtMostOnce {
                continue;
            }
            self.inbox.clear();
            for segment in &self.segments {
                self.inbox.extend_from_slice(segment);
            }
            while let Some(packet) = decode(&mut self.inbox, usize::MAX).expect("valid output") {
                if let Packet::Publish(Publish { packet_id: Some(id), .. }) = packet {
                    self.broker.handle_packet(conn, Packet::Puback(id), NOW);
                }
            }
        }
        while self.broker.poll_action().is_some() {}
    }

    fn publish_one(&mut self) {
        let packet = self.packet();
        self.broker.handle_packet(self.publisher, packet, NOW);
        self.drain();
    }
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("broker_core_fan_out");
    group.sample_size(20);
    group.measurement_time(std::time::Duration::from_secs(3));
    group.throughput(Throughput::Elements(u64::from(SUBSCRIBERS)));
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut bench = Bench::new(SUBSCRIBERS, qos);
        group.bench_function(format!("{qos:?}_to_{SUBSCRIBERS}_subscribers"), |b| {
            b.iter(|| black_box(&mut bench).publish_one());
        });
    }
    group.finish();
}

/// Unicast pairs in the steady state of a max-rate QoS 1 run: `pairs` publisher/subscriber
/// pairs on topics `ringmq-bench/<n>`, an inflight window of `WINDOW`, a backlog of `BACKLOG`
/// messages per subscriber (the rest queued), and each round `per_round` PUBLISHes per
/// publisher followed by as many PUBACKs per subscriber (its oldest unacknowledged ids). The
/// runtime's part is mimicked: actions drained, output taken and reported sent. Packets are
/// decoded from wire bytes (outside the broker) so payload and topic share a receive buffer as
/// they do in the worker. Count only the broker under callgrind with
/// `--toggle-collect='ringmq::broker::Broker::*'`.
struct Pairs {
    broker: Broker,
    pairs: u32,
    per_round: u32,
    qos: QoS,
    /// Each publisher's PUBLISH, encoded; decoded afresh for each message.
    wire: Vec<Bytes>,
    next_id: u16,
    /// Per subscriber: ids received and not yet acknowledged, oldest first.
    unacked: Vec<std::collections::VecDeque<PacketId>>,
    segments: Vec<Bytes>,
    sends: Vec<ConnId>,
    inbox: BytesMut,
    input: BytesMut,
}

const WINDOW: u16 = 100;
const BACKLOG: u32 = 200;

impl Pairs {
    fn publisher(pair: u32) -> ConnId {
        ConnId::new(2 * pair, 0)
    }

    fn subscriber(pair: u32) -> ConnId {
        ConnId::new(2 * pair + 1, 0)
    }

    fn new(pairs: u32, per_round: u32, qos: QoS) -> Self {
        let config = BrokerConfig {
            sys_interval_secs: 0,
            max_inflight_messages: WINDOW,
            max_queued_messages: 1_000_000,
            ..BrokerConfig::default()
        };
        let mut broker = Broker::new(config, WorkerId(0), 1, NOW);
        let mut wire = Vec::new();
        for pair in 0..pairs {
            let topic = format!("ringmq-bench/{pair}");
            for (conn, role) in [(Self::publisher(pair), "pub"), (Self::subscriber(pair), "sub")] {
                broker.handle_open(conn, NOW);
                broker.handle_packet(conn, connect(format!("{role}-{pair}")), NOW);
            }
            let filter = TopicFilter::try_from(topic.as_str()).expect("valid filter");
            let packet_id = PacketId::new(1).expect("non-zero");
            let subscribe = Subscribe { packet_id, filters: vec![(filter, qos)] };
            broker.handle_packet(Self::subscriber(pair), Packet::Subscribe(subscribe), NOW);
            let mut buf = BytesMut::new();
            encode(
                &Packet::Publish(Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: TopicName::try_from(topic.as_str()).expect("valid topic"),
                    packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(1)).flatten(),
                    payload: Bytes::from_static(&[42; 64]),
                }),
                &mut buf,
            );
            wire.push(buf.freeze());
        }
        let mut bench = Self {
            broker,
            pairs,
            per_round,
            qos,
            wire,
            next_id: 0,
            unacked: vec![std::collections::VecDeque::new(); pairs as usize],
            segments: Vec::new(),
            sends: Vec::new(),
            inbox: BytesMut::new(),
            input: BytesMut::new(),
        };
        bench.drain();
        let backlog = if qos == QoS::AtMostOnce { 0 } else { BACKLOG };
        for _ in 0..backlog {
            for pair in 0..pairs {
                bench.publish(pair);
            }
        }
        bench.drain();
        bench
    }

    /// One PUBLISH from `pair`'s publisher, decoded from its wire bytes (a fresh packet id).
    fn publish(&mut self, pair: u32) {
        self.next_id = self.next_id % 60_000 + 1;
        self.input.clear();
        self.input.extend_from_slice(&self.wire[pair as usize]);
        if self.qos != QoS::AtMostOnce {
            // The packet id follows the topic: its two bytes end the variable header.
            let at = self.input.len() - 64 - 2;
            self.input[at..at + 2].copy_from_slice(&self.next_id.to_be_bytes());
        }
        let packet = decode(&mut self.input, usize::MAX).expect("valid").expect("complete");
        self.broker.handle_packet(Self::publisher(pair), packet, NOW);
    }

    /// The runtime's part: take each connection's output and report it sent; note the ids
    /// each subscriber received.
    fn drain(&mut self) {
        while let Some(action) = self.broker.poll_action() {
            if let Action::Send(conn) = action {
                self.sends.push(conn);
            }
        }
        for conn in std::mem::take(&mut self.sends) {
            self.segments.clear();
            let taken = self.broker.take_output(conn, &mut self.segments);
            self.broker.handle_sent(conn, taken, NOW);
            if conn.slot() % 2 == 0 || self.qos == QoS::AtMostOnce {
                continue;
            }
            self.inbox.clear();
            for segment in &self.segments {
                self.inbox.extend_from_slice(segment);
            }
            let unacked = &mut self.unacked[(conn.slot() / 2) as usize];
            while let Some(packet) = decode(&mut self.inbox, usize::MAX).expect("valid output") {
                if let Packet::Publish(Publish { packet_id: Some(id), .. }) = packet {
                    unacked.push_back(id);
                }
            }
        }
        while self.broker.poll_action().is_some() {}
    }

    fn round(&mut self) {
        for pair in 0..self.pairs {
            for _ in 0..self.per_round {
                self.publish(pair);
            }
        }
        self.drain();
        if self.qos == QoS::AtMostOnce {
            return;
        }
        for pair in 0..self.pairs {
            for _ in 0..self.per_round {
                let id = self.unacked[pair as usize].pop_front().expect("a full window");
                self.broker.handle_packet(Self::subscriber(pair), Packet::Puback(id), NOW);
            }
        }
        self.drain();
    }
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name).map_or(default, |value| value.parse().expect("a number"))
}

fn main() {
    if let Ok(rounds) = std::env::var("BROKER_CORE_PAIRS") {
        let rounds: u32 = rounds.parse().expect("BROKER_CORE_PAIRS is a number of rounds");
        let qos = match std::env::var("BROKER_CORE_QOS").as_deref() {
            Ok("0") => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let mut bench = Pairs::new(
            env_number("BROKER_CORE_PAIR_COUNT", 100),
            env_number("BROKER_CORE_PER_ROUND", 4),
            qos,
        );
        for _ in 0..rounds {
            bench.round();
        }
        let stats = bench.broker.stats();
        assert_eq!(stats.messages_dropped_queue_full, 0);
        black_box(stats.messages_sent);
        return;
    }
    if let Ok(messages) = std::env::var("BROKER_CORE_MESSAGES") {
        let messages: u32 = messages.parse().expect("BROKER_CORE_MESSAGES is a number");
        let qos = match std::env::var("BROKER_CORE_QOS").as_deref() {
            Ok("1") => QoS::AtLeastOnce,
            _ => QoS::AtMostOnce,
        };
        let mut bench = Bench::new(SUBSCRIBERS, qos);
        for _ in 0..messages {
            bench.publish_one();
        }
        black_box(bench.broker.stats().messages_sent);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    fan_out(&mut criterion);
    criterion.final_summary();
}
