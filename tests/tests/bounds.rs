//! SPEC sections 3 and 11 against hostile clients: what one connection can make the node hold
//! or do is bounded, whatever it sends and however little it reads.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wsgate_tests::*;

/// A client that asks for large replies and never reads them is closed with 1013 once its
/// queue holds `limits.outbound_queue_bytes`, long before `limits.outbound_queue` frames.
#[tokio::test]
async fn replies_a_client_never_reads_are_bounded_in_bytes() {
    let node = Node::start(
        "[limits]\nmessages_per_second = 100000\nmessages_burst = 100000\noutbound_queue_bytes = 1048576\n",
    )
    .await;
    let client = node.connect().await;
    let (pongs, code) = flood_unread_replies(client.ws, &node).await;
    assert_eq!(code, Some(1013));
    assert!(pongs < 300, "the node stopped queueing: {pongs} pongs");
}

/// WebSocket pings are client messages for the rate limit: a ping flood is closed with 1008
/// like any other flood, rather than making the node write pongs as fast as it can.
#[tokio::test]
async fn websocket_pings_count_toward_the_rate_limit() {
    let node = Node::start("[limits]\nmessages_per_second = 1\nmessages_burst = 5\n").await;
    let mut client = node.connect().await;
    for _ in 0..20 {
        client
            .ws
            .send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .expect("send");
    }
    let code = loop {
        match client.next_event().await {
            Event::Close(code) => break code,
            Event::Ended => break None,
            _ => continue,
        }
    };
    assert_eq!(code, Some(1008));
}

/// A rate-limited frame still gets its error with its id, and what it asked for is not done.
#[tokio::test]
async fn a_rate_limited_frame_is_refused_with_its_id_and_not_acted_on() {
    let node = Node::start("[limits]\nmessages_per_second = 1\nmessages_burst = 2\n").await;
    let mut c = node.connect().await;
    for id in ["a", "b"] {
        assert_eq!(
            c.request(json!({"action":"ping","id":id})).await["type"],
            "pong"
        );
    }
    let e = c
        .request(json!({"action":"join","room":"r","id":"c"}))
        .await;
    assert_eq!(e["code"], "rate_limited");
    let (_, room) = node.get("/rooms/r").await;
    assert_eq!(room["members"], 0, "the refused join did nothing");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        c.request(json!({"action":"ping","id":"d"})).await["type"],
        "pong"
    );
}

/// Reads what the server sends on a raw connection until it closes (or `limit` passes).
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// Request headers over 16 KiB are refused with 431 before anything else reads them.
#[tokio::test]
async fn oversized_request_headers_get_431() {
    use tokio::io::AsyncWriteExt;
    let node = Node::start("").await;
    let mut tcp = tokio::net::TcpStream::connect(node.client).await.unwrap();
    let big = "a".repeat(20 * 1024);
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Big: {big}\r\n\r\n"
    );
    let _ = tcp.write_all(req.as_bytes()).await;
    let answer = read_until_closed(&mut tcp, WAIT).await.expect("closed");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
}

/// A client that never finishes its request is dropped after `server.handshake_timeout`.
#[tokio::test]
async fn a_handshake_that_never_finishes_is_dropped_after_the_timeout() {
    use tokio::io::AsyncWriteExt;
    let node = Node::start("[server]\nhandshake_timeout = \"300ms\"\n").await;
    let mut tcp = tokio::net::TcpStream::connect(node.client).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    read_until_closed(&mut tcp, Duration::from_secs(5))
        .await
        .expect("the node closes the connection");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

/// Connections still in their handshake count against the node and per-IP limits: idle TCP
/// connections cannot be piled up beyond them while they are not yet sessions.
#[tokio::test]
async fn connections_in_their_handshake_count_against_the_limits() {
    let node = Node::start("[limits]\nmax_connections = 2\n").await;
    let idle_a = tokio::net::TcpStream::connect(node.client).await.unwrap();
    let _idle_b = tokio::net::TcpStream::connect(node.client).await.unwrap();
    // Accepted and counted before a byte arrives: the node now reads as full.
    let mut full = false;
    for _ in 0..50 {
        match node.connect_req(|_| {}).await {
            Err(e) => {
                let (status, body, _) = refusal(e);
                assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
                full = true;
                break;
            }
            Ok(c) => drop(c),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(full, "two idle connections fill a node of two");
    drop(idle_a);
    // A slot frees when an idle connection goes.
    let mut connected = false;
    for _ in 0..100 {
        if node.connect_req(|_| {}).await.is_ok() {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(connected);

    let node = Node::start("[limits]\nmax_connections_per_ip = 1\n").await;
    let _idle = tokio::net::TcpStream::connect(node.client).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body, _) = refusal(node.connect_req(|_| {}).await.err().expect("refused"));
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited"))
    );
}

/// A connection refused a slot at accept (over the per-IP limit) gets a second to send the
/// request its 429 answers, not the whole handshake timeout.
#[tokio::test]
async fn a_connection_over_the_limit_is_dropped_quickly() {
    let node = Node::start("[limits]\nmax_connections_per_ip = 1\n").await;
    let _held = tokio::net::TcpStream::connect(node.client).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = tokio::net::TcpStream::connect(node.client).await.unwrap();
    let start = std::time::Instant::now();
    read_until_closed(&mut over, Duration::from_secs(8))
        .await
        .expect("the node closes it");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}
