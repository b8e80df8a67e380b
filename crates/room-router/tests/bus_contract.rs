//! Cluster semantics (SPEC section 7) as a contract, run here against the in-process bus with
//! several routers in one process. Each check takes a cluster of routers; the Redis bus is held
//! to the same semantics by the black-box tests in `tests/tests/cluster.rs` (real node
//! processes, real `redis-server`), which exercise it through the binary.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use protocol::{CloseCode, ConnectionId, Encoding, NodeId, Payload, RoomName, ServerFrame};
use room_router::bus::local::LocalHub;
use room_router::{
    ConnHandle, ConnInfo, QueueLimits, Router, RouterError, RouterOptions, SendError, SessionKind,
};

fn options() -> RouterOptions {
    RouterOptions {
        rooms_per_connection: 3,
        max_message_bytes: 256,
        framer: room_router::unframed,
        deliveries: Arc::new(()),
    }
}

/// `n` routers forming one in-process cluster.
fn local_cluster(n: usize) -> Vec<Arc<Router>> {
    let hub = LocalHub::new();
    (0..n)
        .map(|i| {
            let node = NodeId::new(format!("node-{i}"));
            Router::new(node.clone(), Arc::new(hub.bus(node)), options())
        })
        .collect()
}

fn connect(router: &Router, encoding: Encoding, cap: usize) -> Arc<ConnHandle> {
    let conn = Arc::new(ConnHandle::new(
        ConnectionId::random(),
        encoding,
        QueueLimits {
            frames: cap,
            bytes: usize::MAX,
        },
        ConnInfo {
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            source_port: 1,
            sub: Some("user".into()),
            connected_at: SystemTime::now(),
            kind: SessionKind::Room,
            path: "/ws".into(),
            upstream: None,
        },
    ));
    futures_lite_block_on(router.register(conn.clone()));
    conn
}

/// Polls a future that resolves at once (the local bus never waits), from sync or async code.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the local bus never waits"),
    }
}

fn drain(conn: &ConnHandle) -> (Vec<ServerFrame>, Option<CloseCode>) {
    let mut q = VecDeque::new();
    let close = conn.outbound.take(&mut q);
    let frames = q
        .into_iter()
        .map(|f| ServerFrame::decode(conn.encoding, &f.bytes).unwrap())
        .collect();
    (frames, close)
}

fn json(s: &'static str) -> Payload {
    Payload::Json(Bytes::from_static(s.as_bytes()))
}

fn room(s: &str) -> RoomName {
    RoomName::parse(s).unwrap()
}

fn data_of(frames: &[ServerFrame]) -> Vec<serde_json::Value> {
    frames
        .iter()
        .map(|f| match f {
            ServerFrame::Message { data, .. } | ServerFrame::Direct { data, .. } => {
                data.to_json_value().unwrap()
            }
            other => panic!("unexpected frame {other:?}"),
        })
        .collect()
}

fn cross_node_publish_reaches_every_member_once_in_order(cluster: Vec<Arc<Router>>) {
    let r = room("chat:1");
    let a1 = connect(&cluster[0], Encoding::Json, 64);
    let b1 = connect(&cluster[1], Encoding::MsgPack, 64);
    let b2 = connect(&cluster[1], Encoding::Json, 64);
    let outsider = connect(&cluster[1], Encoding::Json, 64);
    for (node, c) in [(0, &a1), (1, &b1), (1, &b2)] {
        cluster[node].join(c, &r).unwrap();
    }
    for i in 0..5 {
        let data = Payload::from_json_value(&serde_json::json!({ "n": i }));
        cluster[0].publish(&r, data, Some(&a1.id), true).unwrap();
    }
    let expected: Vec<_> = (0..5).map(|i| serde_json::json!({ "n": i })).collect();
    for member in [&b1, &b2] {
        let (frames, _) = drain(member);
        assert_eq!(data_of(&frames), expected);
        assert!(matches!(&frames[0], ServerFrame::Message { from: Some(f), .. } if *f == a1.id));
    }
    assert!(drain(&a1).0.is_empty(), "exclude_self");
    assert!(drain(&outsider).0.is_empty(), "non-members get nothing");
}

fn leave_and_close_stop_delivery(cluster: Vec<Arc<Router>>) {
    let r = room("r");
    let a = connect(&cluster[0], Encoding::Json, 64);
    let b = connect(&cluster[1], Encoding::Json, 64);
    cluster[0].join(&a, &r).unwrap();
    cluster[1].join(&b, &r).unwrap();
    assert!(cluster[1].leave(&b, &r));
    assert!(!cluster[1].leave(&b, &r));
    cluster[0].publish(&r, json("1"), None, false).unwrap();
    assert!(drain(&b).0.is_empty());
    assert_eq!(drain(&a).0.len(), 1);
    cluster[0].unregister(&a);
    assert_eq!(cluster[0].room_count(), 0);
    assert_eq!(cluster[0].connection_count(), 0);
}

fn leaves_remove_exactly_the_member_that_left(cluster: Vec<Arc<Router>>) {
    let r = room("big");
    let members: Vec<_> = (0..50)
        .map(|_| connect(&cluster[0], Encoding::Json, 64))
        .collect();
    for m in &members {
        cluster[0].join(m, &r).unwrap();
    }
    // Every third leaves, in an order unrelated to the join order.
    let leaving: Vec<_> = (0..50).rev().filter(|i| i % 3 == 0).collect();
    for &i in &leaving {
        assert!(cluster[0].leave(&members[i], &r));
    }
    let presence = futures_lite_block_on(cluster[0].room(&r, true)).unwrap();
    assert_eq!(presence.count, 50 - leaving.len());
    assert!(leaving
        .iter()
        .all(|&i| !presence.ids.contains(&members[i].id)));
    cluster[0].publish(&r, json("1"), None, false).unwrap();
    for (i, m) in members.iter().enumerate() {
        let expected = usize::from(i % 3 != 0);
        assert_eq!(drain(m).0.len(), expected, "member {i}");
    }
    for (i, m) in members.iter().enumerate() {
        assert_eq!(cluster[0].leave(m, &r), i % 3 != 0, "member {i}");
    }
    assert_eq!(cluster[0].room_count(), 0);
}

fn send_and_disconnect_reach_other_nodes(cluster: Vec<Arc<Router>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = connect(&cluster[0], Encoding::Json, 64);
        let b = connect(&cluster[1], Encoding::MsgPack, 64);
        cluster[0]
            .send(&b.id, json(r#"{"hi":1}"#), Some(a.id.clone()))
            .await
            .unwrap();
        let (frames, _) = drain(&b);
        assert!(matches!(&frames[..], [ServerFrame::Direct { from: Some(f), .. }] if *f == a.id));
        let ghost = ConnectionId::random();
        assert!(matches!(
            cluster[0].send(&ghost, json("1"), None).await,
            Err(SendError::NotFound(_))
        ));
        assert!(matches!(
            cluster[0].disconnect(&ghost, CloseCode::DISCONNECTED).await,
            Err(SendError::NotFound(_))
        ));
        cluster[0]
            .disconnect(&b.id, CloseCode::DISCONNECTED)
            .await
            .unwrap();
        assert_eq!(drain(&b).1, Some(CloseCode::DISCONNECTED));
    });
}

fn views_span_the_cluster(cluster: Vec<Arc<Router>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = room("lobby");
        let a = connect(&cluster[0], Encoding::Json, 64);
        let b = connect(&cluster[1], Encoding::Json, 64);
        cluster[0].join(&a, &r).unwrap();
        cluster[1].join(&b, &r).unwrap();
        let p = cluster[0].room(&r, true).await.unwrap();
        assert_eq!(p.count, 2);
        assert_eq!(p.ids.len(), 2);
        let v = cluster[0].connection(&b.id).await.unwrap().unwrap();
        assert_eq!(v.node, *cluster[1].node_id());
        assert_eq!(v.rooms, vec![r.clone()]);
        assert_eq!(v.sub.as_deref(), Some("user"));
        let nodes = cluster[0].nodes().await.unwrap();
        assert_eq!(nodes.len(), cluster.len());
        assert_eq!(nodes.iter().map(|n| n.connections).sum::<usize>(), 2);
    });
}

fn limits_hold(cluster: Vec<Arc<Router>>) {
    let a = connect(&cluster[0], Encoding::Json, 2);
    for i in 0..3 {
        cluster[0].join(&a, &room(&format!("r{i}"))).unwrap();
    }
    cluster[0].join(&a, &room("r0")).unwrap();
    assert!(matches!(
        cluster[0].join(&a, &room("r3")),
        Err(RouterError::RoomLimit(3))
    ));
    let big = Payload::Json(Bytes::from(format!("\"{}\"", "x".repeat(300))));
    assert!(matches!(
        cluster[0].publish(&room("r0"), big, None, false),
        Err(RouterError::TooLarge { .. })
    ));
    // Queue of 2: the third delivery makes `a` a slow consumer.
    for _ in 0..3 {
        cluster[0]
            .publish(&room("r0"), json("1"), None, false)
            .unwrap();
    }
    assert_eq!(drain(&a).1, Some(CloseCode::TRY_AGAIN_LATER));
    assert_eq!(
        cluster[0]
            .stats()
            .slow_consumer_closes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn local_bus_cross_node_publish() {
    cross_node_publish_reaches_every_member_once_in_order(local_cluster(2));
}

#[test]
fn local_bus_leave_and_close() {
    leave_and_close_stop_delivery(local_cluster(2));
}

#[test]
fn local_bus_leaves_remove_exactly_the_member_that_left() {
    leaves_remove_exactly_the_member_that_left(local_cluster(1));
}

#[test]
fn local_bus_send_and_disconnect() {
    send_and_disconnect_reach_other_nodes(local_cluster(3));
}

#[test]
fn local_bus_views() {
    views_span_the_cluster(local_cluster(2));
}

#[test]
fn local_bus_limits() {
    limits_hold(local_cluster(1));
}
