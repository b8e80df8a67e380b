//! Presence (SPEC sections 4, 7 and 10): join and leave events for rooms with `[[presence]]
//! events = true`, to the room's other members once each across the cluster, leaves caused by
//! a close included; none elsewhere.

use std::time::Duration;

use serde_json::{json, Value};
use wsgate_tests::*;

const PRESENCE: &str = "[[presence]]\nrooms = [\"live:*\"]\nevents = true\n\
                        [[presence]]\nrooms = [\"quiet:*\"]\n";

/// The next `presence` frame, within a few seconds.
async fn next_presence(c: &mut Client) -> Value {
    loop {
        let f = tokio::time::timeout(Duration::from_secs(5), c.recv())
            .await
            .expect("a presence event within 5 s");
        if f["type"] == "presence" {
            return f;
        }
    }
}

async fn join(c: &mut Client, room: &str) {
    let ack = c
        .request(json!({"action":"join","room":room,"id":"j"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// `watcher` and `other` may be on different nodes; `settle` makes sure the watcher's node
/// receives the room before anything is asserted.
async fn events_reach_other_members_once(
    watcher: &mut Client,
    other: &mut Client,
    third: &mut Client,
) {
    let other_id = other.id();
    join(other, "live:1").await;
    let e = next_presence(watcher).await;
    assert_eq!(
        (
            e["room"].as_str(),
            e["event"].as_str(),
            e["connection_id"].as_str()
        ),
        (Some("live:1"), Some("join"), Some(other_id.as_str()))
    );
    other
        .request(json!({"action":"leave","room":"live:1","id":"l"}))
        .await;
    let e = next_presence(watcher).await;
    assert_eq!(
        (e["event"].as_str(), e["connection_id"].as_str()),
        (Some("leave"), Some(other_id.as_str()))
    );
    // A close is a leave too.
    let third_id = third.id();
    join(third, "live:1").await;
    assert_eq!(next_presence(watcher).await["event"], "join");
    third.ws.close(None).await.unwrap();
    let e = next_presence(watcher).await;
    assert_eq!(
        (e["event"].as_str(), e["connection_id"].as_str()),
        (Some("leave"), Some(third_id.as_str()))
    );
    // Once each, and no events in a room without them; the joiner hears nothing of itself.
    join(other, "quiet:1").await;
    watcher.assert_silent(Duration::from_millis(300)).await;
    other.assert_silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn presence_events_embedded() {
    let node = Node::start(PRESENCE).await;
    let mut watcher = node.connect().await;
    join(&mut watcher, "live:1").await;
    join(&mut watcher, "quiet:1").await;
    let (mut other, mut third) = (node.connect().await, node.connect().await);
    events_reach_other_members_once(&mut watcher, &mut other, &mut third).await;
}

#[tokio::test]
async fn presence_events_across_nodes() {
    let redis = Redis::start().await;
    let name = cluster_name();
    let config = format!(
        "{PRESENCE}[cluster]\nname = \"{name}\"\nredis_url = \"{}\"\nnode_heartbeat = \"200ms\"\n",
        redis.url()
    );
    let a = Node::start(&config).await;
    let b = Node::start(&config).await;
    let mut watcher = a.connect().await;
    join(&mut watcher, "live:1").await;
    join(&mut watcher, "quiet:1").await;
    // Node a receives the rooms once a publish from b reaches the watcher.
    let mut probe = b.connect().await;
    until_delivered(&mut probe, &mut watcher, "live:1", "live room").await;
    until_delivered(&mut probe, &mut watcher, "quiet:1", "quiet room").await;
    watcher.drain(Duration::from_millis(100)).await;
    let (mut other, mut third) = (b.connect().await, b.connect().await);
    events_reach_other_members_once(&mut watcher, &mut other, &mut third).await;
}

fn redis_node_config(redis: &Redis, name: &str) -> String {
    // A 1 s heartbeat: a frozen node stays registered for 3 s.
    format!(
        "[cluster]\nname = \"{name}\"\nredis_url = \"{}\"\nnode_heartbeat = \"1s\"\naffinity_ttl = \"3s\"\n",
        redis.url()
    )
}

async fn members(node: &Node, room: &str) -> (u64, Vec<String>) {
    let (status, body) = node.get(&format!("/rooms/{room}?members=true")).await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<String> = body["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    (body["members"].as_u64().unwrap(), ids)
}

/// `GET /rooms/{room}` reads other nodes' members from Redis (a set per room and node, in
/// batched writes), not by asking them: a node that is frozen, but still registered, still
/// counts, at once; its set holds exactly its members; and after Redis comes back empty every
/// node writes its sets again.
#[tokio::test]
async fn members_come_from_redis_and_survive_a_redis_restart() {
    let mut redis = Redis::start().await;
    let name = cluster_name();
    let a = Node::start(&redis_node_config(&redis, &name)).await;
    let b = Node::start(&redis_node_config(&redis, &name)).await;
    let mut on_a = a.connect().await;
    join(&mut on_a, "m").await;
    let mut on_b = Vec::new();
    for _ in 0..20 {
        let mut c = b.connect().await;
        join(&mut c, "m").await;
        on_b.push(c);
    }
    let mut all: Vec<String> = on_b.iter().map(|c| c.id()).collect();
    all.push(on_a.id());
    all.sort();
    eventually("b's members in redis", || async {
        members(&a, "m").await == (21, all.clone())
    })
    .await;
    let b_id = b.get("/cluster").await.1["nodes"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let set = redis_cli(
        redis.port,
        &["SMEMBERS", &format!("{name}:pres:{{m}}:{b_id}")],
    );
    assert_eq!(set.lines().count(), 20, "one set per room and node: {set}");

    b.signal("STOP");
    let start = std::time::Instant::now();
    let seen = members(&a, "m").await;
    let took = start.elapsed();
    b.signal("CONT");
    assert_eq!(
        seen,
        (21, all.clone()),
        "a frozen node's members, from redis"
    );
    // Asking the nodes would have waited out the 2 s query timeout and missed its 20.
    assert!(
        took < Duration::from_millis(1500),
        "without waiting for the frozen node: {took:?}"
    );

    // Leaves are written too.
    for mut c in on_b.drain(10..) {
        c.request(json!({"action":"leave","room":"m","id":"l"}))
            .await;
    }
    eventually("leaves in redis", || async {
        members(&a, "m").await.0 == 11
    })
    .await;

    redis.restart().await;
    a.metric_settles("wsgate_redis_up", 1.0).await;
    b.metric_settles("wsgate_redis_up", 1.0).await;
    eventually("sets written again after a restart", || async {
        members(&a, "m").await.0 == 11
    })
    .await;
}
