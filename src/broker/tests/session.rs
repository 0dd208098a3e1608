//! Persistent and clean sessions: what survives a disconnect, offline queueing, redelivery.

use super::harness::*;
use crate::broker::BrokerConfig;
use crate::protocol::{Packet, QoS};

#[test]
fn a_persistent_session_keeps_subscriptions_and_queues_qos1_and_2_mqtt_3_1_2_4_and_5() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("keep", false);
    cluster.subscribe(subscriber, &[("k/#", QoS::ExactlyOnce)]);
    cluster.drop_client(subscriber);
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "k/0", b"zero", QoS::AtMostOnce, false);
    cluster.publish(publisher, "k/1", b"one", QoS::AtLeastOnce, false);
    cluster.publish(publisher, "k/2", b"two", QoS::ExactlyOnce, false);
    assert_eq!(cluster.broker(0).queued_message_count(), 2, "QoS 0 is not queued by default");
    let (back, connack) = cluster.connect_on(0, connect_packet("keep", false));
    assert!(connack.session_present);
    let got = cluster.recv_acking(back);
    let summary: Vec<(&[u8], QoS)> = got.iter().map(|p| (p.payload.as_ref(), p.qos)).collect();
    assert_eq!(summary, vec![(&b"one"[..], QoS::AtLeastOnce), (&b"two"[..], QoS::ExactlyOnce)]);
    // The subscription is still there without subscribing again.
    cluster.publish(publisher, "k/3", b"three", QoS::AtLeastOnce, false);
    assert_eq!(cluster.recv_acking(back).len(), 1);
    assert_eq!(cluster.broker(0).queued_message_count(), 0);
    assert_eq!(cluster.broker(0).inflight_message_count(), 0);
}

#[test]
fn queue_qos0_messages_queues_qos0_for_offline_sessions() {
    let config = BrokerConfig { queue_qos0_messages: true, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let subscriber = cluster.connect("keep", false);
    cluster.subscribe(subscriber, &[("z", QoS::AtMostOnce)]);
    cluster.send(subscriber, Packet::Disconnect);
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "z", b"kept", QoS::AtMostOnce, false);
    let (back, _) = cluster.connect_on(0, connect_packet("keep", false));
    let got = cluster.recv_publishes(back);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtMostOnce);
}

#[test]
fn unacknowledged_publishes_and_pubrels_are_resent_on_reconnect_mqtt_4_4_0_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("r", false);
    cluster.subscribe(subscriber, &[("r/+", QoS::ExactlyOnce)]);
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "r/a", b"a", QoS::ExactlyOnce, false);
    cluster.publish(publisher, "r/b", b"b", QoS::AtLeastOnce, false);
    cluster.publish(publisher, "r/c", b"c", QoS::ExactlyOnce, false);
    let first = cluster.recv_publishes(subscriber);
    let ids: Vec<_> = first.iter().map(|p| p.packet_id.expect("QoS > 0")).collect();
    // "a" reaches PUBREL; "b" and "c" are not acknowledged at all.
    cluster.send(subscriber, Packet::Pubrec(ids[0]));
    assert_eq!(cluster.recv(subscriber), vec![Packet::Pubrel(ids[0])]);
    cluster.drop_client(subscriber);
    let (back, connack) = cluster.connect_on(0, connect_packet("r", false));
    assert!(connack.session_present);
    let received = cluster.recv(back);
    // In the original order [MQTT-4.6.0-1]: the PUBREL for "a", then "b" and "c" with DUP=1
    // and their original packet ids [MQTT-3.3.1-1].
    assert_eq!(received.len(), 3, "{received:?}");
    assert_eq!(received[0], Packet::Pubrel(ids[0]));
    for (packet, (payload, id)) in received[1..].iter().zip([(b"b", ids[1]), (b"c", ids[2])]) {
        let Packet::Publish(publish) = packet else { panic!("{packet:?}") };
        assert!(publish.dup);
        assert_eq!(publish.packet_id, Some(id));
        assert_eq!(publish.payload.as_ref(), payload);
    }
}

#[test]
fn a_clean_session_discards_everything_at_disconnect_mqtt_3_1_2_6() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("c", true);
    cluster.subscribe(subscriber, &[("c", QoS::AtLeastOnce)]);
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "c", b"x", QoS::AtLeastOnce, false);
    assert_eq!(cluster.broker(0).inflight_message_count(), 1);
    cluster.send(subscriber, Packet::Disconnect);
    assert_eq!(cluster.broker(0).session_count(), 1, "only the publisher's");
    assert_eq!(cluster.broker(0).inflight_message_count(), 0);
    let (_, connack) = cluster.connect_on(0, connect_packet("c", false));
    assert!(!connack.session_present);
}

#[test]
fn incoming_qos2_state_survives_a_reconnect_mqtt_4_3_3_2() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("e", QoS::AtMostOnce)]);
    let publisher = cluster.connect("pub", false);
    cluster.send(publisher, publish_packet("e", b"x", QoS::ExactlyOnce, false, 5));
    assert_eq!(cluster.recv_publishes(subscriber).len(), 1);
    cluster.drop_client(publisher);
    let (back, _) = cluster.connect_on(0, connect_packet("pub", false));
    // The client never saw PUBREC, so it re-sends: not delivered again.
    let again = resent_packet("e", b"x", QoS::ExactlyOnce, false, 5);
    cluster.send(back, again);
    assert_eq!(cluster.recv(back), vec![Packet::Pubrec(pid(5))]);
    assert!(cluster.recv_publishes(subscriber).is_empty());
}

#[test]
fn a_disconnected_persistent_session_counts_in_clients_total() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let a = cluster.connect("a", false);
    cluster.connect("b", true);
    cluster.send(a, Packet::Disconnect);
    let stats = cluster.broker(0).stats();
    assert_eq!((stats.clients_connected, stats.clients_total), (1, 2));
}

#[test]
fn a_new_qos0_message_does_not_overtake_qos0_queued_while_offline_mqtt_4_6_0_6() {
    let config = BrokerConfig {
        queue_qos0_messages: true,
        max_inflight_messages: 1,
        ..BrokerConfig::default()
    };
    let mut cluster = Cluster::single(config);
    let subscriber = cluster.connect("keep", false);
    cluster.subscribe(subscriber, &[("z", QoS::AtLeastOnce)]);
    cluster.send(subscriber, Packet::Disconnect);
    let publisher = cluster.connect("p", true);
    // Queued offline: QoS 1 "a", "b", then QoS 0 "0".
    cluster.publish(publisher, "z", b"a", QoS::AtLeastOnce, false);
    cluster.publish(publisher, "z", b"b", QoS::AtLeastOnce, false);
    cluster.publish(publisher, "z", b"0", QoS::AtMostOnce, false);
    // Back: the window of 1 lets "a" out; "b" and "0" still wait.
    let (back, _) = cluster.connect_on(0, connect_packet("keep", false));
    // A new QoS 0 message must queue behind "0" rather than overtake it.
    cluster.publish(publisher, "z", b"1", QoS::AtMostOnce, false);
    let got = cluster.recv_acking(back);
    let payloads: Vec<&[u8]> = got.iter().map(|p| p.payload.as_ref()).collect();
    assert_eq!(payloads, vec![&b"a"[..], b"b", b"0", b"1"]);
}
