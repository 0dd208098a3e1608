//! The io_uring pieces shared by the load generator and the relay: a ring whose file table
//! holds every connection as a direct descriptor, a provided-buffer ring for multishot
//! receives, and the `user_data` encoding.
//!
//! Direct descriptors are not process fds, so the process fd limit (`RLIMIT_NOFILE`, 20000
//! here) does not cap connections; it caps each ring's file table, and capacity is
//! rings x table slots. Invariants: every SQE pushed references memory that outlives its
//! completion (the callers' `# Safety` contracts); provided buffers are given back only after
//! their data has been copied out; a [`BufRing`] outlives every receive that may write into it
//! (its owner drops or leaks it only when no receive is armed).

use std::alloc::{self, Layout};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, squeue, types, IoUring};

/// Operation kinds carried in the top byte of `user_data`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Op {
    Connect = 1,
    Recv = 2,
    Send = 3,
    Close = 4,
    Shutdown = 5,
    Accept = 6,
    /// A link of a connection's set-up chain before its connect (socket, options, bind).
    Setup = 7,
}

impl Op {
    fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Connect,
            2 => Self::Recv,
            3 => Self::Send,
            4 => Self::Close,
            5 => Self::Shutdown,
            6 => Self::Accept,
            7 => Self::Setup,
            _ => return None,
        })
    }
}

/// `user_data`: operation (8 bits), generation (24 bits), connection slot (32 bits). The
/// generation lets a completion for a slot that has since been reused be recognised.
pub fn pack(op: Op, generation: u32, slot: u32) -> u64 {
    (u64::from(op as u8) << 56) | (u64::from(generation & 0xFF_FFFF) << 32) | u64::from(slot)
}

/// The inverse of [`pack`]; `None` for a `user_data` we never produced.
pub fn unpack(user_data: u64) -> Option<(Op, u32, u32)> {
    let op = Op::from_u8((user_data >> 56) as u8)?;
    Some((op, ((user_data >> 32) & 0xFF_FFFF) as u32, user_data as u32))
}

/// One completion copied out of the CQ, so the CQ can be released before dispatching.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    pub fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// A ring owned by one thread, with a sparse file table of `files` slots.
pub struct Ring {
    ring: IoUring,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring of `entries` SQEs (CQ four times that) and `files` direct-descriptor slots.
    /// Must be called on the thread that will use it (single issuer).
    pub fn new(entries: u32, files: u32) -> io::Result<Self> {
        let cq_entries = entries.saturating_mul(4);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(cq_entries)
            .build(entries)
            .or_else(|_| {
                IoUring::builder().setup_coop_taskrun().setup_cqsize(cq_entries).build(entries)
            })?;
        if files > 0 {
            ring.submitter().register_files_sparse(files).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("registering {files} direct-descriptor slots (RLIMIT_NOFILE caps a table): {error}"),
                )
            })?;
        }
        Ok(Self { ring })
    }

    pub fn submitter(&self) -> io_uring::Submitter<'_> {
        self.ring.submitter()
    }

    /// Whether a connection can be set up entirely in the ring: IORING_OP_SOCKET into a
    /// direct slot, setsockopt via uring_cmd, IORING_OP_BIND (Linux 6.11) and connect.
    pub fn supports_direct_setup(&self) -> bool {
        let mut probe = io_uring::Probe::new();
        if self.ring.submitter().register_probe(&mut probe).is_err() {
            return false;
        }
        [
            io_uring::opcode::Socket::CODE,
            io_uring::opcode::SetSockOpt::CODE,
            io_uring::opcode::Bind::CODE,
        ]
        .into_iter()
        .all(|code| probe.is_supported(code))
    }

    /// Makes room for `entries` SQEs, submitting what is queued if needed, so that a linked
    /// chain is never split across two submissions (which would cut the link).
    pub fn reserve(&mut self, entries: usize) -> io::Result<()> {
        assert!(entries <= self.ring.params().sq_entries() as usize, "chain longer than the SQ");
        let free = {
            let submission = self.ring.submission();
            submission.capacity() - submission.len()
        };
        if free < entries {
            self.submit(0, None)?;
        }
        Ok(())
    }

    /// Queues one SQE, submitting first if the SQ is full (a full SQ only means a large
    /// batch this turn: the entries go to the kernel early, nothing is lost).
    ///
    /// # Safety
    /// Every buffer and address `entry` points to must stay valid and unmoved until its
    /// completion (for a multishot op, its last completion) has been reaped.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller guarantees the entry's memory outlives the operation.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.submit(0, None)?;
        }
    }

    /// Submits queued SQEs and waits for `want` completions or `timeout`, whichever first.
    pub fn submit(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            Some(timeout) if want > 0 => {
                let timespec = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&timespec);
                self.ring.submitter().submit_with_args(want, &args)
            }
            _ => self.ring.submitter().submit_and_wait(want),
        };
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Moves every available completion into `out`.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        for entry in self.ring.completion() {
            out.push(Completion {
                user_data: entry.user_data(),
                result: entry.result(),
                flags: entry.flags(),
            });
        }
    }

    /// Installs process fd `fd` into direct slot `slot`; the caller then closes `fd`, so the
    /// process holds it only for the duration of this call.
    pub fn install(&self, slot: u32, fd: RawFd) -> io::Result<()> {
        let installed = self.ring.submitter().register_files_update(slot, &[fd])?;
        if installed != 1 {
            return Err(io::Error::other(format!(
                "slot {slot}: file table update installed {installed}"
            )));
        }
        Ok(())
    }
}

/// A provided-buffer ring: `count` buffers of `buffer_bytes` each that multishot receives pick
/// from, so an idle connection holds no receive buffer.
pub struct BufRing {
    entries: *mut types::BufRingEntry,
    entries_layout: Layout,
    storage: Box<[u8]>,
    buffer_bytes: usize,
    count: u16,
    /// Our tail: buffers given back but maybe not yet published to the kernel.
    tail: u16,
    group: u16,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("count", &self.count)
            .field("buffer_bytes", &self.buffer_bytes)
            .field("group", &self.group)
            .finish()
    }
}

impl BufRing {
    /// Registers `count` (a power of two, at most 32768) buffers as group `group` of `ring`.
    pub fn new(ring: &Ring, count: u16, buffer_bytes: usize, group: u16) -> io::Result<Self> {
        assert!(
            count.is_power_of_two() && count <= 32_768,
            "buffer count {count} must be a power of two <= 32768"
        );
        assert!(buffer_bytes > 0 && buffer_bytes <= u32::MAX as usize);
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size (count >= 1).
        let entries = unsafe { alloc::alloc_zeroed(entries_layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            alloc::handle_alloc_error(entries_layout);
        }
        let storage = vec![0u8; usize::from(count) * buffer_bytes].into_boxed_slice();
        let mut ring_buffers =
            Self { entries, entries_layout, storage, buffer_bytes, count, tail: 0, group };
        // SAFETY: `entries` is page aligned, zeroed and `count` entries long, and lives until
        // `self` is dropped, which the owner does only once no receive can use it.
        unsafe { ring.submitter().register_buf_ring_with_flags(entries as u64, count, group, 0) }?;
        for id in 0..count {
            ring_buffers.give_back(id);
        }
        ring_buffers.publish();
        Ok(ring_buffers)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// The first `len` bytes the kernel wrote into buffer `id`.
    pub fn buffer(&self, id: u16, len: usize) -> &[u8] {
        assert!(id < self.count && len <= self.buffer_bytes, "buffer {id} len {len} out of range");
        let start = usize::from(id) * self.buffer_bytes;
        &self.storage[start..start + len]
    }

    /// Puts buffer `id` back at our tail; the kernel sees it after [`BufRing::publish`].
    pub fn give_back(&mut self, id: u16) {
        assert!(id < self.count, "buffer id {id} out of range");
        let index = usize::from(self.tail & (self.count - 1));
        let address = self.storage.as_ptr() as u64 + (usize::from(id) * self.buffer_bytes) as u64;
        // SAFETY: `index` < `count`, so the entry lies inside the allocation. The kernel only
        // reads entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(address);
        entry.set_len(self.buffer_bytes as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every buffer given back visible to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: `entries` is the ring's first entry, so `tail` points at the shared tail
        // field, which is 2-byte aligned and lives as long as the allocation.
        let tail = unsafe { &*types::BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout; the owner drops a BufRing only
        // when no receive can still pick from it.
        unsafe { alloc::dealloc(self.entries.cast(), self.entries_layout) };
    }
}

/// The value 1 for boolean socket options set through the ring: static, so its address
/// outlives every setsockopt that reads it.
pub static SOCKET_OPTION_ON: libc::c_int = 1;

/// Bytes of an IPv4 socket address, for `connect`/`bind`.
pub fn sockaddr_v4(address: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*address.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// A new TCP socket with TCP_NODELAY, bound to `source` (port chosen at connect time, so each
/// (source, destination) pair has its own ~28k ephemeral ports), as a process fd.
pub fn client_socket(source: Option<std::net::Ipv4Addr>) -> io::Result<RawFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = (|| {
        set_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        if let Some(source) = source {
            set_option(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
            let address = sockaddr_v4(std::net::SocketAddrV4::new(source, 0));
            // SAFETY: `address` is a valid sockaddr_in of the length given.
            let rc = unsafe {
                libc::bind(
                    fd,
                    (&raw const address).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    })();
    if let Err(error) = result {
        close_fd(fd);
        return Err(error);
    }
    Ok(fd)
}

pub fn set_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn close_fd(fd: RawFd) {
    // SAFETY: the caller owns `fd` and does not use it afterwards.
    unsafe { libc::close(fd) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_masks_the_generation() {
        let packed = pack(Op::Send, 0x0123_4567, 0xFFFF_FFFE);
        assert_eq!(unpack(packed), Some((Op::Send, 0x23_4567, 0xFFFF_FFFE)));
        assert_eq!(unpack(0), None, "user_data 0 is not ours");
    }
}
