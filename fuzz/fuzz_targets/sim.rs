//! The simulation harness of `tests/sim` (included by path, not copied) with the fuzzer's
//! bytes making every choice: 20 well-behaved clients on 1-4 workers with generous bounds,
//! judged by the simulation's model (integrity, QoS 2 exactly once, order, no acknowledged
//! message lost, interest-window losses included). The first byte picks the configuration's
//! seed (workers, wire, windows). Tiny bounds (SIM_FINDINGS.md #6) are not used: this target
//! looks for what is not known yet.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq_fuzz::sim::check_sim(data));
