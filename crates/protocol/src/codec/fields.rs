//! Uniform, typed access to the fields of one decoded frame, whichever its encoding.
//!
//! Decoding goes through a key/raw-value map instead of a derived struct so that errors can
//! name the field precisely and still carry the request id when the rest of the frame is bad.
//! Values stay raw bytes until a field is asked for: a frame costs one pass over its bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::msgpack;
use crate::error::DecodeError;
use crate::id::RequestId;
use crate::payload::Payload;

/// The fields of one frame.
pub(crate) enum Fields<'a> {
    Json {
        src: &'a Bytes,
        map: HashMap<Cow<'a, str>, &'a RawValue>,
    },
    /// Keys borrowed from the message and the byte range of each value: nothing is decoded
    /// until a field is asked for, and `data` never is (it is checked and sliced).
    MsgPack {
        src: &'a Bytes,
        map: Vec<(&'a str, Range<usize>)>,
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

    /// Finds the fields of a MessagePack map with string keys, walking its values without
    /// decoding them.
    pub(crate) fn msgpack(src: &'a Bytes) -> Result<Fields<'a>, DecodeError> {
        let not_frame =
            |what: &str| DecodeError::NotAFrame(format!("expected a MessagePack map: {what}"));
        let mut rd: &[u8] = src;
        let len = rmp::decode::read_map_len(&mut rd).map_err(|e| not_frame(&e.to_string()))?;
        let mut pos = src.len() - rd.len();
        let mut map = Vec::with_capacity(len.min(16) as usize);
        for _ in 0..len {
            let key_len =
                msgpack::skip_value(&src[pos..], false).map_err(|e| not_frame(&e.to_string()))?;
            let key = match msgpack::read_str(&src[pos..pos + key_len]) {
                Ok(k) => k,
                Err(true) => return Err(not_frame("keys must be valid UTF-8")),
                Err(false) => return Err(not_frame("keys must be strings")),
            };
            pos += key_len;
            let value_len =
                msgpack::skip_value(&src[pos..], false).map_err(|e| not_frame(&e.to_string()))?;
            map.push((key, pos..pos + value_len));
            pos += value_len;
        }
        if pos != src.len() {
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

    /// The raw bytes of a MessagePack field (the last one of that name), unless nil.
    fn mp_raw(&self, key: &str) -> Option<&'a [u8]> {
        match self {
            Fields::MsgPack { src, map } => map
                .iter()
                .rev()
                .find(|(k, _)| *k == key)
                .map(|(_, r)| &src[r.clone()])
                .filter(|raw| !msgpack::is_nil(raw)),
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
        match self.mp_raw(key) {
            None => Ok(None),
            Some(raw) => match msgpack::read_str(raw) {
                Ok(s) => Ok(Some(s.to_owned())),
                Err(true) => Err(wrong(key, "a valid UTF-8 string")),
                Err(false) => Err(wrong(key, "a string")),
            },
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
        match self.mp_raw(key) {
            None => Ok(None),
            Some(raw) => msgpack::read_u64(raw)
                .map(Some)
                .ok_or_else(|| wrong(key, "a non-negative integer")),
        }
    }

    /// An optional boolean field.
    pub(crate) fn bool(&self, key: &'static str) -> Result<Option<bool>, DecodeError> {
        if let Some(raw) = self.json_raw(key) {
            return serde_json::from_str::<bool>(raw.get())
                .map(Some)
                .map_err(|_| wrong(key, "a boolean"));
        }
        match self.mp_raw(key) {
            None => Ok(None),
            Some(raw) => msgpack::read_bool(raw)
                .map(Some)
                .ok_or_else(|| wrong(key, "a boolean")),
        }
    }

    /// The request id: a string or an integer.
    pub(crate) fn request_id(&self) -> Result<Option<RequestId>, DecodeError> {
        if let Some(raw) = self.json_raw("id") {
            return json_request_id(raw).map(Some);
        }
        match self.mp_raw("id") {
            None => Ok(None),
            Some(raw) => match msgpack::read_str(raw) {
                Ok(s) => Ok(Some(RequestId::Str(s.to_owned()))),
                Err(true) => Err(wrong("id", ID_EXPECTED)),
                Err(false) => msgpack::read_i64(raw)
                    .map(|i| Some(RequestId::Int(i)))
                    .ok_or(wrong("id", ID_EXPECTED)),
            },
        }
    }

    /// An optional payload field, sliced out of the message without copying. MessagePack
    /// `data` is checked for a JSON form in one pass, never decoded.
    pub(crate) fn payload(&self, key: &'static str) -> Result<Option<Payload>, DecodeError> {
        match self {
            Fields::Json { src, map } => Ok(map
                .get(key)
                .map(|raw| Payload::Json(src.slice_ref(raw.get().as_bytes())))),
            Fields::MsgPack { src, map } => match map.iter().rev().find(|(k, _)| *k == key) {
                None => Ok(None),
                Some((_, range)) => {
                    msgpack::check_value(&src[range.clone()]).map_err(|e| match e {
                        msgpack::ScanError::Unrepresentable(reason) => {
                            DecodeError::Unrepresentable { field: key, reason }
                        }
                        other => DecodeError::NotAFrame(other.to_string()),
                    })?;
                    Ok(Some(Payload::MsgPack(src.slice(range.clone()))))
                }
            },
        }
    }
}

const ID_EXPECTED: &str = "a string or an integer";

/// A JSON request id: a string or an integer.
pub(crate) fn json_request_id(raw: &RawValue) -> Result<RequestId, DecodeError> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Id<'a> {
        #[serde(borrow)]
        Str(Cow<'a, str>),
        Int(i64),
    }
    match serde_json::from_str::<Id<'_>>(raw.get()) {
        Ok(Id::Str(s)) => Ok(RequestId::Str(s.into_owned())),
        Ok(Id::Int(i)) => Ok(RequestId::Int(i)),
        Err(_) => Err(wrong("id", ID_EXPECTED)),
    }
}
