//! Keepalive, connect timeout and persistent-session expiry, on the fake clock.

use super::harness::*;
use crate::broker::keepalive::BUCKET_MILLIS;
use crate::broker::{BrokerConfig, CloseReason};
use crate::protocol::{Connect, Packet, QoS};

fn keepalive_connect(id: &str, keep_alive_secs: u16) -> Connect {
    Connect { keep_alive_secs, ..connect_packet(id, true) }
}

#[test]
fn silence_for_one_and_a_half_keepalives_closes_mqtt_3_1_2_24() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let (client, _) = cluster.connect_on(0, keepalive_connect("k", 10));
    cluster.advance(15_000 - 1);
    assert_eq!(cluster.ended(client), None, "not before 1.5 x 10 s");
    cluster.advance(1 + BUCKET_MILLIS);
    assert_eq!(cluster.ended(client), Some(Ended::ByBroker(CloseReason::KeepaliveTimeout)));
    assert_eq!(cluster.broker(0).stats().closes.keepalive_timeout, 1);
}

#[test]
fn any_packet_resets_the_keepalive_mqtt_3_1_2_23() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let (client, _) = cluster.connect_on(0, keepalive_connect("k", 10));
    for _ in 0..10 {
        cluster.advance(9_000);
        cluster.send(client, Packet::Pingreq);
        assert_eq!(cluster.recv(client), vec![Packet::Pingresp], "[MQTT-3.12.4-1]");
    }
    cluster.advance(14_000);
    assert_eq!(cluster.ended(client), None);
    cluster.advance(1_000 + BUCKET_MILLIS);
    assert!(cluster.ended(client).is_some());
}

#[test]
fn keepalive_zero_never_times_out() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let (client, _) = cluster.connect_on(0, keepalive_connect("k", 0));
    cluster.advance(24 * 3600 * 1000);
    assert_eq!(cluster.ended(client), None);
}

#[test]
fn keepalive_expiry_publishes_the_will_mqtt_3_1_2_8() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let watcher = cluster.connect("w", true);
    cluster.subscribe(watcher, &[("lwt", QoS::AtMostOnce)]);
    let connect = Connect {
        will: Some(will("lwt", b"timeout", QoS::AtMostOnce, false)),
        ..keepalive_connect("k", 2)
    };
    cluster.connect_on(0, connect);
    cluster.advance(3_000 + BUCKET_MILLIS);
    let got = cluster.recv_publishes(watcher);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.as_ref(), b"timeout");
}

#[test]
fn a_connection_without_connect_is_closed_at_the_connect_timeout() {
    let config = BrokerConfig { connect_timeout_secs: 5, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let client = cluster.open(0);
    cluster.advance(4_999);
    assert_eq!(cluster.ended(client), None);
    cluster.advance(1 + BUCKET_MILLIS);
    assert_eq!(cluster.ended(client), Some(Ended::ByBroker(CloseReason::ConnectTimeout)));
    assert_eq!(cluster.broker(0).connection_count(), 0);
}

#[test]
fn connecting_in_time_cancels_the_connect_timeout() {
    let config = BrokerConfig { connect_timeout_secs: 5, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let client = cluster.open(0);
    cluster.advance(1_000);
    cluster.send(client, Packet::Connect(Box::new(keepalive_connect("late", 0))));
    cluster.advance(60_000);
    assert_eq!(cluster.ended(client), None);
}

#[test]
fn unused_persistent_sessions_expire() {
    let config = BrokerConfig { persistent_client_expiration_secs: 60, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let client = cluster.connect("gone", false);
    cluster.subscribe(client, &[("x", QoS::AtLeastOnce)]);
    cluster.send(client, Packet::Disconnect);
    cluster.advance(59_000);
    assert_eq!(cluster.broker(0).session_count(), 1);
    // Coming back and leaving again restarts the clock.
    let again = cluster.connect("gone", false);
    cluster.send(again, Packet::Disconnect);
    cluster.advance(59_000);
    assert_eq!(cluster.broker(0).session_count(), 1);
    cluster.advance(1_000 + BUCKET_MILLIS);
    assert_eq!(cluster.broker(0).session_count(), 0);
    assert_eq!(cluster.broker(0).subscription_count(), 0);
    assert_eq!(cluster.broker(0).stats().sessions_expired, 1);
}

#[test]
fn the_timing_wheel_holds_one_timer_per_connection() {
    // Lazy re-checks re-file a timer instead of adding one: the wheel does not grow with
    // traffic or time.
    let mut cluster = Cluster::single(BrokerConfig::default());
    let clients: Vec<Client> =
        (0..20).map(|n| cluster.connect_on(0, keepalive_connect(&format!("c{n}"), 1)).0).collect();
    for _ in 0..50 {
        cluster.advance(700);
        for &client in &clients {
            cluster.send(client, Packet::Pingreq);
        }
    }
    assert!(clients.iter().all(|&c| cluster.ended(c).is_none()));
    assert!(cluster.broker(0).timer_count() <= 20, "{}", cluster.broker(0).timer_count());
}
