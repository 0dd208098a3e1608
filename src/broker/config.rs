//! The limits and knobs the broker core obeys. Built by `crate::config` from the CLI and the
//! TOML file; defaults here are the broker's defaults.

use std::path::PathBuf;

/// Every bound the core enforces, each with what happens at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Largest packet accepted, checked from the fixed header before the body is read.
    /// Over it: the connection is closed with a protocol error.
    pub max_packet_size: usize,
    /// QoS 1/2 messages in flight to one client at once; the rest wait in the session queue.
    /// 0 = only the packet id space limits it (65535), as Mosquitto's 0 means "no limit".
    pub max_inflight_messages: u16,
    /// QoS 1/2 messages one session may queue (offline, or beyond the inflight window or the
    /// output bound), in arrival order. At the bound the new message is dropped (counted),
    /// online or offline; an online client that stays there is closed after
    /// `slow_consumer_timeout_secs`. 0 = nothing is queued.
    pub max_queued_messages: usize,
    /// Payload bytes one session may queue; at the bound, as `max_queued_messages`.
    pub max_queued_bytes: usize,
    /// Seconds an online client may stay at its session's queue bound (messages to it being
    /// dropped) without acknowledging anything (PUBACK, PUBREC, PUBCOMP); then it is closed
    /// as a slow consumer (counted) and a persistent session keeps what it had. Checked on the
    /// timing wheel, so up to one timer bucket late. 0 = never closed for this (drops only).
    pub slow_consumer_timeout_secs: u64,
    /// Bytes of output one connection may have waiting for the socket. At the bound QoS 0 to
    /// it is dropped (counted) and QoS 1/2 wait in the session queue.
    pub outbuf_bytes_max: usize,
    /// Whether QoS 0 messages are queued for offline persistent sessions (Mosquitto's
    /// `queue_qos0_messages`).
    pub queue_qos0_messages: bool,
    /// QoS 2 packet ids one client may have awaiting PUBREL (received, PUBREC sent). At the
    /// bound a further new QoS 2 PUBLISH closes the connection (a protocol violation, counted).
    pub max_awaiting_pubrel: usize,
    /// Largest keepalive a client may ask for; a larger one, or 0 (none), is refused with
    /// CONNACK 0x02 (MQTT 3.1.1 has no way to lower it; Mosquitto does the same). 0 = no cap.
    pub max_keepalive_secs: u16,
    /// Seconds a connection may stay open without completing CONNECT; then it is closed
    /// (counted).
    pub connect_timeout_secs: u32,
    /// Seconds an unused persistent session is kept after its client went; then it is
    /// discarded (counted). 0 = forever.
    pub persistent_client_expiration_secs: u64,
    /// Sessions (connected or persistent offline) one worker holds. At the bound a new
    /// session is refused with CONNACK 0x03 (counted).
    pub sessions_max: usize,
    /// Subscriptions one session may hold. Filters beyond it get 0x80 in SUBACK (counted).
    pub subscriptions_per_session_max: usize,
    /// Retained topics held. At the bound a new retained topic is not stored (counted);
    /// replacing or deleting an existing one always works.
    pub retained_messages_max: usize,
    /// Seconds a retained message is kept after it was set; 0 = forever.
    pub retained_expiry_secs: u64,
    /// Seconds between `$SYS` updates; 0 disables `$SYS`.
    pub sys_interval_secs: u64,
    /// Whether clients without a user name may connect (CONNACK 0x05 otherwise).
    pub allow_anonymous: bool,
    /// Mosquitto's `password_file`: users and their hashes. Read by the runtime at start and
    /// on SIGHUP (the broker never opens files); `None` = user names are not checked.
    pub password_file: Option<PathBuf>,
    /// Mosquitto's `acl_file`: topic rules per user. Read like `password_file`; `None` = no
    /// ACL (everything allowed).
    pub acl_file: Option<PathBuf>,
    /// Failed CONNECTs (bad user name or password) one source address may make per
    /// `auth_failure_window_secs`, on all workers together (the runtime shares one limiter:
    /// `Broker::share_failure_limiter`); further CONNECTs from it with a user name are
    /// refused 0x05 without checking the password until the window ends (counted). 0 = no
    /// limit.
    pub auth_failures_max: u32,
    pub auth_failure_window_secs: u64,
    /// Source addresses tracked for `auth_failures_max` (`auth::limiter`: a table of this many
    /// words rounded up to a power of two, in buckets of 4); an address whose bucket is full of
    /// live windows is not limited (counted: `auth_limiter_full`).
    pub auth_failure_addresses_max: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1 << 20,
            max_inflight_messages: 20,
            max_queued_messages: 1000,
            max_queued_bytes: 16 << 20,
            slow_consumer_timeout_secs: 30,
            outbuf_bytes_max: 4 << 20,
            queue_qos0_messages: false,
            max_awaiting_pubrel: 1000,
            max_keepalive_secs: 0,
            connect_timeout_secs: 10,
            persistent_client_expiration_secs: 0,
            sessions_max: 1_100_000,
            subscriptions_per_session_max: 1000,
            retained_messages_max: 1_000_000,
            retained_expiry_secs: 0,
            sys_interval_secs: 10,
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            auth_failures_max: 10,
            auth_failure_window_secs: 60,
            auth_failure_addresses_max: 65_536,
        }
    }
}

impl BrokerConfig {
    /// The outgoing inflight window per session.
    pub fn inflight_window(&self) -> usize {
        match self.max_inflight_messages {
            0 => usize::from(u16::MAX),
            window => usize::from(window),
        }
    }

    pub fn limiter_config(&self) -> crate::auth::LimiterConfig {
        crate::auth::LimiterConfig {
            failures_max: self.auth_failures_max,
            window_millis: self.auth_failure_window_secs.saturating_mul(1000),
            addresses_max: self.auth_failure_addresses_max,
        }
    }

    /// The files a reload reads.
    pub fn auth_files(&self) -> crate::auth::AuthFiles {
        crate::auth::AuthFiles {
            password_file: self.password_file.clone(),
            acl_file: self.acl_file.clone(),
        }
    }

    pub(super) fn queue_limits(&self) -> super::inflight::QueueLimits {
        super::inflight::QueueLimits {
            messages_max: self.max_queued_messages,
            bytes_max: self.max_queued_bytes,
        }
    }
}
