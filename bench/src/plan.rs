//! What a load run does: which connection plays which role, which topics they use, and who
//! should receive whom. Pure arithmetic, no I/O.
//!
//! Connections are numbered globally: subscribers first (`0..subs`), then publishers, then idle
//! connections (the `conn` test). Publisher `i` publishes on topic `i % topics` and subscriber
//! `j` subscribes to topic `j % topics`, so one rule covers unicast pairs (P = S = T), fan-out
//! (1 -> N: P = 1, T = 1) and fan-in (N -> 1: S = 1, T = 1). Connection `c` lives on worker
//! thread `c % threads`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ringmq::protocol::QoS;

/// Ephemeral ports per (source, destination) pair we allow ourselves to plan for.
pub const PORTS_PER_ADDRESS_PAIR: u64 = 28_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Subscriber { index: u32, topic: u32 },
    Publisher { index: u32, topic: u32 },
    Idle,
}

/// The shape of the message pattern.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Plan {
    pub publishers: u32,
    pub subscribers: u32,
    pub topics: u32,
    /// Connections that neither publish nor subscribe (held with keepalive pings).
    pub idle: u32,
}

impl Plan {
    pub fn connections(&self) -> u64 {
        u64::from(self.publishers) + u64::from(self.subscribers) + u64::from(self.idle)
    }

    pub fn role(&self, connection: u64) -> Role {
        let subscribers = u64::from(self.subscribers);
        let publishers = u64::from(self.publishers);
        if connection < subscribers {
            let index = connection as u32;
            Role::Subscriber { index, topic: index % self.topics }
        } else if connection < subscribers + publishers {
            let index = (connection - subscribers) as u32;
            Role::Publisher { index, topic: index % self.topics }
        } else {
            Role::Idle
        }
    }

    /// Subscribers of `topic`: each receives every message published on it.
    pub fn subscribers_of(&self, topic: u32) -> u64 {
        count_congruent(self.subscribers, self.topics, topic)
    }

    /// Publishers on `topic`.
    pub fn publishers_of(&self, topic: u32) -> u64 {
        count_congruent(self.publishers, self.topics, topic)
    }

    /// Publishers whose messages subscriber `subscriber` should receive.
    pub fn publishers_for(&self, subscriber: u32) -> impl Iterator<Item = u32> + '_ {
        let topic = subscriber % self.topics;
        (topic..self.publishers).step_by(self.topics as usize)
    }

    /// Deliveries a full run should make per message of every publisher, summed: the
    /// multiplier from published messages to expected receipts.
    pub fn deliveries_per_round(&self) -> u64 {
        (0..self.topics.min(self.publishers.max(self.subscribers)))
            .map(|topic| self.publishers_of(topic) * self.subscribers_of(topic))
            .sum()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.topics == 0 {
            return Err("--topics must be at least 1".into());
        }
        if self.connections() == 0 {
            return Err("nothing to do: no publishers, subscribers or connections".into());
        }
        Ok(())
    }
}

/// How many of `0..count` are congruent to `residue` modulo `modulus`.
fn count_congruent(count: u32, modulus: u32, residue: u32) -> u64 {
    if residue >= count {
        return 0;
    }
    u64::from((count - residue).div_ceil(modulus))
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub hosts: Vec<Ipv4Addr>,
    pub port: u16,
    /// Source addresses to bind before connecting; empty: let the kernel choose.
    pub sources: Vec<Ipv4Addr>,
}

impl Target {
    /// (source, destination) for connection `connection`: destinations vary fastest.
    pub fn addresses(&self, connection: u64) -> (Option<Ipv4Addr>, SocketAddrV4) {
        let hosts = self.hosts.len() as u64;
        let host = self.hosts[(connection % hosts) as usize];
        let source = (!self.sources.is_empty())
            .then(|| self.sources[((connection / hosts) % self.sources.len() as u64) as usize]);
        (source, SocketAddrV4::new(host, self.port))
    }

    /// Connections the address pairs can hold at ~28k ephemeral ports each.
    pub fn capacity(&self) -> u64 {
        self.hosts.len() as u64 * self.sources.len().max(1) as u64 * PORTS_PER_ADDRESS_PAIR
    }
}

/// Everything one load run needs.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: Target,
    pub plan: Plan,
    pub threads: usize,
    /// Direct-descriptor slots per worker ring (each ring's table is capped by RLIMIT_NOFILE).
    pub ring_files_max: u32,
    pub keepalive_secs: u16,
    /// CleanSession in CONNECT (false: persistent sessions).
    pub clean_session: bool,
    pub qos: QoS,
    pub payload_bytes: usize,
    /// Messages per second over all publishers; 0: as fast as flow control allows.
    pub rate_per_sec: u64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    pub window: u16,
    /// Messages per publisher sent but not yet delivered to its subscribers (on average);
    /// 0: no end-to-end flow control. Needs the subscribers in this process.
    pub e2e_window: u64,
    /// Messages per publisher, then it stops; `None`: until the duration ends.
    pub count_per_publisher: Option<u64>,
    /// How long to publish (or, for `conn`, to hold the connections).
    pub duration: Duration,
    /// How long to wait after publishing stops for the last deliveries and acks.
    pub drain: Duration,
    /// Connections opened per second over all threads; 0: as fast as allowed.
    pub connect_rate_per_sec: u64,
    /// Connections being set up at once (TCP + CONNECT + SUBSCRIBE), over all threads.
    pub connect_inflight_max: u64,
    pub connect_timeout: Duration,
    /// Set sockets up with system calls (each briefly a process fd) instead of linked ring
    /// operations; also the fallback where the kernel lacks IORING_OP_BIND.
    pub connect_with_syscalls: bool,
    pub topic_prefix: String,
    pub client_id_prefix: String,
    /// First publisher id, so that several `pub` processes stamp distinct ids.
    pub publisher_id_base: u32,
    /// Print a progress line each second on stderr.
    pub progress: bool,
    /// Provided receive buffers per worker (a power of two) and their size.
    pub recv_buffers: u16,
    pub recv_buffer_bytes: usize,
}

impl LoadConfig {
    pub fn topic_name(&self, topic: u32) -> String {
        format!("{}/{}", self.topic_prefix, topic)
    }

    pub fn max_packet_bytes(&self) -> usize {
        (self.payload_bytes + 64 * 1024).max(1 << 20)
    }

    /// Messages per second for one publisher; 0 when unpaced.
    pub fn rate_per_publisher(&self) -> f64 {
        if self.rate_per_sec == 0 || self.plan.publishers == 0 {
            0.0
        } else {
            self.rate_per_sec as f64 / f64::from(self.plan.publishers)
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.plan.validate()?;
        if self.target.hosts.is_empty() {
            return Err("at least one --host is needed".into());
        }
        if self.payload_bytes < crate::stamp::STAMP_BYTES {
            return Err(format!("--payload-bytes must be at least {}", crate::stamp::STAMP_BYTES));
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.window == 0 {
            return Err("--window must be at least 1".into());
        }
        let capacity = self.target.capacity();
        if self.plan.connections() > capacity {
            return Err(format!(
                "{} connections need more address pairs: {} host(s) x {} source(s) hold about {capacity}",
                self.plan.connections(),
                self.target.hosts.len(),
                self.target.sources.len().max(1)
            ));
        }
        let per_thread = self.plan.connections().div_ceil(self.threads as u64);
        if per_thread > u64::from(self.ring_files_max) {
            return Err(format!(
                "{per_thread} connections per thread exceed --ring-files {}; use more --threads",
                self.ring_files_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(publishers: u32, subscribers: u32, topics: u32) -> Plan {
        Plan { publishers, subscribers, topics, idle: 0 }
    }

    #[test]
    fn pairs_deliver_one_to_one() {
        let pairs = plan(5, 5, 5);
        assert_eq!(pairs.role(0), Role::Subscriber { index: 0, topic: 0 });
        assert_eq!(pairs.role(7), Role::Publisher { index: 2, topic: 2 });
        assert_eq!(pairs.deliveries_per_round(), 5);
        assert_eq!(pairs.publishers_for(3).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn fan_out_and_fan_in_multiply_as_expected() {
        let fan_out = plan(1, 10, 1);
        assert_eq!(fan_out.subscribers_of(0), 10);
        assert_eq!(fan_out.deliveries_per_round(), 10);
        let fan_in = plan(10, 1, 1);
        assert_eq!(fan_in.publishers_for(0).count(), 10);
        assert_eq!(fan_in.deliveries_per_round(), 10);
    }

    #[test]
    fn uneven_topics_count_each_residue() {
        let uneven = plan(7, 3, 2);
        assert_eq!((uneven.publishers_of(0), uneven.publishers_of(1)), (4, 3));
        assert_eq!((uneven.subscribers_of(0), uneven.subscribers_of(1)), (2, 1));
        assert_eq!(uneven.deliveries_per_round(), 4 * 2 + 3);
        assert_eq!(uneven.publishers_for(1).collect::<Vec<_>>(), vec![1, 3, 5]);
        assert_eq!(plan(0, 4, 8).deliveries_per_round(), 0);
    }

    #[test]
    fn addresses_spread_over_hosts_then_sources() {
        let target = Target {
            hosts: vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
            port: 1883,
            sources: vec![Ipv4Addr::new(127, 1, 0, 1), Ipv4Addr::new(127, 1, 0, 2)],
        };
        let pairs: Vec<_> = (0..4).map(|c| target.addresses(c)).collect();
        assert_eq!(pairs[1].1.ip(), &Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(pairs[2].0, Some(Ipv4Addr::new(127, 1, 0, 2)));
        assert_eq!(target.capacity(), 4 * PORTS_PER_ADDRESS_PAIR);
    }
}
