//! Publisher acknowledgements that wait until a retained update is in effect on every worker.
//!
//! Every worker keeps a full replica of the retained messages, and each topic's updates go
//! through its owner worker (`route.rs`). Acknowledged at once, a retained PUBLISH could be
//! PUBACKed while another worker's replica still lacked it, and a client subscribing there
//! just after the PUBACK would not be sent it [MQTT-3.3.1-6]. So the PUBACK (QoS 1) or PUBREC
//! (QoS 2) of a client's retained PUBLISH is held until every other worker has confirmed that
//! it applied the update, as a SUBACK is held for interest (`interest.rs`):
//!
//! - The publisher's worker (the update's *origin*) names the update with a [`RetainToken`]
//!   and waits for `workers - 1` confirmations. If it owns the topic, it applies the update
//!   and broadcasts `RetainApplied { origin, token }`; every replica applies it and answers
//!   `RetainAck(token)`. Otherwise it sends `Retain { token }` to the owner, which applies it
//!   and broadcasts `RetainApplied` to every other worker: the origin applies that to its own
//!   replica and counts it as the owner's confirmation, the others answer `RetainAck`. An owner
//!   whose store did not change (a delete of nothing, a new topic at `retained_messages_max`)
//!   broadcasts nothing and answers `RetainUnchanged`, which settles the token at once.
//! - The confirmations travel different paths (owner to replica to origin), so each names its
//!   token; counting per channel, as interest acks do, would not tell them apart.
//! - Order [MQTT-4.6.0-2] [MQTT-4.6.0-3]: once a connection has a held acknowledgement, its
//!   later PUBACKs, PUBRECs and PUBCOMPs queue behind it, so they leave in the order of the
//!   packets they answer. Nothing else waits: the message itself is routed to subscribers at
//!   once, and other packets (SUBACK, UNSUBACK, PINGRESP) are answered as usual.
//! - QoS 0 has no acknowledgement to hold, so nothing waits and no confirmation is asked for:
//!   the update reaches every replica within one round trip of the mesh, but nothing tells the
//!   publisher when. A publisher that needs "in effect everywhere once acknowledged" publishes
//!   its retained message at QoS 1 or 2. Wills and `$SYS` (no client acknowledgement) are not
//!   held either.
//! - With one worker the update is applied before the acknowledgement is written: no token.
//! - A connection that closes loses the acknowledgements it was owed, as any output not yet
//!   sent. Its updates still complete on every replica; their tokens keep counting
//!   confirmations (so every confirmation finds its token) and are forgotten at the last one.
//!   A QoS 1 client re-sends after reconnecting, and that copy is held again. A QoS 2 client's
//!   re-sent PUBLISH carries a packet id already stored (Method B, `inflight.rs`), so it is
//!   not routed again; if the first copy's update is still waiting, the new PUBREC waits for
//!   it too (the token is found by session and packet id), else it goes at once. That lookup
//!   lasts only while the session holds the id: a PUBREL, or the session's end, forgets it, so
//!   neither a new publication with the id nor the next session in the slot waits for it.
//!
//! Bounds: a held acknowledgement, and each one queued behind it, is output the broker owes the
//! connection, so its 4 bytes count with the connection's output and held SUBACKs against the
//! control-packet bound, twice `outbuf_bytes_max`. Past it the connection is closed as a slow
//! consumer (counted), as a client that sends without reading is; that is at least
//! 2 x `outbuf_bytes_max` / 4 entries per connection (2 M by default), reached only when the
//! mesh stalls for a long time, since a stalled mesh also pauses reading (`mesh_overflow_max`).
//! Tokens are held only by these entries, plus those of connections closed within the last
//! mesh round trip; the QoS 2 index holds at most one entry per waiting token, and
//! only for ids its session still holds.
//!
//! Invariant: a token waits for at least one confirmation; every confirmation (`RetainAck`,
//! an origin's `RetainApplied`, `RetainUnchanged`) finds its token waiting; a connection's
//! queue is non-empty and its first entry waits for a token.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;

use super::ids::IdBuildHasher;
use super::{Broker, CloseReason, ConnId, RemoteMsg, SessionId, WorkerId};
use crate::protocol::{Packet, PacketId};

/// Names one retained update that a client's acknowledgement waits for, among those its
/// origin worker has in flight.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RetainToken(NonZeroU32);

/// An acknowledgement of the client-to-broker direction, owed to a client.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ack {
    Puback(PacketId),
    Pubrec(PacketId),
    Pubcomp(PacketId),
}

impl Ack {
    fn packet(self) -> Packet {
        match self {
            Self::Puback(id) => Packet::Puback(id),
            Self::Pubrec(id) => Packet::Pubrec(id),
            Self::Pubcomp(id) => Packet::Pubcomp(id),
        }
    }
}

/// The encoded size of every [`Ack`]: fixed header, remaining length 2, packet id.
const ACK_BYTES: usize = 4;

/// An update in flight: the connection whose acknowledgement waits (none once it closed), the
/// confirmations still to come, and, for a QoS 2 PUBLISH, its session and packet id.
#[derive(Debug)]
struct Waiting {
    conn: Option<ConnId>,
    missing: u16,
    qos2: Option<(SessionId, PacketId)>,
}

/// One owed acknowledgement and the update it waits for (none: it waits only for the
/// entries before it).
type HeldAck = (Ack, Option<RetainToken>);

#[derive(Debug, Default)]
pub(super) struct RetainConfirms {
    last_token: u32,
    waiting: HashMap<RetainToken, Waiting, IdBuildHasher>,
    /// Per connection with a held acknowledgement: what it is owed, in order.
    held: HashMap<ConnId, VecDeque<HeldAck>, IdBuildHasher>,
    /// The waiting updates of QoS 2 PUBLISHes, by session and packet id, for a re-sent copy.
    qos2: HashMap<(SessionId, PacketId), RetainToken>,
}

impl RetainConfirms {
    fn next_token(&mut self) -> RetainToken {
        loop {
            self.last_token = self.last_token.wrapping_add(1);
            // A token still waiting after 2^32 - 1 newer ones is skipped, never shared.
            if let Some(token) = NonZeroU32::new(self.last_token).map(RetainToken) {
                if !self.waiting.contains_key(&token) {
                    return token;
                }
            }
        }
    }

    fn forget_qos2(&mut self, session: SessionId, id: PacketId) {
        if self.qos2.is_empty() {
            return; // Every QoS 2 PUBREL asks: most find no retained update waiting at all.
        }
        if let Some(token) = self.qos2.remove(&(session, id)) {
            self.waiting.get_mut(&token).expect("filed tokens wait").qos2 = None;
        }
    }

    fn is_waiting(&self, token: Option<RetainToken>) -> bool {
        token.is_some_and(|token| self.waiting.contains_key(&token))
    }
}

impl Broker {
    /// Starts waiting for `workers - 1` confirmations of an update on behalf of `conn`.
    pub(super) fn new_retain_token(&mut self, conn: ConnId) -> RetainToken {
        assert!(self.workers > 1, "with one worker no retained update is confirmed");
        let token = self.retain_confirms.next_token();
        let waiting = Waiting { conn: Some(conn), missing: self.workers - 1, qos2: None };
        self.retain_confirms.waiting.insert(token, waiting);
        token
    }

    /// Files `token` as the update of QoS 2 packet `id` from `session`, for a re-sent copy.
    pub(super) fn note_qos2_token(&mut self, session: SessionId, id: PacketId, token: RetainToken) {
        let confirms = &mut self.retain_confirms;
        let waiting = confirms.waiting.get_mut(&token).expect("a new token is waiting");
        waiting.qos2 = Some((session, id));
        if let Some(previous) = confirms.qos2.insert((session, id), token) {
            // The id's earlier update (a PUBLISH before PUBREL freed the id) is still waiting.
            if let Some(earlier) = confirms.waiting.get_mut(&previous) {
                earlier.qos2 = None;
            }
        }
    }

    /// Session `session` no longer holds QoS 2 packet `id` (the client released it): a later
    /// PUBLISH with the id is a new publication and must not wait for this one's update. The
    /// update itself still completes; only the lookup for a re-sent copy is forgotten.
    pub(super) fn forget_qos2_token(&mut self, session: SessionId, id: PacketId) {
        self.retain_confirms.forget_qos2(session, id);
    }

    /// Session `session` is being discarded: the next session in its slot must not find its
    /// ids' updates (a re-sent PUBLISH of its own would wait for a stranger's update).
    pub(super) fn forget_session_qos2_tokens(&mut self, session: SessionId) {
        let confirms = &mut self.retain_confirms;
        if confirms.qos2.is_empty() {
            return; // The common case, and no walk over the session's ids.
        }
        for id in self.sessions.get(session).incoming.ids() {
            confirms.forget_qos2(session, id);
        }
    }

    /// The still-waiting update of a re-sent QoS 2 PUBLISH, now answered on `conn`.
    pub(super) fn qos2_token(
        &mut self,
        conn: ConnId,
        session: SessionId,
        id: PacketId,
    ) -> Option<RetainToken> {
        let token = *self.retain_confirms.qos2.get(&(session, id))?;
        let waiting = self.retain_confirms.waiting.get_mut(&token).expect("filed tokens wait");
        waiting.conn = Some(conn);
        Some(token)
    }

    /// Writes `ack` to `conn`, or queues it behind the connection's held acknowledgements.
    pub(super) fn write_ack(&mut self, conn: ConnId, ack: Ack) {
        if self.retain_confirms.held.contains_key(&conn) {
            self.queue_ack(conn, ack, None);
        } else {
            self.write_durable_ack(conn, ack.packet());
        }
    }

    /// Holds `ack` until update `token` is confirmed by every other worker (and the
    /// acknowledgements owed before it have gone).
    pub(super) fn hold_ack(&mut self, conn: ConnId, ack: Ack, token: RetainToken) {
        if self.queue_ack(conn, ack, Some(token)) {
            self.stats.retained_acks_held += 1;
        } else if let Some(waiting) = self.retain_confirms.waiting.get_mut(&token) {
            // The connection is closing: nothing waits for the token any more.
            waiting.conn = None;
        }
    }

    /// Appends to `conn`'s held acknowledgements; false if the connection is unknown or past
    /// its control-packet bound (then it is closed as a slow consumer).
    fn queue_ack(&mut self, conn: ConnId, ack: Ack, token: Option<RetainToken>) -> bool {
        let Some(state) = self.conns.get(&conn) else {
            return false;
        };
        let queued = self.retain_confirms.held.get(&conn).map_or(0, VecDeque::len);
        let owed = state.pending_bytes() + state.held_suback_bytes() + queued * ACK_BYTES;
        if owed + ACK_BYTES > self.config.outbuf_bytes_max.saturating_mul(2) {
            self.pending_closes.push_back((conn, CloseReason::SlowConsumer));
            return false;
        }
        let queue = self.retain_confirms.held.entry(conn).or_default();
        queue.push_back((ack, token));
        let first = queue[0].1;
        // Only a waiting token starts a queue; an entry behind one needs none.
        assert!(self.retain_confirms.is_waiting(first), "{conn:?}'s first held ack waits");
        true
    }

    /// One more worker applied update `token`; at the last one, its acknowledgement may go.
    pub(super) fn on_retain_confirmed(&mut self, token: RetainToken) {
        let waiting = self.retain_confirms.waiting.get_mut(&token);
        let waiting = waiting.unwrap_or_else(|| panic!("confirmation of {token:?}, not waiting"));
        waiting.missing -= 1;
        if waiting.missing == 0 {
            self.settle_retain_token(token);
        }
    }

    /// Update `token` needs no more confirmations: release what waited for it.
    pub(super) fn settle_retain_token(&mut self, token: RetainToken) {
        let waiting = self.retain_confirms.waiting.remove(&token);
        let waiting = waiting.unwrap_or_else(|| panic!("{token:?} settled, not waiting"));
        if let Some(key) = waiting.qos2 {
            self.retain_confirms.qos2.remove(&key);
        }
        if let Some(conn) = waiting.conn {
            self.release_acks(conn);
        }
    }

    /// Writes `conn`'s held acknowledgements from the front while nothing holds them.
    fn release_acks(&mut self, conn: ConnId) {
        let Some(mut queue) = self.retain_confirms.held.remove(&conn) else {
            return;
        };
        while let Some(&(ack, token)) = queue.front() {
            if self.retain_confirms.is_waiting(token) {
                self.retain_confirms.held.insert(conn, queue);
                return;
            }
            queue.pop_front();
            self.write_durable_ack(conn, ack.packet());
        }
    }

    /// Forgets the acknowledgements a closing connection was owed; its tokens keep counting.
    pub(super) fn drop_held_acks(&mut self, conn: ConnId) {
        let Some(queue) = self.retain_confirms.held.remove(&conn) else {
            return;
        };
        for token in queue.into_iter().filter_map(|(_, token)| token) {
            if let Some(waiting) = self.retain_confirms.waiting.get_mut(&token) {
                waiting.conn = None;
            }
        }
    }

    /// A replica's step for an update another worker broadcast: confirm it to its origin,
    /// or count it as the owner's confirmation when this worker is the origin.
    pub(super) fn confirm_retained(&mut self, origin: WorkerId, token: Option<RetainToken>) {
        let Some(token) = token else {
            return;
        };
        if origin == self.me {
            self.on_retain_confirmed(token);
        } else {
            self.send_remote(origin, RemoteMsg::RetainAck(token));
        }
    }

    /// Acknowledgements held or queued behind a held one, on every connection.
    pub fn held_ack_count(&self) -> usize {
        self.retain_confirms.held.values().map(VecDeque::len).sum()
    }

    /// Retained updates started here still waiting for some worker's confirmation.
    pub fn unconfirmed_retained_count(&self) -> usize {
        self.retain_confirms.waiting.len()
    }
}
