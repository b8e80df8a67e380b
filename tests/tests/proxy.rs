//! SPEC section 9: the WebSocket reverse proxy against real upstreams on loopback (echo,
//! subprotocol-choosing, silent, never reading, flooding, dropping, refusing), with real
//! clients: tokio-tungstenite ones, and a raw one for the frames a library would not send.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsgate_tests::*;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A node proxying `/ws/chat` to `upstreams` with `extra` keys in the entry.
fn config(upstreams: &[String], extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[[proxy]]\npath = \"/ws/chat\"\nupstreams = [{}]\nconnect_timeout = \"500ms\"\n{extra}\n",
        list.join(", ")
    )
}

async fn connect(node: &Node, path: &str) -> Result<(Ws, Option<String>), WsError> {
    let req = format!("ws://{}{path}", node.client).into_client_request()?;
    connect_req(req).await
}

async fn connect_req(
    req: tokio_tungstenite::tungstenite::http::Request<()>,
) -> Result<(Ws, Option<String>), WsError> {
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    let protocol = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((ws, protocol))
}

/// The next message that is not a ping or pong.
async fn next(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return other,
        }
    }
}

/// Reads until the close frame: its code and reason (`None` when the stream ended without).
/// Then reads on to the end, as a client does, so that tungstenite sends its answer.
async fn close_of(ws: &mut Ws) -> Option<(u16, String)> {
    let close = loop {
        match next(ws).await {
            Some(Ok(Message::Close(Some(f)))) => {
                break Some((u16::from(f.code), f.reason.to_string()))
            }
            Some(Ok(Message::Close(None))) => break Some((1005, String::new())),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    };
    let _ = tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
    close
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    match next(ws).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

/// A client writing and reading raw frames.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The handshake answer's status line and headers.
    head: String,
}

impl Raw {
    /// Connects and completes the handshake for `path`; panics unless it gets 101.
    async fn connect(node: &Node, path: &str) -> Raw {
        Raw::connect_with(node, path, "").await
    }

    /// Connects with `extra` header lines.
    async fn connect_with(node: &Node, path: &str, extra: &str) -> Raw {
        let mut tcp = TcpStream::connect(node.client).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
            node.client
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
            head: String::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..end);
        raw.head = head;
        raw
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("bytes from the node")
            .unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    async fn send(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut f = vec![first];
        let m = if masked { 0x80 } else { 0 };
        if payload.len() < 126 {
            f.push(m | payload.len() as u8);
        } else {
            f.push(m | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        let key = [9u8, 8, 7, 6];
        if masked {
            f.extend_from_slice(&key);
        }
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b }),
        );
        self.tcp.write_all(&f).await.unwrap();
    }

    /// The next frame: first byte and payload; `None` when the stream ended.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let len = (self.buf[1] & 0x7F) as usize;
                let (hl, len) = match len {
                    126 if self.buf.len() >= 4 => {
                        (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
                    }
                    126 => (usize::MAX, 0),
                    n => (2, n),
                };
                if hl != usize::MAX && self.buf.len() >= hl + len {
                    let first = self.buf[0];
                    let payload = self.buf[hl..hl + len].to_vec();
                    self.buf.drain(..hl + len);
                    return Some((first, payload));
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Reads frames until a close: its code.
    async fn close_code(&mut self) -> Option<u16> {
        self.close().await.map(|c| c.0)
    }

    /// Reads frames until a close: its code and reason. (1014 is read here rather than
    /// with tungstenite, which takes that registered code for a protocol error.)
    async fn close(&mut self) -> Option<(u16, String)> {
        while let Some((first, payload)) = self.frame().await {
            if first & 0x0F == 8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return Some((code, String::from_utf8(payload[2..].to_vec()).unwrap()));
            }
        }
        None
    }
}

#[tokio::test]
async fn paths_match_at_segment_boundaries_and_strip_like_kong() {
    let up = Upstream::start(Behaviour::Echo).await;
    let conf = format!(
        "{}\n[[proxy]]\npath = \"/ws/chat/admin\"\nupstreams = [{:?}]\nstrip_path = false\n",
        config(&[up.url("/chat")], ""),
        up.url("/adm")
    );
    let node = Node::start(&conf).await;

    let (mut ws, _) = connect(&node, "/ws/chat/room1?x=1&jwt=t").await.unwrap();
    echo(&mut ws, "hello").await;
    assert_eq!(up.last_seen().target, "/chat/room1?x=1&jwt=t");

    let (mut ws2, _) = connect(&node, "/ws/chat/admin/x").await.unwrap();
    echo(&mut ws2, "longest prefix").await;
    assert_eq!(up.last_seen().target, "/adm/ws/chat/admin/x");

    for path in ["/ws/chatroom", "/elsewhere", "/ws/x"] {
        let (status, _, _) = refusal(connect(&node, path).await.unwrap_err());
        assert_eq!(status, 404, "{path}");
    }
    // server.path stays the gateway's, matched exactly.
    let gateway = node.connect().await;
    assert_eq!(gateway.welcome["type"], "welcome");
    // A dot segment would leave the upstream's path.
    for sneaky in [
        "/ws/chat/%2e%2e/secret",
        "/ws/chat/..;/secret",
        "/ws/chat/..%2fsecret",
    ] {
        let (status, body, _) = refusal(connect(&node, sneaky).await.unwrap_err());
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{sneaky}"
        );
    }
}

#[tokio::test]
async fn headers_query_and_identity_are_forwarded() {
    let up = Upstream::start(Behaviour::Echo).await;
    let conf = format!(
        "[auth]\njwt_secret = \"proxy-secret-proxy-secret-proxy!\"\n{}",
        config(&[up.url("/chat")], "auth = \"jwt\"")
    );
    let token = mint_token(&conf, "alice", None, "1h").unwrap();
    let node = Node::start(&conf).await;

    // No token: refused before the upstream is touched.
    let (status, _, _) = refusal(connect(&node, "/ws/chat").await.unwrap_err());
    assert_eq!(status, 401);
    assert_eq!(up.seen.lock().unwrap().len(), 0);

    let mut req = format!("ws://{}/ws/chat/r?a=b", node.client)
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    h.insert("x-wsgate-sub", "mallory".parse().unwrap());
    h.insert("x-custom", "kept".parse().unwrap());
    h.insert("x-wsgate_sub", "mallory".parse().unwrap());
    h.insert("forwarded", "for=203.0.113.9".parse().unwrap());
    let (mut ws, _) = connect_req(req).await.unwrap();
    echo(&mut ws, "hi").await;
    let seen = up.last_seen();
    assert_eq!(seen.target, "/chat/r?a=b");
    let hdr = |k: &str| seen.headers.get(k).cloned();
    assert_eq!(
        hdr("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(hdr("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(hdr("x-forwarded-host"), Some(node.client.to_string()));
    assert_eq!(hdr("x-wsgate-sub").as_deref(), Some("alice"));
    assert_eq!(hdr("x-custom").as_deref(), Some("kept"));
    // An underscore spelling of a vouched-for header, and `Forwarded`, do not pass.
    assert_eq!(hdr("x-wsgate_sub"), None);
    assert_eq!(hdr("forwarded"), None);
    assert_eq!(hdr("host"), Some(up.addr.to_string()));

    let (_, sessions) = node.get("/sessions").await;
    let s = &sessions["sessions"][0];
    assert_eq!(s["kind"], "proxy");
    assert_eq!(s["path"], "/ws/chat/r");
    assert_eq!(s["sub"], "alice");
    assert_eq!(s["upstream"], Value::String(up.url("/chat")));
    assert_eq!(hdr("x-wsgate-connection-id").as_deref(), s["id"].as_str());
}

#[tokio::test]
async fn a_sub_with_a_line_break_writes_no_header_of_its_own() {
    let up = Upstream::start(Behaviour::Echo).await;
    let conf = format!(
        "[auth]\njwt_secret = \"proxy-secret-proxy-secret-proxy!\"\n{}",
        config(&[up.url("/")], "")
    );
    let token = mint_token(&conf, "bob\r\nX-Evil: 1", None, "1h").unwrap();
    let node = Node::start(&conf).await;
    let mut req = format!("ws://{}/ws/chat", node.client)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = connect_req(req).await.unwrap();
    echo(&mut ws, "hi").await;
    let seen = up.last_seen();
    assert!(!seen.headers.contains_key("x-evil"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("x-wsgate-sub"));
}

#[tokio::test]
async fn an_upstream_refusing_the_client_is_heard_and_stays_healthy() {
    let forbid = Upstream::start(Behaviour::Forbid).await;
    let echo_up = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&config(&[forbid.url("/"), echo_up.url("/")], "")).await;
    // Round robin starts at the first: its 403 reaches the client, and the other is not asked.
    let (status, body, _) = refusal(connect(&node, "/ws/chat").await.unwrap_err());
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(echo_up.seen.lock().unwrap().len(), 0);
    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    echo(&mut ws, "second goes to the other").await;
    // A refusal is not a failure: the first is not resting, and its turn comes again.
    let (status, _, _) = refusal(connect(&node, "/ws/chat").await.unwrap_err());
    assert_eq!(status, 403);
    assert_eq!(forbid.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn auth_none_needs_no_token_and_the_upstream_chooses_the_subprotocol() {
    let up = Upstream::start(Behaviour::ChooseSecond).await;
    let conf = format!(
        "[auth]\njwt_secret = \"proxy-secret-proxy-secret-proxy!\"\n{}",
        config(&[up.url("/")], "auth = \"none\"")
    );
    let node = Node::start(&conf).await;
    let mut req = format!("ws://{}/ws/chat", node.client)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "mqtt, graphql-ws".parse().unwrap(),
    );
    let (mut ws, protocol) = connect_req(req).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("graphql-ws"));
    assert!(!up.last_seen().headers.contains_key("x-wsgate-sub"));
    echo(&mut ws, "anonymous").await;
    // Relayed messages count as messages in (from the client) and delivered (to it).
    node.metric_settles("wsgate_messages_in_total", 1.0).await;
    node.metric_settles("wsgate_messages_delivered_total", 1.0)
        .await;
}

#[tokio::test]
async fn frames_pass_as_they_are_fragments_binary_and_pings() {
    let up = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&config(&[up.url("/")], "")).await;
    let mut raw = Raw::connect(&node, "/ws/chat").await;
    // Fragmented text from the client, with a ping between the fragments.
    raw.send(0x01, b"he", true).await;
    raw.send(0x89, b"p1", true).await;
    raw.send(0x80, "llo ✓".as_bytes(), true).await;
    // The upstream's pong and its echo (tungstenite reassembles, then echoes whole).
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(raw.frame().await.unwrap());
    }
    assert!(got.contains(&(0x8A, b"p1".to_vec())), "{got:?}");
    assert!(
        got.contains(&(0x81, "hello ✓".as_bytes().to_vec())),
        "{got:?}"
    );
    // Binary, unchanged.
    raw.send(0x82, &[0, 159, 255, 1], true).await;
    assert_eq!(raw.frame().await.unwrap(), (0x82, vec![0, 159, 255, 1]));
    // The upstream's fragments reach the client as fragments.
    raw.send(0x81, b"frag", true).await;
    assert_eq!(raw.frame().await.unwrap(), (0x01, b"fr".to_vec()));
    assert_eq!(raw.frame().await.unwrap(), (0x80, b"ag".to_vec()));
    // A large binary message (several reads) arrives whole.
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    raw.send(0x82, &big, true).await;
    assert_eq!(raw.frame().await.unwrap(), (0x82, big));
}

#[tokio::test]
async fn close_codes_pass_both_ways_and_1005_becomes_1000() {
    let up = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&config(&[up.url("/")], "")).await;

    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4321),
        reason: "client bye".into(),
    })))
    .await
    .unwrap();
    assert_eq!(
        up.close_received(1).await,
        (Some(4321), "client bye".into())
    );
    // The upstream's answer comes back, and the session ends then, not at a timeout.
    assert_eq!(close_of(&mut ws).await.map(|c| c.0), Some(4321));
    let closing = Instant::now();
    node.metric_settles("wsgate_proxy_sessions_active", 0.0)
        .await;
    assert!(
        closing.elapsed() < Duration::from_secs(2),
        "{:?}",
        closing.elapsed()
    );

    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    ws.send(Message::Close(None)).await.unwrap();
    assert_eq!(up.close_received(2).await, (Some(1000), String::new()));

    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    ws.send(Message::text("close:4100:upstream says bye"))
        .await
        .unwrap();
    assert_eq!(
        close_of(&mut ws).await,
        Some((4100, "upstream says bye".into()))
    );

    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    ws.send(Message::text("close-empty")).await.unwrap();
    assert_eq!(close_of(&mut ws).await, Some((1000, String::new())));
    node.metric_settles("wsgate_proxy_sessions_active", 0.0)
        .await;
}

#[tokio::test]
async fn a_lost_end_gives_the_other_1014_or_1001() {
    let up = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&config(&[up.url("/")], "")).await;

    let mut raw = Raw::connect(&node, "/ws/chat").await;
    raw.send(0x81, b"drop", true).await;
    let (code, reason) = raw.close().await.unwrap();
    assert_eq!(code, 1014);
    // Named by its place in the list: its address is the operator's business.
    assert!(reason.starts_with("upstream 1 lost"), "{reason}");
    assert!(!reason.contains(&up.addr.port().to_string()), "{reason}");

    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    echo(&mut ws, "about to vanish").await;
    drop(ws);
    let seen = up.close_received(1).await;
    assert_eq!(seen.0, Some(1001), "{seen:?}");
}

#[tokio::test]
async fn no_reachable_upstream_completes_the_handshake_then_closes_1014() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let silent = Upstream::start(Behaviour::Silent).await;
    let urls = [format!("ws://{refused}/"), silent.url("/")];
    let node = Node::start(&config(&urls, "")).await;
    let started = Instant::now();
    let mut raw = Raw::connect_with(
        &node,
        "/ws/chat",
        "Sec-WebSocket-Protocol: first, second\r\n",
    )
    .await;
    assert!(
        raw.head
            .to_lowercase()
            .contains("sec-websocket-protocol: first\r\n"),
        "{}",
        raw.head
    );
    let (code, reason) = raw.close().await.unwrap();
    assert_eq!(code, 1014);
    assert!(reason.len() <= 123);
    assert!(reason.contains("no upstream reachable"), "{reason}");
    // Both were tried: the refusal fast, the silent one until connect_timeout.
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(silent.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn round_robin_failover_and_passive_health() {
    let silent = Upstream::start(Behaviour::Silent).await;
    let a = Upstream::start(Behaviour::Echo).await;
    let b = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&config(&[silent.url("/"), a.url("/"), b.url("/")], "")).await;
    let mut held = Vec::new();
    // The first connection meets the silent upstream (500 ms), then fails over.
    let started = Instant::now();
    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    echo(&mut ws, "x").await;
    assert!(started.elapsed() >= Duration::from_millis(450));
    held.push(ws);
    // The silent one rests now: the next ones skip it, alternating between the others.
    for _ in 0..4 {
        let started = Instant::now();
        let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
        echo(&mut ws, "y").await;
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        held.push(ws);
    }
    let count = |u: &Upstream| u.seen.lock().unwrap().len();
    assert_eq!(count(&a) + count(&b), 5);
    assert!(
        count(&a) >= 2 && count(&b) >= 2,
        "a {} b {}",
        count(&a),
        count(&b)
    );
    assert_eq!(silent.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    // After its back-off it is tried again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        let (ws, _) = connect(&node, "/ws/chat").await.unwrap();
        held.push(ws);
    }
    assert_eq!(silent.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn reconnect_replaces_a_lost_upstream_without_closing_the_client() {
    let a = Upstream::start(Behaviour::Echo).await;
    let b = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&config(&[a.url("/a"), b.url("/b")], "reconnect = true")).await;
    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    echo(&mut ws, "first").await;
    let (_, sessions) = node.get("/sessions").await;
    let first = sessions["sessions"][0]["upstream"]
        .as_str()
        .unwrap()
        .to_owned();
    let (lost, other) = if first == a.url("/a") {
        (&a, &b)
    } else {
        (&b, &a)
    };
    ws.send(Message::text("drop")).await.unwrap();
    eventually("the session to move upstream", || async {
        let (_, s) = node.get("/sessions").await;
        s["sessions"][0]["upstream"].as_str() != Some(first.as_str())
    })
    .await;
    echo(&mut ws, "still here").await;
    assert_eq!(other.seen.lock().unwrap().len(), 1);
    assert_eq!(lost.seen.lock().unwrap().len(), 1);
    // Without reconnect, the same loss closes the client (the other test); with it, a normal
    // close still closes.
    ws.send(Message::Close(None)).await.unwrap();
    assert_eq!(close_of(&mut ws).await.map(|c| c.0), Some(1000));
}

#[tokio::test]
async fn what_rfc_6455_forbids_is_refused_both_ways() {
    let up = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&format!(
        "[limits]\nmax_message_bytes = 1000\noutbound_queue_bytes = 1000\n{}",
        config(&[up.url("/")], "")
    ))
    .await;
    let mut n = 0;
    // Client faults: the client gets the code, the upstream 1001.
    let cases: [(u8, Vec<u8>, bool, u16); 5] = [
        (0x82, b"unmasked".to_vec(), false, 1002),
        (0x81, vec![b'a', 0xFF], true, 1007),
        (0x83, vec![], true, 1002),
        (0x89, vec![0; 126], true, 1002),
        (0x82, vec![0; 1001], true, 1009),
    ];
    for (first, payload, masked, code) in cases {
        let mut raw = Raw::connect(&node, "/ws/chat").await;
        raw.send(first, &payload, masked).await;
        assert_eq!(raw.close_code().await, Some(code), "frame {first:#x}");
        n += 1;
        assert_eq!(up.close_received(n).await.0, Some(1001), "frame {first:#x}");
    }
    // The upstream's fault: the client gets 1014, the upstream 1007.
    let mut raw = Raw::connect(&node, "/ws/chat").await;
    raw.send(0x81, b"bad-utf8", true).await;
    let (code, reason) = raw.close().await.unwrap();
    assert_eq!(code, 1014);
    assert!(reason.contains("UTF-8"), "{reason}");
    assert_eq!(up.close_received(n + 1).await.0, Some(1007));
}

#[tokio::test]
async fn a_reader_that_stops_slows_the_writer_and_memory_stays_bounded() {
    // Upstream → client: the upstream floods, the client reads nothing.
    let up = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&config(&[up.url("/")], "")).await;
    let mut raw = Raw::connect(&node, "/ws/chat").await;
    raw.send(0x81, b"flood", true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_2s = up.flooded.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_4s = up.flooded.load(std::sync::atomic::Ordering::SeqCst);
    assert!(at_2s > 0);
    // Kernel buffers on both hops plus the gateway's 16 KiB, no more: the flood stopped.
    assert_eq!(at_2s, at_4s, "the upstream kept writing");
    assert!(at_4s < 64 << 20, "{at_4s} bytes written");
    // Reading again lets it go on (once a TCP window's worth is free on each hop).
    for _ in 0..3000 {
        raw.frame().await.unwrap();
    }
    eventually("the flood to resume", || async {
        up.flooded.load(std::sync::atomic::Ordering::SeqCst) > at_4s
    })
    .await;

    // Client → upstream: the upstream reads nothing, the client's writes stop being taken.
    let deaf = Upstream::start(Behaviour::NoRead).await;
    let node = Node::start(&config(&[deaf.url("/")], "")).await;
    let mut raw = Raw::connect(&node, "/ws/chat").await;
    let frame = vec![b'x'; 1000];
    let mut sent = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), raw.send(0x82, &frame, true)).await {
            Ok(()) => sent += frame.len(),
            Err(_) => break,
        }
        assert!(sent < 64 << 20, "the gateway took {sent} bytes");
    }
    assert!(sent > 0);
}

#[tokio::test]
async fn gateway_closes_drain_delete_idle_and_heartbeat() {
    let up = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&format!(
        "[server]\nheartbeat = \"200ms\"\nheartbeat_timeout = \"800ms\"\n{}",
        config(&[up.url("/")], "idle_timeout = \"3s\"")
    ))
    .await;
    // DELETE /@connections: 4002 to the client, 1001 to the upstream; POST is refused.
    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    echo(&mut ws, "x").await;
    let (_, sessions) = node.get("/sessions").await;
    let id = sessions["sessions"][0]["id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let (status, _) = http_json(
        http.post(node.admin_url(&format!("/@connections/{id}")))
            .body("{}"),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(node.metric("wsgate_proxy_sessions_active").await, 1.0);
    let (status, _) = http_json(http.delete(node.admin_url(&format!("/@connections/{id}")))).await;
    assert_eq!(status, 204);
    assert_eq!(close_of(&mut ws).await.map(|c| c.0), Some(4002));
    assert_eq!(up.close_received(1).await.0, Some(1001));

    // Heartbeats: pings come; a client that sends nothing back gets 4003.
    let mut raw = Raw::connect(&node, "/ws/chat").await;
    assert_eq!(raw.frame().await.unwrap(), (0x89, b"wsgate".to_vec()));
    assert_eq!(raw.close_code().await, Some(4003));

    // Idle: pongs keep the heartbeat happy, but with no message either way for 3 s, 4004.
    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    echo(&mut ws, "once").await;
    let started = Instant::now();
    assert_eq!(close_of(&mut ws).await.map(|c| c.0), Some(4004));
    assert!(started.elapsed() >= Duration::from_millis(2500));
}

#[tokio::test]
async fn a_flooding_upstream_starves_neither_the_timers_nor_the_client() {
    let up = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&format!(
        "[server]\nheartbeat = \"200ms\"\n{}",
        config(&[up.url("/")], "")
    ))
    .await;
    let mut raw = Raw::connect(&node, "/ws/chat").await;
    raw.send(0x81, b"flood", true).await;
    // Read the flood for 2 s: the heartbeat's pings still come through it.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let (first, payload) = raw.frame().await.unwrap();
        if first == 0x89 {
            assert_eq!(payload, b"wsgate");
            pings += 1;
        }
    }
    assert!(pings >= 3, "{pings} pings in 2 s of flood");
    // And the client's own frames still reach the upstream: its close does.
    raw.send(0x88, &4100u16.to_be_bytes(), true).await;
    assert_eq!(up.close_received(1).await.0, Some(4100));
}

#[tokio::test]
async fn drain_gives_clients_1012_and_upstreams_1001() {
    let up = Upstream::start(Behaviour::Echo).await;
    let mut node = Node::start(&format!(
        "[server]\ndrain_delay = \"0s\"\ndrain_period = \"200ms\"\n{}",
        config(&[up.url("/")], "")
    ))
    .await;
    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    echo(&mut ws, "x").await;
    node.signal("TERM");
    assert_eq!(close_of(&mut ws).await.map(|c| c.0), Some(1012));
    assert_eq!(up.close_received(1).await.0, Some(1001));
    assert!(node.wait_exit(WAIT).await.success());
}

#[tokio::test]
async fn limits_apply_to_proxied_sessions() {
    let up = Upstream::start(Behaviour::Echo).await;
    let node = Node::start(&format!(
        "[limits]\nmax_connections_per_ip = 1\nmessages_per_second = 20\nmessages_burst = 20\n{}",
        config(&[up.url("/")], "")
    ))
    .await;
    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    echo(&mut ws, "x").await;
    let (status, _, _) = refusal(connect(&node, "/ws/chat").await.unwrap_err());
    assert_eq!(status, 429);
    assert_eq!(node.metric("wsgate_connections_active").await, 1.0);
    drop(ws);
    node.metric_settles("wsgate_connections_active", 0.0).await;

    // Over messages_per_second (20, burst 20), a client is read more slowly, not refused:
    // 60 messages take about 2 s, and every one arrives.
    let (mut ws, _) = connect(&node, "/ws/chat").await.unwrap();
    let started = Instant::now();
    for i in 0..60 {
        ws.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..60 {
        match next(&mut ws).await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("m{i}")),
            other => panic!("expected m{i}, got {other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1700), "{took:?}");

    // A throttled burst larger than the relay's buffer waits in it and in TCP, whole.
    let big: Vec<String> = (0..40)
        .map(|i| format!("{i:04}{}", "b".repeat(996)))
        .collect();
    for m in &big {
        ws.feed(Message::text(m.clone())).await.unwrap();
    }
    ws.flush().await.unwrap();
    for m in &big {
        match next(&mut ws).await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), m.as_str()),
            other => panic!("expected {}, got {other:?}", &m[..4]),
        }
    }
}

#[tokio::test]
async fn wss_clients_and_wss_upstreams() {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let up = Upstream::start_tls(Behaviour::Echo, &certs.cert, &certs.key).await;
    let url = format!("wss://localhost:{}/secure", up.addr.port());
    let conf = format!(
        "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n{}",
        certs.cert.to_str().unwrap(),
        certs.key.to_str().unwrap(),
        config(&[url], "")
    );
    let node = Node::start_with(
        NodeOptions::config(&conf).env("SSL_CERT_FILE", certs.ca.to_str().unwrap()),
    )
    .await;

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&certs.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(node.client).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let req = format!("wss://localhost:{}/ws/chat/x", node.client.port())
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    ws.send(Message::text("through TLS twice")).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), "through TLS twice");
                break;
            }
            Some(Ok(Message::Ping(_))) => continue,
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    let seen = up.last_seen();
    assert_eq!(seen.target, "/secure/x");
    assert_eq!(
        seen.headers.get("x-forwarded-proto").map(String::as_str),
        Some("https")
    );
    assert_eq!(
        seen.headers.get("host").cloned(),
        Some(format!("localhost:{}", up.addr.port()))
    );
    ws.send(Message::Close(None)).await.unwrap();
    assert_eq!(up.close_received(1).await, (Some(1000), String::new()));
}
