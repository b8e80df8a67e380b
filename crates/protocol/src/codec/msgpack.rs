//! Walks MessagePack bytes without building a value tree.
//!
//! A frame's fields are found, and its `data` checked, in one pass over the bytes with no
//! allocation per value: a deeply nested or very long `data` costs what its bytes cost. A value
//! tree (rmpv) would allocate for every element and recurse for every level, which lets a
//! 128 KiB message cost far more than 128 KiB of work. Nesting is walked with an explicit stack,
//! so no input can overflow the thread's stack.

use rmp::Marker;

/// How deep arrays and maps may nest: as deep as serde_json allows JSON to.
pub const MAX_DEPTH: usize = 128;

/// Why bytes are not one acceptable MessagePack value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The bytes end inside a value.
    #[error("truncated value")]
    Truncated,
    /// The reserved marker 0xc1.
    #[error("reserved marker 0xc1")]
    Reserved,
    /// Arrays and maps nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A value with no JSON form (checked values only).
    #[error("{0}")]
    Unrepresentable(&'static str),
}

use ScanError::{Truncated, Unrepresentable};

/// One open array or map: how many values it still holds, and whether the next is a map key.
struct Level {
    left: u64,
    map: bool,
    key_next: bool,
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: u64) -> Result<&'a [u8], ScanError> {
    let n = usize::try_from(n).map_err(|_| Truncated)?;
    let end = pos.checked_add(n).ok_or(Truncated)?;
    let s = buf.get(*pos..end).ok_or(Truncated)?;
    *pos = end;
    Ok(s)
}

/// A big-endian length or number of 1, 2, 4 or 8 bytes.
fn be(buf: &[u8], pos: &mut usize, n: u64) -> Result<u64, ScanError> {
    Ok(take(buf, pos, n)?
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Reads one value at the start of `buf` and returns its length in bytes. With `check`, the
/// value must also have a JSON form: no ext types, string map keys, valid UTF-8 strings, finite
/// floats (SPEC section 4).
pub fn skip_value(buf: &[u8], check: bool) -> Result<usize, ScanError> {
    let mut pos = 0usize;
    let mut stack: Vec<Level> = Vec::new();
    loop {
        let is_key = stack.last().is_some_and(|l| l.map && l.key_next);
        let marker = Marker::from_u8(*buf.get(pos).ok_or(Truncated)?);
        pos += 1;
        if check
            && is_key
            && !matches!(
                marker,
                Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32
            )
        {
            return Err(Unrepresentable("map keys must be strings"));
        }
        let mut container = None;
        match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            }
            Marker::U8 | Marker::I8 => pos = skip(buf, pos, 1)?,
            Marker::U16 | Marker::I16 => pos = skip(buf, pos, 2)?,
            Marker::U32 | Marker::I32 => pos = skip(buf, pos, 4)?,
            Marker::U64 | Marker::I64 => pos = skip(buf, pos, 8)?,
            Marker::F32 => {
                let bits = be(buf, &mut pos, 4)? as u32;
                if check && !f32::from_bits(bits).is_finite() {
                    return Err(Unrepresentable("floats must be finite"));
                }
            }
            Marker::F64 => {
                let bits = be(buf, &mut pos, 8)?;
                if check && !f64::from_bits(bits).is_finite() {
                    return Err(Unrepresentable("floats must be finite"));
                }
            }
            Marker::FixStr(n) => str_body(buf, &mut pos, u64::from(n), check)?,
            Marker::Str8 => {
                let n = be(buf, &mut pos, 1)?;
                str_body(buf, &mut pos, n, check)?
            }
            Marker::Str16 => {
                let n = be(buf, &mut pos, 2)?;
                str_body(buf, &mut pos, n, check)?
            }
            Marker::Str32 => {
                let n = be(buf, &mut pos, 4)?;
                str_body(buf, &mut pos, n, check)?
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let width = match marker {
                    Marker::Bin8 => 1,
                    Marker::Bin16 => 2,
                    _ => 4,
                };
                let n = be(buf, &mut pos, width)?;
                take(buf, &mut pos, n)?;
            }
            Marker::FixArray(n) => container = Some((u64::from(n), false)),
            Marker::Array16 => container = Some((be(buf, &mut pos, 2)?, false)),
            Marker::Array32 => container = Some((be(buf, &mut pos, 4)?, false)),
            Marker::FixMap(n) => container = Some((u64::from(n) * 2, true)),
            Marker::Map16 => container = Some((be(buf, &mut pos, 2)? * 2, true)),
            Marker::Map32 => container = Some((be(buf, &mut pos, 4)? * 2, true)),
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => {
                if check {
                    return Err(Unrepresentable("ext types are not supported"));
                }
                let n = match marker {
                    Marker::FixExt1 => 1,
                    Marker::FixExt2 => 2,
                    Marker::FixExt4 => 4,
                    Marker::FixExt8 => 8,
                    Marker::FixExt16 => 16,
                    Marker::Ext8 => be(buf, &mut pos, 1)?,
                    Marker::Ext16 => be(buf, &mut pos, 2)?,
                    _ => be(buf, &mut pos, 4)?,
                };
                // The type byte, then the data.
                take(buf, &mut pos, n + 1)?;
            }
            Marker::Reserved => return Err(ScanError::Reserved),
        }
        if let Some((n, map)) = container {
            if n > 0 {
                if stack.len() >= MAX_DEPTH {
                    return Err(ScanError::TooDeep);
                }
                stack.push(Level {
                    left: n,
                    map,
                    key_next: true,
                });
                continue;
            }
        }
        // One value is complete: it completes its container, which may complete its own.
        loop {
            let Some(level) = stack.last_mut() else {
                return Ok(pos);
            };
            level.left -= 1;
            level.key_next = !level.key_next;
            if level.left > 0 {
                break;
            }
            stack.pop();
        }
    }
}

fn skip(buf: &[u8], pos: usize, n: u64) -> Result<usize, ScanError> {
    let mut pos = pos;
    take(buf, &mut pos, n)?;
    Ok(pos)
}

fn str_body(buf: &[u8], pos: &mut usize, n: u64, check: bool) -> Result<(), ScanError> {
    let s = take(buf, pos, n)?;
    if check && std::str::from_utf8(s).is_err() {
        return Err(Unrepresentable("strings must be valid UTF-8"));
    }
    Ok(())
}

/// Checks that `buf` is exactly one MessagePack value with a JSON form.
pub fn check_value(buf: &[u8]) -> Result<(), ScanError> {
    if skip_value(buf, true)? != buf.len() {
        return Err(Unrepresentable("trailing bytes after the value"));
    }
    Ok(())
}

/// Reads a string value (borrowed); `Err(true)` when it is a string but not valid UTF-8,
/// `Err(false)` when it is not a string.
pub fn read_str(raw: &[u8]) -> Result<&str, bool> {
    let mut rd = raw;
    let len = rmp::decode::read_str_len(&mut rd).map_err(|_| false)?;
    let bytes = rd.get(..len as usize).ok_or(false)?;
    std::str::from_utf8(bytes).map_err(|_| true)
}

/// Reads a non-negative integer value.
pub fn read_u64(raw: &[u8]) -> Option<u64> {
    rmp::decode::read_int(&mut &raw[..]).ok()
}

/// Reads a signed integer value.
pub fn read_i64(raw: &[u8]) -> Option<i64> {
    rmp::decode::read_int(&mut &raw[..]).ok()
}

/// Reads a boolean value.
pub fn read_bool(raw: &[u8]) -> Option<bool> {
    rmp::decode::read_bool(&mut &raw[..]).ok()
}

/// Whether the value is nil (a field set to nil counts as absent, as JSON `null` does).
pub fn is_nil(raw: &[u8]) -> bool {
    raw.first() == Some(&0xc0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    #[test]
    fn skips_exactly_one_value_of_every_kind() {
        use rmpv::Value as V;
        let values = [
            V::Nil,
            V::from(true),
            V::from(-5),
            V::from(300),
            V::from(u64::MAX),
            V::from(i64::MIN),
            V::F32(1.5),
            V::F64(-2.25),
            V::from("x".repeat(40)),
            V::from("y".repeat(70_000)),
            V::Binary(vec![7; 300]),
            V::Array(vec![V::from(1), V::Array(vec![]), V::Map(vec![])]),
            V::Map(vec![(V::from("k"), V::Array(vec![V::from("v"); 20]))]),
        ];
        for v in &values {
            let mut bytes = mp(v);
            let len = bytes.len();
            bytes.extend_from_slice(&[0x01, 0x02]);
            assert_eq!(skip_value(&bytes, true), Ok(len), "{v:?}");
            assert_eq!(check_value(&bytes[..len]), Ok(()));
            for cut in 0..len {
                assert!(skip_value(&bytes[..cut], false).is_err(), "{v:?} cut {cut}");
            }
        }
    }

    #[test]
    fn refuses_what_json_cannot_carry_only_when_checking() {
        use rmpv::Value as V;
        for (v, why) in [
            (V::Ext(1, vec![1, 2]), "ext types are not supported"),
            (
                V::Map(vec![(V::from(1), V::from(2))]),
                "map keys must be strings",
            ),
            (V::F64(f64::NAN), "floats must be finite"),
            (V::F32(f32::INFINITY), "floats must be finite"),
        ] {
            let bytes = mp(&V::Array(vec![V::Nil, v]));
            assert_eq!(check_value(&bytes), Err(Unrepresentable(why)));
            assert_eq!(skip_value(&bytes, false), Ok(bytes.len()));
        }
        // A string that is not UTF-8: 0xa2 then two bytes that are not.
        assert_eq!(
            check_value(&[0xa2, 0xff, 0xfe]),
            Err(Unrepresentable("strings must be valid UTF-8"))
        );
        assert_eq!(check_value(&[0xc1]), Err(ScanError::Reserved));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let deep = vec![0x91u8; 100_000];
        assert_eq!(skip_value(&deep, false), Err(ScanError::TooDeep));
        let mut ok = vec![0x91u8; MAX_DEPTH];
        ok.push(0xc0);
        assert_eq!(check_value(&ok), Ok(()));
    }

    #[test]
    fn huge_claimed_lengths_are_truncated_not_allocated() {
        // An array32 claiming 4 billion elements, a str32 claiming 4 GiB.
        assert_eq!(
            skip_value(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01], false),
            Err(Truncated)
        );
        assert_eq!(
            skip_value(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'], false),
            Err(Truncated)
        );
    }

    #[test]
    fn scalars_read_from_raw_values() {
        assert_eq!(read_str(&mp(&"room".into())), Ok("room"));
        assert_eq!(read_str(&mp(&5.into())), Err(false));
        assert_eq!(read_str(&[0xa2, 0xff, 0xfe]), Err(true));
        assert_eq!(read_u64(&mp(&7.into())), Some(7));
        assert_eq!(read_u64(&mp(&(-7).into())), None);
        assert_eq!(read_i64(&mp(&(-7).into())), Some(-7));
        assert_eq!(read_bool(&mp(&true.into())), Some(true));
        assert!(is_nil(&[0xc0]));
    }
}
