//! SPEC section 5: heartbeats, timeouts, token expiry and refresh, slow consumers.

use std::time::Duration;

use serde_json::json;
use wsgate_tests::*;

#[tokio::test]
async fn server_pings_and_closes_silent_clients_with_4003() {
    let node =
        Node::start("[server]\nheartbeat = \"200ms\"\nheartbeat_timeout = \"700ms\"\n").await;
    // A reading client answers pings (tungstenite does) and stays open.
    let mut alive = node.connect().await;
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, alive.next_event()).await {
            Ok(Event::Ping) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert!(pings >= 3, "server pings every heartbeat, got {pings}");
    assert_eq!(
        alive.request(json!({"action":"ping","id":1})).await["type"],
        "pong"
    );

    // A client that never reads never answers: closed with 4003.
    let mut silent = node.connect().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(silent.closed().await, Some(4003));
}

#[tokio::test]
async fn idle_timeout_4004_and_max_duration_4005() {
    let node = Node::start("[server]\nidle_timeout = \"400ms\"\n").await;
    let mut c = node.connect().await;
    let start = std::time::Instant::now();
    assert_eq!(c.closed().await, Some(4004));
    assert!(start.elapsed() >= Duration::from_millis(350));
    // Client messages keep it open.
    let mut busy = node.connect().await;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            busy.request(json!({"action":"ping","id":i})).await["type"],
            "pong"
        );
    }

    let node = Node::start("[server]\nmax_connection_duration = \"500ms\"\n").await;
    let mut c = node.connect().await;
    for i in 0..2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            c.request(json!({"action":"ping","id":i})).await["type"],
            "pong"
        );
    }
    assert_eq!(c.closed().await, Some(4005));
}

const AUTH: &str = "[auth]\njwt_secret = \"test-secret\"\nleeway = \"0s\"\n";

#[tokio::test]
async fn expired_token_closes_4001_and_refresh_extends() {
    let node = Node::start(AUTH).await;
    let short = mint_token(AUTH, "alice", None, "2s").unwrap();
    let mut expiring = connect_bearer(&node, &short).await.unwrap();
    let mut refreshed = connect_bearer(&node, &short).await.unwrap();
    let long = mint_token(AUTH, "alice", None, "1h").unwrap();
    assert_eq!(
        refreshed
            .request(json!({"action":"refresh","token":long,"id":1}))
            .await["type"],
        "ack"
    );
    assert_eq!(expiring.closed().await, Some(4001));
    assert_eq!(
        refreshed.request(json!({"action":"ping","id":2})).await["type"],
        "pong"
    );

    let other = mint_token(AUTH, "mallory", None, "1h").unwrap();
    refreshed
        .send(json!({"action":"refresh","token":other}))
        .await;
    assert_eq!(refreshed.closed().await, Some(1008));
    let mut c = connect_bearer(&node, &long).await.unwrap();
    c.send(json!({"action":"refresh","token":"garbage"})).await;
    assert_eq!(c.closed().await, Some(1008));
}

#[tokio::test]
async fn slow_consumer_is_closed_1013_and_room_keeps_flowing() {
    let node = Node::start("[limits]\noutbound_queue = 8\n").await;
    let mut slow = node.connect().await;
    slow.request(json!({"action":"join","room":"firehose","id":1}))
        .await;
    let mut fast = node.connect().await;
    fast.request(json!({"action":"join","room":"firehose","id":1}))
        .await;
    let mut publisher = node.connect().await;
    let big = "x".repeat(60_000);
    // ~12 MB: far more than the socket buffers hold, so `slow`'s queue overflows.
    for i in 0..200 {
        publisher
            .send(json!({"action":"publish","room":"firehose","data":{"i":i,"pad":big}}))
            .await;
        assert_eq!(
            fast.recv().await["data"]["i"],
            i,
            "a fast member gets everything"
        );
    }
    assert_eq!(slow.closed().await, Some(1013));
    node.metric_settles("wsgate_slow_consumer_closes_total", 1.0)
        .await;
    publisher
        .send(json!({"action":"publish","room":"firehose","data":"after"}))
        .await;
    assert_eq!(fast.recv().await["data"], "after");
}
