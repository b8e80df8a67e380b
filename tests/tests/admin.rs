//! SPEC section 10 on a live node: health, metrics, @connections, rooms, sessions, cluster,
//! the admin token.

use std::time::Duration;

use serde_json::json;
use wsgate_tests::*;

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn health_and_every_metric_from_start() {
    let node = Node::start("").await;
    assert_eq!(node.get("/healthz").await.0, 200);
    assert_eq!(node.get("/readyz").await.0, 200);
    for name in [
        "wsgate_connections_active",
        "wsgate_connections_total",
        "wsgate_messages_in_total",
        "wsgate_messages_delivered_total",
        "wsgate_publish_to_delivery_seconds_count",
        "wsgate_slow_consumer_closes_total",
        "wsgate_auth_failures_total{reason=\"missing\"}",
        "wsgate_redis_up",
        "wsgate_rooms_active",
        "wsgate_proxy_sessions_active",
        "wsgate_bus_malformed_envelopes_total",
        "wsgate_bus_dropped_total",
    ] {
        let v = node.metric(name).await;
        let expected = if name == "wsgate_redis_up" { 1.0 } else { 0.0 };
        assert_eq!(v, expected, "{name}");
    }
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.request(json!({"action":"join","room":"m","id":1})).await;
    b.send(json!({"action":"publish","room":"m","data":1}))
        .await;
    a.recv().await;
    for (name, expected) in [
        ("wsgate_connections_active", 2.0),
        ("wsgate_connections_total", 2.0),
        ("wsgate_messages_in_total", 2.0),
        ("wsgate_messages_delivered_total", 1.0),
        ("wsgate_publish_to_delivery_seconds_count", 1.0),
        ("wsgate_rooms_active", 1.0),
    ] {
        node.metric_settles(name, expected).await;
    }
}

#[tokio::test]
async fn connections_post_get_delete_and_410() {
    let node = Node::start("").await;
    let mut c = node.connect().await;
    c.request(json!({"action":"join","room":"r1","id":1})).await;
    let url = node.admin_url(&format!("/@connections/{}", c.id()));

    let (status, _) = http_json(http().post(&url).body(r#"{"hello":"world"}"#)).await;
    assert_eq!(status, 200);
    assert_eq!(
        c.recv().await,
        json!({"type":"direct","from":null,"data":{"hello":"world"}})
    );
    let (status, body) = http_json(http().post(&url).body("not json")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));

    let (status, body) = node.get(&format!("/@connections/{}", c.id())).await;
    assert_eq!(status, 200);
    assert_eq!(body["connectionId"], c.id().as_str());
    assert_eq!(body["node"], node.node_id.as_str());
    assert_eq!(body["rooms"], json!(["r1"]));
    assert_eq!(body["identity"]["sourceIp"], "127.0.0.1");
    assert!(body["connectedAt"].as_str().unwrap().ends_with('Z'));
    assert!(body["lastActiveAt"].is_string());

    let (status, _) = http_json(http().delete(&url)).await;
    assert_eq!(status, 204);
    assert_eq!(c.closed().await, Some(4002));
    let mut gone = false;
    for _ in 0..50 {
        if node.get(&format!("/@connections/{}", c.id())).await.0 == 410 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "GET answers 410 after close");
    assert_eq!(http_json(http().post(&url).body("{}")).await.0, 410);
    assert_eq!(http_json(http().delete(&url)).await.0, 410);
}

#[tokio::test]
async fn room_messages_and_members() {
    let node = Node::start("[limits]\nmax_message_bytes = 200\n").await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.request(json!({"action":"join","room":"team/1","id":1}))
        .await;
    b.request(json!({"action":"join","room":"team/1","id":1}))
        .await;
    let url = node.admin_url("/rooms/team%2F1/messages");
    let (status, body) = http_json(
        http()
            .post(&url)
            .header("content-type", "text/plain")
            .body(r#"{"data":{"v":1}}"#),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(body, json!({"offset": null}));
    let expected = json!({"type":"message","room":"team/1","data":{"v":1},"from":null});
    assert_eq!(a.recv().await, expected);
    assert_eq!(b.recv().await, expected);

    assert_eq!(
        http_json(http().post(&url).body(r#"{"nodata":1}"#)).await.0,
        400
    );
    assert_eq!(
        http_json(
            http()
                .post(node.admin_url("/rooms/bad%20room/messages"))
                .body(r#"{"data":1}"#)
        )
        .await
        .0,
        400
    );
    let (status, body) = http_json(
        http()
            .post(&url)
            .body(format!(r#"{{"data":"{}"}}"#, "x".repeat(300))),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (413, Some("too_large")));

    let (status, body) = node.get("/rooms/team%2F1").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"room":"team/1","members":2}));
    let (_, body) = node.get("/rooms/team%2F1?members=true").await;
    let mut ids: Vec<String> = body["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected = vec![a.id(), b.id()];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(
        node.get("/rooms/empty").await.1,
        json!({"room":"empty","members":0})
    );
}

#[tokio::test]
async fn sessions_and_cluster() {
    let config = "[auth]\njwt_secret = \"s\"\n";
    let node = Node::start(config).await;
    let token = mint_token(config, "dora", None, "1h").unwrap();
    let mut a = connect_bearer(&node, &token).await.unwrap();
    let _b = connect_bearer(&node, &token).await.unwrap();
    a.request(json!({"action":"join","room":"x","id":1})).await;
    let (status, body) = node.get("/sessions").await;
    assert_eq!(status, 200);
    let sessions = body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let s = sessions
        .iter()
        .find(|s| s["id"] == a.id().as_str())
        .unwrap();
    assert_eq!(s["kind"], "room");
    assert_eq!(s["path"], "/ws");
    assert!(s["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(s["connected_at"].is_string());
    assert_eq!(s["sub"], "dora");
    assert!(
        s["upstream"].is_null(),
        "a room session has no upstream: {s}"
    );

    let (status, body) = node.get("/cluster").await;
    assert_eq!(status, 200);
    assert_eq!(body["connections_total"], 2);
    assert_eq!(body["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(body["nodes"][0]["id"], node.node_id.as_str());
    assert_eq!(body["nodes"][0]["connections"], 2);
    assert_eq!(body["nodes"][0]["rooms"], 1);
    assert!(body["nodes"][0]["last_seen"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
}

#[tokio::test]
async fn admin_token_guards_everything_but_health() {
    let node = Node::start("[admin]\ntoken = \"adm1n\"\n").await;
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            http()
                .get(node.admin_url(open))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{open}"
        );
    }
    let (status, body) = node.get("/cluster").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = http_json(http().get(node.admin_url("/cluster")).bearer_auth("wrong")).await;
    assert_eq!(status, 401);
    let (status, _) = http_json(http().get(node.admin_url("/cluster")).bearer_auth("adm1n")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn non_loopback_admin_without_token_refuses_to_start() {
    let (status, _, err) = run_cli(
        &["--admin-listen", "0.0.0.0:0", "--listen", "127.0.0.1:0"],
        &[],
    );
    assert!(!status.success());
    assert!(err.contains("admin.token"), "{err}");
}

#[tokio::test]
async fn admin_insecure_allows_a_non_loopback_admin_listener() {
    let node = Node::start_with(NodeOptions {
        config: "[admin]\ninsecure = true\n".into(),
        env: vec![],
        args: vec!["--admin-listen".into(), "0.0.0.0:0".into()],
    })
    .await;
    assert!(node.admin.ip().is_unspecified(), "{}", node.admin);
    let (status, _) =
        http_json(http().get(format!("http://127.0.0.1:{}/sessions", node.admin.port()))).await;
    assert_eq!(status, 200, "no token asked for");
}
