//! The 14 MQTT 3.1.1 control packets as Rust values.
//!
//! Every string field is validated UTF-8 ([`Utf8Bytes`]), every topic is a validated
//! [`TopicName`] or [`TopicFilter`], and every packet identifier is non-zero ([`PacketId`]):
//! a value of these types is always well-formed, so the broker never re-checks it.

use std::fmt;
use std::num::NonZeroU16;

use bytes::Bytes;

use super::error::DecodeError;
use super::scan;
use super::topic::{TopicFilter, TopicName, STRING_BYTES_MAX};

/// A packet identifier: non-zero by construction [MQTT-2.3.1-1].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The identifier `value`, or `None` for 0, which MQTT forbids.
    pub const fn new(value: u16) -> Option<Self> {
        match NonZeroU16::new(value) {
            Some(id) => Some(Self(id)),
            None => None,
        }
    }

    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// The identifier after this one, wrapping from 65535 to 1 (0 is never used).
    pub const fn next(self) -> Self {
        match NonZeroU16::new(self.0.get().wrapping_add(1)) {
            Some(id) => Self(id),
            None => Self(NonZeroU16::MIN),
        }
    }
}

impl fmt::Debug for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PacketId({})", self.0)
    }
}

/// Quality of service. QoS 3 does not exist [MQTT-3.3.1-4].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Bytes known to be well-formed UTF-8 without U+0000 [MQTT-1.5.3-1] [MQTT-1.5.3-2], and at
/// most [`STRING_BYTES_MAX`] long, so that they always fit a two-byte length prefix.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Checks `bytes` and wraps them; `None` if they are not valid MQTT UTF-8.
    pub fn new(bytes: Bytes) -> Option<Self> {
        Self::try_new(bytes).ok()
    }

    /// Checks `bytes` and wraps them, saying which rule they break: ill-formed UTF-8 (which
    /// includes the surrogates U+D800..U+DFFF) [MQTT-1.5.3-1], or U+0000 [MQTT-1.5.3-2].
    /// Also refuses more than [`STRING_BYTES_MAX`] bytes, which no length prefix can carry
    /// (only values built by the program can be that long; decoded strings never are).
    pub fn try_new(bytes: Bytes) -> Result<Self, DecodeError> {
        if bytes.len() > STRING_BYTES_MAX {
            return Err(DecodeError::StringTooLong(bytes.len()));
        }
        if scan::is_ascii_without_nul(&bytes) {
            return Ok(Self(bytes));
        }
        if std::str::from_utf8(&bytes).is_err() {
            return Err(DecodeError::InvalidUtf8);
        }
        // A zero byte in well-formed UTF-8 can only be U+0000 itself.
        if bytes.contains(&0) {
            return Err(DecodeError::NullCharacter);
        }
        Ok(Self(bytes))
    }

    /// Wraps bytes the caller has checked with [`scan::is_ascii_topic_name`] or
    /// [`scan::is_ascii_without_nul`] (and that fit a length prefix), without checking again.
    pub(super) fn from_checked_ascii(bytes: Bytes) -> Self {
        debug_assert!(scan::is_ascii_without_nul(&bytes) && bytes.len() <= STRING_BYTES_MAX);
        Self(bytes)
    }

    pub fn from_static(text: &'static str) -> Self {
        Self::try_new(Bytes::from_static(text.as_bytes())).expect("a valid MQTT string")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Cannot fail: the constructors only admit valid UTF-8.
        std::str::from_utf8(&self.0).expect("Utf8Bytes holds valid UTF-8")
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// A copy in an allocation of its own, of exactly its length. A decoded string is a view
    /// of its packet's receive buffer and keeps all of it (and the buffer's shared header)
    /// alive; what is stored for a long time (a session's client id, its filters) is detached
    /// so that it costs only its own bytes (issue 6).
    pub fn detached(&self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Utf8Bytes {
    /// Panics if `text` holds U+0000 or is longer than [`STRING_BYTES_MAX`]: use
    /// [`Utf8Bytes::try_new`] for text that may be either.
    fn from(text: String) -> Self {
        Self::try_new(Bytes::from(text)).expect("a valid MQTT string")
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The protocol a client speaks, from CONNECT's protocol name and level.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V311,
}

/// The last will carried in CONNECT [MQTT-3.1.2-8].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LastWill {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    /// May be empty: the broker then assigns one or refuses, by `clean_session` [MQTT-3.1.3-6].
    pub client_id: Utf8Bytes,
    pub will: Option<LastWill>,
    pub username: Option<Utf8Bytes>,
    pub password: Option<Bytes>,
}

/// CONNACK return codes (section 3.2.2.3, table 3.1; 6-255 are reserved).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUsernameOrPassword = 4,
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Accepted),
            1 => Some(Self::UnacceptableProtocolVersion),
            2 => Some(Self::IdentifierRejected),
            3 => Some(Self::ServerUnavailable),
            4 => Some(Self::BadUsernameOrPassword),
            5 => Some(Self::NotAuthorized),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Connack {
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

/// A PUBLISH. `packet_id` is `Some` exactly when `qos` is above 0 [MQTT-2.3.1-5].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: TopicName,
    pub packet_id: Option<PacketId>,
    pub payload: Bytes,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Subscribe {
    pub packet_id: PacketId,
    /// At least one (filter, requested QoS) pair [MQTT-3.8.3-3].
    pub filters: Vec<(TopicFilter, QoS)>,
}

/// One SUBACK return code: the granted QoS, or 0x80 for a refused filter.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SubackCode {
    Granted(QoS),
    Failure,
}

impl SubackCode {
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Granted(qos) => qos.as_u8(),
            Self::Failure => 0x80,
        }
    }

    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0x80 => Some(Self::Failure),
            other => match QoS::from_u8(other) {
                Some(qos) => Some(Self::Granted(qos)),
                None => None,
            },
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Suback {
    pub packet_id: PacketId,
    pub return_codes: Vec<SubackCode>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    /// At least one filter [MQTT-3.10.3-2].
    pub filters: Vec<TopicFilter>,
}

/// An MQTT 3.1.1 control packet: all 14 types.
///
/// CONNECT is boxed: it is by far the largest variant and arrives once per connection, while
/// every decoded packet is moved by value, so unboxed it would make each PUBLISH move as
/// many bytes as a CONNECT (176 instead of 80; measured in docs/BENCHMARKS.md, Codec).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Packet {
    Connect(Box<Connect>),
    Connack(Connack),
    Publish(Publish),
    Puback(PacketId),
    Pubrec(PacketId),
    Pubrel(PacketId),
    Pubcomp(PacketId),
    Subscribe(Subscribe),
    Suback(Suback),
    Unsubscribe(Unsubscribe),
    Unsuback(PacketId),
    Pingreq,
    Pingresp,
    Disconnect,
}

impl Packet {
    /// The packet's name as the specification writes it, for logs and errors.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "CONNECT",
            Self::Connack(_) => "CONNACK",
            Self::Publish(_) => "PUBLISH",
            Self::Puback(_) => "PUBACK",
            Self::Pubrec(_) => "PUBREC",
            Self::Pubrel(_) => "PUBREL",
            Self::Pubcomp(_) => "PUBCOMP",
            Self::Subscribe(_) => "SUBSCRIBE",
            Self::Suback(_) => "SUBACK",
            Self::Unsubscribe(_) => "UNSUBSCRIBE",
            Self::Unsuback(_) => "UNSUBACK",
            Self::Pingreq => "PINGREQ",
            Self::Pingresp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_moves_as_a_publish_not_as_a_connect() {
        // Every decoded packet is returned and matched by value: the boxed CONNECT keeps
        // PUBLISH the largest inline variant.
        assert_eq!(std::mem::size_of::<Packet>(), std::mem::size_of::<Publish>());
        assert!(std::mem::size_of::<Connect>() > std::mem::size_of::<Packet>());
    }

    #[test]
    fn packet_ids_skip_zero_when_they_wrap_mqtt_2_3_1_1() {
        assert_eq!(PacketId::new(0), None);
        let last = PacketId::new(u16::MAX).expect("non-zero");
        assert_eq!(last.next().get(), 1);
        assert_eq!(PacketId::new(1).expect("non-zero").next().get(), 2);
    }

    #[test]
    fn utf8_bytes_tell_which_rule_is_broken_mqtt_1_5_3_1_and_1_5_3_2() {
        assert_eq!(Utf8Bytes::try_new(Bytes::from_static(b"\xFF")), Err(DecodeError::InvalidUtf8));
        assert_eq!(Utf8Bytes::try_new(Bytes::from_static(b"a\0")), Err(DecodeError::NullCharacter));
        // U+FEFF (the byte order mark) is allowed and kept [MQTT-1.5.3-3].
        let bom = Utf8Bytes::try_new(Bytes::from_static(b"\xEF\xBB\xBFx")).expect("valid");
        assert_eq!(bom.as_str(), "\u{FEFF}x");
        assert_eq!(Utf8Bytes::new(Bytes::from_static(b"\xFF")), None);
    }

    #[test]
    fn utf8_bytes_fit_a_two_byte_length() {
        let longest = Bytes::from(vec![b'a'; STRING_BYTES_MAX]);
        assert_eq!(Utf8Bytes::try_new(longest).map(|text| text.len()), Ok(STRING_BYTES_MAX));
        let too_long = Bytes::from(vec![b'a'; STRING_BYTES_MAX + 1]);
        assert_eq!(
            Utf8Bytes::try_new(too_long),
            Err(DecodeError::StringTooLong(STRING_BYTES_MAX + 1))
        );
    }

    #[test]
    fn suback_codes_are_qos_or_failure_mqtt_3_9_3_2() {
        for value in 0..=u8::MAX {
            let code = SubackCode::from_u8(value);
            assert_eq!(code.is_some(), matches!(value, 0 | 1 | 2 | 0x80), "{value:#x}");
            if let Some(code) = code {
                assert_eq!(code.as_u8(), value);
            }
        }
    }

    #[test]
    fn connect_return_codes_0_to_5_exist_table_3_1() {
        for value in 0..=u8::MAX {
            let code = ConnectReturnCode::from_u8(value);
            assert_eq!(code.is_some(), value <= 5, "{value}");
            assert!(code.is_none_or(|code| code as u8 == value));
        }
    }
}
