//! Deterministic tests of the broker core, by concern, through the scripted-client harness.
//! Each test of an MQTT rule cites its normative statement id.

mod harness;

mod admin;
mod auth;
mod cluster;
mod conformance;
mod connect;
mod durable;
mod flow;
mod interest;
mod keepalive;
mod layout;
mod publish;
mod qos;
mod retain_confirm;
mod retained;
mod session;
mod subscribe;
mod sys;
mod will;
