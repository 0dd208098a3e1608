//! Normative statements not exercised under their own name elsewhere (see
//! `docs/CONFORMANCE.md`), one test each, through the scripted-client harness.

use super::harness::*;
use crate::broker::{BrokerConfig, CloseReason};
use crate::protocol::{
    Connect, ConnectReturnCode, DecodeError, Packet, ProtocolVersion, Publish, QoS, SubackCode,
    Unsubscribe,
};

fn one_publish(cluster: &mut Cluster, client: Client) -> Publish {
    let mut got = cluster.recv_publishes(client);
    assert_eq!(got.len(), 1, "{got:?}");
    got.remove(0)
}

#[test]
fn server_packet_ids_are_unused_and_kept_on_redelivery_mqtt_2_3_1_4_and_4_3_2_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", false);
    cluster.subscribe(subscriber, &[("t", QoS::AtLeastOnce)]);
    let publisher = cluster.connect("p", true);
    for payload in [&b"1"[..], b"2", b"3"] {
        cluster.publish(publisher, "t", payload, QoS::AtLeastOnce, false);
    }
    let first = cluster.recv_publishes(subscriber);
    let ids: Vec<_> = first.iter().map(|p| p.packet_id.expect("QoS 1")).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "unused ids: {ids:?}");
    assert!(first.iter().all(|p| !p.dup), "DUP 0 on the first send [MQTT-4.3.2-1]");
    // Unacknowledged until PUBACK: after a reconnect all three come again, same ids, DUP 1.
    cluster.drop_client(subscriber);
    let (subscriber, _) = cluster.connect_on(0, connect_packet("s", false));
    let again = cluster.recv_publishes(subscriber);
    let again_ids: Vec<_> = again.iter().map(|p| p.packet_id.expect("QoS 1")).collect();
    assert_eq!(again_ids, ids);
    assert!(again.iter().all(|p| p.dup), "[MQTT-3.3.1-1]");
}

#[test]
fn acknowledgements_carry_the_publishs_packet_id_mqtt_2_3_1_6() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("t", QoS::ExactlyOnce)]);
    let publisher = cluster.connect("p", true);
    cluster.send(publisher, publish_packet("t", b"1", QoS::AtLeastOnce, false, 4242));
    assert_eq!(cluster.recv(publisher), vec![Packet::Puback(pid(4242))]);
    cluster.send(publisher, publish_packet("t", b"2", QoS::ExactlyOnce, false, 77));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(77))]);
    // The broker's PUBREL carries the id of the PUBLISH it sent.
    let sent = cluster.recv_publishes(subscriber);
    let qos2 = sent.iter().find(|p| p.qos == QoS::ExactlyOnce).expect("the QoS 2 one");
    let id = qos2.packet_id.expect("QoS 2");
    cluster.send(subscriber, Packet::Pubrec(id));
    assert_eq!(cluster.recv(subscriber), vec![Packet::Pubrel(id)]);
}

#[test]
fn unsuback_carries_the_unsubscribes_packet_id_mqtt_2_3_1_7() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("c", true);
    cluster.send(
        client,
        Packet::Unsubscribe(Unsubscribe { packet_id: pid(999), filters: vec![filter("a")] }),
    );
    assert_eq!(cluster.recv(client), vec![Packet::Unsuback(pid(999))]);
}

#[test]
fn retained_messages_outlive_the_session_that_published_them_mqtt_3_1_2_7() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "r", b"kept", QoS::AtLeastOnce, true);
    cluster.send(publisher, Packet::Disconnect);
    assert_eq!(cluster.broker(0).session_count(), 0, "the clean session ended");
    let late = cluster.connect("late", true);
    cluster.subscribe(late, &[("r", QoS::AtMostOnce)]);
    assert_eq!(one_publish(&mut cluster, late).payload.as_ref(), b"kept");
}

#[test]
fn without_a_will_nothing_is_published_at_an_abnormal_close_mqtt_3_1_2_12() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let watcher = cluster.connect("w", true);
    cluster.subscribe(watcher, &[("#", QoS::AtLeastOnce)]);
    let quiet = cluster.connect("quiet", true);
    cluster.drop_client(quiet);
    assert!(cluster.recv_publishes(watcher).is_empty());
    assert_eq!(cluster.broker(0).stats().wills_published, 0);
}

#[test]
fn the_client_id_finds_the_session_state_mqtt_3_1_3_2_and_3_1_4_3() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let first = cluster.connect("mine", false);
    cluster.subscribe(first, &[("s", QoS::AtLeastOnce)]);
    cluster.send(first, Packet::Disconnect);
    // Another id does not see the state; the same id resumes it (CleanSession 0 processed).
    let (_, other) = cluster.connect_on(0, connect_packet("yours", false));
    assert!(!other.session_present);
    let (resumed, connack) = cluster.connect_on(0, connect_packet("mine", false));
    assert!(connack.session_present);
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "s", b"x", QoS::AtLeastOnce, false);
    assert_eq!(one_publish(&mut cluster, resumed).payload.as_ref(), b"x");
}

#[test]
fn a_23_character_alphanumeric_client_id_is_allowed_mqtt_3_1_3_5() {
    for protocol in [ProtocolVersion::V311, ProtocolVersion::V31] {
        let mut cluster = Cluster::single(BrokerConfig::default());
        let id = "0123456789abcdefXYZ0123";
        assert_eq!(id.len(), 23);
        let connect = Connect { protocol, ..connect_packet(id, true) };
        let (_, connack) = cluster.connect_on(0, connect);
        assert_eq!(connack.code, ConnectReturnCode::Accepted, "{protocol:?}");
    }
}

#[test]
fn a_rejected_client_id_gets_connack_0x02_then_close_mqtt_3_1_3_9() {
    // ringmq rejects an id only when it cannot serve it: empty with CleanSession 0
    // [MQTT-3.1.3-8], or empty under MQTT 3.1, which requires 1 to 23 characters.
    let empty_v31 = Connect { protocol: ProtocolVersion::V31, ..connect_packet("", true) };
    for connect in [connect_packet("", false), empty_v31] {
        let mut cluster = Cluster::single(BrokerConfig::default());
        let (client, connack) = cluster.connect_on(0, connect);
        assert_eq!(connack.code, ConnectReturnCode::IdentifierRejected);
        let closed = CloseReason::ConnectRefused(ConnectReturnCode::IdentifierRejected);
        assert_eq!(cluster.ended(client), Some(Ended::ByBroker(closed)));
    }
}

#[test]
fn a_malformed_connect_is_closed_without_connack_mqtt_3_1_4_1_and_3_2_2_6() {
    // Only an unsupported protocol level has a return code (0x01, [MQTT-3.1.2-2]); for every
    // other way a CONNECT breaks section 3.1 no return code applies.
    for error in [
        DecodeError::ConnectReservedFlag,
        DecodeError::InvalidProtocolName,
        DecodeError::WillQoSWithoutWill,
        DecodeError::InvalidUtf8,
        DecodeError::Truncated,
    ] {
        let mut cluster = Cluster::single(BrokerConfig::default());
        let client = cluster.open(0);
        let (conn, now) = (cluster.conn_of(client), cluster.now);
        cluster.brokers[0].handle_decode_error(conn, error, now);
        cluster.run();
        assert!(cluster.recv(client).is_empty(), "{error:?}: no CONNACK");
        let closed = Some(Ended::ByBroker(CloseReason::ProtocolError(error)));
        assert_eq!(cluster.ended(client), closed);
    }
}

#[test]
fn nothing_after_a_refused_connect_is_processed_mqtt_3_1_4_5() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let watcher = cluster.connect("w", true);
    cluster.subscribe(watcher, &[("#", QoS::AtMostOnce)]);
    let client = cluster.open(0);
    let (conn, now) = (cluster.conn_of(client), cluster.now);
    // The CONNECT and a PUBLISH decoded from the same read, handed over back to back.
    let refused = Box::new(connect_packet("", false));
    cluster.brokers[0].handle_packet(conn, Packet::Connect(refused), now);
    cluster.brokers[0].handle_packet(
        conn,
        publish_packet("x", b"no", QoS::AtMostOnce, false, 0),
        now,
    );
    cluster.run();
    assert!(cluster.recv_publishes(watcher).is_empty());
    assert_eq!(cluster.broker(0).stats().messages_received, 0);
}

#[test]
fn outgoing_dup_is_not_copied_from_the_incoming_publish_mqtt_3_3_1_3() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("t", QoS::AtLeastOnce)]);
    let publisher = cluster.connect("p", true);
    let resent = resent_packet("t", b"again", QoS::AtLeastOnce, false, 5);
    cluster.send(publisher, resent);
    assert!(!one_publish(&mut cluster, subscriber).dup, "a first send to this subscriber");
}

#[test]
fn a_delivered_topic_name_is_the_published_one_and_matches_the_filter_mqtt_3_3_2_3() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("home/+/temperature", QoS::AtMostOnce)]);
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "home/kitchen/temperature", b"21", QoS::AtMostOnce, false);
    cluster.publish(publisher, "home/kitchen/humidity", b"40", QoS::AtMostOnce, false);
    let got = one_publish(&mut cluster, subscriber);
    assert_eq!(got.topic.as_str(), "home/kitchen/temperature");
    assert!(filter("home/+/temperature").matches(&got.topic));
}

#[test]
fn a_publish_is_answered_as_its_qos_says_mqtt_3_3_4_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let publisher = cluster.connect("p", true);
    cluster.send(publisher, publish_packet("t", b"0", QoS::AtMostOnce, false, 0));
    assert!(cluster.recv(publisher).is_empty(), "QoS 0: no answer");
    cluster.send(publisher, publish_packet("t", b"1", QoS::AtLeastOnce, false, 1));
    assert_eq!(cluster.recv(publisher), vec![Packet::Puback(pid(1))]);
    cluster.send(publisher, publish_packet("t", b"2", QoS::ExactlyOnce, false, 2));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(2))]);
}

#[test]
fn wildcard_filters_are_supported_and_granted_mqtt_3_8_3_2() {
    // The statement binds servers without wildcard support; ringmq grants them.
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("c", true);
    let codes = cluster.subscribe(client, &[("a/#", QoS::AtLeastOnce), ("+/b", QoS::AtMostOnce)]);
    assert_eq!(
        codes,
        vec![SubackCode::Granted(QoS::AtLeastOnce), SubackCode::Granted(QoS::AtMostOnce)]
    );
}

#[test]
fn an_unsubscribe_of_several_filters_is_one_unsuback_mqtt_3_10_4_6() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("c", true);
    cluster.subscribe(
        client,
        &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce), ("c", QoS::AtMostOnce)],
    );
    let id = cluster.unsubscribe(client, &["a", "missing", "c"]);
    assert_eq!(cluster.recv(client), vec![Packet::Unsuback(id)]);
    let info = cluster.broker(0).session_info("c").expect("connected");
    assert_eq!(info.subscriptions, vec![(filter("b"), QoS::AtMostOnce)]);
}

#[test]
fn a_clean_session_lasts_as_long_as_its_connection_mqtt_4_1_0_2() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("c", true);
    cluster.subscribe(client, &[("t", QoS::AtLeastOnce)]);
    let publisher = cluster.connect("p", true);
    for round in 0..3u8 {
        cluster.advance(20_000);
        cluster.send(client, Packet::Pingreq);
        cluster.publish(publisher, "t", &[round], QoS::AtLeastOnce, false);
        assert_eq!(cluster.recv_acking(client).len(), 1, "round {round}");
        assert!(cluster.broker(0).session_info("c").is_some_and(|s| s.connected));
    }
    cluster.send(client, Packet::Disconnect);
    assert!(cluster.broker(0).session_info("c").is_none(), "and no longer [MQTT-3.1.2-6]");
}

#[test]
fn qos0_is_sent_with_qos_0_and_dup_0_mqtt_4_3_1_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("t", QoS::ExactlyOnce)]);
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "t", b"x", QoS::AtMostOnce, false);
    let got = one_publish(&mut cluster, subscriber);
    assert_eq!((got.qos, got.dup, got.packet_id), (QoS::AtMostOnce, false, None));
}

#[test]
fn pubrels_go_in_the_order_of_the_pubrecs_mqtt_4_6_0_4() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("t", QoS::ExactlyOnce)]);
    let publisher = cluster.connect("p", true);
    for payload in [&b"1"[..], b"2", b"3"] {
        cluster.publish(publisher, "t", payload, QoS::ExactlyOnce, false);
    }
    let ids: Vec<_> =
        cluster.recv_publishes(subscriber).iter().map(|p| p.packet_id.expect("QoS 2")).collect();
    assert_eq!(ids.len(), 3);
    let order = [ids[2], ids[0], ids[1]];
    for id in order {
        cluster.send(subscriber, Packet::Pubrec(id));
    }
    let pubrels: Vec<Packet> = order.iter().map(|&id| Packet::Pubrel(id)).collect();
    assert_eq!(cluster.recv(subscriber), pubrels);
}

#[test]
fn matching_does_not_normalise_topics_or_filters_mqtt_4_7_3_4() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    // "é" precomposed (U+00E9); the topics below spell it decomposed, or differ in case,
    // slashes or spaces, and none may match.
    cluster.subscribe(subscriber, &[("caf\u{e9}/a/b", QoS::AtMostOnce)]);
    let publisher = cluster.connect("p", true);
    for topic_text in
        ["cafe\u{301}/a/b", "CAF\u{c9}/a/b", "caf\u{e9}//a/b", "caf\u{e9}/a/b/", "caf\u{e9}/a /b"]
    {
        cluster.publish(publisher, topic_text, b"no", QoS::AtMostOnce, false);
    }
    assert!(cluster.recv_publishes(subscriber).is_empty());
    cluster.publish(publisher, "caf\u{e9}/a/b", b"yes", QoS::AtMostOnce, false);
    assert_eq!(one_publish(&mut cluster, subscriber).payload.as_ref(), b"yes");
}

#[test]
fn a_transient_error_closes_only_the_connection_it_arrived_on_mqtt_4_8_0_2() {
    // The broker cannot store one more QoS 2 packet id for this client (at
    // `max_awaiting_pubrel`): it closes that connection, counted; the others go on.
    let config = BrokerConfig { max_awaiting_pubrel: 1, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let bystander = cluster.connect("b", true);
    let client = cluster.connect("c", true);
    cluster.publish(client, "t", b"1", QoS::ExactlyOnce, false);
    cluster.publish(client, "t", b"2", QoS::ExactlyOnce, false);
    assert!(matches!(
        cluster.ended(client),
        Some(Ended::ByBroker(CloseReason::ProtocolViolation(_)))
    ));
    assert_eq!(cluster.ended(bystander), None);
    cluster.send(bystander, Packet::Pingreq);
    assert_eq!(cluster.recv(bystander), vec![Packet::Pingresp]);
}

#[test]
fn session_state_is_kept_for_the_whole_session_mqtt_4_1_0_1() {
    // Subscriptions, a QoS 1 message sent and unacknowledged, a QoS 2 id awaiting PUBREL, and
    // a message queued while offline: all of it is there when the client comes back.
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("keeper", false);
    cluster.subscribe(client, &[("k/#", QoS::AtLeastOnce)]);
    cluster.publish(client, "elsewhere", b"q2", QoS::ExactlyOnce, false);
    let awaiting = pid(cluster.last_packet_id(client));
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "k/1", b"unacked", QoS::AtLeastOnce, false);
    cluster.drop_client(client);
    cluster.publish(publisher, "k/2", b"queued", QoS::AtLeastOnce, false);
    let info = cluster.broker(0).session_info("keeper").expect("kept offline");
    assert_eq!((info.inflight, info.queued, info.awaiting_pubrel), (1, 1, 1));
    let (client, connack) = cluster.connect_on(0, connect_packet("keeper", false));
    assert!(connack.session_present);
    let payloads: Vec<_> =
        cluster.recv_publishes(client).iter().map(|p| p.payload.to_vec()).collect();
    assert_eq!(payloads, vec![b"unacked".to_vec(), b"queued".to_vec()]);
    cluster.send(client, Packet::Pubrel(awaiting));
    assert_eq!(cluster.recv(client), vec![Packet::Pubcomp(awaiting)]);
    let info = cluster.broker(0).session_info("keeper").expect("connected");
    assert_eq!(info.subscriptions, vec![(filter("k/#"), QoS::AtLeastOnce)]);
    assert_eq!(info.awaiting_pubrel, 0);
}

#[test]
fn deliveries_started_before_an_unsubscribe_are_completed_mqtt_3_10_4_3() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let subscriber = cluster.connect("s", true);
    cluster.subscribe(subscriber, &[("t", QoS::ExactlyOnce)]);
    let publisher = cluster.connect("p", true);
    cluster.publish(publisher, "t", b"1", QoS::AtLeastOnce, false);
    cluster.publish(publisher, "t", b"2", QoS::ExactlyOnce, false);
    let sent = cluster.recv_publishes(subscriber);
    let ids: Vec<_> = sent.iter().map(|p| p.packet_id.expect("QoS > 0")).collect();
    cluster.unsubscribe(subscriber, &["t"]);
    cluster.recv(subscriber);
    cluster.publish(publisher, "t", b"3", QoS::AtLeastOnce, false);
    assert!(cluster.recv_publishes(subscriber).is_empty(), "nothing new [MQTT-3.10.4-2]");
    cluster.send(subscriber, Packet::Puback(ids[0]));
    cluster.send(subscriber, Packet::Pubrec(ids[1]));
    assert_eq!(cluster.recv(subscriber), vec![Packet::Pubrel(ids[1])]);
    cluster.send(subscriber, Packet::Pubcomp(ids[1]));
    assert_eq!(cluster.broker(0).session_info("s").expect("connected").inflight, 0);
    assert_eq!(cluster.broker(0).stats().unexpected_acks, 0, "both were still in flight");
}
