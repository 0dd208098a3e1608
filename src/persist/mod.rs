//! Persistence: each worker's write-ahead log of the state it owns, and recovery from it.
//!
//! - `record`: the on-disk record format (length, CRC-32C, kind, body); sans-IO, used by the
//!   broker to encode the changes it makes.
//! - `image`: a recovered state in plain values, what a broker is restored from.
//! - `replay`: one file's records in, a state out; stops at the first bad record (sans-IO).
//! - `store`: the files and directories, recovery at start-up and the move to a new epoch
//!   (blocking; only before the worker loops run).
//!
//! The runtime's side (io_uring writes, fsync policies, compaction) is
//! `runtime/journal.rs`; the broker's (records as state changes, held acknowledgements) is
//! `broker/durable.rs`. The design, and the guarantee, are in docs/ARCHITECTURE.md,
//! "Persistence".
//!
//! Dependencies: `record`, `image` and `replay` use only the codec's types, so the broker can
//! use them; `store` uses the broker's `home_worker` to re-home sessions.
#![forbid(unsafe_code)]

pub mod image;
pub mod record;
pub mod replay;
pub mod store;

use std::path::PathBuf;

/// When the journal is fsynced (`persistence_fsync`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Every batch of records is written and fsynced before the acknowledgements that
    /// depend on it leave: acknowledged messages survive a power loss.
    #[default]
    Batch,
    /// Batches are written before their acknowledgements leave (they survive `kill -9`);
    /// the file is fsynced every `persistence_fsync_interval_millis`.
    Interval,
    /// Batches are written before their acknowledgements leave; fsync is left to the kernel.
    Never,
}

impl FsyncPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Interval => "interval",
            Self::Never => "never",
        }
    }
}

/// The persistence settings the runtime needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval_millis: u64,
    /// A worker's journal file past this size is compacted (a new file starting with a
    /// snapshot of the state).
    pub compact_bytes: u64,
    /// Journal bytes and held acknowledgements a worker may accumulate before it stops
    /// reading from its connections until a write completes.
    pub pending_bytes_max: usize,
}

impl Default for PersistConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("ringmq-data"),
            fsync: FsyncPolicy::Batch,
            fsync_interval_millis: 1000,
            compact_bytes: 64 << 20,
            pending_bytes_max: 16 << 20,
        }
    }
}
