//! The broker's actions, the sends they lead to, and the steps of closing a connection.
//!
//! `Action::Send` only lists the connection; its output stays in the broker's `OutBuf` and is
//! taken in phase 4, into the connection's boxed [`super::send::SendOp`], right before its one
//! `sendmsg` of the turn (or, with a send in flight, after that send completes). So everything
//! a turn produced for a connection is one contiguous segment (small payloads are copied into
//! it) in one system call, instead of one segment, one allocation and one iovec per packet.
//! A `Close` (or handoff) takes the output at once, so what the broker produced before it is
//! ours before the broker forgets the connection; so does every `Send` for a connection with
//! TLS/WebSocket layers, whose output goes through them (`layers.rs`).
//! The send carries `MSG_WAITALL`: when the socket buffer fills, the kernel keeps feeding it as
//! the peer reads and completes the send only when all of it has left (or on an error or a
//! cancel, with the count sent so far), instead of waiting for our next turn to resubmit.
//!
//! Closing ([`super::conn::CloseStep`]): output taken before the close still leaves, for at
//! most `close_linger_millis`; then the receive is cancelled, and the descriptor is closed
//! through the ring once nothing else is in flight on it.

use io_uring::{opcode, types};

use super::conn::{CloseStep, Phase};
use super::user_data::{Op, UserData};
use super::worker::Worker;
use crate::broker::{Action, ConnId, Millis};

impl Worker {
    /// Carries out every action the broker has queued.
    pub(super) fn apply_actions(&mut self, now: Millis) {
        while let Some(action) = self.broker.poll_action() {
            match action {
                Action::Send(id) => self.announce_output(id),
                Action::Close(id, reason) => {
                    let Some(conn) = self.conns.get_mut(id) else { continue };
                    if conn.phase != Phase::Open {
                        continue;
                    }
                    conn.broker_knows = false;
                    let layered = conn.layered;
                    tracing::debug!(conn = ?id, %reason, "closing");
                    self.take_output(id);
                    if layered {
                        // A WebSocket close frame and a TLS close_notify (`layers.rs`).
                        self.close_layers(id, reason);
                    }
                    self.begin_close(id.slot(), now);
                }
                // Backpressure is acted on where bytes are read (`pause_reading`); the broker's
                // output to other workers is never held back or dropped here.
                Action::Remote { to, msg } => {
                    let _ = self.peers.send(to, msg);
                }
                Action::Handoff { conn, to, connect, peer } => {
                    self.take_output(conn);
                    self.begin_handoff(conn, to, connect, peer);
                }
            }
        }
    }

    /// The broker has output for `id`: list it for phase 4, which takes the output.
    fn announce_output(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.layered {
            // TLS/WebSocket layers frame and encrypt what they are handed: their connections'
            // output is taken at once, through the layers (`take_output`).
            self.take_output(id);
            return;
        }
        conn.output_announced = true;
        if conn.peer_alive {
            self.list_for_flush(id.slot());
        }
    }

    /// Moves the broker's output for `id` into its send op now and lists it for phase 4.
    fn take_output(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.layered {
            self.take_layered_output(id);
            return;
        }
        let op = conn.send.get_or_insert_with(|| self.sends.take());
        self.broker.take_output(id, op.queue());
        conn.output_announced = false;
        if !conn.peer_alive {
            // Nobody to send to; the broker has been told (or will be) that it is gone.
            if !op.in_flight() {
                op.discard();
            }
            return;
        }
        self.list_for_flush(id.slot());
    }

    pub(super) fn list_for_flush(&mut self, slot: u32) {
        let conn = self.conns.slot_mut(slot);
        if !conn.flush_listed {
            conn.flush_listed = true;
            self.flush.push(slot);
        }
    }

    /// Phase 4's last step: for each listed connection without a send in flight, take the
    /// broker's output and start one `sendmsg` with everything unsent.
    pub(super) fn start_sends(&mut self) {
        let mut flush = std::mem::take(&mut self.flush);
        let slots_per_ring = self.conns.slots_per_ring();
        for slot in flush.drain(..) {
            let id = self.conns.id_of(slot);
            let conn = self.conns.slot_mut(slot);
            conn.flush_listed = false;
            if conn.phase == Phase::Free || !conn.peer_alive || conn.send_in_flight() {
                continue;
            }
            if conn.output_announced {
                conn.output_announced = false;
                if conn.broker_knows {
                    let op = conn.send.get_or_insert_with(|| self.sends.take());
                    self.broker.take_output(id, op.queue());
                }
            }
            let Some(op) = conn.send.as_mut() else { continue };
            if !op.has_unsent() {
                if let Some(op) = conn.send.take() {
                    self.sends.give(op);
                }
                continue;
            }
            let header = op.start();
            let fixed = types::Fixed(slot % slots_per_ring);
            let entry = opcode::SendMsg::new(fixed, header)
                .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
                .build()
                .user_data(UserData::new(Op::Send, slot, conn.generation).pack());
            // The slot is not freed while the send is in flight.
            // SAFETY: `header`, its iovecs and the `Bytes` they cover live in the boxed op, not
            // moved or changed until this send's completion (`SendOp` invariant).
            unsafe { self.ring_for(slot).push(&entry) };
        }
        self.flush = flush;
    }

    /// Starts closing an open connection; the caller has settled what the broker knows.
    pub(super) fn begin_close(&mut self, slot: u32, now: Millis) {
        let id = self.conns.id_of(slot);
        let conn = self.conns.slot_mut(slot);
        assert_eq!(conn.phase, Phase::Open, "begin_close on {:?}", conn.phase);
        conn.phase = Phase::Closing;
        conn.input = super::conn::Input::default();
        let output_pending =
            conn.send_in_flight() || conn.send.as_ref().is_some_and(|op| op.has_unsent());
        if output_pending && conn.peer_alive {
            self.linger(id, now);
        }
        self.advance_close(slot);
    }

    /// Remembers when a closing connection's output must have left. Bounded by twice the
    /// slots; when full, the oldest is expired early (its output cut short).
    fn linger(&mut self, id: ConnId, now: Millis) {
        if self.lingering.len() >= 2 * self.conns.slots() {
            if let Some((_, oldest)) = self.lingering.pop_front() {
                self.cut_output(oldest);
            }
        }
        self.lingering.push_back((now.plus_millis(self.config.close_linger_millis), id));
    }

    /// Cuts short the output of closing connections whose linger time has passed.
    pub(super) fn expire_lingering(&mut self, now: Millis) {
        while let Some(&(deadline, id)) = self.lingering.front() {
            if deadline > now {
                break;
            }
            self.lingering.pop_front();
            self.cut_output(id);
        }
    }

    /// At a stop's flush deadline, every connection's output is cut short.
    pub(super) fn abandon_output(&mut self) {
        while let Some((_, id)) = self.lingering.pop_front() {
            self.cut_output(id);
        }
    }

    /// Stops sending to a closing connection: the peer is treated as gone, and a send still
    /// in flight is cancelled (its completion then moves the close on).
    fn cut_output(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.phase != Phase::Closing || !conn.peer_alive {
            return;
        }
        self.counters.linger_expired += 1;
        conn.peer_alive = false;
        if conn.send_in_flight() {
            conn.cancels_in_flight += 1;
            let target = UserData::new(Op::Send, id.slot(), id.generation());
            let cancel = UserData::new(Op::Cancel, id.slot(), id.generation());
            self.ring_for(id.slot()).push_cancel(target, cancel);
        }
        self.advance_close(id.slot());
    }

    /// Takes the next step of a closing connection, if nothing in flight blocks it.
    pub(super) fn advance_close(&mut self, slot: u32) {
        let conn = self.conns.slot_mut(slot);
        let generation = conn.generation;
        match conn.close_step() {
            CloseStep::Wait => {}
            CloseStep::Send => self.list_for_flush(slot),
            CloseStep::CancelRecv => {
                conn.cancels_in_flight += 1;
                let target = UserData::new(conn.recv_op(), slot, generation);
                self.ring_for(slot)
                    .push_cancel(target, UserData::new(Op::Cancel, slot, generation));
            }
            CloseStep::Close if conn.phase == Phase::HandingOff => self.send_fd(slot),
            CloseStep::Close => {
                conn.close_in_flight = true;
                let local = self.fixed(slot).0;
                let close = UserData::new(Op::Close, slot, generation);
                self.ring_for(slot).push_close_fixed(local, close);
            }
        }
    }
}
