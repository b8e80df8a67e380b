//! Writes the fields of one flat map into one buffer, as JSON or MessagePack: a frame costs
//! one allocation, and a payload in the same encoding is spliced in byte for byte.

use super::{EncodedFrame, Encoding};
use crate::id::RequestId;
use crate::payload::{Payload, PayloadError};

/// Writes the fields of one flat map in either encoding.
pub(super) enum Writer {
    Json { out: Vec<u8>, first: bool },
    MsgPack { out: Vec<u8> },
}

impl Writer {
    pub(super) fn new(encoding: Encoding, capacity: usize, fields: u32) -> Writer {
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

    pub(super) fn key(&mut self, k: &str) {
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

    pub(super) fn str(&mut self, k: &str, v: &str) {
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

    pub(super) fn opt_str(&mut self, k: &str, v: Option<&str>) {
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

    pub(super) fn u64(&mut self, k: &str, v: u64) {
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

    pub(super) fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        match self {
            Writer::Json { out, .. } => out.extend_from_slice(if v { b"true" } else { b"false" }),
            Writer::MsgPack { out } => {
                let _ = rmp::encode::write_bool(out, v);
            }
        }
    }

    pub(super) fn id(&mut self, v: &RequestId) {
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

    pub(super) fn payload(&mut self, k: &str, p: &Payload) -> Result<(), PayloadError> {
        self.key(k);
        match self {
            Writer::Json { out, .. } => p.write_json(out),
            Writer::MsgPack { out } => p.write_msgpack(out),
        }
    }

    pub(super) fn finish(self) -> EncodedFrame {
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

pub(super) fn count(flags: &[bool]) -> u32 {
    flags.iter().filter(|f| **f).count() as u32
}
