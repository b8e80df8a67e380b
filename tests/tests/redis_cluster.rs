//! Nodes over a real 3-master Redis Cluster: rooms travel on shard channels spread over every
//! shard, and cross-node delivery works as over one Redis.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use wsgate_tests::*;

#[tokio::test]
async fn rooms_spread_over_shards_and_reach_every_node() {
    let redis = RedisCluster::start(3).await;
    let name = cluster_name();
    let config = format!(
        "[cluster]\nname = \"{name}\"\nredis_url = \"{}\"\nnode_heartbeat = \"200ms\"\n",
        redis.url()
    );
    let a_node = Node::start(&config).await;
    let b_node = Node::start(&config).await;
    let mut a = a_node.connect().await;
    let mut b = b_node.connect().await;
    let rooms: Vec<String> = (0..12).map(|i| format!("room-{i}")).collect();
    for (i, room) in rooms.iter().enumerate() {
        a.request(json!({"action":"join","room":room,"id":i})).await;
        b.request(json!({"action":"join","room":room,"id":i})).await;
    }
    // Each room is a shard channel on the master owning its slot: more than one shard used.
    let mut channels = HashSet::new();
    let mut shards_used = 0;
    eventually("every room subscribed on a shard", || {
        channels.clear();
        shards_used = 0;
        for p in &redis.ports {
            let out = redis_cli(*p, &["PUBSUB", "SHARDCHANNELS", &format!("{name}:room:*")]);
            let here: Vec<String> = out
                .lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect();
            shards_used += usize::from(!here.is_empty());
            channels.extend(here);
        }
        let done = channels.len() == rooms.len();
        async move { done }
    })
    .await;
    assert!(shards_used >= 2, "rooms spread over shards: {shards_used}");

    // Cross-node delivery in every room, once and in order.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for room in &rooms {
        for n in 0..3 {
            a.send(json!({"action":"publish","room":room,"data":n,"exclude_self":true}))
                .await;
        }
    }
    // Order holds per room (each room is one shard, one connection); rooms on different
    // shards interleave.
    let mut got: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for _ in 0..rooms.len() * 3 {
        let m = b.recv().await;
        got.entry(m["room"].as_str().unwrap().to_owned())
            .or_default()
            .push(m["data"].as_i64().unwrap());
    }
    assert_eq!(got.len(), rooms.len());
    for (room, seq) in &got {
        assert_eq!(seq, &vec![0, 1, 2], "{room}");
    }
    b.assert_silent(Duration::from_millis(200)).await;

    // Node channels are shard channels too: send and @connections cross nodes.
    assert_eq!(
        a.request(json!({"action":"send","to":b.id(),"data":"x","id":99}))
            .await["type"],
        "ack"
    );
    assert_eq!(b.recv().await["type"], "direct");
    let (status, body) = a_node.get(&format!("/@connections/{}", b.id())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"], b_node.node_id.as_str());
}

#[tokio::test]
async fn tls_to_every_shard() {
    let (redis, ca) = RedisCluster::start_tls(3).await;
    let url = redis.url().replace("redis-cluster://", "rediss-cluster://");
    let config = cluster_config(&url, Some(&ca));
    let a_node = Node::start(&config).await;
    let b_node = Node::start(&config).await;
    let mut a = a_node.connect().await;
    let mut b = b_node.connect().await;
    for (i, room) in ["t-1", "t-2", "t-3", "t-4"].iter().enumerate() {
        b.request(json!({"action":"join","room":room,"id":i})).await;
        until_delivered(&mut a, &mut b, room, "over TLS to a shard").await;
    }
}

/// Retained rooms on Redis Cluster: the history script's keys and shard channel share the
/// room's slot, so offsets, delivery and a rejoin with `since` work on every shard.
#[tokio::test]
async fn retained_rooms_work_on_every_shard() {
    let redis = RedisCluster::start(3).await;
    let name = cluster_name();
    let config = format!(
        "[[history]]\nrooms = [\"kept-*\"]\n[cluster]\nname = \"{name}\"\nredis_url = \"{}\"\nnode_heartbeat = \"200ms\"\n",
        redis.url()
    );
    let a_node = Node::start(&config).await;
    let b_node = Node::start(&config).await;
    let mut a = a_node.connect().await;
    let mut b = b_node.connect().await;
    for i in 0..6 {
        let room = format!("kept-{i}");
        let ack = b
            .request(json!({"action":"join","room":room,"id":"j"}))
            .await;
        assert_eq!(ack["offset"], 0, "{ack}");
        for n in 1..=2u64 {
            let ack = a
                .request(json!({"action":"publish","room":room,"data":n,"id":n}))
                .await;
            assert_eq!(ack["offset"], n, "{room}: {ack}");
        }
        for n in 1..=2u64 {
            let m = b.recv().await;
            assert_eq!(
                (m["room"].as_str(), m["offset"].as_u64()),
                (Some(room.as_str()), Some(n))
            );
        }
        let epoch = ack["epoch"].clone();
        let mut late = a_node.connect().await;
        late.send(json!({"action":"join","room":room,"since":1,"epoch":epoch,"id":"r"}))
            .await;
        let replayed = late.recv().await;
        assert_eq!(replayed["offset"], 2, "{replayed}");
        let ack = late.recv().await;
        assert_eq!(
            (ack["id"].as_str(), ack["recovered"].as_bool()),
            (Some("r"), Some(true)),
            "{ack}"
        );
    }
}
