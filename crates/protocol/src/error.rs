//! Wire error codes and the errors of decoding a frame.

use crate::id::RequestId;

/// The `code` of an `error` frame (SPEC section 4) and of an HTTP error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not a frame, or a missing or ill-typed field. Counts toward `limits.max_bad_frames`.
    BadRequest,
    /// An action no built-in handles and no route matches.
    UnknownAction,
    /// The token's `rooms` claim or the default room policy forbids it.
    Forbidden,
    /// `send` to a connection that does not exist.
    NotFound,
    /// The delivery would exceed `limits.max_message_bytes` for some recipient.
    TooLarge,
    /// Over the per-connection message rate.
    RateLimited,
    /// Over `limits.rooms_per_connection`.
    RoomLimit,
    /// A route's integration failed.
    IntegrationFailed,
    /// The node cannot do it now (draining, full, cluster unreachable for this request).
    Unavailable,
    /// Missing or invalid credentials (HTTP only).
    Unauthorized,
    /// The resource existed but is gone (HTTP only, `@connections`).
    Gone,
    /// An unexpected failure inside the node (HTTP only).
    Internal,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomLimit => "room_limit",
            ErrorCode::IntegrationFailed => "integration_failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Gone => "gone",
            ErrorCode::Internal => "internal",
        }
    }

    /// Parses a wire code; `None` for codes this version does not know.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        Some(match s {
            "bad_request" => ErrorCode::BadRequest,
            "unknown_action" => ErrorCode::UnknownAction,
            "forbidden" => ErrorCode::Forbidden,
            "not_found" => ErrorCode::NotFound,
            "too_large" => ErrorCode::TooLarge,
            "rate_limited" => ErrorCode::RateLimited,
            "room_limit" => ErrorCode::RoomLimit,
            "integration_failed" => ErrorCode::IntegrationFailed,
            "unavailable" => ErrorCode::Unavailable,
            "unauthorized" => ErrorCode::Unauthorized,
            "gone" => ErrorCode::Gone,
            "internal" => ErrorCode::Internal,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message could not be decoded into a frame.
///
/// Every variant is a *bad frame*: the client gets `bad_request` with the error's text (and the
/// request id when it could be read) and the connection stays open.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The message is not a JSON object / MessagePack map at all.
    #[error("not a frame: {0}")]
    NotAFrame(String),
    /// A text message on a MessagePack connection, or a binary one on a JSON connection.
    #[error("{0} message on a {1} connection")]
    WrongMessageType(&'static str, &'static str),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// What it must be, as a phrase ("a string").
        expected: &'static str,
    },
    /// A room name outside `^[A-Za-z0-9_\-:.@/]{1,128}$`.
    #[error("invalid room name: {0}")]
    BadRoom(#[from] crate::room::RoomNameError),
    /// MessagePack `data` that has no JSON form (ext types, non-string map keys, bad UTF-8).
    #[error("field `{field}` cannot be carried: {reason}")]
    Unrepresentable {
        /// The field's name.
        field: &'static str,
        /// What in it is not allowed.
        reason: &'static str,
    },
}

/// A [`DecodeError`] together with the request id, when the frame had a readable one, so that
/// the error frame can carry it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct FrameError {
    /// The request id, if one was readable.
    pub id: Option<RequestId>,
    /// What was wrong.
    #[source]
    pub error: DecodeError,
}

impl FrameError {
    pub(crate) fn new(id: Option<RequestId>, error: DecodeError) -> Self {
        FrameError { id, error }
    }
}
