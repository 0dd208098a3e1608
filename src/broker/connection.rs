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

#[derive(Debug)]
pub(super) struct Conn {
    /// Changes when the connection's timer is re-filed, so an older timer is recognised.
    pub serial: u32,
    pub phase: Phase,
    pub opened_at: Millis,
    pub last_heard: Millis,
    /// 1.5 times the keepalive [MQTT-3.1.2-24]; 0 = no keepalive.
    pub keepalive_grace_millis: u64,
    /// Boxed: most clients set none, and inline it would cost every connection 64 bytes.
    pub will: Option<Box<LastWill>>,
    pub out: OutBuf,
    /// Bytes the runtime took and has not yet reported sent.
    pub unsent_bytes: usize,
    pub send_flagged: bool,
    /// SUBACKs owed and held until other workers confirm an interest (see `interest.rs`);
    /// `None` when there are none, which is almost always: boxed, so that an idle connection
    /// pays 8 bytes for it rather than 40.
    held: Option<Box<HeldSubacks>>,
    /// When a message for this connection's session was first dropped at the queue bound
    /// since the client last acknowledged one (or the queue last moved): the slow-consumer
    /// clock (see `delivery.rs`).
    pub queue_full_since: Option<Millis>,
    /// Whether a slow-consumer timer for this connection is on the wheel (at most one).
    pub slow_timer_filed: bool,
    /// The peer's address, once the runtime gave it (`Broker::set_peer_addr`).
    pub peer: Option<super::PeerAddr>,
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
            serial,
            phase: Phase::AwaitingConnect,
            opened_at: now,
            last_heard: now,
            keepalive_grace_millis: 0,
            will: None,
            out: OutBuf::new(),
            unsent_bytes: 0,
            send_flagged: false,
            held: None,
            queue_full_since: None,
            slow_timer_filed: false,
            peer: None,
        }
    }

    /// The broadcast number the newest held SUBACK waits for; 0 when none is held.
    pub fn newest_held_suback(&self) -> u64 {
        self.held.as_ref().and_then(|held| held.keys.back()).map_or(0, |&(number, _)| number)
    }

    /// Encoded bytes of the held SUBACKs.
    pub fn held_suback_bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |held| held.bytes)
    }

    pub fn hold_suback(&mut self, key: HeldKey, bytes: usize) {
        let held = self.held.get_or_insert_with(Box::default);
        held.keys.push_back(key);
        held.bytes += bytes;
    }

    /// Releases the oldest held SUBACK, which must be `key` (they go in order).
    pub fn release_suback(&mut self, key: HeldKey, bytes: usize) {
        let held = self.held.as_mut().expect("releasing a SUBACK that was not held");
        assert_eq!(held.keys.pop_front(), Some(key), "held SUBACKs out of order");
        held.bytes -= bytes;
        if held.keys.is_empty() {
            self.held = None;
        }
    }

    /// The keys of every held SUBACK, oldest first, leaving none.
    pub fn take_held_subacks(&mut self) -> VecDeque<HeldKey> {
        self.held.take().map(|held| held.keys).unwrap_or_default()
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
            if let Some(will) = state.will.take() {
                self.publish_will(*will, now);
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
