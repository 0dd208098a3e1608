//! Single-thread tests of the mesh: routing, FIFO through the overflow, the backpressure
//! bound, and the wake protocol's decisions (who rings whom, how often). The two-thread and
//! real-ring versions are in `msg_ring`'s tests and the loom models in `mesh_loom.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{build, Backpressure, MeshEnd, MeshLimits};
use crate::broker::WorkerId;

const W0: WorkerId = WorkerId(0);
const W1: WorkerId = WorkerId(1);
const W2: WorkerId = WorkerId(2);

fn mesh<T: Send>(workers: usize, ring_depth: usize, overflow_max: usize) -> Vec<MeshEnd<T>> {
    let ends = build(workers, MeshLimits { ring_depth, overflow_max });
    for end in &ends {
        // Fake fds: these tests only look at which fd a doorbell is asked for.
        end.register_ring_fd(100 + end.worker().index() as i32);
    }
    ends
}

/// Flushes `end`, returning the peers it asked to ring, with the fd it gave for each.
fn flush<T>(end: &mut MeshEnd<T>) -> Vec<(WorkerId, i32)> {
    let mut rung = Vec::new();
    let count = end.flush(|peer, fd| rung.push((peer, fd)));
    assert_eq!(count, rung.len());
    rung
}

fn drain_all<T>(end: &mut MeshEnd<T>) -> Vec<(WorkerId, T)> {
    let mut items = Vec::new();
    end.drain(usize::MAX, |from, item| items.push((from, item)));
    items
}

#[test]
fn build_gives_one_end_per_worker_with_rounded_rings() {
    let ends = mesh::<u32>(3, 5, 10);
    assert_eq!(ends.len(), 3);
    for (index, end) in ends.iter().enumerate() {
        assert_eq!(end.worker(), WorkerId(index as u16));
        assert_eq!(end.workers(), 3);
        assert_eq!(end.ring_capacity(), 8);
        assert_eq!(end.ring_fd(W2), Some(102));
    }
}

#[test]
#[should_panic(expected = "pushed to itself")]
fn push_to_self_is_a_bug() {
    let mut ends = mesh::<u32>(2, 4, 4);
    let _ = ends[0].push(W0, 1);
}

/// Items cross only at `flush`, arrive tagged with their sender, FIFO per pair.
#[test]
fn items_cross_at_flush_fifo_per_pair() {
    let mut ends = mesh::<(u16, u32)>(3, 64, 64);
    for seq in 0..10 {
        assert_eq!(ends[1].push(W0, (1, seq)), Backpressure::Off);
        assert_eq!(ends[2].push(W0, (2, seq)), Backpressure::Off);
    }
    assert!(drain_all(&mut ends[0]).is_empty(), "nothing is visible before flush");
    assert!(flush(&mut ends[1]).is_empty(), "worker 0 is awake: no doorbell");
    assert!(flush(&mut ends[2]).is_empty());
    let items = drain_all(&mut ends[0]);
    assert_eq!(items.len(), 20);
    for from in [1u16, 2] {
        let seqs: Vec<u32> = items
            .iter()
            .filter(|(sender, _)| sender.0 == from)
            .map(|(sender, (tag, seq))| {
                assert_eq!(sender.0, *tag, "delivered with the wrong sender");
                *seq
            })
            .collect();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    }
    assert_eq!(ends[0].stats().received, 20);
    assert_eq!(ends[1].stats().pushed, 10);
}

/// A full ring parks items in the overflow; at `overflow_max` the push reports backpressure;
/// beyond it items are still accepted (never dropped) and counted; order is kept throughout.
#[test]
fn overflow_keeps_order_and_reports_backpressure_at_its_bound() {
    let mut ends = mesh::<u32>(2, 4, 3);
    let mut next = 0;
    let mut push = |end: &mut MeshEnd<u32>| {
        let pressure = end.push(W1, next);
        next += 1;
        pressure
    };
    for _ in 0..4 {
        assert_eq!(push(&mut ends[0]), Backpressure::Off, "fits in the ring");
    }
    assert_eq!(push(&mut ends[0]), Backpressure::Off, "first in the overflow");
    assert_eq!(ends[0].stats().full_events, 1);
    assert_eq!(push(&mut ends[0]), Backpressure::Off);
    assert!(!ends[0].is_backpressured());
    assert_eq!(push(&mut ends[0]), Backpressure::On, "overflow holds overflow_max");
    assert!(ends[0].is_backpressured());
    assert_eq!(push(&mut ends[0]), Backpressure::On, "accepted beyond the bound");
    assert_eq!(ends[0].overflow_len(W1), 4);
    let stats = *ends[0].stats();
    assert_eq!((stats.overflowed, stats.overflow_beyond_bound), (4, 1));
    assert_eq!(stats.overflow_high_water, 4);
    assert_eq!(stats.full_events, 1, "one transition from empty overflow to not");

    flush(&mut ends[0]);
    let mut received = Vec::new();
    ends[1].drain(2, |_, item| received.push(item));
    flush(&mut ends[0]);
    assert_eq!(ends[0].overflow_len(W1), 2, "two freed slots took the two oldest");
    assert!(!ends[0].is_backpressured(), "below the bound again");
    // A new item must queue behind the overflow, not jump into a free slot.
    ends[1].drain(1, |_, item| received.push(item));
    assert_eq!(push(&mut ends[0]), Backpressure::On, "overflow back to 3");
    flush(&mut ends[0]);
    loop {
        flush(&mut ends[0]);
        if ends[1].drain(usize::MAX, |_, item| received.push(item)) == 0 {
            break;
        }
    }
    assert_eq!(received, (0..9).collect::<Vec<_>>());
    assert_eq!(ends[0].overflow_len(W1), 0);
    assert!(!ends[0].is_backpressured());
}

#[test]
fn zero_overflow_max_means_backpressure_at_the_first_overflow() {
    let mut ends = mesh::<u32>(2, 1, 0);
    assert_eq!(ends[0].push(W1, 0), Backpressure::Off);
    assert_eq!(ends[0].push(W1, 1), Backpressure::On);
    assert!(ends[0].is_backpressured());
}

/// A sleeping consumer gets exactly one doorbell for a batch, from the producer's flush,
/// at its registered fd; later batches before it wakes ring nothing more.
#[test]
fn producer_rings_a_sleeping_consumer_once() {
    let mut ends = mesh::<u32>(3, 64, 64);
    assert!(ends[0].prepare_to_sleep(), "nothing to do: may sleep");
    let _ = ends[1].push(W0, 1);
    assert_eq!(flush(&mut ends[1]), [(W0, 100)]);
    let _ = ends[1].push(W0, 2);
    let _ = ends[2].push(W0, 3);
    assert!(flush(&mut ends[1]).is_empty(), "the first doorbell already covers this sleep");
    assert!(flush(&mut ends[2]).is_empty());
    assert!(flush(&mut ends[1]).is_empty(), "nothing published: no doorbell");
    ends[0].woke();
    assert_eq!(drain_all(&mut ends[0]).len(), 3);
    assert_eq!(ends[1].stats().doorbells_rung, 1);
}

#[test]
fn consumer_with_waiting_items_refuses_to_sleep() {
    let mut ends = mesh::<u32>(2, 64, 64);
    let _ = ends[1].push(W0, 1);
    flush(&mut ends[1]);
    assert!(!ends[0].prepare_to_sleep());
    assert_eq!(ends[0].stats().sleeps_refused, 1);
    let _ = ends[1].push(W0, 2);
    assert!(flush(&mut ends[1]).is_empty(), "the refused sleep cleared the flag");
}

/// A producer whose only work is an overflow sleeps; the consumer that makes room rings it
/// at its next flush.
#[test]
fn consumer_rings_a_producer_blocked_on_a_full_ring() {
    let mut ends = mesh::<u32>(2, 2, 16);
    for value in 0..4 {
        let _ = ends[0].push(W1, value);
    }
    flush(&mut ends[0]);
    assert_eq!(ends[0].overflow_len(W1), 2);
    assert!(ends[0].prepare_to_sleep(), "ring full: nothing to do until worker 1 drains");
    assert_eq!(ends[1].drain(1, |_, _| {}), 1);
    assert_eq!(flush(&mut ends[1]), [(W0, 100)]);
    ends[0].woke();
    flush(&mut ends[0]);
    assert_eq!(ends[0].overflow_len(W1), 1);
    assert!(ends[0].prepare_to_sleep(), "the ring is full again");
    ends[0].woke();
}

#[test]
fn producer_with_room_for_its_overflow_refuses_to_sleep() {
    let mut ends = mesh::<u32>(2, 1, 16);
    let _ = ends[0].push(W1, 0);
    let _ = ends[0].push(W1, 1);
    flush(&mut ends[0]);
    assert_eq!(ends[1].drain(1, |_, _| {}), 1);
    assert!(!ends[0].prepare_to_sleep(), "room freed for the overflow");
    // The refusal cleared the blocked flag: worker 1 owes no doorbell for its drain.
    assert!(flush(&mut ends[1]).is_empty());
}

/// One doorbell per peer per flush, even when a peer is owed one for two reasons.
#[test]
fn at_most_one_doorbell_per_peer_per_flush() {
    let mut ends = mesh::<u32>(2, 1, 16);
    let _ = ends[0].push(W1, 0);
    let _ = ends[0].push(W1, 1);
    flush(&mut ends[0]);
    assert!(ends[0].prepare_to_sleep(), "blocked on worker 1 and nothing inbound");
    ends[1].drain(1, |_, _| {});
    let _ = ends[1].push(W0, 7);
    assert_eq!(flush(&mut ends[1]), [(W0, 100)]);
    assert_eq!(ends[1].stats().doorbells_rung, 1);
}

#[test]
#[should_panic(expected = "prepare_to_sleep before flush")]
fn sleeping_with_unflushed_pushes_is_a_bug() {
    let mut ends = mesh::<u32>(2, 4, 4);
    let _ = ends[0].push(W1, 1);
    ends[0].prepare_to_sleep();
}

#[test]
#[should_panic(expected = "not registered before the first flush")]
fn doorbell_to_an_unregistered_ring_is_a_bug() {
    let mut ends = build::<u32>(2, MeshLimits { ring_depth: 4, overflow_max: 4 });
    assert!(ends[1].prepare_to_sleep());
    let _ = ends[0].push(W1, 1);
    ends[0].flush(|_, _| {});
}

#[test]
fn a_single_worker_mesh_has_no_peers() {
    let mut ends = mesh::<u32>(1, 4, 4);
    assert_eq!(drain_all(&mut ends[0]).len(), 0);
    assert!(flush(&mut ends[0]).is_empty());
    assert!(ends[0].prepare_to_sleep());
    ends[0].woke();
}

/// Items in rings and overflows are dropped exactly once when the mesh is dropped.
#[test]
fn dropping_the_mesh_drops_every_item_once() {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let mut ends = mesh::<Counted>(3, 2, 8);
    for _ in 0..5 {
        let _ = ends[0].push(W1, Counted(drops.clone()));
        let _ = ends[2].push(W1, Counted(drops.clone()));
    }
    flush(&mut ends[0]);
    let _ = ends[0].push(W2, Counted(drops.clone()));
    // Worker 2 never flushed, so only worker 0's items are visible.
    assert_eq!(ends[1].drain(1, |_, _| {}), 1);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    drop(ends);
    assert_eq!(drops.load(Ordering::SeqCst), 11);
}

#[test]
fn mesh_end_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<MeshEnd<Vec<u8>>>();
}
