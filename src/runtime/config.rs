//! The runtime's knobs and limits: listeners, workers, rings, buffers, sockets.

use std::net::SocketAddr;

use crate::transport::{ListenerKind, TlsFiles};

/// Everything the runtime sizes itself from. Memory that can be sized from these is sized at
/// start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Plain-TCP MQTT listen addresses; each worker has its own SO_REUSEPORT socket on each.
    pub listeners: Vec<SocketAddr>,
    /// TLS, WebSocket and WSS listen addresses (never `ListenerKind::Mqtt`), bound after
    /// `listeners`, each with its own sockets per worker too.
    pub layered_listeners: Vec<(SocketAddr, ListenerKind)>,
    /// The HTTP path WebSocket listeners upgrade on.
    pub ws_path: String,
    /// Certificates and client-certificate rules for the TLS listeners.
    pub tls: TlsFiles,
    /// Worker threads, each pinned to core `i mod cores`, each with its own ring.
    pub workers: usize,
    /// Connections the whole process holds (Mosquitto's `max_connections`). Beyond it a new
    /// connection is accepted and closed at once (counted).
    pub max_connections: usize,
    /// Slots in each ring's registered (direct) file table (the kernel caps it at
    /// RLIMIT_NOFILE).
    pub file_table_slots: u32,
    /// Rings a worker may own, each with a file table of `file_table_slots`: a worker's
    /// connection cap is the product. A worker starts with one and adds another when the one
    /// taking new connections is nearly full (`rings.rs`). Capped at run time so that rings
    /// x slots stays within a `user_data`'s slot field (838 rings of 20000).
    pub rings_per_worker_max: u16,
    /// Rings a worker sets up at start (at most `rings_per_worker_max`).
    pub rings_per_worker_start: u16,
    /// Submission queue entries per ring (the completion queue is twice this).
    pub ring_entries: u32,
    /// Provided receive buffers per worker, and the size of each. The default count shrinks
    /// as workers grow ([`RuntimeConfig::default_recv_buffers`]): the process total stays
    /// near 8192 buffers (128 MiB at 16 KiB) instead of 64 MiB per worker.
    pub recv_buffers: u16,
    pub recv_buffer_bytes: u32,
    /// Receive buffers per ring for connections that have not sent their CONNECT yet, of
    /// `bufring::FIRST_RECV_BUFFER_BYTES` each, apart from the buffers established
    /// connections' pings take (a power of two). Also the most first receives a ring arms per
    /// turn: the rest wait for a later turn, oldest first (counted, `events.rs`).
    pub first_recv_buffers: u16,
    /// Receive buffers per ring (256 bytes each, a power of two) that only receives re-armed
    /// after their connection's receive found no shared buffer (ENOBUFS) draw from: pings
    /// cannot take them. Also the most such receives a ring has armed at once.
    pub starved_recv_buffers: u16,
    /// Depth of each SPSC ring between two workers, in messages. There are
    /// `workers × (workers − 1)` rings, so the default shrinks as workers grow
    /// ([`RuntimeConfig::default_mesh_ring_depth`]).
    pub mesh_ring_depth: usize,
    /// Messages a worker holds for one full peer ring before it stops reading from the
    /// connections that produce them (backpressure; never a drop of QoS 1/2).
    pub mesh_overflow_max: usize,
    /// SO_RCVBUF / SO_SNDBUF for accepted sockets; 0 leaves the kernel default.
    pub socket_rcvbuf_bytes: u32,
    pub socket_sndbuf_bytes: u32,
    /// TCP_NODELAY on accepted sockets (Mosquitto's `set_tcp_nodelay`); ringmq batches writes
    /// itself, so it defaults to on.
    pub tcp_nodelay: bool,
    /// listen(2) backlog.
    pub listen_backlog: u32,
    /// Packets one loop turn decodes at most; input beyond it waits (its connection's receive
    /// paused) for the next turn, so a flood cannot starve output and timers.
    pub turn_packets_max: usize,
    /// How long a closing connection's already-taken output may take to leave before the send
    /// is cancelled and the connection closed anyway (a peer that stopped reading cannot hold
    /// a slot forever).
    pub close_linger_millis: u64,
    /// Persistence (each worker's journal, `persist`); `None` keeps everything in memory.
    pub persistence: Option<crate::persist::PersistConfig>,
    /// Threads that verify passwords off the ring loops (`verify.rs`); 0 = inline.
    pub auth_verify_threads: usize,
    /// Verifications queued at most; a CONNECT beyond it is refused 0x03 (counted).
    pub auth_verify_queue_max: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            listeners: vec![SocketAddr::from(([0, 0, 0, 0], 1883))],
            layered_listeners: Vec::new(),
            ws_path: "/mqtt".to_owned(),
            tls: TlsFiles::default(),
            workers,
            max_connections: 1_000_000,
            file_table_slots: 20_000,
            rings_per_worker_max: 64,
            rings_per_worker_start: 1,
            ring_entries: 4096,
            recv_buffers: Self::default_recv_buffers(workers),
            recv_buffer_bytes: 16 * 1024,
            first_recv_buffers: 64,
            starved_recv_buffers: 256,
            mesh_ring_depth: Self::default_mesh_ring_depth(workers),
            mesh_overflow_max: 65_536,
            socket_rcvbuf_bytes: 0,
            socket_sndbuf_bytes: 0,
            tcp_nodelay: true,
            listen_backlog: 4096,
            turn_packets_max: 16_384,
            close_linger_millis: 2000,
            persistence: None,
            auth_verify_threads: 1,
            auth_verify_queue_max: 4096,
        }
    }
}

/// The largest power of two at most `n` (`n` ≥ 1).
fn power_of_two_at_most(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
}

impl RuntimeConfig {
    /// The default depth of each mesh ring for `workers` workers: 8192 up to 2 workers, then
    /// `16384 / workers` rounded down to a power of two, at least 256. Each worker's inbound
    /// rings together hold about 16384 messages whatever the worker count, so the mesh's
    /// memory grows with `workers` rather than `workers²`: at 80 bytes a message, 1.3 MB for
    /// 2 workers, 21 MB for 16, 54 MB for 52 (was 4.8 GB at 52 with a fixed 8192 and the
    /// handoff record inline).
    pub fn default_mesh_ring_depth(workers: usize) -> usize {
        power_of_two_at_most(16_384 / workers.max(1)).clamp(256, 8192)
    }

    /// The default receive buffers per worker for `workers` workers: 4096 up to 2 workers,
    /// then `8192 / workers` rounded down to a power of two, at least 256 (4 MiB of 16 KiB
    /// buffers per worker; a buffer is only resident once a receive has written it).
    pub fn default_recv_buffers(workers: usize) -> u16 {
        let count = power_of_two_at_most(8192 / workers.max(1)).clamp(256, 4096);
        // Cannot fail: clamped to at most 4096.
        u16::try_from(count).expect("at most 4096")
    }

    /// Whether any listener speaks TLS (and so needs the certificate files).
    pub fn uses_tls(&self) -> bool {
        self.layered_listeners.iter().any(|(_, kind)| kind.uses_tls())
    }

    /// Every listen address with what it speaks: the plain ones first, in the order bound.
    pub fn all_listeners(&self) -> Vec<(SocketAddr, ListenerKind)> {
        let plain = self.listeners.iter().map(|&addr| (addr, ListenerKind::Mqtt));
        plain.chain(self.layered_listeners.iter().copied()).collect()
    }

    /// Checks the values against what the kernel and the runtime's encodings allow.
    pub fn validate(&self) -> Result<(), String> {
        if self.listeners.is_empty() && self.layered_listeners.is_empty() {
            return Err("no listen address".into());
        }
        if self.layered_listeners.iter().any(|(_, kind)| *kind == ListenerKind::Mqtt) {
            return Err("plain MQTT listeners belong in `listeners`".into());
        }
        if self.uses_tls()
            && (self.tls.certfile.as_os_str().is_empty() || self.tls.keyfile.as_os_str().is_empty())
        {
            return Err("a TLS listener needs certfile and keyfile".into());
        }
        if self.workers == 0 || self.workers > crate::broker::WorkerSet::CAPACITY {
            return Err(format!("workers must be 1..={}", crate::broker::WorkerSet::CAPACITY));
        }
        if self.file_table_slots == 0 || self.file_table_slots >= super::user_data::SLOTS_MAX {
            return Err(format!("file_table_slots must be 1..{}", super::user_data::SLOTS_MAX));
        }
        if self.rings_per_worker_max == 0 {
            return Err("rings_per_worker_max must be at least 1".into());
        }
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 1 << 15 {
            return Err("recv_buffers must be a power of two of at most 32768".into());
        }
        if !self.first_recv_buffers.is_power_of_two() || self.first_recv_buffers > 1 << 15 {
            return Err("first_recv_buffers must be a power of two of at most 32768".into());
        }
        if !self.starved_recv_buffers.is_power_of_two() || self.starved_recv_buffers > 1 << 15 {
            return Err("starved_recv_buffers must be a power of two of at most 32768".into());
        }
        if self.recv_buffer_bytes == 0 {
            return Err("recv_buffer_bytes must be positive".into());
        }
        if self.ring_entries == 0 || self.ring_entries > 1 << 15 {
            return Err("ring_entries must be 1..=32768".into());
        }
        if self.turn_packets_max == 0 {
            return Err("turn_packets_max must be positive".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be positive".into());
        }
        if let Some(persistence) = &self.persistence {
            if persistence.compact_bytes == 0 || persistence.pending_bytes_max == 0 {
                return Err(
                    "persistence_compact_bytes and persistence_pending_bytes_max must be positive"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_and_receive_buffer_defaults_shrink_per_worker_as_workers_grow() {
        let depth = RuntimeConfig::default_mesh_ring_depth;
        let buffers = RuntimeConfig::default_recv_buffers;
        assert_eq!(
            [depth(1), depth(2), depth(4), depth(16), depth(52), depth(512)],
            [8192, 8192, 4096, 1024, 256, 256]
        );
        assert_eq!(
            [buffers(1), buffers(2), buffers(4), buffers(52), buffers(128)],
            [4096, 4096, 2048, 256, 256]
        );
        for workers in 1..=512 {
            assert!(depth(workers).is_power_of_two() && buffers(workers).is_power_of_two());
        }
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(RuntimeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn values_the_kernel_or_the_encodings_refuse_are_rejected() {
        let bad = [
            RuntimeConfig { workers: 0, ..RuntimeConfig::default() },
            RuntimeConfig { recv_buffers: 1000, ..RuntimeConfig::default() },
            RuntimeConfig { first_recv_buffers: 0, ..RuntimeConfig::default() },
            RuntimeConfig { starved_recv_buffers: 96, ..RuntimeConfig::default() },
            RuntimeConfig { file_table_slots: 1 << 24, ..RuntimeConfig::default() },
            RuntimeConfig { rings_per_worker_max: 0, ..RuntimeConfig::default() },
            RuntimeConfig { listeners: Vec::new(), ..RuntimeConfig::default() },
            RuntimeConfig { ring_entries: 1 << 16, ..RuntimeConfig::default() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
