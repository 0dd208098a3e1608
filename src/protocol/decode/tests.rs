//! Unit tests of the decoder: examples of every packet type, the incremental contract, the
//! size limit, zero copy, and one test per rule a packet can break (each citing its
//! normative statement).

use bytes::{BufMut, Bytes, BytesMut};

use super::decode;
use crate::protocol::encode::{encode, encoded_len, REMAINING_LENGTH_MAX};
use crate::protocol::error::DecodeError;
use crate::protocol::packet::*;
use crate::protocol::topic::{TopicFilter, TopicName};

const LIMIT_BYTES: usize = 1 << 20;

fn pid(value: u16) -> PacketId {
    PacketId::new(value).expect("test ids are non-zero")
}

fn filter(text: &str) -> TopicFilter {
    TopicFilter::try_from(text).expect("test filters are valid")
}

/// A packet with first byte `first` and body `body`, its remaining length computed.
fn raw(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() <= REMAINING_LENGTH_MAX);
    let mut out = vec![first];
    let mut length = body.len();
    loop {
        let byte = (length % 128) as u8;
        length /= 128;
        out.push(if length > 0 { byte | 0x80 } else { byte });
        if length == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed MQTT string or binary field.
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Decodes `bytes` that hold exactly one packet, checking that all of them were consumed.
fn decode_one(bytes: &[u8]) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, LIMIT_BYTES)?.expect("a whole packet was given");
    assert!(buf.is_empty(), "{} bytes left after one packet", buf.len());
    Ok(packet)
}

fn encoded(packet: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, &mut out);
    out.to_vec()
}

fn publish(qos: QoS, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: true,
        topic: TopicName::from_static("sensors/room-1/temperature"),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(7)),
        payload: Bytes::from_static(payload),
    })
}

fn connect_with_everything() -> Connect {
    Connect {
        protocol: ProtocolVersion::V311,
        clean_session: true,
        keep_alive_secs: 60,
        client_id: Utf8Bytes::from_static("client-1"),
        will: Some(LastWill {
            topic: TopicName::from_static("clients/client-1/status"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        username: Some(Utf8Bytes::from_static("user")),
        password: Some(Bytes::from_static(b"\x00\xffsecret")),
    }
}

/// One example of each of the 14 packet types.
fn examples() -> Vec<Packet> {
    vec![
        Packet::Connect(Box::new(connect_with_everything())),
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V31,
            clean_session: false,
            keep_alive_secs: 0,
            client_id: Utf8Bytes::default(),
            will: None,
            username: Some(Utf8Bytes::from_static("only-user")),
            password: None,
        })),
        Packet::Connack(Connack { session_present: true, code: ConnectReturnCode::Accepted }),
        Packet::Connack(Connack { session_present: false, code: ConnectReturnCode::NotAuthorized }),
        publish(QoS::AtMostOnce, b"21.5"),
        publish(QoS::AtLeastOnce, b""),
        publish(QoS::ExactlyOnce, &[0u8; 300]),
        Packet::Puback(pid(1)),
        Packet::Pubrec(pid(2)),
        Packet::Pubrel(pid(3)),
        Packet::Pubcomp(pid(u16::MAX)),
        Packet::Subscribe(Subscribe {
            packet_id: pid(10),
            filters: vec![(filter("a/+/c"), QoS::AtMostOnce), (filter("#"), QoS::ExactlyOnce)],
        }),
        Packet::Suback(Suback {
            packet_id: pid(10),
            return_codes: vec![SubackCode::Granted(QoS::AtLeastOnce), SubackCode::Failure],
        }),
        Packet::Unsubscribe(Unsubscribe { packet_id: pid(11), filters: vec![filter("a/#")] }),
        Packet::Unsuback(pid(11)),
        Packet::Pingreq,
        Packet::Pingresp,
        Packet::Disconnect,
    ]
}

#[test]
fn every_packet_type_round_trips() {
    let examples = examples();
    let mut names: Vec<&str> = examples.iter().map(Packet::name).collect();
    names.dedup();
    assert_eq!(names.len(), 14, "the examples cover all 14 types");
    for packet in examples {
        let bytes = encoded(&packet);
        assert_eq!(bytes.len(), encoded_len(&packet), "{}", packet.name());
        assert_eq!(decode_one(&bytes), Ok(packet));
    }
}

#[test]
fn empty_buffer_needs_more_bytes() {
    let mut buf = BytesMut::new();
    assert_eq!(decode(&mut buf, LIMIT_BYTES), Ok(None));
}

/// Every proper prefix of a packet is "need more bytes" and consumes nothing; the whole
/// packet then decodes.
#[test]
fn every_prefix_needs_more_bytes_and_consumes_nothing() {
    for packet in examples() {
        let bytes = encoded(&packet);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode(&mut buf, LIMIT_BYTES), Ok(None), "{} cut at {cut}", packet.name());
            assert_eq!(&buf[..], &bytes[..cut], "nothing consumed");
        }
    }
}

/// Several packets in one buffer come out one by one, in order, each taking only its bytes.
#[test]
fn back_to_back_packets_decode_in_order() {
    let packets = examples();
    let mut buf = BytesMut::new();
    for packet in &packets {
        encode(packet, &mut buf);
    }
    buf.put_slice(&[0x30]); // The first byte of one more packet.
    for packet in &packets {
        assert_eq!(decode(&mut buf, LIMIT_BYTES).as_ref(), Ok(&Some(packet.clone())));
    }
    assert_eq!(decode(&mut buf, LIMIT_BYTES), Ok(None));
    assert_eq!(&buf[..], &[0x30]);
}

/// The topic and payload of a decoded PUBLISH point into the receive buffer's storage.
#[test]
fn publish_fields_are_slices_of_the_receive_buffer() {
    let bytes = encoded(&publish(QoS::AtLeastOnce, &[5u8; 1024]));
    let mut buf = BytesMut::with_capacity(bytes.len() + 64);
    buf.put_slice(&bytes);
    let storage = buf.as_ptr() as usize..buf.as_ptr() as usize + bytes.len();
    let Some(Packet::Publish(publish)) = decode(&mut buf, LIMIT_BYTES).expect("valid") else {
        panic!("a PUBLISH was encoded");
    };
    for (what, slice) in [("payload", &publish.payload[..]), ("topic", publish.topic.as_bytes())] {
        let start = slice.as_ptr() as usize;
        assert!(storage.contains(&start), "{what} starts outside the receive buffer");
        assert!(start + slice.len() <= storage.end, "{what} ends outside the receive buffer");
    }
    assert_eq!(publish.payload.len(), 1024);
}

/// The limit is enforced from the fixed header alone: a 5-byte prefix announcing a body of
/// 2 MB is refused before any of the body has arrived.
#[test]
fn oversized_packet_is_refused_before_its_body_arrives() {
    let header = raw(0x30, &vec![0u8; 2_000_000]);
    let mut buf = BytesMut::from(&header[..5]);
    assert_eq!(
        decode(&mut buf, LIMIT_BYTES),
        Err(DecodeError::PacketTooLarge { length: 2_000_004, max: LIMIT_BYTES })
    );
}

/// The limit counts the whole packet: a packet exactly at the limit passes, one byte more
/// does not.
#[test]
fn limit_counts_the_whole_packet() {
    let bytes = encoded(&publish(QoS::AtMostOnce, &[1u8; 100]));
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(decode(&mut buf, bytes.len()), Ok(Some(Packet::Publish(_)))));
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, bytes.len() - 1),
        Err(DecodeError::PacketTooLarge { length: bytes.len(), max: bytes.len() - 1 })
    );
}

/// Section 2.2.3: the remaining length takes at most 4 bytes. A fourth byte with its
/// continuation bit set is refused at once, without waiting for a fifth.
#[test]
fn fifth_remaining_length_byte_is_refused_at_once() {
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x80][..]);
    assert_eq!(decode(&mut buf, usize::MAX), Err(DecodeError::RemainingLengthTooLong));
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(decode(&mut buf, usize::MAX), Ok(None), "a fourth byte may still come");
}

/// The largest remaining length, 268,435,455, is accepted by the header parser (and then
/// refused only by the size limit).
#[test]
fn largest_remaining_length_is_parsed() {
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(decode(&mut buf, usize::MAX), Ok(None));
    assert_eq!(
        decode(&mut buf, LIMIT_BYTES),
        Err(DecodeError::PacketTooLarge { length: 5 + REMAINING_LENGTH_MAX, max: LIMIT_BYTES })
    );
}

// ---- One test per rule a packet can break -------------------------------------------------

fn refused(bytes: &[u8]) -> DecodeError {
    match decode_one(bytes) {
        Err(error) => error,
        Ok(packet) => panic!("{packet:?} was accepted"),
    }
}

/// A CONNECT body: protocol name and level, flags, keepalive 30, then `payload`.
fn connect_body(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = field(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&30u16.to_be_bytes());
    body.extend_from_slice(payload);
    body
}

fn connect_packet(flags: u8, payload: &[u8]) -> Vec<u8> {
    raw(0x10, &connect_body(b"MQTT", 4, flags, payload))
}

/// A PUBLISH with first byte `first`, topic `topic`, packet id 1 when QoS > 0, payload "x".
fn publish_packet(first: u8, topic: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    if first & 0b0110 != 0 {
        body.extend_from_slice(&1u16.to_be_bytes());
    }
    body.push(b'x');
    raw(first, &body)
}

fn subscribe_packet(filter: &[u8], requested: u8) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(&field(filter));
    body.push(requested);
    raw(0x82, &body)
}

#[test]
fn reserved_packet_types_are_refused() {
    // Section 2.2.1, table 2.1: types 0 and 15 are reserved.
    assert_eq!(refused(&[0x00, 0x00]), DecodeError::ReservedPacketType(0));
    assert_eq!(refused(&[0xF0, 0x00]), DecodeError::ReservedPacketType(15));
}

#[test]
fn reserved_flags_must_be_zero_mqtt_2_2_2_1_and_2_2_2_2() {
    // [MQTT-2.2.2-1] [MQTT-2.2.2-2]: every type but PUBLISH, PUBREL, SUBSCRIBE and
    // UNSUBSCRIBE has flags 0000 (for DISCONNECT also [MQTT-3.14.1-1]); a packet with other
    // flags is refused. Checked from the first byte alone, before the length arrives.
    for packet_type in [1u8, 2, 4, 5, 7, 9, 11, 12, 13, 14] {
        for flags in 1..16u8 {
            let mut buf = BytesMut::from(&[(packet_type << 4) | flags][..]);
            assert_eq!(
                decode(&mut buf, LIMIT_BYTES),
                Err(DecodeError::ReservedFlags { packet_type, flags })
            );
        }
    }
}

#[test]
fn pubrel_subscribe_unsubscribe_flags_must_be_0010_mqtt_3_6_1_1_3_8_1_1_3_10_1_1() {
    // [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1], instances of [MQTT-2.2.2-1].
    for packet_type in [6u8, 8, 10] {
        for flags in (0..16u8).filter(|&flags| flags != 0b0010) {
            let mut buf = BytesMut::from(&[(packet_type << 4) | flags][..]);
            assert_eq!(
                decode(&mut buf, LIMIT_BYTES),
                Err(DecodeError::ReservedFlags { packet_type, flags })
            );
        }
    }
}

#[test]
fn publish_qos_3_is_refused_mqtt_3_3_1_4() {
    // [MQTT-3.3.1-4]: refused from the first byte alone.
    let mut buf = BytesMut::from(&[0x36][..]);
    assert_eq!(decode(&mut buf, LIMIT_BYTES), Err(DecodeError::InvalidQoS));
}

#[test]
fn publish_dup_with_qos_0_is_refused_mqtt_3_3_1_2() {
    // [MQTT-3.3.1-2]: DUP must be 0 on every QoS 0 PUBLISH.
    assert_eq!(refused(&publish_packet(0x38, b"t")), DecodeError::DupWithQoS0);
    assert!(decode_one(&publish_packet(0x3A, b"t")).is_ok(), "DUP with QoS 1 is fine");
}

#[test]
fn publish_topic_must_not_be_empty_mqtt_4_7_3_1() {
    assert_eq!(refused(&publish_packet(0x30, b"")), DecodeError::EmptyTopic);
}

#[test]
fn publish_topic_must_not_hold_wildcards_mqtt_3_3_2_2() {
    for topic in [&b"a/+"[..], b"#", b"a/b#"] {
        assert_eq!(refused(&publish_packet(0x30, topic)), DecodeError::WildcardInTopicName);
    }
}

#[test]
fn strings_must_be_well_formed_utf8_mqtt_1_5_3_1() {
    // [MQTT-1.5.3-1]: an invalid byte, an overlong encoding, a truncated sequence and an
    // encoded surrogate (U+D800) are all refused.
    for topic in [&b"a\xFFb"[..], b"\xC0\xAF", b"\xE2\x82", b"\xED\xA0\x80"] {
        assert_eq!(refused(&publish_packet(0x30, topic)), DecodeError::InvalidUtf8);
    }
}

#[test]
fn strings_must_not_hold_u0000_mqtt_1_5_3_2() {
    assert_eq!(refused(&publish_packet(0x30, b"a\0b")), DecodeError::NullCharacter);
    assert_eq!(refused(&subscribe_packet(b"a/\0", 0)), DecodeError::NullCharacter);
    let client_id = field(b"id\0");
    assert_eq!(refused(&connect_packet(0x02, &client_id)), DecodeError::NullCharacter);
}

#[test]
fn packet_ids_must_not_be_zero_mqtt_2_3_1_1() {
    // [MQTT-2.3.1-1]: SUBSCRIBE, UNSUBSCRIBE and QoS > 0 PUBLISH carry a non-zero id, and so
    // do the acknowledgements that echo it.
    let mut zero_publish = field(b"t");
    zero_publish.extend_from_slice(&[0, 0]);
    assert_eq!(refused(&raw(0x32, &zero_publish)), DecodeError::ZeroPacketId);
    for first in [0x40, 0x50, 0x62, 0x70, 0xB0] {
        assert_eq!(refused(&raw(first, &[0, 0])), DecodeError::ZeroPacketId, "{first:#x}");
    }
    let mut zero_subscribe = vec![0, 0];
    zero_subscribe.extend_from_slice(&field(b"a"));
    zero_subscribe.push(0);
    assert_eq!(refused(&raw(0x82, &zero_subscribe)), DecodeError::ZeroPacketId);
    assert_eq!(refused(&raw(0xA2, &zero_subscribe[..5])), DecodeError::ZeroPacketId);
    assert_eq!(refused(&raw(0x90, &[0, 0, 0])), DecodeError::ZeroPacketId);
}

#[test]
fn filters_with_misplaced_multi_level_wildcard_are_refused_mqtt_4_7_1_2() {
    for text in [&b"a/#/b"[..], b"a#", b"#/"] {
        assert_eq!(refused(&subscribe_packet(text, 0)), DecodeError::InvalidMultiLevelWildcard);
    }
}

#[test]
fn filters_with_misplaced_single_level_wildcard_are_refused_mqtt_4_7_1_3() {
    for text in [&b"a+"[..], b"a/+b", b"++"] {
        assert_eq!(refused(&subscribe_packet(text, 0)), DecodeError::InvalidSingleLevelWildcard);
    }
}

#[test]
fn empty_filter_is_refused_mqtt_4_7_3_1() {
    assert_eq!(refused(&subscribe_packet(b"", 0)), DecodeError::EmptyFilter);
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(&field(b""));
    assert_eq!(refused(&raw(0xA2, &body)), DecodeError::EmptyFilter);
}

#[test]
fn subscribe_without_filters_is_refused_mqtt_3_8_3_3() {
    assert_eq!(refused(&raw(0x82, &[0, 1])), DecodeError::EmptySubscribe);
}

#[test]
fn unsubscribe_without_filters_is_refused_mqtt_3_10_3_2() {
    assert_eq!(refused(&raw(0xA2, &[0, 1])), DecodeError::EmptyUnsubscribe);
}

#[test]
fn requested_qos_reserved_bits_are_refused_mqtt_3_8_3_4() {
    // The specification spells this id [MQTT-3-8.3-4]: bits 7-2 reserved, QoS 3 invalid.
    for requested in [0x03u8, 0x04, 0x80, 0xFF] {
        assert_eq!(
            refused(&subscribe_packet(b"a", requested)),
            DecodeError::InvalidRequestedQoS(requested)
        );
    }
}

#[test]
fn unknown_protocol_name_is_refused_mqtt_3_1_2_1() {
    for name in [&b"MQTX"[..], b"mqtt", b"", b"MQIsdpX"] {
        let packet = raw(0x10, &connect_body(name, 4, 0x02, &field(b"id")));
        assert_eq!(refused(&packet), DecodeError::InvalidProtocolName);
    }
}

#[test]
fn unsupported_level_of_a_known_protocol_asks_for_connack_1_mqtt_3_1_2_2() {
    // [MQTT-3.1.2-2]: the broker answers CONNACK 0x01. The rest of the packet is not judged
    // (here its flags would be refused), because another level may lay it out differently.
    for (name, level) in [(&b"MQTT"[..], 5u8), (b"MQTT", 3), (b"MQIsdp", 4)] {
        let packet = raw(0x10, &connect_body(name, level, 0xFF, &[]));
        let error = refused(&packet);
        assert_eq!(error, DecodeError::UnsupportedProtocolLevel(level));
        assert!(error.wants_protocol_version_refusal());
    }
}

#[test]
fn mqtt_3_1_connect_is_accepted() {
    let packet = raw(0x10, &connect_body(b"MQIsdp", 3, 0x02, &field(b"old-client")));
    let Ok(Packet::Connect(connect)) = decode_one(&packet) else {
        panic!("MQIsdp level 3 is MQTT 3.1");
    };
    assert_eq!(connect.protocol, ProtocolVersion::V31);
    assert_eq!(connect.client_id.as_str(), "old-client");
}

#[test]
fn connect_reserved_flag_is_refused_mqtt_3_1_2_3() {
    assert_eq!(refused(&connect_packet(0x03, &field(b"id"))), DecodeError::ConnectReservedFlag);
}

#[test]
fn will_qos_without_will_flag_is_refused_mqtt_3_1_2_11_and_3_1_2_13() {
    for qos_bits in [0x08, 0x10, 0x18] {
        let packet = connect_packet(0x02 | qos_bits, &field(b"id"));
        assert_eq!(refused(&packet), DecodeError::WillQoSWithoutWill);
    }
}

#[test]
fn will_retain_without_will_flag_is_refused_mqtt_3_1_2_11_and_3_1_2_15() {
    assert_eq!(refused(&connect_packet(0x22, &field(b"id"))), DecodeError::WillRetainWithoutWill);
}

#[test]
fn will_qos_3_is_refused_mqtt_3_1_2_14() {
    let mut payload = field(b"id");
    payload.extend_from_slice(&field(b"will/topic"));
    payload.extend_from_slice(&field(b"bye"));
    assert_eq!(refused(&connect_packet(0x1E, &payload)), DecodeError::InvalidWillQoS);
    assert!(decode_one(&connect_packet(0x16, &payload)).is_ok(), "will QoS 2 is fine");
}

#[test]
fn will_topic_must_be_a_topic_name_mqtt_3_1_3_10() {
    let mut payload = field(b"id");
    payload.extend_from_slice(&field(b"will/#"));
    payload.extend_from_slice(&field(b"bye"));
    assert_eq!(refused(&connect_packet(0x06, &payload)), DecodeError::WildcardInTopicName);
}

#[test]
fn password_without_username_is_refused_mqtt_3_1_2_22() {
    let mut payload = field(b"id");
    payload.extend_from_slice(&field(b"secret"));
    assert_eq!(refused(&connect_packet(0x42, &payload)), DecodeError::PasswordWithoutUsername);
}

#[test]
fn username_and_password_flags_require_their_fields_mqtt_3_1_2_19_and_3_1_2_21() {
    // A flag set with its field missing leaves the body too short.
    let payload = field(b"id");
    assert_eq!(refused(&connect_packet(0x82, &payload)), DecodeError::Truncated);
    let mut with_user = payload.clone();
    with_user.extend_from_slice(&field(b"user"));
    assert_eq!(refused(&connect_packet(0xC2, &with_user)), DecodeError::Truncated);
    assert!(decode_one(&connect_packet(0x82, &with_user)).is_ok());
}

#[test]
fn bytes_after_the_last_field_are_refused() {
    let mut connect = encoded(&Packet::Connect(Box::new(connect_with_everything())));
    connect[1] += 1;
    connect.push(0);
    assert_eq!(refused(&connect), DecodeError::TrailingBytes(1));
    assert_eq!(refused(&raw(0x40, &[0, 1, 9, 9])), DecodeError::TrailingBytes(2));
    assert_eq!(refused(&raw(0xC0, &[0])), DecodeError::TrailingBytes(1));
    assert_eq!(refused(&raw(0xE0, &[1, 2, 3])), DecodeError::TrailingBytes(3));
    assert_eq!(refused(&raw(0x20, &[0, 0, 0])), DecodeError::TrailingBytes(1));
}

/// A remaining length shorter than the fields it announces: every way of cutting a valid
/// body short (and fixing up the length) is `Truncated`, never a panic or a wrong packet.
#[test]
fn truncated_bodies_are_refused() {
    for packet in examples() {
        let bytes = encoded(&packet);
        let header_bytes = bytes.len() - crate::protocol::encode::remaining_length(&packet);
        let body = &bytes[header_bytes..];
        for cut in 0..body.len() {
            let error = match decode_one(&raw(bytes[0], &body[..cut])) {
                Err(error) => error,
                Ok(shorter) => {
                    // A PUBLISH payload, or a list cut between two entries, may legitimately
                    // be shorter; nothing else may decode once cut.
                    assert!(
                        matches!(
                            packet,
                            Packet::Publish(_)
                                | Packet::Subscribe(_)
                                | Packet::Suback(_)
                                | Packet::Unsubscribe(_)
                        ),
                        "{} cut to {cut} bytes decoded",
                        packet.name()
                    );
                    assert_ne!(shorter, packet);
                    continue;
                }
            };
            assert!(
                matches!(
                    error,
                    DecodeError::Truncated
                        | DecodeError::EmptySubscribe
                        | DecodeError::EmptyUnsubscribe
                        | DecodeError::EmptySuback
                ),
                "{} cut to {cut} bytes: {error:?}",
                packet.name()
            );
        }
    }
}

#[test]
fn connack_reserved_bits_are_refused() {
    // Section 3.2.2.1: bits 7-1 of the acknowledge flags are reserved and 0.
    assert_eq!(refused(&raw(0x20, &[0x02, 0])), DecodeError::ConnackReservedBits);
}

#[test]
fn connack_reserved_return_codes_are_refused() {
    // Section 3.2.2.3, table 3.1: return codes 6-255 are reserved.
    for code in [6u8, 0x80, 0xFF] {
        assert_eq!(refused(&raw(0x20, &[0, code])), DecodeError::InvalidConnectReturnCode(code));
    }
}

#[test]
fn connack_refusal_with_session_present_is_refused_mqtt_3_2_2_4() {
    assert_eq!(refused(&raw(0x20, &[0x01, 0x05])), DecodeError::SessionPresentWithRefusal);
}

#[test]
fn suback_reserved_return_codes_are_refused_mqtt_3_9_3_2() {
    for code in [0x03u8, 0x81, 0xFF] {
        assert_eq!(refused(&raw(0x90, &[0, 1, 0, code])), DecodeError::InvalidSubackCode(code));
    }
}

#[test]
fn suback_without_return_codes_is_refused_mqtt_3_8_4_5() {
    // [MQTT-3.8.4-5]: one return code per filter, and a SUBSCRIBE has at least one.
    assert_eq!(refused(&raw(0x90, &[0, 1])), DecodeError::EmptySuback);
}

// ---- Conformance: statements of the CONNECT payload, strings and topics -------------------

#[test]
fn connect_payload_fields_are_read_in_their_order_mqtt_3_1_3_1() {
    // [MQTT-3.1.3-1]: client id, will topic, will message, user name, password.
    let mut payload = Vec::new();
    for text in [&b"id"[..], b"will/topic", b"will message", b"user", b"password"] {
        payload.extend_from_slice(&field(text));
    }
    // User name, password, will (QoS 0), clean session.
    let Ok(Packet::Connect(connect)) = decode_one(&connect_packet(0xC6, &payload)) else {
        panic!("a CONNECT with every field is accepted");
    };
    let will = connect.will.expect("the will flag is set");
    assert_eq!(connect.client_id.as_str(), "id");
    assert_eq!((will.topic.as_str(), will.payload.as_ref()), ("will/topic", &b"will message"[..]));
    assert_eq!(connect.username.as_ref().map(Utf8Bytes::as_str), Some("user"));
    assert_eq!(connect.password.as_deref(), Some(&b"password"[..]));
}

#[test]
fn a_field_whose_flag_is_0_is_refused_mqtt_3_1_2_18_and_3_1_2_20() {
    // A user name with the user name flag 0, and a password with the password flag 0, are
    // bytes after the last field the flags announce.
    let mut with_user = field(b"id");
    with_user.extend_from_slice(&field(b"user"));
    assert_eq!(refused(&connect_packet(0x02, &with_user)), DecodeError::TrailingBytes(6));
    let mut with_password = with_user.clone();
    with_password.extend_from_slice(&field(b"pw"));
    assert_eq!(refused(&connect_packet(0x82, &with_password)), DecodeError::TrailingBytes(4));
}

#[test]
fn the_client_id_is_present_first_and_utf8_mqtt_3_1_3_3_and_4() {
    assert_eq!(refused(&connect_packet(0x02, &[])), DecodeError::Truncated, "[MQTT-3.1.3-3]");
    assert_eq!(refused(&connect_packet(0x02, &field(b"\xFFid"))), DecodeError::InvalidUtf8);
}

#[test]
fn the_user_name_is_utf8_mqtt_3_1_3_11() {
    let mut payload = field(b"id");
    payload.extend_from_slice(&field(b"us\xC0\xAFer"));
    assert_eq!(refused(&connect_packet(0x82, &payload)), DecodeError::InvalidUtf8);
}

#[test]
fn the_topic_name_is_present_first_and_utf8_mqtt_3_3_2_1() {
    assert_eq!(refused(&raw(0x30, &[0])), DecodeError::Truncated);
    assert_eq!(refused(&publish_packet(0x32, b"t/\xFF")), DecodeError::InvalidUtf8);
}

#[test]
fn subscribe_and_unsubscribe_filters_are_utf8_mqtt_3_8_3_1_and_3_10_3_1() {
    assert_eq!(refused(&subscribe_packet(b"a/\xFF", 0)), DecodeError::InvalidUtf8);
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(&field(b"\xED\xA0\x80/#"));
    assert_eq!(refused(&raw(0xA2, &body)), DecodeError::InvalidUtf8);
}

#[test]
fn wildcards_stand_in_filters_never_in_topic_names_mqtt_4_7_1_1() {
    assert_eq!(refused(&publish_packet(0x30, b"a/+/c")), DecodeError::WildcardInTopicName);
    let Ok(Packet::Subscribe(subscribe)) = decode_one(&subscribe_packet(b"a/+/#", 1)) else {
        panic!("a filter with wildcards is accepted");
    };
    assert_eq!(subscribe.filters, vec![(filter("a/+/#"), QoS::AtLeastOnce)]);
}

#[test]
fn topic_names_and_filters_hold_no_u0000_mqtt_4_7_3_2() {
    assert_eq!(refused(&publish_packet(0x30, b"\0")), DecodeError::NullCharacter);
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(&field(b"a/\0/b"));
    assert_eq!(refused(&raw(0xA2, &body)), DecodeError::NullCharacter);
}

#[test]
fn topic_names_and_filters_of_65535_bytes_are_accepted_mqtt_4_7_3_3() {
    // The 16-bit length prefix cannot say more than 65535; the longest it can say passes.
    let long = vec![b'a'; usize::from(u16::MAX)];
    let Ok(Packet::Publish(publish)) = decode_one(&publish_packet(0x30, &long)) else {
        panic!("a 65535-byte topic name is accepted");
    };
    assert_eq!(publish.topic.as_bytes().len(), 65_535);
    let Ok(Packet::Subscribe(subscribe)) = decode_one(&subscribe_packet(&long, 0)) else {
        panic!("a 65535-byte filter is accepted");
    };
    assert_eq!(subscribe.filters[0].0.as_str().len(), 65_535);
}
