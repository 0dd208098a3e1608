//! The files on disk: which epoch and generation recovery reads, and the move to a new epoch.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::persist::image::{HeldQos2, SessionImage};
use crate::persist::record::{encode, Record};
use crate::protocol::{TopicName, Utf8Bytes};

/// A fresh directory under the system's temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name =
            format!("ringmq-store-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A file of `worker`/`generation` holding one session `client` and one retained `topic`;
/// `complete`: whether its snapshot ends.
fn file_bytes(worker: u16, generation: u64, client: &str, topic: &str, complete: bool) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&Record::Header { worker, generation }, &mut out);
    encode(
        &Record::SessionOpen { sid: 0, client_id: Utf8Bytes::from(client.to_owned()) },
        &mut out,
    );
    let topic = TopicName::try_from(topic).expect("topic");
    encode(
        &Record::Retain {
            topic,
            payload: Bytes::from_static(b"v"),
            qos: crate::protocol::QoS::AtMostOnce,
            set_at_unix_millis: Some(1_795_000_000_000),
        },
        &mut out,
    );
    if complete {
        encode(&Record::SnapshotEnd, &mut out);
    }
    out
}

fn write(dir: &Path, epoch: &str, worker: u16, generation: u64, bytes: &[u8]) {
    let epoch_dir = dir.join(epoch);
    fs::create_dir_all(&epoch_dir).expect("epoch dir");
    fs::write(epoch_dir.join(file_name(worker, generation)), bytes).expect("write");
}

fn clients(image: &Image) -> Vec<String> {
    let mut ids: Vec<String> =
        image.sessions.iter().map(|s| s.client_id.as_str().to_owned()).collect();
    ids.sort();
    ids
}

#[test]
fn nothing_on_disk_recovers_nothing() {
    let dir = TempDir::new();
    let recovered = recover(&dir.0.join("missing")).expect("recover");
    assert_eq!((recovered.epoch, recovered.image.is_empty()), (None, true));
}

#[test]
fn the_newest_complete_epoch_and_each_workers_newest_complete_generation_are_read() {
    let dir = TempDir::new();
    write(&dir.0, "epoch-1", 0, 0, &file_bytes(0, 0, "old", "t/old", true));
    write(&dir.0, "epoch-2", 0, 3, &file_bytes(0, 3, "a", "t/a", true));
    // Worker 1 crashed while compacting into generation 5: generation 4 still counts.
    write(&dir.0, "epoch-2", 1, 4, &file_bytes(1, 4, "b", "t/b", true));
    write(&dir.0, "epoch-2", 1, 5, &file_bytes(1, 5, "b-new", "t/b-new", false));
    // A half-made next epoch is ignored.
    write(&dir.0, "epoch-3.tmp", 0, 0, &file_bytes(0, 0, "tmp", "t/tmp", true));
    let recovered = recover(&dir.0).expect("recover");
    assert_eq!(recovered.epoch, Some(2));
    assert_eq!(clients(&recovered.image), ["a", "b"]);
    assert_eq!(recovered.image.retained.len(), 2);
}

#[test]
fn a_damaged_file_gives_what_is_intact_and_counts_the_rest() {
    let dir = TempDir::new();
    let mut bytes = file_bytes(0, 0, "a", "t/a", true);
    let mut extra = Vec::new();
    encode(&Record::SessionOpen { sid: 1, client_id: Utf8Bytes::from_static("late") }, &mut extra);
    let damaged_at = bytes.len() + extra.len() - 1;
    bytes.extend_from_slice(&extra);
    bytes[damaged_at] ^= 1;
    write(&dir.0, "epoch-0", 0, 0, &bytes);
    let recovered = recover(&dir.0).expect("recover");
    assert_eq!(clients(&recovered.image), ["a"]);
    assert_eq!(recovered.dropped_bytes, extra.len() as u64);
}

#[test]
fn a_new_epoch_replaces_the_old_one_only_when_committed() {
    let dir = TempDir::new();
    write(&dir.0, "epoch-0", 0, 0, &file_bytes(0, 0, "a", "t/a", true));
    let next = NextEpoch::create(&dir.0, Some(0)).expect("create");
    next.write_first_file(0, &file_bytes(0, 0, "b", "t/b", true)).expect("write");
    // Not committed (a crash here): the old epoch is still the one read.
    assert_eq!(clients(&recover(&dir.0).expect("recover").image), ["a"]);
    next.commit().expect("commit");
    let recovered = recover(&dir.0).expect("recover");
    assert_eq!((recovered.epoch, clients(&recovered.image)), (Some(1), vec!["b".to_owned()]));
    // A crash before the older epoch is deleted: the newest is read all the same.
    assert!(dir.0.join("epoch-0").exists());
    next.remove_older().expect("remove");
    assert!(!dir.0.join("epoch-0").exists(), "the older epoch is deleted after the commit");
}

#[test]
fn partition_sends_each_session_home_and_every_retained_message_everywhere() {
    let session = |id: &str| SessionImage {
        client_id: Utf8Bytes::from(id.to_owned()),
        subscriptions: Vec::new(),
        entries: Vec::new(),
        awaiting_pubrel: Vec::new(),
        next_packet_id: None,
    };
    let ids: Vec<String> = (0..20).map(|n| format!("client-{n}")).collect();
    let image = Image {
        sessions: ids.iter().map(|id| session(id)).collect(),
        retained: file_bytes_retained(),
        remote_interest: Vec::new(),
        // Written by a run of 3 workers (0: the epoch's count), one id per worker.
        qos2_forwarded: (0..3).map(|worker| held(0, worker)).collect(),
    };
    let changed = partition(image.clone(), 2, 3);
    for part in &changed {
        let all: Vec<HeldQos2> = (0..3).map(|worker| held(3, worker)).collect();
        assert_eq!(part.qos2_forwarded, all, "another count: every worker gets them all");
    }
    let parts = partition(image, 3, 3);
    for (worker, part) in parts.iter().enumerate() {
        assert_eq!(part.retained.len(), 1);
        assert_eq!(part.qos2_forwarded, vec![held(3, worker as u16)], "the same count: its own");
        for session in &part.sessions {
            assert_eq!(home_worker(session.client_id.as_bytes(), 3).index(), worker);
        }
    }
    assert_eq!(parts.iter().map(|p| p.sessions.len()).sum::<usize>(), 20);
}

fn held(workers: u16, worker: u16) -> HeldQos2 {
    HeldQos2 { origin: Utf8Bytes::from_static("p"), packet_id: pid(1), workers, worker }
}

fn pid(value: u16) -> crate::protocol::PacketId {
    crate::protocol::PacketId::new(value).expect("non-zero")
}

fn file_bytes_retained() -> Vec<super::super::image::RetainedImage> {
    let replay = Replay::file(Bytes::from(file_bytes(0, 0, "x", "t/x", true)));
    replay.into_image().retained
}
