//! Cross-worker interest, and the SUBACKs that wait until every other worker knows it.
//!
//! A worker tells every other worker when a filter gains its first local subscriber or loses
//! its last (`RemoteMsg::Interest`); each receiver applies it to its index and answers
//! `RemoteMsg::InterestAck`. The pair channels are FIFO both ways, so the ack proves the peer
//! applied the interest before anything it publishes afterwards: from then on, it forwards
//! matching messages here.
//!
//! A SUBACK is therefore held until every other worker has acknowledged each interest the
//! SUBSCRIBE depends on — the one it started (its filter's first local subscriber) or one still
//! in flight for a filter it touched. Otherwise a client could read its SUBACK, and a publisher
//! on another worker could then publish a message that is acknowledged to the publisher and
//! never reaches the subscriber, against [MQTT-4.5.0-1]. A SUBACK whose filters are known
//! everywhere goes out at once, and with one worker nothing ever waits.
//!
//! - Broadcasts are numbered 1, 2, … (each goes to every other worker), and each peer's acks
//!   are counted; broadcast `n` is *confirmed* once every peer has acknowledged `n` of them.
//!   Acks name no filter or connection: counting suffices because the channels are FIFO.
//! - A held SUBACK waits for one broadcast number. The SUBACKs of one connection keep their
//!   order (a later SUBACK never overtakes an earlier one, as in a single-worker broker): each
//!   waits for at least what the one before it waits for, so one ordered map, keyed
//!   (number, arrival), releases them in each connection's order.
//! - Only the SUBACK (and the retained messages that follow it, see `subscribe.rs`) waits.
//!   Later packets of the connection are handled as usual, and live messages matching the new
//!   subscription may be delivered before its SUBACK, which [MQTT-3.8.4] permits ("The Server
//!   is permitted to start sending PUBLISH packets matching the Subscription before the Server
//!   sends the SUBACK Packet").
//! - A connection that closes takes its held SUBACKs with it; an ack arriving afterwards
//!   releases the others and finds nothing of it.
//!
//! Bounds: a held SUBACK is output the broker owes the connection, so its bytes, and those of
//! the granted filters whose retained messages follow it, count with the connection's output
//! against the control-packet bound, twice `outbuf_bytes_max`; past it the connection is
//! closed as a slow consumer (as a client that sends without reading is). So the held table
//! holds at most 2 x `outbuf_bytes_max` bytes of answers, and at most 2 x `outbuf_bytes_max`
//! / 5 entries, per connection (5 bytes is the smallest SUBACK). The unconfirmed-filter map holds only filters with local subscribers
//! (an entry goes when the filter's last subscriber does), so it is bounded by the
//! subscriptions held: `sessions_max` x `subscriptions_per_session_max`.
//!
//! Invariant: for each peer, acks received <= broadcasts sent; a held SUBACK's connection is
//! known and lists the SUBACK's key among its held SUBACKs, in the map's order.

use std::collections::{BTreeMap, HashMap};

use super::connection::Phase;
use super::subscribe::SubscribeAnswer;
use super::{Broker, CloseReason, ConnId, Millis, RemoteMsg, WorkerId};
use crate::protocol::TopicFilter;

/// A held SUBACK's place: the broadcast it waits for, then its arrival number.
pub(super) type HeldKey = (u64, u64);

#[derive(Debug)]
struct HeldSuback {
    conn: ConnId,
    answer: SubscribeAnswer,
    bytes: usize,
}

/// What one worker knows of its own interest broadcasts.
#[derive(Debug)]
pub(super) struct InterestState {
    /// Broadcasts sent so far; the last one's number.
    sent: u64,
    /// Per worker (by index): how many of this worker's broadcasts it acknowledged.
    acked: Vec<u64>,
    /// Filters whose `interested` broadcast is not yet confirmed, with its number.
    unconfirmed: HashMap<TopicFilter, u64>,
    unconfirmed_by_number: BTreeMap<u64, TopicFilter>,
    held: BTreeMap<HeldKey, HeldSuback>,
    arrivals: u64,
}

impl InterestState {
    pub fn new(workers: u16) -> Self {
        Self {
            sent: 0,
            acked: vec![0; usize::from(workers)],
            unconfirmed: HashMap::new(),
            unconfirmed_by_number: BTreeMap::new(),
            held: BTreeMap::new(),
            arrivals: 0,
        }
    }

    /// The highest broadcast number every other worker has acknowledged.
    fn confirmed(&self, me: WorkerId) -> u64 {
        let peers = self.acked.iter().enumerate().filter(|&(index, _)| index != me.index());
        peers.map(|(_, &acked)| acked).min().unwrap_or(self.sent)
    }

    /// The broadcast a SUBSCRIBE touching `filter` (not as its first subscriber) waits for.
    fn pending_for(&self, filter: &TopicFilter) -> u64 {
        self.unconfirmed.get(filter).copied().unwrap_or(0)
    }

    fn forget_unconfirmed(&mut self, filter: &TopicFilter) {
        if let Some(number) = self.unconfirmed.remove(filter) {
            self.unconfirmed_by_number.remove(&number);
        }
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    pub fn unconfirmed_len(&self) -> usize {
        self.unconfirmed.len()
    }
}

impl Broker {
    /// Tells every other worker that this one now has (or no longer has) local subscribers of
    /// `filter`. Returns the broadcast's number: what a SUBACK depending on it waits for
    /// (0 with one worker: nothing to wait for).
    pub(super) fn broadcast_interest(&mut self, filter: &TopicFilter, interested: bool) -> u64 {
        if self.workers == 1 {
            return 0;
        }
        let state = &mut self.interest;
        state.sent += 1;
        let number = state.sent;
        state.forget_unconfirmed(filter);
        if interested {
            state.unconfirmed.insert(filter.clone(), number);
            state.unconfirmed_by_number.insert(number, filter.clone());
        }
        let others: Vec<WorkerId> = self.other_workers().collect();
        for worker in others {
            let msg = RemoteMsg::Interest { filter: filter.clone(), interested };
            self.send_remote(worker, msg);
        }
        number
    }

    /// The broadcast a SUBSCRIBE that touched `filter` without starting its interest waits
    /// for: the filter's unconfirmed one, if any.
    pub(super) fn interest_pending_for(&self, filter: &TopicFilter) -> u64 {
        self.interest.pending_for(filter)
    }

    /// A peer's interest change: apply it, then acknowledge it (after: FIFO makes the ack
    /// mean "applied").
    pub(super) fn on_remote_interest(
        &mut self,
        from: WorkerId,
        filter: &TopicFilter,
        interested: bool,
    ) {
        self.subscriptions.set_remote_interest(filter, from, interested);
        self.send_remote(from, RemoteMsg::InterestAck);
    }

    /// A peer applied one more of this worker's broadcasts: release what is now confirmed.
    pub(super) fn on_interest_ack(&mut self, from: WorkerId, now: Millis) {
        let state = &mut self.interest;
        state.acked[from.index()] += 1;
        assert!(
            state.acked[from.index()] <= state.sent,
            "{from:?} acknowledged more interest broadcasts than {:?} sent",
            self.me
        );
        let confirmed = state.confirmed(self.me);
        while let Some(entry) = state.unconfirmed_by_number.first_entry() {
            if *entry.key() > confirmed {
                break;
            }
            let filter = entry.remove();
            state.unconfirmed.remove(&filter);
        }
        self.release_subacks(confirmed, now);
    }

    /// Holds `answer` if the SUBACK must wait for broadcast `waits_for` or for an earlier
    /// held SUBACK of the connection; returns it if it may go now. Past the connection's
    /// control-output bound it is neither: the connection is closed as a slow consumer.
    pub(super) fn hold_suback(
        &mut self,
        conn: ConnId,
        answer: SubscribeAnswer,
        waits_for: u64,
    ) -> Option<SubscribeAnswer> {
        let confirmed = self.interest.confirmed(self.me);
        let state = self.conns.get_mut(&conn).expect("a subscribing connection is known");
        let behind = state.newest_held_suback();
        if waits_for <= confirmed && behind == 0 {
            return Some(answer);
        }
        let bytes = answer.held_bytes();
        let owed = state.pending_bytes() + state.held_suback_bytes() + bytes;
        if owed > self.config.outbuf_bytes_max.saturating_mul(2) {
            self.pending_closes.push_back((conn, CloseReason::SlowConsumer));
            return None;
        }
        self.interest.arrivals += 1;
        // Never ahead of an earlier held SUBACK of this connection (order); never 0 (held).
        let key = (waits_for.max(behind).max(1), self.interest.arrivals);
        state.hold_suback(key, bytes);
        self.interest.held.insert(key, HeldSuback { conn, answer, bytes });
        self.stats.subacks_held += 1;
        None
    }

    /// Completes every held SUBACK waiting for a broadcast at or below `confirmed`, in order.
    fn release_subacks(&mut self, confirmed: u64, now: Millis) {
        while let Some(entry) = self.interest.held.first_entry() {
            if entry.key().0 > confirmed {
                break;
            }
            let key = *entry.key();
            let held = entry.remove();
            let state =
                self.conns.get_mut(&held.conn).expect("a held SUBACK's connection is known");
            state.release_suback(key, held.bytes);
            let Phase::Active(session) = state.phase else {
                unreachable!("only a connection with a session subscribes")
            };
            self.complete_subscribe(held.conn, session, held.answer, now);
        }
    }

    /// Forgets the SUBACKs a closing connection was still owed.
    pub(super) fn drop_held_subacks(&mut self, keys: impl IntoIterator<Item = HeldKey>) {
        for key in keys {
            let removed = self.interest.held.remove(&key);
            assert!(removed.is_some(), "a connection listed a SUBACK that was not held");
        }
    }

    /// SUBACKs waiting for other workers to confirm an interest.
    pub fn held_suback_count(&self) -> usize {
        self.interest.held_len()
    }

    /// Filters whose first local subscriber's interest is not yet confirmed by every worker.
    pub fn unconfirmed_interest_count(&self) -> usize {
        self.interest.unconfirmed_len()
    }
}
