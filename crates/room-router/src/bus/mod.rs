//! The cluster bus: how a node reaches the rooms and connections of other nodes.
//!
//! # Guarantees (both implementations)
//! - **Delivery** between nodes is at most once: a message published while the bus is down is
//!   delivered to local members only and lost for other nodes (SPEC section 7).
//! - **Order**: messages of one publisher to one room reach every node in the order published.
//! - **Echo**: a node delivers its own publishes locally at once and ignores their echo, so
//!   local members get each message once; the bus never hands a node its own room envelope,
//!   except in retained rooms, whose messages every node, the publisher's included, gets from
//!   the bus in offset order ([`Bus::publish_retained`]).
//! - **Interest**: a node receives only the rooms it announced with [`Bus::subscribe`].
//! - **Bounded**: no call blocks on the network and every internal queue is bounded; when the
//!   bus cannot keep up it drops and says so ([`BusError::Overloaded`]).
//!
//! Implementations: [`local::LocalBus`] (in-process, for embedded mode and for contract tests
//! of several nodes in one process) and [`redis::RedisBus`] (Redis pub/sub, many processes).

pub mod local;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use protocol::{ConnectionId, Envelope, RoomName};

use crate::error::BusError;
use crate::history::{HistoryPage, Position, Retention};
use crate::views::{ConnectionView, NodeView, RoomPresence};

/// Counters of what a bus dropped since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Envelopes from other nodes that could not be decoded (dropped, logged once per interval).
    pub malformed: u64,
    /// Envelopes lost on the way: for other nodes, not sent because the bus was down or its
    /// queue full; from other nodes, not read in time (the reader fell behind).
    pub dropped: u64,
}

/// A boxed future, so that `Bus` can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A node's side of the bus: what the bus calls when something arrives for this node.
pub trait BusSink: Send + Sync {
    /// An envelope for this node: a room message for its local members, a direct message or
    /// a disconnect for one of its connections.
    fn deliver(&self, envelope: Envelope);
    /// A local connection's view, for `GET /@connections/{id}` asked on another node.
    fn connection_view(&self, id: &ConnectionId) -> Option<ConnectionView>;
    /// Local members of a room.
    fn room_members(&self, room: &RoomName) -> Vec<ConnectionId>;
    /// Whether the room has local members now: the state a bus's subscription follows.
    fn has_members(&self, room: &RoomName) -> bool;
    /// This node's counts, for `GET /cluster`.
    fn node_view(&self) -> NodeView;
    /// Every local connection id and room, for re-registration after a reconnect.
    fn local_connections(&self) -> Vec<ConnectionId>;
    /// Every room with local members, for rewriting presence after a reconnect.
    fn local_rooms(&self) -> Vec<RoomName>;
}

/// The transport between nodes.
pub trait Bus: Send + Sync + 'static {
    /// Connects the bus to this node's delivery. Called once, before any other method.
    fn attach(&self, sink: Arc<dyn BusSink>);

    /// The room's local membership went from empty to not or back (a first member joined, a
    /// last one left). The bus makes its subscription follow [`BusSink::has_members`] as read
    /// *after* this call, never the order such calls arrive in: a leave that empties a room
    /// and a join that re-creates it may reach the bus in either order, and the node must
    /// still end up receiving a room it has members in. Implementations batch subscription
    /// changes; the call itself never waits on the network.
    fn interest_changed(&self, room: &RoomName);

    /// Sends a room envelope to every other node with members in the room.
    fn publish(&self, envelope: Envelope) -> Result<(), BusError>;

    /// Publishes into a retained room (SPEC section 7): gives the envelope the room's next
    /// offset, appends it to the room's history and delivers it to every node with members,
    /// **this one included**, in offset order, as one step (one Redis round trip), so two
    /// nodes publishing at once never share or reorder an offset. The envelope is queued
    /// before this returns, so one caller's publishes keep their order; the future resolves
    /// with the offset given. An error means the history could not be reached (Redis down):
    /// nothing was delivered, and the caller delivers locally without an offset.
    fn publish_retained(
        &self,
        envelope: Envelope,
        retention: Retention,
    ) -> BoxFuture<'static, Result<Position, BusError>>;

    /// What `room` retains after `since` in `epoch` (`None`: the room's current one), and its
    /// latest position.
    fn history<'a>(
        &'a self,
        room: &'a RoomName,
        since: u64,
        epoch: Option<&'a str>,
        retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BusError>>;

    /// Resolves once this node receives `room`'s messages, the room having local members
    /// (its subscription is in place): a recovery reads history only after that, so that
    /// every later message reaches it live.
    fn receiving<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<(), BusError>>;

    /// A connection opened here: record that this node holds it (affinity). Resolves once the
    /// record is written (or the bus is down), so a welcome sent after it is reachable.
    fn connection_opened<'a>(&'a self, id: &'a ConnectionId) -> BoxFuture<'a, ()>;

    /// A connection closed here: forget its affinity.
    fn connection_closed(&self, id: &ConnectionId);

    /// Delivers a direct or disconnect envelope to whichever other node holds `to`.
    /// `Ok(false)`: no node holds it. The envelope is on its way before this returns (queued
    /// in order behind the caller's earlier ones where the bus pipelines), so one caller's
    /// sends keep their order however their answers are awaited.
    fn route_to_connection(
        &self,
        to: &ConnectionId,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<bool, BusError>>;

    /// A connection held by another node.
    fn remote_connection<'a>(
        &'a self,
        id: &'a ConnectionId,
    ) -> BoxFuture<'a, Result<Option<ConnectionView>, BusError>>;

    /// A local connection joined (`true`) or left a room: presence that other nodes read.
    /// Never waits on the network (implementations batch the writes).
    fn membership_changed(&self, room: &RoomName, conn: &ConnectionId, joined: bool) {
        let _ = (room, conn, joined);
    }

    /// Members of a room on other nodes.
    fn remote_room<'a>(
        &'a self,
        room: &'a RoomName,
        with_ids: bool,
    ) -> BoxFuture<'a, Result<RoomPresence, BusError>>;

    /// Other live nodes.
    fn remote_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeView>, BusError>>;

    /// Whether the bus is connected (`wsgate_redis_up`).
    fn is_up(&self) -> bool;

    /// What the bus lost and why, for the node's metrics: a bus that drops must say so.
    fn stats(&self) -> BusStats {
        BusStats::default()
    }

    /// Leaves the cluster: removes this node's registration and affinities (end of drain).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
