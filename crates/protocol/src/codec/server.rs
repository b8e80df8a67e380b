//! Encoding server frames (once per broadcast and encoding); decoding them is for clients.

use bytes::Bytes;

use super::fields::Fields;
use super::writer::{count, Writer};
use super::{EncodedFrame, Encoding};
use crate::error::{DecodeError, ErrorCode};
use crate::frame::{PresenceEvent, ServerFrame};
use crate::id::{ConnectionId, NodeId};
use crate::payload::PayloadError;
use crate::room::RoomName;

/// Bytes a `message` or `direct` frame adds to its payload and variable fields, at most, in
/// either encoding: the keys, the type, quotes, separators, an offset.
const FRAME_OVERHEAD: usize = 96;

impl ServerFrame {
    /// An upper bound of the frame's size once encoded in `encoding`, without encoding it
    /// (see [`Payload::size_bound`]); `usize::MAX` for frames that have no cheap bound.
    pub fn size_bound(&self, encoding: Encoding) -> usize {
        let text = |s: &str| s.len() * 6 + 2;
        match self {
            ServerFrame::Message {
                room,
                data,
                from,
                epoch,
                ..
            } => {
                FRAME_OVERHEAD
                    + room.as_str().len()
                    + from.as_ref().map_or(0, |f| text(f.as_str()))
                    + epoch.as_deref().map_or(0, text)
                    + data.size_bound(encoding)
            }
            ServerFrame::Direct { from, data } => {
                FRAME_OVERHEAD
                    + from.as_ref().map_or(0, |f| text(f.as_str()))
                    + data.size_bound(encoding)
            }
            _ => usize::MAX,
        }
    }

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
