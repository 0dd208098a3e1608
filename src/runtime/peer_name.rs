//! The peer address of an accepted connection.
//!
//! The multishot accept puts connections straight into the ring's direct file table and
//! returns no address (one address buffer would be overwritten by every accept before its
//! completion is read), and a direct descriptor has no process fd for getpeername(2). So
//! right after the accept, the worker submits `getsockopt(SOL_SOCKET, SO_PEERNAME)` on the
//! direct descriptor through io_uring's socket command (`IORING_OP_URING_CMD`,
//! `SOCKET_URING_OP_GETSOCKOPT`, Linux 6.7): the kernel fills a `sockaddr_in`/`sockaddr_in6`
//! (its length must be exactly the family's, so the listener's family picks it), and the
//! completion hands it to the broker (`Broker::set_peer_addr`).
//!
//! Until that completion, the connection's input is kept but not decoded (`Conn::peer_pending`),
//! so the broker has the address before it sees the CONNECT, whatever order the completions
//! come in. The buffer is a small box owned by `PeerNames`, keyed by (slot, generation), and
//! freed only by its completion, even when the connection closed meanwhile. A kernel without
//! the command answers an error: the connection goes on without an address (counted, logged
//! once), and the failed-CONNECT limiter then cannot apply to it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::opcode;

use super::uring::Completion;
use super::user_data::{Op, UserData};
use super::worker::Worker;
use crate::broker::{ConnId, Millis, PeerAddr};

/// `sizeof(struct sockaddr_in6)`, the larger of the two families.
const SOCKADDR_IN6_BYTES: usize = 28;
/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN_BYTES: usize = 16;

type NameBuffer = Box<[u8; SOCKADDR_IN6_BYTES]>;

/// The address buffers of the getsockopt operations in flight, and their counters.
#[derive(Debug, Default)]
pub struct PeerNames {
    in_flight: HashMap<(u32, u32), NameBuffer>,
    /// Peer addresses learned.
    pub learned: u64,
    /// getsockopt failures (an old kernel, or a peer already gone).
    pub failed: u64,
}

/// Whether a listening socket is IPv6 (its accepted sockets are, even for IPv4-mapped peers).
pub(super) fn listener_is_ipv6(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: an all-zero sockaddr_storage is valid; getsockname writes at most `len` bytes
    // into it and updates `len`; the descriptor is borrowed for the call.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let result = libc::getsockname(fd.as_raw_fd(), (&raw mut storage).cast(), &raw mut len);
        result == 0 && i32::from(storage.ss_family) == libc::AF_INET6
    }
}

/// Decodes the `sockaddr_in`/`sockaddr_in6` the kernel wrote (`len` bytes).
fn parse_sockaddr(buffer: &[u8; SOCKADDR_IN6_BYTES], len: usize) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes([buffer[0], buffer[1]]));
    let port = u16::from_be_bytes([buffer[2], buffer[3]]);
    match (family, len) {
        (libc::AF_INET, SOCKADDR_IN_BYTES) => {
            let ip = Ipv4Addr::new(buffer[4], buffer[5], buffer[6], buffer[7]);
            Some(SocketAddr::new(ip.into(), port))
        }
        (libc::AF_INET6, SOCKADDR_IN6_BYTES) => {
            let octets: [u8; 16] = buffer[8..24].try_into().ok()?;
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        _ => None,
    }
}

impl Worker {
    /// Asks the kernel for the peer address of the connection just accepted in `slot`.
    pub(super) fn arm_peer_name(&mut self, slot: u32, ipv6: bool) {
        let conn = self.conns.slot_mut(slot);
        let generation = conn.generation;
        conn.peer_pending = true;
        let mut buffer: NameBuffer = Box::new([0; SOCKADDR_IN6_BYTES]);
        let len = if ipv6 { SOCKADDR_IN6_BYTES } else { SOCKADDR_IN_BYTES };
        let entry = opcode::GetSockOpt::new(
            self.fixed(slot),
            libc::SOL_SOCKET as u32,
            libc::SO_PEERNAME as u32,
            buffer.as_mut_ptr().cast(),
            len as u32,
        )
        .build()
        .user_data(UserData::new(Op::PeerName, slot, generation).pack());
        // The box is kept in `in_flight` under (slot, generation), a key no other op uses.
        // SAFETY: the kernel writes at most `len` (<= 28) bytes into the box's heap memory,
        // which only this operation's completion frees (`on_peer_name`).
        unsafe { self.ring_for(slot).push(&entry) };
        let previous = self.peer_names.in_flight.insert((slot, generation), buffer);
        assert!(
            previous.is_none(),
            "two peer-name operations for slot {slot} generation {generation}"
        );
    }

    pub(super) fn on_peer_name(&mut self, completion: Completion, now: Millis) {
        let data = completion.user_data;
        let buffer = self
            .peer_names
            .in_flight
            .remove(&(data.slot, data.generation))
            .unwrap_or_else(|| panic!("peer-name completion {data:?} without its buffer"));
        let id = ConnId::new(data.slot, data.generation);
        let Some(conn) = self.conns.get_mut(id) else {
            self.counters.stale_completions += 1;
            return;
        };
        conn.peer_pending = false;
        let addr = match completion.errno() {
            None => parse_sockaddr(&buffer, usize::try_from(completion.result).unwrap_or(0)),
            Some(errno) => {
                if self.peer_names.failed == 0 {
                    let error = std::io::Error::from_raw_os_error(errno);
                    tracing::warn!(
                        worker = self.index,
                        %error,
                        "peer address unavailable (getsockopt SO_PEERNAME through io_uring needs \
                         Linux 6.7); connections go on without one (logged once)"
                    );
                }
                None
            }
        };
        match addr {
            Some(addr) => {
                self.peer_names.learned += 1;
                if conn.broker_knows {
                    self.broker.set_peer_addr(id, PeerAddr::from(addr));
                }
            }
            None => self.peer_names.failed += 1,
        }
        let conn = self.conns.slot_mut(data.slot);
        if conn.phase == super::conn::Phase::Open && !conn.input.is_empty() {
            self.decode_input(id, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families_and_refuses_a_wrong_length() {
        let mut buffer = [0u8; SOCKADDR_IN6_BYTES];
        buffer[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        buffer[2..4].copy_from_slice(&1883u16.to_be_bytes());
        buffer[4..8].copy_from_slice(&[127, 0, 0, 9]);
        assert_eq!(parse_sockaddr(&buffer, 16), Some("127.0.0.9:1883".parse().unwrap()));
        assert_eq!(parse_sockaddr(&buffer, 28), None);
        let mut buffer = [0u8; SOCKADDR_IN6_BYTES];
        buffer[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        buffer[2..4].copy_from_slice(&40000u16.to_be_bytes());
        buffer[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        assert_eq!(parse_sockaddr(&buffer, 28), Some("[::1]:40000".parse().unwrap()));
    }
}
