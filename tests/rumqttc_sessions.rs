//! The real `ringmq` binary against rumqttc and raw sockets: wills, keepalive expiry, takeover
//! of a client id, and persistent sessions that queue QoS 1 messages while offline.
//! Each test starts its own broker (two workers, so connections are handed between them).

mod common;

use std::time::{Duration, Instant};

use common::rumqtt::{options, options_with_will, Session};
use common::{unique_id, Broker, ConnectOptions};
use ringmq::protocol::{Packet, QoS as RawQoS};
use rumqttc::QoS;

/// A rumqttc client whose connection is dropped without DISCONNECT: its will is published
/// [MQTT-3.1.2-8].
#[test]
fn will_of_a_client_that_drops_its_connection_is_published() {
    let broker = Broker::start(&[]);
    let mut watcher = Session::connect(options(&broker, &unique_id("will-watch")));
    watcher.subscribe("will/#", QoS::AtLeastOnce);
    let id = unique_id("will-dropped");
    let doomed = Session::connect(options_with_will(&broker, &id, "will/dropped", "gone"));
    // Dropping the rumqttc Connection closes its socket; no DISCONNECT is sent.
    drop(doomed);
    let will = watcher.next_publish();
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("will/dropped", &b"gone"[..]));
    // [MQTT-3.1.2-14] will QoS 1 (the subscription is QoS 1 too).
    assert_eq!(will.qos, QoS::AtLeastOnce);
    watcher.disconnect();
}

/// The same with a raw socket closed mid-session, and with DISCONNECT the will is discarded
/// [MQTT-3.1.2-10] [MQTT-3.14.4-3].
#[test]
fn will_on_socket_close_but_not_after_disconnect() {
    let broker = Broker::start(&[]);
    let mut watcher = Session::connect(options(&broker, &unique_id("will-watch")));
    watcher.subscribe("raw-will/#", QoS::AtLeastOnce);

    let polite = unique_id("will-polite");
    let mut client = broker.raw_client_with(ConnectOptions::new(&polite).will(
        "raw-will/polite",
        b"should not appear",
        RawQoS::AtLeastOnce,
    ));
    client.send(&Packet::Disconnect);
    assert!(client.wait_closed(Duration::from_secs(5)).is_some(), "[MQTT-3.14.4-1] not closed");

    let crashed = unique_id("will-crashed");
    let client = broker.raw_client_with(ConnectOptions::new(&crashed).will(
        "raw-will/crashed",
        b"crashed",
        RawQoS::AtLeastOnce,
    ));
    drop(client);
    // The crashed client's will is the first the watcher sees: the polite one's never came.
    let will = watcher.next_publish();
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("raw-will/crashed", &b"crashed"[..]));
    watcher.disconnect();
}

/// A client with keepalive 1 s that goes silent is closed after about 1.5 s and its will
/// published [MQTT-3.1.2-24]; one that pings stays connected.
#[test]
fn keepalive_expiry_closes_a_silent_client_and_publishes_its_will() {
    let broker = Broker::start(&[]);
    let mut watcher = Session::connect(options(&broker, &unique_id("ka-watch")));
    watcher.subscribe("keepalive/#", QoS::AtLeastOnce);

    let mut pinging = broker.raw_client_with(
        ConnectOptions::new(&unique_id("ka-pinging")).keep_alive_secs(1).will(
            "keepalive/pinging",
            b"should not appear",
            RawQoS::AtLeastOnce,
        ),
    );
    let mut silent = broker.raw_client_with(
        ConnectOptions::new(&unique_id("ka-silent")).keep_alive_secs(1).will(
            "keepalive/silent",
            b"expired",
            RawQoS::AtLeastOnce,
        ),
    );
    let connected_at = Instant::now();

    // The pinging client sends PINGREQ every 500 ms and must get PINGRESP [MQTT-3.12.4-1],
    // over more than twice the silent client's expiry.
    let mut silent_closed_after = None;
    while connected_at.elapsed() < Duration::from_millis(3500) {
        pinging.send(&Packet::Pingreq);
        assert_eq!(pinging.receive(), Packet::Pingresp);
        if silent_closed_after.is_none() {
            silent_closed_after =
                silent.wait_closed(Duration::from_millis(500)).map(|_| connected_at.elapsed());
        } else {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let closed_after = silent_closed_after.expect("the silent client was not closed within 3.5 s");
    // 1.5 x keepalive, measured from after CONNACK, on a 100 ms timer wheel, on a loaded
    // 2-core machine: a wide window, but it excludes "never" and "at once".
    assert!(
        closed_after >= Duration::from_millis(1300) && closed_after <= Duration::from_millis(3000),
        "closed after {closed_after:?}, expected about 1.5 s"
    );
    let will = watcher.next_publish();
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("keepalive/silent", &b"expired"[..]));
    pinging.send(&Packet::Disconnect);
    watcher.disconnect();
}

/// A second connection with the same client id takes over: the first is closed
/// [MQTT-3.1.4-2], and with CleanSession=0 the new one resumes its session
/// ([MQTT-3.2.2-2] session present, subscriptions kept [MQTT-3.1.2-4]).
#[test]
fn takeover_closes_the_first_connection_and_keeps_the_session() {
    let broker = Broker::start(&[]);
    let id = unique_id("takeover");
    let mut persistent = options(&broker, &id);
    persistent.set_clean_session(false);
    let mut first = Session::connect(persistent.clone());
    first.subscribe("takeover/topic", QoS::AtLeastOnce);

    let second_at = Instant::now();
    let mut second = Session::connect(persistent);
    assert!(second.connack.session_present, "[MQTT-3.2.2-2] session present after takeover");
    let error = first.wait_closed(Duration::from_secs(5));
    assert!(second_at.elapsed() < Duration::from_secs(5), "closed late: {error}");

    let mut publisher = Session::connect(options(&broker, &unique_id("takeover-pub")));
    publisher.publish("takeover/topic", QoS::AtLeastOnce, false, "to the new connection");
    let got = second.next_publish();
    assert_eq!(&got.payload[..], b"to the new connection");
    publisher.disconnect();
    second.disconnect();
}

/// QoS 1 messages published while a persistent session's client is away are queued and
/// delivered, in order, when it comes back; the CONNACK says session present
/// [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.2.2-2] [MQTT-4.6.0-6]. A clean reconnect then
/// discards the session [MQTT-3.1.2-6] [MQTT-3.2.2-1].
#[test]
fn persistent_session_queues_qos1_messages_while_offline() {
    const QUEUED: usize = 20;
    let broker = Broker::start(&[]);
    let id = unique_id("persistent");
    let topic = format!("persistent/{id}");
    let mut persistent = options(&broker, &id);
    persistent.set_clean_session(false);
    let mut subscriber = Session::connect(persistent.clone());
    assert!(!subscriber.connack.session_present, "a new session");
    subscriber.subscribe(&topic, QoS::AtLeastOnce);
    subscriber.disconnect();

    let mut publisher = Session::connect(options(&broker, &unique_id("persistent-pub")));
    for sequence in 0..QUEUED {
        publisher.publish(&topic, QoS::AtLeastOnce, false, sequence.to_string());
    }

    let mut subscriber = Session::connect(persistent);
    assert!(subscriber.connack.session_present, "[MQTT-3.2.2-2]");
    for sequence in 0..QUEUED {
        let got = subscriber.next_publish();
        assert_eq!(got.topic, topic);
        assert_eq!(got.qos, QoS::AtLeastOnce);
        assert_eq!(String::from_utf8_lossy(&got.payload), sequence.to_string(), "out of order");
    }
    subscriber.disconnect();

    let mut clean = Session::connect(options(&broker, &id));
    assert!(!clean.connack.session_present, "[MQTT-3.2.2-1]");
    // The clean session has no subscription: the first message it sees is on its own topic.
    clean.subscribe("persistent/marker", QoS::AtLeastOnce);
    publisher.publish(&topic, QoS::AtLeastOnce, false, "not for the clean session");
    publisher.publish("persistent/marker", QoS::AtLeastOnce, false, "marker");
    assert_eq!(clean.next_publish().topic, "persistent/marker");
    clean.disconnect();
    publisher.disconnect();
}
