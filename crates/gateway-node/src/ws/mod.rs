//! Client WebSocket connections: the handshake, the session loop, writing, remote sends, and
//! limits.

pub mod handshake;
pub mod limits;
pub mod outbound;
pub mod sends;
pub mod session;
pub mod tls_socket;
