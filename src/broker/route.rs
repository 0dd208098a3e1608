//! Cross-worker routing: where a session or a retained topic lives, and what the workers tell
//! each other.
//!
//! - A session lives on its client id's home worker, `stable_hash(client_id) % workers`; a
//!   CONNECT elsewhere is handed there (see `connect.rs`). The hash is FNV-1a, fixed forever, so
//!   the runtime, tests and every worker agree without talking.
//! - A PUBLISH is matched on the publisher's worker, delivered to its local sessions, and sent as
//!   one [`RemoteMsg::Publish`] to each other worker the index says is interested. A receiving
//!   worker delivers to its local sessions only and never forwards again, so a message crosses
//!   at most one hop and per-publisher order holds (the runtime's pair channels are FIFO).
//! - Interest: a worker tells every other worker when a filter gains its first or loses its
//!   last local subscriber; the receiver records it with `set_remote_interest` and answers
//!   `InterestAck`, which a SUBACK waits for (see `interest.rs`).
//! - Retained messages: every worker keeps a full replica (a new subscription is answered
//!   locally). Updates are serialised through the topic's owner worker,
//!   `stable_hash(topic) % workers`: the publisher's worker sends [`RemoteMsg::Retain`] to the
//!   owner, the owner applies it and broadcasts [`RemoteMsg::RetainApplied`] to all the others,
//!   so every replica applies one topic's updates in the owner's order. A client's QoS 1/2
//!   retained update carries a token that every replica confirms to the publisher's worker
//!   (`RetainAck`), whose PUBACK/PUBREC waits for them (`retain_confirm.rs`).
//!
//! Architecture Invariant: a `RemoteMsg::Publish` is never forwarded by its receiver.

use super::{Action, Broker, ConnId, Message, Millis, RemoteMsg, RetainToken, WorkerId};
use crate::broker::retain::RetainOutcome;

/// FNV-1a, 64 bits: a stable hash of `bytes` (the same in every process and version).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

/// The worker that owns `key` (a client id's session, or a retained topic) among `workers`.
pub fn home_worker(key: &[u8], workers: u16) -> WorkerId {
    assert!(workers > 0, "a broker process has at least one worker");
    WorkerId((stable_hash(key) % u64::from(workers)) as u16)
}

impl Broker {
    /// The workers other than this one, lowest first.
    pub(super) fn other_workers(&self) -> impl Iterator<Item = WorkerId> {
        let me = self.me;
        (0..self.workers).map(WorkerId).filter(move |&worker| worker != me)
    }

    pub(super) fn send_remote(&mut self, to: WorkerId, msg: RemoteMsg) {
        assert!(
            to != self.me && to.0 < self.workers,
            "remote message to {to:?} from {:?}",
            self.me
        );
        self.count_remote_send(to, &msg);
        self.actions.push_back(Action::Remote { to, msg });
    }

    pub(super) fn dispatch_remote(&mut self, from: WorkerId, msg: RemoteMsg, now: Millis) {
        assert!(from != self.me && from.0 < self.workers, "remote message from {from:?}");
        match msg {
            RemoteMsg::Publish(message) => {
                self.count_received(from);
                self.deliver_from_remote(&message, now);
            }
            RemoteMsg::Interest { filter, interested } => {
                self.on_remote_interest(from, &filter, interested);
            }
            RemoteMsg::InterestAck => self.on_interest_ack(from, now),
            RemoteMsg::Retain { message, token } => {
                self.count_received(from);
                self.apply_retained_as_owner(message, from, token, now);
            }
            RemoteMsg::RetainApplied { message, origin, token } => {
                self.store_retained(message, now);
                self.confirm_retained(origin, token);
            }
            RemoteMsg::RetainAck(token) => self.on_retain_confirmed(token),
            RemoteMsg::RetainUnchanged(token) => self.settle_retain_token(token),
            RemoteMsg::Stats(stats) => self.record_worker_stats(from, *stats),
            RemoteMsg::Durable { count } => self.on_remote_durable(from, count, now),
            RemoteMsg::PublishOnce(forwarded) => {
                self.count_received(from);
                if self.accept_forwarded(&forwarded) {
                    self.deliver_from_remote(&forwarded.message, now);
                    self.end_held_route();
                }
            }
            RemoteMsg::Qos2Release { origin, packet_id } => {
                self.count_received(from);
                self.release_forwarded(origin, packet_id);
            }
        }
    }

    /// Starts a retained update for `message` (a PUBLISH with RETAIN=1): applied here if this
    /// worker owns the topic, otherwise sent to the owner, which applies and broadcasts it.
    /// With `ack_for`, the update is one `conn`'s acknowledgement waits for: the result is the
    /// token that every other worker will confirm (`retain_confirm.rs`), or `None` when there
    /// is nothing to wait for (one worker, or an update that changed nothing here, the owner).
    pub(super) fn update_retained(
        &mut self,
        message: &Message,
        ack_for: Option<ConnId>,
        now: Millis,
    ) -> Option<RetainToken> {
        let owner = home_worker(message.topic.as_bytes(), self.workers);
        let mut token =
            ack_for.filter(|_| self.workers > 1).map(|conn| self.new_retain_token(conn));
        if owner == self.me {
            let changed = self.apply_retained_as_owner(message.clone(), self.me, token, now);
            if !changed {
                // Settled already: no replica will confirm an update that changed nothing.
                token = None;
            }
        } else {
            self.send_remote(owner, RemoteMsg::Retain { message: message.clone(), token });
        }
        token
    }

    /// The owner's step: apply to the local replica and, when it changed anything, tell every
    /// other replica to apply the same update, on behalf of `origin` (whose `token` they
    /// confirm). Returns whether anything changed; when nothing did, `token` is settled.
    fn apply_retained_as_owner(
        &mut self,
        message: Message,
        origin: WorkerId,
        token: Option<RetainToken>,
        now: Millis,
    ) -> bool {
        assert_eq!(
            home_worker(message.topic.as_bytes(), self.workers),
            self.me,
            "retained update for {} sent to a worker that does not own it",
            message.topic
        );
        let outcome = self.store_retained(message.clone(), now);
        if matches!(outcome, RetainOutcome::NothingToDelete | RetainOutcome::Full) {
            match token {
                Some(token) if origin == self.me => self.settle_retain_token(token),
                Some(token) => self.send_remote(origin, RemoteMsg::RetainUnchanged(token)),
                None => {}
            }
            return false;
        }
        self.journal_retain(&message, now);
        let others: Vec<WorkerId> = self.other_workers().collect();
        for worker in others {
            let message = message.clone();
            self.send_remote(worker, RemoteMsg::RetainApplied { message, origin, token });
        }
        true
    }

    fn store_retained(&mut self, message: Message, now: Millis) -> RetainOutcome {
        let outcome = self.retained.set(message, now);
        if outcome == RetainOutcome::Full {
            self.stats.retained_refused_full += 1;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // Vectors from the FNV reference (http://www.isthe.com/chongo/tech/comp/fnv/).
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_remote_message_stays_80_bytes() {
        // Every mesh ring slot holds one; the retained update's token and origin fit beside
        // the enum's tag, so confirming retained updates costs no ring memory.
        assert!(std::mem::size_of::<RemoteMsg>() <= 80, "{}", std::mem::size_of::<RemoteMsg>());
    }

    #[test]
    fn home_worker_is_within_range_and_stable() {
        for workers in 1..=8u16 {
            for id in ["a", "client-1", "sensor/42", ""] {
                let home = home_worker(id.as_bytes(), workers);
                assert!(home.0 < workers);
                assert_eq!(home, home_worker(id.as_bytes(), workers));
            }
        }
        assert_eq!(home_worker(b"anything", 1), WorkerId(0));
    }
}
