//! Decode errors: one small `Copy` value per rule a client can break, each naming what was wrong
//! and the normative statement (or, where the specification states the rule without an id, the
//! section) it breaks. A decode error closes only the connection that sent the bytes.
//!
//! Invariant: every variant is produced by exactly one check in `decode` (or in the validating
//! constructors of `packet` and `topic`), and each has a unit test of its own.

use thiserror::Error;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum DecodeError {
    #[error("packet type {0} is reserved (section 2.2.1, table 2.1)")]
    ReservedPacketType(u8),
    #[error(
        "reserved fixed-header flags {flags:#06b} on packet type {packet_type} \
         [MQTT-2.2.2-1] [MQTT-2.2.2-2]"
    )]
    ReservedFlags { packet_type: u8, flags: u8 },
    #[error("remaining length longer than 4 bytes (section 2.2.3)")]
    RemainingLengthTooLong,
    /// `length` is the whole packet's size, fixed header included.
    #[error("packet of {length} bytes exceeds the limit of {max} bytes")]
    PacketTooLarge { length: usize, max: usize },
    #[error("packet body ends before its fields do")]
    Truncated,
    #[error("packet body has {0} bytes after its last field")]
    TrailingBytes(usize),
    #[error("string is not well-formed UTF-8 [MQTT-1.5.3-1]")]
    InvalidUtf8,
    #[error("string contains U+0000 [MQTT-1.5.3-2]")]
    NullCharacter,
    /// Only from constructing a string in the program: a decoded one has a two-byte length.
    #[error("string of {0} bytes is longer than 65535 (section 1.5.3)")]
    StringTooLong(usize),
    #[error("packet identifier is 0 [MQTT-2.3.1-1]")]
    ZeroPacketId,
    #[error("QoS 3 is not a valid QoS [MQTT-3.3.1-4]")]
    InvalidQoS,
    #[error("QoS 0 PUBLISH has DUP set [MQTT-3.3.1-2]")]
    DupWithQoS0,
    #[error("topic name is empty [MQTT-4.7.3-1]")]
    EmptyTopic,
    #[error("topic name contains a wildcard [MQTT-3.3.2-2]")]
    WildcardInTopicName,
    #[error("topic filter is empty [MQTT-4.7.3-1]")]
    EmptyFilter,
    #[error("'#' is not alone and last in its topic filter [MQTT-4.7.1-2]")]
    InvalidMultiLevelWildcard,
    #[error("'+' is not alone in its topic filter level [MQTT-4.7.1-3]")]
    InvalidSingleLevelWildcard,
    #[error("SUBSCRIBE without any topic filter [MQTT-3.8.3-3]")]
    EmptySubscribe,
    #[error("UNSUBSCRIBE without any topic filter [MQTT-3.10.3-2]")]
    EmptyUnsubscribe,
    /// The specification spells this id `MQTT-3-8.3-4`.
    #[error("SUBSCRIBE requested-QoS byte {0:#04x} has reserved bits or QoS 3 [MQTT-3-8.3-4]")]
    InvalidRequestedQoS(u8),
    #[error("protocol name is neither MQTT nor MQIsdp [MQTT-3.1.2-1]")]
    InvalidProtocolName,
    #[error("protocol level {0} is not supported (3 and 4 are) [MQTT-3.1.2-2]")]
    UnsupportedProtocolLevel(u8),
    #[error("CONNECT reserved flag is set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    #[error("will QoS is not 0 without the will flag [MQTT-3.1.2-11] [MQTT-3.1.2-13]")]
    WillQoSWithoutWill,
    #[error("will retain is set without the will flag [MQTT-3.1.2-11] [MQTT-3.1.2-15]")]
    WillRetainWithoutWill,
    #[error("will QoS is 3 [MQTT-3.1.2-14]")]
    InvalidWillQoS,
    #[error("password flag set without the user name flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    #[error("CONNACK acknowledge-flags bits 7-1 are reserved and set (section 3.2.2.1)")]
    ConnackReservedBits,
    #[error("CONNACK return code {0} is reserved (section 3.2.2.3, table 3.1)")]
    InvalidConnectReturnCode(u8),
    #[error("CONNACK refuses the connection but has Session Present set [MQTT-3.2.2-4]")]
    SessionPresentWithRefusal,
    #[error("SUBACK return code {0:#04x} is reserved [MQTT-3.9.3-2]")]
    InvalidSubackCode(u8),
    #[error("SUBACK without any return code [MQTT-3.8.4-5]")]
    EmptySuback,
}

impl DecodeError {
    /// Whether the broker must answer CONNACK 0x01 before closing [MQTT-3.1.2-2].
    pub const fn wants_protocol_version_refusal(self) -> bool {
        matches!(self, Self::UnsupportedProtocolLevel(_))
    }
}
