//! Arbitrary bytes into the decoder: no panic, and every packet decoded round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq_fuzz::codec::check_decode(data));
