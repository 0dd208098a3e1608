//! Encoding: packets into output buffers.
//!
//! Encoders compute the remaining length first and write each packet once. [`OutBuf`] is a
//! connection's output: small writes (acks, headers, short payloads) are copied into one
//! contiguous scratch buffer, while payloads of at least [`SHARED_PAYLOAD_BYTES_MIN`] are queued
//! as shared `Bytes` segments, so a large payload is never copied between receive and send.
//! [`EncodedPublish`] encodes a PUBLISH's header once per variant (QoS, retain, dup): fanning it
//! out to a subscriber writes only the shared header, the packet id and a reference to the
//! payload.

use bytes::{BufMut, Bytes, BytesMut};

use super::packet::*;
use super::topic::TopicName;

/// Payloads at least this long are queued by reference; shorter ones are copied, because a
/// 64-byte copy is cheaper than one more iovec for the kernel to walk.
pub const SHARED_PAYLOAD_BYTES_MIN: usize = 512;

/// The first allocation of a connection's output after it was last taken (or ever): room for
/// a turn's worth of small packets, so a burst of deliveries or acknowledgements does not grow
/// the buffer by reallocating and copying it several times (from one 84-byte PUBLISH or one
/// 4-byte PUBACK up). An idle connection still holds no buffer: what is taken goes with the
/// output.
pub const OUTPUT_FIRST_BYTES: usize = 1024;

/// The largest remaining length MQTT can express in four bytes [MQTT-2.2.3].
pub const REMAINING_LENGTH_MAX: usize = 268_435_455;

/// Number of bytes the remaining-length field takes for `length`.
pub const fn remaining_length_bytes(length: usize) -> usize {
    match length {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_remaining_length(out: &mut BytesMut, mut length: usize) {
    assert!(length <= REMAINING_LENGTH_MAX, "remaining length {length} too large to encode");
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if length == 0 {
            break;
        }
    }
}

fn put_string(out: &mut BytesMut, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("MQTT strings are at most 65535 bytes");
    out.put_u16(len);
    out.put_slice(bytes);
}

fn string_len(bytes: &[u8]) -> usize {
    2 + bytes.len()
}

/// The remaining length of `packet`: everything after the fixed header.
pub fn remaining_length(packet: &Packet) -> usize {
    match packet {
        Packet::Connect(connect) => {
            let mut len = 10 + string_len(connect.client_id.as_bytes());
            if connect.protocol == ProtocolVersion::V31 {
                len += 2; // "MQIsdp" is two bytes longer than "MQTT".
            }
            if let Some(will) = &connect.will {
                len += string_len(will.topic.as_bytes()) + string_len(&will.payload);
            }
            if let Some(username) = &connect.username {
                len += string_len(username.as_bytes());
            }
            if let Some(password) = &connect.password {
                len += string_len(password);
            }
            len
        }
        Packet::Connack(_) => 2,
        Packet::Publish(publish) => publish_remaining_length(publish),
        Packet::Puback(_)
        | Packet::Pubrec(_)
        | Packet::Pubrel(_)
        | Packet::Pubcomp(_)
        | Packet::Unsuback(_) => 2,
        Packet::Subscribe(subscribe) => {
            2 + subscribe.filters.iter().map(|(f, _)| string_len(f.as_bytes()) + 1).sum::<usize>()
        }
        Packet::Suback(suback) => 2 + suback.return_codes.len(),
        Packet::Unsubscribe(unsubscribe) => {
            2 + unsubscribe.filters.iter().map(|f| string_len(f.as_bytes())).sum::<usize>()
        }
        Packet::Pingreq | Packet::Pingresp | Packet::Disconnect => 0,
    }
}

fn publish_remaining_length(publish: &Publish) -> usize {
    let packet_id_bytes = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
    string_len(publish.topic.as_bytes()) + packet_id_bytes + publish.payload.len()
}

/// The whole encoded size of `packet`, fixed header included.
pub fn encoded_len(packet: &Packet) -> usize {
    let remaining = remaining_length(packet);
    1 + remaining_length_bytes(remaining) + remaining
}

fn publish_first_byte(qos: QoS, retain: bool, dup: bool) -> u8 {
    0x30 | (u8::from(dup) << 3) | (qos.as_u8() << 1) | u8::from(retain)
}

/// Appends the encoding of `packet` to `out`.
///
/// The encoder writes what it is given, so a test or the load generator can send a packet the
/// decoder would refuse (DUP on QoS 0, an empty SUBSCRIBE). It asserts only what would break
/// the framing of the stream: a PUBLISH whose packet id disagrees with its QoS, a string over
/// 65,535 bytes, a packet over the largest remaining length.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    let first_and_id = match packet {
        Packet::Publish(publish) => {
            encode_publish_head(publish, out);
            out.put_slice(&publish.payload);
            return;
        }
        // The acknowledgements, one per QoS 1/2 message on the message path: written whole.
        Packet::Puback(id) => Some((0x40, id)),
        Packet::Pubrec(id) => Some((0x50, id)),
        Packet::Pubrel(id) => Some((0x62, id)),
        Packet::Pubcomp(id) => Some((0x70, id)),
        _ => None,
    };
    if let Some((first, id)) = first_and_id {
        let [high, low] = id.get().to_be_bytes();
        out.extend_from_slice(&[first, 2, high, low]);
        return;
    }
    let remaining = remaining_length(packet);
    out.reserve(1 + remaining_length_bytes(remaining) + remaining);
    let first = match packet {
        Packet::Connect(_) => 0x10,
        Packet::Connack(_) => 0x20,
        Packet::Publish(_) => unreachable!("PUBLISH is encoded above"),
        Packet::Puback(_) => 0x40,
        Packet::Pubrec(_) => 0x50,
        Packet::Pubrel(_) => 0x62,
        Packet::Pubcomp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::Suback(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::Unsuback(_) => 0xB0,
        Packet::Pingreq => 0xC0,
        Packet::Pingresp => 0xD0,
        Packet::Disconnect => 0xE0,
    };
    out.put_u8(first);
    put_remaining_length(out, remaining);
    let start = out.len();
    encode_body(packet, out);
    debug_assert_eq!(out.len() - start, remaining, "remaining length of {}", packet.name());
}

fn encode_body(packet: &Packet, out: &mut BytesMut) {
    match packet {
        Packet::Connect(connect) => encode_connect(connect, out),
        Packet::Connack(connack) => {
            out.put_u8(u8::from(connack.session_present));
            out.put_u8(connack.code as u8);
        }
        Packet::Publish(_) => unreachable!("PUBLISH is encoded by encode_publish_head"),
        Packet::Puback(id)
        | Packet::Pubrec(id)
        | Packet::Pubrel(id)
        | Packet::Pubcomp(id)
        | Packet::Unsuback(id) => out.put_u16(id.get()),
        Packet::Subscribe(subscribe) => {
            out.put_u16(subscribe.packet_id.get());
            for (filter, qos) in &subscribe.filters {
                put_string(out, filter.as_bytes());
                out.put_u8(qos.as_u8());
            }
        }
        Packet::Suback(suback) => {
            out.put_u16(suback.packet_id.get());
            for code in &suback.return_codes {
                out.put_u8(code.as_u8());
            }
        }
        Packet::Unsubscribe(unsubscribe) => {
            out.put_u16(unsubscribe.packet_id.get());
            for filter in &unsubscribe.filters {
                put_string(out, filter.as_bytes());
            }
        }
        Packet::Pingreq | Packet::Pingresp | Packet::Disconnect => {}
    }
}

/// Writes a PUBLISH's fixed header, topic and packet id: everything but the payload. The
/// caller appends the payload (copied, or queued by reference in [`OutBuf`]).
fn encode_publish_head(publish: &Publish, out: &mut BytesMut) {
    // A mismatch would make the remaining length disagree with the bytes written, and so
    // corrupt every packet after this one on the connection [MQTT-2.3.1-5].
    assert_eq!(
        publish.packet_id.is_some(),
        publish.qos != QoS::AtMostOnce,
        "a PUBLISH has a packet id exactly when its QoS is 1 or 2"
    );
    let remaining = publish_remaining_length(publish);
    let head_bytes = 1 + remaining_length_bytes(remaining) + remaining - publish.payload.len();
    out.reserve(head_bytes + publish.payload.len());
    out.put_u8(publish_first_byte(publish.qos, publish.retain, publish.dup));
    put_remaining_length(out, remaining);
    put_string(out, publish.topic.as_bytes());
    if let Some(id) = publish.packet_id {
        out.put_u16(id.get());
    }
}

fn encode_connect(connect: &Connect, out: &mut BytesMut) {
    match connect.protocol {
        ProtocolVersion::V31 => {
            put_string(out, b"MQIsdp");
            out.put_u8(3);
        }
        ProtocolVersion::V311 => {
            put_string(out, b"MQTT");
            out.put_u8(4);
        }
    }
    let mut flags = u8::from(connect.clean_session) << 1;
    if let Some(will) = &connect.will {
        flags |= 0x04 | (will.qos.as_u8() << 3) | (u8::from(will.retain) << 5);
    }
    if connect.password.is_some() {
        flags |= 0x40;
    }
    if connect.username.is_some() {
        flags |= 0x80;
    }
    out.put_u8(flags);
    out.put_u16(connect.keep_alive_secs);
    put_string(out, connect.client_id.as_bytes());
    if let Some(will) = &connect.will {
        put_string(out, will.topic.as_bytes());
        put_string(out, &will.payload);
    }
    if let Some(username) = &connect.username {
        put_string(out, username.as_bytes());
    }
    if let Some(password) = &connect.password {
        put_string(out, password);
    }
}

/// A PUBLISH encoded once for one (QoS, retain, dup) variant, to be written to many
/// connections. Only the packet id differs between subscribers at QoS 1 and 2.
#[derive(Clone, Debug)]
pub struct EncodedPublish {
    /// Fixed header and length-prefixed topic name.
    head: Bytes,
    payload: Bytes,
    qos: QoS,
}

impl EncodedPublish {
    pub fn new(topic: &TopicName, payload: Bytes, qos: QoS, retain: bool, dup: bool) -> Self {
        let pid_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
        let remaining = string_len(topic.as_bytes()) + pid_len + payload.len();
        let mut head = BytesMut::with_capacity(5 + string_len(topic.as_bytes()));
        head.put_u8(publish_first_byte(qos, retain, dup));
        put_remaining_length(&mut head, remaining);
        put_string(&mut head, topic.as_bytes());
        Self { head: head.freeze(), payload, qos }
    }

    pub fn qos(&self) -> QoS {
        self.qos
    }

    /// The whole packet's size on the wire.
    pub fn len(&self) -> usize {
        let pid_len = if self.qos == QoS::AtMostOnce { 0 } else { 2 };
        self.head.len() + pid_len + self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the packet to `out`. `packet_id` must be `Some` exactly when the QoS is above 0.
    pub fn write(&self, packet_id: Option<PacketId>, out: &mut OutBuf) {
        assert_eq!(
            packet_id.is_some(),
            self.qos != QoS::AtMostOnce,
            "a packet id is required exactly for QoS 1 and 2"
        );
        // One allocation for everything copied: writing the three parts into an empty
        // buffer one by one would grow it twice (measured: ~1100 instructions, not ~300).
        let packet_id_bytes = if packet_id.is_some() { 2 } else { 0 };
        let copied_payload_bytes =
            if self.payload.len() < SHARED_PAYLOAD_BYTES_MIN { self.payload.len() } else { 0 };
        out.reserve(self.head.len() + packet_id_bytes + copied_payload_bytes);
        out.put_slice(&self.head);
        if let Some(id) = packet_id {
            out.put_slice(&id.get().to_be_bytes());
        }
        out.put_shared(&self.payload);
    }
}

/// A connection's pending output: a queue of byte segments ready for one vectored send.
///
/// Idle, it holds no heap memory. [`OutBuf::take_into`] hands every queued segment to the
/// caller (the runtime, which keeps them alive until the kernel is done with them) and leaves
/// the buffer empty.
///
/// It is part of every connection (48 bytes): the segments are a thin vector (one pointer,
/// empty without an allocation) rather than a deque (32 bytes), since they are only ever
/// appended and taken all at once.
#[derive(Debug, Default)]
pub struct OutBuf {
    segments: thin_vec::ThinVec<Bytes>,
    scratch: BytesMut,
    len: usize,
}

impl OutBuf {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes queued and not yet taken.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `bytes` more copied bytes, so a packet written in parts grows the
    /// buffer at most once.
    pub fn reserve(&mut self, bytes: usize) {
        if self.scratch.capacity() == 0 {
            self.scratch.reserve(bytes.max(OUTPUT_FIRST_BYTES));
        } else {
            self.scratch.reserve(bytes);
        }
    }

    pub fn put_slice(&mut self, bytes: &[u8]) {
        self.scratch.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Queues `bytes` by reference when large, by copy when small (see
    /// [`SHARED_PAYLOAD_BYTES_MIN`]).
    pub fn put_shared(&mut self, bytes: &Bytes) {
        if bytes.len() < SHARED_PAYLOAD_BYTES_MIN {
            self.put_slice(bytes);
            return;
        }
        self.seal();
        self.segments.push(bytes.clone());
        self.len += bytes.len();
    }

    /// Queues the encoding of `packet`. A PUBLISH's payload goes through
    /// [`OutBuf::put_shared`], so a large one is queued by reference, not copied.
    pub fn put_packet(&mut self, packet: &Packet) {
        self.reserve(0);
        let before = self.scratch.len();
        match packet {
            Packet::Publish(publish) => {
                encode_publish_head(publish, &mut self.scratch);
                self.len += self.scratch.len() - before;
                self.put_shared(&publish.payload);
            }
            _ => {
                encode(packet, &mut self.scratch);
                self.len += self.scratch.len() - before;
            }
        }
    }

    /// Ends the current scratch segment, so that what follows starts a new one.
    fn seal(&mut self) {
        if !self.scratch.is_empty() {
            self.segments.push(self.scratch.split().freeze());
        }
    }

    /// Moves every queued segment to the end of `out` and returns their total length. The
    /// scratch allocation goes with them, so an idle connection keeps no buffer. The scratch
    /// is always the last segment, so it goes to `out` directly rather than through
    /// `segments`: output made only of copied bytes (control packets, small payloads) never
    /// gives the deque an allocation, which it would then keep for the connection's life.
    pub fn take_into(&mut self, out: &mut Vec<Bytes>) -> usize {
        out.extend(self.segments.drain(..));
        if !self.scratch.is_empty() {
            out.push(self.scratch.split().freeze());
        }
        self.scratch = BytesMut::new();
        std::mem::take(&mut self.len)
    }

    /// Drops everything queued (the connection is going away); returns how many bytes.
    pub fn clear(&mut self) -> usize {
        self.segments.clear();
        self.scratch = BytesMut::new();
        std::mem::take(&mut self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(value: u16) -> PacketId {
        PacketId::new(value).expect("non-zero")
    }

    #[test]
    fn remaining_length_uses_one_to_four_bytes() {
        // [MQTT-2.2.3]: 127, 16383, 2097151 and 268435455 are the largest of each width.
        for (length, bytes) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (REMAINING_LENGTH_MAX, 4),
        ] {
            let mut out = BytesMut::new();
            put_remaining_length(&mut out, length);
            assert_eq!(out.len(), bytes, "length {length}");
            assert_eq!(remaining_length_bytes(length), bytes, "length {length}");
        }
    }

    #[test]
    fn a_burst_of_small_packets_fills_one_first_allocation_and_idle_keeps_none() {
        let mut out = OutBuf::new();
        assert_eq!(out.scratch.capacity(), 0);
        for _ in 0..OUTPUT_FIRST_BYTES / 4 {
            out.put_packet(&Packet::Puback(pid(1)));
        }
        assert_eq!(out.scratch.capacity(), OUTPUT_FIRST_BYTES, "no growth within the first");
        let mut taken = Vec::new();
        assert_eq!(out.take_into(&mut taken), OUTPUT_FIRST_BYTES);
        assert_eq!(out.scratch.capacity(), 0, "the taken output keeps its allocation");
    }

    #[test]
    fn encoded_publish_equals_plain_encoding() {
        let topic = TopicName::from_static("a/b");
        for (qos, payload_len) in
            [(QoS::AtMostOnce, 10), (QoS::AtLeastOnce, 1000), (QoS::ExactlyOnce, 0)]
        {
            let payload = Bytes::from(vec![7u8; payload_len]);
            let packet_id = (qos != QoS::AtMostOnce).then(|| pid(9));
            let publish = Packet::Publish(Publish {
                dup: true,
                qos,
                retain: true,
                topic: topic.clone(),
                packet_id,
                payload: payload.clone(),
            });
            let mut plain = BytesMut::new();
            encode(&publish, &mut plain);

            let encoded = EncodedPublish::new(&topic, payload, qos, true, true);
            let mut out = OutBuf::new();
            encoded.write(packet_id, &mut out);
            assert_eq!(out.len(), plain.len());
            assert_eq!(encoded.len(), plain.len());
            let mut segments = Vec::new();
            out.take_into(&mut segments);
            assert_eq!(segments.concat(), plain.to_vec());
        }
    }

    #[test]
    fn large_payloads_are_queued_by_reference() {
        let payload = Bytes::from(vec![1u8; SHARED_PAYLOAD_BYTES_MIN]);
        let encoded = EncodedPublish::new(
            &TopicName::from_static("t"),
            payload.clone(),
            QoS::AtMostOnce,
            false,
            false,
        );
        let mut out = OutBuf::new();
        encoded.write(None, &mut out);
        let mut segments = Vec::new();
        let taken = out.take_into(&mut segments);
        assert_eq!(taken, encoded.len());
        assert_eq!(segments.len(), 2, "header segment, then the payload itself");
        assert_eq!(segments[1].as_ptr(), payload.as_ptr(), "the payload was not copied");
        assert!(out.is_empty());
    }

    /// `put_packet` queues a large PUBLISH payload by reference too, not only
    /// `EncodedPublish::write`, and its bytes equal the plain encoding.
    #[test]
    fn put_packet_queues_large_payloads_by_reference() {
        let payload = Bytes::from(vec![3u8; SHARED_PAYLOAD_BYTES_MIN + 1]);
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::from_static("t/u"),
            packet_id: Some(pid(4)),
            payload: payload.clone(),
        });
        let mut out = OutBuf::new();
        out.put_packet(&Packet::Pingresp);
        out.put_packet(&packet);
        out.put_packet(&Packet::Puback(pid(5)));
        let mut plain = BytesMut::new();
        for packet in [&Packet::Pingresp, &packet, &Packet::Puback(pid(5))] {
            encode(packet, &mut plain);
        }
        assert_eq!(out.len(), plain.len());
        let mut segments = Vec::new();
        assert_eq!(out.take_into(&mut segments), plain.len());
        assert_eq!(segments.len(), 3, "head, shared payload, the PUBACK after it");
        assert_eq!(segments[1].as_ptr(), payload.as_ptr(), "the payload was not copied");
        assert_eq!(segments.concat(), plain.to_vec());
    }

    /// A PUBLISH whose packet id disagrees with its QoS would corrupt the stream's framing,
    /// so encoding one is a broken invariant [MQTT-2.3.1-5].
    #[test]
    #[should_panic(expected = "packet id exactly when its QoS")]
    fn publish_with_packet_id_at_qos_0_is_a_bug() {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::from_static("t"),
            packet_id: Some(pid(1)),
            payload: Bytes::new(),
        });
        encode(&packet, &mut BytesMut::new());
    }
}
