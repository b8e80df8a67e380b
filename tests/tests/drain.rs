//! SPEC section 8: SIGTERM drains, spreading 1012 closes, then exits 0.

use std::time::{Duration, Instant};

use wsgate_tests::*;

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut node = Node::start("[server]\ndrain_delay = \"500ms\"\ndrain_period = \"1s\"\n").await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(node.connect().await);
    }
    let start = Instant::now();
    node.signal("TERM");
    // Readiness fails and new upgrades are refused at once.
    let mut unready = false;
    for _ in 0..20 {
        if node.get("/readyz").await.0 == 503 {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(unready, "/readyz answers 503 while draining");
    let (status, body, retry) = refusal(node.connect_req(|_| {}).await.err().unwrap());
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    assert!(retry.is_some());
    // Every client gets 1012, after the delay and spread over the period.
    let mut times = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
        assert_eq!(c.closed().await, Some(1012));
        start.elapsed()
    }))
    .await;
    times.sort();
    assert!(
        times[0] >= Duration::from_millis(450),
        "not before drain_delay: {times:?}"
    );
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(150),
            "spread over drain_period: {times:?}"
        );
    }
    let status = node.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigint_drains_too() {
    let mut node = Node::start("[server]\ndrain_delay = \"0s\"\ndrain_period = \"0s\"\n").await;
    let mut c = node.connect().await;
    node.signal("INT");
    assert_eq!(c.closed().await, Some(1012));
    assert_eq!(
        node.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn unresponsive_close_handshakes_are_dropped_after_the_period() {
    let mut node = Node::start("[server]\ndrain_delay = \"0s\"\ndrain_period = \"200ms\"\n").await;
    // This client never reads, so it never answers the close.
    let _mute = node.connect().await;
    let start = Instant::now();
    node.signal("TERM");
    assert_eq!(
        node.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "dropped 2 s after the period"
    );
}

/// A second SIGTERM during a drain exits at once, with code 1.
#[tokio::test]
async fn a_second_sigterm_during_a_drain_exits_at_once() {
    let mut node = Node::start("[server]\ndrain_delay = \"30s\"\n").await;
    let _c = node.connect().await;
    node.signal("TERM");
    for _ in 0..100 {
        if node.get("/readyz").await.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(5)).await.code(), Some(1));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// An admin request left half sent does not hold the drain's exit.
#[tokio::test]
async fn a_half_open_admin_request_does_not_hold_the_exit() {
    use tokio::io::AsyncWriteExt;
    let mut node = Node::start("[server]\ndrain_delay = \"0s\"\ndrain_period = \"0s\"\n").await;
    let mut half = tokio::net::TcpStream::connect(node.admin).await.unwrap();
    half.write_all(b"GET /cluster HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(node.admin).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(8)).await.code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
