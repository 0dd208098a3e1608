//! SUBACK and cross-worker interest: a SUBACK goes out only once every other worker has
//! applied the interest it depends on, so every publish sent after it reaches the subscriber
//! [MQTT-4.5.0-1] (SIM_FINDINGS finding 3). Remote messages are held in their queue to play a
//! slow pair channel.

use super::harness::*;
use crate::broker::{BrokerConfig, CloseReason};
use crate::protocol::{Packet, QoS, SubackCode};

fn subacks(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|packet| match packet {
            Packet::Suback(suback) => Some(suback.packet_id.get()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_suback_waits_until_every_worker_applied_the_interest_mqtt_4_5_0_1() {
    // The simulation's finding 3: subscriber on worker 0, publisher on worker 1, a slow link.
    let mut cluster = Cluster::new(3, BrokerConfig::default());
    let subscriber = client_on(&mut cluster, 0, "sub", false);
    let publisher = client_on(&mut cluster, 1, "pub", true);
    cluster.hold_remotes(true);
    let id = cluster.send_subscribe(subscriber, &[("t/6/+", QoS::ExactlyOnce)]);
    assert!(subacks(&cluster.recv(subscriber)).is_empty(), "held: nobody knows the interest");
    assert_eq!(cluster.remotes_pending(), 2, "Interest to workers 1 and 2");
    assert_eq!(cluster.broker(0).held_suback_count(), 1);
    // Both Interests arrive and are applied; each worker answers InterestAck.
    assert!(cluster.step_remote() && cluster.step_remote());
    assert!(cluster.step_remote(), "the first ack");
    assert!(subacks(&cluster.recv(subscriber)).is_empty(), "one worker has not acknowledged");
    assert!(cluster.step_remote(), "the second ack");
    assert_eq!(subacks(&cluster.recv(subscriber)), vec![id.get()], "[MQTT-3.8.4-1]");
    assert_eq!(cluster.remotes_pending(), 0);
    // A publish sent after the SUBACK is routed to worker 0 at once, link still slow.
    cluster.publish(publisher, "t/6/1", b"after", QoS::ExactlyOnce, false);
    let pubrec = Packet::Pubrec(pid(cluster.last_packet_id(publisher)));
    assert_eq!(cluster.recv(publisher), vec![pubrec], "acknowledged to the publisher");
    assert_eq!(cluster.remotes_pending(), 1, "a Remote Publish to worker 0");
    cluster.hold_remotes(false);
    let got = cluster.recv_publishes(subscriber);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].qos, got[0].payload.as_ref()), (QoS::ExactlyOnce, &b"after"[..]));
    assert_eq!(cluster.broker(0).held_suback_count(), 0);
    assert_eq!(cluster.broker(0).unconfirmed_interest_count(), 0);
    assert_eq!(cluster.broker(0).stats().subacks_held, 1);
}

#[test]
fn a_suback_for_a_filter_known_everywhere_goes_at_once() {
    let mut cluster = Cluster::new(2, BrokerConfig::default());
    let first = client_on(&mut cluster, 0, "a", true);
    let second = client_on(&mut cluster, 0, "b", true);
    cluster.subscribe(first, &[("known", QoS::AtLeastOnce)]);
    assert_eq!(cluster.broker(0).stats().subacks_held, 1, "the first waited for worker 1");
    cluster.hold_remotes(true);
    let codes = cluster.subscribe(second, &[("known", QoS::AtMostOnce)]);
    assert_eq!(codes, vec![SubackCode::Granted(QoS::AtMostOnce)], "no wait, link held");
    // A resubscription of a confirmed filter does not wait either [MQTT-3.8.4-3].
    cluster.subscribe(first, &[("known", QoS::ExactlyOnce)]);
    assert_eq!(cluster.remotes_pending(), 0, "no interest changed");
    assert_eq!(cluster.broker(0).stats().subacks_held, 1, "none since");
}

#[test]
fn a_subscribe_touching_an_interest_still_in_flight_waits_for_it() {
    let mut cluster = Cluster::new(2, BrokerConfig::default());
    let first = client_on(&mut cluster, 0, "a", true);
    let second = client_on(&mut cluster, 0, "b", true);
    cluster.hold_remotes(true);
    let first_id = cluster.send_subscribe(first, &[("f", QoS::AtLeastOnce)]);
    // Not the filter's first subscriber, but worker 1 may not know the filter yet.
    let second_id = cluster.send_subscribe(second, &[("f", QoS::AtLeastOnce)]);
    assert_eq!(cluster.remotes_pending(), 1, "one Interest: only the first subscriber's");
    assert!(subacks(&cluster.recv(first)).is_empty());
    assert!(subacks(&cluster.recv(second)).is_empty());
    cluster.hold_remotes(false);
    assert_eq!(subacks(&cluster.recv(first)), vec![first_id.get()]);
    assert_eq!(subacks(&cluster.recv(second)), vec![second_id.get()]);
}

#[test]
fn subacks_of_one_connection_keep_their_order_and_later_packets_are_handled() {
    let mut cluster = Cluster::new(2, BrokerConfig::default());
    let other = client_on(&mut cluster, 0, "other", true);
    cluster.subscribe(other, &[("known", QoS::AtMostOnce)]);
    let client = client_on(&mut cluster, 0, "c", true);
    cluster.hold_remotes(true);
    let new_id = cluster.send_subscribe(client, &[("new", QoS::AtMostOnce)]);
    let known_id = cluster.send_subscribe(client, &[("known", QoS::AtMostOnce)]);
    // The second SUBACK needs no interest, but must not overtake the first.
    assert!(subacks(&cluster.recv(client)).is_empty());
    cluster.send(client, Packet::Pingreq);
    cluster.publish(client, "x", b"q1", QoS::AtLeastOnce, false);
    let puback = Packet::Puback(pid(cluster.last_packet_id(client)));
    assert_eq!(cluster.recv(client), vec![Packet::Pingresp, puback], "only SUBACKs wait");
    cluster.hold_remotes(false);
    assert_eq!(subacks(&cluster.recv(client)), vec![new_id.get(), known_id.get()]);
}

#[test]
fn a_connection_closing_while_its_suback_waits_leaves_nothing_held() {
    let mut cluster = Cluster::new(2, BrokerConfig::default());
    let leaving = client_on(&mut cluster, 0, "gone", true);
    let staying = client_on(&mut cluster, 0, "stays", true);
    cluster.hold_remotes(true);
    cluster.send_subscribe(leaving, &[("a", QoS::AtLeastOnce)]);
    let id = cluster.send_subscribe(staying, &[("b", QoS::AtLeastOnce)]);
    assert_eq!(cluster.broker(0).held_suback_count(), 2);
    cluster.drop_client(leaving);
    assert_eq!(cluster.broker(0).held_suback_count(), 1, "the closed one's is forgotten");
    // The acks for `a` (and for its withdrawal) arrive for a connection that is gone.
    cluster.hold_remotes(false);
    assert_eq!(subacks(&cluster.recv(staying)), vec![id.get()]);
    assert_eq!(cluster.broker(0).held_suback_count(), 0);
    assert_eq!(cluster.broker(0).unconfirmed_interest_count(), 0);
    assert_eq!(cluster.broker(0).connection_count(), 1);
}

#[test]
fn with_one_worker_nothing_waits() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("solo", true);
    cluster.hold_remotes(true);
    assert_eq!(cluster.subscribe(client, &[("s/#", QoS::ExactlyOnce)]).len(), 1);
    assert_eq!(cluster.remotes_pending(), 0);
    assert_eq!(cluster.broker(0).stats().subacks_held, 0);
}

#[test]
fn retained_messages_follow_the_suback_also_when_it_waits_mqtt_3_3_1_6() {
    let mut cluster = Cluster::new(2, BrokerConfig::default());
    let publisher = client_on(&mut cluster, 1, "p", true);
    cluster.publish(publisher, "r/1", b"old", QoS::AtMostOnce, true);
    let waiting = client_on(&mut cluster, 0, "w", true);
    cluster.hold_remotes(true);
    let id = cluster.send_subscribe(waiting, &[("r/+", QoS::AtMostOnce)]);
    assert!(cluster.recv(waiting).is_empty(), "neither the SUBACK nor the retained message yet");
    // Replaced while the SUBACK waits: the owner (worker 1) updates its replica at once and
    // worker 0's when the link delivers.
    cluster.publish(publisher, "r/1", b"new", QoS::AtMostOnce, true);
    cluster.hold_remotes(false);
    let got = cluster.recv(waiting);
    let [Packet::Suback(suback), Packet::Publish(retained)] = &got[..] else {
        panic!("expected SUBACK then the retained PUBLISH (Mosquitto's order), got {got:?}");
    };
    assert_eq!(suback.packet_id, id);
    assert!(retained.retain, "[MQTT-3.3.1-8]");
    assert_eq!(retained.payload.as_ref(), b"new", "the retained message when the SUBACK went");
}

#[test]
fn held_subacks_count_against_the_control_output_bound() {
    // A held answer counts its SUBACK (5 bytes) and its granted filter (3): 8 bytes each,
    // and twice the bound is 32 bytes, so the fifth held one is one too many.
    let config = BrokerConfig { outbuf_bytes_max: 16, ..BrokerConfig::default() };
    let mut cluster = Cluster::new(2, config);
    let client = client_on(&mut cluster, 0, "greedy", true);
    cluster.hold_remotes(true);
    for n in 0..4 {
        cluster.send_subscribe(client, &[(&format!("f/{n}"), QoS::AtMostOnce)]);
    }
    assert_eq!(cluster.broker(0).held_suback_count(), 4);
    assert_eq!(cluster.ended(client), None);
    cluster.send_subscribe(client, &[("f/4", QoS::AtMostOnce)]);
    assert_eq!(cluster.ended(client), Some(Ended::ByBroker(CloseReason::SlowConsumer)));
    assert_eq!(cluster.broker(0).held_suback_count(), 0);
    cluster.hold_remotes(false);
    assert_eq!(cluster.broker(0).unconfirmed_interest_count(), 0);
    assert_eq!(cluster.broker(0).subscription_count(), 0, "a clean session left");
}
