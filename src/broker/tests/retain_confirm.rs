//! A retained QoS 1/2 PUBLISH is acknowledged only once every worker's replica holds it, so a
//! subscription made anywhere after the PUBACK/PUBREC is sent the message [MQTT-3.3.1-6]; later
//! acknowledgements of the same connection wait behind a held one [MQTT-4.6.0-2]
//! [MQTT-4.6.0-3]. Remote messages are held in their queue to play slow pair channels.

use super::harness::*;
use crate::broker::{BrokerConfig, CloseReason, WorkerId};
use crate::protocol::{Packet, QoS, TopicName};

/// The workers whose replica holds `payload` for `topic_text`.
fn replicas_with(cluster: &Cluster, topic_text: &str, payload: &[u8]) -> usize {
    let topic = TopicName::try_from(topic_text).expect("valid");
    (0..cluster.brokers.len() as u16)
        .filter(|&w| cluster.broker(w).retained(&topic).is_some_and(|m| m.payload == payload))
        .count()
}

/// The acknowledgement packets (PUBACK, PUBREC, PUBCOMP) among `packets`, in order.
fn acks(packets: &[Packet]) -> Vec<Packet> {
    packets
        .iter()
        .filter(|p| matches!(p, Packet::Puback(_) | Packet::Pubrec(_) | Packet::Pubcomp(_)))
        .cloned()
        .collect()
}

/// Publishes a retained message from a client on worker 0 of 4, delivers the remote messages
/// one at a time, and checks that the acknowledgement `expected` arrives exactly when the last
/// replica has the message, never before.
fn check_ack_waits_for_every_replica(owner: u16, qos: QoS) {
    let workers = 4;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let publisher = client_on(&mut cluster, 0, "pub", true);
    let topic_text = topic_owned_by(owner, workers, "held");
    cluster.hold_remotes(true);
    cluster.publish(publisher, &topic_text, b"r", qos, true);
    let id = pid(cluster.last_packet_id(publisher));
    let expected = if qos == QoS::AtLeastOnce { Packet::Puback(id) } else { Packet::Pubrec(id) };
    assert_eq!(cluster.broker(0).held_ack_count(), 1);
    let mut steps_without_ack = 0;
    loop {
        let got = cluster.recv(publisher);
        let applied = replicas_with(&cluster, &topic_text, b"r");
        if !got.is_empty() {
            assert_eq!(got, vec![expected], "one acknowledgement");
            assert_eq!(applied, usize::from(workers), "acknowledged before every replica had it");
            break;
        }
        steps_without_ack += 1;
        assert!(cluster.step_remote(), "every message delivered, no acknowledgement");
    }
    assert!(steps_without_ack >= 3, "the acknowledgement waited for the other workers");
    assert_eq!(cluster.remotes_pending(), 0, "it went with the last confirmation");
    assert_eq!(cluster.broker(0).held_ack_count(), 0);
    assert_eq!(cluster.broker(0).unconfirmed_retained_count(), 0);
    assert_eq!(cluster.broker(0).stats().retained_acks_held, 1);
    let confirmations =
        cluster.remote_log.iter().filter(|(_, to, n)| *n == "RetainAck" && *to == WorkerId(0));
    let expected_acks = if owner == 0 { 3 } else { 2 }; // a non-origin owner's broadcast counts
    assert_eq!(confirmations.count(), expected_acks);
}

#[test]
fn a_retained_puback_waits_for_every_replica_when_another_worker_owns_the_topic_mqtt_3_3_1_6() {
    check_ack_waits_for_every_replica(2, QoS::AtLeastOnce);
}

#[test]
fn a_retained_puback_waits_for_every_replica_when_the_publishers_worker_owns_it_mqtt_3_3_1_6() {
    check_ack_waits_for_every_replica(0, QoS::AtLeastOnce);
}

#[test]
fn a_retained_pubrec_waits_for_every_replica_mqtt_3_3_1_6() {
    check_ack_waits_for_every_replica(3, QoS::ExactlyOnce);
    check_ack_waits_for_every_replica(0, QoS::ExactlyOnce);
}

#[test]
fn a_subscriber_on_any_worker_after_the_puback_gets_the_retained_message_mqtt_3_3_1_6() {
    let workers = 3;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let publisher = client_on(&mut cluster, 1, "pub", true);
    let topic_text = topic_owned_by(2, workers, "seen");
    // A watcher per worker makes the filter known everywhere, so a later SUBACK need not wait
    // for the mesh and the retained message comes from the subscriber's own replica.
    for worker in 0..workers {
        let watcher = client_on(&mut cluster, worker, "watch", true);
        cluster.subscribe(watcher, &[(topic_text.as_str(), QoS::AtMostOnce)]);
    }
    cluster.hold_remotes(true);
    cluster.publish(publisher, &topic_text, b"now", QoS::AtLeastOnce, true);
    while cluster.recv(publisher).is_empty() {
        assert!(cluster.step_remote(), "the PUBACK never came");
    }
    // Nothing else crosses the mesh from here on.
    for worker in 0..workers {
        let subscriber = client_on(&mut cluster, worker, "late", true);
        cluster.subscribe(subscriber, &[(topic_text.as_str(), QoS::AtMostOnce)]);
        let got = cluster.recv_publishes(subscriber);
        assert_eq!(got.len(), 1, "worker {worker}");
        assert!(got[0].retain && got[0].payload.as_ref() == b"now", "[MQTT-3.3.1-8]");
    }
}

#[test]
fn later_acknowledgements_wait_behind_a_held_one_in_packet_order_mqtt_4_6_0_2_and_3() {
    let workers = 2;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let publisher = client_on(&mut cluster, 0, "pub", true);
    let subscriber = client_on(&mut cluster, 0, "sub", true);
    cluster.subscribe(subscriber, &[("plain/#", QoS::AtMostOnce)]);
    let topic_text = topic_owned_by(1, workers, "held");
    cluster.hold_remotes(true);
    cluster.publish(publisher, &topic_text, b"r", QoS::AtLeastOnce, true);
    let retained_id = pid(cluster.last_packet_id(publisher));
    cluster.publish(publisher, "plain/1", b"p1", QoS::AtLeastOnce, false);
    let plain_id = pid(cluster.last_packet_id(publisher));
    cluster.publish(publisher, "plain/2", b"p2", QoS::ExactlyOnce, false);
    let qos2_id = pid(cluster.last_packet_id(publisher));
    cluster.send(publisher, Packet::Pubrel(qos2_id));
    cluster.send(publisher, Packet::Pingreq);
    // Only the acknowledgements wait: the messages are routed, PINGRESP is answered.
    assert_eq!(cluster.recv(publisher), vec![Packet::Pingresp]);
    assert_eq!(cluster.recv_publishes(subscriber).len(), 2);
    assert_eq!(cluster.broker(0).held_ack_count(), 4);
    cluster.hold_remotes(false);
    let expected = vec![
        Packet::Puback(retained_id),
        Packet::Puback(plain_id),
        Packet::Pubrec(qos2_id),
        Packet::Pubcomp(qos2_id),
    ];
    assert_eq!(acks(&cluster.recv(publisher)), expected);
    assert_eq!(cluster.broker(0).stats().retained_acks_held, 1, "one held, three queued");
}

#[test]
fn a_later_update_confirmed_first_still_waits_for_the_earlier_one_mqtt_4_6_0_2() {
    // Publisher on worker 0 of 3. `first` is owned by worker 1, `second` by worker 0 itself,
    // and the links are delivered so that `second` is confirmed first.
    let workers = 3;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let publisher = client_on(&mut cluster, 0, "pub", true);
    let first = topic_owned_by(1, workers, "first");
    let second = topic_owned_by(0, workers, "second");
    cluster.hold_remotes(true);
    cluster.publish(publisher, &first, b"1", QoS::AtLeastOnce, true);
    let first_id = pid(cluster.last_packet_id(publisher));
    cluster.publish(publisher, &second, b"2", QoS::AtLeastOnce, true);
    let second_id = pid(cluster.last_packet_id(publisher));
    assert!(cluster.step_link(0, 2), "worker 2 applies `second`");
    assert!(cluster.step_link(2, 0), "and confirms it");
    assert!(cluster.step_link(0, 1), "worker 1 applies `first` as its owner");
    assert!(cluster.step_link(0, 1), "then `second`");
    assert!(cluster.step_link(1, 0), "`first` applied at worker 0: one of two");
    assert!(cluster.step_link(1, 0), "`second` confirmed by worker 1: two of two");
    assert_eq!(replicas_with(&cluster, &second, b"2"), 3);
    assert_eq!(replicas_with(&cluster, &first, b"1"), 2, "worker 2 lacks `first`");
    assert!(cluster.recv(publisher).is_empty(), "`second`'s PUBACK may not overtake `first`'s");
    cluster.hold_remotes(false);
    assert_eq!(cluster.recv(publisher), vec![Packet::Puback(first_id), Packet::Puback(second_id)]);
}

#[test]
fn a_resent_qos2_publish_is_answered_behind_the_held_pubrec_mqtt_4_3_3_2() {
    let workers = 2;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let publisher = client_on(&mut cluster, 0, "pub", true);
    let topic_text = topic_owned_by(1, workers, "dup");
    cluster.hold_remotes(true);
    cluster.publish(publisher, &topic_text, b"r", QoS::ExactlyOnce, true);
    let id = cluster.last_packet_id(publisher);
    let resent = resent_packet(&topic_text, b"r", QoS::ExactlyOnce, true, id);
    cluster.send(publisher, resent);
    assert!(cluster.recv(publisher).is_empty(), "the duplicate's PUBREC waits too");
    cluster.hold_remotes(false);
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(id)), Packet::Pubrec(pid(id))]);
    assert_eq!(cluster.remote_log.iter().filter(|(_, _, n)| *n == "Retain").count(), 1);
}

#[test]
fn a_qos2_publish_resent_after_a_reconnect_waits_for_the_first_copys_update_mqtt_4_3_3_2() {
    let workers = 2;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let id = client_id_on(0, workers, "resender");
    let (publisher, _) = cluster.connect_on(0, connect_packet(&id, false));
    let topic_text = topic_owned_by(1, workers, "again");
    cluster.hold_remotes(true);
    cluster.publish(publisher, &topic_text, b"r", QoS::ExactlyOnce, true);
    let packet_id = cluster.last_packet_id(publisher);
    cluster.drop_client(publisher);
    // Back on its persistent session, the client re-sends the PUBLISH it has no PUBREC for.
    let (publisher, connack) = cluster.connect_on(0, connect_packet(&id, false));
    assert!(connack.session_present);
    let resent = resent_packet(&topic_text, b"r", QoS::ExactlyOnce, true, packet_id);
    cluster.send(publisher, resent);
    assert!(cluster.recv(publisher).is_empty(), "worker 1 has not applied the update yet");
    cluster.hold_remotes(false);
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(packet_id))]);
    assert_eq!(replicas_with(&cluster, &topic_text, b"r"), 2);
    assert_eq!(cluster.remote_log.iter().filter(|(_, _, n)| *n == "Retain").count(), 1);
    // Once the update is in effect everywhere, a re-sent copy is answered at once.
    cluster.send(publisher, publish_packet(&topic_text, b"r", QoS::ExactlyOnce, true, packet_id));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(packet_id))]);
    assert_eq!(cluster.broker(0).unconfirmed_retained_count(), 0);
}

#[test]
fn a_publisher_that_leaves_while_held_leaves_nothing_behind() {
    let workers = 3;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let publisher = client_on(&mut cluster, 0, "gone", true);
    let staying = client_on(&mut cluster, 0, "stays", true);
    let owned_elsewhere = topic_owned_by(1, workers, "left");
    let owned_here = topic_owned_by(0, workers, "left");
    cluster.hold_remotes(true);
    cluster.publish(publisher, &owned_elsewhere, b"a", QoS::AtLeastOnce, true);
    cluster.publish(publisher, &owned_here, b"b", QoS::ExactlyOnce, true);
    cluster.publish(publisher, "plain", b"c", QoS::AtLeastOnce, false);
    cluster.publish(staying, &owned_here, b"d", QoS::AtLeastOnce, true);
    let staying_id = pid(cluster.last_packet_id(staying));
    assert_eq!(cluster.broker(0).held_ack_count(), 4);
    cluster.drop_client(publisher);
    assert_eq!(cluster.broker(0).held_ack_count(), 1, "the closed one's are forgotten");
    assert_eq!(cluster.broker(0).unconfirmed_retained_count(), 3, "its updates still count");
    cluster.hold_remotes(false);
    assert_eq!(cluster.recv(staying), vec![Packet::Puback(staying_id)]);
    assert_eq!(cluster.broker(0).unconfirmed_retained_count(), 0);
    assert_eq!(cluster.broker(0).held_ack_count(), 0);
    assert_eq!(replicas_with(&cluster, &owned_elsewhere, b"a"), 3, "the update completed");
    assert_eq!(replicas_with(&cluster, &owned_here, b"d"), 3);
}

#[test]
fn an_update_that_changes_nothing_is_acknowledged_once_the_owner_says_so() {
    // A delete of nothing [MQTT-3.3.1-10], then a new topic at `retained_messages_max`.
    let workers = 3;
    let config = BrokerConfig { retained_messages_max: 1, ..BrokerConfig::default() };
    let mut cluster = Cluster::new(workers, config);
    let publisher = client_on(&mut cluster, 0, "pub", true);
    let elsewhere = topic_owned_by(2, workers, "none");
    let here = topic_owned_by(0, workers, "none");
    cluster.hold_remotes(true);
    cluster.publish(publisher, &elsewhere, b"", QoS::AtLeastOnce, true);
    assert!(cluster.recv(publisher).is_empty(), "the owner has not answered yet");
    assert!(cluster.step_link(0, 2) && cluster.step_link(2, 0), "Retain, RetainUnchanged");
    let log = &cluster.remote_log;
    assert!(log.contains(&(WorkerId(2), WorkerId(0), "RetainUnchanged")));
    assert_eq!(acks(&cluster.recv(publisher)).len(), 1, "acknowledged, no replica asked");
    assert_eq!(cluster.remotes_pending(), 0);
    // The owner is the publisher's worker: nothing to wait for at all.
    cluster.publish(publisher, &here, b"", QoS::AtLeastOnce, true);
    assert_eq!(acks(&cluster.recv(publisher)).len(), 1);
    // Fill the store (one topic), then a new topic is refused by its owner (counted).
    cluster.hold_remotes(false);
    cluster.publish(publisher, &here, b"kept", QoS::AtLeastOnce, true);
    assert_eq!(acks(&cluster.recv(publisher)).len(), 1);
    cluster.publish(publisher, &elsewhere, b"refused", QoS::AtLeastOnce, true);
    assert_eq!(acks(&cluster.recv(publisher)).len(), 1);
    assert_eq!(cluster.broker(2).stats().retained_refused_full, 1);
    assert_eq!(replicas_with(&cluster, &elsewhere, b"refused"), 0);
    assert_eq!(cluster.broker(0).unconfirmed_retained_count(), 0);
}

#[test]
fn with_one_worker_nothing_is_held() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let publisher = cluster.connect("solo", true);
    cluster.hold_remotes(true);
    cluster.publish(publisher, "r", b"x", QoS::AtLeastOnce, true);
    let id = pid(cluster.last_packet_id(publisher));
    assert_eq!(cluster.recv(publisher), vec![Packet::Puback(id)]);
    assert_eq!(cluster.broker(0).stats().retained_acks_held, 0);
    assert_eq!(cluster.remotes_pending(), 0);
}

#[test]
fn qos0_retained_and_wills_ask_for_no_confirmation() {
    let workers = 3;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let publisher = client_on(&mut cluster, 0, "pub", true);
    let topic_text = topic_owned_by(1, workers, "q0");
    cluster.publish(publisher, &topic_text, b"x", QoS::AtMostOnce, true);
    let id = client_id_on(0, workers, "mortal");
    let connect = crate::protocol::Connect {
        will: Some(will(&topic_text, b"dead", QoS::AtLeastOnce, true)),
        ..connect_packet(&id, true)
    };
    let (mortal, _) = cluster.connect_on(0, connect);
    cluster.drop_client(mortal);
    assert_eq!(replicas_with(&cluster, &topic_text, b"dead"), 3);
    assert!(!cluster.remote_log.iter().any(|(_, _, n)| *n == "RetainAck"));
    assert_eq!(cluster.broker(0).stats().retained_acks_held, 0);
    assert_eq!(cluster.broker(0).unconfirmed_retained_count(), 0);
}

#[test]
fn held_acknowledgements_count_against_the_control_output_bound() {
    // Twice the bound is 32 bytes, 4 per acknowledgement: the ninth owed one is too many.
    let config = BrokerConfig { outbuf_bytes_max: 16, ..BrokerConfig::default() };
    let workers = 2;
    let mut cluster = Cluster::new(workers, config);
    let publisher = client_on(&mut cluster, 0, "greedy", true);
    let topic_text = topic_owned_by(1, workers, "bound");
    cluster.hold_remotes(true);
    cluster.publish(publisher, &topic_text, b"r", QoS::AtLeastOnce, true);
    for _ in 0..7 {
        cluster.publish(publisher, "plain", b"p", QoS::AtLeastOnce, false);
    }
    assert_eq!(cluster.broker(0).held_ack_count(), 8);
    assert_eq!(cluster.ended(publisher), None);
    cluster.publish(publisher, "plain", b"p", QoS::AtLeastOnce, false);
    assert_eq!(cluster.ended(publisher), Some(Ended::ByBroker(CloseReason::SlowConsumer)));
    assert_eq!(cluster.broker(0).held_ack_count(), 0);
    cluster.hold_remotes(false);
    assert_eq!(cluster.broker(0).unconfirmed_retained_count(), 0);
    assert_eq!(cluster.broker(0).stats().closes.slow_consumer, 1);
}

#[test]
fn the_next_session_in_a_slot_does_not_wait_for_its_predecessors_update_mqtt_4_3_3_2() {
    // A clean session's retained QoS 2 update waits for worker 1 when the client leaves; the
    // next session in its slot sends its own QoS 2 PUBLISH with the same id, then re-sends
    // it. Both PUBRECs are owed at once: the re-sent copy's id is the new session's, and the
    // stranger's update has nothing to do with it.
    let workers = 2;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let gone_id = client_id_on(0, workers, "gone");
    let (gone, _) = cluster.connect_on(0, connect_packet(&gone_id, true));
    let owned_elsewhere = topic_owned_by(1, workers, "slot");
    cluster.hold_remotes(true);
    cluster.send(gone, publish_packet(&owned_elsewhere, b"r", QoS::ExactlyOnce, true, 1));
    let slot = cluster.broker(0).sessions.find(&gone_id.clone().into());
    cluster.drop_client(gone);
    let next_id = client_id_on(0, workers, "next");
    let (next, _) = cluster.connect_on(0, connect_packet(&next_id, true));
    assert_eq!(cluster.broker(0).sessions.find(&next_id.into()), slot, "slot reused");
    cluster.send(next, publish_packet("plain", b"n", QoS::ExactlyOnce, false, 1));
    cluster.send(next, resent_packet("plain", b"n", QoS::ExactlyOnce, false, 1));
    assert_eq!(cluster.recv(next), vec![Packet::Pubrec(pid(1)), Packet::Pubrec(pid(1))]);
    assert_eq!(cluster.broker(0).unconfirmed_retained_count(), 1, "the update still waits");
    cluster.hold_remotes(false);
    assert_eq!(cluster.broker(0).unconfirmed_retained_count(), 0);
    assert_eq!(replicas_with(&cluster, &owned_elsewhere, b"r"), 2, "and completes");
}

#[test]
fn a_released_id_reused_for_a_new_publication_does_not_wait_for_the_old_update_mqtt_4_3_3_2() {
    // PUBREL releases id 1 while its retained update still waits; back on its persistent
    // session, the client uses id 1 for a new, unretained QoS 2 message and re-sends it. The
    // re-sent copy is answered at once: it belongs to the new publication, not the old one.
    let workers = 2;
    let mut cluster = Cluster::new(workers, BrokerConfig::default());
    let id = client_id_on(0, workers, "reuser");
    let (publisher, _) = cluster.connect_on(0, connect_packet(&id, false));
    let owned_elsewhere = topic_owned_by(1, workers, "released");
    cluster.hold_remotes(true);
    cluster.send(publisher, publish_packet(&owned_elsewhere, b"r", QoS::ExactlyOnce, true, 1));
    cluster.send(publisher, Packet::Pubrel(pid(1)));
    assert!(cluster.recv(publisher).is_empty(), "PUBREC and PUBCOMP wait for worker 1");
    cluster.drop_client(publisher);
    let (publisher, connack) = cluster.connect_on(0, connect_packet(&id, false));
    assert!(connack.session_present);
    cluster.send(publisher, publish_packet("plain", b"n", QoS::ExactlyOnce, false, 1));
    cluster.send(publisher, resent_packet("plain", b"n", QoS::ExactlyOnce, false, 1));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(1)), Packet::Pubrec(pid(1))]);
    cluster.hold_remotes(false);
    assert_eq!(cluster.broker(0).unconfirmed_retained_count(), 0);
}
