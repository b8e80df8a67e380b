//! Black-box test harness: real `gateway-node` processes on ephemeral ports, real WebSocket
//! clients, real HTTP.
//!
//! The node binary is the one `cargo build -p gateway-node` produced (`scripts/test` builds it
//! first); a binary older than the sources is refused, so a stale build never passes for the
//! code under test. `GATEWAY_NODE_BIN` overrides the path.
//!
//! # Layout
//! - `node`: the node process, its listeners, logs, metrics, signals, and the CLI.
//! - `client`: WebSocket clients and what they read.
//! - `redis`: Redis topologies (standalone, password, TLS, Cluster, Sentinel).
//! - `certs`: a test CA and server certificates.
//! - `recorder`: an HTTP server that records requests (backends, an OTLP collector).
//! - `upstream`: WebSocket upstreams for the reverse proxy (echo, subprotocol, silent, never
//!   reading, flooding) that record what reaches them.

use std::time::Duration;

mod certs;
mod client;
mod node;
mod recorder;
mod redis;
mod upstream;

pub use certs::*;
pub use client::*;
pub use node::*;
pub use recorder::*;
pub use redis::*;
pub use upstream::*;

/// How long a test waits for any one expected thing before failing.
pub const WAIT: Duration = Duration::from_secs(10);
