//! The process allocator: mimalloc, set up at start so that freed memory goes back to the OS.
//!
//! Under churn the broker's RSS followed the peaks of its heap, not the heap (issue 7: in a
//! 10-minute soak with every connection returned, RSS outside the receive buffers grew 38.9 ->
//! 48.4 MiB while the live heap levelled off). The cause was mimalloc's (v3, as linked here)
//! `allow_thp`, on by default: it asks for transparent huge pages on its arenas
//! (`MADV_HUGEPAGE`), so a page fault maps 2 MiB at once and khugepaged collapses a 2 MiB range
//! back into one huge page even when it holds a single live 4 KiB page (`max_ptes_none` 511):
//! a purge of freed pages in it is undone, and RSS rises in 2 MiB steps. [`configure`] turns
//! it off and disables THP for the process (`PR_SET_THP_DISABLE`, what mimalloc itself does
//! when the option is off at its start; the arena it already mapped then stops being collapsed
//! too). `purge_delay` (how long freed pages wait before they are returned, 1 s by default)
//! is left as it is: 0 returned them sooner but cost the fan-out 14-19 % of its messages per
//! CPU-second, and RSS stayed flat without it (docs/BENCHMARKS.md, "Churn soak").
//!
//! Invariant: [`configure`] runs once, first thing in `main`, before any other thread exists.
//! An operator's own `MIMALLOC_ALLOW_THP` / `MIMALLOC_PURGE_DELAY` wins: an option set in the
//! environment is left as mimalloc read it.

use std::os::raw::c_long;

use libmimalloc_sys::mi_option_t;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// One mimalloc option the broker sets or reports: its index in v3's `mi_option_t`
/// (`mimalloc.h`; libmimalloc-sys 0.1.49 exports the functions but not these constants), the
/// value the broker sets (`None`: mimalloc's default stays), and the environment variables
/// through which mimalloc reads it.
struct Setting {
    name: &'static str,
    option: mi_option_t,
    value: Option<c_long>,
    variables: &'static [&'static str],
}

const PURGE_DELAY: Setting = Setting {
    name: "purge_delay_ms",
    option: 15,
    value: None,
    variables: &["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"],
};

const ALLOW_THP: Setting =
    Setting { name: "allow_thp", option: 43, value: Some(0), variables: &["MIMALLOC_ALLOW_THP"] };

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
    MimallocDefault,
}

/// Applies [`SETTINGS`] (each that has a value, unless the environment sets it), then turns
/// THP off for the process if mimalloc's `allow_thp` is off.
pub fn configure() -> Applied {
    let mut options = Vec::with_capacity(SETTINGS.len());
    for setting in &SETTINGS {
        let source = if setting.variables.iter().any(|name| std::env::var_os(name).is_some()) {
            Source::Environment
        } else if let Some(value) = setting.value {
            set_option(setting.option, value);
            Source::Broker
        } else {
            Source::MimallocDefault
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
    fn configure_turns_thp_off_and_leaves_the_purge_delay_unless_the_environment_says_otherwise() {
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
            match (from_environment(setting), setting.value) {
                (true, _) => assert_eq!(*source, Source::Environment),
                (false, Some(set)) => {
                    assert_eq!((*value, *source), (set, Source::Broker), "{name}")
                }
                (false, None) => assert_eq!(*source, Source::MimallocDefault, "{name}"),
            }
        }
        if option(ALLOW_THP.option) == 0 {
            assert!(applied.thp_disabled, "prctl(PR_SET_THP_DISABLE) refused");
            // SAFETY: PR_GET_THP_DISABLE takes no memory and only reads this process's flag.
            assert_eq!(unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) }, 1);
        }
    }
}
