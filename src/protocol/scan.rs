//! Byte scans for the decoder's hot path: is a string plain ASCII without U+0000 (and, for
//! topic names, without wildcards)? Each answers in one pass, eight bytes at a time, so the
//! common case of an ASCII topic costs about a tenth of validating UTF-8, searching for NUL and
//! searching for wildcards one after the other.
//!
//! Invariant: a `true` answer is exact (every byte is below 0x80 and none is one of the
//! excluded bytes). A `false` answer only sends the caller to the full, slower checks, which
//! then find the precise error or accept multi-byte UTF-8.

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Non-zero exactly when some byte of `word` is zero.
const fn zero_byte_bits(word: u64) -> u64 {
    word.wrapping_sub(LOW_BITS) & !word & HIGH_BITS
}

/// Non-zero exactly when some byte of `word` equals `byte`.
const fn equal_byte_bits(word: u64, byte: u8) -> u64 {
    zero_byte_bits(word ^ (LOW_BITS * byte as u64))
}

/// Whether every byte of `bytes` is ASCII, not NUL, and not one of `excluded`.
fn is_plain_ascii<const N: usize>(bytes: &[u8], excluded: [u8; N]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    let mut found = 0u64;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        found |= (word & HIGH_BITS) | zero_byte_bits(word);
        for byte in excluded {
            found |= equal_byte_bits(word, byte);
        }
    }
    found == 0
        && chunks.remainder().iter().all(|&b| b != 0 && b.is_ascii() && !excluded.contains(&b))
}

/// Whether `bytes` are ASCII without NUL: then they are a valid MQTT string
/// [MQTT-1.5.3-1] [MQTT-1.5.3-2].
pub fn is_ascii_without_nul(bytes: &[u8]) -> bool {
    is_plain_ascii(bytes, [])
}

/// Whether `bytes` are ASCII without NUL, `+` or `#`: then, if not empty, they are a valid
/// topic name [MQTT-3.3.2-2].
pub fn is_ascii_topic_name(bytes: &[u8]) -> bool {
    is_plain_ascii(bytes, [b'+', b'#'])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn slow_ascii_without_nul(bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| b != 0 && b.is_ascii())
    }

    fn slow_ascii_topic_name(bytes: &[u8]) -> bool {
        slow_ascii_without_nul(bytes) && !bytes.iter().any(|&b| b == b'+' || b == b'#')
    }

    #[test]
    fn each_excluded_byte_is_found_at_every_position() {
        for length in 0..20 {
            let plain = vec![b'a'; length];
            assert!(is_ascii_topic_name(&plain));
            for at in 0..length {
                for bad in [0u8, b'+', b'#', 0x80, 0xFF, 0xC3] {
                    let mut bytes = plain.clone();
                    bytes[at] = bad;
                    assert!(!is_ascii_topic_name(&bytes), "{bad:#x} at {at} of {length}");
                    let wildcard = bad == b'+' || bad == b'#';
                    assert_eq!(is_ascii_without_nul(&bytes), wildcard, "{bad:#x} at {at}");
                }
            }
        }
    }

    proptest! {
        /// The word-at-a-time scans agree with byte-by-byte ones on arbitrary input, biased
        /// towards the bytes that matter.
        #[test]
        fn scans_agree_with_the_byte_by_byte_definition(
            bytes in proptest::collection::vec(
                prop_oneof![
                    4 => 0x20u8..0x7F,
                    1 => Just(0u8),
                    1 => Just(b'+'),
                    1 => Just(b'#'),
                    1 => any::<u8>(),
                ],
                0..40,
            )
        ) {
            prop_assert_eq!(is_ascii_without_nul(&bytes), slow_ascii_without_nul(&bytes));
            prop_assert_eq!(is_ascii_topic_name(&bytes), slow_ascii_topic_name(&bytes));
        }
    }
}
