//! The worker's side of the mesh: connection handoff both ways and doorbells.
//!
//! Handoff, on the worker that read the CONNECT: the broker forgets the connection
//! (`Action::Handoff`); the connection stops decoding (bytes after the CONNECT stay in its
//! input), its receive is cancelled (bytes still arriving are appended), and once nothing is in
//! flight its direct descriptor goes to the home worker's ring (MSG_RING, `IORING_MSG_SEND_FD`).
//! On success the record (CONNECT + leftover bytes) follows on the SPSC ring and our slot is
//! closed; on failure (the target's table is full) the connection is closed, counted.
//! On the home worker: descriptor and record are paired in either order, then the connection
//! is opened as if accepted there: `handle_open`, `handle_packet(Connect)`, the leftover bytes.
//! Mesh backpressure is handled with the turn's decode budget, in `pacing.rs`.

use super::conn::{PendingHandoff, Phase};
use super::msg_ring::{self, HandoffKey};
use super::peers::HandoffRecord;
use super::uring::Completion;
use super::user_data::{Op, UserData};
use super::worker::Worker;
use crate::broker::{ConnId, Millis, PeerAddr, WorkerId};
use crate::protocol::Connect;

impl Worker {
    /// `Action::Handoff`: the broker has forgotten `id`; move it to worker `to`.
    pub(super) fn begin_handoff(
        &mut self,
        id: ConnId,
        to: WorkerId,
        connect: Box<Connect>,
        peer: Option<PeerAddr>,
    ) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        assert_eq!(conn.phase, Phase::Open, "handoff of {id:?} in {:?}", conn.phase);
        assert!(to != self.broker.worker(), "handoff of {id:?} to its own worker");
        tracing::debug!(conn = ?id, ?to, "handing off to the session's home worker");
        conn.broker_knows = false;
        conn.phase = Phase::HandingOff;
        let handoff = PendingHandoff { to, connect, peer, key: None, refusals: 0 };
        conn.handoff = Some(Box::new(handoff));
        self.advance_close(id.slot());
    }

    /// The last step of a handoff: send the descriptor (nothing else is in flight on it).
    pub(super) fn send_fd(&mut self, slot: u32) {
        let conn = self.conns.slot_mut(slot);
        let generation = conn.generation;
        let to = conn.handoff.as_ref().map(|handoff| handoff.to);
        let to = to.unwrap_or_else(|| panic!("slot {slot} handing off without a destination"));
        conn.close_in_flight = true;
        let key = self.peers.next_handoff_key();
        let fixed = self.fixed(slot);
        let entry = msg_ring::send_fd_sqe(
            self.peers.ring_fd(to),
            fixed.0,
            handoff_user_data(key).pack(),
            UserData::new(Op::SendFd, slot, generation).pack(),
        );
        if let Some(handoff) = self.conns.slot_mut(slot).handoff.as_mut() {
            handoff.key = Some(key);
        }
        // SAFETY: a MSG_RING descriptor send references no memory of ours; the target ring's
        // descriptor stays open until every worker has stopped (the exit gate).
        unsafe { self.ring_for(slot).push(&entry) };
    }

    /// The descriptor send completed on our ring.
    pub(super) fn on_send_fd(&mut self, completion: Completion) {
        let data = completion.user_data;
        let id = ConnId::new(data.slot, data.generation);
        let conn = self
            .conns
            .get_mut(id)
            .unwrap_or_else(|| panic!("send-fd completion for a reused {id:?}"));
        conn.close_in_flight = false;
        if completion.errno() == Some(libc::ENFILE) {
            if let Some(handoff) = conn.handoff.as_mut().filter(|h| h.refusals < REFUSALS_MAX) {
                // The target's open ring filled with descriptors it has not reaped yet; it
                // moves to a ring with room when it does. Nothing reached it: send again next
                // turn (the connection stays ours, with its receive stopped).
                handoff.refusals += 1;
                handoff.key = None;
                self.counters.handoff_retries += 1;
                self.handoff_retries.push(id);
                return;
            }
        }
        let handoff = conn
            .handoff
            .take()
            .unwrap_or_else(|| panic!("{id:?} sent its descriptor without a handoff"));
        let key = handoff.key.unwrap_or_else(|| panic!("{id:?} sent its descriptor without a key"));
        let leftover = conn.input.take();
        conn.phase = Phase::Closing;
        conn.peer_alive = false;
        let failed = completion.errno();
        // On a failure the layers stay, dropped at the close completion.
        let layers = if failed.is_none() { self.remove_layers(id.slot()) } else { None };
        if let Some(errno) = failed {
            self.counters.handoff_failures += 1;
            let error = std::io::Error::from_raw_os_error(errno);
            tracing::warn!(conn = ?id, to = ?handoff.to, %error, "handoff failed: closing the connection");
        } else {
            self.counters.handoffs_out += 1;
            let record = HandoffRecord {
                key,
                connect: handoff.connect,
                leftover,
                layers,
                peer: handoff.peer.map(Box::new),
            };
            // Backpressure is noticed where reads happen; a record is never held back.
            let _ = self.peers.send_record(handoff.to, record);
        }
        self.advance_close(id.slot());
    }

    /// Phase 4: sends again the descriptors a full target ring refused last turn.
    pub(super) fn retry_refused_handoffs(&mut self) {
        let mut retries = std::mem::take(&mut self.handoff_retries);
        for id in retries.drain(..) {
            let Some(conn) = self.conns.get_mut(id) else { continue };
            assert_eq!(conn.phase, Phase::HandingOff, "a refused handoff left its phase");
            self.send_fd(id.slot());
        }
        self.handoff_retries = retries;
    }

    /// A peer's descriptor landed in our table.
    pub(super) fn on_handoff_fd(&mut self, completion: Completion, now: Millis) {
        let data = completion.user_data;
        let key = HandoffKey { from: WorkerId(data.slot as u16), sequence: data.generation };
        assert!(completion.result >= 0, "handoff {key:?} posted an error to its target");
        let slot = self.conns.global_slot(completion.ring.into(), completion.result as u32);
        // It holds the slot from now on, record or not: count it before the next arrives.
        self.conns.land(slot);
        self.keep_room_for_new_connections();
        if let Some((slot, record)) = self.peers.on_handoff_slot(key, slot) {
            self.adopt(slot, record, now);
        }
    }

    /// Opens a handed-off connection as if it had been accepted here, then replays its CONNECT
    /// and the bytes that followed it.
    pub(super) fn adopt(&mut self, slot: u32, record: HandoffRecord, now: Millis) {
        assert!((slot as usize) < self.conns.slots(), "handed-off slot {slot} beyond the table");
        self.counters.handoffs_in += 1;
        self.conns.unland(slot);
        let id = self.conns.open(slot);
        self.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.stopping.is_some() {
            self.begin_close(slot, now);
            return;
        }
        if let Some(layers) = record.layers {
            self.insert_layers(slot, layers);
        }
        // Its CONNECT came with it: multishot receives from the ring's shared buffers.
        self.conns.slot_mut(slot).connect_seen = true;
        self.arm_recv(slot);
        self.conns.slot_mut(slot).broker_knows = true;
        self.broker.handle_open(id, now);
        if let Some(peer) = record.peer {
            self.broker.set_peer_addr(id, *peer);
        }
        self.feed_connect(id, record.connect, now);
        self.apply_actions(now);
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.layered && conn.phase == Phase::Open {
            // What the layers produced while the connection was moving.
            self.flush_layers(id);
        }
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.phase == Phase::Open && !record.leftover.is_empty() {
            conn.input = record.leftover.into();
            self.decode_input(id, now);
        }
    }

    /// End of phase 4: publish this turn's mesh items and ring the peers that sleep.
    pub(super) fn ring_doorbells(&mut self) {
        let ring = &mut self.ring;
        self.peers.flush(|fd| {
            let entry = msg_ring::doorbell_sqe(
                fd,
                UserData::new(Op::Doorbell, 0, 0).pack(),
                UserData::new(Op::DoorbellFailed, 0, 0).pack(),
            );
            // SAFETY: a MSG_RING doorbell references no memory; the target ring stays open
            // until every worker has stopped (the exit gate).
            unsafe { ring.push(&entry) };
        });
    }
}

/// Times one connection's descriptor is sent again after its target's ring was full; then it
/// is closed (counted as a handoff failure).
const REFUSALS_MAX: u8 = 8;

/// The target-side `user_data` of a handoff: the key in the slot/generation fields.
fn handoff_user_data(key: HandoffKey) -> UserData {
    UserData::new(Op::HandoffFd, u32::from(key.from.0), key.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_key_survives_the_user_data_round_trip() {
        let key = HandoffKey { from: WorkerId(127), sequence: u32::MAX };
        let data = UserData::unpack(handoff_user_data(key).pack());
        assert_eq!(data.op, Op::HandoffFd);
        assert_eq!(HandoffKey { from: WorkerId(data.slot as u16), sequence: data.generation }, key);
    }
}
