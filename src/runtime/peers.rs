//! The worker's link to the other workers: where `Action::Remote` and `Action::Handoff` go,
//! and where inbound cross-worker items come from (phase 3 of the loop turn).
//!
//! It wraps the mesh ([`super::mesh`]: an SPSC ring per ordered pair, overflow with
//! backpressure, the sleeping-flag wake protocol) and the descriptor handoff pairing
//! ([`super::msg_ring`]). A single-worker runtime has no mesh ([`Peers::solo`]): a lone broker
//! never addresses another worker, so a remote item there is a broken invariant.
//!
//! A handoff record travels on the SPSC ring, its direct descriptor by MSG_RING; both carry
//! the same [`HandoffKey`], and the receiving side pairs them in either order.

use std::os::fd::RawFd;

use bytes::BytesMut;

use super::mesh::{Backpressure, MeshEnd, MeshStats};
use super::msg_ring::{HandoffKey, HandoffKeys, HandoffPairing};
use crate::broker::{RemoteMsg, WorkerId};
use crate::protocol::Connect;

/// What travels between workers.
#[derive(Debug)]
pub enum MeshItem {
    Remote(RemoteMsg),
    /// Inline: the record's CONNECT is boxed (as `Packet::Connect` is), so a record is smaller
    /// than a remote message, and every slot of every mesh ring is sized for the largest
    /// variant.
    Handoff(HandoffRecord),
}

/// A connection moving to its session's home worker: its CONNECT and the bytes read after it.
#[derive(Debug)]
pub struct HandoffRecord {
    pub key: HandoffKey,
    pub connect: Box<Connect>,
    pub leftover: BytesMut,
    /// Its TLS / WebSocket state, which the home worker continues.
    pub layers: Option<Box<crate::transport::Layered>>,
    /// The peer's address, learned on the accepting worker (boxed: the record must stay no
    /// larger than a remote message).
    pub peer: Option<Box<crate::broker::PeerAddr>>,
}

/// An inbound item, as phase 3 hands it to the worker.
#[derive(Debug)]
pub enum Inbound {
    Remote(WorkerId, RemoteMsg),
    /// A handed-off connection whose descriptor (now in `slot`) and record have both arrived.
    Adopt(u32, HandoffRecord),
}

/// What this worker can reach.
#[derive(Debug)]
pub struct Peers {
    mesh: Option<MeshEnd<MeshItem>>,
    keys: HandoffKeys,
    pairing: HandoffPairing<HandoffRecord>,
}

impl Peers {
    /// The peers of the only worker: none.
    pub fn solo(me: WorkerId) -> Self {
        assert_eq!(me, WorkerId(0), "a solo worker is worker 0");
        Self { mesh: None, keys: HandoffKeys::new(me), pairing: HandoffPairing::new(0) }
    }

    /// The peers reachable through `mesh`; `file_table_slots` bounds pending handoffs.
    pub fn meshed(mesh: MeshEnd<MeshItem>, file_table_slots: u32) -> Self {
        let keys = HandoffKeys::new(mesh.worker());
        Self { mesh: Some(mesh), keys, pairing: HandoffPairing::new(file_table_slots as usize) }
    }

    fn mesh(&mut self) -> &mut MeshEnd<MeshItem> {
        self.mesh
            .as_mut()
            .unwrap_or_else(|| panic!("a cross-worker item in a single-worker runtime"))
    }

    /// Publishes this worker's ring for its peers' doorbells and handoffs.
    pub fn register_ring_fd(&self, ring_fd: RawFd) {
        if let Some(mesh) = &self.mesh {
            mesh.register_ring_fd(ring_fd);
        }
    }

    /// The ring of worker `to`, for a handoff's MSG_RING.
    pub fn ring_fd(&self, to: WorkerId) -> RawFd {
        let mesh =
            self.mesh.as_ref().unwrap_or_else(|| panic!("handoff in a single-worker runtime"));
        mesh.ring_fd(to).unwrap_or_else(|| panic!("worker {to:?} has no ring fd registered"))
    }

    /// Queues `msg` for worker `to`, FIFO per destination; visible at the next `flush`.
    pub fn send(&mut self, to: WorkerId, msg: RemoteMsg) -> Backpressure {
        self.mesh().push(to, MeshItem::Remote(msg))
    }

    /// Queues a handoff record for worker `to` (after its descriptor arrived there).
    pub fn send_record(&mut self, to: WorkerId, record: HandoffRecord) -> Backpressure {
        self.mesh().push(to, MeshItem::Handoff(record))
    }

    pub fn next_handoff_key(&mut self) -> HandoffKey {
        self.keys.next_key()
    }

    /// A handed-off descriptor arrived in `slot`; returns the pair if its record is here.
    pub fn on_handoff_slot(&mut self, key: HandoffKey, slot: u32) -> Option<(u32, HandoffRecord)> {
        self.pairing.on_slot(key, slot)
    }

    /// Up to `max_per_peer` items from each peer, in order per peer, each turned into what the
    /// worker acts on (a record waiting for its descriptor is kept back).
    pub fn drain(&mut self, max_per_peer: usize, mut each: impl FnMut(Inbound)) -> usize {
        let Some(mesh) = self.mesh.as_mut() else { return 0 };
        let pairing = &mut self.pairing;
        mesh.drain(max_per_peer, |from, item| match item {
            MeshItem::Remote(msg) => each(Inbound::Remote(from, msg)),
            MeshItem::Handoff(record) => {
                if let Some((slot, record)) = pairing.on_record(record.key, record) {
                    each(Inbound::Adopt(slot, record));
                }
            }
        })
    }

    /// End of turn: publishes what was pushed and calls `doorbell(ring_fd)` for each peer to
    /// wake.
    pub fn flush(&mut self, mut doorbell: impl FnMut(RawFd)) {
        if let Some(mesh) = self.mesh.as_mut() {
            mesh.flush(|_, fd| doorbell(fd));
        }
    }

    /// Whether the worker may sleep; if true, call [`Self::woke`] after the wait.
    pub fn prepare_to_sleep(&mut self) -> bool {
        self.mesh.as_mut().is_none_or(MeshEnd::prepare_to_sleep)
    }

    pub fn woke(&mut self) {
        if let Some(mesh) = self.mesh.as_mut() {
            mesh.woke();
        }
    }

    /// True while a peer's overflow is at its bound: stop reading from connections.
    pub fn is_backpressured(&self) -> bool {
        self.mesh.as_ref().is_some_and(MeshEnd::is_backpressured)
    }

    /// Descriptors that arrived without their record, to close at shutdown.
    pub fn take_unpaired_slots(&mut self) -> Vec<u32> {
        self.pairing.take_unpaired_slots()
    }

    pub fn stats(&self) -> Option<MeshStats> {
        self.mesh.as_ref().map(|mesh| *mesh.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot of every mesh ring (workers² of them, each `mesh_ring_depth` deep) is sized
    /// for the largest item, so the item must stay as small as a remote message.
    #[test]
    fn a_mesh_item_is_no_larger_than_a_remote_message() {
        assert!(std::mem::size_of::<HandoffRecord>() <= std::mem::size_of::<RemoteMsg>());
        assert_eq!(std::mem::size_of::<MeshItem>(), std::mem::size_of::<RemoteMsg>());
    }
}
