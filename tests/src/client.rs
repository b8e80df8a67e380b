//! WebSocket clients of a node: what they read, JSON and MessagePack frames, subprotocols and
//! tokens; publishing until a cross-node delivery arrives.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::*;

/// What a client read.
#[derive(Debug)]
pub enum Event {
    /// A JSON text frame.
    Json(Value),
    /// A binary frame.
    Binary(Bytes),
    /// A server ping.
    Ping,
    /// A close frame with its code.
    Close(Option<u16>),
    /// The stream ended without a close frame.
    Ended,
}

/// A WebSocket client.
pub struct Client {
    /// The socket.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The welcome frame (JSON clients; MessagePack welcomes are decoded to JSON).
    pub welcome: Value,
    /// The negotiated subprotocol header, if the server sent one.
    pub protocol: Option<String>,
}

impl Client {
    /// Connects and reads the welcome.
    pub async fn connect(
        req: Request<()>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut c = Client {
            ws,
            welcome: Value::Null,
            protocol,
        };
        c.welcome = match c.next_event().await {
            Event::Json(v) => v,
            Event::Binary(b) => msgpack_to_json(&b),
            other => panic!("expected a welcome, got {other:?}"),
        };
        assert_eq!(c.welcome["type"], "welcome");
        Ok(c)
    }

    /// This connection's id.
    pub fn id(&self) -> String {
        self.welcome["connection_id"].as_str().unwrap().to_owned()
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.expect("send");
    }

    /// Sends raw binary.
    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::binary(b)).await.expect("send");
    }

    /// The next thing from the server (pings included), within [`WAIT`].
    pub async fn next_event(&mut self) -> Event {
        let next = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("timed out waiting for the server");
        match next {
            None | Some(Err(_)) => Event::Ended,
            Some(Ok(Message::Text(t))) => {
                Event::Json(serde_json::from_str(&t).expect("JSON frame"))
            }
            Some(Ok(Message::Binary(b))) => Event::Binary(b),
            Some(Ok(Message::Ping(_))) => Event::Ping,
            Some(Ok(Message::Close(f))) => Event::Close(f.map(|f: CloseFrame| u16::from(f.code))),
            Some(Ok(_)) => Event::Json(Value::Null),
        }
    }

    /// The next JSON frame, skipping pings; panics on anything else.
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_event().await {
                Event::Json(v) => return v,
                Event::Ping => continue,
                other => panic!("expected a JSON frame, got {other:?}"),
            }
        }
    }

    /// The next binary frame decoded from MessagePack to JSON, skipping pings.
    pub async fn recv_msgpack(&mut self) -> Value {
        loop {
            match self.next_event().await {
                Event::Binary(b) => return msgpack_to_json(&b),
                Event::Ping => continue,
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// Sends a frame and returns the answer carrying the same `id`.
    pub async fn request(&mut self, v: Value) -> Value {
        let id = v["id"].clone();
        assert!(!id.is_null(), "request needs an id");
        self.send(v).await;
        loop {
            let f = self.recv().await;
            if f["id"] == id {
                return f;
            }
        }
    }

    /// Reads until the close frame and returns its code (skipping frames and pings).
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next_event().await {
                Event::Close(code) => return code,
                Event::Ended => return None,
                _ => continue,
            }
        }
    }

    /// Discards whatever arrives until `quiet` passes without a message.
    pub async fn drain(&mut self, quiet: Duration) {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(quiet, self.ws.next()).await {}
    }

    /// Asserts nothing arrives (pings aside) for `d`.
    pub async fn assert_silent(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// Decodes MessagePack into JSON (bin as base64), for assertions.
pub fn msgpack_to_json(b: &[u8]) -> Value {
    let v = rmpv::decode::read_value(&mut &b[..]).expect("msgpack frame");
    mp_json(v)
}

fn mp_json(v: rmpv::Value) -> Value {
    use rmpv::Value as V;
    match v {
        V::Nil => Value::Null,
        V::Boolean(b) => b.into(),
        V::Integer(i) => i
            .as_i64()
            .map(Value::from)
            .or(i.as_u64().map(Value::from))
            .unwrap(),
        V::F32(f) => (f as f64).into(),
        V::F64(f) => f.into(),
        V::String(s) => s.into_str().unwrap().into(),
        V::Binary(b) => Value::String(format!("<bin:{}>", b.len())),
        V::Array(a) => a.into_iter().map(mp_json).collect(),
        V::Map(m) => m
            .into_iter()
            .map(|(k, v)| (k.as_str().unwrap().to_owned(), mp_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        V::Ext(..) => Value::String("<ext>".into()),
    }
}

/// Encodes a JSON-like value as MessagePack (for msgpack clients).
pub fn msgpack(v: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

/// Connects with a subprotocol list.
pub async fn connect_protocols(
    node: &Node,
    protocols: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let p = protocols.to_owned();
    node.connect_req(move |r| {
        r.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_str(&p).unwrap());
    })
    .await
}

/// Connects with an `Authorization: Bearer` token.
pub async fn connect_bearer(
    node: &Node,
    token: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let t = format!("Bearer {token}");
    node.connect_req(move |r| {
        r.headers_mut()
            .insert("authorization", HeaderValue::from_str(&t).unwrap());
    })
    .await
}

/// Publishes on `publisher` into `room` until `receiver` (a member, on another node) gets a
/// message: cross-node traffic flows. `what` names the phase in the failure message.
pub async fn until_delivered(
    publisher: &mut Client,
    receiver: &mut Client,
    room: &str,
    what: &str,
) {
    for i in 0.. {
        assert!(i < 200, "{what}: cross-node traffic never flowed");
        publisher
            .send(serde_json::json!({"action":"publish","room":room,"data":i,"exclude_self":true}))
            .await;
        if let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(100), receiver.ws.next()).await
        {
            if m.to_text()
                .map(|t| t.contains("\"message\""))
                .unwrap_or(false)
            {
                return;
            }
        }
    }
}

/// Sends 300 `ping` frames with 100 KB ids on `ws` without reading, waits until the node
/// counts a slow consumer, then reads: the number of replies that got through before the
/// bound, and the close code. Plain and TLS clients alike.
pub async fn flood_unread_replies<S>(ws: WebSocketStream<S>, node: &Node) -> (usize, Option<u16>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    // 300 pongs of 100 KB: 30 MB, far more than the socket buffers and a 1 MiB byte bound
    // hold, and far fewer frames than the frame bound (1,024).
    let id = "i".repeat(100_000);
    let sender = tokio::spawn(async move {
        for _ in 0..300 {
            let ping = serde_json::json!({"action":"ping","id":id}).to_string();
            if sink.send(Message::text(ping)).await.is_err() {
                break;
            }
        }
    });
    node.metric_settles("wsgate_slow_consumer_closes_total", 1.0)
        .await;
    // Now read: what was written before the bound, then the close.
    let mut replies = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a close")
        {
            Some(Ok(Message::Text(_))) => replies += 1,
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let _ = sender.await;
    (replies, code)
}
