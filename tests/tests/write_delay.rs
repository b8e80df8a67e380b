//! `server.write_delay` (SPEC section 11): frames for one socket wait up to that long and leave
//! together, in order; nothing is lost or reordered, and a close is not held back by it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

#[tokio::test]
async fn frames_wait_for_the_delay_and_arrive_together_in_order() {
    let node = Node::start("[server]\nwrite_delay = \"300ms\"\n").await;
    let mut member = node.connect().await;
    member
        .request(json!({"action":"join","room":"r","id":"j"}))
        .await;
    let mut publisher = node.connect().await;
    let start = Instant::now();
    for n in 0..20 {
        publisher
            .send(json!({"action":"publish","room":"r","data":n}))
            .await;
    }
    // Nothing leaves before the delay (the first frame waits for the others).
    let first = member.recv().await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "the first frame came after {waited:?}, before the 300 ms delay"
    );
    assert_eq!(first["data"], 0);
    // The rest came with it: all readable at once, in order.
    for n in 1..20 {
        let m = tokio::time::timeout(Duration::from_millis(100), member.recv())
            .await
            .expect("the batch arrived together");
        assert_eq!(m["data"], n);
    }
}

/// A reply does not wait for the delay: it leaves at once and takes the waiting batch along,
/// in order (the message first, then the pong).
#[tokio::test]
async fn a_reply_takes_the_waiting_batch_with_it() {
    let node = Node::start("[server]\nwrite_delay = \"5s\"\n").await;
    let start = Instant::now();
    let mut member = node.connect().await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the welcome is not delayed"
    );
    member
        .request(json!({"action":"join","room":"r","id":"j"}))
        .await;
    let mut publisher = node.connect().await;
    publisher
        .request(json!({"action":"publish","room":"r","data":"waits","id":"p"}))
        .await;
    let start = Instant::now();
    member.send(json!({"action":"ping","id":"ping"})).await;
    let m = tokio::time::timeout(Duration::from_secs(3), member.recv())
        .await
        .expect("the batch left with the pong, not after 5 s");
    assert_eq!(m["data"], "waits");
    let pong = member.recv().await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_str()),
        (Some("pong"), Some("ping"))
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

/// A close is not held back by the delay either: what waits is written, then the close.
#[tokio::test]
async fn a_close_is_not_held_back_by_the_delay() {
    let node = Node::start("[server]\nwrite_delay = \"5s\"\n").await;
    let mut c = node.connect().await;
    c.request(json!({"action":"join","room":"r","id":"j"}))
        .await;
    let (status, _) = http_json(
        reqwest::Client::new()
            .post(node.admin_url("/rooms/r/messages"))
            .json(&json!({"data":"last words"})),
    )
    .await;
    assert_eq!(status, 202);
    let id = c.id();
    let start = Instant::now();
    let (status, _) =
        http_json(reqwest::Client::new().delete(node.admin_url(&format!("/@connections/{id}"))))
            .await;
    assert_eq!(status, 204);
    let mut got_message = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), c.ws.next())
            .await
            .expect("the close within 3 s, not after the 5 s delay")
        {
            Some(Ok(Message::Text(t))) => got_message |= t.contains("last words"),
            Some(Ok(Message::Close(f))) => {
                assert_eq!(f.map(|f| u16::from(f.code)), Some(4002));
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        got_message,
        "the waiting message was written before the close"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}
