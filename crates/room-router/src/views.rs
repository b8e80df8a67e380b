//! What one node tells the management API (and other nodes) about connections, rooms and
//! nodes. Shared by the router and the bus, which import these rather than each other.

use std::time::SystemTime;

use protocol::{ConnectionId, NodeId, RoomName};

/// A connection as the management API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionView {
    /// Its id.
    pub id: ConnectionId,
    /// The node holding it.
    pub node: NodeId,
    /// When it connected.
    pub connected_at: SystemTime,
    /// When it last sent a message.
    pub last_active: SystemTime,
    /// Peer address.
    pub source_ip: String,
    /// Token subject.
    pub sub: Option<String>,
    /// Rooms it is in.
    pub rooms: Vec<RoomName>,
}

/// A node as `GET /cluster` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Its id.
    pub id: NodeId,
    /// Connections it holds.
    pub connections: usize,
    /// Rooms with members on it.
    pub rooms: usize,
    /// Its last heartbeat.
    pub last_seen: SystemTime,
}

/// Members of a room.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoomPresence {
    /// How many.
    pub count: usize,
    /// Who, when asked for.
    pub ids: Vec<ConnectionId>,
    /// Only this node's members: the cluster could not be asked (SPEC section 10: a Redis
    /// outage gives the local count, marked, rather than no answer).
    pub partial: bool,
}
