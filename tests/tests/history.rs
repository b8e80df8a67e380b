//! History and recovery (SPEC sections 4 and 7), embedded and over a real `redis-server`:
//! offsets in acks, messages and the management API, `join` with `since` replaying what is
//! retained and going live with no gap and no duplicate while a publisher runs flat out,
//! `size` and `ttl`, epochs, a Redis restart and an outage.

use std::time::Duration;

use serde_json::{json, Value};
use wsgate_tests::*;

const HISTORY: &str = "[[history]]\nrooms = [\"chat:*\"]\nsize = 100\nttl = \"10m\"\n";

fn redis_config(redis: &Redis, name: &str, history: &str) -> String {
    format!(
        "{history}[cluster]\nname = \"{name}\"\nredis_url = \"{}\"\nnode_heartbeat = \"200ms\"\n",
        redis.url()
    )
}

/// A client and the messages it read but has not taken yet (a replay arrives before the
/// join's ack, which `request` would skip).
struct Member {
    c: Client,
    early: std::collections::VecDeque<Value>,
}

impl Member {
    async fn on(node: &Node) -> Member {
        Member {
            c: node.connect().await,
            early: Default::default(),
        }
    }

    /// The next `message` frame (acks and other frames skipped), within a few seconds.
    async fn next(&mut self) -> Value {
        if let Some(m) = self.early.pop_front() {
            return m;
        }
        next_message(&mut self.c).await
    }

    /// Joins with an id and returns the ack, keeping the messages before it.
    async fn join(&mut self, room: &str, since: Option<u64>, epoch: Option<&str>) -> Value {
        let mut frame = json!({"action":"join","room":room,"id":"j"});
        if let Some(s) = since {
            frame["since"] = s.into();
        }
        if let Some(e) = epoch {
            frame["epoch"] = e.into();
        }
        self.c.send(frame).await;
        loop {
            let f = tokio::time::timeout(Duration::from_secs(5), self.c.recv())
                .await
                .expect("an answer within 5 s");
            match f["type"].as_str() {
                Some("message") => self.early.push_back(f),
                _ if f["id"] == "j" => return f,
                _ => {}
            }
        }
    }

    async fn silent(&mut self, d: Duration) {
        assert!(self.early.is_empty(), "unexpected: {:?}", self.early);
        self.c.assert_silent(d).await;
    }
}

/// The next `message` frame (acks and other frames skipped), within a few seconds.
async fn next_message(c: &mut Client) -> Value {
    loop {
        let f = tokio::time::timeout(Duration::from_secs(5), c.recv())
            .await
            .expect("a message within 5 s");
        if f["type"] == "message" {
            return f;
        }
    }
}

/// Joins with an id and returns the ack (nothing is replayed without `since`).
async fn join(c: &mut Client, room: &str, since: Option<u64>, epoch: Option<&str>) -> Value {
    assert!(since.is_none());
    let mut frame = json!({"action":"join","room":room,"id":"j"});
    if let Some(e) = epoch {
        frame["epoch"] = e.into();
    }
    let ack = c.request(frame).await;
    assert_eq!(ack["type"], "ack", "join answered {ack}");
    ack
}

async fn publish(c: &mut Client, room: &str, n: u64) -> Value {
    let ack = c
        .request(json!({"action":"publish","room":room,"data":{"n":n},"id":n}))
        .await;
    assert_eq!(ack["type"], "ack", "publish answered {ack}");
    ack
}

/// Offsets in the publish ack, on every message, in the admin 202, and none outside
/// retained rooms.
async fn offsets_everywhere(node: &Node) {
    let mut member = node.connect().await;
    let ack = join(&mut member, "chat:a", None, None).await;
    assert_eq!(ack["offset"], 0, "a new room starts at 0: {ack}");
    let epoch = ack["epoch"]
        .as_str()
        .expect("an epoch with the offset")
        .to_owned();
    let mut publisher = node.connect().await;
    let ack = publish(&mut publisher, "chat:a", 1).await;
    assert_eq!(
        (ack["offset"].as_u64(), ack["epoch"].as_str()),
        (Some(1), Some(epoch.as_str()))
    );
    let m = next_message(&mut member).await;
    assert_eq!(
        (m["offset"].as_u64(), m["epoch"].as_str()),
        (Some(1), Some(epoch.as_str())),
        "{m}"
    );
    assert_eq!(m["data"], json!({"n":1}));
    let (status, body) = http_json(
        reqwest::Client::new()
            .post(node.admin_url("/rooms/chat:a/messages"))
            .json(&json!({"data":"admin"})),
    )
    .await;
    assert_eq!((status, body["offset"].as_u64()), (202, Some(2)), "{body}");
    assert_eq!(body["epoch"], epoch.as_str());
    let m = next_message(&mut member).await;
    assert_eq!(
        (m["offset"].as_u64(), m["from"].clone()),
        (Some(2), Value::Null)
    );
    // A plain room has no offsets.
    join(&mut member, "plain", None, None).await;
    let ack = publish(&mut publisher, "plain", 3).await;
    assert!(ack.get("offset").is_none(), "{ack}");
    let m = next_message(&mut member).await;
    assert!(m.get("offset").is_none(), "{m}");
    let (status, body) = http_json(
        reqwest::Client::new()
            .post(node.admin_url("/rooms/plain/messages"))
            .json(&json!({"data":1})),
    )
    .await;
    assert_eq!((status, body["offset"].clone()), (202, Value::Null));
}

#[tokio::test]
async fn offsets_everywhere_embedded() {
    offsets_everywhere(&Node::start(HISTORY).await).await;
}

#[tokio::test]
async fn offsets_everywhere_over_redis() {
    let redis = Redis::start().await;
    offsets_everywhere(&Node::start(&redis_config(&redis, &cluster_name(), HISTORY)).await).await;
}

/// `size` and `ttl` bound the replay; `recovered` says whether anything was missed.
async fn size_ttl_and_epochs(node: &Node) {
    let mut publisher = node.connect().await;
    for n in 1..=5 {
        publish(&mut publisher, "chat:s", n).await;
    }
    let epoch = publish(&mut publisher, "chat:s", 6).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    // size = 3: 4, 5, 6 are retained.
    let mut c = Member::on(node).await;
    let ack = c.join("chat:s", Some(3), Some(&epoch)).await;
    assert_eq!(
        (ack["recovered"].clone(), ack["offset"].as_u64()),
        (json!(true), Some(6))
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(c.next().await["offset"].as_u64().unwrap());
    }
    assert_eq!(got, [4, 5, 6]);
    c.silent(Duration::from_millis(200)).await;

    let mut c = Member::on(node).await;
    let ack = c.join("chat:s", Some(1), Some(&epoch)).await;
    assert_eq!(ack["recovered"], false, "2 and 3 are gone: {ack}");
    assert_eq!(c.next().await["offset"], 4, "what is retained is replayed");

    let mut c = Member::on(node).await;
    let ack = c.join("chat:s", Some(6), Some(&epoch)).await;
    assert_eq!(
        ack["recovered"], true,
        "nothing missed at the latest: {ack}"
    );
    c.silent(Duration::from_millis(200)).await;

    let mut c = Member::on(node).await;
    let ack = c.join("chat:s", Some(9), Some(&epoch)).await;
    assert_eq!(ack["recovered"], false, "past the latest: {ack}");

    let mut c = Member::on(node).await;
    let ack = c.join("chat:s", Some(5), Some("another-epoch")).await;
    assert_eq!(ack["recovered"], false, "another epoch: {ack}");
    assert_eq!(ack["epoch"], epoch.as_str());
    assert_eq!(c.next().await["offset"], 4, "all that is retained");

    let mut c = Member::on(node).await;
    let ack = c.join("plain", Some(1), None).await;
    assert_eq!(ack["recovered"], false, "a room without history: {ack}");

    // ttl = 300 ms: messages expire, the position stays.
    publish(&mut publisher, "chat:t", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = Member::on(node).await;
    let ack = c.join("chat:t", Some(0), None).await;
    assert_eq!(
        (ack["recovered"].clone(), ack["offset"].as_u64()),
        (json!(false), Some(1))
    );
    c.silent(Duration::from_millis(200)).await;
    let mut c = Member::on(node).await;
    let ack = c.join("chat:t", Some(1), None).await;
    assert_eq!(ack["recovered"], true, "{ack}");
}

const SMALL: &str = "[[history]]\nrooms = [\"chat:s\"]\nsize = 3\nttl = \"10m\"\n\
                     [[history]]\nrooms = [\"chat:t\"]\nsize = 10\nttl = \"300ms\"\n";

#[tokio::test]
async fn size_ttl_and_epochs_embedded() {
    size_ttl_and_epochs(&Node::start(SMALL).await).await;
}

#[tokio::test]
async fn size_ttl_and_epochs_over_redis() {
    let redis = Redis::start().await;
    size_ttl_and_epochs(&Node::start(&redis_config(&redis, &cluster_name(), SMALL)).await).await;
}

/// Publishes 1, 2, 3, ... into `room` as fast as acks come back, until told to stop; returns
/// the last offset acked.
fn flat_out(
    mut c: Client,
    room: &'static str,
) -> (
    tokio::task::JoinHandle<u64>,
    tokio::sync::watch::Sender<bool>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut last = 0;
        for n in 1.. {
            if *stopped.borrow_and_update() {
                break;
            }
            last = publish(&mut c, room, n).await["offset"]
                .as_u64()
                .expect("an offset");
        }
        last
    });
    (task, stop)
}

/// Reads messages until `offset` arrives; returns every offset read, in order.
async fn read_until(c: &mut Member, offset: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let o = c.next().await["offset"].as_u64().expect("an offset");
        seen.push(o);
        if o >= offset {
            return seen;
        }
    }
}

/// The race of the issue: clients drop and rejoin with `since` on either node while another
/// node publishes flat out; each gets every offset once, in order, with no gap.
#[tokio::test]
async fn resume_under_a_flat_out_publisher_has_no_gap_and_no_duplicate() {
    let redis = Redis::start().await;
    let name = cluster_name();
    // Enough retained for the time a client is away while the publisher runs flat out.
    let history = "[limits]\nmessages_per_second = 100000\nmessages_burst = 100000\n\
                   [[history]]\nrooms = [\"chat:*\"]\nsize = 1000\nttl = \"10m\"\n";
    let a = Node::start(&redis_config(&redis, &name, history)).await;
    let b = Node::start(&redis_config(&redis, &name, history)).await;
    let mut watcher = Member::on(&b).await;
    let ack = watcher.join("chat:race", None, None).await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    let (publisher, stop) = flat_out(a.connect().await, "chat:race");
    let mut position = read_until(&mut watcher, 20).await.last().copied().unwrap();
    drop(watcher);
    for round in 0..12 {
        // Away for a moment while the publisher goes on, then back on either node.
        tokio::time::sleep(Duration::from_millis(20 + 10 * (round % 3))).await;
        let node = if round % 2 == 0 { &a } else { &b };
        let mut c = Member::on(node).await;
        let ack = c.join("chat:race", Some(position), Some(&epoch)).await;
        assert_eq!(ack["recovered"], true, "round {round}: {ack}");
        let target = ack["offset"].as_u64().unwrap() + 30;
        let seen = read_until(&mut c, target).await;
        let expected: Vec<u64> = (position + 1..=target).collect();
        assert_eq!(seen, expected, "round {round}: a gap or a duplicate");
        position = target;
    }
    stop.send(true).unwrap();
    let last = publisher.await.unwrap();
    assert!(
        last >= position,
        "the publisher ran throughout ({last} >= {position})"
    );
}

/// Two nodes publishing into one room at once never share or reorder an offset: a member
/// sees 1..=N once each, and the acks of the two publishers split exactly those.
#[tokio::test]
async fn two_nodes_publishing_at_once_share_no_offset() {
    let redis = Redis::start().await;
    let name = cluster_name();
    let a = Node::start(&redis_config(&redis, &name, HISTORY)).await;
    let b = Node::start(&redis_config(&redis, &name, HISTORY)).await;
    let mut member = Member::on(&a).await;
    member.join("chat:two", None, None).await;
    let mut acked = Vec::new();
    let tasks: Vec<_> = [&a, &b]
        .into_iter()
        .map(|node| async move {
            let mut c = node.connect().await;
            let mut offsets = Vec::new();
            for n in 1..=150 {
                offsets.push(
                    publish(&mut c, "chat:two", n).await["offset"]
                        .as_u64()
                        .unwrap(),
                );
            }
            offsets
        })
        .collect();
    for offsets in futures_util::future::join_all(tasks).await {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "one publisher's order"
        );
        acked.extend(offsets);
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=300).collect::<Vec<u64>>());
    assert_eq!(
        read_until(&mut member, 300).await,
        (1..=300).collect::<Vec<u64>>()
    );
}

/// Redis restarted empty: offsets start again in a new epoch and an old position is not
/// recovered. During the outage a retained publish is delivered locally without an offset.
#[tokio::test]
async fn an_outage_and_a_lost_stream() {
    let mut redis = Redis::start().await;
    let node = Node::start(&redis_config(&redis, &cluster_name(), HISTORY)).await;
    let mut member = Member::on(&node).await;
    member.join("chat:o", None, None).await;
    let mut publisher = node.connect().await;
    publish(&mut publisher, "chat:o", 1).await;
    let old = publish(&mut publisher, "chat:o", 2).await;
    read_until(&mut member, 2).await;

    redis.kill();
    node.metric_settles("wsgate_redis_up", 0.0).await;
    let ack = publish(&mut publisher, "chat:o", 3).await;
    assert!(
        ack.get("offset").is_none(),
        "not retained during the outage: {ack}"
    );
    let m = member.next().await;
    assert_eq!(m["data"], json!({"n":3}));
    assert!(m.get("offset").is_none(), "{m}");
    let mut late = node.connect().await;
    let refused = late
        .request(json!({"action":"join","room":"chat:o","since":2,"id":"j"}))
        .await;
    assert_eq!(
        refused["code"], "unavailable",
        "history unreachable: {refused}"
    );

    redis.restart().await;
    node.metric_settles("wsgate_redis_up", 1.0).await;
    let mut fresh = None;
    for _ in 0..50 {
        let ack = publish(&mut publisher, "chat:o", 4).await;
        if ack.get("offset").is_some() {
            fresh = Some(ack);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = fresh.expect("offsets again once Redis is back");
    assert_eq!(fresh["offset"], 1, "a lost stream starts again: {fresh}");
    assert_ne!(fresh["epoch"], old["epoch"], "in a new epoch");
    let mut back = Member::on(&node).await;
    let ack = back.join("chat:o", Some(2), old["epoch"].as_str()).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(
        back.next().await["offset"],
        1,
        "the new epoch's retained message"
    );
}
