//! The QoS 1 and 2 flows in both directions, duplicates, and unexpected acknowledgements.

use super::harness::*;
use crate::broker::BrokerConfig;
use crate::protocol::{Packet, Publish, QoS};

fn one_publish(received: Vec<Packet>) -> Publish {
    match received.as_slice() {
        [Packet::Publish(publish)] => publish.clone(),
        other => panic!("expected one PUBLISH, got {other:?}"),
    }
}

#[test]
fn outgoing_qos2_goes_publish_pubrec_pubrel_pubcomp_mqtt_4_3_3_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("two", QoS::ExactlyOnce)]);
    cluster.publish(publisher, "two", b"x", QoS::ExactlyOnce, false);
    let publish = one_publish(cluster.recv(subscriber));
    let id = publish.packet_id.expect("QoS 2 has an id");
    assert_eq!(cluster.broker(0).inflight_message_count(), 1);
    cluster.send(subscriber, Packet::Pubrec(id));
    assert_eq!(cluster.recv(subscriber), vec![Packet::Pubrel(id)]);
    // A repeated PUBREC is answered with PUBREL again.
    cluster.send(subscriber, Packet::Pubrec(id));
    assert_eq!(cluster.recv(subscriber), vec![Packet::Pubrel(id)]);
    cluster.send(subscriber, Packet::Pubcomp(id));
    assert!(cluster.recv(subscriber).is_empty());
    assert_eq!(cluster.broker(0).inflight_message_count(), 0);
}

#[test]
fn incoming_qos2_is_delivered_exactly_once_method_b_mqtt_4_3_3_2() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("e", QoS::AtMostOnce)]);
    let publish = publish_packet("e", b"once", QoS::ExactlyOnce, false, 42);
    cluster.send(publisher, publish.clone());
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(42))]);
    // Method B: delivered on PUBLISH, not held until PUBREL.
    assert_eq!(cluster.recv_publishes(subscriber).len(), 1);
    // The PUBREC was lost; the client re-sends with DUP=1: acknowledged, not re-delivered.
    let Packet::Publish(mut again) = publish else { unreachable!() };
    again.dup = true;
    cluster.send(publisher, Packet::Publish(again));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(42))]);
    assert!(cluster.recv_publishes(subscriber).is_empty());
    assert_eq!(cluster.broker(0).session_info("p").expect("p").awaiting_pubrel, 1);
    cluster.send(publisher, Packet::Pubrel(pid(42)));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubcomp(pid(42))]);
    assert_eq!(cluster.broker(0).session_info("p").expect("p").awaiting_pubrel, 0);
    // After PUBREL the id is free: the same id is a new message.
    cluster.send(publisher, publish_packet("e", b"next", QoS::ExactlyOnce, false, 42));
    assert_eq!(cluster.recv_publishes(subscriber).len(), 1);
}

#[test]
fn pubrel_for_an_unknown_id_still_gets_pubcomp_mqtt_3_6_4_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("c", true);
    cluster.send(client, Packet::Pubrel(pid(9)));
    assert_eq!(cluster.recv(client), vec![Packet::Pubcomp(pid(9))]);
}

#[test]
fn incoming_qos2_ids_are_bounded_by_max_awaiting_pubrel() {
    let config = BrokerConfig { max_awaiting_pubrel: 2, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let client = cluster.connect("c", true);
    for id in 1..=2 {
        cluster.send(client, publish_packet("t", b"x", QoS::ExactlyOnce, false, id));
    }
    assert_eq!(cluster.ended(client), None);
    cluster.send(client, publish_packet("t", b"x", QoS::ExactlyOnce, false, 3));
    assert!(matches!(
        cluster.ended(client),
        Some(Ended::ByBroker(crate::broker::CloseReason::ProtocolViolation(_)))
    ));
}

#[test]
fn unexpected_acknowledgements_are_ignored_and_counted() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("c", true);
    cluster.send(client, Packet::Puback(pid(1)));
    cluster.send(client, Packet::Pubrec(pid(2)));
    cluster.send(client, Packet::Pubcomp(pid(3)));
    assert!(cluster.recv(client).is_empty());
    assert_eq!(cluster.ended(client), None);
    assert_eq!(cluster.broker(0).stats().unexpected_acks, 3);
}

#[test]
fn a_qos1_message_is_finished_by_puback_only() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("one", QoS::AtLeastOnce)]);
    cluster.publish(publisher, "one", b"x", QoS::AtLeastOnce, false);
    let id = one_publish(cluster.recv(subscriber)).packet_id.expect("QoS 1");
    cluster.send(subscriber, Packet::Pubcomp(id));
    assert_eq!(cluster.broker(0).inflight_message_count(), 1, "PUBCOMP does not finish QoS 1");
    cluster.send(subscriber, Packet::Puback(id));
    assert_eq!(cluster.broker(0).inflight_message_count(), 0);
}

#[test]
fn server_to_client_packets_from_a_client_are_a_protocol_violation() {
    for packet in [Packet::Pingresp, Packet::Unsuback(pid(1))] {
        let mut cluster = Cluster::single(BrokerConfig::default());
        let client = cluster.connect("c", true);
        cluster.send(client, packet);
        assert!(matches!(
            cluster.ended(client),
            Some(Ended::ByBroker(crate::broker::CloseReason::ProtocolViolation(_)))
        ));
    }
}

/// The `sim` fuzz target's finding `sim-qos2-duplicate-c8ac53a1`, at the broker: a client's
/// PUBLISH written on a connection it gave up arrives after the same message's flow completed
/// on its newer connection. The broker has sent PUBCOMP for the id, so it must take the late
/// PUBLISH as a new publication and deliver it again [MQTT-4.3.3-2]: nothing in it tells the
/// two apart (the old connection's DUP=0 copy was the first transmission).
#[test]
fn a_publish_from_an_abandoned_connection_after_pubcomp_is_a_new_publication_mqtt_4_3_3_2() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("q", QoS::ExactlyOnce)]);
    // The first connection's CONNECT and PUBLISH are still on their way.
    let stale = cluster.open(0);
    let publisher = cluster.connect("p", false);
    // Re-sent on reconnect [MQTT-4.4.0-1].
    let resent = resent_packet("q", b"m", QoS::ExactlyOnce, false, 1);
    cluster.send(publisher, resent.clone());
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(1))]);
    cluster.send(publisher, Packet::Pubrel(pid(1)));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubcomp(pid(1))]);
    assert_eq!(cluster.recv_acking(subscriber).len(), 1);
    // The stale connection's bytes arrive: its CONNECT takes the session over
    // [MQTT-3.1.4-2], and its PUBLISH reuses an id the broker has released.
    cluster.send(stale, Packet::Connect(Box::new(connect_packet("p", false))));
    assert!(cluster.ended(publisher).is_some(), "the newer connection is taken over");
    cluster.send(stale, publish_packet("q", b"m", QoS::ExactlyOnce, false, 1));
    let again = cluster.recv_acking(subscriber);
    assert_eq!(again.len(), 1, "a new publication is delivered: {again:?}");
    // Within one publication the rule holds: a re-sent copy before PUBREL is not delivered.
    cluster.send(stale, resent);
    assert!(cluster.recv_acking(subscriber).is_empty());
}
