//! CONNECT and CONNACK: first packet, refusals, generated ids, session present, takeover,
//! handoff to the home worker.

use super::harness::*;
use crate::broker::{BrokerConfig, CloseReason, WorkerId};
use crate::protocol::{
    Connect, ConnectReturnCode, DecodeError, Packet, ProtocolVersion, QoS, Utf8Bytes,
};

fn refused(code: ConnectReturnCode) -> Option<Ended> {
    Some(Ended::ByBroker(CloseReason::ConnectRefused(code)))
}

#[test]
fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.open(0);
    cluster.send(client, Packet::Pingreq);
    assert!(cluster.recv(client).is_empty(), "nothing is answered before CONNECT");
    assert!(matches!(
        cluster.ended(client),
        Some(Ended::ByBroker(CloseReason::ProtocolViolation(_)))
    ));
    assert_eq!(cluster.broker(0).connection_count(), 0);
}

#[test]
fn a_second_connect_is_a_protocol_violation_mqtt_3_1_0_2() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("c", true);
    cluster.send(client, Packet::Connect(Box::new(connect_packet("c", true))));
    assert!(cluster.recv(client).is_empty(), "no second CONNACK");
    assert!(matches!(
        cluster.ended(client),
        Some(Ended::ByBroker(CloseReason::ProtocolViolation(_)))
    ));
    assert_eq!(cluster.broker(0).session_count(), 0, "the clean session went with it");
}

#[test]
fn unsupported_protocol_level_gets_connack_0x01_then_close_mqtt_3_1_2_2() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.open(0);
    let (worker, now) = (cluster.where_is(client), cluster.now);
    let conn_error = DecodeError::UnsupportedProtocolLevel(5);
    let conn = cluster.conn_of(client);
    cluster.brokers[worker.index()].handle_decode_error(conn, conn_error, now);
    cluster.run();
    let received = cluster.recv(client);
    assert_eq!(received.len(), 1);
    let Packet::Connack(connack) = &received[0] else { panic!("{received:?}") };
    assert_eq!(connack.code, ConnectReturnCode::UnacceptableProtocolVersion);
    assert!(!connack.session_present, "[MQTT-3.2.2-4]");
    assert_eq!(cluster.ended(client), refused(ConnectReturnCode::UnacceptableProtocolVersion));
}

#[test]
fn other_decode_errors_close_without_an_answer_mqtt_4_8_0_1() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("c", true);
    let conn = cluster.conn_of(client);
    let now = cluster.now;
    cluster.brokers[0].handle_decode_error(conn, DecodeError::InvalidQoS, now);
    cluster.run();
    assert!(cluster.recv(client).is_empty());
    assert_eq!(
        cluster.ended(client),
        Some(Ended::ByBroker(CloseReason::ProtocolError(DecodeError::InvalidQoS)))
    );
    assert_eq!(cluster.broker(0).stats().closes.protocol_error, 1);
}

#[test]
fn refusals_by_rule() {
    // (what, config, CONNECT, expected code)
    let anonymous_off = BrokerConfig { allow_anonymous: false, ..BrokerConfig::default() };
    let keepalive_cap = BrokerConfig { max_keepalive_secs: 30, ..BrokerConfig::default() };
    let empty_persistent = connect_packet("", false);
    let empty_v31 = Connect { protocol: ProtocolVersion::V31, ..connect_packet("", true) };
    let long_keepalive = Connect { keep_alive_secs: 31, ..connect_packet("k", true) };
    let no_keepalive = Connect { keep_alive_secs: 0, ..connect_packet("k", true) };
    let cases = [
        // [MQTT-3.1.3-8]: a zero-byte id with CleanSession=0 is rejected with 0x02.
        (
            "empty id, persistent",
            BrokerConfig::default(),
            empty_persistent,
            ConnectReturnCode::IdentifierRejected,
        ),
        // MQTT 3.1 requires a client id of 1 to 23 characters.
        (
            "empty id, MQTT 3.1",
            BrokerConfig::default(),
            empty_v31,
            ConnectReturnCode::IdentifierRejected,
        ),
        (
            "keepalive over the cap",
            keepalive_cap.clone(),
            long_keepalive,
            ConnectReturnCode::IdentifierRejected,
        ),
        (
            "no keepalive under a cap",
            keepalive_cap,
            no_keepalive,
            ConnectReturnCode::IdentifierRejected,
        ),
        (
            "anonymous when not allowed",
            anonymous_off,
            connect_packet("a", true),
            ConnectReturnCode::NotAuthorized,
        ),
    ];
    for (what, config, connect, code) in cases {
        let mut cluster = Cluster::single(config);
        let (client, connack) = cluster.connect_on(0, connect);
        assert_eq!(connack.code, code, "{what}");
        // [MQTT-3.2.2-4]: a refusal has session present 0; [MQTT-3.2.2-5]: then close.
        assert!(!connack.session_present, "{what}");
        assert_eq!(cluster.ended(client), refused(code), "{what}");
        assert_eq!(cluster.broker(0).session_count(), 0, "{what}");
        assert_eq!(cluster.broker(0).connection_count(), 0, "{what}");
        assert_eq!(cluster.broker(0).stats().connects_refused, 1, "{what}");
    }
}

#[test]
fn accepted_when_the_rules_are_met() {
    let config =
        BrokerConfig { allow_anonymous: false, max_keepalive_secs: 30, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let connect = Connect {
        keep_alive_secs: 30,
        username: Some(Utf8Bytes::from("user".to_owned())),
        ..connect_packet("ok", true)
    };
    let (client, connack) = cluster.connect_on(0, connect);
    assert_eq!(connack.code, ConnectReturnCode::Accepted, "[MQTT-3.1.4-4]");
    assert_eq!(cluster.ended(client), None);
    assert_eq!(cluster.broker(0).stats().clients_connected, 1);
}

#[test]
fn empty_client_id_with_clean_session_gets_an_id_homed_here_mqtt_3_1_3_6() {
    for workers in [1u16, 4] {
        let mut cluster = Cluster::new(workers, BrokerConfig::default());
        for worker in 0..workers {
            let (client, connack) = cluster.connect_on(worker, connect_packet("", true));
            assert_eq!(connack.code, ConnectReturnCode::Accepted);
            assert_eq!(cluster.where_is(client), WorkerId(worker), "no handoff needed");
            assert_eq!(cluster.broker(worker).session_count(), 1);
            let ids = cluster.broker(worker).client_ids();
            assert_eq!(crate::broker::home_worker(ids[0].as_bytes(), workers), WorkerId(worker));
        }
    }
}

#[test]
fn generated_ids_are_unique() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    for _ in 0..50 {
        cluster.connect_on(0, connect_packet("", true));
    }
    let mut ids = cluster.broker(0).client_ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
}

#[test]
fn session_present_flag_mqtt_3_2_2_1_to_3() {
    // (first connection's CleanSession, second's, expected session present on the second)
    let cases = [
        (false, false, true), // [MQTT-3.2.2-2]: stored session resumed
        (false, true, false), // [MQTT-3.2.2-1]: CleanSession=1 always 0
        (true, false, false), // [MQTT-3.2.2-3]: the clean session was not stored
        (true, true, false),  // [MQTT-3.2.2-1]
    ];
    for (first_clean, second_clean, present) in cases {
        let mut cluster = Cluster::single(BrokerConfig::default());
        let (first, connack) = cluster.connect_on(0, connect_packet("p", first_clean));
        assert!(!connack.session_present, "a new session is never present [MQTT-3.2.2-3]");
        cluster.send(first, Packet::Disconnect);
        let (_, connack) = cluster.connect_on(0, connect_packet("p", second_clean));
        assert_eq!(connack.session_present, present, "{first_clean} then {second_clean}");
    }
}

#[test]
fn takeover_closes_the_old_connection_and_publishes_its_will_mqtt_3_1_4_2() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let watcher = cluster.connect("watcher", true);
    cluster.subscribe(watcher, &[("wills/#", QoS::AtLeastOnce)]);
    let with_will = Connect {
        will: Some(will("wills/dup", b"gone", QoS::AtLeastOnce, false)),
        ..connect_packet("dup", false)
    };
    let (old, _) = cluster.connect_on(0, with_will);
    let (new, connack) = cluster.connect_on(0, connect_packet("dup", false));
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    assert!(connack.session_present, "the persistent session carried over [MQTT-3.2.2-2]");
    assert_eq!(cluster.ended(old), Some(Ended::ByBroker(CloseReason::TakenOver)));
    assert_eq!(cluster.ended(new), None);
    // [MQTT-3.1.2-8]: only DISCONNECT discards a will, and the old client sent none.
    let wills = cluster.recv_publishes(watcher);
    assert_eq!(wills.len(), 1);
    assert_eq!(wills[0].payload.as_ref(), b"gone");
    assert_eq!(cluster.broker(0).session_count(), 2);
    assert_eq!(cluster.broker(0).stats().closes.taken_over, 1);
}

#[test]
fn takeover_with_clean_session_discards_the_old_state_mqtt_3_1_2_6() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let old = cluster.connect("t", false);
    cluster.subscribe(old, &[("a", QoS::AtLeastOnce)]);
    let (_, connack) = cluster.connect_on(0, connect_packet("t", true));
    assert!(!connack.session_present);
    let info = cluster.broker(0).session_info("t").expect("the new session");
    assert!(info.subscriptions.is_empty());
    assert!(!info.persistent);
    assert_eq!(cluster.broker(0).subscription_count(), 0);
}

#[test]
fn sessions_max_refuses_new_sessions_with_0x03() {
    let config = BrokerConfig { sessions_max: 2, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    cluster.connect("a", false);
    let b = cluster.connect("b", false);
    let (c, connack) = cluster.connect_on(0, connect_packet("c", true));
    assert_eq!(connack.code, ConnectReturnCode::ServerUnavailable);
    assert_eq!(cluster.ended(c), refused(ConnectReturnCode::ServerUnavailable));
    assert_eq!(cluster.broker(0).stats().sessions_refused_full, 1);
    // An existing session is still resumed at the bound.
    cluster.send(b, Packet::Disconnect);
    let (_, connack) = cluster.connect_on(0, connect_packet("b", false));
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    assert!(connack.session_present);
}

#[test]
fn connect_on_another_worker_is_handed_to_the_home_worker() {
    let workers = 3;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let id = client_id_on(2, workers, "roamer");
    let (client, connack) = cluster.connect_on(0, connect_packet(&id, false));
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    assert_eq!(cluster.where_is(client), WorkerId(2));
    assert_eq!(cluster.broker(0).connection_count(), 0, "worker 0 forgot the connection");
    assert_eq!(cluster.broker(0).stats().handoffs, 1);
    assert_eq!(cluster.broker(2).session_count(), 1);
    // A second connection with the same id from yet another worker takes over on the home.
    let (second, connack) = cluster.connect_on(1, connect_packet(&id, false));
    assert!(connack.session_present);
    assert_eq!(cluster.where_is(second), WorkerId(2));
    assert_eq!(cluster.ended(client), Some(Ended::ByBroker(CloseReason::TakenOver)));
}

#[test]
fn a_handed_off_connect_is_counted_once() {
    let mut cluster = Cluster::new(2, BrokerConfig::default());
    let id = client_id_on(1, 2, "counted");
    let connect = connect_packet(&id, true);
    let bytes =
        crate::protocol::encode::encoded_len(&Packet::Connect(Box::new(connect.clone()))) as u64;
    cluster.connect_on(0, connect);
    let received: Vec<u64> = cluster.brokers.iter().map(|b| b.stats().bytes_received).collect();
    assert_eq!(received, vec![0, bytes]);
}
