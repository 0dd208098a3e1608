//! The admin API's broker half: listings and wildcard retained reads advance a bounded slice
//! of slots per call and still find everything; a kick closes like any broker close (reason
//! `Kicked`).
//! Retained reads and deletes across workers are tested against the binary (`tests/ops.rs`).

use super::harness::*;
use crate::broker::admin::{AdminAnswer, AdminProgress, AdminQuery};
use crate::broker::{Action, BrokerConfig, CloseReason};
use crate::protocol::QoS;

fn scan_to_the_end(
    cluster: &mut Cluster,
    query: AdminQuery,
    budget: usize,
) -> (AdminAnswer, usize) {
    let now = cluster.now;
    let AdminProgress::Scanning(mut scan) = cluster.broker_mut(0).handle_admin(query, now) else {
        panic!("a listing is a scan");
    };
    let mut steps = 1;
    loop {
        if let Some(answer) = cluster.broker(0).admin_scan(&mut scan, budget) {
            return (answer, steps);
        }
        steps += 1;
        assert!(steps < 1000, "the scan does not end");
    }
}

#[test]
fn a_listing_advances_a_slice_per_call_and_finds_every_session() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    for index in 0..5 {
        let client = cluster.connect(&format!("lister-{index}"), true);
        if index == 2 {
            cluster.subscribe(client, &[("a/+", QoS::AtLeastOnce), ("b", QoS::AtMostOnce)]);
        }
    }
    cluster.connect("other", true);
    let query = AdminQuery::Clients { search: "lister-".to_owned(), limit: 3 };
    let (answer, steps) = scan_to_the_end(&mut cluster, query.clone(), 1);
    let AdminAnswer::Clients { items, matched } = answer else { panic!("{answer:?}") };
    assert_eq!((matched, items.len()), (5, 3), "every match counted, the list cut at the limit");
    assert!(steps >= 6, "one slot per call: at least one call per session, took {steps}");
    assert!(items
        .iter()
        .all(|client| client.client_id.starts_with("lister-") && client.conn.is_some()));
    let (whole, steps) = scan_to_the_end(&mut cluster, query, 1 << 20);
    assert_eq!(steps, 1, "a large budget answers in one call");
    assert!(matches!(whole, AdminAnswer::Clients { matched: 5, .. }));

    let query = AdminQuery::Subscriptions { search: "a/".to_owned(), limit: 10 };
    let (answer, _) = scan_to_the_end(&mut cluster, query, 2);
    let AdminAnswer::Subscriptions { items, matched } = answer else { panic!("{answer:?}") };
    assert_eq!(matched, 1);
    assert_eq!((items[0].client_id.as_str(), items[0].filter.as_str()), ("lister-2", "a/+"));
}

#[test]
fn a_kick_closes_the_connection_with_its_own_reason() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let client = cluster.connect("kicked-one", true);
    let conn = cluster.conn_of(client);
    let now = cluster.now;
    let broker = cluster.broker_mut(0);
    let kick = AdminQuery::Kick { client_id: "kicked-one".to_owned() };
    assert!(matches!(
        broker.handle_admin(kick.clone(), now),
        AdminProgress::Done(AdminAnswer::Done(true))
    ));
    let mut closed = false;
    while let Some(action) = broker.poll_action() {
        closed |= matches!(action, Action::Close(id, CloseReason::Kicked) if id == conn);
    }
    assert!(closed, "the kick closes the connection");
    assert_eq!(broker.stats().closes.kicked, 1);
    assert!(matches!(
        broker.handle_admin(kick, now),
        AdminProgress::Done(AdminAnswer::Done(false))
    ));
}

/// A wildcard retained read walks the retained store a slice of slots per call (a worker can
/// hold `retained_messages_max` of them) and finds what the trie walk finds, `$` topics apart
/// from a leading wildcard [MQTT-4.7.2-1]; an exact topic is answered at once.
#[test]
fn a_wildcard_retained_read_advances_a_slice_per_call() {
    let mut cluster = Cluster::single(BrokerConfig::default());
    let publisher = cluster.connect("retainer", true);
    for topic in ["r/a", "r/b", "r/c/d", "s/a", "$own/r"] {
        cluster.publish(publisher, topic, b"kept", QoS::AtMostOnce, true);
    }
    let query = AdminQuery::Retained { filter: filter("r/#"), limit: 2 };
    let (answer, steps) = scan_to_the_end(&mut cluster, query, 1);
    let AdminAnswer::Retained { items, matched } = answer else { panic!("{answer:?}") };
    assert_eq!((matched, items.len()), (3, 2), "every match counted, the list cut at the limit");
    assert!(steps >= 5, "one slot per call: at least one call per message, took {steps}");
    assert!(items.iter().all(|item| item.topic.starts_with("r/") && &item.payload[..] == b"kept"));

    let query = AdminQuery::Retained { filter: filter("#"), limit: 10 };
    let (answer, _) = scan_to_the_end(&mut cluster, query, 2);
    assert!(
        matches!(answer, AdminAnswer::Retained { matched: 4, .. }),
        "`#` matches all but the $ topic: {answer:?}"
    );

    let now = cluster.now;
    let exact = AdminQuery::Retained { filter: filter("s/a"), limit: 10 };
    let AdminProgress::Done(AdminAnswer::Retained { items, matched: 1 }) =
        cluster.broker_mut(0).handle_admin(exact, now)
    else {
        panic!("an exact topic is one lookup, answered at once");
    };
    assert_eq!(items[0].topic, "s/a");
}
