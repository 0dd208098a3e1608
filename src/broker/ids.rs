//! Identifier newtypes and the broker's notion of time.

use std::fmt;

/// A connection, as the runtime names it: a slot and that slot's generation, so a slot reused
/// by a new connection never aliases the old one. Two `u32`s, not one `u64`: aligned to 4, an
/// `Option<ConnId>` in a session is 12 bytes, not 16 (issue 6's bytes per connection). Ordered
/// by generation, then slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    generation: u32,
    slot: u32,
}

impl ConnId {
    pub const fn new(slot: u32, generation: u32) -> Self {
        Self { generation, slot }
    }

    pub const fn slot(self) -> u32 {
        self.slot
    }

    pub const fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({}g{})", self.slot(), self.generation())
    }
}

/// A session in one broker's session table. Only meaningful on the worker that owns it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SessionId(pub u32);

/// A worker: one thread, one ring, one [`super::Broker`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct WorkerId(pub u16);

impl WorkerId {
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A set of workers, as a bitmask: the most workers one broker process runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct WorkerSet(u128);

impl WorkerSet {
    pub const CAPACITY: usize = 128;

    pub const fn empty() -> Self {
        Self(0)
    }

    pub fn insert(&mut self, worker: WorkerId) {
        assert!(worker.index() < Self::CAPACITY, "worker {} beyond WorkerSet capacity", worker.0);
        self.0 |= 1 << worker.0;
    }

    pub fn remove(&mut self, worker: WorkerId) {
        assert!(worker.index() < Self::CAPACITY, "worker {} beyond WorkerSet capacity", worker.0);
        self.0 &= !(1 << worker.0);
    }

    pub const fn contains(self, worker: WorkerId) -> bool {
        worker.0 < 128 && self.0 & (1 << worker.0) != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The members, lowest first; costs one step per member, not per possible worker.
    pub fn iter(self) -> impl Iterator<Item = WorkerId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let index = bits.trailing_zeros();
            bits &= bits - 1;
            Some(WorkerId(index as u16))
        })
    }
}

impl fmt::Debug for WorkerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|w| w.0)).finish()
    }
}

/// Monotonic milliseconds since some fixed start, supplied by whoever drives the broker.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub const fn plus_millis(self, millis: u64) -> Self {
        Self(self.0.saturating_add(millis))
    }

    pub const fn plus_secs(self, secs: u64) -> Self {
        self.plus_millis(secs.saturating_mul(1000))
    }

    pub const fn since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A hasher for the broker's small integer ids (`ConnId`, `SessionId`, `PacketId`): one
/// multiply per key instead of SipHash. The keys come from the runtime and the broker, not from
/// clients, so hash flooding is not a concern for them; client-chosen strings (client ids) keep
/// the standard hasher.
#[derive(Clone, Copy, Default, Debug)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u16(&mut self, value: u16) {
        self.write_u64(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing: spreads consecutive ids over the high bits hashbrown uses.
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Builds [`IdHasher`]s for `HashMap`/`HashSet` keyed by ids.
pub type IdBuildHasher = std::hash::BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_id_keeps_slot_and_generation_apart() {
        let id = ConnId::new(u32::MAX, 7);
        assert_eq!(id.slot(), u32::MAX);
        assert_eq!(id.generation(), 7);
        assert_ne!(ConnId::new(1, 0), ConnId::new(1, 1));
    }

    #[test]
    fn worker_set_iterates_members_only() {
        let mut set = WorkerSet::empty();
        set.insert(WorkerId(3));
        set.insert(WorkerId(127));
        set.insert(WorkerId(0));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![WorkerId(0), WorkerId(3), WorkerId(127)]);
        set.remove(WorkerId(3));
        assert!(!set.contains(WorkerId(3)));
        assert!(set.contains(WorkerId(127)));
    }
}
