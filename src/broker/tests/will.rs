//! The last will: when it is published, and how.

use super::harness::*;
use crate::broker::{BrokerConfig, CloseReason};
use crate::protocol::{Connect, DecodeError, Packet, QoS, TopicName};

fn with_will(id: &str, qos: QoS, retain: bool) -> Connect {
    Connect { will: Some(will("status/dead", b"bye", qos, retain)), ..connect_packet(id, true) }
}

fn watch(cluster: &mut Cluster) -> Client {
    let watcher = cluster.connect("watcher", true);
    cluster.subscribe(watcher, &[("status/#", QoS::ExactlyOnce)]);
    watcher
}

#[test]
fn the_will_is_published_on_abnormal_close_mqtt_3_1_2_8() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let watcher = watch(&mut cluster);
    let (client, _) = cluster.connect_on(0, with_will("w", QoS::AtLeastOnce, false));
    cluster.drop_client(client);
    let got = cluster.recv_publishes(watcher);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].topic.as_str(), got[0].payload.as_ref()), ("status/dead", &b"bye"[..]));
    assert_eq!(got[0].qos, QoS::AtLeastOnce, "with its QoS [MQTT-3.1.2-9]");
    assert_eq!(cluster.broker(0).stats().wills_published, 1);
}

#[test]
fn the_will_is_published_after_a_protocol_error_mqtt_4_8_0_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let watcher = watch(&mut cluster);
    let (client, _) = cluster.connect_on(0, with_will("w", QoS::AtMostOnce, false));
    let (conn, now) = (cluster.conn_of(client), cluster.now);
    cluster.brokers[0].handle_decode_error(conn, DecodeError::ReservedPacketType(0), now);
    cluster.run();
    assert_eq!(cluster.recv_publishes(watcher).len(), 1);
}

#[test]
fn disconnect_discards_the_will_mqtt_3_14_4_3() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let watcher = watch(&mut cluster);
    let (client, _) = cluster.connect_on(0, with_will("w", QoS::AtLeastOnce, true));
    cluster.send(client, Packet::Disconnect);
    assert_eq!(cluster.ended(client), Some(Ended::ByBroker(CloseReason::ClientDisconnect)));
    assert!(cluster.recv_publishes(watcher).is_empty());
    assert_eq!(cluster.broker(0).retained_count(), 0);
}

#[test]
fn a_will_with_retain_is_retained_mqtt_3_1_2_17() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let (client, _) = cluster.connect_on(0, with_will("w", QoS::AtLeastOnce, true));
    cluster.drop_client(client);
    let kept = cluster.broker(0).retained(&TopicName::from_static("status/dead"));
    assert_eq!(kept.map(|m| m.payload.as_ref()), Some(&b"bye"[..]));
    // A later subscriber gets it with RETAIN=1.
    let late = cluster.connect("late", true);
    cluster.subscribe(late, &[("status/dead", QoS::AtLeastOnce)]);
    let got = cluster.recv_publishes(late);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
}

#[test]
fn a_will_without_retain_is_not_retained_mqtt_3_1_2_16() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let (client, _) = cluster.connect_on(0, with_will("w", QoS::AtMostOnce, false));
    cluster.drop_client(client);
    assert_eq!(cluster.broker(0).retained_count(), 0);
}

#[test]
fn the_will_is_published_once_mqtt_3_1_2_10() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let watcher = watch(&mut cluster);
    let (client, _) = cluster.connect_on(0, with_will("w", QoS::AtMostOnce, false));
    cluster.drop_client(client);
    let (conn, now) = (cluster.conn_of(client), cluster.now);
    cluster.brokers[0].handle_closed(conn, now); // a late second report changes nothing
    cluster.run();
    assert_eq!(cluster.recv_publishes(watcher).len(), 1);
}

#[test]
fn shutdown_closes_everyone_and_publishes_wills() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let watcher = watch(&mut cluster);
    let (client, _) = cluster.connect_on(0, with_will("w", QoS::AtMostOnce, false));
    let now = cluster.now;
    cluster.brokers[0].handle_shutdown(now);
    cluster.run();
    assert_eq!(cluster.ended(client), Some(Ended::ByBroker(CloseReason::Shutdown)));
    assert_eq!(cluster.ended(watcher), Some(Ended::ByBroker(CloseReason::Shutdown)));
    assert_eq!(cluster.broker(0).connection_count(), 0);
}
