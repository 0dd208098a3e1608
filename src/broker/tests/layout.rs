//! The sizes of the per-connection and per-session state (issue 6's memory budget): printed
//! with `--nocapture` and pinned, so a field that grows one of them is a deliberate change.

use std::mem::size_of;

#[test]
fn per_connection_state_sizes() {
    let sizes = [
        ("broker Conn", size_of::<crate::broker::connection::Conn>()),
        ("Session", size_of::<crate::broker::session::Session>()),
        (
            "Option<Conn> (a connection table entry)",
            size_of::<Option<crate::broker::connection::Conn>>(),
        ),
        ("Option<ConnId>", size_of::<Option<crate::broker::ConnId>>()),
        ("session Filters", size_of::<crate::broker::session::Filters>()),
        ("session ClientId", size_of::<crate::broker::session::ClientId>()),
        ("Outgoing", size_of::<crate::broker::inflight::Outgoing>()),
        ("Incoming", size_of::<crate::broker::inflight::Incoming>()),
        ("OutBuf", size_of::<crate::protocol::OutBuf>()),
        ("PeerAddr", size_of::<crate::broker::PeerAddr>()),
        ("Option<PeerAddr>", size_of::<Option<crate::broker::PeerAddr>>()),
        ("Timer", size_of::<crate::broker::keepalive::Timer>()),
        ("runtime Conn", size_of::<crate::runtime::conn::Conn>()),
        ("Utf8Bytes", size_of::<crate::protocol::Utf8Bytes>()),
        ("TopicFilter", size_of::<crate::protocol::TopicFilter>()),
    ];
    for (name, size) in sizes {
        eprintln!("{name}: {size} B");
    }
    // Pinned at what sessions 4 and 5 cut them to (docs/BENCHMARKS.md, "Density": 176 and
    // 192 before session 4): growing one is a deliberate change to the per-connection budget.
    // A connection table entry is the `Conn` alone (its slot's generation is in its padding),
    // and a session's one filter is inline, as its trie node.
    assert!(size_of::<crate::broker::connection::Conn>() <= 112);
    assert!(size_of::<Option<crate::broker::connection::Conn>>() <= 112);
    assert!(size_of::<Option<crate::broker::ConnId>>() <= 12);
    assert!(size_of::<crate::broker::session::Filters>() <= 16);
    assert!(size_of::<crate::broker::session::Session>() <= 96);
    assert!(size_of::<crate::protocol::OutBuf>() <= 48);
}
