//! `$SYS/broker/...`: aggregated on worker 0, published retained each interval.

use std::collections::HashMap;

use super::harness::*;
use crate::broker::BrokerConfig;
use crate::protocol::QoS;

fn sys_values(cluster: &mut Cluster, client: Client) -> HashMap<String, String> {
    cluster
        .recv_publishes(client)
        .into_iter()
        .map(|p| {
            (p.topic.as_str().to_owned(), String::from_utf8(p.payload.to_vec()).expect("text"))
        })
        .collect()
}

#[test]
fn sys_topics_aggregate_every_worker_with_mosquitto_names() {
    let workers = 2;
    let config = BrokerConfig { sys_interval_secs: 10, ..BrokerConfig::default() };
    let mut cluster = Cluster::new(workers, config);
    let watcher_id = client_id_on(1, workers, "watch");
    let (watcher, _) = cluster.connect_on(1, connect_packet(&watcher_id, true));
    cluster.subscribe(watcher, &[("$SYS/#", QoS::AtMostOnce)]);
    let publisher_id = client_id_on(0, workers, "pub");
    let (publisher, _) = cluster.connect_on(0, connect_packet(&publisher_id, false));
    cluster.publish(publisher, "a", b"1", QoS::AtMostOnce, false);
    cluster.publish(publisher, "b", b"2", QoS::AtMostOnce, true);
    // Worker 0 publishes each interval with the latest snapshot each worker sent it, so the
    // other workers' figures are an interval old: after three intervals, worker 1's snapshot
    // counts the $SYS messages of the first round it delivered.
    cluster.advance(30_000);
    let values = sys_values(&mut cluster, watcher);
    assert_eq!(values["$SYS/broker/clients/connected"], "2");
    assert_eq!(values["$SYS/broker/clients/total"], "2");
    assert_eq!(values["$SYS/broker/messages/received"], "2");
    assert_eq!(values["$SYS/broker/subscriptions/count"], "1");
    // One retained by the client, and the $SYS topics of the first interval (Mosquitto
    // counts its own $SYS messages too).
    let retained = 1 + crate::broker::sys::TOPICS.len();
    assert_eq!(values["$SYS/broker/retained messages/count"], retained.to_string());
    assert_eq!(values["$SYS/broker/uptime"], "30 seconds");
    assert!(values["$SYS/broker/version"].starts_with("ringmq version "));
    let sent: u64 = values["$SYS/broker/messages/sent"].parse().expect("a number");
    assert!(sent >= 15, "the first round of $SYS messages was sent: {sent}");
    let bytes: u64 = values["$SYS/broker/bytes/received"].parse().expect("a number");
    assert!(bytes > 0);
    assert!(values["$SYS/broker/bytes/sent"].parse::<u64>().expect("a number") > 0);
}

#[test]
fn sys_messages_are_retained_for_late_subscribers() {
    let config = BrokerConfig { sys_interval_secs: 5, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    cluster.advance(5_000);
    let late = cluster.connect("late", true);
    cluster.subscribe(late, &[("$SYS/broker/version", QoS::AtMostOnce)]);
    let got = cluster.recv_publishes(late);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
}

#[test]
fn sys_interval_zero_publishes_nothing() {
    let config = BrokerConfig { sys_interval_secs: 0, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    assert_eq!(cluster.broker(0).next_deadline(), None);
    cluster.advance(3_600_000);
    assert_eq!(cluster.broker(0).retained_count(), 0);
}
