//! Density (issue 6): the 50,000-connection version of `scripts/million.sh`, run by
//! `cargo test`. It shows that the broker holds tens of thousands of subscribed connections
//! under a process fd limit far below that (RLIMIT_NOFILE is 20000 here and on CI), and that a
//! QoS 1 message published to 1% of them arrives at every one.
//!
//! Broker and load generator run in this process: the broker from the library
//! (`runtime::start`, 2 workers, each with rings whose direct file tables hold 8192
//! connections: each worker adds rings as its tables fill, 3 to 4 each for ~25k)
//! and the clients from ringmq-bench's library (4 threads, each a ring holding its connections
//! as direct descriptors). Neither side holds a process fd per connection, so the fd limit caps
//! each ring's table, not the total. The clients bind source addresses spread over
//! 127.21.0.1-127.21.0.6, about 8.4k connections each: connect() takes ephemeral ports of one
//! parity first and becomes a scan of every used one past half the range (~14.1k per
//! source/destination pair with the default range; see `scripts/million.sh`).
//!
//! What it asserts: every connection came up (CONNACK accepted), every subscriber's SUBACK
//! granted its subscription, none was lost, all 505 publishes were acknowledged, and each of
//! their messages reached its one subscriber exactly once. No timing is asserted; the bounds
//! below (connect timeout, duration, drain) only keep a broken run from hanging.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ringmq::broker::BrokerConfig;
use ringmq::protocol::QoS;
use ringmq::runtime::{self, RuntimeConfig};
use ringmq_bench::client::run_load;
use ringmq_bench::plan::{LoadConfig, Plan, Target};

const SUBSCRIBERS: u32 = 50_000;
/// One publisher per 100 subscribers; publisher i publishes on subscriber i's topic.
const PUBLISHERS: u32 = SUBSCRIBERS / 100;
const BROKER_WORKERS: usize = 2;
/// Each ring's file table, below the fd limit as the kernel requires. Small on purpose:
/// 50500 connections over 2 workers need several rings each, so the run crosses ring
/// boundaries (new rings, accepts moving, handoffs into further rings) many times.
const BROKER_SLOTS_PER_RING: u32 = 8192;
/// Client rings: each holds ceil(50500 / 4) connections.
const CLIENT_THREADS: usize = 4;

fn load_config(port: u16) -> LoadConfig {
    let connections = u64::from(SUBSCRIBERS + PUBLISHERS);
    LoadConfig {
        target: Target {
            hosts: vec![Ipv4Addr::LOCALHOST],
            port,
            sources: (1..=6).map(|host| Ipv4Addr::new(127, 21, 0, host)).collect(),
        },
        plan: Plan {
            publishers: PUBLISHERS,
            subscribers: SUBSCRIBERS,
            topics: SUBSCRIBERS,
            idle: 0,
        },
        threads: CLIENT_THREADS,
        ring_files_max: u32::try_from(connections.div_ceil(CLIENT_THREADS as u64)).expect("fits"),
        keepalive_secs: 60,
        clean_session: true,
        qos: QoS::AtLeastOnce,
        payload_bytes: 64,
        rate_per_sec: 0,
        window: 1,
        e2e_window: 0,
        count_per_publisher: Some(1),
        // Bounds against a hang, not timing assertions: the run ends as soon as every
        // publisher is done and every expected delivery and ack has arrived.
        duration: Duration::from_secs(30),
        drain: Duration::from_secs(30),
        connect_rate_per_sec: 0,
        connect_inflight_max: 2000,
        connect_timeout: Duration::from_secs(240),
        connect_with_syscalls: false,
        topic_prefix: "density".into(),
        client_id_prefix: format!("density-{}", std::process::id()),
        publisher_id_base: 0,
        progress: true,
        recv_buffers: 1024,
        recv_buffer_bytes: 4096,
    }
}

#[test]
fn fifty_thousand_subscribers_connect_subscribe_and_receive_their_qos1_message() {
    // RUST_LOG=info shows the broker's start and each worker's counters at the stop.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = RuntimeConfig {
        listeners: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))],
        workers: BROKER_WORKERS,
        file_table_slots: BROKER_SLOTS_PER_RING,
        rings_per_worker_max: 8,
        max_connections: 60_000,
        socket_rcvbuf_bytes: 4096,
        socket_sndbuf_bytes: 4096,
        ..RuntimeConfig::default()
    };
    let broker = runtime::start(runtime, BrokerConfig::default()).expect("start the broker");
    let port = broker.local_addrs()[0].port();
    let started = Instant::now();
    let outcome = run_load(load_config(port));
    let elapsed = started.elapsed();
    broker.stop();
    let workers = broker.join().expect("every broker worker ends cleanly");
    eprintln!(
        "density: broker stopped {:.1} s after the load ended",
        (started.elapsed() - elapsed).as_secs_f64()
    );
    let outcome = outcome.expect("the load run completes");
    let counters = outcome.stats.counters;
    eprintln!(
        "density: {} ready in {:.1} s, {} published, {} acked, {} delivered ({} unique) in {:.1} s; \
         errors {:?}",
        counters.ready,
        outcome.connect_secs,
        counters.published,
        counters.acked,
        counters.delivered,
        counters.unique,
        elapsed.as_secs_f64(),
        outcome.stats.errors,
    );
    let accepted: u64 = workers.iter().map(|w| w.accepted).sum();
    let refused: u64 = workers.iter().map(|w| w.refused_max_connections).sum();
    let table_full: u64 = workers.iter().map(|w| w.accept_paused_table_full).sum();
    let table_moves: u64 = workers.iter().map(|w| w.accept_moved_table_full).sum();
    let handoff_failures: u64 = workers.iter().map(|w| w.handoff_failures).sum();
    let rings: usize = workers.iter().map(|w| w.rings).sum();
    let retries: u64 = workers.iter().map(|w| w.handoff_retries).sum();
    eprintln!(
        "density: broker accepted {accepted}, refused {refused}, table-full pauses {table_full}, \
         accepts that met a full ring {table_moves}, handoff failures {handoff_failures} \
         (retries {retries}), rings {rings}"
    );

    let connections = u64::from(SUBSCRIBERS + PUBLISHERS);
    assert_eq!(counters.connect_failed, 0, "connections failed: {:?}", outcome.stats.errors);
    assert_eq!(counters.connected, connections, "every CONNECT was accepted");
    // A subscriber is ready only once its SUBACK granted the subscription (a refused one is
    // an error that closes it, counted as a failed set-up).
    assert_eq!(counters.ready, connections, "every connection ready, every subscriber subscribed");
    assert_eq!(counters.closed_unexpectedly, 0, "no connection lost: {:?}", outcome.stats.errors);
    assert_eq!(counters.protocol_errors, 0);
    assert_eq!(counters.published, u64::from(PUBLISHERS));
    assert_eq!(counters.acked, u64::from(PUBLISHERS), "every QoS 1 publish acknowledged");
    assert_eq!(counters.unique, u64::from(PUBLISHERS), "every message reached its subscriber");
    assert_eq!(counters.delivered, u64::from(PUBLISHERS), "and only once");
    assert_eq!(counters.foreign + counters.unknown + counters.duplicates, 0);
    assert_eq!(refused + table_full, 0, "the broker never turned a connection away");
    // Rings are added before a table fills: no accept or handoff met a full one.
    assert_eq!(table_moves + handoff_failures, 0, "a connection met a full ring");
    assert!(rings >= 7, "50500 connections over 8192-slot tables took {rings} rings");
}
