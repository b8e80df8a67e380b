//! `/cluster` (the live nodes; KEDA reads `connections_total`) and `/sessions` (this node).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::rfc3339;
use crate::app::App;
use crate::error::ApiError;

/// `GET /cluster`.
pub async fn cluster(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    let nodes = app.router.nodes().await.map_err(ApiError::from)?;
    // Other nodes' counts are not trusted not to overflow.
    let total = nodes
        .iter()
        .fold(0usize, |t, n| t.saturating_add(n.connections));
    let nodes: Vec<_> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "id": n.id.as_str(),
                "connections": n.connections,
                "rooms": n.rooms,
                "last_seen": rfc3339(n.last_seen),
            })
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "nodes": nodes, "connections_total": total }),
    ))
}

/// `GET /sessions`: this node's live sessions.
pub async fn sessions(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let sessions: Vec<_> = app
        .router
        .local_connections()
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id.as_str(),
                "kind": c.info.kind.as_str(),
                "path": c.info.path,
                "upstream": c.upstream(),
                "remote_addr": std::net::SocketAddr::new(c.info.source_ip, c.info.source_port).to_string(),
                "sub": c.info.sub,
                "connected_at": rfc3339(c.info.connected_at),
            })
        })
        .collect();
    Json(serde_json::json!({ "sessions": sessions }))
}
