//! The broker core's fan-out: one PUBLISH in, delivered to N local subscribers, their output
//! taken, reported sent and (QoS 1) acknowledged — everything a worker does per message except
//! the codec and the syscalls.
//!
//! `cargo bench --bench broker_core` measures wall-clock time with criterion. For repeatable
//! instruction counts, run one fixed workload under callgrind:
//! `BROKER_CORE_MESSAGES=100 valgrind --tool=callgrind target/release/deps/broker_core-*`
//! and subtract a run with `BROKER_CORE_MESSAGES=0` (the set-up).

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

fn main() {
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
