//! `GET /ws` (SPEC section 3): every refusal happens before the upgrade, as HTTP, in the
//! order the SPEC gives; on success the 101 answer is sent and the session starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use protocol::codec::{negotiate, Negotiated};
use protocol::{ConnectionId, ErrorCode, RoomName};
use room_router::{ConnHandle, ConnInfo, QueueLimits, SessionKind};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::app::App;
use crate::auth::Identity;
use crate::error::ApiError;
use crate::integration::{Caller, LIFECYCLE_ANSWER_BYTES};
use crate::ws::limits::{PendingSlot, Slot, SlotError};
use crate::ws::outbound::{ClientSocket, SessionIo, SocketTransport};
use crate::ws::session::{spawn_disconnect, Session};
use crate::ws::tls_socket::{TlsSocket, TlsTransport};
use tokio_rustls::server::TlsStream;

/// Seconds a refused client should wait before retrying a 503.
pub(crate) const RETRY_AFTER_SECS: u32 = 5;

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// A slot taken for this upgrade: given back to the connection when the upgrade is refused,
/// since the connection stays open (keep-alive) and still counts against the limits.
pub(crate) struct Taken {
    slot: Option<Slot>,
    home: Option<PendingSlot>,
}

impl Taken {
    /// The upgrade goes ahead: the session holds the slot from now on.
    pub(crate) fn keep(mut self) -> Option<Slot> {
        self.slot.take()
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let (Some(slot), Some(home)) = (self.slot.take(), &self.home) {
            home.give_back(slot);
        }
    }
}

/// Asks `$connect`, when configured (SPEC section 6): a 2xx accepts, and `{"rooms": [...]}`
/// names rooms to join before the welcome; a 4xx or 5xx refuses with that status; anything
/// else (unreachable, timed out, another status) refuses with 502 `integration_failed`.
async fn connect_route(
    app: &App,
    caller: &Caller,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<Vec<RoomName>>, ApiError> {
    let Some(routing) = &app.routing else {
        return Ok(None);
    };
    let Some(route) = &routing.table.connect else {
        return Ok(None);
    };
    let auth = app.auth.as_ref().map(|a| a.config());
    let token_params = auth.map(|a| a.query_params.clone()).unwrap_or_default();
    let token_cookie = auth.map(|a| a.cookie.as_str()).filter(|c| !c.is_empty());
    let request =
        routing
            .integrations
            .connect_request(caller, headers, query, &token_params, token_cookie);
    let Some(_slot) = routing.integrations.lifecycle_slot() else {
        return Err(
            ApiError::unavailable("too many $connect calls in flight on this node")
                .retry_after(RETRY_AFTER_SECS),
        );
    };
    match routing
        .integrations
        .call(route, &request, LIFECYCLE_ANSWER_BYTES)
        .await
    {
        Ok(answer) if (200..300).contains(&answer.status) => Ok(Some(connect_rooms(&answer.body))),
        Ok(answer) if (400..600).contains(&answer.status) => {
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::FORBIDDEN);
            let code = code_of_status(status).unwrap_or(ErrorCode::IntegrationFailed);
            Err(ApiError::new(
                status,
                code,
                "refused by the $connect integration",
            ))
        }
        Ok(answer) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::IntegrationFailed,
            format!("the $connect integration answered {}", answer.status),
        )),
        Err(what) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::IntegrationFailed,
            format!("$connect: {what}"),
        )),
    }
}

/// The valid room names of a `$connect` answer's `{"rooms": [...]}`; anything else is none.
fn connect_rooms(body: &[u8]) -> Vec<RoomName> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        rooms: Vec<String>,
    }
    serde_json::from_slice::<Answer>(body)
        .map(|a| {
            a.rooms
                .iter()
                .filter_map(|r| match RoomName::parse(r) {
                    Ok(room) => Some(room),
                    Err(e) => {
                        tracing::warn!(room = %r, error = %e, "$connect named an invalid room");
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A refused handshake's answer (boxed: a response is large, and refusals are rare).
pub(crate) type Refused = Box<Response>;

/// A WebSocket upgrade request's key, or the refusal of a request that is not one.
fn check_upgrade(headers: &HeaderMap) -> Result<HeaderValue, Refused> {
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(Box::new(
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::BadRequest,
                "expected a WebSocket upgrade",
            )
            .into_response(),
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        let mut resp = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::BadRequest,
            "unsupported WebSocket version (13 required)",
        )
        .into_response();
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(resp));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or_else(|| Box::new(ApiError::bad_request("missing Sec-WebSocket-Key").into_response()))
}

/// The connection's slot (taken at accept, or now), or the 503 or 429 refusal.
fn take_slot(app: &App, req: &Request, peer: SocketAddr) -> Result<Taken, Refused> {
    let pending = req.extensions().get::<PendingSlot>().cloned();
    let taken = match pending.as_ref() {
        Some(p) => p.take(&app.slots, peer.ip()),
        None => app.slots.acquire(peer.ip()),
    };
    match taken {
        Ok(slot) => Ok(Taken {
            slot: Some(slot),
            home: pending,
        }),
        Err(SlotError::NodeFull) => Err(Box::new(
            ApiError::unavailable("node is full")
                .retry_after(RETRY_AFTER_SECS)
                .into_response(),
        )),
        Err(SlotError::PerIp) => Err(Box::new(
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many connections from this address",
            )
            .into_response(),
        )),
    }
}

/// Refuses (403) an `Origin` not in `server.allowed_origins`, when that is set.
fn check_origin(app: &App, headers: &HeaderMap) -> Result<(), Refused> {
    let allowed = &app.config.server.allowed_origins;
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let ok = origin
        .to_str()
        .map(|o| allowed.iter().any(|a| a == o))
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(Box::new(
            ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "origin not allowed",
            )
            .into_response(),
        ))
    }
}

/// The 503 a draining node answers an upgrade with.
pub(crate) fn draining() -> Response {
    ApiError::unavailable("node is draining: connect to another node")
        .retry_after(RETRY_AFTER_SECS)
        .into_response()
}

/// What every upgrade passes first, in the SPEC's order (section 3): a WebSocket upgrade
/// request, a node not draining, a slot, an allowed origin. The request's key and the slot.
pub(crate) fn admit(
    app: &App,
    req: &Request,
    peer: SocketAddr,
) -> Result<(HeaderValue, Taken), Refused> {
    let key = check_upgrade(req.headers())?;
    if app.draining() {
        return Err(Box::new(draining()));
    }
    let slot = take_slot(app, req, peer)?;
    check_origin(app, req.headers())?;
    Ok((key, slot))
}

/// The subprotocols a client offers, in its order.
pub(crate) fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The error code of a 4xx or 5xx that a backend (a `$connect` integration, an upstream)
/// refused a client with, when the status has one of its own.
pub(crate) fn code_of_status(status: StatusCode) -> Option<ErrorCode> {
    Some(match status {
        StatusCode::BAD_REQUEST => ErrorCode::BadRequest,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        _ => return None,
    })
}

/// The token's identity when `[auth]` is configured (none otherwise), or the 401 refusal.
pub(crate) async fn authenticate(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<Identity>, Refused> {
    let Some(auth) = &app.auth else {
        return Ok(None);
    };
    let verified = match auth.find_token(headers, query) {
        None => Err(crate::auth::AuthError::Missing),
        Some(t) => auth.verify_fresh(&t).await,
    };
    match verified {
        Ok(identity) => Ok(Some(identity)),
        Err(e) => {
            app.metrics.auth_failure(e.reason());
            tracing::debug!(peer = %peer, reason = e.reason(), "handshake refused");
            Err(Box::new(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    e.to_string(),
                )
                .into_response(),
            ))
        }
    }
}

/// The 101 answer to a handshake with `key`, with the chosen subprotocol.
pub(crate) fn switching_protocols(key: &HeaderValue, protocol: Option<&str>) -> Response {
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}

/// The upgrade handler.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let (key, slot) = match admit(&app, &req, peer) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    let headers = req.headers();
    let offered = offered_protocols(headers);
    let negotiated = negotiate(offered.iter().map(String::as_str));
    let Some(encoding) = negotiated.encoding() else {
        return ApiError::bad_request(
            "no supported subprotocol offered (wsgate.v1.json, wsgate.v1.msgpack)",
        )
        .into_response();
    };
    let identity = match authenticate(&app, peer, headers, req.uri().query()).await {
        Ok(identity) => identity,
        Err(refusal) => return *refusal,
    };
    let id = ConnectionId::random();
    let connected_at = SystemTime::now();
    let caller = Caller {
        connection_id: id.clone(),
        connected_at,
        source_ip: peer.ip().to_string(),
        sub: identity.as_ref().and_then(|i| i.sub.clone()),
        claims: identity
            .as_ref()
            .map(|i| i.claims.clone())
            .unwrap_or_default(),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return ApiError::bad_request("connection cannot be upgraded").into_response();
    };
    let rooms = match connect_route(&app, &caller, req.headers(), req.uri().query()).await {
        Ok(rooms) => rooms,
        Err(refusal) => return refusal.into_response(),
    };
    // `$connect` may take seconds: a drain that started meanwhile has already listed its
    // connections, so this one is refused rather than left out of it.
    if app.draining() {
        if rooms.is_some() {
            spawn_disconnect(&app, caller, 1012, "node is draining".into());
        }
        return draining();
    }
    let connect_accepted = rooms.is_some();
    let rooms = rooms.unwrap_or_default();
    // Kept for the connection's life only when `$disconnect` will be told of its end: its
    // strings are otherwise memory every idle connection pays for.
    let caller = app
        .routing
        .as_ref()
        .is_some_and(|r| r.table.disconnect.is_some())
        .then_some(caller);

    let conn = Arc::new(ConnHandle::new(
        id,
        encoding,
        QueueLimits {
            frames: app.config.limits.outbound_queue,
            bytes: app.config.limits.outbound_queue_bytes,
        },
        ConnInfo {
            source_ip: peer.ip(),
            source_port: peer.port(),
            sub: identity.as_ref().and_then(|i| i.sub.clone()),
            connected_at,
            kind: SessionKind::Room,
            path: req.uri().path().to_owned(),
        },
    ));
    // `server.write_delay`: frames wait up to that long and leave in one write.
    conn.outbound.set_write_delay(app.config.server.write_delay);
    let session_app = app.clone();
    let slot = slot.keep();
    app.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "upgrade failed");
                if let Some(caller) = caller.filter(|_| connect_accepted) {
                    // `$connect` accepted a connection that never came: say it ended.
                    spawn_disconnect(&session_app, caller, 1006, "upgrade failed".into());
                }
                return;
            }
        };
        // The session writes to the socket directly (see ws::outbound), so it needs the TCP
        // or TLS stream itself, not hyper's boxed wrapper.
        let (socket, prefix) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let stream = Arc::new(parts.io.into_inner());
                conn.outbound.attach(Box::new(SocketTransport::new(
                    stream.clone(),
                    session_app.metrics.clone(),
                )));
                (ClientSocket::Plain(stream), parts.read_buf)
            }
            Err(upgraded) => match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
                Ok(parts) => {
                    let (tcp, tls) = parts.io.into_inner().into_inner();
                    let socket = TlsSocket::new(tcp, tls, &conn);
                    conn.outbound.attach(Box::new(TlsTransport::new(
                        socket.clone(),
                        session_app.metrics.clone(),
                    )));
                    (ClientSocket::Tls(socket), parts.read_buf)
                }
                Err(_) => {
                    tracing::error!("upgraded connection is neither a TCP nor a TLS stream");
                    return;
                }
            },
        };
        let io = SessionIo::new(
            socket.clone(),
            prefix,
            conn.clone(),
            session_app.router.clone(),
        );
        let ws =
            WebSocketStream::from_raw_socket(io, Role::Server, Some(session_app.ws_config)).await;
        Box::new(Session::new(session_app, conn, identity, ws, socket))
            .run(caller, rooms)
            .await;
        drop(slot);
    });

    let chosen = match negotiated {
        Negotiated::Chosen(e) => Some(e.subprotocol()),
        _ => None,
    };
    switching_protocols(&key, chosen)
}
