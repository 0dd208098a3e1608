//! Snapshots of a worker's persistent state: whole (a start-up's first file, `take_snapshot`)
//! or a slice per loop turn (a compaction while the broker runs, `snapshot_slice`).
//!
//! A sliced snapshot walks the session slab `SNAPSHOT_SLOTS_PER_SLICE` slots at a time; the
//! retained messages and forwarded QoS 2 ids go in the last slice, then `SnapshotEnd`. The
//! runtime writes the slices into the new file interleaved with copies of the batches it keeps
//! writing to the old one (`runtime/journal.rs`), and takes a slice only when no record is
//! pending: a slice then shows exactly the state after every record copied before it. Replay
//! (`persist::replay`) applies the copied records while the snapshot is open and skips those
//! of sessions not yet in it (their slice, later, holds their effect).
//!
//! Invariant: replaying a file's snapshot region gives the state the broker had when the
//! region's last record was taken (tested in `tests/durable.rs`).

use std::collections::HashMap;

use super::durable::message_record;
use super::inflight::Awaiting;
use super::route::home_worker;
use super::session::Session;
use super::{Broker, SessionId};
use crate::persist::record::{encode, Record};

/// Session slab slots one slice walks (a slot is a few nanoseconds when empty; a session's
/// records are written whole, whatever its queue holds).
pub const SNAPSHOT_SLOTS_PER_SLICE: usize = 4096;

/// Where a sliced snapshot stands.
#[derive(Debug)]
pub struct SnapshotCursor {
    next_slot: usize,
    slots_per_slice: usize,
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
        let mut cursor = SnapshotCursor { next_slot: 0, slots_per_slice: usize::MAX, done: false };
        while !cursor.done {
            self.write_slice(&mut cursor, out);
        }
        position
    }

    /// Starts a sliced snapshot into a new file of `generation`: its header. The records
    /// pending and appended from now on still go to the current file (and the runtime copies
    /// them into the new one). Each slice walks `slots_per_slice` session slots
    /// (`SNAPSHOT_SLOTS_PER_SLICE` in the runtime).
    pub fn begin_snapshot(
        &mut self,
        generation: u64,
        slots_per_slice: usize,
        out: &mut Vec<u8>,
    ) -> SnapshotCursor {
        assert!(slots_per_slice > 0, "a slice walks at least one slot");
        encode(&Record::Header { worker: self.me.0, generation }, out);
        SnapshotCursor { next_slot: 0, slots_per_slice, done: false }
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
        let end =
            self.sessions.slots().min(cursor.next_slot.saturating_add(cursor.slots_per_slice));
        for slot in cursor.next_slot..end {
            let id = SessionId(slot as u32);
            if self.sessions.try_get(id).is_some_and(|session| session.persistent) {
                self.snapshot_session(id, &mut bodies, out);
            }
        }
        cursor.next_slot = end;
        if end >= self.sessions.slots() {
            self.snapshot_shared(out);
            encode(&Record::SnapshotEnd, out);
            cursor.done = true;
        }
    }

    /// One persistent session: its opening, subscriptions, QoS 2 ids, where its packet ids
    /// continue, and its outgoing messages (in flight first, then queued).
    fn snapshot_session(
        &mut self,
        id: SessionId,
        bodies: &mut HashMap<BodyKey, u64>,
        out: &mut Vec<u8>,
    ) {
        let d = self.durability.as_deref_mut().expect("persistence is enabled");
        let session: &Session = self.sessions.get(id);
        let sid = id.0;
        encode(&Record::SessionOpen { sid, client_id: session.client_id.clone() }, out);
        for (filter, qos) in &session.subscriptions {
            encode(&Record::Subscribe { sid, filter: filter.clone(), qos: *qos }, out);
        }
        for packet_id in session.incoming.ids() {
            encode(&Record::Qos2Received { sid, packet_id }, out);
        }
        let packet_id = session.outgoing.next_packet_id();
        encode(&Record::NextPacketId { sid, packet_id }, out);
        let inflight = session
            .outgoing
            .inflight()
            .map(|entry| (&entry.message, entry.qos, entry.retain, entry.seq, Some(entry)));
        let queued = session
            .outgoing
            .queued()
            .map(|entry| (&entry.message, entry.qos, entry.retain, entry.seq, None));
        for (message, qos, retain, seq, inflight) in inflight.chain(queued) {
            if seq == 0 {
                continue; // QoS 0, never journaled
            }
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
    }

    /// The state no session owns: the retained topics this worker owns and the QoS 2 ids
    /// forwarded to it.
    fn snapshot_shared(&mut self, out: &mut Vec<u8>) {
        let (me, workers) = (self.me, self.workers);
        let d = self.durability.as_deref().expect("persistence is enabled");
        d.snapshot_forwarded(out);
        self.retained.for_each(|message| {
            if home_worker(message.topic.as_bytes(), workers) == me {
                let (topic, payload) = (message.topic.clone(), message.payload.clone());
                encode(&Record::Retain { topic, payload, qos: message.qos }, out);
            }
        });
    }
}
