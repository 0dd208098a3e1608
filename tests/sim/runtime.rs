//! The simulated runtime: it plays what `ringmq::runtime` does for real, for several
//! [`Broker`]s at once, with a fake clock and seeded faults.
//!
//! It routes `Action::Remote` between workers (FIFO per ordered pair, held back a random
//! number of steps, never reordered), performs `Action::Handoff`, takes output on
//! `Action::Send` and reports it sent in random pieces (slow sockets), feeds client bytes in
//! random chunks through `protocol::decode` (or as `Packet` values), and runs `handle_tick`
//! whenever a deadline has passed. Connection slots are reused with a new generation, as the
//! real runtime does.
//!
//! Invariant: every contract breach the runtime can see (an action naming a connection the
//! broker already gave up, output above its bound, output pending without `Action::Send`) is
//! recorded in `violations`, never silently tolerated.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Buf, Bytes, BytesMut};
use ringmq::broker::{Action, Broker, BrokerConfig, CloseReason, ConnId, Millis, WorkerId};
use ringmq::protocol::{self, Packet};

use super::model::{decode_payload, MessageKey};
use super::rng::{RandomSet, Rng};

mod links;
mod receipts;
mod requests;
mod trace;

pub use links::Fault;
use links::Link;
pub use receipts::Qos2Receipts;
pub use requests::{Processed, Requests};
pub use trace::{close_reason_name, describe};

/// Index of a simulated TCP connection; never reused (unlike the broker-side `ConnId` slots).
pub type ConnIndex = usize;

/// How client packets reach the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Encoded, cut into random chunks, decoded by `protocol::decode`.
    Bytes,
    /// Handed over as `Packet` values (skips the decoder).
    Packets,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Known to the broker of `worker` as `id`.
    Open,
    /// Handed off: travelling on a link towards `worker`.
    InHandoff,
    /// The broker asked to close; what was taken still drains to the client, then EOF.
    ClosedByBroker(CloseReason),
    /// The client end went away; the broker was told (or never knew).
    ClosedByClient,
}

#[derive(Debug)]
pub struct SimConn {
    pub client: usize,
    pub worker: WorkerId,
    pub id: ConnId,
    pub state: ConnState,
    /// The client crashed while the connection was in a handoff.
    client_gone: bool,
    /// The client half-closed after its last bytes (EOF after DISCONNECT).
    client_eof: bool,
    to_broker_bytes: BytesMut,
    to_broker_packets: VecDeque<Packet>,
    /// Bytes read from the socket and not yet decoded into packets.
    broker_in: BytesMut,
    /// A CONNECT was fed and the worker's actions not yet drained: no more packets until then.
    connect_fed: bool,
    /// CONNECTs fed through `feed_packet` (a handoff's re-feed is not one more).
    connects_fed: u32,
    /// A second CONNECT was fed: the broker must close with a protocol violation at once.
    second_connect: bool,
    /// Packets were fed this turn: EOF waits for the next turn, so that an action the broker
    /// emitted for those packets is never confused with one after `handle_closed`.
    fed_this_turn: bool,
    /// Output taken from the broker and not yet sent (the socket's send in flight).
    taken: VecDeque<Bytes>,
    taken_bytes: usize,
    /// Bytes in the client's receive buffer.
    to_client: BytesMut,
    /// The client has seen EOF (or gave the connection up): nothing more is readable.
    finished: bool,
    /// The client read CONNACK 0 on this connection: the broker holds its will.
    accepted: bool,
    /// The will in this connection's CONNECT: topic and payload.
    pub will: Option<(String, Bytes)>,
}

impl SimConn {
    pub fn is_open(&self) -> bool {
        self.state == ConnState::Open
    }

    pub fn taken_bytes(&self) -> usize {
        self.taken_bytes
    }

    pub fn client_buffer_bytes(&self) -> usize {
        self.to_client.len()
    }

    fn wants_inbound(&self) -> bool {
        !self.to_broker_bytes.is_empty()
            || !self.to_broker_packets.is_empty()
            || !self.broker_in.is_empty()
            || self.client_eof
    }
}

/// Per-worker connection slots with generations, like the runtime's slab.
#[derive(Default)]
struct Slots {
    generations: Vec<u32>,
    free: Vec<u32>,
}

impl Slots {
    fn allocate(&mut self) -> ConnId {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.generations.push(0);
                (self.generations.len() - 1) as u32
            }
        };
        ConnId::new(slot, self.generations[slot as usize])
    }

    fn release(&mut self, id: ConnId) {
        let generation = &mut self.generations[id.slot() as usize];
        assert_eq!(*generation, id.generation(), "slot {} released twice", id.slot());
        *generation = generation.wrapping_add(1);
        self.free.push(id.slot());
    }
}

/// Counts of what the runtime did, for the run's report.
#[derive(Clone, Debug, Default)]
pub struct RuntimeStats {
    pub connections_opened: u64,
    pub handoffs: u64,
    pub remote_messages: u64,
    pub remote_publishes: u64,
    pub faults_applied: u64,
    pub bytes_to_brokers: u64,
    pub bytes_to_clients: u64,
    pub partial_sends: u64,
    pub sends_with_nothing_to_take: u64,
    pub closes: BTreeMap<String, u64>,
    pub ticks: u64,
    /// The most output one connection ever had waiting (taken, not yet reported sent).
    pub output_bytes_peak: usize,
    pub stale_closes: u64,
    /// QoS 2 messages fed again after the broker's PUBCOMP for them: each a new publication
    /// [MQTT-4.3.3-2] (see `receipts`).
    pub qos2_republications: u64,
    /// SUBSCRIBEs / UNSUBSCRIBEs fed to a connection the broker had closed earlier in the
    /// turn (it ignores them; see `requests`).
    pub requests_ignored: u64,
}

/// What the runtime may choose at random; the driver sets it per run.
#[derive(Clone, Debug)]
pub struct RuntimeKnobs {
    /// Most steps a link holds an item back.
    pub link_delay_steps_max: u64,
    /// A client's receive buffer: the socket stops sending when it is this full.
    pub socket_bytes_max: usize,
    /// Largest chunk of client bytes read at once.
    pub read_chunk_bytes_max: usize,
    /// A deliberate runtime bug, to show the checker catches what it causes.
    pub fault: Option<Fault>,
}

pub struct Runtime {
    pub now: Millis,
    pub wire: Wire,
    pub knobs: RuntimeKnobs,
    pub brokers: Vec<Broker>,
    pub conns: Vec<SimConn>,
    /// The largest output a connection may have waiting: `outbuf_bytes_max` plus one packet.
    pub output_bound_bytes: usize,
    pub stats: RuntimeStats,
    /// Contract breaches seen from the runtime's side.
    pub violations: Vec<String>,
    /// Connections with something for the broker side (bytes, packets, EOF).
    pub inbound: RandomSet,
    /// Connections with taken output not yet sent.
    pub outbound: RandomSet,
    /// Connections with bytes or an EOF for the client to read.
    pub readable: RandomSet,
    /// Connections their client gave up without closing (it connected anew): the network
    /// resets each of them some time later.
    pub abandoned: RandomSet,
    slots: Vec<Slots>,
    by_id: Vec<BTreeMap<ConnId, ConnIndex>>,
    links: Vec<Link>,
    touched: Vec<bool>,
    /// Connections fed packets this turn.
    fed: Vec<ConnIndex>,
    /// Connections the runtime reported closed this turn: actions the broker had already
    /// queued for them (before it heard) are not breaches.
    closed_this_turn: Vec<(WorkerId, ConnId)>,
    /// Ids the brokers gave up, for late "socket closed" completions (which must be ignored).
    stale_ids: Vec<(WorkerId, ConnId)>,
    step: u64,
    /// `interest[to][from]`: the filters worker `to` has been told (so far, in link order)
    /// that worker `from` has local subscribers for.
    interest: Vec<Vec<BTreeSet<String>>>,
    /// Per message, the workers its publisher's worker knew to want it when routing it (the
    /// union over retransmissions), itself included; a bitmask by worker index.
    pub reach: BTreeMap<MessageKey, u32>,
    /// Messages that reached a worker since the driver last looked (for the model).
    pub arrivals: Vec<(MessageKey, WorkerId)>,
    /// PUBLISHes fed to a broker since the driver last looked (for the model's order check).
    pub received: Vec<MessageKey>,
    /// Accepted connections with a will that ended this turn: `true` when the will must have
    /// been published (any end but DISCONNECT [MQTT-3.1.2-8]), `false` when it must not
    /// [MQTT-3.1.2-10].
    pub will_events: Vec<(ConnIndex, bool)>,
    /// Clients whose connections' events are printed (`SIM_TRACE=3,17`; `all` for every one).
    pub trace: Option<Vec<usize>>,
    /// The QoS 2 packet ids each client's session holds at the brokers, and so which QoS 2
    /// PUBLISHes are new publications [MQTT-4.3.3-2].
    pub receipts: Qos2Receipts,
    /// The requests each connection carries, and what the brokers processed.
    pub requests: Requests,
}

impl Runtime {
    pub fn new(config: BrokerConfig, workers: u16, wire: Wire, knobs: RuntimeKnobs) -> Self {
        assert!(workers >= 1);
        let now = Millis(1_000);
        let largest_packet = config.max_packet_size + 5;
        let output_bound_bytes = config.outbuf_bytes_max + largest_packet;
        let brokers =
            (0..workers).map(|w| Broker::new(config.clone(), WorkerId(w), workers, now)).collect();
        let count = workers as usize;
        Self {
            now,
            wire,
            knobs,
            brokers,
            conns: Vec::new(),
            output_bound_bytes,
            stats: RuntimeStats::default(),
            violations: Vec::new(),
            inbound: RandomSet::default(),
            outbound: RandomSet::default(),
            readable: RandomSet::default(),
            abandoned: RandomSet::default(),
            slots: (0..count).map(|_| Slots::default()).collect(),
            by_id: (0..count).map(|_| BTreeMap::new()).collect(),
            links: (0..count * count).map(|_| Link::default()).collect(),
            touched: vec![false; count],
            fed: Vec::new(),
            closed_this_turn: Vec::new(),
            stale_ids: Vec::new(),
            step: 0,
            trace: None,
            receipts: Qos2Receipts::default(),
            requests: Requests::default(),
            interest: vec![vec![BTreeSet::new(); count]; count],
            reach: BTreeMap::new(),
            arrivals: Vec::new(),
            received: Vec::new(),
            will_events: Vec::new(),
        }
    }

    pub fn workers(&self) -> usize {
        self.brokers.len()
    }

    fn violation(&mut self, text: String) {
        if self.violations.len() < 100 {
            self.violations.push(format!("step {} t={}ms: {text}", self.step, self.now.0));
        }
    }

    /// A new TCP connection from `client`, accepted by `worker` (SO_REUSEPORT picks one).
    pub fn open(&mut self, client: usize, worker: WorkerId) -> ConnIndex {
        let id = self.slots[worker.index()].allocate();
        let index = self.conns.len();
        self.conns.push(SimConn {
            client,
            worker,
            id,
            state: ConnState::Open,
            client_gone: false,
            client_eof: false,
            to_broker_bytes: BytesMut::new(),
            to_broker_packets: VecDeque::new(),
            broker_in: BytesMut::new(),
            connect_fed: false,
            connects_fed: 0,
            second_connect: false,
            fed_this_turn: false,
            taken: VecDeque::new(),
            taken_bytes: 0,
            to_client: BytesMut::new(),
            finished: false,
            accepted: false,
            will: None,
        });
        self.by_id[worker.index()].insert(id, index);
        self.stats.connections_opened += 1;
        self.trace_conn(index, || "opened".into());
        self.brokers[worker.index()].handle_open(id, self.now);
        self.touched[worker.index()] = true;
        index
    }

    /// The client writes `packet` to its socket.
    pub fn client_write(&mut self, conn: ConnIndex, packet: Packet) {
        let c = &mut self.conns[conn];
        if c.client_eof || c.client_gone {
            return;
        }
        match self.wire {
            Wire::Bytes => protocol::encode(&packet, &mut c.to_broker_bytes),
            Wire::Packets => c.to_broker_packets.push_back(packet),
        }
        self.inbound.insert(conn);
    }

    /// The client put a will in the CONNECT it wrote on `conn`.
    pub fn set_will(&mut self, conn: ConnIndex, topic: String, payload: Bytes) {
        self.conns[conn].will = Some((topic, payload));
    }

    /// The client read CONNACK 0 on `conn`.
    pub fn mark_accepted(&mut self, conn: ConnIndex) {
        self.conns[conn].accepted = true;
    }

    /// An accepted connection with a will ended at the broker; `published` tells whether the
    /// will went out (any end but DISCONNECT).
    fn will_event(&mut self, conn: ConnIndex, published: bool) {
        let c = &self.conns[conn];
        let Some((topic, payload)) = c.will.clone().filter(|_| c.accepted) else { return };
        if published {
            self.note_reach(c.worker, &topic, &payload);
        }
        self.will_events.push((conn, published));
    }

    /// The client half-closes after what it wrote (the graceful end after DISCONNECT).
    pub fn client_shutdown(&mut self, conn: ConnIndex) {
        self.conns[conn].client_eof = true;
        self.inbound.insert(conn);
    }

    /// The client end vanishes (crash, or a client that gave the socket up): unsent bytes in
    /// both directions are lost and the broker hears of it at once.
    pub fn client_crash(&mut self, conn: ConnIndex) {
        self.trace_conn(conn, || "client crashed".into());
        let now = self.now;
        let c = &mut self.conns[conn];
        c.to_broker_bytes.clear();
        c.to_broker_packets.clear();
        c.broker_in.clear();
        c.to_client.clear();
        c.taken.clear();
        c.taken_bytes = 0;
        c.finished = true;
        self.inbound.remove(conn);
        self.outbound.remove(conn);
        self.readable.remove(conn);
        match c.state {
            ConnState::Open => {
                let (worker, id) = (c.worker, c.id);
                c.state = ConnState::ClosedByClient;
                self.will_event(conn, true);
                self.brokers[worker.index()].handle_closed(id, now);
                self.touched[worker.index()] = true;
                self.closed_this_turn.push((worker, id));
                self.forget_id(worker, id);
            }
            ConnState::InHandoff => c.client_gone = true,
            ConnState::ClosedByBroker(_) => {
                let (worker, id) = (c.worker, c.id);
                c.state = ConnState::ClosedByClient;
                self.forget_id(worker, id);
            }
            ConnState::ClosedByClient => {}
        }
    }

    /// The runtime is done with `id` on `worker`: its slot may be reused.
    fn forget_id(&mut self, worker: WorkerId, id: ConnId) {
        if self.by_id[worker.index()].remove(&id).is_some() {
            self.slots[worker.index()].release(id);
            self.stale_ids.push((worker, id));
        }
    }

    /// Reads up to a random chunk of `conn`'s bytes on the broker side and feeds the packets.
    pub fn deliver_inbound(&mut self, conn: ConnIndex, rng: &mut Rng) {
        let c = &mut self.conns[conn];
        match c.state {
            ConnState::Open if c.connect_fed => return,
            ConnState::Open => {}
            ConnState::InHandoff => return,
            ConnState::ClosedByBroker(_) | ConnState::ClosedByClient => {
                // The socket is closed: whatever the client still wrote goes nowhere.
                c.to_broker_bytes.clear();
                c.to_broker_packets.clear();
                c.broker_in.clear();
                c.client_eof = false;
                self.inbound.remove(conn);
                return;
            }
        }
        let (worker, id) = (c.worker, c.id);
        match self.wire {
            Wire::Bytes => {
                let chunk = rng.between(1, self.knobs.read_chunk_bytes_max as u64) as usize;
                let chunk = chunk.min(c.to_broker_bytes.len());
                let bytes = c.to_broker_bytes.split_to(chunk);
                c.broker_in.extend_from_slice(&bytes);
                self.stats.bytes_to_brokers += chunk as u64;
                self.feed_decoded(conn);
            }
            Wire::Packets => {
                let count = rng.between(1, 4);
                for _ in 0..count {
                    let c = &mut self.conns[conn];
                    if c.connect_fed || !c.is_open() {
                        break;
                    }
                    let Some(packet) = c.to_broker_packets.pop_front() else { break };
                    self.feed_packet(conn, packet);
                }
            }
        }
        let c = &mut self.conns[conn];
        let drained = c.to_broker_bytes.is_empty()
            && c.to_broker_packets.is_empty()
            && c.broker_in.is_empty();
        if drained && c.client_eof && c.is_open() && !c.fed_this_turn {
            // EOF after the last byte: the peer went away without the broker closing first.
            c.client_eof = false;
            c.state = ConnState::ClosedByClient;
            c.finished = true;
            self.trace_conn(conn, || "EOF from client: handle_closed".into());
            self.brokers[worker.index()].handle_closed(id, self.now);
            self.touched[worker.index()] = true;
            self.forget_id(worker, id);
        }
        if !self.conns[conn].wants_inbound() {
            self.inbound.remove(conn);
        }
    }

    fn feed_decoded(&mut self, conn: ConnIndex) {
        loop {
            let c = &mut self.conns[conn];
            if c.connect_fed || !c.is_open() {
                return;
            }
            let max = self.brokers[c.worker.index()].config().max_packet_size;
            match protocol::decode(&mut c.broker_in, max) {
                Ok(Some(packet)) => self.feed_packet(conn, packet),
                Ok(None) => return,
                Err(error) => {
                    let (worker, id) = (c.worker, c.id);
                    c.broker_in.clear();
                    c.to_broker_bytes.clear();
                    self.violation(format!(
                        "decode of client bytes failed on {id:?}: {error} (the sim's clients \
                         only write valid packets)"
                    ));
                    self.brokers[worker.index()].handle_decode_error(id, error, self.now);
                    self.touched[worker.index()] = true;
                    return;
                }
            }
        }
    }

    fn feed_packet(&mut self, conn: ConnIndex, packet: Packet) {
        let c = &mut self.conns[conn];
        let (worker, id) = (c.worker, c.id);
        if matches!(packet, Packet::Connect(_)) {
            c.connect_fed = true;
            c.second_connect |= c.connects_fed > 0;
            c.connects_fed += 1;
        }
        if !c.fed_this_turn {
            c.fed_this_turn = true;
            self.fed.push(conn);
        }
        self.trace_conn(conn, || format!("fed {}", describe(&packet)));
        if let Packet::Publish(publish) = &packet {
            self.note_reach(worker, publish.topic.as_str(), &publish.payload);
            self.note_qos2_publish(conn, publish);
            if let Some((key, _)) = decode_payload(&publish.payload) {
                self.received.push(key);
            }
        }
        self.note_request_fed(conn, &packet);
        let connect = matches!(packet, Packet::Connect(_));
        self.brokers[worker.index()].handle_packet(id, packet, self.now);
        self.touched[worker.index()] = true;
        if connect {
            self.note_connect_handled(conn);
        }
    }

    /// The socket sends a random part of what was taken (at most what the client's receive
    /// buffer has room for) and the broker is told how much.
    pub fn deliver_outbound(&mut self, conn: ConnIndex, rng: &mut Rng) {
        let socket_bytes_max = self.knobs.socket_bytes_max;
        let c = &mut self.conns[conn];
        if c.taken_bytes == 0 {
            self.outbound.remove(conn);
            return;
        }
        let room = match c.state {
            // Closing: the runtime flushes what it took without waiting for the reader.
            ConnState::ClosedByBroker(_) => c.taken_bytes,
            _ => socket_bytes_max.saturating_sub(c.to_client.len()),
        };
        if room == 0 {
            return;
        }
        let limit = room.min(c.taken_bytes);
        let count = if rng.chance(500) { limit } else { rng.between(1, limit as u64) as usize };
        if count < c.taken_bytes {
            self.stats.partial_sends += 1;
        }
        let mut left = count;
        while left > 0 {
            let front = c.taken.front_mut().expect("taken_bytes counts the taken segments");
            let part = left.min(front.len());
            c.to_client.extend_from_slice(&front[..part]);
            front.advance(part);
            if front.is_empty() {
                c.taken.pop_front();
            }
            left -= part;
        }
        c.taken_bytes -= count;
        self.stats.bytes_to_clients += count as u64;
        if !c.finished {
            self.readable.insert(conn);
        }
        let (worker, id, state) = (c.worker, c.id, c.state);
        if c.taken_bytes == 0 {
            self.outbound.remove(conn);
        }
        match state {
            ConnState::Open => {
                self.brokers[worker.index()].handle_sent(id, count, self.now);
                self.touched[worker.index()] = true;
            }
            ConnState::ClosedByBroker(_) if self.conns[conn].taken_bytes == 0 => {
                self.forget_id(worker, id);
            }
            _ => {}
        }
    }

    /// What the client can read from `conn`: its receive buffer, and whether EOF follows it.
    pub fn client_buffer(&mut self, conn: ConnIndex) -> (&mut BytesMut, bool) {
        let c = &mut self.conns[conn];
        let eof = matches!(c.state, ConnState::ClosedByBroker(_)) && c.taken_bytes == 0;
        (&mut c.to_client, eof)
    }

    /// The client is done with `conn` (saw EOF, or abandoned it after a takeover).
    pub fn client_finished(&mut self, conn: ConnIndex) {
        self.conns[conn].finished = true;
        self.readable.remove(conn);
    }

    /// The client leaves `conn` without closing it (it opened a new connection instead).
    pub fn client_abandon(&mut self, conn: ConnIndex) {
        self.client_finished(conn);
        if !matches!(self.conns[conn].state, ConnState::ClosedByClient) {
            self.abandoned.insert(conn);
        }
    }

    /// The network resets an abandoned connection (e.g. the NAT entry expired).
    pub fn reset_abandoned(&mut self, conn: ConnIndex) {
        self.abandoned.remove(conn);
        self.client_crash(conn);
    }

    /// The client read everything there was; it leaves the readable set until more comes.
    pub fn client_drained(&mut self, conn: ConnIndex) {
        let (buffer, eof) = self.client_buffer(conn);
        if buffer.is_empty() && !eof {
            self.readable.remove(conn);
        }
    }

    /// Advances the fake clock and runs `handle_tick` on every worker whose deadline passed.
    pub fn advance(&mut self, millis: u64) {
        self.now = self.now.plus_millis(millis);
        for w in 0..self.workers() {
            let due = self.brokers[w].next_deadline().is_some_and(|d| d <= self.now);
            if due {
                self.brokers[w].handle_tick(self.now);
                self.stats.ticks += 1;
                self.touched[w] = true;
            }
        }
    }

    /// Ends a loop turn: drains the actions of every worker that had events.
    pub fn end_turn(&mut self, rng: &mut Rng) {
        while let Some(worker) = self.touched.iter().position(|&t| t) {
            self.touched[worker] = false;
            self.drain(WorkerId(worker as u16), rng);
        }
        self.closed_this_turn.clear();
        for conn in std::mem::take(&mut self.fed) {
            self.check_second_connect(conn);
            let c = &mut self.conns[conn];
            c.connect_fed = false;
            c.fed_this_turn = false;
            if c.wants_inbound() {
                self.inbound.insert(conn);
            }
        }
        self.step += 1;
    }

    /// A second CONNECT on a connection is a protocol violation: the broker must have closed
    /// the connection, for that reason, in the turn it read it [MQTT-3.1.0-2].
    fn check_second_connect(&mut self, conn: ConnIndex) {
        let c = &self.conns[conn];
        if !c.second_connect {
            return;
        }
        let (id, state) = (c.id, c.state);
        match state {
            ConnState::ClosedByBroker(CloseReason::ProtocolViolation(_))
            | ConnState::ClosedByClient => {}
            other => self.violation(format!(
                "{id:?} read a second CONNECT and is {other:?}, not closed for a protocol \
                 violation [MQTT-3.1.0-2]"
            )),
        }
        self.conns[conn].second_connect = false;
    }

    /// A late "socket closed" completion for a connection the broker already gave up: the
    /// broker must ignore it (the slot may already serve a newer generation).
    pub fn poke_stale_close(&mut self, rng: &mut Rng) {
        if self.stale_ids.is_empty() {
            return;
        }
        let (worker, id) = self.stale_ids.swap_remove(rng.index(self.stale_ids.len()));
        self.stats.stale_closes += 1;
        self.brokers[worker.index()].handle_closed(id, self.now);
        self.touched[worker.index()] = true;
    }

    fn drain(&mut self, worker: WorkerId, rng: &mut Rng) {
        while let Some(action) = self.brokers[worker.index()].poll_action() {
            match action {
                Action::Send(id) => self.on_send(worker, id),
                Action::Close(id, reason) => self.on_close(worker, id, reason),
                Action::Remote { to, msg } => self.on_remote(worker, to, msg, rng),
                Action::Handoff { conn, to, connect, .. } => {
                    self.on_handoff(worker, conn, to, connect, rng)
                }
            }
        }
        self.check_output_taken(worker, rng);
    }

    fn known(&mut self, worker: WorkerId, id: ConnId, what: &str) -> Option<ConnIndex> {
        let found = self.by_id[worker.index()].get(&id).copied();
        match found {
            Some(conn) if self.conns[conn].is_open() => Some(conn),
            _ if self.closed_this_turn.contains(&(worker, id)) => None,
            _ => {
                self.violation(format!(
                    "worker {} emitted {what} for {id:?}, which it had closed, handed off or \
                     never opened",
                    worker.0
                ));
                None
            }
        }
    }

    fn on_send(&mut self, worker: WorkerId, id: ConnId) {
        let Some(conn) = self.known(worker, id, "Send") else { return };
        let taken = self.take(conn, worker, id);
        self.trace_conn(conn, || format!("Send: took {taken} bytes"));
        if self.conns[conn].taken_bytes == 0 {
            self.stats.sends_with_nothing_to_take += 1;
        }
    }

    fn take(&mut self, conn: ConnIndex, worker: WorkerId, id: ConnId) -> usize {
        let mut segments = Vec::new();
        let count = self.brokers[worker.index()].take_output(id, &mut segments);
        let sum: usize = segments.iter().map(Bytes::len).sum();
        if sum != count {
            self.violation(format!("take_output({id:?}) returned {count} but gave {sum} bytes"));
        }
        self.note_pubcomps(conn, &segments);
        let c = &mut self.conns[conn];
        c.taken.extend(segments.into_iter().filter(|s| !s.is_empty()));
        c.taken_bytes += sum;
        let taken = c.taken_bytes;
        self.stats.output_bytes_peak = self.stats.output_bytes_peak.max(taken);
        if taken > 0 {
            self.outbound.insert(conn);
        }
        if taken > self.output_bound_bytes {
            self.violation(format!(
                "{id:?} on worker {} has {taken} output bytes waiting, above outbuf_bytes_max + \
                 one packet = {}",
                worker.0, self.output_bound_bytes
            ));
        }
        sum
    }

    fn on_close(&mut self, worker: WorkerId, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.known(worker, id, "Close") else { return };
        self.trace_conn(conn, || format!("Close({reason:?})"));
        *self.stats.closes.entry(close_reason_name(reason)).or_default() += 1;
        // A refused CONNECT's CONNACK may outlive its connection: take it once more.
        self.take(conn, worker, id);
        match reason {
            CloseReason::ClientDisconnect => self.will_event(conn, false),
            CloseReason::ConnectRefused(_) | CloseReason::ConnectTimeout => {}
            _ => self.will_event(conn, true),
        }
        let c = &mut self.conns[conn];
        c.state = ConnState::ClosedByBroker(reason);
        if c.taken_bytes == 0 {
            self.forget_id(worker, id);
        }
        if !self.conns[conn].finished {
            self.readable.insert(conn);
        }
    }

    /// After a drain every open connection's output has been taken (the runtime takes on each
    /// `Send`), so a sample of them must have nothing left: output without `Send` would sit
    /// there until something else happened to wake the connection.
    fn check_output_taken(&mut self, worker: WorkerId, rng: &mut Rng) {
        let ids: Vec<(ConnId, ConnIndex)> = {
            let map = &self.by_id[worker.index()];
            if map.is_empty() {
                return;
            }
            let skip = rng.index(map.len());
            map.iter().skip(skip).take(2).map(|(id, c)| (*id, *c)).collect()
        };
        for (id, conn) in ids {
            if !self.conns[conn].is_open() {
                continue;
            }
            if self.take(conn, worker, id) > 0 {
                self.violation(format!(
                    "{id:?} on worker {} had output that no Action::Send announced",
                    worker.0
                ));
            }
        }
    }

    /// Whether nothing is moving: no link items, nothing to read, send or feed.
    pub fn is_idle(&self) -> bool {
        self.links_empty() && self.inbound.is_empty() && self.outbound.is_empty()
    }
}
