//! PUBLISH routing on one worker: QoS downgrade, overlapping subscriptions, RETAIN flag on
//! forwarding, acknowledgements to the publisher, order.

use super::harness::*;
use crate::broker::BrokerConfig;
use crate::protocol::{Packet, QoS};

#[test]
fn delivered_qos_is_the_minimum_of_published_and_granted_mqtt_3_8_4_6() {
    use QoS::*;
    // (published, granted, delivered)
    let cases = [
        (AtMostOnce, ExactlyOnce, AtMostOnce),
        (AtLeastOnce, AtMostOnce, AtMostOnce),
        (AtLeastOnce, ExactlyOnce, AtLeastOnce),
        (ExactlyOnce, AtLeastOnce, AtLeastOnce),
        (ExactlyOnce, ExactlyOnce, ExactlyOnce),
    ];
    for (published, granted, delivered) in cases {
        let mut cluster = Cluster::single(BrokerConfig::default());
        let subscriber = cluster.connect("s", true);
        let publisher = cluster.connect("p", true);
        cluster.subscribe(subscriber, &[("q", granted)]);
        cluster.publish(publisher, "q", b"m", published, false);
        let got = cluster.recv_publishes(subscriber);
        assert_eq!(got.len(), 1, "{published:?} at {granted:?}");
        assert_eq!(got[0].qos, delivered, "{published:?} at {granted:?}");
        assert_eq!(got[0].packet_id.is_some(), delivered != AtMostOnce, "[MQTT-2.3.1-5]");
        assert!(!got[0].dup, "a first delivery has DUP=0 [MQTT-3.3.1-1]");
    }
}

#[test]
fn the_publisher_is_acknowledged_per_qos_mqtt_4_3_2_2_and_4_3_3_2() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let publisher = cluster.connect("p", true);
    cluster.send(publisher, publish_packet("t", b"0", QoS::AtMostOnce, false, 1));
    assert!(cluster.recv(publisher).is_empty(), "QoS 0 is not acknowledged");
    cluster.send(publisher, publish_packet("t", b"1", QoS::AtLeastOnce, false, 7));
    assert_eq!(cluster.recv(publisher), vec![Packet::Puback(pid(7))]);
    cluster.send(publisher, publish_packet("t", b"2", QoS::ExactlyOnce, false, 8));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(8))]);
    cluster.send(publisher, Packet::Pubrel(pid(8)));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubcomp(pid(8))], "[MQTT-3.6.4-1]");
    assert_eq!(cluster.broker(0).stats().messages_received, 3);
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos_mqtt_3_3_5_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(
        subscriber,
        &[("a/#", QoS::AtMostOnce), ("a/+", QoS::ExactlyOnce), ("a/b", QoS::AtLeastOnce)],
    );
    cluster.publish(publisher, "a/b", b"x", QoS::ExactlyOnce, false);
    let got = cluster.recv_publishes(subscriber);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
}

#[test]
fn forwarded_messages_have_retain_0_mqtt_3_3_1_9() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("r", QoS::AtLeastOnce)]);
    cluster.publish(publisher, "r", b"kept", QoS::AtLeastOnce, true);
    let got = cluster.recv_publishes(subscriber);
    assert_eq!(got.len(), 1);
    assert!(!got[0].retain, "an established subscription gets RETAIN=0");
}

#[test]
fn wildcards_at_the_first_level_do_not_match_dollar_topics_mqtt_4_7_2_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("#", QoS::AtMostOnce), ("+/x", QoS::AtMostOnce)]);
    cluster.publish(publisher, "$private/x", b"no", QoS::AtMostOnce, false);
    cluster.publish(publisher, "public/x", b"yes", QoS::AtMostOnce, false);
    let got = cluster.recv_publishes(subscriber);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.as_ref(), b"yes");
}

#[test]
fn every_matching_session_gets_one_copy_mqtt_4_5_0_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let publisher = cluster.connect("p", true);
    let subscribers: Vec<Client> = (0..5)
        .map(|n| {
            let client = cluster.connect(&format!("s{n}"), true);
            cluster.subscribe(client, &[("fan/+", QoS::AtLeastOnce)]);
            client
        })
        .collect();
    cluster.publish(publisher, "fan/out", b"all", QoS::AtLeastOnce, false);
    for subscriber in subscribers {
        let got = cluster.recv_publishes(subscriber);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic.as_str(), "fan/out");
        assert_eq!(got[0].payload.as_ref(), b"all");
    }
    assert_eq!(cluster.broker(0).stats().messages_sent, 5);
}

#[test]
fn one_publishers_messages_arrive_in_order_at_each_qos_mqtt_4_6_0_6() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut cluster = Cluster::single(BrokerConfig::default());
        let subscriber = cluster.connect("s", true);
        cluster.set_auto_ack(subscriber, true);
        let publisher = cluster.connect("p", true);
        cluster.set_auto_ack(publisher, true);
        cluster.subscribe(subscriber, &[("o", QoS::ExactlyOnce)]);
        for n in 0..100u32 {
            cluster.publish(publisher, "o", &n.to_be_bytes(), qos, false);
            if qos == QoS::ExactlyOnce {
                let id = cluster.last_packet_id(publisher);
                cluster.send(publisher, Packet::Pubrel(pid(id)));
            }
        }
        let got: Vec<u32> = cluster
            .recv_publishes(subscriber)
            .iter()
            .map(|p| u32::from_be_bytes(p.payload.as_ref().try_into().expect("4 bytes")))
            .collect();
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "{qos:?}");
    }
}

#[test]
fn a_session_can_receive_its_own_messages() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("self", true);
    cluster.subscribe(client, &[("me", QoS::AtMostOnce)]);
    cluster.publish(client, "me", b"echo", QoS::AtMostOnce, false);
    assert_eq!(cluster.recv_publishes(client).len(), 1);
}
