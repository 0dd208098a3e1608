//! The io_uring runtime: pinned worker threads, one ring each, moving bytes and time between
//! the kernel and the sans-IO broker core. PLACEHOLDER until issue 4's runtime lands.

pub mod config;
pub mod mesh;
pub mod msg_ring;
pub mod spsc;

pub use config::RuntimeConfig;

use crate::broker::BrokerConfig;

/// Runs the broker until SIGINT or SIGTERM.
pub fn run(runtime: RuntimeConfig, broker: BrokerConfig) -> anyhow::Result<()> {
    let _ = (runtime, broker);
    anyhow::bail!("the io_uring runtime is not built yet (issue 4)")
}
