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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionLoad {
    pub inflight: usize,
    pub queued_messages: usize,
    pub queued_bytes: usize,
    /// The session's filters, sorted.
    pub filters: Vec<String>,
    pub connected: bool,
}

pub fn counts(broker: &Broker) -> Option<Counts> {
    Some(Counts {
        connections: broker.connection_count(),
        sessions: broker.session_count(),
        subscriptions: broker.subscription_count(),
    })
}

pub fn session_load(broker: &Broker, client_id: &str) -> Option<SessionLoad> {
    let info = broker.session_info(client_id)?;
    Some(SessionLoad {
        inflight: info.inflight,
        queued_messages: info.queued,
        queued_bytes: info.queued_bytes,
        filters: {
            let mut filters: Vec<String> =
                info.subscriptions.iter().map(|(f, _)| f.as_str().to_string()).collect();
            filters.sort();
            filters
        },
        connected: info.connected,
    })
}

/// Messages the worker dropped at a bound: not queued because a session queue was full (which
/// includes the message that made an online session a slow consumer).
pub fn messages_dropped(broker: &Broker) -> Option<u64> {
    Some(broker.stats().messages_dropped_queue_full)
}
