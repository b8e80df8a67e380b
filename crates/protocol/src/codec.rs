//! Subprotocols, decoding client frames, and encoding server frames.
//!
//! Server frames are written field by field into one buffer by a small writer with a JSON and
//! a MessagePack back end, so a broadcast costs one encode per encoding and the payload is
//! spliced in without a second parse when the encodings match.

use bytes::Bytes;

use crate::error::{DecodeError, ErrorCode, FrameError};
use crate::fields::Fields;
use crate::frame::{ClientFrame, PresenceEvent, RoutedFrame, ServerFrame};
use crate::id::{ConnectionId, NodeId, RequestId};
use crate::payload::{Payload, PayloadError};
use crate::room::RoomName;

/// The frame encoding a connection negotiated through its subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `wsgate.v1.json`: JSON objects in text messages.
    Json,
    /// `wsgate.v1.msgpack`: MessagePack maps in binary messages.
    MsgPack,
}

/// Subprotocol name of [`Encoding::Json`].
pub const SUBPROTOCOL_JSON: &str = "wsgate.v1.json";
/// Subprotocol name of [`Encoding::MsgPack`].
pub const SUBPROTOCOL_MSGPACK: &str = "wsgate.v1.msgpack";

impl Encoding {
    /// The subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => SUBPROTOCOL_JSON,
            Encoding::MsgPack => SUBPROTOCOL_MSGPACK,
        }
    }

    /// Parses a subprotocol name.
    pub fn from_subprotocol(name: &str) -> Option<Encoding> {
        match name {
            SUBPROTOCOL_JSON => Some(Encoding::Json),
            SUBPROTOCOL_MSGPACK => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    /// Whether frames travel in text messages.
    pub fn is_text(self) -> bool {
        self == Encoding::Json
    }

    /// Both encodings, in a fixed order (index with [`Encoding::index`]).
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

    /// 0 for JSON, 1 for MessagePack: for per-encoding arrays.
    pub fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::MsgPack => 1,
        }
    }
}

/// The result of subprotocol negotiation (SPEC section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// The client offered none: JSON, and no `Sec-WebSocket-Protocol` in the answer.
    Default,
    /// The client's first known subprotocol, echoed in the answer.
    Chosen(Encoding),
    /// Only unknown subprotocols were offered: refuse with 400.
    Unsupported,
}

impl Negotiated {
    /// The encoding to use, if the upgrade may proceed.
    pub fn encoding(self) -> Option<Encoding> {
        match self {
            Negotiated::Default => Some(Encoding::Json),
            Negotiated::Chosen(e) => Some(e),
            Negotiated::Unsupported => None,
        }
    }
}

/// Picks the encoding from the offered subprotocols, in the client's order of preference.
pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Negotiated {
    let mut any = false;
    for name in offered {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        any = true;
        if let Some(e) = Encoding::from_subprotocol(name) {
            return Negotiated::Chosen(e);
        }
    }
    if any {
        Negotiated::Unsupported
    } else {
        Negotiated::Default
    }
}

/// One encoded server frame, ready to be written as a WebSocket message.
///
/// Invariant: when `encoding` is JSON the bytes are valid UTF-8 (they come from the JSON
/// writer), so the writer may send them as a text message without checking them again for
/// every recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    bytes: Bytes,
    encoding: Encoding,
}

impl EncodedFrame {
    /// The bytes of the message.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the frame.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The encoding: JSON frames are text messages, MessagePack frames binary ones.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the frame is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Decodes one client message. `is_text` says whether it came as a text message.
pub fn decode_client(
    encoding: Encoding,
    msg: &Bytes,
    is_text: bool,
) -> Result<ClientFrame, FrameError> {
    let fields = match (encoding, is_text) {
        (Encoding::Json, true) => Fields::json(msg),
        (Encoding::MsgPack, false) => Fields::msgpack(msg),
        (Encoding::Json, false) => Err(DecodeError::WrongMessageType("binary", "JSON")),
        (Encoding::MsgPack, true) => Err(DecodeError::WrongMessageType("text", "MessagePack")),
    }
    .map_err(|e| FrameError::new(None, e))?;
    let id = fields.request_id().map_err(|e| FrameError::new(None, e))?;
    client_from_fields(&fields, id.clone(), msg, encoding).map_err(|e| FrameError::new(id, e))
}

fn room(fields: &Fields<'_>) -> Result<RoomName, DecodeError> {
    Ok(RoomName::parse(&fields.req_str("room")?)?)
}

fn client_from_fields(
    f: &Fields<'_>,
    id: Option<RequestId>,
    raw: &Bytes,
    encoding: Encoding,
) -> Result<ClientFrame, DecodeError> {
    // A non-string action is for the route table (a selection expression may not even
    // look at `action`).
    let action = f.str("action").unwrap_or_default();
    Ok(match action.as_deref() {
        Some("join") => ClientFrame::Join {
            id,
            room: room(f)?,
            since: f.u64("since")?,
            epoch: f.str("epoch")?,
        },
        Some("leave") => ClientFrame::Leave { id, room: room(f)? },
        Some("publish") => ClientFrame::Publish {
            id,
            room: room(f)?,
            data: f
                .payload("data")?
                .ok_or(DecodeError::MissingField("data"))?,
            exclude_self: f.bool("exclude_self")?.unwrap_or(false),
        },
        Some("send") => ClientFrame::Send {
            id,
            to: ConnectionId::from_string(f.req_str("to")?),
            data: f
                .payload("data")?
                .ok_or(DecodeError::MissingField("data"))?,
        },
        Some("refresh") => ClientFrame::Refresh {
            id,
            token: f.req_str("token")?,
        },
        Some("ping") => ClientFrame::Ping { id },
        _ => ClientFrame::Routed(RoutedFrame {
            id,
            action,
            raw: raw.clone(),
            encoding,
        }),
    })
}

/// Writes the fields of one flat map in either encoding.
enum Writer {
    Json { out: Vec<u8>, first: bool },
    MsgPack { out: Vec<u8> },
}

impl Writer {
    fn new(encoding: Encoding, capacity: usize, fields: u32) -> Writer {
        let mut out = Vec::with_capacity(capacity);
        match encoding {
            Encoding::Json => {
                out.push(b'{');
                Writer::Json { out, first: true }
            }
            Encoding::MsgPack => {
                // Writing into a Vec cannot fail.
                let _ = rmp::encode::write_map_len(&mut out, fields);
                Writer::MsgPack { out }
            }
        }
    }

    fn key(&mut self, k: &str) {
        match self {
            Writer::Json { out, first } => {
                if !*first {
                    out.push(b',');
                }
                *first = false;
                out.push(b'"');
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"\":");
            }
            Writer::MsgPack { out } => {
                let _ = rmp::encode::write_str(out, k);
            }
        }
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        match self {
            Writer::Json { out, .. } => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            Writer::MsgPack { out } => {
                let _ = rmp::encode::write_str(out, v);
            }
        }
    }

    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => {
                self.key(k);
                match self {
                    Writer::Json { out, .. } => out.extend_from_slice(b"null"),
                    Writer::MsgPack { out } => {
                        let _ = rmp::encode::write_nil(out);
                    }
                }
            }
        }
    }

    fn u64(&mut self, k: &str, v: u64) {
        self.key(k);
        match self {
            Writer::Json { out, .. } => {
                let _ = serde_json::to_writer(&mut *out, &v);
            }
            Writer::MsgPack { out } => {
                let _ = rmp::encode::write_uint(out, v);
            }
        }
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        match self {
            Writer::Json { out, .. } => out.extend_from_slice(if v { b"true" } else { b"false" }),
            Writer::MsgPack { out } => {
                let _ = rmp::encode::write_bool(out, v);
            }
        }
    }

    fn id(&mut self, v: &RequestId) {
        match v {
            RequestId::Str(s) => self.str("id", s),
            RequestId::Int(i) => {
                self.key("id");
                match self {
                    Writer::Json { out, .. } => {
                        let _ = serde_json::to_writer(&mut *out, i);
                    }
                    Writer::MsgPack { out } => {
                        let _ = rmp::encode::write_sint(out, *i);
                    }
                }
            }
        }
    }

    fn payload(&mut self, k: &str, p: &Payload) -> Result<(), PayloadError> {
        self.key(k);
        match self {
            Writer::Json { out, .. } => p.write_json(out),
            Writer::MsgPack { out } => p.write_msgpack(out),
        }
    }

    fn finish(self) -> EncodedFrame {
        match self {
            Writer::Json { mut out, .. } => {
                out.push(b'}');
                EncodedFrame {
                    bytes: out.into(),
                    encoding: Encoding::Json,
                }
            }
            Writer::MsgPack { out } => EncodedFrame {
                bytes: out.into(),
                encoding: Encoding::MsgPack,
            },
        }
    }
}

fn count(flags: &[bool]) -> u32 {
    flags.iter().filter(|f| **f).count() as u32
}

impl ServerFrame {
    /// Encodes the frame. Fails only when a payload from another node is malformed.
    pub fn encode(&self, encoding: Encoding) -> Result<EncodedFrame, PayloadError> {
        let mut w;
        match self {
            ServerFrame::Welcome {
                connection_id,
                node,
                protocol,
                heartbeat_ms,
            } => {
                w = Writer::new(encoding, 128, 5);
                w.str("type", "welcome");
                w.str("connection_id", connection_id.as_str());
                w.str("node", node.as_str());
                w.str("protocol", protocol.subprotocol());
                w.u64("heartbeat_ms", *heartbeat_ms);
            }
            ServerFrame::Ack {
                id,
                offset,
                epoch,
                recovered,
            } => {
                let n = 1 + count(&[
                    id.is_some(),
                    offset.is_some(),
                    epoch.is_some(),
                    recovered.is_some(),
                ]);
                w = Writer::new(encoding, 64, n);
                w.str("type", "ack");
                if let Some(id) = id {
                    w.id(id);
                }
                if let Some(o) = offset {
                    w.u64("offset", *o);
                }
                if let Some(e) = epoch {
                    w.str("epoch", e);
                }
                if let Some(r) = recovered {
                    w.bool("recovered", *r);
                }
            }
            ServerFrame::Message {
                room,
                data,
                from,
                offset,
                epoch,
            } => {
                let n = 4 + count(&[offset.is_some(), epoch.is_some()]);
                w = Writer::new(encoding, 64 + room.as_str().len() + data.raw_len(), n);
                w.str("type", "message");
                w.str("room", room.as_str());
                w.payload("data", data)?;
                w.opt_str("from", from.as_ref().map(ConnectionId::as_str));
                if let Some(o) = offset {
                    w.u64("offset", *o);
                }
                if let Some(e) = epoch {
                    w.str("epoch", e);
                }
            }
            ServerFrame::Direct { from, data } => {
                w = Writer::new(encoding, 48 + data.raw_len(), 3);
                w.str("type", "direct");
                w.opt_str("from", from.as_ref().map(ConnectionId::as_str));
                w.payload("data", data)?;
            }
            ServerFrame::RouteResponse { route, id, data } => {
                w = Writer::new(encoding, 48 + data.raw_len(), 3 + count(&[id.is_some()]));
                w.str("type", "route_response");
                w.str("route", route);
                if let Some(id) = id {
                    w.id(id);
                }
                w.payload("data", data)?;
            }
            ServerFrame::Presence {
                room,
                event,
                connection_id,
            } => {
                w = Writer::new(encoding, 96, 4);
                w.str("type", "presence");
                w.str("room", room.as_str());
                w.str("event", event.as_str());
                w.str("connection_id", connection_id.as_str());
            }
            ServerFrame::Pong { id } => {
                w = Writer::new(encoding, 32, 1 + count(&[id.is_some()]));
                w.str("type", "pong");
                if let Some(id) = id {
                    w.id(id);
                }
            }
            ServerFrame::Error { id, code, message } => {
                w = Writer::new(encoding, 64 + message.len(), 3 + count(&[id.is_some()]));
                w.str("type", "error");
                if let Some(id) = id {
                    w.id(id);
                }
                w.str("code", code.as_str());
                w.str("message", message);
            }
        }
        Ok(w.finish())
    }

    /// Decodes a server frame: for clients written in Rust (tests, the load harness).
    pub fn decode(encoding: Encoding, msg: &Bytes) -> Result<ServerFrame, DecodeError> {
        let f = match encoding {
            Encoding::Json => Fields::json(msg)?,
            Encoding::MsgPack => Fields::msgpack(msg)?,
        };
        let id = f.request_id()?;
        let from = f.str("from")?.map(ConnectionId::from_string);
        let data = || f.payload("data")?.ok_or(DecodeError::MissingField("data"));
        Ok(match f.req_str("type")?.as_str() {
            "welcome" => ServerFrame::Welcome {
                connection_id: ConnectionId::from_string(f.req_str("connection_id")?),
                node: NodeId::new(f.req_str("node")?),
                protocol: Encoding::from_subprotocol(&f.req_str("protocol")?).ok_or(
                    DecodeError::WrongType {
                        field: "protocol",
                        expected: "a known subprotocol",
                    },
                )?,
                heartbeat_ms: f
                    .u64("heartbeat_ms")?
                    .ok_or(DecodeError::MissingField("heartbeat_ms"))?,
            },
            "ack" => ServerFrame::Ack {
                id,
                offset: f.u64("offset")?,
                epoch: f.str("epoch")?,
                recovered: f.bool("recovered")?,
            },
            "message" => ServerFrame::Message {
                room: RoomName::parse(&f.req_str("room")?)?,
                data: data()?,
                from,
                offset: f.u64("offset")?,
                epoch: f.str("epoch")?,
            },
            "direct" => ServerFrame::Direct {
                from,
                data: data()?,
            },
            "route_response" => ServerFrame::RouteResponse {
                route: f.req_str("route")?,
                id,
                data: data()?,
            },
            "presence" => ServerFrame::Presence {
                room: RoomName::parse(&f.req_str("room")?)?,
                event: match f.req_str("event")?.as_str() {
                    "join" => PresenceEvent::Join,
                    "leave" => PresenceEvent::Leave,
                    _ => {
                        return Err(DecodeError::WrongType {
                            field: "event",
                            expected: "join or leave",
                        })
                    }
                },
                connection_id: ConnectionId::from_string(f.req_str("connection_id")?),
            },
            "pong" => ServerFrame::Pong { id },
            "error" => ServerFrame::Error {
                id,
                code: ErrorCode::parse(&f.req_str("code")?).ok_or(DecodeError::WrongType {
                    field: "code",
                    expected: "a known error code",
                })?,
                message: f.req_str("message")?,
            },
            _ => {
                return Err(DecodeError::WrongType {
                    field: "type",
                    expected: "a known frame type",
                })
            }
        })
    }
}

impl ClientFrame {
    /// Encodes a client frame: for clients written in Rust (tests, the load harness).
    pub fn encode(&self, encoding: Encoding) -> Result<EncodedFrame, PayloadError> {
        let id = self.id();
        let base = 1 + count(&[id.is_some()]);
        let mut w;
        let begin = |w: &mut Writer, action: &str| {
            w.str("action", action);
            if let Some(id) = id {
                w.id(id);
            }
        };
        match self {
            ClientFrame::Join {
                room, since, epoch, ..
            } => {
                w = Writer::new(
                    encoding,
                    64,
                    base + 1 + count(&[since.is_some(), epoch.is_some()]),
                );
                begin(&mut w, "join");
                w.str("room", room.as_str());
                if let Some(s) = since {
                    w.u64("since", *s);
                }
                if let Some(e) = epoch {
                    w.str("epoch", e);
                }
            }
            ClientFrame::Leave { room, .. } => {
                w = Writer::new(encoding, 64, base + 1);
                begin(&mut w, "leave");
                w.str("room", room.as_str());
            }
            ClientFrame::Publish {
                room,
                data,
                exclude_self,
                ..
            } => {
                w = Writer::new(encoding, 64 + data.raw_len(), base + 3);
                begin(&mut w, "publish");
                w.str("room", room.as_str());
                w.payload("data", data)?;
                w.bool("exclude_self", *exclude_self);
            }
            ClientFrame::Send { to, data, .. } => {
                w = Writer::new(encoding, 64 + data.raw_len(), base + 2);
                begin(&mut w, "send");
                w.str("to", to.as_str());
                w.payload("data", data)?;
            }
            ClientFrame::Refresh { token, .. } => {
                w = Writer::new(encoding, 64 + token.len(), base + 1);
                begin(&mut w, "refresh");
                w.str("token", token);
            }
            ClientFrame::Ping { .. } => {
                w = Writer::new(encoding, 32, base);
                begin(&mut w, "ping");
            }
            ClientFrame::Routed(r) => {
                let bytes = if r.encoding == encoding {
                    r.raw.clone()
                } else {
                    let mut out = Vec::new();
                    let p = match r.encoding {
                        Encoding::Json => Payload::Json(r.raw.clone()),
                        Encoding::MsgPack => Payload::MsgPack(r.raw.clone()),
                    };
                    match encoding {
                        Encoding::Json => p.write_json(&mut out)?,
                        Encoding::MsgPack => p.write_msgpack(&mut out)?,
                    }
                    out.into()
                };
                return Ok(EncodedFrame { bytes, encoding });
            }
        }
        Ok(w.finish())
    }
}
