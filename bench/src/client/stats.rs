//! What one worker counts and measures. Plain numbers on the worker's own thread; the worker
//! copies its [`Counters`] to the shared progress board once per loop turn and hands
//! everything back when it ends.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in nanoseconds, 3 significant digits, up to a minute.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant bounds are valid")
}

macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident),* $(,)?) => {
        /// Event counts of one worker, or (added up) of the whole run.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct Counters { $($(#[$doc])* pub $field: u64,)* }

        impl Counters {
            pub fn add(&mut self, other: &Self) {
                $(self.$field += other.$field;)*
            }
        }
    };
}

counters! {
    /// TCP connects submitted.
    connect_started,
    tcp_connected,
    /// CONNACK accepted.
    connected,
    /// Connected and (subscribers) subscribed.
    ready,
    connect_failed,
    /// Connections lost before the end of the run.
    closed_unexpectedly,
    /// Packets we could not decode or did not expect.
    protocol_errors,
    published,
    published_bytes,
    /// QoS 1/2 flows completed (PUBACK, PUBCOMP).
    acked,
    /// PUBLISH packets received, duplicates included.
    delivered,
    delivered_bytes,
    /// Distinct (publisher, sequence) received per subscriber.
    unique,
    duplicates,
    /// Arrived after a later message of the same publisher.
    reordered,
    /// Older than every remembered gap: duplicate or very late.
    unknown,
    /// Sequence gaps not (yet) filled: a lower bound of loss while the run goes on.
    gaps,
    /// Payloads without a benchmark stamp.
    foreign,
    pings_sent,
    pongs,
    /// Publishers that finished their count.
    publishers_done,
}

#[derive(Debug)]
pub struct Stats {
    pub counters: Counters,
    /// Publish-to-delivery latency.
    pub latency: Histogram<u64>,
    /// The same, since the last hand-off to the progress line.
    pub interval_latency: Histogram<u64>,
    /// Publish-to-PUBACK (QoS 1) or -PUBCOMP (QoS 2).
    pub ack_latency: Histogram<u64>,
    /// TCP connect submitted to connected.
    pub tcp_connect: Histogram<u64>,
    /// TCP connect submitted to CONNACK.
    pub mqtt_connect: Histogram<u64>,
    pub ping: Histogram<u64>,
    pub first_delivery_ns: u64,
    pub last_delivery_ns: u64,
    pub first_connect_ns: u64,
    pub last_ready_ns: u64,
    /// Why connections failed or closed, by description.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            counters: Counters::default(),
            latency: latency_histogram(),
            interval_latency: latency_histogram(),
            ack_latency: latency_histogram(),
            tcp_connect: latency_histogram(),
            mqtt_connect: latency_histogram(),
            ping: latency_histogram(),
            first_delivery_ns: 0,
            last_delivery_ns: 0,
            first_connect_ns: 0,
            last_ready_ns: 0,
            errors: BTreeMap::new(),
        }
    }

    pub fn record_delivery(&mut self, now_ns: u64, sent_ns: u64) {
        let latency_ns = now_ns.saturating_sub(sent_ns).max(1);
        self.latency.saturating_record(latency_ns);
        self.interval_latency.saturating_record(latency_ns);
        if self.first_delivery_ns == 0 {
            self.first_delivery_ns = now_ns;
        }
        self.last_delivery_ns = now_ns;
    }

    pub fn record_ack(&mut self, latency_ns: u64) {
        self.ack_latency.saturating_record(latency_ns.max(1));
    }

    pub fn record_ping(&mut self, latency_ns: u64) {
        self.counters.pongs += 1;
        self.ping.saturating_record(latency_ns.max(1));
    }

    pub fn connected(&mut self, latency_ns: u64) {
        self.counters.connected += 1;
        self.mqtt_connect.saturating_record(latency_ns.max(1));
    }

    /// Counts `what`. Its first occurrence in this worker is also printed to standard error,
    /// so a run stopped before its final report (e.g. by `scripts/million.sh`) still says why
    /// connections failed; at most one line per kind of error per worker.
    pub fn error(&mut self, what: String) {
        match self.errors.get_mut(&what) {
            Some(count) => *count += 1,
            None => {
                eprintln!("\nerror (first of its kind in this bench worker): {what}");
                self.errors.insert(what, 1);
            }
        }
    }

    /// Adds another worker's measurements into these.
    pub fn merge(&mut self, other: &Self) {
        self.counters.add(&other.counters);
        for (mine, theirs) in [
            (&mut self.latency, &other.latency),
            (&mut self.ack_latency, &other.ack_latency),
            (&mut self.tcp_connect, &other.tcp_connect),
            (&mut self.mqtt_connect, &other.mqtt_connect),
            (&mut self.ping, &other.ping),
        ] {
            mine.add(theirs).expect("histograms share bounds");
        }
        self.first_delivery_ns = min_nonzero(self.first_delivery_ns, other.first_delivery_ns);
        self.first_connect_ns = min_nonzero(self.first_connect_ns, other.first_connect_ns);
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
        self.last_ready_ns = self.last_ready_ns.max(other.last_ready_ns);
        for (what, count) in &other.errors {
            *self.errors.entry(what.clone()).or_default() += count;
        }
    }
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_histograms_and_keeps_extremes() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        a.counters.published = 3;
        b.counters.published = 4;
        a.record_delivery(1_000, 900);
        b.record_delivery(5_000, 1_000);
        a.error("refused".into());
        b.error("refused".into());
        a.merge(&b);
        assert_eq!(a.counters.published, 7);
        assert_eq!(a.latency.len(), 2);
        assert_eq!((a.first_delivery_ns, a.last_delivery_ns), (1_000, 5_000));
        assert_eq!(a.errors["refused"], 2);
    }
}
