//! Tests against real io_uring instances: a doorbell wakes a blocked ring, a direct
//! descriptor moves between two rings' fixed tables, and the mesh's wake protocol loses no
//! wakeup between two worker threads that each block in their own ring. Each blocking wait
//! has a 5 s timeout, so a lost wakeup fails the test instead of hanging it. Plus unit tests
//! of the handoff pairing.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::{doorbell_sqe, send_fd_sqe, HandoffKey, HandoffKeys, HandoffPairing};
use crate::broker::WorkerId;
use crate::runtime::mesh::{self, Backpressure, MeshEnd, MeshLimits};

const DOORBELL: u64 = 0xD00B;
const DOORBELL_FAILED: u64 = 0xBAD_D00B;
const HANDOFF_TAG: u64 = 0x4F << 48;
const SEND_FD_DONE: u64 = 0x5E4D;
const WAIT_MAX: Duration = Duration::from_secs(5);

/// A ring as a worker makes it: single issuer with deferred task work, or a plain one.
fn new_ring(production_flags: bool) -> IoUring {
    let mut builder = IoUring::builder();
    if production_flags {
        builder.setup_single_issuer().setup_defer_taskrun();
    }
    builder.build(64).expect("io_uring setup (needs Linux 6.1+)")
}

fn push(ring: &mut IoUring, entry: &squeue::Entry) {
    // SAFETY: every SQE these tests push refers to no memory, or to a buffer the test keeps
    // alive until it has reaped the SQE's completion.
    unsafe { ring.submission().push(entry) }.expect("the test never fills the SQ");
}

/// Submits, then waits up to `timeout` for one CQE. `Err` with ETIME means none came.
///
/// A wait can also end early with EINTR (a signal or pending task work, seen under load) or
/// EBUSY/EAGAIN; those are retried with what is left of `timeout`, as the worker loop does,
/// so only a real timeout fails a test.
fn wait_one(ring: &IoUring, timeout: Duration) -> io::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timespec = types::Timespec::from(left);
        match ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&timespec)) {
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) && !left.is_zero() =>
            {
                // SAFETY: only this thread reads this ring's completion queue here.
                if unsafe { ring.completion_shared() }.is_empty() {
                    continue;
                }
                return Ok(0);
            }
            other => return other,
        }
    }
}

/// Pushes `entry`, waits for its completion, returns (user_data, result).
fn run_one(ring: &mut IoUring, entry: &squeue::Entry) -> (u64, i32) {
    push(ring, entry);
    wait_one(ring, WAIT_MAX).expect("completion within 5 s");
    let cqe = ring.completion().next().expect("a completion after the wait");
    (cqe.user_data(), cqe.result())
}

fn socket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: socketpair succeeded, so both are open descriptors nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Reads what is there within 5 s (0 bytes = end of stream).
fn read_with_timeout(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, WAIT_MAX.as_millis() as i32) };
    assert_eq!(ready, 1, "nothing to read within 5 s");
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    let read = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(read).unwrap_or_else(|_| panic!("read: {}", io::Error::last_os_error()))
}

fn write_all(fd: &OwnedFd, bytes: &[u8]) {
    // SAFETY: `bytes` is valid for its length.
    let written = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(written, bytes.len() as isize, "write: {}", io::Error::last_os_error());
}

/// Waits (up to 5 s) until thread `tid` of this process sits in `io_uring_enter`, as
/// /proc/self/task/TID/syscall shows: proof that it blocked, not a guess from timing.
fn wait_until_blocked_in_io_uring_enter(tid: libc::pid_t) {
    let path = format!("/proc/self/task/{tid}/syscall");
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let syscall = std::fs::read_to_string(&path).expect("read /proc/self/task/TID/syscall");
        let number = syscall.split_whitespace().next().and_then(|word| word.parse::<i64>().ok());
        if number == Some(libc::SYS_io_uring_enter) {
            return;
        }
        assert!(Instant::now() < deadline, "thread {tid} never blocked: {syscall}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// (a) A ring blocked in `submit_and_wait` wakes on another ring's doorbell, with the
/// user_data we chose and res 0; the sender gets no CQE for a doorbell that worked.
#[test]
fn doorbell_wakes_a_ring_blocked_in_submit_and_wait() {
    for production_flags in [false, true] {
        let (fd_sender, fd_receiver) = mpsc::channel();
        let sleeper = thread::spawn(move || {
            let mut ring = new_ring(production_flags);
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            fd_sender.send((ring.as_raw_fd(), tid)).expect("main thread waits for the fd");
            wait_one(&ring, WAIT_MAX).expect("woken by the doorbell, not the 5 s timeout");
            let cqe = ring.completion().next().expect("the doorbell's completion");
            (cqe.user_data(), cqe.result())
        });
        let (target, tid) = fd_receiver.recv().expect("sleeper sends its ring fd");
        let mut ring = new_ring(false);
        wait_until_blocked_in_io_uring_enter(tid);
        push(&mut ring, &doorbell_sqe(target, DOORBELL, DOORBELL_FAILED));
        ring.submit().expect("submit the doorbell");
        let (user_data, result) = sleeper.join().expect("sleeper panicked");
        assert_eq!((user_data, result), (DOORBELL, 0), "production_flags={production_flags}");
        assert!(ring.completion().is_empty(), "a doorbell that worked posts no sender CQE");
    }
}

/// A doorbell aimed at something that is not a ring fails on the sender's side, with the
/// sender's user_data: the one case where `doorbell_sqe` produces a sender CQE.
#[test]
fn doorbell_to_a_non_ring_fd_fails_on_the_sender() {
    let (not_a_ring, _other) = socket_pair();
    let mut ring = new_ring(false);
    let (user_data, result) = run_one(&mut ring, &doorbell_sqe(not_a_ring.as_raw_fd(), 1, 2));
    assert_eq!(user_data, 2);
    assert_eq!(result, -libc::EBADFD);
}

/// (b) `send_fd_sqe` moves a socket registered in ring A's fixed table into a slot ring B
/// allocates; B's CQE carries our handoff key and the slot; after A closes its slot, B can
/// send and receive through `Fixed(slot)`, and A's slot is empty. Once B's ring is gone the
/// peer sees end of stream: no other reference to the socket was left behind.
#[test]
fn send_fd_moves_a_direct_descriptor_between_rings() {
    for production_flags in [false, true] {
        let (local, remote) = socket_pair();
        let mut source = new_ring(false);
        source.submitter().register_files_sparse(4).expect("sparse table on A");
        source.submitter().register_files_update(2, &[local.as_raw_fd()]).expect("slot 2");
        drop(local);
        let key = HandoffKeys::new(WorkerId(3)).next_key();

        let (fd_sender, fd_receiver) = mpsc::channel();
        let (go_sender, go_receiver) = mpsc::channel::<()>();
        let target = thread::spawn(move || {
            let mut ring = new_ring(production_flags);
            ring.submitter().register_files_sparse(4).expect("sparse table on B");
            fd_sender.send(ring.as_raw_fd()).expect("main thread waits for the fd");
            wait_one(&ring, WAIT_MAX).expect("the descriptor's CQE within 5 s");
            let cqe = ring.completion().next().expect("the descriptor's completion");
            let slot = u32::try_from(cqe.result()).expect("res is the slot B allocated");
            go_receiver.recv().expect("main closes A's slot, then says go");
            let ping = *b"ping";
            let send = opcode::Send::new(types::Fixed(slot), ping.as_ptr(), 4).build();
            let (_, sent) = run_one(&mut ring, &send.user_data(1));
            let mut buf = [0u8; 16];
            let recv = opcode::Recv::new(types::Fixed(slot), buf.as_mut_ptr(), 16).build();
            let (_, received) = run_one(&mut ring, &recv.user_data(2));
            let received = usize::try_from(received).expect("recv succeeded");
            (cqe.user_data(), slot, sent, buf[..received].to_vec())
        });
        let target_fd = fd_receiver.recv().expect("target sends its ring fd");
        let entry = send_fd_sqe(target_fd, 2, HANDOFF_TAG | key.to_bits(), SEND_FD_DONE);
        let (user_data, result) = run_one(&mut source, &entry);
        assert_eq!(user_data, SEND_FD_DONE);
        assert!(result >= 0, "send fd failed: {result}");
        let (_, closed) = run_one(&mut source, &opcode::Close::new(types::Fixed(2)).build());
        assert_eq!(closed, 0, "A closes its reference");
        let gone = opcode::Send::new(types::Fixed(2), b"x".as_ptr(), 1).build();
        assert_eq!(run_one(&mut source, &gone).1, -libc::EBADF, "A's slot is empty");
        go_sender.send(()).expect("target waits for go");

        let mut buf = [0u8; 16];
        let read = read_with_timeout(&remote, &mut buf);
        assert_eq!(&buf[..read], b"ping");
        write_all(&remote, b"pong");
        let (target_user_data, slot, sent, received) = target.join().expect("target panicked");
        assert_eq!(target_user_data & !HandoffKey::BITS_MASK, HANDOFF_TAG);
        assert_eq!(HandoffKey::from_bits(target_user_data), key);
        assert_eq!(slot, 0, "the first free slot of B's empty table");
        assert_eq!((sent, received.as_slice()), (4, &b"pong"[..]));
        assert_eq!(read_with_timeout(&remote, &mut buf), 0, "B's ring held the last reference");
    }
}

/// A target whose fixed table is full refuses the descriptor: the sender's CQE says ENFILE,
/// the target gets nothing, and the sender still owns a working connection.
#[test]
fn send_fd_to_a_full_table_fails_and_the_sender_keeps_the_socket() {
    let (local, remote) = socket_pair();
    let (filler, _filler_peer) = socket_pair();
    let mut source = new_ring(false);
    source.submitter().register_files_sparse(4).expect("sparse table on A");
    source.submitter().register_files_update(2, &[local.as_raw_fd()]).expect("slot 2");
    let target = new_ring(false);
    target.submitter().register_files_sparse(1).expect("one-slot table on B");
    target.submitter().register_files_update(0, &[filler.as_raw_fd()]).expect("fill it");

    let entry = send_fd_sqe(target.as_raw_fd(), 2, 7, SEND_FD_DONE);
    assert_eq!(run_one(&mut source, &entry), (SEND_FD_DONE, -libc::ENFILE));
    let waited = wait_one(&target, Duration::from_millis(100));
    assert_eq!(waited.map_err(|error| error.raw_os_error()), Err(Some(libc::ETIME)));
    let still_mine = opcode::Send::new(types::Fixed(2), b"mine".as_ptr(), 4).build();
    assert_eq!(run_one(&mut source, &still_mine).1, 4);
    let mut buf = [0u8; 8];
    let read = read_with_timeout(&remote, &mut buf);
    assert_eq!(&buf[..read], b"mine");
}

/// One worker thread of the stress test: a ring, a mesh end, and its counts.
struct TestWorker {
    ring: IoUring,
    end: MeshEnd<u64>,
    sleeps: u64,
    doorbells_received: u64,
}

impl TestWorker {
    fn start(end: MeshEnd<u64>, barrier: &Barrier) -> Self {
        let ring = new_ring(true);
        end.register_ring_fd(ring.as_raw_fd());
        barrier.wait();
        Self { ring, end, sleeps: 0, doorbells_received: 0 }
    }

    /// End of turn: flush the mesh, turning each doorbell into a MSG_RING SQE, and submit.
    fn flush(&mut self) {
        let ring = &mut self.ring;
        self.end.flush(|_, fd| push(ring, &doorbell_sqe(fd, DOORBELL, DOORBELL_FAILED)));
        self.ring.submit().expect("submit doorbells");
    }

    /// Blocks in the ring if the mesh says it may; a 5 s timeout means a lost wakeup.
    fn sleep_if_idle(&mut self) {
        if self.end.prepare_to_sleep() {
            self.sleeps += 1;
            if let Err(error) = wait_one(&self.ring, WAIT_MAX) {
                panic!("worker {:?} lost a wakeup ({error}): {:?}", self.end.worker(), self.end);
            }
        }
        self.end.woke();
        for cqe in self.ring.completion() {
            assert_eq!((cqe.user_data(), cqe.result()), (DOORBELL, 0), "only doorbells here");
            self.doorbells_received += 1;
        }
    }
}

/// Which side runs slow for a stretch of the sequence, so that both the consumer (idle
/// producer) and the producer (full ring, overflow at its bound) go to sleep many times.
#[derive(PartialEq)]
enum Phase {
    BothFast,
    ProducerSlow,
    ConsumerSlow,
}

fn phase_of(sequence: u64) -> Phase {
    match (sequence / 10_000) % 3 {
        0 => Phase::BothFast,
        1 => Phase::ProducerSlow,
        _ => Phase::ConsumerSlow,
    }
}

fn run_producer(end: MeshEnd<u64>, barrier: &Barrier, items: u64) -> TestWorker {
    let mut worker = TestWorker::start(end, barrier);
    let mut next = 0;
    while next < items || worker.end.overflow_len(WorkerId(0)) > 0 {
        if !worker.end.is_backpressured() {
            for _ in 0..1 + next % 40 {
                if next == items {
                    break;
                }
                let pressure = worker.end.push(WorkerId(0), next);
                next += 1;
                if pressure == Backpressure::On {
                    break;
                }
            }
        }
        worker.flush();
        if phase_of(next) == Phase::ProducerSlow {
            thread::sleep(Duration::from_micros(20));
        }
        // Sleep only with something to wait for (room for the overflow): this worker has no
        // other source of wakeups.
        let waiting = worker.end.overflow_len(WorkerId(0)) > 0;
        if waiting && (worker.end.is_backpressured() || next == items) {
            worker.sleep_if_idle();
        }
    }
    worker.flush();
    worker
}

fn run_consumer(end: MeshEnd<u64>, barrier: &Barrier, items: u64) -> TestWorker {
    let mut worker = TestWorker::start(end, barrier);
    let mut expected = 0;
    while expected < items {
        let got = worker.end.drain(64, |from, item| {
            assert_eq!((from, item), (WorkerId(1), expected), "FIFO, no loss, no duplicate");
            expected += 1;
        });
        worker.flush();
        if phase_of(expected) == Phase::ConsumerSlow {
            thread::sleep(Duration::from_micros(100));
        }
        if got == 0 {
            worker.sleep_if_idle();
        }
    }
    worker
}

/// (c) Two workers, each blocking in its own single-issuer ring, move 300,000 items through a
/// 64-slot ring with a 128-item overflow, through phases where either side is the slow one.
/// Every item arrives in order; no sleep lasts 5 s (a lost wakeup); both sides sleep many
/// times; and no doorbell is rung without a sleep attempt to answer (one per sleep, not per
/// push).
#[test]
fn wake_protocol_loses_no_wakeup_between_real_rings() {
    const ITEMS: u64 = 300_000;
    let mut ends = mesh::build::<u64>(2, MeshLimits { ring_depth: 64, overflow_max: 128 });
    let producer_end = ends.pop().expect("two ends");
    let consumer_end = ends.pop().expect("two ends");
    let barrier = Arc::new(Barrier::new(2));
    let started = Instant::now();
    let producer_barrier = barrier.clone();
    let producer = thread::spawn(move || {
        let worker = run_producer(producer_end, &producer_barrier, ITEMS);
        // Keep the ring open until the consumer is done: it may still ring this one.
        producer_barrier.wait();
        worker
    });
    let consumer_barrier = barrier.clone();
    let consumer = thread::spawn(move || {
        let worker = run_consumer(consumer_end, &consumer_barrier, ITEMS);
        consumer_barrier.wait();
        worker
    });
    let producer = producer.join().expect("producer panicked");
    let consumer = consumer.join().expect("consumer panicked");
    let elapsed = started.elapsed();
    let (sent, received) = (producer.end.stats(), consumer.end.stats());
    eprintln!(
        "mesh stress: {ITEMS} items in {elapsed:?}; consumer slept {} times, got {} doorbells; \
         producer slept {} times, got {} doorbells; producer {sent:?}; consumer {received:?}",
        consumer.sleeps, consumer.doorbells_received, producer.sleeps, producer.doorbells_received
    );
    assert_eq!(received.received, ITEMS);
    assert!(consumer.sleeps > 0 && producer.sleeps > 0, "both sides must have slept");
    assert!(sent.overflow_high_water >= 128, "the producer met its overflow bound");
    // A doorbell answers a sleep attempt (a set flag): never more doorbells than attempts.
    assert!(sent.doorbells_rung <= consumer.sleeps + received.sleeps_refused);
    assert!(received.doorbells_rung <= producer.sleeps + sent.sleeps_refused);
    assert!(consumer.doorbells_received <= sent.doorbells_rung);
    assert!(producer.doorbells_received <= received.doorbells_rung);
}

#[test]
fn handoff_key_round_trips_through_user_data_bits() {
    let key = HandoffKey { from: WorkerId(0xABCD), sequence: 0x1234_5678 };
    assert_eq!(key.to_bits() & !HandoffKey::BITS_MASK, 0, "the top 16 bits stay free");
    assert_eq!(HandoffKey::from_bits(key.to_bits() | HANDOFF_TAG), key);
    let mut keys = HandoffKeys::new(WorkerId(2));
    let (first, second) = (keys.next_key(), keys.next_key());
    assert_eq!((first.from, first.sequence, second.sequence), (WorkerId(2), 0, 1));
}

/// The pairing matches a descriptor with its record whichever comes first, and keeps
/// different handoffs apart.
#[test]
fn pairing_matches_in_either_order() {
    let mut pairing = HandoffPairing::new(8);
    let key = |from, sequence| HandoffKey { from: WorkerId(from), sequence };
    assert_eq!(pairing.on_slot(key(1, 0), 5), None);
    assert_eq!(pairing.on_record(key(2, 0), "record 2/0"), None);
    assert_eq!(pairing.pending(), 2);
    assert_eq!(pairing.on_record(key(1, 0), "record 1/0"), Some((5, "record 1/0")));
    assert_eq!(pairing.on_slot(key(2, 0), 9), Some((9, "record 2/0")));
    assert_eq!(pairing.pending(), 0);
    assert_eq!(pairing.on_slot(key(1, 1), 3), None);
    assert_eq!(pairing.take_unpaired_slots(), [3]);
    assert_eq!(pairing.pending(), 0);
}

#[test]
#[should_panic(expected = "delivered two descriptors")]
fn pairing_refuses_a_duplicate_descriptor() {
    let mut pairing = HandoffPairing::<()>::new(8);
    let key = HandoffKey { from: WorkerId(1), sequence: 0 };
    pairing.on_slot(key, 1);
    pairing.on_slot(key, 2);
}

#[test]
#[should_panic(expected = "handoffs pending")]
fn pairing_beyond_the_fixed_table_is_a_bug() {
    let mut pairing = HandoffPairing::new(1);
    pairing.on_record(HandoffKey { from: WorkerId(1), sequence: 0 }, ());
    pairing.on_record(HandoffKey { from: WorkerId(1), sequence: 1 }, ());
}
