//! Pacing reads: how much input a turn decodes, and what happens to the rest.
//!
//! A turn decodes at most `turn_packets_max` packets, and none while the mesh is
//! backpressured (a peer's overflow at `mesh_overflow_max`). A connection that receives bytes
//! beyond that keeps them undecoded in its input, has its multishot receive cancelled (so the
//! kernel's socket buffer, and then TCP flow control, holds the rest), and waits in the paused
//! list. At the start of the next turn's dispatch, paused connections are served first, oldest
//! first, while the budget lasts and the mesh has room; then they receive again.
//!
//! This bounds a turn's length under a flood, so output (one `sendmsg` per connection per turn)
//! and timers keep their share of the loop, and it bounds the input held per connection to what
//! arrived before its cancel took effect.
//!
//! Invariant: a connection is in the paused list at most once (`Conn::paused`), so the list is
//! bounded by the file table.

use super::conn::Phase;
use super::user_data::{Op, UserData};
use super::worker::Worker;
use crate::broker::{ConnId, Millis};

impl Worker {
    /// Whether received bytes must wait instead of being decoded now.
    pub(super) fn must_hold_input(&self) -> bool {
        self.decode_budget == 0
            || self.peers.is_backpressured()
            || self.broker.persistence_backpressured()
    }

    /// Stops reading from `id` until a later turn: its bytes stay undecoded in its input.
    pub(super) fn pause_reading(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.paused {
            return;
        }
        conn.paused = true;
        self.counters.reads_paused += 1;
        self.paused.push_back(id);
        if conn.recv_armed {
            conn.cancels_in_flight += 1;
            let target = UserData::new(conn.recv_op(), id.slot(), id.generation());
            let cancel = UserData::new(Op::Cancel, id.slot(), id.generation());
            self.ring_for(id.slot()).push_cancel(target, cancel);
        }
    }

    /// Start of phase 2: decode what paused connections hold, oldest first, while the budget
    /// lasts and the mesh has room; those done receive again.
    pub(super) fn resume_paused(&mut self, now: Millis) {
        while !self.must_hold_input() {
            let Some(id) = self.paused.pop_front() else { break };
            let Some(conn) = self.conns.get_mut(id) else { continue };
            conn.paused = false;
            if conn.phase != Phase::Open {
                continue;
            }
            if !conn.input.is_empty() {
                self.decode_input(id, now);
            }
            let Some(conn) = self.conns.get_mut(id) else { continue };
            if conn.phase == Phase::Open && conn.peer_alive && !conn.recv_armed && !conn.paused {
                self.rearm_receive(id);
            }
        }
    }
}
