//! The admin listener (SPEC section 10): health, metrics, and the management API.

mod cluster;
mod connections;
mod health;
mod rooms;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use protocol::ErrorCode;

use crate::app::App;
use crate::error::ApiError;

/// Time an admin client has to send its request headers (SPEC section 8).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Admin connections served at once: operators and scrapers, never thousands; more wait in
/// the accept queue rather than each holding a task and a buffer.
pub const MAX_CONNECTIONS: usize = 256;

/// The admin router. `/metrics`, `/healthz` and `/readyz` are open; everything else needs the
/// admin token when one is set.
pub fn router(app: Arc<App>) -> axum::Router {
    let protected = axum::Router::new()
        .route(
            "/@connections/{id}",
            post(connections::post)
                .get(connections::get)
                .delete(connections::delete),
        )
        .route("/rooms/{room}/messages", post(rooms::publish))
        .route("/rooms/{room}", get(rooms::get))
        .route("/sessions", get(cluster::sessions))
        .route("/cluster", get(cluster::cluster))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    axum::Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(app)
}

/// Compares in constant time, so response timing does not reveal the token.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

async fn require_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let expected = &app.config.admin.token;
    if !expected.is_empty() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(given.trim().as_bytes(), expected.as_bytes()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "missing or wrong admin token",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Reads a body of at most `limits.max_message_bytes` (413 `too_large` over it).
async fn read_body(app: &App, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.config.limits.max_message_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("body over limits.max_message_bytes ({limit})"),
        )
    })
}

/// RFC 3339 with milliseconds. The formatter panics outside 1970 to 9999, and a view may come
/// from another node: clamped to that range.
fn rfc3339(t: std::time::SystemTime) -> String {
    use std::time::{Duration, UNIX_EPOCH};
    let latest = UNIX_EPOCH + Duration::from_millis(protocol::envelope::MAX_TIME_MS);
    humantime::format_rfc3339_millis(t.clamp(UNIX_EPOCH, latest)).to_string()
}
