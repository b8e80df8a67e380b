//! Connection, node and request ids.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;

/// A connection id: unique across the cluster and unguessable, because the management API and
/// `send` address connections by it. 128 random bits from a CSPRNG, base64url (22 characters).
///
/// Cheap to clone (an `Arc<str>`), since it is copied into every message a connection publishes.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct ConnectionId(Arc<str>);

impl std::hash::Hash for ConnectionId {
    /// Hashes the text, consistent with `eq` (equal ids have equal text).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl PartialEq for ConnectionId {
    /// Fan-out compares every member with the excluded publisher: the same `Arc`, or random
    /// ids that differ in their first 8 bytes, settle it without a `memcmp` call.
    fn eq(&self, other: &Self) -> bool {
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.first_chunk::<8>() == b.first_chunk::<8>() && a == b
    }
}

impl ConnectionId {
    /// A fresh random id.
    pub fn random() -> Self {
        let bits: u128 = rand::random();
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bits.to_le_bytes());
        ConnectionId(text.into())
    }

    /// Wraps an id received from a client, a URL or another node. Ids are opaque: any string is
    /// accepted, and unknown ones simply match no connection.
    pub fn from_string(s: impl Into<Arc<str>>) -> Self {
        ConnectionId(s.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.0)
    }
}

impl std::borrow::Borrow<str> for ConnectionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A node id (`cluster.node_id`, or hostname plus a random suffix).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Wraps a configured or received node id.
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        NodeId(s.into())
    }

    /// `hostname-xxxxxx`: readable in logs, and unique even when pods share a hostname pattern.
    pub fn generate(hostname: &str) -> Self {
        let suffix: u32 = rand::random();
        NodeId(format!("{hostname}-{:06x}", suffix & 0xff_ffff).into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// The optional `id` a client puts on a frame; echoed verbatim in the `ack` or `error`.
/// Clients use strings or integers, so both are kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    /// An integer id.
    Int(i64),
    /// A string id.
    Str(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_long_and_distinct() {
        let a = ConnectionId::random();
        let b = ConnectionId::random();
        assert_eq!(a.as_str().len(), 22);
        assert_ne!(a, b);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn node_ids_carry_the_hostname() {
        let n = NodeId::generate("pod-7");
        assert!(n.as_str().starts_with("pod-7-"));
        assert_eq!(n.as_str().len(), "pod-7-".len() + 6);
    }
}
