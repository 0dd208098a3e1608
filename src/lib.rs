//! ringmq: an MQTT 3.1.1 broker for Linux built on io_uring.
//!
//! Dependencies point one way: [`protocol`] (the codec) ← [`broker`] (the sans-IO broker core)
//! ← `runtime` (the io_uring worker loops) ← the binary. `protocol` and `broker` do no I/O, read
//! no clock and contain no `unsafe`; they are tested deterministically. See `docs/ARCHITECTURE.md`.
//! [`auth`] (password and ACL files) sits between `protocol` and `broker`: its checks are pure,
//! and only its loader reads files (on the main thread).

pub mod auth;
pub mod broker;
pub mod config;
pub mod ops;
pub mod persist;
pub mod protocol;
pub mod runtime;
pub mod transport;
