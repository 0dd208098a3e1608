//! One worker: a pinned thread running one ring loop over its own connections and broker.
//!
//! Each turn has four bounded phases (house style rule 7):
//! 1. submit everything queued and wait for a completion or the next deadline — one
//!    `io_uring_enter`, with a zero wait when work is already known to be ready;
//! 2. copy every completion out (at most the CQ's size) and dispatch each ([`super::events`]);
//! 3. drain the cross-core inboxes ([`super::peers`]), up to a budget;
//! 4. let the broker act: deadlines (`handle_tick`), its actions ([`super::output`]), and one
//!    `sendmsg` per connection with output.
//!
//! Invariants: the thread is pinned before it allocates any of this state; nothing here is
//! shared with another worker but the global connection count and the stop flag.

use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use super::bufring::{
    BufRing, FIRST_RECV_BUFFER_BYTES, FIRST_RECV_GROUP, RECV_GROUP, STARVED_RECV_BUFFER_BYTES,
    STARVED_RECV_GROUP,
};
use super::config::RuntimeConfig;
use super::conn::ConnTable;
use super::journal::Journal;
use super::mesh::MeshEnd;
use super::ops_link::{OpsState, WorkerOps};
use super::peers::{Inbound, MeshItem, Peers};
use super::send::SendPool;
use super::signals::StopWatch;
use super::uring::{Completion, Ring, RingCounters};
use super::user_data::{Op, UserData};
use crate::broker::{Broker, BrokerConfig, ConnId, Millis, WorkerId};
use crate::transport::{LayerFactory, Layered, ListenerKind, Transports};

/// Inbound cross-worker messages handled per turn, so one busy peer cannot starve the ring.
const PEER_MESSAGES_PER_TURN: usize = 4096;
/// After an unexpected accept failure (e.g. ENOMEM), how long before accepting again.
pub(super) const ACCEPT_RETRY_MILLIS: u64 = 100;
/// SendOp boxes kept for reuse.
const SEND_OPS_KEPT: usize = 1024;
/// After a stop, how long connections get to flush before their sends are cancelled, and
/// when the worker gives up waiting for the kernel altogether.
const STOP_FLUSH_MILLIS: u64 = 300;
const STOP_ABANDON_MILLIS: u64 = 800;

/// Layered connections' state by slot (slots are small integers the kernel picks).
pub(super) type LayerMap = hashbrown::HashMap<u32, Box<Layered>, foldhash::fast::FixedState>;

/// Everything a worker is started with.
#[derive(Debug)]
pub struct WorkerSetup {
    pub index: u16,
    pub workers: u16,
    pub cpu: Option<usize>,
    pub config: RuntimeConfig,
    pub broker: BrokerConfig,
    pub listeners: Vec<OwnedFd>,
    /// What each of `listeners` speaks, in the same order.
    pub listener_kinds: Vec<ListenerKind>,
    /// The TLS configuration and WebSocket path layered connections are made from.
    pub transports: Arc<Transports>,
    pub stop: StopWatch,
    /// Connections open in the whole process (for `max_connections`).
    pub connections: Arc<AtomicUsize>,
    /// The shared zero of every worker's `Millis`.
    pub epoch: Instant,
    /// This worker's end of the mesh; `None` when it is the only worker.
    pub mesh: Option<MeshEnd<MeshItem>>,
    /// Persistence: the recovered state and where to write; `None` when it is off.
    pub journal: Option<super::journal::JournalSetup>,
    /// The password and ACL tables loaded at start-up (replaced by reloads).
    pub auth: Arc<crate::auth::AuthTables>,
    /// The failed-login limiter every worker shares (`verify::shared_failure_limiter`).
    pub failure_limiter: Arc<crate::auth::FailureLimiter>,
    /// The password verifiers' queue; `None`: verify inline (`verify.rs`).
    pub verifier: Option<std::sync::mpsc::SyncSender<super::verify::Job>>,
    /// Its statistics block and control queue (`ops_link`).
    pub ops: WorkerOps,
}

/// Counters, not log lines, per event on the message path; logged when the worker stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    pub accepted: u64,
    /// Accepted beyond `max_connections` and closed at once.
    pub refused_max_connections: u64,
    /// Times every file table was full (ENFILE, no ring may be added) and accepting paused.
    pub accept_paused_table_full: u64,
    /// Times a ring's table refused an accept (ENFILE: that one connection is lost) and
    /// accepting moved to another ring (`rings.rs`).
    pub accept_moved_table_full: u64,
    /// Accept failures other than a full table (each retried after `ACCEPT_RETRY_MILLIS`).
    pub accept_errors: u64,
    pub closed: u64,
    pub stale_completions: u64,
    pub recv_no_buffers: u64,
    /// Receives re-armed from the starved queue (after an ENOBUFS), and those of them that
    /// found no buffer again (listed again).
    pub starved_rearms: u64,
    pub starved_refused: u64,
    /// Starved receives that found no bytes (EAGAIN: their multishot receive had ended
    /// ENOBUFS on an empty socket, which the kernel does when no buffer is there at arming).
    pub starved_empty: u64,
    /// Starved connections served (their re-armed receive brought bytes), the milliseconds
    /// they waited from their first ENOBUFS, summed, and the longest wait.
    pub starved_served: u64,
    pub starved_wait_millis: u64,
    pub starved_wait_max_millis: u64,
    /// First receives (before a CONNECT) that found the ring's first-receive buffers empty:
    /// listed again at the head of the first-receive queue.
    pub first_recv_no_buffers: u64,
    /// First receives left waiting at the end of a turn's phase 4, summed over turns (a
    /// connection that waited three turns counts three): beyond `first_recv_buffers` per ring
    /// per turn, first receives wait for a later turn, oldest first.
    pub first_recv_waits: u64,
    pub recv_completions: u64,
    pub recv_bytes: u64,
    pub packets_decoded: u64,
    pub decode_errors: u64,
    pub sends: u64,
    /// Sends the kernel completed with fewer bytes than they covered.
    pub partial_sends: u64,
    pub sent_bytes: u64,
    pub send_errors: u64,
    /// Closing connections whose output did not leave within the linger time.
    pub linger_expired: u64,
    /// Connections moved to their session's home worker, and those that could not be (the
    /// target's table was full: closed).
    pub handoffs_out: u64,
    pub handoff_failures: u64,
    /// Descriptor sends refused by a full target ring and sent again a turn later.
    pub handoff_retries: u64,
    /// Connections adopted from another worker.
    pub handoffs_in: u64,
    /// Receives paused: the turn's decode budget was spent, or the mesh was backpressured.
    pub reads_paused: u64,
    /// CONNECTs whose password went to a verifier thread, and those refused 0x03 because
    /// the verifiers' queue was full.
    pub verifications_queued: u64,
    pub verify_queue_full: u64,
    /// TLS / WebSocket connections ended by their transport (a failed handshake, a bad
    /// frame, an untrusted certificate).
    pub transport_errors: u64,
    /// Its rings' counters summed (turns, completions, SQ flushes, CQ overflows: a turn on
    /// which two rings overflowed counts two), as of the stop.
    pub ring: RingCounters,
    /// Rings the worker had set up by the stop, and attempts that failed (`rings.rs`).
    pub rings: usize,
    pub ring_setup_failures: u64,
}

/// One multishot-accepting listener.
#[derive(Debug)]
pub(super) struct Listener {
    pub fd: OwnedFd,
    pub kind: ListenerKind,
    pub armed: bool,
    /// The ring its accept is armed on (accepted descriptors land in that ring's table).
    pub ring: u16,
    /// An IPv6 socket: its peers' addresses are `sockaddr_in6` (`peer_name.rs`).
    pub ipv6: bool,
}

/// A worker's whole state. Memory the kernel writes into (the receive buffers, the wake-up
/// word) is released by `Drop` only once the kernel can no longer write there.
#[derive(Debug)]
pub struct Worker {
    pub(super) ring: Ring,
    pub(super) buffers: ManuallyDrop<BufRing>,
    /// The first ring's first-receive buffers (`bufring::FIRST_RECV_GROUP`).
    pub(super) first_buffers: ManuallyDrop<BufRing>,
    /// The first ring's starved-receive buffers (`bufring::STARVED_RECV_GROUP`).
    pub(super) starved_buffers: ManuallyDrop<BufRing>,
    pub(super) wake_word: ManuallyDrop<Box<u64>>,
    pub(super) wake_armed: bool,
    /// The rings beyond `ring`, and which ring takes new connections (`rings.rs`).
    pub(super) rings: super::rings::Rings,
    pub(super) conns: ConnTable,
    pub(super) broker: Broker,
    pub(super) peers: Peers,
    pub(super) listeners: Vec<Listener>,
    pub(super) sends: SendPool,
    /// TLS / WebSocket state of the layered connections, by slot (`Conn::layered`).
    pub(super) layers: LayerMap,
    pub(super) layer_factory: LayerFactory,
    /// The broker's output for a layered connection, on its way through the layers.
    pub(super) mqtt_scratch: Vec<bytes::Bytes>,
    /// The layers' wire output, on its way into the connection's send op.
    pub(super) wire_scratch: Vec<bytes::Bytes>,
    /// Slots with output to start this turn, each at most once (`Conn::flush_listed`).
    pub(super) flush: Vec<u32>,
    /// Closing connections with output still leaving, oldest first, by linger deadline.
    pub(super) lingering: VecDeque<(Millis, ConnId)>,
    pub(super) completions: Vec<Completion>,
    /// Connections whose multishot receive ended with ENOBUFS (bytes waiting), oldest first,
    /// each to read them with a starved receive (`arm_starved_recv`), at most as many per ring
    /// at once as it has starved-receive buffers. At most one entry per slot: a connection
    /// is listed only when its receive is not armed (`Conn::recv_listed`).
    pub(super) starved: VecDeque<ConnId>,
    /// When each starved connection (by slot) first found no buffer, until it is served or
    /// closed: at most one entry per slot.
    pub(super) starved_since: hashbrown::HashMap<u32, Millis, foldhash::fast::FixedState>,
    /// Per ring, how many listed receives this turn may still arm (kept for its allocation).
    pub(super) recv_budgets: Vec<u16>,
    /// Connections waiting for a first receive (no CONNECT yet), oldest first: new ones, and
    /// those whose first receive found no buffer (at the head). Armed in phase 4, before any
    /// starved receive, at most `first_recv_buffers` per ring per turn. At most one entry per
    /// slot (`Conn::recv_listed`).
    pub(super) first_recvs: VecDeque<ConnId>,
    /// Those of `first_recvs` or `starved` a turn looked at and could not arm yet (kept for
    /// its allocation).
    pub(super) recvs_waiting: Vec<ConnId>,
    /// Connections whose reading is paused (`Conn::paused`), oldest first, each once.
    pub(super) paused: VecDeque<ConnId>,
    /// Packets this turn may still decode (`turn_packets_max` at the start of each turn).
    pub(super) decode_budget: usize,
    /// Handed-off connections complete this turn, adopted after the drain.
    pub(super) adoptions: Vec<(u32, super::peers::HandoffRecord)>,
    /// Handing-off connections whose descriptor a full target ring refused, to send again.
    pub(super) handoff_retries: Vec<ConnId>,
    /// Accepting paused: the file table is full (until a slot frees).
    pub(super) accept_paused: bool,
    /// After an unexpected accept error, when to try again (never a tight retry loop).
    pub(super) accept_retry_at: Option<Millis>,
    pub(super) stop: StopWatch,
    /// Peer-address requests in flight (`peer_name.rs`).
    pub(super) peer_names: super::peer_name::PeerNames,
    /// The password verifiers' queue, and the CONNECTs waiting for a verdict (`verify.rs`).
    pub(super) verifier: Option<std::sync::mpsc::SyncSender<super::verify::Job>>,
    pub(super) verifying: std::collections::HashMap<ConnId, Box<crate::protocol::Connect>>,
    /// Set when a stop was seen: (flush deadline, abandon deadline).
    pub(super) stopping: Option<(Millis, Millis)>,
    pub(super) connections: Arc<AtomicUsize>,
    pub(super) config: RuntimeConfig,
    pub(super) epoch: Instant,
    pub(super) index: u16,
    /// The persistence journal's writer; `None` when persistence is off.
    pub(super) journal: Option<super::journal::Journal>,
    pub counters: WorkerCounters,
    /// Statistics export and admin requests (`ops_link`).
    pub(super) ops: OpsState,
}

/// The CQ holds a turn's completions without overflowing in the common worst case: a receive
/// and a send completion for every slot of the file table (at least twice the SQ; at most the
/// kernel's 65536, beyond which overflowed completions wait in the kernel, counted).
pub(super) fn completion_entries(config: &RuntimeConfig) -> u32 {
    let per_slot =
        config.file_table_slots.saturating_mul(2).checked_next_power_of_two().unwrap_or(1 << 16);
    per_slot.clamp(config.ring_entries.saturating_mul(2), 1 << 16)
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes inside it (cpu is
    // checked against its size), and sched_setaffinity reads `size_of` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert!(cpu < 8 * std::mem::size_of::<libc::cpu_set_t>(), "cpu {cpu} beyond cpu_set_t");
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Worker {
    /// Builds the worker on the calling thread (already pinned): ring, tables, buffers, broker.
    pub fn new(setup: WorkerSetup) -> anyhow::Result<Self> {
        assert_eq!(setup.listeners.len(), setup.listener_kinds.len(), "a listener without a kind");
        let config = setup.config;
        let ring = Ring::new(config.ring_entries, completion_entries(&config))?;
        ring.submitter().register_files_sparse(config.file_table_slots).map_err(|error| {
            anyhow::anyhow!("registering {} direct descriptors: {error}", config.file_table_slots)
        })?;
        let buffers = BufRing::new(config.recv_buffers, config.recv_buffer_bytes, RECV_GROUP)?;
        buffers.register(&ring.submitter())?;
        let first_buffers =
            BufRing::new(config.first_recv_buffers, FIRST_RECV_BUFFER_BYTES, FIRST_RECV_GROUP)?;
        first_buffers.register(&ring.submitter())?;
        let starved_buffers = BufRing::new(
            config.starved_recv_buffers,
            STARVED_RECV_BUFFER_BYTES,
            STARVED_RECV_GROUP,
        )?;
        starved_buffers.register(&ring.submitter())?;
        let me = WorkerId(setup.index);
        let epoch = setup.epoch;
        let now = Millis(u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX));
        let slots = config.file_table_slots as usize;
        let rings = super::rings::Rings::new(config.rings_per_worker_max, config.file_table_slots)?;
        let cq_entries = ring.cq_entries() as usize;
        let mut broker = Broker::new(setup.broker, me, setup.workers, now);
        broker.set_auth(setup.auth);
        broker.share_failure_limiter(setup.failure_limiter);
        let peers = match setup.mesh {
            Some(mesh) => Peers::meshed(
                mesh,
                config.file_table_slots.saturating_mul(u32::from(config.rings_per_worker_max)),
            ),
            None => Peers::solo(me),
        };
        peers.register_ring_fd(ring.fd());
        let journal = match setup.journal {
            Some(journal) => Some(Journal::start(&mut broker, journal, setup.index, now)?),
            None => None,
        };
        let mut worker = Self {
            ring,
            buffers: ManuallyDrop::new(buffers),
            first_buffers: ManuallyDrop::new(first_buffers),
            starved_buffers: ManuallyDrop::new(starved_buffers),
            wake_word: ManuallyDrop::new(Box::new(0)),
            wake_armed: false,
            rings,
            conns: ConnTable::new(config.file_table_slots),
            broker,
            peers,
            listeners: setup
                .listeners
                .into_iter()
                .zip(setup.listener_kinds)
                .map(|(fd, kind)| {
                    let ipv6 = super::peer_name::listener_is_ipv6(fd.as_fd());
                    Listener { fd, kind, armed: false, ring: 0, ipv6 }
                })
                .collect(),
            sends: SendPool::new(SEND_OPS_KEPT),
            layers: LayerMap::default(),
            layer_factory: LayerFactory::new(setup.transports),
            mqtt_scratch: Vec::new(),
            wire_scratch: Vec::new(),
            flush: Vec::with_capacity(slots),
            lingering: VecDeque::with_capacity(2 * slots),
            completions: Vec::with_capacity(cq_entries),
            starved: VecDeque::with_capacity(slots),
            starved_since: Default::default(),
            recv_budgets: Vec::new(),
            first_recvs: VecDeque::with_capacity(slots),
            recvs_waiting: Vec::new(),
            paused: VecDeque::with_capacity(slots),
            decode_budget: 0,
            adoptions: Vec::new(),
            handoff_retries: Vec::new(),
            accept_paused: false,
            accept_retry_at: None,
            stop: setup.stop,
            peer_names: super::peer_name::PeerNames::default(),
            verifier: setup.verifier,
            verifying: std::collections::HashMap::new(),
            stopping: None,
            connections: setup.connections,
            config,
            epoch,
            index: setup.index,
            journal,
            counters: WorkerCounters::default(),
            ops: OpsState::new(setup.ops),
        };
        // Rings planned ahead are set up now, while memory is plentiful (`rings.rs`).
        let start = worker.config.rings_per_worker_start.min(worker.config.rings_per_worker_max);
        for _ in 1..start {
            worker.add_ring().map_err(|error| anyhow::anyhow!("setting up a ring: {error}"))?;
        }
        Ok(worker)
    }

    pub fn now(&self) -> Millis {
        self.millis_at(Instant::now())
    }

    fn millis_at(&self, instant: Instant) -> Millis {
        let since = instant.saturating_duration_since(self.epoch);
        Millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// Runs the loop until a stop has been carried out.
    pub fn run(&mut self) -> anyhow::Result<()> {
        tracing::info!(
            worker = self.index,
            listeners = self.listeners.len(),
            file_table_slots = self.config.file_table_slots,
            sq_entries = self.ring.sq_entries(),
            cq_entries = self.ring.cq_entries(),
            recv_buffers = self.config.recv_buffers,
            recv_buffer_bytes = self.config.recv_buffer_bytes,
            taskrun = ?self.ring.mode(),
            "worker started: multishot accept into direct descriptors, multishot recv with a provided-buffer ring"
        );
        self.arm_wake();
        self.arm_accepts();
        loop {
            let mut timeout = self.wait_timeout(self.now());
            // The mesh's wake protocol: announce the sleep, and do not sleep if a peer's item
            // (or room for our overflow) is already there.
            if timeout != Some(Duration::ZERO) && !self.peers.prepare_to_sleep() {
                timeout = Some(Duration::ZERO);
            }
            self.submit_further_rings()?;
            let waited = self.ring.submit_and_wait(timeout);
            self.peers.woke();
            waited?;
            let turn_started = Instant::now();
            let now = self.millis_at(turn_started);
            self.dispatch_completions(now);
            self.drain_peers(now);
            self.produce_output(now);
            self.end_turn(turn_started, now);
            if self.finished(now) {
                break;
            }
        }
        self.log_stopped();
        Ok(())
    }

    /// Phase 2: copy the CQ out, then dispatch: first the input paused last turn, then each
    /// completion.
    fn dispatch_completions(&mut self, now: Millis) {
        self.decode_budget = self.config.turn_packets_max;
        self.resume_paused(now);
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.reap(&mut completions);
        self.reap_further_rings(&mut completions);
        for completion in completions.drain(..) {
            self.dispatch(completion, now);
        }
        self.completions = completions;
    }

    /// Phase 3: messages and handed-off connections from the other workers.
    fn drain_peers(&mut self, now: Millis) {
        let broker = &mut self.broker;
        let adoptions = &mut self.adoptions;
        self.peers.drain(PEER_MESSAGES_PER_TURN, |inbound| match inbound {
            Inbound::Remote(from, msg) => broker.handle_remote(from, msg, now),
            Inbound::Adopt(slot, record) => adoptions.push((slot, record)),
        });
        let mut adoptions = std::mem::take(&mut self.adoptions);
        for (slot, record) in adoptions.drain(..) {
            self.adopt(slot, record, now);
        }
        self.adoptions = adoptions;
        self.drain_control(now);
    }

    /// Phase 4: deadlines, the broker's actions, and the sends they call for.
    fn produce_output(&mut self, now: Millis) {
        if self.broker.next_deadline().is_some_and(|deadline| deadline <= now) {
            self.broker.handle_tick(now);
        }
        self.journal_turn(now);
        self.apply_actions(now);
        self.arm_listed(Listed::First);
        self.arm_listed(Listed::Starved);
        self.retry_refused_handoffs();
        self.expire_lingering(now);
        if self.accept_retry_at.is_some_and(|at| at <= now) {
            self.accept_retry_at = None;
            if !self.accept_paused && self.stopping.is_none() {
                self.arm_accepts();
            }
        }
        if let Some((flush_deadline, _)) = self.stopping {
            if now >= flush_deadline {
                self.abandon_output();
            }
        }
        self.start_sends();
        self.ring_doorbells();
    }

    /// Arms the listed receives of one queue, oldest first, on each ring no more than its
    /// budget for the turn; the rest keep their order for a later turn.
    ///
    /// First receives (`Listed::First`, before any starved receive, so a CONNECT's receive goes
    /// ahead of established connections'): at most `first_recv_buffers` per ring per turn.
    /// Only first receives draw from those buffers, and every one a completion took is back
    /// by now, so each armed here finds one unless a receive armed earlier took it meanwhile
    /// (then ENOBUFS lists it again, at the head). Those left are counted
    /// (`first_recv_waits`).
    ///
    /// Starved receives (`Listed::Starved`): at most the ring's unreserved starved-receive
    /// buffers, so each finds one (`arm_starved_recv`); a starved receive is single-shot and
    /// has bytes waiting, so it completes at the submit and its reservation is back by the
    /// next turn. A queue position p thus waits about p / `starved_recv_buffers` turns.
    fn arm_listed(&mut self, which: Listed) {
        let queue_len = match which {
            Listed::First => self.first_recvs.len(),
            Listed::Starved => self.starved.len(),
        };
        if queue_len == 0 {
            return;
        }
        let mut budgets = std::mem::take(&mut self.recv_budgets);
        budgets.clear();
        for ring in 0..self.conns.rings() {
            budgets.push(match which {
                Listed::First => self.config.first_recv_buffers,
                Listed::Starved => self.recv_buffers(ring, Op::StarvedRecv).unreserved(),
            });
        }
        let mut spent_rings = budgets.iter().filter(|budget| **budget == 0).count();
        let mut waiting = std::mem::take(&mut self.recvs_waiting);
        // Once every ring's budget is spent the rest of the queue stays as it is.
        while spent_rings < budgets.len() {
            let queue = match which {
                Listed::First => &mut self.first_recvs,
                Listed::Starved => &mut self.starved,
            };
            let Some(id) = queue.pop_front() else { break };
            if self.conns.get_mut(id).is_none() {
                continue;
            }
            let ring = self.conns.ring_of(id.slot());
            if budgets[ring] == 0 {
                waiting.push(id);
                continue;
            }
            let conn = self.conns.slot_mut(id.slot());
            conn.recv_listed = false;
            if !receivable(conn) {
                // Paused: resumed later; closing: no more receives.
                self.starved_since.remove(&id.slot());
                continue;
            }
            budgets[ring] -= 1;
            spent_rings += usize::from(budgets[ring] == 0);
            match which {
                Listed::First => self.arm_first_recv(id.slot()),
                Listed::Starved => {
                    self.counters.starved_rearms += 1;
                    self.arm_starved_recv(id.slot());
                }
            }
        }
        let queue = match which {
            Listed::First => &mut self.first_recvs,
            Listed::Starved => &mut self.starved,
        };
        // Those passed over were listed before the ones left in the queue.
        for id in waiting.drain(..).rev() {
            queue.push_front(id);
        }
        if which == Listed::First {
            self.counters.first_recv_waits += self.first_recvs.len() as u64;
        }
        self.recvs_waiting = waiting;
        self.recv_budgets = budgets;
    }

    /// How long phase 1 may sleep: until the earliest deadline of the broker, a lingering
    /// close or the stop; forever if there is none.
    fn wait_timeout(&self, now: Millis) -> Option<Duration> {
        let resumable = !self.paused.is_empty() && !self.peers.is_backpressured();
        let listed = !self.starved.is_empty() || !self.first_recvs.is_empty();
        if listed || resumable || self.ops.scanning() {
            return Some(Duration::ZERO);
        }
        let deadlines = [
            self.broker.next_deadline(),
            self.lingering.front().map(|(deadline, _)| *deadline),
            self.accept_retry_at,
            self.journal.as_ref().and_then(Journal::deadline),
            self.ops.exporter.deadline(),
            self.stopping.map(|(flush, abandon)| if now < flush { flush } else { abandon }),
        ];
        let earliest = deadlines.into_iter().flatten().min()?;
        Some(Duration::from_millis(earliest.since(now)))
    }

    /// After a stop: done when every connection is closed and nothing is armed, or when the
    /// kernel has had long enough.
    fn finished(&mut self, now: Millis) -> bool {
        let Some((_, abandon)) = self.stopping else { return false };
        let idle = self.conns.live() == 0
            && !self.wake_armed
            && !self.rings.word_armed
            && self.listeners.iter().all(|l| !l.armed)
            && self.journal_idle();
        if idle {
            return true;
        }
        if now >= abandon {
            tracing::warn!(
                worker = self.index,
                live = self.conns.live(),
                "stop: giving up on operations still in flight"
            );
            return true;
        }
        false
    }

    pub(super) fn arm_wake(&mut self) {
        let word: *mut u64 = &raw mut **self.wake_word;
        let entry = opcode::Read::new(types::Fd(self.stop.fd()), word.cast(), 8)
            .build()
            .user_data(UserData::new(Op::Wake, 0, 0).pack());
        // SAFETY: the read writes 8 bytes into `wake_word`, a box the worker frees only when
        // no read is armed (see `Drop`); the eventfd lives as long as `stop`.
        unsafe { self.ring.push(&entry) };
        self.wake_armed = true;
    }

    /// Arms every listener's multishot accept that is not armed, on the open ring.
    pub(super) fn arm_accepts(&mut self) {
        let open = self.rings.open;
        let ring_index = u16::try_from(open).expect("rings_per_worker_max is a u16");
        for index in 0..self.listeners.len() {
            if self.listeners[index].armed {
                continue;
            }
            let listener = &mut self.listeners[index];
            let entry = opcode::AcceptMulti::new(types::Fd(listener.fd.as_raw_fd()))
                .allocate_file_index(true)
                .build()
                .user_data(UserData::new(Op::Accept, index as u32, u32::from(ring_index)).pack());
            listener.armed = true;
            listener.ring = ring_index;
            let ring = match open {
                0 => &mut self.ring,
                further => &mut self.rings.further[further - 1].ring,
            };
            // SAFETY: the accept writes only into the ring's file table; the listener's
            // descriptor lives in `self.listeners`, which outlives the ring's use of it.
            unsafe { ring.push(&entry) };
        }
    }

    /// Begins the stop: no more accepts; the broker closes every connection it knows
    /// (`handle_shutdown`: their wills are published, as Mosquitto does at shutdown, and reach
    /// whoever is still connected before the closes complete); any other connection closes
    /// without the broker.
    pub(super) fn begin_stop(&mut self, now: Millis) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!(worker = self.index, live = self.conns.live(), "stopping");
        self.stopping =
            Some((now.plus_millis(STOP_FLUSH_MILLIS), now.plus_millis(STOP_ABANDON_MILLIS)));
        for index in 0..self.listeners.len() {
            if self.listeners[index].armed {
                let ring = self.listeners[index].ring;
                let target = UserData::new(Op::Accept, index as u32, u32::from(ring));
                let cancel = UserData::new(Op::CancelAccept, index as u32, u32::from(ring));
                self.ring_at(usize::from(ring)).push_cancel(target, cancel);
            }
        }
        self.cancel_rings_wake();
        self.broker.handle_shutdown(now);
        self.apply_actions(now);
        let open: Vec<u32> = self.conns.open_slots().collect();
        for slot in open {
            let conn = self.conns.slot_mut(slot);
            conn.broker_knows = false;
            self.begin_close(slot, now);
        }
        // Descriptors handed to us whose record never came: ours to close.
        for slot in self.peers.take_unpaired_slots() {
            self.conns.unland(slot);
            self.conns.open(slot);
            self.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.begin_close(slot, now);
        }
    }

    /// Applies what a reload delivered (`reload.rs`), between two loop turns.
    pub(super) fn apply_reload(&mut self, value: super::reload::Reloaded, now: Millis) {
        match value {
            super::reload::Reloaded::Auth(tables) => {
                let generation = tables.generation;
                let revoked = self.broker.reload_auth(tables, now);
                tracing::debug!(worker = self.index, generation, "auth tables swapped");
                if revoked > 0 {
                    tracing::info!(
                        worker = self.index,
                        revoked,
                        "reload: disconnected clients whose user was deleted or password changed"
                    );
                }
            }
        }
    }

    fn log_stopped(&mut self) {
        self.counters.ring = self.ring_counters();
        self.counters.rings = self.conns.rings();
        self.counters.ring_setup_failures = self.rings.setup_failures;
        // The broker's counters (drops at each bound, closes by reason) and what is still
        // held, so a run's log proves what happened at the limits and that everything returned.
        tracing::info!(
            worker = self.index,
            live = self.conns.live(),
            slots_allocated = self.conns.allocated_slots(),
            buffers_leased = self.buffers.leased(),
            first_buffers_leased = self.first_buffers.leased(),
            starved_buffers_leased = self.starved_buffers.leased(),
            counters = ?self.counters,
            mesh = ?self.peers.stats(),
            journal = ?self.journal.as_ref().map(|journal| journal.counters),
            peer_names_learned = self.peer_names.learned,
            peer_names_failed = self.peer_names.failed,
            broker = ?self.broker.stats(),
            "worker stopped"
        );
    }

    /// Every ring's counters summed (turns are the first ring's: further rings count none).
    pub fn ring_counters(&self) -> RingCounters {
        let further = self.rings.further.iter().map(|further| &further.ring.counters);
        std::iter::once(&self.ring.counters).chain(further).fold(
            RingCounters::default(),
            |sum, ring| RingCounters {
                turns: sum.turns + ring.turns,
                completions: sum.completions + ring.completions,
                sq_full_flushes: sum.sq_full_flushes + ring.sq_full_flushes,
                cq_overflow_turns: sum.cq_overflow_turns + ring.cq_overflow_turns,
            },
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Unregistering a buffer ring is synchronous: afterwards the kernel cannot pick one of
        // its buffers, even for a receive still armed, so the memory can go.
        let submitter = self.ring.submitter();
        for buffers in [&mut self.buffers, &mut self.first_buffers, &mut self.starved_buffers] {
            match submitter.unregister_buf_ring(buffers.group()) {
                // SAFETY: the buffers are not used again; the kernel no longer refers to them.
                Ok(()) => unsafe { ManuallyDrop::drop(buffers) },
                Err(error) => {
                    tracing::warn!(%error, "buffer ring still registered: leaking its memory")
                }
            }
        }
        if !self.wake_armed {
            // SAFETY: no read into the word is in flight, and it is not used again.
            unsafe { ManuallyDrop::drop(&mut self.wake_word) };
        }
        self.drop_further_rings();
    }
}

/// The two queues of receives armed in phase 4 (`Worker::arm_listed`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Listed {
    /// Connections waiting for a first receive (`Worker::first_recvs`).
    First,
    /// Connections whose receive found no buffer (`Worker::starved`).
    Starved,
}

/// Whether an open connection may receive now: not paused, peer still there, nothing armed.
fn receivable(conn: &super::conn::Conn) -> bool {
    conn.phase == super::conn::Phase::Open && conn.peer_alive && !conn.recv_armed && !conn.paused
}
