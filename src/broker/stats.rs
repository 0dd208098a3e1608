//! Counters one worker keeps: the source of `$SYS` and, later, `/metrics`.

/// Plain counters, bumped on the message path (no log line per packet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub clients_connected: u64,
    pub clients_total: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}
