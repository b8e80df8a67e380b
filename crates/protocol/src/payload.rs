//! The `data` of a message.
//!
//! A payload stays in the encoding it arrived in and is transcoded only when a recipient speaks
//! the other encoding, once per broadcast per encoding: a JSON publish to JSON members is spliced
//! into each outgoing frame byte for byte, never parsed again.

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;

use crate::codec::Encoding;

/// One `data` value, in the encoding it arrived in.
///
/// Invariant: `Json` holds exactly one valid JSON value; `MsgPack` holds exactly one MessagePack
/// value that has a JSON form (no ext types, string map keys, valid UTF-8 strings, finite
/// floats). Decoding enforces it for client input; [`Payload::check`] enforces it for input from
/// other nodes.
#[derive(Clone, PartialEq, Eq)]
pub enum Payload {
    /// Raw JSON text of one value.
    Json(Bytes),
    /// Raw MessagePack bytes of one value.
    MsgPack(Bytes),
}

/// A payload that cannot be converted or is not what its variant claims.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The JSON bytes are not one JSON value.
    #[error("payload is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The MessagePack bytes are not one MessagePack value.
    #[error("payload is not valid MessagePack: {0}")]
    MsgPack(#[from] rmpv::decode::Error),
    /// The MessagePack value has no JSON form.
    #[error("payload cannot be carried: {0}")]
    Unrepresentable(&'static str),
    /// The MessagePack bytes are not exactly one value with a JSON form.
    #[error("payload is not acceptable MessagePack: {0}")]
    Scan(#[from] crate::codec::msgpack::ScanError),
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Json(b) => write!(f, "Json({})", String::from_utf8_lossy(b)),
            Payload::MsgPack(b) => write!(f, "MsgPack({} bytes)", b.len()),
        }
    }
}

impl Payload {
    /// Serializes a JSON value (management API bodies, integration answers).
    pub fn from_json_value(v: &serde_json::Value) -> Payload {
        // Serializing a `Value` into a Vec cannot fail: every key is a string.
        Payload::Json(Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
    }

    /// Length of the raw bytes, for size estimates.
    pub fn raw_len(&self) -> usize {
        match self {
            Payload::Json(b) | Payload::MsgPack(b) => b.len(),
        }
    }

    /// An upper bound of the value's size once written in `encoding`, found without writing
    /// it: a publish need not encode for an encoding no recipient uses just to learn that it
    /// fits in `limits.max_message_bytes`.
    pub fn size_bound(&self, encoding: Encoding) -> usize {
        match (self, encoding) {
            (Payload::Json(b), Encoding::Json) | (Payload::MsgPack(b), Encoding::MsgPack) => {
                b.len()
            }
            // JSON to MessagePack: the worst growth is a number as short as `-0` or `1.5`
            // becoming a 9-byte float; strings, containers and literals shrink or grow less.
            (Payload::Json(b), Encoding::MsgPack) => 3 * b.len() + 8,
            // MessagePack to JSON: the worst growth is a control character in a string, one
            // byte becoming a 6-byte `\u00XX` escape (`bin` grows by 4/3 as base64, `nil` by 4).
            (Payload::MsgPack(b), Encoding::Json) => 6 * b.len() + 8,
        }
    }

    /// Checks the variant's invariant: used for payloads arriving from other nodes, which the
    /// node must not trust to be well formed.
    pub fn check(&self) -> Result<(), PayloadError> {
        match self {
            Payload::Json(b) => {
                serde_json::from_slice::<&serde_json::value::RawValue>(b)?;
                Ok(())
            }
            Payload::MsgPack(b) => Ok(crate::codec::msgpack::check_value(b)?),
        }
    }

    /// Appends the value as JSON text (MessagePack `bin` becomes a base64 string).
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), PayloadError> {
        match self {
            Payload::Json(b) => out.extend_from_slice(b),
            Payload::MsgPack(b) => {
                let v = rmpv::decode::read_value(&mut &b[..])?;
                let j = msgpack_to_json(v).map_err(PayloadError::Unrepresentable)?;
                serde_json::to_writer(out, &j)?;
            }
        }
        Ok(())
    }

    /// Appends the value as MessagePack.
    pub fn write_msgpack(&self, out: &mut Vec<u8>) -> Result<(), PayloadError> {
        match self {
            Payload::MsgPack(b) => out.extend_from_slice(b),
            Payload::Json(b) => {
                let j: serde_json::Value = serde_json::from_slice(b)?;
                let v = json_to_msgpack(j);
                // Writing into a Vec cannot fail.
                let _ = rmpv::encode::write_value(out, &v);
            }
        }
        Ok(())
    }

    /// The value as a `serde_json::Value` (integration bodies, tests).
    pub fn to_json_value(&self) -> Result<serde_json::Value, PayloadError> {
        match self {
            Payload::Json(b) => Ok(serde_json::from_slice(b)?),
            Payload::MsgPack(b) => {
                let v = rmpv::decode::read_value(&mut &b[..])?;
                msgpack_to_json(v).map_err(PayloadError::Unrepresentable)
            }
        }
    }
}

fn msgpack_to_json(v: rmpv::Value) -> Result<serde_json::Value, &'static str> {
    use rmpv::Value as V;
    use serde_json::Value as J;
    Ok(match v {
        V::Nil => J::Null,
        V::Boolean(b) => J::Bool(b),
        V::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => J::from(u),
            (None, Some(s)) => J::from(s),
            _ => return Err("integer out of range"),
        },
        V::F32(f) => serde_json::Number::from_f64(f64::from(f))
            .map(J::Number)
            .ok_or("floats must be finite")?,
        V::F64(f) => serde_json::Number::from_f64(f)
            .map(J::Number)
            .ok_or("floats must be finite")?,
        V::String(s) => J::String(s.into_str().ok_or("strings must be valid UTF-8")?),
        V::Binary(b) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
        V::Array(items) => J::Array(
            items
                .into_iter()
                .map(msgpack_to_json)
                .collect::<Result<_, _>>()?,
        ),
        V::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (k, v) in entries {
                let V::String(k) = k else {
                    return Err("map keys must be strings");
                };
                let k = k.into_str().ok_or("strings must be valid UTF-8")?;
                map.insert(k, msgpack_to_json(v)?);
            }
            J::Object(map)
        }
        V::Ext(..) => return Err("ext types are not supported"),
    })
}

fn json_to_msgpack(j: serde_json::Value) -> rmpv::Value {
    use rmpv::Value as V;
    use serde_json::Value as J;
    match j {
        J::Null => V::Nil,
        J::Bool(b) => V::Boolean(b),
        J::Number(n) => {
            if let Some(u) = n.as_u64() {
                V::from(u)
            } else if let Some(i) = n.as_i64() {
                V::from(i)
            } else {
                V::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        J::String(s) => V::String(s.into()),
        J::Array(items) => V::Array(items.into_iter().map(json_to_msgpack).collect()),
        J::Object(map) => V::Map(
            map.into_iter()
                .map(|(k, v)| (V::String(k.into()), json_to_msgpack(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mp(v: &rmpv::Value) -> Payload {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        Payload::MsgPack(out.into())
    }

    #[test]
    fn bin_becomes_base64_for_json() {
        let p = mp(&rmpv::Value::Map(vec![(
            "b".into(),
            rmpv::Value::Binary(vec![0, 1, 2, 255]),
        )]));
        let mut out = Vec::new();
        p.write_json(&mut out).unwrap();
        assert_eq!(out, br#"{"b":"AAEC/w=="}"#);
    }

    #[test]
    fn json_is_spliced_verbatim() {
        let raw = br#"{"z":1,  "a":[true,null]}"#;
        let p = Payload::Json(Bytes::from_static(raw));
        let mut out = Vec::new();
        p.write_json(&mut out).unwrap();
        assert_eq!(out, raw);
    }

    #[test]
    fn json_to_msgpack_and_back() {
        let v = json!({"n": -5, "u": 7, "f": 1.5, "s": "é", "a": [1, {"x": null}]});
        let p = Payload::from_json_value(&v);
        let mut out = Vec::new();
        p.write_msgpack(&mut out).unwrap();
        assert_eq!(Payload::MsgPack(out.into()).to_json_value().unwrap(), v);
    }

    #[test]
    fn unrepresentable_msgpack_is_refused() {
        let ext = mp(&rmpv::Value::Ext(1, vec![1]));
        assert!(ext.check().is_err());
        let int_key = mp(&rmpv::Value::Map(vec![(1.into(), 2.into())]));
        assert!(int_key.check().is_err());
        let nan = mp(&rmpv::Value::F64(f64::NAN));
        assert!(nan.check().is_err());
        assert!(mp(&rmpv::Value::from("fine")).check().is_ok());
        assert!(Payload::Json(Bytes::from_static(b"{nope")).check().is_err());
    }
}
