//! SPEC section 3: refusals before the upgrade, in order, with JSON bodies; subprotocols;
//! tokens from every source.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use wsgate_tests::*;

const AUTH: &str = "[auth]\njwt_secret = \"test-secret\"\n";

#[tokio::test]
async fn subprotocol_negotiation() {
    let node = Node::start("").await;
    let c = connect_protocols(&node, "wsgate.v1.json").await.unwrap();
    assert_eq!(c.protocol.as_deref(), Some("wsgate.v1.json"));
    let c = connect_protocols(&node, "x-unknown, wsgate.v1.msgpack, wsgate.v1.json")
        .await
        .unwrap();
    assert_eq!(
        c.protocol.as_deref(),
        Some("wsgate.v1.msgpack"),
        "first known one wins"
    );
    let (status, body, _) = refusal(connect_protocols(&node, "graphql-ws").await.err().unwrap());
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_request");
}

#[tokio::test]
async fn plain_http_and_other_paths() {
    let node = Node::start("").await;
    let (status, body) =
        http_json(reqwest::Client::new().get(format!("http://{}/ws", node.client))).await;
    assert_eq!(status, 426);
    assert_eq!(body["error"], "bad_request");
    let (status, body) =
        http_json(reqwest::Client::new().get(format!("http://{}/other", node.client))).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn origin_is_checked_when_configured() {
    let node = Node::start("[server]\nallowed_origins = [\"https://app.example\"]\n").await;
    let with_origin = |o: &'static str| {
        move |r: &mut tokio_tungstenite::tungstenite::http::Request<()>| {
            r.headers_mut()
                .insert("origin", HeaderValue::from_static(o));
        }
    };
    assert!(node
        .connect_req(with_origin("https://app.example"))
        .await
        .is_ok());
    let (status, body, _) = refusal(
        node.connect_req(with_origin("https://evil.example"))
            .await
            .err()
            .unwrap(),
    );
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert!(
        node.connect_req(|_| {}).await.is_ok(),
        "no Origin: non-browser client"
    );
}

#[tokio::test]
async fn tokens_from_header_query_and_cookie() {
    // A token cookie without an origin list is cross-site WebSocket hijacking: refused.
    let refused = start_refused(
        &[],
        &[
            ("WSGATE_AUTH__JWT_SECRET", "s"),
            ("WSGATE_AUTH__COOKIE", "sess"),
        ],
    );
    assert!(
        refused.contains("auth.cookie") && refused.contains("allowed_origins"),
        "{refused}"
    );
    let config =
        format!("[server]\nallowed_origins = [\"https://app.example\"]\n{AUTH}cookie = \"sess\"\n");
    let node = Node::start(&config).await;
    let token = mint_token(&config, "alice", None, "1h").unwrap();
    assert!(connect_bearer(&node, &token).await.is_ok());
    let url = format!("{}?access_token={token}", node.ws_url());
    assert!(Client::connect(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap()
    )
    .await
    .is_ok());
    let t = token.clone();
    assert!(node
        .connect_req(move |r| {
            r.headers_mut().insert(
                "cookie",
                HeaderValue::from_str(&format!("a=b; sess={t}")).unwrap(),
            );
            r.headers_mut()
                .insert("origin", HeaderValue::from_static("https://app.example"));
        })
        .await
        .is_ok());
    // The cookie from another site's page: the browser sends it, the origin check refuses.
    let t = token.clone();
    let (status, _, _) = refusal(
        node.connect_req(move |r| {
            r.headers_mut().insert(
                "cookie",
                HeaderValue::from_str(&format!("sess={t}")).unwrap(),
            );
            r.headers_mut()
                .insert("origin", HeaderValue::from_static("https://evil.example"));
        })
        .await
        .err()
        .unwrap(),
    );
    assert_eq!(status, 403);
    // The identity is visible to the management API.
    let c = connect_bearer(&node, &token).await.unwrap();
    let (status, body) = node.get(&format!("/@connections/{}", c.id())).await;
    assert_eq!(status, 200);
    assert_eq!(body["identity"]["sub"], "alice");
}

#[tokio::test]
async fn bad_tokens_are_401_and_counted() {
    let node = Node::start(AUTH).await;
    let (status, body, _) = refusal(node.connect_req(|_| {}).await.err().unwrap());
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let wrong = mint_token("[auth]\njwt_secret = \"other\"\n", "x", None, "1h").unwrap();
    let (status, _, _) = refusal(connect_bearer(&node, &wrong).await.err().unwrap());
    assert_eq!(status, 401);
    let (status, body, _) = refusal(connect_bearer(&node, "not.a.jwt").await.err().unwrap());
    assert_eq!(status, 401);
    assert!(!body["message"].as_str().unwrap().is_empty());
    let none_alg = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    assert_eq!(
        refusal(connect_bearer(&node, none_alg).await.err().unwrap()).0,
        401
    );
    node.metric_settles("wsgate_auth_failures_total{reason=\"missing\"}", 1.0)
        .await;
    node.metric_settles("wsgate_auth_failures_total{reason=\"invalid\"}", 3.0)
        .await;
}

#[tokio::test]
async fn rooms_claim_and_default_policy() {
    let config = format!("{AUTH}default_room_policy = \"deny\"\n");
    let node = Node::start(&config).await;
    let scoped = mint_token(&config, "u", Some("chat:*,lobby"), "1h").unwrap();
    let mut c = connect_bearer(&node, &scoped).await.unwrap();
    assert_eq!(
        c.request(json!({"action":"join","room":"chat:9","id":1}))
            .await["type"],
        "ack"
    );
    assert_eq!(
        c.request(json!({"action":"join","room":"lobby","id":2}))
            .await["type"],
        "ack"
    );
    assert_eq!(
        c.request(json!({"action":"join","room":"admin","id":3}))
            .await["code"],
        "forbidden"
    );
    assert_eq!(
        c.request(json!({"action":"publish","room":"admin","data":1,"id":4}))
            .await["code"],
        "forbidden"
    );
    let unscoped = mint_token(&config, "v", None, "1h").unwrap();
    let mut d = connect_bearer(&node, &unscoped).await.unwrap();
    assert_eq!(
        d.request(json!({"action":"join","room":"chat:9","id":1}))
            .await["code"],
        "forbidden"
    );
}

#[tokio::test]
async fn node_full_and_per_ip_limits() {
    let node = Node::start("[limits]\nmax_connections = 2\n").await;
    let _a = node.connect().await;
    let _b = node.connect().await;
    let (status, body, retry) = refusal(node.connect_req(|_| {}).await.err().unwrap());
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    assert!(retry.is_some(), "503 carries Retry-After");
    drop(_a);
    // The slot frees once the server sees the close.
    let mut ok = false;
    for _ in 0..50 {
        if node.connect_req(|_| {}).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot frees when a connection closes");

    let node = Node::start("[limits]\nmax_connections_per_ip = 1\n").await;
    let _a = node.connect().await;
    let (status, body, _) = refusal(node.connect_req(|_| {}).await.err().unwrap());
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited"))
    );
}

#[tokio::test]
async fn refusal_order_full_before_origin_before_protocol_before_token() {
    let config = format!(
        "[server]\nallowed_origins = [\"https://ok\"]\n[limits]\nmax_connections = 1\n{AUTH}"
    );
    let node = Node::start(&config).await;
    let bad = |r: &mut tokio_tungstenite::tungstenite::http::Request<()>| {
        r.headers_mut()
            .insert("origin", HeaderValue::from_static("https://bad"));
        r.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("nope"));
    };
    assert_eq!(
        refusal(node.connect_req(bad).await.err().unwrap()).0,
        403,
        "origin before protocol and token"
    );
    let proto = |r: &mut tokio_tungstenite::tungstenite::http::Request<()>| {
        r.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("nope"));
    };
    // The refused connection holds the node's one slot until the node sees it closed.
    let mut status = 503;
    for _ in 0..50 {
        status = refusal(node.connect_req(proto).await.err().unwrap()).0;
        if status != 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, 400, "protocol before token");
    let token = mint_token(&config, "u", None, "1h").unwrap();
    let mut held = None;
    for _ in 0..50 {
        if let Ok(c) = connect_bearer(&node, &token).await {
            held = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _held = held.expect("the slot frees once the refused connections close");
    assert_eq!(
        refusal(node.connect_req(bad).await.err().unwrap()).0,
        503,
        "full before everything"
    );
}

#[tokio::test]
async fn refusal_order_draining_before_per_ip_before_origin() {
    let config = "[server]\nallowed_origins = [\"https://ok\"]\ndrain_delay = \"5s\"\n[limits]\nmax_connections_per_ip = 1\n";
    let node = Node::start(config).await;
    let _held = node.connect().await;
    let bad_origin = |r: &mut tokio_tungstenite::tungstenite::http::Request<()>| {
        r.headers_mut()
            .insert("origin", HeaderValue::from_static("https://bad"));
    };
    assert_eq!(
        refusal(node.connect_req(bad_origin).await.err().unwrap()).0,
        429,
        "per-IP limit before origin"
    );
    node.signal("TERM");
    eventually("draining", || async { node.get("/readyz").await.0 == 503 }).await;
    let (status, body, retry_after) = refusal(node.connect_req(bad_origin).await.err().unwrap());
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("unavailable")),
        "draining before the per-IP limit"
    );
    assert!(retry_after.is_some(), "503 carries Retry-After");
}

#[tokio::test]
async fn expired_tokens_the_jwt_parameter_and_no_token_in_logs() {
    let config = format!("{AUTH}leeway = \"0s\"\n");
    let node = Node::start_with(NodeOptions {
        config: config.clone(),
        env: vec![("RUST_LOG".into(), "trace".into())],
        args: vec![],
    })
    .await;
    let token = mint_token(&config, "carol", None, "1h").unwrap();
    let short = mint_token(&config, "carol", None, "1s").unwrap();
    let url = format!("{}?jwt={token}", node.ws_url());
    let mut c = Client::connect(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap(),
    )
    .await
    .expect("a token in the jwt query parameter is accepted");
    c.request(json!({"action":"refresh","token":token,"id":1}))
        .await;

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body, _) = refusal(connect_bearer(&node, &short).await.err().unwrap());
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    node.metric_settles("wsgate_auth_failures_total{reason=\"expired\"}", 1.0)
        .await;

    // The harness reads the node's stderr on a thread of its own: wait for the line.
    eventually("verbose logging is on and saw the refusal", || {
        let logs = node.logs().join("\n");
        async move { logs.contains("handshake refused") && logs.contains("expired") }
    })
    .await;
    let logs = node.logs().join("\n");
    for secret in [&token, &short, &"test-secret".to_owned()] {
        assert!(!logs.contains(secret.as_str()), "a secret was logged");
        // Nor the signature alone (a token split over fields).
        let sig = secret.rsplit('.').next().unwrap();
        assert!(!logs.contains(sig), "a token signature was logged");
    }
}

#[tokio::test]
async fn node_id_flag_names_the_node() {
    let node = Node::start_with(NodeOptions {
        config: String::new(),
        env: vec![],
        args: vec!["--node-id".into(), "edge-7".into()],
    })
    .await;
    assert_eq!(node.node_id, "edge-7");
    let c = node.connect().await;
    assert_eq!(c.welcome["node"], "edge-7");
    let (_, body) = node.get("/cluster").await;
    assert_eq!(body["nodes"][0]["id"], "edge-7", "{body}");
}
