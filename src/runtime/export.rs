//! Per-worker statistics for readers on other threads (`/metrics`, the admin API), without
//! slowing the worker that produces them.
//!
//! Each worker owns one [`StatsBlock`]: a fixed array of `AtomicU64`, one per [`Metric`],
//! aligned to 128 bytes (two cache lines: x86 prefetches lines in pairs) so no two workers'
//! blocks share a line. Only its worker writes a block, with `Relaxed` stores, at most once per
//! [`EXPORT_PERIOD_MILLIS`] at the end of a loop turn ([`Exporter`]); readers load with
//! `Relaxed`. No lock, no read-modify-write, no fence on the worker's side: a store to a line
//! the worker owns costs what a plain store costs, and a reader can only make the worker take
//! the line back once per period.
//!
//! Invariants: a reader may see one block's values from two different exports (each value is
//! whole, the set is not a snapshot); counters never go backwards; the metric table is grouped
//! by name, so the exposition can print each family's HELP/TYPE once (tested).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::broker::Millis;

/// How often a busy worker refreshes its block. An idle worker refreshes once after its last
/// activity (see [`Exporter::deadline`]) and then sleeps.
pub const EXPORT_PERIOD_MILLIS: u64 = 200;

/// What a metric measures, for the exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// A counter held in nanoseconds, shown in seconds.
    CounterNanos,
    /// A gauge held in nanoseconds, shown in seconds.
    GaugeNanos,
}

/// One metric: its Prometheus name, the labels that set it apart from the others of its
/// family (besides `worker`), and its help text.
#[derive(Clone, Copy, Debug)]
pub struct MetricDesc {
    pub name: &'static str,
    pub labels: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

macro_rules! metrics {
    ($($variant:ident: $kind:ident $name:literal $labels:literal $help:literal;)*) => {
        /// Every per-worker metric, in exposition order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Metric { $($variant),* }

        /// Descriptions, indexed by `Metric as usize`.
        pub const METRICS: &[MetricDesc] = &[
            $(MetricDesc { name: $name, labels: $labels, kind: Kind::$kind, help: $help }),*
        ];
    };
}

metrics! {
    Connections: Gauge "ringmq_connections" "" "Open connections (sockets) on this worker.";
    SlabSlots: Gauge "ringmq_connection_slots" "" "Slots in this worker's direct file table.";
    ClientsConnected: Gauge "ringmq_clients_connected" "" "Connections with an accepted CONNECT.";
    Sessions: Gauge "ringmq_sessions" "" "Sessions held, connected or persistent and offline.";
    Subscriptions: Gauge "ringmq_subscriptions" "" "Subscriptions, once per (session, filter).";
    Retained: Gauge "ringmq_retained_messages" "" "Retained messages in this worker's replica.";
    Inflight: Gauge "ringmq_inflight_messages" "" "QoS 1/2 messages sent and not yet acknowledged.";
    Queued: Gauge "ringmq_queued_messages" "" "Messages waiting in session queues.";
    Accepted: Counter "ringmq_connections_accepted_total" "" "TCP connections accepted.";
    Closed: Counter "ringmq_connections_closed_total" "" "Connections whose socket was closed.";
    RefusedMax: Counter "ringmq_connections_refused_total" "reason=\"max_connections\"" "Connections accepted and closed at once.";
    ClosedDisconnect: Counter "ringmq_closes_total" "reason=\"client_disconnect\"" "Connections ended, by reason.";
    ClosedProtocolError: Counter "ringmq_closes_total" "reason=\"protocol_error\"" "";
    ClosedViolation: Counter "ringmq_closes_total" "reason=\"protocol_violation\"" "";
    ClosedRefused: Counter "ringmq_closes_total" "reason=\"connect_refused\"" "";
    ClosedKeepalive: Counter "ringmq_closes_total" "reason=\"keepalive_timeout\"" "";
    ClosedConnectTimeout: Counter "ringmq_closes_total" "reason=\"connect_timeout\"" "";
    ClosedTakenOver: Counter "ringmq_closes_total" "reason=\"taken_over\"" "";
    ClosedSlow: Counter "ringmq_closes_total" "reason=\"slow_consumer\"" "";
    ClosedShutdown: Counter "ringmq_closes_total" "reason=\"shutdown\"" "";
    ClosedKicked: Counter "ringmq_closes_total" "reason=\"kicked\"" "";
    ClosedRevoked: Counter "ringmq_closes_total" "reason=\"credentials_revoked\"" "";
    ClosedPeer: Counter "ringmq_closes_total" "reason=\"peer_closed\"" "";
    ConnectsRefused: Counter "ringmq_connects_refused_total" "" "CONNECTs answered with a refusal.";
    AuthFailures: Counter "ringmq_auth_failures_total" "" "CONNECTs refused for bad credentials or not authorized (CONNACK 4 or 5).";
    ReceivedQos0: Counter "ringmq_messages_received_total" "qos=\"0\"" "PUBLISH packets received from clients, by QoS.";
    ReceivedQos1: Counter "ringmq_messages_received_total" "qos=\"1\"" "";
    ReceivedQos2: Counter "ringmq_messages_received_total" "qos=\"2\"" "";
    SentQos0: Counter "ringmq_messages_sent_total" "qos=\"0\"" "PUBLISH packets written to clients, by QoS (first sends and redeliveries).";
    SentQos1: Counter "ringmq_messages_sent_total" "qos=\"1\"" "";
    SentQos2: Counter "ringmq_messages_sent_total" "qos=\"2\"" "";
    BytesReceived: Counter "ringmq_bytes_received_total" "" "Bytes of MQTT packets received.";
    BytesSent: Counter "ringmq_bytes_sent_total" "" "Bytes sent to clients.";
    DroppedOutbuf: Counter "ringmq_messages_dropped_total" "reason=\"qos0_outbuf_full\"" "Messages not delivered, by reason.";
    DroppedQueue: Counter "ringmq_messages_dropped_total" "reason=\"queue_full\"" "";
    SessionsRefused: Counter "ringmq_sessions_refused_total" "" "New sessions refused at sessions_max.";
    SessionsExpired: Counter "ringmq_sessions_expired_total" "" "Persistent sessions expired.";
    SubscriptionsRefused: Counter "ringmq_subscriptions_refused_total" "" "Filters refused at subscriptions_per_session_max.";
    RetainedRefused: Counter "ringmq_retained_refused_total" "" "Retained topics not stored at retained_messages_max.";
    RetainedExpired: Counter "ringmq_retained_expired_total" "" "Retained messages expired.";
    Wills: Counter "ringmq_wills_published_total" "" "Wills published.";
    Handoffs: Counter "ringmq_handoffs_total" "" "CONNECTs handed to their session's home worker.";
    DecodeErrors: Counter "ringmq_decode_errors_total" "" "Connections whose bytes the codec refused.";
    RecvNoBuffers: Counter "ringmq_recv_no_buffers_total" "" "Receives that found no provided buffer (ENOBUFS).";
    FirstRecvNoBuffers: Counter "ringmq_first_recv_no_buffers_total" "" "First receives (before a CONNECT) that found no first-receive buffer.";
    FirstRecvWaits: Counter "ringmq_first_recv_waits_total" "" "First receives left for a later turn at first_recv_buffers per ring per turn, summed over turns.";
    StarvedRearms: Counter "ringmq_starved_rearms_total" "" "Receives re-armed after an ENOBUFS (starved), oldest first.";
    StarvedRefused: Counter "ringmq_starved_refused_total" "" "Starved receives that found no buffer again when re-armed.";
    StarvedEmpty: Counter "ringmq_starved_empty_total" "" "Starved receives that found no bytes (EAGAIN) and went back to multishot.";
    StarvedServed: Counter "ringmq_starved_served_total" "" "Starved connections whose re-armed receive brought their bytes.";
    StarvedWait: CounterNanos "ringmq_starved_wait_seconds_total" "" "Time starved connections waited from their first ENOBUFS to their bytes, summed.";
    StarvedWaitMax: GaugeNanos "ringmq_starved_wait_max_seconds" "" "Longest such wait since the start.";
    ReadsPaused: Counter "ringmq_reads_paused_total" "" "Times reading paused (turn budget or mesh backpressure).";
    LingerExpired: Counter "ringmq_linger_expired_total" "" "Closing connections whose output was cut at close_linger_millis.";
    Turns: Counter "ringmq_loop_turns_total" "" "Loop turns (one submit-and-wait each).";
    BusyNanos: CounterNanos "ringmq_loop_busy_seconds_total" "" "Time spent working in loop turns (not waiting in the kernel).";
    TurnMaxNanos: GaugeNanos "ringmq_loop_turn_max_seconds" "" "Longest loop turn's work in the last export period.";
    Completions: Counter "ringmq_ring_completions_total" "" "Completions reaped from the ring.";
    SqFull: Counter "ringmq_ring_sq_full_total" "" "Pushes that found the submission queue full (flushed first).";
    CqOverflow: Counter "ringmq_ring_cq_overflow_turns_total" "" "Turns on which the kernel held completions back (CQ overflow), counted per ring.";
    MeshPushed: Counter "ringmq_mesh_pushed_total" "" "Items sent to other workers.";
    MeshReceived: Counter "ringmq_mesh_received_total" "" "Items received from other workers.";
    MeshOverflowed: Counter "ringmq_mesh_overflowed_total" "" "Items that waited in an overflow (a peer's ring was full).";
    MeshOverflowHighWater: Gauge "ringmq_mesh_overflow_high_water" "" "Most items one peer's overflow has held (mesh_overflow_max is the bound).";
    MeshDoorbells: Counter "ringmq_mesh_doorbells_total" "" "MSG_RING doorbells rung.";
    AdminRequests: Counter "ringmq_admin_requests_total" "" "Admin control requests this worker answered.";
}

/// The number of per-worker metrics.
pub const METRIC_COUNT: usize = METRICS.len();

/// One worker's exported values. Written only by its worker; see the module documentation.
#[derive(Debug)]
#[repr(align(128))]
pub struct StatsBlock {
    values: [AtomicU64; METRIC_COUNT],
    /// Milliseconds since the runtime's epoch at the last export (0: never).
    exported_at_millis: AtomicU64,
}

impl Default for StatsBlock {
    fn default() -> Self {
        Self {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            exported_at_millis: AtomicU64::new(0),
        }
    }
}

impl StatsBlock {
    /// Sets one value (the owning worker only).
    pub fn set(&self, metric: Metric, value: u64) {
        self.values[metric as usize].store(value, Ordering::Relaxed);
    }

    pub fn get(&self, metric: Metric) -> u64 {
        self.values[metric as usize].load(Ordering::Relaxed)
    }

    /// Every value, in [`METRICS`] order.
    pub fn read(&self) -> [u64; METRIC_COUNT] {
        std::array::from_fn(|index| self.values[index].load(Ordering::Relaxed))
    }

    pub fn exported_at(&self) -> Millis {
        Millis(self.exported_at_millis.load(Ordering::Relaxed))
    }

    fn mark_exported(&self, now: Millis) {
        self.exported_at_millis.store(now.0.max(1), Ordering::Relaxed);
    }
}

/// The worker's side: when to export, and the loop-turn timing between exports.
#[derive(Debug)]
pub struct Exporter {
    pub block: std::sync::Arc<StatsBlock>,
    next_at: Millis,
    /// (completions reaped, mesh items received) at the last export: when they have not moved
    /// since, nothing the block shows has changed and an idle worker need not wake.
    marks: (u64, u64),
    dirty: bool,
    busy_nanos: u64,
    turn_max_nanos: u64,
}

impl Exporter {
    pub fn new(block: std::sync::Arc<StatsBlock>) -> Self {
        Self {
            block,
            next_at: Millis(0),
            marks: (0, 0),
            dirty: true,
            busy_nanos: 0,
            turn_max_nanos: 0,
        }
    }

    /// Records one turn's work time; `activity` is (completions, mesh items received) so far.
    /// Returns true when the block is due for an export now.
    pub fn end_turn(&mut self, busy: Duration, activity: (u64, u64), now: Millis) -> bool {
        let nanos = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos = self.busy_nanos.saturating_add(nanos);
        self.turn_max_nanos = self.turn_max_nanos.max(nanos);
        if activity != self.marks {
            self.dirty = true;
        }
        self.dirty && now >= self.next_at
    }

    /// Called after the worker stored its values: the timing part, and the schedule.
    pub fn finish_export(&mut self, activity: (u64, u64), now: Millis) {
        self.block.set(Metric::BusyNanos, self.busy_nanos);
        self.block.set(Metric::TurnMaxNanos, self.turn_max_nanos);
        self.block.mark_exported(now);
        self.turn_max_nanos = 0;
        self.marks = activity;
        self.dirty = false;
        self.next_at = now.plus_millis(EXPORT_PERIOD_MILLIS);
    }

    /// When an idle worker must wake to export what changed since its last export.
    pub fn deadline(&self) -> Option<Millis> {
        self.dirty.then_some(self.next_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_contiguous_and_each_has_help_first() {
        let mut seen = std::collections::HashSet::new();
        let mut previous = "";
        for desc in METRICS {
            if desc.name != previous {
                assert!(seen.insert(desc.name), "{} appears in two places", desc.name);
                assert!(!desc.help.is_empty(), "{} has no help on its first entry", desc.name);
                previous = desc.name;
            }
            assert!(desc.name.starts_with("ringmq_"));
            let counter = matches!(desc.kind, Kind::Counter | Kind::CounterNanos);
            assert_eq!(
                counter,
                desc.name.ends_with("_total"),
                "{}: counters end in _total",
                desc.name
            );
        }
    }

    #[test]
    fn the_block_is_cache_line_padded() {
        assert_eq!(std::mem::align_of::<StatsBlock>(), 128);
        assert_eq!(std::mem::size_of::<StatsBlock>() % 128, 0);
    }

    #[test]
    fn an_idle_worker_exports_once_after_activity_then_not_again() {
        let mut exporter = Exporter::new(std::sync::Arc::default());
        let busy = Duration::from_micros(5);
        assert!(exporter.end_turn(busy, (1, 0), Millis(0)), "the first turn exports");
        exporter.finish_export((1, 0), Millis(0));
        assert_eq!(exporter.deadline(), None, "nothing changed: no wake-up");
        assert!(!exporter.end_turn(busy, (3, 0), Millis(50)), "changed, but within the period");
        assert_eq!(exporter.deadline(), Some(Millis(EXPORT_PERIOD_MILLIS)));
        assert!(exporter.end_turn(busy, (3, 0), Millis(EXPORT_PERIOD_MILLIS)));
        exporter.finish_export((3, 0), Millis(EXPORT_PERIOD_MILLIS));
        assert_eq!(exporter.block.get(Metric::BusyNanos), 15_000);
        assert_eq!(exporter.block.get(Metric::TurnMaxNanos), 5_000);
        assert_eq!(exporter.deadline(), None);
        assert!(!exporter.end_turn(busy, (3, 0), Millis(10_000)), "a wake-up alone is no change");
    }
}
