//! tenantwall: a MongoDB wire-protocol proxy that enforces multi-tenant isolation.
//!
//! Request path, one module per stage:
//! [`server`] accepts connections, completes TLS and resolves the tenant the listener, SNI name and client
//! certificate claim → [`codec`] reads whole frames (size-checked before buffering) and hands them to the sans-IO
//! `tenantwall-protocol` crate → [`handshake`] answers `hello`/`isMaster` locally as a mongos, and [`sasl`] (over
//! [`auth`]) authenticates SCRAM users → [`command`] classifies the command into a typed enum →
//! [`engine::decide`] decides (a pure function over the compiled [`policy`]) and [`engine`] rewrites the command
//! per namespace rule → [`session`] virtualises lsids and checks cursor ownership → [`backend`] relays to the
//! tenant's backend → [`engine::reply`] maps names back and withholds other tenants' values → [`connection`] maps ids
//! back and answers in the client's framing and compression. [`explain`] runs the same path without sockets.
//! [`config`] is the policy file format; [`tls`] loads certificates; [`error`] is the one error type that turns
//! into MongoDB's `{ok: 0, errmsg, code, codeName}`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod auth;
pub mod backend;
pub mod codec;
pub mod command;
pub mod config;
pub mod connection;
pub mod engine;
pub mod error;
pub mod explain;
pub mod gate;
pub mod handshake;
pub mod lifecycle;
pub mod names;
pub mod policy;
pub mod pool;
pub mod ratelimit;
pub mod sasl;
pub mod server;
pub mod session;
pub mod stats;
pub mod timer;
pub mod tls;
pub mod workers;

pub use policy::{Policy, Tenant};
pub use server::{Reloader, Server, ServerHandle};
