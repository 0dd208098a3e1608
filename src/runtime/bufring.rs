//! The provided-buffer ring a worker's multishot receives draw from, so an idle connection
//! holds no receive buffer: the kernel picks a buffer only when bytes arrive.
//!
//! [`BufRing`] owns two anonymous mappings: the ring of buffer descriptors the kernel reads
//! (page aligned, as `IORING_REGISTER_PBUF_RING` requires) and the buffers themselves. A
//! completion names the buffer it filled; [`BufRing::lease`] turns that into a [`Lease`], a view
//! of the received bytes that gives the buffer back to the ring when dropped.
//!
//! Invariants: a buffer id is either in the ring (the kernel may fill it) or leased (exactly
//! one [`Lease`] reads it), never both; ids come only from completions. The mappings outlive
//! the registration: the owner unregisters (or drops the io_uring) before dropping this.

use std::io;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// The group of each ring's shared receive buffers (established connections' multishot
/// receives draw from it).
pub const RECV_GROUP: u16 = 0;
/// The group of each ring's first-receive buffers: only receives of connections that have not
/// sent their CONNECT yet draw from it, so pings cannot leave a CONNECT without a buffer.
pub const FIRST_RECV_GROUP: u16 = 1;
/// The group of each ring's starved-receive buffers: only receives re-armed after an ENOBUFS
/// draw from it, single-shot, never more armed than it has buffers free (`BufRing::reserve`),
/// so a starved receive cannot lose its buffer to a ping that arrives before the submit.
pub const STARVED_RECV_GROUP: u16 = 2;
/// Size of a starved-receive buffer: a ping (2 bytes) fits many times; longer input arrives by
/// the multishot receive armed after it. 256 of them (the default count) are 64 KiB per ring.
pub const STARVED_RECV_BUFFER_BYTES: u32 = 256;
/// Size of a first-receive buffer: a CONNECT (and a SUBSCRIBE sent with it) is far smaller;
/// a longer one arrives over several first receives. 64 of them are 32 KiB (8 pages) per ring.
pub const FIRST_RECV_BUFFER_BYTES: u32 = 512;

/// A registered ring of `count` receive buffers of `buffer_bytes` each.
#[derive(Debug)]
pub struct BufRing {
    entries: Mapping,
    buffers: Mapping,
    count: u16,
    buffer_bytes: u32,
    /// Our copy of the tail the kernel reads; published with a release store.
    tail: u16,
    group: u16,
    leased: u16,
    /// Receives armed on this group that each will take one buffer (`reserve`), not yet
    /// completed.
    reserved: u16,
}

impl BufRing {
    /// Allocates the ring and the buffers and offers every buffer to the (future) kernel.
    /// `count` must be a power of two of at most 32768 (the kernel's limit).
    pub fn new(count: u16, buffer_bytes: u32, group: u16) -> io::Result<Self> {
        assert!(count.is_power_of_two() && count <= 1 << 15, "buffer count {count}");
        assert!(buffer_bytes > 0, "zero-sized receive buffers");
        let entries = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(count) * buffer_bytes as usize)?;
        let mut ring =
            Self { entries, buffers, count, buffer_bytes, tail: 0, group, leased: 0, reserved: 0 };
        for id in 0..count {
            ring.offer(id);
        }
        Ok(ring)
    }

    /// Registers the ring with `submitter`'s io_uring under this ring's group id.
    pub fn register(&self, submitter: &io_uring::Submitter<'_>) -> io::Result<()> {
        // The owner keeps `self` alive until the registration ends (module invariant).
        // SAFETY: the descriptor ring is a page-aligned mapping of `count` entries, and the
        // buffers its entries point at, both living as long as `self`.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.ptr.as_ptr() as u64,
                self.count,
                self.group,
                0,
            )
        }
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// How many buffers the ring has.
    pub fn count(&self) -> u16 {
        self.count
    }

    pub fn buffer_bytes(&self) -> u32 {
        self.buffer_bytes
    }

    /// Buffers currently leased out (not in the ring).
    pub fn leased(&self) -> u16 {
        self.leased
    }

    /// Buffers no armed receive has reserved: with receives armed only after a successful
    /// [`Self::reserve`], each finds a buffer (leases are dropped within their turn).
    pub fn unreserved(&self) -> u16 {
        self.count - self.reserved
    }

    /// Notes a receive armed that will take one buffer; false when every buffer is reserved.
    pub fn reserve(&mut self) -> bool {
        if self.reserved == self.count {
            return false;
        }
        self.reserved += 1;
        true
    }

    /// A reserving receive completed (with a buffer, or without: error, cancel, EOF).
    pub fn unreserve(&mut self) {
        assert!(self.reserved > 0, "a completion of a receive that reserved nothing");
        self.reserved -= 1;
    }

    /// The `len` bytes the kernel wrote into buffer `id`, which a completion just named.
    pub fn lease(&mut self, id: u16, len: usize) -> Lease<'_> {
        assert!(id < self.count, "buffer id {id} outside the ring of {}", self.count);
        assert!(
            len <= self.buffer_bytes as usize,
            "{len} bytes in a {}-byte buffer",
            self.buffer_bytes
        );
        assert!(self.leased < self.count, "more leases than buffers");
        self.leased += 1;
        Lease { ring: self, id, len }
    }

    /// Puts buffer `id` at the tail of the ring and publishes the new tail.
    fn offer(&mut self, id: u16) {
        let mask = self.count - 1;
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
        let address = self.buffer_ptr(id) as u64;
        // The kernel reads entries only between its head and our published tail.
        // SAFETY: `tail & mask < count`, so the entry lies inside the descriptor mapping, and
        // it is at the tail, not yet published, so nothing else reads it now.
        let entry = unsafe { &mut *base.add(usize::from(self.tail & mask)) };
        entry.set_addr(address);
        entry.set_len(self.buffer_bytes);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: `base` is the ring's first entry, initialised above or at creation; the tail
        // field overlaps its reserved bytes, which the kernel reads as a u16 and we alone write.
        let tail = unsafe { &*BufRingEntry::tail(base).cast::<AtomicU16>() };
        // Release: the entry's fields must be visible before the kernel sees the new tail.
        tail.store(self.tail, Ordering::Release);
    }

    fn buffer_ptr(&self, id: u16) -> *mut u8 {
        let offset = usize::from(id) * self.buffer_bytes as usize;
        // SAFETY: `id < count`, so `offset + buffer_bytes` lies within the buffer mapping.
        unsafe { self.buffers.ptr.as_ptr().add(offset) }
    }
}

/// Received bytes in a provided buffer; the buffer returns to the ring when this drops.
#[derive(Debug)]
pub struct Lease<'ring> {
    ring: &'ring mut BufRing,
    id: u16,
    len: usize,
}

impl Deref for Lease<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // The `&mut BufRing` borrow keeps the mapping alive while the lease lives.
        // SAFETY: the kernel filled `len <= buffer_bytes` bytes of buffer `id` before this
        // lease's completion and does not touch it again until `Drop` offers it back.
        unsafe { std::slice::from_raw_parts(self.ring.buffer_ptr(self.id), self.len) }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.ring.leased -= 1;
        self.ring.offer(self.id);
    }
}

/// An anonymous private mapping, unmapped on drop. Page aligned, zeroed, committed lazily.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        assert!(len > 0);
        // SAFETY: an anonymous mapping at an address of the kernel's choosing aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, unmapped once, here.
        let result = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        assert_eq!(result, 0, "munmap failed: {}", io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use io_uring::{cqueue, opcode, types, IoUring};

    use super::*;

    fn recv_multi(ring: &mut IoUring, fd: i32, group: u16) {
        let entry = opcode::RecvMulti::new(types::Fd(fd), group).build().user_data(9);
        // SAFETY: a multishot receive into provided buffers reads no memory of ours but the
        // registered ring, which outlives the io_uring in these tests.
        unsafe { ring.submission().push(&entry).expect("empty SQ") };
    }

    fn wait_one(ring: &mut IoUring) -> cqueue::Entry {
        ring.submit_and_wait(1).expect("submit");
        ring.completion().next().expect("a completion after waiting for one")
    }

    /// A buffer the kernel filled is readable through its lease and goes back to the ring on
    /// drop; with every buffer leased the kernel reports ENOBUFS, and returning one lets the
    /// next receive succeed.
    #[test]
    fn leases_return_buffers_and_exhaustion_is_enobufs() {
        let mut ring = IoUring::new(8).expect("io_uring");
        let (mut writer, reader) = UnixStream::pair().expect("socketpair");
        let mut buffers = BufRing::new(2, 64, 3).expect("buffer ring");
        buffers.register(&ring.submitter()).expect("register");

        let mut held = Vec::new();
        for message in [&b"first"[..], b"second"] {
            recv_multi(&mut ring, reader.as_raw_fd(), 3);
            writer.write_all(message).expect("write");
            let cqe = wait_one(&mut ring);
            assert_eq!(cqe.result(), message.len() as i32);
            let id = cqueue::buffer_select(cqe.flags()).expect("a provided buffer");
            held.push((id, message));
            // Cancel the multishot so each round is one receive.
            let cancel = opcode::AsyncCancel::new(9).build().user_data(10);
            // SAFETY: a cancel references no memory.
            unsafe { ring.submission().push(&cancel).expect("SQ room") };
            ring.submit_and_wait(2).expect("submit");
            ring.completion().for_each(drop);
        }
        // Both buffers are now the application's: the ring is empty.
        let (first_id, _) = held[0];
        let (second_id, _) = held[1];
        assert_ne!(first_id, second_id);
        {
            let lease = buffers.lease(second_id, 6);
            assert_eq!(&*lease, b"second");
            assert_eq!(buffers_leased_through(&lease), 1);
        }
        assert_eq!(buffers.leased(), 0);
        drop(held);

        // Simulate exhaustion by keeping the kernel's view: two more receives use the two
        // offered buffers (first_id was never leased back, so only second_id is offered).
        recv_multi(&mut ring, reader.as_raw_fd(), 3);
        writer.write_all(b"third").expect("write");
        let cqe = wait_one(&mut ring);
        assert_eq!(cqueue::buffer_select(cqe.flags()), Some(second_id));
        writer.write_all(b"fourth").expect("write");
        let cqe = wait_one(&mut ring);
        assert_eq!(-cqe.result(), libc::ENOBUFS, "no buffer left in the ring");
        assert!(!cqueue::more(cqe.flags()), "ENOBUFS ends the multishot");
    }

    /// A provided-buffer receive with MSG_DONTWAIT on an empty socket ends EAGAIN at once and
    /// takes no buffer (a starved receive must not wait holding its reservation); with bytes
    /// waiting it reads them.
    #[test]
    fn a_dontwait_receive_on_an_empty_socket_ends_eagain_without_a_buffer() {
        let mut ring = IoUring::new(8).expect("io_uring");
        let (mut writer, reader) = UnixStream::pair().expect("socketpair");
        let buffers = BufRing::new(2, 64, 5).expect("buffer ring");
        buffers.register(&ring.submitter()).expect("register");
        let recv = opcode::Recv::new(types::Fd(reader.as_raw_fd()), std::ptr::null_mut(), 0)
            .buf_group(5)
            .flags(libc::MSG_DONTWAIT)
            .build()
            .flags(io_uring::squeue::Flags::BUFFER_SELECT)
            .user_data(7);
        // SAFETY: the receive writes only into the registered buffer ring, which outlives it.
        unsafe { ring.submission().push(&recv).expect("empty SQ") };
        let cqe = wait_one(&mut ring);
        assert_eq!(-cqe.result(), libc::EAGAIN, "an empty socket");
        assert_eq!(cqueue::buffer_select(cqe.flags()), None, "no buffer taken");
        writer.write_all(b"ping").expect("write");
        // SAFETY: as above.
        unsafe { ring.submission().push(&recv).expect("empty SQ") };
        let cqe = wait_one(&mut ring);
        assert_eq!(cqe.result(), 4);
        assert!(cqueue::buffer_select(cqe.flags()).is_some());
    }

    /// Reservations count receives armed, not buffers filled: never more than the ring has.
    #[test]
    fn reservations_are_bounded_by_the_buffer_count() {
        let mut buffers = BufRing::new(2, 64, 4).expect("buffer ring");
        assert!(buffers.reserve() && buffers.reserve());
        assert_eq!(buffers.unreserved(), 0);
        assert!(!buffers.reserve(), "a third receive on two buffers");
        buffers.unreserve();
        assert_eq!(buffers.unreserved(), 1);
        assert!(buffers.reserve());
    }

    fn buffers_leased_through(lease: &Lease<'_>) -> u16 {
        lease.ring.leased
    }
}
