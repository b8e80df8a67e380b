//! SPEC section 7 with real `redis-server` processes: nodes fan out to each other, reach any
//! connection, list each other, and survive Redis going away.

use std::time::Duration;

use serde_json::json;
use wsgate_tests::*;

fn config(redis: &Redis, name: &str) -> String {
    format!(
        "[cluster]\nname = \"{name}\"\nredis_url = \"{}\"\naffinity_ttl = \"2s\"\nnode_heartbeat = \"200ms\"\n",
        redis.url()
    )
}

async fn cluster(redis: &Redis, n: usize) -> Vec<Node> {
    let name = cluster_name();
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::start(&config(redis, &name)).await);
    }
    nodes
}

/// Publishes probes until every member has one: subscriptions travel through Redis.
async fn settle(publisher: &mut Client, room: &str, members: &mut [&mut Client]) {
    for attempt in 0.. {
        assert!(attempt < 100, "room {room} never reached every node");
        publisher
            .send(json!({"action":"publish","room":room,"data":{"probe":attempt}}))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut all = true;
        for m in members.iter_mut() {
            let mut got = false;
            while let Ok(Some(Ok(msg))) = tokio::time::timeout(
                Duration::from_millis(10),
                futures_util::StreamExt::next(&mut m.ws),
            )
            .await
            {
                if msg.to_text().map(|t| t.contains("probe")).unwrap_or(false) {
                    got = true;
                }
            }
            all &= got;
        }
        if all {
            // Drain probes still in flight.
            tokio::time::sleep(Duration::from_millis(100)).await;
            for m in members.iter_mut() {
                while let Ok(Some(Ok(_))) = tokio::time::timeout(
                    Duration::from_millis(20),
                    futures_util::StreamExt::next(&mut m.ws),
                )
                .await
                {}
            }
            return;
        }
    }
}

#[tokio::test]
async fn three_nodes_are_one_gateway() {
    let redis = Redis::start().await;
    let nodes = cluster(&redis, 3).await;
    let mut a = nodes[0].connect().await;
    let mut b = nodes[1].connect().await;
    let mut c = nodes[2].connect().await;
    for client in [&mut a, &mut b, &mut c] {
        client
            .request(json!({"action":"join","room":"lobby","id":1}))
            .await;
    }
    settle(&mut a, "lobby", &mut [&mut b, &mut c]).await;
    a.drain(Duration::from_millis(50)).await;

    // Every member on every node gets each message once, in the publisher's order.
    let a_id = a.welcome["connection_id"].clone();
    for i in 0..30 {
        a.send(json!({"action":"publish","room":"lobby","data":i}))
            .await;
    }
    for member in [&mut a, &mut b, &mut c] {
        for i in 0..30 {
            let m = member.recv().await;
            assert_eq!(
                (m["type"].as_str(), m["data"].as_i64()),
                (Some("message"), Some(i))
            );
            assert_eq!(m["from"], a_id);
        }
        member.assert_silent(Duration::from_millis(200)).await;
    }

    // send reaches a connection on another node.
    assert_eq!(
        a.request(json!({"action":"send","to":c.id(),"data":"psst","id":2}))
            .await["type"],
        "ack"
    );
    assert_eq!(
        c.recv().await,
        json!({"type":"direct","from":a.id(),"data":"psst"})
    );
    // A burst of sends to another node, not awaited one by one: each leaves in order behind
    // the others, and the acks come in request order.
    for n in 0..50 {
        a.send(json!({"action":"send","to":c.id(),"data":n,"id":format!("b{n}")}))
            .await;
    }
    for n in 0..50 {
        let ack = a.recv().await;
        assert_eq!(
            (ack["type"].as_str(), ack["id"].clone()),
            (Some("ack"), json!(format!("b{n}")))
        );
        assert_eq!(c.recv().await["data"], n, "sends arrive in the order sent");
    }

    // The management API of any node reaches any connection.
    let (status, body) = nodes[1].get(&format!("/@connections/{}", c.id())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"], nodes[2].node_id.as_str());
    assert_eq!(body["rooms"], json!(["lobby"]));
    let url = nodes[0].admin_url(&format!("/@connections/{}", c.id()));
    assert_eq!(
        http_json(reqwest::Client::new().post(&url).body(r#"{"hi":1}"#))
            .await
            .0,
        200
    );
    assert_eq!(
        c.recv().await,
        json!({"type":"direct","from":null,"data":{"hi":1}})
    );
    let (status, body) = nodes[0].get("/rooms/lobby?members=true").await;
    assert_eq!(status, 200);
    assert_eq!(body["members"], 3, "{body}");
    assert_eq!(body["connections"].as_array().unwrap().len(), 3);

    // /cluster lists every node and the total KEDA reads.
    eventually("3 nodes in /cluster", || async {
        let (_, body) = nodes[0].get("/cluster").await;
        body["nodes"].as_array().map(|n| n.len()) == Some(3) && body["connections_total"] == 3
    })
    .await;
    // Per node, as each one's latest heartbeat wrote it.
    eventually("every node lists one connection in one room", || async {
        let (_, body) = nodes[2].get("/cluster").await;
        nodes.iter().all(|node| {
            body["nodes"].as_array().into_iter().flatten().any(|n| {
                n["id"] == node.node_id.as_str()
                    && n["connections"] == 1
                    && n["rooms"] == 1
                    && n["last_seen"].is_string()
            })
        })
    })
    .await;

    // DELETE from another node closes with 4002; then 410 everywhere.
    assert_eq!(http_json(reqwest::Client::new().delete(&url)).await.0, 204);
    assert_eq!(c.closed().await, Some(4002));
    for node in &nodes {
        eventually("410 after close", || async {
            node.get(&format!("/@connections/{}", c.id())).await.0 == 410
        })
        .await;
    }
    let e = a
        .request(json!({"action":"send","to":c.id(),"data":1,"id":3}))
        .await;
    assert_eq!(e["code"], "not_found");

    // A stale record naming the node asked (its delete not yet in Redis) is not a
    // connection: 410, not a message published to the node's own channel.
    let ghost = "AAAAAAAAAAAAAAAAAAAAAA";
    let a_key = redis_cli(redis.port, &["KEYS", &format!("*:conn:{}", a.id())]);
    let prefix = a_key
        .trim()
        .strip_suffix(a.id().as_str())
        .expect("a's record");
    redis_cli(
        redis.port,
        &[
            "SET",
            &format!("{prefix}{ghost}"),
            &nodes[0].node_id,
            "EX",
            "60",
        ],
    );
    let url = nodes[0].admin_url(&format!("/@connections/{ghost}"));
    assert_eq!(
        http_json(reqwest::Client::new().post(&url).body("1"))
            .await
            .0,
        410
    );
}

#[tokio::test]
async fn a_killed_node_leaves_nothing_behind() {
    let redis = Redis::start().await;
    let mut nodes = cluster(&redis, 2).await;
    let mut victim = nodes[1].connect().await;
    let id = victim.id();
    victim
        .request(json!({"action":"join","room":"r","id":1}))
        .await;
    eventually("both nodes listed", || async {
        nodes[0].get("/cluster").await.1["nodes"]
            .as_array()
            .map(|n| n.len())
            == Some(2)
    })
    .await;
    eventually("the member is seen from the other node", || async {
        nodes[0].get("/rooms/r").await.1["members"] == 1
    })
    .await;
    nodes[1].signal("KILL");
    nodes[1].wait_exit(Duration::from_secs(5)).await;
    // No ghost member: a killed node's members leave the room with it.
    eventually("no ghost member after SIGKILL", || async {
        nodes[0].get("/rooms/r").await.1["members"] == 0
    })
    .await;
    eventually("410 once the node is gone", || async {
        nodes[0].get(&format!("/@connections/{id}")).await.0 == 410
    })
    .await;
    eventually("dead node leaves /cluster", || async {
        nodes[0].get("/cluster").await.1["nodes"]
            .as_array()
            .map(|n| n.len())
            == Some(1)
    })
    .await;
    // After the TTLs nothing in Redis names the dead node or its connection.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let dead = nodes[1].node_id.clone();
    let keys = redis_cli(redis.port, &["--scan"]);
    for key in keys.lines().filter(|k| !k.is_empty()) {
        assert!(
            !key.contains(&dead) && !key.contains(&id),
            "left behind: {key}"
        );
        if key.ends_with(":nodes") {
            let members = redis_cli(redis.port, &["ZRANGE", key, "0", "-1"]);
            assert!(
                !members.contains(&dead),
                "dead node still registered: {members}"
            );
        }
    }
    assert!(
        keys.lines().any(|k| k.contains(&nodes[0].node_id)),
        "the live node is still registered: {keys}"
    );
}

#[tokio::test]
async fn redis_outage_is_survived() {
    let mut redis = Redis::start().await;
    // A TTL whose periodic refresh (every 20 s) comes after this test's waits: only the
    // re-registration on reconnect can bring the records back in time.
    let name = cluster_name();
    let long_ttl = config(&redis, &name).replace("affinity_ttl = \"2s\"", "affinity_ttl = \"60s\"");
    assert!(long_ttl.contains("60s"));
    let nodes = [Node::start(&long_ttl).await, Node::start(&long_ttl).await];
    let mut a = nodes[0].connect().await;
    let mut b = nodes[1].connect().await;
    // Live traffic in its own room: a publisher and a member on node 0, a member on node 1.
    let mut p = nodes[0].connect().await;
    let mut local = nodes[0].connect().await;
    let mut remote = nodes[1].connect().await;
    for (client, room) in [
        (&mut a, "r"),
        (&mut b, "r"),
        (&mut p, "live"),
        (&mut local, "live"),
        (&mut remote, "live"),
    ] {
        client
            .request(json!({"action":"join","room":room,"id":1}))
            .await;
    }
    settle(&mut a, "r", &mut [&mut b]).await;
    settle(&mut p, "live", &mut [&mut remote, &mut local]).await;
    a.drain(Duration::from_millis(50)).await;
    p.drain(Duration::from_millis(50)).await;
    assert_eq!(nodes[0].metric("wsgate_redis_up").await, 1.0);
    let (status, room) = nodes[0].get("/rooms/r").await;
    assert_eq!((status, &room["members"]), (200, &json!(2)));
    assert_eq!(room.get("partial"), None);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                p.send(
                    json!({"action":"publish","room":"live","data":{"live":n},"exclude_self":true}),
                )
                .await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    redis.kill();
    eventually("redis_up drops to 0", || async {
        nodes[0].metric("wsgate_redis_up").await == 0.0
    })
    .await;
    assert_eq!(
        nodes[0].get("/readyz").await.0,
        200,
        "Redis down does not make a node unready"
    );
    // SPEC section 10: the room's members as far as this node knows, marked partial.
    let (status, room) = nodes[0].get("/rooms/r?members=true").await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["members"], 1);
    assert_eq!(room["partial"], true);
    assert_eq!(room["connections"], json!([a.id()]));
    assert_eq!(
        a.request(json!({"action":"ping","id":5})).await["type"],
        "pong"
    );
    eventually(
        "envelopes dropped while Redis is away are counted",
        || async { nodes[0].metric("wsgate_bus_dropped_total").await > 0.0 },
    )
    .await;

    redis.restart().await;
    eventually("redis_up back to 1", || async {
        nodes[0].metric("wsgate_redis_up").await == 1.0
            && nodes[1].metric("wsgate_redis_up").await == 1.0
    })
    .await;
    // Resubscribed: cross-node traffic resumes.
    settle(&mut a, "r", &mut [&mut b]).await;
    // Re-registered: the other node finds connections again.
    eventually("affinity re-registered", || async {
        nodes[1].get(&format!("/@connections/{}", a.id())).await.0 == 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = publisher.await.unwrap();

    // The local member got every live message, in order, through the outage.
    for i in 0..sent {
        assert_eq!(
            local.recv().await["data"]["live"],
            i,
            "local message {i} of {sent}"
        );
    }
    // The remote member: at most once, in order, and the traffic after recovery arrived.
    // (What was published during the outage may arrive late or not at all: a short outage
    // ends within the command timeout and the bounded queue behind it is then sent.)
    let mut seen = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(
        Duration::from_millis(500),
        futures_util::StreamExt::next(&mut remote.ws),
    )
    .await
    {
        // Server pings (and anything else not a text frame) are not deliveries.
        let tokio_tungstenite::tungstenite::Message::Text(text) = msg else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if let Some(i) = v["data"]["live"].as_u64() {
            seen.push(i);
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates: {seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&(sent - 1)),
        "traffic after recovery reaches node 1"
    );
}

#[tokio::test]
async fn a_frozen_redis_does_not_stall_local_traffic() {
    let redis = Redis::start().await;
    let nodes = cluster(&redis, 2).await;
    let mut a = nodes[0].connect().await;
    let mut a2 = nodes[0].connect().await;
    let mut b = nodes[1].connect().await;
    for client in [&mut a, &mut a2, &mut b] {
        client
            .request(json!({"action":"join","room":"r","id":1}))
            .await;
    }
    settle(&mut a, "r", &mut [&mut b, &mut a2]).await;
    a.drain(Duration::from_millis(50)).await;

    redis.signal("STOP");
    // Every Redis command now hangs (up to the 2 s command timeout): local fan-out, pings and
    // new connections must not wait for any of them. A single wait would take 2 s, so the
    // bound below tells waiting from not waiting with a wide margin on a loaded machine.
    let start = std::time::Instant::now();
    for i in 0..50 {
        a.send(json!({"action":"publish","room":"r","data":i,"exclude_self":true}))
            .await;
    }
    for i in 0..50 {
        assert_eq!(a2.recv().await["data"], i);
    }
    assert_eq!(
        a.request(json!({"action":"ping","id":9})).await["type"],
        "pong"
    );
    assert!(
        start.elapsed() < Duration::from_millis(1900),
        "local traffic waited for Redis: {:?}",
        start.elapsed()
    );
    let mut late = nodes[0].connect().await;
    assert_eq!(
        late.request(json!({"action":"ping","id":1})).await["type"],
        "pong",
        "a connection opened while Redis is frozen is served"
    );

    redis.signal("CONT");
    settle(&mut a, "r", &mut [&mut b]).await;
}

#[tokio::test]
async fn a_wrong_redis_url_fails_fast() {
    let port = free_port();
    let start = std::time::Instant::now();
    let err = start_refused(&["--redis-url", &format!("redis://127.0.0.1:{port}")], &[]);
    assert!(err.contains("cluster.redis_url"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(15));
    let err = start_refused(&["--redis-url", "nonsense://x"], &[]);
    assert!(err.contains("cluster.redis_url"), "{err}");
}

#[tokio::test]
async fn malformed_envelopes_are_dropped_and_logged() {
    let redis = Redis::start().await;
    let name = cluster_name();
    let node = Node::start(&config(&redis, &name)).await;
    let mut member = node.connect().await;
    member
        .request(json!({"action":"join","room":"r","id":1}))
        .await;
    let channel = format!("{name}:room:{{r}}");
    eventually("the node subscribed to the room", || {
        let n = redis_cli(redis.port, &["PUBSUB", "NUMSUB", &channel]);
        async move { n.lines().nth(1).map(str::trim) == Some("1") }
    })
    .await;
    for garbage in ["not msgpack", "\u{93}\u{1}", "x", "", "\u{ff}"] {
        redis_cli(redis.port, &["PUBLISH", &channel, garbage]);
    }
    let logged = || {
        node.logs()
            .iter()
            .filter(|l| l.contains("malformed envelope dropped"))
            .count()
    };
    eventually("a malformed envelope is logged", || {
        let n = logged();
        async move { n > 0 }
    })
    .await;
    // Five bad envelopes within the 10 s interval: one line, not one per envelope.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(logged(), 1, "{:?}", node.logs());
    node.metric_settles("wsgate_bus_malformed_envelopes_total", 5.0)
        .await;
    // The node is unharmed and the member still gets real messages.
    let mut publisher = node.connect().await;
    publisher
        .send(json!({"action":"publish","room":"r","data":"fine"}))
        .await;
    assert_eq!(member.recv().await["data"], "fine");
    member.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_drained_node_removes_its_records() {
    let redis = Redis::start().await;
    let name = cluster_name();
    // Long TTLs: whatever is gone after the drain was deleted, not expired.
    let config = format!(
        "[server]\ndrain_delay = \"0s\"\ndrain_period = \"200ms\"\n[cluster]\nname = \"{name}\"\nredis_url = \"{}\"\naffinity_ttl = \"60s\"\n",
        redis.url()
    );
    let mut node = Node::start(&config).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(node.connect().await);
    }
    eventually("affinity records written", || {
        let n = redis_cli(
            redis.port,
            &["--scan", "--pattern", &format!("{name}:conn:*")],
        );
        async move { n.lines().filter(|l| !l.is_empty()).count() == 5 }
    })
    .await;
    node.signal("TERM");
    for c in &mut clients {
        assert_eq!(c.closed().await, Some(1012));
    }
    assert_eq!(
        node.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    let left = redis_cli(redis.port, &["--scan", "--pattern", &format!("{name}:*")]);
    let left: Vec<&str> = left.lines().filter(|l| !l.is_empty()).collect();
    assert!(left.is_empty(), "the drained node left: {left:?}");
}

#[tokio::test]
async fn subscriptions_follow_local_membership() {
    let redis = Redis::start().await;
    let name = cluster_name();
    let node = Node::start(&config(&redis, &name)).await;
    let channel = format!("{name}:room:{{r}}");
    let subscribers = || {
        let out = redis_cli(redis.port, &["PUBSUB", "NUMSUB", &channel]);
        out.lines().nth(1).map(|l| l.trim().to_owned())
    };
    assert_eq!(subscribers().as_deref(), Some("0"));
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    for c in [&mut a, &mut b] {
        c.request(json!({"action":"join","room":"r","id":1})).await;
    }
    eventually("subscribed once for two members", || {
        let n = subscribers();
        async move { n.as_deref() == Some("1") }
    })
    .await;
    // One member leaving keeps the subscription; the last one closing ends it.
    a.request(json!({"action":"leave","room":"r","id":2})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(subscribers().as_deref(), Some("1"));
    b.ws.close(None).await.unwrap();
    eventually("unsubscribed after the last member", || {
        let n = subscribers();
        async move { n.as_deref() == Some("0") }
    })
    .await;
    // A leave (not a close) of the last member unsubscribes too.
    a.request(json!({"action":"join","room":"r","id":3})).await;
    eventually("subscribed again", || {
        let n = subscribers();
        async move { n.as_deref() == Some("1") }
    })
    .await;
    a.request(json!({"action":"leave","room":"r","id":4})).await;
    eventually("unsubscribed after the last leave", || {
        let n = subscribers();
        async move { n.as_deref() == Some("0") }
    })
    .await;
}

/// Many connections joining and leaving one room on node B at once: whenever the churn stops
/// with members present, node B is subscribed and every publish from node A reaches every
/// member (the race between a last leave and a re-creating join cannot leave it deaf).
#[tokio::test]
async fn churn_on_one_node_never_leaves_it_deaf_to_a_room() {
    let redis = Redis::start().await;
    let nodes = cluster(&redis, 2).await;
    let mut publisher = nodes[0].connect().await;
    let mut churners = Vec::new();
    for _ in 0..24 {
        churners.push(nodes[1].connect().await);
    }
    for round in 0..3 {
        let tasks: Vec<_> = churners
            .drain(..)
            .map(|mut c| {
                tokio::spawn(async move {
                    for i in 0..60 {
                        c.request(json!({"action":"join","room":"churn","id":i}))
                            .await;
                        c.request(json!({"action":"leave","room":"churn","id":-i - 1}))
                            .await;
                    }
                    c.request(json!({"action":"join","room":"churn","id":"final"}))
                        .await;
                    c
                })
            })
            .collect();
        for t in tasks {
            churners.push(t.await.unwrap());
        }
        let mut members: Vec<&mut Client> = churners.iter_mut().collect();
        settle(&mut publisher, "churn", &mut members).await;
        for i in 0..10 {
            publisher
                .send(json!({"action":"publish","room":"churn","data":{"round":round,"i":i}}))
                .await;
        }
        for c in churners.iter_mut() {
            for i in 0..10 {
                let m = c.recv().await;
                assert_eq!(m["data"], json!({"round":round,"i":i}), "round {round}");
            }
        }
        // Leave all at once before the next round: the room empties on node B.
        for c in churners.iter_mut() {
            c.request(json!({"action":"leave","room":"churn","id":"out"}))
                .await;
        }
    }
}

/// Where Debian's libfaketime lives (scripts/test installs it).
fn libfaketime() -> String {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| panic!("libfaketime not found in {candidates:?}: scripts/test installs it (apt-get install libfaketime)"))
        .to_string()
}

/// Clock skew cannot evict live nodes: liveness is Redis's own key expiry, never a comparison
/// of node clocks. One node runs two hours ahead and one two hours behind (libfaketime, wall
/// clock only); every node keeps listing all three through many heartbeats.
#[tokio::test]
async fn nodes_with_skewed_clocks_stay_registered() {
    let redis = Redis::start().await;
    let name = cluster_name();
    let lib = libfaketime();
    // A 2 s heartbeat (liveness 6 s): two hours of skew would still evict within one, and a
    // node slowed by a busy test machine (every cluster test at once on two cores, a heartbeat
    // waiting out a 2 s command timeout) does not miss its window.
    let config =
        config(&redis, &name).replace("node_heartbeat = \"200ms\"", "node_heartbeat = \"2s\"");
    assert!(config.contains("node_heartbeat = \"2s\""));
    let skewed = |offset: &str| {
        NodeOptions::config(&config)
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    };
    let nodes = [
        Node::start(&config).await,
        Node::start_with(skewed("+2h")).await,
        Node::start_with(skewed("-2h")).await,
    ];
    // The skew is real: each node stamps its own entry with its own clock.
    let (_, ahead) = nodes[1].get("/cluster").await;
    let own = ahead["nodes"][0]["last_seen"].as_str().unwrap().to_owned();
    let (_, normal) = nodes[0].get("/cluster").await;
    let real = normal["nodes"][0]["last_seen"].as_str().unwrap().to_owned();
    assert!(own > real, "the +2h node's clock is ahead: {own} vs {real}");
    // Five seconds, over two heartbeats: a registry trusting clocks evicts within one.
    for _ in 0..25 {
        for (i, node) in nodes.iter().enumerate() {
            let (_, v) = node.get("/cluster").await;
            if v["nodes"].as_array().unwrap().len() != 3 {
                let logs: Vec<Vec<String>> = nodes.iter().map(Node::logs).collect();
                panic!("node {i} sees {v}; node logs: {logs:#?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `send` to a connection on another node waits on Redis; the sender's session does not:
/// while Redis is frozen its pings are answered and room messages reach it, and the send is
/// answered (in order with other sends) once Redis answers or gives up.
#[tokio::test]
async fn a_remote_send_does_not_freeze_the_senders_session() {
    let redis = Redis::start().await;
    let nodes = cluster(&redis, 2).await;
    let mut a = nodes[0].connect().await;
    let mut a2 = nodes[0].connect().await;
    let b = nodes[1].connect().await;
    a.request(json!({"action":"join","room":"local","id":"j"}))
        .await;

    redis.signal("STOP");
    let start = std::time::Instant::now();
    a.send(json!({"action":"send","to":b.id(),"data":"one","id":"s1"}))
        .await;
    a.send(json!({"action":"send","to":b.id(),"data":"two","id":"s2"}))
        .await;
    // The session goes on: a pong and a local room message, long before Redis answers.
    assert_eq!(
        a.request(json!({"action":"ping","id":"p"})).await["type"],
        "pong"
    );
    a2.send(json!({"action":"publish","room":"local","data":"hi"}))
        .await;
    let m = a.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["data"].as_str()),
        (Some("message"), Some("hi"))
    );
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "the session waited for Redis: {:?}",
        start.elapsed()
    );
    redis.signal("CONT");
    // Both sends are answered, in order: an ack, or `unavailable` if Redis timed out first.
    let mut answered = Vec::new();
    while answered.len() < 2 {
        let f = a.recv().await;
        if let Some(id) = f["id"].as_str().filter(|id| id.starts_with('s')) {
            assert!(f["type"] == "ack" || f["code"] == "unavailable", "{f}");
            if f["type"] == "error" {
                assert!(
                    !f["message"].as_str().unwrap().contains("redis"),
                    "no Redis detail: {f}"
                );
            }
            answered.push(id.to_owned());
        }
    }
    assert_eq!(answered, ["s1", "s2"]);
}

/// A Redis password holding characters a URL must percent-encode (generated secrets often do)
/// is decoded before it is sent: `redis://:pa%2Fss%40w%2Brd@...` authenticates as `pa/ss@w+rd`.
#[tokio::test]
async fn a_percent_encoded_redis_password_is_decoded() {
    let redis = Redis::start_with(&["--requirepass", "pa/ss@w+rd"]).await;
    let url = format!("redis://:pa%2Fss%40w%2Brd@127.0.0.1:{}", redis.port);
    let node = Node::start(&cluster_config(&url, None)).await;
    assert_eq!(node.metric("wsgate_redis_up").await, 1.0);
    let wrong = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let err = start_refused(&["--redis-url", &wrong], &[]);
    assert!(err.contains("cluster.redis_url"), "{err}");
}

/// A node is listed by the others as soon as it is up, not a heartbeat later: its bus starts
/// before its router attaches, and the first heartbeat waits for that rather than for the
/// next tick (30 s here).
#[tokio::test]
async fn a_new_node_is_listed_at_once() {
    let redis = Redis::start().await;
    let name = cluster_name();
    let config =
        config(&redis, &name).replace("node_heartbeat = \"200ms\"", "node_heartbeat = \"30s\"");
    assert!(config.contains("node_heartbeat = \"30s\""));
    let nodes = [
        Node::start(&config).await,
        Node::start(&config).await,
        Node::start(&config).await,
    ];
    let started = std::time::Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let (_, v) = node.get("/cluster").await;
            if v["nodes"].as_array().unwrap().len() == 3 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "node {i} still sees {v}: a node waited a heartbeat to register"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
