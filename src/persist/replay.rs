//! Replaying one journal file: records in, a worker's recovered state out (sans-IO).
//!
//! A file must open with `Header`; its snapshot is complete once `SnapshotEnd` is read. Records
//! are applied in order until the first bad frame (`record::decode`), where replay stops: what
//! follows is dropped and reported with its offset and size. A well-framed record that does not
//! fit the state (an `Enqueue` for a session never opened, say) cannot come from a correct
//! writer; it is skipped and counted (`inconsistent`) rather than trusted.
//!
//! Invariant: the result holds only sessions opened and not dropped, entries enqueued and not
//! done, each entry's message body, and retained topics set and not deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use super::image::{
    EntryImage, EntryState, HeldQos2, Image, RetainedImage, SessionImage, StoredMessage,
};
use super::record::{self, BadRecord, Record};
use crate::protocol::{PacketId, QoS, TopicFilter, TopicName, Utf8Bytes};

#[derive(Debug)]
struct Entry {
    mid: u64,
    qos: QoS,
    retain: bool,
    state: EntryState,
}

#[derive(Debug)]
struct ReplaySession {
    client_id: Utf8Bytes,
    subscriptions: Vec<(TopicFilter, QoS)>,
    entries: BTreeMap<u64, Entry>,
    awaiting_pubrel: Vec<PacketId>,
    next_packet_id: Option<PacketId>,
}

/// Where replay of a file stopped early.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Dropped {
    pub offset: usize,
    pub bytes: usize,
    pub why: BadRecord,
}

/// What replaying one file found.
#[derive(Debug, Default)]
pub struct Replay {
    /// The `Header`'s (worker, generation), if the file had a valid one first.
    pub header: Option<(u16, u64)>,
    pub snapshot_complete: bool,
    pub records: u64,
    /// Well-framed records that did not fit the state (skipped).
    pub inconsistent: u64,
    pub dropped: Option<Dropped>,
    sessions: HashMap<u32, ReplaySession>,
    /// Entry seq -> its session's sid.
    entries: HashMap<u64, u32>,
    messages: HashMap<u64, StoredMessage>,
    retained: HashMap<TopicName, RetainedImage>,
    /// (origin, packet id, workers, worker): `HeldQos2`, `workers` 0 for this epoch's count.
    forwarded: BTreeSet<(Utf8Bytes, PacketId, u16, u16)>,
}

impl Replay {
    /// Replays `bytes`, a whole file. The snapshot's records apply as they come; after it,
    /// records apply a batch at a time, at its `Commit`.
    pub fn file(bytes: Bytes) -> Self {
        let total = bytes.len();
        let mut input = bytes;
        let mut replay = Replay::default();
        let mut batch: Vec<Record> = Vec::new();
        let mut batch_start = 0;
        loop {
            let offset = total - input.len();
            if batch.is_empty() {
                batch_start = offset;
            }
            let record = match record::decode(&mut input) {
                Ok(None) if batch.is_empty() => break,
                Ok(None) => Err(BadRecord::Uncommitted),
                Ok(Some(record)) => Ok(record),
                Err(why) => Err(why),
            };
            match record {
                Ok(record) if replay.records == 0 && !matches!(record, Record::Header { .. }) => {
                    let why = BadRecord::Body("the file does not start with a header");
                    replay.dropped = Some(Dropped { offset, bytes: total - offset, why });
                    break;
                }
                Ok(Record::Commit) if replay.snapshot_complete => {
                    replay.records += batch.len() as u64 + 1;
                    for record in batch.drain(..) {
                        let fits = replay.apply(record);
                        replay.inconsistent += u64::from(!fits);
                    }
                }
                Ok(record) if replay.snapshot_complete => batch.push(record),
                Ok(record) => {
                    // In the snapshot: a compaction's slices come with copies of the batches
                    // written meanwhile; a copied record of a session whose slice comes later
                    // does not fit yet, and that slice holds its effect (`broker/snapshot.rs`).
                    replay.records += 1;
                    let header = matches!(record, Record::Header { .. });
                    if !replay.apply(record) && header {
                        replay.inconsistent += 1;
                    }
                }
                Err(why) => {
                    // A torn batch is dropped whole, from its first record.
                    let offset = if batch.is_empty() { offset } else { batch_start };
                    replay.dropped = Some(Dropped { offset, bytes: total - offset, why });
                    break;
                }
            }
        }
        replay
    }

    /// Applies `record`; false if it does not fit the state (skipped).
    fn apply(&mut self, record: Record) -> bool {
        match record {
            Record::Header { worker, generation } => {
                let first = self.header.is_none();
                self.header = Some((worker, generation));
                first
            }
            Record::SnapshotEnd => !std::mem::replace(&mut self.snapshot_complete, true),
            // In a snapshot, the end of a copied batch: nothing to apply (after the snapshot,
            // batches are applied by `file`).
            Record::Commit => true,
            Record::SessionOpen { sid, client_id } => {
                self.drop_session(sid);
                let session = ReplaySession {
                    client_id,
                    subscriptions: Vec::new(),
                    entries: BTreeMap::new(),
                    awaiting_pubrel: Vec::new(),
                    next_packet_id: None,
                };
                self.sessions.insert(sid, session);
                true
            }
            Record::SessionDrop { sid } => self.drop_session(sid),
            Record::Subscribe { sid, filter, qos } => self.session(sid, |session| {
                match session.subscriptions.iter_mut().find(|(existing, _)| *existing == filter) {
                    Some(existing) => existing.1 = qos,
                    None => session.subscriptions.push((filter, qos)),
                }
                true
            }),
            Record::Unsubscribe { sid, filter } => self.session(sid, |session| {
                session.subscriptions.retain(|(existing, _)| *existing != filter);
                true
            }),
            Record::Message { mid, topic, payload, qos, retain } => {
                let message = StoredMessage { topic, payload, qos, retain };
                self.messages.insert(mid, message).is_none()
            }
            Record::Enqueue { sid, seq, mid, qos, retain } => {
                let known = self.messages.contains_key(&mid) && !self.entries.contains_key(&seq);
                let added = known
                    && self.session(sid, |session| {
                        let entry = Entry { mid, qos, retain, state: EntryState::Queued };
                        session.entries.insert(seq, entry);
                        true
                    });
                if added {
                    self.entries.insert(seq, sid);
                }
                added
            }
            Record::Sent { seq, packet_id } => match self.entries.get(&seq).copied() {
                Some(sid) => self.session(sid, |session| {
                    session.next_packet_id = Some(packet_id.next());
                    session.entries.get_mut(&seq).is_some_and(|entry| {
                        entry.state = EntryState::Sent(packet_id);
                        true
                    })
                }),
                None => false,
            },
            Record::NextPacketId { sid, packet_id } => self.session(sid, |session| {
                session.next_packet_id = Some(packet_id);
                true
            }),
            Record::Released { seq } => self.entry(seq, |entry| match entry.state {
                EntryState::Sent(id) if entry.qos == QoS::ExactlyOnce => {
                    entry.state = EntryState::Released(id);
                    true
                }
                _ => false,
            }),
            Record::Done { seq } => match self.entries.remove(&seq) {
                Some(sid) => self.session(sid, |session| session.entries.remove(&seq).is_some()),
                None => false,
            },
            Record::Retain { topic, payload, qos, set_at_unix_millis } => {
                if payload.is_empty() {
                    self.retained.remove(&topic);
                } else {
                    let message =
                        StoredMessage { topic: topic.clone(), payload, qos, retain: true };
                    self.retained.insert(topic, RetainedImage { message, set_at_unix_millis });
                }
                true
            }
            Record::Qos2Received { sid, packet_id } => self.session(sid, |session| {
                if !session.awaiting_pubrel.contains(&packet_id) {
                    session.awaiting_pubrel.push(packet_id);
                }
                true
            }),
            Record::Qos2Released { sid, packet_id } => self.session(sid, |session| {
                session.awaiting_pubrel.retain(|&id| id != packet_id);
                true
            }),
            Record::Qos2Forwarded { origin, packet_id } => {
                let worker = self.header.map_or(0, |(worker, _)| worker);
                self.forwarded.insert((origin, packet_id, 0, worker));
                true
            }
            Record::Qos2Held { origin, packet_id, workers, worker } => {
                self.forwarded.insert((origin, packet_id, workers, worker));
                true
            }
            Record::Qos2ForwardReleased { origin, packet_id } => {
                let pairs =
                    (origin.clone(), packet_id, 0, 0)..=(origin, packet_id, u16::MAX, u16::MAX);
                let held: Vec<_> = self.forwarded.range(pairs).cloned().collect();
                for pair in held {
                    self.forwarded.remove(&pair);
                }
                true
            }
        }
    }

    fn session(&mut self, sid: u32, change: impl FnOnce(&mut ReplaySession) -> bool) -> bool {
        self.sessions.get_mut(&sid).is_some_and(change)
    }

    fn entry(&mut self, seq: u64, change: impl FnOnce(&mut Entry) -> bool) -> bool {
        let Some(&sid) = self.entries.get(&seq) else { return false };
        self.session(sid, |session| session.entries.get_mut(&seq).is_some_and(change))
    }

    fn drop_session(&mut self, sid: u32) -> bool {
        let Some(session) = self.sessions.remove(&sid) else { return false };
        for seq in session.entries.keys() {
            self.entries.remove(seq);
        }
        true
    }

    /// The state the records describe. Message bodies no entry refers to are dropped.
    pub fn into_image(self) -> Image {
        let messages = self.messages;
        let mut sessions: Vec<(u32, ReplaySession)> = self.sessions.into_iter().collect();
        sessions.sort_by_key(|(sid, _)| *sid);
        let sessions = sessions
            .into_iter()
            .map(|(_, session)| SessionImage {
                client_id: session.client_id,
                subscriptions: session.subscriptions,
                entries: session
                    .entries
                    .into_values()
                    .map(|entry| EntryImage {
                        // Enqueue is applied only for a known mid, and bodies are never removed.
                        message: messages[&entry.mid].clone(),
                        qos: entry.qos,
                        retain: entry.retain,
                        state: entry.state,
                    })
                    .collect(),
                awaiting_pubrel: session.awaiting_pubrel,
                next_packet_id: session.next_packet_id,
            })
            .collect();
        let mut retained: Vec<RetainedImage> = self.retained.into_values().collect();
        retained.sort_by(|a, b| a.message.topic.cmp(&b.message.topic));
        let qos2_forwarded = self
            .forwarded
            .into_iter()
            .map(|(origin, packet_id, workers, worker)| HeldQos2 {
                origin,
                packet_id,
                workers,
                worker,
            })
            .collect();
        Image { sessions, retained, remote_interest: Vec::new(), qos2_forwarded }
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
