//! Subscriptions follow membership whatever the interleaving (SPEC section 7: a node receives
//! the rooms it has members in).
//!
//! The race is nanoseconds wide: a leave that empties a room and a join that re-creates it,
//! each telling the bus after changing the room table. This test forces the losing order
//! through the bus seam: a bus wrapper runs the join *inside* the leave's call to the bus,
//! after the leave changed the table and before its notice reaches the real bus. A bus that
//! applied notices in arrival order ("subscribe", then "unsubscribe") would end up deaf to a
//! room with a member; one that reads the table at sync time cannot.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;
use protocol::{ConnectionId, Encoding, Envelope, NodeId, Payload, RoomName, ServerFrame};
use room_router::bus::local::{LocalBus, LocalHub};
use room_router::bus::{BoxFuture, Bus, BusSink};
use room_router::error::BusError;
use room_router::{
    ConnHandle, ConnInfo, ConnectionView, NodeView, QueueLimits, Router, RouterOptions, SessionKind,
};

type Hook = Box<dyn FnOnce() + Send>;

/// A bus that runs a hook at the start of its next `interest_changed`, then forwards
/// everything to a real bus.
struct SeamBus {
    inner: LocalBus,
    hook: Mutex<Option<Hook>>,
    notices: Mutex<u32>,
}

impl Bus for SeamBus {
    fn attach(&self, sink: Arc<dyn BusSink>) {
        self.inner.attach(sink)
    }
    fn interest_changed(&self, room: &RoomName) {
        *self.notices.lock() += 1;
        let hook = self.hook.lock().take();
        if let Some(hook) = hook {
            hook();
        }
        self.inner.interest_changed(room)
    }
    fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.inner.publish(envelope)
    }
    fn publish_retained(
        &self,
        envelope: Envelope,
        retention: room_router::Retention,
    ) -> BoxFuture<'static, Result<room_router::Position, BusError>> {
        self.inner.publish_retained(envelope, retention)
    }
    fn history<'a>(
        &'a self,
        room: &'a RoomName,
        since: u64,
        epoch: Option<&'a str>,
        retention: room_router::Retention,
    ) -> BoxFuture<'a, Result<room_router::HistoryPage, BusError>> {
        self.inner.history(room, since, epoch, retention)
    }
    fn receiving<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<(), BusError>> {
        self.inner.receiving(room)
    }
    fn connection_opened<'a>(&'a self, id: &'a ConnectionId) -> BoxFuture<'a, ()> {
        self.inner.connection_opened(id)
    }
    fn connection_closed(&self, id: &ConnectionId) {
        self.inner.connection_closed(id)
    }
    fn route_to_connection(
        &self,
        to: &ConnectionId,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<bool, BusError>> {
        self.inner.route_to_connection(to, envelope)
    }
    fn remote_connection<'a>(
        &'a self,
        id: &'a ConnectionId,
    ) -> BoxFuture<'a, Result<Option<ConnectionView>, BusError>> {
        self.inner.remote_connection(id)
    }
    fn remote_room<'a>(
        &'a self,
        room: &'a RoomName,
        with_ids: bool,
    ) -> BoxFuture<'a, Result<room_router::RoomPresence, BusError>> {
        self.inner.remote_room(room, with_ids)
    }
    fn remote_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeView>, BusError>> {
        self.inner.remote_nodes()
    }
    fn is_up(&self) -> bool {
        self.inner.is_up()
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.inner.shutdown()
    }
}

fn options() -> RouterOptions {
    RouterOptions {
        rooms_per_connection: 8,
        max_message_bytes: 1024,
        framer: room_router::unframed,
        deliveries: Arc::new(()),
        history: Default::default(),
        presence_events: Vec::new(),
        traces: None,
    }
}

fn connect(router: &Router) -> Arc<ConnHandle> {
    let conn = Arc::new(ConnHandle::new(
        ConnectionId::random(),
        Encoding::Json,
        QueueLimits::UNBOUNDED,
        ConnInfo {
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            source_port: 1,
            sub: None,
            connected_at: SystemTime::now(),
            kind: SessionKind::Room,
            path: "/ws".into(),
        },
    ));
    futures_executor(router.register(conn.clone()));
    conn
}

/// The in-process bus resolves at once; no runtime needed.
fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the in-process bus never waits"),
    }
}

fn received(conn: &ConnHandle) -> Vec<String> {
    let mut queued = std::collections::VecDeque::new();
    conn.outbound.take(&mut queued);
    queued
        .into_iter()
        .map(
            |q| match ServerFrame::decode(Encoding::Json, &q.bytes).unwrap() {
                ServerFrame::Message { data, .. } => data.to_json_value().unwrap().to_string(),
                other => panic!("unexpected {other:?}"),
            },
        )
        .collect()
}

#[test]
fn a_join_that_recreates_a_room_during_the_last_leave_keeps_the_node_subscribed() {
    let hub = LocalHub::new();
    let node_a = Router::new(
        NodeId::new("a"),
        Arc::new(hub.bus(NodeId::new("a"))),
        options(),
    );
    let seam = Arc::new(SeamBus {
        inner: hub.bus(NodeId::new("b")),
        hook: Mutex::new(None),
        notices: Mutex::new(0),
    });
    let node_b = Router::new(NodeId::new("b"), seam.clone() as Arc<dyn Bus>, options());
    let room = RoomName::parse("lobby").unwrap();

    let first = connect(&node_b);
    let second = connect(&node_b);
    node_b.join(&first, &room).unwrap();

    // The leave empties the room; before its notice reaches the bus, `second` re-creates it.
    let (router, conn, r) = (node_b.clone(), second.clone(), room.clone());
    *seam.hook.lock() = Some(Box::new(move || router.join(&conn, &r).unwrap()));
    assert!(node_b.leave(&first, &room));
    assert_eq!(
        *seam.notices.lock(),
        3,
        "join, leave, and the join inside the leave's call"
    );

    let payload = Payload::Json(Bytes::from_static(b"\"from a\""));
    node_a.publish(&room, payload, None, false).unwrap();
    assert_eq!(received(&second), vec!["\"from a\"".to_owned()]);
    assert!(received(&first).is_empty());
}
