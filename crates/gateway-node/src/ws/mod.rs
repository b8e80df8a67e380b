//! Client WebSocket connections: the handshake, the session loop, writing, and limits.

pub mod handshake;
pub mod limits;
pub mod outbound;
pub mod session;
