//! Decoding client frames; encoding them is for tools that act as clients.

use bytes::Bytes;

use serde_json::value::RawValue;

use super::fields::{json_request_id, Fields};
use super::writer::{count, Writer};
use super::{EncodedFrame, Encoding};
use crate::error::{DecodeError, FrameError};
use crate::frame::{ClientFrame, RoutedFrame};
use crate::id::{ConnectionId, RequestId};
use crate::payload::{Payload, PayloadError};
use crate::room::RoomName;

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

/// The request id of a client message, and nothing else of it: for a message refused before
/// decoding (the rate limit), whose error must still carry its id (SPEC section 4). A JSON
/// message is scanned for its `id` with every other value skipped unbuilt; a MessagePack one
/// is walked once. `None` when there is no readable id.
pub fn request_id(encoding: Encoding, msg: &Bytes, is_text: bool) -> Option<RequestId> {
    match (encoding, is_text) {
        (Encoding::Json, true) => {
            #[derive(serde::Deserialize)]
            struct IdOnly<'a> {
                #[serde(borrow, default)]
                id: Option<&'a RawValue>,
            }
            let only: IdOnly<'_> = serde_json::from_slice(msg).ok()?;
            json_request_id(only.id.filter(|r| r.get() != "null")?).ok()
        }
        (Encoding::MsgPack, false) => Fields::msgpack(msg).ok()?.request_id().ok()?,
        _ => None,
    }
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
