//! `/@connections/{id}`: send to, inspect and close one connection, on any node.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{CloseCode, ConnectionId, Payload};

use super::{read_body, rfc3339};
use crate::app::App;
use crate::error::ApiError;

/// A JSON value's exact text, validated.
pub(super) fn json_payload(body: &[u8]) -> Result<Payload, ApiError> {
    let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not JSON: {e}")))?;
    Ok(Payload::Json(bytes::Bytes::copy_from_slice(
        raw.get().as_bytes(),
    )))
}

/// `POST`: delivers the JSON body as a `direct` frame with `from: null`.
pub async fn post(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = read_body(&app, body).await?;
    let data = json_payload(&body)?;
    app.router
        .send(&ConnectionId::from_string(id), data, None)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(serde_json::json!({})))
}

/// `GET`: the connection's view.
pub async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let view = app
        .router
        .connection(&ConnectionId::from_string(id))
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::gone("connection is gone"))?;
    Ok(Json(serde_json::json!({
        "connectionId": view.id.as_str(),
        "connectedAt": rfc3339(view.connected_at),
        "lastActiveAt": rfc3339(view.last_active),
        "node": view.node.as_str(),
        "identity": { "sourceIp": view.source_ip, "sub": view.sub },
        "rooms": view.rooms.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
    })))
}

/// `DELETE`: closes the connection with 4002.
pub async fn delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.router
        .disconnect(&ConnectionId::from_string(id), CloseCode::DISCONNECTED)
        .await
        .map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
