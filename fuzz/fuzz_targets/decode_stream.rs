//! A valid packet stream fed in arbitrary chunks decodes to the same packets.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq_fuzz::codec::check_stream(data));
