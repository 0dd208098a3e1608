//! A worker's further rings: more direct file tables than one ring can hold.
//!
//! The kernel caps a ring's registered file table at `RLIMIT_NOFILE` (20000 here, hard), and
//! connections live only in those tables. A worker therefore owns up to
//! `rings_per_worker_max` rings of `file_table_slots` slots each, adding one when the ring
//! that takes new connections (the *open ring*) is nearly full. The first ring is the one the
//! worker waits on (`DEFER_TASKRUN` where the kernel has it); the further rings are
//! default-mode rings (their task work wakes the sleeping thread; `COOP_TASKRUN` did not,
//! `uring.rs`) with the worker's *rings eventfd* registered, so every completion they
//! post signals it, and the first ring keeps an 8-byte read armed on that eventfd: a further
//! ring's completion wakes the wait like one of the first ring's own. Each turn submits every
//! ring's queue and reaps every ring's completions.
//!
//! Numbering: a connection's slot is worker-wide, `ring x file_table_slots + index in that
//! ring's table` (`ConnTable`), and every operation on it goes to its ring with the index
//! ([`Worker::ring_for`], [`Worker::fixed`]). Each ring has its own provided-buffer ring
//! (the kernel picks buffers per ring); further rings get `FURTHER_RING_RECV_BUFFERS_MAX`
//! at most, since an idle connection takes a buffer only for a ping.
//!
//! New connections: listeners accept into the open ring, and peers hand connections off into
//! it (its fd is what this worker publishes in the mesh directory, which doorbells also use).
//! `rings_per_worker_start` rings are set up at start; from half full on, the worker keeps a
//! spare ring with room (retrying a ring that failed to set up every 256 new connections).
//! When the open ring's free slots fall to an eighth, the open ring moves to the ring with the
//! most room, or to a new ring while there are fewer than `rings_per_worker_max`; armed
//! accepts elsewhere are cancelled and re-armed on it. A ring can still fill (handoffs in
//! flight, accepts that raced the cancel): its accept then fails ENFILE, which moves the open
//! ring too, and only when every ring is full does accepting pause (until a slot frees); a
//! handoff's descriptor send that fails ENFILE is sent again a turn later (`handoff.rs`).
//!
//! Invariants: rings are never dropped while the worker runs (peers may MSG_RING any of them
//! until the exit gate), and each ring's buffers outlive its registration (`Drop`).

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use io_uring::{opcode, types};

use super::bufring::{
    BufRing, FIRST_RECV_BUFFER_BYTES, FIRST_RECV_GROUP, RECV_GROUP, STARVED_RECV_BUFFER_BYTES,
    STARVED_RECV_GROUP,
};
use super::uring::{Completion, Ring};
use super::user_data::{Op, UserData};
use super::worker::Worker;

/// A further ring's receive buffers at most (each `recv_buffer_bytes`).
pub(super) const FURTHER_RING_RECV_BUFFERS_MAX: u16 = 64;
/// The open ring moves on when fewer than `slots / OPEN_RING_ROOM_FRACTION` slots are free:
/// room for the descriptors peers hand off between two of our reaps (they count as soon as
/// they are reaped; one that finds the ring full is sent again, `handoff.rs`).
const OPEN_RING_ROOM_FRACTION: u32 = 8;
/// After a ring failed to set up, new connections before the next attempt.
const ADD_RING_RETRY_CONNECTIONS: u32 = 256;
/// A further ring's SQ is this fraction of `ring_entries`, but at least 1024 entries (or
/// `ring_entries` when smaller): it carries only its connections'
/// operations (the first ring also has the worker's wake-ups, accepts and timers), and a turn
/// that queues more flushes it early (`Ring::push`, counted), which costs a syscall, not a loss.
const FURTHER_RING_SQ_FRACTION: u32 = 4;

/// A further ring's (SQ, CQ) entries. The CQ holds one completion per slot of its table (a
/// fan-out's send to every connection, or a receive from each, within one turn), half of the
/// first ring's two per slot (`worker::completion_entries`): the mappings are 1.3 MiB a ring
/// with 20,000 slots at the first ring's sizes, ~0.6 MiB at these. More completions than
/// that in one turn overflow: the kernel keeps them (`IORING_FEAT_NODROP`) and the next turn
/// counts the overflow and flushes them (`Ring::submit`).
pub(super) fn further_ring_entries(config: &super::config::RuntimeConfig) -> (u32, u32) {
    // Never below 1024 (or `ring_entries` if smaller): a small configured SQ is not cut.
    let sq = (config.ring_entries / FURTHER_RING_SQ_FRACTION).max(config.ring_entries.min(1024));
    let per_slot = config.file_table_slots.checked_next_power_of_two().unwrap_or(1 << 16);
    (sq, per_slot.clamp(sq.saturating_mul(2), 1 << 16))
}

/// A ring beyond the first, with its own provided buffers: shared ones, first-receive ones for
/// connections that have not sent their CONNECT yet, and starved-receive ones for receives
/// re-armed after the shared ones ran out.
#[derive(Debug)]
pub(super) struct FurtherRing {
    pub ring: Ring,
    pub buffers: ManuallyDrop<BufRing>,
    pub first_buffers: ManuallyDrop<BufRing>,
    pub starved_buffers: ManuallyDrop<BufRing>,
}

/// What the worker keeps for its further rings.
#[derive(Debug)]
pub(super) struct Rings {
    pub further: Vec<FurtherRing>,
    /// The ring new connections go to (0: the first).
    pub open: usize,
    /// Signalled by every completion a further ring posts (a process fd, one per worker).
    pub eventfd: OwnedFd,
    /// Where the armed read of `eventfd` writes; freed only when no read is armed.
    pub word: ManuallyDrop<Box<u64>>,
    pub word_armed: bool,
    pub max: usize,
    /// Rings that failed to set up (e.g. ENOMEM under memory pressure), each retried later.
    pub setup_failures: u64,
    /// New connections to wait before trying to set up a ring again after a failure.
    pub retry_countdown: u32,
}

impl Rings {
    /// At most `max` rings of `slots` each, fewer if their slots would not fit in a
    /// `user_data`'s slot field.
    pub fn new(max: u16, slots: u32) -> io::Result<Self> {
        assert!(max >= 1 && slots >= 1, "a worker needs a ring with a slot");
        let fitting = ((super::user_data::SLOTS_MAX - 1) / slots).max(1);
        let max = usize::from(max).min(fitting as usize);
        // SAFETY: eventfd(2) has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor we just created and own alone.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            further: Vec::new(),
            open: 0,
            eventfd,
            word: ManuallyDrop::new(Box::new(0)),
            word_armed: false,
            max,
            setup_failures: 0,
            retry_countdown: 0,
        })
    }
}

impl Worker {
    /// The ring whose table holds `slot`.
    pub(super) fn ring_for(&mut self, slot: u32) -> &mut Ring {
        let ring = self.conns.ring_of(slot);
        self.ring_at(ring)
    }

    pub(super) fn ring_at(&mut self, ring: usize) -> &mut Ring {
        match ring {
            0 => &mut self.ring,
            further => &mut self.rings.further[further - 1].ring,
        }
    }

    /// `slot`'s index in its ring's table, as an SQE names it.
    pub(super) fn fixed(&self, slot: u32) -> types::Fixed {
        types::Fixed(slot % self.conns.slots_per_ring())
    }

    /// Sets up one more ring, with its table and buffers; returns its index.
    pub(super) fn add_ring(&mut self) -> io::Result<usize> {
        let index = self.conns.rings();
        let index_u16 = u16::try_from(index).map_err(io::Error::other)?;
        let config = &self.config;
        let step = |what: &'static str| {
            move |error: io::Error| io::Error::new(error.kind(), format!("{what}: {error}"))
        };
        let (sq_entries, cq_entries) = further_ring_entries(config);
        let ring =
            Ring::new_further(sq_entries, cq_entries, index_u16, self.rings.eventfd.as_raw_fd())
                .map_err(step("io_uring_setup"))?;
        let files = config.file_table_slots;
        ring.submitter()
            .register_files_sparse(files)
            .map_err(step("registering the file table"))?;
        let count = config.recv_buffers.min(FURTHER_RING_RECV_BUFFERS_MAX);
        let buffers = BufRing::new(count, config.recv_buffer_bytes, RECV_GROUP)
            .map_err(step("mapping buffers"))?;
        buffers.register(&ring.submitter()).map_err(step("registering the buffer ring"))?;
        let first = config.first_recv_buffers;
        let first_buffers = BufRing::new(first, FIRST_RECV_BUFFER_BYTES, FIRST_RECV_GROUP)
            .map_err(step("mapping first-receive buffers"))?;
        first_buffers
            .register(&ring.submitter())
            .map_err(step("registering the first-receive buffer ring"))?;
        let starved_buffers = BufRing::new(
            config.starved_recv_buffers,
            STARVED_RECV_BUFFER_BYTES,
            STARVED_RECV_GROUP,
        )
        .map_err(step("mapping starved-receive buffers"))?;
        starved_buffers
            .register(&ring.submitter())
            .map_err(step("registering the starved-receive buffer ring"))?;
        self.rings.further.push(FurtherRing {
            ring,
            buffers: ManuallyDrop::new(buffers),
            first_buffers: ManuallyDrop::new(first_buffers),
            starved_buffers: ManuallyDrop::new(starved_buffers),
        });
        assert_eq!(self.conns.add_ring(), index, "the table and the rings disagree");
        // From the first further ring on, its completions must wake the wait.
        self.arm_rings_wake();
        tracing::info!(worker = self.index, ring = index, "another ring for more connections");
        Ok(index)
    }

    /// After a connection took a slot of the open ring: when the ring is nearly full, move
    /// new connections to the ring with the most room, or to a new ring.
    pub(super) fn keep_room_for_new_connections(&mut self) {
        let slots = self.conns.slots_per_ring();
        let room = slots - self.conns.live_in(self.rings.open);
        if room <= slots / 2 {
            self.prepare_spare_ring();
        }
        if room > slots / OPEN_RING_ROOM_FRACTION {
            return;
        }
        self.move_open_ring(None);
    }

    /// From half full on, makes sure another ring has room for the open ring to move to, so
    /// a ring that fails to set up (ENOMEM was seen at ~900k connections on this machine) is
    /// retried over many connections before the open ring is full, not when it is.
    fn prepare_spare_ring(&mut self) {
        let slots = self.conns.slots_per_ring();
        let wanted_room = 2 * (slots / OPEN_RING_ROOM_FRACTION).max(1);
        let open = self.rings.open;
        let spare = (0..self.conns.rings())
            .any(|ring| ring != open && slots - self.conns.live_in(ring) >= wanted_room);
        if spare || self.conns.rings() >= self.rings.max {
            return;
        }
        if self.rings.retry_countdown > 0 {
            self.rings.retry_countdown -= 1;
            return;
        }
        if let Err(error) = self.add_ring() {
            self.rings.setup_failures += 1;
            self.rings.retry_countdown = ADD_RING_RETRY_CONNECTIONS;
            tracing::warn!(worker = self.index, %error, "could not add a ring; will retry");
        }
    }

    /// Chooses another open ring (never `full`, a ring that just refused a descriptor) and
    /// moves the accepts and the published fd there. False when every ring is full and no
    /// ring may be added.
    pub(super) fn move_open_ring(&mut self, full: Option<usize>) -> bool {
        let slots = self.conns.slots_per_ring();
        let roomiest = (0..self.conns.rings())
            .filter(|ring| Some(*ring) != full)
            .min_by_key(|ring| self.conns.live_in(*ring));
        let wanted_room = 2 * (slots / OPEN_RING_ROOM_FRACTION).max(1);
        let target = match roomiest {
            Some(ring) if slots - self.conns.live_in(ring) >= wanted_room => Some(ring),
            _ if self.conns.rings() < self.rings.max => match self.add_ring() {
                Ok(ring) => Some(ring),
                Err(error) => {
                    self.rings.setup_failures += 1;
                    tracing::warn!(worker = self.index, %error, "could not add a ring");
                    roomiest.filter(|ring| self.conns.live_in(*ring) < slots)
                }
            },
            _ => roomiest.filter(|ring| self.conns.live_in(*ring) < slots),
        };
        let Some(target) = target else { return false };
        if target != self.rings.open {
            self.rings.open = target;
            let fd = self.ring_at(target).fd();
            self.peers.register_ring_fd(fd);
            self.cancel_accepts_off_the_open_ring();
        }
        true
    }

    /// Cancels every armed accept that is not on the open ring; its ECANCELED completion
    /// re-arms it there (`on_accept`). A second cancel of one accept only fails (ENOENT).
    fn cancel_accepts_off_the_open_ring(&mut self) {
        let open = self.rings.open;
        for index in 0..self.listeners.len() {
            let listener = &self.listeners[index];
            if !listener.armed || usize::from(listener.ring) == open {
                continue;
            }
            let ring = listener.ring;
            let target = UserData::new(Op::Accept, index as u32, u32::from(ring));
            let cancel = UserData::new(Op::CancelAccept, index as u32, u32::from(ring));
            self.ring_at(usize::from(ring)).push_cancel(target, cancel);
        }
    }

    /// Phase 1, before the wait: the further rings' queues go to the kernel.
    pub(super) fn submit_further_rings(&mut self) -> io::Result<()> {
        for further in &mut self.rings.further {
            further.ring.submit()?;
        }
        Ok(())
    }

    /// Phase 2: the further rings' completions, after the first ring's.
    pub(super) fn reap_further_rings(&mut self, out: &mut Vec<Completion>) {
        for further in &mut self.rings.further {
            further.ring.reap(out);
        }
    }

    /// Keeps a read of the rings eventfd armed on the first ring (once a further ring exists).
    pub(super) fn arm_rings_wake(&mut self) {
        if self.rings.word_armed || self.stopping.is_some() || self.rings.further.is_empty() {
            return;
        }
        let word: *mut u64 = &raw mut **self.rings.word;
        let entry = opcode::Read::new(types::Fd(self.rings.eventfd.as_raw_fd()), word.cast(), 8)
            .build()
            .user_data(UserData::new(Op::RingsWake, 0, 0).pack());
        // SAFETY: the read writes 8 bytes into `rings.word`, a box the worker frees only when
        // no read is armed (`Drop`); the eventfd lives in `rings` as long as the worker.
        unsafe { self.ring.push(&entry) };
        self.rings.word_armed = true;
    }

    /// The rings eventfd was read: further rings have completions, which this turn reaps
    /// anyway; only the read is re-armed (not after a stop, so the worker can finish).
    pub(super) fn on_rings_wake(&mut self) {
        self.rings.word_armed = false;
        if self.stopping.is_none() {
            self.arm_rings_wake();
        }
    }

    /// At a stop: the armed read of the rings eventfd is cancelled, so the worker's
    /// operations all end.
    pub(super) fn cancel_rings_wake(&mut self) {
        if self.rings.word_armed {
            let target = UserData::new(Op::RingsWake, 0, 0);
            // Its effect shows on the read (ECANCELED); the cancel's own completion is ignored
            // like an accept's cancel.
            self.ring.push_cancel(target, UserData::new(Op::CancelAccept, 0, u32::MAX));
        }
    }

    /// Unregisters the further rings' buffers and frees them (from `Drop`).
    pub(super) fn drop_further_rings(&mut self) {
        for further in &mut self.rings.further {
            let all =
                [&mut further.buffers, &mut further.first_buffers, &mut further.starved_buffers];
            for buffers in all {
                match further.ring.submitter().unregister_buf_ring(buffers.group()) {
                    // SAFETY: the buffers are not used again; the kernel no longer refers to
                    // them (unregistering is synchronous).
                    Ok(()) => unsafe { ManuallyDrop::drop(buffers) },
                    Err(error) => {
                        tracing::warn!(%error, "buffer ring still registered: leaking its memory")
                    }
                }
            }
        }
        if !self.rings.word_armed {
            // SAFETY: no read into the word is in flight, and it is not used again.
            unsafe { ManuallyDrop::drop(&mut self.rings.word) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::RuntimeConfig;

    /// With the defaults (4096 SQ entries, 20,000 slots) a further ring has a quarter of the
    /// SQ and one CQ entry per slot; the CQ never drops below twice the SQ, nor above the
    /// kernel's 65536.
    #[test]
    fn a_further_ring_has_a_quarter_sq_and_a_cq_entry_per_slot() {
        let config = RuntimeConfig::default();
        assert_eq!((config.ring_entries, config.file_table_slots), (4096, 20_000));
        assert_eq!(further_ring_entries(&config), (1024, 32_768));
        let small = RuntimeConfig { file_table_slots: 100, ..RuntimeConfig::default() };
        assert_eq!(further_ring_entries(&small), (1024, 2048));
        let large = RuntimeConfig { file_table_slots: 100_000, ..RuntimeConfig::default() };
        assert_eq!(further_ring_entries(&large), (1024, 1 << 16));
        let small_sq = RuntimeConfig { ring_entries: 256, ..RuntimeConfig::default() };
        assert_eq!(further_ring_entries(&small_sq), (256, 32_768), "a small SQ is not cut");
        let large_sq = RuntimeConfig { ring_entries: 32_768, ..RuntimeConfig::default() };
        assert_eq!(further_ring_entries(&large_sq), (8192, 32_768));
    }
}
