//! SPEC section 6, client frames: route selection and HTTP integrations against a real HTTP
//! backend on loopback that records what it receives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use wsgate_tests::*;

/// An HTTP backend: records each request's path and JSON body; answers by path.
struct Backend {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut tcp, &mut Vec::new()).await else {
                        return;
                    };
                    let path = request.path;
                    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                    record.lock().unwrap().push((path.clone(), body.clone()));
                    let (status, answer) = match path.as_str() {
                        "/echo" => ("200 OK", json!({"got": body["body"]}).to_string()),
                        "/text" => ("200 OK", "plain words".to_owned()),
                        "/ok" | "/disconnect" => ("204 No Content", String::new()),
                        "/connect-ok" => (
                            "200 OK",
                            json!({"rooms": ["a", "b", "not a room!"]}).to_string(),
                        ),
                        "/connect-deny" => ("403 Forbidden", "{}".to_owned()),
                        "/huge" => ("200 OK", format!("\"{}\"", "h".repeat(300_000))),
                        "/fail" => ("500 Internal Server Error", "{}".to_owned()),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            ("200 OK", "{}".to_owned())
                        }
                        _ => ("404 Not Found", "{}".to_owned()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = tcp.write_all(resp.as_bytes()).await;
                });
            }
        });
        Backend { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<(String, Value)> {
        self.seen.lock().unwrap().clone()
    }
}

fn routes(b: &Backend, default: bool) -> String {
    let mut c = format!(
        "[routes.custom.echo]\nurl = \"{}\"\nresponse = true\n\
         [routes.custom.text]\nurl = \"{}\"\nresponse = true\n\
         [routes.custom.fire]\nurl = \"{}\"\n\
         [routes.custom.broken]\nurl = \"{}\"\n\
         [routes.custom.slow]\nurl = \"{}\"\ntimeout = \"300ms\"\n\
         [routes.custom.huge]\nurl = \"{}\"\nresponse = true\n",
        b.url("/echo"),
        b.url("/text"),
        b.url("/ok"),
        b.url("/fail"),
        b.url("/slow"),
        b.url("/huge"),
    );
    if default {
        c.push_str(&format!("[routes.default]\nurl = \"{}\"\n", b.url("/ok")));
    }
    c
}

#[tokio::test]
async fn custom_routes_answer_ack_or_fail_and_the_backend_gets_the_request_context() {
    let backend = Backend::start().await;
    let node = Node::start(&routes(&backend, false)).await;
    let mut c = node.connect().await;

    let frame = json!({"action":"echo","id":1,"payload":{"n":5}});
    let answer = c.request(frame.clone()).await;
    assert_eq!(answer["type"], "route_response");
    assert_eq!(answer["route"], "echo");
    assert_eq!(answer["data"], json!({"got": frame}));
    let (path, req) = backend.seen().last().cloned().unwrap();
    assert_eq!(path, "/echo");
    let ctx = &req["requestContext"];
    assert_eq!(ctx["routeKey"], "echo");
    assert_eq!(ctx["eventType"], "MESSAGE");
    assert_eq!(ctx["connectionId"], c.welcome["connection_id"]);
    assert_eq!(ctx["nodeId"], node.node_id.as_str());
    assert!(ctx["requestId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(ctx["connectedAt"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    assert_eq!(ctx["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(req["body"], frame);

    let text = c.request(json!({"action":"text","id":"t"})).await;
    assert_eq!(
        (text["type"].as_str(), text["data"].as_str()),
        (Some("route_response"), Some("plain words"))
    );
    assert_eq!(
        c.request(json!({"action":"fire","id":2})).await["type"],
        "ack"
    );
    let failed = c.request(json!({"action":"broken","id":3})).await;
    assert_eq!(
        (failed["type"].as_str(), failed["code"].as_str()),
        (Some("error"), Some("integration_failed"))
    );
    // An answer over limits.max_message_bytes is not read whole: the call fails.
    let huge = c.request(json!({"action":"huge","id":"h"})).await;
    assert_eq!(huge["code"], "integration_failed");
    let unknown = c.request(json!({"action":"nope","id":4})).await;
    assert_eq!(unknown["code"], "unknown_action");
    let keyless = c.request(json!({"id":5,"action":{"not":"a key"}})).await;
    assert_eq!(keyless["code"], "bad_request");
}

#[tokio::test]
async fn a_slow_integration_blocks_no_other_frame_and_times_out() {
    let backend = Backend::start().await;
    let node = Node::start(&routes(&backend, false)).await;
    let mut c = node.connect().await;
    let start = std::time::Instant::now();
    c.send(json!({"action":"slow","id":"s"})).await;
    assert_eq!(
        c.request(json!({"action":"ping","id":"p"})).await["type"],
        "pong"
    );
    assert!(
        start.elapsed() < Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    let answer = c.request(json!({"action":"ping","id":"wait"})).await;
    assert_eq!(answer["type"], "pong");
    let failed = loop {
        let f = c.recv().await;
        if f["id"] == "s" {
            break f;
        }
    };
    assert_eq!(failed["code"], "integration_failed");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the route's timeout: {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn unknown_and_keyless_frames_go_to_default_when_configured() {
    let backend = Backend::start().await;
    let node = Node::start(&routes(&backend, true)).await;
    let mut c = node.connect().await;
    assert_eq!(
        c.request(json!({"action":"nope","id":1})).await["type"],
        "ack"
    );
    assert_eq!(c.request(json!({"id":2})).await["type"], "ack");
    let keys: Vec<_> = backend
        .seen()
        .iter()
        .map(|(_, r)| r["requestContext"]["routeKey"].clone())
        .collect();
    assert_eq!(keys, vec![json!("$default"), json!("$default")]);
    // Built-in actions are never routed.
    assert_eq!(
        c.request(json!({"action":"ping","id":3})).await["type"],
        "pong"
    );
    assert_eq!(backend.seen().len(), 2);
}

fn connect_config(b: &Backend, connect_path: &str) -> String {
    format!(
        "[auth]\njwt_secret = \"s\"\n\
         [routes.connect]\nurl = \"{}\"\n\
         [routes.disconnect]\nurl = \"{}\"\n",
        b.url(connect_path),
        b.url("/disconnect"),
    )
}

#[tokio::test]
async fn connect_joins_the_rooms_it_names_and_disconnect_gets_the_close() {
    let backend = Backend::start().await;
    let config = connect_config(&backend, "/connect-ok");
    let node = Node::start(&config).await;
    let token = mint_token(&config, "alice", None, "1h").unwrap();
    let url = format!("{}?jwt={token}&room=lobby", node.ws_url());
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    req.headers_mut().insert("x-trace", "t1".parse().unwrap());
    let mut c = Client::connect(req).await.unwrap();
    // Joined before the welcome: the management API shows the rooms at once.
    let (_, view) = node.get(&format!("/@connections/{}", c.id())).await;
    let mut rooms: Vec<_> = view["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    rooms.sort();
    assert_eq!(rooms, ["a", "b"]);
    let (path, req) = backend.seen()[0].clone();
    assert_eq!(path, "/connect-ok");
    let ctx = &req["requestContext"];
    assert_eq!(
        (ctx["routeKey"].as_str(), ctx["eventType"].as_str()),
        (Some("$connect"), Some("CONNECT"))
    );
    assert_eq!(
        ctx["connectionId"], c.welcome["connection_id"],
        "the id the welcome gives"
    );
    assert_eq!(ctx["identity"]["sub"], "alice");
    assert_eq!(ctx["identity"]["claims"]["sub"], "alice");
    assert_eq!(req["headers"]["x-trace"], "t1");
    assert_eq!(
        req["queryStringParameters"],
        json!({"room": "lobby"}),
        "the token is not forwarded"
    );
    assert!(!req["headers"]
        .as_object()
        .unwrap()
        .contains_key("authorization"));

    // A client close reaches $disconnect with its code.
    c.ws.close(None).await.unwrap();
    eventually("$disconnect after a client close", || async {
        backend
            .seen()
            .iter()
            .any(|(p, r)| p == "/disconnect" && r["requestContext"]["disconnectStatusCode"] == 1005)
    })
    .await;
    // And a server-side close with its code: 4002 through the management API.
    let c2 = connect_bearer(&node, &token).await.unwrap();
    let status = reqwest::Client::new()
        .delete(node.admin_url(&format!("/@connections/{}", c2.id())))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    eventually("$disconnect after a 4002", || async {
        backend.seen().iter().any(|(p, r)| {
            p == "/disconnect"
                && r["requestContext"]["disconnectStatusCode"] == 4002
                && r["requestContext"]["eventType"] == "DISCONNECT"
        })
    })
    .await;
}

#[tokio::test]
async fn connect_refusals_pass_their_status_and_an_unreachable_one_is_502() {
    let backend = Backend::start().await;
    let config = connect_config(&backend, "/connect-deny");
    let node = Node::start(&config).await;
    let token = mint_token(&config, "bob", None, "1h").unwrap();
    let (status, body, _) = refusal(connect_bearer(&node, &token).await.err().unwrap());
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    // A token is still checked first: no token, no $connect call.
    let calls = backend.seen().len();
    let (status, _, _) = refusal(node.connect_req(|_| {}).await.err().unwrap());
    assert_eq!(status, 401);
    assert_eq!(backend.seen().len(), calls);

    let port = free_port();
    let config = format!(
        "[auth]\njwt_secret = \"s\"\n[routes.connect]\nurl = \"http://127.0.0.1:{port}/connect\"\n"
    );
    let node = Node::start(&config).await;
    let (status, body, _) = refusal(connect_bearer(&node, &token).await.err().unwrap());
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("integration_failed"))
    );
}

#[tokio::test]
async fn the_token_cookie_is_not_forwarded_to_connect() {
    let backend = Backend::start().await;
    let config = format!(
        "[server]\nallowed_origins = [\"https://app.example\"]\n\
         [auth]\njwt_secret = \"s\"\ncookie = \"sess\"\n\
         [routes.connect]\nurl = \"{}\"\n",
        backend.url("/connect-ok")
    );
    let node = Node::start(&config).await;
    let token = mint_token(&config, "carol", None, "1h").unwrap();
    let c = node
        .connect_req(move |r| {
            r.headers_mut().insert(
                "cookie",
                format!("theme=dark; sess={token}; lang=en")
                    .parse()
                    .unwrap(),
            );
            r.headers_mut()
                .insert("origin", "https://app.example".parse().unwrap());
        })
        .await
        .unwrap();
    assert_eq!(c.welcome["type"], "welcome");
    let (_, req) = backend.seen()[0].clone();
    assert_eq!(req["headers"]["cookie"], "theme=dark; lang=en");
    assert_eq!(req["requestContext"]["identity"]["sub"], "carol");
}
