//! Subprotocols, decoding client frames, and encoding server frames.
//!
//! # Layout
//! - this file: encodings, subprotocol negotiation, [`EncodedFrame`].
//! - `client`: decoding client frames (and encoding them, for tools that act as clients).
//! - `server`: encoding server frames (and decoding them, for clients).
//! - `writer`: the one-buffer map writer both encodings share.
//! - `fields`: typed access to a frame's fields without building its values.
//! - `msgpack`: walking MessagePack bytes without building a value tree.
//!
//! Server frames are written field by field into one buffer by a small writer with a JSON and
//! a MessagePack back end, so a broadcast costs one encode per encoding and the payload is
//! spliced in without a second parse when the encodings match.

mod client;
mod fields;
pub mod msgpack;
mod server;
mod writer;

pub use client::{decode_client, request_id};

use bytes::Bytes;

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
