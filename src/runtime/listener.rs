//! The listening sockets: one `SO_REUSEPORT` socket per worker per listen address, so the
//! kernel spreads new connections over the workers with no shared accept queue.
//!
//! They are ordinary process descriptors (a handful); the connections accepted from them live
//! only in each ring's direct file table. Options that accepted sockets inherit from their
//! listener on Linux — `TCP_NODELAY`, `SO_RCVBUF`, `SO_SNDBUF` — are set here once, so no
//! connection needs a setsockopt of its own. All are created before the workers start, so a
//! bind error stops start-up, and port 0 resolves to one port shared by every worker.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::config::RuntimeConfig;

/// Every worker's listeners, and the addresses they are bound to (port 0 resolved).
#[derive(Debug)]
pub struct Listeners {
    pub per_worker: Vec<Vec<OwnedFd>>,
    pub addrs: Vec<SocketAddr>,
}

/// Opens `config.workers` sockets on each of `config.listeners`.
pub fn bind_all(config: &RuntimeConfig) -> io::Result<Listeners> {
    let mut per_worker: Vec<Vec<OwnedFd>> = (0..config.workers).map(|_| Vec::new()).collect();
    let mut addrs = Vec::with_capacity(config.listeners.len());
    for requested in &config.listeners {
        if requested.port() != 0 {
            ensure_unheld(*requested).map_err(|error| {
                io::Error::new(error.kind(), format!("listening on {requested}: {error}"))
            })?;
        }
        let mut addr = *requested;
        for sockets in &mut per_worker {
            let socket = open(addr, config).map_err(|error| {
                io::Error::new(error.kind(), format!("listening on {addr}: {error}"))
            })?;
            // The first socket resolves port 0; the others join it on the same port.
            addr = local_addr(socket.as_raw_fd())?;
            sockets.push(socket);
        }
        addrs.push(addr);
    }
    Ok(Listeners { per_worker, addrs })
}

/// Fails with `AddrInUse` when another socket already listens on `addr`, even one that set
/// `SO_REUSEPORT`: without this a second broker (ours or anyone's under the same user) on the
/// same port would join our reuse-port group and silently take a share of the connections.
/// A socket without `SO_REUSEPORT` cannot bind beside a listener, so a probe bind tells.
/// (Something could still take the port between the probe and our binds; the window is the
/// few microseconds in between, at start-up only.)
fn ensure_unheld(addr: SocketAddr) -> io::Result<()> {
    let socket = new_socket(addr)?;
    let raw = socket.as_raw_fd();
    // SO_REUSEADDR lets the probe bind past connections in TIME_WAIT, as our listeners
    // will; it never lets a socket bind beside a listener.
    set_option(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        set_option(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of `len` bytes for `addr`'s family.
    check(unsafe { libc::bind(raw, (&raw const storage).cast(), len) }).map(drop)
}

fn new_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket(2) has no memory arguments; the result is checked before use.
    let fd = check(unsafe {
        libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0)
    })?;
    // SAFETY: `fd` is a descriptor we just created and own alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open(addr: SocketAddr, config: &RuntimeConfig) -> io::Result<OwnedFd> {
    let socket = new_socket(addr)?;
    let raw = socket.as_raw_fd();
    set_option(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_option(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if addr.is_ipv6() {
        // Let "[::]" and "0.0.0.0" listeners coexist on one port.
        set_option(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    set_option(raw, libc::IPPROTO_TCP, libc::TCP_NODELAY, i32::from(config.tcp_nodelay))?;
    if config.socket_rcvbuf_bytes > 0 {
        set_option(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            bytes_option(config.socket_rcvbuf_bytes),
        )?;
    }
    if config.socket_sndbuf_bytes > 0 {
        set_option(
            raw,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            bytes_option(config.socket_sndbuf_bytes),
        )?;
    }
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of `len` bytes for `addr`'s family.
    check(unsafe { libc::bind(raw, (&raw const storage).cast(), len) })?;
    let backlog = i32::try_from(config.listen_backlog).unwrap_or(i32::MAX);
    // SAFETY: listen(2) has no memory arguments.
    check(unsafe { libc::listen(raw, backlog) })?;
    Ok(socket)
}

fn bytes_option(bytes: u32) -> i32 {
    i32::try_from(bytes).unwrap_or(i32::MAX)
}

fn set_option(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    let len = mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `value` is a live i32 and `len` its size, as these options expect.
    check(unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), len) }).map(drop)
}

fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is a valid (unspecified) address.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` has room for any address and `len` says so.
    check(unsafe { libc::getsockname(fd, (&raw mut storage).cast(), &mut len) })?;
    from_sockaddr(&storage)
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid (unspecified) address.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            let sin = (storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*sin };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        family => Err(io::Error::other(format!("unexpected address family {family}"))),
    }
}

fn check(result: i32) -> io::Result<i32> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(fd: RawFd, level: i32, name: i32) -> i32 {
        let mut value = 0i32;
        let mut len = mem::size_of::<i32>() as libc::socklen_t;
        let value_ptr = (&raw mut value).cast();
        // SAFETY: `value` is a live i32 and `len` its size.
        let result = unsafe { libc::getsockopt(fd, level, name, value_ptr, &mut len) };
        assert_eq!(result, 0);
        value
    }

    /// A port another reuse-port group already listens on (here: a second broker's
    /// listeners) is refused at start-up instead of silently shared.
    #[test]
    fn a_port_another_broker_listens_on_is_refused() {
        let first = bind_all(&RuntimeConfig {
            listeners: vec!["127.0.0.1:0".parse().expect("address")],
            workers: 2,
            ..RuntimeConfig::default()
        })
        .expect("first bind");
        let taken = first.addrs[0];
        let second = bind_all(&RuntimeConfig {
            listeners: vec![taken],
            workers: 2,
            ..RuntimeConfig::default()
        });
        let error = second.expect_err("a second group on the same port");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
        assert!(error.to_string().contains(&taken.to_string()), "{error}");
        drop(first);
        // Once the first broker is gone the port is free again.
        bind_all(&RuntimeConfig { listeners: vec![taken], workers: 2, ..RuntimeConfig::default() })
            .expect("the port after the first group closed");
    }

    /// Port 0 resolves once and every worker's socket shares it; the options are on the
    /// listener, where accepted sockets inherit them.
    #[test]
    fn every_worker_listens_on_one_resolved_port_with_the_options() {
        let config = RuntimeConfig {
            listeners: vec![
                "127.0.0.1:0".parse().expect("address"),
                "[::1]:0".parse().expect("address"),
            ],
            workers: 3,
            socket_rcvbuf_bytes: 64 * 1024,
            ..RuntimeConfig::default()
        };
        let listeners = bind_all(&config).expect("bind");
        assert_eq!(listeners.per_worker.len(), 3);
        for (index, addr) in listeners.addrs.iter().enumerate() {
            assert_ne!(addr.port(), 0);
            for sockets in &listeners.per_worker {
                assert_eq!(local_addr(sockets[index].as_raw_fd()).expect("name"), *addr);
                assert_eq!(
                    option(sockets[index].as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY),
                    1
                );
                // Linux doubles the requested size for its bookkeeping.
                assert_eq!(
                    option(sockets[index].as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF),
                    128 * 1024
                );
            }
        }
        let accepted = std::net::TcpStream::connect(listeners.addrs[0]);
        assert!(accepted.is_ok(), "a client can connect to the shared port");
    }
}
