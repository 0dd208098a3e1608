//! The one place the simulation reads a broker's own view of itself (sessions, subscriptions,
//! queues, drop counters), so that a rename in the core's introspection API is one edit here.
//!
//! A `None` means the core does not expose that figure: the check that needs it is reported as
//! not run (see the run report's `unchecked` list), never as passed.

use ringmq::broker::Broker;

/// What a worker holds, for the "no state left behind" check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: usize,
    pub sessions: usize,
    pub subscriptions: usize,
}

/// One session's queues, for the bound checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionLoad {
    pub inflight: usize,
    pub queued_messages: usize,
    pub queued_bytes: usize,
}

pub fn counts(broker: &Broker) -> Option<Counts> {
    let _ = broker;
    None
}

pub fn session_load(broker: &Broker, client_id: &str) -> Option<SessionLoad> {
    let _ = (broker, client_id);
    None
}

/// Messages the worker dropped at a bound (queue full for an offline session, or the message
/// that made an online session a slow consumer), summed.
pub fn messages_dropped(broker: &Broker) -> Option<u64> {
    let _ = broker;
    None
}
