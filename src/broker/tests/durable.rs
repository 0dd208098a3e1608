//! Persistence in the core: which records the broker journals, which acknowledgements wait for
//! them, and that a journal replayed into a new broker gives back the persistent state.
//!
//! The tests play the runtime's journal writer: `Disk` keeps each worker's file (its first
//! snapshot, then every batch taken) and reports a batch durable only when told to.

mod disk;

use bytes::Bytes;

use super::harness::*;
use crate::broker::snapshot::SliceLimits;
use crate::broker::{BrokerConfig, Millis};
use crate::persist::replay::Replay;
use crate::protocol::{Packet, QoS};
use disk::*;

#[test]
fn a_puback_waits_until_the_persistent_subscribers_copy_is_durable() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let mut disk = Disk::attach(&mut cluster);
    let _subscriber = persistent_subscriber(&mut cluster, &mut disk, "sub", "t");
    let publisher = cluster.connect("pub", true);
    cluster.publish(publisher, "t", b"m", QoS::AtLeastOnce, false);
    assert!(cluster.recv(publisher).is_empty(), "PUBACK before the message is durable");
    assert_eq!(cluster.broker(0).durable_held_count(), 1);
    disk.flush(&mut cluster, 0);
    let id = pid(cluster.last_packet_id(publisher));
    assert_eq!(cluster.recv(publisher), vec![Packet::Puback(id)]);
}

#[test]
fn traffic_between_clean_sessions_writes_nothing_and_waits_for_nothing() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let disk = Disk::attach(&mut cluster);
    let subscriber = cluster.connect("sub", true);
    cluster.subscribe(subscriber, &[("t", QoS::AtLeastOnce)]);
    let publisher = cluster.connect("pub", true);
    cluster.publish(publisher, "t", b"m", QoS::AtLeastOnce, false);
    let id = pid(cluster.last_packet_id(publisher));
    assert_eq!(cluster.recv(publisher), vec![Packet::Puback(id)]);
    assert_eq!(cluster.brokers[0].journal_pending_bytes(), 0);
    drop(disk);
}

#[test]
fn acks_keep_their_order_while_one_is_held_mqtt_4_6_0_2() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let mut disk = Disk::attach(&mut cluster);
    let _subscriber = persistent_subscriber(&mut cluster, &mut disk, "sub", "durable");
    let publisher = cluster.connect("pub", true);
    cluster.publish(publisher, "durable", b"1", QoS::AtLeastOnce, false);
    let first = cluster.last_packet_id(publisher);
    cluster.publish(publisher, "nobody", b"2", QoS::AtLeastOnce, false);
    let second = cluster.last_packet_id(publisher);
    assert!(cluster.recv(publisher).is_empty(), "the second PUBACK may not overtake the first");
    disk.flush(&mut cluster, 0);
    assert_eq!(
        cluster.recv(publisher),
        vec![Packet::Puback(pid(first)), Packet::Puback(pid(second))]
    );
}

#[test]
fn a_restart_gives_back_sessions_queues_inflight_and_retained_mqtt_3_1_2_4() {
    let config = BrokerConfig::default();
    let mut cluster = Cluster::single(config.clone());
    let mut disk = Disk::attach(&mut cluster);
    let subscriber = persistent_subscriber(&mut cluster, &mut disk, "sub", "t/#");
    let publisher = cluster.connect("pub", true);
    // One message in flight (sent, not acknowledged), then offline: two more queued.
    cluster.publish(publisher, "t/1", b"inflight", QoS::AtLeastOnce, false);
    assert_eq!(cluster.recv_publishes(subscriber).len(), 1);
    cluster.drop_client(subscriber);
    cluster.publish(publisher, "t/2", b"queued-1", QoS::ExactlyOnce, false);
    cluster.publish(publisher, "t/3", b"queued-2", QoS::AtLeastOnce, true);
    disk.flush_all(&mut cluster);

    let (mut cluster, _disk) = disk.restart(1, config);
    assert_eq!(cluster.broker(0).session_count(), 1);
    assert_eq!(cluster.broker(0).retained_count(), 1);
    let (client, connack) = cluster.connect_on(0, connect_packet("sub", false));
    assert!(connack.session_present, "[MQTT-3.2.2-2]");
    let publishes = cluster.recv_publishes(client);
    let payloads: Vec<&[u8]> = publishes.iter().map(|p| p.payload.as_ref()).collect();
    assert_eq!(payloads, [&b"inflight"[..], b"queued-1", b"queued-2"]);
    assert!(publishes[0].dup, "an unacknowledged PUBLISH is re-sent with DUP=1 [MQTT-4.4.0-1]");
    assert_eq!(publishes[1].qos, QoS::ExactlyOnce);
}

#[test]
fn acknowledged_messages_leave_the_journal() {
    let config = BrokerConfig::default();
    let mut cluster = Cluster::single(config.clone());
    let mut disk = Disk::attach(&mut cluster);
    let subscriber = persistent_subscriber(&mut cluster, &mut disk, "sub", "t");
    cluster.set_auto_ack(subscriber, true);
    let publisher = cluster.connect("pub", true);
    for n in 0..5u8 {
        cluster.publish(publisher, "t", &[n], QoS::ExactlyOnce, false);
    }
    disk.flush_all(&mut cluster);
    let (cluster, _) = disk.restart(1, config);
    let info = cluster.broker(0).session_info("sub").expect("the session survives");
    assert_eq!((info.inflight, info.queued), (0, 0), "nothing acknowledged comes back");
    assert_eq!(info.subscriptions.len(), 1);
}

#[test]
fn a_cross_worker_ack_waits_for_the_other_workers_journal() {
    let config = BrokerConfig::default();
    let mut cluster = Cluster::new(2, config);
    let mut disk = Disk::attach(&mut cluster);
    let (subscriber, _) = durable_subscriber(&mut cluster, &mut disk, 1, "sub", "x");
    let pub_id = client_id_on(0, 2, "pub");
    let (publisher, _) = cluster.connect_on(0, connect_packet(&pub_id, true));
    cluster.publish(publisher, "x", b"far", QoS::AtLeastOnce, false);
    disk.flush(&mut cluster, 0);
    assert!(cluster.recv(publisher).is_empty(), "worker 1 has not made its copy durable");
    disk.flush(&mut cluster, 1);
    let id = pid(cluster.last_packet_id(publisher));
    assert_eq!(cluster.recv(publisher), vec![Packet::Puback(id)]);
    assert_eq!(cluster.recv_publishes(subscriber).len(), 1);
}

#[test]
fn a_cross_worker_qos2_id_is_journaled_only_once_every_destination_holds_the_message() {
    // Journaled earlier, a crash could leave the id (so a re-sent PUBLISH is dropped as a
    // duplicate) without the other worker's copy: an acknowledged message lost.
    let mut cluster = Cluster::new(2, BrokerConfig::default());
    let mut disk = Disk::attach(&mut cluster);
    let (subscriber, _) = durable_subscriber(&mut cluster, &mut disk, 1, "s", "q2");
    let (publisher, _) = cluster.connect_on(0, connect_packet(&client_id_on(0, 2, "p"), false));
    cluster.publish(publisher, "q2", b"once", QoS::ExactlyOnce, false);
    disk.flush(&mut cluster, 0);
    assert_eq!(journaled_ids(&disk, 0), 0, "worker 1 has not confirmed its copy");
    assert!(cluster.recv(publisher).is_empty());
    disk.flush(&mut cluster, 1);
    assert!(cluster.recv(publisher).is_empty(), "the id's record is not durable yet");
    disk.flush(&mut cluster, 0);
    assert_eq!(journaled_ids(&disk, 0), 1);
    let id = pid(cluster.last_packet_id(publisher));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(id)]);
    assert_eq!(cluster.recv_publishes(subscriber).len(), 1);
}

#[test]
fn a_local_qos2_id_is_journaled_in_the_batch_of_its_copies() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let mut disk = Disk::attach(&mut cluster);
    let _subscriber = persistent_subscriber(&mut cluster, &mut disk, "sub", "q2");
    let publisher = cluster.connect("pub", false);
    cluster.publish(publisher, "q2", b"once", QoS::ExactlyOnce, false);
    disk.flush(&mut cluster, 0);
    assert_eq!(journaled_ids(&disk, 0), 1);
    let image = Replay::file(Bytes::from(disk.files[0].clone())).into_image();
    assert_eq!(image.entry_count(), 1, "the copy is in the same batch as the id");
    let id = pid(cluster.last_packet_id(publisher));
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(id)]);
}

#[test]
fn a_retained_message_is_journaled_by_its_owner_and_survives_a_restart_with_fewer_workers() {
    let config = BrokerConfig::default();
    let mut cluster = Cluster::new(3, config.clone());
    let mut disk = Disk::attach(&mut cluster);
    let (publisher, _) = cluster.connect_on(0, connect_packet(&client_id_on(0, 3, "p"), true));
    for n in 0..12 {
        cluster.publish(publisher, &format!("r/{n}"), b"kept", QoS::AtLeastOnce, true);
    }
    cluster.publish(publisher, "r/0", b"", QoS::AtLeastOnce, true); // deletes [MQTT-3.3.1-10]
    assert!(cluster.recv(publisher).is_empty(), "retained PUBACKs wait for the owners");
    disk.flush_all(&mut cluster);
    assert_eq!(cluster.recv(publisher).len(), 13);
    let (cluster, _) = disk.restart(2, config);
    for worker in 0..2 {
        assert_eq!(cluster.broker(worker).retained_count(), 11, "every replica has them all");
    }
}

#[test]
fn a_snapshot_replays_to_the_same_state_as_the_log_it_replaces() {
    let config = BrokerConfig::default();
    let mut cluster = Cluster::single(config.clone());
    let mut disk = Disk::attach(&mut cluster);
    let subscriber = persistent_subscriber(&mut cluster, &mut disk, "sub", "s/+");
    let publisher = cluster.connect("pub", true);
    for n in 0..6u8 {
        cluster.publish(publisher, &format!("s/{n}"), &[n], QoS::AtLeastOnce, n % 2 == 0);
    }
    let _ = cluster.recv_publishes(subscriber);
    disk.flush_all(&mut cluster);
    let logged = Replay::file(Bytes::from(disk.files[0].clone())).into_image();
    let mut snapshot = Vec::new();
    let position = cluster.brokers[0].take_snapshot(1, &mut snapshot);
    cluster.brokers[0].handle_durable(position, Millis(cluster.now.0));
    let snapshotted = Replay::file(Bytes::from(snapshot)).into_image();
    assert_eq!(snapshotted, logged);
    assert_eq!(logged.entry_count(), 6);
    assert_eq!(logged.retained.len(), 3);
}

#[test]
fn every_truncation_of_a_journal_recovers_a_prefix_of_its_history() {
    let config = BrokerConfig::default();
    let mut cluster = Cluster::single(config);
    let mut disk = Disk::attach(&mut cluster);
    let _subscriber = persistent_subscriber(&mut cluster, &mut disk, "sub", "t");
    let publisher = cluster.connect("pub", true);
    let mut ends = Vec::new();
    for n in 0..8u8 {
        cluster.publish(publisher, "t", &[n], QoS::AtLeastOnce, false);
        disk.flush(&mut cluster, 0);
        ends.push(disk.files[0].len());
    }
    let file = disk.files[0].clone();
    for cut in ends[0]..=file.len() {
        let replay = Replay::file(Bytes::copy_from_slice(&file[..cut]));
        let whole_batches = ends.iter().filter(|&&end| end <= cut).count();
        if ends.contains(&cut) {
            assert!(replay.dropped.is_none(), "a cut between batches is a clean end: {cut}");
        }
        let image = replay.into_image();
        // Each batch adds one entry for the subscriber; a torn batch is dropped whole.
        assert_eq!(image.entry_count(), whole_batches, "cut at {cut}");
        assert_eq!(image.sessions.len(), 1);
    }
}

#[test]
fn after_a_restart_publishes_reach_restored_subscribers_elsewhere_before_any_interest_message() {
    // Found by the kill -9 test: a publisher reconnecting at once published before the
    // restored subscriber's worker had told the others of its interest, and its
    // acknowledged messages went nowhere. The recovered interest is applied at restore.
    let config = BrokerConfig::default();
    let mut cluster = Cluster::new(2, config.clone());
    let mut disk = Disk::attach(&mut cluster);
    offline_subscriber(&mut cluster, &mut disk, 1, "sub", "after/restart");
    disk.flush_all(&mut cluster);

    let (mut cluster, _disk) = disk.restart_holding(2, config, true);
    let (publisher, _) = cluster.connect_on(0, connect_packet(&client_id_on(0, 2, "pub"), true));
    cluster.publish(publisher, "after/restart", b"routed", QoS::AtLeastOnce, false);
    let publishes = cluster.remote_log.iter().filter(|(_, _, name)| *name == "Publish").count();
    assert_eq!(publishes, 1, "the publish is routed to worker 1 without its Interest message");
}

#[test]
fn packet_ids_continue_after_a_restart_instead_of_starting_again() {
    // Found by the kill -9 test: restarting at id 1 reused an id the client still held for
    // a message whose `Sent` record was lost, and a PUBREL re-sent for an older message
    // under that id released the client's newer copy, which then came a second time.
    let config = BrokerConfig::default();
    let mut cluster = Cluster::single(config.clone());
    let mut disk = Disk::attach(&mut cluster);
    let subscriber = persistent_subscriber(&mut cluster, &mut disk, "sub", "ids");
    cluster.set_auto_ack(subscriber, true);
    let publisher = cluster.connect("pub", true);
    for n in 0..3u8 {
        cluster.publish(publisher, "ids", &[n], QoS::AtLeastOnce, false);
        disk.flush_all(&mut cluster);
    }
    let ids: Vec<u16> = cluster
        .recv_acking(subscriber)
        .iter()
        .filter_map(|publish| publish.packet_id.map(|id| id.get()))
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    cluster.drop_client(subscriber);
    disk.flush_all(&mut cluster);
    let (mut cluster, _disk) = disk.restart(1, config);
    let publisher = cluster.connect("pub", true);
    cluster.publish(publisher, "ids", b"after", QoS::AtLeastOnce, false);
    let (subscriber, _) = cluster.connect_on(0, connect_packet("sub", false));
    let ids: Vec<u16> = cluster
        .recv_publishes(subscriber)
        .iter()
        .filter_map(|publish| publish.packet_id.map(|id| id.get()))
        .collect();
    assert_eq!(ids, [4]);
}

/// Worker 1's persistent subscriber of `q2` and worker 0's persistent publisher, with a QoS 2
/// message from it durable in worker 1's copy but not in worker 0's id (a crash right after
/// worker 1's batch), then a restart from those files.
fn crash_after_the_remote_copy(config: &BrokerConfig) -> (Cluster, Disk, String, String) {
    let Qos2AcrossWorkers { mut cluster, mut disk, publisher, pub_id, sub_id } =
        Qos2AcrossWorkers::new(config);
    cluster.send(publisher, publish_packet("q2", b"once", QoS::ExactlyOnce, false, 7));
    disk.flush(&mut cluster, 0);
    disk.flush(&mut cluster, 1);
    assert_eq!(journaled_ids(&disk, 0), 0, "the crash comes before worker 0 journals the id");
    assert!(cluster.recv(publisher).is_empty(), "no PUBREC yet");
    let (cluster, disk) = disk.restart(2, config.clone());
    (cluster, disk, sub_id, pub_id)
}

#[test]
fn a_qos2_publish_re_sent_after_a_crash_is_not_stored_twice_across_workers_mqtt_4_3_3_2() {
    // [MQTT-4.3.3-2]: Method B delivers a QoS 2 message once. Before this, the re-sent
    // PUBLISH (its id lost with worker 0's unfinished batch) was routed again and worker 1,
    // which already held the first copy, stored a second: the subscriber got it twice.
    let config = BrokerConfig::default();
    let (mut cluster, mut disk, sub_id, pub_id) = crash_after_the_remote_copy(&config);
    let (publisher, connack) = cluster.connect_on(0, connect_packet(&pub_id, false));
    assert!(connack.session_present);
    exchange_qos2(&mut cluster, &mut disk, publisher, resent("q2", b"once", 7));
    // The released id is a new message again [MQTT-4.3.3-2]: delivered, not taken for a copy.
    cluster.send(publisher, publish_packet("q2", b"next", QoS::ExactlyOnce, false, 7));
    disk.flush_all(&mut cluster);
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(7))]);
    let (subscriber, _) = cluster.connect_on(1, connect_packet(&sub_id, false));
    assert_eq!(payloads(&mut cluster, subscriber), [&b"once"[..], b"next"]);
    let durability = cluster.broker(1).durability.as_deref().expect("persistence is on");
    assert_eq!(durability.forwarded_duplicates, 1);
}

#[test]
fn a_new_persistent_session_makes_other_workers_forget_the_old_ones_qos2_ids() {
    // The client started over (CleanSession=1, then a new persistent session): its packet ids
    // start afresh, and an id worker 1 still held from before the crash must not drop a new
    // message [MQTT-3.1.2-6].
    let config = BrokerConfig::default();
    let (mut cluster, mut disk, sub_id, pub_id) = crash_after_the_remote_copy(&config);
    let (publisher, _) = cluster.connect_on(0, connect_packet(&pub_id, true));
    cluster.drop_client(publisher);
    let (publisher, connack) = cluster.connect_on(0, connect_packet(&pub_id, false));
    assert!(!connack.session_present);
    cluster.send(publisher, publish_packet("q2", b"fresh", QoS::ExactlyOnce, false, 7));
    disk.flush_all(&mut cluster);
    assert_eq!(cluster.recv(publisher), vec![Packet::Pubrec(pid(7))]);
    let (subscriber, _) = cluster.connect_on(1, connect_packet(&sub_id, false));
    assert_eq!(payloads(&mut cluster, subscriber), [&b"once"[..], b"fresh"]);
}

/// A QoS 2 message from a persistent session of worker 0 of 3, to persistent subscribers on
/// all three, then a crash: the local copy (worker 0) and worker 1's are durable, worker 2's
/// and the origin's id are not. Restarted with `workers`, the sessions re-homed, the client
/// re-sends the PUBLISH: each subscriber has the message exactly once [MQTT-4.3.3-2].
fn exactly_once_across_a_restart_with(workers: u16) {
    let config = BrokerConfig::default();
    let mut cluster = Cluster::new(3, config.clone());
    let mut disk = Disk::attach(&mut cluster);
    let subscriber_ids: Vec<String> = (0..3)
        .map(|worker| offline_subscriber(&mut cluster, &mut disk, worker, "s", "q2"))
        .collect();
    disk.flush_all(&mut cluster);
    let pub_id = client_id_on(0, 3, "p");
    let (publisher, _) = cluster.connect_on(0, connect_packet(&pub_id, false));
    cluster.send(publisher, publish_packet("q2", b"once", QoS::ExactlyOnce, false, 7));
    disk.flush(&mut cluster, 0);
    disk.flush(&mut cluster, 1);
    assert_eq!(journaled_ids(&disk, 0), 0, "the crash comes before worker 0 journals the id");
    assert!(cluster.recv(publisher).is_empty(), "no PUBREC yet");
    let (mut cluster, mut disk) = disk.restart(workers, config);
    let home = |id: &str| crate::broker::home_worker(id.as_bytes(), workers).0;
    let (publisher, connack) = cluster.connect_on(home(&pub_id), connect_packet(&pub_id, false));
    assert!(connack.session_present);
    exchange_qos2(&mut cluster, &mut disk, publisher, resent("q2", b"once", 7));
    for id in &subscriber_ids {
        let (subscriber, connack) = cluster.connect_on(home(id), connect_packet(id, false));
        assert!(connack.session_present);
        let got = payloads(&mut cluster, subscriber);
        assert_eq!(got, [&b"once"[..]], "{id} with {workers} workers");
    }
    // Released everywhere: nothing is held for the id any more.
    for worker in 0..workers {
        let d = cluster.broker(worker).durability.as_deref().expect("persistence is on");
        assert!(d.forwarded.is_empty(), "worker {worker} still holds {:?}", d.forwarded);
    }
}

#[test]
fn a_qos2_publish_re_sent_after_a_crash_comes_once_with_the_same_worker_count_mqtt_4_3_3_2() {
    // Also the origin's own subscriber: its copy was durable before the id.
    exactly_once_across_a_restart_with(3);
}

#[test]
fn a_qos2_publish_re_sent_after_a_crash_comes_once_with_fewer_workers_mqtt_4_3_3_2() {
    exactly_once_across_a_restart_with(2);
    exactly_once_across_a_restart_with(1);
}

#[test]
fn a_qos2_publish_re_sent_after_a_crash_comes_once_with_more_workers_mqtt_4_3_3_2() {
    exactly_once_across_a_restart_with(4);
    exactly_once_across_a_restart_with(5);
}

#[test]
fn a_snapshot_sliced_over_turns_under_traffic_replays_to_the_state_of_the_log() {
    // A compaction writes its snapshot a slice per loop turn while sessions come, go, queue
    // and acknowledge; the batches of those turns are copied into the new file between the
    // slices. The new file must give the state the old one gives.
    let config = BrokerConfig { max_inflight_messages: 2, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let mut disk = Disk::attach(&mut cluster);
    let mut subscribers: Vec<Client> = (0..10)
        .map(|n| persistent_subscriber(&mut cluster, &mut disk, &format!("s{n}"), "t/#"))
        .collect();
    let publisher = cluster.connect("pub", false);
    for n in 0..4u8 {
        cluster.publish(publisher, "t/a", &[n], QoS::ExactlyOnce, false);
        cluster.publish(publisher, "t/b", &[n], QoS::AtLeastOnce, n == 0);
    }
    disk.flush_all(&mut cluster);
    let mut new_file = Vec::new();
    let limits = SliceLimits { slots: 2, entries: usize::MAX };
    let mut cursor = cluster.brokers[0].begin_snapshot(1, limits, &mut new_file);
    let mut step = 0usize;
    while !cursor.done() {
        let n = step % subscribers.len();
        match step % 4 {
            0 => cluster.publish(publisher, "t/c", &[step as u8], QoS::ExactlyOnce, false),
            1 => {
                cluster.set_auto_ack(subscribers[n], true);
                cluster.recv_acking(subscribers[n]);
            }
            2 => {
                let id = format!("new{step}");
                let client = cluster.connect(&id, false);
                cluster.send_subscribe(client, &[("t/+", QoS::AtLeastOnce)]);
                subscribers.push(client);
            }
            _ => {
                // A session discarded (CleanSession=1 takes it over), its slot reused later.
                cluster.drop_client(subscribers[n]);
                let id = format!("s{n}");
                let clean = cluster.connect(&id, true);
                cluster.drop_client(clean);
            }
        }
        flush_copying(&mut cluster, &mut disk, &mut new_file, Some(&mut cursor));
        step += 1;
    }
    assert!(step >= 4, "the snapshot took {step} slices: too few to show anything");
    // After its snapshot the new file gets the batches alone.
    cluster.publish(publisher, "t/d", b"after", QoS::AtLeastOnce, false);
    flush_copying(&mut cluster, &mut disk, &mut new_file, None);
    assert_eq!(normalized(&new_file), normalized(&disk.files[0]));
}

#[test]
fn a_long_queue_is_cut_across_slices_and_still_replays_to_the_state_of_the_log() {
    // A slice writes at most `entries` outgoing messages: sessions with 30 queued are cut
    // mid-queue and resumed, while acknowledgements move entries from the queue into flight
    // and out, new messages join the tails, and a cut session is discarded and replaced.
    let config = BrokerConfig { max_inflight_messages: 2, ..BrokerConfig::default() };
    let mut cluster = Cluster::single(config);
    let mut disk = Disk::attach(&mut cluster);
    let subscribers: Vec<Client> = (0..3)
        .map(|n| persistent_subscriber(&mut cluster, &mut disk, &format!("s{n}"), "t/#"))
        .collect();
    let publisher = cluster.connect("pub", false);
    for n in 0..30u8 {
        let qos = if n % 2 == 0 { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
        cluster.publish(publisher, "t/a", &[n], qos, false);
    }
    disk.flush_all(&mut cluster);
    let mut new_file = Vec::new();
    let limits = SliceLimits { slots: usize::MAX, entries: 7 };
    let mut cursor = cluster.brokers[0].begin_snapshot(1, limits, &mut new_file);
    let mut step = 0usize;
    while !cursor.done() {
        match step % 3 {
            0 => cluster.publish(publisher, "t/b", &[step as u8], QoS::AtLeastOnce, false),
            1 => {
                // Acknowledges what is in flight; the next two move from the queue.
                let client = subscribers[[0, 2][step / 3 % 2]];
                cluster.set_auto_ack(client, true);
                cluster.recv_acking(client);
                cluster.set_auto_ack(client, false);
            }
            _ if step == 5 => {
                // The session being cut is discarded and a new one takes its slot.
                cluster.drop_client(subscribers[1]);
                let clean = cluster.connect("s1", true);
                cluster.drop_client(clean);
                let again = cluster.connect("s1", false);
                cluster.send_subscribe(again, &[("t/#", QoS::AtLeastOnce)]);
            }
            _ => {}
        }
        flush_copying(&mut cluster, &mut disk, &mut new_file, Some(&mut cursor));
        step += 1;
    }
    assert!(step >= 10, "90 entries in slices of 7 took only {step} slices");
    cluster.publish(publisher, "t/d", b"after", QoS::AtLeastOnce, false);
    flush_copying(&mut cluster, &mut disk, &mut new_file, None);
    let replayed = Replay::file(Bytes::from(new_file.clone()));
    assert!(replayed.dropped.is_none() && replayed.snapshot_complete);
    assert_eq!(normalized(&new_file), normalized(&disk.files[0]));
    assert!(normalized(&new_file).entry_count() > 30, "the queues are in it");
}

#[test]
fn a_compaction_leaves_out_a_qos2_id_still_waiting_for_another_workers_copy_mqtt_4_3_3_2() {
    // Issue #10, found by the 20-kill test (blocks of acknowledged cross-worker QoS 2 messages
    // lost): the publisher's worker compacted while the ids of its session's QoS 2 messages
    // waited for worker 1's copies, and the snapshot wrote them from the session's memory.
    // Killed once that file was current, before worker 1's batch: the restart had the ids
    // without the copies, the re-sent PUBLISH was a duplicate [MQTT-4.3.3-2], answered PUBREC
    // and dropped, and the PUBCOMP acknowledged a message no subscriber ever got.
    let config = BrokerConfig::default();
    let Qos2AcrossWorkers { mut cluster, mut disk, publisher, pub_id, sub_id } =
        Qos2AcrossWorkers::new(&config);
    disk.flush_all(&mut cluster);
    cluster.send(publisher, publish_packet("q2", b"once", QoS::ExactlyOnce, false, 7));
    // Worker 0 compacts, slice by slice, and its next batch makes the new file current;
    // worker 1 has taken nothing yet.
    let new_file = compact_worker0(&mut cluster, &mut disk);
    assert!(cluster.recv(publisher).is_empty(), "no PUBREC before worker 1's copy is durable");
    let image = Replay::file(Bytes::from(new_file.clone())).into_image();
    let ids: usize = image.sessions.iter().map(|session| session.awaiting_pubrel.len()).sum();
    assert_eq!(ids, 0, "the id is written only after worker 1's copy is durable");
    // kill -9: worker 0's compacted file and worker 1's file without its last batch.
    disk.files[0] = new_file;
    let (mut cluster, mut disk) = disk.restart(2, config);
    let (publisher, connack) = cluster.connect_on(0, connect_packet(&pub_id, false));
    assert!(connack.session_present);
    exchange_qos2(&mut cluster, &mut disk, publisher, resent("q2", b"once", 7));
    let (subscriber, _) = cluster.connect_on(1, connect_packet(&sub_id, false));
    assert_eq!(
        payloads(&mut cluster, subscriber),
        [&b"once"[..]],
        "acknowledged, so delivered (issue #10)"
    );
}

/// A slot reused while a QoS 2 id waits: worker 0's persistent publisher sends QoS 2 message
/// 7 ("old") to worker 1's offline subscriber of `q2`; before worker 1's copy is durable (so
/// before the id's record may be journaled) the publisher's session is discarded
/// (CleanSession=1 takes it over) and `b`'s new persistent session takes its slot. Worker 0
/// also has an offline subscriber of `here`.
struct SlotReused {
    cluster: Cluster,
    disk: Disk,
    new: Client,
    new_id: String,
    remote_subscriber: String,
    local_subscriber: String,
}

fn slot_reused_while_an_id_waits(config: &BrokerConfig) -> SlotReused {
    let Qos2AcrossWorkers { mut cluster, mut disk, publisher: old, pub_id: old_id, sub_id } =
        Qos2AcrossWorkers::new(config);
    let local_subscriber = offline_subscriber(&mut cluster, &mut disk, 0, "l", "here");
    cluster.send(old, publish_packet("q2", b"old", QoS::ExactlyOnce, false, 7));
    disk.flush(&mut cluster, 0);
    let slot = cluster.broker(0).sessions.find(&old_id.clone().into());
    let (clean, _) = cluster.connect_on(0, connect_packet(&old_id, true));
    cluster.drop_client(clean);
    let new_id = client_id_on(0, 2, "b");
    let (new, _) = cluster.connect_on(0, connect_packet(&new_id, false));
    assert_eq!(cluster.broker(0).sessions.find(&new_id.clone().into()), slot, "slot reused");
    SlotReused { cluster, disk, new, new_id, remote_subscriber: sub_id, local_subscriber }
}

/// The QoS 2 ids awaiting PUBREL of `client_id`'s session in `file`.
fn ids_of(file: &[u8], client_id: &str) -> Vec<u16> {
    let image = Replay::file(Bytes::copy_from_slice(file)).into_image();
    let session =
        image.sessions.into_iter().find(|session| session.client_id.as_str() == client_id);
    let ids = session.unwrap_or_else(|| panic!("{client_id} is not in the file")).awaiting_pubrel;
    ids.into_iter().map(|id| id.get()).collect()
}

#[test]
fn a_held_back_qos2_id_is_not_given_to_the_next_session_in_its_slot_mqtt_4_3_3_2() {
    // Issue #10: the waiting id's record named its session by slot. Journaled once worker 1
    // confirmed, after the slot was reused, it was replayed into `b`'s session, whose own
    // first QoS 2 PUBLISH with that id was then, after a restart, taken for a duplicate
    // [MQTT-4.3.3-2]: PUBREC and PUBCOMP, and no subscriber got it.
    let config = BrokerConfig::default();
    let SlotReused { mut cluster, mut disk, new_id, remote_subscriber, .. } =
        slot_reused_while_an_id_waits(&config);
    disk.flush_all(&mut cluster);
    assert_eq!(ids_of(&disk.files[0], &new_id), [0u16; 0], "b never sent a QoS 2 PUBLISH");
    let (mut cluster, mut disk) = disk.restart(2, config);
    let (publisher, connack) = cluster.connect_on(0, connect_packet(&new_id, false));
    assert!(connack.session_present);
    let packet = publish_packet("q2", b"new", QoS::ExactlyOnce, false, 7);
    exchange_qos2(&mut cluster, &mut disk, publisher, packet);
    let (subscriber, _) = cluster.connect_on(1, connect_packet(&remote_subscriber, false));
    assert_eq!(payloads(&mut cluster, subscriber), [&b"old"[..], b"new"]);
}

#[test]
fn a_compaction_keeps_the_qos2_id_of_the_next_session_in_a_held_back_ids_slot_mqtt_4_3_3_2() {
    // The snapshot's side of the same match by slot: a compaction leaves out the ids held
    // back for other workers (above), and it left out `b`'s own id 7 too, journaled at once
    // (its message stays on worker 0). Killed with that file current, the client's re-sent
    // PUBLISH was delivered a second time [MQTT-4.3.3-2].
    let config = BrokerConfig::default();
    let SlotReused { mut cluster, mut disk, new, new_id, local_subscriber, .. } =
        slot_reused_while_an_id_waits(&config);
    cluster.send(new, publish_packet("here", b"local", QoS::ExactlyOnce, false, 7));
    let new_file = compact_worker0(&mut cluster, &mut disk);
    assert_eq!(ids_of(&new_file, &new_id), [7], "b's id is in the compacted file");
    // kill -9: worker 0's compacted file, worker 1's without the old copy.
    disk.files[0] = new_file;
    let (mut cluster, mut disk) = disk.restart(2, config);
    let (publisher, _) = cluster.connect_on(0, connect_packet(&new_id, false));
    exchange_qos2(&mut cluster, &mut disk, publisher, resent("here", b"local", 7));
    let (subscriber, _) = cluster.connect_on(0, connect_packet(&local_subscriber, false));
    assert_eq!(payloads(&mut cluster, subscriber), [&b"local"[..]], "once [MQTT-4.3.3-2]");
}

#[test]
fn a_restart_broadcasts_no_interest_and_still_routes_across_workers() {
    // The workers are given each other's recovered filters with their shares; broadcasting
    // them again was one message per session each way after the start.
    let config = BrokerConfig::default();
    let mut cluster = Cluster::new(2, config.clone());
    let mut disk = Disk::attach(&mut cluster);
    let ids: Vec<String> = (0..2)
        .map(|worker| {
            offline_subscriber(&mut cluster, &mut disk, worker, "s", &format!("t/{worker}"))
        })
        .collect();
    let (mut cluster, mut disk) = disk.restart_holding(2, config, true);
    assert_eq!(cluster.remotes_pending(), 0, "nothing was sent between the workers");
    cluster.hold_remotes(false);
    // A publisher on each worker reaches the subscriber on the other.
    for worker in 0..2u16 {
        let (publisher, _) =
            cluster.connect_on(worker, connect_packet(&format!("p{worker}"), true));
        let to = 1 - worker;
        cluster.publish(publisher, &format!("t/{to}"), b"across", QoS::AtLeastOnce, false);
        disk.flush_all(&mut cluster);
    }
    for (worker, id) in ids.iter().enumerate() {
        let (subscriber, _) = cluster.connect_on(worker as u16, connect_packet(id, false));
        let got = cluster.recv_acking(subscriber);
        assert_eq!(got.len(), 1, "{id}: {got:?}");
    }
}

#[test]
fn a_pubrel_before_its_pubrec_releases_a_held_back_id_for_good_mqtt_4_3_3_2() {
    // The same record keyed by slot and id, overtaken by the id's release: a client that sent
    // PUBREL before its PUBREC came (the id waiting for worker 1's copy) had the id's record
    // appended after the release, and a restart held the id again, dropping the client's next
    // message with it as a duplicate.
    let config = BrokerConfig::default();
    let Qos2AcrossWorkers { mut cluster, mut disk, publisher, pub_id, sub_id } =
        Qos2AcrossWorkers::new(&config);
    cluster.send(publisher, publish_packet("q2", b"first", QoS::ExactlyOnce, false, 7));
    cluster.send(publisher, Packet::Pubrel(pid(7)));
    disk.flush_all(&mut cluster);
    assert_eq!(cluster.recv(publisher), [Packet::Pubrec(pid(7)), Packet::Pubcomp(pid(7))]);
    assert_eq!(ids_of(&disk.files[0], &pub_id), [0u16; 0], "7 was released");
    let (mut cluster, mut disk) = disk.restart(2, config);
    let (publisher, _) = cluster.connect_on(0, connect_packet(&pub_id, false));
    let packet = publish_packet("q2", b"second", QoS::ExactlyOnce, false, 7);
    exchange_qos2(&mut cluster, &mut disk, publisher, packet);
    let (subscriber, _) = cluster.connect_on(1, connect_packet(&sub_id, false));
    assert_eq!(payloads(&mut cluster, subscriber), [&b"first"[..], b"second"]);
}

/// `retained_expiry_secs` counts from when a retained message was set, across a restart: the
/// journal keeps the wall-clock time it was set, and the restored message keeps its age.
#[test]
fn a_restored_retained_message_expires_on_its_original_schedule() {
    let config = BrokerConfig { retained_expiry_secs: 10, ..BrokerConfig::default() };
    let mut cluster = Cluster::new(2, config.clone());
    let mut disk = Disk::attach(&mut cluster);
    let publisher = cluster.connect("pub", true);
    cluster.publish(publisher, &topic_owned_by(0, 2, "old"), b"old", QoS::AtMostOnce, true);
    cluster.advance(6_000);
    cluster.publish(publisher, &topic_owned_by(1, 2, "new"), b"new", QoS::AtMostOnce, true);
    disk.flush_all(&mut cluster);
    // Down for 2 s: at the restart "old" is 8 s old and "new" 2 s.
    let start = Cluster::new(1, config.clone()).now.0;
    let restart_zero = disk.unix_millis_at_zero + cluster.now.0 + 2_000 - start;
    let (mut restarted, disk2) = disk.restart_at(2, config.clone(), false, restart_zero);
    assert_eq!(restarted.broker(0).retained_count(), 2, "both are restored on every worker");
    restarted.advance(1_000);
    assert_eq!(restarted.broker(0).retained_count(), 2, "9 s old: not yet due");
    restarted.advance(1_500);
    assert_eq!(restarted.broker(0).retained_count(), 1, "\"old\" is due 2 s after the restart");
    assert_eq!(restarted.broker(1).retained_count(), 1);
    // A second restart keeps the age too (the new epoch's snapshot carries the set time).
    let again_zero = restart_zero + restarted.now.0 + 4_000 - start;
    let (mut again, _) = disk2.restart_at(1, config.clone(), false, again_zero);
    assert_eq!(again.broker(0).retained_count(), 1, "\"new\" is 8.5 s old: kept");
    assert_eq!(again.broker(0).stats().retained_expired, 1, "\"old\" was due: not restored");
    again.advance(2_000);
    assert_eq!(again.broker(0).retained_count(), 0, "\"new\" is due 10 s after it was set");
    // Restarted after the expiry: nothing comes back, and the drop is counted.
    let late_zero = restart_zero + 60_000;
    let (late, _) = disk2.restart_at(1, config, false, late_zero);
    assert_eq!(late.broker(0).retained_count(), 0);
    assert_eq!(late.broker(0).stats().retained_expired, 2, "both were due");
}
