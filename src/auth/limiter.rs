//! Failed CONNECT attempts per source address, and the refusal of an address that made too
//! many: a password guesser gets `failures_max` tries per `window_millis`, then is refused
//! (CONNACK 0x05) without its password being hashed, so guessing costs the broker little.
//!
//! The window is fixed: it starts at an address's first failure and its count is forgotten
//! when it ends. A success does not reset it (a client that knows one password gains nothing).
//! The table holds at most `addresses_max` addresses; when it is full, windows that ended are
//! swept out (at most once per window, so a full table does not cost a scan per failure), and
//! if it is still full the new address is not tracked (counted by the caller). Sans-IO: the
//! time is an argument.

use std::collections::HashMap;
use std::net::IpAddr;

/// The limits, from `BrokerConfig`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LimiterConfig {
    /// Failures an address may make in one window; 0 disables the limiter.
    pub failures_max: u32,
    pub window_millis: u64,
    pub addresses_max: usize,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started_millis: u64,
    failures: u32,
}

/// What `record_failure` did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Recorded {
    Counted,
    /// The table was full of live windows: this address is not limited (yet).
    TableFull,
}

/// One worker's failure counts.
#[derive(Debug)]
pub struct FailureLimiter {
    config: LimiterConfig,
    windows: HashMap<IpAddr, Window>,
    next_sweep_millis: u64,
}

impl FailureLimiter {
    pub fn new(config: LimiterConfig) -> Self {
        Self { config, windows: HashMap::new(), next_sweep_millis: 0 }
    }

    pub fn config(&self) -> LimiterConfig {
        self.config
    }

    /// Whether `address` may try to authenticate now.
    pub fn allows(&self, address: IpAddr, now_millis: u64) -> bool {
        if self.config.failures_max == 0 {
            return true;
        }
        match self.windows.get(&address) {
            Some(window) if self.live(window, now_millis) => {
                window.failures < self.config.failures_max
            }
            _ => true,
        }
    }

    pub fn record_failure(&mut self, address: IpAddr, now_millis: u64) -> Recorded {
        if self.config.failures_max == 0 {
            return Recorded::Counted;
        }
        if !self.windows.contains_key(&address) && self.windows.len() >= self.config.addresses_max {
            self.sweep(now_millis);
            if self.windows.len() >= self.config.addresses_max {
                return Recorded::TableFull;
            }
        }
        let live = |window: &Window| {
            now_millis.saturating_sub(window.started_millis) < self.config.window_millis
        };
        let window = self
            .windows
            .entry(address)
            .or_insert(Window { started_millis: now_millis, failures: 0 });
        if !live(window) {
            *window = Window { started_millis: now_millis, failures: 0 };
        }
        window.failures = window.failures.saturating_add(1);
        Recorded::Counted
    }

    fn live(&self, window: &Window, now_millis: u64) -> bool {
        now_millis.saturating_sub(window.started_millis) < self.config.window_millis
    }

    /// Drops ended windows, at most once per window length.
    fn sweep(&mut self, now_millis: u64) {
        if now_millis < self.next_sweep_millis {
            return;
        }
        self.next_sweep_millis = now_millis.saturating_add(self.config.window_millis);
        let window_millis = self.config.window_millis;
        self.windows
            .retain(|_, window| now_millis.saturating_sub(window.started_millis) < window_millis);
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: LimiterConfig =
        LimiterConfig { failures_max: 3, window_millis: 1000, addresses_max: 2 };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let mut limiter = FailureLimiter::new(CONFIG);
        for at in [0, 10, 20] {
            assert!(limiter.allows(ip(1), at));
            assert_eq!(limiter.record_failure(ip(1), at), Recorded::Counted);
        }
        assert!(!limiter.allows(ip(1), 30), "the 4th attempt in the window is refused");
        assert!(!limiter.allows(ip(1), 999));
        assert!(limiter.allows(ip(2), 30), "other addresses are not affected");
        assert!(limiter.allows(ip(1), 1000), "the window ended");
        limiter.record_failure(ip(1), 1000);
        assert!(limiter.allows(ip(1), 1001), "a new window counts from zero");
    }

    #[test]
    fn the_table_is_bounded_and_swept_once_per_window() {
        let mut limiter = FailureLimiter::new(CONFIG);
        limiter.record_failure(ip(1), 0);
        limiter.record_failure(ip(2), 0);
        assert_eq!(limiter.record_failure(ip(3), 10), Recorded::TableFull);
        assert_eq!(limiter.len(), 2);
        // The sweep at 10 found nothing to drop; the next may run at 1010.
        assert_eq!(limiter.record_failure(ip(3), 500), Recorded::TableFull);
        assert_eq!(limiter.record_failure(ip(3), 1010), Recorded::Counted);
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn zero_failures_max_disables_it() {
        let mut limiter = FailureLimiter::new(LimiterConfig { failures_max: 0, ..CONFIG });
        for at in 0..100 {
            limiter.record_failure(ip(1), at);
        }
        assert!(limiter.allows(ip(1), 100));
        assert!(limiter.is_empty());
    }
}
