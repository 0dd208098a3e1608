//! The journal's record format: how one change of persistent state is framed on disk.
//!
//! Frame: `[length u32 LE][crc32c u32 LE][kind u8][body]`. `length` counts kind and body;
//! the checksum (CRC-32C, the Castagnoli polynomial, hardware-accelerated where the CPU has
//! it) covers the same bytes. Integers in bodies are little-endian; strings and payloads are
//! a u32 length and the bytes. A frame longer than [`RECORD_BYTES_MAX`], shorter than its
//! length says, with a wrong checksum, or whose body does not decode into valid MQTT values
//! (a topic name with a wildcard, a QoS of 3, a zero packet id, bytes left over) is *bad*:
//! recovery stops at the first bad frame of a file (see `recovery.rs`).
//!
//! Sans-IO: encoding appends to a `Vec<u8>`, decoding reads from `Bytes`. Decoded strings
//! and payloads are copies, not slices of the file's buffer: a recovered state lives for the
//! broker's whole run, and one client id sliced from a file would keep the whole file
//! (tens of MB) allocated (docs/BENCHMARKS.md, "Restart with 1M persistent sessions"). Invariant: `decode(encode(r)) == r`
//! for every record (tested), and a decoded record carries only values the broker accepts.

use bytes::{Buf, Bytes};

use crate::protocol::{PacketId, QoS, TopicFilter, TopicName, Utf8Bytes};

/// The largest frame accepted (kind and body): a whole MQTT packet's worth (256 MiB) plus
/// room for the record's own fields. A length beyond it is corruption, not a record.
pub const RECORD_BYTES_MAX: usize = (256 << 20) + 1024;

/// Bytes before the kind: length and checksum.
pub const FRAME_HEADER_BYTES: usize = 8;

/// The journal format's version, in every file's `Header`.
pub const FORMAT_VERSION: u16 = 1;

/// Identifies a ringmq journal file (in its `Header`).
pub const MAGIC: u32 = u32::from_le_bytes(*b"RMQJ");

/// One change of a worker's persistent state.
///
/// `sid` is the session's slab index on the worker that wrote it (`SessionId`), valid from
/// its `SessionOpen` to its `SessionDrop`; `seq` names one message entry of a session, unique
/// in the file; `mid` names one stored message body, unique in the file.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Record {
    /// First record of every file.
    Header {
        worker: u16,
        generation: u64,
    },
    /// The snapshot that opens a file is complete; records after it are changes.
    SnapshotEnd,
    /// A persistent session was created (replacing any older one with this `sid`).
    SessionOpen {
        sid: u32,
        client_id: Utf8Bytes,
    },
    /// A persistent session was discarded, with everything it held.
    SessionDrop {
        sid: u32,
    },
    Subscribe {
        sid: u32,
        filter: TopicFilter,
        qos: QoS,
    },
    Unsubscribe {
        sid: u32,
        filter: TopicFilter,
    },
    /// A message body, stored once per worker for all its sessions' entries.
    Message {
        mid: u64,
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    },
    /// Message `mid` joined session `sid`'s outgoing messages as entry `seq`, to be sent
    /// at `qos` with the RETAIN flag `retain`.
    Enqueue {
        sid: u32,
        seq: u64,
        mid: u64,
        qos: QoS,
        retain: bool,
    },
    /// Entry `seq` was written to the client with `packet_id` (now in flight).
    Sent {
        seq: u64,
        packet_id: PacketId,
    },
    /// Entry `seq` (QoS 2) got its PUBREC: only its packet id matters now.
    Released {
        seq: u64,
    },
    /// Entry `seq` is finished (PUBACK or PUBCOMP).
    Done {
        seq: u64,
    },
    /// A retained message set for its topic, or deleted when `payload` is empty.
    /// `set_at_unix_millis`: when it was set, wall clock (so `retained_expiry_secs` counts
    /// across a restart); `None` in files written before it was recorded (kind 12): such a
    /// message is taken as set at the restart.
    Retain {
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        set_at_unix_millis: Option<u64>,
    },
    /// A QoS 2 PUBLISH from the session's client was delivered (Method B): its id is held
    /// until PUBREL, so a re-sent PUBLISH is not delivered twice.
    Qos2Received {
        sid: u32,
        packet_id: PacketId,
    },
    Qos2Released {
        sid: u32,
        packet_id: PacketId,
    },
    /// Ends a batch: the records since the previous `Commit` (or `SnapshotEnd`) take effect
    /// together or not at all, so a batch torn by a crash is dropped whole.
    Commit,
    /// In a snapshot: where the session's packet ids continue (after the last `Sent`, ids
    /// continue from there too). A restart must not reuse an id the client may still hold
    /// for a message whose `Sent` was lost, or a re-sent PUBREL would release that message.
    NextPacketId {
        sid: u32,
        packet_id: PacketId,
    },
    /// A QoS 2 message from persistent session `origin`'s client with `packet_id`, published
    /// on another worker, was stored here: a copy re-sent before `origin`'s worker journaled
    /// its id (a crash in between) is recognised and not stored twice (`broker/durable.rs`).
    Qos2Forwarded {
        origin: Utf8Bytes,
        packet_id: PacketId,
    },
    /// In a snapshot: the copies of `origin`'s QoS 2 message `packet_id` are held by the
    /// persistent sessions homed at `worker` among `workers` workers (pairs written by a run
    /// with another worker count, whose sessions were re-homed since; `Qos2Forwarded` is the
    /// case of this worker's own sessions).
    Qos2Held {
        origin: Utf8Bytes,
        packet_id: PacketId,
        workers: u16,
        worker: u16,
    },
    /// `origin`'s client released `packet_id` (PUBREL): a new message may reuse it.
    Qos2ForwardReleased {
        origin: Utf8Bytes,
        packet_id: PacketId,
    },
}

mod kind {
    pub const HEADER: u8 = 1;
    pub const SNAPSHOT_END: u8 = 2;
    pub const SESSION_OPEN: u8 = 3;
    pub const SESSION_DROP: u8 = 4;
    pub const SUBSCRIBE: u8 = 5;
    pub const UNSUBSCRIBE: u8 = 6;
    pub const MESSAGE: u8 = 7;
    pub const ENQUEUE: u8 = 8;
    pub const SENT: u8 = 9;
    pub const RELEASED: u8 = 10;
    pub const DONE: u8 = 11;
    pub const RETAIN: u8 = 12;
    pub const QOS2_RECEIVED: u8 = 13;
    pub const QOS2_RELEASED: u8 = 14;
    pub const COMMIT: u8 = 15;
    pub const NEXT_PACKET_ID: u8 = 16;
    pub const QOS2_FORWARDED: u8 = 17;
    pub const QOS2_FORWARD_RELEASED: u8 = 18;
    /// `Retain` with the wall-clock time it was set.
    pub const RETAIN_AT: u8 = 19;
    pub const QOS2_HELD: u8 = 20;
}

/// Appends `record`, framed, to `out`; returns the frame's size in bytes.
pub fn encode(record: &Record, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    encode_body(record, out);
    let framed = &mut out[start..];
    let length = framed.len() - FRAME_HEADER_BYTES;
    assert!(length <= RECORD_BYTES_MAX, "a record of {length} bytes exceeds RECORD_BYTES_MAX");
    let crc = crc32c::crc32c(&framed[FRAME_HEADER_BYTES..]);
    // Cannot fail: length <= RECORD_BYTES_MAX < 2^32.
    framed[..4].copy_from_slice(&u32::try_from(length).expect("bounded").to_le_bytes());
    framed[4..8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn encode_body(record: &Record, out: &mut Vec<u8>) {
    let put_bytes = |out: &mut Vec<u8>, bytes: &[u8]| {
        // Cannot fail: MQTT strings and payloads are under 256 MiB.
        out.extend_from_slice(&u32::try_from(bytes.len()).expect("under 4 GiB").to_le_bytes());
        out.extend_from_slice(bytes);
    };
    match record {
        Record::Header { worker, generation } => {
            out.push(kind::HEADER);
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            out.extend_from_slice(&worker.to_le_bytes());
            out.extend_from_slice(&generation.to_le_bytes());
        }
        Record::SnapshotEnd => out.push(kind::SNAPSHOT_END),
        Record::Commit => out.push(kind::COMMIT),
        Record::NextPacketId { sid, packet_id } => {
            out.push(kind::NEXT_PACKET_ID);
            out.extend_from_slice(&sid.to_le_bytes());
            out.extend_from_slice(&packet_id.get().to_le_bytes());
        }
        Record::SessionOpen { sid, client_id } => {
            out.push(kind::SESSION_OPEN);
            out.extend_from_slice(&sid.to_le_bytes());
            put_bytes(out, client_id.as_bytes());
        }
        Record::SessionDrop { sid } => {
            out.push(kind::SESSION_DROP);
            out.extend_from_slice(&sid.to_le_bytes());
        }
        Record::Subscribe { sid, filter, qos } => {
            out.push(kind::SUBSCRIBE);
            out.extend_from_slice(&sid.to_le_bytes());
            out.push(qos.as_u8());
            put_bytes(out, filter.as_bytes());
        }
        Record::Unsubscribe { sid, filter } => {
            out.push(kind::UNSUBSCRIBE);
            out.extend_from_slice(&sid.to_le_bytes());
            put_bytes(out, filter.as_bytes());
        }
        Record::Message { mid, topic, payload, qos, retain } => {
            out.push(kind::MESSAGE);
            out.extend_from_slice(&mid.to_le_bytes());
            out.push(qos.as_u8());
            out.push(u8::from(*retain));
            put_bytes(out, topic.as_bytes());
            put_bytes(out, payload);
        }
        Record::Enqueue { sid, seq, mid, qos, retain } => {
            out.push(kind::ENQUEUE);
            out.extend_from_slice(&sid.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&mid.to_le_bytes());
            out.push(qos.as_u8());
            out.push(u8::from(*retain));
        }
        Record::Sent { seq, packet_id } => {
            out.push(kind::SENT);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&packet_id.get().to_le_bytes());
        }
        Record::Released { seq } => {
            out.push(kind::RELEASED);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Record::Done { seq } => {
            out.push(kind::DONE);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Record::Retain { topic, payload, qos, set_at_unix_millis } => {
            match set_at_unix_millis {
                Some(millis) => {
                    out.push(kind::RETAIN_AT);
                    out.extend_from_slice(&millis.to_le_bytes());
                }
                None => out.push(kind::RETAIN),
            }
            out.push(qos.as_u8());
            put_bytes(out, topic.as_bytes());
            put_bytes(out, payload);
        }
        Record::Qos2Received { sid, packet_id } | Record::Qos2Released { sid, packet_id } => {
            let received = matches!(record, Record::Qos2Received { .. });
            out.push(if received { kind::QOS2_RECEIVED } else { kind::QOS2_RELEASED });
            out.extend_from_slice(&sid.to_le_bytes());
            out.extend_from_slice(&packet_id.get().to_le_bytes());
        }
        Record::Qos2Held { origin, packet_id, workers, worker } => {
            out.push(kind::QOS2_HELD);
            out.extend_from_slice(&packet_id.get().to_le_bytes());
            out.extend_from_slice(&workers.to_le_bytes());
            out.extend_from_slice(&worker.to_le_bytes());
            put_bytes(out, origin.as_bytes());
        }
        Record::Qos2Forwarded { origin, packet_id }
        | Record::Qos2ForwardReleased { origin, packet_id } => {
            let forwarded = matches!(record, Record::Qos2Forwarded { .. });
            out.push(if forwarded { kind::QOS2_FORWARDED } else { kind::QOS2_FORWARD_RELEASED });
            out.extend_from_slice(&packet_id.get().to_le_bytes());
            put_bytes(out, origin.as_bytes());
        }
    }
}

/// Why a frame is bad (recovery stops there and reports it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BadRecord {
    /// The file ends inside the frame (a torn write).
    Truncated,
    /// The length is zero or beyond `RECORD_BYTES_MAX`.
    Length,
    /// The checksum does not match.
    Checksum,
    /// The checksum matches but the body is not a valid record.
    Body(&'static str),
    /// The file ends inside a batch (records after the last `Commit`): a torn batch.
    Uncommitted,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated frame"),
            Self::Length => f.write_str("impossible length"),
            Self::Checksum => f.write_str("checksum mismatch"),
            Self::Body(what) => write!(f, "bad body: {what}"),
            Self::Uncommitted => f.write_str("a batch without its commit (torn write)"),
        }
    }
}

/// Decodes the frame at the start of `input`. `Ok(None)`: `input` is empty (a clean end).
/// On success the frame is consumed; on error `input` is left as it was.
pub fn decode(input: &mut Bytes) -> Result<Option<Record>, BadRecord> {
    if input.is_empty() {
        return Ok(None);
    }
    if input.len() < FRAME_HEADER_BYTES {
        return Err(BadRecord::Truncated);
    }
    let length = u32::from_le_bytes([input[0], input[1], input[2], input[3]]) as usize;
    let crc = u32::from_le_bytes([input[4], input[5], input[6], input[7]]);
    if length == 0 || length > RECORD_BYTES_MAX {
        return Err(BadRecord::Length);
    }
    if input.len() - FRAME_HEADER_BYTES < length {
        return Err(BadRecord::Truncated);
    }
    let frame = input.slice(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length);
    if crc32c::crc32c(&frame) != crc {
        return Err(BadRecord::Checksum);
    }
    let record = decode_body(frame).map_err(BadRecord::Body)?;
    input.advance(FRAME_HEADER_BYTES + length);
    Ok(Some(record))
}

/// A cursor over one frame's kind and body.
struct Body(Bytes);

impl Body {
    fn need(&self, n: usize) -> Result<(), &'static str> {
        if self.0.remaining() < n {
            return Err("body too short");
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        self.need(2)?;
        Ok(self.0.get_u16_le())
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        self.need(4)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        self.need(8)?;
        Ok(self.0.get_u64_le())
    }
    fn bytes(&mut self) -> Result<Bytes, &'static str> {
        let len = self.u32()? as usize;
        self.need(len)?;
        // A copy, not a slice that would keep the file's buffer alive (module documentation).
        let copy = Bytes::copy_from_slice(&self.0[..len]);
        self.0.advance(len);
        Ok(copy)
    }
    fn qos(&mut self) -> Result<QoS, &'static str> {
        QoS::from_u8(self.u8()?).ok_or("QoS beyond 2")
    }
    fn flag(&mut self) -> Result<bool, &'static str> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("flag neither 0 nor 1"),
        }
    }
    fn packet_id(&mut self) -> Result<PacketId, &'static str> {
        PacketId::new(self.u16()?).ok_or("packet id 0")
    }
    fn utf8(&mut self) -> Result<Utf8Bytes, &'static str> {
        Utf8Bytes::new(self.bytes()?).ok_or("not MQTT UTF-8")
    }
    fn topic(&mut self) -> Result<TopicName, &'static str> {
        TopicName::new(self.utf8()?).map_err(|_| "not a topic name")
    }
    fn filter(&mut self) -> Result<TopicFilter, &'static str> {
        TopicFilter::new(self.utf8()?).map_err(|_| "not a topic filter")
    }
}

fn decode_body(frame: Bytes) -> Result<Record, &'static str> {
    let mut body = Body(frame);
    let kind = body.u8()?;
    let record = match kind {
        kind::HEADER => {
            if body.u32()? != MAGIC {
                return Err("not a ringmq journal");
            }
            if body.u16()? != FORMAT_VERSION {
                return Err("unknown format version");
            }
            Record::Header { worker: body.u16()?, generation: body.u64()? }
        }
        kind::SNAPSHOT_END => Record::SnapshotEnd,
        kind::COMMIT => Record::Commit,
        kind::NEXT_PACKET_ID => {
            Record::NextPacketId { sid: body.u32()?, packet_id: body.packet_id()? }
        }
        kind::SESSION_OPEN => Record::SessionOpen { sid: body.u32()?, client_id: body.utf8()? },
        kind::SESSION_DROP => Record::SessionDrop { sid: body.u32()? },
        kind::SUBSCRIBE => {
            let sid = body.u32()?;
            let qos = body.qos()?;
            Record::Subscribe { sid, qos, filter: body.filter()? }
        }
        kind::UNSUBSCRIBE => Record::Unsubscribe { sid: body.u32()?, filter: body.filter()? },
        kind::MESSAGE => {
            let (mid, qos, retain) = (body.u64()?, body.qos()?, body.flag()?);
            Record::Message { mid, qos, retain, topic: body.topic()?, payload: body.bytes()? }
        }
        kind::ENQUEUE => Record::Enqueue {
            sid: body.u32()?,
            seq: body.u64()?,
            mid: body.u64()?,
            qos: body.qos()?,
            retain: body.flag()?,
        },
        kind::SENT => Record::Sent { seq: body.u64()?, packet_id: body.packet_id()? },
        kind::RELEASED => Record::Released { seq: body.u64()? },
        kind::DONE => Record::Done { seq: body.u64()? },
        kind::RETAIN | kind::RETAIN_AT => {
            let set_at_unix_millis = match kind {
                kind::RETAIN_AT => Some(body.u64()?),
                _ => None,
            };
            let qos = body.qos()?;
            Record::Retain { qos, topic: body.topic()?, payload: body.bytes()?, set_at_unix_millis }
        }
        kind::QOS2_RECEIVED => {
            Record::Qos2Received { sid: body.u32()?, packet_id: body.packet_id()? }
        }
        kind::QOS2_RELEASED => {
            Record::Qos2Released { sid: body.u32()?, packet_id: body.packet_id()? }
        }
        kind::QOS2_FORWARDED => {
            let packet_id = body.packet_id()?;
            Record::Qos2Forwarded { packet_id, origin: body.utf8()? }
        }
        kind::QOS2_HELD => {
            let (packet_id, workers, worker) = (body.packet_id()?, body.u16()?, body.u16()?);
            if worker >= workers {
                return Err("a worker beyond the worker count");
            }
            Record::Qos2Held { packet_id, workers, worker, origin: body.utf8()? }
        }
        kind::QOS2_FORWARD_RELEASED => {
            let packet_id = body.packet_id()?;
            Record::Qos2ForwardReleased { packet_id, origin: body.utf8()? }
        }
        _ => return Err("unknown record kind"),
    };
    if body.0.has_remaining() {
        return Err("bytes left after the body");
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(value: u16) -> PacketId {
        PacketId::new(value).expect("non-zero")
    }

    pub(crate) fn every_kind() -> Vec<Record> {
        vec![
            Record::Header { worker: 3, generation: 77 },
            Record::SnapshotEnd,
            Record::SessionOpen { sid: 9, client_id: Utf8Bytes::from_static("client-é") },
            Record::SessionDrop { sid: 9 },
            Record::Subscribe {
                sid: 1,
                filter: TopicFilter::try_from("a/+/#").expect("filter"),
                qos: QoS::ExactlyOnce,
            },
            Record::Unsubscribe { sid: 1, filter: TopicFilter::try_from("a/b").expect("filter") },
            Record::Message {
                mid: u64::MAX,
                topic: TopicName::from_static("t/1"),
                payload: Bytes::from(vec![0u8; 1000]),
                qos: QoS::AtLeastOnce,
                retain: true,
            },
            Record::Enqueue { sid: 2, seq: 5, mid: 6, qos: QoS::ExactlyOnce, retain: false },
            Record::Sent { seq: 5, packet_id: pid(65535) },
            Record::Released { seq: 5 },
            Record::Done { seq: 5 },
            Record::Retain {
                topic: TopicName::from_static("r"),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                set_at_unix_millis: None,
            },
            Record::Retain {
                topic: TopicName::from_static("r/2"),
                payload: Bytes::from_static(b"kept"),
                qos: QoS::ExactlyOnce,
                set_at_unix_millis: Some(1_795_000_000_123),
            },
            Record::Qos2Received { sid: 4, packet_id: pid(1) },
            Record::Qos2Released { sid: 4, packet_id: pid(1) },
            Record::Commit,
            Record::NextPacketId { sid: 4, packet_id: pid(9) },
            Record::Qos2Forwarded { origin: Utf8Bytes::from_static("pub-1"), packet_id: pid(7) },
            Record::Qos2ForwardReleased {
                origin: Utf8Bytes::from_static("pub-1"),
                packet_id: pid(7),
            },
            Record::Qos2Held {
                origin: Utf8Bytes::from_static("pub-2"),
                packet_id: pid(8),
                workers: 3,
                worker: 2,
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_and_reports_its_size() {
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        for record in every_kind() {
            sizes.push(encode(&record, &mut out));
        }
        assert_eq!(sizes.iter().sum::<usize>(), out.len());
        let mut input = Bytes::from(out);
        for record in every_kind() {
            assert_eq!(decode(&mut input), Ok(Some(record)));
        }
        assert_eq!(decode(&mut input), Ok(None));
    }

    #[test]
    fn every_truncation_is_detected_and_consumes_nothing() {
        let mut out = Vec::new();
        encode(&every_kind()[6], &mut out);
        for cut in 1..out.len() {
            let mut input = Bytes::copy_from_slice(&out[..cut]);
            assert_eq!(decode(&mut input), Err(BadRecord::Truncated), "cut at {cut}");
            assert_eq!(input.len(), cut);
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        for record in every_kind() {
            let mut out = Vec::new();
            encode(&record, &mut out);
            for byte in 0..out.len() {
                for bit in 0..8 {
                    let mut flipped = out.clone();
                    flipped[byte] ^= 1 << bit;
                    let mut input = Bytes::from(flipped);
                    // A flip in the length may make the frame look truncated or impossible;
                    // anywhere else the checksum catches it. Never a wrong record.
                    match decode(&mut input) {
                        Err(_) => {}
                        Ok(other) => panic!("flip {byte}.{bit} of {record:?} gave {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn a_valid_checksum_over_an_invalid_body_is_still_bad() {
        // A topic name with a wildcard, correctly framed: the value check catches it.
        let mut body = vec![kind::RETAIN, 1];
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(b"a/#");
        body.extend_from_slice(&0u32.to_le_bytes());
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let mut input = Bytes::from(frame);
        assert_eq!(decode(&mut input), Err(BadRecord::Body("not a topic name")));
    }

    #[test]
    fn lengths_of_zero_or_beyond_the_maximum_are_refused() {
        for length in [0u32, RECORD_BYTES_MAX as u32 + 1, u32::MAX] {
            let mut frame = length.to_le_bytes().to_vec();
            frame.extend_from_slice(&[0; 12]);
            assert_eq!(decode(&mut Bytes::from(frame)), Err(BadRecord::Length));
        }
    }
}
