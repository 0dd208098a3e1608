//! The stand-in for the runtime's journal writer that the persistence tests play (`Disk`),
//! and the set-ups and checks several of them share.

use bytes::Bytes;

use super::super::harness::*;
use crate::broker::snapshot::{SliceLimits, SnapshotCursor};
use crate::broker::BrokerConfig;
use crate::persist::image::{EntryState, Image};
use crate::persist::replay::Replay;
use crate::persist::store::partition;
use crate::protocol::{Packet, Publish, QoS};

/// The wall-clock time (Unix milliseconds) of the first cluster's `Millis(0)`.
pub(super) const UNIX_MILLIS_AT_ZERO: u64 = 1_795_000_000_000;

/// Each worker's journal file, as the runtime would have written it.
pub(super) struct Disk {
    pub files: Vec<Vec<u8>>,
    /// The wall-clock time of the writing cluster's `Millis(0)`.
    pub unix_millis_at_zero: u64,
}

impl Disk {
    /// Turns persistence on in every broker of `cluster` and writes their first snapshots.
    pub(super) fn attach(cluster: &mut Cluster) -> Self {
        let now = cluster.now;
        let files = cluster
            .brokers
            .iter_mut()
            .map(|broker| {
                broker.enable_persistence(1 << 20, UNIX_MILLIS_AT_ZERO);
                let mut file = Vec::new();
                let position = broker.take_snapshot(0, &mut file);
                broker.handle_durable(position, now);
                file
            })
            .collect();
        cluster.run();
        Self { files, unix_millis_at_zero: UNIX_MILLIS_AT_ZERO }
    }

    /// Writes worker `worker`'s pending records and reports them durable.
    pub(super) fn flush(&mut self, cluster: &mut Cluster, worker: u16) {
        let index = usize::from(worker);
        let mut batch = Vec::new();
        let now = cluster.now;
        if let Some(position) = cluster.brokers[index].take_journal(&mut batch) {
            self.files[index].extend_from_slice(&batch);
            cluster.brokers[index].handle_durable(position, now);
        }
        cluster.run();
    }

    /// Flushes every worker until nothing is pending anywhere (answers cross workers).
    pub(super) fn flush_all(&mut self, cluster: &mut Cluster) {
        for _ in 0..4 {
            for worker in 0..cluster.brokers.len() as u16 {
                self.flush(cluster, worker);
            }
        }
    }

    /// A new cluster of `workers` restored from the files (as a restart does).
    pub(super) fn restart(&self, workers: u16, config: BrokerConfig) -> (Cluster, Disk) {
        self.restart_holding(workers, config, false)
    }

    /// `restart`; with `hold`, no message between workers is delivered yet.
    pub(super) fn restart_holding(
        &self,
        workers: u16,
        config: BrokerConfig,
        hold: bool,
    ) -> (Cluster, Disk) {
        self.restart_at(workers, config, hold, self.unix_millis_at_zero)
    }

    /// A restart whose clock's zero is `unix_millis_at_zero` (later than the writer's: time
    /// passed on the wall clock).
    pub(super) fn restart_at(
        &self,
        workers: u16,
        config: BrokerConfig,
        hold: bool,
        unix_millis_at_zero: u64,
    ) -> (Cluster, Disk) {
        let mut image = Image::default();
        for file in &self.files {
            let replay = Replay::file(Bytes::from(file.clone()));
            assert!(replay.dropped.is_none(), "a clean file replays whole: {:?}", replay.dropped);
            assert_eq!(replay.inconsistent, 0);
            let part = replay.into_image();
            image.sessions.extend(part.sessions);
            image.retained.extend(part.retained);
            image.qos2_forwarded.extend(part.qos2_forwarded);
        }
        let mut cluster = Cluster::new(workers, config);
        cluster.hold_remotes(hold);
        let now = cluster.now;
        // The files' worker count is the epoch's (sessions re-homed if `workers` differs).
        let parts = partition(image, workers, self.files.len() as u16);
        let mut files = Vec::new();
        for (broker, part) in cluster.brokers.iter_mut().zip(parts) {
            broker.enable_persistence(1 << 20, unix_millis_at_zero);
            broker.restore(part, now);
            let mut file = Vec::new();
            let position = broker.take_snapshot(0, &mut file);
            broker.handle_durable(position, now);
            files.push(file);
        }
        cluster.run();
        (cluster, Disk { files, unix_millis_at_zero })
    }
}

/// A persistent session on worker 0 of a single-worker cluster, subscribed to `filter` at
/// QoS 2; checks that its SUBACK waits for the journal.
pub(super) fn persistent_subscriber(
    cluster: &mut Cluster,
    disk: &mut Disk,
    id: &str,
    filter: &str,
) -> Client {
    let client = cluster.connect(id, false);
    cluster.send_subscribe(client, &[(filter, QoS::ExactlyOnce)]);
    assert!(cluster.recv(client).is_empty(), "a persistent session's SUBACK waits for the journal");
    disk.flush_all(cluster);
    let received = cluster.recv(client);
    assert!(matches!(received.as_slice(), [Packet::Suback(_)]), "{received:?}");
    client
}

/// A persistent session homed at `worker` (its client id made from `prefix`), subscribed to
/// `filter` at QoS 2, its subscription durable and its SUBACK read: the client and its id.
pub(super) fn durable_subscriber(
    cluster: &mut Cluster,
    disk: &mut Disk,
    worker: u16,
    prefix: &str,
    filter: &str,
) -> (Client, String) {
    let id = client_id_on(worker, cluster.brokers.len() as u16, prefix);
    let (subscriber, _) = cluster.connect_on(worker, connect_packet(&id, false));
    cluster.send_subscribe(subscriber, &[(filter, QoS::ExactlyOnce)]);
    disk.flush_all(cluster);
    let received = cluster.recv(subscriber);
    assert!(matches!(received.as_slice(), [Packet::Suback(_)]), "{received:?}");
    (subscriber, id)
}

/// `durable_subscriber`, then offline (its messages are queued): its client id.
pub(super) fn offline_subscriber(
    cluster: &mut Cluster,
    disk: &mut Disk,
    worker: u16,
    prefix: &str,
    filter: &str,
) -> String {
    let (subscriber, id) = durable_subscriber(cluster, disk, worker, prefix, filter);
    cluster.drop_client(subscriber);
    id
}

/// The set-up of the cross-worker QoS 2 tests: worker 1's offline persistent subscriber of
/// `q2` (`sub_id`) and worker 0's persistent publisher (`pub_id`), connected.
pub(super) struct Qos2AcrossWorkers {
    pub cluster: Cluster,
    pub disk: Disk,
    pub publisher: Client,
    pub pub_id: String,
    pub sub_id: String,
}

impl Qos2AcrossWorkers {
    pub(super) fn new(config: &BrokerConfig) -> Self {
        let mut cluster = Cluster::new(2, config.clone());
        let mut disk = Disk::attach(&mut cluster);
        let sub_id = offline_subscriber(&mut cluster, &mut disk, 1, "s", "q2");
        let pub_id = client_id_on(0, 2, "p");
        let (publisher, _) = cluster.connect_on(0, connect_packet(&pub_id, false));
        Self { cluster, disk, publisher, pub_id, sub_id }
    }
}

/// A QoS 2 PUBLISH of `payload` to `topic` with packet id `id` re-sent (DUP=1).
pub(super) fn resent(topic: &str, payload: &[u8], id: u16) -> Packet {
    resent_packet(topic, payload, QoS::ExactlyOnce, false, id)
}

/// Sends `publisher`'s QoS 2 PUBLISH `packet` and completes its exchange: PUBREC, PUBREL,
/// PUBCOMP, each acknowledgement once the journals hold what it confirms.
pub(super) fn exchange_qos2(
    cluster: &mut Cluster,
    disk: &mut Disk,
    publisher: Client,
    packet: Packet,
) {
    let Packet::Publish(Publish { packet_id: Some(id), .. }) = packet else {
        panic!("not a QoS 2 PUBLISH: {packet:?}");
    };
    let id = id.get();
    cluster.send(publisher, packet);
    disk.flush_all(cluster);
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(id))]);
    cluster.send(publisher, Packet::Pubrel(pid(id)));
    disk.flush_all(cluster);
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubcomp(pid(id))]);
}

/// The payloads `subscriber` receives (acknowledging them), in order.
pub(super) fn payloads(cluster: &mut Cluster, subscriber: Client) -> Vec<Bytes> {
    cluster.recv_acking(subscriber).into_iter().map(|publish| publish.payload).collect()
}

/// The QoS 2 ids awaiting PUBREL that worker `worker`'s file holds.
pub(super) fn journaled_ids(disk: &Disk, worker: usize) -> usize {
    let image = Replay::file(Bytes::from(disk.files[worker].clone())).into_image();
    image.sessions.iter().map(|session| session.awaiting_pubrel.len()).sum()
}

/// An image with its unordered parts sorted, to compare two files' states.
pub(super) fn normalized(file: &[u8]) -> Image {
    let replay = Replay::file(Bytes::from(file.to_vec()));
    assert!(replay.snapshot_complete && replay.dropped.is_none(), "{:?}", replay.dropped);
    assert_eq!(replay.inconsistent, 0, "records after the snapshot all fit");
    let mut image = replay.into_image();
    for session in &mut image.sessions {
        session.subscriptions.sort();
        session.awaiting_pubrel.sort();
        // A session that never sent has no id in its log; a snapshot says where ids start.
        session.next_packet_id.get_or_insert(pid(1));
        // A released QoS 2 entry needs only its id: the broker lets its payload go at the
        // PUBREC (`inflight.rs`), so a snapshot taken after that writes it empty.
        for entry in &mut session.entries {
            if matches!(entry.state, EntryState::Released(_)) {
                entry.message.payload = Bytes::new();
            }
        }
    }
    image.sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    image.qos2_forwarded.sort();
    image
}

/// Worker 0 compacts into a new file one session slot per slice, its journal batches going to
/// both files meanwhile; returns the new file once its last batch is in (not yet current).
pub(super) fn compact_worker0(cluster: &mut Cluster, disk: &mut Disk) -> Vec<u8> {
    let mut new_file = Vec::new();
    let limits = SliceLimits { slots: 1, entries: usize::MAX };
    let mut cursor = cluster.brokers[0].begin_snapshot(1, limits, &mut new_file);
    while !cursor.done() {
        flush_copying(cluster, disk, &mut new_file, Some(&mut cursor));
    }
    flush_copying(cluster, disk, &mut new_file, None);
    new_file
}

/// Worker 0's pending records to its current file and, copied, to `new_file` (a compaction's
/// file), then the snapshot's next slice if `cursor` (nothing is pending then), then the batch
/// reported durable: the runtime's order within a turn.
pub(super) fn flush_copying(
    cluster: &mut Cluster,
    disk: &mut Disk,
    new_file: &mut Vec<u8>,
    cursor: Option<&mut SnapshotCursor>,
) {
    cluster.run();
    let mut batch = Vec::new();
    let now = cluster.now;
    let position = cluster.brokers[0].take_journal(&mut batch);
    disk.files[0].extend_from_slice(&batch);
    new_file.extend_from_slice(&batch);
    if let Some(cursor) = cursor {
        cluster.brokers[0].snapshot_slice(cursor, new_file);
    }
    if let Some(position) = position {
        cluster.brokers[0].handle_durable(position, now);
    }
    cluster.run();
}
