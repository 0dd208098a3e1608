//! A bounded, lock-free single-producer single-consumer queue: the wire between two workers.
//!
//! [`channel`] makes a queue of a power-of-two capacity and splits it into a [`Producer`] and
//! a [`Consumer`]. Each half is `Send` (when the item is) and neither is `Clone` nor `Sync`, so
//! the type system keeps "single producer, single consumer" true.
//!
//! # Invariants
//! - `head` (next slot to read, written only by the consumer) and `tail` (one past the last
//!   published slot, written only by the producer) are free-running `usize` counters;
//!   `tail - head` (wrapping) is the number of published items and never exceeds the capacity.
//!   Slot `i & mask` holds an initialised item exactly when `head <= i < tail`.
//! - Full is backpressure: [`Producer::push`] hands the item back in `Err`; nothing allocates
//!   after [`channel`].
//! - Each side caches the other's counter and reloads it only when the cache says full (the
//!   producer) or empty (the consumer), so a busy queue costs one shared-line read per batch,
//!   not per item. `head` and `tail` live on separate cache-line pairs (128 bytes: x86
//!   prefetches lines in pairs) so the two threads do not false-share.
//! - Batches: [`Producer::stage`] writes items the consumer cannot see yet and
//!   [`Producer::publish`] makes all of them visible with one `Release` store; the consumer's
//!   [`Consumer::drain`] reads a batch and frees its slots with one `Release` store.
//! - Dropping the queue (both halves) drops every item still in it; a producer dropped with
//!   staged items publishes them first so they are dropped too, never leaked.
//!
//! # Memory ordering
//! The producer writes a slot, then stores `tail` with `Release`; the consumer loads `tail`
//! with `Acquire` before reading the slot, so it sees the write. Symmetrically the consumer
//! moves the item out, then stores `head` with `Release`; the producer loads `head` with
//! `Acquire` before overwriting a slot, so the move-out happened first. The wake protocol built
//! on top (see `mesh`) adds `SeqCst` fences of its own around these counters.
//!
//! # Verification
//! Unit tests, a two-thread stress test (millions of items, FIFO, no loss, no duplicate) and
//! `loom` models (`RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`). Miri
//! needs a nightly toolchain, which this project does not use, so it has not been run.

use std::fmt;
use std::mem::MaybeUninit;

use sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

/// The atomics and cells the queue and the mesh use: `loom`'s under `--cfg loom` (so its
/// model checker can explore every interleaving), the standard library's otherwise.
pub(crate) mod sync {
    #[cfg(loom)]
    pub(crate) use loom::{
        cell::UnsafeCell,
        sync::atomic::{fence, AtomicBool, AtomicI32, AtomicUsize, Ordering},
        sync::Arc,
    };
    #[cfg(not(loom))]
    pub(crate) use std::{
        sync::atomic::{fence, AtomicBool, AtomicI32, AtomicUsize, Ordering},
        sync::Arc,
    };

    /// `std`'s `UnsafeCell` with `loom`'s closure API, so one body serves both builds.
    #[cfg(not(loom))]
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(loom))]
    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// Keeps a value on its own pair of cache lines (x86's adjacent-line prefetcher pulls lines
    /// in pairs, so 64-byte alignment still false-shares).
    #[derive(Debug, Default)]
    #[repr(align(128))]
    pub(crate) struct CachePadded<T>(pub(crate) T);

    impl<T> std::ops::Deref for CachePadded<T> {
        type Target = T;

        fn deref(&self) -> &T {
            &self.0
        }
    }
}

use sync::CachePadded;

/// The largest capacity [`channel`] accepts: keeps `tail - head` unambiguous with wrapping
/// counters.
pub const CAPACITY_MAX: usize = 1 << (usize::BITS - 2);

/// Makes a queue holding up to `capacity` items and returns its two halves.
///
/// # Panics
/// If `capacity` is not a power of two or exceeds [`CAPACITY_MAX`]: the caller sizes queues
/// from validated configuration, so a bad capacity is a bug, not an input error.
pub fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    assert!(capacity.is_power_of_two(), "SPSC capacity {capacity} is not a power of two");
    assert!(capacity <= CAPACITY_MAX, "SPSC capacity {capacity} exceeds {CAPACITY_MAX}");
    let slots = (0..capacity).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
    let shared = Arc::new(Shared {
        head: CachePadded(AtomicUsize::new(0)),
        tail: CachePadded(AtomicUsize::new(0)),
        mask: capacity - 1,
        slots,
    });
    let producer = Producer { shared: shared.clone(), tail: 0, published: 0, head_cache: 0 };
    let consumer = Consumer { shared, head: 0, tail_cache: 0 };
    (producer, consumer)
}

/// The state both halves point at.
struct Shared<T> {
    /// The next index the consumer reads. Written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// One past the last index the producer published. Written only by the producer.
    tail: CachePadded<AtomicUsize>,
    mask: usize,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

impl<T> Shared<T> {
    fn capacity(&self) -> usize {
        self.mask + 1
    }

    fn slot(&self, index: usize) -> &UnsafeCell<MaybeUninit<T>> {
        &self.slots[index & self.mask]
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Both halves are gone (this is the last `Arc`), and the producer published anything it
        // had staged in its own `Drop`, so exactly `head..tail` is initialised.
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        let mut index = head;
        while index != tail {
            // SAFETY: `head <= index < tail`, so the slot holds an initialised item that no
            // one else can reach any more; it is read exactly once here.
            self.slot(index).with_mut(|slot| unsafe { (*slot).assume_init_drop() });
            index = index.wrapping_add(1);
        }
    }
}

/// The writing half. Not `Clone`: there is exactly one producer.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// The next index to write; `published..tail` are staged but not visible yet.
    tail: usize,
    /// The `tail` the consumer can see.
    published: usize,
    /// The consumer's `head` as last loaded; never ahead of the real one.
    head_cache: usize,
}

// SAFETY: the producer owns the right to write free slots and to store `tail`; moving it to
// another thread moves that right with it. Items cross threads, so they must be `Send`.
unsafe impl<T: Send> Send for Producer<T> {}

impl<T> Producer<T> {
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Writes `value` and publishes it (and anything staged before it).
    /// Gives `value` back when the queue is full.
    pub fn push(&mut self, value: T) -> Result<(), T> {
        self.stage(value)?;
        self.publish();
        Ok(())
    }

    /// Writes `value` without making it visible to the consumer; [`Self::publish`] does that
    /// for the whole batch at once. Gives `value` back when the queue is full.
    pub fn stage(&mut self, value: T) -> Result<(), T> {
        if self.tail.wrapping_sub(self.head_cache) == self.capacity() {
            self.head_cache = self.shared.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head_cache) == self.capacity() {
                return Err(value);
            }
        }
        let slot = self.shared.slot(self.tail);
        // `head_cache` is a value of `head` loaded with `Acquire` (head only grows), so the
        // consumer's move-out of the slot's previous item happened before; only this producer
        // (unique, `&mut self`) writes slots.
        // SAFETY: `tail - head_cache < capacity`: the slot is outside the consumer's readable
        // range `head..published`.
        slot.with_mut(|slot| unsafe { (*slot).write(value) });
        self.tail = self.tail.wrapping_add(1);
        Ok(())
    }

    /// Makes every staged item visible with one store; returns how many that was.
    pub fn publish(&mut self) -> usize {
        let count = self.tail.wrapping_sub(self.published);
        if count > 0 {
            self.shared.tail.store(self.tail, Ordering::Release);
            self.published = self.tail;
        }
        count
    }

    /// Items written by [`Self::stage`] and not yet published.
    pub fn staged(&self) -> usize {
        self.tail.wrapping_sub(self.published)
    }

    /// Slots free right now, reloading the consumer's position (one shared-line read).
    pub fn free_slots(&mut self) -> usize {
        self.head_cache = self.shared.head.load(Ordering::Acquire);
        self.capacity() - self.tail.wrapping_sub(self.head_cache)
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        // Staged items are initialised slots beyond `tail`; publishing them puts them in the
        // range the queue's own `Drop` (or the consumer) takes care of.
        self.publish();
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("tail", &self.tail)
            .field("published", &self.published)
            .field("head_cache", &self.head_cache)
            .finish()
    }
}

/// The reading half. Not `Clone`: there is exactly one consumer.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// The next index to read, as this consumer knows it (== the published `head` between
    /// calls).
    head: usize,
    /// The producer's `tail` as last loaded; never ahead of the real one.
    tail_cache: usize,
}

// SAFETY: the consumer owns the right to read published slots and to store `head`; moving it
// to another thread moves that right with it. Items cross threads, so they must be `Send`.
unsafe impl<T: Send> Send for Consumer<T> {}

impl<T> Consumer<T> {
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Takes the oldest item, if any, and frees its slot at once.
    pub fn pop(&mut self) -> Option<T> {
        let mut item = None;
        self.drain(1, |value| item = Some(value));
        item
    }

    /// Hands up to `max` items to `each`, oldest first, then frees all their slots with one
    /// store. Reloads the producer's position only if the cached one holds fewer than `max`. Returns how many it handed over. If `each` panics, the items not yet handed over
    /// stay in the queue (the consumer's position is only advanced for items already taken).
    pub fn drain(&mut self, max: usize, mut each: impl FnMut(T)) -> usize {
        // One shared-line read per batch: only when the cached position cannot fill it.
        if self.tail_cache.wrapping_sub(self.head) < max {
            self.tail_cache = self.shared.tail.load(Ordering::Acquire);
        }
        let count = self.tail_cache.wrapping_sub(self.head).min(max);
        let guard = HeadGuard { consumer: self };
        for _ in 0..count {
            let slot = guard.consumer.shared.slot(guard.consumer.head);
            // `tail_cache` was loaded with `Acquire` from the producer's `Release` store made
            // after it wrote the slot; `head` advances right after the read, and the producer
            // cannot reuse the slot until `head` is published past it.
            // SAFETY: `head < tail_cache`, so the slot holds an initialised item, read once.
            let value = slot.with_mut(|slot| unsafe { (*slot).assume_init_read() });
            guard.consumer.head = guard.consumer.head.wrapping_add(1);
            each(value);
        }
        drop(guard);
        count
    }

    /// Published items waiting, reloading the producer's position only when the cached one
    /// says there are none (the cheap check the wake protocol repeats before sleeping).
    pub fn available(&mut self) -> usize {
        if self.head == self.tail_cache {
            self.tail_cache = self.shared.tail.load(Ordering::Acquire);
        }
        self.tail_cache.wrapping_sub(self.head)
    }

    /// True when no published item is waiting.
    pub fn is_empty(&mut self) -> bool {
        self.available() == 0
    }
}

/// Publishes the consumer's `head` when a drain ends, even by a panic in the callback, so an
/// item that was moved out is never read (and dropped) a second time.
struct HeadGuard<'a, T> {
    consumer: &'a mut Consumer<T>,
}

impl<T> Drop for HeadGuard<'_, T> {
    fn drop(&mut self) {
        self.consumer.shared.head.store(self.consumer.head, Ordering::Release);
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity())
            .field("head", &self.head)
            .field("tail_cache", &self.tail_cache)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
#[path = "spsc_tests.rs"]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests {
    use super::channel;

    /// Interleavings (up to 3 preemptions: the spin loops make the full space explode) of a
    /// producer pushing three items through a 2-slot queue (so it wraps and meets "full") with
    /// a consumer draining it: FIFO, nothing lost or duplicated.
    #[test]
    fn loom_fifo_across_wrap() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (mut producer, mut consumer) = channel::<u32>(2);
            let writer = loom::thread::spawn(move || {
                for value in 0..3 {
                    let mut item = value;
                    loop {
                        match producer.push(item) {
                            Ok(()) => break,
                            Err(back) => {
                                item = back;
                                loom::thread::yield_now();
                            }
                        }
                    }
                }
            });
            let mut expected = 0;
            while expected < 3 {
                let got = consumer.drain(2, |value| {
                    assert_eq!(value, expected);
                    expected += 1;
                });
                if got == 0 {
                    loom::thread::yield_now();
                }
            }
            writer.join().expect("producer thread panicked");
        });
    }

    /// A staged batch is invisible until `publish`, then visible whole.
    #[test]
    fn loom_batch_publish() {
        loom::model(|| {
            let (mut producer, mut consumer) = channel::<u32>(4);
            let writer = loom::thread::spawn(move || {
                producer.stage(1).expect("queue has room");
                producer.stage(2).expect("queue has room");
                producer.publish();
            });
            let seen = consumer.available();
            assert!(seen == 0 || seen == 2, "saw a half-published batch: {seen}");
            writer.join().expect("producer thread panicked");
            assert_eq!(consumer.pop(), Some(1));
            assert_eq!(consumer.pop(), Some(2));
        });
    }
}
