//! Tests of the subscription index: the MQTT matching rules one by one, the bookkeeping
//! (first/last subscriber, pruning), and a property test against the reference matcher
//! `TopicFilter::matches` applied to every filter by brute force.

use proptest::prelude::*;

use super::*;
use crate::broker::topic_strategies::{filter_text, topic_text};

fn filter(text: &str) -> TopicFilter {
    TopicFilter::try_from(text).expect("test filter is valid")
}

fn topic(text: &str) -> TopicName {
    TopicName::try_from(text).expect("test topic is valid")
}

/// The sessions `topic` matches, sorted, as (session number, QoS number).
fn sessions(index: &SubscriptionIndex, name: &str) -> Vec<(u32, u8)> {
    let mut out = Matches::default();
    index.match_topic(&topic(name), &mut out);
    let mut found: Vec<_> = out.sessions.iter().map(|(s, q)| (s.0, q.as_u8())).collect();
    found.sort_unstable();
    found
}

fn index_of(filters: &[&str]) -> SubscriptionIndex {
    let mut index = SubscriptionIndex::new();
    for (n, text) in filters.iter().enumerate() {
        index.subscribe(&filter(text), SessionId(n as u32), QoS::AtMostOnce);
    }
    index
}

/// Which of `filters` (by position) match `name`, per the index.
fn check(filters: &[&str], name: &str, expect: &[u32]) {
    let index = index_of(filters);
    let found: Vec<u32> = sessions(&index, name).into_iter().map(|(s, _)| s).collect();
    assert_eq!(found, expect, "topic {name:?} against {filters:?}");
}

#[test]
fn multi_level_wildcard_matches_the_parent_and_everything_below_mqtt_4_7_1_2() {
    let filters = ["sport/tennis/player1/#", "sport/#", "#"];
    check(&filters, "sport/tennis/player1", &[0, 1, 2]);
    check(&filters, "sport/tennis/player1/ranking", &[0, 1, 2]);
    check(&filters, "sport/tennis/player1/score/wimbledon", &[0, 1, 2]);
    check(&filters, "sport", &[1, 2]);
    check(&filters, "sports", &[2]);
}

#[test]
fn single_level_wildcard_matches_exactly_one_level_mqtt_4_7_1_3() {
    let filters = ["sport/tennis/+", "sport/+", "+", "+/+", "/+", "+/tennis/#"];
    check(&filters, "sport/tennis/player1", &[0, 5]);
    check(&filters, "sport/tennis/player1/ranking", &[5]);
    check(&filters, "sport", &[2]);
    check(&filters, "sport/", &[1, 3]);
    check(&filters, "/finance", &[3, 4]);
    check(&filters, "sport/tennis", &[1, 3, 5]);
}

#[test]
fn wildcards_at_the_first_level_skip_dollar_topics_mqtt_4_7_2_1() {
    let filters = ["#", "+/monitor/Clients", "$SYS/monitor/+", "$SYS/#", "+", "+/#"];
    check(&filters, "$SYS/monitor/Clients", &[2, 3]);
    check(&filters, "$SYS", &[3]);
    check(&filters, "SYS/monitor/Clients", &[0, 1, 5]);
    // Only the first level is special: a `$` further down is an ordinary character.
    check(&["a/+", "a/#"], "a/$b", &[0, 1]);
}

#[test]
fn empty_levels_are_levels_mqtt_4_7_3() {
    let filters = ["a//b", "a/+/b", "/a", "+/a", "a/", "a/+", "a"];
    check(&filters, "a//b", &[0, 1]);
    check(&filters, "/a", &[2, 3]);
    check(&filters, "a/", &[4, 5]);
    check(&filters, "a", &[6]);
}

#[test]
fn overlapping_filters_deliver_once_at_the_highest_qos_mqtt_3_3_5_1() {
    let mut index = SubscriptionIndex::new();
    index.subscribe(&filter("a/+"), SessionId(1), QoS::AtLeastOnce);
    index.subscribe(&filter("a/#"), SessionId(1), QoS::ExactlyOnce);
    index.subscribe(&filter("a/b"), SessionId(1), QoS::AtMostOnce);
    index.subscribe(&filter("a/b"), SessionId(2), QoS::AtMostOnce);
    index.subscribe(&filter("#"), SessionId(2), QoS::AtLeastOnce);
    assert_eq!(sessions(&index, "a/b"), vec![(1, 2), (2, 1)]);
    assert_eq!(sessions(&index, "a/c"), vec![(1, 2), (2, 1)]);
    assert_eq!(sessions(&index, "a"), vec![(1, 2), (2, 1)]);
    assert_eq!(sessions(&index, "b"), vec![(2, 1)]);
}

#[test]
fn a_repeated_subscription_replaces_the_qos_mqtt_3_8_4_3() {
    let mut index = SubscriptionIndex::new();
    assert!(index.subscribe(&filter("a"), SessionId(1), QoS::ExactlyOnce));
    assert!(!index.subscribe(&filter("a"), SessionId(1), QoS::AtMostOnce));
    assert_eq!(index.len(), 1);
    assert_eq!(sessions(&index, "a"), vec![(1, 0)]);
    // The same inside a shared set of several subscribers.
    assert!(!index.subscribe(&filter("a"), SessionId(2), QoS::AtMostOnce));
    assert!(!index.subscribe(&filter("a"), SessionId(2), QoS::ExactlyOnce));
    assert_eq!(index.len(), 2);
    assert_eq!(sessions(&index, "a"), vec![(1, 0), (2, 2)]);
}

#[test]
fn first_and_last_local_subscribers_are_reported() {
    let mut index = SubscriptionIndex::new();
    let f = filter("x/y");
    assert!(index.subscribe(&f, SessionId(1), QoS::AtMostOnce));
    assert!(!index.subscribe(&f, SessionId(2), QoS::AtMostOnce));
    assert!(!index.subscribe(&f, SessionId(3), QoS::AtMostOnce));
    assert!(!index.unsubscribe(&f, SessionId(9)), "absent session");
    assert!(!index.unsubscribe(&filter("x"), SessionId(1)), "absent filter, present prefix");
    assert!(!index.unsubscribe(&filter("q"), SessionId(1)), "absent filter");
    assert!(!index.unsubscribe(&f, SessionId(2)));
    assert!(!index.unsubscribe(&f, SessionId(1)));
    assert_eq!(index.len(), 1);
    assert!(index.unsubscribe(&f, SessionId(3)));
    assert!(!index.unsubscribe(&f, SessionId(3)), "already gone");
    assert!(index.is_empty());
    assert_eq!(index.node_count(), 0);
    assert_eq!(index.shared.len(), 0);
}

#[test]
fn remote_interest_is_the_union_of_matching_filters_workers() {
    let mut index = SubscriptionIndex::new();
    index.set_remote_interest(&filter("a/+"), WorkerId(3), true);
    index.set_remote_interest(&filter("a/#"), WorkerId(5), true);
    index.set_remote_interest(&filter("b"), WorkerId(7), true);
    index.set_remote_interest(&filter("a/b"), WorkerId(127), true);
    index.subscribe(&filter("a/b"), SessionId(1), QoS::AtMostOnce);
    let mut out = Matches::default();
    index.match_topic(&topic("a/b"), &mut out);
    assert_eq!(out.workers.iter().map(|w| w.0).collect::<Vec<_>>(), vec![3, 5, 127]);
    assert_eq!(out.sessions, vec![(SessionId(1), QoS::AtMostOnce)]);
    index.set_remote_interest(&filter("a/b"), WorkerId(127), false);
    index.set_remote_interest(&filter("a/+"), WorkerId(3), false);
    index.set_remote_interest(&filter("a/+"), WorkerId(3), false);
    index.set_remote_interest(&filter("zzz"), WorkerId(3), false);
    index.match_topic(&topic("a/b"), &mut out);
    assert_eq!(out.workers.iter().map(|w| w.0).collect::<Vec<_>>(), vec![5]);
    // The local subscriber keeps "a/b" alive after its remote interest went.
    assert!(index.unsubscribe(&filter("a/b"), SessionId(1)));
    index.set_remote_interest(&filter("a/#"), WorkerId(5), false);
    index.set_remote_interest(&filter("b"), WorkerId(7), false);
    assert_eq!(index.node_count(), 0);
    assert_eq!(index.remote.len(), 0);
}

#[test]
fn a_subscribe_unsubscribe_cycle_leaves_no_node_behind() {
    let mut index = SubscriptionIndex::new();
    let filters: Vec<TopicFilter> = (0..5000)
        .map(|n| match n % 5 {
            0 => filter(&format!("device/{n}/cmd")),
            1 => filter(&format!("device/+/status/{n}")),
            2 => filter(&format!("site/{}/#", n % 17)),
            3 => filter(&format!("{n}/a-rather-long-level-stored-on-the-heap/{n}")),
            _ => filter(&format!("/{n}//+")),
        })
        .collect();
    for round in 0..2 {
        for (n, f) in filters.iter().enumerate() {
            index.subscribe(f, SessionId(n as u32 % 7), QoS::AtLeastOnce);
            index.set_remote_interest(f, WorkerId(n as u16 % 3), true);
        }
        assert!(index.node_count() > 5000, "round {round}");
        for (n, f) in filters.iter().enumerate() {
            index.unsubscribe(f, SessionId(n as u32 % 7));
            index.set_remote_interest(f, WorkerId(n as u16 % 3), false);
        }
        assert_eq!(index.len(), 0);
        assert_eq!(index.node_count(), 0, "round {round}: {index:?}");
        assert_eq!(index.shared.len() + index.remote.len(), 0);
    }
}

#[test]
fn a_node_with_many_children_routes_by_lookup_not_scan() {
    // Not a timing test: shows that a wide node does not degrade routing to a scan, by
    // routing many topics against 200k siblings within the test's few seconds.
    let mut index = SubscriptionIndex::new();
    for n in 0..200_000u32 {
        index.subscribe(&filter(&format!("device/{n}/cmd")), SessionId(n), QoS::AtMostOnce);
    }
    let mut out = Matches::default();
    for n in (0..200_000u32).step_by(7) {
        index.match_topic(&topic(&format!("device/{n}/cmd")), &mut out);
        assert_eq!(out.sessions, vec![(SessionId(n), QoS::AtMostOnce)]);
    }
}

// ---- Property test against the reference matcher -------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Subscribe(String, u32, u8),
    Unsubscribe(String, u32),
    Remote(String, u16, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (filter_text(), 0..6u32, 0..3u8).prop_map(|(f, s, q)| Op::Subscribe(f, s, q)),
        2 => (filter_text(), 0..6u32).prop_map(|(f, s)| Op::Unsubscribe(f, s)),
        2 => (filter_text(), 0..4u16, any::<bool>()).prop_map(|(f, w, i)| Op::Remote(f, w, i)),
    ]
}

/// The brute-force model: every (filter, session, QoS) and (filter, worker) held.
#[derive(Default)]
struct Model {
    subscriptions: Vec<(TopicFilter, u32, u8)>,
    remote: Vec<(TopicFilter, u16)>,
}

impl Model {
    fn apply(&mut self, op: &Op) -> Option<bool> {
        match op {
            Op::Subscribe(f, s, q) => {
                let f = filter(f);
                let first = !self.subscriptions.iter().any(|(g, _, _)| *g == f);
                self.subscriptions.retain(|(g, t, _)| !(*g == f && t == s));
                self.subscriptions.push((f, *s, *q));
                Some(first)
            }
            Op::Unsubscribe(f, s) => {
                let f = filter(f);
                let before = self.subscriptions.len();
                self.subscriptions.retain(|(g, t, _)| !(*g == f && t == s));
                let removed = self.subscriptions.len() < before;
                Some(removed && !self.subscriptions.iter().any(|(g, _, _)| *g == f))
            }
            Op::Remote(f, w, interested) => {
                let f = filter(f);
                self.remote.retain(|(g, v)| !(*g == f && v == w));
                if *interested {
                    self.remote.push((f, *w));
                }
                None
            }
        }
    }

    fn matches(&self, name: &TopicName) -> (Vec<(u32, u8)>, Vec<u16>) {
        let mut sessions: Vec<(u32, u8)> = Vec::new();
        for (_, s, q) in self.subscriptions.iter().filter(|(f, _, _)| f.matches(name)) {
            match sessions.iter_mut().find(|(t, _)| t == s) {
                Some(entry) => entry.1 = entry.1.max(*q),
                None => sessions.push((*s, *q)),
            }
        }
        sessions.sort_unstable();
        let mut workers: Vec<u16> =
            self.remote.iter().filter(|(f, _)| f.matches(name)).map(|(_, w)| *w).collect();
        workers.sort_unstable();
        workers.dedup();
        (sessions, workers)
    }
}

fn apply(index: &mut SubscriptionIndex, op: &Op) -> Option<bool> {
    match op {
        Op::Subscribe(f, s, q) => {
            let qos = QoS::from_u8(*q).expect("0..3");
            Some(index.subscribe(&filter(f), SessionId(*s), qos))
        }
        Op::Unsubscribe(f, s) => Some(index.unsubscribe(&filter(f), SessionId(*s))),
        Op::Remote(f, w, interested) => {
            index.set_remote_interest(&filter(f), WorkerId(*w), *interested);
            None
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_index_agrees_with_brute_force_matching(
        ops in prop::collection::vec(op(), 1..60),
        topics in prop::collection::vec(topic_text(4), 1..12),
    ) {
        let mut index = SubscriptionIndex::new();
        let mut model = Model::default();
        let mut out = Matches::default();
        for op in &ops {
            prop_assert_eq!(apply(&mut index, op), model.apply(op), "op {:?}", op);
            prop_assert_eq!(index.len(), model.subscriptions.len());
        }
        for text in &topics {
            let name = topic(text);
            index.match_topic(&name, &mut out);
            let mut found: Vec<_> = out.sessions.iter().map(|(s, q)| (s.0, q.as_u8())).collect();
            let unsorted = found.len();
            found.sort_unstable();
            found.dedup_by_key(|e| e.0);
            prop_assert_eq!(unsorted, found.len(), "a session twice for {}", text);
            let workers: Vec<u16> = out.workers.iter().map(|w| w.0).collect();
            prop_assert_eq!((found, workers), model.matches(&name), "topic {}", text);
        }
        // Taking everything away leaves no node behind.
        for (f, s, _) in std::mem::take(&mut model.subscriptions) {
            index.unsubscribe(&f, SessionId(s));
        }
        for (f, w) in std::mem::take(&mut model.remote) {
            index.set_remote_interest(&f, WorkerId(w), false);
        }
        prop_assert_eq!(index.len(), 0);
        prop_assert_eq!(index.node_count(), 0);
    }
}

/// A session keeps its filters as trie nodes (`session.rs`): each must spell back its filter,
/// whatever its levels (empty, long, wildcards), and removing by node must act as removing by
/// filter.
#[test]
fn a_filters_node_spells_it_back_and_unsubscribes_it() {
    let texts = [
        "a",
        "a/b/c",
        "/a",
        "a/",
        "/",
        "a//b",
        "+/#",
        "#",
        "sport/tennis/+/a-level-longer-than-fourteen-bytes",
        "million/123456",
        "ü/ß",
    ];
    let mut index = SubscriptionIndex::new();
    let mut nodes = Vec::new();
    for (n, text) in texts.iter().enumerate() {
        let (node, first) =
            index.subscribe_node(&filter(text), SessionId(n as u32), QoS::AtLeastOnce);
        assert!(first, "{text}");
        assert_eq!(index.node_of(&filter(text)), Some(node));
        nodes.push(node);
    }
    for (text, &node) in texts.iter().zip(&nodes) {
        assert_eq!(index.filter_of(node).as_str(), *text);
    }
    // A second subscriber of "a/b/c": neither is then the sole one.
    let (node, first) = index.subscribe_node(&filter("a/b/c"), SessionId(99), QoS::AtMostOnce);
    assert_eq!((node, first), (nodes[1], false));
    assert!(!index.is_sole_subscriber(node, SessionId(1)));
    assert!(!index.unsubscribe_node(node, SessionId(99)), "session 1 is still subscribed");
    assert!(index.is_sole_subscriber(node, SessionId(1)));
    for (n, &node) in nodes.iter().enumerate() {
        assert!(index.unsubscribe_node(node, SessionId(n as u32)), "{}", texts[n]);
    }
    assert_eq!(index.len(), 0);
    assert!(index.node_of(&filter("a/b/c")).is_none(), "pruned");
}

proptest! {
    #[test]
    fn any_filter_is_spelled_back_from_its_node(text in filter_text()) {
        let mut index = SubscriptionIndex::new();
        let (node, _) = index.subscribe_node(&filter(&text), SessionId(1), QoS::AtMostOnce);
        let spelled = index.filter_of(node);
        prop_assert_eq!(spelled.as_str(), text.as_str());
    }
}
