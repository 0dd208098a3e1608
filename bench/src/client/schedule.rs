//! Fixed-rate pacing: when each publisher's messages are due, spread evenly in time.
//!
//! At `r` messages per second per publisher, publisher `i` of `n` (its index in the run) has
//! the phase `i / n` of its interval: its `k`-th message (from 0) is due `(k + i / n) / r`
//! seconds after the run starts. Over all publishers the messages are then due one every
//! `1 / (n r)` seconds, instead of all publishers at once every `1 / r` (a burst of `n`
//! messages that measured the load generator's own queueing, not the broker's latency).
//!
//! A thread's publishers, sorted by phase, come due in that order, round after round: event
//! `m` is publisher `m % p`'s `(m / p)`-th message. [`Schedule::advance`] hands out the
//! publishers whose messages came due since its last call, so a visit costs what it sends, not
//! a scan of every publisher.
//!
//! Invariant: `phases` is sorted and every phase is in [0, 1); `order[j]` is the position (in
//! the worker's publisher list) of the publisher with `phases[j]`.

/// The due times of one thread's paced publishers.
#[derive(Debug)]
pub struct Schedule {
    rate_per_publisher: f64,
    /// By position in the worker's publisher list.
    phase_of: Vec<f64>,
    /// Sorted.
    phases: Vec<f64>,
    order: Vec<u32>,
    /// Events handed out so far.
    cursor: u64,
}

impl Schedule {
    /// `phases[position]`: the phase of the worker's publisher at `position`, in [0, 1).
    pub fn new(rate_per_publisher: f64, phases: &[f64]) -> Self {
        assert!(rate_per_publisher > 0.0, "a schedule needs a rate");
        assert!(phases.iter().all(|phase| (0.0..1.0).contains(phase)), "phases in [0, 1)");
        let mut order: Vec<u32> = (0..phases.len() as u32).collect();
        order.sort_by(|&a, &b| phases[a as usize].total_cmp(&phases[b as usize]));
        let phase_of = phases.to_vec();
        let phases = order.iter().map(|&position| phases[position as usize]).collect();
        Self { rate_per_publisher, phase_of, phases, order, cursor: 0 }
    }

    /// Intervals elapsed `elapsed_ns` after the start.
    fn intervals(&self, elapsed_ns: u64) -> f64 {
        elapsed_ns as f64 * self.rate_per_publisher / 1e9
    }

    /// Messages the publisher at `position` should have sent `elapsed_ns` after the start.
    pub fn due(&self, position: u32, elapsed_ns: u64) -> u64 {
        (self.intervals(elapsed_ns) + 1.0 - self.phase_of[position as usize]).floor() as u64
    }

    /// Events due at or before `elapsed_ns`.
    fn events_until(&self, elapsed_ns: u64) -> u64 {
        let intervals = self.intervals(elapsed_ns);
        let whole = intervals.floor();
        let into = intervals - whole;
        let this_round = self.phases.partition_point(|&phase| phase <= into) as u64;
        whole as u64 * self.phases.len() as u64 + this_round
    }

    /// Appends the positions of the publishers with a message due since the last call (each
    /// at most once) to `out`.
    pub fn advance(&mut self, elapsed_ns: u64, out: &mut Vec<u32>) {
        let publishers = self.phases.len() as u64;
        if publishers == 0 {
            return;
        }
        let until = self.events_until(elapsed_ns);
        let from = self.cursor.max(until.saturating_sub(publishers));
        for event in from..until {
            out.push(self.order[(event % publishers) as usize]);
        }
        self.cursor = self.cursor.max(until);
    }

    /// When (nanoseconds after the start) the next event not yet handed out is due.
    pub fn next_due_ns(&self) -> u64 {
        let publishers = self.phases.len() as u64;
        if publishers == 0 {
            return u64::MAX;
        }
        let round = (self.cursor / publishers) as f64;
        let phase = self.phases[(self.cursor % publishers) as usize];
        ((round + phase) / self.rate_per_publisher * 1e9).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Four publishers at 10 msg/s each: one message every 25 ms, in phase order, and each
    /// publisher's due count follows its own phase.
    #[test]
    fn messages_come_due_one_at_a_time_in_phase_order() {
        let mut schedule = Schedule::new(10.0, &[0.5, 0.0, 0.75, 0.25]);
        let mut out = Vec::new();
        schedule.advance(0, &mut out);
        assert_eq!(out, vec![1], "phase 0 is due at once");
        assert_eq!(schedule.next_due_ns(), 25 * MS);
        out.clear();
        schedule.advance(24 * MS, &mut out);
        assert!(out.is_empty());
        schedule.advance(60 * MS, &mut out);
        assert_eq!(out, vec![3, 0], "phases 0.25 and 0.5");
        out.clear();
        schedule.advance(100 * MS, &mut out);
        assert_eq!(out, vec![2, 1], "phase 0.75, then phase 0's second message");
        assert_eq!(schedule.due(1, 100 * MS), 2, "phase 0");
        assert_eq!(schedule.due(2, 100 * MS), 1, "phase 0.75");
        assert_eq!(schedule.due(2, 74 * MS), 0);
    }

    /// A late visit hands out each publisher once, however many rounds it missed.
    #[test]
    fn a_late_visit_lists_each_publisher_once() {
        let mut schedule = Schedule::new(1000.0, &[0.0, 0.5]);
        let mut out = Vec::new();
        schedule.advance(50 * MS, &mut out);
        out.sort_unstable();
        assert_eq!(out, vec![0, 1]);
        assert_eq!(schedule.due(0, 50 * MS), 51);
        assert!(schedule.next_due_ns() > 50 * MS);
    }

    /// Over a second, the events handed out equal the messages due, spread evenly.
    #[test]
    fn events_match_the_due_counts() {
        let phases: Vec<f64> = (0..7).map(|i| f64::from(i) / 7.0).collect();
        let mut schedule = Schedule::new(3.0, &phases);
        let mut handed = [0u64; 7];
        let mut out = Vec::new();
        let mut now = 0;
        while now <= 1_000 * MS {
            out.clear();
            schedule.advance(now, &mut out);
            for &position in &out {
                handed[position as usize] += 1;
            }
            now += MS;
        }
        for (position, &count) in handed.iter().enumerate() {
            assert_eq!(count, schedule.due(position as u32, 1_000 * MS), "publisher {position}");
        }
    }
}
