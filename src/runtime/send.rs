//! A connection's send state: the output taken from the broker, and the one `sendmsg` in flight.
//!
//! One send is in flight per connection, so bytes leave in the order the broker produced them.
//! [`SendOp`] is boxed and owned by the connection while it has output, so the `msghdr`, the
//! iovec array and the `Bytes` they point into stay alive and unmoved until the completion
//! arrives; boxes are recycled through a small per-worker pool, so an idle connection holds none.
//!
//! Invariants: while `in_flight`, nothing in `flight`, `iovecs` or `header` changes; `queued`
//! collects output taken meanwhile and joins `flight` only between sends. `first`/`offset`
//! mark the first byte the kernel has not yet confirmed.

use std::collections::VecDeque;

use bytes::Bytes;

/// Most iovecs in one `sendmsg` (the kernel's UIO_MAXIOV); the rest goes in the next send.
pub const IOVECS_MAX: usize = 1024;

/// One connection's output, and the `sendmsg` that carries it.
#[derive(Debug)]
pub struct SendOp {
    /// Taken from the broker while a send was in flight (or earlier this turn).
    queued: Vec<Bytes>,
    /// What the current or next `sendmsg` covers, from `flight[first][offset..]`.
    flight: Vec<Bytes>,
    first: usize,
    offset: usize,
    iovecs: Vec<libc::iovec>,
    header: libc::msghdr,
    in_flight: bool,
    /// Bytes the send in flight (or the last one) covers.
    covered: usize,
}

impl SendOp {
    fn new() -> Self {
        // SAFETY: msghdr is plain data; all-zero is its documented empty value.
        let header = unsafe { std::mem::zeroed::<libc::msghdr>() };
        Self {
            queued: Vec::new(),
            flight: Vec::new(),
            first: 0,
            offset: 0,
            iovecs: Vec::with_capacity(8),
            header,
            in_flight: false,
            covered: 0,
        }
    }

    /// Where `Broker::take_output` should append.
    pub fn queue(&mut self) -> &mut Vec<Bytes> {
        &mut self.queued
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Bytes the send in flight (or the last one) covers.
    pub fn covered_bytes(&self) -> usize {
        self.covered
    }

    /// Whether anything is waiting to be sent (confirmed bytes excluded).
    pub fn has_unsent(&self) -> bool {
        self.first < self.flight.len() || self.queued.iter().any(|b| !b.is_empty())
    }

    /// Bytes not yet confirmed sent, queued ones included.
    pub fn unsent_bytes(&self) -> usize {
        let flight: usize =
            self.flight[self.first.min(self.flight.len())..].iter().map(Bytes::len).sum();
        let queued: usize = self.queued.iter().map(Bytes::len).sum();
        flight - self.offset + queued
    }

    /// Moves queued output behind the unsent part of `flight`, fills the iovecs and marks the
    /// send in flight. Returns the header to pass to `sendmsg`.
    ///
    /// The pointer stays valid, and what it points to unchanged, until [`Self::complete`] —
    /// as long as this `SendOp` is neither dropped nor moved (it lives in a `Box`).
    pub fn start(&mut self) -> *const libc::msghdr {
        assert!(!self.in_flight, "a second send in flight on one connection");
        if self.first > 0 {
            self.flight.drain(..self.first);
            self.first = 0;
        }
        self.flight.append(&mut self.queued);
        assert!(self.has_unsent(), "start of a send with nothing to send");
        self.iovecs.clear();
        let mut skip = self.offset;
        for bytes in self.flight.iter().filter(|b| !b.is_empty()).take(IOVECS_MAX) {
            let part = &bytes[skip..];
            skip = 0;
            self.iovecs.push(libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            });
        }
        self.header.msg_iov = self.iovecs.as_mut_ptr();
        self.header.msg_iovlen = self.iovecs.len();
        self.covered = self.iovecs.iter().map(|iov| iov.iov_len).sum();
        self.in_flight = true;
        &self.header
    }

    /// Records that the kernel sent `sent_bytes` of the send in flight. Returns whether
    /// unsent output remains (a partial send, or output queued meanwhile).
    pub fn complete(&mut self, sent_bytes: usize) -> bool {
        assert!(self.in_flight, "completion of a send that was not in flight");
        self.in_flight = false;
        let covered = self.covered;
        assert!(sent_bytes <= covered, "kernel sent {sent_bytes} of {covered} bytes");
        let mut left = sent_bytes;
        while left > 0 {
            let rest = self.flight[self.first].len() - self.offset;
            if left < rest {
                self.offset += left;
                left = 0;
            } else {
                left -= rest;
                self.first += 1;
                self.offset = 0;
            }
        }
        // Skip empty buffers so `first` always names a byte not yet sent.
        while self.first < self.flight.len() && self.flight[self.first].len() == self.offset {
            self.first += 1;
            self.offset = 0;
        }
        if self.first == self.flight.len() {
            self.flight.clear();
            self.first = 0;
        }
        self.has_unsent()
    }

    /// Forgets all output (the peer is gone). Only between sends.
    pub fn discard(&mut self) {
        assert!(!self.in_flight, "discard with a send in flight");
        self.flight.clear();
        self.queued.clear();
        self.first = 0;
        self.offset = 0;
    }
}

// SAFETY: the raw pointers in `iovecs` and `header` point into this op's own `Bytes` and
// Vec; they never cross threads while a send is in flight (a worker owns its ops), and moving
// an idle op between threads moves the memory they point to with it.
unsafe impl Send for SendOp {}

/// Recycled `SendOp` boxes, so connections do not allocate per burst of output.
#[derive(Debug)]
pub struct SendPool {
    free: VecDeque<Box<SendOp>>,
    kept_max: usize,
}

impl SendPool {
    pub fn new(kept_max: usize) -> Self {
        Self { free: VecDeque::with_capacity(kept_max), kept_max }
    }

    pub fn take(&mut self) -> Box<SendOp> {
        self.free.pop_front().unwrap_or_else(|| Box::new(SendOp::new()))
    }

    /// Takes back an op with nothing in flight, dropping any output it still holds (its
    /// connection is gone); keeps at most `kept_max`.
    pub fn give(&mut self, mut op: Box<SendOp>) {
        op.discard();
        if self.free.len() < self.kept_max {
            self.free.push_back(op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_with(chunks: &[&'static [u8]]) -> SendOp {
        let mut op = SendOp::new();
        op.queue().extend(chunks.iter().map(|c| Bytes::from_static(c)));
        op
    }

    fn pending_iovecs(op: &SendOp) -> Vec<Vec<u8>> {
        op.iovecs
            .iter()
            .map(|iov| {
                // SAFETY: each iovec points into a live `Bytes` of `op.flight`.
                unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) }
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn a_full_send_leaves_nothing() {
        let mut op = op_with(&[b"abc", b"de"]);
        let header = op.start();
        // SAFETY: `header` points into `op`, alive and unmoved.
        assert_eq!(unsafe { (*header).msg_iovlen }, 2);
        assert!(!op.complete(5));
        assert_eq!(op.unsent_bytes(), 0);
    }

    /// A partial send resumes at the exact byte: mid-buffer, and at a buffer boundary.
    #[test]
    fn partial_sends_resume_at_the_first_unsent_byte() {
        let mut op = op_with(&[b"abc", b"defg", b"h"]);
        op.start();
        assert!(op.complete(4));
        assert_eq!(op.unsent_bytes(), 4);
        op.start();
        assert_eq!(pending_iovecs(&op), vec![b"efg".to_vec(), b"h".to_vec()]);
        assert!(op.complete(3));
        op.start();
        assert_eq!(pending_iovecs(&op), vec![b"h".to_vec()]);
        assert!(!op.complete(1));
    }

    #[test]
    fn output_queued_during_a_send_follows_it_in_order() {
        let mut op = op_with(&[b"one"]);
        op.start();
        op.queue().push(Bytes::from_static(b"two"));
        assert!(op.complete(1), "a partial send and queued output remain");
        op.start();
        assert_eq!(pending_iovecs(&op), vec![b"ne".to_vec(), b"two".to_vec()]);
        assert!(!op.complete(5));
    }

    #[test]
    fn empty_buffers_are_skipped() {
        let mut op = op_with(&[b"", b"ab", b""]);
        op.start();
        assert_eq!(pending_iovecs(&op), vec![b"ab".to_vec()]);
        assert!(!op.complete(2));
    }

    #[test]
    fn at_most_iovecs_max_per_send_and_the_rest_follows() {
        let chunks: Vec<&'static [u8]> = vec![b"x"; IOVECS_MAX + 3];
        let mut op = op_with(&chunks);
        op.start();
        assert_eq!(op.iovecs.len(), IOVECS_MAX);
        assert!(op.complete(IOVECS_MAX));
        op.start();
        assert_eq!(op.iovecs.len(), 3);
        assert!(!op.complete(3));
    }

    #[test]
    #[should_panic(expected = "second send")]
    fn one_send_in_flight_per_connection() {
        let mut op = op_with(&[b"a"]);
        op.start();
        op.start();
    }

    #[test]
    #[should_panic(expected = "kernel sent")]
    fn a_completion_larger_than_the_send_is_a_bug() {
        let mut op = op_with(&[b"a"]);
        op.start();
        op.complete(2);
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        let mut pool = SendPool::new(1);
        let a = pool.take();
        let b = pool.take();
        pool.give(a);
        pool.give(b);
        assert_eq!(pool.free.len(), 1);
    }
}
