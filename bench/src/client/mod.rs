//! The load generator: worker threads (one ring each, see [`worker`]) driven through the
//! run's phases by the calling thread, which also prints the progress line.
//!
//! Phases: Connecting (open every connection, at the configured rate, and subscribe) ->
//! Running (publish for the duration or count; `conn` just holds) -> Draining (publishers stop;
//! wait, bounded, for the deliveries and acks still due) -> Done (DISCONNECT, join). Every
//! phase ends by itself: each has a deadline.

pub mod conn;
pub mod schedule;
pub mod stats;
pub mod worker;

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use ringmq::protocol::QoS;

use crate::plan::LoadConfig;
use crate::stamp::SeqSummary;
use crate::sys::{monotonic_ns, process_cpu_ns};
use stats::{latency_histogram, Counters, Stats};
use worker::{Worker, WorkerReport};

/// How often the controlling thread looks at the workers' counters.
const CONTROL_TICK: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
pub enum Phase {
    Connecting = 0,
    Running = 1,
    Draining = 2,
    Done = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Connecting,
            1 => Self::Running,
            2 => Self::Draining,
            _ => Self::Done,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Done => "done",
        }
    }
}

/// What the workers and the controlling thread share. Off the message path: workers touch it
/// once per loop turn.
#[derive(Debug)]
pub struct Shared {
    phase: AtomicU8,
    pub connect_start_ns: u64,
    run_start_ns: AtomicU64,
    counters: Vec<Mutex<Counters>>,
    interval_latency: Mutex<Histogram<u64>>,
    drained_threads: AtomicUsize,
    /// A stop signal ended the run: workers hand in their reports without saying goodbye.
    pub aborted: std::sync::atomic::AtomicBool,
    expected_deliveries: AtomicU64,
    /// Deliveries per publisher, kept only with an end-to-end window.
    pub deliveries: Option<conn::DeliveryBoard>,
}

impl Shared {
    fn new(config: &LoadConfig) -> Self {
        let threads = config.threads;
        let flow_controlled = config.e2e_window > 0 && config.plan.publishers > 0;
        Self {
            phase: AtomicU8::new(Phase::Connecting as u8),
            connect_start_ns: monotonic_ns(),
            run_start_ns: AtomicU64::new(0),
            counters: (0..threads).map(|_| Mutex::new(Counters::default())).collect(),
            interval_latency: Mutex::new(latency_histogram()),
            drained_threads: AtomicUsize::new(0),
            aborted: std::sync::atomic::AtomicBool::new(false),
            expected_deliveries: AtomicU64::new(0),
            deliveries: flow_controlled.then(|| {
                conn::DeliveryBoard::new(config.publisher_id_base, config.plan.publishers)
            }),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub fn run_start_ns(&self) -> u64 {
        self.run_start_ns.load(Ordering::Acquire)
    }

    pub fn store_counters(&self, thread: usize, counters: &Counters) {
        *lock(&self.counters[thread]) = *counters;
    }

    pub fn add_interval_latency(&self, histogram: &Histogram<u64>) {
        lock(&self.interval_latency).add(histogram).expect("histograms share bounds");
    }

    pub fn add_drained(&self, expected_deliveries: u64) {
        self.expected_deliveries.fetch_add(expected_deliveries, Ordering::AcqRel);
        self.drained_threads.fetch_add(1, Ordering::AcqRel);
    }

    fn total(&self) -> Counters {
        let mut total = Counters::default();
        for counters in &self.counters {
            total.add(&lock(counters));
        }
        total
    }
}

/// Locks a mutex; a poisoned one means a worker panicked, which with `panic = "abort"` in
/// release builds cannot be observed, and in tests should fail loudly.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect("a worker panicked while holding shared state")
}

/// Everything a run measured, merged over the workers.
#[derive(Debug)]
pub struct LoadOutcome {
    pub stats: Stats,
    /// Messages sent per publisher index.
    pub sent: Vec<u64>,
    pub subscribers: Vec<(u32, Vec<(u32, SeqSummary)>)>,
    pub connect_secs: f64,
    pub run_start_ns: u64,
    pub publish_secs: f64,
    pub drain_secs: f64,
    pub drain_complete: bool,
    pub wall_secs: f64,
    /// CPU of each worker thread, (user, system) nanoseconds.
    pub worker_cpu_ns: Vec<(u64, u64)>,
    /// CPU of each worker thread during the Running phase, nanoseconds.
    pub worker_running_cpu_ns: Vec<u64>,
    /// CPU of the whole process during the run (includes an in-process relay).
    pub process_cpu_ns: (u64, u64),
    /// Connections were set up by linked ring operations (else by system calls).
    pub direct_setup: bool,
    /// The run was cut short by this stop signal (`sys::catch_stop_signals`).
    pub interrupted_by: Option<&'static str>,
}

/// Runs one load test to completion.
pub fn run_load(config: LoadConfig) -> anyhow::Result<LoadOutcome> {
    config.validate().map_err(anyhow::Error::msg)?;
    let config = Arc::new(config);
    let shared = Arc::new(Shared::new(&config));
    let cpu_before = process_cpu_ns();
    let start_ns = monotonic_ns();
    let handles: Vec<JoinHandle<anyhow::Result<WorkerReport>>> = (0..config.threads)
        .map(|thread| {
            let (config, shared) = (Arc::clone(&config), Arc::clone(&shared));
            std::thread::Builder::new().name(format!("bench-{thread}")).spawn(move || {
                let worker = Worker::new(config, shared, thread)?;
                Ok(worker.run()?)
            })
        })
        .collect::<Result<_, _>>()?;
    let mut control = Control::new(&config, &shared, &handles, start_ns);
    let timings = control.drive();
    shared.set_phase(Phase::Done);
    let mut reports = Vec::new();
    for handle in handles {
        let report = handle.join().map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
        reports.push(report);
    }
    let cpu_after = process_cpu_ns();
    let mut outcome = merge(&config, reports);
    outcome.interrupted_by = crate::sys::stop_signal();
    let timings = match timings {
        // A stop signal: report what the run got so far.
        Err(_) if outcome.interrupted_by.is_some() => Timings::cut_short(start_ns),
        timings => timings.map_err(|error| {
            anyhow::anyhow!("{error}; connection errors: {:?}", outcome.stats.errors)
        })?,
    };
    outcome.connect_secs = timings.connect_secs;
    outcome.run_start_ns = shared.run_start_ns();
    outcome.publish_secs = timings.publish_secs;
    outcome.drain_secs = timings.drain_secs;
    outcome.drain_complete = timings.drain_complete;
    outcome.wall_secs = (monotonic_ns() - start_ns) as f64 / 1e9;
    outcome.process_cpu_ns = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    Ok(outcome)
}

fn merge(config: &LoadConfig, reports: Vec<WorkerReport>) -> LoadOutcome {
    let mut stats = Stats::new();
    let mut sent = vec![0; config.plan.publishers as usize];
    let mut subscribers = Vec::new();
    let mut worker_cpu_ns = Vec::new();
    let worker_running_cpu_ns = reports.iter().map(|report| report.running_cpu_ns).collect();
    let direct_setup = reports.iter().all(|report| report.direct_setup);
    for report in reports {
        stats.merge(&report.stats);
        for (index, count) in report.publishers {
            sent[index as usize] = count;
        }
        subscribers.extend(report.subscribers);
        worker_cpu_ns.push(report.cpu_ns);
    }
    LoadOutcome {
        stats,
        sent,
        subscribers,
        connect_secs: 0.0,
        run_start_ns: 0,
        publish_secs: 0.0,
        drain_secs: 0.0,
        drain_complete: false,
        wall_secs: 0.0,
        worker_cpu_ns,
        worker_running_cpu_ns,
        process_cpu_ns: (0, 0),
        direct_setup,
        interrupted_by: None,
    }
}

struct Timings {
    connect_secs: f64,
    publish_secs: f64,
    drain_secs: f64,
    drain_complete: bool,
}

impl Timings {
    /// A run stopped by a signal: all of it counts as connecting.
    fn cut_short(start_ns: u64) -> Self {
        let connect_secs = (monotonic_ns() - start_ns) as f64 / 1e9;
        Self { connect_secs, publish_secs: 0.0, drain_secs: 0.0, drain_complete: false }
    }
}

/// The controlling thread's view: moves the phases along and prints progress.
struct Control<'a> {
    config: &'a LoadConfig,
    shared: &'a Shared,
    handles: &'a [JoinHandle<anyhow::Result<WorkerReport>>],
    start_ns: u64,
    last_line_ns: u64,
    last_line: Counters,
    last_cpu_ns: u64,
}

impl<'a> Control<'a> {
    fn new(
        config: &'a LoadConfig,
        shared: &'a Shared,
        handles: &'a [JoinHandle<anyhow::Result<WorkerReport>>],
        start_ns: u64,
    ) -> Self {
        let (user, system) = process_cpu_ns();
        Self {
            config,
            shared,
            handles,
            start_ns,
            last_line_ns: start_ns,
            last_line: Counters::default(),
            last_cpu_ns: user + system,
        }
    }

    fn drive(&mut self) -> anyhow::Result<Timings> {
        let connections = self.config.plan.connections();
        let ramp_secs = if self.config.connect_rate_per_sec > 0 {
            connections as f64 / self.config.connect_rate_per_sec as f64
        } else {
            0.0
        };
        let connect_deadline = self.config.connect_timeout + Duration::from_secs_f64(ramp_secs);
        self.wait(connect_deadline, |total| total.ready + total.connect_failed >= connections)?;
        let connected_ns = monotonic_ns();
        let total = self.shared.total();
        if total.ready == 0 {
            anyhow::bail!("no connection became ready ({} failed)", total.connect_failed);
        }
        self.shared.run_start_ns.store(connected_ns, Ordering::Release);
        self.shared.set_phase(Phase::Running);
        let publishers = u64::from(self.config.plan.publishers);
        let counted = self.config.count_per_publisher.is_some() && publishers > 0;
        self.wait(self.config.duration, |total| counted && total.publishers_done >= publishers)?;
        let stopped_ns = monotonic_ns();
        self.shared.set_phase(Phase::Draining);
        let threads = self.config.threads;
        let acked_qos = self.config.qos != QoS::AtMostOnce;
        let drain_complete = self.wait(self.config.drain, |total| {
            self.shared.drained_threads.load(Ordering::Acquire) == threads
                && total.unique >= self.shared.expected_deliveries.load(Ordering::Acquire)
                && (!acked_qos || total.acked >= total.published)
        })?;
        let drained_ns = monotonic_ns();
        self.progress_line(drained_ns, true);
        Ok(Timings {
            connect_secs: (connected_ns - self.start_ns) as f64 / 1e9,
            publish_secs: (stopped_ns - connected_ns) as f64 / 1e9,
            drain_secs: (drained_ns - stopped_ns) as f64 / 1e9,
            drain_complete,
        })
    }

    /// Waits until `done` holds or `limit` passes, printing progress; `Ok(true)` if `done`.
    fn wait(&mut self, limit: Duration, done: impl Fn(&Counters) -> bool) -> anyhow::Result<bool> {
        let deadline = monotonic_ns() + limit.as_nanos() as u64;
        loop {
            if self.handles.iter().any(JoinHandle::is_finished) {
                anyhow::bail!("a worker thread stopped early (see its error below)");
            }
            if let Some(signal) = crate::sys::stop_signal() {
                // The workers skip the orderly goodbye (`Shared::aborted`): at a million
                // connections it would outlast the caller's patience.
                self.shared.aborted.store(true, Ordering::Release);
                anyhow::bail!("stopped by {signal}");
            }
            let now_ns = monotonic_ns();
            if done(&self.shared.total()) {
                return Ok(true);
            }
            if now_ns >= deadline {
                return Ok(false);
            }
            if now_ns - self.last_line_ns >= 1_000_000_000 {
                self.progress_line(now_ns, false);
            }
            std::thread::sleep(CONTROL_TICK.min(Duration::from_nanos(deadline - now_ns)));
        }
    }

    fn progress_line(&mut self, now_ns: u64, last: bool) {
        let total = self.shared.total();
        let seconds = (now_ns - self.last_line_ns) as f64 / 1e9;
        let (user, system) = process_cpu_ns();
        let cpu_cores = (user + system - self.last_cpu_ns) as f64 / 1e9 / seconds.max(1e-9);
        let interval =
            std::mem::replace(&mut *lock(&self.shared.interval_latency), latency_histogram());
        if self.config.progress && (!last || seconds > 0.05) {
            let rate =
                |now: u64, before: u64| format_rate((now - before) as f64 / seconds.max(1e-9));
            let latency = if interval.is_empty() {
                String::from("-")
            } else {
                format!(
                    "p50 {} p99 {} max {}",
                    format_ns(interval.value_at_quantile(0.5)),
                    format_ns(interval.value_at_quantile(0.99)),
                    format_ns(interval.max())
                )
            };
            let traffic = if self.config.plan.idle > 0 {
                format!(
                    "pings {}/s, pongs {}/s",
                    rate(total.pings_sent, self.last_line.pings_sent),
                    rate(total.pongs, self.last_line.pongs)
                )
            } else {
                format!(
                    "pub {}/s | recv {}/s | latency {latency} | gaps {}",
                    rate(total.published, self.last_line.published),
                    rate(total.delivered, self.last_line.delivered),
                    total.gaps
                )
            };
            eprintln!(
                "[{:6.1}s] {:<10} conns {}/{} ({} failed, {} lost) | {traffic} | cpu {:.2} cores",
                (now_ns - self.start_ns) as f64 / 1e9,
                self.shared.phase().name(),
                total.ready,
                self.config.plan.connections(),
                total.connect_failed,
                total.closed_unexpectedly,
                cpu_cores,
            );
        }
        self.last_line_ns = now_ns;
        self.last_line = total;
        self.last_cpu_ns = user + system;
    }
}

/// 1234567.0 -> "1.23M".
pub fn format_rate(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// Nanoseconds as a short human duration.
pub fn format_ns(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.0}us", ns as f64 / 1e3)
    }
}
