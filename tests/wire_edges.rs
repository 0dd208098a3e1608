//! The real `ringmq` binary fed bytes the way real networks and clients deliver them: a
//! session's packets one byte per write, hundreds of packets in one write, packets of exactly
//! `max_packet_size` and one byte more, many clients through a pool of two tiny receive
//! buffers, and causality across four workers (a subscription or a retained message is in
//! effect everywhere once its acknowledgement has been sent). Raw sockets and ringmq's codec
//! build the bytes, since a client library would not produce these shapes on purpose.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{unique_id, Broker, RawClient};
use ringmq::protocol::{
    encode, Packet, PacketId, ProtocolVersion, Publish, QoS, TopicName, Utf8Bytes,
};

fn packet_id(value: u16) -> PacketId {
    PacketId::new(value).expect("a non-zero packet id")
}

fn publish(topic: &str, payload: Bytes, qos: QoS, id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::from_bytes(Bytes::from(topic.to_owned())).expect("a valid topic"),
        packet_id: (qos != QoS::AtMostOnce).then(|| packet_id(id)),
        payload,
    })
}

fn next_publish(client: &mut RawClient) -> Publish {
    match client.receive() {
        Packet::Publish(publish) => publish,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Receives `count` publishes, acknowledging each (QoS 1), and returns their topics.
fn receive_topics(client: &mut RawClient, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let publish = next_publish(client);
            client.send(&Packet::Puback(publish.packet_id.expect("QoS 1")));
            publish.topic.as_str().to_owned()
        })
        .collect()
}

/// Reads `count` PUBACKs (after any CONNACK).
fn expect_pubacks(client: &mut RawClient, count: usize) {
    let mut acknowledged = 0;
    while acknowledged < count {
        match client.receive() {
            Packet::Connack(_) => {}
            Packet::Puback(_) => acknowledged += 1,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// A CONNECT and 20 QoS 1 publishes written one byte per write, then 500 publishes in one
/// write: the broker's incremental decoding sees every packet, in order [MQTT-4.6.0-6].
#[test]
fn packets_split_into_single_bytes_or_coalesced_are_all_decoded() {
    let broker = Broker::start(&[]);
    let mut subscriber = broker.raw_client(&unique_id("split-sub"));
    subscriber.subscribe(&[("split/#", QoS::AtLeastOnce)]);

    let mut bytes = BytesMut::new();
    let client_id = unique_id("split-pub");
    encode(
        &Packet::Connect(Box::new(ringmq::protocol::Connect {
            protocol: ProtocolVersion::V311,
            clean_session: true,
            keep_alive_secs: 30,
            client_id: Utf8Bytes::new(Bytes::from(client_id)).expect("UTF-8"),
            will: None,
            username: None,
            password: None,
        })),
        &mut bytes,
    );
    for index in 0..20u16 {
        let payload = Bytes::from(vec![b'p'; 100 + usize::from(index)]);
        encode(
            &publish(&format!("split/{index}"), payload, QoS::AtLeastOnce, index + 1, false),
            &mut bytes,
        );
    }
    let mut publisher = RawClient::open(broker.addr());
    for byte in bytes.iter() {
        publisher.send_bytes(&[*byte]);
    }
    expect_pubacks(&mut publisher, 20);
    let expected: Vec<String> = (0..20).map(|index| format!("split/{index}")).collect();
    assert_eq!(receive_topics(&mut subscriber, 20), expected);

    let mut bytes = BytesMut::new();
    for index in 0..500u16 {
        let topic = format!("split/together/{index}");
        encode(
            &publish(&topic, Bytes::from_static(b"x"), QoS::AtLeastOnce, index + 1, false),
            &mut bytes,
        );
    }
    publisher.send_bytes(&bytes);
    expect_pubacks(&mut publisher, 500);
    let expected: Vec<String> = (0..500).map(|index| format!("split/together/{index}")).collect();
    assert_eq!(receive_topics(&mut subscriber, 500), expected);
}

/// `max_packet_size` counts the whole packet: exactly that many bytes pass, one more closes
/// the connection (README, Limits).
#[test]
fn max_packet_size_is_inclusive_of_the_whole_packet() {
    let broker = Broker::start(&["--max-packet-size", "1000"]);
    let mut subscriber = broker.raw_client(&unique_id("edge-sub"));
    subscriber.subscribe(&[("edge/#", QoS::AtMostOnce)]);
    let mut publisher = broker.raw_client(&unique_id("edge-pub"));
    // 1 byte of type, 2 of remaining length, 2 + 6 of topic, then the payload.
    for (payload_bytes, total_bytes) in [(989, 1000), (990, 1001)] {
        let mut bytes = BytesMut::new();
        let payload = Bytes::from(vec![b'e'; payload_bytes]);
        encode(&publish("edge/x", payload, QoS::AtMostOnce, 0, false), &mut bytes);
        assert_eq!(bytes.len(), total_bytes, "the test's arithmetic");
        publisher.send_bytes(&bytes);
    }
    assert_eq!(next_publish(&mut subscriber).payload.len(), 989);
    assert!(publisher.wait_closed(Duration::from_secs(3)).is_some(), "1001 bytes were accepted");
}

/// 30 publishers each write 20 QoS 1 publishes of 300 bytes at once, through a pool of two
/// 64-byte receive buffers per worker: receives wait for buffers, and nothing is lost or
/// reordered (README, Limits: `recv_buffers`).
#[test]
fn two_tiny_receive_buffers_serve_thirty_busy_clients() {
    const PUBLISHERS: usize = 30;
    const MESSAGES: u16 = 20;
    let broker = Broker::start(&["--recv-buffers", "2", "--recv-buffer-bytes", "64"]);
    let mut subscriber = broker.raw_client(&unique_id("tiny-sub"));
    subscriber.subscribe(&[("tiny/#", QoS::AtLeastOnce)]);
    let mut publishers: Vec<RawClient> =
        (0..PUBLISHERS).map(|_| broker.raw_client(&unique_id("tiny-pub"))).collect();
    for (index, publisher) in publishers.iter_mut().enumerate() {
        let mut bytes = BytesMut::new();
        for sequence in 0..MESSAGES {
            let payload = Bytes::from(format!("{sequence:0300}"));
            encode(
                &publish(&format!("tiny/{index}"), payload, QoS::AtLeastOnce, sequence + 1, false),
                &mut bytes,
            );
        }
        publisher.send_bytes(&bytes);
    }
    let mut next_sequence = [0u16; PUBLISHERS];
    for _ in 0..PUBLISHERS * usize::from(MESSAGES) {
        let publish = next_publish(&mut subscriber);
        subscriber.send(&Packet::Puback(publish.packet_id.expect("QoS 1")));
        let index: usize = publish.topic.as_str()["tiny/".len()..].parse().expect("tiny/<index>");
        let sequence: u16 = String::from_utf8_lossy(&publish.payload).parse().expect("a number");
        assert_eq!(sequence, next_sequence[index], "tiny/{index} out of order [MQTT-4.6.0-6]");
        next_sequence[index] += 1;
    }
    for publisher in &mut publishers {
        expect_pubacks(publisher, usize::from(MESSAGES));
    }
}

/// With four workers, a message published after the subscriber's SUBACK reached it is
/// delivered, whichever workers the two clients live on: the SUBACK is not sent before the
/// subscription is in effect for every publisher (100 rounds, fresh topic each).
#[test]
fn a_subscription_is_in_effect_on_every_worker_once_acknowledged() {
    let broker = Broker::start(&["--workers", "4"]);
    let mut publishers: Vec<RawClient> =
        (0..8).map(|_| broker.raw_client(&unique_id("causal-pub"))).collect();
    let mut subscribers: Vec<RawClient> =
        (0..8).map(|_| broker.raw_client(&unique_id("causal-sub"))).collect();
    for round in 0..100 {
        let topic = format!("causal/{round}");
        let subscriber = &mut subscribers[round % 8];
        subscriber.subscribe(&[(&topic, QoS::AtMostOnce)]);
        let publisher = &mut publishers[(round / 8) % 8];
        publisher.send(&publish(&topic, Bytes::from_static(b"x"), QoS::AtLeastOnce, 1, false));
        assert_eq!(publisher.receive(), Packet::Puback(packet_id(1)));
        let got = next_publish(subscriber);
        assert_eq!(got.topic.as_str(), topic, "round {round}");
    }
}

/// With four workers, a retained message whose PUBACK the publisher has seen is replayed to a
/// new subscriber on any worker [MQTT-3.3.1-6] (100 rounds, fresh topic and client each): the
/// PUBACK waits until every worker's replica has the message (`broker/retain_confirm.rs`).
#[test]
fn a_retained_message_is_in_effect_on_every_worker_once_acknowledged() {
    let broker = Broker::start(&["--workers", "4"]);
    let mut publisher = broker.raw_client(&unique_id("retained-pub"));
    for round in 0..100 {
        let topic = format!("causal-retained/{round}");
        publisher.send(&publish(&topic, Bytes::from_static(b"r"), QoS::AtLeastOnce, 1, true));
        assert_eq!(publisher.receive(), Packet::Puback(packet_id(1)));
        let mut subscriber = broker.raw_client(&unique_id("retained-sub"));
        subscriber.subscribe(&[(&topic, QoS::AtMostOnce)]);
        let got = next_publish(&mut subscriber);
        assert_eq!((got.topic.as_str(), got.retain), (topic.as_str(), true), "round {round}");
    }
}
