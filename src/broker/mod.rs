//! The sans-IO broker core: everything ringmq decides, with no sockets, rings or clocks in it.
//!
//! One [`Broker`] runs per worker. The runtime (or a test) drives it with events — a connection
//! opened, a packet received, a decode error, a connection closed, bytes sent, a message from
//! another worker, time passed — and then drains [`Action`]s: output ready on a connection,
//! close a connection, send a message to another worker, hand a connection to its session's
//! home worker. Time is always an argument ([`Millis`]); nothing here reads a clock.
//!
//! # Contract with the runtime
//! - `handle_open(conn, now)` once per new connection, with a `ConnId` the runtime chose and
//!   will not reuse while the broker knows it (the runtime adds a generation to reused slots).
//! - `handle_packet` for each decoded packet, in order; `handle_decode_error` when the codec
//!   refuses the connection's bytes (the broker answers CONNACK 0x01 where the spec asks, then
//!   emits `Close`). Packets for a connection the broker no longer knows are ignored.
//! - After the events of a loop turn, `poll_action` until `None`. `Action::Send(conn)` means
//!   `take_output(conn, ..)` has bytes; it is emitted once per connection per transition from
//!   empty to non-empty output. The runtime sends what it took, in order, and reports each
//!   completed byte count with `handle_sent`, which lets the broker refill the connection from
//!   the session's queue (flow control lives here, not in the runtime). Bytes taken and not yet
//!   reported sent count against `outbuf_bytes_max`.
//! - `Action::Close(conn, reason)`: the broker has forgotten the connection (will, session
//!   and statistics are settled). The runtime calls `take_output(conn, ..)` once more — a
//!   refused CONNECT's CONNACK is the only output that outlives its connection, and is taken
//!   by the `Send` before the `Close` or by this call — sends what it took, then closes.
//! - `handle_closed(conn, now)` when the peer went away or the socket failed (not after a
//!   `Close` the broker asked for; unknown connections are ignored). An abnormal close
//!   publishes the will.
//! - `set_peer_addr(conn, addr)` after `handle_open` and before the connection's first packet,
//!   when the runtime knows the peer's address (it keys the failed-CONNECT limiter).
//! - `Action::Handoff { conn, to, connect, peer }`: the CONNECT's session lives on worker `to`
//!   ([`home_worker`] of the client id); the broker has forgotten `conn`, and the runtime moves
//!   the socket and any bytes after CONNECT to `to`, which calls `handle_open`, `set_peer_addr`
//!   with `peer` (if known), then `handle_packet(Packet::Connect(connect))`. A CONNECT with an empty client id is never
//!   handed off: its generated id is chosen to live here.
//! - `Action::Remote { to, msg }`: deliver `msg` to worker `to`'s `handle_remote`, FIFO per
//!   (from, to) pair. The runtime may hold it back (backpressure) but never drop or reorder it.
//!   A SUBACK that starts a filter's interest waits for every other worker's
//!   `RemoteMsg::InterestAck` (`interest.rs`), and a retained QoS 1/2 PUBLISH's PUBACK/PUBREC
//!   waits until every replica applied it (`retain_confirm.rs`), so a held-back channel
//!   delays those acknowledgements too.
//! - `handle_tick(now)` whenever `now >= next_deadline()`; it runs keepalive, connect
//!   timeouts, session and retained expiry, and the `$SYS` interval. Timers have
//!   [`keepalive::BUCKET_MILLIS`] precision: a deadline fires in the first tick at or after it
//!   and at most one bucket late. `next_deadline` may be early (a harmless re-check).
//! - `handle_shutdown(now)` closes every connection (`Close(.., Shutdown)`, wills published).
//! - `set_auth(tables)` swaps the password and ACL tables (a reload); connections stay.
//!
//! # Where things live
//! `connect.rs` CONNECT/CONNACK, handoff, takeover; `session.rs` the session table;
//! `subscribe.rs` SUBSCRIBE/UNSUBSCRIBE and retained-on-subscribe; `publish.rs` inbound
//! PUBLISH and routing; `delivery.rs` writing, queueing and refilling one session's output;
//! `inflight.rs` the QoS state machines; `connection.rs` connection state, output and closing;
//! `interest.rs` cross-worker interest and the SUBACKs that wait for it; `retain_confirm.rs`
//! the publisher acknowledgements that wait until a retained update is applied everywhere;
//! `durable.rs` the persistence journal and the acks held for it;
//! `will.rs`; `auth.rs` credentials, the failure limiter and ACL checks (`crate::auth` holds
//! the tables); `peer.rs` peer addresses; `keepalive.rs` the timing wheel; `route.rs` the
//! cross-worker protocol and
//! [`stable_hash`]; `sys.rs` `$SYS`; `stats.rs` the counters.
//!
//! Architecture Invariant: each packet is dispatched by the one `match` in
//! [`Broker::handle_packet`]; handlers never call back into the runtime, they push `Action`s.
//! Architecture Invariant: a session lives only on its client id's home worker.
#![forbid(unsafe_code)]

use std::fmt;

pub mod admin;
pub mod config;
pub mod ids;
pub mod keepalive;
pub mod retain;
pub mod route;
pub mod snapshot;
pub mod stats;
pub mod subscriptions;
mod topic_trie;

mod auth;
mod conn_table;
mod connect;
mod connection;
mod delivery;
mod durable;
mod inflight;
mod interest;
mod peer;
mod publish;
mod retain_confirm;
mod session;
mod subscribe;
mod sys;
mod will;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod topic_strategies;

pub use auth::{Verdict, VerifyJob};
pub use config::BrokerConfig;
pub use ids::{ConnId, Millis, SessionId, WorkerId, WorkerSet};
pub use peer::PeerAddr;
pub use retain_confirm::RetainToken;
pub use route::{home_worker, stable_hash};

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::protocol::{
    encode::encoded_len, Connect, ConnectReturnCode, DecodeError, OutBuf, Packet, PacketId, QoS,
    TopicFilter, TopicName, Utf8Bytes,
};
use connect::Connected;
use connection::Phase;
use ids::IdBuildHasher;
use retain::RetainedStore;
use subscriptions::{Matches, SubscriptionIndex};

/// An application message as the broker routes and queues it: shared, never copied.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    /// The QoS it was published with; each subscriber gets min(this, granted).
    pub qos: QoS,
    pub retain: bool,
}

/// Why the broker closed a connection. Counted per reason in the statistics.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The client's bytes broke the protocol.
    ProtocolError(DecodeError),
    /// A well-formed packet that is not allowed in this state (e.g. a second CONNECT
    /// [MQTT-3.1.0-2], or a first packet that is not CONNECT [MQTT-3.1.0-1]).
    ProtocolViolation(&'static str),
    /// CONNECT was answered with this refusal [MQTT-3.2.2-5].
    ConnectRefused(ConnectReturnCode),
    /// Nothing heard for 1.5 times the keepalive [MQTT-3.1.2-24].
    KeepaliveTimeout,
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// Another connection took over the session [MQTT-3.1.4-2].
    TakenOver,
    /// The client stayed at its session's queue bound without acknowledging anything for
    /// `slow_consumer_timeout_secs`, or let control packets (acknowledgements it asked for)
    /// pile up past twice `outbuf_bytes_max` without reading them.
    SlowConsumer,
    /// The broker is shutting down.
    Shutdown,
    /// An operator closed the connection through the admin API (its will is published: the
    /// client did not send DISCONNECT).
    Kicked,
    /// A reload of the password file removed the client's user or changed its password
    /// (`Broker::reload_auth`; its will is published, as in Mosquitto).
    CredentialsRevoked,
}

/// What the broker asks its driver to do. See the module documentation for the contract.
#[derive(Debug)]
pub enum Action {
    Send(ConnId),
    Close(ConnId, CloseReason),
    Remote { to: WorkerId, msg: RemoteMsg },
    Handoff { conn: ConnId, to: WorkerId, connect: Box<Connect>, peer: Option<PeerAddr> },
}

/// Messages between the brokers of different workers, FIFO per ordered pair.
#[derive(Debug)]
pub enum RemoteMsg {
    /// A publish for the receiving worker's matching sessions.
    Publish(Message),
    /// The sending worker now has (or no longer has) local subscribers of `filter`.
    /// The receiver applies it and answers `InterestAck`.
    Interest {
        filter: TopicFilter,
        interested: bool,
    },
    /// The sender applied the oldest `Interest` it had not yet acknowledged from the receiver
    /// (FIFO pairs make a count enough); SUBACKs waiting for it may go (see `interest.rs`).
    InterestAck,
    /// Retained message updates, serialised through the topic's owner worker so every replica
    /// applies them in one order. `Retain` asks the owner to apply one; `RetainApplied` is the
    /// owner's broadcast. An empty payload deletes. An update with a `token` is one a client's
    /// acknowledgement waits for (`retain_confirm.rs`): every replica confirms it to the
    /// worker that started it (`origin`: for `Retain`, its sender).
    Retain {
        message: Message,
        token: Option<RetainToken>,
    },
    RetainApplied {
        message: Message,
        origin: WorkerId,
        token: Option<RetainToken>,
    },
    /// The sender's replica applied the receiver's retained update `token`.
    RetainAck(RetainToken),
    /// From the owner: update `token` changed nothing (a delete of nothing, or a new topic
    /// at `retained_messages_max`), so no other replica will apply it.
    RetainUnchanged(RetainToken),
    /// A worker's counters for the `$SYS` aggregate kept by worker 0.
    Stats(Box<stats::WorkerStats>),
    /// Persistence: the sender's journal durably holds (the records of) the first `count`
    /// `Publish`/`Retain` messages the receiver sent it (see `durable.rs`).
    Durable {
        count: u64,
    },
    /// Persistence: a QoS 2 publish from a persistent session's client, with that client's
    /// id and the packet id, so that a copy re-sent after a crash is stored once (see
    /// `durable.rs`). Counted like `Publish` for durability.
    PublishOnce(Box<ForwardedQos2>),
    /// Persistence: the origin's client released a QoS 2 packet id (PUBREL), or (`packet_id`
    /// `None`) started a new persistent session: forget the id (all of its ids).
    Qos2Release {
        origin: Utf8Bytes,
        packet_id: Option<PacketId>,
    },
}

/// A QoS 2 message forwarded with its origin (`RemoteMsg::PublishOnce`).
#[derive(Clone, Debug)]
pub struct ForwardedQos2 {
    pub message: Message,
    pub origin: Utf8Bytes,
    pub packet_id: PacketId,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientDisconnect => f.write_str("client sent DISCONNECT"),
            Self::ProtocolError(error) => write!(f, "protocol error: {error}"),
            Self::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
            Self::ConnectRefused(code) => write!(f, "CONNECT refused: {code:?}"),
            Self::KeepaliveTimeout => f.write_str("keepalive expired"),
            Self::ConnectTimeout => f.write_str("no CONNECT before the connect timeout"),
            Self::TakenOver => f.write_str("session taken over by a new connection"),
            Self::SlowConsumer => f.write_str("slow consumer: not reading or not acknowledging"),
            Self::Shutdown => f.write_str("broker shutting down"),
            Self::Kicked => f.write_str("kicked by an operator (admin API)"),
            Self::CredentialsRevoked => {
                f.write_str("user deleted or password changed by a password file reload")
            }
        }
    }
}

/// One worker's broker.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    me: WorkerId,
    workers: u16,
    started: Millis,
    actions: VecDeque<Action>,
    stats: stats::WorkerStats,
    conns: conn_table::ConnTable,
    /// Final output (a refusing CONNACK) of closed connections, until the runtime takes it.
    closing: HashMap<ConnId, OutBuf, IdBuildHasher>,
    sessions: session::SessionTable,
    subscriptions: SubscriptionIndex,
    retained: RetainedStore,
    timers: keepalive::TimingWheel,
    interest: interest::InterestState,
    retain_confirms: retain_confirm::RetainConfirms,
    /// Reused by every match, so routing allocates nothing per publish in the steady state.
    matches: Matches,
    due_timers: Vec<keepalive::Timer>,
    /// Closes decided during a fan-out, run when the event is settled.
    pending_closes: VecDeque<(ConnId, CloseReason)>,
    sys: sys::SysState,
    next_retained_expiry: Option<Millis>,
    serial: u32,
    generated_ids: u64,
    /// The journal and the acknowledgements held for it; `None` without persistence.
    durability: Option<Box<durable::Durability>>,
    auth: auth::AuthState,
}

/// How often retained expiry runs: its precision.
const RETAINED_EXPIRY_PERIOD_MILLIS: u64 = 1000;

impl Broker {
    pub fn new(config: BrokerConfig, me: WorkerId, workers: u16, now: Millis) -> Self {
        assert!(me.0 < workers, "worker {me:?} outside 0..{workers}");
        assert!(usize::from(workers) <= WorkerSet::CAPACITY, "at most 128 workers");
        let next_retained_expiry = (config.retained_expiry_secs > 0)
            .then(|| now.plus_millis(RETAINED_EXPIRY_PERIOD_MILLIS));
        let auth = auth::AuthState::new(config.limiter_config());
        Self {
            sys: sys::SysState::new(config.sys_interval_secs, workers, now),
            retained: RetainedStore::new(config.retained_messages_max),
            config,
            me,
            workers,
            started: now,
            actions: VecDeque::new(),
            stats: stats::WorkerStats::default(),
            conns: conn_table::ConnTable::default(),
            closing: HashMap::default(),
            sessions: session::SessionTable::default(),
            subscriptions: SubscriptionIndex::new(),
            timers: keepalive::TimingWheel::new(now),
            interest: interest::InterestState::new(workers),
            retain_confirms: retain_confirm::RetainConfirms::default(),
            matches: Matches::default(),
            due_timers: Vec::new(),
            pending_closes: VecDeque::new(),
            next_retained_expiry,
            serial: 0,
            generated_ids: 0,
            durability: None,
            auth,
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn worker(&self) -> WorkerId {
        self.me
    }

    pub fn workers(&self) -> u16 {
        self.workers
    }

    pub fn handle_open(&mut self, conn: ConnId, now: Millis) {
        self.open_conn(conn, now);
    }

    /// The peer's address of a connection the broker knows (see the contract above).
    pub fn set_peer_addr(&mut self, conn: ConnId, peer: PeerAddr) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.set_peer(peer);
        }
    }

    /// The peer's address of a connection, if the runtime gave it.
    pub fn peer_addr(&self, conn: ConnId) -> Option<PeerAddr> {
        self.conns.get(&conn).and_then(|state| state.peer())
    }

    /// Dispatches one packet from `conn` to its handler: the broker's one `match`.
    pub fn handle_packet(&mut self, conn: ConnId, packet: Packet, now: Millis) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        // Any control packet counts for keepalive [MQTT-3.1.2-23].
        state.last_heard = now;
        let bytes = encoded_len(&packet) as u64;
        let session = match (state.phase, packet) {
            (Phase::AwaitingConnect, Packet::Connect(connect)) => {
                // A CONNECT handed to another worker is counted there.
                if self.handle_connect(conn, connect, None, now) != Connected::HandedOff {
                    self.stats.bytes_received += bytes;
                }
                return self.settle(now);
            }
            (Phase::AwaitingConnect, _) => {
                return self.violation(conn, "first packet is not CONNECT [MQTT-3.1.0-1]", now);
            }
            (Phase::Active(session), packet) => (session, packet),
        };
        self.stats.bytes_received += bytes;
        match session {
            (_, Packet::Connect(_)) => self.violation(conn, "second CONNECT [MQTT-3.1.0-2]", now),
            (session, Packet::Publish(publish)) => self.handle_publish(conn, session, publish, now),
            (session, Packet::Puback(id)) => self.handle_puback(conn, session, id),
            (session, Packet::Pubrec(id)) => self.handle_pubrec(conn, session, id),
            (session, Packet::Pubrel(id)) => self.handle_pubrel(conn, session, id),
            (session, Packet::Pubcomp(id)) => self.handle_pubcomp(conn, session, id),
            (session, Packet::Subscribe(subscribe)) => {
                self.handle_subscribe(conn, session, subscribe, now)
            }
            (session, Packet::Unsubscribe(unsubscribe)) => {
                self.handle_unsubscribe(conn, session, unsubscribe);
            }
            (_, Packet::Pingreq) => self.write_control(conn, &Packet::Pingresp), // [MQTT-3.12.4-1]
            (_, Packet::Disconnect) => {
                self.close_conn(conn, Some(CloseReason::ClientDisconnect), now)
            }
            (
                _,
                Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp,
            ) => {
                self.violation(conn, "a server-to-client packet from a client [MQTT-4.8.0-1]", now);
            }
        }
        self.settle(now);
    }

    fn violation(&mut self, conn: ConnId, what: &'static str, now: Millis) {
        self.close_conn(conn, Some(CloseReason::ProtocolViolation(what)), now);
        self.settle(now);
    }

    pub fn handle_decode_error(&mut self, conn: ConnId, error: DecodeError, now: Millis) {
        let awaiting_connect =
            self.conns.get(&conn).is_some_and(|state| state.phase == Phase::AwaitingConnect);
        if awaiting_connect && error.wants_protocol_version_refusal() {
            // [MQTT-3.1.2-2]: CONNACK 0x01, then close.
            self.refuse_connect(conn, ConnectReturnCode::UnacceptableProtocolVersion, now);
        } else {
            self.close_conn(conn, Some(CloseReason::ProtocolError(error)), now);
        }
        self.settle(now);
    }

    pub fn handle_closed(&mut self, conn: ConnId, now: Millis) {
        if self.closing.remove(&conn).is_some() {
            return;
        }
        self.close_conn(conn, None, now);
        self.settle(now);
    }

    pub fn handle_sent(&mut self, conn: ConnId, bytes: usize, now: Millis) {
        self.conn_sent(conn, bytes);
        self.settle(now);
    }

    pub fn handle_remote(&mut self, from: WorkerId, msg: RemoteMsg, now: Millis) {
        self.dispatch_remote(from, msg, now);
        self.settle(now);
    }

    pub fn handle_tick(&mut self, now: Millis) {
        self.run_timers(now);
        self.run_retained_expiry(now);
        self.run_sys(now);
        self.settle(now);
    }

    /// Closes every connection (wills are published: none of them sent DISCONNECT).
    pub fn handle_shutdown(&mut self, now: Millis) {
        let conns: Vec<ConnId> = self.conns.keys().collect();
        for conn in conns {
            self.close_conn(conn, Some(CloseReason::Shutdown), now);
        }
        self.settle(now);
    }

    fn run_retained_expiry(&mut self, now: Millis) {
        let Some(due) = self.next_retained_expiry else {
            return;
        };
        if now < due {
            return;
        }
        self.next_retained_expiry = Some(now.plus_millis(RETAINED_EXPIRY_PERIOD_MILLIS));
        let expired = self.retained.expire(now, self.config.retained_expiry_secs);
        self.stats.retained_expired += expired as u64;
    }

    /// The earliest time `handle_tick` has work to do, if any.
    pub fn next_deadline(&self) -> Option<Millis> {
        [self.timers.next_deadline(), self.sys.next_at, self.next_retained_expiry]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Moves `conn`'s pending output to the end of `out`; returns how many bytes.
    pub fn take_output(&mut self, conn: ConnId, out: &mut Vec<Bytes>) -> usize {
        self.take_conn_output(conn, out)
    }

    pub fn stats(&self) -> &stats::WorkerStats {
        &self.stats
    }

    fn refresh_gauges(&mut self) {
        self.stats.clients_total = self.sessions.len() as u64;
        self.stats.subscriptions = self.subscriptions.len() as u64;
        self.stats.retained_messages = self.retained.len() as u64;
    }

    // Introspection, for tests, the simulation and metrics.

    /// Sessions held (connected, or persistent and offline).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Connections known, with or without a completed CONNECT.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether `conn` is open here with its CONNECT accepted: a packet handed to it now is
    /// handled for its session (one closed, handed off or never opened is ignored).
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|state| matches!(state.phase, Phase::Active(_)))
    }

    /// Local subscriptions, once per (session, filter).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Messages waiting in session queues.
    pub fn queued_message_count(&self) -> usize {
        self.stats.queued_messages as usize
    }

    /// QoS 1/2 messages sent and not yet acknowledged.
    pub fn inflight_message_count(&self) -> usize {
        self.stats.inflight_messages as usize
    }

    /// Retained messages in this worker's replica.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// The retained message for `topic` in this worker's replica.
    pub fn retained(&self, topic: &TopicName) -> Option<&Message> {
        self.retained.get(topic)
    }

    /// Timers filed on the wheel (live and stale), to check it stays bounded.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// A session's state as seen from outside, by client id.
    pub fn session_info(&self, client_id: &str) -> Option<SessionInfo> {
        let key = Utf8Bytes::from(client_id.to_owned());
        let session = self.sessions.get(self.sessions.find(&key)?);
        Some(SessionInfo {
            connected: session.conn.is_some(),
            persistent: session.persistent,
            subscriptions: (session.subscriptions.as_slice().iter())
                .map(|&(node, qos)| (self.subscriptions.filter_of(node), qos))
                .collect(),
            inflight: session.outgoing.inflight_len(),
            queued: session.outgoing.queued_len(),
            queued_bytes: session.outgoing.queued_bytes(),
            awaiting_pubrel: session.incoming.len(),
        })
    }

    /// Every session's client id.
    pub fn client_ids(&self) -> Vec<String> {
        self.sessions.iter().map(|session| session.client_id.as_str().to_owned()).collect()
    }
}

/// A snapshot of one session, for tests and tools.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionInfo {
    pub connected: bool,
    pub persistent: bool,
    pub subscriptions: Vec<(TopicFilter, QoS)>,
    pub inflight: usize,
    pub queued: usize,
    /// Payload bytes of the queued messages.
    pub queued_bytes: usize,
    pub awaiting_pubrel: usize,
}
