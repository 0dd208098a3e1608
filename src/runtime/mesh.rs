//! The mesh: one SPSC ring per ordered pair of workers, an overflow per peer, and the wake
//! protocol that lets a worker sleep in `submit_and_wait` without missing a message.
//!
//! [`build`] runs once at start-up and returns one [`MeshEnd`] per worker, to be moved into
//! that worker's thread. Worker `i`'s end holds the producer of ring `i → j` and the consumer
//! of ring `j → i` for every `j != i`; nothing else is shared except a few flags and the ring
//! file descriptors in a start-up directory. The item type is generic: the runtime carries
//! `broker::RemoteMsg` and connection handoff records in it.
//!
//! # One loop turn
//! ```text
//! drain(max, |from, item| ...)   phase 3: take up to `max` items from each peer
//! push(to, item)                 phase 4: any number of times; staged, not yet visible
//! flush(|peer, ring_fd| ...)     end of turn: overflow first, publish, ring doorbells
//! if prepare_to_sleep() { submit_and_wait(1); } woke();
//! ```
//! `flush` calls its argument once per peer that needs waking, at most once per peer per
//! turn; the runtime pushes a `msg_ring::doorbell_sqe` for it on its own ring, and the
//! following `submit_and_wait` submits it. MSG_RING is only the doorbell: the data travels
//! on the SPSC ring.
//!
//! # Wake protocol (no lost wakeup)
//! Each worker has a `sleeping` flag. A consumer about to block stores `sleeping = true`,
//! issues a `SeqCst` fence, then re-reads the `tail` of every inbound ring; if any has items it
//! clears the flag and does not block. A producer, after publishing a batch (a `Release` store
//! of `tail`), issues a `SeqCst` fence and reads the consumer's flag; if set, it swaps it to
//! false and rings the consumer's doorbell (a MSG_RING CQE on the consumer's ring, which ends
//! its `submit_and_wait`). This is Dekker's pattern: with both fences, either the consumer's
//! fence comes first in the single total order of `SeqCst` fences, so the producer's flag read
//! sees `true` (or a later write: another producer's swap, which rang, or the consumer's own
//! clear after waking), or the producer's fence comes first, so the consumer's `tail` read sees
//! the batch. Both may happen; then one doorbell is spurious, which costs one CQE. The swap
//! means one doorbell per sleep however many producers notice it. Between setting the flag and
//! blocking the consumer reaps no completion, so a doorbell CQE posted in that window is still
//! in its CQ and `submit_and_wait(1)` returns at once.
//!
//! The same pattern runs the other way for a full ring. A producer with items in a peer's
//! overflow that is about to block stores `blocked[me → peer] = true`, fences, and re-reads
//! the ring's `head`; a consumer, after draining a ring (a `Release` store of `head`), fences
//! and reads `blocked[from → me]`; if set, it swaps it false and rings the producer. Without
//! this, a worker whose only pending work is an overflow would sleep while its peer frees room.
//!
//! # Ordering
//! Each ring is FIFO, and an item goes to the overflow whenever the overflow is not empty, and
//! the overflow always moves into the ring before any newer item; so items from worker `i` to
//! worker `j` arrive in push order, which is the broker's "FIFO per (from, to) pair".
//!
//! # Overflow and backpressure
//! A ring holds `ring_depth` items (rounded up to a power of two). When it is full, items wait
//! in that peer's overflow (a `VecDeque`, allocated on demand, so idle pairs cost nothing).
//! Once an overflow holds `overflow_max` items, `push` answers [`Backpressure::On`] and
//! [`MeshEnd::is_backpressured`] is true: the worker must stop reading from connections that
//! publish until it is false again. Nothing is ever dropped (the broker may not lose QoS 1/2,
//! nor reorder anything), so items produced while backpressure is on (already-read bytes,
//! replies to remote messages) are still accepted past the bound and counted in
//! `overflow_beyond_bound`; the excess is bounded by what one loop turn produces after reads
//! stop. The overflow is retried first on every `flush`.
//!
//! # Memory
//! The rings are allocated at start-up: `workers × (workers − 1) × capacity × size_of::<T>()`
//! bytes in all (the OS commits a page when a ring first writes it, so an idle pair costs
//! little until traffic has wrapped its ring once). The runtime's item is 80 bytes (the
//! handoff record is boxed) and its default depth shrinks as workers grow
//! (`RuntimeConfig::default_mesh_ring_depth`): 1.3 MB for 2 workers, 21 MB for 16, 54 MB for
//! 52. Keep `T` small (box rare large variants).
//!
//! # Ring file descriptors
//! Each worker creates its ring on its own (pinned) thread and calls
//! [`MeshEnd::register_ring_fd`]; the runtime must hold all workers at a barrier until every
//! ring is registered, and must keep every ring open until no peer can flush to it any more.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::RawFd;

use super::spsc::sync::{fence, Arc, AtomicBool, AtomicI32, CachePadded, Ordering};
use super::spsc::{self, Consumer, Producer};
use crate::broker::{WorkerId, WorkerSet};

/// The mesh's sizes, from `RuntimeConfig::mesh_ring_depth` and `mesh_overflow_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshLimits {
    /// Items one ring holds; rounded up to a power of two.
    pub ring_depth: usize,
    /// Items one peer's overflow holds before `push` reports backpressure.
    pub overflow_max: usize,
}

impl MeshLimits {
    pub fn from_config(config: &super::RuntimeConfig) -> Self {
        Self { ring_depth: config.mesh_ring_depth, overflow_max: config.mesh_overflow_max }
    }
}

/// What a [`MeshEnd::push`] means for the caller's reading.
#[must_use = "on `Backpressure::On` the worker must stop reading from publishing connections"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backpressure {
    Off,
    /// The peer's overflow holds `overflow_max` items or more.
    On,
}

/// Per-worker mesh counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Items accepted by `push` (into a ring or an overflow).
    pub pushed: u64,
    /// Items taken from peers by `drain`.
    pub received: u64,
    /// Times a peer's overflow went from empty to non-empty (its ring was full).
    pub full_events: u64,
    /// Items that waited in an overflow.
    pub overflowed: u64,
    /// Items accepted while their peer's overflow already held `overflow_max`.
    pub overflow_beyond_bound: u64,
    /// The most items any one overflow held.
    pub overflow_high_water: usize,
    /// Doorbells this worker rang (MSG_RING SQEs asked of `flush`'s callback).
    pub doorbells_rung: u64,
    /// `prepare_to_sleep` calls that found work and refused to sleep.
    pub sleeps_refused: u64,
}

/// The flags and ring fds all workers share; written rarely (sleep, wake, start-up).
struct Directory {
    workers: usize,
    /// Each worker's ring fd, -1 until registered.
    ring_fds: Box<[AtomicI32]>,
    /// `sleeping[w]`: worker `w` is in (or about to enter) a blocking wait.
    sleeping: Box<[CachePadded<AtomicBool>]>,
    /// `blocked[from * workers + to]`: `from` is about to block with an overflow for `to`.
    blocked: Box<[AtomicBool]>,
}

impl Directory {
    fn blocked(&self, from: usize, to: usize) -> &AtomicBool {
        &self.blocked[from * self.workers + to]
    }
}

/// One peer as a worker sees it.
struct Peer<T> {
    /// Ring me → peer; `None` for the worker itself.
    outbound: Option<Producer<T>>,
    /// Ring peer → me; `None` for the worker itself.
    inbound: Option<Consumer<T>>,
    /// Items for the peer that did not fit in its ring, oldest first.
    overflow: VecDeque<T>,
    /// A doorbell for this peer is due at the next `flush`.
    doorbell_due: bool,
    /// Set in the directory by `prepare_to_sleep`, cleared by `woke`.
    blocked_set: bool,
}

/// Builds the mesh for `workers` workers and returns their ends, index = worker id.
///
/// # Panics
/// If `workers` is 0 or more than a `WorkerSet` holds, or the ring depth is 0 or too large.
pub fn build<T: Send>(workers: usize, limits: MeshLimits) -> Vec<MeshEnd<T>> {
    assert!(workers > 0, "a mesh needs at least one worker");
    assert!(workers <= WorkerSet::CAPACITY, "{workers} workers exceed {}", WorkerSet::CAPACITY);
    assert!(limits.ring_depth > 0, "mesh_ring_depth must be positive");
    let capacity = limits.ring_depth.next_power_of_two();
    let directory = Arc::new(Directory {
        workers,
        ring_fds: (0..workers).map(|_| AtomicI32::new(-1)).collect(),
        sleeping: (0..workers).map(|_| CachePadded(AtomicBool::new(false))).collect(),
        blocked: (0..workers * workers).map(|_| AtomicBool::new(false)).collect(),
    });
    let mut peers: Vec<Vec<Peer<T>>> = (0..workers)
        .map(|_| {
            (0..workers)
                .map(|_| Peer {
                    outbound: None,
                    inbound: None,
                    overflow: VecDeque::new(),
                    doorbell_due: false,
                    blocked_set: false,
                })
                .collect()
        })
        .collect();
    let pairs = (0..workers).flat_map(|from| (0..workers).map(move |to| (from, to)));
    for (from, to) in pairs.filter(|(from, to)| from != to) {
        let (producer, consumer) = spsc::channel(capacity);
        peers[from][to].outbound = Some(producer);
        peers[to][from].inbound = Some(consumer);
    }
    peers
        .into_iter()
        .enumerate()
        .map(|(me, peers)| MeshEnd {
            me: worker_id(me),
            directory: directory.clone(),
            peers,
            overflow_max: limits.overflow_max,
            peers_over_bound: 0,
            ring_capacity: capacity,
            drain_start: 0,
            stats: MeshStats::default(),
        })
        .collect()
}

/// An emptied overflow keeps at most this many items' room; beyond it the memory goes back.
const OVERFLOW_KEPT_CAPACITY: usize = 1024;

/// Whether an overflow of `len` items puts its worker under backpressure.
fn over_bound(len: usize, overflow_max: usize) -> bool {
    len > 0 && len >= overflow_max
}

fn worker_id(index: usize) -> WorkerId {
    // `build` caps workers at WorkerSet::CAPACITY (128), so the index fits in a u16.
    WorkerId(u16::try_from(index).expect("worker index checked against WorkerSet::CAPACITY"))
}

/// One worker's side of the mesh. `Send`, so it can move into the worker's thread.
pub struct MeshEnd<T> {
    me: WorkerId,
    directory: Arc<Directory>,
    /// Index = peer worker id; the entry for `me` has no rings.
    peers: Vec<Peer<T>>,
    overflow_max: usize,
    /// Peers whose overflow is at or over `overflow_max`: backpressure while positive.
    peers_over_bound: usize,
    ring_capacity: usize,
    /// Where the next `drain` starts, rotating so no peer is always served first.
    drain_start: usize,
    stats: MeshStats,
}

impl<T> MeshEnd<T> {
    pub fn worker(&self) -> WorkerId {
        self.me
    }

    pub fn workers(&self) -> usize {
        self.peers.len()
    }

    /// Items each ring holds (`ring_depth` rounded up to a power of two).
    pub fn ring_capacity(&self) -> usize {
        self.ring_capacity
    }

    pub fn stats(&self) -> &MeshStats {
        &self.stats
    }

    /// Publishes this worker's ring fd for its peers' doorbells and fd handoffs.
    pub fn register_ring_fd(&self, ring_fd: RawFd) {
        assert!(ring_fd >= 0, "invalid ring fd {ring_fd}");
        self.directory.ring_fds[self.me.index()].store(ring_fd, Ordering::Release);
    }

    /// A worker's ring fd, once that worker has registered it.
    pub fn ring_fd(&self, worker: WorkerId) -> Option<RawFd> {
        let fd = self.directory.ring_fds[worker.index()].load(Ordering::Acquire);
        (fd >= 0).then_some(fd)
    }

    /// Queues `item` for worker `to`. It becomes visible at the next [`Self::flush`]. Never
    /// fails and never drops: a full ring sends the item to the peer's overflow.
    pub fn push(&mut self, to: WorkerId, item: T) -> Backpressure {
        assert!(to != self.me, "worker {to:?} pushed to itself");
        let overflow_max = self.overflow_max;
        let peer = &mut self.peers[to.index()];
        self.stats.pushed += 1;
        if peer.overflow.is_empty() {
            let producer = peer.outbound.as_mut().expect("every peer but me has an outbound ring");
            match producer.stage(item) {
                Ok(()) => return Backpressure::Off,
                Err(item) => {
                    self.stats.full_events += 1;
                    peer.overflow.push_back(item);
                }
            }
        } else {
            if peer.overflow.len() >= overflow_max {
                self.stats.overflow_beyond_bound += 1;
            }
            peer.overflow.push_back(item);
        }
        self.stats.overflowed += 1;
        self.stats.overflow_high_water = self.stats.overflow_high_water.max(peer.overflow.len());
        // The overflow is not empty here, so `overflow_max == 0` means "on at the first one".
        if peer.overflow.len() >= overflow_max {
            if peer.overflow.len() == overflow_max.max(1) {
                self.peers_over_bound += 1;
            }
            Backpressure::On
        } else {
            Backpressure::Off
        }
    }

    /// Items waiting in `peer`'s overflow.
    pub fn overflow_len(&self, peer: WorkerId) -> usize {
        self.peers[peer.index()].overflow.len()
    }

    /// True while any peer's overflow holds `overflow_max` items or more: the worker must not
    /// read from publishing connections.
    pub fn is_backpressured(&self) -> bool {
        debug_assert_eq!(
            self.peers_over_bound,
            self.peers
                .iter()
                .filter(|peer| over_bound(peer.overflow.len(), self.overflow_max))
                .count(),
            "peers_over_bound out of step with the overflows"
        );
        self.peers_over_bound > 0
    }

    /// End of turn: moves overflows into their rings (oldest first), publishes every ring
    /// written this turn with one store each, and calls `ring(peer, peer_ring_fd)` once for
    /// each peer that must be woken. Returns the number of doorbells.
    pub fn flush(&mut self, mut ring: impl FnMut(WorkerId, RawFd)) -> usize {
        let mut published = WorkerSet::empty();
        for (index, peer) in self.peers.iter_mut().enumerate() {
            let Some(producer) = peer.outbound.as_mut() else { continue };
            let was_over_bound = over_bound(peer.overflow.len(), self.overflow_max);
            while let Some(item) = peer.overflow.pop_front() {
                if let Err(item) = producer.stage(item) {
                    peer.overflow.push_front(item);
                    break;
                }
            }
            if was_over_bound && !over_bound(peer.overflow.len(), self.overflow_max) {
                self.peers_over_bound -= 1;
            }
            if peer.overflow.is_empty() && peer.overflow.capacity() > OVERFLOW_KEPT_CAPACITY {
                // A burst is over: give back what it grew (a connect storm grew these to
                // ~10k items, 800 KB per peer, kept for the process's life otherwise).
                peer.overflow = VecDeque::new();
            }
            if producer.publish() > 0 {
                published.insert(worker_id(index));
            }
        }
        if !published.is_empty() {
            // Dekker with the consumer's `prepare_to_sleep`: publish `tail` (above), fence,
            // read its `sleeping` flag.
            fence(Ordering::SeqCst);
            for peer in published.iter() {
                let sleeping = &self.directory.sleeping[peer.index()];
                if sleeping.load(Ordering::SeqCst) && sleeping.swap(false, Ordering::SeqCst) {
                    self.peers[peer.index()].doorbell_due = true;
                }
            }
        }
        self.ring_due_doorbells(&mut ring)
    }

    fn ring_due_doorbells(&mut self, ring: &mut impl FnMut(WorkerId, RawFd)) -> usize {
        let mut rung = 0;
        for (index, peer) in self.peers.iter_mut().enumerate() {
            if !std::mem::take(&mut peer.doorbell_due) {
                continue;
            }
            let fd = self.directory.ring_fds[index].load(Ordering::Acquire);
            assert!(fd >= 0, "worker {index}'s ring fd is not registered before the first flush");
            ring(worker_id(index), fd);
            rung += 1;
        }
        self.stats.doorbells_rung += rung as u64;
        rung
    }

    /// Hands up to `max_per_peer` items from each peer to `deliver`, oldest first per peer,
    /// starting with a different peer each call. Returns how many items it delivered.
    /// Notes (for the next `flush`) which blocked producers must be woken for the room made.
    pub fn drain(&mut self, max_per_peer: usize, mut deliver: impl FnMut(WorkerId, T)) -> usize {
        let workers = self.peers.len();
        let mut drained = WorkerSet::empty();
        let mut total = 0;
        for step in 0..workers {
            let index = (self.drain_start + step) % workers;
            let Some(consumer) = self.peers[index].inbound.as_mut() else { continue };
            let from = worker_id(index);
            let count = consumer.drain(max_per_peer, |item| deliver(from, item));
            if count > 0 {
                drained.insert(from);
                total += count;
            }
        }
        self.drain_start = (self.drain_start + 1) % workers;
        if !drained.is_empty() {
            // Dekker with the producer's `prepare_to_sleep`: publish `head` (in `drain`
            // above), fence, read its `blocked` flag.
            fence(Ordering::SeqCst);
            let me = self.me.index();
            for from in drained.iter() {
                let blocked = self.directory.blocked(from.index(), me);
                if blocked.load(Ordering::SeqCst) && blocked.swap(false, Ordering::SeqCst) {
                    self.peers[from.index()].doorbell_due = true;
                }
            }
        }
        self.stats.received += total as u64;
        total
    }

    /// Call right before a wait that would block. Returns true if the worker may block now;
    /// false if mesh work is ready (an inbound item, or room for an overflow), in which case
    /// the worker must not block this turn. Either way, call [`Self::woke`] after the wait.
    ///
    /// # Panics
    /// If this turn's pushes or doorbells were not flushed: sleeping on them could deadlock.
    pub fn prepare_to_sleep(&mut self) -> bool {
        let me = self.me.index();
        for (index, peer) in self.peers.iter_mut().enumerate() {
            let staged = peer.outbound.as_ref().map_or(0, Producer::staged);
            assert!(staged == 0 && !peer.doorbell_due, "prepare_to_sleep before flush");
            if !peer.overflow.is_empty() {
                self.directory.blocked(me, index).store(true, Ordering::SeqCst);
                peer.blocked_set = true;
            }
        }
        self.directory.sleeping[me].store(true, Ordering::SeqCst);
        // Dekker with the producers' `flush` and the consumers' `drain`: flags (above), fence,
        // then read every `tail` we consume and every `head` we are blocked on.
        fence(Ordering::SeqCst);
        let ready = self.peers.iter_mut().any(|peer| {
            let inbound = peer.inbound.as_mut().is_some_and(|consumer| !consumer.is_empty());
            let room = peer.blocked_set
                && peer.outbound.as_mut().is_some_and(|producer| producer.free_slots() > 0);
            inbound || room
        });
        if ready {
            self.stats.sleeps_refused += 1;
            self.woke();
        }
        !ready
    }

    /// Call after the wait that followed [`Self::prepare_to_sleep`] (or when it said no).
    pub fn woke(&mut self) {
        let me = self.me.index();
        self.directory.sleeping[me].store(false, Ordering::SeqCst);
        for (index, peer) in self.peers.iter_mut().enumerate() {
            if std::mem::take(&mut peer.blocked_set) {
                self.directory.blocked(me, index).store(false, Ordering::SeqCst);
            }
        }
    }
}

impl<T> fmt::Debug for MeshEnd<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshEnd")
            .field("me", &self.me)
            .field("workers", &self.peers.len())
            .field("ring_capacity", &self.ring_capacity)
            .field("overflow_max", &self.overflow_max)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
#[path = "mesh_tests.rs"]
mod tests;

#[cfg(all(test, loom))]
#[path = "mesh_loom.rs"]
mod loom_tests;
