//! The real `ringmq` binary: redelivery of unacknowledged messages to a returning persistent
//! session, the delivery bounds (`max_inflight_messages`, `max_queued_messages`,
//! `connect_timeout_secs`) as the README defines them, UNSUBSCRIBE, and client ids the
//! server must assign or refuse. Clients: rumqttc, and raw sockets where the test needs a
//! client that deliberately does not acknowledge.

mod common;

use std::time::{Duration, Instant};

use common::rumqtt::{options, Session};
use common::{unique_id, Broker, ConnectOptions, RawClient};
use ringmq::protocol::{ConnectReturnCode, Packet, Publish, QoS as RawQoS};
use rumqttc::QoS;

/// The next PUBLISH on a raw client; anything else fails the test.
fn next_publish(client: &mut RawClient) -> Publish {
    match client.receive() {
        Packet::Publish(publish) => publish,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Checks that nothing arrives for `quiet` (the only way to see that a bound holds back).
fn expect_silence(client: &mut RawClient, quiet: Duration) {
    match client.try_receive(quiet) {
        Ok(None) => {}
        Ok(Some(packet)) => panic!("expected nothing, got {packet:?}"),
        Err(error) => panic!("{error}"),
    }
}

/// A QoS 1 message delivered but not acknowledged when the client went away is sent again
/// when its persistent session resumes, with DUP=1 [MQTT-4.4.0-1] [MQTT-3.3.1-1].
#[test]
fn unacknowledged_qos1_is_redelivered_with_dup_on_resume() {
    let broker = Broker::start(&[]);
    let id = unique_id("redeliver");
    let mut persistent = options(&broker, &id);
    persistent.set_clean_session(false);
    persistent.set_manual_acks(true);
    let mut subscriber = Session::connect(persistent.clone());
    subscriber.subscribe("redeliver/#", QoS::AtLeastOnce);
    let mut publisher = Session::connect(options(&broker, &unique_id("redeliver-pub")));
    publisher.publish("redeliver/a", QoS::AtLeastOnce, false, "once more");
    let first = subscriber.next_publish();
    assert!(!first.dup, "[MQTT-3.3.1-2] the first delivery has DUP=0");
    // Gone without acknowledging it (manual acks, never sent).
    drop(subscriber);

    persistent.set_manual_acks(false);
    let mut back = Session::connect(persistent);
    assert!(back.connack.session_present, "[MQTT-3.2.2-2]");
    let again = back.next_publish();
    assert_eq!((again.topic.as_str(), &again.payload[..]), ("redeliver/a", &b"once more"[..]));
    assert!(again.dup, "[MQTT-3.3.1-1] a redelivery has DUP=1");
    assert_eq!(again.qos, QoS::AtLeastOnce);
    // Acknowledged now (automatic acks): a clean resume does not send it a third time.
    publisher.publish("redeliver/b", QoS::AtLeastOnce, false, "marker");
    assert_eq!(back.next_publish().topic, "redeliver/b");
    back.disconnect();
    publisher.disconnect();
}

/// `max_inflight_messages`: at most that many unacknowledged QoS 1 messages to one client;
/// the rest wait in its session queue and follow, in order, as it acknowledges
/// [MQTT-4.6.0-6].
#[test]
fn max_inflight_messages_holds_the_rest_back_until_acknowledged() {
    const INFLIGHT: usize = 3;
    const SENT: usize = 7;
    let broker = Broker::start(&["--max-inflight-messages", "3"]);
    let mut subscriber = broker.raw_client(&unique_id("inflight-sub"));
    subscriber.subscribe(&[("inflight/#", RawQoS::AtLeastOnce)]);
    let mut publisher = Session::connect(options(&broker, &unique_id("inflight-pub")));
    for sequence in 0..SENT {
        publisher.publish("inflight/x", QoS::AtLeastOnce, false, sequence.to_string());
    }
    let mut unacknowledged: Vec<Publish> =
        (0..INFLIGHT).map(|_| next_publish(&mut subscriber)).collect();
    expect_silence(&mut subscriber, Duration::from_millis(300));
    let mut received = Vec::new();
    while received.len() < SENT {
        let oldest = unacknowledged.remove(0);
        subscriber.send(&Packet::Puback(oldest.packet_id.expect("QoS 1 has a packet id")));
        received.push(String::from_utf8_lossy(&oldest.payload).into_owned());
        if received.len() + unacknowledged.len() < SENT {
            unacknowledged.push(next_publish(&mut subscriber));
        }
    }
    let expected: Vec<String> = (0..SENT).map(|sequence| sequence.to_string()).collect();
    assert_eq!(received, expected);
    publisher.disconnect();
}

/// `max_queued_messages`: an online client that does not acknowledge, with its inflight
/// window and its queue full, has one more message dropped, and is disconnected as a slow
/// consumer once it has acknowledged nothing for `slow_consumer_timeout_secs`; its persistent
/// session keeps what it had (README, Limits).
#[test]
fn max_queued_messages_disconnects_a_slow_consumer_and_keeps_its_session() {
    let broker = Broker::start(&[
        "--max-inflight-messages",
        "2",
        "--max-queued-messages",
        "3",
        "--slow-consumer-timeout-secs",
        "1",
    ]);
    let id = unique_id("slow");
    let mut slow = RawClient::open(broker.addr());
    let mut persistent = ConnectOptions::new(&id);
    persistent.clean_session = false;
    assert_eq!(slow.connect(persistent.clone()).code, ConnectReturnCode::Accepted);
    slow.subscribe(&[("slow/#", RawQoS::AtLeastOnce)]);
    let mut publisher = Session::connect(options(&broker, &unique_id("slow-pub")));

    // Two in flight and three queued: at the bounds, not over them.
    for sequence in 0..5 {
        publisher.publish("slow/x", QoS::AtLeastOnce, false, sequence.to_string());
    }
    let first = next_publish(&mut slow);
    let second = next_publish(&mut slow);
    assert_eq!((&first.payload[..], &second.payload[..]), (&b"0"[..], &b"1"[..]));
    slow.send(&Packet::Pingreq);
    assert_eq!(slow.receive(), Packet::Pingresp, "still connected at the bound");

    publisher.publish("slow/x", QoS::AtLeastOnce, false, "5");
    slow.send(&Packet::Pingreq);
    assert_eq!(slow.receive(), Packet::Pingresp, "over the bound: dropped, not closed at once");
    assert!(
        slow.wait_closed(Duration::from_secs(3)).is_some(),
        "a slow consumer over the bound stays connected"
    );

    // The session kept its two unacknowledged and three queued messages, not the sixth.
    let mut back = RawClient::open(broker.addr());
    let connack = back.connect(persistent);
    assert!(connack.session_present, "[MQTT-3.2.2-2]");
    let mut payloads = Vec::new();
    for _ in 0..5 {
        let publish = next_publish(&mut back);
        back.send(&Packet::Puback(publish.packet_id.expect("QoS 1 has a packet id")));
        payloads.push(String::from_utf8_lossy(&publish.payload).into_owned());
    }
    assert_eq!(payloads, ["0", "1", "2", "3", "4"]);
    publisher.publish("slow/x", QoS::AtLeastOnce, false, "marker");
    assert_eq!(&next_publish(&mut back).payload[..], b"marker", "the dropped sixth message came");
    publisher.disconnect();
}

/// `connect_timeout_secs`: a connection that sends no CONNECT is closed when it expires.
#[test]
fn connection_without_connect_is_closed_at_the_connect_timeout() {
    let broker = Broker::start(&["--connect-timeout-secs", "1"]);
    let mut idle = RawClient::open(broker.addr());
    let opened = Instant::now();
    let closed = idle.wait_closed(Duration::from_secs(4)).expect("not closed within 4 s");
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?} ({closed:?}), before the timeout"
    );
    assert!(after <= Duration::from_millis(2500), "closed after {after:?}, long after the timeout");
}

/// UNSUBSCRIBE is answered with UNSUBACK and stops delivery on that filter
/// [MQTT-3.10.4-1] [MQTT-3.10.4-4].
#[test]
fn unsubscribe_stops_delivery() {
    let broker = Broker::start(&[]);
    let mut subscriber = Session::connect(options(&broker, &unique_id("unsub")));
    subscriber.subscribe("unsub/gone", QoS::AtLeastOnce);
    subscriber.subscribe("unsub/kept", QoS::AtLeastOnce);
    subscriber.client.unsubscribe("unsub/gone").expect("queue UNSUBSCRIBE");
    subscriber.wait_for("UNSUBACK", |packet| {
        matches!(packet, rumqttc::Packet::UnsubAck(_)).then_some(())
    });
    let mut publisher = Session::connect(options(&broker, &unique_id("unsub-pub")));
    publisher.publish("unsub/gone", QoS::AtLeastOnce, false, "must not arrive");
    publisher.publish("unsub/kept", QoS::AtLeastOnce, false, "marker");
    assert_eq!(subscriber.next_publish().topic, "unsub/kept");
    publisher.disconnect();
    subscriber.disconnect();
}

/// A zero-byte client id: with CleanSession=1 the server assigns one and accepts
/// [MQTT-3.1.3-6]; with CleanSession=0 it answers CONNACK 0x02 and closes [MQTT-3.1.3-8].
#[test]
fn empty_client_id_is_assigned_or_refused_by_clean_session() {
    let broker = Broker::start(&[]);
    let mut clean = RawClient::open(broker.addr());
    assert_eq!(clean.connect(ConnectOptions::new("")).code, ConnectReturnCode::Accepted);
    clean.subscribe(&[("empty-id/#", RawQoS::AtMostOnce)]);

    let mut persistent = ConnectOptions::new("");
    persistent.clean_session = false;
    let mut refused = RawClient::open(broker.addr());
    let connack = refused.connect(persistent);
    assert_eq!(connack.code, ConnectReturnCode::IdentifierRejected);
    assert!(!connack.session_present, "[MQTT-3.2.2-4] a refusal has session present 0");
    assert!(refused.wait_closed(Duration::from_secs(3)).is_some(), "[MQTT-3.2.2-5] not closed");

    clean.publish_qos0("empty-id/x", b"served");
    assert_eq!(&next_publish(&mut clean).payload[..], b"served");
}
