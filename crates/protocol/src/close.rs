//! WebSocket close codes (SPEC section 5). Each says what a well-behaved client does next.

/// A close code the gateway sends. Named so that no module writes a bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal close; the client may reconnect when it wants to.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// The peer is going away (sent to proxied upstreams when the gateway drains).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// Policy violation: too many bad frames, repeated rate-limit violations, a bad refresh.
    /// Reconnecting with the same behaviour gets the same close.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// A message over `limits.max_message_bytes`; send smaller messages.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// Internal error; reconnect with backoff.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// The node is draining; reconnect at once, to any node.
    pub const RESTART: CloseCode = CloseCode(1012);
    /// Try again later: the client read too slowly (slow consumer) or the node is overloaded.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// A proxied upstream was unreachable or failed; the reason names it.
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);
    /// The token expired and was not refreshed; get a new token, then reconnect.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4001);
    /// Disconnected through the management API; do not reconnect blindly.
    pub const DISCONNECTED: CloseCode = CloseCode(4002);
    /// No answer to heartbeat pings within `server.heartbeat_timeout`; reconnect.
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode(4003);
    /// `server.idle_timeout` passed without a client message; reconnect when needed.
    pub const IDLE_TIMEOUT: CloseCode = CloseCode(4004);
    /// `server.max_connection_duration` reached; reconnect at once.
    pub const MAX_DURATION: CloseCode = CloseCode(4005);

    /// Whether an endpoint may send `code` in a close frame (RFC 6455 section 7.4): 1000 to
    /// 1003, 1007 to 1014, and the registered and private ranges 3000 to 4999. 1005, 1006 and
    /// 1015 only describe a close that had no frame; anything else is a protocol error.
    pub fn sendable(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// The code as sent on the wire.
    pub fn as_u16(self) -> u16 {
        self.0
    }

    /// A short reason phrase sent with the close frame, so that logs on the client side say why.
    pub fn reason(self) -> &'static str {
        match self.0 {
            1000 => "normal close",
            1001 => "going away",
            1008 => "policy violation",
            1009 => "message too big",
            1011 => "internal error",
            1012 => "node draining: reconnect",
            1013 => "try again later",
            1014 => "upstream unavailable",
            4001 => "token expired",
            4002 => "disconnected",
            4003 => "heartbeat timeout",
            4004 => "idle timeout",
            4005 => "max connection duration reached",
            _ => "",
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_codes_a_close_frame_may_carry_are_sendable() {
        for ok in [1000, 1001, 1008, 1011, 1014, 3000, 4002, 4999] {
            assert!(CloseCode::sendable(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert!(!CloseCode::sendable(bad), "{bad}");
        }
    }
}
