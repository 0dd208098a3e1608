//! What every submission carries in its `user_data`: the operation, the slot it acts on and
//! that slot's generation, packed into the 64 bits the kernel hands back in the completion.
//!
//! Layout: `op` in bits 56..64, `slot` in bits 32..56, `generation` in bits 0..32. A slot is a
//! connection's worker-wide slot (ring x slots per ring + index in that ring's direct file
//! table; `conn.rs`), or, for ring-wide operations, the listener index or 0. Invariant: a completion whose generation differs from the slot's
//! current generation belongs to an earlier occupant of the slot and is dropped (counted).

/// The kinds of operation a worker submits. One completion handler per kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Op {
    /// Multishot accept on listener `slot`; the generation field is the ring it is armed on.
    Accept = 1,
    /// Multishot receive on connection `slot`, into the provided buffer ring.
    Recv = 2,
    /// One `sendmsg` of the connection's taken output.
    Send = 3,
    /// Cancel of the connection's multishot receive.
    Cancel = 4,
    /// Close of the connection's direct descriptor.
    Close = 5,
    /// Read of the worker's wake eventfd (shutdown, and later cross-worker wake-ups).
    Wake = 6,
    /// Cancel of a listener's multishot accept, at shutdown.
    CancelAccept = 7,
    /// Send of a connection's direct descriptor to another ring (handoff), on the sender.
    SendFd = 8,
    /// A handed-off descriptor landing in our table (MSG_RING from a peer); `slot` and
    /// `generation` carry the handoff key (source worker, sequence).
    HandoffFd = 9,
    /// A peer's doorbell (MSG_RING): mesh items are waiting.
    Doorbell = 10,
    /// Our doorbell to a peer failed (only failures complete: `IOSQE_CQE_SKIP_SUCCESS`).
    DoorbellFailed = 11,
    /// getsockopt(SO_PEERNAME) of connection `slot` (`peer_name.rs`).
    PeerName = 12,
    /// A write of a journal batch (persistence; `journal.rs`).
    JournalWrite = 13,
    /// An fsync of a journal batch's file or directory.
    JournalFsync = 14,
    /// The interval policy's fsync of the journal file.
    JournalSync = 15,
    /// Read of the worker's rings eventfd: a further ring posted completions (`rings.rs`).
    RingsWake = 16,
    /// A journal file's creation, close or deletion (`journal.rs`; `slot` says which).
    JournalFile = 17,
    /// Single-shot receive on connection `slot` before its CONNECT, into the ring's
    /// first-receive buffers (`bufring::FIRST_RECV_GROUP`), whose buffer goes back there.
    FirstRecv = 18,
    /// Single-shot receive on connection `slot` after its multishot receive found no buffer
    /// (ENOBUFS), into the ring's starved-receive buffers (`bufring::STARVED_RECV_GROUP`).
    StarvedRecv = 19,
}

impl Op {
    const ALL: [Op; 19] = [
        Op::Accept,
        Op::Recv,
        Op::Send,
        Op::Cancel,
        Op::Close,
        Op::Wake,
        Op::CancelAccept,
        Op::SendFd,
        Op::HandoffFd,
        Op::Doorbell,
        Op::DoorbellFailed,
        Op::PeerName,
        Op::JournalWrite,
        Op::JournalFsync,
        Op::JournalSync,
        Op::RingsWake,
        Op::JournalFile,
        Op::FirstRecv,
        Op::StarvedRecv,
    ];

    fn from_u8(value: u8) -> Option<Op> {
        Self::ALL.into_iter().find(|op| *op as u8 == value)
    }
}

/// The most slots a `user_data` can name: the file table must be smaller.
pub const SLOTS_MAX: u32 = 1 << 24;

/// A decoded `user_data`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UserData {
    pub op: Op,
    pub slot: u32,
    pub generation: u32,
}

impl UserData {
    pub fn new(op: Op, slot: u32, generation: u32) -> Self {
        assert!(slot < SLOTS_MAX, "slot {slot} does not fit in user_data");
        Self { op, slot, generation }
    }

    pub fn pack(self) -> u64 {
        (u64::from(self.op as u8) << 56) | (u64::from(self.slot) << 32) | u64::from(self.generation)
    }

    /// The fields of a `user_data` this worker packed. A value it did not pack is a broken
    /// invariant (the kernel returns user_data unchanged), hence the assertion.
    pub fn unpack(raw: u64) -> Self {
        let op = Op::from_u8((raw >> 56) as u8);
        let op = op.unwrap_or_else(|| panic!("completion with foreign user_data {raw:#x}"));
        Self { op, slot: ((raw >> 32) as u32) & (SLOTS_MAX - 1), generation: raw as u32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_op_at_the_extremes() {
        for op in Op::ALL {
            for (slot, generation) in [(0, 0), (SLOTS_MAX - 1, u32::MAX), (12_345, 7)] {
                let data = UserData::new(op, slot, generation);
                assert_eq!(UserData::unpack(data.pack()), data);
            }
        }
    }

    #[test]
    fn fields_do_not_bleed_into_each_other() {
        let a = UserData::new(Op::Recv, 1, 0).pack();
        let b = UserData::new(Op::Recv, 0, 1).pack();
        let c = UserData::new(Op::Send, 0, 0).pack();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_eq!(UserData::unpack(a).generation, 0);
        assert_eq!(UserData::unpack(b).slot, 0);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn refuses_a_slot_beyond_the_field() {
        let _ = UserData::new(Op::Recv, SLOTS_MAX, 0);
    }

    #[test]
    #[should_panic(expected = "foreign user_data")]
    fn refuses_a_value_it_did_not_pack() {
        let _ = UserData::unpack(0);
    }
}
