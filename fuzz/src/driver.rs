//! A compact, adversarial driver of one to three [`Broker`]s for the `broker` fuzz target.
//!
//! The fuzzer's input is a configuration with small bounds and a list of [`Op`]s: clients
//! open connections on any worker and send any packet (well-formed or not, in any order, as
//! bytes through `protocol::decode`, the way the runtime feeds the core), sockets drain slowly,
//! clients vanish, time jumps, cross-worker messages are held back and released in FIFO order.
//! The driver plays the runtime's side of the contract in `broker/mod.rs` and checks, after
//! every event:
//! - no panic (the core's own `assert!`s included);
//! - every action names a connection the broker still has, and a `Handoff` goes to the client
//!   id's home worker;
//! - a connection's output taken and not yet reported sent stays within twice
//!   `outbuf_bytes_max` plus one largest packet: publishes stop at `outbuf_bytes_max`, control
//!   packets (acknowledgements, SUBACK, PINGRESP) are written past it, and a connection whose
//!   output passes twice the bound is closed as a slow consumer (`write_control`); the first
//!   fuzz run found the `outbuf_bytes_max + one packet` this check began with too tight;
//! - everything the broker writes decodes as server-to-client MQTT, CONNACK first
//!   [MQTT-3.2.0-1];
//! - a CONNECT is answered (CONNACK or handoff) at once; a first packet that is not CONNECT
//!   [MQTT-3.1.0-1], a second CONNECT [MQTT-3.1.0-2], bytes the codec refuses, a server-side
//!   packet, or DISCONNECT close the connection at once;
//! - a `handle_closed` for a connection the broker already gave up changes nothing.
//!
//! At the end ([`Driver::finish`]) every connection goes away, every client id used connects
//! once more with CleanSession=1 (which discards its stored session [MQTT-3.1.2-6]) and
//! disconnects, and then every broker must hold no connection, session, subscription, queued
//! or inflight message, and have no output left that it never announced with `Send`.
//!
//! `RINGMQ_FUZZ_TRACE=1` prints every op with the connection it resolved to, every action
//! and every packet a client received, to decode an input into readable steps
//! (`RINGMQ_FUZZ_TRACE=1 cargo fuzz run broker <input>`).
//!
//! This is its own driver, not the simulation's harness (`tests/sim`): the simulation's
//! clients follow the protocol so that delivery can be judged, while this one sends whatever
//! the fuzzer picks, and judges bounds and bookkeeping rather than delivery.

use std::collections::{BTreeSet, VecDeque};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use ringmq::broker::{home_worker, Action, Broker, BrokerConfig, ConnId, Millis, WorkerId};
use ringmq::protocol::encode::encoded_len;
use ringmq::protocol::{
    decode, encode, Connack, Connect, ConnectReturnCode, LastWill, Packet, PacketId,
    ProtocolVersion, Publish, QoS, Subscribe, TopicFilter, TopicName, Unsubscribe, Utf8Bytes,
};

/// Connections the driver keeps at once (closed ones are replaced by new ones).
const CONNS_MAX: usize = 10;
/// Client ids the fuzzer picks from: few, so takeovers and session resumption happen.
const CLIENT_IDS: [&str; 6] = ["", "a", "b", "c", "d", "e"];
const TOPICS: [&str; 6] = ["a", "a/b", "a/c", "b/b", "$SYS/x", "a/b/c"];
const FILTERS: [&str; 9] = ["a", "a/+", "#", "+/b", "a/#", "$SYS/#", "+", "a/b/c", "+/+/+"];

/// The bounds a run uses, kept small so that every one of them is hit.
#[derive(Arbitrary, Debug, Default)]
pub struct Knobs {
    pub workers: u8,
    pub packet_bytes: u16,
    pub outbuf_extra_bytes: u16,
    pub inflight: u8,
    pub queued_messages: u8,
    pub queued_bytes: u16,
    pub queue_qos0: bool,
    pub awaiting_pubrel: u8,
    pub keepalive_cap: u8,
    pub connect_timeout: u8,
    pub expiration: u8,
    pub sessions: u8,
    pub subscriptions: u8,
    pub retained: u8,
    pub retained_expiry: u8,
    pub sys_interval: u8,
    pub allow_anonymous: bool,
    pub slow_consumer_timeout: u8,
    /// End with `handle_shutdown` (every connection must be closed by it) instead of
    /// closing each connection from the client side.
    pub shutdown_at_end: bool,
}

impl Knobs {
    fn workers(&self) -> u16 {
        1 + u16::from(self.workers % 3)
    }

    // The `..default()` is there for knobs the core adds later: without it this crate, which
    // the workspace build does not compile, would break silently on the next new field.
    #[allow(clippy::needless_update)]
    fn config(&self) -> BrokerConfig {
        let max_packet_size = 128 + usize::from(self.packet_bytes % 4096);
        BrokerConfig {
            max_packet_size,
            max_inflight_messages: u16::from(self.inflight % 5),
            max_queued_messages: usize::from(self.queued_messages % 10),
            max_queued_bytes: usize::from(self.queued_bytes % 20_000),
            outbuf_bytes_max: max_packet_size + usize::from(self.outbuf_extra_bytes % 8192),
            queue_qos0_messages: self.queue_qos0,
            max_awaiting_pubrel: 1 + usize::from(self.awaiting_pubrel % 4),
            max_keepalive_secs: [0, 5, 60][usize::from(self.keepalive_cap % 3)],
            connect_timeout_secs: 1 + u32::from(self.connect_timeout % 10),
            persistent_client_expiration_secs: u64::from(self.expiration % 20),
            sessions_max: 1 + usize::from(self.sessions % 8),
            subscriptions_per_session_max: 1 + usize::from(self.subscriptions % 5),
            retained_messages_max: 1 + usize::from(self.retained % 4),
            retained_expiry_secs: u64::from(self.retained_expiry % 5),
            sys_interval_secs: [0, 1, 5][usize::from(self.sys_interval % 3)],
            allow_anonymous: self.allow_anonymous,
            slow_consumer_timeout_secs: u64::from(self.slow_consumer_timeout % 4),
            // A knob added to the core later keeps its default here until the driver varies it.
            ..BrokerConfig::default()
        }
    }
}

/// One thing that happens. `conn` picks among the driver's connections (modulo their count).
#[derive(Arbitrary, Debug)]
pub enum Op {
    Open {
        worker: u8,
    },
    Connect {
        conn: u8,
        client: u8,
        clean: bool,
        keepalive: u8,
        will: Option<Will>,
        user: bool,
    },
    Publish {
        conn: u8,
        topic: u8,
        qos: u8,
        retain: bool,
        dup: bool,
        id: u16,
        payload: u16,
    },
    /// The first `count % 4 + 1` of `filters` (filter, requested QoS). Fixed-size fields
    /// keep every op a few bytes, so random input makes many ops rather than one long one.
    Subscribe {
        conn: u8,
        id: u16,
        count: u8,
        filters: [(u8, u8); 4],
    },
    Unsubscribe {
        conn: u8,
        id: u16,
        count: u8,
        filters: [u8; 4],
    },
    /// PUBACK, PUBREC, PUBREL or PUBCOMP (by `kind`) for an id the client saw, or `id`.
    Ack {
        conn: u8,
        kind: u8,
        pick: u8,
        id: u16,
    },
    Ping {
        conn: u8,
    },
    Disconnect {
        conn: u8,
    },
    /// A packet only a server may send.
    ServerPacket {
        conn: u8,
        kind: u8,
    },
    /// Any bytes at all (the first `len % 33`), through the decoder; several in a row make
    /// longer ones.
    Raw {
        conn: u8,
        len: u8,
        bytes: [u8; 32],
    },
    /// The socket reports this many of the taken bytes sent (0: all of them).
    Sent {
        conn: u8,
        bytes: u16,
    },
    /// The client vanished: the socket closed without DISCONNECT.
    Vanish {
        conn: u8,
    },
    /// A late close completion for a connection the broker no longer has.
    StaleClose {
        pick: u8,
    },
    Advance {
        millis: u16,
    },
    /// Deliver up to `count` held cross-worker messages on one link.
    Deliver {
        link: u8,
        count: u8,
    },
}

#[derive(Arbitrary, Debug)]
pub struct Will {
    pub topic: u8,
    pub qos: u8,
    pub retain: bool,
    pub payload: u8,
}

#[derive(Debug)]
pub struct Input {
    pub knobs: Knobs,
    pub ops: Vec<Op>,
}

/// Most ops one input runs, to bound the time of one execution.
const OPS_MAX: usize = 4096;

/// Whether `RINGMQ_FUZZ_TRACE` asks for a trace (read once: the fuzzer runs this per input).
fn tracing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RINGMQ_FUZZ_TRACE").is_some())
}

fn trace(what: impl FnOnce() -> String) {
    if tracing() {
        eprintln!("{}", what());
    }
}

impl<'a> Arbitrary<'a> for Input {
    /// The knobs, then ops back to back until the bytes run out: every byte the fuzzer adds
    /// is more ops (the derived `Vec` would spend a continuation byte on each and stop early
    /// on random input).
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let knobs = Knobs::arbitrary(u)?;
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < OPS_MAX {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(Self { knobs, ops })
    }
}

/// What a connection must do after the packet just fed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Nothing,
    /// Closed by the broker at once (why).
    Close(&'static str),
    /// Answered with CONNACK, handed off, or closed.
    Answer,
}

#[derive(Debug)]
struct Conn {
    worker: WorkerId,
    id: ConnId,
    open: bool,
    connect_fed: bool,
    connack_seen: bool,
    /// Bytes the client wrote that the broker has not decoded yet.
    input: BytesMut,
    /// Decoding stopped after a refused packet, as the runtime does.
    input_refused: bool,
    /// Output taken from the broker and not yet reported sent.
    unsent_bytes: usize,
    /// Bytes the client received, not yet a whole packet.
    received: BytesMut,
    /// Packet ids of QoS 1/2 PUBLISHes and PUBRELs the client received, and its own PUBRECs.
    seen_ids: Vec<u16>,
    /// The last packets the client received (name, bytes), for a failure's message.
    recent: VecDeque<(&'static str, usize)>,
    expect: Expect,
}

/// What a run did, so a test can show the driver reaches the interesting parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub connacks_accepted: u64,
    pub publishes_delivered: u64,
    pub handoffs: u64,
    pub remote_messages: u64,
    pub closes_by_broker: u64,
}

/// The runtime's part, played for the fuzzer.
pub struct Driver {
    summary: Summary,
    shutdown_at_end: bool,
    config: BrokerConfig,
    workers: u16,
    brokers: Vec<Broker>,
    now: Millis,
    /// `links[from * workers + to]`: cross-worker messages held back, FIFO.
    links: Vec<VecDeque<ringmq::broker::RemoteMsg>>,
    conns: Vec<Conn>,
    /// Next generation of each worker's slots (slots are never reused here, generations are).
    next_generation: Vec<u32>,
    /// Ids the brokers have forgotten (for stale closes).
    stale: Vec<(WorkerId, ConnId)>,
    client_ids: BTreeSet<&'static str>,
    output_bound_bytes: usize,
}

impl Driver {
    pub fn new(knobs: &Knobs) -> Self {
        let config = knobs.config();
        let workers = knobs.workers();
        let now = Millis(1_000);
        let brokers =
            (0..workers).map(|w| Broker::new(config.clone(), WorkerId(w), workers, now)).collect();
        Self {
            summary: Summary::default(),
            shutdown_at_end: knobs.shutdown_at_end,
            output_bound_bytes: 2 * config.outbuf_bytes_max + config.max_packet_size,
            config,
            workers,
            brokers,
            now,
            links: (0..workers * workers).map(|_| VecDeque::new()).collect(),
            conns: Vec::new(),
            next_generation: vec![0; usize::from(workers)],
            stale: Vec::new(),
            client_ids: BTreeSet::new(),
        }
    }

    /// Runs the whole input and the final checks.
    pub fn run(input: &Input) -> Summary {
        let mut driver = Self::new(&input.knobs);
        trace(|| format!("{:?} with {} workers: {:?}", input.knobs, driver.workers, driver.config));
        for (number, op) in input.ops.iter().enumerate() {
            trace(|| format!("op {number} at {}ms: {}", driver.now.0, driver.describe(op)));
            driver.apply(op);
        }
        trace(|| "finish".to_string());
        driver.finish()
    }

    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::Open { worker } => self.open(WorkerId(u16::from(worker) % self.workers)),
            Op::Connect { conn, client, clean, keepalive, ref will, user } => {
                let client_id = CLIENT_IDS[usize::from(client) % CLIENT_IDS.len()];
                self.client_ids.insert(client_id);
                let connect = connect_packet(client_id, clean, u16::from(keepalive), will, user);
                self.send(conn, &connect);
            }
            Op::Publish { conn, topic, qos, retain, dup, id, payload } => {
                let qos = QoS::from_u8(qos % 3).expect("0..=2");
                let packet_id = (qos != QoS::AtMostOnce).then(|| packet_id(id));
                let payload_bytes = usize::from(payload) % (self.config.max_packet_size + 64);
                let publish = Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic: TopicName::from_static(TOPICS[usize::from(topic) % TOPICS.len()]),
                    packet_id,
                    payload: Bytes::from(vec![b'p'; payload_bytes]),
                };
                self.send(conn, &Packet::Publish(publish));
            }
            Op::Subscribe { conn, id, count, filters } => {
                let count = usize::from(count % 4) + 1;
                let filters = filters[..count].iter().map(|&(f, q)| (filter(f), qos(q))).collect();
                let subscribe = Subscribe { packet_id: packet_id(id), filters };
                self.send(conn, &Packet::Subscribe(subscribe));
            }
            Op::Unsubscribe { conn, id, count, filters } => {
                let count = usize::from(count % 4) + 1;
                let filters = filters[..count].iter().map(|&f| filter(f)).collect();
                let unsubscribe = Unsubscribe { packet_id: packet_id(id), filters };
                self.send(conn, &Packet::Unsubscribe(unsubscribe));
            }
            Op::Ack { conn, kind, pick, id } => self.ack(conn, kind, pick, id),
            Op::Ping { conn } => self.send(conn, &Packet::Pingreq),
            Op::Disconnect { conn } => self.send(conn, &Packet::Disconnect),
            Op::ServerPacket { conn, kind } => self.send(conn, &server_packet(kind)),
            Op::Raw { conn, len, ref bytes } => self.feed(conn, &bytes[..usize::from(len % 33)]),
            Op::Sent { conn, bytes } => self.sent(conn, bytes),
            Op::Vanish { conn } => self.vanish(conn),
            Op::StaleClose { pick } => self.stale_close(pick),
            Op::Advance { millis } => self.advance(u64::from(millis)),
            Op::Deliver { link, count } => {
                self.deliver(usize::from(link) % self.links.len(), usize::from(count))
            }
        }
    }

    /// `op` with the connection it picks, for the trace.
    fn describe(&self, op: &Op) -> String {
        let conn = match *op {
            Op::Connect { conn, .. }
            | Op::Publish { conn, .. }
            | Op::Subscribe { conn, .. }
            | Op::Unsubscribe { conn, .. }
            | Op::Ack { conn, .. }
            | Op::Ping { conn }
            | Op::Disconnect { conn }
            | Op::ServerPacket { conn, .. }
            | Op::Raw { conn, .. }
            | Op::Sent { conn, .. }
            | Op::Vanish { conn } => conn,
            Op::Open { .. } | Op::StaleClose { .. } | Op::Advance { .. } | Op::Deliver { .. } => {
                return format!("{op:?}");
            }
        };
        match self.pick(conn) {
            Some(index) => {
                let state = &self.conns[index];
                let (worker, id, unsent) = (state.worker.0, state.id, state.unsent_bytes);
                format!("{op:?} -> conn {index} ({id:?} on w{worker}, {unsent} B unsent)")
            }
            None => format!("{op:?} -> no open connection"),
        }
    }

    fn open(&mut self, worker: WorkerId) {
        if let Some(index) = self.conns.iter().position(|conn| !conn.open) {
            self.conns.swap_remove(index);
        } else if self.conns.len() >= CONNS_MAX {
            return;
        }
        let id = self.allocate(worker);
        self.conns.push(Conn {
            worker,
            id,
            open: true,
            connect_fed: false,
            connack_seen: false,
            input: BytesMut::new(),
            input_refused: false,
            unsent_bytes: 0,
            received: BytesMut::new(),
            seen_ids: Vec::new(),
            recent: VecDeque::new(),
            expect: Expect::Nothing,
        });
        self.brokers[worker.index()].handle_open(id, self.now);
        self.settle();
    }

    /// The lowest slot of `worker` that no open connection holds, with a new generation: a
    /// reused slot, as the runtime has. The runtime reuses a slot only once the broker has let
    /// go of its previous occupant (its `Close` action, our `handle_closed`, or a handoff),
    /// and the broker's connection table relies on that (`broker/conn_table.rs`), so the
    /// driver keeps to it: two open connections never share a slot.
    fn allocate(&mut self, worker: WorkerId) -> ConnId {
        let held = |slot: u32| {
            self.conns
                .iter()
                .any(|conn| conn.open && conn.worker == worker && conn.id.slot() == slot)
        };
        let slot = (0..).find(|&slot| !held(slot)).expect("fewer open connections than slots");
        let generation = &mut self.next_generation[worker.index()];
        *generation += 1;
        ConnId::new(slot, *generation)
    }

    /// The open connection `pick` chooses, if any.
    fn pick(&self, pick: u8) -> Option<usize> {
        let open: Vec<usize> = (0..self.conns.len()).filter(|&i| self.conns[i].open).collect();
        (!open.is_empty()).then(|| open[usize::from(pick) % open.len()])
    }

    fn send(&mut self, conn: u8, packet: &Packet) {
        let mut bytes = BytesMut::new();
        encode(packet, &mut bytes);
        self.feed(conn, &bytes);
    }

    fn ack(&mut self, conn: u8, kind: u8, pick: u8, id: u16) {
        let Some(index) = self.pick(conn) else {
            return;
        };
        let seen = &self.conns[index].seen_ids;
        let id = if seen.is_empty() {
            packet_id(id)
        } else {
            packet_id(seen[pick as usize % seen.len()])
        };
        let packet = match kind % 4 {
            0 => Packet::Puback(id),
            1 => Packet::Pubrec(id),
            2 => Packet::Pubrel(id),
            _ => Packet::Pubcomp(id),
        };
        self.send(conn, &packet);
    }

    /// The client writes `bytes`; the broker decodes what is whole, packet by packet, and the
    /// driver drains the actions after each packet (the contract asks that after a CONNECT).
    fn feed(&mut self, conn: u8, bytes: &[u8]) {
        let Some(index) = self.pick(conn) else {
            return;
        };
        self.conns[index].input.extend_from_slice(bytes);
        while self.conns[index].open && !self.conns[index].input_refused {
            let state = &mut self.conns[index];
            let (worker, id) = (state.worker, state.id);
            match decode(&mut state.input, self.config.max_packet_size) {
                Ok(None) => return,
                Ok(Some(packet)) => {
                    state.expect = expectation(state, &packet);
                    if matches!(packet, Packet::Connect(_)) {
                        state.connect_fed = true;
                    }
                    self.brokers[worker.index()].handle_packet(id, packet, self.now);
                }
                Err(error) => {
                    state.input_refused = true;
                    state.expect = Expect::Close("bytes the codec refused");
                    self.brokers[worker.index()].handle_decode_error(id, error, self.now);
                }
            }
            self.settle();
            self.check_expectation(index);
        }
    }

    fn check_expectation(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        match std::mem::replace(&mut conn.expect, Expect::Nothing) {
            Expect::Nothing => {}
            Expect::Close(why) => assert!(!conn.open, "{:?} still open after {why}", conn.id),
            Expect::Answer => assert!(
                !conn.open || conn.connack_seen,
                "{:?}: CONNECT neither answered, handed off nor closed",
                conn.id
            ),
        }
    }

    fn sent(&mut self, conn: u8, bytes: u16) {
        let Some(index) = self.pick(conn) else {
            return;
        };
        let state = &mut self.conns[index];
        let bytes = match usize::from(bytes) {
            0 => state.unsent_bytes,
            bytes => bytes.min(state.unsent_bytes),
        };
        if bytes == 0 {
            return;
        }
        state.unsent_bytes -= bytes;
        let (worker, id) = (state.worker, state.id);
        self.brokers[worker.index()].handle_sent(id, bytes, self.now);
        self.settle();
    }

    fn vanish(&mut self, conn: u8) {
        let Some(index) = self.pick(conn) else {
            return;
        };
        let (worker, id) = (self.conns[index].worker, self.conns[index].id);
        self.forget(index);
        self.brokers[worker.index()].handle_closed(id, self.now);
        self.settle();
    }

    fn stale_close(&mut self, pick: u8) {
        if self.stale.is_empty() {
            return;
        }
        let (worker, id) = self.stale[usize::from(pick) % self.stale.len()];
        let broker = &mut self.brokers[worker.index()];
        let before = (broker.connection_count(), broker.session_count());
        broker.handle_closed(id, self.now);
        if let Some(action) = broker.poll_action() {
            panic!("a close of forgotten {id:?} caused {action:?}");
        }
        assert_eq!(before, (broker.connection_count(), broker.session_count()));
    }

    fn advance(&mut self, millis: u64) {
        self.now = self.now.plus_millis(millis);
        for broker in &mut self.brokers {
            if broker.next_deadline().is_some_and(|deadline| deadline <= self.now) {
                broker.handle_tick(self.now);
            }
        }
        self.settle();
    }

    fn deliver(&mut self, link: usize, count: usize) {
        let (from, to) = (link / usize::from(self.workers), link % usize::from(self.workers));
        for _ in 0..count {
            let Some(msg) = self.links[link].pop_front() else {
                break;
            };
            self.brokers[to].handle_remote(WorkerId(from as u16), msg, self.now);
            self.settle();
        }
    }

    /// Drains every broker's actions until none has any.
    fn settle(&mut self) {
        loop {
            let mut acted = false;
            for worker in 0..self.brokers.len() {
                while let Some(action) = self.brokers[worker].poll_action() {
                    acted = true;
                    self.act(WorkerId(worker as u16), action);
                }
            }
            if !acted {
                return;
            }
        }
    }

    fn conn_index(&self, worker: WorkerId, id: ConnId) -> usize {
        self.conns
            .iter()
            .position(|conn| conn.open && conn.worker == worker && conn.id == id)
            .unwrap_or_else(|| {
                panic!("worker {} acted on {id:?}, which it does not have", worker.0)
            })
    }

    fn act(&mut self, worker: WorkerId, action: Action) {
        trace(|| format!("  w{}: {action:?}", worker.0));
        match action {
            Action::Send(id) => {
                let index = self.conn_index(worker, id);
                self.take(index);
            }
            Action::Close(id, _reason) => {
                self.summary.closes_by_broker += 1;
                let index = self.conn_index(worker, id);
                // The final output (a refusing CONNACK) is taken once more, then the close.
                self.take(index);
                self.forget(index);
            }
            Action::Remote { to, msg } => {
                assert_ne!(to, worker, "a remote message to itself");
                self.summary.remote_messages += 1;
                self.links[worker.index() * usize::from(self.workers) + to.index()].push_back(msg);
            }
            Action::Handoff { conn: id, to, connect, .. } => {
                let index = self.conn_index(worker, id);
                assert_eq!(to, home_worker(connect.client_id.as_bytes(), self.workers));
                assert_ne!(to, worker, "a handoff to itself");
                self.summary.handoffs += 1;
                self.stale.push((worker, id));
                let new_id = self.allocate(to);
                let conn = &mut self.conns[index];
                conn.worker = to;
                conn.id = new_id;
                conn.unsent_bytes = 0;
                let broker = &mut self.brokers[to.index()];
                broker.handle_open(new_id, self.now);
                broker.handle_packet(new_id, Packet::Connect(connect), self.now);
            }
        }
    }

    /// Takes `conn`'s output: it must stay within the bound and decode as server packets.
    fn take(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        let mut out = Vec::new();
        let taken = self.brokers[conn.worker.index()].take_output(conn.id, &mut out);
        assert_eq!(taken, out.iter().map(Bytes::len).sum::<usize>());
        conn.unsent_bytes += taken;
        for chunk in out {
            conn.received.extend_from_slice(&chunk);
        }
        receive(conn, self.output_bound_bytes, &mut self.summary);
        assert!(
            conn.unsent_bytes <= self.output_bound_bytes,
            "{:?} has {} bytes of output taken and unsent, over the bound {}; the last packets \
             it got (name, bytes): {:?}",
            conn.id,
            conn.unsent_bytes,
            self.output_bound_bytes,
            conn.recent
        );
    }

    fn forget(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        conn.open = false;
        conn.unsent_bytes = 0;
        self.stale.push((conn.worker, conn.id));
    }

    /// Everything goes away; each client id connects clean once more and leaves; then the
    /// brokers must be empty.
    pub fn finish(mut self) -> Summary {
        self.flush_links();
        if self.shutdown_at_end {
            return self.shut_down();
        }
        for index in 0..self.conns.len() {
            if self.conns[index].open {
                self.check_no_unannounced_output(index);
                let (worker, id) = (self.conns[index].worker, self.conns[index].id);
                self.forget(index);
                self.brokers[worker.index()].handle_closed(id, self.now);
                self.settle();
            }
        }
        self.flush_links();
        // Only ids with a stored session: a new one could be refused at `sessions_max`.
        let stored: Vec<&'static str> =
            self.client_ids.iter().copied().filter(|&id| self.has_session(id)).collect();
        for client_id in stored {
            self.clean_visit(client_id);
        }
        self.flush_links();
        for broker in &self.brokers {
            let worker = broker.worker().0;
            assert_eq!(broker.connection_count(), 0, "worker {worker}: connections left");
            assert_eq!(broker.session_count(), 0, "worker {worker}: sessions left");
            assert_eq!(broker.subscription_count(), 0, "worker {worker}: subscriptions left");
            assert_eq!(broker.queued_message_count(), 0, "worker {worker}: messages queued");
            assert_eq!(broker.inflight_message_count(), 0, "worker {worker}: messages inflight");
            assert_eq!(broker.stats().clients_connected, 0, "worker {worker}: clients_connected");
        }
        self.summary
    }

    /// `handle_shutdown` on every worker must close every connection (wills are published
    /// through the still-running others), leaving no connection and no client connected.
    fn shut_down(mut self) -> Summary {
        for index in 0..self.conns.len() {
            if self.conns[index].open {
                self.check_no_unannounced_output(index);
            }
        }
        for worker in 0..self.brokers.len() {
            self.brokers[worker].handle_shutdown(self.now);
            self.settle();
            self.flush_links();
        }
        if let Some(conn) = self.conns.iter().find(|conn| conn.open) {
            panic!("{:?} on worker {} still open after handle_shutdown", conn.id, conn.worker.0);
        }
        for broker in &self.brokers {
            let worker = broker.worker().0;
            assert_eq!(broker.connection_count(), 0, "worker {worker}: connections left");
            assert_eq!(broker.stats().clients_connected, 0, "worker {worker}: clients_connected");
        }
        self.summary
    }

    /// A connection to worker 0 that connects `client_id` with CleanSession=1, then
    /// disconnects. It must be accepted: a clean CONNECT replaces any stored session, so
    /// `sessions_max` cannot refuse it.
    fn clean_visit(&mut self, client_id: &'static str) {
        self.open(WorkerId(0));
        let index = self.conns.len() - 1;
        let pick = u8::try_from(self.open_rank(index)).expect("at most CONNS_MAX connections");
        let keepalive = self.config.max_keepalive_secs;
        let connect = connect_packet(client_id, true, keepalive, &None, true);
        self.send(pick, &connect);
        self.flush_links();
        assert!(self.conns[index].connack_seen, "clean CONNECT of {client_id:?} not accepted");
        self.send(pick, &Packet::Disconnect);
        self.flush_links();
    }

    fn has_session(&self, client_id: &str) -> bool {
        let home = home_worker(client_id.as_bytes(), self.workers);
        !client_id.is_empty() && self.brokers[home.index()].session_info(client_id).is_some()
    }

    /// The position of connection `index` among the open ones (what `pick` takes).
    fn open_rank(&self, index: usize) -> usize {
        (0..index).filter(|&i| self.conns[i].open).count()
    }

    fn flush_links(&mut self) {
        while let Some(link) = self.links.iter().position(|link| !link.is_empty()) {
            self.deliver(link, usize::MAX);
        }
    }

    /// A `Send` was emitted for all output, so none may be left once the actions are drained.
    fn check_no_unannounced_output(&mut self, index: usize) {
        let conn = &self.conns[index];
        let mut out = Vec::new();
        let left = self.brokers[conn.worker.index()].take_output(conn.id, &mut out);
        assert_eq!(left, 0, "{:?}: {left} bytes of output without Action::Send", conn.id);
    }
}

/// What must follow feeding `packet` to `conn`.
fn expectation(conn: &Conn, packet: &Packet) -> Expect {
    match packet {
        Packet::Connect(_) if conn.connect_fed => Expect::Close("a second CONNECT [MQTT-3.1.0-2]"),
        Packet::Connect(_) => Expect::Answer,
        _ if !conn.connect_fed => Expect::Close("a first packet not CONNECT [MQTT-3.1.0-1]"),
        Packet::Disconnect => Expect::Close("DISCONNECT"),
        Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp => {
            Expect::Close("a server-to-client packet [MQTT-4.8.0-1]")
        }
        _ => Expect::Nothing,
    }
}

/// Decodes what the client received: server-to-client packets only, CONNACK first.
fn receive(conn: &mut Conn, limit: usize, summary: &mut Summary) {
    loop {
        let packet = match decode(&mut conn.received, limit) {
            Ok(Some(packet)) => packet,
            Ok(None) => return,
            Err(error) => {
                panic!("{:?}: the broker wrote bytes that are not MQTT: {error}", conn.id)
            }
        };
        if !conn.connack_seen {
            assert!(matches!(packet, Packet::Connack(_)), "first packet {packet:?} [MQTT-3.2.0-1]");
        }
        trace(|| format!("    {:?} got {} ({} B)", conn.id, packet.name(), encoded_len(&packet)));
        if conn.recent.len() == 24 {
            conn.recent.pop_front();
        }
        conn.recent.push_back((packet.name(), encoded_len(&packet)));
        match packet {
            Packet::Connack(Connack { code, .. }) => {
                assert!(!conn.connack_seen, "{:?}: a second CONNACK ({code:?})", conn.id);
                conn.connack_seen = true;
                summary.connacks_accepted += u64::from(code == ConnectReturnCode::Accepted);
            }
            Packet::Publish(Publish { packet_id, .. }) => {
                summary.publishes_delivered += 1;
                if let Some(id) = packet_id {
                    remember(&mut conn.seen_ids, id.get());
                }
            }
            Packet::Pubrel(id) => remember(&mut conn.seen_ids, id.get()),
            Packet::Pubrec(id) => remember(&mut conn.seen_ids, id.get()),
            Packet::Puback(_)
            | Packet::Pubcomp(_)
            | Packet::Suback(_)
            | Packet::Unsuback(_)
            | Packet::Pingresp => {}
            Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::Pingreq
            | Packet::Disconnect => panic!("the broker sent a client packet: {packet:?}"),
        }
    }
}

/// Keeps the last few ids a client saw, for its acknowledgements to pick from.
fn remember(ids: &mut Vec<u16>, id: u16) {
    if ids.len() == 16 {
        ids.remove(0);
    }
    ids.push(id);
}

fn packet_id(value: u16) -> PacketId {
    PacketId::new(value.max(1)).expect("non-zero")
}

fn qos(value: u8) -> QoS {
    QoS::from_u8(value % 3).expect("0..=2")
}

fn filter(pick: u8) -> TopicFilter {
    TopicFilter::try_from(FILTERS[usize::from(pick) % FILTERS.len()]).expect("valid filter")
}

fn connect_packet(
    client_id: &'static str,
    clean: bool,
    keep_alive_secs: u16,
    will: &Option<Will>,
    user: bool,
) -> Packet {
    let will = will.as_ref().map(|will| LastWill {
        topic: TopicName::from_static(TOPICS[usize::from(will.topic) % TOPICS.len()]),
        payload: Bytes::from(vec![b'w'; usize::from(will.payload)]),
        qos: qos(will.qos),
        retain: will.retain,
    });
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V311,
        clean_session: clean,
        keep_alive_secs,
        client_id: Utf8Bytes::from_static(client_id),
        will,
        username: user.then(|| Utf8Bytes::from_static("user")),
        password: None,
    }))
}

fn server_packet(kind: u8) -> Packet {
    let id = packet_id(1);
    match kind % 4 {
        0 => Packet::Connack(Connack { session_present: false, code: ConnectReturnCode::Accepted }),
        1 => Packet::Suback(ringmq::protocol::Suback {
            packet_id: id,
            return_codes: vec![ringmq::protocol::SubackCode::Failure],
        }),
        2 => Packet::Unsuback(id),
        _ => Packet::Pingresp,
    }
}
