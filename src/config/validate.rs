//! Checks a built configuration before anything is sized from it.
//!
//! Every value that the kernel would refuse (ring sizes, the direct file table) or that would
//! make the broker unable to work (no worker, a packet limit of 0, an output buffer smaller
//! than one packet) is an error naming its key; every value that is legal but surprising is a
//! warning. The kernel's own limits come in as [`KernelLimits`], so the checks are pure and
//! tested with made-up limits.

use std::collections::HashSet;
use std::fmt;

use crate::broker::{BrokerConfig, WorkerSet};
use crate::ops::config::{OpsConfig, ADMIN_LIST_MAX_MAX, ADMIN_QUEUE_DEPTH_MAX};
use crate::runtime::RuntimeConfig;
use crate::transport::ListenerKind;

/// `IORING_MAX_ENTRIES`: the largest submission queue `io_uring_setup` accepts.
pub const RING_ENTRIES_MAX: u32 = 32_768;
/// `IORING_MAX_FIXED_FILES`: the largest registered file table.
pub const FILE_TABLE_SLOTS_MAX: u32 = 1 << 20;
/// A provided-buffer ring holds a power of two below 65536 entries.
pub const RECV_BUFFERS_MAX: u16 = 32_768;
/// MQTT 3.1.1's largest Remaining Length (four length bytes).
pub const MAX_PACKET_SIZE_MAX: usize = 268_435_455;
/// One more than the largest `retained_messages_max` (the retained store's u32 keys).
const RETAINED_MESSAGES_LIMIT: usize = u32::MAX as usize;
/// setsockopt(2) and listen(2) take an `int`.
const SOCKET_INT_MAX: u32 = i32::MAX as u32;

/// Limits of the running kernel and process that bound the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLimits {
    /// RLIMIT_NOFILE: the kernel refuses to register a file table larger than the soft
    /// limit, and the runtime raises the soft limit to the hard one at start, so the hard
    /// limit bounds `file_table_slots`. `None`: unlimited or unknown.
    pub open_files_soft: Option<u64>,
    pub open_files_hard: Option<u64>,
}

impl KernelLimits {
    /// No limits known: only the fixed kernel constants are checked.
    pub const UNKNOWN: KernelLimits = KernelLimits { open_files_soft: None, open_files_hard: None };

    /// This process's limits, from `/proc/self/limits` (read without `unsafe`; if it cannot
    /// be read, the limits are unknown and only the kernel constants are checked).
    pub fn of_this_process() -> KernelLimits {
        std::fs::read_to_string("/proc/self/limits")
            .map_or(KernelLimits::UNKNOWN, |text| KernelLimits::parse_proc_limits(&text))
    }

    /// Parses the "Max open files" line of `/proc/<pid>/limits`.
    pub fn parse_proc_limits(text: &str) -> KernelLimits {
        let Some(line) = text.lines().find(|line| line.starts_with("Max open files")) else {
            return KernelLimits::UNKNOWN;
        };
        let mut columns = line["Max open files".len()..].split_whitespace();
        let mut next = || columns.next().and_then(|value| value.parse::<u64>().ok());
        let soft = next();
        let hard = next();
        KernelLimits { open_files_soft: soft, open_files_hard: hard }
    }
}

/// One rejected value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The TOML key (the flag is the same in kebab-case).
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (--{}): {}", self.key, self.key.replace('_', "-"), self.message)
    }
}

/// Collects errors and warnings while checking.
#[derive(Default)]
struct Checker {
    errors: Vec<Invalid>,
    warnings: Vec<String>,
}

impl Checker {
    fn require(&mut self, ok: bool, key: &'static str, message: impl FnOnce() -> String) {
        if !ok {
            self.errors.push(Invalid { key, message: message() });
        }
    }

    fn warn_if(&mut self, surprising: bool, message: impl FnOnce() -> String) {
        if surprising {
            self.warnings.push(message());
        }
    }
}

/// Checks both configs. `Ok` carries warnings (legal but probably unintended values).
pub fn validate(
    runtime: &RuntimeConfig,
    broker: &BrokerConfig,
    kernel: &KernelLimits,
) -> Result<Vec<String>, Vec<Invalid>> {
    let mut checker = Checker::default();
    check_listeners(&mut checker, runtime);
    check_transports(&mut checker, runtime);
    check_capacity(&mut checker, runtime, kernel);
    check_rings(&mut checker, runtime);
    check_broker(&mut checker, broker);
    check_auth(&mut checker, runtime, broker);
    if checker.errors.is_empty() {
        Ok(checker.warnings)
    } else {
        Err(checker.errors)
    }
}

fn check_listeners(checker: &mut Checker, runtime: &RuntimeConfig) {
    checker.require(!runtime.all_listeners().is_empty(), "bind", || {
        "at least one listen address is needed".to_owned()
    });
    let mut seen = HashSet::new();
    // SO_REUSEPORT would let two listeners share an address (and split its clients between
    // them at random), so an address is refused twice across all listener kinds.
    for (addr, kind) in runtime.all_listeners() {
        let key = bind_key(kind);
        checker.require(seen.insert(addr), key, || format!("{addr} is listed twice"));
        // Each worker binds its own SO_REUSEPORT socket; with port 0 each would get a
        // different ephemeral port.
        let port_key = if kind == ListenerKind::Mqtt { "port" } else { key };
        checker.require(addr.port() != 0, port_key, || {
            format!("{addr}: port 0 is not supported (each worker would get its own port)")
        });
    }
    checker.require(
        (1..=SOCKET_INT_MAX).contains(&runtime.listen_backlog),
        "listen_backlog",
        || format!("must be 1..={SOCKET_INT_MAX}, got {}", runtime.listen_backlog),
    );
    for (key, bytes) in [
        ("socket_rcvbuf_bytes", runtime.socket_rcvbuf_bytes),
        ("socket_sndbuf_bytes", runtime.socket_sndbuf_bytes),
    ] {
        checker.require(bytes <= SOCKET_INT_MAX, key, || {
            format!("must be at most {SOCKET_INT_MAX} (0 keeps the kernel default), got {bytes}")
        });
    }
}

fn bind_key(kind: ListenerKind) -> &'static str {
    match kind {
        ListenerKind::Mqtt => "bind",
        ListenerKind::Mqtts => "tls_bind",
        ListenerKind::Ws => "ws_bind",
        ListenerKind::Wss => "wss_bind",
    }
}

/// TLS needs its files, and client-certificate options need each other (as in Mosquitto).
fn check_transports(checker: &mut Checker, runtime: &RuntimeConfig) {
    let tls = &runtime.tls;
    let given = |path: &std::path::Path| !path.as_os_str().is_empty();
    if runtime.uses_tls() {
        for (key, path) in [("certfile", &tls.certfile), ("keyfile", &tls.keyfile)] {
            checker.require(given(path), key, || {
                "a TLS listener (tls_bind, wss_bind) needs certfile and keyfile".to_owned()
            });
        }
    } else {
        checker.warn_if(given(&tls.certfile) || given(&tls.cafile), || {
            "certfile/cafile are set but no TLS listener (tls_bind, wss_bind) uses them".to_owned()
        });
    }
    checker.require(!tls.require_certificate || given(&tls.cafile), "require_certificate", || {
        "needs cafile (the CAs that sign client certificates)".to_owned()
    });
    checker.require(
        !tls.use_identity_as_username || tls.require_certificate,
        "use_identity_as_username",
        || "needs require_certificate = true (the name comes from the certificate)".to_owned(),
    );
    let path = &runtime.ws_path;
    checker.require(
        path.starts_with('/') && !path.contains(char::is_whitespace),
        "ws_path",
        || format!("must be an HTTP path starting with `/`, got {path:?}"),
    );
}

fn check_capacity(checker: &mut Checker, runtime: &RuntimeConfig, kernel: &KernelLimits) {
    let workers = runtime.workers;
    checker.require((1..=WorkerSet::CAPACITY).contains(&workers), "workers", || {
        format!(
            "must be 1..={} (the width of the cross-worker interest sets), got {workers}",
            WorkerSet::CAPACITY
        )
    });
    checker.require(runtime.max_connections >= 1, "max_connections", || {
        "must be at least 1 (ringmq bounds every table; Mosquitto's -1 has no equivalent)"
            .to_owned()
    });
    let slots = runtime.file_table_slots;
    let hard = kernel.open_files_hard.unwrap_or(u64::MAX);
    let slots_max = u64::from(FILE_TABLE_SLOTS_MAX).min(hard);
    checker.require((1..=slots_max).contains(&u64::from(slots)), "file_table_slots", || {
        format!(
            "must be 1..={slots_max} (the kernel's IORING_MAX_FIXED_FILES {FILE_TABLE_SLOTS_MAX} \
             and this process's hard RLIMIT_NOFILE {}), got {slots}",
            kernel.open_files_hard.map_or("unlimited".to_owned(), |n| n.to_string())
        )
    });
    checker.require(runtime.rings_per_worker_max >= 1, "rings_per_worker_max", || {
        "must be at least 1 (a worker's first ring)".to_owned()
    });
}

fn check_rings(checker: &mut Checker, runtime: &RuntimeConfig) {
    let entries = runtime.ring_entries;
    checker.require(
        entries.is_power_of_two() && entries <= RING_ENTRIES_MAX,
        "ring_entries",
        || format!("must be a power of two, 1..={RING_ENTRIES_MAX}, got {entries}"),
    );
    let buffers = runtime.recv_buffers;
    checker.require(
        buffers.is_power_of_two() && buffers <= RECV_BUFFERS_MAX,
        "recv_buffers",
        || format!("must be a power of two, 1..={RECV_BUFFERS_MAX}, got {buffers}"),
    );
    let first = runtime.first_recv_buffers;
    checker.require(
        first.is_power_of_two() && first <= RECV_BUFFERS_MAX,
        "first_recv_buffers",
        || format!("must be a power of two, 1..={RECV_BUFFERS_MAX}, got {first}"),
    );
    let starved = runtime.starved_recv_buffers;
    checker.require(
        starved.is_power_of_two() && starved <= RECV_BUFFERS_MAX,
        "starved_recv_buffers",
        || format!("must be a power of two, 1..={RECV_BUFFERS_MAX}, got {starved}"),
    );
    checker.require(runtime.recv_buffer_bytes >= 1, "recv_buffer_bytes", || {
        "must be at least 1".to_owned()
    });
    checker.require(runtime.turn_packets_max >= 1, "turn_packets_max", || {
        "must be at least 1 (a turn that may decode nothing would never read)".to_owned()
    });
    let depth = runtime.mesh_ring_depth;
    checker.require(depth.is_power_of_two(), "mesh_ring_depth", || {
        format!("must be a power of two (at least 1), got {depth}")
    });
}

fn check_broker(checker: &mut Checker, broker: &BrokerConfig) {
    let packet = broker.max_packet_size;
    checker.require((1..=MAX_PACKET_SIZE_MAX).contains(&packet), "max_packet_size", || {
        format!("must be 1..={MAX_PACKET_SIZE_MAX} (MQTT's largest packet), got {packet}")
    });
    for (key, value) in [
        ("sessions_max", broker.sessions_max),
        ("subscriptions_per_session_max", broker.subscriptions_per_session_max),
        ("max_awaiting_pubrel", broker.max_awaiting_pubrel),
    ] {
        checker.require(value >= 1, key, || {
            "must be at least 1 (ringmq bounds every queue and table; Mosquitto's 0 for \
             'no limit' has no equivalent)"
                .to_owned()
        });
    }
    for (key, value) in [
        ("max_queued_messages", broker.max_queued_messages),
        ("max_queued_bytes", broker.max_queued_bytes),
    ] {
        checker.warn_if(value == 0, || {
            format!(
                "{key} = 0: no message is queued for any session (in Mosquitto 0 meant no \
                 limit; ringmq bounds every queue)"
            )
        });
    }
    checker.require(broker.outbuf_bytes_max >= packet, "outbuf_bytes_max", || {
        format!(
            "must be at least max_packet_size ({packet}), or a largest packet could never be \
             sent; got {}",
            broker.outbuf_bytes_max
        )
    });
    // The retained store keys its messages with u32 and reserves u32::MAX as "none".
    let retained = broker.retained_messages_max;
    checker.require(retained < RETAINED_MESSAGES_LIMIT, "retained_messages_max", || {
        format!("must be 0..={}, got {retained}", RETAINED_MESSAGES_LIMIT - 1)
    });
    checker.require(broker.connect_timeout_secs >= 1, "connect_timeout_secs", || {
        "must be at least 1".to_owned()
    });
    checker.warn_if(broker.max_queued_bytes != 0 && broker.max_queued_bytes < packet, || {
        format!(
            "max_queued_bytes {} is less than max_packet_size {packet}: a session cannot \
             queue one largest message",
            broker.max_queued_bytes
        )
    });
}

/// The failed-login limiter needs a window and a table when it is on; the files are read
/// (and refused with their line) by the runtime at start.
fn check_auth(checker: &mut Checker, runtime: &RuntimeConfig, broker: &BrokerConfig) {
    checker.require(
        runtime.auth_verify_threads == 0 || runtime.auth_verify_queue_max >= 1,
        "auth_verify_queue_max",
        || "must be at least 1 while auth_verify_threads is on".to_owned(),
    );
    if broker.auth_failures_max == 0 {
        return;
    }
    checker.require(broker.auth_failure_window_secs >= 1, "auth_failure_window_secs", || {
        "must be at least 1 while auth_failures_max is on".to_owned()
    });
    checker.require(broker.auth_failure_addresses_max >= 1, "auth_failure_addresses_max", || {
        "must be at least 1 while auth_failures_max is on".to_owned()
    });
    checker.warn_if(broker.password_file.is_none() && !broker.allow_anonymous, || {
        "allow_anonymous = false without a password_file: any user name is accepted".to_owned()
    });
}

/// Checks the operations settings and adds its errors and warnings to `checked` (so every
/// problem is reported at once). The token file is read here: `--check-config` must catch a
/// missing or empty one.
pub fn check_ops(ops: &OpsConfig, checked: &mut Result<Vec<String>, Vec<Invalid>>) {
    let mut checker = Checker::default();
    let depth = ops.admin_queue_depth;
    checker.require((1..=ADMIN_QUEUE_DEPTH_MAX).contains(&depth), "admin_queue_depth", || {
        format!("must be 1..={ADMIN_QUEUE_DEPTH_MAX}, got {depth}")
    });
    let list = ops.admin_list_max;
    checker.require((1..=ADMIN_LIST_MAX_MAX).contains(&list), "admin_list_max", || {
        format!("must be 1..={ADMIN_LIST_MAX_MAX}, got {list}")
    });
    let both = !ops.admin_token.is_empty() && !ops.admin_token_file.as_os_str().is_empty();
    checker.require(!both, "admin_token", || {
        "give admin_token or admin_token_file, not both".to_owned()
    });
    if !both {
        match ops.read_token() {
            Err(message) => checker.require(false, "admin_token_file", || message),
            Ok(Some(token)) => checker.warn_if(token.len() < 16, || {
                format!("the admin token is {} characters long; 16 or more is safer", token.len())
            }),
            Ok(None) => checker.warn_if(ops.http_port != 0, || {
                "no admin_token or admin_token_file: the admin API answers 403".to_owned()
            }),
        }
    }
    checker.warn_if(ops.http_port != 0 && !ops.http_address.is_loopback(), || {
        format!(
            "http_address {} is not loopback: /metrics and the dashboard page are served \
             without a token",
            ops.http_address
        )
    });
    match checked {
        Ok(warnings) if checker.errors.is_empty() => warnings.extend(checker.warnings),
        Ok(_) => *checked = Err(checker.errors),
        Err(errors) => errors.extend(checker.errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: KernelLimits =
        KernelLimits { open_files_soft: Some(1024), open_files_hard: Some(524_288) };

    fn defaults() -> (RuntimeConfig, BrokerConfig) {
        (RuntimeConfig { workers: 2, ..Default::default() }, BrokerConfig::default())
    }

    /// The keys rejected after `change` is applied to valid defaults.
    fn rejected(change: impl FnOnce(&mut RuntimeConfig, &mut BrokerConfig)) -> Vec<&'static str> {
        let (mut runtime, mut broker) = defaults();
        change(&mut runtime, &mut broker);
        match validate(&runtime, &broker, &LIMITS) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.key).collect(),
        }
    }

    fn warnings(change: impl FnOnce(&mut RuntimeConfig, &mut BrokerConfig)) -> Vec<String> {
        let (mut runtime, mut broker) = defaults();
        change(&mut runtime, &mut broker);
        validate(&runtime, &broker, &LIMITS).expect("valid")
    }

    #[test]
    fn defaults_are_valid() {
        let (runtime, broker) = defaults();
        assert!(validate(&runtime, &broker, &KernelLimits::UNKNOWN).is_ok());
        assert!(validate(&runtime, &broker, &LIMITS).is_ok());
    }

    #[test]
    fn workers_must_be_1_to_128() {
        assert_eq!(rejected(|r, _| r.workers = 0), ["workers"]);
        assert_eq!(rejected(|r, _| r.workers = 129), ["workers"]);
        assert!(rejected(|r, _| r.workers = 128).is_empty());
    }

    /// A `retained_messages_max` the retained store cannot key is an error naming the key,
    /// not an assertion failure when the broker starts.
    #[test]
    fn retained_messages_max_must_fit_the_store_keys() {
        let limit = u32::MAX as usize;
        assert_eq!(rejected(|_, b| b.retained_messages_max = limit), ["retained_messages_max"]);
        assert!(rejected(|_, b| b.retained_messages_max = limit - 1).is_empty());
        assert!(rejected(|_, b| b.retained_messages_max = 0).is_empty());
    }

    #[test]
    fn max_packet_size_must_fit_mqtt() {
        assert_eq!(rejected(|_, b| b.max_packet_size = 0), ["max_packet_size"]);
        assert_eq!(
            rejected(|_, b| {
                b.max_packet_size = 268_435_456;
                b.outbuf_bytes_max = 1 << 30;
            }),
            ["max_packet_size"]
        );
        assert!(rejected(|_, b| {
            b.max_packet_size = 268_435_455;
            b.outbuf_bytes_max = 1 << 30;
        })
        .is_empty());
    }

    #[test]
    fn outbuf_must_hold_one_largest_packet() {
        assert_eq!(
            rejected(|_, b| b.outbuf_bytes_max = b.max_packet_size - 1),
            ["outbuf_bytes_max"]
        );
    }

    #[test]
    fn ring_sizes_must_be_powers_of_two_within_the_kernel_limits() {
        assert_eq!(rejected(|r, _| r.ring_entries = 3000), ["ring_entries"]);
        assert_eq!(rejected(|r, _| r.ring_entries = 0), ["ring_entries"]);
        assert_eq!(rejected(|r, _| r.ring_entries = 65_536), ["ring_entries"]);
        assert!(rejected(|r, _| r.ring_entries = 32_768).is_empty());
        assert_eq!(rejected(|r, _| r.recv_buffers = 1000), ["recv_buffers"]);
        assert_eq!(rejected(|r, _| r.recv_buffers = 0), ["recv_buffers"]);
        assert_eq!(rejected(|r, _| r.mesh_ring_depth = 100), ["mesh_ring_depth"]);
        assert_eq!(rejected(|r, _| r.recv_buffer_bytes = 0), ["recv_buffer_bytes"]);
        assert_eq!(rejected(|r, _| r.first_recv_buffers = 48), ["first_recv_buffers"]);
        assert_eq!(rejected(|r, _| r.starved_recv_buffers = 0), ["starved_recv_buffers"]);
        assert_eq!(rejected(|r, _| r.turn_packets_max = 0), ["turn_packets_max"]);
    }

    #[test]
    fn file_table_slots_are_bounded_by_the_kernel_and_the_hard_rlimit() {
        assert_eq!(rejected(|r, _| r.file_table_slots = 0), ["file_table_slots"]);
        assert_eq!(rejected(|r, _| r.file_table_slots = 524_289), ["file_table_slots"]);
        assert!(rejected(|r, _| r.file_table_slots = 524_288).is_empty());
        assert_eq!(rejected(|r, _| r.rings_per_worker_max = 0), ["rings_per_worker_max"]);
        assert!(rejected(|r, _| r.rings_per_worker_max = u16::MAX).is_empty());
        let (mut runtime, broker) = defaults();
        runtime.file_table_slots = FILE_TABLE_SLOTS_MAX + 1;
        let errors = validate(&runtime, &broker, &KernelLimits::UNKNOWN).unwrap_err();
        assert_eq!(errors[0].key, "file_table_slots");
        assert!(errors[0].message.contains("IORING_MAX_FIXED_FILES"), "{}", errors[0]);
    }

    #[test]
    fn unbounded_values_are_rejected() {
        assert_eq!(rejected(|r, _| r.max_connections = 0), ["max_connections"]);
        assert_eq!(rejected(|_, b| b.max_awaiting_pubrel = 0), ["max_awaiting_pubrel"]);
        assert_eq!(rejected(|_, b| b.sessions_max = 0), ["sessions_max"]);
        assert_eq!(
            rejected(|_, b| b.subscriptions_per_session_max = 0),
            ["subscriptions_per_session_max"]
        );
        assert!(rejected(|_, b| b.max_inflight_messages = 0).is_empty(), "0 = no maximum");
        assert_eq!(rejected(|_, b| b.connect_timeout_secs = 0), ["connect_timeout_secs"]);
    }

    #[test]
    fn listeners_must_be_distinct_nonzero_ports() {
        assert_eq!(rejected(|r, _| r.listeners.clear()), ["bind"]);
        assert_eq!(rejected(|r, _| r.listeners = vec!["0.0.0.0:0".parse().unwrap()]), ["port"]);
        let twice = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(rejected(|r, _| r.listeners = vec![twice, twice]), ["bind"]);
        assert_eq!(rejected(|r, _| r.listen_backlog = 0), ["listen_backlog"]);
        assert_eq!(rejected(|r, _| r.socket_sndbuf_bytes = u32::MAX), ["socket_sndbuf_bytes"]);
    }

    #[test]
    fn tls_listeners_need_their_files_and_client_certificate_options_need_each_other() {
        let tls = ("127.0.0.1:8883".parse().unwrap(), ListenerKind::Mqtts);
        assert_eq!(rejected(|r, _| r.layered_listeners = vec![tls]), ["certfile", "keyfile"]);
        let with_files = |r: &mut RuntimeConfig| {
            r.layered_listeners = vec![tls];
            r.tls.certfile = "server.pem".into();
            r.tls.keyfile = "server.key".into();
        };
        assert!(rejected(|r, _| with_files(r)).is_empty());
        let required = |r: &mut RuntimeConfig, _: &mut BrokerConfig| {
            with_files(r);
            r.tls.require_certificate = true;
        };
        assert_eq!(rejected(required), ["require_certificate"], "needs cafile");
        let identity = |r: &mut RuntimeConfig, _: &mut BrokerConfig| {
            with_files(r);
            r.tls.cafile = "ca.pem".into();
            r.tls.use_identity_as_username = true;
        };
        assert_eq!(rejected(identity), ["use_identity_as_username"], "needs require_certificate");
        assert_eq!(rejected(|r, _| r.ws_path = "mqtt".into()), ["ws_path"]);
    }

    /// SO_REUSEPORT would let a plain and a WebSocket listener share an address and split
    /// its clients between them: refused, under the later listener's key.
    #[test]
    fn an_address_is_refused_twice_across_listener_kinds() {
        let addr = "127.0.0.1:1883".parse().unwrap();
        let shared = |r: &mut RuntimeConfig, _: &mut BrokerConfig| {
            r.listeners = vec![addr];
            r.layered_listeners = vec![(addr, ListenerKind::Ws)];
        };
        assert_eq!(rejected(shared), ["ws_bind"]);
        let only_ws = |r: &mut RuntimeConfig, _: &mut BrokerConfig| {
            r.listeners.clear();
            r.layered_listeners = vec![(addr, ListenerKind::Ws)];
        };
        assert!(rejected(only_ws).is_empty(), "a WebSocket listener alone is enough");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let keys = rejected(|r, b| {
            r.workers = 0;
            r.ring_entries = 3;
            b.max_packet_size = 0;
        });
        assert_eq!(keys, ["workers", "ring_entries", "max_packet_size"]);
    }

    #[test]
    fn queue_bounds_of_zero_are_legal_but_warned_about() {
        // The core defines 0 as "nothing is queued"; Mosquitto users may mean "no limit".
        let found = warnings(|_, b| b.max_queued_messages = 0);
        assert!(found.iter().any(|w| w.starts_with("max_queued_messages = 0")), "{found:?}");
        let found = warnings(|_, b| b.max_queued_bytes = 0);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("max_queued_bytes = 0"), "{found:?}");
    }

    #[test]
    fn a_small_queue_byte_bound_is_a_warning() {
        let found = warnings(|_, b| b.max_queued_bytes = 1000);
        assert!(found.iter().any(|w| w.contains("cannot queue one largest message")), "{found:?}");
    }

    #[test]
    fn parses_proc_self_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max cpu time              unlimited            unlimited            seconds\n\
                    Max open files            20000                1048576              files\n";
        let limits = KernelLimits::parse_proc_limits(text);
        assert_eq!(limits.open_files_soft, Some(20_000));
        assert_eq!(limits.open_files_hard, Some(1_048_576));
        let unlimited = "Max open files            unlimited            unlimited            files";
        assert_eq!(KernelLimits::parse_proc_limits(unlimited), KernelLimits::UNKNOWN);
        assert_eq!(KernelLimits::parse_proc_limits(""), KernelLimits::UNKNOWN);
    }

    #[test]
    fn this_process_has_readable_limits() {
        // On Linux /proc/self/limits always has the line; the test machine is Linux.
        let limits = KernelLimits::of_this_process();
        assert!(limits.open_files_soft.is_some() && limits.open_files_hard.is_some());
        assert!(limits.open_files_soft <= limits.open_files_hard);
    }

    #[test]
    fn the_failure_limiter_needs_a_window_and_a_table_when_on() {
        assert_eq!(
            rejected(|_, b| b.auth_failure_window_secs = 0),
            vec!["auth_failure_window_secs"]
        );
        assert_eq!(
            rejected(|_, b| b.auth_failure_addresses_max = 0),
            vec!["auth_failure_addresses_max"]
        );
        assert!(rejected(|_, b| {
            b.auth_failures_max = 0;
            b.auth_failure_window_secs = 0;
        })
        .is_empty());
        let warned = warnings(|_, b| b.allow_anonymous = false);
        assert!(warned.iter().any(|w| w.contains("without a password_file")), "{warned:?}");
    }
}
