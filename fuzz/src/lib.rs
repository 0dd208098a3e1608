//! The checks behind ringmq's fuzz targets, in a library so that `cargo test` in this crate
//! (and the targets' corpus replays) run the same code as the fuzzer.
//!
//! - [`codec`]: arbitrary bytes and arbitrarily chunked streams through `protocol::decode`.
//! - [`driver`]: arbitrary event sequences into one to three `broker::Broker`s.
//! - [`seeds`]: a sample of every packet type, encoded, to seed the corpora.
//! - [`sim`]: the simulation harness of `tests/sim`, its choices made by the fuzzer.

pub mod codec;
pub mod driver;
pub mod seeds;
pub mod sim;
