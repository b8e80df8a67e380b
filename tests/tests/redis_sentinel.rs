//! Nodes behind Sentinel: a failover under traffic is Redis going away and coming back, and
//! the nodes find the new primary through the Sentinel.

use serde_json::json;
use wsgate_tests::*;

#[tokio::test]
async fn failover_under_traffic() {
    let mut redis = RedisSentinel::start().await;
    let config = cluster_config(&redis.url(), None);
    let a_node = Node::start(&config).await;
    let b_node = Node::start(&config).await;
    let mut a = a_node.connect().await;
    let mut b = b_node.connect().await;
    a.request(json!({"action":"join","room":"r","id":1})).await;
    b.request(json!({"action":"join","room":"r","id":1})).await;

    // Cross-node traffic flows through the primary.
    until_delivered(&mut a, &mut b, "r", "before the failover").await;
    let old = redis.ports.0;
    redis.kill_primary();
    eventually("the sentinel promoted the replica", || {
        let promoted = redis.current_primary() == Some(redis.ports.1);
        async move { promoted }
    })
    .await;
    assert_ne!(redis.current_primary(), Some(old));
    // Local traffic never stopped; cross-node traffic resumes within a few seconds.
    until_delivered(&mut a, &mut b, "r", "after the failover").await;
    eventually("both nodes report redis up", || async {
        a_node.metric("wsgate_redis_up").await == 1.0
            && b_node.metric("wsgate_redis_up").await == 1.0
    })
    .await;
    eventually("affinity re-registered on the new primary", || async {
        a_node.get(&format!("/@connections/{}", b.id())).await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn tls_to_the_sentinels_and_the_primary() {
    let (redis, ca) = RedisSentinel::start_tls().await;
    let url = redis
        .url()
        .replace("redis-sentinel://", "rediss-sentinel://");
    let config = cluster_config(&url, Some(&ca));
    let a_node = Node::start(&config).await;
    let b_node = Node::start(&config).await;
    let mut a = a_node.connect().await;
    let mut b = b_node.connect().await;
    a.request(json!({"action":"join","room":"r","id":1})).await;
    b.request(json!({"action":"join","room":"r","id":1})).await;
    until_delivered(&mut a, &mut b, "r", "through a TLS sentinel setup").await;
    let (status, _) = a_node.get(&format!("/@connections/{}", b.id())).await;
    assert_eq!(status, 200);
    // Without the CA, the sentinels' certificate is refused at start.
    let err = start_refused(&["--redis-url", &url], &[]);
    assert!(err.contains("cluster.redis_url"), "{err}");
}
