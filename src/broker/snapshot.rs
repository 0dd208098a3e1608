//! Snapshots of a worker's persistent state: whole (a start-up's first file, `take_snapshot`)
//! or a slice per loop turn (a compaction while the broker runs, `snapshot_slice`).
//!
//! A sliced snapshot walks the session slab `SNAPSHOT_SLOTS_PER_SLICE` slots at a time, and
//! writes at most `SNAPSHOT_ENTRIES_PER_SLICE` outgoing messages per slice: a session with a
//! longer queue is cut, and the next slice resumes it at the first entry not written (entries
//! are in sequence order, oldest first: inflight, then queued). The retained messages and
//! forwarded QoS 2 ids go in the last slice, then `SnapshotEnd`.
//!
//! A session cut between slices is open in the replayed state from its first part on, so the
//! batches copied in between apply to it: a change to an entry already written applies, one to
//! an entry not yet written does not fit and is skipped (the later part holds the entry as it
//! is then), and an entry enqueued meanwhile is written by both, which replay takes once. If
//! the session is dropped or its slot taken by a new session meanwhile, the copied records
//! hold all of it, and what the resumed part writes again of a new one only restates it. The
//! runtime writes the slices into the new file interleaved with copies of the batches it keeps
//! writing to the old one (`runtime/journal.rs`), and takes a slice only when no record is
//! pending: a slice then shows exactly the state after every record copied before it. Replay
//! (`persist::replay`) applies the copied records while the snapshot is open and skips those
//! of sessions not yet in it (their slice, later, holds their effect).
//!
//! One part of the state is ahead of the log on purpose: a cross-worker QoS 2 id is in its
//! session from the PUBLISH on, but its `Qos2Received` is journaled only once the other
//! workers' copies are durable (`durable.rs`). A snapshot leaves such ids out, as the log does
//! until then; written earlier, a kill could keep the id without the copies, and the re-sent
//! PUBLISH would be dropped as a duplicate (issue #10, found by the 20-kill test). The
//! held-back ids are matched to sessions by slot; that is exact because a pending id is
//! dropped when its session is discarded or releases it (`durable.rs`), before the slot can
//! be reused (tested in `tests/durable.rs`).
//!
//! Invariant: replaying a file's snapshot region gives the state the broker had when the
//! region's last record was taken, less the QoS 2 ids still waiting for other workers
//! (tested in `tests/durable.rs`).

use std::collections::{HashMap, HashSet};

use super::durable::message_record;
use super::inflight::Awaiting;
use super::route::home_worker;
use super::session::Session;
use super::{Broker, SessionId};
use crate::persist::record::{encode, Record};
use crate::protocol::PacketId;

/// Session slab slots one slice walks (a slot is a few nanoseconds when empty).
pub const SNAPSHOT_SLOTS_PER_SLICE: usize = 4096;

/// Outgoing messages one slice writes at most (a few records each): a session with a longer
/// queue is written over several slices.
pub const SNAPSHOT_ENTRIES_PER_SLICE: usize = 4096;

/// How much one slice of a sliced snapshot may write.
#[derive(Clone, Copy, Debug)]
pub struct SliceLimits {
    pub slots: usize,
    pub entries: usize,
}

impl SliceLimits {
    /// The runtime's: `SNAPSHOT_SLOTS_PER_SLICE` and `SNAPSHOT_ENTRIES_PER_SLICE`.
    pub const RUNTIME: Self =
        Self { slots: SNAPSHOT_SLOTS_PER_SLICE, entries: SNAPSHOT_ENTRIES_PER_SLICE };
    /// No limit: a whole snapshot at once (a start-up's).
    const WHOLE: Self = Self { slots: usize::MAX, entries: usize::MAX };
}

/// Where a sliced snapshot stands.
#[derive(Debug)]
pub struct SnapshotCursor {
    next_slot: usize,
    /// The session at `next_slot` was cut: its entries from this sequence number on are
    /// still to be written (its opening records are written).
    resume_seq: Option<u64>,
    limits: SliceLimits,
    done: bool,
}

impl SnapshotCursor {
    pub fn done(&self) -> bool {
        self.done
    }
}

/// One fan-out's body is stored once per slice: the same topic and payload buffers and flags
/// mean the same message.
type BodyKey = (usize, usize, usize, usize, u8);

impl Broker {
    /// Writes the worker's whole persistent state to `out` as a file's opening (header,
    /// snapshot, `SnapshotEnd`), replacing the pending records it subsumes. Returns the
    /// position that is durable once `out` is. For a start-up, before the loop runs.
    pub fn take_snapshot(&mut self, generation: u64, out: &mut Vec<u8>) -> u64 {
        let me = self.me;
        let d = self.durability.as_deref_mut().expect("persistence is enabled");
        let position = d.discard_pending();
        encode(&Record::Header { worker: me.0, generation }, out);
        let limits = SliceLimits::WHOLE;
        let mut cursor = SnapshotCursor { next_slot: 0, resume_seq: None, limits, done: false };
        while !cursor.done {
            self.write_slice(&mut cursor, out);
        }
        position
    }

    /// Starts a sliced snapshot into a new file of `generation`: its header. The records
    /// pending and appended from now on still go to the current file (and the runtime copies
    /// them into the new one). Each slice walks at most `limits.slots` session slots and
    /// writes at most `limits.entries` outgoing messages (`SliceLimits::RUNTIME` in the
    /// runtime).
    pub fn begin_snapshot(
        &mut self,
        generation: u64,
        limits: SliceLimits,
        out: &mut Vec<u8>,
    ) -> SnapshotCursor {
        assert!(limits.slots > 0 && limits.entries > 0, "a slice writes something");
        encode(&Record::Header { worker: self.me.0, generation }, out);
        SnapshotCursor { next_slot: 0, resume_seq: None, limits, done: false }
    }

    /// Appends the next slice of the snapshot to `out`; the last ends with `SnapshotEnd`. Call
    /// only when no journal record is pending (`journal_pending_bytes() == 0`).
    pub fn snapshot_slice(&mut self, cursor: &mut SnapshotCursor, out: &mut Vec<u8>) {
        assert_eq!(self.journal_pending_bytes(), 0, "a slice with records pending");
        self.write_slice(cursor, out);
    }

    fn write_slice(&mut self, cursor: &mut SnapshotCursor, out: &mut Vec<u8>) {
        assert!(!cursor.done, "the snapshot is complete");
        let mut bodies: HashMap<BodyKey, u64> = HashMap::new();
        let end = self.sessions.slots().min(cursor.next_slot.saturating_add(cursor.limits.slots));
        let mut budget = cursor.limits.entries;
        let d = self.durability.as_deref().expect("persistence is enabled");
        let pending = d.qos2_ids_pending();
        for slot in cursor.next_slot..end {
            let id = SessionId(slot as u32);
            let resume = cursor.resume_seq.take();
            if !self.sessions.try_get(id).is_some_and(|session| session.persistent) {
                continue;
            }
            if resume.is_none() {
                self.snapshot_session_opening(id, &pending, out);
            }
            let from_seq = resume.unwrap_or(0);
            if let Some(cut) = self.snapshot_entries(id, from_seq, &mut budget, &mut bodies, out) {
                cursor.next_slot = slot;
                cursor.resume_seq = Some(cut);
                return;
            }
        }
        cursor.next_slot = end;
        if end >= self.sessions.slots() {
            self.snapshot_shared(out);
            encode(&Record::SnapshotEnd, out);
            cursor.done = true;
        }
    }

    /// The opening of a persistent session's snapshot: the session, its subscriptions, QoS 2
    /// ids and where its packet ids continue. The ids in `pending` are left out: their
    /// `Qos2Received` waits until the other workers' copies are durable, and is journaled
    /// (then copied into the new file after this slice) only then.
    fn snapshot_session_opening(
        &self,
        id: SessionId,
        pending: &HashSet<(u32, PacketId)>,
        out: &mut Vec<u8>,
    ) {
        let session: &Session = self.sessions.get(id);
        let sid = id.0;
        encode(&Record::SessionOpen { sid, client_id: session.client_id.to_utf8() }, out);
        for &(node, qos) in session.subscriptions.as_slice() {
            let filter = self.subscriptions.filter_of(node);
            encode(&Record::Subscribe { sid, filter, qos }, out);
        }
        for packet_id in session.incoming.ids() {
            if pending.contains(&(sid, packet_id)) {
                continue;
            }
            encode(&Record::Qos2Received { sid, packet_id }, out);
        }
        let packet_id = session.outgoing.next_packet_id();
        encode(&Record::NextPacketId { sid, packet_id }, out);
    }

    /// A session's outgoing messages (in flight first, then queued) from sequence number
    /// `from_seq` on, at most `budget` of them (less what they used). Returns the sequence
    /// number of the first one not written when the budget ran out before the end.
    fn snapshot_entries(
        &mut self,
        id: SessionId,
        from_seq: u64,
        budget: &mut usize,
        bodies: &mut HashMap<BodyKey, u64>,
        out: &mut Vec<u8>,
    ) -> Option<u64> {
        let d = self.durability.as_deref_mut().expect("persistence is enabled");
        let session: &Session = self.sessions.get(id);
        let sid = id.0;
        let inflight = session
            .outgoing
            .inflight()
            .map(|entry| (&entry.message, entry.qos, entry.retain, entry.seq, Some(entry)));
        let queued = session
            .outgoing
            .queued()
            .map(|entry| (&entry.message, entry.qos, entry.retain, entry.seq, None));
        let mut previous_seq = 0;
        for (message, qos, retain, seq, inflight) in inflight.chain(queued) {
            if seq == 0 {
                continue; // QoS 0, never journaled
            }
            // Resuming at a sequence number relies on this order.
            assert!(seq > previous_seq, "session entries out of sequence order");
            previous_seq = seq;
            if seq < from_seq {
                continue;
            }
            if *budget == 0 {
                return Some(seq);
            }
            *budget -= 1;
            let key = (
                message.topic.as_bytes().as_ptr() as usize,
                message.topic.as_bytes().len(),
                message.payload.as_ptr() as usize,
                message.payload.len(),
                message.qos.as_u8() | u8::from(message.retain) << 2,
            );
            let mid = *bodies.entry(key).or_insert_with(|| {
                let mid = d.take_mid();
                encode(&message_record(mid, message), out);
                mid
            });
            encode(&Record::Enqueue { sid, seq, mid, qos, retain }, out);
            if let Some(entry) = inflight {
                encode(&Record::Sent { seq, packet_id: entry.packet_id }, out);
                if entry.awaiting == Awaiting::Pubcomp {
                    encode(&Record::Released { seq }, out);
                }
            }
        }
        None
    }

    /// The state no session owns: the retained topics this worker owns and the QoS 2 ids
    /// forwarded to it.
    fn snapshot_shared(&mut self, out: &mut Vec<u8>) {
        let (me, workers) = (self.me, self.workers);
        let d = self.durability.as_deref().expect("persistence is enabled");
        d.snapshot_forwarded(out);
        self.retained.for_each_set_at(|message, set_at| {
            if home_worker(message.topic.as_bytes(), workers) == me {
                let (topic, payload) = (message.topic.clone(), message.payload.clone());
                let set_at_unix_millis = Some(d.unix_millis(set_at));
                encode(
                    &Record::Retain { topic, payload, qos: message.qos, set_at_unix_millis },
                    out,
                );
            }
        });
    }
}
