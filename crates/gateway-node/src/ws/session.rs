//! One client connection from welcome to close: reads client frames, runs actions, writes
//! queued frames, and enforces heartbeats, timeouts and limits (SPEC sections 3 to 5, 11).
//!
//! One task per connection drives both directions with `select!`, so an idle connection costs
//! one small future and no second task.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use protocol::codec::{decode_client, request_id};
use protocol::frame::RoutedFrame;
use protocol::{ClientFrame, CloseCode, ErrorCode, RequestId, RoomName, ServerFrame};
use room_router::{ConnHandle, Flush, PushError, RouterError};
use tokio::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::app::App;
use crate::auth::{room_allowed, Identity};
use crate::error::Failure;
use crate::integration::{
    answer_data, Answer, Caller, CONNECTION_IN_FLIGHT, LIFECYCLE_ANSWER_BYTES,
};
use crate::routes::Selected;
use crate::ws::limits::RateLimiter;
use crate::ws::outbound::{self, flush_all, ClientSocket, SessionIo};
use crate::ws::waiting::{Done, Outcome, Pending, SendQueue};

/// The WebSocket of one client: tungstenite reads; writes go through the outbound.
type Ws = tokio_tungstenite::WebSocketStream<SessionIo>;

/// Tells `$disconnect`, when configured, that a connection ended: once, in a task of its own,
/// so the close never waits for it (a drain's hard stop ends it).
pub fn spawn_disconnect(app: &Arc<App>, caller: Caller, code: u16, reason: String) {
    let Some(routing) = &app.routing else {
        return;
    };
    let Some(route) = routing.table.disconnect.clone() else {
        return;
    };
    let Some(slot) = routing.integrations.lifecycle_slot() else {
        tracing::warn!("too many $disconnect calls in flight: one not sent");
        return;
    };
    let request = routing
        .integrations
        .disconnect_request(&caller, code, &reason);
    let task_app = app.clone();
    app.sessions.spawn(async move {
        let _slot = slot;
        let Some(routing) = &task_app.routing else {
            return;
        };
        tokio::select! {
            result = routing.integrations.call(&route, &request, LIFECYCLE_ANSWER_BYTES) => {
                if let Err(what) = result {
                    tracing::warn!(connection = %caller.connection_id, %what, "$disconnect failed");
                }
            }
            () = task_app.hard_stop.cancelled() => {}
        }
    });
}

/// A connection counted and reachable until this is dropped (room and proxied sessions).
pub(crate) struct Registered {
    app: Arc<App>,
    conn: Arc<ConnHandle>,
}

impl Registered {
    /// Counts the connection active; armed before the registration, so that whatever ends
    /// the task (its end, a panic, the task dropped mid-await) unregisters it and no ghost
    /// member or affinity record outlives it.
    pub(crate) fn new(app: Arc<App>, conn: Arc<ConnHandle>) -> Registered {
        app.metrics.connections_active.inc();
        Registered { app, conn }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.app.router.unregister(&self.conn);
        self.app.metrics.connections_active.dec();
    }
}

/// Lets go of the connection's socket and queue when the session task ends.
struct Detach(Arc<ConnHandle>);

impl Drop for Detach {
    fn drop(&mut self) {
        self.0.outbound.detach();
    }
}

/// How a session ends.
enum End {
    /// The server closes with this code.
    Close(CloseCode),
    /// The client closed; tungstenite answers the close.
    PeerClosed,
    /// The socket failed or the node stopped: drop it.
    Broken,
}

/// The state of one connection.
pub struct Session {
    app: Arc<App>,
    conn: Arc<ConnHandle>,
    identity: Option<Identity>,
    ws: Ws,
    rate: RateLimiter,
    bad_frames: u32,
    rejected: u32,
    started: Instant,
    last_seen: Instant,
    last_message: Instant,
    next_ping: Instant,
    /// When the batch waiting on `server.write_delay` must be written (the session's timer
    /// fires for it).
    write_due: Option<Instant>,
    token_deadline: Option<Instant>,
    /// The socket, to wait for writability when it pushes back.
    write: ClientSocket,
    /// Whether the last flush found the socket full.
    blocked: bool,
    /// `send`s waiting on the cluster, answered in order while the loop goes on.
    sends: SendQueue,
    /// Integration calls of routed frames, answered as they finish (SPEC section 6: they
    /// never block the connection's other frames).
    /// Made at the first call: an empty `FuturesUnordered` still allocates, and most
    /// connections never make one.
    calls: Option<Calls>,
    /// The code and reason of the client's close frame, once it sent one.
    peer_close: Option<(u16, String)>,
}

/// Integration calls in flight on one connection.
type Calls = FuturesUnordered<Pin<Box<dyn Future<Output = CallDone> + Send>>>;

/// The next finished call; never, when none was ever made.
async fn next_call(calls: &mut Option<Calls>) -> Option<CallDone> {
    match calls {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// A finished integration call.
struct CallDone {
    id: Option<RequestId>,
    route_key: String,
    response: bool,
    result: Result<Answer, String>,
}

/// Bounds a write: a client that stops reading cannot hold the session forever.
async fn bounded<F: std::future::Future<Output = Result<(), WsError>>>(
    limit: Duration,
    f: F,
) -> Result<(), WsError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(WsError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

/// The monotonic deadline of a wall-clock time (a token's expiry). A time too far ahead for
/// `Instant` arithmetic (a token valid until the year 9999) is a deadline a century away,
/// which no connection reaches.
fn instant_of(t: SystemTime) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    let ahead = t.duration_since(SystemTime::now()).unwrap_or_default();
    now.checked_add(ahead.min(CENTURY)).unwrap_or(now + CENTURY)
}

impl Session {
    /// A session for an upgraded connection.
    pub fn new(
        app: Arc<App>,
        conn: Arc<ConnHandle>,
        identity: Option<Identity>,
        ws: Ws,
        write: ClientSocket,
    ) -> Self {
        let now = Instant::now();
        let limits = &app.config.limits;
        let token_deadline = match (&app.auth, &identity) {
            (Some(auth), Some(id)) => Some(instant_of(auth.expiry(id))),
            _ => None,
        };
        let sends = SendQueue::new(limits.outbound_queue_bytes);
        Session {
            rate: RateLimiter::new(limits.messages_per_second, limits.messages_burst, now),
            next_ping: now + app.config.server.heartbeat,
            write_due: None,
            sends,
            calls: None,
            peer_close: None,
            app,
            conn,
            identity,
            ws,
            bad_frames: 0,
            rejected: 0,
            started: now,
            last_seen: now,
            last_message: now,
            token_deadline,
            write,
            blocked: false,
        }
    }

    /// Runs the connection to its end: registers it, joins the rooms `$connect` named,
    /// welcomes it, serves it, closes it, and tells `$disconnect`.
    ///
    /// The session is boxed: an async fn keeps a moved-in `self` twice in its state, and this
    /// future is most of what an idle connection costs (issue 11: ≤ 4 KiB per connection).
    pub async fn run(mut self: Box<Self>, caller: Option<Caller>, rooms: Vec<RoomName>) {
        let app = self.app.clone();
        // Declared first, dropped last: whatever ends the task, the socket and the queue are
        // let go of, even while a member snapshot somewhere still holds the connection.
        let _detach = Detach(self.conn.clone());
        let registered = Registered::new(app.clone(), self.conn.clone());
        // One span for the connection's life, when traces are on: a root of its own, so a
        // long connection's trace does not swallow the publishes it makes.
        let span = app.traced().then(|| {
            tracing::info_span!(
                parent: None,
                "connection",
                otel.kind = "server",
                connection = %self.conn.id,
                node = %app.router.node_id(),
                source_ip = %self.conn.info.source_ip,
                close_code = tracing::field::Empty,
            )
        });
        app.router.register(self.conn.clone()).await;
        app.metrics.connections.inc();
        for room in &rooms {
            if let Err(e) = app.router.join(&self.conn, room) {
                tracing::warn!(room = %room, error = %e, "a $connect room was not joined");
            }
        }
        {
            // Scoped: a local alive across `serve` would sit in every connection's state.
            let welcome = ServerFrame::Welcome {
                connection_id: self.conn.id.clone(),
                node: app.router.node_id().clone(),
                protocol: self.conn.encoding,
                heartbeat_ms: app.config.server.heartbeat.as_millis() as u64,
            };
            self.reply(&welcome);
        }
        let end = self.serve().await;
        // Unreachable from now on, before the (bounded) close handshake; calls still in
        // flight are dropped (nobody is left to answer), their permits with them.
        drop(registered);
        self.calls = None;
        let (code, reason) = match &end {
            End::Close(code) => (code.as_u16(), code.reason().to_owned()),
            End::PeerClosed => self
                .peer_close
                .clone()
                .unwrap_or((1005, "no status".to_owned())),
            End::Broken => (1006, "connection lost".to_owned()),
        };
        if let Some(span) = &span {
            span.record("close_code", i64::from(code));
        }
        if let Some(caller) = caller {
            spawn_disconnect(&app, caller, code, reason);
        }
        match end {
            End::Close(code) => {
                tokio::select! {
                    () = self.close(code) => {}
                    () = app.hard_stop.cancelled() => {}
                }
            }
            End::PeerClosed => {
                let _ = tokio::time::timeout(
                    outbound::CLOSE_TIMEOUT,
                    flush_all(&self.conn, &self.write),
                )
                .await;
            }
            End::Broken => {}
        }
        if let ClientSocket::Tls(tls) = &self.write {
            // A TLS peer expects close_notify before the TCP close, or reports an
            // unexpected end of stream.
            tls.finish();
        }
    }

    /// Sends a close frame after what is queued, and waits (bounded) for the client's answer.
    async fn close(&mut self, code: CloseCode) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code.as_u16()),
            reason: code.reason().into(),
        };
        let _ = tokio::time::timeout(outbound::CLOSE_TIMEOUT, async {
            // tungstenite writes the close frame into the outbound, behind queued frames.
            if self.ws.close(Some(frame)).await.is_ok()
                && flush_all(&self.conn, &self.write).await.is_ok()
            {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }

    /// Writes what the outbound holds; ends the session on a failed socket or a close
    /// request.
    fn on_writable(&mut self) -> Option<End> {
        match self.conn.outbound.flush() {
            Flush::Failed => Some(End::Broken),
            Flush::Blocked => {
                self.blocked = true;
                self.conn.outbound.close_requested().map(End::Close)
            }
            Flush::Empty => {
                self.blocked = false;
                self.conn.outbound.close_requested().map(End::Close)
            }
        }
    }

    async fn serve(&mut self) -> End {
        let sleep = tokio::time::sleep_until(self.deadline());
        tokio::pin!(sleep);
        // Registered once: a fresh `cancelled()` per iteration would lock the token's waiter
        // list twice for every frame written.
        let hard_stop = self.app.hard_stop.clone();
        let stopped = hard_stop.cancelled();
        tokio::pin!(stopped);

        loop {
            tokio::select! {
                biased;
                () = &mut stopped => return End::Broken,
                () = self.conn.outbound.ready() => {
                    // With `server.write_delay` a batch leaves when it is due (a close at once).
                    // The session's one timer (below) then fires for it: no timer of its own
                    // per connection.
                    match self.conn.outbound.flush_due() {
                        Some(due) if self.conn.outbound.close_requested().is_none()
                            && due > std::time::Instant::now() => {
                            self.write_due = Some(due.into());
                        }
                        _ => {
                            if let Some(end) = self.on_writable() {
                                return end;
                            }
                        }
                    }
                }
                r = self.write.writable(), if self.blocked => {
                    if r.is_err() {
                        return End::Broken;
                    }
                    if let Some(end) = self.on_writable() {
                        return end;
                    }
                }
                done = self.sends.next(), if !self.sends.is_empty() => self.on_done(done),
                done = next_call(&mut self.calls), if self.calls.as_ref().is_some_and(|c| !c.is_empty()) => {
                    if let Some(done) = done {
                        self.on_call_done(done);
                    }
                }
                msg = self.ws.next() => {
                    // Boxed: handling a frame takes a large future that an idle connection
                    // would otherwise carry in its state all its life.
                    if let Some(end) = Box::pin(self.on_message(msg)).await {
                        return end;
                    }
                }
                () = &mut sleep => {
                    if self.write_due.is_some_and(|due| Instant::now() >= due) {
                        self.write_due = None;
                        if let Some(end) = self.on_writable() {
                            return end;
                        }
                    }
                    if let Some(end) = self.on_timer().await {
                        return end;
                    }
                }
            }
            let deadline = self.deadline();
            if deadline != sleep.deadline() {
                sleep.as_mut().reset(deadline);
            }
        }
    }

    /// The next moment a timer has something to do.
    fn deadline(&self) -> Instant {
        let server = &self.app.config.server;
        let mut d = self
            .next_ping
            .min(self.last_seen + server.heartbeat_timeout);
        if !server.idle_timeout.is_zero() {
            d = d.min(self.last_message + server.idle_timeout);
        }
        if !server.max_connection_duration.is_zero() {
            d = d.min(self.started + server.max_connection_duration);
        }
        if let Some(t) = self.token_deadline {
            d = d.min(t);
        }
        if let Some(t) = self.write_due {
            d = d.min(t);
        }
        d
    }

    async fn on_timer(&mut self) -> Option<End> {
        let now = Instant::now();
        let server = &self.app.config.server;
        if !server.idle_timeout.is_zero() && now >= self.last_message + server.idle_timeout {
            return Some(End::Close(CloseCode::IDLE_TIMEOUT));
        }
        if !server.max_connection_duration.is_zero()
            && now >= self.started + server.max_connection_duration
        {
            return Some(End::Close(CloseCode::MAX_DURATION));
        }
        if self.token_deadline.is_some_and(|t| now >= t) {
            return Some(End::Close(CloseCode::TOKEN_EXPIRED));
        }
        if now >= self.last_seen + server.heartbeat_timeout {
            return Some(End::Close(CloseCode::HEARTBEAT_TIMEOUT));
        }
        if now >= self.next_ping {
            self.next_ping = now + server.heartbeat;
            let ping = self.ws.send(Message::Ping(Bytes::new()));
            if bounded(server.heartbeat_timeout, ping).await.is_err() {
                return Some(End::Broken);
            }
        }
        None
    }

    async fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Option<End> {
        let now = Instant::now();
        self.last_seen = now;
        match msg {
            None => Some(End::Broken),
            Some(Ok(Message::Text(text))) => self.on_data(Bytes::from(text), true, now).await,
            Some(Ok(Message::Binary(bin))) => self.on_data(bin, false, now).await,
            Some(Ok(Message::Close(frame))) => {
                self.peer_close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                Some(End::PeerClosed)
            }
            // tungstenite has queued the pong already (at most one waits, see the outbound);
            // a ping is still a client message for the rate limit, or a client could make
            // the node write pongs as fast as it sends pings.
            Some(Ok(Message::Ping(_))) => self.take_rate(now).err().flatten(),
            Some(Ok(_)) => None,
            Some(Err(WsError::Capacity(_))) => Some(End::Close(CloseCode::TOO_BIG)),
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => Some(End::PeerClosed),
            Some(Err(WsError::Protocol(_) | WsError::Utf8(_))) => {
                Some(End::Close(CloseCode::POLICY))
            }
            Some(Err(_)) => Some(End::Broken),
        }
    }

    async fn on_data(&mut self, bytes: Bytes, is_text: bool, now: Instant) -> Option<End> {
        self.app.metrics.messages_in.inc();
        self.last_message = now;
        self.conn.touch();
        if let Err(end) = self.take_rate(now) {
            if end.is_some() {
                return end;
            }
            // Nothing of a refused frame is decoded but its request id (SPEC section 4: errors
            // carry the id of the frame they answer), which is read without building anything
            // else of the frame.
            let id = request_id(self.conn.encoding, &bytes, is_text);
            self.error(id, ErrorCode::RateLimited, "over the message rate limit");
            return None;
        }
        match decode_client(self.conn.encoding, &bytes, is_text) {
            Err(e) => self.bad_frame(e.id, &e.error.to_string()),
            Ok(frame) => self.handle(frame).await,
        }
    }

    /// Takes one message from the rate limit. `Err(None)`: over the limit; `Err(Some(end))`:
    /// over it `limits.messages_burst` times in a row, which closes with 1008.
    fn take_rate(&mut self, now: Instant) -> Result<(), Option<End>> {
        if self.rate.try_take(now) {
            self.rejected = 0;
            return Ok(());
        }
        self.rejected += 1;
        if self.rejected >= self.app.config.limits.messages_burst {
            return Err(Some(End::Close(CloseCode::POLICY)));
        }
        Err(None)
    }

    /// Answers `bad_request`; too many in a row close with 1008.
    fn bad_frame(&mut self, id: Option<RequestId>, message: &str) -> Option<End> {
        self.bad_frames += 1;
        self.error(id, ErrorCode::BadRequest, message);
        if self.bad_frames >= self.app.config.limits.max_bad_frames {
            return Some(End::Close(CloseCode::POLICY));
        }
        None
    }

    async fn handle(&mut self, frame: ClientFrame) -> Option<End> {
        #[cfg(test)]
        tests::panic_probe(&frame);
        if let ClientFrame::Routed(r) = &frame {
            if self.app.routing.is_some() {
                return self.route(r);
            }
            if r.action.is_none() {
                return self.bad_frame(r.id.clone(), "missing field `action`");
            }
        }
        self.bad_frames = 0;
        let router = self.app.router.clone();
        let policy = self
            .app
            .auth
            .as_ref()
            .map(|a| a.config().default_room_policy)
            .unwrap_or_default();
        match frame {
            ClientFrame::Join {
                id,
                room,
                since,
                epoch,
            } => {
                if !room_allowed(self.identity.as_ref(), policy, room.as_str()) {
                    self.error(id, ErrorCode::Forbidden, "not allowed in this room");
                } else if let Some(retention) = router.retention(&room) {
                    let conn = self.conn.clone();
                    let refused_id = id.clone();
                    let join: Pending = Box::pin(async move {
                        let result = router
                            .join_retained(&conn, &room, retention, since, epoch.as_deref())
                            .await;
                        Done {
                            id,
                            outcome: Outcome::Joined(result),
                        }
                    });
                    if self.sends.push(join, 0).is_err() {
                        self.too_many_waiting(refused_id);
                    }
                } else {
                    match router.join(&self.conn, &room) {
                        Ok(()) => self.ack(id, None, None, since.map(|_| false)),
                        Err(e) => self.router_error(id, e),
                    }
                }
            }
            ClientFrame::Leave { id, room } => {
                router.leave(&self.conn, &room);
                self.ack(id, None, None, None);
            }
            ClientFrame::Publish {
                id,
                room,
                data,
                exclude_self,
            } => {
                if !room_allowed(self.identity.as_ref(), policy, room.as_str()) {
                    self.error(id, ErrorCode::Forbidden, "not allowed in this room");
                } else if let Some(retention) = router.retention(&room) {
                    let size = data.raw_len();
                    if !self.sends.fits(size) {
                        self.too_many_waiting(id);
                        return None;
                    }
                    let span = self.publish_span(&room);
                    let trace = span.as_ref().and_then(crate::telemetry::traceparent);
                    match router.publish_retained(
                        &room,
                        data,
                        Some(&self.conn.id),
                        exclude_self,
                        retention,
                        trace,
                    ) {
                        Ok(published) => {
                            let publish: Pending = Box::pin(async move {
                                let receipt = published.await;
                                if let (Some(span), Some(offset)) = (&span, receipt.offset) {
                                    span.record("offset", offset as i64);
                                }
                                Done {
                                    id,
                                    outcome: Outcome::Published(receipt),
                                }
                            });
                            // Fits: checked above, and nothing was queued since.
                            let _ = self.sends.push(publish, size);
                        }
                        Err(e) => self.router_error(id, e),
                    }
                } else {
                    let span = self.publish_span(&room);
                    let trace = span.as_ref().and_then(crate::telemetry::traceparent);
                    match router.publish_traced(
                        &room,
                        data,
                        Some(&self.conn.id),
                        exclude_self,
                        trace,
                    ) {
                        Ok(_) => self.ack(id, None, None, None),
                        Err(e) => self.router_error(id, e),
                    }
                }
            }
            ClientFrame::Send { id, to, data } => {
                let from = Some(self.conn.id.clone());
                if self.sends.is_empty() && router.local_connection(to.as_str()).is_some() {
                    // A local target is a queue push: answered at once, nothing to wait on.
                    let result = router.send(&to, data, from).await;
                    self.on_done(Done {
                        id,
                        outcome: Outcome::Sent(result),
                    });
                } else {
                    let size = data.raw_len();
                    if !self.sends.fits(size) {
                        self.too_many_waiting(id);
                        return None;
                    }
                    // Started now (its envelope leaves in order behind the earlier ones),
                    // answered in order.
                    let sending = router.start_send(&to, data, from);
                    let send: Pending = Box::pin(async move {
                        Done {
                            id,
                            outcome: Outcome::Sent(sending.await),
                        }
                    });
                    // Fits: checked above, and nothing was queued since.
                    let _ = self.sends.push(send, size);
                }
            }
            ClientFrame::Refresh { id, token } => return self.refresh(id, &token).await,
            ClientFrame::Ping { id } => self.reply(&ServerFrame::Pong { id }),
            ClientFrame::Routed(r) => {
                let action = r.action.unwrap_or_default();
                self.error(
                    r.id,
                    ErrorCode::UnknownAction,
                    &format!("unknown action {action:?}"),
                );
            }
        }
        None
    }

    /// Sends a routed frame to its integration (SPEC section 6), beside the session loop.
    fn route(&mut self, r: &RoutedFrame) -> Option<End> {
        let routing = self.app.routing.as_ref()?;
        let frame = match r.to_json_value() {
            Ok(v) => v,
            Err(e) => return self.bad_frame(r.id.clone(), &e.to_string()),
        };
        let (route, route_key) = match routing.table.select(&frame) {
            Selected::Route(route, key) => (route.clone(), key),
            Selected::Unknown(key) => {
                self.bad_frames = 0;
                self.error(
                    r.id.clone(),
                    ErrorCode::UnknownAction,
                    &format!("no route for {key:?}"),
                );
                return None;
            }
            Selected::NoKey => {
                return self.bad_frame(
                    r.id.clone(),
                    "the frame has no route key (routes.selection_expression)",
                )
            }
        };
        self.bad_frames = 0;
        if self.calls.as_ref().map_or(0, FuturesUnordered::len) >= CONNECTION_IN_FLIGHT {
            self.error(
                r.id.clone(),
                ErrorCode::RateLimited,
                "too many integration calls in flight on this connection",
            );
            return None;
        }
        let Some(permit) = routing.integrations.slot() else {
            self.error(
                r.id.clone(),
                ErrorCode::Unavailable,
                "too many integration calls in flight on this node",
            );
            return None;
        };
        let caller = Caller {
            connection_id: self.conn.id.clone(),
            connected_at: self.conn.info.connected_at,
            source_ip: self.conn.info.source_ip.to_string(),
            sub: self.identity.as_ref().and_then(|i| i.sub.clone()),
            claims: self
                .identity
                .as_ref()
                .map(|i| i.claims.clone())
                .unwrap_or_default(),
        };
        let request = routing
            .integrations
            .message_request(&route_key, &caller, frame);
        let app = self.app.clone();
        let id = r.id.clone();
        self.calls
            .get_or_insert_with(FuturesUnordered::new)
            .push(Box::pin(async move {
                let _permit = permit;
                let result = match app.routing.as_ref() {
                    Some(routing) => {
                        let max = app.config.limits.max_message_bytes;
                        routing.integrations.call(&route, &request, max).await
                    }
                    None => Err("no routes".into()),
                };
                CallDone {
                    id,
                    route_key,
                    response: route.response,
                    result,
                }
            }));
        None
    }

    /// Answers a finished integration call: `route_response`, an `ack`, or
    /// `integration_failed`.
    fn on_call_done(&mut self, done: CallDone) {
        match done.result {
            Ok(answer) if (200..300).contains(&answer.status) => {
                if done.response {
                    self.reply(&ServerFrame::RouteResponse {
                        route: done.route_key,
                        id: done.id,
                        data: answer_data(&answer.body),
                    });
                } else {
                    self.ack(done.id, None, None, None);
                }
            }
            Ok(answer) => self.error(
                done.id,
                ErrorCode::IntegrationFailed,
                &format!("the integration answered {}", answer.status),
            ),
            Err(what) => self.error(done.id, ErrorCode::IntegrationFailed, &what),
        }
    }

    /// Answers a request that waited on the cluster.
    fn on_done(&mut self, done: Done) {
        match done.outcome {
            Outcome::Sent(Ok(())) => self.ack(done.id, None, None, None),
            Outcome::Sent(Err(e)) => self.failure(done.id, Failure::of_send(&e)),
            Outcome::Published(r) => self.ack(done.id, r.offset, r.epoch, None),
            Outcome::Joined(Ok(r)) => self.ack(done.id, Some(r.offset), Some(r.epoch), r.recovered),
            Outcome::Joined(Err(e)) => self.router_error(done.id, e),
        }
    }

    /// A `publish` span (a root: its trace follows the message to every node), when traces
    /// are on.
    fn publish_span(&self, room: &RoomName) -> Option<tracing::Span> {
        self.app.traced().then(|| {
            tracing::info_span!(
                parent: None,
                "publish",
                otel.kind = "producer",
                room = %room,
                connection = %self.conn.id,
                offset = tracing::field::Empty,
            )
        })
    }

    fn too_many_waiting(&mut self, id: Option<RequestId>) {
        self.error(
            id,
            ErrorCode::Unavailable,
            "too many requests waiting for the cluster",
        );
    }

    async fn refresh(&mut self, id: Option<RequestId>, token: &str) -> Option<End> {
        let Some(auth) = self.app.auth.clone() else {
            self.error(
                id,
                ErrorCode::BadRequest,
                "refresh needs [auth] on the node",
            );
            return None;
        };
        match auth.verify_fresh(token).await {
            Ok(new) if new.sub == self.identity.as_ref().and_then(|i| i.sub.clone()) => {
                self.token_deadline = Some(instant_of(auth.expiry(&new)));
                self.identity = Some(new);
                self.ack(id, None, None, None);
                None
            }
            _ => Some(End::Close(CloseCode::POLICY)),
        }
    }

    fn router_error(&mut self, id: Option<RequestId>, e: RouterError) {
        self.failure(id, Failure::of_router(&e));
    }

    fn failure(&mut self, id: Option<RequestId>, f: Failure) {
        self.error(id, f.code, &f.message);
    }

    fn ack(
        &mut self,
        id: Option<RequestId>,
        offset: Option<u64>,
        epoch: Option<String>,
        recovered: Option<bool>,
    ) {
        if id.is_some() {
            self.reply(&ServerFrame::Ack {
                id,
                offset,
                epoch,
                recovered,
            });
        }
    }

    fn error(&mut self, id: Option<RequestId>, code: ErrorCode, message: &str) {
        self.reply(&ServerFrame::Error {
            id,
            code,
            message: message.to_owned(),
        });
    }

    /// Queues a reply behind whatever is already queued for the client.
    fn reply(&mut self, msg: &ServerFrame) {
        let Ok(encoded) = msg.encode(self.conn.encoding) else {
            return;
        };
        if self.conn.outbound.push(&outbound::frame(&encoded), None) == Err(PushError::Full) {
            self.app
                .router
                .stats()
                .slow_consumer_closes
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id of a `ping` that panics its session: the test-only hook that proves a panic
    /// leaves nothing behind. Compiled into unit tests only.
    const PANIC_PROBE: &str = "__wsgate_test_panic__";

    pub(super) fn panic_probe(frame: &ClientFrame) {
        if let ClientFrame::Ping {
            id: Some(RequestId::Str(id)),
        } = frame
        {
            if id == PANIC_PROBE {
                panic!("panic injected by a test");
            }
        }
    }

    /// A session task that panics mid-session unregisters its connection: no member, no
    /// registry entry, no slot, no gauge count and no socket is left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_session_leaves_nothing_behind() {
        use room_router::bus::local::LocalBus;
        use room_router::{Router, RouterOptions};

        let config = Arc::new(crate::config::Config::default());
        let node = protocol::NodeId::new("panic-test");
        let router = Router::new(
            node.clone(),
            Arc::new(LocalBus::standalone(node)),
            RouterOptions {
                rooms_per_connection: 10,
                max_message_bytes: 65_536,
                framer: outbound::frame,
                deliveries: Arc::new(()),
                history: Default::default(),
                presence_events: Vec::new(),
                traces: None,
            },
        );
        let metrics =
            crate::metrics::Metrics::new(router.clone(), crate::metrics::DeliveryMetrics::new());
        let app = App::new(config.clone(), router, metrics, None, None, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(crate::server::serve(
            listener,
            crate::server::client_router(app.clone()),
            stop.clone(),
            crate::server::ServeOptions {
                header_timeout: Duration::from_secs(5),
                max_connections: None,
                slots: Some(app.slots.clone()),
                tls: None,
            },
        ));
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        let welcome = ws.next().await.unwrap().unwrap();
        assert!(welcome.to_text().unwrap().contains("welcome"));
        ws.send(Message::text(r#"{"action":"join","room":"r","id":1}"#))
            .await
            .unwrap();
        assert!(ws
            .next()
            .await
            .unwrap()
            .unwrap()
            .to_text()
            .unwrap()
            .contains("ack"));
        assert_eq!(app.router.connection_count(), 1);
        assert_eq!(app.router.room_count(), 1);
        let probe = format!(r#"{{"action":"ping","id":"{PANIC_PROBE}"}}"#);
        ws.send(Message::text(probe)).await.unwrap();
        // The client sees its socket closed (no close frame: the session died).
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(_) | Message::Ping(_))) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the socket closes");
        assert!(!matches!(end, Some(Ok(Message::Close(_)))), "{end:?}");
        assert_eq!(app.router.connection_count(), 0, "unregistered");
        assert_eq!(app.router.room_count(), 0, "no ghost member");
        assert_eq!(app.slots.total(), 0, "slot released");
        assert_eq!(app.metrics.connections_active.get(), 0);
        stop.cancel();
    }

    #[test]
    fn far_future_expiries_do_not_overflow_the_clock() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        assert!(instant_of(far) > Instant::now() + Duration::from_secs(50 * 365 * 24 * 3600));
        assert!(instant_of(SystemTime::UNIX_EPOCH) <= Instant::now());
    }
}
