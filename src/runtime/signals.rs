//! Signals and the workers' control channel: SIGINT/SIGTERM stop the broker, SIGHUP reloads
//! (`reload.rs`).
//!
//! The signals are blocked in every thread (the mask is set before the workers are spawned and
//! inherited), and the main thread takes them synchronously with `sigwait`, so no handler runs
//! on a worker's stack and no ring operation is interrupted. A stop sets a shared flag and
//! writes each worker's eventfd, which the worker keeps a read armed on through its ring: the
//! wake-up arrives as an ordinary completion, and no worker polls for the flag. A reload puts
//! its values in each worker's inbox (a mutex only the main thread and that worker's wake-up
//! handler take) and writes the same eventfd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::reload::Reloaded;
use super::verify::Verified;

/// What waits for one worker besides a stop: reloaded values and password verdicts.
#[derive(Debug, Default)]
struct Mail {
    reloads: Vec<Reloaded>,
    verified: Vec<Verified>,
}

type Inbox = Arc<Mutex<Mail>>;

/// The process-wide stop request, and one wake-up descriptor and reload inbox per worker.
#[derive(Debug)]
pub struct Stopper {
    requested: Arc<AtomicBool>,
    wakers: Vec<Arc<OwnedFd>>,
    inboxes: Vec<Inbox>,
}

/// One worker's side of the stop request and of reloads.
#[derive(Clone, Debug)]
pub struct StopWatch {
    requested: Arc<AtomicBool>,
    waker: Arc<OwnedFd>,
    inbox: Inbox,
}

/// Reloads waiting per worker are few (one per source per SIGHUP); more means a worker is not
/// running its loop, and older values are superseded anyway.
const INBOX_MAX: usize = 64;

impl Stopper {
    pub fn new(workers: usize) -> io::Result<Self> {
        let wakers = (0..workers).map(|_| eventfd().map(Arc::new)).collect::<io::Result<_>>()?;
        let inboxes = (0..workers).map(|_| Inbox::default()).collect();
        Ok(Self { requested: Arc::new(AtomicBool::new(false)), wakers, inboxes })
    }

    pub fn watch(&self, worker: usize) -> StopWatch {
        StopWatch {
            requested: Arc::clone(&self.requested),
            waker: Arc::clone(&self.wakers[worker]),
            inbox: Arc::clone(&self.inboxes[worker]),
        }
    }

    /// Asks every worker to stop; idempotent.
    pub fn stop(&self) {
        self.requested.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Gives every worker a reloaded value and wakes it; it applies the value between two
    /// loop turns.
    pub fn deliver(&self, value: &Reloaded) {
        for inbox in &self.inboxes {
            let mut inbox = inbox.lock().unwrap_or_else(PoisonError::into_inner);
            if inbox.reloads.len() >= INBOX_MAX {
                // Only the newest value of each source matters; keep the bound.
                inbox.reloads.remove(0);
            }
            inbox.reloads.push(value.clone());
        }
        self.wake_all();
    }

    fn wake_all(&self) {
        for waker in &self.wakers {
            wake(waker);
        }
    }

    /// A handle that wakes worker `worker` without asking it to stop: its wake-up read
    /// completes, and it then looks at its control queue (`ops_link`).
    pub fn waker(&self, worker: usize) -> Waker {
        Waker(Arc::clone(&self.wakers[worker]))
    }
}

/// Wakes one worker through its eventfd; see [`Stopper::waker`].
#[derive(Clone, Debug)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    pub fn wake(&self) {
        wake(&self.0);
    }
}

fn wake(eventfd: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
    let written = unsafe { libc::write(eventfd.as_raw_fd(), (&raw const one).cast(), 8) };
    // EAGAIN means the counter is already at its maximum: the worker is woken anyway.
    assert!(written == 8 || io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN));
}

impl StopWatch {
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// The reloaded values delivered since the last call, oldest first.
    pub fn take_reloads(&self) -> Vec<Reloaded> {
        std::mem::take(&mut self.inbox.lock().unwrap_or_else(PoisonError::into_inner).reloads)
    }

    /// The password verdicts posted since the last call.
    pub fn take_verified(&self) -> Vec<Verified> {
        std::mem::take(&mut self.inbox.lock().unwrap_or_else(PoisonError::into_inner).verified)
    }

    /// Posts a verdict for this worker and wakes it (from a verifier thread). Bounded by the
    /// verifier queue: at most `auth_verify_queue_max` jobs are out at once.
    pub fn post_verified(&self, verified: Verified) {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner).verified.push(verified);
        wake(&self.waker);
    }

    /// The eventfd to keep a read armed on.
    pub fn fd(&self) -> RawFd {
        self.waker.as_raw_fd()
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) has no memory arguments; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; the adds name valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it spawns after.
pub fn block() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not wanted.
    let result = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if result != 0 {
        return Err(io::Error::from_raw_os_error(result));
    }
    Ok(())
}

/// What the main thread was asked to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Signal {
    /// SIGINT or SIGTERM (named).
    Stop(&'static str),
    /// SIGHUP.
    Reload,
}

/// Waits up to `timeout` for SIGINT, SIGTERM or SIGHUP; `None` when the time passed without
/// one.
pub fn wait_for_signal(timeout: std::time::Duration) -> io::Result<Option<Signal>> {
    let set = signal_set();
    let timespec = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is initialised and blocked (by `block`); no siginfo is asked for.
    let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timespec) };
    match signal {
        libc::SIGINT => Ok(Some(Signal::Stop("SIGINT"))),
        libc::SIGTERM => Ok(Some(Signal::Stop("SIGTERM"))),
        libc::SIGHUP => Ok(Some(Signal::Reload)),
        _ => {
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(None),
                _ => Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(fd: RawFd) -> Option<u64> {
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into a live u64.
        let read = unsafe { libc::read(fd, (&raw mut value).cast(), 8) };
        (read == 8).then_some(value)
    }

    #[test]
    fn stop_sets_the_flag_and_wakes_every_worker_once() {
        let stopper = Stopper::new(2).expect("eventfds");
        let watches = [stopper.watch(0), stopper.watch(1)];
        assert!(!watches[0].requested());
        stopper.stop();
        stopper.stop();
        for watch in &watches {
            assert!(watch.requested());
            assert_eq!(counter(watch.fd()), Some(2), "both stops accumulate in one wake-up");
            assert_eq!(counter(watch.fd()), None, "nothing more to read");
        }
    }

    #[test]
    fn a_reload_reaches_every_inbox_and_wakes_every_worker() {
        let stopper = Stopper::new(2).expect("eventfds");
        let watches = [stopper.watch(0), stopper.watch(1)];
        let tables = Arc::new(crate::auth::AuthTables { generation: 5, ..Default::default() });
        stopper.deliver(&Reloaded::Auth(tables));
        for watch in &watches {
            assert!(!watch.requested(), "a reload is not a stop");
            assert_eq!(counter(watch.fd()), Some(1));
            let taken = watch.take_reloads();
            assert!(matches!(taken.as_slice(), [Reloaded::Auth(t)] if t.generation == 5));
            assert!(watch.take_reloads().is_empty());
        }
    }
}
