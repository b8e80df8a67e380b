//! `/rooms/{room}`: publish to a room and see its members, cluster-wide.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::RoomName;
use serde::Deserialize;

use super::connections::json_payload;
use super::read_body;
use crate::app::App;
use crate::error::ApiError;

fn room_name(room: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(room).map_err(|e| ApiError::bad_request(format!("invalid room name: {e}")))
}

/// `POST /rooms/{room}/messages` with `{"data": ANY}`: a `message` with `from: null`.
pub async fn publish(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let room = room_name(&room)?;
    let body = read_body(&app, body).await?;
    #[derive(Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let msg: Msg<'_> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body must be {{\"data\": ...}}: {e}")))?;
    let data = msg
        .data
        .ok_or_else(|| ApiError::bad_request("missing field `data`"))?;
    let data = json_payload(data.get().as_bytes())?;
    let span = app.traced().then(|| {
        tracing::info_span!(parent: None, "publish", otel.kind = "producer", room = %room, connection = "")
    });
    let trace = span.as_ref().and_then(crate::telemetry::traceparent);
    let receipt = match app.router.retention(&room) {
        Some(retention) => {
            app.router
                .publish_retained(&room, data, None, false, retention, trace)
                .map_err(ApiError::from)?
                .await
        }
        None => app
            .router
            .publish_traced(&room, data, None, false, trace)
            .map_err(ApiError::from)?,
    };
    drop(span);
    let mut answer = serde_json::json!({ "offset": receipt.offset });
    if let Some(epoch) = receipt.epoch {
        answer["epoch"] = epoch.into();
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// Query of `GET /rooms/{room}`.
#[derive(Deserialize)]
pub struct RoomQuery {
    #[serde(default)]
    members: bool,
}

/// `GET /rooms/{room}[?members=true]`.
pub async fn get(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(q): Query<RoomQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let room = room_name(&room)?;
    let presence = app.router.room(&room, q.members).await;
    let mut body = serde_json::json!({ "room": room.as_str(), "members": presence.count });
    if q.members {
        body["connections"] = presence.ids.iter().map(|c| c.as_str()).collect();
    }
    if presence.partial {
        body["partial"] = true.into();
    }
    Ok(Json(body))
}
