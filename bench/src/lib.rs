//! ringmq-bench: an MQTT 3.1.1 load generator that works against any broker, and a relay that
//! measures the machine's own ceiling for the same message pattern.
//!
//! [`client`] runs the load (io_uring worker threads, connections as direct descriptors),
//! [`stamp`] puts a (publisher, sequence, send time) stamp in every payload and checks loss and
//! order on arrival, [`relay`] is the trivial forwarder, [`report`] turns a run into numbers.

pub mod cli;
pub mod client;
pub mod plan;
pub mod relay;
pub mod report;
pub mod ring;
pub mod stamp;
pub mod sys;
pub mod tls;
