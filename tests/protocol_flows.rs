//! The real `ringmq` binary through protocol flows that need a client to stop half-way or
//! repeat itself, so a raw socket with ringmq's codec plays the client: a QoS 2 PUBLISH sent
//! twice, a QoS 2 delivery abandoned after PUBREC, a retained will, a re-subscription, a
//! keepalive kept by PUBLISHes alone, and a takeover with messages in flight.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{unique_id, Broker, ConnectOptions, RawClient};
use ringmq::protocol::{Packet, PacketId, Publish, QoS, TopicName};

fn packet_id(value: u16) -> PacketId {
    PacketId::new(value).expect("a non-zero packet id")
}

fn publish(topic: &str, payload: &str, qos: QoS, id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: TopicName::from_bytes(Bytes::from(topic.to_owned())).expect("a valid topic"),
        packet_id: (qos != QoS::AtMostOnce).then(|| packet_id(id)),
        payload: Bytes::from(payload.to_owned()),
    })
}

fn next_publish(client: &mut RawClient) -> Publish {
    match client.receive() {
        Packet::Publish(publish) => publish,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

fn persistent(client_id: &str) -> ConnectOptions {
    let mut options = ConnectOptions::new(client_id);
    options.clean_session = false;
    options
}

/// A QoS 2 PUBLISH repeated (DUP=1, same packet id) before PUBREL is acknowledged again with
/// PUBREC and delivered once [MQTT-4.3.3-2].
#[test]
fn qos2_publish_sent_twice_is_delivered_once() {
    let broker = Broker::start(&[]);
    let mut subscriber = broker.raw_client(&unique_id("once-sub"));
    subscriber.subscribe(&[("once/#", QoS::AtMostOnce)]);
    let mut publisher = broker.raw_client(&unique_id("once-pub"));
    publisher.send(&publish("once/a", "one", QoS::ExactlyOnce, 5, false));
    assert_eq!(publisher.receive(), Packet::Pubrec(packet_id(5)));
    publisher.send(&publish("once/a", "one", QoS::ExactlyOnce, 5, true));
    assert_eq!(publisher.receive(), Packet::Pubrec(packet_id(5)));
    publisher.send(&Packet::Pubrel(packet_id(5)));
    // [MQTT-4.3.3-2] PUBCOMP with the same packet id.
    assert_eq!(publisher.receive(), Packet::Pubcomp(packet_id(5)));
    publisher.send(&publish("once/b", "marker", QoS::AtMostOnce, 0, false));
    assert_eq!(next_publish(&mut subscriber).topic.as_str(), "once/a");
    assert_eq!(
        next_publish(&mut subscriber).topic.as_str(),
        "once/b",
        "once/a was delivered twice"
    );
}

/// A subscriber that answered PUBREC and left before PUBCOMP gets the PUBREL again, not the
/// PUBLISH, when its session resumes [MQTT-4.4.0-1] [MQTT-4.3.3-1].
#[test]
fn qos2_delivery_left_after_pubrec_resumes_with_pubrel() {
    let broker = Broker::start(&[]);
    let id = unique_id("pubrel");
    let mut subscriber = RawClient::open(broker.addr());
    subscriber.connect(persistent(&id));
    subscriber.subscribe(&[("pubrel/#", QoS::ExactlyOnce)]);
    let mut publisher = broker.raw_client(&unique_id("pubrel-pub"));
    publisher.send(&publish("pubrel/a", "one", QoS::ExactlyOnce, 1, false));
    assert_eq!(publisher.receive(), Packet::Pubrec(packet_id(1)));
    publisher.send(&Packet::Pubrel(packet_id(1)));
    assert_eq!(publisher.receive(), Packet::Pubcomp(packet_id(1)));

    let delivered = next_publish(&mut subscriber);
    assert_eq!(delivered.qos, QoS::ExactlyOnce);
    let id_of_delivery = delivered.packet_id.expect("QoS 2 has a packet id");
    subscriber.send(&Packet::Pubrec(id_of_delivery));
    assert_eq!(subscriber.receive(), Packet::Pubrel(id_of_delivery));
    drop(subscriber);

    let mut back = RawClient::open(broker.addr());
    assert!(back.connect(persistent(&id)).session_present, "[MQTT-3.2.2-2]");
    assert_eq!(back.receive(), Packet::Pubrel(id_of_delivery), "PUBREL re-sent, not the PUBLISH");
    back.send(&Packet::Pubcomp(id_of_delivery));
    publisher.send(&publish("pubrel/b", "marker", QoS::AtMostOnce, 0, false));
    assert_eq!(next_publish(&mut back).topic.as_str(), "pubrel/b", "pubrel/a came again");
}

/// A will with RETAIN set is stored as a retained message [MQTT-3.1.2-17]; subscribing again
/// to the same filter replaces the subscription (new QoS) and re-sends the retained message,
/// and later messages come once, not once per subscription [MQTT-3.8.4-3].
#[test]
fn retained_will_and_a_repeated_subscription() {
    let broker = Broker::start(&[]);
    let mut watcher = broker.raw_client(&unique_id("will-watch"));
    watcher.subscribe(&[("retained-will/#", QoS::AtMostOnce)]);
    let mut options = ConnectOptions::new(&unique_id("will-retained")).will(
        "retained-will/t",
        b"dead",
        QoS::AtLeastOnce,
    );
    options.will.as_mut().expect("a will").retain = true;
    let doomed = broker.raw_client_with(options);
    drop(doomed);
    assert_eq!(&next_publish(&mut watcher).payload[..], b"dead", "[MQTT-3.1.2-8]");

    let mut subscriber = broker.raw_client(&unique_id("will-late"));
    subscriber.subscribe(&[("retained-will/#", QoS::AtMostOnce)]);
    let replay = next_publish(&mut subscriber);
    assert_eq!(
        (&replay.payload[..], replay.retain, replay.qos),
        (&b"dead"[..], true, QoS::AtMostOnce)
    );
    subscriber.subscribe(&[("retained-will/#", QoS::AtLeastOnce)]);
    let replay = next_publish(&mut subscriber);
    // min(will QoS 1, granted 1) = 1.
    assert_eq!(
        (&replay.payload[..], replay.retain, replay.qos),
        (&b"dead"[..], true, QoS::AtLeastOnce)
    );
    subscriber.send(&Packet::Puback(replay.packet_id.expect("QoS 1")));

    let mut publisher = broker.raw_client(&unique_id("will-pub"));
    for (index, topic) in ["retained-will/x", "retained-will/y"].iter().enumerate() {
        let id = u16::try_from(index + 1).expect("small");
        publisher.send(&publish(topic, "m", QoS::AtLeastOnce, id, false));
        assert_eq!(publisher.receive(), Packet::Puback(packet_id(id)));
    }
    for topic in ["retained-will/x", "retained-will/y"] {
        let got = next_publish(&mut subscriber);
        assert_eq!(
            (got.topic.as_str(), got.qos),
            (topic, QoS::AtLeastOnce),
            "duplicate or wrong QoS"
        );
        subscriber.send(&Packet::Puback(got.packet_id.expect("QoS 1")));
    }
}

/// Any control packet keeps a connection alive, not only PINGREQ: a client with keepalive
/// 1 s that only publishes, every 400 ms, for 3 s is still connected [MQTT-3.1.2-24].
#[test]
fn publishes_alone_keep_a_connection_alive() {
    let broker = Broker::start(&[]);
    let mut client =
        broker.raw_client_with(ConnectOptions::new(&unique_id("busy")).keep_alive_secs(1));
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(3) {
        client.publish_qos0("busy/x", b"still here");
        std::thread::sleep(Duration::from_millis(400));
    }
    client.send(&Packet::Pingreq);
    assert_eq!(client.receive(), Packet::Pingresp);
}

/// A takeover while messages are in flight and queued: the new connection gets every message
/// not yet acknowledged, in order, none lost and none extra [MQTT-3.1.4-2] [MQTT-4.4.0-1].
#[test]
fn takeover_with_messages_in_flight_loses_none() {
    let broker = Broker::start(&["--max-inflight-messages", "2"]);
    let id = unique_id("takeover-flight");
    let mut first = RawClient::open(broker.addr());
    first.connect(persistent(&id));
    first.subscribe(&[("flight/#", QoS::AtLeastOnce)]);
    let mut publisher = broker.raw_client(&unique_id("flight-pub"));
    for sequence in 1..=6u16 {
        publisher.send(&publish(
            "flight/x",
            &sequence.to_string(),
            QoS::AtLeastOnce,
            sequence,
            false,
        ));
        assert_eq!(publisher.receive(), Packet::Puback(packet_id(sequence)));
    }
    let acknowledged = next_publish(&mut first);
    assert_eq!(&acknowledged.payload[..], b"1");
    first.send(&Packet::Puback(acknowledged.packet_id.expect("QoS 1")));
    // PINGRESP after the PUBACK: the broker has processed the acknowledgement.
    first.send(&Packet::Pingreq);
    while first.receive() != Packet::Pingresp {}

    let mut second = RawClient::open(broker.addr());
    assert!(second.connect(persistent(&id)).session_present, "[MQTT-3.2.2-2]");
    assert!(first.wait_closed(Duration::from_secs(3)).is_some(), "[MQTT-3.1.4-2]");
    let mut payloads = Vec::new();
    for _ in 0..5 {
        let got = next_publish(&mut second);
        second.send(&Packet::Puback(got.packet_id.expect("QoS 1")));
        payloads.push(String::from_utf8_lossy(&got.payload).into_owned());
    }
    assert_eq!(payloads, ["2", "3", "4", "5", "6"]);
    publisher.send(&publish("flight/x", "marker", QoS::AtMostOnce, 0, false));
    assert_eq!(&next_publish(&mut second).payload[..], b"marker", "an extra message came");
}
