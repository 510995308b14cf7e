//! tenantwall: a MongoDB wire-protocol proxy that enforces multi-tenant isolation.
//!
//! Request path, one module per stage:
//! [`codec`] reads whole frames (size-checked before buffering) and hands them to the sans-IO
//! `tenantwall-protocol` crate → [`handshake`] answers `hello`/`isMaster` locally as a mongos →
//! [`command`] classifies the command into a typed enum → [`gate`] decides (a pure function) →
//! [`backend`] relays to the backend and reads its replies → [`connection`] maps ids back and answers in the
//! client's framing and compression. [`server`] owns listeners and connection tasks; [`config`] the policy file;
//! [`error`] the one error type that turns into MongoDB's `{ok: 0, errmsg, code, codeName}`.
#![forbid(unsafe_code)]

pub mod backend;
pub mod codec;
pub mod command;
pub mod config;
pub mod connection;
pub mod error;
pub mod gate;
pub mod handshake;
pub mod server;
pub mod stats;

pub use config::Policy;
pub use server::{Server, ServerHandle};
