//! Output flow control: the inflight window, the session queue, `outbuf_bytes_max`, slow
//! consumers, and the `Send` action contract.

use super::harness::*;
use crate::broker::{Action, Broker, BrokerConfig, CloseReason, ConnId, Millis, WorkerId};
use crate::protocol::{Connect, Packet, QoS};

#[test]
fn the_inflight_window_holds_back_the_rest_in_order() {
    let config = BrokerConfig { max_inflight_messages: 3, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("w", QoS::AtLeastOnce)]);
    for n in 0..10u8 {
        cluster.publish(publisher, "w", &[n], QoS::AtLeastOnce, false);
    }
    let first = cluster.recv_publishes(subscriber);
    assert_eq!(first.iter().map(|p| p.payload[0]).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(cluster.broker(0).queued_message_count(), 7);
    // Each PUBACK lets one more through, in order.
    let mut seen = vec![0, 1, 2];
    let mut outstanding: Vec<_> = first.iter().map(|p| p.packet_id.expect("QoS 1")).collect();
    while let Some(id) = outstanding.pop() {
        cluster.send(subscriber, Packet::Puback(id));
        for publish in cluster.recv_publishes(subscriber) {
            seen.push(publish.payload[0]);
            outstanding.push(publish.packet_id.expect("QoS 1"));
        }
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert_eq!(cluster.broker(0).inflight_message_count(), 0);
    assert_eq!(cluster.broker(0).queued_message_count(), 0);
}

#[test]
fn qos0_is_dropped_at_the_output_bound_and_qos1_waits() {
    let config = BrokerConfig { outbuf_bytes_max: 100, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("b", QoS::AtLeastOnce)]);
    cluster.stall(subscriber);
    let payload = [7u8; 40];
    for _ in 0..5 {
        cluster.publish(publisher, "b", &payload, QoS::AtMostOnce, false);
    }
    cluster.publish(publisher, "b", &payload, QoS::AtLeastOnce, false);
    // 45 bytes a packet: two fit under 100, the other three QoS 0 are dropped.
    assert_eq!(cluster.broker(0).stats().qos0_dropped_outbuf, 3);
    assert_eq!(cluster.broker(0).queued_message_count(), 1, "the QoS 1 one waits");
    cluster.release(subscriber);
    let got = cluster.recv_publishes(subscriber);
    assert_eq!(
        got.iter().map(|p| p.qos).collect::<Vec<_>>(),
        vec![QoS::AtMostOnce, QoS::AtMostOnce, QoS::AtLeastOnce]
    );
    assert_eq!(cluster.broker(0).queued_message_count(), 0);
}

#[test]
fn a_full_queue_while_online_closes_a_slow_consumer_and_keeps_its_session() {
    let config = BrokerConfig {
        max_inflight_messages: 2,
        max_queued_messages: 3,
        ..BrokerConfig::default()
    };
    let mut cluster = Cluster::single(config);
    let subscriber = cluster.connect("slow", false);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("q", QoS::AtLeastOnce)]);
    for n in 0..6u8 {
        cluster.publish(publisher, "q", &[n], QoS::AtLeastOnce, false);
    }
    assert_eq!(cluster.ended(subscriber), Some(Ended::ByBroker(CloseReason::SlowConsumer)));
    let stats = cluster.broker(0).stats();
    assert_eq!(stats.closes.slow_consumer, 1);
    assert_eq!(stats.messages_dropped_queue_full, 1);
    let info = cluster.broker(0).session_info("slow").expect("kept");
    assert_eq!((info.inflight, info.queued, info.connected), (2, 3, false));
    // Offline at the bound: dropped and counted, no close to make.
    cluster.publish(publisher, "q", b"late", QoS::AtLeastOnce, false);
    assert_eq!(cluster.broker(0).stats().messages_dropped_queue_full, 2);
    // Back online: the two unacknowledged, then the queue, in order [MQTT-4.6.0-1] [MQTT-4.6.0-6].
    let (back, connack) = cluster.connect_on(0, connect_packet("slow", false));
    assert!(connack.session_present);
    let got = cluster.recv_acking(back);
    assert_eq!(got.iter().map(|p| p.payload[0]).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert!(got[0].dup && got[1].dup && !got[2].dup, "only the resent ones are DUP [MQTT-3.3.1-1]");
}

#[test]
fn the_byte_bound_of_the_queue_applies_too() {
    let config =
        BrokerConfig { max_inflight_messages: 1, max_queued_bytes: 10, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let subscriber = cluster.connect("s", false);
    cluster.subscribe(subscriber, &[("q", QoS::AtLeastOnce)]);
    cluster.send(subscriber, Packet::Disconnect);
    let publisher = cluster.connect("p", true);
    for _ in 0..4 {
        cluster.publish(publisher, "q", &[1u8; 4], QoS::AtLeastOnce, false);
    }
    assert_eq!(cluster.broker(0).session_info("s").expect("kept").queued, 2, "8 of 10 bytes");
    assert_eq!(cluster.broker(0).stats().messages_dropped_queue_full, 2);
}

#[test]
fn send_is_emitted_once_per_empty_to_non_empty_transition() {
    let mut broker = Broker::new(BrokerConfig::default(), WorkerId(0), 1, Millis(0));
    let conn = ConnId::new(1, 0);
    broker.handle_open(conn, Millis(0));
    broker.handle_packet(conn, Packet::Connect(connect_packet("x", true)), Millis(0));
    for _ in 0..3 {
        broker.handle_packet(conn, Packet::Pingreq, Millis(0));
    }
    let sends = std::iter::from_fn(|| broker.poll_action())
        .filter(|action| matches!(action, Action::Send(_)))
        .count();
    assert_eq!(sends, 1, "CONNACK and three PINGRESPs share one Send");
    let mut out = Vec::new();
    let taken = broker.take_output(conn, &mut out);
    assert_eq!(taken, 4 + 3 * 2);
    broker.handle_packet(conn, Packet::Pingreq, Millis(0));
    assert!(matches!(broker.poll_action(), Some(Action::Send(c)) if c == conn));
    assert!(broker.poll_action().is_none());
}

#[test]
fn a_refused_connack_outlives_its_connection_until_taken() {
    let config = BrokerConfig { allow_anonymous: false, ..BrokerConfig::default() };
    let mut broker = Broker::new(config, WorkerId(0), 1, Millis(0));
    let conn = ConnId::new(1, 0);
    broker.handle_open(conn, Millis(0));
    let connect = Connect { ..connect_packet("x", true) };
    broker.handle_packet(conn, Packet::Connect(connect), Millis(0));
    let actions: Vec<Action> = std::iter::from_fn(|| broker.poll_action()).collect();
    assert!(matches!(actions[0], Action::Send(_)));
    assert!(matches!(actions[1], Action::Close(_, CloseReason::ConnectRefused(_))));
    // Taken on Close rather than on Send: still there, exactly once.
    let mut out = Vec::new();
    assert_eq!(broker.take_output(conn, &mut out), 4);
    assert_eq!(broker.take_output(conn, &mut out), 0);
    assert_eq!(broker.connection_count(), 0);
}
