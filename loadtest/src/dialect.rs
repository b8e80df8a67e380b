//! What the gateway under test speaks: wsgate's own protocol, Pusher 7 (Soketi, Sockudo) or
//! Socket.IO v5 over Engine.IO v4 (a Socket.IO server with the Redis adapter).
//!
//! The peers are measured with the same workers, the same members and the same clock as
//! wsgate, so a table of them side by side compares gateways and not harnesses. This module
//! knows each dialect's frames; [`crate::client`] and [`crate::worker`] do the I/O. Pusher
//! publishes go through its signed HTTP events API ([`crate::pusher_http`]), as a Pusher
//! backend would; the others publish over a WebSocket.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// A gateway's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// wsgate (`wsgate.v1.json`): welcome, `join`, `publish` with acks.
    #[default]
    Wsgate,
    /// Pusher protocol 7 (Soketi, Sockudo): `pusher:subscribe`; publishes through the HTTP
    /// events API. The URL is the app's socket URL (`ws://HOST:PORT/app/KEY?protocol=7`).
    Pusher,
    /// Socket.IO v5 over Engine.IO v4, WebSocket transport only, against
    /// `loadtest/peers/socketio-server.js` (events `join` and `publish`, deliveries as `msg`).
    /// The URL is `ws://HOST:PORT/socket.io/?EIO=4&transport=websocket`.
    SocketIo,
}

/// What a frame from the gateway means to a connection that is opening or joining.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Nothing for this step (a message, a welcome of another kind).
    Other,
    /// The step succeeded; for a greeting, the connection's id.
    Ok(String),
    /// The gateway refused.
    Refused(String),
}

impl Dialect {
    /// The WebSocket subprotocol to ask for, if the gateway wants one.
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Dialect::Wsgate => Some("wsgate.v1.json"),
            Dialect::Pusher | Dialect::SocketIo => None,
        }
    }

    /// Reads the gateway's first frame: the connection id when it is the expected greeting.
    pub fn greeting(self, text: &str) -> Answer {
        match self {
            Dialect::Wsgate => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                    return Answer::Refused(format!("greeting is not JSON: {text}"));
                };
                match (v["type"].as_str(), v["connection_id"].as_str()) {
                    (Some("welcome"), Some(id)) => Answer::Ok(id.to_owned()),
                    _ => Answer::Refused(format!("expected a welcome, got {text}")),
                }
            }
            Dialect::Pusher => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                    return Answer::Refused(format!("greeting is not JSON: {text}"));
                };
                if v["event"] == "pusher:error" {
                    return Answer::Refused(text.to_owned());
                }
                if v["event"] != "pusher:connection_established" {
                    return Answer::Other;
                }
                // `data` is itself JSON, as a string.
                let data: serde_json::Value = v["data"]
                    .as_str()
                    .and_then(|d| serde_json::from_str(d).ok())
                    .unwrap_or_default();
                match data["socket_id"].as_str() {
                    Some(id) => Answer::Ok(id.to_owned()),
                    None => Answer::Refused(format!("no socket_id in {text}")),
                }
            }
            Dialect::SocketIo => match text.as_bytes().first() {
                // Engine.IO open; the Socket.IO connect (`40`) follows from us.
                Some(b'0') => Answer::Ok(String::new()),
                _ => Answer::Refused(format!("expected an Engine.IO open packet, got {text}")),
            },
        }
    }

    /// Frames to send after the greeting before the connection counts as open, and how to
    /// read the answer ([`Dialect::connected`]). Only Socket.IO has this step.
    pub fn connect_frame(self) -> Option<&'static str> {
        (self == Dialect::SocketIo).then_some("40")
    }

    /// Reads the answer to [`Dialect::connect_frame`]: the Socket.IO session id.
    pub fn connected(self, text: &str) -> Answer {
        if let Some(rest) = text.strip_prefix("40") {
            let v: serde_json::Value = serde_json::from_str(rest).unwrap_or_default();
            return match v["sid"].as_str() {
                Some(sid) => Answer::Ok(sid.to_owned()),
                None => Answer::Refused(format!("connect answer without sid: {text}")),
            };
        }
        if text.starts_with("44") {
            return Answer::Refused(text.to_owned());
        }
        Answer::Other
    }

    /// The frame that joins `room` (request id 1 where the dialect has ids).
    pub fn join_frame(self, room: &str) -> String {
        let room = serde_json::Value::from(room);
        match self {
            Dialect::Wsgate => format!(r#"{{"action":"join","room":{room},"id":1}}"#),
            Dialect::Pusher => {
                format!(r#"{{"event":"pusher:subscribe","data":{{"channel":{room}}}}}"#)
            }
            Dialect::SocketIo => format!(r#"421["join",{room}]"#),
        }
    }

    /// Reads a frame while waiting for the answer to [`Dialect::join_frame`].
    pub fn joined(self, text: &str) -> Answer {
        match self {
            Dialect::Wsgate => match crate::client::answer(text) {
                Some((Some(1), Ok(()))) => Answer::Ok(String::new()),
                Some((_, Err(e))) => Answer::Refused(e),
                _ => Answer::Other,
            },
            Dialect::Pusher => {
                if text.contains(r#""event":"pusher_internal:subscription_succeeded""#) {
                    Answer::Ok(String::new())
                } else if text.contains(r#""event":"pusher:error""#)
                    || text.contains(r#""event":"pusher:subscription_error""#)
                {
                    Answer::Refused(text.to_owned())
                } else {
                    Answer::Other
                }
            }
            Dialect::SocketIo => {
                if text.starts_with("431") {
                    Answer::Ok(String::new())
                } else {
                    Answer::Other
                }
            }
        }
    }

    /// The answer a keep-alive frame from the gateway needs, if `text` is one: Pusher's
    /// `pusher:ping` and Engine.IO's ping (`2`). wsgate pings with WebSocket pings, which
    /// tungstenite answers itself.
    pub fn keepalive_reply(self, text: &str) -> Option<&'static str> {
        match self {
            Dialect::Wsgate => None,
            Dialect::Pusher => text
                .contains(r#""event":"pusher:ping""#)
                .then_some(r#"{"event":"pusher:pong","data":{}}"#),
            Dialect::SocketIo => (text == "2").then_some("3"),
        }
    }

    /// A publish over the WebSocket of `data` (a JSON object) to `room`, asking for an
    /// answer with request id `id`. `None` for Pusher, which publishes over HTTP.
    pub fn publish_frame(self, room: &str, id: u64, data: &str) -> Option<String> {
        let room = serde_json::Value::from(room);
        match self {
            Dialect::Wsgate => Some(format!(
                r#"{{"action":"publish","room":{room},"id":{id},"exclude_self":true,"data":{data}}}"#
            )),
            Dialect::SocketIo => Some(format!(r#"42{id}["publish",{room},{data}]"#)),
            Dialect::Pusher => None,
        }
    }

    /// Reads a frame on a publisher's connection: `Some(Ok)` an ack, `Some(Err)` a refusal,
    /// `None` anything else.
    pub fn publish_answer(self, text: &str) -> Option<Result<(), String>> {
        match self {
            Dialect::Wsgate => crate::client::answer(text).map(|(_, r)| r),
            Dialect::SocketIo => text.starts_with("43").then_some(Ok(())),
            Dialect::Pusher => text
                .contains(r#""event":"pusher:error""#)
                .then(|| Err(text.to_owned())),
        }
    }

    /// Parses a delivered message: its sequence number and send time (ns since the epoch),
    /// or `None` when `text` is not a delivery of this dialect. Byte scans, not JSON parses:
    /// the harness must read faster than the gateway writes.
    pub fn delivery(self, text: &str) -> Option<(u64, u64)> {
        match self {
            Dialect::Wsgate => crate::worker::parse_delivery(text),
            // `{"event":"msg","channel":"bench","data":"{\"seq\":7,\"t\":9,...}"}`: the
            // published `data` arrives as a JSON string.
            Dialect::Pusher => {
                if !text.contains(r#""event":"msg""#) {
                    return None;
                }
                Some((
                    number_after(text, r#"\"seq\":"#)?,
                    number_after(text, r#"\"t\":"#)?,
                ))
            }
            // `42["msg",{"seq":7,"t":9,...}]`.
            Dialect::SocketIo => {
                let rest = text.strip_prefix(r#"42["msg","#)?;
                Some((
                    number_after(rest, r#""seq":"#)?,
                    number_after(rest, r#""t":"#)?,
                ))
            }
        }
    }
}

/// The unsigned integer right after the first `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

/// The published payload for sequence `seq`: `{"seq":N,"t":SEND_NS,"pad":"xx…"}`, padded to
/// about `size` bytes. Every dialect carries it unchanged.
pub fn payload(seq: u64, sent_ns: u64, size: usize) -> String {
    let head = format!(r#"{{"seq":{seq},"t":{sent_ns},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    format!(r#"{head}{}"}}"#, "x".repeat(pad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings() {
        assert_eq!(
            Dialect::Wsgate.greeting(r#"{"type":"welcome","connection_id":"c1","node":"n"}"#),
            Answer::Ok("c1".into())
        );
        let pusher = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"12.34\",\"activity_timeout\":30}"}"#;
        assert_eq!(Dialect::Pusher.greeting(pusher), Answer::Ok("12.34".into()));
        assert!(matches!(
            Dialect::Pusher.greeting(r#"{"event":"pusher:error","data":{"code":4001}}"#),
            Answer::Refused(_)
        ));
        assert_eq!(
            Dialect::SocketIo.greeting(r#"0{"sid":"a","upgrades":[],"pingInterval":25000}"#),
            Answer::Ok(String::new())
        );
        assert_eq!(
            Dialect::SocketIo.connected(r#"40{"sid":"xyz"}"#),
            Answer::Ok("xyz".into())
        );
        assert!(matches!(
            Dialect::SocketIo.connected(r#"44{"message":"no"}"#),
            Answer::Refused(_)
        ));
    }

    #[test]
    fn joins_and_their_answers() {
        let f = Dialect::Pusher.join_frame("bench");
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["data"]["channel"], "bench");
        assert_eq!(
            Dialect::SocketIo.join_frame("a\"b"),
            r#"421["join","a\"b"]"#
        );
        assert_eq!(
            Dialect::Pusher.joined(
                r#"{"event":"pusher_internal:subscription_succeeded","channel":"bench","data":"{}"}"#
            ),
            Answer::Ok(String::new())
        );
        assert_eq!(Dialect::SocketIo.joined("431[]"), Answer::Ok(String::new()));
        assert_eq!(Dialect::SocketIo.joined("2"), Answer::Other);
        assert_eq!(
            Dialect::Wsgate.joined(r#"{"type":"ack","id":1}"#),
            Answer::Ok(String::new())
        );
    }

    #[test]
    fn keepalives_are_answered() {
        assert_eq!(Dialect::SocketIo.keepalive_reply("2"), Some("3"));
        assert_eq!(Dialect::SocketIo.keepalive_reply("42[]"), None);
        assert!(Dialect::Pusher
            .keepalive_reply(r#"{"event":"pusher:ping","data":{}}"#)
            .is_some());
        assert_eq!(Dialect::Wsgate.keepalive_reply("2"), None);
    }

    #[test]
    fn deliveries_of_every_dialect_parse() {
        let data = payload(42, 1_700_000_000_123_456_789, 100);
        assert!((95..=105).contains(&data.len()), "{}", data.len());
        let expect = Some((42, 1_700_000_000_123_456_789));
        let wsgate = format!(r#"{{"type":"message","room":"bench","data":{data},"from":"c"}}"#);
        assert_eq!(Dialect::Wsgate.delivery(&wsgate), expect);
        let pusher = serde_json::json!({"event": "msg", "channel": "bench", "data": data});
        assert_eq!(Dialect::Pusher.delivery(&pusher.to_string()), expect);
        let sio = format!(r#"42["msg",{data}]"#);
        assert_eq!(Dialect::SocketIo.delivery(&sio), expect);
        // Other frames of each dialect are not deliveries.
        assert_eq!(Dialect::SocketIo.delivery("431[]"), None);
        assert_eq!(
            Dialect::Pusher.delivery(r#"{"event":"pusher:pong","data":{}}"#),
            None
        );
    }

    #[test]
    fn publish_frames() {
        let data = payload(3, 5, 60);
        let f = Dialect::Wsgate.publish_frame("bench", 4, &data).unwrap();
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(
            (v["id"].as_u64(), v["data"]["seq"].as_u64()),
            (Some(4), Some(3))
        );
        let f = Dialect::SocketIo.publish_frame("bench", 4, &data).unwrap();
        let v: serde_json::Value = serde_json::from_str(f.strip_prefix("424").unwrap()).unwrap();
        assert_eq!(v[0], "publish");
        assert_eq!(v[2]["t"], 5);
        assert_eq!(Dialect::Pusher.publish_frame("bench", 4, &data), None);
        assert_eq!(Dialect::SocketIo.publish_answer("434[]"), Some(Ok(())));
        assert_eq!(Dialect::SocketIo.publish_answer("2"), None);
    }
}
