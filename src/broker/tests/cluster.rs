//! Several workers: interest propagation, cross-worker publish, order, no re-forwarding.

use super::harness::*;
use crate::broker::{BrokerConfig, WorkerId};
use crate::protocol::{Packet, QoS};

/// A cluster of `workers` with one client homed on each worker (client `n` on worker `n`).
fn spread(workers: u16) -> (Cluster, Vec<Client>) {
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let clients = (0..workers)
        .map(|worker| {
            let id = client_id_on(worker, workers, "c");
            let (client, _) = cluster.connect_on(worker, connect_packet(&id, true));
            assert_eq!(cluster.where_is(client), WorkerId(worker));
            client
        })
        .collect();
    (cluster, clients)
}

fn count(cluster: &Cluster, name: &str) -> usize {
    cluster.remote_log.iter().filter(|(_, _, n)| *n == name).count()
}

#[test]
fn a_publish_reaches_subscribers_on_other_workers_mqtt_4_5_0_1() {
    let (mut cluster, clients) = spread(3);
    cluster.subscribe(clients[1], &[("x/+", QoS::AtLeastOnce)]);
    cluster.subscribe(clients[2], &[("x/#", QoS::AtMostOnce)]);
    cluster.publish(clients[0], "x/y", b"hop", QoS::AtLeastOnce, false);
    assert_eq!(
        cluster.recv(clients[0]),
        vec![Packet::Puback(pid(cluster.last_packet_id(clients[0])))]
    );
    let one = cluster.recv_publishes(clients[1]);
    let two = cluster.recv_publishes(clients[2]);
    assert_eq!((one.len(), two.len()), (1, 1));
    assert_eq!((one[0].qos, two[0].qos), (QoS::AtLeastOnce, QoS::AtMostOnce));
    assert_eq!(count(&cluster, "Publish"), 2, "one per interested worker, none re-forwarded");
}

#[test]
fn only_interested_workers_are_sent_the_publish() {
    let (mut cluster, clients) = spread(4);
    cluster.subscribe(clients[3], &[("only/3", QoS::AtMostOnce)]);
    cluster.publish(clients[0], "only/3", b"x", QoS::AtMostOnce, false);
    let publishes: Vec<_> = cluster.remote_log.iter().filter(|(_, _, n)| *n == "Publish").collect();
    assert_eq!(publishes, vec![&(WorkerId(0), WorkerId(3), "Publish")]);
}

#[test]
fn interest_is_told_on_first_subscriber_and_last_leaving() {
    let (mut cluster, clients) = spread(3);
    let second = cluster.connect_on(1, connect_packet(&client_id_on(1, 3, "d"), true)).0;
    cluster.subscribe(clients[1], &[("i", QoS::AtMostOnce)]);
    assert_eq!(count(&cluster, "Interest"), 2, "to the two other workers");
    cluster.subscribe(second, &[("i", QoS::AtMostOnce)]);
    assert_eq!(count(&cluster, "Interest"), 2, "not the first subscriber: nothing to tell");
    cluster.unsubscribe(clients[1], &["i"]);
    assert_eq!(count(&cluster, "Interest"), 2, "still one subscriber");
    cluster.drop_client(second);
    assert_eq!(count(&cluster, "Interest"), 4, "the last one left");
    cluster.publish(clients[0], "i", b"nobody", QoS::AtMostOnce, false);
    assert_eq!(count(&cluster, "Publish"), 0);
}

#[test]
fn order_per_publisher_and_topic_holds_across_workers_mqtt_4_6_0_6() {
    let (mut cluster, clients) = spread(2);
    cluster.set_auto_ack(clients[1], true);
    cluster.subscribe(clients[1], &[("seq", QoS::AtLeastOnce)]);
    for n in 0..200u32 {
        let qos = if n % 3 == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        cluster.publish(clients[0], "seq", &n.to_be_bytes(), qos, false);
    }
    let got: Vec<u32> = cluster
        .recv_publishes(clients[1])
        .iter()
        .map(|p| u32::from_be_bytes(p.payload.as_ref().try_into().expect("4 bytes")))
        .collect();
    assert_eq!(got, (0..200).collect::<Vec<_>>());
}

#[test]
fn a_will_reaches_other_workers() {
    let (mut cluster, clients) = spread(2);
    cluster.subscribe(clients[1], &[("lwt", QoS::AtLeastOnce)]);
    let id = client_id_on(0, 2, "mortal");
    let connect = crate::protocol::Connect {
        will: Some(will("lwt", b"dead", QoS::AtLeastOnce, false)),
        ..connect_packet(&id, true)
    };
    let (mortal, _) = cluster.connect_on(1, connect); // handed to worker 0
    assert_eq!(cluster.where_is(mortal), WorkerId(0));
    cluster.drop_client(mortal);
    assert_eq!(cluster.recv_publishes(clients[1]).len(), 1);
}
