//! The worker's connection table: an entry per slot of its rings' direct file tables (the
//! range grows a ring's worth each time the worker adds a ring; entries are allocated in
//! chunks as slots are first used, so a slot never used costs nothing), and the
//! per-connection state machine from accept to the close completion.
//!
//! A connection's slot *is* its direct descriptor's index (over the rings: ring x
//! slots-per-ring + index in that ring's table): the kernel picks it at accept
//! (`IORING_FILE_INDEX_ALLOC`) and cannot hand it out again before our `IORING_OP_CLOSE` on it
//! completes. Close is therefore submitted last, only when no other operation on the slot is
//! in flight, and the entry is freed by the close completion: an entry is never reused while
//! the kernel can still answer for its previous occupant. The generation, bumped at every
//! accept into the slot, makes a stale completion recognisable anyway (counted, dropped).
//!
//! Closing runs in steps, decided by [`Conn::close_step`]: stop reading the input, let the
//! output already taken from the broker leave (bounded by a linger deadline), cancel the
//! multishot receive, and when nothing else is in flight, close the descriptor.

use bytes::BytesMut;

use super::msg_ring::HandoffKey;
use super::send::SendOp;
use crate::broker::{ConnId, PeerAddr, WorkerId};
use crate::protocol::Connect;

/// Where a slot is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// No connection; the kernel may allocate this slot.
    Free,
    /// Receiving and sending.
    Open,
    /// On its way to `IORING_OP_CLOSE`.
    Closing,
    /// Waiting for its receive to stop, then its descriptor goes to another worker (the
    /// final step is the MSG_RING instead of the close; the close follows it).
    HandingOff,
}

/// The next thing a closing connection needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CloseStep {
    /// An operation is in flight (or output is leaving); its completion moves us on.
    Wait,
    /// Output is queued and no send is in flight: start one.
    Send,
    /// The multishot receive is still armed: cancel it.
    CancelRecv,
    /// Nothing in flight: close the descriptor (or, handing off, send it to its worker).
    Close,
}

/// One slot's state.
#[derive(Debug)]
pub struct Conn {
    pub generation: u32,
    pub phase: Phase,
    /// Whether the broker has this connection (between `handle_open` and its `Close` action
    /// or our `handle_closed`).
    pub broker_knows: bool,
    /// The peer can still receive: false after EOF, an error, or a failed send.
    pub peer_alive: bool,
    /// Decoding stopped (after a decode error): further input is dropped.
    pub input_closed: bool,
    pub recv_armed: bool,
    /// The armed receive is a first receive (`Op::FirstRecv`), so a cancel must name that.
    pub recv_first: bool,
    /// A CONNECT was decoded (or came with a handoff): from now on receives are multishot,
    /// from the ring's shared buffers; before, single-shot from its first-receive buffers.
    pub connect_seen: bool,
    /// Waiting in one of the worker's receive queues (first receives, or receives that found
    /// no buffer) for its receive to be armed: nothing else arms it meanwhile.
    pub recv_listed: bool,
    /// The armed receive is a starved receive (`Op::StarvedRecv`, armed by `arm_listed`),
    /// so a cancel must name that.
    pub recv_starved: bool,
    /// Cancels submitted (of the receive, or of a send that outlived its linger time).
    pub cancels_in_flight: u8,
    pub close_in_flight: bool,
    /// In the worker's list of connections with output to start this turn.
    pub flush_listed: bool,
    /// The broker announced output (`Action::Send`) that is not yet taken.
    pub output_announced: bool,
    /// Bytes of a packet not yet complete (none, not even a box, between packets).
    pub input: Input,
    /// Output taken from the broker and the send in flight; `None` when there is none.
    pub send: Option<Box<SendOp>>,
    /// Reading paused by mesh backpressure: the receive is cancelled and not re-armed, and
    /// the input is not decoded, until the worker's peers have room again.
    pub paused: bool,
    /// The peer's address is being asked for (`peer_name.rs`): input is kept, not decoded.
    pub peer_pending: bool,
    /// The CONNECT's password is being verified off the loop (`verify.rs`): likewise.
    pub verify_pending: bool,
    /// Where a `HandingOff` connection goes, and with what.
    pub handoff: Option<Box<PendingHandoff>>,
    /// Its bytes pass through TLS and/or WebSocket layers (kept in the worker's `layers`
    /// map, so a plain connection pays one flag for them).
    pub layered: bool,
}

/// A connection's bytes of a packet not yet complete, boxed: most connections hold none (idle,
/// or between packets), and a slot entry then pays one pointer for them instead of a 32-byte
/// `BytesMut` (72 -> 48 bytes an entry, for every slot a ring has used). The box is made with
/// the first bytes and dropped with the last (`Default`).
#[derive(Debug, Default)]
pub struct Input(Option<Box<BytesMut>>);

impl Input {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|bytes| bytes.is_empty())
    }

    /// The bytes, to append to or decode from (boxed on first use).
    pub fn bytes_mut(&mut self) -> &mut BytesMut {
        self.0.get_or_insert_with(Box::default)
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.bytes_mut().extend_from_slice(bytes);
    }

    /// Takes the bytes out, leaving none.
    pub fn take(&mut self) -> BytesMut {
        self.0.take().map(|bytes| *bytes).unwrap_or_default()
    }
}

impl From<BytesMut> for Input {
    fn from(bytes: BytesMut) -> Self {
        Self((bytes.capacity() > 0).then(|| Box::new(bytes)))
    }
}

/// A connection on its way to its session's home worker.
#[derive(Debug)]
pub struct PendingHandoff {
    pub to: WorkerId,
    pub connect: Box<Connect>,
    pub peer: Option<PeerAddr>,
    /// Set when the descriptor is sent; the record carries it too.
    pub key: Option<HandoffKey>,
    /// Sends of the descriptor the target refused because the ring it published was full
    /// (each retried a turn later, when the target has moved to a ring with room).
    pub refusals: u8,
}

impl Conn {
    pub fn free() -> Self {
        Self {
            generation: 0,
            phase: Phase::Free,
            broker_knows: false,
            peer_alive: false,
            input_closed: false,
            recv_armed: false,
            recv_first: false,
            connect_seen: false,
            recv_listed: false,
            recv_starved: false,
            cancels_in_flight: 0,
            close_in_flight: false,
            flush_listed: false,
            output_announced: false,
            input: Input::default(),
            send: None,
            paused: false,
            peer_pending: false,
            verify_pending: false,
            handoff: None,
            layered: false,
        }
    }

    /// Takes a freed slot for a new connection, with the next generation.
    pub fn open(&mut self) {
        assert_eq!(self.phase, Phase::Free, "accept into a slot that is not free");
        assert!(
            self.send.is_none() && self.input.is_empty() && self.handoff.is_none(),
            "a free slot holds state"
        );
        let generation = self.generation.wrapping_add(1);
        *self = Self { generation, phase: Phase::Open, peer_alive: true, ..Self::free() };
    }

    /// What a cancel of the armed receive names.
    pub fn recv_op(&self) -> super::user_data::Op {
        if self.recv_first {
            super::user_data::Op::FirstRecv
        } else if self.recv_starved {
            super::user_data::Op::StarvedRecv
        } else {
            super::user_data::Op::Recv
        }
    }

    pub fn send_in_flight(&self) -> bool {
        self.send.as_ref().is_some_and(|op| op.in_flight())
    }

    /// Whether some operation on the slot is still in the kernel.
    pub fn any_in_flight(&self) -> bool {
        self.recv_armed
            || self.cancels_in_flight > 0
            || self.close_in_flight
            || self.send_in_flight()
    }

    pub fn close_step(&self) -> CloseStep {
        assert!(
            matches!(self.phase, Phase::Closing | Phase::HandingOff),
            "close_step on {:?}",
            self.phase
        );
        if self.close_in_flight || self.send_in_flight() {
            return CloseStep::Wait;
        }
        let unsent = self.send.as_ref().is_some_and(|op| op.has_unsent());
        if unsent && self.peer_alive {
            return CloseStep::Send;
        }
        if self.cancels_in_flight > 0 {
            return CloseStep::Wait;
        }
        if self.recv_armed {
            return CloseStep::CancelRecv;
        }
        CloseStep::Close
    }

    /// Back to free after the close completed; the generation stays for the next occupant.
    pub fn release(&mut self) -> Option<Box<SendOp>> {
        assert!(!self.any_in_flight(), "release with an operation in flight");
        let op = self.send.take();
        let generation = self.generation;
        *self = Self { generation, ..Self::free() };
        op
    }
}

/// Slots per chunk of the table: a power of two, so a slot's chunk is a shift and its entry a
/// mask. 1024 entries of 48 bytes are 48 KiB, the most a ring's table holds beyond its
/// highest used slot.
const CHUNK_SLOTS: usize = 1024;

/// All slots of one worker, over its rings, plus the count of those in use (in all, and per
/// ring). A slot number is global to the worker: ring `slot / slots_per_ring`, index
/// `slot % slots_per_ring` in that ring's direct file table. The table's range grows one
/// ring's worth of slots at a time ([`Self::add_ring`]), when the worker sets up another ring.
///
/// Entries live in chunks of [`CHUNK_SLOTS`], each allocated when a slot in it is first taken
/// and kept from then on (never moved: a boxed chunk stays where it is when the chunk list
/// grows). So a ring costs no entry for a slot it never used: the kernel allocates a ring's
/// slots from the lowest free one up (a freed slot is the next one it hands out), so the
/// chunks in use follow the most connections the ring ever held at once. A slot whose chunk
/// is not allocated is free, with generation 0, exactly as an allocated free entry starts.
#[derive(Debug)]
pub struct ConnTable {
    /// One per `CHUNK_SLOTS` slots of the range; `None` until a slot in it is first taken.
    chunks: Vec<Option<Box<[Conn]>>>,
    /// Slots in the range: every ring's table.
    slots: u32,
    live: usize,
    slots_per_ring: u32,
    /// Slots in use in each ring's table: open or closing connections, and descriptors handed
    /// to us whose record has not come yet (`land`).
    live_per_ring: Vec<u32>,
}

/// A slot's chunk and its index there.
fn locate(slot: u32) -> (usize, usize) {
    let slot = slot as usize;
    (slot / CHUNK_SLOTS, slot % CHUNK_SLOTS)
}

impl ConnTable {
    /// A table for one ring of `slots_per_ring` slots.
    pub fn new(slots_per_ring: u32) -> Self {
        let mut table = Self {
            chunks: Vec::new(),
            slots: 0,
            live: 0,
            slots_per_ring,
            live_per_ring: Vec::new(),
        };
        table.add_ring();
        table
    }

    /// Room for one more ring's slots; returns that ring's index. Allocates no entry.
    pub fn add_ring(&mut self) -> usize {
        self.slots = self
            .slots
            .checked_add(self.slots_per_ring)
            .unwrap_or_else(|| panic!("more than u32::MAX slots"));
        self.chunks.resize_with((self.slots as usize).div_ceil(CHUNK_SLOTS), || None);
        self.live_per_ring.push(0);
        self.live_per_ring.len() - 1
    }

    /// Every slot of every ring.
    pub fn slots(&self) -> usize {
        self.slots as usize
    }

    /// Slots whose entries are allocated (whole chunks, some beyond the range's end).
    pub fn allocated_slots(&self) -> usize {
        self.chunks.iter().flatten().count() * CHUNK_SLOTS
    }

    pub fn rings(&self) -> usize {
        self.live_per_ring.len()
    }

    pub fn slots_per_ring(&self) -> u32 {
        self.slots_per_ring
    }

    /// Slots not free (open or closing).
    pub fn live(&self) -> usize {
        self.live
    }

    /// Slots not free in ring `ring`'s table.
    pub fn live_in(&self, ring: usize) -> u32 {
        self.live_per_ring[ring]
    }

    /// The ring whose table holds `slot`.
    pub fn ring_of(&self, slot: u32) -> usize {
        (slot / self.slots_per_ring) as usize
    }

    /// The worker-wide slot of index `local` in ring `ring`'s table.
    pub fn global_slot(&self, ring: usize, local: u32) -> u32 {
        assert!(local < self.slots_per_ring, "ring slot {local} beyond the table");
        ring as u32 * self.slots_per_ring + local
    }

    /// A handed-off descriptor landed in `slot` (its record may come later): the kernel's
    /// slot is taken, so the ring's count includes it until [`Self::unland`].
    pub fn land(&mut self, slot: u32) {
        let ring = self.ring_of(slot);
        self.live_per_ring[ring] += 1;
    }

    /// The landed descriptor in `slot` is being opened (which counts it again).
    pub fn unland(&mut self, slot: u32) {
        let ring = self.ring_of(slot);
        assert!(self.live_per_ring[ring] > 0, "unland without land in ring {ring}");
        self.live_per_ring[ring] -= 1;
    }

    pub fn open(&mut self, slot: u32) -> ConnId {
        let ring = self.ring_of(slot);
        let conn = self.slot_mut(slot);
        conn.open();
        let generation = conn.generation;
        self.live += 1;
        self.live_per_ring[ring] += 1;
        ConnId::new(slot, generation)
    }

    pub fn release(&mut self, slot: u32) -> Option<Box<SendOp>> {
        let ring = self.ring_of(slot);
        let conn = self.slot_mut(slot);
        assert_ne!(conn.phase, Phase::Free, "release of a free slot");
        let op = conn.release();
        self.live -= 1;
        self.live_per_ring[ring] -= 1;
        op
    }

    /// The connection `id` names, if the slot still holds that generation and is not free.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        if id.slot() >= self.slots {
            return None;
        }
        let (chunk, index) = locate(id.slot());
        let conn = &mut self.chunks[chunk].as_mut()?[index];
        (conn.generation == id.generation() && conn.phase != Phase::Free).then_some(conn)
    }

    /// The slot's entry, whatever its generation (for completions, which check it); its chunk
    /// is allocated here if no slot in it was used before.
    pub fn slot_mut(&mut self, slot: u32) -> &mut Conn {
        assert!(slot < self.slots, "slot {slot} beyond the table of {}", self.slots);
        let (chunk, index) = locate(slot);
        let entries = self.chunks[chunk]
            .get_or_insert_with(|| std::iter::repeat_with(Conn::free).take(CHUNK_SLOTS).collect());
        &mut entries[index]
    }

    pub fn id_of(&self, slot: u32) -> ConnId {
        assert!(slot < self.slots, "slot {slot} beyond the table of {}", self.slots);
        let (chunk, index) = locate(slot);
        // An unallocated chunk's slots are free entries of generation 0 (`Conn::free`).
        let generation = self.chunks[chunk].as_ref().map_or(0, |entries| entries[index].generation);
        ConnId::new(slot, generation)
    }

    /// Slots that are open, for shutdown.
    pub fn open_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks.iter().enumerate().flat_map(|(chunk, entries)| {
            let entries = entries.iter().flat_map(|entries| entries.iter()).enumerate();
            entries
                .filter(|(_, conn)| conn.phase == Phase::Open)
                .map(move |(index, _)| (chunk * CHUNK_SLOTS + index) as u32)
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::runtime::send::SendPool;

    fn closing() -> Conn {
        let mut conn = Conn::free();
        conn.open();
        conn.recv_armed = true;
        conn.phase = Phase::Closing;
        conn
    }

    #[test]
    fn reuse_bumps_the_generation_so_old_ids_miss() {
        let mut table = ConnTable::new(2);
        let first = table.open(1);
        table.slot_mut(1).phase = Phase::Closing;
        assert!(table.release(1).is_none());
        assert!(table.get_mut(first).is_none(), "a freed slot answers no id");
        let second = table.open(1);
        assert_eq!(first.slot(), second.slot());
        assert_ne!(first.generation(), second.generation());
        assert!(table.get_mut(first).is_none(), "the old id does not reach the new occupant");
        assert!(table.get_mut(second).is_some());
        assert_eq!(table.live(), 1);
    }

    /// Slots are numbered over the rings: each ring's share is counted apart, and a slot of
    /// a ring not yet added does not exist.
    #[test]
    fn slots_span_the_rings_and_are_counted_per_ring() {
        let mut table = ConnTable::new(4);
        assert_eq!((table.slots(), table.rings()), (4, 1));
        assert_eq!(table.add_ring(), 1);
        assert_eq!(table.slots(), 8);
        let slot = table.global_slot(1, 3);
        assert_eq!((slot, table.ring_of(slot)), (7, 1));
        let id = table.open(slot);
        table.open(0);
        assert_eq!((table.live_in(0), table.live_in(1), table.live()), (1, 1, 2));
        table.slot_mut(id.slot()).phase = Phase::Closing;
        table.release(id.slot());
        assert_eq!((table.live_in(0), table.live_in(1), table.live()), (1, 0, 1));
    }

    /// A handed-off descriptor holds its ring's slot from landing to opening, counted once.
    #[test]
    fn a_landed_descriptor_counts_in_its_ring_until_opened() {
        let mut table = ConnTable::new(4);
        table.add_ring();
        table.land(5);
        assert_eq!((table.live_in(1), table.live()), (1, 0), "landed: the ring's slot only");
        table.unland(5);
        table.open(5);
        assert_eq!((table.live_in(1), table.live()), (1, 1));
    }

    #[test]
    #[should_panic(expected = "beyond the table")]
    fn a_ring_slot_beyond_the_ring_is_refused() {
        let table = ConnTable::new(4);
        let _ = table.global_slot(0, 4);
    }

    /// Entries come in chunks when a slot is first used: none at start or for a new ring, one
    /// chunk for the slots that share it, and a far slot allocates only its own chunk.
    #[test]
    fn entries_are_allocated_a_chunk_at_a_time_on_first_use() {
        let mut table = ConnTable::new(20_000);
        assert_eq!((table.slots(), table.allocated_slots()), (20_000, 0));
        table.add_ring();
        assert_eq!((table.slots(), table.allocated_slots()), (40_000, 0), "a ring costs no entry");
        table.open(0);
        table.open(CHUNK_SLOTS as u32 - 1);
        assert_eq!(table.allocated_slots(), CHUNK_SLOTS, "one chunk for its slots");
        let far = table.global_slot(1, 19_999);
        let id = table.open(far);
        assert_eq!(table.allocated_slots(), 2 * CHUNK_SLOTS);
        assert_eq!(table.get_mut(id).map(|conn| conn.phase), Some(Phase::Open));
        let open: Vec<u32> = table.open_slots().collect();
        assert_eq!(open, [0, CHUNK_SLOTS as u32 - 1, far]);
    }

    /// A slot of a chunk never allocated reads as a free entry of generation 0, as an
    /// allocated one starts; looking at it allocates nothing, and its first occupant gets
    /// generation 1 either way.
    #[test]
    fn an_unallocated_slot_is_free_with_generation_zero() {
        let mut table = ConnTable::new(5_000);
        assert_eq!(table.id_of(4_321), ConnId::new(4_321, 0));
        assert!(table.get_mut(ConnId::new(4_321, 0)).is_none(), "a free slot answers no id");
        assert_eq!(table.allocated_slots(), 0);
        assert_eq!(table.open(4_321), ConnId::new(4_321, 1));
        assert_eq!(table.open(0), ConnId::new(0, 1));
    }

    /// A released slot keeps its chunk and its generation, so its next occupant's id differs
    /// from every earlier one (the chunk is never freed while the worker runs).
    #[test]
    fn a_chunk_outlives_its_connections() {
        let mut table = ConnTable::new(3_000);
        let slot = 2 * CHUNK_SLOTS as u32 + 5;
        let first = table.open(slot);
        table.slot_mut(slot).phase = Phase::Closing;
        table.release(slot);
        assert_eq!((table.live(), table.allocated_slots()), (0, CHUNK_SLOTS));
        let second = table.open(slot);
        assert_eq!((first.generation(), second.generation()), (1, 2));
    }

    /// The range ends at the last ring's last slot, even inside a chunk that goes on beyond
    /// it (20,000 slots end 544 into the 20th chunk): beyond is refused, and answers no id.
    #[test]
    #[should_panic(expected = "beyond the table")]
    fn a_slot_beyond_the_rings_is_refused_inside_the_last_chunk() {
        let mut table = ConnTable::new(20_000);
        table.open(19_999);
        assert!(table.get_mut(ConnId::new(20_000, 0)).is_none());
        let _ = table.slot_mut(20_000);
    }

    /// A slot entry stays at 48 bytes: every slot a ring has used costs one, for as long as
    /// the worker runs (72 with the receive `BytesMut` inline).
    #[test]
    fn a_slot_entry_is_at_most_48_bytes() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 48, "a Conn is {size} bytes");
    }

    /// The input holds no box while empty: none at first, none after its bytes are taken,
    /// none made from an empty `BytesMut` without capacity.
    #[test]
    fn an_input_is_boxed_only_while_it_holds_bytes() {
        let mut input = Input::default();
        assert!(input.is_empty() && input.0.is_none());
        input.extend_from_slice(b"\x30\x02");
        assert!(!input.is_empty());
        assert_eq!(&input.take()[..], b"\x30\x02");
        assert!(input.is_empty() && input.0.is_none());
        assert!(Input::from(BytesMut::new()).0.is_none());
        let leftover = Input::from(BytesMut::from(&b"\xc0"[..]));
        assert!(!leftover.is_empty());
    }

    /// The close sequence: output first, then cancel the receive, then close, each only when
    /// nothing that must precede it is in flight.
    #[test]
    fn close_steps_in_order() {
        let mut pool = SendPool::new(1);
        let mut conn = closing();
        let mut op = pool.take();
        op.queue().push(Bytes::from_static(b"connack"));
        conn.send = Some(op);
        assert_eq!(conn.close_step(), CloseStep::Send);
        let header = conn.send.as_mut().map(|op| op.start());
        assert!(header.is_some());
        assert_eq!(conn.close_step(), CloseStep::Wait, "send in flight");
        assert!(!conn.send.as_mut().map(|op| op.complete(7)).unwrap_or(true));
        assert_eq!(conn.close_step(), CloseStep::CancelRecv);
        conn.cancels_in_flight = 1;
        assert_eq!(conn.close_step(), CloseStep::Wait);
        conn.recv_armed = false;
        assert_eq!(conn.close_step(), CloseStep::Wait, "cancel completion still to come");
        conn.cancels_in_flight = 0;
        assert_eq!(conn.close_step(), CloseStep::Close);
        conn.close_in_flight = true;
        assert_eq!(conn.close_step(), CloseStep::Wait);
    }

    #[test]
    fn a_dead_peer_gets_no_more_output() {
        let mut pool = SendPool::new(1);
        let mut conn = closing();
        conn.recv_armed = false;
        conn.peer_alive = false;
        let mut op = pool.take();
        op.queue().push(Bytes::from_static(b"late"));
        conn.send = Some(op);
        assert_eq!(conn.close_step(), CloseStep::Close);
    }

    #[test]
    #[should_panic(expected = "operation in flight")]
    fn a_slot_with_an_operation_in_flight_is_not_released() {
        let mut conn = closing();
        conn.release();
    }
}
