//! The in-process bus: every node attached to one [`LocalHub`] is one cluster.
//!
//! In embedded mode a node is alone on its hub, so publishing costs one map lookup. Several
//! routers on one hub behave like nodes on one Redis, which lets the contract tests run the
//! same cluster semantics on both buses. Delivery is synchronous, in the publisher's call, so
//! per-publisher order holds trivially.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;
use protocol::{ConnectionId, Envelope, NodeId, RoomName};

use super::{BoxFuture, Bus, BusSink};
use crate::error::BusError;
use crate::views::{ConnectionView, NodeView, RoomPresence};

/// The shared state of one in-process cluster.
#[derive(Clone, Default)]
pub struct LocalHub {
    nodes: Arc<RwLock<HashMap<NodeId, Arc<dyn BusSink>>>>,
    interest: Arc<RwLock<HashMap<RoomName, HashSet<NodeId>>>>,
}

impl LocalHub {
    /// A new, empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus handle for `node` on this hub.
    pub fn bus(&self, node: NodeId) -> LocalBus {
        LocalBus {
            hub: self.clone(),
            node,
        }
    }

    fn others(&self, me: &NodeId) -> Vec<(NodeId, Arc<dyn BusSink>)> {
        self.nodes
            .read()
            .iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect()
    }
}

/// One node's handle on a [`LocalHub`].
pub struct LocalBus {
    hub: LocalHub,
    node: NodeId,
}

impl LocalBus {
    /// A bus for a node alone in its cluster (embedded mode).
    pub fn standalone(node: NodeId) -> Self {
        LocalHub::new().bus(node)
    }
}

impl Bus for LocalBus {
    fn attach(&self, sink: Arc<dyn BusSink>) {
        self.hub.nodes.write().insert(self.node.clone(), sink);
    }

    fn interest_changed(&self, room: &RoomName) {
        let Some(sink) = self.hub.nodes.read().get(&self.node).cloned() else {
            return;
        };
        // Read the room table under the interest lock: whichever call takes the lock last
        // reads a table that holds every change made before any of these calls, so the
        // interest ends right whatever order racing joins and leaves arrive in.
        let mut interest = self.hub.interest.write();
        if sink.has_members(room) {
            interest
                .entry(room.clone())
                .or_default()
                .insert(self.node.clone());
        } else if let Some(nodes) = interest.get_mut(room) {
            nodes.remove(&self.node);
            if nodes.is_empty() {
                interest.remove(room);
            }
        }
    }

    fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let protocol::EnvelopeBody::Room { room, .. } = &envelope.body else {
            return Ok(());
        };
        // Collect the targets first: delivering under the interest lock would block joins.
        let targets: Vec<Arc<dyn BusSink>> = {
            let interest = self.hub.interest.read();
            let Some(nodes) = interest.get(room) else {
                return Ok(());
            };
            let all = self.hub.nodes.read();
            nodes
                .iter()
                .filter(|n| **n != self.node)
                .filter_map(|n| all.get(n).cloned())
                .collect()
        };
        for sink in targets {
            sink.deliver(envelope.clone());
        }
        Ok(())
    }

    fn connection_opened<'a>(&'a self, _id: &'a ConnectionId) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn connection_closed(&self, _id: &ConnectionId) {}

    fn route_to_connection<'a>(
        &'a self,
        to: &'a ConnectionId,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<bool, BusError>> {
        Box::pin(async move {
            for (_, sink) in self.hub.others(&self.node) {
                if sink.connection_view(to).is_some() {
                    sink.deliver(envelope);
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    fn remote_connection<'a>(
        &'a self,
        id: &'a ConnectionId,
    ) -> BoxFuture<'a, Result<Option<ConnectionView>, BusError>> {
        Box::pin(async move {
            Ok(self
                .hub
                .others(&self.node)
                .into_iter()
                .find_map(|(_, sink)| sink.connection_view(id)))
        })
    }

    fn remote_room<'a>(
        &'a self,
        room: &'a RoomName,
        with_ids: bool,
    ) -> BoxFuture<'a, Result<RoomPresence, BusError>> {
        Box::pin(async move {
            let mut presence = RoomPresence::default();
            for (_, sink) in self.hub.others(&self.node) {
                let ids = sink.room_members(room);
                presence.count += ids.len();
                if with_ids {
                    presence.ids.extend(ids);
                }
            }
            Ok(presence)
        })
    }

    fn remote_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeView>, BusError>> {
        Box::pin(async move {
            Ok(self
                .hub
                .others(&self.node)
                .into_iter()
                .map(|(_, sink)| sink.node_view())
                .collect())
        })
    }

    fn is_up(&self) -> bool {
        true
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.hub.nodes.write().remove(&self.node);
            let mut interest = self.hub.interest.write();
            interest.retain(|_, nodes| {
                nodes.remove(&self.node);
                !nodes.is_empty()
            });
        })
    }
}
