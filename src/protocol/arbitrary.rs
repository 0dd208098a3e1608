//! Proptest strategies for every MQTT value the codec handles, for property tests and fuzzing.
//!
//! Compiled for this crate's tests, and for other crates with the `proptest` feature.
//!
//! Invariant: every value generated here is valid, so the decoder must accept its encoding and
//! give back the identical value. Strings mix ASCII (with the separators and wildcards that
//! make topics interesting) and arbitrary non-NUL Unicode, so multi-byte UTF-8 is exercised.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use super::packet::*;
use super::topic::{TopicFilter, TopicName};

/// Characters that may appear in any MQTT string: everything but U+0000 [MQTT-1.5.3-2].
pub fn any_text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::char::range('!', '~'),
        1 => any::<char>().prop_filter("MQTT strings hold no U+0000", |&c| c != '\0'),
    ]
}

/// A string of up to `max_chars` characters, without U+0000.
pub fn any_text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any_text_char(), 0..=max_chars).prop_map(|chars| chars.into_iter().collect())
}

pub fn any_utf8(max_chars: usize) -> impl Strategy<Value = Utf8Bytes> {
    any_text(max_chars).prop_map(Utf8Bytes::from)
}

/// One topic level: any text without `/`, `+` or `#` (possibly empty).
fn any_plain_level() -> impl Strategy<Value = String> {
    any_text(6).prop_map(|text| text.replace(['/', '+', '#'], ""))
}

/// A valid topic name: non-empty, no wildcards [MQTT-4.7.3-1] [MQTT-3.3.2-2].
pub fn any_topic_name() -> impl Strategy<Value = TopicName> {
    vec(any_plain_level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are non-empty", |text| !text.is_empty())
        // Cannot fail: the text is non-empty and free of wildcards and U+0000.
        .prop_map(|text| TopicName::try_from(text.as_str()).expect("valid topic name"))
}

/// A valid topic filter: `+` alone in its level, `#` alone and last [MQTT-4.7.1-2]
/// [MQTT-4.7.1-3].
pub fn any_topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![3 => any_plain_level(), 1 => Just("+".to_owned())];
    (vec(level, 1..5), any::<bool>())
        .prop_map(|(mut levels, multi_level)| {
            if multi_level {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
        .prop_filter("topic filters are non-empty", |text| !text.is_empty())
        // Cannot fail: the levels were built to place the wildcards correctly.
        .prop_map(|text| TopicFilter::try_from(text.as_str()).expect("valid topic filter"))
}

pub fn any_qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

pub fn any_packet_id() -> impl Strategy<Value = PacketId> {
    // Cannot fail: the range excludes 0.
    (1..=u16::MAX).prop_map(|id| PacketId::new(id).expect("non-zero"))
}

/// Payloads: mostly short, sometimes past the size at which `OutBuf` shares them.
pub fn any_payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..64),
        1 => vec(any::<u8>(), 500..1500),
    ]
    .prop_map(Bytes::from)
}

pub fn any_last_will() -> impl Strategy<Value = LastWill> {
    (any_topic_name(), any_payload(), any_qos(), any::<bool>())
        .prop_map(|(topic, payload, qos, retain)| LastWill { topic, payload, qos, retain })
}

/// A CONNECT; a password only comes with a user name [MQTT-3.1.2-22].
pub fn any_connect() -> impl Strategy<Value = Connect> {
    let protocol = prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V31)];
    let credentials = prop::option::of((
        any_utf8(12),
        prop::option::of(vec(any::<u8>(), 0..24).prop_map(Bytes::from)),
    ));
    (
        protocol,
        any::<bool>(),
        any::<u16>(),
        any_utf8(23),
        prop::option::of(any_last_will()),
        credentials,
    )
        .prop_map(
            |(protocol, clean_session, keep_alive_secs, client_id, will, credentials)| {
                let (username, password) = match credentials {
                    Some((username, password)) => (Some(username), password),
                    None => (None, None),
                };
                Connect {
                    protocol,
                    clean_session,
                    keep_alive_secs,
                    client_id,
                    will,
                    username,
                    password,
                }
            },
        )
}

/// A CONNACK; a refusal never has Session Present [MQTT-3.2.2-4].
pub fn any_connack() -> impl Strategy<Value = Connack> {
    // Cannot fail: 0..=5 are the defined return codes.
    (any::<bool>(), 0u8..=5).prop_map(|(session_present, code)| {
        let code = ConnectReturnCode::from_u8(code).expect("defined return code");
        Connack { session_present: session_present && code == ConnectReturnCode::Accepted, code }
    })
}

/// A PUBLISH: a packet id exactly at QoS 1 and 2, DUP never at QoS 0 [MQTT-3.3.1-2].
pub fn any_publish() -> impl Strategy<Value = Publish> {
    (any_qos(), any::<bool>(), any::<bool>(), any_topic_name(), any_packet_id(), any_payload())
        .prop_map(|(qos, dup, retain, topic, packet_id, payload)| {
            let at_least_once = qos != QoS::AtMostOnce;
            Publish {
                dup: dup && at_least_once,
                qos,
                retain,
                topic,
                packet_id: at_least_once.then_some(packet_id),
                payload,
            }
        })
}

pub fn any_subscribe() -> impl Strategy<Value = Subscribe> {
    (any_packet_id(), vec((any_topic_filter(), any_qos()), 1..6))
        .prop_map(|(packet_id, filters)| Subscribe { packet_id, filters })
}

pub fn any_suback_code() -> impl Strategy<Value = SubackCode> {
    prop_oneof![3 => any_qos().prop_map(SubackCode::Granted), 1 => Just(SubackCode::Failure)]
}

pub fn any_suback() -> impl Strategy<Value = Suback> {
    (any_packet_id(), vec(any_suback_code(), 1..6))
        .prop_map(|(packet_id, return_codes)| Suback { packet_id, return_codes })
}

pub fn any_unsubscribe() -> impl Strategy<Value = Unsubscribe> {
    (any_packet_id(), vec(any_topic_filter(), 1..6))
        .prop_map(|(packet_id, filters)| Unsubscribe { packet_id, filters })
}

/// Any of the 14 packet types, each equally likely.
pub fn any_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        any_connect().prop_map(|connect| Packet::Connect(Box::new(connect))),
        any_connack().prop_map(Packet::Connack),
        any_publish().prop_map(Packet::Publish),
        any_packet_id().prop_map(Packet::Puback),
        any_packet_id().prop_map(Packet::Pubrec),
        any_packet_id().prop_map(Packet::Pubrel),
        any_packet_id().prop_map(Packet::Pubcomp),
        any_subscribe().prop_map(Packet::Subscribe),
        any_suback().prop_map(Packet::Suback),
        any_unsubscribe().prop_map(Packet::Unsubscribe),
        any_packet_id().prop_map(Packet::Unsuback),
        Just(Packet::Pingreq),
        Just(Packet::Pingresp),
        Just(Packet::Disconnect),
    ]
}
