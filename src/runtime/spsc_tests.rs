//! Tests of the SPSC queue: single-thread behaviour at the bounds, drop accounting, and a
//! two-thread stress run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{channel, Consumer, Producer};

/// Counts its drops, so a test can see every item dropped exactly once.
#[derive(Debug)]
struct Counted {
    value: u64,
    drops: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

fn counted(value: u64, drops: &Arc<AtomicUsize>) -> Counted {
    Counted { value, drops: drops.clone() }
}

#[test]
#[should_panic(expected = "not a power of two")]
fn capacity_must_be_a_power_of_two() {
    let _ = channel::<u8>(3);
}

#[test]
#[should_panic(expected = "not a power of two")]
fn capacity_zero_is_refused() {
    let _ = channel::<u8>(0);
}

#[test]
fn halves_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Producer<Vec<u8>>>();
    assert_send::<Consumer<Vec<u8>>>();
}

/// Full is backpressure: the item comes back unchanged and nothing is overwritten.
#[test]
fn push_when_full_gives_the_item_back() {
    let (mut producer, mut consumer) = channel::<u32>(4);
    for value in 0..4 {
        producer.push(value).expect("queue has room");
    }
    assert_eq!(producer.push(99), Err(99));
    assert_eq!(producer.free_slots(), 0);
    assert_eq!(consumer.pop(), Some(0));
    assert_eq!(producer.free_slots(), 1);
    producer.push(4).expect("one slot was freed");
    assert_eq!(producer.push(100), Err(100));
    let mut seen = Vec::new();
    consumer.drain(usize::MAX, |value| seen.push(value));
    assert_eq!(seen, [1, 2, 3, 4]);
    assert_eq!(consumer.pop(), None);
}

/// Many laps round a small ring keep FIFO order across the wrap of the slot index.
#[test]
fn fifo_across_many_wraps() {
    let (mut producer, mut consumer) = channel::<u64>(8);
    let mut next_in = 0;
    let mut next_out = 0;
    for round in 0..1000 {
        let burst = round % 9;
        for _ in 0..burst {
            if producer.push(next_in).is_ok() {
                next_in += 1;
            }
        }
        consumer.drain(round % 5 + 1, |value| {
            assert_eq!(value, next_out);
            next_out += 1;
        });
    }
    while let Some(value) = consumer.pop() {
        assert_eq!(value, next_out);
        next_out += 1;
    }
    assert_eq!(next_in, next_out);
    assert!(next_in > 1000, "the test should move a lot of items, moved {next_in}");
}

#[test]
fn staged_items_are_invisible_until_published() {
    let (mut producer, mut consumer) = channel::<u32>(4);
    producer.stage(1).expect("queue has room");
    producer.stage(2).expect("queue has room");
    assert_eq!(producer.staged(), 2);
    assert!(consumer.is_empty());
    assert_eq!(producer.publish(), 2);
    assert_eq!(producer.publish(), 0, "nothing new to publish");
    assert_eq!(producer.staged(), 0);
    assert_eq!(consumer.available(), 2);
    // Staged items count against the capacity before they are published.
    producer.stage(3).expect("queue has room");
    producer.stage(4).expect("queue has room");
    assert_eq!(producer.stage(5), Err(5));
    assert_eq!(consumer.available(), 2);
}

#[test]
fn drain_respects_its_maximum() {
    let (mut producer, mut consumer) = channel::<u32>(8);
    for value in 0..6 {
        producer.push(value).expect("queue has room");
    }
    let mut seen = Vec::new();
    assert_eq!(consumer.drain(4, |value| seen.push(value)), 4);
    assert_eq!(seen, [0, 1, 2, 3]);
    assert_eq!(consumer.available(), 2);
    assert_eq!(producer.free_slots(), 6, "one head store freed the whole batch");
}

/// Items left in the queue, published or only staged, are dropped exactly once when both
/// halves are gone, whichever half goes first.
#[test]
fn dropping_the_queue_drops_what_is_left() {
    for consumer_first in [false, true] {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut producer, mut consumer) = channel::<Counted>(8);
        for value in 0..5 {
            producer.push(counted(value, &drops)).expect("queue has room");
        }
        producer.stage(counted(5, &drops)).expect("queue has room");
        let first = consumer.pop().expect("an item was pushed");
        assert_eq!(first.value, 0);
        drop(first);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        if consumer_first {
            drop(consumer);
            drop(producer);
        } else {
            drop(producer);
            drop(consumer);
        }
        assert_eq!(drops.load(Ordering::SeqCst), 6, "consumer_first={consumer_first}");
    }
}

/// A panic in the drain callback leaves the untaken items in the queue and never hands out
/// (or drops) a taken one twice.
#[test]
fn panic_in_drain_callback_loses_and_duplicates_nothing() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (mut producer, mut consumer) = channel::<Counted>(8);
    for value in 0..4 {
        producer.push(counted(value, &drops)).expect("queue has room");
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        consumer.drain(4, |item| {
            if item.value == 1 {
                panic!("callback fails on item 1");
            }
        })
    }));
    assert!(result.is_err());
    // Items 0 and 1 were taken (and dropped by the callback or the unwind).
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    let rest: Vec<u64> = std::iter::from_fn(|| consumer.pop().map(|item| item.value)).collect();
    assert_eq!(rest, [2, 3]);
    assert_eq!(drops.load(Ordering::SeqCst), 4);
    drop((producer, consumer));
    assert_eq!(drops.load(Ordering::SeqCst), 4);
}

#[test]
fn zero_sized_items() {
    let (mut producer, mut consumer) = channel::<()>(2);
    producer.push(()).expect("queue has room");
    producer.push(()).expect("queue has room");
    assert_eq!(producer.push(()), Err(()));
    assert_eq!(consumer.drain(8, |()| {}), 2);
}

/// Two threads move millions of sequence numbers through a small queue, in batches of
/// varying size on both sides: every number arrives once, in order. A deadline turns a hang
/// into a failure.
#[test]
fn two_thread_stress_fifo_no_loss_no_duplicate() {
    const ITEMS: u64 = 8_000_000;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let (mut producer, mut consumer) = channel::<u64>(256);
    let writer = std::thread::spawn(move || {
        let mut next = 0u64;
        let mut full_events = 0u64;
        while next < ITEMS {
            // Batches of 1..=64 staged items, published once.
            let batch = 1 + (next.wrapping_mul(0x9E37_79B9) >> 7) % 64;
            let mut staged = 0;
            while staged < batch && next < ITEMS {
                match producer.stage(next) {
                    Ok(()) => {
                        next += 1;
                        staged += 1;
                    }
                    Err(_) => break,
                }
            }
            if producer.publish() == 0 {
                full_events += 1;
                assert!(Instant::now() < deadline, "producer stuck at {next}");
                std::thread::yield_now();
            }
        }
        full_events
    });
    let mut expected = 0u64;
    let mut empty_polls = 0u64;
    while expected < ITEMS {
        let max = 1 + (expected as usize % 97);
        let got = consumer.drain(max, |value| {
            assert_eq!(value, expected, "out of order, lost or duplicated");
            expected += 1;
        });
        if got == 0 {
            empty_polls += 1;
            if empty_polls % 1024 == 0 {
                assert!(Instant::now() < deadline, "consumer stuck at {expected}");
            }
            std::thread::yield_now();
        }
    }
    let full_events = writer.join().expect("producer thread panicked");
    assert_eq!(consumer.pop(), None, "nothing beyond the last item");
    // Not an assertion on timing: just evidence in `--nocapture` that both bounds were met.
    let elapsed = started.elapsed();
    let rate = ITEMS as f64 / elapsed.as_secs_f64() / 1e6;
    eprintln!(
        "spsc stress: {ITEMS} items in {elapsed:?} ({rate:.1} M items/s), {full_events} full \
         events, {empty_polls} empty polls"
    );
}
