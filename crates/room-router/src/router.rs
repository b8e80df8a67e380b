//! The façade sessions and the management API call: registration, membership, publishing,
//! direct messages and cluster-wide views, over local state plus the bus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use protocol::frame::PresenceEvent;
use protocol::room::RoomPattern;
use protocol::{
    CloseCode, ConnectionId, Envelope, EnvelopeBody, NodeId, Payload, RoomName, ServerFrame,
};

use crate::bus::{BoxFuture, Bus, BusSink};
use crate::error::{BusError, RouterError, SendError};
use crate::history::{HistoryPage, Retention, RetentionPolicy};
use crate::outbound::{Deliveries, Framer, PushError, Pushed};
use crate::registry::{ConnHandle, Registry, SessionKind};
use crate::rooms::{Encodings, RecoveryError, Rooms};
use crate::views::{ConnectionView, NodeView, RoomPresence};

/// Limits the router enforces.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// `limits.rooms_per_connection`.
    pub rooms_per_connection: usize,
    /// `limits.max_message_bytes`: no delivery is encoded larger than this.
    pub max_message_bytes: usize,
    /// Wraps each encoding of a message for the socket, once per broadcast.
    pub framer: Framer,
    /// Counts deliveries (metrics), once per fan-out.
    pub deliveries: Arc<dyn Deliveries>,
    /// Which rooms keep history (`[[history]]`).
    pub history: RetentionPolicy,
    /// Rooms whose joins and leaves are announced to their other members (`[[presence]]`
    /// with `events = true`).
    pub presence_events: Vec<RoomPattern>,
    /// Told of every room message that arrives with a trace context (traces on), so the
    /// node can record its delivery in the publisher's trace.
    pub traces: Option<Arc<dyn DeliveryTrace>>,
}

/// What the node does with a traced room message it delivered: room-router knows W3C trace
/// context only as the envelope's `traceparent` string; the node turns it into a span.
pub trait DeliveryTrace: Send + Sync + std::fmt::Debug {
    /// `room`'s message, published in the trace `traceparent`, reached `members` local members.
    fn delivered(&self, room: &RoomName, traceparent: &str, members: usize);
}

/// What a publish returns to its caller.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishReceipt {
    /// Offset in a retained room; `None` elsewhere, and in a retained room whose history
    /// could not be reached (the message was then delivered to this node's members only).
    pub offset: Option<u64>,
    /// The epoch of `offset`.
    pub epoch: Option<String>,
    /// Local members the message was queued for (a retained room's reach this node through
    /// the bus: 0 there).
    pub local_deliveries: usize,
}

/// What a join in a retained room returns to its caller.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinReceipt {
    /// The room's latest offset once the member is live (0 before any message).
    pub offset: u64,
    /// Its epoch.
    pub epoch: String,
    /// With `since`: whether every message after it was replayed.
    pub recovered: Option<bool>,
}

/// Counters the node exports as metrics.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Connections closed with 1013 because their queue was full.
    pub slow_consumer_closes: AtomicU64,
}

/// This node's local state; also the bus's [`BusSink`].
struct LocalNode {
    node: NodeId,
    framer: Framer,
    traces: Option<Arc<dyn DeliveryTrace>>,
    deliveries: Arc<dyn Deliveries>,
    registry: Registry,
    rooms: Rooms,
    stats: RouterStats,
}

impl LocalNode {
    /// Fans a frame out to the room's local members but `exclude`, counting deliveries and
    /// slow consumers; a retained room's message (with its `position`) takes its turn with
    /// recoveries.
    fn fanout(
        &self,
        room: &RoomName,
        frame: &mut Encodings<'_>,
        exclude: Option<&ConnectionId>,
        since: Instant,
        position: Option<(u64, &str)>,
    ) -> usize {
        // Only a local connection can be a local member to skip.
        let exclude = exclude.and_then(|id| self.registry.get(id.as_str()));
        let out = match position {
            None => self.rooms.fanout(room, frame, exclude.as_deref(), since),
            Some(p) => self
                .rooms
                .fanout_retained(room, frame, exclude.as_deref(), since, p),
        };
        self.deliveries.delivered(out.written as u64, since);
        if out.slow_consumers > 0 {
            self.stats
                .slow_consumer_closes
                .fetch_add(out.slow_consumers as u64, Ordering::Relaxed);
        }
        out.queued
    }

    /// A presence event for the room's local members but the one it is about.
    fn announce_locally(
        &self,
        room: &RoomName,
        event: PresenceEvent,
        connection: ConnectionId,
        since: Instant,
    ) {
        let frame = ServerFrame::Presence {
            room: room.clone(),
            event,
            connection_id: connection,
        };
        let ServerFrame::Presence { connection_id, .. } = &frame else {
            unreachable!("built as a presence event above")
        };
        self.fanout(
            room,
            &mut Encodings::new(&frame, self.framer),
            Some(connection_id),
            since,
            None,
        );
    }

    fn push_direct(
        &self,
        conn: &ConnHandle,
        frame: &ServerFrame,
        max: usize,
    ) -> Result<(), RouterError> {
        let encoded = frame
            .encode(conn.encoding)
            .map_err(|e| RouterError::Unencodable(Arc::new(e)))?;
        if encoded.len() > max {
            return Err(RouterError::TooLarge {
                size: encoded.len(),
                limit: max,
            });
        }
        let wire = (self.framer)(&encoded);
        let since = Instant::now();
        match conn.outbound.push(&wire, Some(since)) {
            Ok(Pushed::Written) => self.deliveries.delivered(1, since),
            Ok(Pushed::Queued) | Err(PushError::Closed) => {}
            Err(PushError::Full) => {
                self.stats
                    .slow_consumer_closes
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn view(&self, conn: &ConnHandle) -> ConnectionView {
        ConnectionView {
            id: conn.id.clone(),
            node: self.node.clone(),
            connected_at: conn.info.connected_at,
            last_active: conn.last_active(),
            source_ip: conn.info.source_ip.to_string(),
            sub: conn.info.sub.clone(),
            rooms: conn.rooms(),
        }
    }
}

impl BusSink for LocalNode {
    fn deliver(&self, envelope: Envelope) {
        let since = Instant::now();
        let envelope_trace = envelope.traceparent;
        match envelope.body {
            EnvelopeBody::Room {
                room,
                from,
                exclude,
                data,
                offset,
                epoch,
            } => {
                let frame = ServerFrame::Message {
                    room: room.clone(),
                    data,
                    from,
                    offset,
                    epoch,
                };
                let mut encodings = Encodings::new(&frame, self.framer);
                let ServerFrame::Message { offset, epoch, .. } = &frame else {
                    unreachable!("built as a message above")
                };
                let position = offset.zip(epoch.as_deref());
                let members = self.fanout(&room, &mut encodings, exclude.as_ref(), since, position);
                if let (Some(traces), Some(tp)) = (&self.traces, &envelope_trace) {
                    traces.delivered(&room, tp, members);
                }
            }
            EnvelopeBody::Presence {
                room,
                event,
                connection,
            } => self.announce_locally(&room, event, connection, since),
            EnvelopeBody::Direct { to, from, data } => {
                // A proxied session takes no wsgate frames: a send from another node to one
                // is dropped here (the sender could not tell it from a room connection).
                let conn = self.registry.get(to.as_str());
                if let Some(conn) = conn.filter(|c| c.info.kind == SessionKind::Room) {
                    let frame = ServerFrame::Direct { from, data };
                    // The sending node checked the size for both encodings already.
                    let _ = self.push_direct(&conn, &frame, usize::MAX);
                }
            }
            EnvelopeBody::Disconnect { to, code } => {
                if let Some(conn) = self.registry.get(to.as_str()) {
                    conn.outbound.close(CloseCode(code));
                }
            }
            // Queries and replies are the bus's own business.
            EnvelopeBody::Query { .. } | EnvelopeBody::Reply { .. } => {}
        }
    }

    fn connection_view(&self, id: &ConnectionId) -> Option<ConnectionView> {
        self.registry.get(id.as_str()).map(|c| self.view(&c))
    }

    fn room_members(&self, room: &RoomName) -> Vec<ConnectionId> {
        self.rooms.members(room.as_str())
    }

    fn has_members(&self, room: &RoomName) -> bool {
        self.rooms.contains(room)
    }

    fn node_view(&self) -> NodeView {
        NodeView {
            id: self.node.clone(),
            connections: self.registry.len(),
            rooms: self.rooms.len(),
            last_seen: SystemTime::now(),
        }
    }

    fn local_rooms(&self) -> Vec<RoomName> {
        self.rooms.names()
    }

    fn local_connections(&self) -> Vec<ConnectionId> {
        self.registry
            .snapshot()
            .into_iter()
            .map(|c| c.id.clone())
            .collect()
    }
}

/// A join in a retained room on its way: if it does not get to the end (an error, or the
/// session gave up), the member's recovery is forgotten and the join undone.
struct Recovery<'a> {
    router: &'a Router,
    conn: &'a Arc<ConnHandle>,
    room: &'a RoomName,
    done: bool,
}

impl Recovery<'_> {
    fn finish(
        mut self,
        result: Result<JoinReceipt, RouterError>,
    ) -> Result<JoinReceipt, RouterError> {
        self.done = result.is_ok();
        result
    }
}

impl Drop for Recovery<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.router
                .local
                .rooms
                .cancel_recovery(self.room, self.conn);
            self.router.leave(self.conn, self.room);
        }
    }
}

/// The `too_large` rule for a frame any node may deliver in either encoding.
fn check_size(encodings: &mut Encodings<'_>, limit: usize) -> Result<(), RouterError> {
    match encodings.check_size(limit) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(size)) => Err(RouterError::TooLarge { size, limit }),
        Err(e) => Err(RouterError::Unencodable(Arc::new(e))),
    }
}

/// Routes messages between this node's connections and the cluster.
pub struct Router {
    local: Arc<LocalNode>,
    bus: Arc<dyn Bus>,
    options: RouterOptions,
}

impl Router {
    /// A router for node `node`, attached to `bus`.
    pub fn new(node: NodeId, bus: Arc<dyn Bus>, options: RouterOptions) -> Arc<Router> {
        let local = Arc::new(LocalNode {
            node,
            framer: options.framer,
            traces: options.traces.clone(),
            deliveries: options.deliveries.clone(),
            registry: Registry::default(),
            rooms: Rooms::default(),
            stats: RouterStats::default(),
        });
        bus.attach(local.clone());
        Arc::new(Router {
            local,
            bus,
            options,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.local.node
    }

    /// The bus, for its health (`is_up`) and shutdown.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &RouterStats {
        &self.local.stats
    }

    /// The options in force.
    pub fn options(&self) -> &RouterOptions {
        &self.options
    }

    /// Makes a connection reachable (registry and affinity). Await it before the welcome.
    pub async fn register(&self, conn: Arc<ConnHandle>) {
        let id = conn.id.clone();
        self.local.registry.insert(conn);
        self.bus.connection_opened(&id).await;
    }

    /// Removes a connection from every room, the registry and the affinity records.
    pub fn unregister(&self, conn: &ConnHandle) {
        for room in conn.take_rooms() {
            if self.local.rooms.leave(&room, conn) {
                self.bus.interest_changed(&room);
            }
            self.bus.membership_changed(&room, &conn.id, false);
            self.announce(&room, &conn.id, PresenceEvent::Leave);
        }
        self.local.registry.remove(&conn.id);
        self.bus.connection_closed(&conn.id);
    }

    /// A local connection.
    pub fn local_connection(&self, id: &str) -> Option<Arc<ConnHandle>> {
        self.local.registry.get(id)
    }

    /// Every local connection (drain, `/sessions`).
    pub fn local_connections(&self) -> Vec<Arc<ConnHandle>> {
        self.local.registry.snapshot()
    }

    /// Number of local connections.
    pub fn connection_count(&self) -> usize {
        self.local.registry.len()
    }

    /// Number of rooms with local members.
    pub fn room_count(&self) -> usize {
        self.local.rooms.len()
    }

    /// Adds the connection to a room. Joining a room twice is a no-op.
    pub fn join(&self, conn: &Arc<ConnHandle>, room: &RoomName) -> Result<(), RouterError> {
        match conn.add_room(room, self.options.rooms_per_connection) {
            Err(()) => Err(RouterError::RoomLimit(self.options.rooms_per_connection)),
            Ok(false) => Ok(()),
            Ok(true) => {
                if self.local.rooms.join(room, conn) {
                    self.bus.interest_changed(room);
                }
                self.bus.membership_changed(room, &conn.id, true);
                self.announce(room, &conn.id, PresenceEvent::Join);
                Ok(())
            }
        }
    }

    /// Removes the connection from a room; false when it was not a member.
    pub fn leave(&self, conn: &ConnHandle, room: &RoomName) -> bool {
        if !conn.remove_room(room) {
            return false;
        }
        if self.local.rooms.leave(room, conn) {
            self.bus.interest_changed(room);
        }
        self.bus.membership_changed(room, &conn.id, false);
        self.announce(room, &conn.id, PresenceEvent::Leave);
        true
    }

    /// Tells the room's other members, on every node, that `conn` joined or left, when the
    /// room has presence events: once per event, cluster-wide (the node where it happened
    /// delivers locally and publishes it once for the others).
    fn announce(&self, room: &RoomName, conn: &ConnectionId, event: PresenceEvent) {
        if !protocol::room::any_matches(&self.options.presence_events, room.as_str()) {
            return;
        }
        self.local
            .announce_locally(room, event, conn.clone(), Instant::now());
        let _ = self.bus.publish(Envelope {
            origin: self.local.node.clone(),
            body: EnvelopeBody::Presence {
                room: room.clone(),
                event,
                connection: conn.clone(),
            },
            traceparent: None,
        });
    }

    /// Delivers `data` to every member of `room` on every node: local members at once, other
    /// nodes through the bus. `from` is the publishing connection (`None`: management API).
    pub fn publish(
        &self,
        room: &RoomName,
        data: Payload,
        from: Option<&ConnectionId>,
        exclude_self: bool,
    ) -> Result<PublishReceipt, RouterError> {
        self.publish_traced(room, data, from, exclude_self, None)
    }

    /// [`Router::publish`] in a trace: the envelope carries its W3C `traceparent` to the
    /// other nodes, whose deliveries join the trace ([`DeliveryTrace`]).
    pub fn publish_traced(
        &self,
        room: &RoomName,
        data: Payload,
        from: Option<&ConnectionId>,
        exclude_self: bool,
        trace: Option<String>,
    ) -> Result<PublishReceipt, RouterError> {
        let since = Instant::now();
        let frame = ServerFrame::Message {
            room: room.clone(),
            data,
            from: from.cloned(),
            offset: None,
            epoch: None,
        };
        let mut encodings = Encodings::new(&frame, self.options.framer);
        // Any node may hold a member of either encoding, so both must fit.
        check_size(&mut encodings, self.options.max_message_bytes)?;
        let exclude = if exclude_self { from } else { None };
        let local_deliveries = self
            .local
            .fanout(room, &mut encodings, exclude, since, None);
        let ServerFrame::Message { data, from, .. } = frame else {
            unreachable!("built as a message above")
        };
        let envelope = Envelope {
            origin: self.local.node.clone(),
            body: EnvelopeBody::Room {
                room: room.clone(),
                from,
                exclude: exclude.cloned(),
                data,
                offset: None,
                epoch: None,
            },
            traceparent: trace,
        };
        // Delivery to other nodes is at most once: a bus that cannot take the envelope drops
        // it and counts the drop itself.
        let _ = self.bus.publish(envelope);
        Ok(PublishReceipt {
            offset: None,
            epoch: None,
            local_deliveries,
        })
    }

    /// What `room` retains, if it is a retained room.
    pub fn retention(&self, room: &RoomName) -> Option<Retention> {
        self.options.history.of(room)
    }

    /// Publishes into a retained room: the message gets the room's next offset and reaches
    /// every member, here too, through the bus, in offset order. The publish is queued before
    /// this returns (one publisher's messages keep their order); the future gives the
    /// receipt. When the history cannot be reached the message is delivered to this node's
    /// members without an offset and is not retained (SPEC section 7: Redis outage).
    pub fn publish_retained(
        &self,
        room: &RoomName,
        data: Payload,
        from: Option<&ConnectionId>,
        exclude_self: bool,
        retention: Retention,
        trace: Option<String>,
    ) -> Result<BoxFuture<'static, PublishReceipt>, RouterError> {
        let frame = ServerFrame::Message {
            room: room.clone(),
            data,
            from: from.cloned(),
            // The size rule counts the position as the largest it can be.
            offset: Some(u64::MAX),
            epoch: Some("e".repeat(crate::history::EPOCH_LEN)),
        };
        check_size(
            &mut Encodings::new(&frame, self.options.framer),
            self.options.max_message_bytes,
        )?;
        let ServerFrame::Message { data, from, .. } = frame else {
            unreachable!("built as a message above")
        };
        let exclude = if exclude_self { from.clone() } else { None };
        let envelope = Envelope {
            origin: self.local.node.clone(),
            body: EnvelopeBody::Room {
                room: room.clone(),
                from,
                exclude,
                data,
                offset: None,
                epoch: None,
            },
            traceparent: trace,
        };
        let published = self.bus.publish_retained(envelope.clone(), retention);
        let local = self.local.clone();
        Ok(Box::pin(async move {
            match published.await {
                Ok(position) => PublishReceipt {
                    offset: Some(position.offset),
                    epoch: Some(position.epoch),
                    local_deliveries: 0,
                },
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "retained room's history unreachable: delivering locally without an offset");
                    let since = Instant::now();
                    let EnvelopeBody::Room {
                        room,
                        from,
                        exclude,
                        data,
                        ..
                    } = envelope.body
                    else {
                        unreachable!("built as a room envelope above")
                    };
                    let frame = ServerFrame::Message {
                        room: room.clone(),
                        data,
                        from,
                        offset: None,
                        epoch: None,
                    };
                    let local_deliveries = local.fanout(
                        &room,
                        &mut Encodings::new(&frame, local.framer),
                        exclude.as_ref(),
                        since,
                        None,
                    );
                    PublishReceipt {
                        offset: None,
                        epoch: None,
                        local_deliveries,
                    }
                }
            }
        }))
    }

    /// Joins a retained room: with `since` (and the `epoch` it belongs to), the messages
    /// retained after it are written first, then the member goes live with no gap and no
    /// duplicate, however many messages arrive meanwhile. Without `since` nothing is
    /// replayed, and the receipt's offset is where the member's messages start after.
    pub async fn join_retained(
        &self,
        conn: &Arc<ConnHandle>,
        room: &RoomName,
        retention: Retention,
        since: Option<u64>,
        epoch: Option<&str>,
    ) -> Result<JoinReceipt, RouterError> {
        match conn.add_room(room, self.options.rooms_per_connection) {
            Err(()) => return Err(RouterError::RoomLimit(self.options.rooms_per_connection)),
            Ok(false) => {
                // Already a member, live: nothing to replay, only where the room stands.
                let page = self
                    .bus
                    .history(room, u64::MAX, None, retention)
                    .await
                    .map_err(RouterError::Unavailable)?;
                return Ok(JoinReceipt {
                    offset: page.latest.offset,
                    epoch: page.latest.epoch,
                    recovered: since.map(|_| false),
                });
            }
            Ok(true) => {}
        }
        if self.local.rooms.join_recovering(room, conn) {
            self.bus.interest_changed(room);
        }
        self.bus.membership_changed(room, &conn.id, true);
        self.announce(room, &conn.id, PresenceEvent::Join);
        let recovery = Recovery {
            router: self,
            conn,
            room,
            done: false,
        };
        let result = self.recover(conn, room, retention, since, epoch).await;
        recovery.finish(result)
    }

    async fn recover(
        &self,
        conn: &Arc<ConnHandle>,
        room: &RoomName,
        retention: Retention,
        since: Option<u64>,
        epoch: Option<&str>,
    ) -> Result<JoinReceipt, RouterError> {
        self.bus
            .receiving(room)
            .await
            .map_err(RouterError::Unavailable)?;
        let page: HistoryPage = self
            .bus
            .history(room, since.unwrap_or(u64::MAX), epoch, retention)
            .await
            .map_err(RouterError::Unavailable)?;
        let same_epoch = epoch.is_none_or(|e| e == page.latest.epoch);
        let after = match since {
            None => page.latest.offset,
            Some(s) if same_epoch && s <= page.latest.offset => s,
            Some(_) => 0,
        };
        let mut replay = Vec::with_capacity(page.entries.len());
        for envelope in &page.entries {
            let EnvelopeBody::Room {
                room,
                from,
                exclude,
                data,
                offset: Some(offset),
                epoch,
            } = &envelope.body
            else {
                continue;
            };
            if exclude.as_ref() == Some(&conn.id) {
                continue;
            }
            let frame = ServerFrame::Message {
                room: room.clone(),
                data: data.clone(),
                from: from.clone(),
                offset: Some(*offset),
                epoch: epoch.clone(),
            };
            let Ok(encoded) = frame.encode(conn.encoding) else {
                continue;
            };
            replay.push((*offset, (self.options.framer)(&encoded)));
        }
        let last =
            match self
                .local
                .rooms
                .end_recovery(room, conn, replay, (after, &page.latest.epoch))
            {
                Ok(last) => last,
                Err(RecoveryError::Gone) => after,
                Err(RecoveryError::Overflow) => {
                    conn.outbound.close(CloseCode::TRY_AGAIN_LATER);
                    self.local
                        .stats
                        .slow_consumer_closes
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(RouterError::Unavailable(BusError::Overloaded));
                }
            };
        Ok(JoinReceipt {
            offset: last.max(page.latest.offset),
            recovered: since.map(|s| page.recovers(s, epoch)),
            epoch: page.latest.epoch,
        })
    }

    /// Delivers `data` as a `direct` frame to one connection, on whichever node holds it.
    pub async fn send(
        &self,
        to: &ConnectionId,
        data: Payload,
        from: Option<ConnectionId>,
    ) -> Result<(), SendError> {
        self.start_send(to, data, from).await
    }

    /// [`Router::send`], started now: a local target has it on return, and a remote one's
    /// envelope is on its way (in order behind this node's earlier sends); the future gives
    /// the outcome. A client's sends are started as they arrive and answered in order, so
    /// they do not wait for each other's round trips.
    pub fn start_send(
        &self,
        to: &ConnectionId,
        data: Payload,
        from: Option<ConnectionId>,
    ) -> BoxFuture<'static, Result<(), SendError>> {
        let done = |r: Result<(), SendError>| -> BoxFuture<'static, Result<(), SendError>> {
            Box::pin(std::future::ready(r))
        };
        let frame = ServerFrame::Direct { from, data };
        let max = self.options.max_message_bytes;
        if let Some(conn) = self.local.registry.get(to.as_str()) {
            if conn.info.kind == SessionKind::Proxy {
                return done(Err(SendError::Proxied(to.to_string())));
            }
            return done(
                self.local
                    .push_direct(&conn, &frame, max)
                    .map_err(Into::into),
            );
        }
        if let Err(e) = check_size(&mut Encodings::new(&frame, self.options.framer), max) {
            return done(Err(e.into()));
        }
        let ServerFrame::Direct { from, data } = frame else {
            unreachable!("built as a direct frame above")
        };
        let envelope = Envelope {
            origin: self.local.node.clone(),
            body: EnvelopeBody::Direct {
                to: to.clone(),
                from,
                data,
            },
            traceparent: None,
        };
        let routed = self.bus.route_to_connection(to, envelope);
        let to = to.to_string();
        Box::pin(async move {
            match routed.await? {
                true => Ok(()),
                false => Err(SendError::NotFound(to)),
            }
        })
    }

    /// Closes a connection with `code`, on whichever node holds it.
    pub async fn disconnect(&self, id: &ConnectionId, code: CloseCode) -> Result<(), SendError> {
        if let Some(conn) = self.local.registry.get(id.as_str()) {
            conn.outbound.close(code);
            return Ok(());
        }
        let envelope = Envelope {
            origin: self.local.node.clone(),
            body: EnvelopeBody::Disconnect {
                to: id.clone(),
                code: code.as_u16(),
            },
            traceparent: None,
        };
        match self.bus.route_to_connection(id, envelope).await? {
            true => Ok(()),
            false => Err(SendError::NotFound(id.to_string())),
        }
    }

    /// A connection's view, wherever it lives; `None` when no node holds it.
    pub async fn connection(&self, id: &ConnectionId) -> Result<Option<ConnectionView>, BusError> {
        if let Some(view) = self.local.connection_view(id) {
            return Ok(Some(view));
        }
        self.bus.remote_connection(id).await
    }

    /// Members of a room across the cluster; when the cluster cannot be asked, this node's,
    /// marked `partial`.
    pub async fn room(&self, room: &RoomName, with_ids: bool) -> RoomPresence {
        let mut presence = match self.bus.remote_room(room, with_ids).await {
            Ok(remote) => remote,
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "other nodes' members unknown: answering with this node's");
                RoomPresence {
                    partial: true,
                    ..RoomPresence::default()
                }
            }
        };
        let local = self.local.rooms.members(room.as_str());
        presence.count = presence.count.saturating_add(local.len());
        if with_ids {
            presence.ids.extend(local);
        }
        presence
    }

    /// Every live node, this one first.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, BusError> {
        let mut nodes = vec![self.local.node_view()];
        nodes.extend(self.bus.remote_nodes().await?);
        Ok(nodes)
    }
}
