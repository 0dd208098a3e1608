//! IORING_OP_MSG_RING for the mesh: the doorbell that wakes a peer's ring, and the move of a
//! connection's direct descriptor from one worker's fixed file table to another's.
//!
//! Both SQEs go on the *sender's* ring and target the receiver's ring fd; the receiver sees a
//! CQE it never submitted, whose `user_data` is the 64 bits the sender chose (the runtime puts
//! its op tag there) and whose `res` is 0 for a doorbell, or the fixed-table slot the
//! descriptor landed in for a handoff. `io-uring` 0.7 has both opcodes (`MsgRingData`,
//! `MsgRingSendFd`), so no SQE is built by hand.
//!
//! # Doorbell
//! [`doorbell_sqe`] carries no data (the data is on the SPSC ring; see `mesh`) and sets
//! `IOSQE_CQE_SKIP_SUCCESS`, so the sender gets a CQE only if the message failed (which would
//! be a bug: a closed or wrong ring fd). It works with a receiver set up with
//! `SINGLE_ISSUER | DEFER_TASKRUN`: the kernel queues the CQE as task work for the receiving
//! thread and wakes its `submit_and_wait`.
//!
//! # Connection handoff
//! A connection whose session lives on another worker moves there after its CONNECT is read:
//! its direct descriptor through [`send_fd_sqe`] (`IORING_MSG_SEND_FD`, into a slot the target
//! allocates: `IORING_FILE_INDEX_ALLOC`), and a record (the CONNECT, the bytes already read
//! after it) through the SPSC ring. A [`HandoffKey`] — source worker and a per-source
//! sequence number — names the pair: the sender puts it in the target CQE's `user_data` and
//! in the record; the target's [`HandoffPairing`] matches them, whichever arrives first waiting
//! for the other.
//!
//! The sender's steps, in order:
//! 1. No operation on the connection is in flight any more (the runtime's slot rule).
//! 2. Submit `send_fd_sqe(target_ring_fd, slot, key | op tag, ...)` on its own ring.
//! 3. On that SQE's CQE: if `res >= 0` the target holds the descriptor. Push the record (with
//!    `key`) to the target through the mesh, then close the source slot through the ring
//!    (the kernel installed a second reference; closing ours leaves the target's). If
//!    `res < 0` (e.g. `-ENFILE`: the target's table is full) nothing reached the target; the
//!    source still owns the connection and closes it, counted.
//!
//! Ordering argument: the record is pushed only after the source's CQE reports success, so a
//! record always has a descriptor on the target, and a failed send never leaves a record
//! waiting forever. In the kernel the target's CQE is posted before the source's completes
//! (both when the sender installs the file itself and when the target's task does it as task
//! work), so by the time the target can see the record its CQE is already in its CQ; but the
//! target reaps CQEs and drains the mesh at different points of its turn, so it may still meet
//! the record first. The pairing does not depend on either order. A pending record therefore
//! waits at most until the target's next reap; a pending descriptor waits while the record
//! sits in the source's overflow. Each pending entry holds one slot of the target's fixed
//! table, so the table size bounds them.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use crate::broker::WorkerId;

/// A doorbell for the ring `target_ring_fd`: the target gets a CQE with `target_user_data`
/// and `res == 0`; the sender gets a CQE with `source_user_data` only if the message failed.
pub fn doorbell_sqe(
    target_ring_fd: RawFd,
    target_user_data: u64,
    source_user_data: u64,
) -> squeue::Entry {
    opcode::MsgRingData::new(types::Fd(target_ring_fd), 0, target_user_data, None)
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS)
        .user_data(source_user_data)
}

/// Moves a reference to the direct descriptor in the sender's fixed slot `source_slot` into a
/// free slot of the target's table. The target gets a CQE with `target_user_data` and `res`
/// = its new slot; the sender always gets a CQE with `source_user_data` (`res < 0`: nothing
/// was sent). The sender's slot still holds the descriptor afterwards: close it.
pub fn send_fd_sqe(
    target_ring_fd: RawFd,
    source_slot: u32,
    target_user_data: u64,
    source_user_data: u64,
) -> squeue::Entry {
    opcode::MsgRingSendFd::new(
        types::Fd(target_ring_fd),
        types::Fixed(source_slot),
        types::DestinationSlot::auto_target(),
        target_user_data,
    )
    .build()
    .user_data(source_user_data)
}

/// Names one connection handoff: the source worker and its sequence number. Fits in 48 bits
/// ([`Self::to_bits`]), leaving the top 16 bits of a `user_data` for the runtime's op tag.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct HandoffKey {
    pub from: WorkerId,
    pub sequence: u32,
}

impl HandoffKey {
    /// Bits the key uses in a `user_data`: the low 48.
    pub const BITS_MASK: u64 = (1 << 48) - 1;

    pub const fn to_bits(self) -> u64 {
        ((self.from.0 as u64) << 32) | self.sequence as u64
    }

    /// The key in the low 48 bits of `bits`; higher bits (an op tag) are ignored.
    pub const fn from_bits(bits: u64) -> Self {
        Self { from: WorkerId((bits >> 32) as u16), sequence: bits as u32 }
    }
}

/// The source side: hands out keys, unique while fewer than 2^32 handoffs from one worker are
/// in flight at once.
#[derive(Debug)]
pub struct HandoffKeys {
    me: WorkerId,
    next: u32,
}

impl HandoffKeys {
    pub fn new(me: WorkerId) -> Self {
        Self { me, next: 0 }
    }

    pub fn next_key(&mut self) -> HandoffKey {
        let key = HandoffKey { from: self.me, sequence: self.next };
        self.next = self.next.wrapping_add(1);
        key
    }
}

/// The target side: pairs each descriptor CQE with its SPSC record, in either order.
pub struct HandoffPairing<R> {
    /// Descriptors whose record has not come yet: key → slot in our fixed table.
    slots: HashMap<HandoffKey, u32>,
    /// Records whose descriptor CQE has not been reaped yet.
    records: HashMap<HandoffKey, R>,
    /// The most entries both maps may hold together (the fixed table's size).
    pending_max: usize,
}

impl<R> HandoffPairing<R> {
    /// `pending_max` is the target's fixed file table size: every pending entry holds a slot.
    pub fn new(pending_max: usize) -> Self {
        Self { slots: HashMap::new(), records: HashMap::new(), pending_max }
    }

    /// A descriptor CQE arrived: `slot` is its `res`. Returns the pair if the record was here.
    pub fn on_slot(&mut self, key: HandoffKey, slot: u32) -> Option<(u32, R)> {
        if let Some(record) = self.records.remove(&key) {
            return Some((slot, record));
        }
        let previous = self.slots.insert(key, slot);
        assert!(previous.is_none(), "handoff {key:?} delivered two descriptors");
        self.assert_bounded();
        None
    }

    /// A record came through the mesh. Returns the pair if its descriptor was here.
    pub fn on_record(&mut self, key: HandoffKey, record: R) -> Option<(u32, R)> {
        if let Some(slot) = self.slots.remove(&key) {
            return Some((slot, record));
        }
        let previous = self.records.insert(key, record);
        assert!(previous.is_none(), "handoff {key:?} delivered two records");
        self.assert_bounded();
        None
    }

    /// Handoffs waiting for their other half.
    pub fn pending(&self) -> usize {
        self.slots.len() + self.records.len()
    }

    /// At shutdown: the slots holding descriptors whose record never came, to be closed.
    pub fn take_unpaired_slots(&mut self) -> Vec<u32> {
        self.slots.drain().map(|(_, slot)| slot).collect()
    }

    fn assert_bounded(&self) {
        // Each pending handoff holds a slot of our fixed table, so more than the table holds
        // means a key was lost or duplicated: a bug, not load.
        assert!(self.pending() <= self.pending_max, "{} handoffs pending", self.pending());
    }
}

impl<R> fmt::Debug for HandoffPairing<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoffPairing")
            .field("slots_waiting", &self.slots.len())
            .field("records_waiting", &self.records.len())
            .field("pending_max", &self.pending_max)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
#[path = "msg_ring_tests.rs"]
mod tests;
