//! Incremental, strict, zero-copy decoding of MQTT 3.1.1 (and 3.1) packets.
//!
//! [`decode`] looks at the front of a receive buffer and either answers "need more bytes"
//! (consuming nothing), or splits exactly one packet off the buffer, or refuses the bytes with
//! a [`DecodeError`] that names the rule they break. It decodes all 14 packet types, those a
//! client sends and those a server sends, so the load generator and the tests use it as well.
//!
//! Invariants:
//! - The fixed header is judged as soon as it is complete: the packet type and its flags from
//!   the first byte, then the remaining length (at most 4 bytes; a fourth byte that asks for a
//!   fifth is refused at once) and the size limit. A client therefore cannot make us wait for,
//!   or buffer, a body larger than the limit.
//! - A packet's bytes are split off the buffer and frozen once; topic names, strings and
//!   payloads are `Bytes` slices of that one frozen body, never copies.
//! - A packet is returned only if every field is valid and the body holds nothing after its
//!   last field; a value of [`Packet`] is well-formed by construction.

use bytes::{Buf, Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::*;
use super::topic::{TopicFilter, TopicName};

/// The most bytes the remaining-length field may take [MQTT 3.1.1 section 2.2.3].
const REMAINING_LENGTH_BYTES_MAX: usize = 4;

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a packet (nothing is consumed), and
/// `Ok(Some(packet))` after removing exactly that packet's bytes from `buf`. The packet's size
/// (fixed header included) is checked against `max_packet_bytes` as soon as the fixed header is
/// complete, before the body is waited for. Topic names and payloads are slices of `buf`'s
/// storage. After an error the connection is to be closed; what is left in `buf` is unspecified.
pub fn decode(buf: &mut BytesMut, max_packet_bytes: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = FixedHeader::parse(buf)? else {
        return Ok(None);
    };
    let packet_bytes = header.header_bytes + header.remaining_bytes;
    if packet_bytes > max_packet_bytes {
        return Err(DecodeError::PacketTooLarge { length: packet_bytes, max: max_packet_bytes });
    }
    if buf.len() < packet_bytes {
        return Ok(None);
    }
    if let Some(packet) =
        decode_bodiless(header.first_byte, &buf[header.header_bytes..packet_bytes])?
    {
        // Nothing to share with the buffer: no split, no reference count touched.
        buf.advance(packet_bytes);
        return Ok(Some(packet));
    }
    let mut packet = buf.split_to(packet_bytes).freeze();
    packet.advance(header.header_bytes);
    decode_body(header.first_byte, packet).map(Some)
}

/// The packets that are only a packet id or nothing (acknowledgements, PINGREQ, PINGRESP,
/// DISCONNECT), decoded from a borrowed body; `None` for every other type or length (the
/// general path then decodes them, or names what is wrong). On the message path every QoS 1/2
/// message brings at least one of these.
fn decode_bodiless(first_byte: u8, body: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let packet_id = || {
        let id = u16::from_be_bytes([body[0], body[1]]);
        PacketId::new(id).ok_or(DecodeError::ZeroPacketId)
    };
    let packet = match (first_byte >> 4, body.len()) {
        (4, 2) => Packet::Puback(packet_id()?),
        (5, 2) => Packet::Pubrec(packet_id()?),
        (6, 2) => Packet::Pubrel(packet_id()?),
        (7, 2) => Packet::Pubcomp(packet_id()?),
        (11, 2) => Packet::Unsuback(packet_id()?),
        (12, 0) => Packet::Pingreq,
        (13, 0) => Packet::Pingresp,
        (14, 0) => Packet::Disconnect,
        _ => return Ok(None),
    };
    Ok(Some(packet))
}

/// The fixed header: the first byte and the decoded remaining length.
struct FixedHeader {
    first_byte: u8,
    /// Bytes the fixed header takes: 1 plus the remaining-length field.
    header_bytes: usize,
    remaining_bytes: usize,
}

impl FixedHeader {
    /// Parses the fixed header at the front of `buf`; `None` if it is not complete yet.
    fn parse(buf: &[u8]) -> Result<Option<Self>, DecodeError> {
        let Some(&first_byte) = buf.first() else {
            return Ok(None);
        };
        check_first_byte(first_byte)?;
        let mut remaining_bytes = 0usize;
        for index in 0..REMAINING_LENGTH_BYTES_MAX {
            let Some(&byte) = buf.get(1 + index) else {
                return Ok(None);
            };
            remaining_bytes |= usize::from(byte & 0x7F) << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(Some(Self { first_byte, header_bytes: 2 + index, remaining_bytes }));
            }
        }
        // The fourth length byte has its continuation bit set: a fifth byte would follow.
        Err(DecodeError::RemainingLengthTooLong)
    }
}

/// Checks the packet type and the flags the fixed header's first byte carries
/// [MQTT-2.2.2-1] [MQTT-2.2.2-2]; PUBLISH's flags are its DUP, QoS and RETAIN.
fn check_first_byte(first_byte: u8) -> Result<(), DecodeError> {
    let packet_type = first_byte >> 4;
    let flags = first_byte & 0x0F;
    let required_flags = match packet_type {
        0 | 15 => return Err(DecodeError::ReservedPacketType(packet_type)),
        3 => return check_publish_flags(flags),
        // PUBREL, SUBSCRIBE and UNSUBSCRIBE [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1].
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != required_flags {
        return Err(DecodeError::ReservedFlags { packet_type, flags });
    }
    Ok(())
}

fn check_publish_flags(flags: u8) -> Result<(), DecodeError> {
    let qos = (flags >> 1) & 0b11;
    if qos == 3 {
        return Err(DecodeError::InvalidQoS);
    }
    if qos == 0 && flags & 0b1000 != 0 {
        return Err(DecodeError::DupWithQoS0);
    }
    Ok(())
}

/// Decodes the body of a packet whose first byte passed [`check_first_byte`].
fn decode_body(first_byte: u8, body: Bytes) -> Result<Packet, DecodeError> {
    let mut reader = Reader::new(body);
    let packet = match first_byte >> 4 {
        1 => Packet::Connect(Box::new(decode_connect(&mut reader)?)),
        2 => Packet::Connack(decode_connack(&mut reader)?),
        3 => Packet::Publish(decode_publish(first_byte, &mut reader)?),
        4 => Packet::Puback(reader.packet_id()?),
        5 => Packet::Pubrec(reader.packet_id()?),
        6 => Packet::Pubrel(reader.packet_id()?),
        7 => Packet::Pubcomp(reader.packet_id()?),
        8 => Packet::Subscribe(decode_subscribe(&mut reader)?),
        9 => Packet::Suback(decode_suback(&mut reader)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(&mut reader)?),
        11 => Packet::Unsuback(reader.packet_id()?),
        12 => Packet::Pingreq,
        13 => Packet::Pingresp,
        14 => Packet::Disconnect,
        other => unreachable!("check_first_byte refused packet type {other}"),
    };
    reader.finish()?;
    Ok(packet)
}

fn decode_publish(first_byte: u8, reader: &mut Reader) -> Result<Publish, DecodeError> {
    let dup = first_byte & 0b1000 != 0;
    let retain = first_byte & 0b0001 != 0;
    // Cannot fail: check_publish_flags refused QoS 3.
    let qos = QoS::from_u8((first_byte >> 1) & 0b11).expect("QoS 3 was refused");
    let topic = reader.topic_name()?;
    let packet_id = if qos == QoS::AtMostOnce { None } else { Some(reader.packet_id()?) };
    let payload = reader.rest();
    Ok(Publish { dup, qos, retain, topic, packet_id, payload })
}

/// CONNECT flag bits [MQTT 3.1.1 section 3.1.2.3].
const CONNECT_RESERVED: u8 = 0x01;
const CONNECT_CLEAN_SESSION: u8 = 0x02;
const CONNECT_WILL: u8 = 0x04;
const CONNECT_WILL_QOS_SHIFT: u8 = 3;
const CONNECT_WILL_RETAIN: u8 = 0x20;
const CONNECT_PASSWORD: u8 = 0x40;
const CONNECT_USERNAME: u8 = 0x80;

fn decode_connect(reader: &mut Reader) -> Result<Connect, DecodeError> {
    let protocol = decode_protocol(reader)?;
    let flags = reader.u8()?;
    check_connect_flags(flags)?;
    let keep_alive_secs = reader.u16()?;
    // The client identifier is a UTF-8 string [MQTT-3.1.3-4]; the broker judges its content.
    let client_id = reader.string()?;
    let will = if flags & CONNECT_WILL != 0 {
        // The will topic is a UTF-8 string [MQTT-3.1.3-10] naming a topic (no wildcards).
        let topic = reader.topic_name()?;
        let payload = reader.binary()?;
        // Cannot fail: check_connect_flags refused will QoS 3.
        let qos = QoS::from_u8((flags >> CONNECT_WILL_QOS_SHIFT) & 0b11).expect("not QoS 3");
        Some(LastWill { topic, payload, qos, retain: flags & CONNECT_WILL_RETAIN != 0 })
    } else {
        None
    };
    // The user name is a UTF-8 string [MQTT-3.1.3-11]; the password is binary data.
    let username = if flags & CONNECT_USERNAME != 0 { Some(reader.string()?) } else { None };
    let password = if flags & CONNECT_PASSWORD != 0 { Some(reader.binary()?) } else { None };
    Ok(Connect {
        protocol,
        clean_session: flags & CONNECT_CLEAN_SESSION != 0,
        keep_alive_secs,
        client_id,
        will,
        username,
        password,
    })
}

/// Reads the protocol name and level. An unsupported level of a known protocol is reported
/// before anything after it is read: the broker must answer it with CONNACK 0x01
/// [MQTT-3.1.2-2], whatever the rest of the packet looks like in that other version.
fn decode_protocol(reader: &mut Reader) -> Result<ProtocolVersion, DecodeError> {
    let name = reader.binary()?;
    let level = reader.u8()?;
    match (&name[..], level) {
        (b"MQTT", 4) => Ok(ProtocolVersion::V311),
        (b"MQIsdp", 3) => Ok(ProtocolVersion::V31),
        (b"MQTT" | b"MQIsdp", other) => Err(DecodeError::UnsupportedProtocolLevel(other)),
        _ => Err(DecodeError::InvalidProtocolName),
    }
}

fn check_connect_flags(flags: u8) -> Result<(), DecodeError> {
    if flags & CONNECT_RESERVED != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let will_qos = (flags >> CONNECT_WILL_QOS_SHIFT) & 0b11;
    if flags & CONNECT_WILL == 0 {
        if will_qos != 0 {
            return Err(DecodeError::WillQoSWithoutWill);
        }
        if flags & CONNECT_WILL_RETAIN != 0 {
            return Err(DecodeError::WillRetainWithoutWill);
        }
    } else if will_qos == 3 {
        return Err(DecodeError::InvalidWillQoS);
    }
    if flags & CONNECT_PASSWORD != 0 && flags & CONNECT_USERNAME == 0 {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    Ok(())
}

fn decode_connack(reader: &mut Reader) -> Result<Connack, DecodeError> {
    let flags = reader.u8()?;
    let code = reader.u8()?;
    if flags & !0x01 != 0 {
        return Err(DecodeError::ConnackReservedBits);
    }
    let code =
        ConnectReturnCode::from_u8(code).ok_or(DecodeError::InvalidConnectReturnCode(code))?;
    let session_present = flags & 0x01 != 0;
    if session_present && code != ConnectReturnCode::Accepted {
        return Err(DecodeError::SessionPresentWithRefusal);
    }
    Ok(Connack { session_present, code })
}

fn decode_subscribe(reader: &mut Reader) -> Result<Subscribe, DecodeError> {
    let packet_id = reader.packet_id()?;
    let mut filters = Vec::new();
    while !reader.is_empty() {
        let filter = reader.topic_filter()?;
        let requested = reader.u8()?;
        // Bits 7-2 are reserved and QoS 3 does not exist [MQTT-3-8.3-4].
        let qos = match QoS::from_u8(requested) {
            Some(qos) => qos,
            None => return Err(DecodeError::InvalidRequestedQoS(requested)),
        };
        filters.push((filter, qos));
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscribe);
    }
    Ok(Subscribe { packet_id, filters })
}

fn decode_suback(reader: &mut Reader) -> Result<Suback, DecodeError> {
    let packet_id = reader.packet_id()?;
    let codes = reader.rest();
    if codes.is_empty() {
        return Err(DecodeError::EmptySuback);
    }
    let return_codes = codes
        .iter()
        .map(|&code| SubackCode::from_u8(code).ok_or(DecodeError::InvalidSubackCode(code)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Suback { packet_id, return_codes })
}

fn decode_unsubscribe(reader: &mut Reader) -> Result<Unsubscribe, DecodeError> {
    let packet_id = reader.packet_id()?;
    let mut filters = Vec::new();
    while !reader.is_empty() {
        filters.push(reader.topic_filter()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyUnsubscribe);
    }
    Ok(Unsubscribe { packet_id, filters })
}

/// A cursor over one packet's frozen body. Every field it returns is a slice of that body.
struct Reader {
    body: Bytes,
    position: usize,
}

impl Reader {
    fn new(body: Bytes) -> Self {
        Self { body, position: 0 }
    }

    fn is_empty(&self) -> bool {
        self.position == self.body.len()
    }

    /// The next `count` bytes as a range of the body, or `Truncated`.
    fn take(&mut self, count: usize) -> Result<std::ops::Range<usize>, DecodeError> {
        let start = self.position;
        let end = start.checked_add(count).filter(|&end| end <= self.body.len());
        let end = end.ok_or(DecodeError::Truncated)?;
        self.position = end;
        Ok(start..end)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let range = self.take(1)?;
        Ok(self.body[range.start])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let range = self.take(2)?;
        Ok(u16::from_be_bytes([self.body[range.start], self.body[range.start + 1]]))
    }

    /// A non-zero packet identifier [MQTT-2.3.1-1].
    fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        PacketId::new(self.u16()?).ok_or(DecodeError::ZeroPacketId)
    }

    /// Two-byte length, then that many bytes [MQTT 3.1.1 section 1.5.3].
    fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let length = usize::from(self.u16()?);
        let range = self.take(length)?;
        Ok(self.body.slice(range))
    }

    fn string(&mut self) -> Result<Utf8Bytes, DecodeError> {
        Utf8Bytes::try_new(self.binary()?)
    }

    fn topic_name(&mut self) -> Result<TopicName, DecodeError> {
        TopicName::from_bytes(self.binary()?)
    }

    fn topic_filter(&mut self) -> Result<TopicFilter, DecodeError> {
        TopicFilter::new(self.string()?)
    }

    /// Everything after the cursor (a PUBLISH payload, SUBACK's return codes).
    fn rest(&mut self) -> Bytes {
        let start = self.position;
        self.position = self.body.len();
        self.body.slice(start..)
    }

    /// Refuses bytes after the last field.
    fn finish(self) -> Result<(), DecodeError> {
        match self.body.len() - self.position {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes(extra)),
        }
    }
}

#[cfg(test)]
mod tests;
