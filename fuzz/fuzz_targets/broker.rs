//! Arbitrary event sequences into one to three brokers, checked against the driver's
//! invariants (see `ringmq_fuzz::driver`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq_fuzz::driver::{Driver, Input};

fuzz_target!(|input: Input| {
    Driver::run(&input);
});
