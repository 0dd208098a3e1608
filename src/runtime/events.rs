//! Phase 2 of a loop turn: one handler per completed operation (`on_accept`, `on_recv`, ...).
//!
//! Handlers turn completions into broker events and slot-state changes; they queue follow-up
//! operations (re-arms, cancels, closes) but start no sends — output leaves in phase 4, one
//! `sendmsg` per connection per turn. A completion whose generation does not match its slot
//! is counted and dropped; a provided buffer it carries still goes back to the ring.

use io_uring::opcode;

use super::bufring::{BufRing, FIRST_RECV_GROUP, RECV_GROUP, STARVED_RECV_GROUP};
use super::conn::{Input, Phase};
use super::layers::LayeredInput;
use super::uring::Completion;
use super::user_data::{Op, UserData};
use super::worker::{Worker, ACCEPT_RETRY_MILLIS};
use crate::broker::{ConnId, Millis};
use crate::protocol::{self, Packet};
use crate::transport::ListenerKind;

impl Worker {
    pub(super) fn dispatch(&mut self, completion: Completion, now: Millis) {
        let data = completion.user_data;
        match data.op {
            Op::Accept => {
                let ipv6 = self.listeners[data.slot as usize].ipv6;
                self.on_accept(data.slot, completion, ipv6, now)
            }
            Op::Recv | Op::FirstRecv | Op::StarvedRecv => self.on_recv(completion, now),
            Op::Send => self.on_send(completion, now),
            Op::Cancel => self.on_cancel(completion, now),
            Op::Close => self.on_close(completion),
            Op::Wake => self.on_wake(now),
            // Its effect shows on the accept (ECANCELED); nothing to do here.
            Op::CancelAccept => {}
            Op::SendFd => self.on_send_fd(completion),
            Op::PeerName => self.on_peer_name(completion, now),
            Op::RingsWake => self.on_rings_wake(),
            Op::HandoffFd => self.on_handoff_fd(completion, now),
            // The items are drained every turn; the doorbell only ended our wait.
            Op::Doorbell => {}
            // Only failures complete. A peer that has left its loop at a stop may have closed
            // its ring; otherwise a wrong ring fd is a bug.
            Op::JournalWrite | Op::JournalFsync | Op::JournalSync => {
                self.on_journal(completion, now)
            }
            Op::JournalFile => self.on_journal_file(completion),
            Op::DoorbellFailed => assert!(
                self.stopping.is_some(),
                "a doorbell failed ({}): a peer's ring fd is wrong or closed",
                completion.result
            ),
        }
    }

    /// The slot's connection if the completion is for its current occupant; counts the rest.
    fn current(&mut self, data: UserData) -> Option<ConnId> {
        let id = ConnId::new(data.slot, data.generation);
        let current = self.conns.get_mut(id).is_some();
        if !current {
            self.counters.stale_completions += 1;
        }
        current.then_some(id)
    }

    fn on_accept(&mut self, listener: u32, completion: Completion, ipv6: bool, now: Millis) {
        if !completion.more() {
            self.listeners[listener as usize].armed = false;
        }
        match completion.errno() {
            None => {
                let kind = self.listeners[listener as usize].kind;
                let slot = self.conns.global_slot(completion.ring.into(), completion.result as u32);
                self.on_accepted(slot, kind, ipv6, now)
            }
            // This ring's table is full: accept into another ring, or pause when all are.
            Some(libc::ENFILE) if !self.move_open_ring(Some(completion.ring.into())) => {
                self.counters.accept_paused_table_full += 1;
                if self.counters.accept_paused_table_full == 1 {
                    tracing::warn!(
                        worker = self.index,
                        file_table_slots = self.config.file_table_slots,
                        rings = self.conns.rings(),
                        "every direct file table full: accepting paused until a connection closes (logged once)"
                    );
                }
                self.accept_paused = true;
            }
            Some(libc::ENFILE) => self.counters.accept_moved_table_full += 1,
            Some(libc::ECANCELED) => {}
            Some(errno) => {
                self.counters.accept_errors += 1;
                let error = std::io::Error::from_raw_os_error(errno);
                tracing::warn!(worker = self.index, listener, %error, "accept failed; retrying shortly");
                self.accept_retry_at = Some(now.plus_millis(ACCEPT_RETRY_MILLIS));
            }
        }
        if !self.accept_paused && self.accept_retry_at.is_none() && self.stopping.is_none() {
            self.arm_accepts();
        }
    }

    fn on_accepted(&mut self, slot: u32, kind: ListenerKind, ipv6: bool, now: Millis) {
        assert!(
            (slot as usize) < self.conns.slots(),
            "kernel allocated slot {slot} beyond the table"
        );
        self.counters.accepted += 1;
        let id = self.conns.open(slot);
        self.keep_room_for_new_connections();
        let total = self.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if total > self.config.max_connections || self.stopping.is_some() {
            self.counters.refused_max_connections += u64::from(self.stopping.is_none());
            tracing::debug!(conn = ?id, total, "refused: max_connections reached");
            self.begin_close(slot, now);
            return;
        }
        if !self.attach_layers(slot, kind) {
            self.begin_close(slot, now);
            return;
        }
        tracing::debug!(conn = ?id, worker = self.index, "connection opened");
        // Before the receive, so its completion usually comes first; decoding waits for it
        // anyway (`peer_name.rs`).
        self.arm_peer_name(slot, ipv6);
        self.list_first_recv(id);
        let conn = self.conns.slot_mut(slot);
        conn.broker_knows = true;
        self.broker.handle_open(id, now);
    }

    /// A new connection's first receive is single-shot: it ends with the bytes that carry the
    /// CONNECT, so when the broker hands the connection to its session's home worker (half of
    /// them with two workers) nothing is armed and the descriptor goes at once, with no
    /// `ASYNC_CANCEL` (the kernel finds the request to cancel by walking one bucket of its
    /// per-ring hash of armed polls: ~70 requests at 17,500 connections per ring, about a
    /// tenth of the broker's CPU per connect in a profile). A connection that stays is
    /// re-armed multishot after its CONNECT (`rearm_receive`).
    ///
    /// It draws from the ring's first-receive buffers (`FIRST_RECV_GROUP`), which no
    /// established connection uses: under a ping load the shared buffers are taken by the
    /// pings' receives between our reap and our next submit (a further ring's task work runs
    /// at any return to user space), and a CONNECT whose receive kept finding none waited
    /// behind them past the connect timeout (docs/ARCHITECTURE.md, "The receive path").
    /// Only `arm_listed` calls this, within the ring's budget for the turn.
    pub(super) fn arm_first_recv(&mut self, slot: u32) {
        self.push_single_recv(slot, FIRST_RECV_GROUP, 0, Op::FirstRecv);
    }

    pub(super) fn arm_recv(&mut self, slot: u32) {
        let conn = self.conns.slot_mut(slot);
        assert!(!conn.recv_armed, "a second receive on one connection");
        conn.recv_armed = true;
        conn.recv_first = false;
        conn.recv_starved = false;
        let generation = conn.generation;
        let entry = opcode::RecvMulti::new(self.fixed(slot), RECV_GROUP)
            .build()
            .user_data(UserData::new(Op::Recv, slot, generation).pack());
        // SAFETY: the receive writes only into its ring's registered buffer ring, which the
        // worker keeps registered until the ring is gone.
        unsafe { self.ring_for(slot).push(&entry) };
    }

    /// A connection whose multishot receive ended ENOBUFS (its bytes wait in the socket) reads
    /// them with a single-shot receive from the ring's starved-receive buffers
    /// (`STARVED_RECV_GROUP`), then is re-armed multishot. Only starved receives draw from
    /// those, and each armed one has reserved a buffer (`BufRing::reserve`), so it finds one
    /// at the submit: pings arriving meanwhile can take the shared buffers a turn gave back,
    /// but not these. Re-armed multishot from the shared buffers instead, such a receive lost
    /// to those pings turn after turn (docs/ARCHITECTURE.md, "The receive path"). Only
    /// `arm_listed` calls this, within the ring's unreserved buffers.
    pub(super) fn arm_starved_recv(&mut self, slot: u32) {
        let ring = self.conns.ring_of(slot);
        assert!(
            self.recv_buffers(ring, Op::StarvedRecv).reserve(),
            "a starved receive over budget"
        );
        // MSG_DONTWAIT: with no bytes waiting it ends EAGAIN at once instead of waiting for the
        // next ping with a reserved buffer (a multishot receive can end ENOBUFS with an empty
        // socket: the kernel picks its buffer before it reads).
        self.push_single_recv(slot, STARVED_RECV_GROUP, libc::MSG_DONTWAIT, Op::StarvedRecv);
    }

    /// Marks `slot`'s receive armed and pushes a single-shot receive into a buffer of the
    /// ring's provided-buffer group `group`, completing as `op` (`FirstRecv` or `StarvedRecv`).
    fn push_single_recv(&mut self, slot: u32, group: u16, msg_flags: i32, op: Op) {
        let conn = self.conns.slot_mut(slot);
        assert!(!conn.recv_armed, "a second receive on one connection");
        conn.recv_armed = true;
        conn.recv_first = op == Op::FirstRecv;
        conn.recv_starved = op == Op::StarvedRecv;
        let generation = conn.generation;
        let entry = opcode::Recv::new(self.fixed(slot), std::ptr::null_mut(), 0)
            .buf_group(group)
            .flags(msg_flags)
            .build()
            .flags(io_uring::squeue::Flags::BUFFER_SELECT)
            .user_data(UserData::new(op, slot, generation).pack());
        // SAFETY: the receive writes only into a buffer of its ring's registered ring `group`
        // (null with length 0 selects one), which stays registered while the ring lives.
        unsafe { self.ring_for(slot).push(&entry) };
    }

    /// Ring `ring`'s provided buffers that a receive of kind `op` draws from.
    pub(super) fn recv_buffers(&mut self, ring: usize, op: Op) -> &mut BufRing {
        let first_ring = [&mut self.buffers, &mut self.first_buffers, &mut self.starved_buffers];
        recv_buffers_of(first_ring, &mut self.rings.further, ring, op)
    }

    /// Lists `id` to have a first receive armed in phase 4, after those listed before it
    /// (`arm_listed`).
    fn list_first_recv(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        assert!(!conn.recv_armed && !conn.recv_listed, "a connection listed twice");
        conn.recv_listed = true;
        self.first_recvs.push_back(id);
    }

    /// Receives again on an open connection whose receive ended: multishot once its CONNECT
    /// was seen, else another first receive (listed). A connection already listed waits there.
    pub(super) fn rearm_receive(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.recv_armed || conn.recv_listed {
            return;
        }
        if conn.connect_seen {
            self.arm_recv(id.slot());
        } else {
            self.list_first_recv(id);
        }
    }

    fn on_recv(&mut self, completion: Completion, now: Millis) {
        let data = completion.user_data;
        // Copy the bytes out and give the buffer back first, whatever happens next.
        let mut received = 0;
        let mut layered = None;
        let current = self.current(data);
        let ring = usize::from(completion.ring);
        if data.op == Op::StarvedRecv {
            // Single-shot: this is its only completion.
            self.recv_buffers(ring, Op::StarvedRecv).unreserve();
        }
        if let Some(buffer) = completion.buffer() {
            let len = usize::try_from(completion.result).unwrap_or(0);
            // The worker's fields one by one: the lease borrows the buffers while the
            // connection's input is written.
            let first_ring =
                [&mut self.buffers, &mut self.first_buffers, &mut self.starved_buffers];
            let buffers = recv_buffers_of(first_ring, &mut self.rings.further, ring, data.op);
            let lease = buffers.lease(buffer, len);
            if let Some(id) = current {
                let conn = self.conns.slot_mut(id.slot());
                if matches!(conn.phase, Phase::Open | Phase::HandingOff) && !conn.input_closed {
                    if conn.layered {
                        let layers = &mut self.layers;
                        layered = Some(Self::receive_layered(
                            layers,
                            id.slot(),
                            &lease,
                            conn.input.bytes_mut(),
                        ));
                    } else {
                        conn.input.extend_from_slice(&lease);
                    }
                    received = len;
                }
            }
        }
        let Some(id) = current else { return };
        self.counters.recv_completions += 1;
        self.counters.recv_bytes += received as u64;
        let slot = id.slot();
        if !completion.more() {
            self.conns.slot_mut(slot).recv_armed = false;
        }
        if data.op == Op::StarvedRecv {
            self.count_starved_outcome(slot, completion.errno(), now);
        }
        match completion.errno() {
            None if completion.result > 0 => {
                let next = match layered {
                    Some(outcome) => self.after_layered_receive(id, outcome, now),
                    None => LayeredInput::Decode,
                };
                let hold = self.must_hold_input();
                let conn = self.conns.slot_mut(slot);
                if next == LayeredInput::Ended {
                    // The connection is closing; its input was dropped.
                } else if conn.phase == Phase::Open && (conn.paused || hold) {
                    self.pause_reading(id);
                } else if conn.phase == Phase::Open {
                    self.decode_input(id, now);
                }
                if next == LayeredInput::DecodeThenEnd && self.conns.get_mut(id).is_some() {
                    self.end_by_transport(slot, now);
                }
            }
            Some(libc::ENOBUFS) => {
                let op = data.op;
                if op == Op::FirstRecv {
                    self.counters.first_recv_no_buffers += 1;
                } else {
                    self.counters.recv_no_buffers += 1;
                }
                if self.list_after_no_buffer(id, op, now) {
                    return;
                }
            }
            Some(libc::ECANCELED) => {}
            // A starved receive that found no bytes: receive multishot again (below).
            Some(libc::EAGAIN) if data.op == Op::StarvedRecv => self.counters.starved_empty += 1,
            // End of stream (0) or a socket error: the peer is gone.
            _ => self.on_peer_gone(slot, now),
        }
        let conn = self.conns.slot_mut(slot);
        match conn.phase {
            Phase::Open if !conn.recv_armed && conn.peer_alive && !conn.paused => {
                self.rearm_receive(id)
            }
            Phase::Closing | Phase::HandingOff => self.advance_close(slot),
            _ => {}
        }
    }

    /// A receive of kind `op` found no buffer: the connection (bytes waiting) is listed for
    /// phase 4. A multishot receive joins the back of the starved queue; a first or starved
    /// receive (armed within its budget, so this is rare) goes back to the head of its queue:
    /// it has waited longer than those listed after it. False if it is not listed (closing,
    /// paused, or listed already).
    fn list_after_no_buffer(&mut self, id: ConnId, op: Op, now: Millis) -> bool {
        let conn = self.conns.slot_mut(id.slot());
        if conn.phase != Phase::Open || conn.recv_listed {
            return false;
        }
        conn.recv_listed = true;
        match op {
            Op::FirstRecv => self.first_recvs.push_front(id),
            Op::StarvedRecv => self.starved.push_front(id),
            _ => {
                self.starved.push_back(id);
                self.starved_since.entry(id.slot()).or_insert(now);
            }
        }
        true
    }

    /// A starved receive ended: refused (ENOBUFS, counted; the connection keeps the time of
    /// its first ENOBUFS), or served (its wait from then counted), or ended otherwise.
    fn count_starved_outcome(&mut self, slot: u32, errno: Option<i32>, now: Millis) {
        if errno == Some(libc::ENOBUFS) {
            self.counters.starved_refused += 1;
            return;
        }
        self.conns.slot_mut(slot).recv_starved = false;
        let Some(since) = self.starved_since.remove(&slot) else { return };
        if errno.is_none() {
            let waited = now.since(since);
            self.counters.starved_served += 1;
            self.counters.starved_wait_millis += waited;
            self.counters.starved_wait_max_millis =
                self.counters.starved_wait_max_millis.max(waited);
        }
    }

    /// Decodes every complete packet in the connection's input and feeds it to the broker,
    /// applying the broker's actions after each, so that a packet which closes or hands off
    /// the connection stops the decoding (the rest then stays as input for the handoff).
    pub(super) fn decode_input(&mut self, id: ConnId, now: Millis) {
        let max_packet_bytes = self.broker.config().max_packet_size;
        loop {
            if self.must_hold_input() {
                self.pause_reading(id);
                return;
            }
            let Some(conn) = self.conns.get_mut(id) else { return };
            // Until the peer's address is known, or the CONNECT's password verified, the input
            // waits (`peer_name.rs`, `verify.rs`).
            if conn.phase != Phase::Open
                || conn.input_closed
                || conn.peer_pending
                || conn.verify_pending
            {
                return;
            }
            match protocol::decode(conn.input.bytes_mut(), max_packet_bytes) {
                Ok(Some(mut packet)) => {
                    if matches!(packet, Packet::Connect(_)) {
                        conn.connect_seen = true;
                    }
                    if conn.layered {
                        if let Packet::Connect(connect) = &mut packet {
                            self.apply_identity(id.slot(), connect);
                        }
                    }
                    self.counters.packets_decoded += 1;
                    self.decode_budget -= 1;
                    match packet {
                        // Its password may be checked off the loop (`verify.rs`).
                        protocol::Packet::Connect(connect) => self.feed_connect(id, connect, now),
                        packet => self.broker.handle_packet(id, packet, now),
                    }
                    self.apply_actions(now);
                }
                Ok(None) => {
                    if conn.input.is_empty() {
                        // Between packets an idle connection holds no memory.
                        conn.input = Input::default();
                    }
                    return;
                }
                Err(error) => {
                    self.counters.decode_errors += 1;
                    conn.input = Input::default();
                    conn.input_closed = true;
                    tracing::debug!(conn = ?id, %error, "undecodable input");
                    self.broker.handle_decode_error(id, error, now);
                    self.apply_actions(now);
                    return;
                }
            }
        }
    }

    /// EOF or a socket error: tell the broker (an abnormal end publishes the will) and close.
    pub(super) fn on_peer_gone(&mut self, slot: u32, now: Millis) {
        let id = self.conns.id_of(slot);
        let conn = self.conns.slot_mut(slot);
        conn.peer_alive = false;
        let tell_broker = conn.broker_knows;
        conn.broker_knows = false;
        if tell_broker {
            tracing::debug!(conn = ?id, "connection lost");
            self.broker.handle_closed(id, now);
        }
        if self.conns.slot_mut(slot).phase == Phase::Open {
            self.begin_close(slot, now);
        }
    }

    fn on_send(&mut self, completion: Completion, now: Millis) {
        let Some(id) = self.current(completion.user_data) else {
            panic!("send completion {:?} for a slot that was reused", completion.user_data);
        };
        let slot = id.slot();
        let sent_bytes = usize::try_from(completion.result).unwrap_or(0);
        let conn = self.conns.slot_mut(slot);
        let op = conn
            .send
            .as_mut()
            .unwrap_or_else(|| panic!("send completion for {id:?} without an op"));
        let partial = sent_bytes < op.covered_bytes();
        let unsent = op.complete(sent_bytes);
        self.counters.partial_sends += u64::from(partial);
        self.counters.sends += 1;
        self.counters.sent_bytes += sent_bytes as u64;
        if let Some(errno) = completion.errno() {
            self.counters.send_errors += 1;
            if errno != libc::ECANCELED {
                tracing::debug!(conn = ?id, error = %std::io::Error::from_raw_os_error(errno), "send failed");
            }
            self.on_peer_gone(slot, now);
        } else {
            let mqtt_bytes =
                if conn.layered { self.layered_sent(slot, sent_bytes) } else { sent_bytes };
            let conn = self.conns.slot_mut(slot);
            if conn.broker_knows && mqtt_bytes > 0 {
                self.broker.handle_sent(id, mqtt_bytes, now);
            }
            if unsent || self.conns.slot_mut(slot).output_announced {
                self.list_for_flush(slot);
            } else if let Some(op) = self.conns.slot_mut(slot).send.take_if(|op| !op.has_unsent()) {
                self.sends.give(op);
            }
        }
        if matches!(self.conns.slot_mut(slot).phase, Phase::Closing | Phase::HandingOff) {
            self.advance_close(slot);
        }
    }

    fn on_cancel(&mut self, completion: Completion, _now: Millis) {
        let Some(id) = self.current(completion.user_data) else {
            panic!("cancel completion {:?} for a slot that was reused", completion.user_data);
        };
        let conn = self.conns.slot_mut(id.slot());
        assert!(conn.cancels_in_flight > 0, "cancel completion without a cancel");
        conn.cancels_in_flight -= 1;
        if matches!(conn.phase, Phase::Closing | Phase::HandingOff) {
            self.advance_close(id.slot());
        }
    }

    fn on_close(&mut self, completion: Completion) {
        let Some(id) = self.current(completion.user_data) else {
            panic!("close completion {:?} for a slot that was reused", completion.user_data);
        };
        if let Some(errno) = completion.errno() {
            // The slot is empty either way; a failure here is worth a look, not a crash.
            tracing::warn!(conn = ?id, error = %std::io::Error::from_raw_os_error(errno), "close failed");
        }
        self.conns.slot_mut(id.slot()).close_in_flight = false;
        self.starved_since.remove(&id.slot());
        self.remove_layers(id.slot());
        if let Some(op) = self.conns.release(id.slot()) {
            self.sends.give(op);
        }
        self.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.counters.closed += 1;
        tracing::debug!(conn = ?id, "connection closed");
        if self.accept_paused && self.stopping.is_none() {
            // The freed slot's ring takes the next connections.
            self.accept_paused = false;
            self.rings.open = self.conns.ring_of(id.slot());
            let fd = self.ring_at(self.rings.open).fd();
            self.peers.register_ring_fd(fd);
            self.arm_accepts();
        }
    }

    fn on_wake(&mut self, now: Millis) {
        self.wake_armed = false;
        // The same eventfd carries the admin API's wake-ups (`ops_link`).
        self.ops.control_due = true;
        if self.stop.requested() {
            self.begin_stop(now);
        } else {
            for value in self.stop.take_reloads() {
                self.apply_reload(value, now);
            }
            for verified in self.stop.take_verified() {
                self.on_verified(verified, now);
            }
            self.arm_wake();
        }
    }
}

/// Ring `ring`'s provided buffers that a receive of kind `op` draws from, given the first
/// ring's (shared, first-receive, starved-receive) and the further rings.
fn recv_buffers_of<'a>(
    first_ring: [&'a mut std::mem::ManuallyDrop<BufRing>; 3],
    further: &'a mut [super::rings::FurtherRing],
    ring: usize,
    op: Op,
) -> &'a mut BufRing {
    let [shared, first, starved] = match ring {
        0 => first_ring,
        ring => {
            let further = &mut further[ring - 1];
            [&mut further.buffers, &mut further.first_buffers, &mut further.starved_buffers]
        }
    };
    match op {
        Op::FirstRecv => first,
        Op::StarvedRecv => starved,
        _ => shared,
    }
}
