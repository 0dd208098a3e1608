//! The process allocator: mimalloc, set up at start so that freed memory goes back to the OS.
//!
//! Under churn the broker's RSS followed the peaks of its heap, not the heap (issue 7: in a
//! 10-minute soak with every connection returned, RSS outside the receive buffers grew 38.9 ->
//! 48.4 MiB while the live heap levelled off). Two settings of mimalloc (v3, as linked here)
//! kept the pages:
//! - `purge_delay` (default 1 s): freed pages are purged only after it, and only when later
//!   allocator activity on the same thread gets round to it. Set to 0: purged at once.
//! - `allow_thp` (default on): mimalloc asks for transparent huge pages on its arenas
//!   (`MADV_HUGEPAGE`), so a page fault maps 2 MiB at once and khugepaged collapses a 2 MiB
//!   range back into one huge page even when it holds a single live 4 KiB page
//!   (`max_ptes_none` 511): a purge of part of it is undone, and RSS rises in 2 MiB steps.
//!   Set off, and THP disabled for the process (`PR_SET_THP_DISABLE`, what mimalloc itself
//!   does when the option is off at its start; the arena it already mapped then stops being
//!   collapsed too).
//!
//! Both are needed: THP off alone still let RSS creep by steps after load bursts. The cost,
//! measured in docs/BENCHMARKS.md ("Churn soak"), is the immediate purge's: 3 % of unicast
//! QoS 1 and 19 % of a 1 -> 1000 fan-out's messages per CPU-second at full rate; an operator
//! who prefers that throughput to a flat RSS sets `MIMALLOC_PURGE_DELAY` (e.g. 1000).
//!
//! Invariant: [`configure`] runs once, first thing in `main`, before any other thread exists.
//! An operator's own `MIMALLOC_PURGE_DELAY` / `MIMALLOC_ALLOW_THP` wins: an option set in the
//! environment is left as mimalloc read it.

use std::os::raw::c_long;

use libmimalloc_sys::mi_option_t;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// One mimalloc option the broker sets: its index in v3's `mi_option_t` (`mimalloc.h`;
/// libmimalloc-sys 0.1.49 exports the functions but not these constants), its value, and
/// the environment variables through which mimalloc reads it.
struct Setting {
    name: &'static str,
    option: mi_option_t,
    value: c_long,
    variables: &'static [&'static str],
}

const PURGE_DELAY: Setting = Setting {
    name: "purge_delay_ms",
    option: 15,
    value: 0,
    variables: &["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"],
};

const ALLOW_THP: Setting =
    Setting { name: "allow_thp", option: 43, value: 0, variables: &["MIMALLOC_ALLOW_THP"] };

const SETTINGS: [Setting; 2] = [PURGE_DELAY, ALLOW_THP];

/// What [`configure`] did, for the start log: each option's value in effect and whether it
/// came from the environment, and whether THP is off for the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub options: Vec<(&'static str, c_long, Source)>,
    pub thp_disabled: bool,
}

/// Where an option's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Broker,
    Environment,
}

/// Applies [`SETTINGS`] (each unless the environment sets it), then turns THP off for the
/// process if mimalloc's `allow_thp` is off.
pub fn configure() -> Applied {
    let mut options = Vec::with_capacity(SETTINGS.len());
    for setting in &SETTINGS {
        let source = if setting.variables.iter().any(|name| std::env::var_os(name).is_some()) {
            Source::Environment
        } else {
            set_option(setting.option, setting.value);
            Source::Broker
        };
        options.push((setting.name, option(setting.option), source));
    }
    let thp_disabled = option(ALLOW_THP.option) == 0 && disable_thp();
    Applied { options, thp_disabled }
}

fn set_option(option: mi_option_t, value: c_long) {
    // SAFETY: mi_option_set takes any option index below _mi_option_last and any value; it
    // only stores the value in mimalloc's option table, and is valid on any thread.
    unsafe { libmimalloc_sys::mi_option_set(option, value) }
}

fn option(option: mi_option_t) -> c_long {
    // SAFETY: mi_option_get reads mimalloc's option table at an index below _mi_option_last;
    // no precondition, no side effect beyond reading the environment once per option.
    unsafe { libmimalloc_sys::mi_option_get(option) }
}

/// `prctl(PR_SET_THP_DISABLE, 1)`: no transparent huge pages for this process, on mappings
/// old and new (page faults and khugepaged). False if the kernel refused.
fn disable_thp() -> bool {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes one flag of this
    // process's memory descriptor; no memory is passed to the kernel.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_environment(setting: &Setting) -> bool {
        setting.variables.iter().any(|name| std::env::var_os(name).is_some())
    }

    // One test, not several: the options are process-wide and tests run on parallel threads.
    #[test]
    fn configure_purges_at_once_and_turns_thp_off_unless_the_environment_says_otherwise() {
        // The indices are v3's: its option count is the crate's, and the neighbours it names
        // sit where v3's enum puts them.
        assert_eq!(libmimalloc_sys::_mi_option_last, 47);
        assert_eq!(libmimalloc_sys::mi_option_use_numa_nodes, PURGE_DELAY.option + 1);
        if !from_environment(&PURGE_DELAY) {
            // v3's default purge delay, 1000 ms (`options.c`; no other option has it).
            assert_eq!(option(PURGE_DELAY.option), 1000, "mimalloc's default purge delay");
        }
        let applied = configure();
        for (setting, (name, value, source)) in SETTINGS.iter().zip(&applied.options) {
            assert_eq!(*name, setting.name);
            if from_environment(setting) {
                assert_eq!(*source, Source::Environment);
            } else {
                assert_eq!((*value, *source), (setting.value, Source::Broker), "{name}");
            }
        }
        if option(ALLOW_THP.option) == 0 {
            assert!(applied.thp_disabled, "prctl(PR_SET_THP_DISABLE) refused");
            // SAFETY: PR_GET_THP_DISABLE takes no memory and only reads this process's flag.
            assert_eq!(unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) }, 1);
        }
    }
}
