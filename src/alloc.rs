//! The process allocator: mimalloc, set up at start so that freed memory goes back to the OS.
//!
//! mimalloc keeps the pages freed after a transient heap peak (a burst of connections, a queue
//! filled to its bound and drained) until a purge that its default delay (`purge_delay`, 1 s
//! in the mimalloc v3 linked here) leaves to later allocator activity on the same thread;
//! under churn the broker's RSS then followed its peaks, not its live heap (issue 7: 38.9 -> 48.4 MiB in a 10-minute soak with
//! every connection returned). [`configure`] sets the purge delay to 0: a page that becomes free
//! is decommitted at once, so RSS follows the live heap. The throughput cost is measured in
//! docs/BENCHMARKS.md ("Robustness", allocator).
//!
//! Invariant: [`configure`] runs once, first thing in `main`, before any worker thread exists.
//! An operator's own `MIMALLOC_PURGE_DELAY` (or its old name `MIMALLOC_RESET_DELAY`) wins: then
//! the option mimalloc read from the environment is left alone.

use std::os::raw::c_long;

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (index 15 in both v2 and v3
/// `mimalloc.h`); libmimalloc-sys 0.1.49 exports the function but not this constant.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The purge delay the broker runs with unless the environment sets one: purge at once.
pub const PURGE_DELAY_MS: c_long = 0;

/// The environment variables through which mimalloc reads its purge delay.
const PURGE_DELAY_VARIABLES: [&str; 2] = ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"];

/// Where the purge delay in effect came from, for the start log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeDelaySource {
    /// Set by [`configure`] to [`PURGE_DELAY_MS`].
    Broker,
    /// Left as mimalloc read it from `MIMALLOC_PURGE_DELAY` / `MIMALLOC_RESET_DELAY`.
    Environment,
}

/// Sets the purge delay (unless the environment did) and returns the delay in effect, in
/// milliseconds, and where it came from.
pub fn configure() -> (c_long, PurgeDelaySource) {
    let from_environment =
        PURGE_DELAY_VARIABLES.iter().any(|name| std::env::var_os(name).is_some());
    if !from_environment {
        set_purge_delay_ms(PURGE_DELAY_MS);
    }
    let source =
        if from_environment { PurgeDelaySource::Environment } else { PurgeDelaySource::Broker };
    (purge_delay_ms(), source)
}

fn set_purge_delay_ms(delay_ms: c_long) {
    // SAFETY: mi_option_set takes any option index below _mi_option_last and any value; it
    // only stores the value in mimalloc's option table (an atomic), valid on any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay_ms) }
}

fn purge_delay_ms() -> c_long {
    // SAFETY: mi_option_get reads mimalloc's option table for a valid option index; it has no
    // precondition and no side effect beyond reading the environment once per option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test, not two: the option is process-wide and tests run on parallel threads.
    #[test]
    fn configure_sets_an_immediate_purge_unless_the_environment_sets_one() {
        let from_environment =
            PURGE_DELAY_VARIABLES.iter().any(|name| std::env::var_os(name).is_some());
        if !from_environment {
            // Index 15 is the purge delay: it reads mimalloc v3's default, 1000 ms
            // (`options.c`; no other option defaults to 1000).
            assert_eq!(purge_delay_ms(), 1000, "mimalloc's default purge delay");
        }
        let (delay_ms, source) = configure();
        if from_environment {
            assert_eq!(source, PurgeDelaySource::Environment);
        } else {
            assert_eq!((delay_ms, source), (PURGE_DELAY_MS, PurgeDelaySource::Broker));
        }
        assert_eq!(delay_ms, purge_delay_ms());
    }
}
