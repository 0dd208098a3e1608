//! Topic names (what a PUBLISH is sent to) and topic filters (what a SUBSCRIBE asks for),
//! validated on construction [MQTT-4.7].
//!
//! Both wrap the `Bytes` they were decoded from, so building one copies nothing. Levels are
//! split on `/` as bytes: the separator is ASCII, so splitting valid UTF-8 on it is exact.

use std::fmt;

use bytes::Bytes;

use super::error::DecodeError;
use super::packet::Utf8Bytes;
use super::scan;

/// The largest string MQTT can carry: a two-byte length prefix [MQTT-1.5.3].
pub const STRING_BYTES_MAX: usize = u16::MAX as usize;

/// A topic name: non-empty, no `+` or `#` [MQTT-4.7.3-1] [MQTT-3.3.2-2].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Utf8Bytes);

impl TopicName {
    pub fn new(text: Utf8Bytes) -> Result<Self, DecodeError> {
        if text.is_empty() {
            return Err(DecodeError::EmptyTopic);
        }
        if text.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
            return Err(DecodeError::WildcardInTopicName);
        }
        Ok(Self(text))
    }

    /// Builds a name from a decoded string field: the same checks as [`Utf8Bytes::try_new`]
    /// then [`TopicName::new`], in one pass when the name is plain ASCII (the common case).
    pub fn from_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        if !bytes.is_empty() && bytes.len() <= STRING_BYTES_MAX && scan::is_ascii_topic_name(&bytes)
        {
            return Ok(Self(Utf8Bytes::from_checked_ascii(bytes)));
        }
        Self::new(Utf8Bytes::try_new(bytes)?)
    }

    /// Builds a name from a string known to the program (for `$SYS` topics and tests).
    pub fn from_static(text: &'static str) -> Self {
        Self::new(Utf8Bytes::from_static(text)).expect("static topic names are valid")
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn to_bytes(&self) -> Bytes {
        self.0.clone().into_bytes()
    }

    /// A copy that does not keep its packet's receive buffer alive: see
    /// [`Utf8Bytes::detached`].
    pub fn detached(&self) -> Self {
        Self(self.0.detached())
    }

    pub fn levels(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.as_bytes().split(|&b| b == b'/')
    }

    /// Topics starting with `$` are apart: wildcards at the first level do not match them
    /// [MQTT-4.7.2-1].
    pub fn is_dollar(&self) -> bool {
        self.as_bytes().first() == Some(&b'$')
    }
}

impl TryFrom<&str> for TopicName {
    type Error = DecodeError;

    fn try_from(text: &str) -> Result<Self, DecodeError> {
        Self::new(Utf8Bytes::try_new(Bytes::copy_from_slice(text.as_bytes()))?)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic filter: non-empty; `#` alone in the last level; `+` alone in its level
/// [MQTT-4.7.1-2] [MQTT-4.7.1-3].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Utf8Bytes);

impl TopicFilter {
    pub fn new(text: Utf8Bytes) -> Result<Self, DecodeError> {
        if text.is_empty() {
            return Err(DecodeError::EmptyFilter);
        }
        let mut levels = text.as_bytes().split(|&b| b == b'/').peekable();
        while let Some(level) = levels.next() {
            let last = levels.peek().is_none();
            if level.contains(&b'#') && (level != b"#" || !last) {
                return Err(DecodeError::InvalidMultiLevelWildcard);
            }
            if level.contains(&b'+') && level != b"+" {
                return Err(DecodeError::InvalidSingleLevelWildcard);
            }
        }
        Ok(Self(text))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn to_bytes(&self) -> Bytes {
        self.0.clone().into_bytes()
    }

    /// A copy that does not keep its packet's receive buffer alive: see
    /// [`Utf8Bytes::detached`].
    pub fn detached(&self) -> Self {
        Self(self.0.detached())
    }

    pub fn levels(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.as_bytes().split(|&b| b == b'/')
    }

    pub fn has_wildcard(&self) -> bool {
        self.as_bytes().iter().any(|&b| b == b'+' || b == b'#')
    }

    /// Whether this filter matches `topic` [MQTT-4.7], `$`-topics apart [MQTT-4.7.2-1].
    /// The subscription index answers this for many filters at once; this is the reference.
    pub fn matches(&self, topic: &TopicName) -> bool {
        if topic.is_dollar() && matches!(self.as_bytes().first(), Some(b'+' | b'#')) {
            return false;
        }
        let mut filter = self.levels();
        let mut name = topic.levels();
        loop {
            match (filter.next(), name.next()) {
                (Some(b"#"), _) => return true,
                (Some(b"+"), Some(_)) => {}
                (Some(f), Some(n)) if f == n => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = DecodeError;

    fn try_from(text: &str) -> Result<Self, DecodeError> {
        Self::new(Utf8Bytes::try_new(Bytes::copy_from_slice(text.as_bytes()))?)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> TopicName {
        TopicName::try_from(text).expect("valid topic name")
    }

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::try_from(text).expect("valid topic filter")
    }

    #[test]
    fn topic_names_are_non_empty_without_wildcards_mqtt_4_7_3_1_and_3_3_2_2() {
        assert_eq!(TopicName::try_from(""), Err(DecodeError::EmptyTopic));
        assert_eq!(TopicName::try_from("a/+"), Err(DecodeError::WildcardInTopicName));
        assert_eq!(TopicName::try_from("#"), Err(DecodeError::WildcardInTopicName));
        assert_eq!(TopicName::try_from("a\0"), Err(DecodeError::NullCharacter));
        // A lone separator and empty levels are valid names [MQTT 4.7.3].
        for text in ["/", "a//b", " ", "$SYS/x"] {
            assert_eq!(name(text).as_str(), text);
        }
    }

    #[test]
    fn filters_place_wildcards_correctly_mqtt_4_7_1_2_and_4_7_1_3() {
        for text in ["#", "+", "a/#", "+/+", "/+", "a/+/b/#", "+/", "$SYS/#"] {
            assert_eq!(filter(text).as_str(), text);
        }
        for text in ["a/#/b", "a#", "#/", "##"] {
            assert_eq!(TopicFilter::try_from(text), Err(DecodeError::InvalidMultiLevelWildcard));
        }
        for text in ["a+", "+a/b", "a/++"] {
            assert_eq!(TopicFilter::try_from(text), Err(DecodeError::InvalidSingleLevelWildcard));
        }
        assert_eq!(TopicFilter::try_from(""), Err(DecodeError::EmptyFilter));
    }

    /// The examples of section 4.7.1 and 4.7.2, as `check(filter, topic, expected)`.
    #[test]
    fn matching_follows_the_specification_examples() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
            ("sport/#", "sport", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            // [MQTT-4.7.2-1]: wildcards at the first level do not match `$` topics.
            ("#", "$SYS/uptime", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ];
        for (filter_text, topic, expected) in cases {
            assert_eq!(
                filter(filter_text).matches(&name(topic)),
                expected,
                "{filter_text} {topic}"
            );
        }
    }

    proptest::proptest! {
        /// The one-pass `from_bytes` gives exactly what the two-step checks give, on any
        /// bytes (biased towards ASCII, wildcards, NUL and UTF-8 lead bytes).
        #[test]
        fn from_bytes_agrees_with_the_two_step_checks(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    4 => 0x20u8..0x7F,
                    1 => proptest::prelude::Just(0u8),
                    1 => proptest::prelude::Just(b'#'),
                    1 => proptest::prelude::Just(b'+'),
                    1 => proptest::prelude::any::<u8>(),
                ],
                0..24,
            )
        ) {
            let bytes = Bytes::from(bytes);
            let two_step = Utf8Bytes::try_new(bytes.clone()).and_then(TopicName::new);
            proptest::prop_assert_eq!(TopicName::from_bytes(bytes), two_step);
        }
    }
}
