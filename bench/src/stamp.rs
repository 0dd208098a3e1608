//! The stamp every benchmark payload starts with, and the per-publisher sequence check a
//! subscriber runs on what it receives.
//!
//! A stamp is 24 bytes at the front of the payload: a magic number, the publisher id, the
//! publisher's sequence number (0, 1, 2, ... per publisher) and the send time in nanoseconds of
//! `CLOCK_MONOTONIC` (system-wide, so a `pub` and a `sub` process on one machine agree). The
//! rest of the payload is padding.
//!
//! [`SeqTracker`] sees one publisher's sequence numbers as one subscriber receives them and
//! classifies each: in order, after a gap, late (filled an earlier gap: reordering), or a
//! duplicate. Invariant: `unique` counts each sequence number at most once, so
//! `expected - unique` is the loss once the run has drained. The set of gaps it remembers is
//! bounded ([`MISSING_TRACKED_MAX`]); gaps beyond it are counted as `missing_evicted` and treated
//! as lost.

use std::collections::BTreeSet;

/// "RMQB": tells a benchmark payload from anything else a broker might deliver.
pub const STAMP_MAGIC: u32 = 0x524D_5142;

/// Bytes taken by the stamp; payloads are at least this long.
pub const STAMP_BYTES: usize = 24;

/// Sequence numbers remembered as missing per (publisher, subscriber) before the oldest are
/// given up as lost. Bounds a tracker's memory when a broker drops heavily.
pub const MISSING_TRACKED_MAX: usize = 65_536;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stamp {
    pub publisher_id: u32,
    pub sequence: u64,
    pub sent_ns: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StampError {
    TooShort(usize),
    BadMagic(u32),
}

impl Stamp {
    /// Writes the stamp over the first [`STAMP_BYTES`] of `payload`.
    pub fn write(&self, payload: &mut [u8]) {
        assert!(
            payload.len() >= STAMP_BYTES,
            "payload of {} bytes cannot hold a stamp",
            payload.len()
        );
        payload[0..4].copy_from_slice(&STAMP_MAGIC.to_be_bytes());
        payload[4..8].copy_from_slice(&self.publisher_id.to_be_bytes());
        payload[8..16].copy_from_slice(&self.sequence.to_be_bytes());
        payload[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads the stamp at the front of `payload`.
    pub fn read(payload: &[u8]) -> Result<Self, StampError> {
        if payload.len() < STAMP_BYTES {
            return Err(StampError::TooShort(payload.len()));
        }
        let word = |range: std::ops::Range<usize>| -> u64 {
            payload[range].iter().fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
        };
        let magic = word(0..4) as u32;
        if magic != STAMP_MAGIC {
            return Err(StampError::BadMagic(magic));
        }
        Ok(Self { publisher_id: word(4..8) as u32, sequence: word(8..16), sent_ns: word(16..24) })
    }
}

/// How one received sequence number relates to those seen before it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arrival {
    /// The next one expected.
    InOrder,
    /// Ahead of the next expected: this many before it are missing (for now).
    AfterGap(u64),
    /// Fills a gap left earlier: it was overtaken, i.e. reordered.
    Late,
    /// Seen before.
    Duplicate,
    /// Older than every gap still remembered: duplicate or very late, we cannot tell.
    Unknown,
}

/// One publisher's sequence as seen by one subscriber.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    /// One past the highest sequence number seen.
    next: u64,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    unknown: u64,
    /// Sequence numbers below `next` not yet seen, oldest first.
    missing: BTreeSet<u64>,
    /// Gaps given up because `missing` was full.
    missing_evicted: u64,
    /// Everything below this was either seen or evicted.
    evicted_below: u64,
}

impl SeqTracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn observe(&mut self, sequence: u64) -> Arrival {
        if sequence == self.next {
            self.next += 1;
            self.unique += 1;
            return Arrival::InOrder;
        }
        if sequence > self.next {
            let gap = sequence - self.next;
            for missing in self.next..sequence {
                self.remember_missing(missing);
            }
            self.next = sequence + 1;
            self.unique += 1;
            return Arrival::AfterGap(gap);
        }
        if self.missing.remove(&sequence) {
            self.reordered += 1;
            self.unique += 1;
            return Arrival::Late;
        }
        if sequence < self.evicted_below {
            self.unknown += 1;
            return Arrival::Unknown;
        }
        self.duplicates += 1;
        Arrival::Duplicate
    }

    fn remember_missing(&mut self, sequence: u64) {
        if self.missing.len() == MISSING_TRACKED_MAX {
            // Bounded: the oldest gap is given up as lost.
            let oldest = self.missing.pop_first().expect("a full set has a first element");
            self.missing_evicted += 1;
            self.evicted_below = oldest + 1;
        }
        self.missing.insert(sequence);
    }

    /// Distinct sequence numbers received.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// One past the highest sequence number received (0 if none).
    pub fn highest_next(&self) -> u64 {
        self.next
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    pub fn unknown(&self) -> u64 {
        self.unknown
    }

    /// Gaps seen so far that have not been filled: what is lost if nothing more arrives,
    /// not counting a tail lost after the highest sequence received.
    pub fn gaps(&self) -> u64 {
        self.missing.len() as u64 + self.missing_evicted
    }

    /// Loss against the number of messages the publisher is known to have sent.
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.unique)
    }

    /// Folds a tracker's counts into a summary.
    pub fn summary(&self) -> SeqSummary {
        SeqSummary {
            unique: self.unique,
            highest_next: self.next,
            duplicates: self.duplicates,
            reordered: self.reordered,
            unknown: self.unknown,
            gaps: self.gaps(),
        }
    }
}

/// What a tracker counted, without its gap set: what a worker thread hands back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqSummary {
    pub unique: u64,
    pub highest_next: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unknown: u64,
    pub gaps: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(sequences: &[u64]) -> SeqTracker {
        let mut tracker = SeqTracker::new();
        for &sequence in sequences {
            tracker.observe(sequence);
        }
        tracker
    }

    #[test]
    fn stamp_round_trips_at_the_front_of_a_padded_payload() {
        let stamp =
            Stamp { publisher_id: 0xDEAD_BEEF, sequence: u64::MAX - 3, sent_ns: 123_456_789 };
        let mut payload = vec![0xAA; 100];
        stamp.write(&mut payload);
        assert_eq!(Stamp::read(&payload), Ok(stamp));
        assert!(payload[STAMP_BYTES..].iter().all(|&byte| byte == 0xAA), "padding untouched");
    }

    #[test]
    fn stamp_rejects_short_and_foreign_payloads() {
        assert_eq!(Stamp::read(&[0; 23]), Err(StampError::TooShort(23)));
        let mut payload = [0u8; 24];
        Stamp { publisher_id: 1, sequence: 2, sent_ns: 3 }.write(&mut payload);
        payload[0] ^= 1;
        assert!(matches!(Stamp::read(&payload), Err(StampError::BadMagic(_))));
    }

    #[test]
    fn in_order_stream_has_no_loss_no_reordering() {
        let tracker = feed(&(0..1000).collect::<Vec<_>>());
        assert_eq!(tracker.unique(), 1000);
        assert_eq!(tracker.lost(1000), 0);
        assert_eq!((tracker.reordered(), tracker.duplicates(), tracker.gaps()), (0, 0, 0));
    }

    #[test]
    fn a_gap_is_loss_until_filled() {
        let mut tracker = feed(&[0, 1, 4, 5]);
        assert_eq!(tracker.gaps(), 2, "2 and 3 missing");
        assert_eq!(tracker.lost(6), 2);
        assert_eq!(tracker.observe(3), Arrival::Late);
        assert_eq!(tracker.observe(2), Arrival::Late);
        assert_eq!(tracker.reordered(), 2);
        assert_eq!(tracker.gaps(), 0);
        assert_eq!(tracker.lost(6), 0);
    }

    #[test]
    fn swapped_pair_is_one_reordering_and_no_loss() {
        let tracker = feed(&[0, 2, 1, 3]);
        assert_eq!(tracker.reordered(), 1);
        assert_eq!(tracker.lost(4), 0);
        assert_eq!(tracker.duplicates(), 0);
    }

    #[test]
    fn lost_tail_shows_only_against_the_sent_count() {
        let tracker = feed(&[0, 1, 2]);
        assert_eq!(tracker.gaps(), 0, "nothing after the tail tells us it is missing");
        assert_eq!(tracker.lost(5), 2);
    }

    #[test]
    fn repeats_are_duplicates_not_extra_deliveries() {
        let mut tracker = feed(&[0, 1, 1, 2, 0]);
        assert_eq!(tracker.duplicates(), 2);
        assert_eq!(tracker.unique(), 3);
        assert_eq!(tracker.observe(7), Arrival::AfterGap(4));
        assert_eq!(tracker.observe(7), Arrival::Duplicate);
    }

    #[test]
    fn missing_set_is_bounded_and_evicted_gaps_count_as_lost() {
        let mut tracker = SeqTracker::new();
        let jump = MISSING_TRACKED_MAX as u64 + 10;
        assert_eq!(tracker.observe(jump), Arrival::AfterGap(jump));
        assert_eq!(tracker.missing.len(), MISSING_TRACKED_MAX);
        assert_eq!(tracker.gaps(), jump);
        assert_eq!(tracker.observe(0), Arrival::Unknown, "evicted: cannot tell late from dup");
        assert_eq!(tracker.observe(jump - 1), Arrival::Late);
        assert_eq!(tracker.lost(jump + 1), jump - 1);
    }
}
