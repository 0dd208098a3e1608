//! Faults against the real binary: clients killed (socket reset, no DISCONNECT) in the middle
//! of a packet and of QoS 1/2 flows, session takeover while messages are in flight, and a
//! worker's inbound mesh ring full (backpressure, never a drop). What must hold: nothing
//! acknowledged to a publisher (PUBACK, or PUBREC for QoS 2) is lost, a QoS 2 message reaches
//! the subscribing application exactly once [MQTT-4.3.3-2], unacknowledged messages are resent
//! on the resumed session [MQTT-4.4.0-1], and a half packet is never acted upon.
//!
//! The broker runs with two workers, so a reconnecting client is often accepted by the other
//! worker and handed to its session's home, the path most likely to lose state.

mod common;
#[path = "robust_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq::protocol::{LastWill, Packet, QoS, SubackCode, TopicName};
use support::{
    connect_packet_with, encoded, packet_id, publish_packet, subscribe_packet, unique_id, Broker,
    Peer,
};

const QUIET: Duration = Duration::from_millis(300);

/// Opens a connection and CONNECTs; asserts it is accepted, returns session present.
fn connect(broker: &Broker, client_id: &str, clean: bool) -> (Peer, bool) {
    let mut peer = support::open(broker);
    let connack = peer.connect(&connect_packet_with(client_id, clean, None));
    assert_eq!(connack.code, ringmq::protocol::ConnectReturnCode::Accepted, "{client_id}");
    (peer, connack.session_present)
}

fn subscribe(peer: &mut Peer, filter: &str, qos: QoS) {
    peer.send(&subscribe_packet(1, filter, qos));
    assert_eq!(peer.expect_suback(packet_id(1)), [SubackCode::Granted(qos)]);
}

/// The next PUBLISH, skipping nothing else.
fn next_publish(peer: &mut Peer) -> ringmq::protocol::Publish {
    peer.expect_publish()
}

/// [MQTT-3.1.2-8] A client killed half-way through a PUBLISH: the half packet is never
/// delivered, and its will (the close was not a DISCONNECT) is.
#[test]
fn client_killed_mid_packet_delivers_only_its_will_mqtt_3_1_2_8() {
    let broker = support::start(&[]);
    let (mut subscriber, _) = connect(&broker, &unique_id("watcher"), true);
    subscribe(&mut subscriber, "mid/#", QoS::AtLeastOnce);
    let will = LastWill {
        topic: TopicName::try_from("mid/will").expect("topic"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
    };
    let mut victim = support::open(&broker);
    let connack = victim.connect(&connect_packet_with(&unique_id("victim"), true, Some(will)));
    assert_eq!(connack.code, ringmq::protocol::ConnectReturnCode::Accepted);
    let publish = encoded(&publish_packet("mid/data", QoS::AtLeastOnce, 9, false, &[1; 500]));
    victim.write(&publish[..publish.len() / 2]);
    victim.kill();
    let got = next_publish(&mut subscriber);
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("mid/will", &b"gone"[..]));
    subscriber.send(&Packet::Puback(got.packet_id.expect("QoS 1")));
    subscriber.expect_silence(QUIET, "after the will");
}

/// [MQTT-4.3.3-2] A QoS 2 publisher killed after PUBREC (the message is acknowledged): the
/// subscriber gets it exactly once; the publisher's resumed session answers a DUP resend with
/// PUBREC without routing it again, and PUBREL with PUBCOMP [MQTT-4.3.3-1]; the packet id is
/// then free for a new message.
#[test]
fn qos2_publisher_killed_after_pubrec_is_delivered_once_mqtt_4_3_3_2() {
    let broker = support::start(&[]);
    let (mut subscriber, _) = connect(&broker, &unique_id("q2-sub"), true);
    subscribe(&mut subscriber, "q2p/#", QoS::ExactlyOnce);
    let publisher_id = unique_id("q2-pub");
    let (mut publisher, _) = connect(&broker, &publisher_id, false);
    publisher.send(&publish_packet("q2p/a", QoS::ExactlyOnce, 7, false, b"first"));
    assert_eq!(publisher.receive(), Packet::Pubrec(packet_id(7)));
    publisher.kill();

    let (mut publisher, present) = connect(&broker, &publisher_id, false);
    assert!(present, "the publisher's session is kept [MQTT-3.2.2-2]");
    publisher.send(&publish_packet("q2p/a", QoS::ExactlyOnce, 7, true, b"first"));
    assert_eq!(publisher.receive(), Packet::Pubrec(packet_id(7)));
    publisher.send(&Packet::Pubrel(packet_id(7)));
    assert_eq!(publisher.receive(), Packet::Pubcomp(packet_id(7)));
    // The id is free again: a new message with it is a new message.
    publisher.send(&publish_packet("q2p/a", QoS::ExactlyOnce, 7, false, b"second"));
    assert_eq!(publisher.receive(), Packet::Pubrec(packet_id(7)));
    publisher.send(&Packet::Pubrel(packet_id(7)));
    assert_eq!(publisher.receive(), Packet::Pubcomp(packet_id(7)));

    let mut app = Vec::new();
    let mut receiver = Qos2Receiver::default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.len() < 2 && Instant::now() < deadline {
        receiver.pump(&mut subscriber, &mut app, Duration::from_millis(50));
    }
    receiver.pump(&mut subscriber, &mut app, QUIET);
    assert_eq!(app, [b"first".to_vec(), b"second".to_vec()], "each message exactly once");
}

/// [MQTT-4.4.0-1] A QoS 2 subscriber killed after PUBREC and PUBREL, before its PUBCOMP: on
/// the resumed session the broker resends PUBREL, and not the PUBLISH.
#[test]
fn qos2_subscriber_killed_before_pubcomp_gets_pubrel_again_mqtt_4_4_0_1() {
    let broker = support::start(&[]);
    let subscriber_id = unique_id("q2-late");
    let (mut subscriber, _) = connect(&broker, &subscriber_id, false);
    subscribe(&mut subscriber, "q2s/#", QoS::ExactlyOnce);
    publish_qos2(&broker, "q2s/x", b"once");
    let publish = next_publish(&mut subscriber);
    let id = publish.packet_id.expect("QoS 2");
    subscriber.send(&Packet::Pubrec(id));
    assert_eq!(subscriber.receive(), Packet::Pubrel(id));
    subscriber.kill();

    let (mut subscriber, present) = connect(&broker, &subscriber_id, false);
    assert!(present);
    assert_eq!(subscriber.receive(), Packet::Pubrel(id), "PUBREL resent, not PUBLISH");
    subscriber.send(&Packet::Pubcomp(id));
    subscriber.expect_silence(QUIET, "after PUBCOMP");
}

/// [MQTT-4.4.0-1] A QoS 2 subscriber killed before it answered PUBREC: the PUBLISH is resent
/// with DUP set and the same packet id [MQTT-3.3.1-1].
#[test]
fn qos2_subscriber_killed_before_pubrec_gets_the_publish_again_with_dup_mqtt_4_4_0_1() {
    let broker = support::start(&[]);
    let subscriber_id = unique_id("q2-early");
    let (mut subscriber, _) = connect(&broker, &subscriber_id, false);
    subscribe(&mut subscriber, "q2e/#", QoS::ExactlyOnce);
    publish_qos2(&broker, "q2e/x", b"again");
    let first = next_publish(&mut subscriber);
    assert!(!first.dup);
    subscriber.kill();

    let (mut subscriber, present) = connect(&broker, &subscriber_id, false);
    assert!(present);
    let again = next_publish(&mut subscriber);
    assert!(again.dup, "a resent PUBLISH has DUP set [MQTT-3.3.1-1]");
    assert_eq!((again.packet_id, &again.payload), (first.packet_id, &first.payload));
    let id = again.packet_id.expect("QoS 2");
    subscriber.send(&Packet::Pubrec(id));
    assert_eq!(subscriber.receive(), Packet::Pubrel(id));
    subscriber.send(&Packet::Pubcomp(id));
    subscriber.expect_silence(QUIET, "after PUBCOMP");
}

/// [MQTT-3.1.4-2] A second connection with the same client id takes over while a QoS 1
/// message is unacknowledged: the first connection is closed, the new one resumes the session
/// (session present) and gets the message again with DUP [MQTT-4.4.0-1], and messages
/// published after the takeover go to the new connection.
#[test]
fn takeover_during_inflight_qos1_redelivers_to_the_new_connection_mqtt_3_1_4_2() {
    let broker = support::start(&[]);
    let subscriber_id = unique_id("q1-take");
    let (mut old, _) = connect(&broker, &subscriber_id, false);
    subscribe(&mut old, "q1t/#", QoS::AtLeastOnce);
    publish_qos1(&broker, "q1t/x", b"inflight");
    let first = next_publish(&mut old);

    let (mut new, present) = connect(&broker, &subscriber_id, false);
    assert!(present);
    old.expect_closed("the taken-over connection");
    let again = next_publish(&mut new);
    assert!(again.dup);
    assert_eq!((again.packet_id, &again.payload), (first.packet_id, &first.payload));
    new.send(&Packet::Puback(again.packet_id.expect("QoS 1")));
    publish_qos1(&broker, "q1t/y", b"after");
    let after = next_publish(&mut new);
    assert_eq!(&after.payload[..], b"after");
    new.send(&Packet::Puback(after.packet_id.expect("QoS 1")));
    new.expect_silence(QUIET, "after both acknowledgements");
}

/// Takeover during a QoS 2 flow, after the subscriber's PUBREC: the new connection gets the
/// PUBREL again [MQTT-4.4.0-1], never the PUBLISH (that would be a second delivery).
#[test]
fn takeover_during_inflight_qos2_resends_pubrel_not_publish_mqtt_4_3_3_2() {
    let broker = support::start(&[]);
    let subscriber_id = unique_id("q2-take");
    let (mut old, _) = connect(&broker, &subscriber_id, false);
    subscribe(&mut old, "q2t/#", QoS::ExactlyOnce);
    publish_qos2(&broker, "q2t/x", b"once");
    let publish = next_publish(&mut old);
    let id = publish.packet_id.expect("QoS 2");
    old.send(&Packet::Pubrec(id));
    assert_eq!(old.receive(), Packet::Pubrel(id));

    let (mut new, present) = connect(&broker, &subscriber_id, false);
    assert!(present);
    old.expect_closed("the taken-over connection");
    assert_eq!(new.receive(), Packet::Pubrel(id));
    new.send(&Packet::Pubcomp(id));
    new.expect_silence(QUIET, "after PUBCOMP");
}

/// [MQTT-3.1.4-2] Takeover during a QoS 2 flow before the subscriber's PUBREC: the message
/// is not yet received, so the new connection gets the PUBLISH again, with DUP and the same
/// packet id [MQTT-4.4.0-1] [MQTT-3.3.1-1], and the flow completes once.
#[test]
fn takeover_during_inflight_qos2_before_pubrec_resends_the_publish_mqtt_3_1_4_2() {
    let broker = support::start(&[]);
    let subscriber_id = unique_id("q2-take-early");
    let (mut old, _) = connect(&broker, &subscriber_id, false);
    subscribe(&mut old, "q2te/#", QoS::ExactlyOnce);
    publish_qos2(&broker, "q2te/x", b"once");
    let first = next_publish(&mut old);

    let (mut new, present) = connect(&broker, &subscriber_id, false);
    assert!(present, "the session is resumed [MQTT-3.2.2-2]");
    old.expect_closed("the taken-over connection");
    let again = next_publish(&mut new);
    assert!(again.dup, "a resent PUBLISH has DUP set [MQTT-3.3.1-1]");
    assert_eq!((again.packet_id, &again.payload), (first.packet_id, &first.payload));
    let id = again.packet_id.expect("QoS 2");
    new.send(&Packet::Pubrec(id));
    assert_eq!(new.receive(), Packet::Pubrel(id));
    new.send(&Packet::Pubcomp(id));
    new.expect_silence(QUIET, "after PUBCOMP: delivered once");
}

/// [MQTT-4.3.3-2] A QoS 2 publisher's connection taken over after PUBREC: the broker owns
/// the message from PUBREC on. The new connection, not knowing whether PUBREC arrived,
/// resends the PUBLISH with DUP (answered PUBREC, not routed again), then PUBREL (answered
/// PUBCOMP [MQTT-4.3.3-1]); the subscriber gets the message exactly once.
#[test]
fn publisher_takeover_mid_qos2_flow_delivers_once_mqtt_4_3_3_2() {
    let broker = support::start(&[]);
    let (mut subscriber, _) = connect(&broker, &unique_id("q2-pt-sub"), true);
    subscribe(&mut subscriber, "q2pt/#", QoS::ExactlyOnce);
    let publisher_id = unique_id("q2-pt-pub");
    let (mut old, _) = connect(&broker, &publisher_id, false);
    old.send(&publish_packet("q2pt/x", QoS::ExactlyOnce, 11, false, b"taken"));
    assert_eq!(old.receive(), Packet::Pubrec(packet_id(11)));

    let (mut new, present) = connect(&broker, &publisher_id, false);
    assert!(present, "the publisher's session is resumed [MQTT-3.2.2-2]");
    old.expect_closed("the taken-over connection [MQTT-3.1.4-2]");
    new.send(&publish_packet("q2pt/x", QoS::ExactlyOnce, 11, true, b"taken"));
    assert_eq!(new.receive(), Packet::Pubrec(packet_id(11)));
    new.send(&Packet::Pubrel(packet_id(11)));
    assert_eq!(new.receive(), Packet::Pubcomp(packet_id(11)));

    let mut app = Vec::new();
    let mut receiver = Qos2Receiver::default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.is_empty() && Instant::now() < deadline {
        receiver.pump(&mut subscriber, &mut app, Duration::from_millis(50));
    }
    receiver.pump(&mut subscriber, &mut app, QUIET);
    assert_eq!(app, [b"taken".to_vec()], "exactly once");
}

/// A publisher sends 300 messages, alternating QoS 1 and QoS 2, while a persistent QoS 2
/// subscriber is killed every few messages (sometimes between PUBREC and PUBCOMP) and comes
/// back. Every acknowledged message reaches the subscriber's application; each QoS 2 message
/// exactly once.
#[test]
fn acknowledged_messages_survive_a_subscriber_killed_repeatedly() {
    let broker = support::start(&[]);
    let subscriber_id = unique_id("survivor");
    let (mut subscriber, _) = connect(&broker, &subscriber_id, false);
    subscribe(&mut subscriber, "soak/#", QoS::ExactlyOnce);
    let (mut publisher, _) = connect(&broker, &unique_id("soak-pub"), true);
    let mut receiver = Qos2Receiver::default();
    let mut app = Vec::new();
    let total: u16 = 300;
    let mut kills = 0;
    for seq in 1..=total {
        let qos = if seq % 2 == 0 { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
        publish_acknowledged(&mut publisher, seq, qos);
        if seq % 23 == 0 {
            // Read a little, then die: whatever was mid-flow stays mid-flow.
            receiver.pump(&mut subscriber, &mut app, Duration::from_millis(5));
            subscriber.kill();
            kills += 1;
            let (resumed, present) = connect(&broker, &subscriber_id, false);
            assert!(present, "kill {kills}: the session was kept");
            subscriber = resumed;
        } else if seq % 5 == 0 {
            receiver.pump(&mut subscriber, &mut app, Duration::from_millis(1));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while received_all(&app, total).is_err() && Instant::now() < deadline {
        receiver.pump(&mut subscriber, &mut app, Duration::from_millis(50));
    }
    receiver.pump(&mut subscriber, &mut app, QUIET);
    received_all(&app, total).unwrap_or_else(|why| panic!("after {kills} kills: {why}"));
}

/// A worker's inbound mesh ring full: with rings of one message and an overflow bound of one,
/// a burst of 400 QoS 1 and QoS 2 messages from a publisher whose session lives on worker 1 to
/// a subscriber on worker 0 fills worker 0's inbound ring at once. Worker 1 must stop reading
/// (backpressure, counted as `reads_paused`) rather than drop: every message acknowledged to
/// the publisher reaches the subscriber, in order, each QoS 2 one exactly once
/// [MQTT-4.3.3-2], and no drop is counted anywhere.
#[test]
fn a_full_mesh_ring_backpressures_and_loses_no_qos1_or_qos2_message() {
    let mut broker = support::start(&[
        "--workers",
        "2",
        "--mesh-ring-depth",
        "1",
        "--mesh-overflow-max",
        "1",
        "--max-inflight-messages",
        "100",
        "--max-queued-messages",
        "10000",
    ]);
    let homed_on = |prefix: &str, worker: u16| {
        (0..)
            .map(|n| format!("{}-{n}", unique_id(prefix)))
            .find(|id| ringmq::broker::home_worker(id.as_bytes(), 2).0 == worker)
            .expect("some id hashes to each worker")
    };
    let (mut subscriber, _) = connect(&broker, &homed_on("mesh-sub", 0), true);
    subscribe(&mut subscriber, "mesh/#", QoS::ExactlyOnce);
    let (mut publisher, _) = connect(&broker, &homed_on("mesh-pub", 1), true);
    let total: u16 = 400;
    let mut burst = Vec::new();
    for seq in 1..=total {
        let qos = if seq % 2 == 0 { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
        let payload = seq.to_string();
        burst.extend(encoded(&publish_packet("mesh/x", qos, seq, false, payload.as_bytes())));
    }
    publisher.write(&burst);

    let mut receiver = Qos2Receiver::default();
    let mut app = Vec::new();
    let mut acknowledged = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (acknowledged.len() < usize::from(total) || received_all(&app, total).is_err())
        && Instant::now() < deadline
    {
        complete_publisher_flows(&mut publisher, &mut acknowledged, Duration::from_millis(20));
        receiver.pump(&mut subscriber, &mut app, Duration::from_millis(20));
    }
    receiver.pump(&mut subscriber, &mut app, QUIET);
    assert_eq!(acknowledged.len(), usize::from(total), "every publish acknowledged");
    received_all(&app, total).unwrap_or_else(|why| panic!("{why}"));
    let order: Vec<u16> = app
        .iter()
        .map(|payload| std::str::from_utf8(payload).expect("text").parse().expect("a number"))
        .collect();
    assert_eq!(order, (1..=total).collect::<Vec<_>>(), "in order, nothing twice [MQTT-4.6.0-2]");
    subscriber.disconnect();
    publisher.disconnect();
    broker.assert_running();
    let log = broker.stop();
    assert!(support::counter_sum(&log, "reads_paused") > 0, "backpressure was met:\n{log}");
    assert!(support::counter_sum(&log, "full_events") > 0, "the ring was full:\n{log}");
    for drop in ["messages_dropped_queue_full", "qos0_dropped_outbuf", "handoff_failures"] {
        assert_eq!(support::counter_sum(&log, drop), 0, "{drop}:\n{log}");
    }
}

/// The slow-consumer policy (README, Limits) at QoS 2, at the real binary: a persistent
/// subscriber stalls mid-flow (it answers the first PUBLISH with PUBREC but never sends the
/// PUBCOMP, and never answers the second). Its inflight window (2) and queue (3) fill; the
/// next message is dropped and counted, not closed at once; once it has acknowledged nothing
/// for `slow_consumer_timeout_secs` it is disconnected as a slow consumer. Its session resumes
/// where it stood: PUBREL resent for the first message, the second resent with DUP
/// [MQTT-4.4.0-1] [MQTT-3.3.1-1], then the queued three, each to the application exactly once
/// [MQTT-4.3.3-2]; the dropped one never.
#[test]
fn qos2_slow_consumer_is_queued_to_its_bound_then_disconnected_and_resumes_once_mqtt_4_4_0_1() {
    let broker = support::start(&[
        "--max-inflight-messages",
        "2",
        "--max-queued-messages",
        "3",
        "--slow-consumer-timeout-secs",
        "1",
    ]);
    let subscriber_id = unique_id("q2-slow");
    let (mut slow, _) = connect(&broker, &subscriber_id, false);
    subscribe(&mut slow, "soak/#", QoS::ExactlyOnce);
    let (mut publisher, _) = connect(&broker, &unique_id("q2-slow-pub"), true);
    for seq in 1..=5 {
        publish_acknowledged(&mut publisher, seq, QoS::ExactlyOnce);
    }
    let (first, second) = (next_publish(&mut slow), next_publish(&mut slow));
    assert_eq!((&first.payload[..], &second.payload[..]), (&b"1"[..], &b"2"[..]));
    let (first_id, second_id) = (first.packet_id.expect("QoS 2"), second.packet_id.expect("QoS 2"));
    slow.send(&Packet::Pubrec(first_id));
    assert_eq!(slow.receive(), Packet::Pubrel(first_id));
    slow.expect_silence(QUIET, "the window holds both until PUBCOMP; three wait in the queue");

    publish_acknowledged(&mut publisher, 6, QoS::ExactlyOnce);
    slow.ping();
    let stalled = Instant::now();
    let sent = slow.expect_closed_within("a slow consumer at its bound", Duration::from_secs(5));
    assert!(sent.is_empty(), "nothing more was sent to it: {sent:?}");
    assert!(
        stalled.elapsed() >= Duration::from_millis(500),
        "closed {:?} after",
        stalled.elapsed()
    );

    let (mut back, present) = connect(&broker, &subscriber_id, false);
    assert!(present, "the session is kept [MQTT-3.2.2-2]");
    assert_eq!(back.receive(), Packet::Pubrel(first_id), "PUBREL resent, not PUBLISH");
    back.send(&Packet::Pubcomp(first_id));
    let again = next_publish(&mut back);
    assert_eq!(
        (again.packet_id, again.dup, &again.payload[..]),
        (Some(second_id), true, &b"2"[..])
    );
    // The application has "1" and "2" already; "2"'s id awaits PUBREL, so a resend is not new.
    let mut app = vec![b"1".to_vec(), b"2".to_vec()];
    let mut receiver = Qos2Receiver { awaiting_pubrel: HashSet::from([second_id.get()]) };
    back.send(&Packet::Pubrec(second_id));
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.len() < 5 && Instant::now() < deadline {
        receiver.pump(&mut back, &mut app, Duration::from_millis(50));
    }
    receiver.pump(&mut back, &mut app, QUIET);
    let expected: Vec<Vec<u8>> = (1..=5).map(|seq: u16| seq.to_string().into_bytes()).collect();
    assert_eq!(app, expected, "each once, in order; the sixth was dropped at the bound");
    publish_acknowledged(&mut publisher, 7, QoS::ExactlyOnce);
    receiver.pump(&mut back, &mut app, QUIET);
    assert_eq!(app.last().map(Vec::as_slice), Some(&b"7"[..]), "delivery goes on");
    back.disconnect();
    publisher.disconnect();
    let log = broker.stop();
    assert_eq!(support::counter_sum(&log, "messages_dropped_queue_full"), 1, "{log}");
    assert_eq!(support::counter_sum(&log, "slow_consumer"), 1, "{log}");
}

/// Reads the publisher's side for `window`: PUBACK and PUBCOMP complete a flow, PUBREC is
/// answered with PUBREL.
fn complete_publisher_flows(
    publisher: &mut Peer,
    acknowledged: &mut HashSet<u16>,
    window: Duration,
) {
    let deadline = Instant::now() + window;
    while let Some(packet) =
        publisher.receive_within(deadline.saturating_duration_since(Instant::now()))
    {
        match packet {
            Packet::Puback(id) | Packet::Pubcomp(id) => {
                assert!(acknowledged.insert(id.get()), "{id:?} acknowledged twice");
            }
            Packet::Pubrec(id) => publisher.send(&Packet::Pubrel(id)),
            other => panic!("publisher got {other:?}"),
        }
    }
}

/// Each of 1..=total received; the even ones (QoS 2) exactly once.
fn received_all(app: &[Vec<u8>], total: u16) -> Result<(), String> {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for payload in app {
        let text = std::str::from_utf8(payload).expect("our payloads are text");
        *counts.entry(text.parse().expect("a sequence number")).or_default() += 1;
    }
    let missing: Vec<u16> = (1..=total).filter(|seq| !counts.contains_key(seq)).collect();
    let doubled: Vec<u16> =
        counts.iter().filter(|&(seq, &n)| seq % 2 == 0 && n > 1).map(|(&seq, _)| seq).collect();
    if missing.is_empty() && doubled.is_empty() {
        return Ok(());
    }
    Err(format!("acknowledged but never received: {missing:?}; QoS 2 received twice: {doubled:?}"))
}

/// Publishes `seq` at `qos` and completes the flow: PUBACK, or PUBREC/PUBREL/PUBCOMP.
fn publish_acknowledged(publisher: &mut Peer, seq: u16, qos: QoS) {
    let id = packet_id(seq);
    let topic = format!("soak/{}", seq % 4);
    publisher.send(&publish_packet(&topic, qos, seq, false, seq.to_string().as_bytes()));
    if qos == QoS::AtLeastOnce {
        assert_eq!(publisher.receive(), Packet::Puback(id));
        return;
    }
    assert_eq!(publisher.receive(), Packet::Pubrec(id));
    publisher.send(&Packet::Pubrel(id));
    assert_eq!(publisher.receive(), Packet::Pubcomp(id));
}

/// Publishes one QoS 1 message from a fresh client and waits for PUBACK.
fn publish_qos1(broker: &Broker, topic: &str, payload: &[u8]) {
    let (mut publisher, _) = connect(broker, &unique_id("pub"), true);
    publisher.send(&publish_packet(topic, QoS::AtLeastOnce, 1, false, payload));
    assert_eq!(publisher.receive(), Packet::Puback(packet_id(1)));
    publisher.disconnect();
}

/// Publishes one QoS 2 message from a fresh client and completes its flow.
fn publish_qos2(broker: &Broker, topic: &str, payload: &[u8]) {
    let (mut publisher, _) = connect(broker, &unique_id("pub"), true);
    publisher.send(&publish_packet(topic, QoS::ExactlyOnce, 1, false, payload));
    assert_eq!(publisher.receive(), Packet::Pubrec(packet_id(1)));
    publisher.send(&Packet::Pubrel(packet_id(1)));
    assert_eq!(publisher.receive(), Packet::Pubcomp(packet_id(1)));
    publisher.disconnect();
}

/// The receiving side of a subscriber whose session state outlives its connections, as a
/// persistent client's must [MQTT-4.1.0-1]: a QoS 2 message goes to the application when its
/// PUBLISH first arrives, and its packet id is remembered until PUBREL, so a DUP resend of it
/// is acknowledged but not delivered again (the receiver's half of [MQTT-4.3.3-2]).
#[derive(Default)]
struct Qos2Receiver {
    awaiting_pubrel: HashSet<u16>,
}

impl Qos2Receiver {
    /// Handles what arrives within `window`, acknowledging everything.
    fn pump(&mut self, peer: &mut Peer, app: &mut Vec<Vec<u8>>, window: Duration) {
        let deadline = Instant::now() + window;
        while let Some(packet) =
            peer.receive_within(deadline.saturating_duration_since(Instant::now()))
        {
            match packet {
                Packet::Publish(publish) => match (publish.qos, publish.packet_id) {
                    (QoS::ExactlyOnce, Some(id)) => {
                        if self.awaiting_pubrel.insert(id.get()) {
                            app.push(publish.payload.to_vec());
                        }
                        peer.send(&Packet::Pubrec(id));
                    }
                    (QoS::AtLeastOnce, Some(id)) => {
                        app.push(publish.payload.to_vec());
                        peer.send(&Packet::Puback(id));
                    }
                    _ => app.push(publish.payload.to_vec()),
                },
                Packet::Pubrel(id) => {
                    self.awaiting_pubrel.remove(&id.get());
                    peer.send(&Packet::Pubcomp(id));
                }
                other => panic!("subscriber got {other:?}"),
            }
        }
    }
}
