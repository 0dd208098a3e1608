//! Retained messages: store, replace, delete, deliver to new subscriptions, expire, bound,
//! and replicate across workers through the topic's owner.

use super::harness::*;
use crate::broker::{BrokerConfig, WorkerId};
use crate::protocol::{QoS, TopicName};

fn retained_payload(cluster: &Cluster, worker: u16, topic_text: &str) -> Option<Vec<u8>> {
    let topic = TopicName::try_from(topic_text).expect("valid");
    cluster.broker(worker).retained(&topic).map(|m| m.payload.to_vec())
}

#[test]
fn a_new_subscription_gets_every_matching_retained_message_with_retain_1_mqtt_3_3_1_6() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "r/a", b"A", QoS::AtLeastOnce, true);
    cluster.publish(publisher, "r/b", b"B", QoS::ExactlyOnce, true);
    cluster.publish(publisher, "other", b"O", QoS::AtMostOnce, true);
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("r/+", QoS::AtLeastOnce)]);
    let mut got = cluster.recv_publishes(subscriber);
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!(got.len(), 2);
    for publish in &got {
        assert!(publish.retain, "[MQTT-3.3.1-8]");
        assert_eq!(publish.qos, QoS::AtLeastOnce, "min(retained QoS, granted)");
    }
    assert_eq!(got[0].payload.as_ref(), b"A");
    assert_eq!(got[1].payload.as_ref(), b"B");
}

#[test]
fn a_retained_message_replaces_the_previous_one_mqtt_3_3_1_5() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "r", b"old", QoS::AtLeastOnce, true);
    cluster.publish(publisher, "r", b"new", QoS::AtMostOnce, true); // [MQTT-3.3.1-7]
    assert_eq!(retained_payload(&cluster, 0, "r"), Some(b"new".to_vec()));
    assert_eq!(cluster.broker(0).retained_count(), 1);
}

#[test]
fn an_empty_retained_payload_deletes_and_is_not_stored_mqtt_3_3_1_10_and_11() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("r", QoS::AtMostOnce)]);
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "r", b"x", QoS::AtMostOnce, true);
    cluster.publish(publisher, "r", b"", QoS::AtMostOnce, true);
    assert_eq!(cluster.broker(0).retained_count(), 0);
    // The empty message itself is forwarded as normal to current subscribers.
    let got = cluster.recv_publishes(subscriber);
    assert_eq!(got.len(), 2);
    assert!(got[1].payload.is_empty());
    let late = cluster.connect("late", true);
    cluster.subscribe(late, &[("r", QoS::AtMostOnce)]);
    assert!(cluster.recv_publishes(late).is_empty());
}

#[test]
fn retain_0_does_not_touch_the_store_mqtt_3_3_1_12() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "r", b"kept", QoS::AtMostOnce, true);
    cluster.publish(publisher, "r", b"passing", QoS::AtMostOnce, false);
    assert_eq!(retained_payload(&cluster, 0, "r"), Some(b"kept".to_vec()));
}

#[test]
fn a_resubscribe_resends_retained_messages_mqtt_3_8_4_3() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "r", b"x", QoS::AtMostOnce, true);
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("r", QoS::AtMostOnce)]);
    cluster.subscribe(subscriber, &[("r", QoS::AtLeastOnce)]);
    assert_eq!(cluster.recv_publishes(subscriber).len(), 2);
}

#[test]
fn retained_messages_max_refuses_new_topics_but_allows_replacing() {
    let config = BrokerConfig { retained_messages_max: 2, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let publisher = cluster.connect("p", true);
    for topic_text in ["a", "b", "c"] {
        cluster.publish(publisher, topic_text, b"x", QoS::AtMostOnce, true);
    }
    assert_eq!(cluster.broker(0).retained_count(), 2);
    assert_eq!(cluster.broker(0).stats().retained_refused_full, 1);
    cluster.publish(publisher, "a", b"y", QoS::AtMostOnce, true);
    assert_eq!(retained_payload(&cluster, 0, "a"), Some(b"y".to_vec()));
}

#[test]
fn retained_messages_expire() {
    // $SYS off: its retained messages would be counted too.
    let config =
        BrokerConfig { retained_expiry_secs: 10, sys_interval_secs: 0, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "r", b"x", QoS::AtMostOnce, true);
    cluster.advance(9_000);
    assert_eq!(cluster.broker(0).retained_count(), 1);
    cluster.advance(2_000);
    assert_eq!(cluster.broker(0).retained_count(), 0);
    assert_eq!(cluster.broker(0).stats().retained_expired, 1);
}

#[test]
fn retained_updates_go_through_the_owner_and_reach_every_replica() {
    let workers = 3;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    // A topic owned by worker 2, published from a client on worker 0.
    let topic_text = topic_owned_by(2, workers, "owned");
    let publisher_id = client_id_on(0, workers, "pub");
    let (publisher, _) = cluster.connect_on(0, connect_packet(&publisher_id, true));
    for payload in [&b"1"[..], b"2", b"3"] {
        cluster.publish(publisher, &topic_text, payload, QoS::AtMostOnce, true);
    }
    for worker in 0..workers {
        assert_eq!(retained_payload(&cluster, worker, &topic_text), Some(b"3".to_vec()));
    }
    let log = &cluster.remote_log;
    assert!(log.contains(&(WorkerId(0), WorkerId(2), "Retain")), "sent to the owner");
    assert!(log.contains(&(WorkerId(2), WorkerId(0), "RetainApplied")), "broadcast back");
    assert!(log.contains(&(WorkerId(2), WorkerId(1), "RetainApplied")));
    // A subscriber homed on worker 1 gets it from its local replica.
    let subscriber_id = client_id_on(1, workers, "sub");
    let (subscriber, _) = cluster.connect_on(1, connect_packet(&subscriber_id, true));
    cluster.subscribe(subscriber, &[("owned/#", QoS::AtMostOnce)]);
    let got = cluster.recv_publishes(subscriber);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    // Deleting also reaches every replica.
    cluster.publish(publisher, &topic_text, b"", QoS::AtMostOnce, true);
    for worker in 0..workers {
        assert_eq!(cluster.broker(worker).retained_count(), 0, "worker {worker}");
    }
}
