//! The workers' link to the operations thread (`crate::ops`): statistics out, control
//! requests in.
//!
//! Statistics: each worker stores its counters into its own [`StatsBlock`] (see [`export`]) at
//! the end of a turn, at most every `EXPORT_PERIOD_MILLIS`; the HTTP thread only loads them.
//!
//! Control requests (the admin API's questions and commands): one bounded SPSC queue per worker
//! (producer: the one HTTP thread; consumer: the worker), `admin_queue_depth` deep. After
//! pushing, the HTTP thread writes the worker's wake-up eventfd, whose read the worker keeps
//! armed on its ring (the same one a stop uses): the read completes as an ordinary completion,
//! the worker notes that requests may be waiting and drains them in phase 3 of that turn. A
//! worker therefore looks at its control queue only on turns its wake-up fired, and never
//! polls. The answer goes back through a [`ReplySlot`] (a `OnceLock` the worker sets once and
//! the HTTP thread polls), so the worker never blocks on, or shares a lock with, the HTTP
//! thread. A full queue is refused to the caller (HTTP 503), never waited on.
//!
//! Ordering: the HTTP thread publishes the request before writing the eventfd; the worker's
//! wake-up read completes after that write and the drain runs after the completion, so a
//! request is never missed (a wake-up may find nothing: harmless).

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::export::{Exporter, Metric, StatsBlock};
use super::signals::Waker;
use super::spsc::{self, Consumer, Producer};
use super::worker::Worker;
use crate::broker::admin::{AdminAnswer, AdminProgress, AdminQuery, AdminScan};
use crate::broker::Millis;

/// Requests one worker takes per turn at most, so the admin API cannot starve the ring.
const CONTROL_REQUESTS_PER_TURN: usize = 16;
/// Session slots a worker scans per turn for listings (`broker::admin::AdminScan`): about a
/// tenth of a millisecond of work, so listing a million sessions never stalls a turn.
const SCAN_SLOTS_PER_TURN: usize = 4096;

/// Where a worker puts its answer; the HTTP thread polls it.
pub type ReplySlot = OnceLock<AdminAnswer>;

/// One question or command for one worker.
#[derive(Debug)]
pub struct ControlRequest {
    pub query: AdminQuery,
    pub reply: Arc<ReplySlot>,
}

/// The HTTP thread's end of one worker's control queue.
#[derive(Debug)]
pub struct ControlSender {
    producer: Producer<ControlRequest>,
    waker: Waker,
}

impl ControlSender {
    /// Queues `query` and wakes the worker; `None` when the queue is full.
    pub fn send(&mut self, query: AdminQuery) -> Option<Arc<ReplySlot>> {
        let reply = Arc::new(ReplySlot::new());
        let request = ControlRequest { query, reply: Arc::clone(&reply) };
        self.producer.push(request).ok()?;
        self.waker.wake();
        Some(reply)
    }
}

/// Everything the operations thread gets from a started runtime.
#[derive(Debug)]
pub struct OpsLink {
    /// One block per worker, index = worker id.
    pub blocks: Vec<Arc<StatsBlock>>,
    /// One control queue per worker, index = worker id.
    pub control: Vec<ControlSender>,
    /// The runtime's clock zero (every `Millis` counts from it) and the wall time then.
    pub epoch: Instant,
    pub epoch_wall: std::time::SystemTime,
}

/// A worker's side, given to it at start.
#[derive(Debug)]
pub struct WorkerOps {
    pub block: Arc<StatsBlock>,
    pub control: Consumer<ControlRequest>,
}

impl WorkerOps {
    /// Listings in progress a worker holds at most: as many as its queue holds requests.
    fn scans_max(&self) -> usize {
        self.control.capacity()
    }
}

/// Builds both sides for `workers` workers with control queues `queue_depth` deep.
pub fn build(workers: usize, queue_depth: usize, wakers: Vec<Waker>) -> (OpsLink, Vec<WorkerOps>) {
    assert_eq!(wakers.len(), workers, "one waker per worker");
    let mut link = OpsLink {
        blocks: Vec::with_capacity(workers),
        control: Vec::with_capacity(workers),
        epoch: Instant::now(),
        epoch_wall: std::time::SystemTime::now(),
    };
    let mut sides = Vec::with_capacity(workers);
    for waker in wakers {
        let block = Arc::new(StatsBlock::default());
        let (producer, control) = spsc::channel(queue_depth.max(1).next_power_of_two());
        link.blocks.push(Arc::clone(&block));
        link.control.push(ControlSender { producer, waker });
        sides.push(WorkerOps { block, control });
    }
    (link, sides)
}

/// The worker's state for this link.
#[derive(Debug)]
pub struct OpsState {
    pub exporter: Exporter,
    control: Consumer<ControlRequest>,
    /// The wake-up read completed: requests may be waiting.
    pub control_due: bool,
    /// Listings in progress, oldest first, at most `scans_max`; each turn advances the oldest.
    scans: VecDeque<(AdminScan, Arc<ReplySlot>)>,
    scans_max: usize,
    requests_answered: u64,
}

impl OpsState {
    pub fn new(ops: WorkerOps) -> Self {
        let scans_max = ops.scans_max();
        Self {
            exporter: Exporter::new(ops.block),
            control: ops.control,
            control_due: false,
            scans: VecDeque::with_capacity(scans_max),
            scans_max,
            requests_answered: 0,
        }
    }

    /// A listing is in progress: the worker must not sleep.
    pub fn scanning(&self) -> bool {
        !self.scans.is_empty()
    }
}

impl Worker {
    /// Phase 3: advances the oldest listing by one slice and, when the wake-up fired, takes
    /// waiting control requests (as many as there is room for listings).
    pub(super) fn drain_control(&mut self, now: Millis) {
        self.advance_scan();
        if !std::mem::take(&mut self.ops.control_due) {
            return;
        }
        let room = self.ops.scans_max - self.ops.scans.len();
        let mut requests = Vec::new();
        self.ops.control.drain(CONTROL_REQUESTS_PER_TURN.min(room), |r| requests.push(r));
        if !self.ops.control.is_empty() {
            // Over this turn's budget, or no room for listings: look again next turn.
            self.ops.control_due = true;
        }
        for request in requests {
            match self.broker.handle_admin(request.query, now) {
                AdminProgress::Done(answer) => {
                    self.apply_actions(now);
                    self.answer(&request.reply, answer);
                }
                AdminProgress::Scanning(scan) => self.ops.scans.push_back((scan, request.reply)),
            }
        }
    }

    fn advance_scan(&mut self) {
        let Some((scan, reply)) = self.ops.scans.front_mut() else { return };
        if let Some(answer) = self.broker.admin_scan(scan, SCAN_SLOTS_PER_TURN) {
            let reply = Arc::clone(reply);
            self.ops.scans.pop_front();
            self.answer(&reply, answer);
        }
    }

    fn answer(&mut self, reply: &ReplySlot, answer: AdminAnswer) {
        // Only this worker sets the slot, once.
        let _ = reply.set(answer);
        self.ops.requests_answered += 1;
    }

    /// End of a turn: account its time and export if due.
    pub(super) fn end_turn(&mut self, turn_started: Instant, now: Millis) {
        let activity = self.activity();
        if self.ops.exporter.end_turn(turn_started.elapsed(), activity, now) {
            self.export_stats();
            self.ops.exporter.finish_export(activity, now);
        }
    }

    fn activity(&self) -> (u64, u64) {
        let mesh_received = self.peers.stats().map_or(0, |stats| stats.received);
        (self.ring.counters.completions, mesh_received)
    }

    /// Stores every counter into this worker's block (`Relaxed` stores only).
    fn export_stats(&self) {
        let block = &self.ops.exporter.block;
        let broker = self.broker.stats();
        let gauges = [
            (Metric::Connections, self.conns.live() as u64),
            (Metric::SlabSlots, self.conns.slots() as u64),
            (Metric::ClientsConnected, broker.clients_connected),
            (Metric::Sessions, self.broker.session_count() as u64),
            (Metric::Subscriptions, self.broker.subscription_count() as u64),
            (Metric::Retained, self.broker.retained_count() as u64),
            (Metric::Inflight, broker.inflight_messages),
            (Metric::Queued, broker.queued_messages),
        ];
        let closes = &broker.closes;
        let broker_counters = [
            (Metric::ClosedDisconnect, closes.client_disconnect),
            (Metric::ClosedProtocolError, closes.protocol_error),
            (Metric::ClosedViolation, closes.protocol_violation),
            (Metric::ClosedRefused, closes.connect_refused),
            (Metric::ClosedKeepalive, closes.keepalive_timeout),
            (Metric::ClosedConnectTimeout, closes.connect_timeout),
            (Metric::ClosedTakenOver, closes.taken_over),
            (Metric::ClosedSlow, closes.slow_consumer),
            (Metric::ClosedShutdown, closes.shutdown),
            (Metric::ClosedKicked, closes.kicked),
            (Metric::ClosedRevoked, closes.credentials_revoked),
            (Metric::ClosedPeer, closes.peer_closed),
            (Metric::ConnectsRefused, broker.connects_refused),
            (Metric::AuthFailures, broker.connects_refused_auth),
            (Metric::ReceivedQos0, broker.messages_received_by_qos[0]),
            (Metric::ReceivedQos1, broker.messages_received_by_qos[1]),
            (Metric::ReceivedQos2, broker.messages_received_by_qos[2]),
            (Metric::SentQos0, broker.messages_sent_by_qos[0]),
            (Metric::SentQos1, broker.messages_sent_by_qos[1]),
            (Metric::SentQos2, broker.messages_sent_by_qos[2]),
            (Metric::BytesReceived, broker.bytes_received),
            (Metric::BytesSent, self.counters.sent_bytes),
            (Metric::DroppedOutbuf, broker.qos0_dropped_outbuf),
            (Metric::DroppedQueue, broker.messages_dropped_queue_full),
            (Metric::SessionsRefused, broker.sessions_refused_full),
            (Metric::SessionsExpired, broker.sessions_expired),
            (Metric::SubscriptionsRefused, broker.subscriptions_refused),
            (Metric::RetainedRefused, broker.retained_refused_full),
            (Metric::RetainedExpired, broker.retained_expired),
            (Metric::Wills, broker.wills_published),
            (Metric::Handoffs, broker.handoffs),
        ];
        for (metric, value) in gauges.into_iter().chain(broker_counters) {
            block.set(metric, value);
        }
        self.export_runtime_counters(block);
    }

    fn export_runtime_counters(&self, block: &StatsBlock) {
        let counters = &self.counters;
        let ring = &self.ring_counters();
        let mesh = self.peers.stats().unwrap_or_default();
        let values = [
            (Metric::Accepted, counters.accepted),
            (Metric::Closed, counters.closed),
            (Metric::RefusedMax, counters.refused_max_connections),
            (Metric::DecodeErrors, counters.decode_errors),
            (Metric::RecvNoBuffers, counters.recv_no_buffers),
            (Metric::FirstRecvNoBuffers, counters.first_recv_no_buffers),
            (Metric::FirstRecvWaits, counters.first_recv_waits),
            (Metric::StarvedRearms, counters.starved_rearms),
            (Metric::StarvedRefused, counters.starved_refused),
            (Metric::StarvedEmpty, counters.starved_empty),
            (Metric::StarvedServed, counters.starved_served),
            (Metric::StarvedWait, counters.starved_wait_millis.saturating_mul(1_000_000)),
            (Metric::StarvedWaitMax, counters.starved_wait_max_millis.saturating_mul(1_000_000)),
            (Metric::ReadsPaused, counters.reads_paused),
            (Metric::LingerExpired, counters.linger_expired),
            (Metric::Turns, ring.turns),
            (Metric::Completions, ring.completions),
            (Metric::SqFull, ring.sq_full_flushes),
            (Metric::CqOverflow, ring.cq_overflow_turns),
            (Metric::MeshPushed, mesh.pushed),
            (Metric::MeshReceived, mesh.received),
            (Metric::MeshOverflowed, mesh.overflowed),
            (Metric::MeshOverflowHighWater, mesh.overflow_high_water as u64),
            (Metric::MeshDoorbells, mesh.doorbells_rung),
            (Metric::AdminRequests, self.ops.requests_answered),
        ];
        for (metric, value) in values {
            block.set(metric, value);
        }
    }
}

/// Lowers the calling thread's scheduling priority to nice 10, for the operations threads:
/// under CFS a nice-10 thread weighs about a tenth of a nice-0 worker, so a scrape or an admin
/// request competing for a worker's core takes little from it. Failing is harmless (logged).
pub fn lower_thread_priority() {
    // SAFETY: gettid and setpriority take no memory arguments. On Linux the nice value is
    // per thread, and PRIO_PROCESS with a thread id sets that thread's.
    let result = unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 10)
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the priority");
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::os::fd::RawFd;

    use super::*;
    use crate::runtime::signals::Stopper;

    fn wake_ups(fd: RawFd) -> u64 {
        let mut value = 0u64;
        // SAFETY: reads at most 8 bytes into a live u64; the eventfd is non-blocking.
        let read = unsafe { libc::read(fd, (&raw mut value).cast(), 8) };
        if read == 8 {
            value
        } else {
            0
        }
    }

    #[test]
    fn a_full_control_queue_refuses_and_every_request_rings_the_worker() {
        let stopper = Stopper::new(1).expect("an eventfd");
        let watch = stopper.watch(0);
        let (mut link, mut sides) = build(1, 2, vec![stopper.waker(0)]);
        let query = AdminQuery::Kick { client_id: "a".to_owned() };
        assert!(link.control[0].send(query.clone()).is_some());
        assert!(link.control[0].send(query.clone()).is_some());
        assert!(link.control[0].send(query.clone()).is_none(), "depth 2: the third is refused");
        assert_eq!(wake_ups(watch.fd()), 2, "the refused request rang no bell");
        assert!(!watch.requested(), "a wake-up is not a stop");
        let mut drained = Vec::new();
        sides[0].control.drain(16, |request| drained.push(request));
        assert_eq!(drained.len(), 2);
        let _ = drained[0].reply.set(AdminAnswer::Done(true));
        assert!(link.control[0].send(query).is_some(), "room again once the worker drained");
    }
}
