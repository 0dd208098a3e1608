//! Tests of the retained store: outcomes of `set`, the bound, filter lookups by MQTT's rules,
//! expiry order, pruning, and a property test against a brute-force model.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::broker::topic_strategies::{filter_text, topic_text};
use crate::protocol::QoS;

fn filter(text: &str) -> TopicFilter {
    TopicFilter::try_from(text).expect("test filter is valid")
}

fn topic(text: &str) -> TopicName {
    TopicName::try_from(text).expect("test topic is valid")
}

fn message(name: &str, payload: &str) -> Message {
    Message {
        topic: topic(name),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: true,
    }
}

/// The topics `filter` finds, sorted.
fn found(store: &RetainedStore, text: &str) -> Vec<String> {
    let mut topics = Vec::new();
    store.for_each_match(&filter(text), |m| topics.push(m.topic.as_str().to_owned()));
    topics.sort_unstable();
    topics
}

fn store_of(topics: &[&str]) -> RetainedStore {
    let mut store = RetainedStore::new(100);
    for name in topics {
        assert_eq!(store.set(message(name, "x"), Millis(0)), RetainOutcome::Stored);
    }
    store
}

#[test]
fn set_reports_each_outcome_and_an_empty_payload_deletes_mqtt_3_3_1_10() {
    let mut store = RetainedStore::new(2);
    assert_eq!(store.set(message("a", ""), Millis(0)), RetainOutcome::NothingToDelete);
    assert_eq!(store.set(message("a", "1"), Millis(0)), RetainOutcome::Stored);
    assert_eq!(store.set(message("a", "2"), Millis(1)), RetainOutcome::Replaced);
    assert_eq!(store.get(&topic("a")).map(|m| m.payload.clone()), Some(Bytes::from("2")));
    assert_eq!(store.set(message("a/b", "3"), Millis(1)), RetainOutcome::Stored);
    assert_eq!(store.len(), 2);
    assert_eq!(store.set(message("a", ""), Millis(2)), RetainOutcome::Deleted);
    assert_eq!(store.get(&topic("a")), None);
    assert_eq!(store.get(&topic("a/b")).map(|m| m.payload.clone()), Some(Bytes::from("3")));
    assert_eq!(store.len(), 1);
}

#[test]
fn at_the_bound_new_topics_are_refused_but_replace_and_delete_work() {
    let mut store = RetainedStore::new(2);
    assert_eq!(store.set(message("a", "1"), Millis(0)), RetainOutcome::Stored);
    assert_eq!(store.set(message("b", "1"), Millis(0)), RetainOutcome::Stored);
    assert_eq!(store.set(message("c", "1"), Millis(0)), RetainOutcome::Full);
    assert_eq!(store.get(&topic("c")), None);
    assert_eq!(store.node_count(), 2, "a refused topic leaves no node");
    assert_eq!(store.set(message("a", "2"), Millis(0)), RetainOutcome::Replaced);
    assert_eq!(store.set(message("b", ""), Millis(0)), RetainOutcome::Deleted);
    assert_eq!(store.set(message("c", "1"), Millis(0)), RetainOutcome::Stored);
    assert_eq!(store.len(), 2);
}

#[test]
fn wildcard_lookups_follow_the_matching_rules_mqtt_4_7_1_2_and_4_7_1_3() {
    let store = store_of(&["sport", "sport/tennis", "sport/tennis/p1", "sport/", "/x", "a//b"]);
    assert_eq!(found(&store, "sport/#"), ["sport", "sport/", "sport/tennis", "sport/tennis/p1"]);
    assert_eq!(found(&store, "sport/+"), ["sport/", "sport/tennis"]);
    assert_eq!(found(&store, "+"), ["sport"]);
    assert_eq!(found(&store, "+/+"), ["/x", "sport/", "sport/tennis"]);
    assert_eq!(found(&store, "+/x"), ["/x"]);
    assert_eq!(found(&store, "a/+/b"), ["a//b"]);
    assert_eq!(found(&store, "sport/tennis/p1"), ["sport/tennis/p1"]);
    assert!(found(&store, "sport/tennis/p2").is_empty());
    assert!(found(&store, "nothing/#").is_empty());
}

#[test]
fn leading_wildcards_do_not_find_dollar_topics_mqtt_4_7_2_1() {
    let store = store_of(&["$SYS/uptime", "$SYS", "plain", "a/$b"]);
    assert_eq!(found(&store, "#"), ["a/$b", "plain"]);
    assert_eq!(found(&store, "+/uptime"), Vec::<String>::new());
    assert_eq!(found(&store, "+"), ["plain"]);
    assert_eq!(found(&store, "$SYS/#"), ["$SYS", "$SYS/uptime"]);
    assert_eq!(found(&store, "a/+"), ["a/$b"]);
}

#[test]
fn expiry_removes_the_oldest_first_and_a_replacement_restarts_the_clock() {
    let mut store = RetainedStore::new(10);
    store.set(message("a", "1"), Millis(0));
    store.set(message("b", "1"), Millis(1000));
    store.set(message("c", "1"), Millis(2000));
    store.set(message("a", "2"), Millis(2500));
    assert_eq!(store.next_expiry(10), Some(Millis(11_000)));
    assert_eq!(store.expire(Millis(10_999), 10), 0);
    assert_eq!(store.expire(Millis(11_000), 10), 1, "b, set at 1000, is due at 11000");
    assert_eq!(store.get(&topic("b")), None);
    assert_eq!(store.next_expiry(10), Some(Millis(12_000)));
    assert_eq!(store.expire(Millis(12_499), 10), 1, "c; a was replaced at 2500");
    assert_eq!(store.len(), 1);
    assert_eq!(store.expire(Millis(u64::MAX), 0), 0, "0 means kept forever");
    assert_eq!(store.next_expiry(0), None);
    assert_eq!(store.expire(Millis(12_500), 10), 1);
    assert!(store.is_empty());
    assert_eq!(store.node_count(), 0);
    assert_eq!(store.next_expiry(10), None);
}

#[test]
fn deleting_prunes_empty_nodes_but_keeps_those_still_holding_messages() {
    let mut store = store_of(&["a/b/c", "a", "a/b/d", "x/y/z"]);
    assert_eq!(store.node_count(), 7);
    store.set(message("a/b/c", ""), Millis(0));
    assert_eq!(store.node_count(), 6);
    store.set(message("a/b/d", ""), Millis(0));
    assert_eq!(store.node_count(), 4, "a/b went with its last child; a holds a message");
    assert_eq!(found(&store, "#"), ["a", "x/y/z"]);
    store.set(message("x/y/z", ""), Millis(0));
    store.set(message("a", ""), Millis(0));
    assert_eq!(store.node_count(), 0);
}

// ---- Property test against a brute-force model ---------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// Set `topic` to `payload` (empty deletes) after `advance` milliseconds.
    Set {
        topic: String,
        payload: String,
        advance: u64,
    },
    Expire {
        advance: u64,
        expiry_secs: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (topic_text(3), prop_oneof![Just(String::new()), "[xy]{1,3}"], 0..3000u64)
            .prop_map(|(topic, payload, advance)| Op::Set { topic, payload, advance }),
        1 => (0..5000u64, 0..4u64).prop_map(|(advance, expiry_secs)| Op::Expire { advance, expiry_secs }),
    ]
}

/// Topic -> (payload, set at).
type Model = BTreeMap<String, (String, u64)>;

fn model_set(model: &mut Model, topic: &str, payload: &str, now: u64, max: usize) -> RetainOutcome {
    match (model.contains_key(topic), payload.is_empty()) {
        (true, true) => {
            model.remove(topic);
            RetainOutcome::Deleted
        }
        (false, true) => RetainOutcome::NothingToDelete,
        (true, false) => {
            model.insert(topic.to_owned(), (payload.to_owned(), now));
            RetainOutcome::Replaced
        }
        (false, false) if model.len() >= max => RetainOutcome::Full,
        (false, false) => {
            model.insert(topic.to_owned(), (payload.to_owned(), now));
            RetainOutcome::Stored
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_store_agrees_with_brute_force(
        ops in prop::collection::vec(op(), 1..50),
        filters in prop::collection::vec(filter_text(), 1..10),
        max in 1..12usize,
    ) {
        let mut store = RetainedStore::new(max);
        let mut model = Model::new();
        let mut now = 0;
        for op in &ops {
            match op {
                Op::Set { topic: name, payload, advance } => {
                    now += advance;
                    let outcome = store.set(message(name, payload), Millis(now));
                    prop_assert_eq!(outcome, model_set(&mut model, name, payload, now, max));
                }
                Op::Expire { advance, expiry_secs } => {
                    now += advance;
                    let before = model.len();
                    if *expiry_secs > 0 {
                        model.retain(|_, (_, set_at)| now - *set_at < expiry_secs * 1000);
                    }
                    prop_assert_eq!(store.expire(Millis(now), *expiry_secs), before - model.len());
                }
            }
            prop_assert_eq!(store.len(), model.len());
        }
        for (name, (payload, _)) in &model {
            let got = store.get(&topic(name)).map(|m| m.payload.clone());
            prop_assert_eq!(got, Some(Bytes::copy_from_slice(payload.as_bytes())));
        }
        for text in &filters {
            let f = filter(text);
            let expect: Vec<String> =
                model.keys().filter(|name| f.matches(&topic(name))).cloned().collect();
            prop_assert_eq!(found(&store, text), expect, "filter {}", text);
        }
        prop_assert_eq!(store.expire(Millis(now + 10_000), 1), model.len());
        prop_assert_eq!(store.node_count(), 0);
    }
}
