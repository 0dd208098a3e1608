//! `loom` models of the wake protocol, run with
//! `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`. Each explores every
//! interleaving (and the weak-memory outcomes loom models) of the real `MeshEnd` code; a
//! "sleep" is `prepare_to_sleep` returning true, and the property is that such a sleep is
//! always followed by a doorbell for it.

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;

use super::{build, MeshLimits};
use crate::broker::WorkerId;

/// A consumer deciding to sleep while a producer publishes: either the consumer sees the item
/// (and does not sleep), or the producer rings it.
#[test]
fn loom_consumer_never_sleeps_through_a_push() {
    loom::model(|| {
        let mut ends = build::<u32>(2, MeshLimits { ring_depth: 2, overflow_max: 2 });
        ends.iter().for_each(|end| end.register_ring_fd(10 + end.worker().0 as i32));
        let mut producer = ends.pop().expect("two ends were built");
        let mut consumer = ends.pop().expect("two ends were built");
        let rung = Arc::new(AtomicUsize::new(0));
        let rung_by_producer = rung.clone();
        let writer = loom::thread::spawn(move || {
            let _ = producer.push(WorkerId(0), 7);
            producer.flush(|peer, fd| {
                assert_eq!((peer, fd), (WorkerId(0), 10));
                rung_by_producer.fetch_add(1, Ordering::SeqCst);
            });
            producer
        });
        let slept = consumer.prepare_to_sleep();
        let _producer = writer.join().expect("producer thread panicked");
        if slept {
            assert_eq!(rung.load(Ordering::SeqCst), 1, "slept with an item and no doorbell");
        }
        consumer.woke();
        let mut items = Vec::new();
        consumer.drain(8, |_, item| items.push(item));
        assert_eq!(items, [7]);
    });
}

/// A producer blocked on a full ring deciding to sleep while the consumer drains: either the
/// producer sees the room (and does not sleep), or the consumer's flush rings it.
#[test]
fn loom_blocked_producer_never_sleeps_through_freed_room() {
    loom::model(|| {
        let mut ends = build::<u32>(2, MeshLimits { ring_depth: 1, overflow_max: 4 });
        ends.iter().for_each(|end| end.register_ring_fd(10 + end.worker().0 as i32));
        let mut consumer = ends.pop().expect("two ends were built");
        let mut producer = ends.pop().expect("two ends were built");
        // Worker 0 fills worker 1's one-slot ring and parks a second item in its overflow.
        let _ = producer.push(WorkerId(1), 1);
        let _ = producer.push(WorkerId(1), 2);
        producer.flush(|_, _| {});
        let rung = Arc::new(AtomicUsize::new(0));
        let rung_by_consumer = rung.clone();
        let reader = loom::thread::spawn(move || {
            assert_eq!(consumer.drain(1, |_, item| assert_eq!(item, 1)), 1);
            consumer.flush(|peer, fd| {
                assert_eq!((peer, fd), (WorkerId(0), 10));
                rung_by_consumer.fetch_add(1, Ordering::SeqCst);
            });
            consumer
        });
        let slept = producer.prepare_to_sleep();
        let mut consumer = reader.join().expect("consumer thread panicked");
        if slept {
            assert_eq!(rung.load(Ordering::SeqCst), 1, "slept blocked with room and no doorbell");
        }
        producer.woke();
        producer.flush(|_, _| {});
        assert_eq!(consumer.drain(1, |_, item| assert_eq!(item, 2)), 1);
    });
}

/// Liveness with two producers and one consumer that really "sleeps" (spins until a doorbell
/// it has not consumed yet is rung): the consumer gets both items, however the producers'
/// flushes and its sleeps interleave. The swap in `flush` means only one producer rings per
/// sleep; this shows the other's item is still seen. A lost wakeup would leave the consumer
/// spinning forever, which loom reports as a failure (its branch limit). Preemptions are
/// bounded to keep the run short.
#[test]
fn loom_two_producers_one_sleeping_consumer_gets_everything() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let mut ends = build::<u32>(3, MeshLimits { ring_depth: 2, overflow_max: 2 });
        ends.iter().for_each(|end| end.register_ring_fd(10 + end.worker().0 as i32));
        let doorbells = Arc::new(AtomicUsize::new(0));
        let mut producers = Vec::new();
        for mut producer in ends.drain(1..) {
            let doorbells = doorbells.clone();
            producers.push(loom::thread::spawn(move || {
                let _ = producer.push(WorkerId(0), u32::from(producer.worker().0));
                producer.flush(|_, _| {
                    doorbells.fetch_add(1, Ordering::SeqCst);
                });
                producer
            }));
        }
        let mut consumer = ends.pop().expect("worker 0's end is left");
        let mut items = Vec::new();
        let mut doorbells_seen = 0;
        while items.len() < 2 {
            consumer.drain(8, |from, item| {
                assert_eq!(u32::from(from.0), item);
                items.push(item);
            });
            if items.len() == 2 {
                break;
            }
            if consumer.prepare_to_sleep() {
                while doorbells.load(Ordering::SeqCst) == doorbells_seen {
                    loom::thread::yield_now();
                }
                doorbells_seen = doorbells.load(Ordering::SeqCst);
            }
            consumer.woke();
        }
        items.sort_unstable();
        assert_eq!(items, [1, 2]);
        for producer in producers {
            producer.join().expect("producer thread panicked");
        }
    });
}
