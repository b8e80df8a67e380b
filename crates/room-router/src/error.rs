//! Errors of router and bus calls. Each keeps its cause; the node maps each to one wire error
//! code and one admin status (`gateway-node`'s `error` module), and logs the causes of its own
//! failures rather than showing them to clients.

use std::sync::Arc;

use protocol::payload::PayloadError;

/// A failed join or publish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouterError {
    /// Over `limits.rooms_per_connection`.
    #[error("a connection may be in at most {0} rooms")]
    RoomLimit(usize),
    /// Encoded for some recipient, the message would exceed `limits.max_message_bytes`.
    #[error("message would be {size} bytes once encoded, over the limit of {limit}")]
    TooLarge {
        /// Largest encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The payload could not be encoded (it is not what its encoding claims).
    #[error("message cannot be encoded")]
    Unencodable(#[source] Arc<PayloadError>),
    /// A retained room's history could not be reached (Redis down), or a recovery fell too
    /// far behind: the join did not happen.
    #[error("history unavailable")]
    Unavailable(#[source] BusError),
}

/// A failed `send`, `@connections` post or disconnect.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// No node holds the connection.
    #[error("connection {0} does not exist")]
    NotFound(String),
    /// The connection is a proxied session (SPEC section 9): it speaks its upstream's
    /// protocol, so wsgate frames have no place in it.
    #[error("connection {0} is a proxied session and takes no wsgate frames")]
    Proxied(String),
    /// The message is too large or unencodable.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The cluster bus could not be asked (Redis down).
    #[error("cluster unavailable")]
    Unavailable(#[from] BusError),
}

/// The cluster bus failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// Not connected to the cluster right now.
    #[error("the cluster bus is not connected")]
    Down,
    /// The bus's bounded outgoing queue is full; the message was dropped.
    #[error("the cluster bus is overloaded")]
    Overloaded,
    /// The backend failed at something: what, and its own error.
    #[error("{doing}")]
    Backend {
        /// What the bus was doing ("connecting to redis").
        doing: &'static str,
        /// The backend's error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A setting the bus cannot use; the message names it.
    #[error("{0}")]
    Config(String),
}

/// An error and its causes, `: `-separated, for logs (a [`BusError::Backend`] shows only what
/// it was doing; its cause is what an operator needs).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
