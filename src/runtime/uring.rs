//! One worker's io_uring: set-up with the task-run mode the kernel offers, pushing submissions,
//! the one submit-and-wait per loop turn, and copying completions out.
//!
//! The ring is created on the thread that uses it (`IORING_SETUP_SINGLE_ISSUER`), with
//! `DEFER_TASKRUN` where the kernel has it, so completions are produced only inside our own
//! `io_uring_enter` and never interrupt the loop; older kernels fall back to `COOP_TASKRUN`.
//!
//! Invariants: the SQ is sized from the limits, so a full SQ is a sizing bug — it is flushed
//! once (counted) and then asserted. A CQ overflow (the kernel keeps the completions, since we
//! require `IORING_FEAT_NODROP`) is counted; the next enter flushes them.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::user_data::UserData;

/// How completions are delivered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TaskrunMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: only when we wait for completions (Linux 6.1+).
    Defer,
    /// `COOP_TASKRUN`: at our next kernel entry, without an interrupt (Linux 5.19+).
    Coop,
    /// Neither: task work interrupts the thread, and wakes it from a sleep in another ring.
    Signal,
}

/// A completion, copied out of the CQ.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Completion {
    /// The worker's ring it was reaped from (0: the one the worker waits on).
    pub ring: u16,
    pub user_data: UserData,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// Whether a multishot operation stays armed after this completion.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// The errno of a failed operation.
    pub fn errno(&self) -> Option<i32> {
        (self.result < 0).then_some(-self.result)
    }
}

/// Kernel features reported at set-up that the runtime needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Features {
    /// Completions are never dropped when the CQ is full (`IORING_FEAT_NODROP`).
    pub nodrop: bool,
    /// Waits take a timeout argument (`IORING_FEAT_EXT_ARG`).
    pub ext_arg: bool,
}

/// Counters of ring-level events, reported at shutdown.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct RingCounters {
    pub turns: u64,
    pub completions: u64,
    /// Pushes that found the SQ full and flushed it first (a sizing hint, never a failure).
    pub sq_full_flushes: u64,
    /// Turns on which the kernel reported completions held back by a full CQ.
    pub cq_overflow_turns: u64,
}

/// A worker's ring.
pub struct Ring {
    uring: IoUring,
    mode: TaskrunMode,
    /// Its place among the worker's rings, stamped on every completion it yields.
    index: u16,
    pub counters: RingCounters,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("fd", &self.fd())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Creates the ring on the calling thread with `sq_entries` submissions and `cq_entries`
    /// completions (both clamped by the kernel to its maximum).
    pub fn new(sq_entries: u32, cq_entries: u32) -> io::Result<Self> {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq_entries).setup_clamp().setup_submit_all();
        let deferred =
            builder.clone().setup_single_issuer().setup_defer_taskrun().build(sq_entries);
        let (uring, mode) = match deferred {
            Ok(uring) => (uring, TaskrunMode::Defer),
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                (builder.setup_coop_taskrun().build(sq_entries)?, TaskrunMode::Coop)
            }
            Err(error) => return Err(error),
        };
        Ok(Self { uring, mode, index: 0, counters: RingCounters::default() })
    }

    /// A worker's further ring number `index` (>= 1): never `DEFER_TASKRUN`, because the
    /// worker never waits in this ring's `io_uring_enter`, and not `COOP_TASKRUN` either: that
    /// queues its task work (a receive or accept made ready by a socket) with
    /// `TWA_SIGNAL_NO_IPI`, which only flags the thread and does not wake it from its sleep
    /// in the first ring, so a worker whose open ring was a further one slept on with accepts
    /// and CONNECTs pending until some other wake-up (a 400k run stalled ~100 s; its 10 s
    /// CONNECT timeouts then reset 1,643 connections). The default mode wakes it. The
    /// completions task work posts signal the registered `eventfd`, which the first ring's
    /// armed read turns into a completion of its own, ending the wait.
    pub fn new_further(
        sq_entries: u32,
        cq_entries: u32,
        index: u16,
        eventfd: RawFd,
    ) -> io::Result<Self> {
        assert!(index > 0, "ring 0 is the one the worker waits on");
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq_entries).setup_clamp().setup_submit_all();
        let uring = builder.build(sq_entries)?;
        uring.submitter().register_eventfd(eventfd)?;
        Ok(Self { uring, mode: TaskrunMode::Signal, index, counters: RingCounters::default() })
    }

    /// Its place among the worker's rings.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Submits what is queued without waiting (a further ring's turn). A ring whose CQ
    /// overflowed enters the kernel even with nothing queued (the turn is counted): only an
    /// enter that asks for completions (the crate sets `GETEVENTS` when the kernel flags the
    /// overflow) moves the held-back completions into the CQ, which the last reap emptied, and
    /// until then the kernel holds back every new completion of this ring too.
    pub fn submit(&mut self) -> io::Result<()> {
        let overflow = self.uring.submission().cq_overflow();
        if overflow {
            self.counters.cq_overflow_turns += 1;
        }
        if self.uring.submission().is_empty() && !overflow {
            return Ok(());
        }
        match self.uring.submit() {
            Ok(_) => Ok(()),
            Err(error) => match error.raw_os_error() {
                Some(libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(error),
            },
        }
    }

    /// The set-up features the runtime depends on.
    pub fn features(&self) -> Features {
        let params = self.uring.params();
        Features { nodrop: params.is_feature_nodrop(), ext_arg: params.is_feature_ext_arg() }
    }

    pub fn mode(&self) -> TaskrunMode {
        self.mode
    }

    pub fn sq_entries(&self) -> u32 {
        self.uring.params().sq_entries()
    }

    pub fn cq_entries(&self) -> u32 {
        self.uring.params().cq_entries()
    }

    pub fn submitter(&self) -> io_uring::Submitter<'_> {
        self.uring.submitter()
    }

    /// The ring's own descriptor (the target of another ring's MSG_RING).
    pub fn fd(&self) -> RawFd {
        self.uring.as_raw_fd()
    }

    /// Queues `entry`; if the SQ is full, submits what it holds first (counted).
    ///
    /// # Safety
    /// Every buffer, iovec, header or descriptor `entry` points to must stay valid, and
    /// unmoved, until the operation's (last) completion has been reaped.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: forwarded to our caller's contract.
        if unsafe { self.uring.submission().push(entry) }.is_ok() {
            return;
        }
        self.counters.sq_full_flushes += 1;
        if let Err(error) = self.uring.submit() {
            // EBUSY/EAGAIN leave entries in the SQ; the assertion below then names the bug.
            tracing::warn!(%error, "flushing a full submission queue failed");
        }
        // SAFETY: as above.
        let pushed = unsafe { self.uring.submission().push(entry) };
        assert!(pushed.is_ok(), "SQ full after a flush: ring_entries is too small for the limits");
    }

    /// Queues a cancel of the operation whose `user_data` is `target`. Safe: a cancel hands
    /// the kernel no memory of ours.
    pub fn push_cancel(&mut self, target: UserData, user_data: UserData) {
        let entry = opcode::AsyncCancel::new(target.pack()).build().user_data(user_data.pack());
        // SAFETY: the entry references no memory.
        unsafe { self.push(&entry) };
    }

    /// Queues the close of direct descriptor `slot`. Safe: a close hands the kernel no memory.
    pub fn push_close_fixed(&mut self, slot: u32, user_data: UserData) {
        let entry = opcode::Close::new(types::Fixed(slot)).build().user_data(user_data.pack());
        // SAFETY: the entry references no memory.
        unsafe { self.push(&entry) };
    }

    /// Submits everything queued and waits for at least one completion, or until `timeout`
    /// (`None`: no limit; zero: do not sleep, only collect what is ready). Interrupted and
    /// timed-out waits are normal returns.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.counters.turns += 1;
        if self.uring.submission().cq_overflow() {
            self.counters.cq_overflow_turns += 1;
        }
        let result = match timeout {
            None => self.uring.submit_and_wait(1),
            Some(timeout) => {
                let timespec = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&timespec);
                self.uring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(error) => match error.raw_os_error() {
                // ETIME: the timeout passed. EINTR: a signal. EBUSY/EAGAIN: the kernel has
                // overflowed completions or no memory right now; reaping makes room.
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(error),
            },
        }
    }

    /// Copies every completion the CQ holds into `out` (at most the CQ's size per call).
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        let before = out.len();
        let ring = self.index;
        out.extend(self.uring.completion().map(|cqe| Completion {
            ring,
            user_data: UserData::unpack(cqe.user_data()),
            result: cqe.result(),
            flags: cqe.flags(),
        }));
        self.counters.completions += (out.len() - before) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::user_data::Op;

    #[test]
    fn a_zero_timeout_returns_at_once_and_a_timeout_completes() {
        let mut ring = Ring::new(4, 8).expect("io_uring");
        let mut out = Vec::new();
        ring.submit_and_wait(Some(Duration::ZERO)).expect("wait");
        ring.reap(&mut out);
        assert!(out.is_empty());

        let timespec = types::Timespec::from(Duration::from_millis(1));
        let entry =
            opcode::Timeout::new(&timespec).build().user_data(UserData::new(Op::Wake, 0, 5).pack());
        // SAFETY: `timespec` lives until the completion is reaped below.
        unsafe { ring.push(&entry) };
        while out.is_empty() {
            ring.submit_and_wait(None).expect("wait");
            ring.reap(&mut out);
        }
        assert_eq!(out[0].user_data, UserData::new(Op::Wake, 0, 5));
        assert_eq!(out[0].errno(), Some(libc::ETIME));
    }

    /// A further ring whose CQ overflowed gets its held-back completions at its next turn's
    /// submit even with nothing queued (no other enter would ask for them), counted.
    #[test]
    fn a_further_ring_flushes_and_counts_its_cq_overflow() {
        // SAFETY: eventfd(2) has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0, "eventfd");
        // SAFETY: `fd` is a descriptor we just created and own alone.
        let eventfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut ring = Ring::new_further(4, 8, 1, eventfd.as_raw_fd()).expect("io_uring");
        let (sq, cq) = (ring.sq_entries() as usize, ring.cq_entries() as usize);
        let mut out = Vec::new();
        for _ in 0..2 * cq {
            let entry = opcode::Nop::new().build().user_data(UserData::new(Op::Wake, 0, 0).pack());
            // SAFETY: a no-op references no memory.
            unsafe { ring.push(&entry) };
        }
        // The pushes past the SQ's size submitted too (and may have counted the overflow).
        ring.submit().expect("submit");
        assert!(ring.uring.submission().cq_overflow(), "{} nops overflow a CQ of {cq}", 2 * cq);
        ring.reap(&mut out);
        assert_eq!(out.len(), cq, "the CQ's worth; the rest are held back");
        let counted = ring.counters.cq_overflow_turns;
        assert!(counted >= 1, "the submit that found the overflow counted it");
        ring.submit().expect("a turn with nothing queued");
        assert_eq!(ring.counters.cq_overflow_turns, counted + 1);
        ring.reap(&mut out);
        assert_eq!(out.len(), 2 * cq, "every completion arrives (SQ {sq})");
        assert!(!ring.uring.submission().cq_overflow());
    }

    /// Pushing more entries than the SQ holds flushes instead of failing.
    #[test]
    fn a_full_sq_is_flushed_and_counted() {
        let mut ring = Ring::new(2, 8).expect("io_uring");
        let entries = ring.sq_entries();
        for _ in 0..=entries {
            let entry = opcode::Nop::new().build().user_data(UserData::new(Op::Wake, 0, 0).pack());
            // SAFETY: a no-op references no memory.
            unsafe { ring.push(&entry) };
        }
        assert_eq!(ring.counters.sq_full_flushes, 1);
        let mut out = Vec::new();
        while out.len() < entries as usize + 1 {
            ring.submit_and_wait(None).expect("wait");
            ring.reap(&mut out);
        }
        assert!(out.iter().all(|c| c.result == 0));
    }
}
