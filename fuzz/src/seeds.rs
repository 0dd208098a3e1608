//! Seed inputs: a sample of every one of the 14 packet types, with the variants that change
//! their encoding (MQTT 3.1 and 3.1.1 CONNECT, will, user name and password, every QoS, DUP
//! and RETAIN, several filters, multi-byte UTF-8, lengths that need two length bytes).

use bytes::{Bytes, BytesMut};
use ringmq::protocol::{
    encode, Connack, Connect, ConnectReturnCode, LastWill, Packet, PacketId, ProtocolVersion,
    Publish, QoS, Suback, SubackCode, Subscribe, TopicFilter, TopicName, Unsubscribe, Utf8Bytes,
};

fn id(value: u16) -> PacketId {
    PacketId::new(value).expect("non-zero")
}

fn connect(protocol: ProtocolVersion, will: bool, credentials: bool) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_session: !will,
        keep_alive_secs: 60,
        client_id: Utf8Bytes::from_static("seed-client"),
        will: will.then(|| LastWill {
            topic: TopicName::from_static("will/topic"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        username: credentials.then(|| Utf8Bytes::from_static("user")),
        password: credentials.then(|| Bytes::from_static(b"\x00secret\xff")),
    }))
}

fn publish(qos: QoS, retain: bool, dup: bool, topic: &'static str, payload_bytes: usize) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic: TopicName::from_static(topic),
        packet_id: (qos != QoS::AtMostOnce).then(|| id(0x1234)),
        payload: Bytes::from(vec![b'x'; payload_bytes]),
    })
}

fn filter(text: &'static str) -> TopicFilter {
    TopicFilter::try_from(text).expect("valid filter")
}

/// One packet of each type and the variants that change its bytes.
pub fn packets() -> Vec<Packet> {
    vec![
        connect(ProtocolVersion::V311, false, false),
        connect(ProtocolVersion::V311, true, true),
        connect(ProtocolVersion::V31, false, true),
        Packet::Connack(Connack { session_present: true, code: ConnectReturnCode::Accepted }),
        Packet::Connack(Connack { session_present: false, code: ConnectReturnCode::NotAuthorized }),
        publish(QoS::AtMostOnce, false, false, "a/b", 5),
        publish(QoS::AtLeastOnce, true, false, "sensors/温度/1", 20),
        publish(QoS::ExactlyOnce, false, true, "$SYS/broker/uptime", 200),
        Packet::Puback(id(1)),
        Packet::Pubrec(id(2)),
        Packet::Pubrel(id(3)),
        Packet::Pubcomp(id(65535)),
        Packet::Subscribe(Subscribe {
            packet_id: id(10),
            filters: vec![
                (filter("a/+/c"), QoS::AtMostOnce),
                (filter("#"), QoS::AtLeastOnce),
                (filter("$SYS/#"), QoS::ExactlyOnce),
            ],
        }),
        Packet::Suback(Suback {
            packet_id: id(10),
            return_codes: vec![
                SubackCode::Granted(QoS::AtMostOnce),
                SubackCode::Granted(QoS::ExactlyOnce),
                SubackCode::Failure,
            ],
        }),
        Packet::Unsubscribe(Unsubscribe { packet_id: id(11), filters: vec![filter("a/+/c")] }),
        Packet::Unsuback(id(11)),
        Packet::Pingreq,
        Packet::Pingresp,
        Packet::Disconnect,
    ]
}

pub fn encoded(packet: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, &mut out);
    out.to_vec()
}

/// Seeds for `decode`: each packet alone, plus one stream of all of them.
pub fn decode_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = packets()
        .iter()
        .enumerate()
        .map(|(index, packet)| (format!("seed-{index:02}-{}", packet.name()), encoded(packet)))
        .collect();
    seeds.push(("seed-all".to_owned(), packets().iter().flat_map(encoded).collect()));
    seeds
}

/// Seeds for `decode_stream`: chunk sizes (1, 3, 7 and 200 bytes), then the stream.
pub fn stream_seeds() -> Vec<(String, Vec<u8>)> {
    let stream: Vec<u8> = packets().iter().flat_map(encoded).collect();
    [vec![0u8], vec![2], vec![6, 199], vec![]]
        .into_iter()
        .enumerate()
        .map(|(index, sizes)| {
            let mut seed = vec![sizes.len() as u8];
            seed.extend(sizes);
            seed.extend(&stream);
            (format!("seed-stream-{index}"), seed)
        })
        .collect()
}
