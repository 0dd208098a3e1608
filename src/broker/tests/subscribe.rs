//! SUBSCRIBE and UNSUBSCRIBE: SUBACK codes, replacement, limits, UNSUBACK.

use super::harness::*;
use crate::broker::BrokerConfig;
use crate::protocol::{Packet, QoS, SubackCode};

#[test]
fn suback_grants_each_requested_qos_in_order_mqtt_3_8_4_4_and_5() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("s", true);
    let codes = cluster.subscribe(
        client,
        &[("a", QoS::ExactlyOnce), ("b/+", QoS::AtMostOnce), ("c/#", QoS::AtLeastOnce)],
    );
    assert_eq!(
        codes,
        vec![
            SubackCode::Granted(QoS::ExactlyOnce),
            SubackCode::Granted(QoS::AtMostOnce),
            SubackCode::Granted(QoS::AtLeastOnce),
        ]
    );
    assert_eq!(cluster.broker(0).subscription_count(), 3);
}

#[test]
fn a_resubscribe_replaces_the_subscription_mqtt_3_8_4_3() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("t", QoS::AtLeastOnce)]);
    cluster.subscribe(subscriber, &[("t", QoS::AtMostOnce)]);
    assert_eq!(cluster.broker(0).subscription_count(), 1, "replaced, not added");
    cluster.publish(publisher, "t", b"x", QoS::AtLeastOnce, false);
    let got = cluster.recv_publishes(subscriber);
    assert_eq!(got.len(), 1, "delivered once");
    assert_eq!(got[0].qos, QoS::AtMostOnce, "at the new maximum QoS");
}

#[test]
fn filters_past_subscriptions_per_session_max_get_0x80() {
    let config = BrokerConfig { subscriptions_per_session_max: 2, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let client = cluster.connect("s", true);
    let codes = cluster.subscribe(
        client,
        &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce), ("c", QoS::AtMostOnce)],
    );
    assert_eq!(codes[2], SubackCode::Failure);
    // Replacing an existing filter still works at the bound.
    let codes = cluster.subscribe(client, &[("a", QoS::AtLeastOnce)]);
    assert_eq!(codes, vec![SubackCode::Granted(QoS::AtLeastOnce)]);
    assert_eq!(cluster.broker(0).stats().subscriptions_refused, 1);
    assert_eq!(cluster.broker(0).subscription_count(), 2);
}

#[test]
fn unsuback_is_sent_even_when_nothing_matched_mqtt_3_10_4_5() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("u", true);
    let id = cluster.unsubscribe(client, &["never/subscribed"]);
    assert_eq!(cluster.recv(client), vec![Packet::Unsuback(id)], "[MQTT-3.10.4-4]");
}

#[test]
fn unsubscribe_stops_delivery_mqtt_3_10_4_2() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("t/+", QoS::AtMostOnce), ("t/x", QoS::AtMostOnce)]);
    let id = cluster.unsubscribe(subscriber, &["t/+", "other"]);
    assert_eq!(cluster.recv(subscriber), vec![Packet::Unsuback(id)]);
    assert_eq!(cluster.broker(0).subscription_count(), 1);
    cluster.publish(publisher, "t/y", b"no", QoS::AtMostOnce, false);
    cluster.publish(publisher, "t/x", b"yes", QoS::AtMostOnce, false);
    let got = cluster.recv_publishes(subscriber);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.as_ref(), b"yes");
}

#[test]
fn a_clean_session_leaves_nothing_in_the_index_mqtt_3_1_2_6() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("s", true);
    cluster.subscribe(client, &[("a/#", QoS::AtLeastOnce), ("b", QoS::AtMostOnce)]);
    cluster.drop_client(client);
    assert_eq!(cluster.broker(0).subscription_count(), 0);
    assert_eq!(cluster.broker(0).session_count(), 0);
}
