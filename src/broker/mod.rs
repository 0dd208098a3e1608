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
//!   emits `Close`).
//! - After the events of a loop turn, `poll_action` until `None`. `Action::Send(conn)` means
//!   `take_output(conn, ..)` has bytes; it is emitted once per connection per transition from
//!   empty to non-empty output. The runtime sends what it took, in order, and reports each
//!   completed byte count with `handle_sent`, which lets the broker refill the connection from
//!   the session's queue (flow control lives here, not in the runtime).
//! - `Action::Close(conn, reason)`: the broker has forgotten the connection (will, session
//!   and statistics are settled). The runtime sends what it already took, then closes.
//! - `handle_closed(conn, now)` when the peer went away or the socket failed (not after a
//!   `Close` the broker asked for; unknown connections are ignored). An abnormal close
//!   publishes the will.
//! - `Action::Handoff { conn, to, connect }`: the CONNECT's session lives on worker `to`; the
//!   broker has forgotten `conn`, and the runtime moves the socket and any bytes after CONNECT
//!   to `to`, which calls `handle_open` then `handle_packet(Packet::Connect(connect))`.
//! - `Action::Remote { to, msg }`: deliver `msg` to worker `to`'s `handle_remote`, FIFO per
//!   (from, to) pair. The runtime may hold it back (backpressure) but never drop or reorder it.
//! - `handle_tick(now)` whenever `now >= next_deadline()`; it runs keepalive, connect
//!   timeouts, session and retained expiry, and the `$SYS` interval.
#![forbid(unsafe_code)]

use std::fmt;

pub mod config;
pub mod ids;
pub mod retain;
pub mod subscriptions;
mod topic_trie;

pub use config::BrokerConfig;
pub use ids::{ConnId, Millis, SessionId, WorkerId, WorkerSet};

use bytes::Bytes;

use crate::protocol::{Connect, ConnectReturnCode, DecodeError, QoS, TopicFilter, TopicName};

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
    /// The connection's output and its session's queue are both full.
    SlowConsumer,
    /// The broker is shutting down.
    Shutdown,
}

/// What the broker asks its driver to do. See the module documentation for the contract.
#[derive(Debug)]
pub enum Action {
    Send(ConnId),
    Close(ConnId, CloseReason),
    Remote { to: WorkerId, msg: RemoteMsg },
    Handoff { conn: ConnId, to: WorkerId, connect: Connect },
}

/// Messages between the brokers of different workers, FIFO per ordered pair.
#[derive(Debug)]
pub enum RemoteMsg {
    /// A publish for the receiving worker's matching sessions.
    Publish(Message),
    /// The sending worker now has (or no longer has) local subscribers of `filter`.
    Interest {
        filter: TopicFilter,
        interested: bool,
    },
    /// Retained message updates, serialised through the topic's owner worker so every replica
    /// applies them in one order. `Retain` asks the owner to apply one; `RetainApplied` is the
    /// owner's broadcast. An empty payload deletes.
    Retain(Message),
    RetainApplied(Message),
    /// A worker's counters for the `$SYS` aggregate kept by worker 0.
    Stats(Box<stats::WorkerStats>),
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
            Self::SlowConsumer => f.write_str("output and session queue full"),
            Self::Shutdown => f.write_str("broker shutting down"),
        }
    }
}

pub mod stats;

use std::collections::VecDeque;

use crate::protocol::Packet;

/// One worker's broker. PLACEHOLDER bodies: the broker core is being built (issue 3); the
/// signatures are the contract the runtime drives.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    me: WorkerId,
    workers: u16,
    actions: VecDeque<Action>,
    stats: stats::WorkerStats,
}

impl Broker {
    pub fn new(config: BrokerConfig, me: WorkerId, workers: u16, now: Millis) -> Self {
        assert!(me.0 < workers, "worker {me:?} outside 0..{workers}");
        let _ = now;
        Self { config, me, workers, actions: VecDeque::new(), stats: stats::WorkerStats::default() }
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
        let _ = (conn, now);
    }

    pub fn handle_packet(&mut self, conn: ConnId, packet: Packet, now: Millis) {
        let _ = (conn, packet, now);
    }

    pub fn handle_decode_error(&mut self, conn: ConnId, error: DecodeError, now: Millis) {
        let _ = now;
        self.actions.push_back(Action::Close(conn, CloseReason::ProtocolError(error)));
    }

    pub fn handle_closed(&mut self, conn: ConnId, now: Millis) {
        let _ = (conn, now);
    }

    pub fn handle_sent(&mut self, conn: ConnId, bytes: usize, now: Millis) {
        let _ = (conn, bytes, now);
    }

    pub fn handle_remote(&mut self, from: WorkerId, msg: RemoteMsg, now: Millis) {
        let _ = (from, msg, now);
    }

    pub fn handle_tick(&mut self, now: Millis) {
        let _ = now;
    }

    /// The earliest time `handle_tick` has work to do, if any.
    pub fn next_deadline(&self) -> Option<Millis> {
        None
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Moves `conn`'s pending output to the end of `out`; returns how many bytes.
    pub fn take_output(&mut self, conn: ConnId, out: &mut Vec<Bytes>) -> usize {
        let _ = (conn, out);
        0
    }

    pub fn stats(&self) -> &stats::WorkerStats {
        &self.stats
    }
}
