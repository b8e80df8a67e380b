//! Client WebSocket connections: the handshake, the session loop, writing, requests waiting
//! on the cluster, and limits.

pub mod handshake;
pub mod limits;
pub mod outbound;
pub mod session;
pub mod tls_socket;
pub mod waiting;
