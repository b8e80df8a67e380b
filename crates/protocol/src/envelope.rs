//! The envelope nodes exchange over the cluster bus, always MessagePack.
//!
//! Fields are encoded by name (`rmp_serde::to_vec_named`) so that a node of a newer version can
//! add fields without breaking older nodes during a rolling upgrade; unknown fields are ignored.

use serde::{Deserialize, Serialize};

use crate::close::CloseCode;
use crate::frame::PresenceEvent;
use crate::id::{ConnectionId, NodeId};
use crate::payload::{Payload, PayloadError};
use crate::room::RoomName;

/// One message between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The node that sent it; a node ignores the echo of its own room publishes.
    pub origin: NodeId,
    /// What it carries.
    pub body: EnvelopeBody,
    /// W3C `traceparent` of the span that caused it, so traces continue across nodes.
    pub traceparent: Option<String>,
}

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvelopeBody {
    /// A room message, for every local member of `room` on the receiving node.
    Room {
        /// The room.
        room: RoomName,
        /// The publishing connection (`None`: management API).
        from: Option<ConnectionId>,
        /// A connection not to deliver to (`exclude_self`).
        exclude: Option<ConnectionId>,
        /// The data, once.
        data: Payload,
        /// Offset in a retained room.
        offset: Option<u64>,
        /// Epoch in a retained room.
        epoch: Option<String>,
    },
    /// A member joined or left a room with presence events: for the room's members on the
    /// receiving node. It travels on the room's channel, so it reaches the nodes with members.
    Presence {
        /// The room.
        room: RoomName,
        /// Join or leave.
        event: PresenceEvent,
        /// Who.
        connection: ConnectionId,
    },
    /// A message for one connection living on the receiving node.
    Direct {
        /// The target.
        to: ConnectionId,
        /// The sender (`None`: management API).
        from: Option<ConnectionId>,
        /// The data.
        data: Payload,
    },
    /// Close one connection living on the receiving node.
    Disconnect {
        /// The target.
        to: ConnectionId,
        /// The close code.
        code: u16,
    },
    /// A question for the receiving node, answered with a [`EnvelopeBody::Reply`] on
    /// `reply_to`'s node channel.
    Query {
        /// Correlates the reply.
        id: u64,
        /// The asking node.
        reply_to: NodeId,
        /// The question.
        query: Query,
    },
    /// The answer to a [`EnvelopeBody::Query`].
    Reply {
        /// The query's id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
}

/// What one node asks another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Query {
    /// `GET /@connections/{id}` for a connection the receiver holds.
    Connection(String),
    /// Local members of a room (`ids`: with their ids).
    Room {
        /// The room.
        room: String,
        /// Whether to list the ids.
        ids: bool,
    },
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The connection, if the receiver holds it.
    Connection(Option<ConnectionInfo>),
    /// The receiver's members of the room.
    Room {
        /// How many.
        count: u64,
        /// Their ids, when asked for.
        ids: Vec<String>,
    },
}

/// A connection as one node describes it to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Its id.
    pub id: String,
    /// The node holding it.
    pub node: String,
    /// Connected at, ms since the Unix epoch.
    pub connected_at_ms: u64,
    /// Last client message, ms since the Unix epoch.
    pub last_active_ms: u64,
    /// Peer address.
    pub source_ip: String,
    /// Token subject.
    pub sub: Option<String>,
    /// Rooms it is in.
    pub rooms: Vec<String>,
}

/// Why an envelope could not be read. The bus counts these and drops the envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a MessagePack envelope.
    #[error("malformed envelope: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A field that must be valid is not (room name, payload).
    #[error("invalid envelope field: {0}")]
    Invalid(String),
    /// The payload is not what it claims.
    #[error("invalid envelope payload: {0}")]
    Payload(#[from] PayloadError),
}

#[derive(Serialize, Deserialize)]
struct Wire {
    o: String,
    k: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ex: Option<String>,
    /// Payload encoding: 0 JSON, 1 MessagePack.
    #[serde(default)]
    pe: u8,
    #[serde(default, with = "serde_bytes")]
    data: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    off: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ep: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tp: Option<String>,
    /// Presence event: 0 join, 1 leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ev: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    qid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q: Option<Query>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<Reply>,
}

/// The latest time RFC 3339 can write (9999-12-31T23:59:59.999Z), in ms since the Unix epoch:
/// timestamps from other nodes are clamped to it rather than trusted.
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// First byte of a retained room's message on the bus: `#<offset>:<epoch>:<envelope>`. The
/// script that assigns the offset in Redis writes this prefix, since it cannot re-encode
/// MessagePack; an envelope (a MessagePack map) never starts with it.
pub const POSITION_MARK: u8 = b'#';

const KIND_ROOM: u8 = 0;
const KIND_DIRECT: u8 = 1;
const KIND_DISCONNECT: u8 = 2;
const KIND_QUERY: u8 = 3;
const KIND_REPLY: u8 = 4;
const KIND_PRESENCE: u8 = 5;

fn split(p: &Payload) -> (u8, Vec<u8>) {
    match p {
        Payload::Json(b) => (0, b.to_vec()),
        Payload::MsgPack(b) => (1, b.to_vec()),
    }
}

impl Envelope {
    /// Encodes the envelope as MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Wire {
            o: self.origin.as_str().to_owned(),
            k: 0,
            room: None,
            from: None,
            to: None,
            ex: None,
            pe: 0,
            data: Vec::new(),
            off: None,
            ep: None,
            code: None,
            tp: self.traceparent.clone(),
            ev: None,
            qid: None,
            q: None,
            r: None,
        };
        match &self.body {
            EnvelopeBody::Room {
                room,
                from,
                exclude,
                data,
                offset,
                epoch,
            } => {
                w.k = KIND_ROOM;
                w.room = Some(room.as_str().to_owned());
                w.from = from.as_ref().map(|c| c.as_str().to_owned());
                w.ex = exclude.as_ref().map(|c| c.as_str().to_owned());
                (w.pe, w.data) = split(data);
                w.off = *offset;
                w.ep = epoch.clone();
            }
            EnvelopeBody::Presence {
                room,
                event,
                connection,
            } => {
                w.k = KIND_PRESENCE;
                w.room = Some(room.as_str().to_owned());
                w.from = Some(connection.as_str().to_owned());
                w.ev = Some(match event {
                    PresenceEvent::Join => 0,
                    PresenceEvent::Leave => 1,
                });
            }
            EnvelopeBody::Direct { to, from, data } => {
                w.k = KIND_DIRECT;
                w.to = Some(to.as_str().to_owned());
                w.from = from.as_ref().map(|c| c.as_str().to_owned());
                (w.pe, w.data) = split(data);
            }
            EnvelopeBody::Disconnect { to, code } => {
                w.k = KIND_DISCONNECT;
                w.to = Some(to.as_str().to_owned());
                w.code = Some(*code);
            }
            EnvelopeBody::Query {
                id,
                reply_to,
                query,
            } => {
                w.k = KIND_QUERY;
                w.qid = Some(*id);
                w.to = Some(reply_to.as_str().to_owned());
                w.q = Some(query.clone());
            }
            EnvelopeBody::Reply { id, reply } => {
                w.k = KIND_REPLY;
                w.qid = Some(*id);
                w.r = Some(reply.clone());
            }
        }
        // Serializing this plain struct into a Vec cannot fail.
        rmp_serde::to_vec_named(&w).unwrap_or_default()
    }

    /// The room whose channel carries this envelope (room messages and presence events).
    pub fn room(&self) -> Option<&RoomName> {
        match &self.body {
            EnvelopeBody::Room { room, .. } | EnvelopeBody::Presence { room, .. } => Some(room),
            _ => None,
        }
    }

    /// Decodes a message as the bus carries it: an envelope, or a retained room's envelope
    /// behind its position ([`POSITION_MARK`]), which then lands in the envelope's `offset`
    /// and `epoch`.
    pub fn decode_positioned(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.first() != Some(&POSITION_MARK) {
            return Self::decode(bytes);
        }
        let bad = || EnvelopeError::Invalid("malformed position".to_owned());
        let mut parts = bytes[1..].splitn(3, |&b| b == b':');
        let (Some(offset), Some(epoch), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let offset: u64 = std::str::from_utf8(offset)
            .ok()
            .and_then(|o| o.parse().ok())
            .ok_or_else(bad)?;
        let epoch = std::str::from_utf8(epoch).map_err(|_| bad())?.to_owned();
        let mut envelope = Self::decode(rest)?;
        match &mut envelope.body {
            EnvelopeBody::Room {
                offset: o,
                epoch: e,
                ..
            } => {
                *o = Some(offset);
                *e = Some(epoch);
            }
            _ => return Err(bad()),
        }
        Ok(envelope)
    }

    /// The bytes [`Envelope::decode_positioned`] reads for a positioned envelope; the Redis
    /// bus's script writes the same prefix itself.
    pub fn encode_positioned(&self, offset: u64, epoch: &str) -> Vec<u8> {
        let mut out = format!("#{offset}:{epoch}:").into_bytes();
        out.extend_from_slice(&self.encode());
        out
    }

    /// Decodes and validates an envelope from another node.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let w: Wire = rmp_serde::from_slice(bytes)?;
        let missing = |f: &str| EnvelopeError::Invalid(format!("missing `{f}`"));
        let payload = |pe: u8, data: Vec<u8>| -> Result<Payload, EnvelopeError> {
            let p = match pe {
                0 => Payload::Json(data.into()),
                1 => Payload::MsgPack(data.into()),
                other => return Err(EnvelopeError::Invalid(format!("payload encoding {other}"))),
            };
            p.check()?;
            Ok(p)
        };
        let body = match w.k {
            KIND_ROOM => EnvelopeBody::Room {
                room: RoomName::parse(&w.room.ok_or_else(|| missing("room"))?)
                    .map_err(|e| EnvelopeError::Invalid(e.to_string()))?,
                from: w.from.map(ConnectionId::from_string),
                exclude: w.ex.map(ConnectionId::from_string),
                data: payload(w.pe, w.data)?,
                offset: w.off,
                epoch: w.ep,
            },
            KIND_PRESENCE => EnvelopeBody::Presence {
                room: RoomName::parse(&w.room.ok_or_else(|| missing("room"))?)
                    .map_err(|e| EnvelopeError::Invalid(e.to_string()))?,
                event: match w.ev.ok_or_else(|| missing("ev"))? {
                    0 => PresenceEvent::Join,
                    1 => PresenceEvent::Leave,
                    other => return Err(EnvelopeError::Invalid(format!("presence event {other}"))),
                },
                connection: ConnectionId::from_string(w.from.ok_or_else(|| missing("from"))?),
            },
            KIND_DIRECT => EnvelopeBody::Direct {
                to: ConnectionId::from_string(w.to.ok_or_else(|| missing("to"))?),
                from: w.from.map(ConnectionId::from_string),
                data: payload(w.pe, w.data)?,
            },
            KIND_DISCONNECT => EnvelopeBody::Disconnect {
                to: ConnectionId::from_string(w.to.ok_or_else(|| missing("to"))?),
                code: match w.code.ok_or_else(|| missing("code"))? {
                    c if CloseCode::sendable(c) => c,
                    c => {
                        return Err(EnvelopeError::Invalid(format!(
                            "close code {c} cannot be sent on the wire"
                        )))
                    }
                },
            },
            KIND_QUERY => EnvelopeBody::Query {
                id: w.qid.ok_or_else(|| missing("qid"))?,
                reply_to: NodeId::new(w.to.ok_or_else(|| missing("to"))?),
                query: w.q.ok_or_else(|| missing("q"))?,
            },
            KIND_REPLY => EnvelopeBody::Reply {
                id: w.qid.ok_or_else(|| missing("qid"))?,
                reply: w.r.ok_or_else(|| missing("r"))?,
            },
            other => return Err(EnvelopeError::Invalid(format!("unknown kind {other}"))),
        };
        Ok(Envelope {
            origin: NodeId::new(w.o),
            body,
            traceparent: w.tp,
        })
    }
}
