//! Replay of hand-built files: state changes, and what a damaged file still gives back.

use bytes::Bytes;

use super::*;
use crate::persist::record::encode;

fn pid(value: u16) -> PacketId {
    PacketId::new(value).expect("non-zero")
}

fn topic(text: &str) -> TopicName {
    TopicName::try_from(text).expect("topic")
}

/// A file: header, a snapshot with one session (two entries, one in flight) and a retained
/// message, then changes: the in-flight entry is released and done, a third entry queued.
fn sample() -> (Vec<u8>, Vec<usize>) {
    let records = vec![
        Record::Header { worker: 0, generation: 0 },
        Record::SessionOpen { sid: 1, client_id: Utf8Bytes::from_static("c") },
        Record::Subscribe {
            sid: 1,
            filter: TopicFilter::try_from("a/#").expect("f"),
            qos: QoS::ExactlyOnce,
        },
        Record::Message {
            mid: 1,
            topic: topic("a/1"),
            payload: Bytes::from_static(b"one"),
            qos: QoS::ExactlyOnce,
            retain: false,
        },
        Record::Enqueue { sid: 1, seq: 10, mid: 1, qos: QoS::ExactlyOnce, retain: false },
        Record::Sent { seq: 10, packet_id: pid(7) },
        Record::Enqueue { sid: 1, seq: 11, mid: 1, qos: QoS::AtLeastOnce, retain: false },
        Record::Retain {
            topic: topic("r"),
            payload: Bytes::from_static(b"kept"),
            qos: QoS::AtLeastOnce,
            set_at_unix_millis: Some(1_795_000_000_000),
        },
        Record::SnapshotEnd,
        Record::Released { seq: 10 },
        Record::Done { seq: 10 },
        Record::Commit,
        Record::Message {
            mid: 2,
            topic: topic("a/2"),
            payload: Bytes::from_static(b"two"),
            qos: QoS::AtLeastOnce,
            retain: false,
        },
        Record::Enqueue { sid: 1, seq: 12, mid: 2, qos: QoS::AtLeastOnce, retain: false },
        Record::Qos2Received { sid: 1, packet_id: pid(3) },
        Record::Commit,
    ];
    let mut out = Vec::new();
    let mut ends = Vec::new();
    for record in &records {
        encode(record, &mut out);
        ends.push(out.len());
    }
    (out, ends)
}

#[test]
fn a_whole_file_gives_the_state_its_records_describe() {
    let (file, _) = sample();
    let replay = Replay::file(Bytes::from(file));
    assert!(replay.snapshot_complete && replay.dropped.is_none());
    assert_eq!((replay.records, replay.inconsistent), (16, 0));
    let image = replay.into_image();
    let session = &image.sessions[0];
    assert_eq!(session.client_id.as_str(), "c");
    let payloads: Vec<&[u8]> = session.entries.iter().map(|e| e.message.payload.as_ref()).collect();
    assert_eq!(payloads, [&b"one"[..], b"two"], "entry 10 is done; 11 and 12 remain, in order");
    assert_eq!(session.entries[0].state, EntryState::Queued);
    assert_eq!(session.awaiting_pubrel, vec![pid(3)]);
    assert_eq!(image.retained.len(), 1);
}

/// The units that take effect together: each snapshot record alone, then each batch up to
/// its `Commit` (indices into `sample`'s records).
const GROUPS: &[std::ops::Range<usize>] =
    &[0..1, 1..2, 2..3, 3..4, 4..5, 5..6, 6..7, 7..8, 8..9, 9..12, 12..16];

#[test]
fn a_truncated_file_keeps_every_whole_batch_and_reports_the_torn_one() {
    let (file, ends) = sample();
    let group_end = |group: &std::ops::Range<usize>| ends[group.end - 1];
    for cut in 0..file.len() {
        let replay = Replay::file(Bytes::copy_from_slice(&file[..cut]));
        let whole: Vec<_> = GROUPS.iter().filter(|group| group_end(group) <= cut).collect();
        let applied: usize = whole.iter().map(|group| group.len()).sum();
        assert_eq!(replay.records, applied as u64, "cut at {cut}");
        let kept = whole.last().map_or(0, |group| group_end(group));
        let expected = (cut != kept).then_some((kept, cut - kept));
        assert_eq!(replay.dropped.map(|d| (d.offset, d.bytes)), expected, "cut at {cut}");
        assert_eq!(replay.snapshot_complete, cut >= ends[8]);
    }
}

#[test]
fn a_flipped_byte_drops_its_batch_and_never_yields_a_wrong_state() {
    let (file, ends) = sample();
    let whole = Replay::file(Bytes::from(file.clone())).into_image();
    for at in 0..file.len() {
        let mut damaged = file.clone();
        damaged[at] ^= 0x5a;
        let replay = Replay::file(Bytes::from(damaged));
        let record = ends.iter().position(|&end| at < end).expect("inside a record");
        let group = GROUPS.iter().position(|group| group.contains(&record)).expect("grouped");
        let start = if GROUPS[group].start == 0 { 0 } else { ends[GROUPS[group].start - 1] };
        let dropped = replay.dropped.expect("the damage is detected");
        assert_eq!(dropped.offset, start, "flip at {at}");
        assert_eq!(replay.records, GROUPS[group].start as u64, "flip at {at}");
        if group == GROUPS.len() - 1 {
            // Only the last batch is lost: its entry and its QoS 2 id, nothing before.
            let image = replay.into_image();
            assert_eq!(image.retained, whole.retained);
            assert!(image.sessions[0].awaiting_pubrel.is_empty());
            assert_eq!(image.sessions[0].entries.len(), 1);
        }
    }
}

#[test]
fn records_that_do_not_fit_the_state_are_skipped_and_counted() {
    let mut file = Vec::new();
    for record in [
        Record::Header { worker: 0, generation: 0 },
        Record::SnapshotEnd,
        Record::Enqueue { sid: 9, seq: 1, mid: 1, qos: QoS::AtLeastOnce, retain: false },
        Record::Done { seq: 44 },
        Record::Subscribe {
            sid: 9,
            filter: TopicFilter::try_from("x").expect("f"),
            qos: QoS::AtMostOnce,
        },
        Record::Commit,
    ] {
        encode(&record, &mut file);
    }
    let replay = Replay::file(Bytes::from(file));
    assert_eq!((replay.records, replay.inconsistent), (6, 3));
    assert!(replay.into_image().is_empty());
}

#[test]
fn a_file_that_does_not_start_with_a_header_is_dropped_whole() {
    let mut file = Vec::new();
    encode(&Record::SnapshotEnd, &mut file);
    let replay = Replay::file(Bytes::from(file.clone()));
    assert_eq!(replay.dropped.map(|d| (d.offset, d.bytes)), Some((0, file.len())));
    assert!(!replay.snapshot_complete);
}
