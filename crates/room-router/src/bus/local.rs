//! The in-process bus: every node attached to one [`LocalHub`] is one cluster.
//!
//! In embedded mode a node is alone on its hub, so publishing costs one map lookup. Several
//! routers on one hub behave like nodes on one Redis, which lets the contract tests run the
//! same cluster semantics on both buses. Delivery is synchronous, in the publisher's call, so
//! per-publisher order holds trivially. Retained rooms keep their history in a [`Ring`] per
//! room on the hub, whose lock also orders their deliveries by offset.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use protocol::{ConnectionId, Envelope, NodeId, RoomName};

use super::{BoxFuture, Bus, BusSink};
use crate::error::BusError;
use crate::history::{HistoryPage, Position, Retention, Ring};
use crate::views::{ConnectionView, NodeView, RoomPresence};

/// The shared state of one in-process cluster.
#[derive(Clone, Default)]
pub struct LocalHub {
    nodes: Arc<RwLock<HashMap<NodeId, Arc<dyn BusSink>>>>,
    interest: Arc<RwLock<HashMap<RoomName, HashSet<NodeId>>>>,
    history: Arc<DashMap<RoomName, Arc<Mutex<Ring>>>>,
    /// Retained publishes, for the occasional sweep of rooms whose position expired.
    retained_publishes: Arc<AtomicU64>,
}

/// Retained publishes between two sweeps of expired rings.
const SWEEP_EVERY: u64 = 4_096;

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

    /// Nodes with members in `room`, `me` included when `with_me`.
    fn interested(&self, room: &RoomName, me: &NodeId, with_me: bool) -> Vec<Arc<dyn BusSink>> {
        let interest = self.interest.read();
        let Some(nodes) = interest.get(room) else {
            return Vec::new();
        };
        let all = self.nodes.read();
        nodes
            .iter()
            .filter(|n| with_me || *n != me)
            .filter_map(|n| all.get(n).cloned())
            .collect()
    }

    fn ring(&self, room: &RoomName) -> Arc<Mutex<Ring>> {
        self.history
            .entry(room.clone())
            .or_default()
            .value()
            .clone()
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
        let Some(room) = envelope.room() else {
            return Ok(());
        };
        // Collect the targets first: delivering under the interest lock would block joins.
        for sink in self.hub.interested(room, &self.node, false) {
            sink.deliver(envelope.clone());
        }
        Ok(())
    }

    fn publish_retained(
        &self,
        mut envelope: Envelope,
        retention: Retention,
    ) -> BoxFuture<'static, Result<Position, BusError>> {
        let protocol::EnvelopeBody::Room { room, .. } = &envelope.body else {
            return Box::pin(std::future::ready(Err(BusError::Config(
                "only room envelopes are retained".to_owned(),
            ))));
        };
        let room = room.clone();
        let ring = self.hub.ring(&room);
        // Offsets are given and delivered under the room's lock: every node sees them in order.
        let mut ring = ring.lock();
        let position = ring.append(&mut envelope, retention);
        for sink in self.hub.interested(&room, &self.node, true) {
            sink.deliver(envelope.clone());
        }
        drop(ring);
        if self.hub.retained_publishes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == 0 {
            self.hub.history.retain(|_, r| !r.lock().expired());
        }
        Box::pin(std::future::ready(Ok(position)))
    }

    fn history<'a>(
        &'a self,
        room: &'a RoomName,
        since: u64,
        epoch: Option<&'a str>,
        retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BusError>> {
        let page = self.hub.ring(room).lock().read(since, epoch, retention);
        Box::pin(std::future::ready(Ok(page)))
    }

    fn receiving<'a>(&'a self, _room: &'a RoomName) -> BoxFuture<'a, Result<(), BusError>> {
        // Interest changes synchronously here: a room with local members is received.
        Box::pin(std::future::ready(Ok(())))
    }

    fn connection_opened<'a>(&'a self, _id: &'a ConnectionId) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn connection_closed(&self, _id: &ConnectionId) {}

    fn route_to_connection(
        &self,
        to: &ConnectionId,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<bool, BusError>> {
        let holder = self
            .hub
            .others(&self.node)
            .into_iter()
            .find(|(_, sink)| sink.connection_view(to).is_some());
        let found = match holder {
            Some((_, sink)) => {
                sink.deliver(envelope);
                true
            }
            None => false,
        };
        Box::pin(std::future::ready(Ok(found)))
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
