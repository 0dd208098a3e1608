//! Every setting a user can give, once, as optional values: the command line and the TOML
//! file both parse into [`Settings`], so a flag and its file key cannot drift apart.
//!
//! Invariant: each field is named after its TOML key (snake_case; the flag is the same in
//! kebab-case), and `None` means "not given here". [`Settings::overlay`] puts one source over
//! another (CLI over file), and [`Settings::build`] turns what was given into the two layer
//! configs, taking every value not given from `BrokerConfig::default()` /
//! `RuntimeConfig::default()`. Validation is a separate step (`validate.rs`).
//!
//! Where Mosquitto has the same knob, the key is Mosquitto's (`max_inflight_messages`,
//! `max_queued_messages`, `max_queued_bytes`, `max_packet_size`, `max_connections`,
//! `allow_anonymous`, `persistent_client_expiration`, `max_keepalive`, `sys_interval`,
//! `set_tcp_nodelay`, `queue_qos0_messages`, `port`, `password_file`, `acl_file`); the rest follow ringmq's
//! `thing_unit_max` style and match the field they set.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::bind::BindAddress;
use super::duration::DurationSecs;
use crate::broker::{BrokerConfig, WorkerSet};
use crate::ops::OpsConfig;
use crate::runtime::RuntimeConfig;
use crate::transport::{ListenerKind, TlsFiles};

/// The MQTT port, used by `bind` entries that carry none.
pub const DEFAULT_PORT: u16 = 1883;
/// Ports of `tls_bind`, `ws_bind` and `wss_bind` entries that carry none (8883 is IANA's
/// secure-mqtt; 8083/8084 are the WebSocket ports other brokers ship with).
pub const DEFAULT_TLS_PORT: u16 = 8883;
pub const DEFAULT_WS_PORT: u16 = 8083;
pub const DEFAULT_WSS_PORT: u16 = 8084;

/// Log verbosity when neither `-v` nor `RUST_LOG` says otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// How log lines are written to standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Every knob and limit. Flags are the keys in kebab-case. Each doc comment here is the
/// flag's `--help` text; the default is appended at run time from the layer configs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    // ---- Listeners and workers -------------------------------------------------------------
    /// TCP port for MQTT, used by every `bind` address that does not name its own port.
    #[arg(short = 'p', long, value_name = "PORT", help_heading = "Listeners and workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,

    /// Address to listen on, repeatable: an IP with an optional port (`127.0.0.1`,
    /// `[::1]:1884`). Each worker opens its own SO_REUSEPORT socket on each address.
    #[arg(long, value_name = "ADDR", help_heading = "Listeners and workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<Vec<BindAddress>>,

    /// Worker threads, each with its own io_uring, pinned to core `i mod cores`. At most 128
    /// (the width of the cross-worker interest sets).
    #[arg(long, value_name = "N", help_heading = "Listeners and workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,

    /// Connections the whole process holds. Beyond it a new connection is accepted and
    /// closed at once (counted). Each worker also holds at most `file_table_slots`.
    #[arg(long, value_name = "N", help_heading = "Listeners and workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,

    /// TCP_NODELAY on accepted sockets (true|false). ringmq batches its own writes.
    #[arg(long, value_name = "BOOL", help_heading = "Listeners and workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_tcp_nodelay: Option<bool>,

    /// listen(2) backlog of each listening socket; the kernel caps it at
    /// net.core.somaxconn. When full, new SYNs wait or are dropped by the kernel.
    #[arg(long, value_name = "N", help_heading = "Listeners and workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_backlog: Option<u32>,

    /// SO_RCVBUF for accepted sockets, in bytes; 0 keeps the kernel's default (autotuning).
    #[arg(long, value_name = "BYTES", help_heading = "Listeners and workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_rcvbuf_bytes: Option<u32>,

    /// SO_SNDBUF for accepted sockets, in bytes; 0 keeps the kernel's default (autotuning).
    #[arg(long, value_name = "BYTES", help_heading = "Listeners and workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_sndbuf_bytes: Option<u32>,

    /// Milliseconds a closing connection's already-taken output may take to leave; then the
    /// send is cancelled and the connection closed anyway (a peer that stopped reading
    /// cannot hold a slot forever).
    #[arg(long, value_name = "MILLIS", help_heading = "Listeners and workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_linger_millis: Option<u64>,

    // ---- TLS and WebSocket -----------------------------------------------------------------
    /// Address for MQTT over TLS, repeatable; an entry without a port listens on 8883.
    /// Needs `certfile` and `keyfile`. None by default.
    #[arg(long, value_name = "ADDR", help_heading = "TLS and WebSocket")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_bind: Option<Vec<BindAddress>>,

    /// Address for MQTT over WebSocket, repeatable; an entry without a port listens on 8083.
    /// None by default.
    #[arg(long, value_name = "ADDR", help_heading = "TLS and WebSocket")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_bind: Option<Vec<BindAddress>>,

    /// Address for MQTT over WebSocket over TLS, repeatable; an entry without a port listens
    /// on 8084. Needs `certfile` and `keyfile`. None by default.
    #[arg(long, value_name = "ADDR", help_heading = "TLS and WebSocket")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wss_bind: Option<Vec<BindAddress>>,

    /// HTTP path of the WebSocket upgrade (subprotocols `mqtt` and `mqttv3.1`).
    #[arg(long, value_name = "PATH", help_heading = "TLS and WebSocket")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_path: Option<String>,

    /// PEM file with the server's certificate chain, leaf first (reloaded on SIGHUP).
    #[arg(long, value_name = "FILE", help_heading = "TLS and WebSocket")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certfile: Option<PathBuf>,

    /// PEM file with the server's private key (reloaded on SIGHUP).
    #[arg(long, value_name = "FILE", help_heading = "TLS and WebSocket")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<PathBuf>,

    /// PEM file with the CAs that sign client certificates; when set, clients are asked for
    /// one (reloaded on SIGHUP). Empty: client certificates are not asked for.
    #[arg(long, value_name = "FILE", help_heading = "TLS and WebSocket")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cafile: Option<PathBuf>,

    /// Refuse TLS clients without a certificate signed by `cafile` (mutual TLS; true|false).
    #[arg(long, value_name = "BOOL", help_heading = "TLS and WebSocket")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_certificate: Option<bool>,

    /// Use the client certificate's subject CN as the user name, ignoring the CONNECT's user
    /// name and password; the password file is not consulted on TLS and WSS listeners, as in
    /// Mosquitto (true|false; needs `require_certificate`).
    #[arg(long, value_name = "BOOL", help_heading = "TLS and WebSocket")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_identity_as_username: Option<bool>,

    // ---- Rings and buffers -----------------------------------------------------------------
    /// Slots in each ring's registered (direct) file table. At most 1048576 and the hard
    /// RLIMIT_NOFILE (ringmq raises the soft limit to the hard one at start). A worker holds
    /// at most this times `rings_per_worker_max`; when every table is full it stops
    /// accepting until a slot frees.
    #[arg(long, value_name = "N", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_table_slots: Option<u32>,

    /// Rings (each a file table of `file_table_slots`) a worker may own: it starts with one
    /// and adds another when the one taking new connections is nearly full. At least 1; at
    /// most 16777215 / `file_table_slots` are used (838 of 20000 slots).
    #[arg(long, value_name = "N", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rings_per_worker_max: Option<u16>,

    /// Rings each worker sets up at start (at most `rings_per_worker_max`); more are added as
    /// they fill. Setting up rings ahead keeps a planned load clear of the kernel refusing a
    /// new ring under memory pressure (ENOMEM was seen near a million connections).
    #[arg(long, value_name = "N", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rings_per_worker_start: Option<u16>,

    /// Submission-queue entries per ring, a power of two up to 32768; the completion queue
    /// is twice this.
    #[arg(long, value_name = "N", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_entries: Option<u32>,

    /// Provided receive buffers per worker, a power of two up to 32768. When all are in use,
    /// receives wait for one to be returned. Default: 4096 up to 2 workers, then
    /// 8192 / workers rounded down to a power of two, at least 256.
    #[arg(long, value_name = "N", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recv_buffers: Option<u16>,

    /// Size of each provided receive buffer, in bytes.
    #[arg(long, value_name = "BYTES", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recv_buffer_bytes: Option<u32>,

    /// Receive buffers per ring (512 bytes each, a power of two up to 32768) kept for
    /// connections that have not sent their CONNECT yet, so established connections' pings
    /// cannot take them all and leave a CONNECT unread until the connect timeout. Also the
    /// most first receives a ring starts per loop turn: more wait for the next turn, oldest
    /// first (counted: `ringmq_first_recv_waits_total`).
    #[arg(long, value_name = "N", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_recv_buffers: Option<u16>,

    /// Receive buffers per ring (256 bytes each, a power of two up to 32768) kept for
    /// established connections whose receive found every shared buffer taken (ENOBUFS, e.g.
    /// by a burst of pings): their bytes are read from these, which pings cannot take, so
    /// they wait their turn in arrival order rather than behind newer pings. Also the most
    /// such receives a ring has armed at once (counted: `ringmq_starved_rearms_total`).
    #[arg(long, value_name = "N", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starved_recv_buffers: Option<u16>,

    /// Depth of each single-producer ring between two workers, in messages (a power of two).
    /// There are workers x (workers - 1) rings. Default: 8192 up to 2 workers, then
    /// 16384 / workers rounded down to a power of two, at least 256.
    #[arg(long, value_name = "N", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_ring_depth: Option<usize>,

    /// Messages a worker holds for one full peer ring; beyond it the worker stops reading
    /// from the connections that produce them (backpressure, never a drop of QoS 1/2).
    #[arg(long, value_name = "N", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_overflow_max: Option<usize>,

    /// Packets one worker decodes per loop turn at most. A connection with more input waits,
    /// its receive paused, until a later turn, so a flood of input cannot starve output and
    /// timers.
    #[arg(long, value_name = "N", help_heading = "Rings and buffers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_packets_max: Option<usize>,

    // ---- MQTT limits -----------------------------------------------------------------------
    /// Largest packet accepted, in bytes (1..=268435455), checked from the fixed header
    /// before the body is read. Over it the connection is closed.
    #[arg(long, value_name = "BYTES", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_packet_size: Option<usize>,

    /// QoS 1/2 messages in flight to one client at once; the rest wait in the session
    /// queue. 0 means no maximum (65535, every packet id), as in Mosquitto.
    #[arg(long, value_name = "N", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight_messages: Option<u16>,

    /// QoS 1/2 messages one session may queue (offline, or beyond the inflight window). At it
    /// the new message is dropped (counted), online or offline; an online client that stays
    /// there is closed after `slow_consumer_timeout_secs`. 0 = nothing is queued (not
    /// Mosquitto's "no limit").
    #[arg(long, value_name = "N", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_messages: Option<usize>,

    /// Payload bytes one session may queue; at it, as `max_queued_messages`. 0 = nothing is
    /// queued.
    #[arg(long, value_name = "BYTES", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<usize>,

    /// Seconds an online client may stay at its queue bound without acknowledging anything
    /// (PUBACK, PUBREC, PUBCOMP); then it is disconnected as a slow consumer (counted).
    /// 0 = never (messages over the bound are only dropped).
    #[arg(long, value_name = "SECS", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_consumer_timeout_secs: Option<u64>,

    /// Queue QoS 0 messages for offline persistent sessions too (true|false).
    #[arg(long, value_name = "BOOL", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_qos0_messages: Option<bool>,

    /// QoS 2 packet ids one client may have awaiting PUBREL (received, PUBREC sent). At it a
    /// further new QoS 2 PUBLISH closes the connection (a protocol violation, counted).
    #[arg(long, value_name = "N", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_awaiting_pubrel: Option<usize>,

    /// Output bytes one connection may have waiting for its socket, at least
    /// `max_packet_size`. At it, QoS 0 to it is dropped (counted) and QoS 1/2 wait in the
    /// session queue.
    #[arg(long, value_name = "BYTES", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbuf_bytes_max: Option<usize>,

    /// Largest keepalive a client may ask for, in seconds; a larger one is refused with
    /// CONNACK 0x02. 0 = no cap.
    #[arg(long, value_name = "SECS", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_keepalive: Option<u16>,

    /// Seconds a connection may stay open without completing CONNECT; then it is closed.
    #[arg(long, value_name = "SECS", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_secs: Option<u32>,

    /// How long an unused persistent session is kept after its client went, e.g. `12h`,
    /// `14d`, `1w`, `1m` (30 days), `1y`, or seconds; 0 keeps it forever.
    #[arg(long, value_name = "DURATION", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_client_expiration: Option<DurationSecs>,

    /// Sessions (connected, or persistent and offline) one worker holds. At it a new
    /// session is refused with CONNACK 0x03 (counted).
    #[arg(long, value_name = "N", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_max: Option<usize>,

    /// Subscriptions one session may hold. Filters beyond it get 0x80 in SUBACK (counted).
    #[arg(long, value_name = "N", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriptions_per_session_max: Option<usize>,

    /// Retained topics held. At it a new retained topic is not stored (counted); replacing
    /// or deleting an existing one always works.
    #[arg(long, value_name = "N", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained_messages_max: Option<usize>,

    /// Seconds a retained message is kept after it was set (with persistence, counted across
    /// restarts); 0 = forever.
    #[arg(long, value_name = "SECS", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained_expiry_secs: Option<u64>,

    /// Seconds between `$SYS` updates; 0 disables `$SYS`.
    #[arg(long, value_name = "SECS", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sys_interval: Option<u64>,

    /// Let clients connect without a user name (true|false); refused with CONNACK 0x05
    /// otherwise.
    #[arg(long, value_name = "BOOL", help_heading = "MQTT limits")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,

    // ---- Persistence -----------------------------------------------------------------------
    /// Keep persistent sessions (subscriptions, queued and in-flight QoS 1/2 messages) and
    /// retained messages on disk across restarts and crashes (true|false): each worker writes
    /// a journal, and acknowledgements wait until what they promise is durable. A journal write
    /// that fails (a full disk) stops the broker with a logged error; nothing acknowledged is
    /// lost.
    #[arg(long, value_name = "BOOL", help_heading = "Persistence")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence: Option<bool>,

    /// Directory of the journal files (created if missing); one epoch directory per run.
    #[arg(long, value_name = "DIR", help_heading = "Persistence")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence_dir: Option<std::path::PathBuf>,

    /// When the journal is fsynced: `batch` (every batch, before the acknowledgements that
    /// depend on it: survives power loss), `interval` (written before acknowledging, which
    /// survives a crash of the process; fsynced every `persistence_fsync_interval_millis`),
    /// or `never` (written before acknowledging; fsync left to the kernel).
    #[arg(long, value_enum, value_name = "POLICY", help_heading = "Persistence")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence_fsync: Option<crate::persist::FsyncPolicy>,

    /// Milliseconds between fsyncs under `persistence_fsync = interval`.
    #[arg(long, value_name = "MILLIS", help_heading = "Persistence")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence_fsync_interval_millis: Option<u64>,

    /// A worker's journal file that grew this many bytes past its opening snapshot is
    /// compacted: a new file, written a slice per loop turn beside the old one, starts with a
    /// snapshot of the state; then the old one is deleted.
    #[arg(long, value_name = "BYTES", help_heading = "Persistence")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence_compact_bytes: Option<u64>,

    /// Journal bytes (and held acknowledgements, 64 bytes each) a worker may accumulate
    /// while its disk catches up; at it the worker stops reading from its connections until
    /// a write completes.
    #[arg(long, value_name = "BYTES", help_heading = "Persistence")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence_pending_bytes_max: Option<usize>,
    // ---- Authentication (auth helper) ------------------------------------------------------
    /// Mosquitto's password file (`user:$7$...` lines, written by `ringmq passwd` or
    /// mosquitto_passwd). With it, a CONNECT with a user name needs its password (else
    /// CONNACK 0x04). Reloaded on SIGHUP. Default: none (user names are not checked).
    #[arg(long, value_name = "FILE", help_heading = "Authentication")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,

    /// Mosquitto's ACL file (`user`, `topic [read|write|readwrite|deny]`, `pattern` with %c
    /// and %u). Enforced on PUBLISH, SUBSCRIBE and each delivery. Reloaded on SIGHUP.
    /// Default: none (no ACL).
    #[arg(long, value_name = "FILE", help_heading = "Authentication")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<PathBuf>,

    /// Failed logins (bad user name or password) one source address may make per window,
    /// counted across all workers; then its CONNECTs with a user name are refused 0x05 until
    /// the window ends (counted). 0 = no limit (at most 65535 counts).
    #[arg(long, value_name = "N", help_heading = "Authentication")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failures_max: Option<u32>,

    /// Seconds of the failed-login window of `auth_failures_max`.
    #[arg(long, value_name = "SECS", help_heading = "Authentication")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failure_window_secs: Option<u64>,

    /// Source addresses tracked for `auth_failures_max`, for the whole broker (a table of
    /// atomics shared by the workers, 8 bytes per address, rounded up to a power of two); an
    /// address whose bucket of 4 holds live windows of others is not limited (counted).
    #[arg(long, value_name = "N", help_heading = "Authentication")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failure_addresses_max: Option<usize>,

    /// Threads that verify passwords, so a PBKDF2 hash (0.1-2 ms) never stalls a worker's
    /// ring loop; 0 verifies inline on the worker.
    #[arg(long, value_name = "N", help_heading = "Authentication")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_verify_threads: Option<usize>,

    /// Password verifications waiting at most; a CONNECT beyond it is refused with CONNACK
    /// 0x03 "server unavailable" (counted).
    #[arg(long, value_name = "N", help_heading = "Authentication")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_verify_queue_max: Option<usize>,

    // ---- Operations (HTTP: /metrics, admin API, dashboard) ----------------------------------
    /// Port of the HTTP listener serving /metrics (Prometheus), the admin API and the
    /// dashboard; 0 = no HTTP listener. Off by default: a second port is the operator's choice.
    #[arg(long, value_name = "PORT", help_heading = "Operations")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,

    /// Address of the HTTP listener. Loopback by default: /metrics and the dashboard page
    /// need no token, so expose them only on purpose.
    #[arg(long, value_name = "IP", help_heading = "Operations")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_address: Option<std::net::IpAddr>,

    /// Bearer token of the admin API ("" = none). Prefer `admin_token_file`: a flag shows in
    /// the process list. Without a token the admin API answers 403.
    #[arg(long, value_name = "TOKEN", help_heading = "Operations")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,

    /// File whose first line is the admin API's bearer token ("" = none); read at start and
    /// again whenever it changes (its modification time is checked on each admin request), so
    /// a token can be rotated without a restart.
    #[arg(long, value_name = "FILE", help_heading = "Operations")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// Admin requests waiting for one worker at once; beyond it the API answers 503.
    #[arg(long, value_name = "N", help_heading = "Operations")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_queue_depth: Option<usize>,

    /// Items one admin API list holds at most (clients, subscriptions, retained messages);
    /// a larger `limit` is cut to it, and the answer says how many matched in all.
    #[arg(long, value_name = "N", help_heading = "Operations")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_list_max: Option<usize>,

    // ---- Logging ---------------------------------------------------------------------------
    /// Log level when neither -v nor RUST_LOG is given.
    #[arg(long, value_enum, value_name = "LEVEL", help_heading = "Logging")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,

    /// Log line format on standard error.
    #[arg(long, value_enum, value_name = "FORMAT", help_heading = "Logging")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// Everything [`Settings::build`] produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    pub runtime: RuntimeConfig,
    pub broker: BrokerConfig,
    pub ops: OpsConfig,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
}

/// Worker count when none is given: one per core, capped at what a `WorkerSet` can name.
pub fn default_workers() -> usize {
    RuntimeConfig::default().workers.min(WorkerSet::CAPACITY)
}

impl Settings {
    /// `top` over `self`: each field `top` gives wins, the others keep `self`'s value.
    pub fn overlay(self, top: Settings) -> Settings {
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                Settings { $($field: top.$field.or(self.$field)),* }
            };
        }
        pick!(
            port,
            bind,
            workers,
            max_connections,
            set_tcp_nodelay,
            listen_backlog,
            socket_rcvbuf_bytes,
            socket_sndbuf_bytes,
            close_linger_millis,
            tls_bind,
            ws_bind,
            wss_bind,
            ws_path,
            certfile,
            keyfile,
            cafile,
            require_certificate,
            use_identity_as_username,
            file_table_slots,
            rings_per_worker_max,
            rings_per_worker_start,
            ring_entries,
            recv_buffers,
            recv_buffer_bytes,
            first_recv_buffers,
            starved_recv_buffers,
            mesh_ring_depth,
            mesh_overflow_max,
            turn_packets_max,
            max_packet_size,
            max_inflight_messages,
            max_queued_messages,
            max_queued_bytes,
            slow_consumer_timeout_secs,
            queue_qos0_messages,
            max_awaiting_pubrel,
            outbuf_bytes_max,
            max_keepalive,
            connect_timeout_secs,
            persistent_client_expiration,
            sessions_max,
            subscriptions_per_session_max,
            retained_messages_max,
            retained_expiry_secs,
            sys_interval,
            allow_anonymous,
            persistence,
            persistence_dir,
            persistence_fsync,
            persistence_fsync_interval_millis,
            persistence_compact_bytes,
            persistence_pending_bytes_max,
            password_file,
            acl_file,
            auth_failures_max,
            auth_failure_window_secs,
            auth_failure_addresses_max,
            auth_verify_threads,
            auth_verify_queue_max,
            http_port,
            http_address,
            admin_token,
            admin_token_file,
            admin_queue_depth,
            admin_list_max,
            log_level,
            log_format,
        )
    }

    /// The layer configs: each given value, the layers' defaults for the rest. Not validated.
    pub fn build(&self) -> Built {
        Built {
            runtime: self.build_runtime(),
            broker: self.build_broker(),
            ops: self.build_ops(),
            log_level: self.log_level.unwrap_or_default(),
            log_format: self.log_format.unwrap_or_default(),
        }
    }

    fn build_runtime(&self) -> RuntimeConfig {
        let defaults = RuntimeConfig::default();
        let port = self.port.unwrap_or(DEFAULT_PORT);
        let listeners = match &self.bind {
            Some(bind) => bind.iter().map(|address| address.socket_addr(port)).collect(),
            None => defaults.listeners.iter().map(|addr| (addr.ip(), port).into()).collect(),
        };
        let workers = self.workers.unwrap_or_else(default_workers);
        RuntimeConfig {
            listeners,
            layered_listeners: self.layered_listeners(),
            ws_path: self.ws_path.clone().unwrap_or(defaults.ws_path),
            tls: TlsFiles {
                certfile: self.certfile.clone().unwrap_or(defaults.tls.certfile),
                keyfile: self.keyfile.clone().unwrap_or(defaults.tls.keyfile),
                cafile: self.cafile.clone().unwrap_or(defaults.tls.cafile),
                require_certificate: self
                    .require_certificate
                    .unwrap_or(defaults.tls.require_certificate),
                use_identity_as_username: self
                    .use_identity_as_username
                    .unwrap_or(defaults.tls.use_identity_as_username),
            },
            workers,
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            file_table_slots: self.file_table_slots.unwrap_or(defaults.file_table_slots),
            rings_per_worker_max: self
                .rings_per_worker_max
                .unwrap_or(defaults.rings_per_worker_max),
            rings_per_worker_start: self
                .rings_per_worker_start
                .unwrap_or(defaults.rings_per_worker_start),
            ring_entries: self.ring_entries.unwrap_or(defaults.ring_entries),
            recv_buffers: self
                .recv_buffers
                .unwrap_or_else(|| RuntimeConfig::default_recv_buffers(workers)),
            recv_buffer_bytes: self.recv_buffer_bytes.unwrap_or(defaults.recv_buffer_bytes),
            first_recv_buffers: self.first_recv_buffers.unwrap_or(defaults.first_recv_buffers),
            starved_recv_buffers: self
                .starved_recv_buffers
                .unwrap_or(defaults.starved_recv_buffers),
            mesh_ring_depth: self
                .mesh_ring_depth
                .unwrap_or_else(|| RuntimeConfig::default_mesh_ring_depth(workers)),
            mesh_overflow_max: self.mesh_overflow_max.unwrap_or(defaults.mesh_overflow_max),
            socket_rcvbuf_bytes: self.socket_rcvbuf_bytes.unwrap_or(defaults.socket_rcvbuf_bytes),
            socket_sndbuf_bytes: self.socket_sndbuf_bytes.unwrap_or(defaults.socket_sndbuf_bytes),
            tcp_nodelay: self.set_tcp_nodelay.unwrap_or(defaults.tcp_nodelay),
            listen_backlog: self.listen_backlog.unwrap_or(defaults.listen_backlog),
            close_linger_millis: self.close_linger_millis.unwrap_or(defaults.close_linger_millis),
            turn_packets_max: self.turn_packets_max.unwrap_or(defaults.turn_packets_max),
            persistence: self.build_persistence(),
            auth_verify_threads: self.auth_verify_threads.unwrap_or(defaults.auth_verify_threads),
            auth_verify_queue_max: self
                .auth_verify_queue_max
                .unwrap_or(defaults.auth_verify_queue_max),
        }
    }

    /// The persistence config when `persistence = true`, else `None`.
    fn build_persistence(&self) -> Option<crate::persist::PersistConfig> {
        if self.persistence != Some(true) {
            return None;
        }
        let defaults = crate::persist::PersistConfig::default();
        Some(crate::persist::PersistConfig {
            dir: self.persistence_dir.clone().unwrap_or(defaults.dir),
            fsync: self.persistence_fsync.unwrap_or(defaults.fsync),
            fsync_interval_millis: self
                .persistence_fsync_interval_millis
                .unwrap_or(defaults.fsync_interval_millis),
            compact_bytes: self.persistence_compact_bytes.unwrap_or(defaults.compact_bytes),
            pending_bytes_max: self
                .persistence_pending_bytes_max
                .unwrap_or(defaults.pending_bytes_max),
        })
    }

    /// The TLS, WebSocket and WSS addresses, in that order, each with its default port.
    fn layered_listeners(&self) -> Vec<(SocketAddr, ListenerKind)> {
        let kinds = [
            (&self.tls_bind, ListenerKind::Mqtts, DEFAULT_TLS_PORT),
            (&self.ws_bind, ListenerKind::Ws, DEFAULT_WS_PORT),
            (&self.wss_bind, ListenerKind::Wss, DEFAULT_WSS_PORT),
        ];
        kinds
            .into_iter()
            .flat_map(|(bind, kind, port)| {
                bind.iter().flatten().map(move |address| (address.socket_addr(port), kind))
            })
            .collect()
    }

    fn build_broker(&self) -> BrokerConfig {
        let defaults = BrokerConfig::default();
        BrokerConfig {
            max_packet_size: self.max_packet_size.unwrap_or(defaults.max_packet_size),
            // 0 passes through: the core reads it as the whole packet-id space, as Mosquitto.
            max_inflight_messages: self
                .max_inflight_messages
                .unwrap_or(defaults.max_inflight_messages),
            max_queued_messages: self.max_queued_messages.unwrap_or(defaults.max_queued_messages),
            max_queued_bytes: self.max_queued_bytes.unwrap_or(defaults.max_queued_bytes),
            slow_consumer_timeout_secs: self
                .slow_consumer_timeout_secs
                .unwrap_or(defaults.slow_consumer_timeout_secs),
            outbuf_bytes_max: self.outbuf_bytes_max.unwrap_or(defaults.outbuf_bytes_max),
            queue_qos0_messages: self.queue_qos0_messages.unwrap_or(defaults.queue_qos0_messages),
            max_awaiting_pubrel: self.max_awaiting_pubrel.unwrap_or(defaults.max_awaiting_pubrel),
            max_keepalive_secs: self.max_keepalive.unwrap_or(defaults.max_keepalive_secs),
            connect_timeout_secs: self
                .connect_timeout_secs
                .unwrap_or(defaults.connect_timeout_secs),
            persistent_client_expiration_secs: self
                .persistent_client_expiration
                .map_or(defaults.persistent_client_expiration_secs, |d| d.0),
            sessions_max: self.sessions_max.unwrap_or(defaults.sessions_max),
            subscriptions_per_session_max: self
                .subscriptions_per_session_max
                .unwrap_or(defaults.subscriptions_per_session_max),
            retained_messages_max: self
                .retained_messages_max
                .unwrap_or(defaults.retained_messages_max),
            retained_expiry_secs: self
                .retained_expiry_secs
                .unwrap_or(defaults.retained_expiry_secs),
            sys_interval_secs: self.sys_interval.unwrap_or(defaults.sys_interval_secs),
            allow_anonymous: self.allow_anonymous.unwrap_or(defaults.allow_anonymous),
            password_file: self.password_file.clone().or(defaults.password_file),
            acl_file: self.acl_file.clone().or(defaults.acl_file),
            auth_failures_max: self.auth_failures_max.unwrap_or(defaults.auth_failures_max),
            auth_failure_window_secs: self
                .auth_failure_window_secs
                .unwrap_or(defaults.auth_failure_window_secs),
            auth_failure_addresses_max: self
                .auth_failure_addresses_max
                .unwrap_or(defaults.auth_failure_addresses_max),
        }
    }

    fn build_ops(&self) -> OpsConfig {
        let defaults = OpsConfig::default();
        OpsConfig {
            http_port: self.http_port.unwrap_or(defaults.http_port),
            http_address: self.http_address.unwrap_or(defaults.http_address),
            admin_token: self.admin_token.clone().unwrap_or(defaults.admin_token),
            admin_token_file: self.admin_token_file.clone().unwrap_or(defaults.admin_token_file),
            admin_queue_depth: self.admin_queue_depth.unwrap_or(defaults.admin_queue_depth),
            admin_list_max: self.admin_list_max.unwrap_or(defaults.admin_list_max),
        }
    }

    /// Every field given, from built configs: what `--print-config` prints. Building the
    /// result again gives back the same configs (tested), so printed output is a valid file.
    pub fn from_built(built: &Built) -> Settings {
        let (runtime, broker, ops) = (&built.runtime, &built.broker, &built.ops);
        let port = runtime.listeners.first().map_or(DEFAULT_PORT, |addr| addr.port());
        let persistence = runtime.persistence.clone().unwrap_or_default();
        Settings {
            port: Some(port),
            bind: Some(runtime.listeners.iter().map(|&addr| addr.into()).collect()),
            workers: Some(runtime.workers),
            max_connections: Some(runtime.max_connections),
            set_tcp_nodelay: Some(runtime.tcp_nodelay),
            listen_backlog: Some(runtime.listen_backlog),
            socket_rcvbuf_bytes: Some(runtime.socket_rcvbuf_bytes),
            socket_sndbuf_bytes: Some(runtime.socket_sndbuf_bytes),
            close_linger_millis: Some(runtime.close_linger_millis),
            tls_bind: Some(layered_of(runtime, ListenerKind::Mqtts)),
            ws_bind: Some(layered_of(runtime, ListenerKind::Ws)),
            wss_bind: Some(layered_of(runtime, ListenerKind::Wss)),
            ws_path: Some(runtime.ws_path.clone()),
            certfile: Some(runtime.tls.certfile.clone()),
            keyfile: Some(runtime.tls.keyfile.clone()),
            cafile: Some(runtime.tls.cafile.clone()),
            require_certificate: Some(runtime.tls.require_certificate),
            use_identity_as_username: Some(runtime.tls.use_identity_as_username),
            file_table_slots: Some(runtime.file_table_slots),
            rings_per_worker_max: Some(runtime.rings_per_worker_max),
            rings_per_worker_start: Some(runtime.rings_per_worker_start),
            ring_entries: Some(runtime.ring_entries),
            recv_buffers: Some(runtime.recv_buffers),
            recv_buffer_bytes: Some(runtime.recv_buffer_bytes),
            first_recv_buffers: Some(runtime.first_recv_buffers),
            starved_recv_buffers: Some(runtime.starved_recv_buffers),
            mesh_ring_depth: Some(runtime.mesh_ring_depth),
            mesh_overflow_max: Some(runtime.mesh_overflow_max),
            turn_packets_max: Some(runtime.turn_packets_max),
            max_packet_size: Some(broker.max_packet_size),
            max_inflight_messages: Some(broker.max_inflight_messages),
            max_queued_messages: Some(broker.max_queued_messages),
            max_queued_bytes: Some(broker.max_queued_bytes),
            slow_consumer_timeout_secs: Some(broker.slow_consumer_timeout_secs),
            queue_qos0_messages: Some(broker.queue_qos0_messages),
            max_awaiting_pubrel: Some(broker.max_awaiting_pubrel),
            outbuf_bytes_max: Some(broker.outbuf_bytes_max),
            max_keepalive: Some(broker.max_keepalive_secs),
            connect_timeout_secs: Some(broker.connect_timeout_secs),
            persistent_client_expiration: Some(DurationSecs(
                broker.persistent_client_expiration_secs,
            )),
            sessions_max: Some(broker.sessions_max),
            subscriptions_per_session_max: Some(broker.subscriptions_per_session_max),
            retained_messages_max: Some(broker.retained_messages_max),
            retained_expiry_secs: Some(broker.retained_expiry_secs),
            sys_interval: Some(broker.sys_interval_secs),
            allow_anonymous: Some(broker.allow_anonymous),
            persistence: Some(runtime.persistence.is_some()),
            persistence_dir: Some(persistence.dir.clone()),
            persistence_fsync: Some(persistence.fsync),
            persistence_fsync_interval_millis: Some(persistence.fsync_interval_millis),
            persistence_compact_bytes: Some(persistence.compact_bytes),
            persistence_pending_bytes_max: Some(persistence.pending_bytes_max),
            password_file: broker.password_file.clone(),
            acl_file: broker.acl_file.clone(),
            auth_failures_max: Some(broker.auth_failures_max),
            auth_failure_window_secs: Some(broker.auth_failure_window_secs),
            auth_failure_addresses_max: Some(broker.auth_failure_addresses_max),
            auth_verify_threads: Some(runtime.auth_verify_threads),
            auth_verify_queue_max: Some(runtime.auth_verify_queue_max),
            http_port: Some(ops.http_port),
            http_address: Some(ops.http_address),
            admin_token: Some(ops.admin_token.clone()),
            admin_token_file: Some(ops.admin_token_file.clone()),
            admin_queue_depth: Some(ops.admin_queue_depth),
            admin_list_max: Some(ops.admin_list_max),
            log_level: Some(built.log_level),
            log_format: Some(built.log_format),
        }
    }

    /// The defaults of every setting, each given: the source of `--help`'s defaults and of
    /// the example file's values.
    pub fn defaults() -> Settings {
        Settings::from_built(&Settings::default().build())
    }
}

/// The layered listeners of one kind, as `*_bind` entries.
fn layered_of(runtime: &RuntimeConfig, kind: ListenerKind) -> Vec<BindAddress> {
    let of_kind = runtime.layered_listeners.iter().filter(|(_, k)| *k == kind);
    of_kind.map(|&(addr, _)| addr.into()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings with every field set to a value different from its default.
    fn all_changed() -> Settings {
        let mut built = Settings::default().build();
        let (runtime, broker) = (&mut built.runtime, &mut built.broker);
        runtime.listeners = vec!["127.0.0.1:2883".parse().unwrap()];
        runtime.workers += 1;
        runtime.max_connections += 1;
        runtime.tcp_nodelay = !runtime.tcp_nodelay;
        runtime.listen_backlog += 1;
        runtime.socket_rcvbuf_bytes += 1;
        runtime.socket_sndbuf_bytes += 1;
        runtime.close_linger_millis += 1;
        runtime.layered_listeners = vec![
            ("127.0.0.1:8884".parse().unwrap(), ListenerKind::Mqtts),
            ("127.0.0.1:8085".parse().unwrap(), ListenerKind::Ws),
            ("[::1]:8086".parse().unwrap(), ListenerKind::Wss),
        ];
        runtime.ws_path = "/ws".into();
        runtime.tls = TlsFiles {
            certfile: "server.pem".into(),
            keyfile: "server.key".into(),
            cafile: "ca.pem".into(),
            require_certificate: true,
            use_identity_as_username: true,
        };
        runtime.file_table_slots += 1;
        runtime.rings_per_worker_max += 1;
        runtime.rings_per_worker_start += 1;
        runtime.ring_entries *= 2;
        runtime.recv_buffers /= 2;
        runtime.recv_buffer_bytes += 1;
        runtime.first_recv_buffers *= 2;
        runtime.starved_recv_buffers *= 2;
        runtime.mesh_ring_depth *= 2;
        runtime.mesh_overflow_max += 1;
        runtime.turn_packets_max += 1;
        runtime.auth_verify_threads += 1;
        runtime.auth_verify_queue_max += 1;
        broker.max_packet_size += 1;
        broker.max_inflight_messages += 1;
        broker.max_queued_messages += 1;
        broker.max_queued_bytes += 1;
        broker.slow_consumer_timeout_secs += 1;
        broker.queue_qos0_messages = !broker.queue_qos0_messages;
        broker.max_awaiting_pubrel += 1;
        broker.outbuf_bytes_max += 1;
        broker.max_keepalive_secs += 1;
        broker.connect_timeout_secs += 1;
        broker.persistent_client_expiration_secs += 1;
        broker.sessions_max += 1;
        broker.subscriptions_per_session_max += 1;
        broker.retained_messages_max += 1;
        broker.retained_expiry_secs += 1;
        broker.sys_interval_secs += 1;
        broker.allow_anonymous = !broker.allow_anonymous;
        runtime.persistence = Some(crate::persist::PersistConfig {
            dir: "/var/lib/ringmq-test".into(),
            fsync: crate::persist::FsyncPolicy::Interval,
            fsync_interval_millis: 7,
            compact_bytes: 12345,
            pending_bytes_max: 6789,
        });
        broker.password_file = Some("/etc/ringmq/passwd".into());
        broker.acl_file = Some("/etc/ringmq/acl".into());
        broker.auth_failures_max += 1;
        broker.auth_failure_window_secs += 1;
        broker.auth_failure_addresses_max += 1;
        built.ops.http_port = 9883;
        built.ops.http_address = "::1".parse().unwrap();
        built.ops.admin_token = "secret".to_owned();
        built.ops.admin_token_file = "/etc/ringmq/token".into();
        built.ops.admin_queue_depth += 1;
        built.ops.admin_list_max += 1;
        built.log_level = LogLevel::Trace;
        built.log_format = LogFormat::Json;
        Settings::from_built(&built)
    }

    #[test]
    fn nothing_given_builds_the_layer_defaults() {
        let built = Settings::default().build();
        let expected_runtime = RuntimeConfig { workers: default_workers(), ..Default::default() };
        assert_eq!(built.runtime, expected_runtime);
        assert_eq!(built.broker, BrokerConfig::default());
        assert_eq!(built.runtime.listeners, vec!["0.0.0.0:1883".parse().unwrap()]);
        assert_eq!((built.log_level, built.log_format), (LogLevel::Info, LogFormat::Text));
    }

    #[test]
    fn every_field_survives_build_and_from_built() {
        // A field forgotten in `build` or `from_built` would come back as its default.
        let changed = all_changed();
        let rebuilt = Settings::from_built(&changed.build());
        assert_eq!(rebuilt, changed);
        assert_ne!(changed.build(), Settings::default().build());
    }

    #[test]
    fn overlay_takes_every_field_from_the_top() {
        // A field forgotten in `overlay` would keep the bottom's value.
        let (bottom, top) = (Settings::defaults(), all_changed());
        assert_eq!(bottom.clone().overlay(top.clone()), top);
        assert_eq!(top.clone().overlay(Settings::default()), top);
        assert_eq!(Settings::default().overlay(bottom.clone()), bottom);
    }

    #[test]
    fn inflight_zero_means_the_whole_packet_id_space() {
        let settings = Settings { max_inflight_messages: Some(0), ..Default::default() };
        assert_eq!(settings.build().broker.inflight_window(), 65_535);
    }

    #[test]
    fn port_applies_to_bind_addresses_without_one() {
        let settings = Settings {
            port: Some(1884),
            bind: Some(vec!["127.0.0.1".parse().unwrap(), "[::1]:8883".parse().unwrap()]),
            ..Default::default()
        };
        let listeners = settings.build().runtime.listeners;
        assert_eq!(
            listeners,
            vec!["127.0.0.1:1884".parse().unwrap(), "[::1]:8883".parse().unwrap()]
        );
        let port_only = Settings { port: Some(1999), ..Default::default() };
        assert_eq!(port_only.build().runtime.listeners, vec!["0.0.0.0:1999".parse().unwrap()]);
    }

    #[test]
    fn tls_and_websocket_entries_without_a_port_take_their_kinds_default() {
        let settings = Settings {
            tls_bind: Some(vec!["127.0.0.1".parse().unwrap()]),
            ws_bind: Some(vec!["127.0.0.1".parse().unwrap(), "[::1]:9001".parse().unwrap()]),
            wss_bind: Some(vec!["0.0.0.0".parse().unwrap()]),
            ..Default::default()
        };
        let runtime = settings.build().runtime;
        assert_eq!(runtime.listeners, vec!["0.0.0.0:1883".parse().unwrap()], "plain unchanged");
        assert_eq!(
            runtime.layered_listeners,
            vec![
                ("127.0.0.1:8883".parse().unwrap(), ListenerKind::Mqtts),
                ("127.0.0.1:8083".parse().unwrap(), ListenerKind::Ws),
                ("[::1]:9001".parse().unwrap(), ListenerKind::Ws),
                ("0.0.0.0:8084".parse().unwrap(), ListenerKind::Wss),
            ]
        );
    }

    #[test]
    fn default_workers_is_capped_at_the_worker_set_capacity() {
        assert!((1..=WorkerSet::CAPACITY).contains(&default_workers()));
    }
}
