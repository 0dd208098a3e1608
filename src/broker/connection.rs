//! Connections: their state, their output, and how they end.
//!
//! A connection is `AwaitingConnect` from `handle_open` until its CONNECT is accepted, then
//! `Active` with its session. Its output is an `OutBuf` the runtime drains with
//! `take_output`; bytes taken and not yet reported by `handle_sent` still count against
//! `outbuf_bytes_max`. `Action::Send` is emitted once per transition of the `OutBuf` from
//! empty to non-empty (`send_flagged` remembers that it was).
//!
//! Every close goes through [`Broker::close_conn`], which settles everything at once: the
//! `Close` action (unless the peer closed), the close counter, the session (offline or
//! discarded), and the will (published unless the client sent DISCONNECT [MQTT-3.1.2-8]).
//! Closes decided in the middle of a fan-out (slow consumers) are deferred to
//! `pending_closes` and run by [`Broker::settle`] at the end of the event, because publishing
//! a will re-enters the fan-out.
//!
//! A refused CONNECT's CONNACK is the one output that outlives its connection: it is kept in
//! `closing` until the runtime takes it (on the `Send` or the `Close` it receives).

use std::collections::VecDeque;

use bytes::Bytes;

use super::interest::HeldKey;
use super::{Action, Broker, CloseReason, ConnId, Millis, SessionId};
use crate::protocol::{LastWill, OutBuf, Packet};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    AwaitingConnect,
    Active(SessionId),
}

/// One connection's state. Its layout is part of issue 6's memory budget (docs/BENCHMARKS.md,
/// "Density"): what most connections never have (a will, held SUBACKs, a slow-consumer clock,
/// an IPv6 peer) is in one box made on first use, and an IPv4 peer is kept in 6 bytes.
#[derive(Debug)]
pub(super) struct Conn {
    pub out: OutBuf,
    pub opened_at: Millis,
    pub last_heard: Millis,
    /// Bytes the runtime took and has not yet reported sent.
    pub unsent_bytes: usize,
    /// The rarely used parts; `None` when all are empty.
    cold: Option<Box<ConnCold>>,
    /// Changes when the connection's timer is re-filed, so an older timer is recognised.
    pub serial: u32,
    /// The generation of the `ConnId` whose slot holds this connection: set by the
    /// connection table (`conn_table.rs`), which checks it on every lookup. Here, in what was
    /// padding, it costs nothing; beside the `Conn` it cost 8 bytes per connection.
    pub(super) slot_generation: u32,
    pub phase: Phase,
    /// 1.5 times the keepalive [MQTT-3.1.2-24]; 0 = no keepalive. At most 65535 x 1500.
    pub keepalive_grace_millis: u32,
    /// An IPv4 peer's address and port (`peer_kind == PeerKind::V4`).
    peer_v4: [u8; 6],
    peer_kind: PeerKind,
    pub send_flagged: bool,
    /// Whether a slow-consumer timer for this connection is on the wheel (at most one).
    pub slow_timer_filed: bool,
}

/// Where a connection's peer address is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PeerKind {
    /// Not given (yet).
    None,
    /// Inline, in `Conn::peer_v4`.
    V4,
    /// In `ConnCold::peer_v6`.
    V6,
}

/// The parts of a connection that most never have.
#[derive(Debug, Default)]
struct ConnCold {
    will: Option<LastWill>,
    /// SUBACKs owed and held until other workers confirm an interest (see `interest.rs`).
    held: HeldSubacks,
    /// When a message for this connection's session was first dropped at the queue bound
    /// since the client last acknowledged one (or the queue last moved): the slow-consumer
    /// clock (see `delivery.rs`).
    queue_full_since: Option<Millis>,
    peer_v6: Option<super::PeerAddr>,
}

impl ConnCold {
    fn is_empty(&self) -> bool {
        self.will.is_none()
            && self.held.keys.is_empty()
            && self.queue_full_since.is_none()
            && self.peer_v6.is_none()
    }
}

/// A connection's held SUBACKs: their keys in the broker's held table, oldest first, and
/// their encoded bytes.
#[derive(Debug, Default)]
struct HeldSubacks {
    keys: VecDeque<HeldKey>,
    bytes: usize,
}

impl Conn {
    pub fn new(serial: u32, now: Millis) -> Self {
        Self {
            out: OutBuf::new(),
            opened_at: now,
            last_heard: now,
            unsent_bytes: 0,
            cold: None,
            serial,
            slot_generation: 0,
            phase: Phase::AwaitingConnect,
            keepalive_grace_millis: 0,
            peer_v4: [0; 6],
            peer_kind: PeerKind::None,
            send_flagged: false,
            slow_timer_filed: false,
        }
    }

    fn cold_mut(&mut self) -> &mut ConnCold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Frees the cold box once nothing is left in it.
    fn trim_cold(&mut self) {
        if self.cold.as_ref().is_some_and(|cold| cold.is_empty()) {
            self.cold = None;
        }
    }

    pub fn peer(&self) -> Option<super::PeerAddr> {
        match self.peer_kind {
            PeerKind::None => None,
            PeerKind::V4 => Some(super::PeerAddr::from_v4_parts(self.peer_v4)),
            PeerKind::V6 => self.cold.as_ref().and_then(|cold| cold.peer_v6),
        }
    }

    pub fn set_peer(&mut self, peer: super::PeerAddr) {
        if let Some(parts) = peer.to_v4_parts() {
            self.peer_v4 = parts;
            self.peer_kind = PeerKind::V4;
            if let Some(cold) = self.cold.as_mut() {
                cold.peer_v6 = None;
            }
            self.trim_cold();
        } else {
            self.cold_mut().peer_v6 = Some(peer);
            self.peer_kind = PeerKind::V6;
        }
    }

    pub fn set_will(&mut self, will: Option<LastWill>) {
        match will {
            Some(will) => self.cold_mut().will = Some(will),
            None => {
                if let Some(cold) = self.cold.as_mut() {
                    cold.will = None;
                }
                self.trim_cold();
            }
        }
    }

    pub fn take_will(&mut self) -> Option<LastWill> {
        let will = self.cold.as_mut()?.will.take();
        self.trim_cold();
        will
    }

    pub fn queue_full_since(&self) -> Option<Millis> {
        self.cold.as_ref()?.queue_full_since
    }

    /// Starts the slow-consumer clock at `since`.
    pub fn set_queue_full_since(&mut self, since: Millis) {
        self.cold_mut().queue_full_since = Some(since);
    }

    /// Stops the slow-consumer clock (the client progressed). Cheap when it is not running.
    pub fn clear_queue_full_since(&mut self) {
        if let Some(cold) = self.cold.as_mut() {
            if cold.queue_full_since.take().is_some() {
                self.trim_cold();
            }
        }
    }

    /// The broadcast number the newest held SUBACK waits for; 0 when none is held.
    pub fn newest_held_suback(&self) -> u64 {
        self.cold.as_ref().and_then(|cold| cold.held.keys.back()).map_or(0, |&(number, _)| number)
    }

    /// Encoded bytes of the held SUBACKs.
    pub fn held_suback_bytes(&self) -> usize {
        self.cold.as_ref().map_or(0, |cold| cold.held.bytes)
    }

    pub fn hold_suback(&mut self, key: HeldKey, bytes: usize) {
        let held = &mut self.cold_mut().held;
        held.keys.push_back(key);
        held.bytes += bytes;
    }

    /// Releases the oldest held SUBACK, which must be `key` (they go in order).
    pub fn release_suback(&mut self, key: HeldKey, bytes: usize) {
        let cold = self.cold.as_mut().expect("releasing a SUBACK that was not held");
        assert_eq!(cold.held.keys.pop_front(), Some(key), "held SUBACKs out of order");
        cold.held.bytes -= bytes;
        if cold.held.keys.is_empty() {
            // Give the deque's allocation back with the box (or alone, if the box stays).
            cold.held = HeldSubacks::default();
            self.trim_cold();
        }
    }

    /// The keys of every held SUBACK, oldest first, leaving none.
    pub fn take_held_subacks(&mut self) -> VecDeque<HeldKey> {
        let Some(cold) = self.cold.as_mut() else {
            return VecDeque::new();
        };
        let keys = std::mem::take(&mut cold.held).keys;
        self.trim_cold();
        keys
    }

    /// Output not yet confirmed sent: what the `OutBuf` holds plus what the runtime took.
    pub fn pending_bytes(&self) -> usize {
        self.out.len() + self.unsent_bytes
    }

    /// Emits `Send` if the output just became non-empty.
    pub fn flag_send(&mut self, id: ConnId, actions: &mut VecDeque<Action>) {
        if !self.send_flagged && !self.out.is_empty() {
            self.send_flagged = true;
            actions.push_back(Action::Send(id));
        }
    }
}

impl Broker {
    pub(super) fn open_conn(&mut self, conn: ConnId, now: Millis) {
        assert!(!self.conns.contains_key(&conn), "{conn:?} opened twice");
        // A runtime that never took a refused connection's last bytes has reused the id.
        self.closing.remove(&conn);
        let serial = self.next_serial();
        self.conns.insert(conn, Conn::new(serial, now));
        self.file_conn_timer(conn);
    }

    pub(super) fn next_serial(&mut self) -> u32 {
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    /// Writes a control packet (an acknowledgement, SUBACK, PINGRESP, CONNACK). These are
    /// written even past `outbuf_bytes_max`, since withholding them would stall the client;
    /// but a client that sends without ever reading would grow them without bound, so past
    /// twice the bound it is closed as a slow consumer.
    pub(super) fn write_control(&mut self, conn: ConnId, packet: &Packet) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        state.out.put_packet(packet);
        state.flag_send(conn, &mut self.actions);
        if state.pending_bytes() > self.config.outbuf_bytes_max.saturating_mul(2) {
            self.pending_closes.push_back((conn, CloseReason::SlowConsumer));
        }
    }

    /// Closes `conn` and settles everything about it. `reason` is `None` when the peer went
    /// away (the runtime already knows, so no `Close` action). Unknown connections are ignored.
    pub(super) fn close_conn(&mut self, conn: ConnId, reason: Option<CloseReason>, now: Millis) {
        let Some(mut state) = self.conns.remove(&conn) else {
            return;
        };
        self.stats.closes.count(reason);
        self.drop_held_subacks(state.take_held_subacks());
        self.drop_held_acks(conn);
        if let Some(reason) = reason {
            if matches!(reason, CloseReason::ConnectRefused(_)) && !state.out.is_empty() {
                self.closing.insert(conn, std::mem::take(&mut state.out));
            }
            self.actions.push_back(Action::Close(conn, reason));
        }
        let Phase::Active(session) = state.phase else {
            return;
        };
        self.stats.clients_connected -= 1;
        self.detach_session(session, conn, now);
        if reason != Some(CloseReason::ClientDisconnect) {
            if let Some(will) = state.take_will() {
                self.publish_will(will, now);
            }
        }
    }

    /// Runs the closes deferred during the event, then refreshes the gauges.
    pub(super) fn settle(&mut self, now: Millis) {
        while let Some((conn, reason)) = self.pending_closes.pop_front() {
            self.close_conn(conn, Some(reason), now);
        }
        self.refresh_gauges();
    }

    pub(super) fn take_conn_output(&mut self, conn: ConnId, out: &mut Vec<Bytes>) -> usize {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.send_flagged = false;
            let taken = state.out.take_into(out);
            state.unsent_bytes += taken;
            return taken;
        }
        match self.closing.remove(&conn) {
            Some(mut last) => last.take_into(out),
            None => 0,
        }
    }

    pub(super) fn conn_sent(&mut self, conn: ConnId, bytes: usize) {
        self.stats.bytes_sent += bytes as u64;
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        assert!(
            bytes <= state.unsent_bytes,
            "{conn:?}: {bytes} bytes reported sent, only {} taken",
            state.unsent_bytes
        );
        state.unsent_bytes -= bytes;
        self.refill(conn);
    }
}
