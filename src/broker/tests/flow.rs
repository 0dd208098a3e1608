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
fn a_full_queue_while_online_drops_and_closes_only_after_the_timeout_without_acks() {
    let config = BrokerConfig {
        max_inflight_messages: 2,
        max_queued_messages: 3,
        slow_consumer_timeout_secs: 30,
        ..BrokerConfig::default()
    };
    let mut cluster = Cluster::single(config);
    let subscriber = cluster.connect("slow", false);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("q", QoS::AtLeastOnce)]);
    for n in 0..6u8 {
        cluster.publish(publisher, "q", &[n], QoS::AtLeastOnce, false);
    }
    // Two in flight, three queued, the sixth dropped like for an offline session.
    assert_eq!(cluster.broker(0).stats().messages_dropped_queue_full, 1);
    assert_eq!(cluster.ended(subscriber), None, "not closed at the first drop");
    cluster.advance(29_000);
    assert_eq!(cluster.ended(subscriber), None);
    cluster.advance(1_100); // The deadline, plus at most one timer bucket.
    assert_eq!(cluster.ended(subscriber), Some(Ended::ByBroker(CloseReason::SlowConsumer)));
    let stats = cluster.broker(0).stats();
    assert_eq!(stats.closes.slow_consumer, 1);
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
fn an_acknowledgement_restarts_the_slow_consumer_clock() {
    let config = BrokerConfig {
        max_inflight_messages: 1,
        max_queued_messages: 1,
        slow_consumer_timeout_secs: 30,
        ..BrokerConfig::default()
    };
    let mut cluster = Cluster::single(config);
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("q", QoS::AtLeastOnce)]);
    for n in 0..3u8 {
        cluster.publish(publisher, "q", &[n], QoS::AtLeastOnce, false);
    }
    assert_eq!(cluster.broker(0).stats().messages_dropped_queue_full, 1, "clock starts");
    cluster.advance(20_000);
    let first = cluster.recv_publishes(subscriber);
    cluster.send(subscriber, Packet::Puback(first[0].packet_id.expect("QoS 1")));
    // The ack moved the queue; at the bound again, a new drop starts a new clock at 20 s.
    cluster.publish(publisher, "q", b"x", QoS::AtLeastOnce, false);
    cluster.publish(publisher, "q", b"y", QoS::AtLeastOnce, false);
    assert_eq!(cluster.broker(0).stats().messages_dropped_queue_full, 2);
    cluster.advance(25_000); // 45 s after the first drop, 25 s after the second.
    assert_eq!(cluster.ended(subscriber), None, "progress 25 s ago");
    cluster.advance(5_100);
    assert_eq!(cluster.ended(subscriber), Some(Ended::ByBroker(CloseReason::SlowConsumer)));
}

#[test]
fn a_client_resending_to_its_own_full_queue_on_reconnect_recovers_mqtt_4_4_0_1() {
    // SIM_FINDINGS finding 6: a persistent client subscribed to the topic it publishes to
    // comes back to a full queue and re-sends its unacknowledged PUBLISH at once, as
    // [MQTT-4.4.0-1] requires; that message lands in its own full queue.
    let config = BrokerConfig {
        max_inflight_messages: 1,
        max_queued_messages: 3,
        slow_consumer_timeout_secs: 30,
        ..BrokerConfig::default()
    };
    let mut cluster = Cluster::single(config);
    let looped = cluster.connect("loop", false);
    cluster.subscribe(looped, &[("self", QoS::AtLeastOnce)]);
    cluster.send(looped, Packet::Disconnect);
    let publisher = cluster.connect("p", true);
    for n in 0..3u8 {
        cluster.publish(publisher, "self", &[n], QoS::AtLeastOnce, false);
    }
    let (back, _) = cluster.connect_on(0, connect_packet("loop", false));
    cluster.publish(publisher, "self", &[3], QoS::AtLeastOnce, false); // queue full again
    let resent = crate::protocol::Publish {
        dup: true,
        ..match publish_packet("self", &[9], QoS::AtLeastOnce, false, 77) {
            Packet::Publish(publish) => publish,
            _ => unreachable!("publish_packet builds a PUBLISH"),
        }
    };
    cluster.send(back, Packet::Publish(resent));
    assert_eq!(cluster.ended(back), None, "dropped, not disconnected");
    assert_eq!(cluster.broker(0).stats().messages_dropped_queue_full, 1);
    let got = cluster.recv_acking(back);
    assert_eq!(got.iter().map(|p| p.payload[0]).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    cluster.advance(31_000);
    assert_eq!(cluster.ended(back), None, "it acknowledged its window: never cut off");
    assert_eq!(cluster.broker(0).stats().closes.slow_consumer, 0);
}

#[test]
fn a_slow_consumer_timeout_of_zero_only_drops() {
    let config = BrokerConfig {
        max_inflight_messages: 1,
        max_queued_messages: 1,
        slow_consumer_timeout_secs: 0,
        ..BrokerConfig::default()
    };
    let mut cluster = Cluster::single(config);
    let subscriber = cluster.connect("s", true);
    let publisher = cluster.connect("p", true);
    cluster.subscribe(subscriber, &[("q", QoS::AtLeastOnce)]);
    for n in 0..5u8 {
        cluster.publish(publisher, "q", &[n], QoS::AtLeastOnce, false);
    }
    cluster.advance(80_000);
    assert_eq!(cluster.broker(0).stats().messages_dropped_queue_full, 3);
    assert_eq!(cluster.ended(subscriber), None);
    assert_eq!(cluster.broker(0).timer_count(), 2, "two keepalive timers, no slow-consumer one");
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
    broker.handle_packet(conn, Packet::Connect(Box::new(connect_packet("x", true))), Millis(0));
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
    broker.handle_packet(conn, Packet::Connect(Box::new(connect)), Millis(0));
    let actions: Vec<Action> = std::iter::from_fn(|| broker.poll_action()).collect();
    assert!(matches!(actions[0], Action::Send(_)));
    assert!(matches!(actions[1], Action::Close(_, CloseReason::ConnectRefused(_))));
    // Taken on Close rather than on Send: still there, exactly once.
    let mut out = Vec::new();
    assert_eq!(broker.take_output(conn, &mut out), 4);
    assert_eq!(broker.take_output(conn, &mut out), 0);
    assert_eq!(broker.connection_count(), 0);
}

/// Fuzz finding `broker-output-bound-3f7826eb`: a resumed session's unacknowledged window was
/// re-sent in one go, CONNACK plus 15 PUBLISHes (784 B) into a connection whose output bound
/// was 256 B. The re-sends keep to `outbuf_bytes_max` like any PUBLISH and follow as the
/// socket drains, still all of them [MQTT-4.4.0-1], in order [MQTT-4.6.0-1], before anything
/// newer; one the client acknowledges before its re-send is not re-sent.
#[test]
fn a_resumed_window_is_re_sent_within_the_output_bound_in_order_mqtt_4_4_0_1_and_4_6_0_1() {
    let config = BrokerConfig { outbuf_bytes_max: 256, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let subscriber = cluster.connect("s", false);
    cluster.subscribe(subscriber, &[("w", QoS::AtLeastOnce)]);
    let publisher = cluster.connect("p", true);
    let payload = [b'x'; 100]; // 107-byte PUBLISHes: two fit the bound
    for _ in 0..6 {
        cluster.publish(publisher, "w", &payload, QoS::AtLeastOnce, false);
    }
    let first = cluster.recv_publishes(subscriber);
    assert_eq!(first.len(), 6, "sent one by one as the socket drained");
    let ids: Vec<_> = first.iter().map(|p| p.packet_id.expect("QoS 1")).collect();
    cluster.drop_client(subscriber);

    let back = cluster.open(0);
    cluster.stall(back);
    cluster.send(back, Packet::Connect(Box::new(connect_packet("s", false))));
    assert!(cluster.unsent_bytes(back) <= 256, "{} B unsent", cluster.unsent_bytes(back));
    let mut received = cluster.recv(back);
    assert!(matches!(received.remove(0), Packet::Connack(_)));
    assert_eq!(received.len(), 2, "CONNACK and two re-sends fit: {received:?}");
    // The client had the third from before and acknowledges it now; a new message arrives.
    cluster.send(back, Packet::Puback(ids[2]));
    cluster.publish(publisher, "w", b"new", QoS::AtLeastOnce, false);
    let mut order = Vec::new();
    for packet in received {
        let Packet::Publish(publish) = packet else { panic!("{packet:?}") };
        order.push((publish.dup, publish.packet_id));
    }
    while order.len() < 6 {
        cluster.drain_once(back);
        assert!(cluster.unsent_bytes(back) <= 256, "{} B unsent", cluster.unsent_bytes(back));
        let more = cluster.recv_publishes(back);
        assert!(!more.is_empty(), "a drained socket gets the next re-sends");
        order.extend(more.iter().map(|publish| (publish.dup, publish.packet_id)));
    }
    let resent: Vec<_> = [0, 1, 3, 4, 5].iter().map(|&i| (true, Some(ids[i]))).collect();
    assert_eq!(order[..5], resent[..], "every re-send, in order, DUP=1, none acknowledged");
    assert!(!order[5].0, "the new message comes after them: {order:?}");
}
