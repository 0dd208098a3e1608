//! A connection's peer address, stored compactly (18 bytes: an IPv6 address, IPv4 mapped,
//! and a port) because every connection carries one.
//!
//! The runtime learns it after the accept (see `runtime/peer_name.rs`) and gives it to the
//! broker with [`super::Broker::set_peer_addr`] before any packet of the connection; a handoff
//! carries it to the session's home worker. It keys the failed-CONNECT limiter and is shown by
//! tools (`Broker::peer_addr`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    ip: [u8; 16],
    port: [u8; 2],
}

impl PeerAddr {
    pub fn ip(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.ip);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }

    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port())
    }
}

impl PeerAddr {
    /// The address as 4 bytes of IPv4 address and 2 of port, if it is an IPv4 one: what a
    /// connection keeps inline (issue 6: 6 bytes, not 18, for the common case).
    pub(super) fn to_v4_parts(self) -> Option<[u8; 6]> {
        let v4 = Ipv6Addr::from(self.ip).to_ipv4_mapped()?;
        let mut parts = [0; 6];
        parts[..4].copy_from_slice(&v4.octets());
        parts[4..].copy_from_slice(&self.port);
        Some(parts)
    }

    /// The inverse of [`PeerAddr::to_v4_parts`].
    pub(super) fn from_v4_parts(parts: [u8; 6]) -> Self {
        let v4 = std::net::Ipv4Addr::new(parts[0], parts[1], parts[2], parts[3]);
        Self { ip: v4.to_ipv6_mapped().octets(), port: [parts[4], parts[5]] }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Self { ip: ip.octets(), port: addr.port().to_be_bytes() }
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.socket_addr())
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.socket_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_addresses_pack_into_six_bytes_and_back() {
        let v4 = PeerAddr::from("10.1.2.3:1883".parse::<SocketAddr>().expect("valid"));
        let parts = v4.to_v4_parts().expect("an IPv4 address");
        assert_eq!(parts, [10, 1, 2, 3, 0x07, 0x5b]);
        assert_eq!(PeerAddr::from_v4_parts(parts), v4);
        let v6 = PeerAddr::from("[2001:db8::1]:1883".parse::<SocketAddr>().expect("valid"));
        assert_eq!(v6.to_v4_parts(), None);
    }

    #[test]
    fn both_families_round_trip_in_eighteen_bytes() {
        assert_eq!(std::mem::size_of::<PeerAddr>(), 18);
        for text in ["127.0.0.1:1883", "[::1]:40000", "[2001:db8::7]:1", "10.1.2.3:65535"] {
            let addr: SocketAddr = text.parse().unwrap();
            let peer = PeerAddr::from(addr);
            assert_eq!(peer.socket_addr(), addr);
            assert_eq!(peer.to_string(), text);
        }
    }
}
