//! SPEC section 12 for integration calls: with `telemetry.otlp_endpoint` set, each call is a
//! span exported over OTLP (HTTP/JSON, to a recording collector on loopback), and the backend
//! gets the span's W3C trace context in `traceparent`.

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
