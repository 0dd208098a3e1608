//! Property tests of the codec over arbitrary valid packets ([`super::arbitrary`]) and
//! arbitrary bytes: round trips, streams cut anywhere, sizes, and no panic on any input.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::arbitrary::{any_packet, any_publish};
use super::decode::decode;
use super::encode::{encode, encoded_len, EncodedPublish, OutBuf};
use super::packet::Packet;

const LIMIT_BYTES: usize = 1 << 20;

fn encoded(packet: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, &mut out);
    out.to_vec()
}

/// Decodes every whole packet at the front of `buf`; stops at "need more bytes" or an error.
fn decode_available(buf: &mut BytesMut, out: &mut Vec<Packet>) -> Result<(), TestCaseError> {
    loop {
        match decode(buf, LIMIT_BYTES) {
            Ok(Some(packet)) => out.push(packet),
            Ok(None) => return Ok(()),
            Err(error) => {
                return Err(TestCaseError::fail(format!("valid stream refused: {error}")))
            }
        }
    }
}

/// Whatever the decoder accepts is valid: it re-encodes and decodes to the same value.
fn check_accepted_is_valid(packet: &Packet) -> Result<(), TestCaseError> {
    let mut again = BytesMut::from(&encoded(packet)[..]);
    prop_assert_eq!(decode(&mut again, usize::MAX), Ok(Some(packet.clone())));
    prop_assert!(again.is_empty());
    Ok(())
}

/// 1000 cases per property by default (about a second in all); `PROPTEST_CASES` sets more
/// for a longer search.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn every_packet_round_trips(packet in any_packet()) {
        let bytes = encoded(&packet);
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode(&mut buf, LIMIT_BYTES), Ok(Some(packet)));
        prop_assert!(buf.is_empty(), "the packet's bytes, and only those, were consumed");
    }

    #[test]
    fn encoded_len_is_the_encoded_size(packet in any_packet()) {
        prop_assert_eq!(encoded(&packet).len(), encoded_len(&packet));
    }

    /// A stream of packets, delivered in chunks cut at arbitrary places, decodes to the same
    /// sequence: the decoder never depends on how the bytes were split.
    #[test]
    fn stream_cut_anywhere_decodes_to_the_same_packets(
        packets in vec(any_packet(), 0..12),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let stream: Vec<u8> = packets.iter().flat_map(encoded).collect();
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut start = 0;
        for end in cuts {
            buf.extend_from_slice(&stream[start..end]);
            start = end;
            decode_available(&mut buf, &mut decoded)?;
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, packets);
    }

    /// Arbitrary bytes never panic. Whatever decodes is a valid packet that round-trips; a
    /// refusal or "need more bytes" is fine.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256), limit in 0usize..512) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(packet)) = decode(&mut buf, limit) {
            check_accepted_is_valid(&packet)?;
        }
    }

    /// Valid packets with a few bytes overwritten reach deeper into the decoder than random
    /// bytes do; they too never panic, and whatever decodes is valid.
    #[test]
    fn corrupted_packets_never_panic(
        packet in any_packet(),
        corruptions in vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encoded(&packet);
        for (index, value) in corruptions {
            let at = index.index(bytes.len());
            bytes[at] = value;
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(packet)) = decode(&mut buf, LIMIT_BYTES) {
            check_accepted_is_valid(&packet)?;
        }
    }

    /// Fanning a PUBLISH out through `EncodedPublish` writes the same bytes as encoding it,
    /// and so does `OutBuf::put_packet`.
    #[test]
    fn encoded_publish_and_put_packet_equal_encode(publish in any_publish()) {
        let packet = Packet::Publish(publish.clone());
        let plain = encoded(&packet);
        let fan_out = EncodedPublish::new(
            &publish.topic,
            publish.payload.clone(),
            publish.qos,
            publish.retain,
            publish.dup,
        );
        prop_assert_eq!(fan_out.len(), plain.len());
        let mut out = OutBuf::new();
        fan_out.write(publish.packet_id, &mut out);
        out.put_packet(&packet);
        let mut segments: Vec<Bytes> = Vec::new();
        prop_assert_eq!(out.take_into(&mut segments), 2 * plain.len());
        prop_assert_eq!(segments.concat(), [plain.clone(), plain].concat());
    }
}
