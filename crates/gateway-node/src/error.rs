//! HTTP errors with the SPEC body `{"error": CODE, "message": TEXT}`, and the one mapping from
//! a routing failure to what a client frame and the admin API say.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::ErrorCode;
use room_router::error::BusError;
use room_router::{RouterError, SendError};

/// What a failed routing call tells its caller: the error code of a client frame's `error`
/// (SPEC section 4), the status of the admin API's answer (section 10), and a message. The
/// cluster's own failures are logged here with their causes, and callers get a plain message:
/// no Redis error text reaches a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Wire error code.
    pub code: ErrorCode,
    /// Admin API status.
    pub status: StatusCode,
    /// What to tell the caller.
    pub message: String,
}

impl Failure {
    /// A failed `send`, post to or close of a connection.
    pub fn of_send(e: &SendError) -> Failure {
        match e {
            SendError::NotFound(_) => Failure {
                code: ErrorCode::NotFound,
                status: StatusCode::GONE,
                message: "no such connection".into(),
            },
            SendError::Proxied(_) => Failure {
                code: ErrorCode::BadRequest,
                status: StatusCode::CONFLICT,
                message: chain(e),
            },
            SendError::Router(e) => Failure::of_router(e),
            SendError::Unavailable(e) => Failure::of_bus(e),
        }
    }

    /// A failed join or publish.
    pub fn of_router(e: &RouterError) -> Failure {
        if let RouterError::Unavailable(bus) = e {
            return Failure::of_bus(bus);
        }
        let (code, status) = match e {
            RouterError::Unavailable(_) => {
                (ErrorCode::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
            }
            RouterError::RoomLimit(_) => (ErrorCode::RoomLimit, StatusCode::BAD_REQUEST),
            RouterError::TooLarge { .. } => (ErrorCode::TooLarge, StatusCode::PAYLOAD_TOO_LARGE),
            RouterError::Unencodable(_) => (ErrorCode::BadRequest, StatusCode::BAD_REQUEST),
        };
        // The caller's own message is the subject here, so its cause is shown in full.
        Failure {
            code,
            status,
            message: chain(e),
        }
    }

    /// The cluster could not be asked: logged with its cause, a plain message out.
    pub fn of_bus(e: &BusError) -> Failure {
        tracing::warn!(error = %chain(e), "cluster request failed");
        Failure {
            code: ErrorCode::Unavailable,
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the cluster cannot be reached; try again".into(),
        }
    }
}

/// An error and its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> ApiError {
        // A connection that does not exist is `gone` to the management API (AWS's 410).
        let code = if f.status == StatusCode::GONE {
            ErrorCode::Gone
        } else {
            f.code
        };
        ApiError::new(f.status, code, f.message)
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> ApiError {
        Failure::of_send(&e).into()
    }
}

impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> ApiError {
        Failure::of_router(&e).into()
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> ApiError {
        Failure::of_bus(&e).into()
    }
}

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error with a wire error code.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.as_str(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After` (seconds), for 503 answers.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// 410 `gone`.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, ErrorCode::Gone, message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_mapping_for_frames_and_the_admin_api_without_backend_detail() {
        let bus = BusError::Backend {
            doing: "reading an affinity record",
            source: Arc::new(std::io::Error::other("redis said WRONGPASS at 10.0.0.5")),
        };
        let f = Failure::of_send(&SendError::Unavailable(bus));
        assert_eq!(
            (f.code, f.status),
            (ErrorCode::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
        );
        assert!(!f.message.contains("WRONGPASS") && !f.message.contains("affinity"));
        let f = Failure::of_send(&SendError::NotFound("x".into()));
        assert_eq!((f.code, f.status), (ErrorCode::NotFound, StatusCode::GONE));
        let f = Failure::of_router(&RouterError::TooLarge { size: 9, limit: 8 });
        assert_eq!(
            (f.code, f.status),
            (ErrorCode::TooLarge, StatusCode::PAYLOAD_TOO_LARGE)
        );
        let bad = protocol::payload::PayloadError::Unrepresentable("ext types are not supported");
        let f = Failure::of_router(&RouterError::Unencodable(Arc::new(bad)));
        assert_eq!(f.code, ErrorCode::BadRequest);
        assert!(
            f.message.contains("ext types"),
            "the cause is kept: {}",
            f.message
        );
    }
}
