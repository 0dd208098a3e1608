//! The MQTT 3.1.1 / 3.1 codec: packet types, incremental decoding with strict validation, and
//! encoding into output buffers. Sans-IO: bytes in, packets out, and back.
//!
//! Payloads and topic names are [`bytes::Bytes`] slices of the receive buffer: decoding copies
//! nothing, and a PUBLISH fanned out to many subscribers is encoded once per variant.
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "proptest"))]
pub mod arbitrary;
pub mod decode;
pub mod encode;
pub mod error;
pub mod packet;
mod scan;
pub mod topic;

#[cfg(test)]
mod proptests;

pub use decode::decode;
pub use encode::{encode, EncodedPublish, OutBuf};
pub use error::DecodeError;
pub use packet::*;
pub use topic::{TopicFilter, TopicName};
