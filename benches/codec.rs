//! Codec micro-benchmarks: decode and encode of 64 B and 1 KB PUBLISHes at QoS 0 and 1, and
//! the per-subscriber cost of fanning one PUBLISH out with `EncodedPublish::write`.
//!
//! Wall-clock: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`.
//!
//! Instruction counts (repeatable on a noisy machine): with
//! `CODEC_CALLGRIND=<decode|encode|fanout>:<qos0|qos1>:<payload bytes>:<count>` set, the
//! binary skips criterion and runs `count` operations once, for `valgrind --tool=callgrind
//! --toggle-collect=<the loop function>`: only the loop (`decode_all`, `encode_many`,
//! `fan_out`) is counted, not start-up or setup. See docs/BENCHMARKS.md for the commands.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use ringmq::protocol::{
    decode, encode, EncodedPublish, OutBuf, Packet, PacketId, Publish, QoS, TopicName,
};

/// The broker binary's allocator, so that allocation costs here are the broker's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Packets per receive buffer in the decode benchmarks: a buffer holding many small packets
/// is how a busy connection's bytes arrive.
const PACKETS_PER_BUFFER: usize = 64;
/// Subscribers one PUBLISH is fanned out to per iteration.
const SUBSCRIBERS: usize = 100;
const LIMIT_BYTES: usize = 1 << 20;

fn publish(qos: QoS, payload_bytes: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::from_static("sensors/building-7/floor-3/room-12/temperature"),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(42).expect("non-zero")),
        payload: Bytes::from(vec![0xA5; payload_bytes]),
    })
}

fn cases() -> [(&'static str, QoS, usize); 4] {
    [
        ("qos0_64B", QoS::AtMostOnce, 64),
        ("qos1_64B", QoS::AtLeastOnce, 64),
        ("qos0_1KB", QoS::AtMostOnce, 1024),
        ("qos1_1KB", QoS::AtLeastOnce, 1024),
    ]
}

/// A receive buffer holding `copies` encodings of `packet`.
fn receive_buffer(packet: &Packet, copies: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    for _ in 0..copies {
        encode(packet, &mut buf);
    }
    buf
}

#[inline(never)] // A separate symbol for callgrind's --toggle-collect.
fn decode_all(buf: &mut BytesMut) -> usize {
    let mut count = 0;
    while let Some(packet) = decode(buf, LIMIT_BYTES).expect("valid packets") {
        black_box(&packet);
        count += 1;
    }
    count
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(PACKETS_PER_BUFFER as u64));
    for (name, qos, payload_bytes) in cases() {
        let packet = publish(qos, payload_bytes);
        let template = receive_buffer(&packet, PACKETS_PER_BUFFER);
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&template[..]),
                |buf| assert_eq!(decode_all(buf), PACKETS_PER_BUFFER),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for (name, qos, payload_bytes) in cases() {
        let packet = publish(qos, payload_bytes);
        let mut out = BytesMut::with_capacity(4096);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encode(black_box(&packet), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

/// One PUBLISH encoded once, then written to `SUBSCRIBERS` empty connection buffers: the
/// per-subscriber cost of delivery (header copy, packet id, payload copy or reference).
fn bench_fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out_write");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    for (name, qos, payload_bytes) in cases() {
        let Packet::Publish(p) = publish(qos, payload_bytes) else { unreachable!() };
        let encoded = EncodedPublish::new(&p.topic, p.payload.clone(), qos, false, false);
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || (0..SUBSCRIBERS).map(|_| OutBuf::new()).collect::<Vec<_>>(),
                |outs| fan_out(&encoded, outs),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

#[inline(never)] // A separate symbol for callgrind's --toggle-collect.
fn fan_out(encoded: &EncodedPublish, outs: &mut [OutBuf]) {
    let mut packet_id = PacketId::new(1).expect("non-zero");
    for out in outs {
        let id = (encoded.qos() != QoS::AtMostOnce).then_some(packet_id);
        encoded.write(id, out);
        packet_id = packet_id.next();
    }
}

#[inline(never)] // A separate symbol for callgrind's --toggle-collect.
fn encode_many(packet: &Packet, count: usize) {
    let mut out = BytesMut::with_capacity(4096);
    for _ in 0..count {
        out.clear();
        encode(black_box(packet), &mut out);
    }
    black_box(out.len());
}

/// The callgrind driver: `count` operations of one kind, nothing else measured. `spec` is
/// `<decode|encode|fanout>:<qos0|qos1>:<payload bytes>:<count>`.
fn run_for_callgrind(spec: &str) {
    let usage = "CODEC_CALLGRIND=<decode|encode|fanout>:<qos0|qos1>:<payload bytes>:<count>";
    let fields: Vec<&str> = spec.split(':').collect();
    let [what, qos, payload_bytes, count] = fields[..] else { panic!("{usage}") };
    let qos = match qos {
        "qos0" => QoS::AtMostOnce,
        "qos1" => QoS::AtLeastOnce,
        _ => panic!("{usage}"),
    };
    let payload_bytes: usize = payload_bytes.parse().expect(usage);
    let count: usize = count.parse().expect(usage);
    let packet = publish(qos, payload_bytes);
    match what {
        "decode" => {
            let mut buf = receive_buffer(&packet, count);
            assert_eq!(decode_all(&mut buf), count);
        }
        "encode" => encode_many(&packet, count),
        "fanout" => {
            let Packet::Publish(p) = packet else { unreachable!() };
            let encoded = EncodedPublish::new(&p.topic, p.payload, qos, false, false);
            let mut outs: Vec<OutBuf> = (0..count).map(|_| OutBuf::new()).collect();
            fan_out(&encoded, &mut outs);
            black_box(&outs);
        }
        _ => panic!("{usage}"),
    }
}

criterion_group!(benches, bench_decode, bench_encode, bench_fan_out);

fn main() {
    if let Ok(spec) = std::env::var("CODEC_CALLGRIND") {
        run_for_callgrind(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
