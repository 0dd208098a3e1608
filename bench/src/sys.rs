//! Thin wrappers over the few libc calls the benchmark needs outside the ring: the monotonic
//! clock every stamp uses, CPU time (ours per thread, the process's, and another process's
//! from `/proc/<pid>/stat`), SIGPIPE, and the stop signals (SIGTERM, SIGINT) that end a run
//! early with its report.

/// Nanoseconds of `CLOCK_MONOTONIC`: the same clock in every process on the machine, so a
/// separate `pub` and `sub` can compute latency from each other's stamps.
pub fn monotonic_ns() -> u64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `time` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// CPU time (user, system) in nanoseconds consumed so far, for `who`.
fn rusage_ns(who: libc::c_int) -> (u64, u64) {
    // SAFETY: an all-zero rusage is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid and writable; `who` is RUSAGE_SELF or RUSAGE_THREAD.
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    assert_eq!(rc, 0, "getrusage with a valid `who` cannot fail");
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    (ns(usage.ru_utime), ns(usage.ru_stime))
}

/// CPU time of the calling thread: (user, system) nanoseconds.
pub fn thread_cpu_ns() -> (u64, u64) {
    rusage_ns(libc::RUSAGE_THREAD)
}

/// CPU time of this whole process: (user, system) nanoseconds.
pub fn process_cpu_ns() -> (u64, u64) {
    rusage_ns(libc::RUSAGE_SELF)
}

/// CPU time of another process, (user, system) nanoseconds, from `/proc/<pid>/stat`; `None` if
/// it cannot be read (gone, or not ours to see).
pub fn other_process_cpu_ns(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing ')' are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state field (field 3).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ns_per_tick = 1_000_000_000 / u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    Some((utime * ns_per_tick, stime * ns_per_tick))
}

/// The stop signal that arrived (0: none), set by [`on_stop_signal`].
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    // An atomic store is async-signal-safe; the run's control thread polls it.
    STOP_SIGNAL.store(signal, std::sync::atomic::Ordering::Relaxed);
}

/// SIGTERM and SIGINT no longer kill the process: they are noted, and the run stops at its
/// next control tick and prints its report (what connected, errors by reason) before exiting,
/// so a script that stops a run still learns why connections failed. A second signal after
/// that report is on its way kills as usual (the handler is reset by `SA_RESETHAND`).
pub fn catch_stop_signals() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: an all-zero sigaction is valid; the handler only stores to an atomic.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESETHAND;
        // SAFETY: `action` is initialised above; no old action is asked for.
        unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    }
}

/// The stop signal received so far, by name.
pub fn stop_signal() -> Option<&'static str> {
    match STOP_SIGNAL.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        libc::SIGTERM => Some("SIGTERM"),
        libc::SIGINT => Some("SIGINT"),
        _ => Some("a signal"),
    }
}

/// A peer closing while we send must be an error result, not a signal that kills us.
pub fn ignore_sigpipe() {
    // SAFETY: setting SIGPIPE's disposition to SIG_IGN is always valid.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_signal_is_noted_not_fatal() {
        assert_eq!(stop_signal(), None);
        catch_stop_signals();
        // SAFETY: raise(2) has no memory arguments; the handler installed above runs.
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        assert_eq!(stop_signal(), Some("SIGINT"));
        STOP_SIGNAL.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    #[test]
    fn monotonic_clock_advances() {
        let before = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(monotonic_ns() - before >= 2_000_000);
    }

    #[test]
    fn own_cpu_time_is_readable_from_proc() {
        let mut spin = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < 30 {
            spin = spin.wrapping_add(std::hint::black_box(1));
        }
        let (user, system) = other_process_cpu_ns(std::process::id()).expect("own stat readable");
        assert!(user + system > 0, "spun {spin} times and used no CPU?");
        assert!(thread_cpu_ns().0 > 0);
    }
}
