//! The worker's link to the other workers: where `Action::Remote` and `Action::Handoff` go, and
//! where inbound cross-worker messages come from (phase 3 of the loop turn).
//!
//! This is the one integration point for the mesh (SPSC rings per ordered pair, MSG_RING
//! doorbells, descriptor passing; `spsc.rs`/`mesh.rs`). Until the mesh is wired, only a
//! single-worker runtime exists ([`Peers::solo`]); a lone broker never addresses another
//! worker, so a remote message or a handoff here is a broken invariant.

use crate::broker::{RemoteMsg, WorkerId};

/// What this worker can reach.
#[derive(Debug)]
pub struct Peers {
    me: WorkerId,
}

impl Peers {
    /// The peers of the only worker: none.
    pub fn solo(me: WorkerId) -> Self {
        assert_eq!(me, WorkerId(0), "a solo worker is worker 0");
        Self { me }
    }

    /// Queues `msg` for worker `to`, FIFO per destination.
    pub fn send(&mut self, to: WorkerId, msg: RemoteMsg) {
        panic!(
            "worker {:?} asked to send {msg:?} to {to:?}, but there is no other worker",
            self.me
        );
    }

    /// Delivers up to `budget` inbound messages to `deliver`; returns how many.
    pub fn drain(&mut self, budget: usize, deliver: impl FnMut(WorkerId, RemoteMsg)) -> usize {
        let _ = (budget, deliver);
        0
    }
}
