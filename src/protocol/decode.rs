//! Incremental decoding (owned by the codec work; see issue 3).

use bytes::BytesMut;

use super::error::DecodeError;
use super::packet::Packet;

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a packet (nothing is consumed), and
/// `Ok(Some(packet))` after removing exactly that packet's bytes from `buf`. The remaining
/// length is checked against `max_packet_bytes` as soon as the fixed header is complete, before
/// the body is waited for. Topic names and payloads are slices of `buf`'s storage.
pub fn decode(buf: &mut BytesMut, max_packet_bytes: usize) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, max_packet_bytes);
    Err(DecodeError::Truncated)
}
