//! SPEC section 12: with `telemetry.otlp_endpoint` set, spans are exported over OTLP
//! (HTTP/JSON, to a recording collector on loopback): each integration call is a span whose W3C
//! trace context reaches the backend in `traceparent`; a publish and its delivery on another
//! node share one trace through the bus envelope; each connection is a span.

use serde_json::{json, Value};
use wsgate_tests::*;

/// Every span in the OTLP/JSON export requests the collector received.
fn spans(collector: &Recorder) -> Vec<Value> {
    collector
        .seen()
        .iter()
        .filter(|r| r.path == "/v1/traces")
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .flat_map(|body| {
            let mut out = Vec::new();
            for rs in body["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let service = rs["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .map(|a| a["value"]["stringValue"].clone())
                    .unwrap_or(Value::Null);
                for ss in rs["scopeSpans"].as_array().cloned().unwrap_or_default() {
                    for mut span in ss["spans"].as_array().cloned().unwrap_or_default() {
                        span["service"] = service.clone();
                        out.push(span);
                    }
                }
            }
            out
        })
        .collect()
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[tokio::test]
async fn each_integration_call_is_a_span_whose_context_reaches_the_backend() {
    let collector = Recorder::start("{}").await;
    let backend = Recorder::start("{\"ok\":true}").await;
    let config = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"wsgate-test\"\n\
         [routes.custom.echo]\nurl = \"{}\"\nresponse = true\n",
        collector.url(""),
        backend.url("/echo"),
    );
    let node =
        Node::start_with(NodeOptions::config(&config).env("OTEL_BSP_SCHEDULE_DELAY", "100")).await;
    let mut c = node.connect().await;
    let answer = c.request(json!({"action": "echo", "id": 1})).await;
    assert_eq!(answer["type"], "route_response");

    let call = backend.seen().pop().expect("the backend was called");
    let traceparent = call
        .headers
        .get("traceparent")
        .expect("a traceparent header")
        .clone();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{traceparent}");
    assert_eq!(parts[3], "01", "sampled");

    eventually("the integration span to be exported", || async {
        spans(&collector)
            .iter()
            .any(|s| s["spanId"].as_str() == Some(parts[2]))
    })
    .await;
    let all = spans(&collector);
    let span = all
        .iter()
        .find(|s| s["spanId"].as_str() == Some(parts[2]))
        .unwrap();
    assert_eq!(span["traceId"].as_str(), Some(parts[1]));
    assert_eq!(span["name"], "integration");
    assert_eq!(span["kind"], 3, "a client span");
    assert_eq!(span["service"], "wsgate-test");
    assert_eq!(
        attribute(span, "route").and_then(|v| v["stringValue"].as_str()),
        Some("echo")
    );
    // OTLP/JSON writes 64-bit integers as strings; accept a number too.
    let status = attribute(span, "http.response.status_code").map(|v| v["intValue"].clone());
    assert!(
        matches!(&status, Some(Value::String(s)) if s == "200") || status == Some(json!(200)),
        "{status:?} in {span}"
    );
}

#[tokio::test]
async fn without_an_endpoint_no_trace_context_is_sent() {
    let backend = Recorder::start("{}").await;
    let config = format!(
        "[routes.custom.echo]\nurl = \"{}\"\nresponse = true\n",
        backend.url("/echo")
    );
    let node = Node::start(&config).await;
    let mut c = node.connect().await;
    let answer = c.request(json!({"action": "echo", "id": 1})).await;
    assert_eq!(answer["type"], "route_response");
    let call = backend.seen().pop().unwrap();
    assert!(!call.headers.contains_key("traceparent"));
}

fn string_attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    attribute(span, key).and_then(|v| v["stringValue"].as_str())
}

/// A publish on one node and its delivery on another share one trace: the `publish` span's
/// context rides the bus envelope, and the receiving node's `deliver` span is its child. The
/// same for a retained room (through the history script) and for the admin API; and each
/// connection is a span of its own, with its close code.
#[tokio::test]
async fn a_publish_and_its_delivery_on_another_node_share_one_trace() {
    let collector = Recorder::start("{}").await;
    let redis = Redis::start().await;
    let name = cluster_name();
    let config = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"wsgate-test\"\n\
         [[history]]\nrooms = [\"kept:*\"]\n\
         [cluster]\nname = \"{name}\"\nredis_url = \"{}\"\nnode_heartbeat = \"200ms\"\n",
        collector.url(""),
        redis.url()
    );
    let start =
        || Node::start_with(NodeOptions::config(&config).env("OTEL_BSP_SCHEDULE_DELAY", "100"));
    let (a, b) = (start().await, start().await);
    let mut publisher = a.connect().await;
    let mut member = b.connect().await;
    for room in ["plain", "kept:1"] {
        member
            .request(json!({"action":"join","room":room,"id":"j"}))
            .await;
        until_delivered(&mut publisher, &mut member, room, room).await;
        member.drain(std::time::Duration::from_millis(100)).await;
    }
    let base = spans(&collector).len();
    for room in ["plain", "kept:1"] {
        let ack = publisher
            .request(json!({"action":"publish","room":room,"data":"traced","id":room}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let m = member.recv().await;
        assert_eq!(m["data"], "traced");
    }
    let (status, _) = http_json(
        reqwest::Client::new()
            .post(a.admin_url("/rooms/plain/messages"))
            .json(&json!({"data":"from admin"})),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(member.recv().await["data"], "from admin");

    let traced = |all: &[Value], room: &str, connection: Option<&str>| -> Option<(Value, Value)> {
        let publish = all.iter().find(|s| {
            s["name"] == "publish"
                && string_attribute(s, "room") == Some(room)
                && connection.is_none_or(|c| string_attribute(s, "connection") == Some(c))
                && s["parentSpanId"].as_str().unwrap_or_default().is_empty()
        })?;
        let deliver = all
            .iter()
            .find(|s| s["name"] == "deliver" && s["traceId"] == publish["traceId"])?;
        Some((publish.clone(), deliver.clone()))
    };
    let publisher_id = publisher.id();
    eventually("publish and deliver spans exported", || async {
        let all: Vec<Value> = spans(&collector).into_iter().skip(base).collect();
        traced(&all, "plain", Some(&publisher_id)).is_some()
            && traced(&all, "kept:1", None).is_some()
            && traced(&all, "plain", Some("")).is_some()
    })
    .await;
    let all: Vec<Value> = spans(&collector).into_iter().skip(base).collect();
    for (room, connection) in [
        ("plain", Some(publisher_id.as_str())),
        ("kept:1", None),
        ("plain", Some("")),
    ] {
        let (publish, deliver) = traced(&all, room, connection).unwrap();
        assert_eq!(publish["kind"], 4, "a producer span: {publish}");
        assert_eq!(deliver["kind"], 5, "a consumer span: {deliver}");
        assert_eq!(
            deliver["parentSpanId"], publish["spanId"],
            "the delivery is the publish's child"
        );
        assert_eq!(string_attribute(&deliver, "room"), Some(room));
    }

    // A connection is a span from open to close, with its close code.
    let member_id = member.id();
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    member
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    eventually("the connection span exported", || async {
        spans(&collector).iter().any(|s| {
            s["name"] == "connection"
                && string_attribute(s, "connection") == Some(member_id.as_str())
        })
    })
    .await;
    let all = spans(&collector);
    let span = all
        .iter()
        .find(|s| {
            s["name"] == "connection"
                && string_attribute(s, "connection") == Some(member_id.as_str())
        })
        .unwrap();
    assert_eq!(span["kind"], 2, "a server span");
    let code = attribute(span, "close_code").map(|v| v["intValue"].clone());
    assert!(
        matches!(&code, Some(Value::String(s)) if s == "1000") || code == Some(json!(1000)),
        "{code:?} in {span}"
    );
}
