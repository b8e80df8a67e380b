//! `rediss://`: TLS to Redis with the server certificate verified against
//! `cluster.redis_ca_file` and the URL's host.

use serde_json::json;
use wsgate_tests::*;

#[tokio::test]
async fn nodes_talk_through_tls_redis() {
    let redis = RedisTls::start().await;
    let config = cluster_config(&redis.url(), Some(&redis.ca_file));
    let a_node = Node::start(&config).await;
    let b_node = Node::start(&config).await;
    let mut a = a_node.connect().await;
    let mut b = b_node.connect().await;
    b.request(json!({"action":"join","room":"secure","id":1}))
        .await;
    until_delivered(&mut a, &mut b, "secure", "over TLS").await;
    let (status, _) = a_node.get(&format!("/@connections/{}", b.id())).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_fast() {
    let redis = RedisTls::start().await;
    // No CA file: the system's roots do not know the test CA.
    let err = start_refused(&["--redis-url", &redis.url()], &[]);
    assert!(err.contains("cluster.redis_url"), "{err}");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the refusal names the certificate: {err}"
    );
    // A CA file that is not a certificate is named.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("ca.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let err = start_refused(
        &["--redis-url", &redis.url()],
        &[("WSGATE_CLUSTER__REDIS_CA_FILE", bogus.to_str().unwrap())],
    );
    assert!(err.contains("redis_ca_file"), "{err}");
}

#[tokio::test]
async fn a_certificate_for_another_host_fails_fast() {
    // Signed by the CA the node trusts, but issued to another name than the URL's host.
    let redis = RedisTls::start_named("redis.example", None).await;
    let err = start_refused(
        &["--redis-url", &redis.url()],
        &[(
            "WSGATE_CLUSTER__REDIS_CA_FILE",
            redis.ca_file.to_str().unwrap(),
        )],
    );
    assert!(err.contains("cluster.redis_url"), "{err}");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the refusal names the certificate: {err}"
    );
    assert!(err.contains("NotValidForName"), "a name mismatch: {err}");
}
