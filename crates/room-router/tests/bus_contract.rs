//! Cluster semantics (SPEC section 7) as one contract, run against both buses: the in-process
//! bus (several routers in one process) and the Redis bus (several routers in one process,
//! each with its own connections to a real `redis-server` that the test starts on a free
//! port). Every check is written for a bus that delivers asynchronously: it waits for what
//! must arrive and, where something must not, gives it the time it would have taken.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use protocol::room::RoomPattern;
use protocol::{CloseCode, ConnectionId, Encoding, NodeId, Payload, RoomName, ServerFrame};
use room_router::bus::local::LocalHub;
use room_router::bus::redis::{RedisBus, RedisMode, RedisOptions};
use room_router::{
    ConnHandle, ConnInfo, QueueLimits, Retention, RetentionPolicy, Router, RouterError,
    RouterOptions, SendError, SessionKind,
};
use wsgate_tests::{cluster_name, Redis};

/// How long a check waits for something that must arrive.
const ARRIVES: Duration = Duration::from_secs(5);
/// How long a check waits before it concludes that something did not arrive.
const QUIET: Duration = Duration::from_millis(300);

fn options() -> RouterOptions {
    RouterOptions {
        rooms_per_connection: 3,
        max_message_bytes: 256,
        framer: room_router::unframed,
        deliveries: Arc::new(()),
        history: RetentionPolicy::new(vec![(vec![RoomPattern::new("kept:*")], KEEP)]),
        presence_events: Vec::new(),
        traces: None,
    }
}

/// What `kept:*` rooms retain.
const KEEP: Retention = Retention {
    size: 10,
    ttl: Duration::from_secs(60),
};

/// Routers forming one cluster, and the Redis behind them if any.
struct Cluster {
    nodes: Vec<Arc<Router>>,
    _redis: Option<Redis>,
}

impl std::ops::Index<usize> for Cluster {
    type Output = Arc<Router>;
    fn index(&self, i: usize) -> &Arc<Router> {
        &self.nodes[i]
    }
}

/// `n` routers on one in-process hub.
fn local_cluster(n: usize) -> Cluster {
    let hub = LocalHub::new();
    let nodes = (0..n)
        .map(|i| {
            let node = NodeId::new(format!("node-{i}"));
            Router::new(node.clone(), Arc::new(hub.bus(node)), options())
        })
        .collect();
    Cluster {
        nodes,
        _redis: None,
    }
}

/// A Redis bus for `node` in cluster `name` on `redis`; `fanout_workers` 0 is one per CPU.
async fn redis_bus(redis: &Redis, name: &str, node: &str, fanout_workers: usize) -> Arc<RedisBus> {
    let bus = RedisBus::connect(RedisOptions {
        url: redis.url(),
        mode: RedisMode::Standalone,
        cluster: name.to_owned(),
        node: NodeId::new(node),
        affinity_ttl: Duration::from_secs(60),
        node_heartbeat: Duration::from_millis(200),
        ca_file: None,
        fanout_workers,
    })
    .await
    .expect("connecting to the test redis-server");
    Arc::new(bus)
}

/// `n` routers, each with its own Redis bus, on a fresh `redis-server`.
async fn redis_cluster(n: usize) -> Cluster {
    let redis = Redis::start().await;
    let name = cluster_name();
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = format!("node-{i}");
        let bus = redis_bus(&redis, &name, &node, 0).await;
        nodes.push(Router::new(NodeId::new(node), bus, options()));
    }
    Cluster {
        nodes,
        _redis: Some(redis),
    }
}

async fn connect(router: &Router, encoding: Encoding, cap: usize) -> Arc<ConnHandle> {
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
        },
    ));
    router.register(conn.clone()).await;
    conn
}

/// Takes what is queued for `conn` now.
fn take(conn: &ConnHandle) -> (Vec<ServerFrame>, Option<CloseCode>) {
    let mut q = VecDeque::new();
    let close = conn.outbound.take(&mut q);
    let frames = q
        .into_iter()
        .map(|f| ServerFrame::decode(conn.encoding, &f.bytes).unwrap())
        .collect();
    (frames, close)
}

/// Waits until `n` frames have arrived for `conn` (failing after [`ARRIVES`]), and returns
/// them with whatever came in the same moment.
async fn frames(conn: &ConnHandle, n: usize) -> Vec<ServerFrame> {
    let start = Instant::now();
    let mut got = Vec::new();
    loop {
        got.extend(take(conn).0);
        if got.len() >= n {
            return got;
        }
        assert!(
            start.elapsed() < ARRIVES,
            "{n} frames expected, {} arrived: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts that nothing arrives for `conn` within [`QUIET`].
async fn nothing(conn: &ConnHandle) {
    tokio::time::sleep(QUIET).await;
    let (got, _) = take(conn);
    assert!(got.is_empty(), "expected nothing, got {got:?}");
}

/// Publishes probes from node `from` into `room` until every member got one (subscriptions
/// travel through the bus), then discards the probes.
async fn settle(cluster: &Cluster, from: usize, room: &RoomName, members: &[&Arc<ConnHandle>]) {
    let start = Instant::now();
    let mut reached = vec![false; members.len()];
    while reached.contains(&false) {
        assert!(
            start.elapsed() < ARRIVES,
            "room {room} never reached every node"
        );
        cluster[from]
            .publish(room, json("\"probe\""), None, false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (m, r) in members.iter().zip(&mut reached) {
            *r |= !take(m).0.is_empty();
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for m in members {
        take(m);
    }
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

async fn cross_node_publish_reaches_every_member_once_in_order(cluster: Cluster) {
    let r = room("chat:1");
    let a1 = connect(&cluster[0], Encoding::Json, 64).await;
    let b1 = connect(&cluster[1], Encoding::MsgPack, 64).await;
    let b2 = connect(&cluster[1], Encoding::Json, 64).await;
    let outsider = connect(&cluster[1], Encoding::Json, 64).await;
    for (node, c) in [(0, &a1), (1, &b1), (1, &b2)] {
        cluster[node].join(c, &r).unwrap();
    }
    settle(&cluster, 0, &r, &[&a1, &b1, &b2]).await;
    for i in 0..5 {
        let data = Payload::from_json_value(&serde_json::json!({ "n": i }));
        cluster[0].publish(&r, data, Some(&a1.id), true).unwrap();
    }
    let expected: Vec<_> = (0..5).map(|i| serde_json::json!({ "n": i })).collect();
    for member in [&b1, &b2] {
        let got = frames(member, 5).await;
        assert_eq!(data_of(&got), expected, "once each, in order");
        assert!(matches!(&got[0], ServerFrame::Message { from: Some(f), .. } if *f == a1.id));
    }
    nothing(&b1).await;
    assert!(take(&a1).0.is_empty(), "exclude_self");
    assert!(take(&outsider).0.is_empty(), "non-members get nothing");
}

fn offsets_of(frames: &[ServerFrame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message { offset, .. } => *offset,
            _ => None,
        })
        .collect()
}

/// Retained rooms: publishes from two nodes get unique offsets that every member, the
/// publisher's node's included, receives in order; a join with `since` replays what is
/// retained after it and recovers; the publisher's `exclude_self` holds.
async fn retained_rooms_give_offsets_and_recover(cluster: Cluster) {
    let r = room("kept:1");
    let a = connect(&cluster[0], Encoding::Json, 64).await;
    let b = connect(&cluster[1], Encoding::MsgPack, 64).await;
    for (node, c) in [(0, &a), (1, &b)] {
        let receipt = cluster[node]
            .join_retained(c, &r, KEEP, None, None)
            .await
            .unwrap();
        assert_eq!(receipt.recovered, None);
    }
    let mut acked = Vec::new();
    for i in 0..6 {
        let node = i % 2;
        let from = [&a, &b][node];
        let data = Payload::from_json_value(&serde_json::json!({ "n": i }));
        let receipt = cluster[node]
            .publish_retained(&r, data, Some(&from.id), false, KEEP, None)
            .unwrap()
            .await;
        acked.push(receipt.offset.expect("an offset"));
    }
    assert_eq!(acked, [1, 2, 3, 4, 5, 6]);
    for member in [&a, &b] {
        assert_eq!(
            offsets_of(&frames(member, 6).await),
            acked,
            "every member, in order"
        );
    }
    let receipt = cluster[0]
        .publish_retained(&r, json("7"), Some(&a.id), true, KEEP, None)
        .unwrap()
        .await;
    assert_eq!(receipt.offset, Some(7));
    assert_eq!(offsets_of(&frames(&b, 1).await), [7]);
    nothing(&a).await;
    assert!(take(&a).0.is_empty(), "exclude_self in a retained room");

    let late = connect(&cluster[1], Encoding::Json, 64).await;
    let epoch = receipt.epoch.unwrap();
    let joined = cluster[1]
        .join_retained(&late, &r, KEEP, Some(4), Some(&epoch))
        .await
        .unwrap();
    assert_eq!((joined.offset, joined.recovered), (7, Some(true)));
    assert_eq!(offsets_of(&frames(&late, 3).await), [5, 6, 7]);
    nothing(&late).await;
    cluster[0]
        .publish_retained(&r, json("8"), None, false, KEEP, None)
        .unwrap()
        .await;
    assert_eq!(offsets_of(&frames(&late, 1).await), [8], "then live");
}

async fn leave_and_close_stop_delivery(cluster: Cluster) {
    let r = room("r");
    let a = connect(&cluster[0], Encoding::Json, 64).await;
    let b = connect(&cluster[1], Encoding::Json, 64).await;
    cluster[0].join(&a, &r).unwrap();
    cluster[1].join(&b, &r).unwrap();
    settle(&cluster, 0, &r, &[&a, &b]).await;
    assert!(cluster[1].leave(&b, &r));
    assert!(!cluster[1].leave(&b, &r));
    cluster[0].publish(&r, json("1"), None, false).unwrap();
    assert_eq!(frames(&a, 1).await.len(), 1);
    nothing(&b).await;
    cluster[0].unregister(&a);
    assert_eq!(cluster[0].room_count(), 0);
    assert_eq!(cluster[0].connection_count(), 0);
}

async fn leaves_remove_exactly_the_member_that_left(cluster: Cluster) {
    let r = room("big");
    let mut members = Vec::new();
    for _ in 0..50 {
        members.push(connect(&cluster[0], Encoding::Json, 64).await);
    }
    for m in &members {
        cluster[0].join(m, &r).unwrap();
    }
    // Every third leaves, in an order unrelated to the join order.
    let leaving: Vec<_> = (0..50).rev().filter(|i| i % 3 == 0).collect();
    for &i in &leaving {
        assert!(cluster[0].leave(&members[i], &r));
    }
    let presence = cluster[0].room(&r, true).await;
    assert_eq!(presence.count, 50 - leaving.len());
    assert!(leaving
        .iter()
        .all(|&i| !presence.ids.contains(&members[i].id)));
    cluster[0].publish(&r, json("1"), None, false).unwrap();
    for (i, m) in members.iter().enumerate() {
        let expected = usize::from(i % 3 != 0);
        assert_eq!(take(m).0.len(), expected, "member {i}");
    }
    for (i, m) in members.iter().enumerate() {
        assert_eq!(cluster[0].leave(m, &r), i % 3 != 0, "member {i}");
    }
    assert_eq!(cluster[0].room_count(), 0);
}

async fn send_and_disconnect_reach_other_nodes(cluster: Cluster) {
    let a = connect(&cluster[0], Encoding::Json, 64).await;
    let b = connect(&cluster[1], Encoding::MsgPack, 64).await;
    cluster[0]
        .send(&b.id, json(r#"{"hi":1}"#), Some(a.id.clone()))
        .await
        .unwrap();
    let got = frames(&b, 1).await;
    assert!(matches!(&got[..], [ServerFrame::Direct { from: Some(f), .. }] if *f == a.id));
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
    let start = Instant::now();
    while b.outbound.close_requested().is_none() {
        assert!(start.elapsed() < ARRIVES, "the disconnect never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b.outbound.close_requested(), Some(CloseCode::DISCONNECTED));
}

async fn views_span_the_cluster(cluster: Cluster) {
    let r = room("lobby");
    let a = connect(&cluster[0], Encoding::Json, 64).await;
    let b = connect(&cluster[1], Encoding::Json, 64).await;
    cluster[0].join(&a, &r).unwrap();
    cluster[1].join(&b, &r).unwrap();
    // Every node is listed, with its counts (the Redis bus registers a node and its counts
    // with each heartbeat, so a node may take one to show).
    let start = Instant::now();
    loop {
        let nodes = cluster[0].nodes().await.unwrap();
        let total: usize = nodes.iter().map(|n| n.connections).sum();
        if nodes.len() == cluster.nodes.len() && total == 2 {
            break;
        }
        assert!(start.elapsed() < ARRIVES, "nodes: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = cluster[0].room(&r, true).await;
    assert_eq!(p.count, 2);
    assert_eq!(p.ids.len(), 2);
    let v = cluster[0].connection(&b.id).await.unwrap().unwrap();
    assert_eq!(v.node, *cluster[1].node_id());
    assert_eq!(v.rooms, vec![r.clone()]);
    assert_eq!(v.sub.as_deref(), Some("user"));
}

async fn limits_hold(cluster: Cluster) {
    let a = connect(&cluster[0], Encoding::Json, 2).await;
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
    assert_eq!(take(&a).1, Some(CloseCode::TRY_AGAIN_LATER));
    assert_eq!(
        cluster[0]
            .stats()
            .slow_consumer_closes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// One test per check and bus.
macro_rules! contract {
    ($($check:ident: $nodes:expr;)*) => {
        mod local_bus {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(local_cluster($nodes)).await;
                }
            )*
        }
        mod redis_bus {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(redis_cluster($nodes).await).await;
                }
            )*
        }
    };
}

contract! {
    cross_node_publish_reaches_every_member_once_in_order: 2;
    retained_rooms_give_offsets_and_recover: 2;
    leave_and_close_stop_delivery: 2;
    leaves_remove_exactly_the_member_that_left: 1;
    send_and_disconnect_reach_other_nodes: 3;
    views_span_the_cluster: 2;
    limits_hold: 1;
}

/// A query whose asker gives up (a cancelled admin request) is forgotten, not left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_forgets_cancelled_queries() {
    let redis = Redis::start().await;
    let name = cluster_name();
    let bus = redis_bus(&redis, &name, "asker", 0).await;
    let router = Router::new(NodeId::new("asker"), bus.clone(), options());
    // A "node" that listens on its channel and never answers: every query to it waits.
    let mut mute = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "SUBSCRIBE"])
        .arg(format!("{name}:node:{{mute}}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli is installed with redis-server");
    wsgate_tests::redis_cli(redis.port, &["SET", &format!("{name}:conn:ghost"), "mute"]);
    let ghost = ConnectionId::from_string("ghost");
    let start = Instant::now();
    while wsgate_tests::redis_cli(
        redis.port,
        &["PUBSUB", "NUMSUB", &format!("{name}:node:{{mute}}")],
    )
    .lines()
    .nth(1)
        != Some("1")
    {
        assert!(
            start.elapsed() < ARRIVES,
            "the mute subscriber never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        let ask = router.connection(&ghost);
        assert!(tokio::time::timeout(Duration::from_millis(50), ask)
            .await
            .is_err());
    }
    assert_eq!(bus.pending_queries(), 0, "cancelled queries are forgotten");
    let _ = mute.kill();
    let _ = mute.wait();
}

/// A connection opened while only the subscriber connection is reconnecting still gets its
/// affinity record at once: records go through the command connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_is_written_while_the_subscriber_alone_reconnects() {
    let redis = Redis::start().await;
    let name = cluster_name();
    let bus = redis_bus(&redis, &name, "n1", 0).await;
    let router = Router::new(NodeId::new("n1"), bus.clone(), options());
    use room_router::bus::Bus as _;
    let start = Instant::now();
    // Kill the subscriber's connection until the bus notices (it reconnects with backoff).
    while bus.is_up() {
        assert!(start.elapsed() < ARRIVES, "the subscriber never went away");
        wsgate_tests::redis_cli(redis.port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let conn = connect(&router, Encoding::Json, 8).await;
    let record = wsgate_tests::redis_cli(redis.port, &["GET", &format!("{name}:conn:{}", conn.id)]);
    assert_eq!(
        record.trim(),
        "n1",
        "the record is written while the subscriber reconnects"
    );
}

/// A socket that takes every write, slowly: a fan-out to many of them is as long as one to
/// many real sockets.
struct SlowSocket;

impl room_router::Transport for SlowSocket {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_micros(700));
        Ok(buf.len())
    }
    fn delivered(&self, _since: std::time::Instant) {}
}

/// Remote room deliveries are not serialized behind one task: while node B fans a message
/// out to a large room of slow sockets (about a second), a message for another room, on
/// another fan-out worker, reaches its member at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_large_remote_fan_out_does_not_hold_up_other_rooms() {
    let redis = Redis::start().await;
    let name = cluster_name();
    let mut buses = Vec::new();
    for i in 0..2 {
        buses.push(redis_bus(&redis, &name, &format!("node-{i}"), 2).await);
    }
    let routers: Vec<_> = buses
        .iter()
        .enumerate()
        .map(|(i, b)| Router::new(NodeId::new(format!("node-{i}")), b.clone(), options()))
        .collect();
    let cluster = Cluster {
        nodes: routers,
        _redis: None,
    };
    let big = room("big");
    // A small room that node B fans out on the other worker.
    let small = (0..)
        .map(|i| room(&format!("small-{i}")))
        .find(|r| buses[1].fanout_worker_of(r) != buses[1].fanout_worker_of(&big))
        .unwrap();
    let quick = connect(&cluster[1], Encoding::Json, 64).await;
    cluster[1].join(&quick, &small).unwrap();
    let mut slow = Vec::new();
    for _ in 0..1_500 {
        let c = connect(&cluster[1], Encoding::Json, 64).await;
        c.outbound.attach(Box::new(SlowSocket));
        cluster[1].join(&c, &big).unwrap();
        slow.push(c);
    }
    settle(&cluster, 0, &small, &[&quick]).await;
    // The big room's subscription: one probe through it, waited for on its last member.
    let start = Instant::now();
    while cluster[1].room(&big, false).await.count < 1_500 {
        assert!(start.elapsed() < ARRIVES);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster[0]
        .publish(&big, json("\"big\""), None, false)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = Instant::now();
    cluster[0]
        .publish(&small, json("\"small\""), None, false)
        .unwrap();
    let got = frames(&quick, 1).await;
    let waited = sent.elapsed();
    assert_eq!(data_of(&got), vec![serde_json::json!("small")]);
    assert!(
        waited < Duration::from_millis(500),
        "the small room waited {waited:?} behind the big one"
    );
    drop(redis);
}
