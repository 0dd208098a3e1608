//! Command-line interface: subcommands, their options, and how they become a [`LoadConfig`].

use std::net::Ipv4Addr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ringmq::protocol::QoS;

use crate::plan::{LoadConfig, Plan, Target};

#[derive(Parser, Debug)]
#[command(
    name = "ringmq-bench",
    version,
    about = "MQTT 3.1.1 load generator (any broker) on io_uring"
)]
pub struct Cli {
    /// Print the final summary as one JSON object on stdout (the text goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress line each second.
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open many connections at a given rate and hold them with keepalive pings.
    Conn {
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        conns: u32,
    },
    /// Publishers only (latency is publish-to-ack at QoS 1/2).
    Pub {
        #[command(flatten)]
        connection: ConnectionArgs,
        #[command(flatten)]
        messages: MessageArgs,
        /// Publishers.
        #[arg(long, default_value_t = 1)]
        pubs: u32,
    },
    /// Subscribers only (for publishers in another process; loss is counted from gaps).
    Sub {
        #[command(flatten)]
        connection: ConnectionArgs,
        #[command(flatten)]
        messages: MessageArgs,
        /// Subscribers.
        #[arg(long, default_value_t = 1)]
        subs: u32,
    },
    /// Publishers and subscribers in one process: pairs, fan-out or fan-in.
    Pubsub {
        #[command(flatten)]
        connection: ConnectionArgs,
        #[command(flatten)]
        messages: MessageArgs,
        #[command(flatten)]
        pattern: PatternArgs,
    },
    /// The same as pubsub, through a trivial forwarder this process runs: the machine's ceiling.
    Relay {
        #[command(flatten)]
        connection: ConnectionArgs,
        #[command(flatten)]
        messages: MessageArgs,
        #[command(flatten)]
        pattern: PatternArgs,
        /// Output queued per relay connection before its publishers are paused.
        #[arg(long, default_value_t = 4 << 20)]
        relay_queue_bytes: usize,
    },
    /// TLS handshakes per second or throughput over TLS (blocking threads with rustls; see
    /// src/tls.rs); --plain for the same over plain TCP.
    Tls(crate::tls::TlsArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ConnectionArgs {
    /// Broker addresses: a comma-separated list of IPv4 addresses or ranges (a.b.c.d-a.b.c.e);
    /// connections are spread over them.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Source addresses to bind before connecting (list or ranges, e.g. 127.1.0.1-127.1.0.40):
    /// each (source, host) pair gives ~28k ephemeral ports. For many connections prefer a few
    /// sources and many hosts (a broker on 0.0.0.0 answers on all of 127/8): a source port
    /// then serves one connection per host, and the kernel's bind buckets per (source, port),
    /// walked on every connect, stay few (scripts/million.sh).
    #[arg(long)]
    pub source: Option<String>,
    /// Worker threads, one io_uring each (raised if the connections need more file tables).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Direct-descriptor slots per worker ring (at most RLIMIT_NOFILE).
    #[arg(long, default_value_t = 16_384)]
    pub ring_files: u32,
    /// Keepalive sent in CONNECT; a PINGREQ goes out after half of it without output. 0: none.
    #[arg(long, default_value_t = 60)]
    pub keepalive: u16,
    /// Connections opened per second; 0: as fast as --connect-inflight allows.
    #[arg(long, default_value_t = 0)]
    pub connect_rate: u64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 1000)]
    pub connect_inflight: u64,
    /// Seconds allowed for all connections to be ready (after the ramp at --connect-rate).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Create, bind and install sockets with system calls instead of linked io_uring
    /// operations (the automatic fallback on kernels without IORING_OP_BIND).
    #[arg(long)]
    pub sync_connect: bool,
    /// Seconds to publish (or, for conn, to hold the connections).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait after publishing for the last deliveries and acks.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Client ids are <prefix>-<connection number>; default rmqb-<pid>.
    #[arg(long)]
    pub client_id_prefix: Option<String>,
    /// CONNECT with CleanSession=0: the broker keeps each client's session (subscriptions,
    /// queued QoS 1/2 messages) after it disconnects (persistence benchmarks).
    #[arg(long)]
    pub persistent_sessions: bool,
    /// Also report this process's CPU use (the broker's), from /proc/<pid>/stat.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Provided receive buffers per worker (power of two) and their size in bytes. Defaults:
    /// 1024 x 16 KiB with message traffic, 128 x 4 KiB for `conn` (only CONNACK/PINGRESP
    /// arrive, and many threads may each need a pool).
    #[arg(long)]
    pub recv_buffers: Option<u16>,
    #[arg(long)]
    pub recv_buffer_bytes: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct MessageArgs {
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size, at least 24 (the stamp).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Messages per second over all publishers; 0: max rate (QoS 0: as fast as TCP takes it;
    /// QoS 1/2: pipelined up to --window unacknowledged per publisher).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 64)]
    pub window: u16,
    /// End-to-end flow control: a publisher stays at most this many messages ahead of what
    /// its subscribers (in this process) received, so max rate finds the sustainable rate
    /// instead of filling the broker's queues. A lost message holds its publisher until the
    /// run ends. 0: off.
    #[arg(long, default_value_t = 0)]
    pub e2e_window: u64,
    /// Messages per publisher, then it stops (the run ends early when all have).
    #[arg(long)]
    pub count: Option<u64>,
    /// Topics are <prefix>/<n>.
    #[arg(long, default_value = "ringmq-bench")]
    pub topic_prefix: String,
    /// Topics (default: one per publisher for pub, per subscriber for sub).
    #[arg(long)]
    pub topics: Option<u32>,
    /// First publisher id stamped in payloads (keep separate pub processes distinct).
    #[arg(long, default_value_t = 0)]
    pub publisher_id_base: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Pattern {
    /// n publishers, n subscribers, n topics: publisher i -> subscriber i.
    Pairs,
    /// 1 publisher, n subscribers, 1 topic.
    Fanout,
    /// n publishers, 1 subscriber, 1 topic.
    Fanin,
}

#[derive(Args, Debug, Clone)]
pub struct PatternArgs {
    #[arg(long, value_enum, default_value_t = Pattern::Pairs)]
    pub pattern: Pattern,
    /// Size of the pattern (pairs, fan-out subscribers, fan-in publishers).
    #[arg(short = 'n', long, default_value_t = 10)]
    pub clients: u32,
    /// Override the pattern's publisher count.
    #[arg(long)]
    pub pubs: Option<u32>,
    /// Override the pattern's subscriber count.
    #[arg(long)]
    pub subs: Option<u32>,
}

impl PatternArgs {
    pub fn plan(&self, topics: Option<u32>) -> Plan {
        let n = self.clients;
        let (publishers, subscribers, default_topics) = match self.pattern {
            Pattern::Pairs => (n, n, n),
            Pattern::Fanout => (1, n, 1),
            Pattern::Fanin => (n, 1, 1),
        };
        Plan {
            publishers: self.pubs.unwrap_or(publishers),
            subscribers: self.subs.unwrap_or(subscribers),
            topics: topics.unwrap_or(default_topics).max(1),
            idle: 0,
        }
    }
}

/// Parses "a.b.c.d,a.b.c.d-a.b.c.e,..." into addresses.
pub fn parse_addresses(text: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut addresses = Vec::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let parse = |s: &str| s.trim().parse::<Ipv4Addr>().map_err(|e| format!("{s:?}: {e}"));
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
                if last < first || last - first >= 1 << 20 {
                    return Err(format!("range {part:?} is reversed or too large"));
                }
                addresses.extend((first..=last).map(Ipv4Addr::from));
            }
            None => addresses.push(parse(part)?),
        }
    }
    if addresses.is_empty() {
        return Err(format!("no address in {text:?}"));
    }
    Ok(addresses)
}

fn seconds(value: f64, name: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("{name} must be a non-negative number of seconds"))
}

/// Builds a run's configuration; `progress` prints the line each second.
pub fn load_config(
    connection: &ConnectionArgs,
    messages: Option<&MessageArgs>,
    plan: Plan,
    progress: bool,
) -> Result<LoadConfig, String> {
    let defaults = MessageArgs {
        qos: 0,
        payload_bytes: 64,
        rate: 0,
        window: 64,
        e2e_window: 0,
        count: None,
        topic_prefix: "ringmq-bench".into(),
        topics: None,
        publisher_id_base: 0,
    };
    let messages = messages.unwrap_or(&defaults);
    let target = Target {
        hosts: parse_addresses(&connection.host)?,
        port: connection.port,
        sources: connection.source.as_deref().map(parse_addresses).transpose()?.unwrap_or_default(),
    };
    let ring_files = connection.ring_files.max(1);
    let threads_needed = plan.connections().div_ceil(u64::from(ring_files)) as usize;
    let idle_only = plan.publishers == 0 && plan.subscribers == 0;
    let recv_buffers = connection.recv_buffers.unwrap_or(if idle_only { 128 } else { 1024 });
    let recv_buffer_bytes =
        connection.recv_buffer_bytes.unwrap_or(if idle_only { 4096 } else { 16 * 1024 });
    if !recv_buffers.is_power_of_two() || recv_buffers > 32_768 || recv_buffer_bytes == 0 {
        return Err("--recv-buffers must be a power of two up to 32768, of at least 1 byte".into());
    }
    let config = LoadConfig {
        target,
        plan,
        threads: connection.threads.max(threads_needed),
        ring_files_max: ring_files,
        keepalive_secs: connection.keepalive,
        clean_session: !connection.persistent_sessions,
        qos: QoS::from_u8(messages.qos).ok_or("--qos must be 0, 1 or 2")?,
        payload_bytes: messages.payload_bytes,
        rate_per_sec: messages.rate,
        window: messages.window,
        e2e_window: messages.e2e_window,
        count_per_publisher: messages.count,
        duration: seconds(connection.duration, "--duration")?,
        drain: seconds(connection.drain, "--drain")?,
        connect_rate_per_sec: connection.connect_rate,
        connect_inflight_max: connection.connect_inflight.max(1),
        connect_timeout: seconds(connection.connect_timeout, "--connect-timeout")?,
        connect_with_syscalls: connection.sync_connect,
        topic_prefix: messages.topic_prefix.clone(),
        client_id_prefix: connection
            .client_id_prefix
            .clone()
            .unwrap_or_else(|| format!("rmqb-{}", std::process::id())),
        publisher_id_base: messages.publisher_id_base,
        progress,
        recv_buffers,
        recv_buffer_bytes,
    };
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_lists_and_ranges() {
        let parsed = parse_addresses("127.0.0.1, 127.1.0.254-127.1.1.1").expect("valid");
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed[4], Ipv4Addr::new(127, 1, 1, 1));
        assert!(parse_addresses("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_addresses("localhost").is_err());
    }

    #[test]
    fn patterns_become_plans() {
        let args = |pattern| PatternArgs { pattern, clients: 8, pubs: None, subs: None };
        let fanout = args(Pattern::Fanout).plan(None);
        assert_eq!((fanout.publishers, fanout.subscribers, fanout.topics), (1, 8, 1));
        let pairs = args(Pattern::Pairs).plan(None);
        assert_eq!(pairs.deliveries_per_round(), 8);
        let fanin = args(Pattern::Fanin).plan(Some(2));
        assert_eq!((fanin.publishers, fanin.topics), (8, 2));
    }

    #[test]
    fn large_connection_counts_get_a_ring_per_file_table_and_enough_address_pairs() {
        let parse = |line: &str| match Cli::try_parse_from(line.split_whitespace()) {
            Ok(Cli { command: Command::Conn { connection, conns }, .. }) => (connection, conns),
            other => panic!("{line}: {other:?}"),
        };
        let idle = |conns| Plan { publishers: 0, subscribers: 0, topics: 1, idle: conns };
        let (connection, conns) = parse("b conn --conns 50000 --source 127.1.0.1-127.1.0.2");
        let config = load_config(&connection, None, idle(conns), false).expect("valid");
        assert_eq!(config.threads, 4, "50000 connections / 16384 slots per ring");
        assert_eq!((config.recv_buffers, config.recv_buffer_bytes), (128, 4096));
        let (connection, conns) = parse("b conn --conns 50000");
        let error = load_config(&connection, None, idle(conns), false).expect_err("one pair");
        assert!(error.contains("address pairs"), "{error}");
    }

    #[test]
    fn cli_parses_every_subcommand() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        for line in [
            "ringmq-bench conn --conns 5 --connect-rate 100 --source 127.1.0.1-127.1.0.4",
            "ringmq-bench --json pubsub --pattern fanout -n 4 --qos 1 --rate 1000",
            "ringmq-bench pub --pubs 2 --count 10",
            "ringmq-bench sub --subs 2 --topics 2",
            "ringmq-bench relay --pattern fanin -n 3 --qos 2",
        ] {
            Cli::try_parse_from(line.split_whitespace()).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
}
