//! End to end without an external broker: the load generator through the in-process relay,
//! over real loopback TCP and io_uring. Runs are bounded by message counts, so each test takes
//! well under a second when the machine is idle.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ringmq::protocol::QoS;
use ringmq_bench::client::{run_load, LoadOutcome};
use ringmq_bench::plan::{LoadConfig, Plan, Target};
use ringmq_bench::relay::{Relay, RelayConfig, RelayStats};
use ringmq_bench::report::{self, LoadReport};

fn config(plan: Plan, qos: QoS, count: u64, threads: usize) -> LoadConfig {
    LoadConfig {
        target: Target { hosts: vec![Ipv4Addr::LOCALHOST], port: 0, sources: Vec::new() },
        plan,
        threads,
        ring_files_max: 1024,
        keepalive_secs: 30,
        clean_session: true,
        qos,
        payload_bytes: 100,
        rate_per_sec: 0,
        window: 16,
        e2e_window: 0,
        count_per_publisher: Some(count),
        duration: Duration::from_secs(20),
        drain: Duration::from_secs(5),
        connect_rate_per_sec: 0,
        connect_inflight_max: 100,
        connect_timeout: Duration::from_secs(5),
        connect_with_syscalls: false,
        topic_prefix: "e2e".into(),
        client_id_prefix: format!("e2e-{}", std::process::id()),
        publisher_id_base: 100,
        progress: false,
        recv_buffers: 64,
        recv_buffer_bytes: 4096,
    }
}

/// Runs `config` through a fresh relay that drops every `drop_one_in`-th PUBLISH (0: none).
fn through_relay(
    mut config: LoadConfig,
    drop_one_in: u64,
) -> (LoadOutcome, LoadReport, RelayStats) {
    let relay = Relay::start(RelayConfig {
        listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        connections_max: 256,
        queue_bytes_max: 64 * 1024,
        drop_one_in,
    })
    .expect("relay starts");
    config.target.port = relay.address.port();
    let outcome = run_load(config.clone());
    let stats = relay.stop().expect("relay stops cleanly");
    let outcome = outcome.expect("load run completes");
    let report = report::build("test", &config, &outcome, None, None);
    (outcome, report, stats)
}

#[test]
fn qos1_pairs_arrive_complete_in_order_with_latency() {
    let plan = Plan { publishers: 3, subscribers: 3, topics: 3, idle: 0 };
    let (outcome, report, relay) = through_relay(config(plan, QoS::AtLeastOnce, 2_000, 2), 0);
    let messages = &report.messages;
    assert_eq!(report.connections.ready, 6);
    assert_eq!(outcome.sent, vec![2_000; 3]);
    assert_eq!(messages.published, 6_000);
    assert_eq!(messages.acked, 6_000, "every QoS 1 publish acknowledged");
    assert_eq!(messages.expected_deliveries, Some(6_000));
    assert_eq!((messages.unique, messages.lost, messages.duplicates), (6_000, 0, 0));
    assert_eq!((messages.reordered, messages.unexpected), (0, 0));
    assert!(messages.drain_complete);
    assert_eq!(report.latency.as_ref().expect("latency measured").count, 6_000);
    assert_eq!(relay.forwarded, 6_000);
    // The `--json` object carries the same figures for scripts.
    let json = serde_json::to_value(&report).expect("serializable");
    assert_eq!(json["messages"]["unique"], 6_000);
    assert_eq!(json["messages"]["lost"], 0);
    assert!(json["latency"]["p999_us"].as_f64().is_some_and(|us| us > 0.0));
    assert!(json["cpu"]["busiest_worker_running_cores"].is_number());
}

#[test]
fn loss_injected_by_the_relay_is_detected_exactly() {
    // Fan-out to 3: each dropped PUBLISH is 3 deliveries lost.
    let plan = Plan { publishers: 1, subscribers: 3, topics: 1, idle: 0 };
    let mut config = config(plan, QoS::AtLeastOnce, 1_000, 1);
    config.drain = Duration::from_millis(500);
    let (_, report, relay) = through_relay(config, 10);
    assert_eq!(relay.dropped, 100);
    let messages = &report.messages;
    assert_eq!(messages.expected_deliveries, Some(3_000));
    assert_eq!(messages.lost, 300, "3 subscribers x 100 dropped");
    assert_eq!(messages.unique, 2_700);
    assert!(!messages.drain_complete, "the drain waits for deliveries that never come");
}

#[test]
fn qos2_fan_in_completes_every_flow() {
    let plan = Plan { publishers: 4, subscribers: 1, topics: 1, idle: 0 };
    let (_, report, _) = through_relay(config(plan, QoS::ExactlyOnce, 500, 1), 0);
    let messages = &report.messages;
    assert_eq!((messages.published, messages.acked), (2_000, 2_000), "PUBREC/PUBREL/PUBCOMP");
    assert_eq!((messages.unique, messages.lost), (2_000, 0));
    assert!(report.ack_latency.is_some());
}

#[test]
fn qos0_max_rate_is_lossless_under_relay_backpressure() {
    // A small relay queue (64 KiB) forces publishers to be paused and resumed many times.
    let plan = Plan { publishers: 2, subscribers: 4, topics: 1, idle: 0 };
    let (_, report, relay) = through_relay(config(plan, QoS::AtMostOnce, 20_000, 2), 0);
    assert_eq!(report.messages.expected_deliveries, Some(160_000));
    assert_eq!((report.messages.unique, report.messages.lost), (160_000, 0));
    assert!(relay.pauses > 0, "backpressure was exercised");
}

#[test]
fn idle_connections_are_held_with_pings() {
    let plan = Plan { publishers: 0, subscribers: 0, topics: 1, idle: 20 };
    let mut config = config(plan, QoS::AtMostOnce, 0, 2);
    config.count_per_publisher = None;
    config.keepalive_secs = 1;
    config.duration = Duration::from_millis(1_600);
    let (_, report, relay) = through_relay(config, 0);
    assert_eq!(report.connections.ready, 20);
    assert_eq!(relay.connections, 20);
    assert!(report.connections.pings_sent >= 20, "each idle connection pinged after 0.5 s");
    let ping = report.connections.ping_latency.as_ref().expect("PINGRESPs measured");
    assert!(ping.count >= 20);
    assert_eq!(report.connections.closed_unexpectedly, 0);
}

#[test]
fn fixed_rate_is_kept_over_the_duration() {
    // 2,000 messages/s over 4 publishers for 1 s: pacing is computed from the clock, not
    // counted per tick, so it catches up after a late wake-up even on a busy machine.
    let plan = Plan { publishers: 4, subscribers: 4, topics: 4, idle: 0 };
    let mut config = config(plan, QoS::AtMostOnce, 0, 1);
    config.count_per_publisher = None;
    config.rate_per_sec = 2_000;
    config.duration = Duration::from_secs(1);
    let (_, report, _) = through_relay(config, 0);
    // Against the measured publishing time, so a late control thread does not matter; the
    // tolerance covers a worker that was not scheduled just before the stop.
    let published = report.messages.published as f64;
    let due = 2_000.0 * report.messages.publish_secs;
    assert!((0.9 * due..=1.1 * due + 4.0).contains(&published), "published {published}, due {due}");
    assert_eq!(report.messages.lost, 0);
}

#[test]
fn connections_bind_source_addresses_by_ring_ops_and_by_syscalls() {
    // Both set-up paths, spread over two source addresses (127.1.0.x needs no set-up on
    // loopback), reach the relay. The kernel here (6.18) has IORING_OP_BIND (6.11+).
    for syscalls in [false, true] {
        let plan = Plan { publishers: 0, subscribers: 0, topics: 1, idle: 40 };
        let mut config = config(plan, QoS::AtMostOnce, 0, 2);
        config.count_per_publisher = None;
        config.duration = Duration::from_millis(100);
        config.connect_with_syscalls = syscalls;
        config.target.sources = vec![Ipv4Addr::new(127, 1, 0, 1), Ipv4Addr::new(127, 1, 0, 2)];
        let (outcome, report, relay) = through_relay(config, 0);
        assert_eq!(
            report.connections.ready, 40,
            "syscalls: {syscalls}, {:?}",
            report.connections.errors
        );
        assert_eq!(relay.connections, 40);
        assert_eq!(outcome.direct_setup, !syscalls, "this kernel supports IORING_OP_BIND");
    }
}

#[test]
fn end_to_end_window_bounds_what_is_in_flight() {
    // The same QoS 0 max-rate fan-out that overruns a 64 KiB relay queue without flow
    // control (see above) never fills it when publishers stay within 50 messages (on
    // average over 4 subscribers) of what was delivered: even if one subscriber lags while
    // the others keep up, at most 2 publishers x 50 x 4 frames of 109 bytes (~43 KiB) wait
    // for it.
    let plan = Plan { publishers: 2, subscribers: 4, topics: 1, idle: 0 };
    let mut config = config(plan, QoS::AtMostOnce, 20_000, 2);
    config.e2e_window = 50;
    let (_, report, relay) = through_relay(config, 0);
    assert_eq!((report.messages.unique, report.messages.lost), (160_000, 0));
    assert_eq!(relay.pauses, 0, "the window kept every relay queue under 64 KiB");
}
