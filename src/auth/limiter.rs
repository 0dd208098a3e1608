//! Failed CONNECT attempts per source address, and the refusal of an address that made too
//! many: a password guesser gets `failures_max` tries per window, then is refused (CONNACK
//! 0x05) without its password being hashed, so guessing costs the broker little.
//!
//! One limiter serves every worker (the runtime shares one `Arc`), so a client that spreads
//! its attempts over connections landing on different workers still gets `failures_max` in
//! all, not per worker. It takes no lock: the table is a fixed array of `AtomicU64`, one word
//! per tracked address, updated by compare-and-swap. Workers touch it only for a CONNECT with
//! a user name when a password file is loaded, never on the message path.
//!
//! The table: `addresses_max` rounded up to a power of two (at least one bucket) words, in
//! buckets of [`BUCKET_WORDS`] (one 32-byte run of a cache line). An address hashes (foldhash,
//! seeded at start so the layout cannot be predicted from outside) to a bucket and a 16-bit
//! tag. A word packs `tag` (16 bits), `failures` (16 bits, saturating) and the second its
//! window started (32 bits, seconds of the broker's clock: 136 years). A word with no
//! failures, or whose window ended, is free.
//!
//! The window is fixed: it starts at the second of an address's first failure and its count
//! is forgotten when it ends. A success does not reset it (a client that knows one password
//! gains nothing).
//!
//! Defined behaviour at the edges:
//! - Collision, a full bucket: when the four words of an address's bucket all hold live
//!   windows of other tags, its failure is not tracked (`Recorded::TableFull`, counted by the
//!   caller as `auth_limiter_full`), as when a table is full. Ended windows are reused in
//!   place, so there is nothing to sweep.
//! - Two addresses with the same bucket and tag (one chance in 65536 per pair sharing a
//!   bucket) share one count: each may be refused early.
//! - Two workers recording the first failure of one address at the same moment may claim two
//!   words; the check adds the live counts of every word with the tag, so the limit holds.
//! - `failures_max` above 65535 acts as 65535 (the counter's width).
//!
//! Sans-IO: the time is an argument, the seed too.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Words per bucket: an address may sit in any of them.
pub const BUCKET_WORDS: usize = 4;
/// Largest count a word holds.
const FAILURES_CAP: u64 = 0xffff;
/// Passes over a bucket a failure may take when other workers keep changing it (each lost
/// race means another failure was recorded); after them it counts as not tracked.
const RECORD_PASSES_MAX: usize = 64;

/// The limits, from `BrokerConfig`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LimiterConfig {
    /// Failures an address may make in one window; 0 disables the limiter.
    pub failures_max: u32,
    pub window_millis: u64,
    /// Addresses tracked at once, for the whole broker (rounded up to a power of two).
    pub addresses_max: usize,
}

/// What `record_failure` did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Recorded {
    Counted,
    /// The address's bucket was full of live windows of other addresses: not limited (yet).
    TableFull,
}

/// One packed word: tag, failures, window start (seconds).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Word {
    tag: u16,
    failures: u64,
    started_secs: u32,
}

impl Word {
    fn unpack(value: u64) -> Self {
        Self {
            tag: (value >> 48) as u16,
            failures: (value >> 32) & FAILURES_CAP,
            started_secs: value as u32,
        }
    }

    fn pack(self) -> u64 {
        (u64::from(self.tag) << 48)
            | (self.failures.min(FAILURES_CAP) << 32)
            | u64::from(self.started_secs)
    }
}

/// The failure counts of every worker (see the module documentation).
#[derive(Debug)]
pub struct FailureLimiter {
    config: LimiterConfig,
    seed: u64,
    /// Allocated at the first failure, so a limiter that is never used (a broker whose runtime
    /// shares another one, or no password file) costs nothing.
    words: OnceLock<Box<[AtomicU64]>>,
}

impl FailureLimiter {
    /// A limiter hashing addresses with `seed` (random in the runtime, fixed in tests).
    pub fn new(config: LimiterConfig, seed: u64) -> Self {
        Self { config, seed, words: OnceLock::new() }
    }

    pub fn config(&self) -> LimiterConfig {
        self.config
    }

    /// Words in the table: `addresses_max` rounded up to a power of two, at least a bucket.
    pub fn capacity(&self) -> usize {
        self.config.addresses_max.max(BUCKET_WORDS).next_power_of_two()
    }

    fn failures_max(&self) -> u64 {
        u64::from(self.config.failures_max).min(FAILURES_CAP)
    }

    fn window_secs(&self) -> u64 {
        self.config.window_millis.div_ceil(1000).max(1)
    }

    /// The bucket's first word and the tag of `address`.
    fn locate(&self, address: IpAddr) -> (usize, u16) {
        let hash = foldhash::fast::FixedState::with_seed(self.seed).hash_one(address);
        let bucket = (hash as usize) & (self.capacity() - 1) & !(BUCKET_WORDS - 1);
        (bucket, (hash >> 48) as u16)
    }

    fn live(&self, word: Word, now_secs: u32) -> bool {
        word.failures > 0
            && u64::from(now_secs.wrapping_sub(word.started_secs)) < self.window_secs()
    }

    /// Whether `address` may try to authenticate now.
    pub fn allows(&self, address: IpAddr, now_millis: u64) -> bool {
        if self.config.failures_max == 0 {
            return true;
        }
        let Some(words) = self.words.get() else { return true };
        let (bucket, tag) = self.locate(address);
        let now_secs = seconds(now_millis);
        let failures: u64 = words[bucket..bucket + BUCKET_WORDS]
            .iter()
            .map(|word| Word::unpack(word.load(Ordering::Relaxed)))
            .filter(|word| word.tag == tag && self.live(*word, now_secs))
            .map(|word| word.failures)
            .sum();
        failures < self.failures_max()
    }

    /// Counts a failed attempt of `address`.
    pub fn record_failure(&self, address: IpAddr, now_millis: u64) -> Recorded {
        if self.config.failures_max == 0 {
            return Recorded::Counted;
        }
        let capacity = self.capacity();
        let words = self.words.get_or_init(|| (0..capacity).map(|_| AtomicU64::new(0)).collect());
        let (bucket, tag) = self.locate(address);
        let bucket = &words[bucket..bucket + BUCKET_WORDS];
        let now_secs = seconds(now_millis);
        // Each pass either succeeds or saw another worker change a word of this bucket; the
        // passes are bounded so a storm of failures cannot hold a worker here.
        for _ in 0..RECORD_PASSES_MAX {
            match self.try_record(bucket, tag, now_secs) {
                Some(recorded) => return recorded,
                None => continue,
            }
        }
        Recorded::TableFull
    }

    /// One pass over the bucket: `None` when a compare-and-swap lost a race (try again).
    fn try_record(&self, bucket: &[AtomicU64], tag: u16, now_secs: u32) -> Option<Recorded> {
        let values: [u64; BUCKET_WORDS] =
            std::array::from_fn(|index| bucket[index].load(Ordering::Relaxed));
        for (index, &value) in values.iter().enumerate() {
            let word = Word::unpack(value);
            if word.tag == tag && self.live(word, now_secs) {
                let counted = Word { failures: word.failures + 1, ..word }.pack();
                return swap(&bucket[index], value, counted).then_some(Recorded::Counted);
            }
        }
        let free = values.iter().position(|&value| !self.live(Word::unpack(value), now_secs));
        let Some(index) = free else { return Some(Recorded::TableFull) };
        let claimed = Word { tag, failures: 1, started_secs: now_secs }.pack();
        swap(&bucket[index], values[index], claimed).then_some(Recorded::Counted)
    }

    /// Addresses with a live window now (a scan of the table: for tests and diagnostics).
    pub fn live_addresses(&self, now_millis: u64) -> usize {
        let Some(words) = self.words.get() else { return 0 };
        let now_secs = seconds(now_millis);
        words
            .iter()
            .filter(|word| self.live(Word::unpack(word.load(Ordering::Relaxed)), now_secs))
            .count()
    }
}

fn seconds(millis: u64) -> u32 {
    // The broker's clock starts at 0 when it starts: 136 years fit.
    u32::try_from(millis / 1000).unwrap_or(u32::MAX)
}

fn swap(word: &AtomicU64, current: u64, new: u64) -> bool {
    word.compare_exchange(current, new, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const CONFIG: LimiterConfig =
        LimiterConfig { failures_max: 3, window_millis: 10_000, addresses_max: 64 };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let limiter = FailureLimiter::new(CONFIG, 7);
        for at in [0, 10, 2000] {
            assert!(limiter.allows(ip(1), at));
            assert_eq!(limiter.record_failure(ip(1), at), Recorded::Counted);
        }
        assert!(!limiter.allows(ip(1), 2001), "the 4th attempt in the window is refused");
        assert!(!limiter.allows(ip(1), 9999));
        assert!(limiter.allows(ip(2), 30), "other addresses are not affected");
        assert!(limiter.allows(ip(1), 10_000), "the window ended");
        limiter.record_failure(ip(1), 10_000);
        assert!(limiter.allows(ip(1), 10_001), "a new window counts from zero");
        assert_eq!(limiter.live_addresses(10_001), 1);
    }

    #[test]
    fn a_window_starts_at_the_second_of_the_first_failure() {
        let limiter = FailureLimiter::new(CONFIG, 7);
        for _ in 0..3 {
            limiter.record_failure(ip(1), 1999);
        }
        assert!(!limiter.allows(ip(1), 10_999));
        assert!(limiter.allows(ip(1), 11_000), "10 s after second 1");
    }

    /// Every worker holds the same limiter: failures from one address on different threads
    /// add up to one limit (the issue: a per-worker count gave `workers` times the limit).
    #[test]
    fn failures_recorded_by_several_threads_add_up_to_one_limit() {
        let config = LimiterConfig { failures_max: 400, ..CONFIG };
        let limiter = Arc::new(FailureLimiter::new(config, 7));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        assert_eq!(limiter.record_failure(ip(9), 500), Recorded::Counted);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a recording thread panicked");
        }
        assert!(!limiter.allows(ip(9), 600), "4 x 100 failures reach the limit of 400");
        let below = FailureLimiter::new(LimiterConfig { failures_max: 401, ..CONFIG }, 7);
        for _ in 0..400 {
            below.record_failure(ip(9), 500);
        }
        assert!(below.allows(ip(9), 600));
    }

    /// A bucket holds four live windows; a fifth address hashing to it is not tracked (and
    /// so not limited), and is tracked again once a window there ends.
    #[test]
    fn a_full_bucket_leaves_the_next_address_untracked_until_a_window_ends() {
        let limiter = FailureLimiter::new(LimiterConfig { addresses_max: 4, ..CONFIG }, 7);
        assert_eq!(limiter.capacity(), 4, "one bucket: every address collides");
        for last in 1..=4 {
            assert_eq!(limiter.record_failure(ip(last), 0), Recorded::Counted);
        }
        for _ in 0..5 {
            assert_eq!(limiter.record_failure(ip(5), 5000), Recorded::TableFull);
        }
        assert!(limiter.allows(ip(5), 5000), "an untracked address is not limited");
        assert_eq!(limiter.record_failure(ip(5), 10_000), Recorded::Counted, "windows ended");
        assert_eq!(limiter.live_addresses(10_000), 1);
    }

    #[test]
    fn the_table_is_the_named_bound_rounded_up() {
        let limiter = FailureLimiter::new(LimiterConfig { addresses_max: 1000, ..CONFIG }, 0);
        assert_eq!(limiter.capacity(), 1024);
        assert!(limiter.words.get().is_none(), "nothing allocated before a failure");
        limiter.record_failure(ip(1), 0);
        assert_eq!(limiter.words.get().map(|words| words.len()), Some(1024));
    }

    #[test]
    fn a_word_round_trips_and_saturates() {
        let word = Word { tag: 0xbeef, failures: 12, started_secs: u32::MAX - 1 };
        assert_eq!(Word::unpack(word.pack()), word);
        let full = Word { failures: FAILURES_CAP + 5, ..word };
        assert_eq!(Word::unpack(full.pack()).failures, FAILURES_CAP);
    }

    #[test]
    fn zero_failures_max_disables_it() {
        let limiter = FailureLimiter::new(LimiterConfig { failures_max: 0, ..CONFIG }, 7);
        for at in 0..100 {
            limiter.record_failure(ip(1), at);
        }
        assert!(limiter.allows(ip(1), 100));
        assert_eq!(limiter.live_addresses(100), 0);
    }
}
