//! Durability: the journal records the broker emits, and the acknowledgements it holds until
//! they are durable (see docs/ARCHITECTURE.md, "Persistence").
//!
//! Present only when persistence is on (`Broker::durability` is `None` otherwise, and every
//! hook is one test of that `Option`). The broker encodes a record into its journal buffer
//! for each change of persistent state (`persist::record`); `appended` counts the bytes ever
//! appended, so a position names "everything appended so far". The runtime takes the buffer
//! (`take_journal`), writes it, and reports the position durable (`handle_durable`).
//!
//! Held acknowledgements: PUBACK, PUBREC, PUBCOMP, PUBREL, UNSUBACK and a persistent
//! session's SUBACK wait, in one FIFO per worker (which keeps each connection's order), until
//! the local journal is durable up to where it was when the ack was decided, and until every
//! peer the message was sent to has confirmed that its own journal holds it.
//!
//! Cross-worker counting (the interest protocol's trick): each worker counts the `Publish` and
//! `Retain` messages it sends each peer; the receiver counts what it receives, notes the count
//! when the runtime takes a batch (`covered`: everything received by then has its records in
//! the batch, or needed none) and answers `RemoteMsg::Durable { count }` once the batch is
//! durable. Pair channels are FIFO, so a count confirms every message before it.
//!
//! QoS 2 from a persistent session (Method B: delivered at the PUBLISH, its id stored until
//! PUBREL so a re-sent PUBLISH is not delivered twice). With only local destinations, the id's
//! record (`Qos2Received`) goes in the same batch as the local copies, and batches take
//! effect whole (`Commit`), so after a crash both or neither exist. With remote destinations
//! the id is journaled only once every destination confirmed its copy durable, then the
//! PUBREC waits for that record. A crash in between makes the client re-send the PUBLISH, and
//! the destinations recognise it: the copies to other workers carry the client id and packet
//! id (`RemoteMsg::PublishOnce`), and each destination journals the pair (`Qos2Forwarded`) in
//! the batch of its copy and drops a second copy with a pair it holds. The origin tells every
//! other worker when the client releases the id (PUBREL, known or not: a crash may have lost
//! it at the origin only) or starts a new persistent session (`RemoteMsg::Qos2Release`); the
//! PUBCOMP waits until they journaled that, so a reused id is never taken for a copy. The
//! pairs are bounded by `sessions_max` x `max_awaiting_pubrel`; beyond it a copy is stored
//! without its pair (counted: `forwarded_over_bound`), so a re-sent one could come twice.
//!
//! A pending `Qos2Received` names its session by slot, and a slot is reused once its session
//! is discarded. So a pending record lives no longer than its session's claim on the id:
//! discarding the session (`SessionDrop`) or releasing the id (PUBREL) drops it
//! (`cancel_pending`). Invariant: every pending record's slot holds the session that
//! registered it, and that session still holds the id; neither the journal nor a snapshot's
//! held-back ids can then apply it to another session (issue #10).
//!
//! Bounds: the journal buffer and the held acks (counted at `HELD_ACK_BYTES` each) together
//! are kept under `pending_bytes_max` by pausing reads (`persistence_backpressured`); a turn's
//! decoded packets may pass it by their own size. Peer counts are O(workers).

use std::collections::{HashMap, HashSet, VecDeque};

use smallvec::SmallVec;

use super::connection::Phase;
use super::inflight::{Awaiting, Inflight, Queued};
use super::route::home_worker;
use super::subscribe::SubscribeAnswer;
use super::{
    Action, Broker, ConnId, ForwardedQos2, Message, Millis, RemoteMsg, SessionId, WorkerId,
};
use crate::persist::image::{EntryState, Image, RetainedImage, StoredMessage};
use crate::persist::record::{encode, Record};
use crate::protocol::{Packet, PacketId, QoS, Utf8Bytes};

/// What one held acknowledgement counts for against `pending_bytes_max`.
const HELD_ACK_BYTES: usize = 64;

/// Who holds the copies of a QoS 2 message: the persistent sessions homed at worker `.1`
/// among `.0` workers (`persist::image::HeldQos2`). This worker's own sessions are
/// `(workers, me)`; another count names sessions re-homed by a restart.
type Holders = (u16, u16);

/// A peer's side of the durability counting.
#[derive(Clone, Copy, Debug, Default)]
struct PeerCounts {
    /// `Publish`/`Retain` sent to it, and how many of them it confirmed durable.
    sent: u64,
    acked: u64,
    /// `Publish`/`Retain` received from it; the count when the last batch was taken; the
    /// count last confirmed to it.
    received: u64,
    covered: u64,
    answered: u64,
}

#[derive(Debug)]
enum Held {
    Control(Packet),
    Subscribe(SessionId, SubscribeAnswer),
}

#[derive(Debug)]
struct HeldAck {
    /// Order of holding: a pending record registered at `index` n binds the acks from n on.
    index: u64,
    conn: ConnId,
    position: u64,
    remote: SmallVec<[(WorkerId, u64); 2]>,
    held: Held,
}

/// A record that may be journaled only once peers confirmed what was sent them before it
/// (a cross-worker QoS 2 id, see the module documentation).
#[derive(Debug)]
struct PendingRecord {
    /// `Durability::held_count` when it was registered.
    registered_at: u64,
    remote: SmallVec<[(WorkerId, u64); 2]>,
    record: Record,
}

#[derive(Debug)]
pub(super) struct Durability {
    journal: Vec<u8>,
    appended: u64,
    taken: u64,
    durable: u64,
    pending_bytes_max: usize,
    next_mid: u64,
    next_seq: u64,
    held: VecDeque<HeldAck>,
    peers: Vec<PeerCounts>,
    /// The (peer, count) pairs the message being routed was sent as.
    route: SmallVec<[(WorkerId, u64); 4]>,
    /// Acks held so far (numbers them); records waiting for peers, oldest first.
    held_count: u64,
    pending: VecDeque<PendingRecord>,
    /// The QoS 2 publish being routed, if from a persistent session: (client id, packet id).
    origin: Option<(Utf8Bytes, PacketId)>,
    /// QoS 2 ids of persistent sessions whose messages sessions here hold and that are not
    /// yet released, by origin client id, with who holds them; at most `forwarded_max`.
    pub(super) forwarded: HashMap<Utf8Bytes, SmallVec<[(PacketId, Holders); 4]>>,
    /// This worker's own sessions as `Holders`.
    local: Holders,
    /// While a QoS 2 message with an origin is delivered here: the holders of its copies,
    /// whose sessions it skips (`holds_copy`).
    skip: SmallVec<[Holders; 2]>,
    forwarded_len: usize,
    forwarded_max: usize,
    /// Re-sent QoS 2 copies recognised and not stored again; ids not kept at the bound.
    pub forwarded_duplicates: u64,
    pub forwarded_over_bound: u64,
    /// The wall-clock time of `Millis(0)`, in milliseconds since the Unix epoch: retained
    /// messages are journaled with the wall-clock time they were set, so their expiry counts
    /// across a restart.
    unix_millis_at_zero: u64,
}

impl Durability {
    fn new(
        (workers, me): (u16, WorkerId),
        pending_bytes_max: usize,
        forwarded_max: usize,
        unix_millis_at_zero: u64,
    ) -> Self {
        Self {
            unix_millis_at_zero,
            journal: Vec::new(),
            appended: 0,
            taken: 0,
            durable: 0,
            pending_bytes_max,
            next_mid: 1,
            next_seq: 1,
            held: VecDeque::new(),
            peers: vec![PeerCounts::default(); usize::from(workers)],
            route: SmallVec::new(),
            held_count: 0,
            pending: VecDeque::new(),
            origin: None,
            forwarded: HashMap::new(),
            local: (workers, me.0),
            skip: SmallVec::new(),
            forwarded_len: 0,
            forwarded_max,
            forwarded_duplicates: 0,
            forwarded_over_bound: 0,
        }
    }

    /// A forwarded QoS 2 message arrived: false if this worker's sessions hold it already
    /// (a copy re-sent after its origin lost the id in a crash). Otherwise records that they
    /// do now (journaled), and notes the sessions that were re-homed here holding it, which
    /// the delivery skips (`skip`, until `end_held_route`).
    fn note_forwarded(&mut self, origin: &Utf8Bytes, packet_id: PacketId) -> bool {
        let local = self.local;
        let holders = self.holders(origin, packet_id);
        if holders.contains(&local) {
            self.forwarded_duplicates += 1;
            return false;
        }
        self.skip = holders;
        self.note_held(origin, packet_id, local);
        true
    }

    /// Who holds the copies of `origin`'s `packet_id` here.
    fn holders(&self, origin: &Utf8Bytes, packet_id: PacketId) -> SmallVec<[Holders; 2]> {
        let ids = self.forwarded.get(origin).map_or(&[][..], |ids| &ids[..]);
        ids.iter().filter(|(id, _)| *id == packet_id).map(|&(_, holders)| holders).collect()
    }

    /// Records that `holders` hold `origin`'s `packet_id` (journaled for this worker's own).
    fn note_held(&mut self, origin: &Utf8Bytes, packet_id: PacketId, holders: Holders) {
        if self.holders(origin, packet_id).contains(&holders) {
            return;
        }
        if self.forwarded_len >= self.forwarded_max {
            // Stored without its id: a copy re-sent after a crash would be stored again.
            self.forwarded_over_bound += 1;
            return;
        }
        self.forwarded.entry(origin.clone()).or_default().push((packet_id, holders));
        self.forwarded_len += 1;
        if holders == self.local {
            self.append(&Record::Qos2Forwarded { origin: origin.clone(), packet_id });
        }
    }

    /// Whether persistent session `client_id` holds the copy of the QoS 2 message being
    /// delivered (it is then skipped).
    pub(super) fn holds_copy(&self, client_id: &[u8]) -> bool {
        !self.skip.is_empty()
            && self
                .skip
                .iter()
                .any(|&(workers, worker)| home_worker(client_id, workers) == WorkerId(worker))
    }

    /// Forgets `origin`'s `packet_id` (all its ids for `None`), whoever holds it, journaling
    /// each id released.
    fn forget_forwarded(&mut self, origin: Utf8Bytes, packet_id: Option<PacketId>) {
        let Some(ids) = self.forwarded.get_mut(&origin) else { return };
        let before = ids.len();
        let mut released: SmallVec<[PacketId; 4]> = SmallVec::new();
        ids.retain(|(id, _)| {
            let release = packet_id.is_none_or(|wanted| wanted == *id);
            if release && !released.contains(id) {
                released.push(*id);
            }
            !release
        });
        self.forwarded_len -= before - ids.len();
        if ids.is_empty() {
            self.forwarded.remove(&origin);
        }
        for packet_id in released {
            self.append(&Record::Qos2ForwardReleased { origin: origin.clone(), packet_id });
        }
    }

    pub fn append(&mut self, record: &Record) {
        self.appended += encode(record, &mut self.journal) as u64;
    }

    /// Drops the pending records (a whole snapshot written now subsumes them); returns the
    /// position that is durable once that snapshot is.
    pub(super) fn discard_pending(&mut self) -> u64 {
        assert_eq!(self.taken, self.durable, "a journal batch is still in flight");
        self.journal.clear();
        self.taken = self.appended;
        for peer in &mut self.peers {
            peer.covered = peer.received;
        }
        self.appended
    }

    pub(super) fn take_mid(&mut self) -> u64 {
        let mid = self.next_mid;
        self.next_mid += 1;
        mid
    }

    /// `at` of the broker's clock (milliseconds, negative before its zero) as wall-clock
    /// milliseconds since the Unix epoch.
    pub(super) fn unix_millis(&self, at: i64) -> u64 {
        let unix = i64::try_from(self.unix_millis_at_zero).unwrap_or(i64::MAX).saturating_add(at);
        u64::try_from(unix).unwrap_or(0)
    }

    /// Drops the pending `Qos2Received` records of session slot `sid` (only `packet_id`'s if
    /// given): the session ended (its `SessionDrop` is appended now), or its client released
    /// the id. A record left pending would name the slot after that: replayed into the next
    /// session to take the slot, or resurrecting a released id (issue #10).
    fn cancel_pending(&mut self, sid: u32, packet_id: Option<PacketId>) {
        self.pending.retain(|pending| match pending.record {
            Record::Qos2Received { sid: of, packet_id: id } => {
                of != sid || packet_id.is_some_and(|wanted| wanted != id)
            }
            _ => true,
        });
    }

    /// The QoS 2 ids whose `Qos2Received` waits for peers (`pending`), as (session slot, id);
    /// each slot holds the session that registered the id (`cancel_pending`). A snapshot must
    /// leave them out: their sessions hold them in memory already, but
    /// written before the other workers' copies are durable, a compacted file that a crash
    /// keeps would make the re-sent PUBLISH a duplicate and drop it (issue #10).
    pub(super) fn qos2_ids_pending(&self) -> HashSet<(u32, PacketId)> {
        let records = self.pending.iter().map(|pending| &pending.record);
        let ids = records.filter_map(|record| match *record {
            Record::Qos2Received { sid, packet_id } => Some((sid, packet_id)),
            _ => None,
        });
        ids.collect()
    }

    /// The held QoS 2 ids, as snapshot records.
    pub(super) fn snapshot_forwarded(&self, out: &mut Vec<u8>) {
        for (origin, ids) in &self.forwarded {
            for &(packet_id, (workers, worker)) in ids {
                let origin = origin.clone();
                let record = match (workers, worker) == self.local {
                    true => Record::Qos2Forwarded { origin, packet_id },
                    false => Record::Qos2Held { origin, packet_id, workers, worker },
                };
                encode(&record, out);
            }
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Logs `message`'s body once per fan-out (`stored` caches its id) and its entry in
    /// session `sid`; returns the entry's sequence number.
    pub fn log_enqueue(
        &mut self,
        sid: SessionId,
        message: &Message,
        qos: QoS,
        retain: bool,
        stored: &mut Option<u64>,
    ) -> u64 {
        let mid = match *stored {
            Some(mid) => mid,
            None => {
                let mid = self.take_mid();
                self.append(&message_record(mid, message));
                *stored = Some(mid);
                mid
            }
        };
        let seq = self.take_seq();
        self.append(&Record::Enqueue { sid: sid.0, seq, mid, qos, retain });
        seq
    }

    fn remote_satisfied(&self, remote: &[(WorkerId, u64)]) -> bool {
        remote.iter().all(|&(worker, count)| self.peers[worker.index()].acked >= count)
    }

    /// What an ack decided now waits for from the peers: everything sent to each so far
    /// (conservative: acks are decided after any retained confirmation, when the message's own
    /// sends are no longer told apart; FIFO channels make the wait about one round trip).
    fn remote_now(&self) -> SmallVec<[(WorkerId, u64); 2]> {
        let unconfirmed = self.peers.iter().enumerate().filter(|(_, peer)| peer.sent > peer.acked);
        unconfirmed.map(|(index, peer)| (WorkerId(index as u16), peer.sent)).collect()
    }

    /// Holds an ack (or a SUBACK answer) until what was appended and sent so far is durable;
    /// `None` if it may go at once.
    fn hold(&mut self, conn: ConnId, held: Held) -> Option<Held> {
        let remote = self.remote_now();
        if self.held.is_empty() && self.appended <= self.durable && remote.is_empty() {
            return Some(held);
        }
        let index = self.held_count;
        self.held_count += 1;
        self.held.push_back(HeldAck { index, conn, position: self.appended, remote, held });
        None
    }

    /// Journals the pending records whose peers have confirmed; the acks held from their
    /// registration on wait for them too.
    fn append_confirmed_pending(&mut self) {
        while self.pending.front().is_some_and(|pending| self.remote_satisfied(&pending.remote)) {
            // Cannot fail: the front exists.
            let pending = self.pending.pop_front().expect("front exists");
            self.append(&pending.record);
            let position = self.appended;
            for held in self.held.iter_mut().filter(|held| held.index >= pending.registered_at) {
                held.position = held.position.max(position);
            }
        }
    }
}

pub(super) fn message_record(mid: u64, message: &Message) -> Record {
    Record::Message {
        mid,
        topic: message.topic.clone(),
        payload: message.payload.clone(),
        qos: message.qos,
        retain: message.retain,
    }
}

impl Broker {
    /// Turns persistence on: from now on the broker journals its persistent state and holds
    /// acknowledgements until the runtime reports them durable. Call before any event.
    /// `unix_millis_at_zero`: the wall-clock time (milliseconds since the Unix epoch) of this
    /// broker's `Millis(0)`, for the set times of retained messages.
    pub fn enable_persistence(&mut self, pending_bytes_max: usize, unix_millis_at_zero: u64) {
        assert!(self.durability.is_none(), "persistence enabled twice");
        // Each session has at most `max_awaiting_pubrel` ids unreleased.
        let forwarded_max =
            self.config.sessions_max.saturating_mul(self.config.max_awaiting_pubrel);
        self.durability = Some(Box::new(Durability::new(
            (self.workers, self.me),
            pending_bytes_max,
            forwarded_max,
            unix_millis_at_zero,
        )));
    }

    /// Moves the journal's pending records to `out` (empty) and returns the position they end
    /// at, to be passed to `handle_durable` once written; `None` if there is nothing to write.
    /// Call only when the previous batch is durable.
    pub fn take_journal(&mut self, out: &mut Vec<u8>) -> Option<u64> {
        assert!(out.is_empty(), "take_journal into a non-empty buffer");
        let d = self.durability.as_deref_mut()?;
        assert_eq!(d.taken, d.durable, "a journal batch is still in flight");
        for peer in &mut d.peers {
            peer.covered = peer.received;
        }
        if d.journal.is_empty() {
            // Everything received so far needs nothing that is not durable already.
            self.answer_peers();
            return None;
        }
        // The batch takes effect whole or not at all (`persist::replay`).
        d.append(&Record::Commit);
        std::mem::swap(out, &mut d.journal);
        d.taken = d.appended;
        Some(d.appended)
    }

    /// Journal bytes waiting to be taken (for a clean stop).
    pub fn journal_pending_bytes(&self) -> usize {
        self.durability.as_ref().map_or(0, |d| d.journal.len())
    }

    /// Whether reading from connections should pause until a journal write completes.
    pub fn persistence_backpressured(&self) -> bool {
        self.durability
            .as_ref()
            .is_some_and(|d| d.journal.len() + d.held.len() * HELD_ACK_BYTES >= d.pending_bytes_max)
    }

    /// Acknowledgements waiting for durability.
    pub fn durable_held_count(&self) -> usize {
        self.durability.as_ref().map_or(0, |d| d.held.len())
    }

    /// The journal is durable up to `position`: answer peers, release held
    /// acknowledgements.
    pub fn handle_durable(&mut self, position: u64, now: Millis) {
        let Some(d) = self.durability.as_deref_mut() else { return };
        assert!(position <= d.appended, "durable beyond what was appended");
        d.durable = d.durable.max(position);
        self.answer_peers();
        self.release_held(now);
        self.settle(now);
    }

    /// Confirms to each peer the messages covered by the last durable batch.
    fn answer_peers(&mut self) {
        let Some(d) = self.durability.as_deref_mut() else { return };
        for (index, peer) in d.peers.iter_mut().enumerate() {
            if peer.covered > peer.answered {
                peer.answered = peer.covered;
                let to = WorkerId(index as u16);
                let msg = RemoteMsg::Durable { count: peer.covered };
                self.actions.push_back(Action::Remote { to, msg });
            }
        }
    }

    /// A peer's journal holds the first `count` messages this worker sent it.
    pub(super) fn on_remote_durable(&mut self, from: WorkerId, count: u64, now: Millis) {
        let Some(d) = self.durability.as_deref_mut() else { return };
        let peer = &mut d.peers[from.index()];
        assert!(count <= peer.sent, "{from:?} confirmed more than was sent to it");
        peer.acked = peer.acked.max(count);
        d.append_confirmed_pending();
        self.release_held(now);
    }

    /// Counts a `Publish`/`Retain` received from `from` (it is confirmed once durable here).
    pub(super) fn count_received(&mut self, from: WorkerId) {
        if let Some(d) = self.durability.as_deref_mut() {
            d.peers[from.index()].received += 1;
        }
    }

    /// The journal's view of a remote send: counts a `Publish`/`Retain`, whose durability
    /// the ack of the message being routed waits for.
    pub(super) fn count_remote_send(&mut self, to: WorkerId, msg: &RemoteMsg) {
        let Some(d) = self.durability.as_deref_mut() else { return };
        let counted = matches!(
            msg,
            RemoteMsg::Publish(_)
                | RemoteMsg::Retain { .. }
                | RemoteMsg::PublishOnce(_)
                | RemoteMsg::Qos2Release { .. }
        );
        if counted {
            let peer = &mut d.peers[to.index()];
            peer.sent += 1;
            d.route.push((to, peer.sent));
        }
    }

    /// Starts routing a message: forget the previous message's remote sends.
    pub(super) fn journal_begin_route(&mut self) {
        if let Some(d) = self.durability.as_deref_mut() {
            d.route.clear();
        }
    }

    /// Writes an acknowledgement (PUBACK, PUBREC, PUBCOMP, PUBREL, UNSUBACK) now, or holds it
    /// until everything appended and sent to peers so far is durable, in the worker's FIFO.
    pub(super) fn write_durable_ack(&mut self, conn: ConnId, packet: Packet) {
        let Some(d) = self.durability.as_deref_mut() else {
            return self.write_control(conn, &packet);
        };
        if let Some(Held::Control(packet)) = d.hold(conn, Held::Control(packet)) {
            self.write_control(conn, &packet);
        }
    }

    /// A QoS 2 PUBLISH from persistent session `session` is about to be routed: its copies
    /// to other workers carry its origin (`remote_publish`).
    pub(super) fn journal_origin(&mut self, session: SessionId, packet_id: PacketId) {
        let persistent = self.sessions.get(session).persistent;
        if let Some(d) = self.durability.as_deref_mut().filter(|_| persistent) {
            let origin = self.sessions.get(session).client_id.to_utf8();
            // Sessions here that hold this message from before a crash (it is then re-sent
            // because the crash lost its id) are skipped.
            d.skip = d.holders(&origin, packet_id);
            d.origin = Some((origin, packet_id));
        }
    }

    /// The message to send another worker for `message`: with its origin while a persistent
    /// session's QoS 2 publish is routed, so a re-sent copy is recognised there.
    pub(super) fn remote_publish(&self, message: &Message) -> RemoteMsg {
        match self.durability.as_deref().and_then(|d| d.origin.as_ref()) {
            Some((origin, packet_id)) => RemoteMsg::PublishOnce(Box::new(ForwardedQos2 {
                message: message.clone(),
                origin: origin.clone(),
                packet_id: *packet_id,
            })),
            None => RemoteMsg::Publish(message.clone()),
        }
    }

    /// A forwarded QoS 2 message arrived: whether to store it (false: a re-sent copy of one
    /// stored before, whose origin lost its id in a crash).
    pub(super) fn accept_forwarded(&mut self, forwarded: &ForwardedQos2) -> bool {
        match self.durability.as_deref_mut() {
            Some(d) => d.note_forwarded(&forwarded.origin, forwarded.packet_id),
            None => true,
        }
    }

    /// A forwarded QoS 2 message is delivered: no session is skipped any more.
    pub(super) fn end_held_route(&mut self) {
        if let Some(d) = self.durability.as_deref_mut() {
            d.skip.clear();
        }
    }

    /// The origin released `packet_id` (or, `None`, started a new session).
    pub(super) fn release_forwarded(&mut self, origin: Utf8Bytes, packet_id: Option<PacketId>) {
        if let Some(d) = self.durability.as_deref_mut() {
            d.forget_forwarded(origin, packet_id);
        }
    }

    /// Tells every other worker that persistent session `session`'s client released
    /// `packet_id` (`None`: all ids, a new session). Its PUBCOMP, decided after this, waits
    /// until they journaled it: the client may then reuse the id.
    pub(super) fn release_forwarded_everywhere(
        &mut self,
        session: SessionId,
        packet_id: Option<PacketId>,
    ) {
        let origin = self.sessions.get(session).client_id.to_utf8();
        let Some(d) = self.durability.as_deref_mut() else { return };
        // This worker's sessions may hold copies too (local ones, or re-homed ones).
        d.forget_forwarded(origin.clone(), packet_id);
        if self.workers == 1 {
            return;
        }
        for worker in self.other_workers().collect::<SmallVec<[WorkerId; 8]>>() {
            let msg = RemoteMsg::Qos2Release { origin: origin.clone(), packet_id };
            self.send_remote(worker, msg);
        }
    }

    /// A QoS 2 PUBLISH from persistent session `session` was just routed: journal its id now
    /// if it went to no other worker (the same batch as its local copies), else once every
    /// worker it went to confirmed its copy durable. Its PUBREC, decided after this, waits.
    pub(super) fn journal_qos2_received(&mut self, session: SessionId, packet_id: PacketId) {
        let Some(d) = self.durability.as_deref_mut() else { return };
        let origin = d.origin.take();
        d.skip.clear();
        let record = Record::Qos2Received { sid: session.0, packet_id };
        let remote: SmallVec<[(WorkerId, u64); 2]> = d.route.drain(..).collect();
        if remote.is_empty() || d.remote_satisfied(&remote) {
            return d.append(&record);
        }
        // The local copies are in this batch, the id comes later: if a crash comes between,
        // the re-sent PUBLISH must skip this worker's sessions as the other workers do theirs.
        if let Some((origin, packet_id)) = origin {
            let local = d.local;
            d.note_held(&origin, packet_id, local);
        }
        let registered_at = d.held_count;
        d.pending.push_back(PendingRecord { registered_at, remote, record });
    }

    /// Persistent session `session` is discarded: journals that, and drops its pending
    /// records, so that none is applied to the next session in its slot.
    pub(super) fn journal_session_drop(&mut self, session: SessionId) {
        let Some(d) = self.durability.as_deref_mut() else { return };
        d.cancel_pending(session.0, None);
        d.append(&Record::SessionDrop { sid: session.0 });
    }

    /// Persistent session `session`'s client released QoS 2 `packet_id` (PUBREL): journals
    /// that, and drops the id's record if it still waits for peers (a PUBREL before its
    /// PUBREC), which appended later would hold the id again.
    pub(super) fn journal_qos2_released(&mut self, session: SessionId, packet_id: PacketId) {
        let Some(d) = self.durability.as_deref_mut() else { return };
        d.cancel_pending(session.0, Some(packet_id));
        d.append(&Record::Qos2Released { sid: session.0, packet_id });
    }

    /// A persistent session's SUBACK (and the retained messages after it) waits until its
    /// subscriptions are durable; returns `answer` if it may go now.
    pub(super) fn hold_subscribe(
        &mut self,
        conn: ConnId,
        session: SessionId,
        answer: SubscribeAnswer,
    ) -> Option<SubscribeAnswer> {
        let persistent = self.sessions.get(session).persistent;
        let Some(d) = self.durability.as_deref_mut().filter(|_| persistent) else {
            return Some(answer);
        };
        match d.hold(conn, Held::Subscribe(session, answer)) {
            Some(Held::Subscribe(_, answer)) => Some(answer),
            _ => None,
        }
    }

    fn release_held(&mut self, now: Millis) {
        loop {
            let Some(d) = self.durability.as_deref_mut() else { return };
            let Some(front) = d.held.front() else { return };
            // A record pending since before this ack must be journaled (and durable) first.
            let pending_first =
                d.pending.front().is_some_and(|pending| pending.registered_at <= front.index);
            if pending_first || !d.remote_satisfied(&front.remote) || front.position > d.durable {
                return;
            }
            // Cannot fail: the front exists.
            let held = d.held.pop_front().expect("front exists");
            match held.held {
                Held::Control(packet) => self.write_control(held.conn, &packet),
                Held::Subscribe(session, answer) => {
                    let active = self
                        .conns
                        .get(&held.conn)
                        .is_some_and(|state| state.phase == Phase::Active(session));
                    if active {
                        self.write_subscribe_answer(held.conn, session, answer, now);
                    }
                }
            }
        }
    }

    /// Journals a retained update (`message` set, or deleted by an empty payload) made at
    /// `now`, with its wall-clock time.
    pub(super) fn journal_retain(&mut self, message: &Message, now: Millis) {
        let Some(d) = self.durability.as_deref_mut() else { return };
        let set_at = i64::try_from(now.0).unwrap_or(i64::MAX);
        d.append(&Record::Retain {
            topic: message.topic.clone(),
            payload: message.payload.clone(),
            qos: message.qos,
            set_at_unix_millis: Some(d.unix_millis(set_at)),
        });
    }

    /// Appends `record` if persistence is on (built only then).
    pub(super) fn journal(&mut self, record: impl FnOnce() -> Record) {
        if let Some(d) = self.durability.as_deref_mut() {
            d.append(&record());
        }
    }

    /// Loads a recovered state (this worker's share of it): its persistent sessions, offline,
    /// with their subscriptions and messages, and the retained messages. Call after
    /// `enable_persistence` and before any event; then write a snapshot.
    pub fn restore(&mut self, image: Image, now: Millis) {
        self.restore_retained(image.retained, now);
        for (worker, filter) in &image.remote_interest {
            let worker = WorkerId(*worker);
            assert!(worker != self.me && worker.0 < self.workers, "interest of {worker:?}");
            self.subscriptions.set_remote_interest(filter, worker, true);
        }
        if let Some(d) = self.durability.as_deref_mut() {
            for held in image.qos2_forwarded {
                d.note_held(&held.origin, held.packet_id, (held.workers, held.worker));
            }
        }
        for session in image.sessions {
            let Some(id) = self.create_session(session.client_id.clone(), true, now) else {
                tracing::warn!(client_id = %session.client_id, "restore: sessions_max reached; session dropped");
                continue;
            };
            self.file_session_timer(id);
            for (filter, qos) in &session.subscriptions {
                self.restore_subscription(id, filter, *qos);
            }
            let awaiting_max = self.config.max_awaiting_pubrel;
            for packet_id in session.awaiting_pubrel {
                self.sessions.get_mut(id).incoming.on_publish(packet_id, awaiting_max);
            }
            if let Some(packet_id) = session.next_packet_id {
                self.sessions.get_mut(id).outgoing.set_next_packet_id(packet_id);
            }
            for entry in session.entries {
                self.restore_entry(id, entry);
            }
        }
        self.refresh_gauges();
    }

    /// Restores retained messages with the age they had (`retained_expiry_secs` counts from
    /// when they were first set; those already due are dropped and counted as expired).
    fn restore_retained(&mut self, mut retained: Vec<RetainedImage>, now: Millis) {
        let unix_now = self
            .durability
            .as_deref()
            .map_or(0, |d| d.unix_millis(i64::try_from(now.0).unwrap_or(i64::MAX)));
        // A message without a recorded time (an older file), or from a clock that has since
        // gone back, counts as set now.
        let age = |set_at: Option<u64>| set_at.map_or(0, |at| unix_now.saturating_sub(at));
        // The store keeps messages in set-time order: oldest first.
        retained.sort_by_key(|stored| std::cmp::Reverse(age(stored.set_at_unix_millis)));
        let expiry_millis = self.config.retained_expiry_secs.saturating_mul(1000);
        for stored in retained {
            let age_millis = age(stored.set_at_unix_millis);
            if expiry_millis > 0 && age_millis >= expiry_millis {
                self.stats.retained_expired += 1;
                continue;
            }
            self.retained.set_aged(message_from(stored.message), now, age_millis);
        }
    }

    fn restore_entry(&mut self, id: SessionId, entry: crate::persist::image::EntryImage) {
        let seq = self.durability.as_deref_mut().map_or(0, Durability::take_seq);
        let message = message_from(entry.message);
        let window = self.config.inflight_window();
        let limits = self.config.queue_limits();
        let outgoing = &mut self.sessions.get_mut(id).outgoing;
        let (packet_id, awaiting) = match entry.state {
            EntryState::Sent(packet_id) if entry.qos == QoS::AtLeastOnce => {
                (Some(packet_id), Awaiting::Puback)
            }
            EntryState::Sent(packet_id) => (Some(packet_id), Awaiting::Pubrec),
            EntryState::Released(packet_id) => (Some(packet_id), Awaiting::Pubcomp),
            EntryState::Queued => (None, Awaiting::Puback),
        };
        let (qos, retain) = (entry.qos, entry.retain);
        if let Some(packet_id) = packet_id.filter(|_| outgoing.inflight_len() < window) {
            let inflight = Inflight { packet_id, message, qos, retain, awaiting, seq };
            outgoing.push_inflight(inflight, window);
            self.stats.inflight_messages += 1;
            return;
        }
        // Not yet sent, or beyond a window that shrank since: queued (a new packet id).
        match outgoing.enqueue(Queued { message, qos, retain, seq }, limits) {
            Ok(()) => self.stats.queued_messages += 1,
            Err(_) => self.stats.messages_dropped_queue_full += 1,
        }
    }
}

fn message_from(stored: StoredMessage) -> Message {
    Message { topic: stored.topic, payload: stored.payload, qos: stored.qos, retain: stored.retain }
}
