//! Routing micro-benchmarks of the sans-IO core (criterion): the cost of routing one publish
//! through the subscription index (`match_topic`) with 1, 10k and 1M subscriptions, and of
//! finding retained messages by a wildcard filter. Figures go to docs/BENCHMARKS.md.
//!
//! The index is realistic: distinct `device/<n>/cmd` filters (one session each), plus a few
//! wildcard filters that every device topic also matches and 100 that it does not. Topics are
//! drawn in a scattered order so the large index is not routed from a warm cache line.
//!
//! Run: `cargo bench --bench routing -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringmq::broker::retain::RetainedStore;
use ringmq::broker::subscriptions::{Matches, SubscriptionIndex};
use ringmq::broker::{Message, Millis, SessionId, WorkerId};
use ringmq::protocol::{QoS, TopicFilter, TopicName};

fn filter(text: &str) -> TopicFilter {
    TopicFilter::try_from(text).expect("bench filter is valid")
}

fn topic(text: &str) -> TopicName {
    TopicName::try_from(text).expect("bench topic is valid")
}

/// `devices` distinct `device/<n>/cmd` filters; above one, also the wildcard filters.
fn index_of(devices: u32) -> SubscriptionIndex {
    let mut index = SubscriptionIndex::new();
    for n in 0..devices {
        index.subscribe(&filter(&format!("device/{n}/cmd")), SessionId(n), QoS::AtLeastOnce);
    }
    if devices > 1 {
        index.subscribe(&filter("device/+/cmd"), SessionId(devices), QoS::AtMostOnce);
        index.subscribe(&filter("device/#"), SessionId(devices + 1), QoS::AtMostOnce);
        index.subscribe(&filter("+/+/status"), SessionId(devices + 2), QoS::AtMostOnce);
        index.set_remote_interest(&filter("device/+/cmd"), WorkerId(1), true);
        for site in 0..100 {
            let f = filter(&format!("site/{site}/#"));
            index.subscribe(&f, SessionId(devices + 3 + site), QoS::AtMostOnce);
        }
    }
    index
}

/// 4096 topics of existing devices in a scattered order (a multiplicative permutation).
fn topics_of(devices: u32) -> Vec<TopicName> {
    (0..4096u64)
        .map(|i| (i * 2_654_435_761) % u64::from(devices))
        .map(|n| topic(&format!("device/{n}/cmd")))
        .collect()
}

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("match_topic");
    group.throughput(Throughput::Elements(1));
    for devices in [1u32, 10_000, 1_000_000] {
        let index = index_of(devices);
        let topics = topics_of(devices);
        let mut matches = Matches::default();
        let mut next = 0;
        group.bench_function(BenchmarkId::from_parameter(index.len()), |b| {
            b.iter(|| {
                next = (next + 1) % topics.len();
                index.match_topic(black_box(&topics[next]), &mut matches);
                black_box(matches.sessions.len())
            })
        });
    }
    group.finish();
}

fn retained_store(devices: u32) -> RetainedStore {
    let mut store = RetainedStore::new(devices as usize);
    for n in 0..devices {
        let message = Message {
            topic: topic(&format!("device/{n}/status")),
            payload: Bytes::from_static(b"online"),
            qos: QoS::AtLeastOnce,
            retain: true,
        };
        store.set(message, Millis(0));
    }
    store
}

fn retained(c: &mut Criterion) {
    let devices = 100_000;
    let store = retained_store(devices);
    let mut group = c.benchmark_group("retained_for_each_match_100k");
    for (text, expect) in [("device/4242/+", 1), ("device/4242/#", 1), ("device/+/status", devices)]
    {
        let f = filter(text);
        let mut found = 0;
        store.for_each_match(&f, |_| found += 1);
        assert_eq!(found, expect, "{text}");
        group.throughput(Throughput::Elements(u64::from(expect)));
        group.bench_function(text, |b| {
            b.iter(|| {
                let mut visited = 0u32;
                store.for_each_match(black_box(&f), |m| visited += m.payload.len() as u32);
                black_box(visited)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route, retained);
criterion_main!(benches);
