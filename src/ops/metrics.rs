//! `/metrics`: the workers' statistics blocks and a few process figures in the Prometheus
//! text exposition format (version 0.0.4), and the one-second history behind the dashboard
//! and `ringmq_connects_per_second`.
//!
//! Every per-worker metric carries a `worker` label; sum or max across workers in the query
//! (`ringmq_retained_messages` is one replica per worker: take the max, not the sum).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::runtime::export::{Kind, Metric, METRICS, METRIC_COUNT};
use crate::runtime::ops_link::OpsLink;

/// Seconds of history kept (one sample a second): the dashboard's window.
pub const HISTORY_SAMPLES: usize = 300;
/// The window of `ringmq_connects_per_second`, in samples (seconds).
const CONNECTS_WINDOW_SAMPLES: usize = 10;

/// Every worker's values, index = worker id.
pub fn read_all(link: &OpsLink) -> Vec<[u64; METRIC_COUNT]> {
    link.blocks.iter().map(|block| block.read()).collect()
}

/// Sum of one metric over the workers.
pub fn total(values: &[[u64; METRIC_COUNT]], metric: Metric) -> u64 {
    values.iter().map(|worker| worker[metric as usize]).sum()
}

/// Largest value of one metric over the workers.
pub fn largest(values: &[[u64; METRIC_COUNT]], metric: Metric) -> u64 {
    values.iter().map(|worker| worker[metric as usize]).max().unwrap_or(0)
}

/// One second's totals, for the dashboard and rates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_millis: u64,
    pub connections: u64,
    pub clients_connected: u64,
    pub sessions: u64,
    pub subscriptions: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub connections_accepted: u64,
    pub loop_turns: u64,
    pub loop_busy_nanos: u64,
    /// The longest loop turn of any worker in its last export period.
    pub loop_turn_max_nanos: u64,
    pub resident_bytes: u64,
}

impl Sample {
    pub fn take(values: &[[u64; METRIC_COUNT]], resident_bytes: u64) -> Self {
        let unix_millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        let sum = |metrics: &[Metric]| metrics.iter().map(|&m| total(values, m)).sum::<u64>();
        Self {
            unix_millis,
            connections: sum(&[Metric::Connections]),
            clients_connected: sum(&[Metric::ClientsConnected]),
            sessions: sum(&[Metric::Sessions]),
            subscriptions: sum(&[Metric::Subscriptions]),
            messages_received: sum(&[
                Metric::ReceivedQos0,
                Metric::ReceivedQos1,
                Metric::ReceivedQos2,
            ]),
            messages_sent: sum(&[Metric::SentQos0, Metric::SentQos1, Metric::SentQos2]),
            bytes_received: sum(&[Metric::BytesReceived]),
            bytes_sent: sum(&[Metric::BytesSent]),
            connections_accepted: sum(&[Metric::Accepted]),
            loop_turns: sum(&[Metric::Turns]),
            loop_busy_nanos: sum(&[Metric::BusyNanos]),
            loop_turn_max_nanos: largest(values, Metric::TurnMaxNanos),
            resident_bytes,
        }
    }
}

/// The last [`HISTORY_SAMPLES`] samples, oldest first, each with when it was taken.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<(Instant, Sample)>,
}

impl Default for History {
    fn default() -> Self {
        Self { samples: VecDeque::with_capacity(HISTORY_SAMPLES) }
    }
}

impl History {
    pub fn push(&mut self, sample: Sample, at: Instant) {
        if self.samples.len() == HISTORY_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, sample));
    }

    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().map(|(_, sample)| sample)
    }

    /// TCP connections accepted per second over the last [`CONNECTS_WINDOW_SAMPLES`]
    /// seconds (fewer at start); 0 before two samples exist.
    pub fn connects_per_second(&self) -> f64 {
        let len = self.samples.len();
        if len < 2 {
            return 0.0;
        }
        let (first_at, first) = &self.samples[len.saturating_sub(CONNECTS_WINDOW_SAMPLES + 1)];
        let (last_at, last) = &self.samples[len - 1];
        let seconds = last_at.duration_since(*first_at).as_secs_f64();
        let accepted = last.connections_accepted.saturating_sub(first.connections_accepted);
        if seconds > 0.0 {
            accepted as f64 / seconds
        } else {
            0.0
        }
    }
}

/// The resident set size of this process, from `/proc/self/status` (0 if unreadable).
pub fn resident_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Process-wide figures shown beside the workers'.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessFigures {
    pub resident_bytes: u64,
    pub connects_per_second: f64,
    pub uptime_seconds: f64,
    pub workers: usize,
}

/// The whole exposition.
pub fn render(values: &[[u64; METRIC_COUNT]], process: &ProcessFigures) -> String {
    let mut out = String::with_capacity(256 * METRIC_COUNT);
    let mut family = "";
    for (index, desc) in METRICS.iter().enumerate() {
        if desc.name != family {
            family = desc.name;
            let kind = match desc.kind {
                Kind::Counter | Kind::CounterNanos => "counter",
                Kind::Gauge | Kind::GaugeNanos => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", desc.name, desc.help);
            let _ = writeln!(out, "# TYPE {} {kind}", desc.name);
        }
        let separator = if desc.labels.is_empty() { "" } else { "," };
        for (worker, worker_values) in values.iter().enumerate() {
            let value = worker_values[index];
            let _ = match desc.kind {
                Kind::CounterNanos | Kind::GaugeNanos => writeln!(
                    out,
                    "{}{{worker=\"{worker}\"{separator}{}}} {}",
                    desc.name,
                    desc.labels,
                    value as f64 / 1e9
                ),
                Kind::Counter | Kind::Gauge => writeln!(
                    out,
                    "{}{{worker=\"{worker}\"{separator}{}}} {value}",
                    desc.name, desc.labels
                ),
            };
        }
    }
    render_process(&mut out, process);
    out
}

fn render_process(out: &mut String, process: &ProcessFigures) {
    let figures = [
        (
            "ringmq_process_resident_memory_bytes",
            "Resident set size of the process.",
            process.resident_bytes as f64,
        ),
        (
            "ringmq_connects_per_second",
            "TCP connections accepted per second over the last 10 s.",
            process.connects_per_second,
        ),
        ("ringmq_uptime_seconds", "Seconds since the workers started.", process.uptime_seconds),
        ("ringmq_workers", "Worker threads.", process.workers as f64),
    ];
    for (name, help, value) in figures {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP ringmq_build_info Version of this binary.\n# TYPE ringmq_build_info gauge\n\
         ringmq_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_one_help_and_type_per_family_and_a_sample_per_worker() {
        let mut values = vec![[0u64; METRIC_COUNT]; 2];
        values[1][Metric::ReceivedQos1 as usize] = 7;
        values[0][Metric::BusyNanos as usize] = 1_500_000_000;
        let text = render(&values, &ProcessFigures { workers: 2, ..ProcessFigures::default() });
        assert_eq!(text.matches("# TYPE ringmq_messages_received_total counter").count(), 1);
        assert!(text.contains("ringmq_messages_received_total{worker=\"1\",qos=\"1\"} 7\n"));
        assert!(text.contains("ringmq_loop_busy_seconds_total{worker=\"0\"} 1.5\n"));
        assert!(text.contains("ringmq_connections{worker=\"0\"} 0\n"));
        assert!(text.contains("ringmq_workers 2\n"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn connects_per_second_is_the_accepted_rate_over_the_window() {
        let mut history = History::default();
        assert_eq!(history.connects_per_second(), 0.0);
        let start = Instant::now();
        for second in 0..20u64 {
            let sample = Sample { connections_accepted: second * 5, ..Sample::default() };
            history.push(sample, start + std::time::Duration::from_secs(second));
        }
        assert!((history.connects_per_second() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn history_keeps_only_the_last_samples() {
        let mut history = History::default();
        let start = Instant::now();
        for second in 0..(HISTORY_SAMPLES as u64 + 5) {
            let sample = Sample { unix_millis: second, ..Sample::default() };
            history.push(sample, start + std::time::Duration::from_secs(second));
        }
        assert_eq!(history.samples().count(), HISTORY_SAMPLES);
        assert_eq!(history.samples().next().map(|s| s.unix_millis), Some(5));
    }

    #[test]
    fn resident_bytes_reads_this_process() {
        assert!(resident_bytes() > 1024 * 1024, "a test process holds more than 1 MiB");
    }
}
