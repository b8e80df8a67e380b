//! SPEC section 4 on a live node: every built-in action, errors with request ids, cross
//! encoding, and bad input of every kind (the node keeps serving everyone else).

use std::time::Duration;

use serde_json::json;
use wsgate_tests::*;

#[tokio::test]
async fn welcome_has_every_field() {
    let node = Node::start("[server]\nheartbeat = \"7s\"\n").await;
    let c = node.connect().await;
    let w = &c.welcome;
    assert_eq!(w["node"], node.node_id.as_str());
    assert_eq!(w["protocol"], "wsgate.v1.json");
    assert_eq!(w["heartbeat_ms"], 7000);
    assert!(w["connection_id"].as_str().unwrap().len() >= 16);
    assert_eq!(c.protocol, None, "no subprotocol offered, none echoed");
}

#[tokio::test]
async fn join_publish_leave_with_acks_and_exclude_self() {
    let node = Node::start("").await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    assert_eq!(
        a.request(json!({"action":"join","room":"chat:1","id":1}))
            .await,
        json!({"type":"ack","id":1})
    );
    assert_eq!(
        b.request(json!({"action":"join","room":"chat:1","id":"j"}))
            .await,
        json!({"type":"ack","id":"j"})
    );

    a.send(json!({"action":"publish","room":"chat:1","data":{"text":"hi","n":[1,2.5]},"id":2}))
        .await;
    // The publish takes effect (local fan-out) before it is acknowledged.
    let msg = a.recv().await;
    assert_eq!(a.recv().await, json!({"type":"ack","id":2}));
    assert_eq!(
        msg,
        json!({"type":"message","room":"chat:1","data":{"text":"hi","n":[1,2.5]},"from":a.id()})
    );
    assert_eq!(b.recv().await, msg);

    a.send(json!({"action":"publish","room":"chat:1","data":"quiet","exclude_self":true}))
        .await;
    assert_eq!(b.recv().await["data"], "quiet");
    a.assert_silent(Duration::from_millis(300)).await;

    assert_eq!(
        b.request(json!({"action":"leave","room":"chat:1","id":3}))
            .await["type"],
        "ack"
    );
    a.send(json!({"action":"publish","room":"chat:1","data":1,"exclude_self":true}))
        .await;
    b.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn publish_without_membership_and_ordering() {
    let node = Node::start("").await;
    let mut member = node.connect().await;
    let mut publisher = node.connect().await;
    member
        .request(json!({"action":"join","room":"r","id":1}))
        .await;
    for i in 0..50 {
        publisher
            .send(json!({"action":"publish","room":"r","data":i}))
            .await;
    }
    for i in 0..50 {
        assert_eq!(member.recv().await["data"], i);
    }
}

#[tokio::test]
async fn ping_send_and_not_found() {
    let node = Node::start("").await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    assert_eq!(
        a.request(json!({"action":"ping","id":9})).await,
        json!({"type":"pong","id":9})
    );
    a.send(json!({"action":"ping"})).await;
    assert_eq!(a.recv().await, json!({"type":"pong"}));
    assert_eq!(
        a.request(json!({"action":"send","to":b.id(),"data":{"x":1},"id":1}))
            .await["type"],
        "ack"
    );
    assert_eq!(
        b.recv().await,
        json!({"type":"direct","from":a.id(),"data":{"x":1}})
    );
    let e = a
        .request(json!({"action":"send","to":"nobody","data":1,"id":2}))
        .await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "not_found");
}

#[tokio::test]
async fn unknown_action_is_not_a_bad_frame() {
    let node = Node::start("[limits]\nmax_bad_frames = 2\n").await;
    let mut a = node.connect().await;
    for i in 0..5 {
        let e = a.request(json!({"action":"sendmessage","id":i})).await;
        assert_eq!(e["code"], "unknown_action");
    }
    assert_eq!(
        a.request(json!({"action":"ping","id":"still-open"})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn bad_frames_get_bad_request_with_ids_then_1008() {
    let node = Node::start("[limits]\nmax_bad_frames = 6\n").await;
    let mut bystander = node.connect().await;
    bystander
        .request(json!({"action":"join","room":"r","id":1}))
        .await;
    let mut a = node.connect().await;
    let bad = [
        ("not json", None),
        ("[1,2]", None),
        (r#"{"action":"join","id":5}"#, Some(json!(5))),
        (r#"{"action":"join","room":7,"id":"x"}"#, Some(json!("x"))),
        (r#"{"action":"join","room":"a b","id":6}"#, Some(json!(6))),
    ];
    for (text, id) in bad {
        a.send_text(text).await;
        let e = a.recv().await;
        assert_eq!(e["type"], "error", "{text}");
        assert_eq!(e["code"], "bad_request", "{text}");
        assert!(!e["message"].as_str().unwrap().is_empty());
        assert_eq!(e.get("id").cloned(), id, "{text}");
    }
    // A good frame resets the count...
    assert_eq!(
        a.request(json!({"action":"ping","id":1})).await["type"],
        "pong"
    );
    // ...and then six in a row close with 1008 (binary frames on a JSON connection count).
    for _ in 0..5 {
        a.send_binary(vec![1, 2, 3]).await;
        assert_eq!(a.recv().await["code"], "bad_request");
    }
    a.send(json!({"room":"no action"})).await;
    assert_eq!(a.closed().await, Some(1008));
    // The node still serves others.
    let mut c = node.connect().await;
    c.send(json!({"action":"publish","room":"r","data":"after"}))
        .await;
    assert_eq!(bystander.recv().await["data"], "after");
}

#[tokio::test]
async fn wrong_types_are_named() {
    let node = Node::start("").await;
    let mut a = node.connect().await;
    for (frame, field) in [
        (
            json!({"action":"publish","room":"r","data":1,"exclude_self":"yes","id":1}),
            "exclude_self",
        ),
        (json!({"action":"publish","room":"r","id":2}), "data"),
        (json!({"action":"send","to":5,"data":1,"id":3}), "to"),
        (
            json!({"action":"join","room":"r","since":-1,"id":4}),
            "since",
        ),
        (json!({"action":"ping","id":[1]}), "id"),
    ] {
        a.send(frame.clone()).await;
        let e = a.recv().await;
        assert_eq!(e["code"], "bad_request", "{frame}");
        assert!(
            e["message"].as_str().unwrap().contains(field),
            "{frame}: {e}"
        );
    }
}

#[tokio::test]
async fn room_limit_and_names() {
    let node = Node::start("[limits]\nrooms_per_connection = 2\n").await;
    let mut a = node.connect().await;
    a.request(json!({"action":"join","room":"a","id":1})).await;
    a.request(json!({"action":"join","room":"b","id":2})).await;
    assert_eq!(
        a.request(json!({"action":"join","room":"a","id":3})).await["type"],
        "ack",
        "rejoin is a no-op"
    );
    assert_eq!(
        a.request(json!({"action":"join","room":"c","id":4})).await["code"],
        "room_limit"
    );
    let long = "x".repeat(129);
    assert_eq!(
        a.request(json!({"action":"join","room":long,"id":5})).await["code"],
        "bad_request"
    );
    let max = "y".repeat(128);
    a.request(json!({"action":"leave","room":"a","id":6})).await;
    assert_eq!(
        a.request(json!({"action":"join","room":max,"id":7})).await["type"],
        "ack"
    );
}

#[tokio::test]
async fn too_large_publish_and_1009_frame() {
    let node = Node::start("[limits]\nmax_message_bytes = 1000\n").await;
    let mut a = node.connect().await;
    // The frame fits, but the delivered message (with room, from, type) would not.
    let data = "z".repeat(950);
    let e = a
        .request(json!({"action":"publish","room":"r","data":data,"id":1}))
        .await;
    assert_eq!(e["code"], "too_large");
    // A MessagePack `send` of 740 bytes of bin fits as MessagePack but not as base64 for a
    // JSON recipient.
    let mut mp = connect_protocols(&node, "wsgate.v1.msgpack").await.unwrap();
    use rmpv::Value as V;
    let send = V::Map(vec![
        ("action".into(), "send".into()),
        ("to".into(), a.id().into()),
        ("data".into(), V::Binary(vec![7; 740])),
        ("id".into(), 2.into()),
    ]);
    mp.send_binary(msgpack(&send)).await;
    assert_eq!(mp.recv_msgpack().await["code"], "too_large");
    assert_eq!(
        a.request(json!({"action":"ping","id":3})).await["type"],
        "pong"
    );
    a.send_text(&"x".repeat(2000)).await;
    assert_eq!(a.closed().await, Some(1009));
}

#[tokio::test]
async fn rate_limit_errors_then_1008() {
    let node = Node::start("[limits]\nmessages_per_second = 1\nmessages_burst = 5\n").await;
    let mut a = node.connect().await;
    for i in 0..5 {
        a.send(json!({"action":"ping","id":i})).await;
    }
    for i in 0..5 {
        assert_eq!(a.recv().await, json!({"type":"pong","id":i}));
    }
    // Refused frames are answered with their own request id, when they have one.
    for i in 10..13 {
        a.send(json!({"action":"ping","id":i})).await;
        let e = a.recv().await;
        assert_eq!(
            (e["code"].as_str(), e["id"].as_i64()),
            (Some("rate_limited"), Some(i))
        );
    }
    a.send(json!({"action":"ping"})).await;
    let e = a.recv().await;
    assert_eq!(e["code"], "rate_limited");
    assert!(e.get("id").is_none_or(|v| v.is_null()), "{e}");
    a.send(json!({"action":"ping"})).await;
    assert_eq!(a.closed().await, Some(1008));
}

#[tokio::test]
async fn msgpack_and_json_clients_share_a_room() {
    let node = Node::start("").await;
    let mut mp = connect_protocols(&node, "wsgate.v1.msgpack").await.unwrap();
    assert_eq!(mp.protocol.as_deref(), Some("wsgate.v1.msgpack"));
    assert_eq!(mp.welcome["protocol"], "wsgate.v1.msgpack");
    let mut js = node.connect().await;
    js.request(json!({"action":"join","room":"mix","id":1}))
        .await;
    use rmpv::Value as V;
    let join = V::Map(vec![
        ("action".into(), "join".into()),
        ("room".into(), "mix".into()),
        ("id".into(), 1.into()),
    ]);
    mp.send_binary(msgpack(&join)).await;
    assert_eq!(mp.recv_msgpack().await, json!({"type":"ack","id":1}));
    let publish = V::Map(vec![
        ("action".into(), "publish".into()),
        ("room".into(), "mix".into()),
        (
            "data".into(),
            V::Map(vec![
                ("b".into(), V::Binary(b"hi".to_vec())),
                ("n".into(), 3.into()),
            ]),
        ),
    ]);
    mp.send_binary(msgpack(&publish)).await;
    let got = js.recv().await;
    assert_eq!(
        got["data"],
        json!({"b":"aGk=","n":3}),
        "bin reaches JSON clients as base64"
    );
    let echo = mp.recv_msgpack().await;
    assert_eq!(echo["data"]["b"], "<bin:2>", "MessagePack clients keep bin");

    js.send(json!({"action":"publish","room":"mix","data":{"from":"json"}}))
        .await;
    assert_eq!(mp.recv_msgpack().await["data"], json!({"from":"json"}));

    // Text on a MessagePack connection and ext types are bad frames.
    mp.send_text("{}").await;
    assert_eq!(mp.recv_msgpack().await["code"], "bad_request");
    let ext = V::Map(vec![
        ("action".into(), "publish".into()),
        ("room".into(), "mix".into()),
        ("data".into(), V::Ext(1, vec![0])),
    ]);
    mp.send_binary(msgpack(&ext)).await;
    assert_eq!(mp.recv_msgpack().await["code"], "bad_request");
}

#[tokio::test]
async fn flood_of_bad_input_does_not_disturb_others() {
    let node = Node::start("").await;
    let mut good = node.connect().await;
    good.request(json!({"action":"join","room":"calm","id":1}))
        .await;
    let mut abusers = Vec::new();
    for _ in 0..5 {
        let mut c = node.connect().await;
        for _ in 0..30 {
            c.send_text("garbage").await;
        }
        abusers.push(c);
    }
    for mut c in abusers {
        assert_eq!(c.closed().await, Some(1008));
    }
    let mut p = node.connect().await;
    p.send(json!({"action":"publish","room":"calm","data":"ok"}))
        .await;
    assert_eq!(good.recv().await["data"], "ok");
}
