//! HTTP integrations (SPEC section 6): what a route's backend receives, sent over one shared,
//! pooled client, with a bound on the calls in flight per node (per connection, the session
//! bounds its own).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use protocol::{ConnectionId, NodeId};
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::routes::Route;

/// Integration calls in flight on one node, at most: past it a frame gets `unavailable`
/// rather than a queue that grows while a backend is slow.
pub const NODE_IN_FLIGHT: usize = 1_024;

/// Integration calls in flight for one connection, at most: past it a frame gets
/// `rate_limited`.
pub const CONNECTION_IN_FLIGHT: usize = 16;

/// The connection a call is made for: what `requestContext` says about it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its id (the one in its welcome).
    pub connection_id: ConnectionId,
    /// When it connected.
    pub connected_at: SystemTime,
    /// The TCP peer.
    pub source_ip: String,
    /// The token's `sub`.
    pub sub: Option<String>,
    /// Every claim of its token (`{}` when anonymous).
    pub claims: Arc<serde_json::Map<String, Value>>,
}

/// A backend's answer.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as sent.
    pub body: Bytes,
}

/// Largest `$connect` or `$disconnect` answer read, in bytes (a room list).
pub const LIFECYCLE_ANSWER_BYTES: usize = 64 * 1024;

/// The node's integration client.
pub struct Integrations {
    client: reqwest::Client,
    node: NodeId,
    in_flight: Arc<Semaphore>,
    /// `$connect` and `$disconnect` calls have their own bound: slow frame routes must not
    /// starve them (a `$disconnect` skipped leaves a backend with a ghost connection).
    lifecycle_in_flight: Arc<Semaphore>,
}

impl Integrations {
    /// A pooled client for this node's calls.
    pub fn new(node: NodeId) -> anyhow::Result<Integrations> {
        Ok(Integrations {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            node,
            in_flight: Arc::new(Semaphore::new(NODE_IN_FLIGHT)),
            lifecycle_in_flight: Arc::new(Semaphore::new(NODE_IN_FLIGHT)),
        })
    }

    fn context(&self, route_key: &str, event: &str, caller: &Caller) -> Value {
        json!({
            "routeKey": route_key,
            "eventType": event,
            "connectionId": caller.connection_id.as_str(),
            "nodeId": self.node.as_str(),
            "requestId": ConnectionId::random().as_str(),
            "connectedAt": humantime::format_rfc3339_millis(caller.connected_at).to_string(),
            "identity": {
                "sourceIp": caller.source_ip,
                "sub": caller.sub,
                "claims": Value::Object((*caller.claims).clone()),
            },
        })
    }

    /// The `MESSAGE` request for a routed frame (as JSON).
    pub fn message_request(&self, route_key: &str, caller: &Caller, frame: Value) -> Value {
        json!({
            "requestContext": self.context(route_key, "MESSAGE", caller),
            "body": frame,
        })
    }

    /// The `CONNECT` request: the handshake's headers (names lower-case, repeats joined with
    /// `, `) and query parameters, without `Authorization` and the token's query parameters.
    pub fn connect_request(
        &self,
        caller: &Caller,
        headers: &http::HeaderMap,
        query: Option<&str>,
        token_params: &[String],
        token_cookie: Option<&str>,
    ) -> Value {
        let mut hs = serde_json::Map::new();
        for name in headers.keys() {
            if name == http::header::AUTHORIZATION {
                continue;
            }
            let mut joined: Vec<String> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect();
            if name == http::header::COOKIE {
                if let Some(token_cookie) = token_cookie {
                    // The token's cookie stays with the gateway; the others go on.
                    joined = joined
                        .iter()
                        .map(|h| {
                            cookie::Cookie::split_parse(h.as_str())
                                .flatten()
                                .filter(|c| c.name() != token_cookie)
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        })
                        .filter(|h| !h.is_empty())
                        .collect();
                }
                if joined.is_empty() {
                    continue;
                }
            }
            hs.insert(name.as_str().to_owned(), Value::String(joined.join(", ")));
        }
        let mut qs = serde_json::Map::new();
        let pairs: Vec<(String, String)> = query
            .and_then(|q| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default();
        for (k, v) in pairs {
            if !token_params.contains(&k) {
                qs.insert(k, Value::String(v));
            }
        }
        json!({
            "requestContext": self.context("$connect", "CONNECT", caller),
            "headers": hs,
            "queryStringParameters": qs,
        })
    }

    /// The `DISCONNECT` request, with the close code and reason.
    pub fn disconnect_request(&self, caller: &Caller, code: u16, reason: &str) -> Value {
        let mut context = self.context("$disconnect", "DISCONNECT", caller);
        context["disconnectStatusCode"] = json!(code);
        context["disconnectReason"] = json!(reason);
        json!({ "requestContext": context })
    }

    /// A slot for one more frame call on this node; `None` when [`NODE_IN_FLIGHT`] are in
    /// flight.
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().try_acquire_owned().ok()
    }

    /// A slot for one more `$connect` or `$disconnect` call.
    pub fn lifecycle_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.lifecycle_in_flight.clone().try_acquire_owned().ok()
    }

    /// POSTs `request` to the route within its timeout and reads at most `max_answer` bytes
    /// of the answer. `Err` says what failed (unreachable, timed out, an answer too large);
    /// any status is an `Answer`.
    pub async fn call(
        &self,
        route: &Route,
        request: &Value,
        max_answer: usize,
    ) -> Result<Answer, String> {
        let context = &request["requestContext"];
        let span = tracing::info_span!(
            "integration",
            otel.kind = "client",
            route = context["routeKey"].as_str().unwrap_or_default(),
            event = context["eventType"].as_str().unwrap_or_default(),
            connection = context["connectionId"].as_str().unwrap_or_default(),
            server.address = route.url.host_str().unwrap_or_default(),
            url.path = route.url.path(),
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let result = self
            .send(route, request, max_answer, &span)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(answer) => {
                span.record("http.response.status_code", i64::from(answer.status));
                if answer.status >= 400 {
                    span.record("otel.status_code", "ERROR");
                }
            }
            Err(why) => {
                span.record("otel.status_code", "ERROR");
                span.record("error", why.as_str());
            }
        }
        result
    }

    /// The call itself, with the span's trace context in its headers.
    async fn send(
        &self,
        route: &Route,
        request: &Value,
        max_answer: usize,
        span: &tracing::Span,
    ) -> Result<Answer, String> {
        let mut post = self
            .client
            .post(route.url.clone())
            .timeout(route.timeout)
            .json(request);
        for (name, value) in crate::telemetry::trace_headers(span) {
            post = post.header(name, value);
        }
        let mut sent = post.send().await.map_err(|e| describe(&e))?;
        let status = sent.status().as_u16();
        let too_large = || format!("the integration's answer is over {max_answer} bytes");
        if sent.content_length().is_some_and(|n| n > max_answer as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = sent.chunk().await.map_err(|e| describe(&e))? {
            if body.len() + chunk.len() > max_answer {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            body: body.into(),
        })
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the integration timed out".into()
    } else if e.is_connect() {
        "the integration is unreachable".into()
    } else {
        "the integration call failed".into()
    }
}

/// The `data` of a `route_response`: the answer parsed as JSON, else the text.
pub fn answer_data(body: &Bytes) -> protocol::Payload {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => protocol::Payload::from_json_value(&v),
        Err(_) => protocol::Payload::from_json_value(&Value::String(
            String::from_utf8_lossy(body).into_owned(),
        )),
    }
}
