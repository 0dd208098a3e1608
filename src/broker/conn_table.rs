//! The broker's connections, by slot: a table indexed by [`ConnId::slot`] that checks the
//! generation, in place of a hash map keyed by the whole id.
//!
//! The runtime's slots are its direct-descriptor indexes, dense from 0, so a table by slot is
//! nearly full: an entry costs the `Conn` and its generation, where a hash map at a load factor
//! of 0.44-0.875 (just after and before a doubling) cost up to 2.3 times an entry of the id
//! and the `Conn` (issue 6: bytes per idle connection). Lookups are two indexings and a
//! compare, no hashing. Slots are allocated in chunks of [`CHUNK_SLOTS`] when first used and
//! kept (bounded by the highest slot the runtime has used, itself bounded by its file tables).
//!
//! Invariants: a slot holds at most one connection (the runtime reuses a slot only after the
//! broker has let go of its previous occupant); `len` counts the occupied slots.

use super::connection::Conn;
use super::ConnId;

/// Slots per chunk: 1024 entries of ~112 bytes.
const CHUNK_SLOTS: usize = 1024;

type Chunk = Box<[Option<Conn>]>;

#[derive(Debug, Default)]
pub(super) struct ConnTable {
    chunks: Vec<Option<Chunk>>,
    len: usize,
}

fn locate(id: ConnId) -> (usize, usize) {
    let slot = id.slot() as usize;
    (slot / CHUNK_SLOTS, slot % CHUNK_SLOTS)
}

impl ConnTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, id: &ConnId) -> Option<&Conn> {
        let (chunk, index) = locate(*id);
        let conn = self.chunks.get(chunk)?.as_ref()?[index].as_ref()?;
        (conn.slot_generation == id.generation()).then_some(conn)
    }

    pub fn get_mut(&mut self, id: &ConnId) -> Option<&mut Conn> {
        let (chunk, index) = locate(*id);
        let conn = self.chunks.get_mut(chunk)?.as_mut()?[index].as_mut()?;
        (conn.slot_generation == id.generation()).then_some(conn)
    }

    pub fn contains_key(&self, id: &ConnId) -> bool {
        self.get(id).is_some()
    }

    /// Adds `conn` in its slot, which must be free.
    pub fn insert(&mut self, id: ConnId, mut conn: Conn) {
        let (chunk, index) = locate(id);
        if self.chunks.len() <= chunk {
            self.chunks.resize_with(chunk + 1, || None);
        }
        let slots = self.chunks[chunk]
            .get_or_insert_with(|| std::iter::repeat_with(|| None).take(CHUNK_SLOTS).collect());
        let slot = &mut slots[index];
        assert!(slot.is_none(), "slot of {id:?} still holds a connection");
        conn.slot_generation = id.generation();
        *slot = Some(conn);
        self.len += 1;
    }

    pub fn remove(&mut self, id: &ConnId) -> Option<Conn> {
        let (chunk, index) = locate(*id);
        let slot = &mut self.chunks.get_mut(chunk)?.as_mut()?[index];
        if slot.as_ref()?.slot_generation != id.generation() {
            return None;
        }
        self.len -= 1;
        slot.take()
    }

    /// Every connection, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Conn)> + '_ {
        self.chunks.iter().enumerate().flat_map(|(chunk, slots)| {
            let slots = slots.iter().flat_map(|slots| slots.iter()).enumerate();
            slots.filter_map(move |(index, entry)| {
                let slot = u32::try_from(chunk * CHUNK_SLOTS + index).expect("slots are u32");
                entry.as_ref().map(|conn| (ConnId::new(slot, conn.slot_generation), conn))
            })
        })
    }

    /// Every connection's id, in slot order.
    pub fn keys(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.iter().map(|(id, _)| id)
    }
}

impl std::ops::Index<&ConnId> for ConnTable {
    type Output = Conn;

    fn index(&self, id: &ConnId) -> &Conn {
        self.get(id).unwrap_or_else(|| panic!("{id:?} is not a known connection"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Millis;

    #[test]
    fn a_slot_answers_only_for_its_generation() {
        let mut table = ConnTable::default();
        let first = ConnId::new(5, 1);
        table.insert(first, Conn::new(1, Millis(0)));
        table.insert(ConnId::new(3000, 0), Conn::new(2, Millis(0)));
        assert_eq!(table.len(), 2);
        assert!(table.contains_key(&first));
        assert!(table.get(&ConnId::new(5, 2)).is_none(), "another generation");
        assert!(table.get(&ConnId::new(6, 1)).is_none(), "an empty slot");
        assert!(table.get(&ConnId::new(1_000_000, 1)).is_none(), "beyond the chunks");
        assert!(table.remove(&ConnId::new(5, 2)).is_none());
        assert_eq!(table.keys().collect::<Vec<_>>(), [first, ConnId::new(3000, 0)]);
        assert_eq!(table.remove(&first).map(|conn| conn.serial), Some(1));
        assert_eq!(table.len(), 1);
        table.insert(ConnId::new(5, 2), Conn::new(3, Millis(0)));
        assert_eq!(table[&ConnId::new(5, 2)].serial, 3);
    }

    #[test]
    #[should_panic(expected = "still holds a connection")]
    fn a_slot_holds_one_connection_at_a_time() {
        let mut table = ConnTable::default();
        table.insert(ConnId::new(5, 1), Conn::new(1, Millis(0)));
        table.insert(ConnId::new(5, 2), Conn::new(2, Millis(0)));
    }
}
