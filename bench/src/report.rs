//! The end of a run: loss computed from what publishers sent and subscribers received, rates,
//! latency percentiles and CPU use, as one serde value (`--json`) and as text for people.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{format_ns, format_rate, LoadOutcome};
use crate::plan::LoadConfig;

#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Some(Self {
            count: histogram.len(),
            min_us: us(histogram.min()),
            p50_us: us(histogram.value_at_quantile(0.50)),
            p90_us: us(histogram.value_at_quantile(0.90)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
            mean_us: histogram.mean() / 1e3,
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PatternReport {
    pub publishers: u32,
    pub subscribers: u32,
    pub topics: u32,
    pub idle_connections: u32,
    pub qos: u8,
    pub payload_bytes: usize,
    /// Messages per second over all publishers; 0: max rate.
    pub rate_per_sec: u64,
    pub window: u16,
    pub e2e_window: u64,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnectionReport {
    /// "io_uring" (socket, options, bind, connect as linked ring ops) or "syscalls".
    pub setup_path: &'static str,
    pub planned: u64,
    pub ready: u64,
    pub failed: u64,
    pub closed_unexpectedly: u64,
    pub protocol_errors: u64,
    /// From the first connect to the last connection ready.
    pub setup_secs: f64,
    pub connect_rate_per_sec: f64,
    pub tcp_connect_latency: Option<LatencySummary>,
    pub mqtt_connect_latency: Option<LatencySummary>,
    pub ping_latency: Option<LatencySummary>,
    pub pings_sent: u64,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MessageReport {
    pub publish_secs: f64,
    pub published: u64,
    pub publish_rate_per_sec: f64,
    pub acked: u64,
    /// Deliveries the plan calls for, given what was published; `None` without local publishers.
    pub expected_deliveries: Option<u64>,
    /// PUBLISH packets received, duplicates included.
    pub delivered: u64,
    pub unique: u64,
    /// Expected but not received by the end of the drain: lost, or (if `drain_complete` is
    /// false) perhaps still queued in the broker. Without local publishers: sequence gaps.
    pub lost: u64,
    pub lost_basis: &'static str,
    pub duplicates: u64,
    pub reordered: u64,
    pub unknown: u64,
    /// Deliveries from publishers a subscriber should not hear, or without a stamp.
    pub unexpected: u64,
    /// Unique deliveries per second, from the start of publishing to the last delivery.
    pub delivery_rate_per_sec: f64,
    pub delivery_bytes_per_sec: f64,
    pub drain_secs: f64,
    pub drain_complete: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuUse {
    pub user_secs: f64,
    pub system_secs: f64,
    /// CPU seconds per wall-clock second.
    pub cores: f64,
}

impl CpuUse {
    pub fn new((user_ns, system_ns): (u64, u64), wall_secs: f64) -> Self {
        let user_secs = user_ns as f64 / 1e9;
        let system_secs = system_ns as f64 / 1e9;
        Self { user_secs, system_secs, cores: (user_secs + system_secs) / wall_secs.max(1e-9) }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    pub wall_secs: f64,
    /// The load generator's worker threads.
    pub workers: CpuUse,
    /// The whole ringmq-bench process (workers, control thread, and an in-process relay).
    pub process: CpuUse,
    /// The broker, with `--broker-pid`.
    pub broker: Option<CpuUse>,
    /// The in-process relay thread (`relay` only).
    pub relay: Option<CpuUse>,
    /// The busiest worker thread's CPU seconds per second while publishing (or holding):
    /// near 1.0 the load generator itself may be the bottleneck.
    pub busiest_worker_running_cores: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub command: String,
    pub target: String,
    pub started_unix_secs: u64,
    pub pattern: PatternReport,
    pub connections: ConnectionReport,
    pub messages: MessageReport,
    /// Publish to delivery.
    pub latency: Option<LatencySummary>,
    /// Publish to PUBACK (QoS 1) or PUBCOMP (QoS 2).
    pub ack_latency: Option<LatencySummary>,
    pub cpu: CpuReport,
    /// The stop signal that cut the run short (the figures are what it had by then).
    pub interrupted_by: Option<&'static str>,
}

/// Loss against what each publisher sent: (expected deliveries, unique expected ones
/// received, unexpected deliveries).
fn loss(config: &LoadConfig, outcome: &LoadOutcome) -> (u64, u64, u64) {
    let plan = &config.plan;
    let mut expected = 0;
    let mut received = 0;
    let mut unexpected = 0;
    for (subscriber, trackers) in &outcome.subscribers {
        let by_id: HashMap<u32, u64> = trackers.iter().map(|(id, s)| (*id, s.unique)).collect();
        let mut heard = 0;
        for publisher in plan.publishers_for(*subscriber) {
            let sent = outcome.sent[publisher as usize];
            let unique = by_id.get(&(config.publisher_id_base + publisher)).copied().unwrap_or(0);
            expected += sent;
            received += unique.min(sent);
            heard += unique;
        }
        unexpected += by_id.values().sum::<u64>() - heard;
    }
    (expected, received, unexpected)
}

fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

pub fn build(
    command: &str,
    config: &LoadConfig,
    outcome: &LoadOutcome,
    broker: Option<CpuUse>,
    relay: Option<CpuUse>,
) -> LoadReport {
    let started_unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
        .saturating_sub(outcome.wall_secs as u64);
    LoadReport {
        command: command.to_owned(),
        target: format!("{:?}:{}", config.target.hosts, config.target.port),
        started_unix_secs,
        pattern: PatternReport {
            publishers: config.plan.publishers,
            subscribers: config.plan.subscribers,
            topics: config.plan.topics,
            idle_connections: config.plan.idle,
            qos: config.qos.as_u8(),
            payload_bytes: config.payload_bytes,
            rate_per_sec: config.rate_per_sec,
            window: config.window,
            e2e_window: config.e2e_window,
            threads: config.threads,
        },
        connections: connection_report(config, outcome),
        messages: message_report(config, outcome),
        latency: LatencySummary::of(&outcome.stats.latency),
        ack_latency: LatencySummary::of(&outcome.stats.ack_latency),
        cpu: cpu_report(outcome, broker, relay),
        interrupted_by: outcome.interrupted_by,
    }
}

fn connection_report(config: &LoadConfig, outcome: &LoadOutcome) -> ConnectionReport {
    let stats = &outcome.stats;
    let counters = &stats.counters;
    let setup_secs = if stats.last_ready_ns > stats.first_connect_ns {
        (stats.last_ready_ns - stats.first_connect_ns) as f64 / 1e9
    } else {
        0.0
    };
    ConnectionReport {
        setup_path: if outcome.direct_setup { "io_uring" } else { "syscalls" },
        planned: config.plan.connections(),
        ready: counters.ready,
        failed: counters.connect_failed,
        closed_unexpectedly: counters.closed_unexpectedly,
        protocol_errors: counters.protocol_errors,
        setup_secs,
        connect_rate_per_sec: per_sec(counters.ready, setup_secs),
        tcp_connect_latency: LatencySummary::of(&stats.tcp_connect),
        mqtt_connect_latency: LatencySummary::of(&stats.mqtt_connect),
        ping_latency: LatencySummary::of(&stats.ping),
        pings_sent: counters.pings_sent,
        errors: stats.errors.clone(),
    }
}

fn message_report(config: &LoadConfig, outcome: &LoadOutcome) -> MessageReport {
    let stats = &outcome.stats;
    let counters = &stats.counters;
    let local_publishers = config.plan.publishers > 0;
    let (expected, lost, lost_basis, unexpected) = if local_publishers {
        let (expected, received, unexpected) = loss(config, outcome);
        (Some(expected), expected - received, "sent", unexpected + counters.foreign)
    } else {
        let gaps =
            outcome.subscribers.iter().flat_map(|(_, t)| t.iter().map(|(_, s)| s.gaps)).sum();
        (None, gaps, "gaps", counters.foreign)
    };
    // With local publishers, deliveries are counted from the start of publishing; without
    // (`sub`), from the first delivery, since the publishers may start any time later.
    let delivery_start_ns =
        if local_publishers { outcome.run_start_ns } else { stats.first_delivery_ns };
    let delivery_secs = if stats.last_delivery_ns > delivery_start_ns {
        (stats.last_delivery_ns - delivery_start_ns) as f64 / 1e9
    } else {
        outcome.publish_secs
    };
    MessageReport {
        publish_secs: outcome.publish_secs,
        published: counters.published,
        publish_rate_per_sec: per_sec(counters.published, outcome.publish_secs),
        acked: counters.acked,
        expected_deliveries: expected,
        delivered: counters.delivered,
        unique: counters.unique,
        lost,
        lost_basis,
        duplicates: counters.duplicates,
        reordered: counters.reordered,
        unknown: counters.unknown,
        unexpected,
        delivery_rate_per_sec: per_sec(counters.unique, delivery_secs),
        delivery_bytes_per_sec: per_sec(counters.delivered_bytes, delivery_secs),
        drain_secs: outcome.drain_secs,
        drain_complete: outcome.drain_complete,
    }
}

fn cpu_report(outcome: &LoadOutcome, broker: Option<CpuUse>, relay: Option<CpuUse>) -> CpuReport {
    let worker_cpu = outcome.worker_cpu_ns.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    CpuReport {
        wall_secs: outcome.wall_secs,
        workers: CpuUse::new(worker_cpu, outcome.wall_secs),
        process: CpuUse::new(outcome.process_cpu_ns, outcome.wall_secs),
        broker,
        relay,
        busiest_worker_running_cores: outcome
            .worker_running_cpu_ns
            .iter()
            .map(|&ns| ns as f64 / 1e9 / outcome.publish_secs.max(1e-9))
            .fold(0.0, f64::max),
    }
}

/// Above this share of a core, a worker thread may be limiting the run.
pub const WORKER_SATURATED_CORES: f64 = 0.8;

fn latency_line(name: &str, latency: &Option<LatencySummary>) -> Option<String> {
    let l = latency.as_ref()?;
    let f = |us: f64| format_ns((us * 1e3) as u64);
    Some(format!(
        "  {name:<14} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        f(l.p50_us),
        f(l.p90_us),
        f(l.p99_us),
        f(l.p999_us),
        f(l.max_us),
        l.count
    ))
}

fn cpu_text(cpu: &CpuUse) -> String {
    format!("{:.2} cores ({:.2}s user, {:.2}s sys)", cpu.cores, cpu.user_secs, cpu.system_secs)
}

/// The summary for people.
pub fn text(report: &LoadReport) -> String {
    let mut lines = Vec::new();
    let p = &report.pattern;
    let c = &report.connections;
    let m = &report.messages;
    lines.push(format!(
        "ringmq-bench {} -> {}: {} pub, {} sub, {} topics, {} idle, QoS {}, {} B payload, rate {}, window {}, {} threads",
        report.command, report.target, p.publishers, p.subscribers, p.topics, p.idle_connections,
        p.qos, p.payload_bytes,
        if p.rate_per_sec == 0 { "max".into() } else { format!("{}/s", p.rate_per_sec) },
        p.window, p.threads
    ));
    lines.push(format!(
        "connections: {}/{} ready, {} failed, {} lost, {} protocol errors; set up in {:.2}s ({}/s, via {})",
        c.ready,
        c.planned,
        c.failed,
        c.closed_unexpectedly,
        c.protocol_errors,
        c.setup_secs,
        format_rate(c.connect_rate_per_sec),
        c.setup_path
    ));
    lines.extend(latency_line("tcp connect", &c.tcp_connect_latency));
    lines.extend(latency_line("mqtt connect", &c.mqtt_connect_latency));
    lines.extend(latency_line("ping", &c.ping_latency));
    for (what, count) in &c.errors {
        lines.push(format!("  error x{count}: {what}"));
    }
    if p.publishers > 0 {
        lines.push(format!(
            "published: {} in {:.2}s = {}/s; acked {}",
            m.published,
            m.publish_secs,
            format_rate(m.publish_rate_per_sec),
            m.acked
        ));
    }
    if p.subscribers > 0 {
        lines.push(format!(
            "delivered: {} unique of {} expected = {}/s ({}B/s); lost {} ({}), dup {}, reordered {}, unexpected {}",
            m.unique,
            m.expected_deliveries.map_or("?".into(), |e| e.to_string()),
            format_rate(m.delivery_rate_per_sec),
            format_rate(m.delivery_bytes_per_sec),
            m.lost, m.lost_basis, m.duplicates, m.reordered, m.unexpected,
        ));
    }
    if p.publishers > 0 {
        lines.push(if m.drain_complete {
            format!("drained in {:.2}s: every expected delivery and ack arrived", m.drain_secs)
        } else {
            format!(
                "drain timed out after {:.2}s: what is missing was still queued in the broker, or lost",
                m.drain_secs
            )
        });
    }
    lines.extend(latency_line("latency", &report.latency));
    lines.extend(latency_line("ack latency", &report.ack_latency));
    let cpu = &report.cpu;
    lines.push(format!(
        "cpu over {:.2}s: bench workers {}, process {}",
        cpu.wall_secs,
        cpu_text(&cpu.workers),
        cpu_text(&cpu.process)
    ));
    lines.push(format!(
        "  busiest worker while running: {:.2} cores{}",
        cpu.busiest_worker_running_cores,
        if cpu.busiest_worker_running_cores > WORKER_SATURATED_CORES {
            " - the load generator may be the bottleneck: add --threads"
        } else {
            ""
        }
    ));
    if let Some(broker) = &cpu.broker {
        lines.push(format!("  broker {}", cpu_text(broker)));
    }
    if let Some(relay) = &cpu.relay {
        lines.push(format!("  relay {}", cpu_text(relay)));
    }
    if let Some(signal) = report.interrupted_by {
        lines.push(format!("stopped early by {signal}: the figures above are what it had by then"));
    }
    lines.join("\n")
}
