//! Proptest strategies for topic names and filters over a small alphabet of levels, shared by
//! the property tests of the subscription index and the retained store. The levels include
//! the empty level, a `$` level (for [MQTT-4.7.2-1]) and one too long to be stored inline.

use proptest::prelude::*;

const LEVELS: [&str; 5] = ["a", "b", "", "$s", "a-long-level-stored-on-the-heap"];

fn level() -> impl Strategy<Value = String> {
    prop::sample::select(&LEVELS[..]).prop_map(str::to_owned)
}

/// Topic names of 1 to `levels_max` levels.
pub fn topic_text(levels_max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..=levels_max)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topics are not empty", |text| !text.is_empty())
}

/// Filters of 1 to 3 levels or `+`, maybe ending in `#`.
pub fn filter_text() -> impl Strategy<Value = String> {
    let part = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    (prop::collection::vec(part, 1..4), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
        .prop_filter("filters are not empty", |text| !text.is_empty())
}
