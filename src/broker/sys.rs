//! `$SYS/broker/...`: the broker's statistics as retained messages, with Mosquitto's topic
//! names, every `sys_interval_secs` (0 disables them).
//!
//! Every worker sends a snapshot of its counters to worker 0 each interval
//! (`RemoteMsg::Stats`); worker 0 sums the latest snapshot of each worker with its own and
//! publishes the totals as retained QoS 0 messages, through the ordinary routing (so
//! subscribers on every worker get them and every retained replica holds them). Retained
//! messages are replicated on every worker, so their count is one replica's, not a sum.

use bytes::Bytes;

use super::stats::WorkerStats;
use super::{Broker, Message, Millis, RemoteMsg, WorkerId};
use crate::protocol::{QoS, TopicName};

/// The `$SYS` schedule and, on worker 0, the latest snapshot from each worker.
#[derive(Debug)]
pub(super) struct SysState {
    pub next_at: Option<Millis>,
    latest: Vec<Option<WorkerStats>>,
}

impl SysState {
    pub fn new(interval_secs: u64, workers: u16, now: Millis) -> Self {
        let next_at = (interval_secs > 0).then(|| now.plus_secs(interval_secs));
        Self { next_at, latest: vec![None; usize::from(workers)] }
    }
}

/// The topics published: Mosquitto's names, then ringmq's own (authentication and ACL).
pub(super) const TOPICS: [&str; 15] = [
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
    "$SYS/broker/uptime",
    "$SYS/broker/version",
    "$SYS/broker/auth/bad credentials",
    "$SYS/broker/auth/rate limited",
    "$SYS/broker/acl/publishes denied",
    "$SYS/broker/acl/subscriptions denied",
    "$SYS/broker/acl/deliveries denied",
];

/// The payload of each of [`TOPICS`], in order.
fn values(total: &WorkerStats, uptime_secs: u64) -> [String; 15] {
    [
        total.clients_connected.to_string(),
        total.clients_total.to_string(),
        total.messages_received.to_string(),
        total.messages_sent.to_string(),
        total.bytes_received.to_string(),
        total.bytes_sent.to_string(),
        total.subscriptions.to_string(),
        total.retained_messages.to_string(),
        format!("{uptime_secs} seconds"),
        format!("ringmq version {}", env!("CARGO_PKG_VERSION")),
        total.connects_refused_credentials.to_string(),
        total.connects_rate_limited.to_string(),
        total.publishes_denied.to_string(),
        total.subscriptions_denied.to_string(),
        total.deliveries_denied.to_string(),
    ]
}

impl Broker {
    /// Runs the `$SYS` interval if it is due.
    pub(super) fn run_sys(&mut self, now: Millis) {
        let Some(next_at) = self.sys.next_at else {
            return;
        };
        if now < next_at {
            return;
        }
        // Skip missed intervals rather than publishing a burst of them.
        let interval_millis = self.config.sys_interval_secs * 1000;
        let missed = now.since(next_at) / interval_millis;
        self.sys.next_at = Some(next_at.plus_millis((missed + 1) * interval_millis));
        self.refresh_gauges();
        let snapshot = self.stats.clone();
        if self.me == WorkerId(0) {
            self.sys.latest[0] = Some(snapshot);
            self.publish_sys(now);
        } else {
            self.send_remote(WorkerId(0), RemoteMsg::Stats(Box::new(snapshot)));
        }
    }

    pub(super) fn record_worker_stats(&mut self, from: WorkerId, stats: WorkerStats) {
        assert_eq!(self.me, WorkerId(0), "statistics go to worker 0");
        self.sys.latest[from.index()] = Some(stats);
    }

    fn publish_sys(&mut self, now: Millis) {
        let mut total = WorkerStats::default();
        for stats in self.sys.latest.iter().flatten() {
            total.add(stats);
        }
        let uptime_secs = now.since(self.started) / 1000;
        for (topic, value) in TOPICS.iter().zip(values(&total, uptime_secs)) {
            let message = Message {
                topic: TopicName::from_static(topic),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
            };
            self.route_publish(message, now);
        }
    }
}
