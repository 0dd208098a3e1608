//! The codec's fuzz checks: what must hold for any bytes a client can send.
//!
//! - [`check_decode`]: decoding arbitrary bytes never panics; every packet decoded re-encodes
//!   to exactly `encoded_len` bytes that decode to the same packet; when the input's fixed
//!   header used the shortest length encoding, the re-encoding is the input's bytes; the size
//!   limit is judged from the header alone.
//! - [`check_stream`]: the packets of a valid stream come out the same whatever the chunks the
//!   stream arrives in, with nothing consumed while a packet is incomplete.

use bytes::BytesMut;
use ringmq::protocol::encode::{encoded_len, remaining_length, remaining_length_bytes};
use ringmq::protocol::{decode, encode, DecodeError, Packet};

/// The size limit for the first decode pass: larger than any fuzz input.
const LIMIT_BYTES: usize = 1 << 20;

/// Decodes `data` as a stream of packets until it ends or is refused, checking each packet.
pub fn check_decode(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match decode(&mut buf, LIMIT_BYTES) {
            Ok(Some(packet)) => {
                let consumed = before.len() - buf.len();
                check_packet(&packet, &before[..consumed]);
                check_limit_from_header(&before, consumed);
            }
            Ok(None) => {
                assert_eq!(buf, before, "an incomplete packet consumed bytes");
                return;
            }
            Err(error) => {
                check_error_is_stable(&before, error);
                return;
            }
        }
    }
}

/// `packet` was decoded from `input` (exactly its bytes): its encoding round-trips.
pub fn check_packet(packet: &Packet, input: &[u8]) {
    let mut encoded = BytesMut::new();
    encode(packet, &mut encoded);
    assert_eq!(encoded.len(), encoded_len(packet), "encoded_len of {packet:?}");
    let shortest_header = 1 + remaining_length_bytes(remaining_length(packet));
    let input_header = input.len() - remaining_length(packet);
    assert!(input_header >= shortest_header, "header shorter than possible: {input:?}");
    if input_header == shortest_header {
        assert_eq!(&encoded[..], input, "re-encoding of {packet:?} differs from its input");
    }
    let mut again = encoded.clone();
    let decoded = decode(&mut again, encoded.len())
        .unwrap_or_else(|error| panic!("re-encoded {packet:?} refused: {error}"))
        .unwrap_or_else(|| panic!("re-encoded {packet:?} incomplete"));
    assert_eq!(&decoded, packet, "decode(encode(p)) != p");
    assert!(again.is_empty(), "re-encoded {packet:?} left bytes behind");
}

/// With the limit one byte below the packet's size, the packet is refused from its header
/// alone: the body need not have arrived.
fn check_limit_from_header(input: &[u8], packet_bytes: usize) {
    let header_bytes = header_bytes(input).expect("a decoded packet has a whole header");
    let mut header_only = BytesMut::from(&input[..header_bytes]);
    let result = decode(&mut header_only, packet_bytes - 1);
    assert_eq!(
        result,
        Err(DecodeError::PacketTooLarge { length: packet_bytes, max: packet_bytes - 1 }),
        "over the limit by one byte, from the header alone"
    );
    let mut whole = BytesMut::from(&input[..packet_bytes]);
    assert!(
        matches!(decode(&mut whole, packet_bytes), Ok(Some(_))),
        "a packet exactly at the limit is accepted"
    );
}

/// The size of the fixed header at the front of `input`, if it is complete and well-formed.
fn header_bytes(input: &[u8]) -> Option<usize> {
    (1..=4).find(|&index| input.get(index).is_some_and(|byte| byte & 0x80 == 0)).map(|i| i + 1)
}

/// Decoding the same bytes again gives the same error (the decoder keeps no hidden state).
fn check_error_is_stable(input: &BytesMut, error: DecodeError) {
    let mut again = input.clone();
    assert_eq!(decode(&mut again, LIMIT_BYTES), Err(error));
}

/// Splits `data` into chunk sizes and a stream; decodes the valid packets at the front of the
/// stream; re-encodes them; then feeds those bytes in the chunks and expects the same packets.
pub fn check_stream(data: &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 32).min(rest.len());
    let (sizes, stream) = rest.split_at(count);
    let packets = valid_prefix(stream);
    if packets.is_empty() {
        return;
    }
    let mut bytes = BytesMut::new();
    for packet in &packets {
        encode(packet, &mut bytes);
    }
    // The tightest limit that admits every packet of the stream.
    let limit = packets.iter().map(encoded_len).max().expect("not empty");
    let mut chunk_sizes = sizes.iter().map(|&size| usize::from(size) + 1).cycle();
    let mut input = BytesMut::new();
    let mut decoded = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let size = chunk_sizes.next().unwrap_or(bytes.len()).min(bytes.len() - offset);
        input.extend_from_slice(&bytes[offset..offset + size]);
        offset += size;
        drain(&mut input, limit, &mut decoded);
    }
    assert!(input.is_empty(), "{} bytes left undecoded", input.len());
    assert_eq!(decoded, packets, "chunked decoding changed the packets");
}

/// Every packet decodable from `input` now; an incomplete one consumes nothing.
fn drain(input: &mut BytesMut, limit: usize, decoded: &mut Vec<Packet>) {
    loop {
        let before = input.len();
        match decode(input, limit) {
            Ok(Some(packet)) => decoded.push(packet),
            Ok(None) => {
                assert_eq!(input.len(), before, "an incomplete packet consumed bytes");
                return;
            }
            Err(error) => panic!("a valid stream was refused: {error}"),
        }
    }
}

/// The packets at the front of `stream`, up to the first incomplete or refused one.
fn valid_prefix(stream: &[u8]) -> Vec<Packet> {
    let mut buf = BytesMut::from(stream);
    let mut packets = Vec::new();
    while let Ok(Some(packet)) = decode(&mut buf, LIMIT_BYTES) {
        packets.push(packet);
    }
    packets
}
