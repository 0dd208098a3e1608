//! The `sim` target's check: the simulation harness of `tests/sim` (included by path, so the
//! fuzzer runs the very harness `cargo test --test simulation` runs) with the fuzzer's bytes
//! making every choice, judged by the simulation's model.

#[path = "../../tests/sim/mod.rs"]
mod harness;

use harness::rng::Rng;
use harness::{judge, Mode, Sim, SimConfig};

/// Clients and random steps per run: small, so the fuzzer makes thousands of runs a minute.
const CLIENTS: usize = 20;
const STEPS: u64 = 400;

/// First byte: the configuration's seed (workers, wire, windows); the rest: every choice.
/// Panics with the model's verdict when a run breaks a rule.
pub fn check_sim(data: &[u8]) {
    let Some((&first, choices)) = data.split_first() else {
        return;
    };
    let config = SimConfig::from_seed(u64::from(first), Mode::Generous, CLIENTS, STEPS);
    let report = Sim::with_rng(config, Rng::from_bytes(choices.to_vec())).run();
    if let Err(why) = judge(&report, Mode::Generous) {
        panic!("{why}");
    }
}
