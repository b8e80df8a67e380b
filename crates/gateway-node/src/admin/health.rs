//! `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::app::App;
use crate::error::ApiError;

/// Liveness: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: 503 once draining. Redis being down does not make a node unready: it still
/// serves its local connections, and failing every node's readiness at once would take the
/// whole gateway out of the load balancer for an outage that only affects cross-node traffic.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.draining() {
        return ApiError::unavailable("draining").into_response();
    }
    Json(serde_json::json!({ "status": "ready" })).into_response()
}

/// Prometheus text exposition.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
