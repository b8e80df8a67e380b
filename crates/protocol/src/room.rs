//! Room names and room patterns.

use std::fmt;
use std::sync::Arc;

/// Longest room name allowed (SPEC section 4).
pub const MAX_ROOM_LEN: usize = 128;

/// A validated room name: `^[A-Za-z0-9_\-:.@/]{1,128}$`. Validation happens once, at the edge,
/// so the router and the bus never see an invalid name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

/// Why a string is not a room name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    /// The empty string.
    #[error("room name is empty")]
    Empty,
    /// Over [`MAX_ROOM_LEN`] bytes.
    #[error("room name is longer than {MAX_ROOM_LEN} characters")]
    TooLong,
    /// A character outside `A-Za-z0-9_-:.@/`.
    #[error("room name has a character outside A-Z a-z 0-9 _ - : . @ /")]
    BadCharacter,
}

fn is_room_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b':' | b'.' | b'@' | b'/')
}

impl RoomName {
    /// Validates a room name.
    pub fn parse(s: &str) -> Result<RoomName, RoomNameError> {
        if s.is_empty() {
            return Err(RoomNameError::Empty);
        }
        if s.len() > MAX_ROOM_LEN {
            return Err(RoomNameError::TooLong);
        }
        if !s.bytes().all(is_room_char) {
            return Err(RoomNameError::BadCharacter);
        }
        Ok(RoomName(s.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomName({})", self.0)
    }
}

impl std::borrow::Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A room pattern from a token's `rooms` claim or a config table: `*` matches any run of
/// characters (including none and including `/`), everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPattern(String);

impl RoomPattern {
    /// Any string is a pattern; a pattern with no `*` matches exactly one room.
    pub fn new(p: impl Into<String>) -> Self {
        RoomPattern(p.into())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `room` matches. Linear-time glob matching with single-star backtracking, so a
    /// hostile pattern in a token cannot make a check exponential.
    pub fn matches(&self, room: &str) -> bool {
        let (p, s) = (self.0.as_bytes(), room.as_bytes());
        let (mut pi, mut si) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if pi < p.len() && p[pi] == s[si] {
                pi += 1;
                si += 1;
            } else if let Some((sp, ss)) = star {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

/// True when any pattern matches the room.
pub fn any_matches(patterns: &[RoomPattern], room: &str) -> bool {
    patterns.iter().any(|p| p.matches(room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_names() {
        for ok in ["a", "chat:lobby", "user@host/x.y-z_1", &"r".repeat(128)] {
            assert!(RoomName::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(RoomName::parse(""), Err(RoomNameError::Empty));
        assert_eq!(
            RoomName::parse(&"r".repeat(129)),
            Err(RoomNameError::TooLong)
        );
        for bad in ["a b", "é", "a*", "a\n", "x#y"] {
            assert_eq!(
                RoomName::parse(bad),
                Err(RoomNameError::BadCharacter),
                "{bad}"
            );
        }
    }

    #[test]
    fn patterns() {
        let m = |p: &str, r: &str| RoomPattern::new(p).matches(r);
        assert!(m("chat:*", "chat:lobby"));
        assert!(m("chat:*", "chat:"));
        assert!(!m("chat:*", "chatx"));
        assert!(m("*", "anything/at/all"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
        assert!(m("*:room", "team/1:room"));
        assert!(!m(&"*a".repeat(20), &"a".repeat(19)));
    }
}
