//! Password verification off the ring loop.
//!
//! One `$7$` verification costs ~0.1-0.2 ms at 101 PBKDF2 iterations and ~1.5 ms at 1000
//! (docs/ARCHITECTURE.md, "Authentication"): run inline, every login would stall every other
//! connection of the worker for that long. So a worker that decodes a CONNECT asks the broker
//! whether it needs a hash (`Broker::connect_needs_verification`); if so it sends the job to
//! the verifier threads over a bounded queue, keeps the CONNECT aside, and stops decoding that
//! connection (`Conn::verify_pending`: later packets wait as input). A verifier thread runs the
//! job and posts the verdict to the worker's inbox, waking it through the eventfd it keeps a
//! read armed on (the one stops and reloads use); the worker then hands the CONNECT and the
//! verdict to the broker (`Broker::handle_connect_verified`) and decodes what followed.
//!
//! Bounds: the queue holds `auth_verify_queue_max` jobs; when it is full the CONNECT is
//! refused with 0x03 "server unavailable" (counted) rather than queued without limit. A verdict
//! for a connection that closed meanwhile is dropped. With `auth_verify_threads = 0`
//! verification runs inline (for tests and tiny deployments).

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::signals::StopWatch;
use super::worker::Worker;
use crate::auth::FailureLimiter;
use crate::broker::{ConnId, Millis, Verdict, VerifyJob};
use crate::protocol::{Connect, Packet};

/// A verification for worker `worker`'s connection `conn`.
#[derive(Debug)]
pub struct Job {
    pub worker: usize,
    pub conn: ConnId,
    pub job: VerifyJob,
}

/// A verdict on its way back to its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub conn: ConnId,
    pub verdict: Verdict,
    /// The generation of the tables the password was checked against.
    pub generation: u64,
}

/// The verifier threads and the sending side of their queue.
#[derive(Debug)]
pub struct VerifierPool {
    sender: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl VerifierPool {
    /// Starts `threads` verifiers (0: none, verification stays inline) behind a queue of
    /// `queue_max` jobs; each posts verdicts to the `watches` of the workers.
    pub fn start(
        threads: usize,
        queue_max: usize,
        watches: Vec<StopWatch>,
    ) -> std::io::Result<Self> {
        if threads == 0 {
            return Ok(Self { sender: None, threads: Vec::new() });
        }
        let (sender, receiver) = mpsc::sync_channel::<Job>(queue_max);
        let receiver = Arc::new(Mutex::new(receiver));
        let watches = Arc::new(watches);
        let threads = (0..threads)
            .map(|index| {
                let receiver = Arc::clone(&receiver);
                let watches = Arc::clone(&watches);
                std::thread::Builder::new()
                    .name(format!("ringmq-verify{index}"))
                    .spawn(move || verifier_main(&receiver, &watches))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self { sender: Some(sender), threads })
    }

    /// A sender for one worker; `None` when verification runs inline.
    pub fn sender(&self) -> Option<SyncSender<Job>> {
        self.sender.clone()
    }

    /// Closes the queue (the workers' senders must be gone too) and waits for the threads.
    pub fn join(mut self) {
        self.sender = None;
        for thread in self.threads.drain(..) {
            // A verifier only panics on a broken invariant, which its job's worker reports.
            let _ = thread.join();
        }
    }
}

fn verifier_main(receiver: &Mutex<Receiver<Job>>, watches: &[StopWatch]) {
    loop {
        // The lock is held only while taking a job, not while hashing.
        let job = receiver.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Job { worker, conn, job }) = job else {
            return; // every sender is gone: the broker is stopping
        };
        let verdict = job.run();
        let generation = job.tables.generation;
        watches[worker].post_verified(Verified { conn, verdict, generation });
    }
}

/// The failed-login limiter all workers share (one limit per source address across them;
/// `auth::limiter`), its hash seeded at random so its layout cannot be aimed at.
pub(super) fn shared_failure_limiter(
    broker: &crate::broker::BrokerConfig,
) -> anyhow::Result<Arc<FailureLimiter>> {
    let seed = getrandom::u64().map_err(|error| anyhow::anyhow!("no random seed: {error}"))?;
    Ok(Arc::new(FailureLimiter::new(broker.limiter_config(), seed)))
}

impl Worker {
    /// Gives the broker a decoded CONNECT: through a verifier when it needs a password hash,
    /// otherwise at once.
    pub(super) fn feed_connect(&mut self, id: ConnId, connect: Box<Connect>, now: Millis) {
        if self.identity_is_the_credential(id.slot()) {
            self.broker.handle_connect_with_certificate(id, connect, now);
            return;
        }
        if let Some(sender) = &self.verifier {
            if let Some(job) = self.broker.connect_needs_verification(id, &connect, now) {
                match sender.try_send(Job { worker: usize::from(self.index), conn: id, job }) {
                    Ok(()) => {
                        self.counters.verifications_queued += 1;
                        if let Some(conn) = self.conns.get_mut(id) {
                            conn.verify_pending = true;
                        }
                        let previous = self.verifying.insert(id, connect);
                        assert!(previous.is_none(), "{id:?} verifying two CONNECTs");
                        return;
                    }
                    Err(TrySendError::Full(_)) => {
                        self.counters.verify_queue_full += 1;
                        self.broker.handle_connect_verified(id, connect, Verdict::Unavailable, now);
                        return;
                    }
                    // The verifiers are gone (stopping): check inline.
                    Err(TrySendError::Disconnected(_)) => {}
                }
            }
        }
        self.broker.handle_packet(id, Packet::Connect(connect), now);
    }

    /// A verdict came back: the CONNECT goes to the broker, then what followed it. A verdict
    /// against tables a reload has replaced meanwhile is not used: the CONNECT is checked again
    /// against the new ones (its user may have been deleted or its password changed, and a
    /// reload must not let in what it revoked).
    pub(super) fn on_verified(&mut self, verified: Verified, now: Millis) {
        let Some(connect) = self.verifying.remove(&verified.conn) else { return };
        let id = verified.conn;
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.verify_pending = false;
        if !conn.broker_knows {
            return;
        }
        let current = self.broker.auth_tables().generation;
        if verified.generation != current && verified.verdict != Verdict::Unavailable {
            tracing::info!(conn = ?id, "a password verified against reloaded tables: checking again");
            self.feed_connect(id, connect, now);
            self.after_verified(id, now);
            return;
        }
        self.broker.handle_connect_verified(id, connect, verified.verdict, now);
        self.after_verified(id, now);
    }

    /// After a CONNECT went on: the broker's actions, then the packets that followed it.
    fn after_verified(&mut self, id: ConnId, now: Millis) {
        self.apply_actions(now);
        if self.conns.get_mut(id).is_some_and(|conn| !conn.input.is_empty()) {
            self.decode_input(id, now);
        }
    }
}
