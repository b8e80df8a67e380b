//! Client frames and server frames (SPEC section 4).

use bytes::Bytes;

use crate::codec::Encoding;
use crate::error::ErrorCode;
use crate::id::{ConnectionId, NodeId, RequestId};
use crate::payload::Payload;
use crate::room::RoomName;

/// What a client asks for. Built-in actions are variants; anything else is [`RoutedFrame`],
/// which the route table (SPEC section 6) decides about.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// Join a room, optionally replaying history after `since`.
    Join {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
        /// Replay retained messages with a greater offset first.
        since: Option<u64>,
        /// The epoch `since` belongs to.
        epoch: Option<String>,
    },
    /// Leave a room.
    Leave {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
    },
    /// Deliver `data` to every member of `room`.
    Publish {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
        /// The message.
        data: Payload,
        /// Do not deliver to the publishing connection itself.
        exclude_self: bool,
    },
    /// Deliver `data` to one connection, wherever it lives.
    Send {
        /// Request id.
        id: Option<RequestId>,
        /// The target connection.
        to: ConnectionId,
        /// The message.
        data: Payload,
    },
    /// Replace the connection's token (same `sub`).
    Refresh {
        /// Request id.
        id: Option<RequestId>,
        /// The new JWT.
        token: String,
    },
    /// Answered with `pong`.
    Ping {
        /// Request id.
        id: Option<RequestId>,
    },
    /// Any other action: the route table decides.
    Routed(RoutedFrame),
}

impl ClientFrame {
    /// The request id, whatever the action.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            ClientFrame::Join { id, .. }
            | ClientFrame::Leave { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Send { id, .. }
            | ClientFrame::Refresh { id, .. }
            | ClientFrame::Ping { id } => id.as_ref(),
            ClientFrame::Routed(r) => r.id.as_ref(),
        }
    }
}

/// A frame whose `action` is not built in. Kept whole, in its encoding, because the route
/// selection expression may look at any field and integrations receive the whole frame.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutedFrame {
    /// Request id.
    pub id: Option<RequestId>,
    /// The `action` field when it is a string.
    pub action: Option<String>,
    /// The whole message as received.
    pub raw: Bytes,
    /// The encoding of `raw`.
    pub encoding: Encoding,
}

impl RoutedFrame {
    /// The whole frame as JSON (MessagePack `bin` as base64), for route selection and for the
    /// `body` an integration receives.
    pub fn to_json_value(&self) -> Result<serde_json::Value, crate::payload::PayloadError> {
        match self.encoding {
            Encoding::Json => Payload::Json(self.raw.clone()).to_json_value(),
            Encoding::MsgPack => Payload::MsgPack(self.raw.clone()).to_json_value(),
        }
    }
}

/// `join` or `leave`, in presence events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// A connection joined.
    Join,
    /// A connection left (or closed).
    Leave,
}

impl PresenceEvent {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceEvent::Join => "join",
            PresenceEvent::Leave => "leave",
        }
    }
}

/// What a node sends to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// First frame of every connection.
    Welcome {
        /// The connection's id.
        connection_id: ConnectionId,
        /// The node holding it.
        node: NodeId,
        /// The negotiated encoding.
        protocol: Encoding,
        /// `server.heartbeat` in milliseconds.
        heartbeat_ms: u64,
    },
    /// The action took effect on this node.
    Ack {
        /// The request id.
        id: Option<RequestId>,
        /// Offset of a retained publish, or the latest offset on a join with history.
        offset: Option<u64>,
        /// The room's history epoch, whenever `offset` is present.
        epoch: Option<String>,
        /// Whether a `join` with `since` recovered every message.
        recovered: Option<bool>,
    },
    /// A room message.
    Message {
        /// The room.
        room: RoomName,
        /// The data as published.
        data: Payload,
        /// The publishing connection; `None` for the management API.
        from: Option<ConnectionId>,
        /// Offset in a retained room.
        offset: Option<u64>,
        /// Epoch in a retained room.
        epoch: Option<String>,
    },
    /// A message to this connection alone.
    Direct {
        /// The sender; `None` for the management API.
        from: Option<ConnectionId>,
        /// The data.
        data: Payload,
    },
    /// An integration's answer to a routed frame.
    RouteResponse {
        /// The matched route key.
        route: String,
        /// The request id.
        id: Option<RequestId>,
        /// The answer.
        data: Payload,
    },
    /// A member joined or left a room.
    Presence {
        /// The room.
        room: RoomName,
        /// Join or leave.
        event: PresenceEvent,
        /// Who.
        connection_id: ConnectionId,
    },
    /// Answer to `ping`.
    Pong {
        /// The request id.
        id: Option<RequestId>,
    },
    /// A failed action.
    Error {
        /// The request id.
        id: Option<RequestId>,
        /// What kind of failure.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}
