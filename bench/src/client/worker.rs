//! One load-generator thread: one io_uring, its connections as direct descriptors in the ring's
//! file table (slot = local connection index), multishot receives from a provided-buffer ring,
//! one send in flight per connection.
//!
//! Each loop turn: act on the run's phase (open connections, publish, ping), flush output,
//! give receive buffers back, submit and wait (bounded by a tick), then dispatch completions.
//! Invariants: a connection's `sending` buffer is untouched while its send is in flight;
//! connections are never reused within a run (a completion's slot always names the connection
//! that submitted it); the buffer ring is dropped only once no receive is armed, otherwise
//! leaked.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use io_uring::{opcode, squeue, types};
use ringmq::protocol::{decode, Packet, TopicName};

use super::conn::{Conn, ConnContext, ConnState, Publisher, Subscriber, TX_QUEUED_BYTES_MAX};
use super::schedule::Schedule;
use super::stats::Stats;
use super::{Phase, Shared};
use crate::plan::{LoadConfig, Role};
use crate::ring::{self, BufRing, Completion, Op, Ring};
use crate::stamp::SeqSummary;
use crate::sys::monotonic_ns;

fn thread_cpu_total_ns() -> u64 {
    let (user, system) = crate::sys::thread_cpu_ns();
    (user + system).max(1)
}

/// How often idle connections are checked for a due PINGREQ.
const KEEPALIVE_SCAN_NS: u64 = 1_000_000_000;
/// How often the interval latency histogram goes to the progress line.
const INTERVAL_HANDOFF_NS: u64 = 200_000_000;
/// How long the end of the run waits for DISCONNECTs to be sent and receives to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// A receive buffer left this large and empty is dropped, so idle connections hold none.
const RX_IDLE_CAPACITY_MAX: usize = 64 * 1024;
/// The longest a loop turn waits for completions when nothing is due sooner.
const IDLE_TICK_NS: u64 = 10_000_000;
/// The shortest wait for the next paced message: at higher rates a visit sends the few
/// messages that came due meanwhile, instead of waking once per message.
const PACED_TICK_MIN_NS: u64 = 100_000;
/// How soon a paced publisher that could not send all it owed (window, queue, not ready) is
/// visited again.
const LAGGING_RETRY_NS: u64 = 1_000_000;

/// What a worker hands back at the end.
#[derive(Debug)]
pub struct WorkerReport {
    pub stats: Stats,
    /// (publisher index, messages sent).
    pub publishers: Vec<(u32, u64)>,
    /// (subscriber index, [(stamped publisher id, what arrived)]).
    pub subscribers: Vec<(u32, Vec<(u32, SeqSummary)>)>,
    /// This thread's CPU time, (user, system) nanoseconds.
    pub cpu_ns: (u64, u64),
    /// Connections were set up by linked ring operations, not system calls.
    pub direct_setup: bool,
    /// This thread's CPU time (user + system) while the run was in its Running phase.
    pub running_cpu_ns: u64,
}

pub struct Worker {
    // Field order matters: the ring is dropped before the buffers it may write into.
    ring: Ring,
    buffers: Option<BufRing>,
    config: Arc<LoadConfig>,
    shared: Arc<Shared>,
    thread: usize,
    conns: Vec<Conn>,
    /// Destination address per connection, and the source addresses; never resized while
    /// connects are in flight.
    destinations: Vec<libc::sockaddr_in>,
    sources: Vec<libc::sockaddr_in>,
    /// Connections are set up by linked ring operations (else by system calls).
    direct_setup: bool,
    publishers: Vec<u32>,
    dirty: Vec<u32>,
    completions: Vec<Completion>,
    stats: Stats,
    next_to_open: usize,
    last_keepalive_scan_ns: u64,
    last_handoff_ns: u64,
    /// Paced publishing (`None`: max rate, every publisher visited every turn).
    schedule: Option<Schedule>,
    /// When the publishers are next visited.
    next_publish_ns: u64,
    /// Paced publishers (positions in `publishers`) behind their due count, visited again.
    lagging: Vec<u32>,
    /// Publishers (positions) to visit this time; kept for its allocation.
    visit: Vec<u32>,
    /// A publisher waited for deliveries (end-to-end window) at the last visit.
    flow_blocked: bool,
    /// This thread's CPU nanoseconds when it first saw Running and first saw Draining.
    running_cpu_ns: (u64, u64),
    drained: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("thread", &self.thread).finish_non_exhaustive()
    }
}

impl Worker {
    /// Builds the worker's ring and connection table; call on the worker's own thread.
    pub fn new(config: Arc<LoadConfig>, shared: Arc<Shared>, thread: usize) -> io::Result<Self> {
        let threads = config.threads as u64;
        let total = config.plan.connections();
        let globals: Vec<u64> = (thread as u64..total).step_by(threads as usize).collect();
        let files = u32::try_from(globals.len().max(1)).map_err(io::Error::other)?;
        let entries = files.next_power_of_two().clamp(256, 16_384);
        let ring = Ring::new(entries, files)?;
        let buffers = BufRing::new(&ring, config.recv_buffers, config.recv_buffer_bytes, 0)?;
        let mut conns = Vec::with_capacity(globals.len());
        let mut destinations = Vec::with_capacity(globals.len());
        let mut publishers = Vec::new();
        for (local, &global) in globals.iter().enumerate() {
            let role = config.plan.role(global);
            let mut conn = Conn::new(global, role);
            match role {
                Role::Publisher { index, topic } => {
                    let name = TopicName::try_from(config.topic_name(topic).as_str())
                        .map_err(|error| io::Error::other(format!("topic: {error}")))?;
                    conn.publisher = Some(Box::new(Publisher::new(
                        config.publisher_id_base + index,
                        index,
                        name,
                        config.payload_bytes,
                        config.window,
                    )));
                    publishers.push(local as u32);
                }
                Role::Subscriber { index, .. } => {
                    conn.subscriber = Some(Box::new(Subscriber { index, ..Subscriber::default() }));
                }
                Role::Idle => {}
            }
            destinations.push(ring::sockaddr_v4(config.target.addresses(global).1));
            conns.push(conn);
        }
        let schedule = Self::schedule(&config, &conns, &publishers);
        let sources = config
            .target
            .sources
            .iter()
            .map(|&source| ring::sockaddr_v4(std::net::SocketAddrV4::new(source, 0)))
            .collect();
        let direct_setup = !config.connect_with_syscalls && ring.supports_direct_setup();
        Ok(Self {
            ring,
            buffers: Some(buffers),
            config,
            shared,
            thread,
            conns,
            destinations,
            sources,
            direct_setup,
            publishers,
            dirty: Vec::new(),
            completions: Vec::with_capacity(entries as usize * 4),
            stats: Stats::new(),
            next_to_open: 0,
            last_keepalive_scan_ns: 0,
            last_handoff_ns: 0,
            schedule,
            next_publish_ns: 0,
            lagging: Vec::new(),
            visit: Vec::new(),
            flow_blocked: false,
            running_cpu_ns: (0, 0),
            drained: false,
        })
    }

    /// Runs until the run is done, then says DISCONNECT and hands back what it measured.
    pub fn run(mut self) -> io::Result<WorkerReport> {
        loop {
            let phase = self.shared.phase();
            if phase == Phase::Done {
                break;
            }
            let now_ns = monotonic_ns();
            self.act(phase, now_ns)?;
            self.flush()?;
            let tick = self.tick(phase, monotonic_ns());
            self.ring.submit(1, Some(tick))?;
            self.dispatch_completions()?;
            self.publish_progress(monotonic_ns());
        }
        self.shutdown()?;
        Ok(self.into_report())
    }

    fn act(&mut self, phase: Phase, now_ns: u64) -> io::Result<()> {
        match phase {
            Phase::Connecting => self.open_connections(now_ns)?,
            Phase::Running => {
                if self.running_cpu_ns.0 == 0 {
                    self.running_cpu_ns.0 = thread_cpu_total_ns();
                }
                self.open_connections(now_ns)?;
                if now_ns >= self.next_publish_ns {
                    self.publish(now_ns);
                }
            }
            Phase::Draining if !self.drained => self.stop_publishing(),
            Phase::Draining | Phase::Done => {}
        }
        if now_ns - self.last_keepalive_scan_ns >= KEEPALIVE_SCAN_NS {
            self.last_keepalive_scan_ns = now_ns;
            self.send_pings(now_ns);
        }
        Ok(())
    }

    /// How long to wait for completions: short when paced work may come due.
    fn tick(&self, phase: Phase, now_ns: u64) -> Duration {
        let paced_connecting =
            self.next_to_open < self.conns.len() && self.config.connect_rate_per_sec > 0;
        if paced_connecting {
            return Duration::from_millis(1);
        }
        if phase == Phase::Running && self.flow_blocked && self.config.threads > 1 {
            // Deliveries that unblock a publisher may be counted on another thread, which
            // cannot wake this one: look again soon.
            return Duration::from_micros(200);
        }
        if phase == Phase::Running && self.schedule.is_some() {
            let until_due = self.next_publish_ns.saturating_sub(now_ns);
            return Duration::from_nanos(until_due.clamp(PACED_TICK_MIN_NS, IDLE_TICK_NS));
        }
        Duration::from_nanos(IDLE_TICK_NS)
    }

    /// At a fixed rate, publisher `i` of the run's `n` has the phase `i / n` (see
    /// [`Schedule`]), so messages come due evenly spread, not all publishers at once.
    fn schedule(config: &LoadConfig, conns: &[Conn], publishers: &[u32]) -> Option<Schedule> {
        let rate = config.rate_per_publisher();
        if rate <= 0.0 {
            return None;
        }
        let publishers_total = f64::from(config.plan.publishers);
        let phases: Vec<f64> = publishers
            .iter()
            .map(|&local| {
                let publisher = conns[local as usize].publisher.as_ref().expect("a publisher");
                f64::from(publisher.index) / publishers_total
            })
            .collect();
        Some(Schedule::new(rate, &phases))
    }

    fn context<'a>(config: &'a LoadConfig, shared: &'a Shared) -> ConnContext<'a> {
        ConnContext {
            qos: config.qos,
            keepalive_secs: config.keepalive_secs,
            clean_session: config.clean_session,
            client_id_prefix: &config.client_id_prefix,
            topic_prefix: &config.topic_prefix,
            deliveries: shared.deliveries.as_ref(),
        }
    }

    fn open_connections(&mut self, now_ns: u64) -> io::Result<()> {
        let threads = self.config.threads as u64;
        let inflight_max = self.config.connect_inflight_max.div_ceil(threads).max(1);
        let start_ns = self.shared.connect_start_ns;
        while self.next_to_open < self.conns.len() {
            let opened = self.stats.counters.connect_started;
            if self.config.connect_rate_per_sec > 0 {
                let allowed = (now_ns.saturating_sub(start_ns) as u128
                    * u128::from(self.config.connect_rate_per_sec)
                    / 1_000_000_000
                    / u128::from(threads)) as u64
                    + 1;
                if opened >= allowed {
                    break;
                }
            }
            let settled = self.stats.counters.ready + self.stats.counters.connect_failed;
            if opened - settled.min(opened) >= inflight_max {
                break;
            }
            let local = self.next_to_open;
            self.next_to_open += 1;
            self.open(local, now_ns)?;
        }
        Ok(())
    }

    fn open(&mut self, local: usize, now_ns: u64) -> io::Result<()> {
        self.stats.counters.connect_started += 1;
        if self.stats.first_connect_ns == 0 {
            self.stats.first_connect_ns = now_ns;
        }
        let conn = &mut self.conns[local];
        conn.started_ns = now_ns;
        conn.state = ConnState::Connecting;
        let source = self.source_of(local);
        if self.direct_setup {
            return self.push_setup_chain(local, source);
        }
        let fd = match ring::client_socket(source.map(|index| self.config.target.sources[index])) {
            Ok(fd) => fd,
            Err(error) => {
                self.fail(local, format!("socket/bind: {error}"));
                return Ok(());
            }
        };
        let installed = self.ring.install(local as u32, fd);
        ring::close_fd(fd);
        if let Err(error) = installed {
            self.fail(local, format!("file table: {error}"));
            return Ok(());
        }
        let connect = self.connect_entry(local);
        // SAFETY: `destinations` is never resized after `new`, so the address outlives the op.
        unsafe { self.ring.push(&connect) }
    }

    /// Index into the source addresses for connection `local`, if sources are configured.
    fn source_of(&self, local: usize) -> Option<usize> {
        let target = &self.config.target;
        let global = self.conns[local].global;
        (!target.sources.is_empty())
            .then(|| ((global / target.hosts.len() as u64) % target.sources.len() as u64) as usize)
    }

    fn connect_entry(&self, local: usize) -> squeue::Entry {
        opcode::Connect::new(
            types::Fixed(local as u32),
            (&raw const self.destinations[local]).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
        .build()
        .user_data(ring::pack(Op::Connect, 0, local as u32))
    }

    /// Socket, TCP_NODELAY, (IP_BIND_ADDRESS_NO_PORT and bind to the source,) connect: one
    /// linked chain, no process fd and no system call of our own. A failing link cancels the
    /// rest; its error is kept for the connect's completion to report.
    fn push_setup_chain(&mut self, local: usize, source: Option<usize>) -> io::Result<()> {
        let slot = local as u32;
        let fixed = types::Fixed(slot);
        let setup = ring::pack(Op::Setup, 0, slot);
        let link = squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS;
        let option = |level: libc::c_int, name: libc::c_int| {
            opcode::SetSockOpt::new(
                fixed,
                level as u32,
                name as u32,
                (&raw const ring::SOCKET_OPTION_ON).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
            .build()
            .flags(link)
            .user_data(setup)
        };
        let destination = types::DestinationSlot::try_from_slot_target(slot)
            .map_err(|slot| io::Error::other(format!("slot {slot} out of range")))?;
        let mut chain = vec![
            opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
                .file_index(Some(destination))
                .build()
                .flags(link)
                .user_data(setup),
            option(libc::IPPROTO_TCP, libc::TCP_NODELAY),
        ];
        if let Some(index) = source {
            chain.push(option(libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT));
            chain.push(
                opcode::Bind::new(
                    fixed,
                    (&raw const self.sources[index]).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
                .build()
                .flags(link)
                .user_data(setup),
            );
        }
        chain.push(self.connect_entry(local));
        self.ring.reserve(chain.len())?;
        for entry in &chain {
            // SAFETY: the option value is a static, and `sources` and `destinations` are never
            // resized after `new`, so every address outlives the chain.
            unsafe { self.ring.push(entry) }?;
        }
        Ok(())
    }

    fn fail(&mut self, local: usize, why: String) {
        self.conns[local].state = ConnState::Closed;
        self.stats.counters.connect_failed += 1;
        self.stats.error(why);
    }

    /// Visits the publishers with messages due (all of them at max rate) and queues what
    /// each may send now.
    fn publish(&mut self, now_ns: u64) {
        let elapsed_ns = now_ns.saturating_sub(self.shared.run_start_ns());
        let mut visit = std::mem::take(&mut self.visit);
        visit.clear();
        match self.schedule.as_mut() {
            None => visit.extend(0..self.publishers.len() as u32),
            Some(schedule) => {
                visit.append(&mut self.lagging);
                schedule.advance(elapsed_ns, &mut visit);
                visit.sort_unstable();
                visit.dedup();
            }
        }
        self.flow_blocked = false;
        for &position in &visit {
            let due = self.schedule.as_ref().map_or(u64::MAX, |s| s.due(position, elapsed_ns));
            if self.publish_one(position, due, now_ns) && self.schedule.is_some() {
                self.lagging.push(position);
            }
        }
        self.visit = visit;
        self.next_publish_ns = match &self.schedule {
            None => 0,
            Some(schedule) => {
                let next = self.shared.run_start_ns().saturating_add(schedule.next_due_ns());
                if self.lagging.is_empty() {
                    next
                } else {
                    next.min(now_ns + LAGGING_RETRY_NS)
                }
            }
        };
    }

    /// Queues what the publisher at `position` may send now, up to `due` messages in all.
    /// Returns whether it stays behind `due` (and is not done).
    fn publish_one(&mut self, position: u32, due: u64, now_ns: u64) -> bool {
        let qos = self.config.qos;
        let count = self.config.count_per_publisher;
        let (topics, e2e_window) = (self.config.plan.topics, self.config.e2e_window);
        let local = self.publishers[position as usize] as usize;
        let conn = &mut self.conns[local];
        let publisher = conn.publisher.as_mut().expect("listed publishers have state");
        if publisher.done {
            return false;
        }
        if conn.state != ConnState::Ready {
            return true;
        }
        let mut limit = count.map_or(due, |count| due.min(count));
        if let Some(board) = self.shared.deliveries.as_ref() {
            let subscribers = self.config.plan.subscribers_of(publisher.index % topics);
            // No subscribers: nothing to wait for.
            if let Some(average) = board.delivered(publisher.index).checked_div(subscribers) {
                let allowed = average + e2e_window;
                limit = limit.min(allowed);
                self.flow_blocked |= publisher.sent >= allowed;
            }
        }
        let before = publisher.sent;
        while publisher.sent < limit
            && conn.tx.len() < TX_QUEUED_BYTES_MAX
            && publisher.can_send(qos)
        {
            publisher.publish(qos, now_ns, &mut conn.tx);
        }
        let sent_now = publisher.sent - before;
        if count.is_some_and(|count| publisher.sent >= count) {
            publisher.done = true;
            self.stats.counters.publishers_done += 1;
        }
        if sent_now > 0 {
            self.stats.counters.published += sent_now;
            self.stats.counters.published_bytes += sent_now * self.config.payload_bytes as u64;
            conn.last_send_ns = now_ns;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(local as u32);
            }
        }
        !publisher.done && publisher.sent < due
    }

    /// The run is draining: publishers stop, and the deliveries they make expected are added
    /// to the shared total once.
    fn stop_publishing(&mut self) {
        if self.running_cpu_ns.0 != 0 {
            self.running_cpu_ns.1 = thread_cpu_total_ns();
        }
        let mut expected = 0;
        for &local in &self.publishers {
            let publisher = self.conns[local as usize].publisher.as_mut().expect("publisher");
            publisher.done = true;
            let topic = publisher.index % self.config.plan.topics;
            expected += publisher.sent * self.config.plan.subscribers_of(topic);
        }
        self.drained = true;
        self.shared.add_drained(expected);
    }

    fn send_pings(&mut self, now_ns: u64) {
        if self.config.keepalive_secs == 0 {
            return;
        }
        let idle_ns = u64::from(self.config.keepalive_secs) * 1_000_000_000 / 2;
        for local in 0..self.conns.len() {
            let conn = &mut self.conns[local];
            if conn.state == ConnState::Ready
                && conn.ping_sent_ns == 0
                && now_ns.saturating_sub(conn.last_send_ns) >= idle_ns
            {
                conn.queue(&Packet::Pingreq, now_ns);
                conn.ping_sent_ns = now_ns;
                self.stats.counters.pings_sent += 1;
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(local as u32);
                }
            }
        }
    }

    /// Starts a send for every connection with output and none in flight; gives receive
    /// buffers back to the kernel.
    fn flush(&mut self) -> io::Result<()> {
        while let Some(local) = self.dirty.pop() {
            let local = local as usize;
            let conn = &mut self.conns[local];
            conn.dirty = false;
            if conn.send_in_flight || conn.tx.is_empty() || conn.state == ConnState::Closed {
                continue;
            }
            std::mem::swap(&mut conn.tx, &mut conn.sending);
            conn.send_offset = 0;
            self.submit_send(local)?;
        }
        if let Some(buffers) = self.buffers.as_mut() {
            buffers.publish();
        }
        Ok(())
    }

    fn submit_send(&mut self, local: usize) -> io::Result<()> {
        let conn = &mut self.conns[local];
        let remaining = &conn.sending[conn.send_offset..];
        let entry = opcode::Send::new(
            types::Fixed(local as u32),
            remaining.as_ptr(),
            remaining.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(ring::pack(Op::Send, 0, local as u32));
        conn.send_in_flight = true;
        // SAFETY: `sending` is not touched while `send_in_flight` is set, and connections are
        // never dropped before the run ends (after the send's completion, or leaked).
        unsafe { self.ring.push(&entry) }
    }

    fn arm_recv(&mut self, local: usize) -> io::Result<()> {
        let Some(buffers) = self.buffers.as_ref() else { return Ok(()) };
        let entry = opcode::RecvMulti::new(types::Fixed(local as u32), buffers.group())
            .build()
            .user_data(ring::pack(Op::Recv, 0, local as u32));
        self.conns[local].recv_armed = true;
        // SAFETY: the receive writes only into the buffer ring, which outlives every armed
        // receive (dropped after they end, otherwise leaked).
        unsafe { self.ring.push(&entry) }
    }

    fn close(&mut self, local: usize) -> io::Result<()> {
        let entry = opcode::Close::new(types::Fixed(local as u32)).build().user_data(ring::pack(
            Op::Close,
            0,
            local as u32,
        ));
        self.conns[local].state = ConnState::Closed;
        // SAFETY: closing a direct descriptor references no memory of ours.
        unsafe { self.ring.push(&entry) }
    }

    /// A connection ended: count it unless the run is over.
    fn lost(&mut self, local: usize, why: String) -> io::Result<()> {
        let state = self.conns[local].state;
        if state == ConnState::Closed {
            return Ok(());
        }
        if state == ConnState::Closing {
            return self.close(local);
        }
        if state == ConnState::Connecting || state == ConnState::AwaitConnack {
            self.stats.counters.connect_failed += 1;
        } else if state == ConnState::AwaitSuback {
            // Counted as connected (CONNACK) but never ready: a failed set-up.
            self.stats.counters.connect_failed += 1;
        } else {
            self.stats.counters.closed_unexpectedly += 1;
        }
        self.stats.error(why);
        self.close(local)
    }

    fn dispatch_completions(&mut self) -> io::Result<()> {
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.drain(&mut completions);
        let now_ns = monotonic_ns();
        for completion in completions.drain(..) {
            let Some((op, _, slot)) = ring::unpack(completion.user_data) else { continue };
            let local = slot as usize;
            match op {
                Op::Connect => self.on_connect(local, completion.result, now_ns)?,
                Op::Setup => {
                    // Only failures are posted (SKIP_SUCCESS); the first one is the cause.
                    let conn = &mut self.conns[local];
                    if completion.result != -libc::ECANCELED && conn.setup_errno == 0 {
                        conn.setup_errno = -completion.result;
                    }
                }
                Op::Recv => self.on_recv(local, &completion, now_ns)?,
                Op::Send => self.on_send(local, completion.result)?,
                Op::Close | Op::Shutdown | Op::Accept => {}
            }
        }
        self.completions = completions;
        Ok(())
    }

    fn on_connect(&mut self, local: usize, result: i32, now_ns: u64) -> io::Result<()> {
        if result < 0 {
            let setup_errno = self.conns[local].setup_errno;
            let why = if result == -libc::ECANCELED && setup_errno != 0 {
                format!("socket set-up: {}", io::Error::from_raw_os_error(setup_errno))
            } else {
                format!("connect: {}", io::Error::from_raw_os_error(-result))
            };
            self.conns[local].state = ConnState::Connecting;
            return self.lost(local, why);
        }
        self.stats.counters.tcp_connected += 1;
        let started = self.conns[local].started_ns;
        self.stats.tcp_connect.saturating_record(now_ns.saturating_sub(started).max(1));
        let context = Self::context(&self.config, &self.shared);
        self.conns[local].on_tcp_connected(&context, now_ns);
        self.mark_dirty(local);
        self.arm_recv(local)
    }

    fn mark_dirty(&mut self, local: usize) {
        let conn = &mut self.conns[local];
        if !conn.dirty && !conn.tx.is_empty() {
            conn.dirty = true;
            self.dirty.push(local as u32);
        }
    }

    fn on_recv(&mut self, local: usize, completion: &Completion, now_ns: u64) -> io::Result<()> {
        let result = completion.result;
        if !completion.more() {
            self.conns[local].recv_armed = false;
        }
        if result > 0 {
            let buffers = self.buffers.as_mut().expect("receives are armed only with buffers");
            let id = completion.buffer_id().expect("a receive result names its buffer");
            let data = buffers.buffer(id, result as usize);
            self.conns[local].rx.extend_from_slice(data);
            buffers.give_back(id);
            self.process_input(local, now_ns)?;
        } else if result == 0 {
            return self.lost(local, "closed by the broker".into());
        } else if result != -libc::ENOBUFS {
            return self.lost(local, format!("recv: {}", io::Error::from_raw_os_error(-result)));
        }
        let conn = &self.conns[local];
        if !conn.recv_armed && conn.state.is_open() {
            self.arm_recv(local)?;
        }
        Ok(())
    }

    fn process_input(&mut self, local: usize, now_ns: u64) -> io::Result<()> {
        let max_packet_bytes = self.config.max_packet_bytes();
        let context = Self::context(&self.config, &self.shared);
        let conn = &mut self.conns[local];
        let was_ready = conn.state == ConnState::Ready;
        let mut failure = None;
        while conn.state.is_open() || conn.state == ConnState::Closing {
            match decode(&mut conn.rx, max_packet_bytes) {
                Ok(Some(packet)) => {
                    if let Err(why) = conn.on_packet(packet, &context, now_ns, &mut self.stats) {
                        failure = Some(why);
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    failure = Some(format!("decode: {error}"));
                    break;
                }
            }
        }
        if conn.rx.is_empty() && conn.rx.capacity() > RX_IDLE_CAPACITY_MAX {
            conn.rx = BytesMut::new();
        }
        if !was_ready && conn.state == ConnState::Ready {
            self.stats.last_ready_ns = now_ns;
        }
        if let Some(why) = failure {
            self.stats.counters.protocol_errors += 1;
            return self.lost(local, why);
        }
        self.mark_dirty(local);
        Ok(())
    }

    fn on_send(&mut self, local: usize, result: i32) -> io::Result<()> {
        let conn = &mut self.conns[local];
        conn.send_in_flight = false;
        if result < 0 {
            conn.sending.clear();
            return self.lost(local, format!("send: {}", io::Error::from_raw_os_error(-result)));
        }
        conn.send_offset += result as usize;
        if conn.send_offset < conn.sending.len() {
            return self.submit_send(local);
        }
        conn.sending.clear();
        self.mark_dirty(local);
        Ok(())
    }

    fn publish_progress(&mut self, now_ns: u64) {
        self.shared.store_counters(self.thread, &self.stats.counters);
        if now_ns - self.last_handoff_ns >= INTERVAL_HANDOFF_NS
            && !self.stats.interval_latency.is_empty()
        {
            self.last_handoff_ns = now_ns;
            self.shared.add_interval_latency(&self.stats.interval_latency);
            self.stats.interval_latency.reset();
        }
    }

    /// Says DISCONNECT on every open connection, shuts them down, and waits (bounded) for
    /// sends and receives to end so the buffers they use can be freed.
    fn shutdown(&mut self) -> io::Result<()> {
        if self.shared.aborted.load(std::sync::atomic::Ordering::Acquire) {
            // Stopped by a signal: the process exits after the report, and the kernel may
            // still write into these buffers until then, so they are leaked, not freed.
            std::mem::forget(self.buffers.take());
            std::mem::forget(std::mem::take(&mut self.conns));
            return Ok(());
        }
        let now_ns = monotonic_ns();
        for local in 0..self.conns.len() {
            if self.conns[local].state.is_open() {
                self.conns[local].queue(&Packet::Disconnect, now_ns);
                self.conns[local].state = ConnState::Closing;
                self.mark_dirty(local);
            }
        }
        self.flush()?;
        self.wait_until(|worker| worker.conns.iter().all(|conn| !conn.send_in_flight))?;
        for local in 0..self.conns.len() {
            let conn = &self.conns[local];
            if conn.recv_armed || conn.state == ConnState::Closing {
                let entry = opcode::Shutdown::new(types::Fixed(local as u32), libc::SHUT_RDWR)
                    .build()
                    .user_data(ring::pack(Op::Shutdown, 0, local as u32));
                // SAFETY: a shutdown references no memory of ours.
                unsafe { self.ring.push(&entry) }?;
            }
        }
        self.wait_until(|worker| worker.conns.iter().all(|conn| !conn.recv_armed))?;
        if self.conns.iter().any(|conn| conn.recv_armed || conn.send_in_flight) {
            // The kernel may still write into these buffers: leak them rather than free them.
            std::mem::forget(self.buffers.take());
            std::mem::forget(std::mem::take(&mut self.conns));
        }
        Ok(())
    }

    fn wait_until(&mut self, done: impl Fn(&Self) -> bool) -> io::Result<()> {
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while !done(self) && Instant::now() < deadline {
            self.ring.submit(1, Some(Duration::from_millis(10)))?;
            self.dispatch_completions()?;
            self.flush()?;
        }
        Ok(())
    }

    fn into_report(mut self) -> WorkerReport {
        let mut publishers = Vec::new();
        let mut subscribers = Vec::new();
        for conn in &self.conns {
            if let Some(publisher) = &conn.publisher {
                publishers.push((publisher.index, publisher.sent));
            }
            if let Some(subscriber) = &conn.subscriber {
                let trackers = subscriber
                    .trackers
                    .iter()
                    .map(|(&id, tracker)| (id, tracker.summary()))
                    .collect();
                subscribers.push((subscriber.index, trackers));
            }
        }
        let stats = std::mem::take(&mut self.stats);
        WorkerReport {
            stats,
            publishers,
            subscribers,
            cpu_ns: crate::sys::thread_cpu_ns(),
            direct_setup: self.direct_setup,
            running_cpu_ns: self.running_cpu_ns.1.saturating_sub(self.running_cpu_ns.0),
        }
    }
}
