//! A listen address as the user writes it: an IP address, with or without a port.
//!
//! `127.0.0.1`, `::` and `[::1]` take their port from `port`; `127.0.0.1:1884` and
//! `[::1]:1884` carry their own. Host names are not resolved: resolving is I/O, and a
//! broker's listen address should not change with DNS.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One `bind` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BindAddress {
    pub ip: IpAddr,
    /// `None` means "the `port` setting".
    pub port: Option<u16>,
}

impl BindAddress {
    /// The socket address to listen on, with `default_port` where the entry has none.
    pub fn socket_addr(self, default_port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(default_port))
    }
}

impl From<SocketAddr> for BindAddress {
    fn from(addr: SocketAddr) -> Self {
        Self { ip: addr.ip(), port: Some(addr.port()) }
    }
}

impl FromStr for BindAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
        match bare.parse::<IpAddr>() {
            Ok(ip) => Ok(Self { ip, port: None }),
            Err(_) => Err(format!(
                "invalid bind address `{text}`: expected an IP address with an optional port, \
                 e.g. `0.0.0.0`, `127.0.0.1:1884`, `::` or `[::1]:1884` (host names are not \
                 resolved)"
            )),
        }
    }
}

impl TryFrom<String> for BindAddress {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (ip, Some(port)) => SocketAddr::new(ip, port).fmt(f),
            (IpAddr::V6(ip), None) => write!(f, "[{ip}]"),
            (IpAddr::V4(ip), None) => ip.fmt(f),
        }
    }
}

impl From<BindAddress> for String {
    fn from(address: BindAddress) -> Self {
        address.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SocketAddr, String> {
        text.parse::<BindAddress>().map(|b| b.socket_addr(1883))
    }

    #[test]
    fn takes_the_default_port_when_none_is_given() {
        assert_eq!(parse("0.0.0.0"), Ok("0.0.0.0:1883".parse().unwrap()));
        assert_eq!(parse("::"), Ok("[::]:1883".parse().unwrap()));
        assert_eq!(parse("[::1]"), Ok("[::1]:1883".parse().unwrap()));
    }

    #[test]
    fn keeps_an_explicit_port() {
        assert_eq!(parse("127.0.0.1:1884"), Ok("127.0.0.1:1884".parse().unwrap()));
        assert_eq!(parse("[::1]:8883"), Ok("[::1]:8883".parse().unwrap()));
    }

    #[test]
    fn rejects_host_names_and_garbage() {
        for text in ["localhost", "example.com:1883", "1.2.3", "127.0.0.1:", "127.0.0.1:99999", ""]
        {
            let error = parse(text).expect_err(text);
            assert!(error.contains("invalid bind address"), "{error}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["0.0.0.0", "127.0.0.1:1884", "[::]", "[::1]:1884"] {
            let address: BindAddress = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
    }
}
