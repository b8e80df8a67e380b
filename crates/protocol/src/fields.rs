//! Uniform, typed access to the fields of one decoded frame, whichever its encoding.
//!
//! Decoding goes through a key/raw-value map instead of a derived struct so that errors can
//! name the field precisely and still carry the request id when the rest of the frame is bad.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::error::DecodeError;
use crate::id::RequestId;
use crate::payload::{check_msgpack, Payload};

/// The fields of one frame.
pub(crate) enum Fields<'a> {
    Json {
        src: &'a Bytes,
        map: HashMap<Cow<'a, str>, &'a RawValue>,
    },
    MsgPack {
        src: &'a Bytes,
        map: Vec<(String, rmpv::Value, Range<usize>)>,
    },
}

fn wrong(field: &'static str, expected: &'static str) -> DecodeError {
    DecodeError::WrongType { field, expected }
}

impl<'a> Fields<'a> {
    /// Parses a JSON object.
    pub(crate) fn json(src: &'a Bytes) -> Result<Fields<'a>, DecodeError> {
        let text = std::str::from_utf8(src)
            .map_err(|_| DecodeError::NotAFrame("text is not valid UTF-8".into()))?;
        let map: HashMap<Cow<'a, str>, &'a RawValue> = serde_json::from_str(text)
            .map_err(|e| DecodeError::NotAFrame(format!("expected a JSON object: {e}")))?;
        Ok(Fields::Json { src, map })
    }

    /// Parses a MessagePack map with string keys.
    pub(crate) fn msgpack(src: &'a Bytes) -> Result<Fields<'a>, DecodeError> {
        let not_frame =
            |what: &str| DecodeError::NotAFrame(format!("expected a MessagePack map: {what}"));
        let mut rd: &[u8] = src;
        let len = rmp::decode::read_map_len(&mut rd).map_err(|e| not_frame(&e.to_string()))?;
        let mut map = Vec::with_capacity(len.min(16) as usize);
        for _ in 0..len {
            let key = rmpv::decode::read_value(&mut rd).map_err(|e| not_frame(&e.to_string()))?;
            let rmpv::Value::String(key) = key else {
                return Err(not_frame("keys must be strings"));
            };
            let key = key
                .into_str()
                .ok_or_else(|| not_frame("keys must be valid UTF-8"))?;
            let start = src.len() - rd.len();
            let value = rmpv::decode::read_value(&mut rd).map_err(|e| not_frame(&e.to_string()))?;
            let end = src.len() - rd.len();
            map.push((key, value, start..end));
        }
        if !rd.is_empty() {
            return Err(not_frame("trailing bytes after the map"));
        }
        Ok(Fields::MsgPack { src, map })
    }

    fn json_raw(&self, key: &str) -> Option<&'a RawValue> {
        match self {
            Fields::Json { map, .. } => map.get(key).copied().filter(|r| r.get() != "null"),
            Fields::MsgPack { .. } => None,
        }
    }

    fn mp_value(&self, key: &str) -> Option<(&rmpv::Value, &Range<usize>)> {
        match self {
            Fields::MsgPack { map, .. } => map
                .iter()
                .rev()
                .find(|(k, v, _)| k == key && !v.is_nil())
                .map(|(_, v, r)| (v, r)),
            Fields::Json { .. } => None,
        }
    }

    /// An optional string field.
    pub(crate) fn str(&self, key: &'static str) -> Result<Option<String>, DecodeError> {
        if let Some(raw) = self.json_raw(key) {
            return serde_json::from_str::<String>(raw.get())
                .map(Some)
                .map_err(|_| wrong(key, "a string"));
        }
        match self.mp_value(key) {
            None => Ok(None),
            Some((rmpv::Value::String(s), _)) => s
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| wrong(key, "a valid UTF-8 string")),
            Some(_) => Err(wrong(key, "a string")),
        }
    }

    /// A required string field.
    pub(crate) fn req_str(&self, key: &'static str) -> Result<String, DecodeError> {
        self.str(key)?.ok_or(DecodeError::MissingField(key))
    }

    /// An optional non-negative integer field.
    pub(crate) fn u64(&self, key: &'static str) -> Result<Option<u64>, DecodeError> {
        if let Some(raw) = self.json_raw(key) {
            return serde_json::from_str::<u64>(raw.get())
                .map(Some)
                .map_err(|_| wrong(key, "a non-negative integer"));
        }
        match self.mp_value(key) {
            None => Ok(None),
            Some((rmpv::Value::Integer(i), _)) => i
                .as_u64()
                .map(Some)
                .ok_or_else(|| wrong(key, "a non-negative integer")),
            Some(_) => Err(wrong(key, "a non-negative integer")),
        }
    }

    /// An optional boolean field.
    pub(crate) fn bool(&self, key: &'static str) -> Result<Option<bool>, DecodeError> {
        if let Some(raw) = self.json_raw(key) {
            return serde_json::from_str::<bool>(raw.get())
                .map(Some)
                .map_err(|_| wrong(key, "a boolean"));
        }
        match self.mp_value(key) {
            None => Ok(None),
            Some((rmpv::Value::Boolean(b), _)) => Ok(Some(*b)),
            Some(_) => Err(wrong(key, "a boolean")),
        }
    }

    /// The request id: a string or an integer.
    pub(crate) fn request_id(&self) -> Result<Option<RequestId>, DecodeError> {
        const EXPECTED: &str = "a string or an integer";
        if let Some(raw) = self.json_raw("id") {
            let v: serde_json::Value =
                serde_json::from_str(raw.get()).map_err(|_| wrong("id", EXPECTED))?;
            return match v {
                serde_json::Value::String(s) => Ok(Some(RequestId::Str(s))),
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map(|i| Some(RequestId::Int(i)))
                    .ok_or(wrong("id", EXPECTED)),
                _ => Err(wrong("id", EXPECTED)),
            };
        }
        match self.mp_value("id") {
            None => Ok(None),
            Some((rmpv::Value::String(s), _)) => s
                .as_str()
                .map(|s| Some(RequestId::Str(s.to_owned())))
                .ok_or(wrong("id", EXPECTED)),
            Some((rmpv::Value::Integer(i), _)) => i
                .as_i64()
                .map(|i| Some(RequestId::Int(i)))
                .ok_or(wrong("id", EXPECTED)),
            Some(_) => Err(wrong("id", EXPECTED)),
        }
    }

    /// An optional payload field, sliced out of the message without copying.
    pub(crate) fn payload(&self, key: &'static str) -> Result<Option<Payload>, DecodeError> {
        match self {
            Fields::Json { src, map } => Ok(map
                .get(key)
                .map(|raw| Payload::Json(src.slice_ref(raw.get().as_bytes())))),
            Fields::MsgPack { src, map } => match map.iter().rev().find(|(k, _, _)| k == key) {
                None => Ok(None),
                Some((_, v, range)) => {
                    check_msgpack(v)
                        .map_err(|reason| DecodeError::Unrepresentable { field: key, reason })?;
                    Ok(Some(Payload::MsgPack(src.slice(range.clone()))))
                }
            },
        }
    }
}
