//! A proxied session (SPEC section 9): the upgrade handler, which refuses like `GET /ws` does
//! and opens the upstream before answering the client, and the loop that relays both
//! directions and closes them.
//!
//! Closes: a close frame from either end is passed to the other (1005 as 1000), and the other
//! end's answer back; an end lost without a close gives the other 1014 (upstream lost) or
//! 1001 (client lost); the gateway's own closes (drain 1012, `DELETE /@connections` 4002,
//! heartbeat 4003, idle 4004, duration 4005, a protocol violation) go to the client with
//! their code and to the upstream as 1001. Every close handshake is bounded by
//! [`CLOSE_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use protocol::{ConnectionId, Encoding, ErrorCode};
use room_router::{ConnHandle, ConnInfo, QueueLimits, SessionKind};
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};
use tokio_rustls::server::TlsStream;

use super::frames::{cut_reason, Sender};
use super::relay::{Direction, Event, Reader, Throttle, Writer};
use super::upstream::{Connected, Forward, OpenError};
use super::{has_dot_segment, ProxyRoute};
use crate::app::App;
use crate::error::ApiError;
use crate::ws::handshake;
use crate::ws::outbound::CLOSE_TIMEOUT;
use crate::ws::session::Registered;

/// Payload of the gateway's heartbeat pings to a proxied client.
const HEARTBEAT: &[u8] = b"wsgate";

/// Requests that are neither `server.path` nor a `[[proxy]]` path get 404.
pub async fn upgrade_or_404(
    State(app): State<Arc<App>>,
    connect_info: ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let route = app
        .proxy
        .as_ref()
        .and_then(|p| p.table.find(req.uri().path()))
        .cloned();
    match route {
        Some(route) => upgrade(app, route, connect_info, req).await,
        None => ApiError::not_found("no such endpoint").into_response(),
    }
}

/// The upgrade of a proxied path: the refusals of SPEC section 3 (subprotocols aside: they
/// are the upstream's), then the upstream, then the 101.
async fn upgrade(
    app: Arc<App>,
    route: Arc<ProxyRoute>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    if has_dot_segment(req.uri().path()) {
        return ApiError::bad_request("the path has a . or .. segment").into_response();
    }
    let (key, slot) = match handshake::admit(&app, &req, peer) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    let identity = if route.auth {
        match handshake::authenticate(&app, peer, req.headers(), req.uri().query()).await {
            Ok(identity) => identity,
            Err(refusal) => return *refusal,
        }
    } else {
        None
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return ApiError::bad_request("connection cannot be upgraded").into_response();
    };
    let id = ConnectionId::random();
    let sub = identity.as_ref().and_then(|i| i.sub.clone());
    let Some(proxy) = app.proxy.as_ref() else {
        return ApiError::not_found("no such endpoint").into_response();
    };
    let fwd = Forward {
        headers: req.headers().clone(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        peer: peer.ip(),
        proto: if app.config.server.tls_cert_file.is_empty() {
            "http"
        } else {
            "https"
        },
        connection_id: id.as_str().to_owned(),
        sub: sub.clone(),
    };
    let connected = match route.connect(&fwd, proxy.tls.as_ref()).await {
        Ok(connected) => Ok(connected),
        // An upstream that is up refused this client: it hears the status, as from Kong.
        Err(OpenError::Refused(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            let code = handshake::code_of_status(status).unwrap_or(ErrorCode::BadRequest);
            return ApiError::new(status, code, "refused by the upstream").into_response();
        }
        Err(OpenError::Failed(why)) => Err(why),
    };
    // Opening the upstream may take seconds: a drain that started meanwhile has already
    // listed its sessions.
    if app.draining() {
        return handshake::draining();
    }
    let protocol = match &connected {
        Ok(c) => c.protocol.clone(),
        // So that a browser sees the 1014 rather than a failed handshake.
        Err(_) => handshake::offered_protocols(req.headers())
            .into_iter()
            .next(),
    };
    let info = ConnInfo {
        source_ip: peer.ip(),
        source_port: peer.port(),
        sub,
        connected_at: SystemTime::now(),
        kind: SessionKind::Proxy,
        path: req.uri().path().to_owned(),
    };
    let session_app = app.clone();
    let slot = slot.keep();
    app.sessions.spawn(async move {
        let client = match on_upgrade.await {
            Ok(upgraded) => match split_client(upgraded) {
                Some(parts) => parts,
                None => return,
            },
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "upgrade failed");
                return;
            }
        };
        match connected {
            Ok(upstream) => {
                let conn = Arc::new(ConnHandle::new(
                    id,
                    Encoding::Json,
                    QueueLimits {
                        frames: session_app.config.limits.outbound_queue,
                        bytes: session_app.config.limits.outbound_queue_bytes,
                    },
                    info,
                ));
                conn.set_upstream(Some(upstream.url.clone()));
                let fwd = route.reconnect.then_some(fwd);
                ProxySession::new(session_app, route, conn, client, upstream, fwd)
                    .run()
                    .await;
            }
            Err(why) => {
                tracing::info!(peer = %peer, %why, "proxied session refused: no upstream");
                let max = session_app.config.limits.max_message_bytes;
                refuse(
                    Direction::new(client.0, client.1, Sender::Client, false, max, &client.2),
                    &why,
                )
                .await;
            }
        }
        drop(slot);
    });
    handshake::switching_protocols(&key, protocol.as_deref())
}

/// A client's reading and writing ends, and what hyper read past its request.
type ClientEnds = (Reader, Writer, bytes::Bytes);

fn split_client(upgraded: hyper::upgrade::Upgraded) -> Option<ClientEnds> {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (r, w) = parts.io.into_inner().into_split();
            Some((Box::new(r), Box::new(w), parts.read_buf))
        }
        Err(upgraded) => match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
            Ok(parts) => {
                let (r, w) = tokio::io::split(parts.io.into_inner());
                Some((Box::new(r), Box::new(w), parts.read_buf))
            }
            Err(_) => {
                tracing::error!("upgraded connection is neither a TCP nor a TLS stream");
                None
            }
        },
    }
}

/// No upstream: the client gets 1014 with the reason, and its answer is awaited (bounded).
/// `client` reads the client and writes to it.
async fn refuse(mut client: Direction, why: &str) {
    client.stop_forwarding();
    client.close(1014, cut_reason(why));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while !client.finished() {
            match client.step().await {
                Event::Progress | Event::Close { .. } => {}
                _ => break,
            }
        }
    })
    .await;
    client.shutdown().await;
}

/// Steps both directions of a session, the one polled first alternating with every poll, so
/// that a side that is always ready (and spends the task's co-operative budget) cannot starve
/// the other. The output says which one had an event (`true`: the client's side).
async fn both(client: &mut Direction, upstream: &mut Direction) -> (bool, Event) {
    use std::future::Future;
    use std::task::Poll;
    let a = client.step();
    let b = upstream.step();
    tokio::pin!(a, b);
    let mut client_first = false;
    std::future::poll_fn(move |cx| {
        client_first = !client_first;
        if client_first {
            if let Poll::Ready(e) = a.as_mut().poll(cx) {
                return Poll::Ready((true, e));
            }
        }
        if let Poll::Ready(e) = b.as_mut().poll(cx) {
            return Poll::Ready((false, e));
        }
        if !client_first {
            if let Poll::Ready(e) = a.as_mut().poll(cx) {
                return Poll::Ready((true, e));
            }
        }
        Poll::Pending
    })
    .await
}

/// `wsgate_proxy_sessions_active`, counted down however the session task ends.
struct ProxyCounted(Arc<App>);

impl ProxyCounted {
    fn new(app: &Arc<App>) -> ProxyCounted {
        app.metrics.proxy_sessions_active.inc();
        ProxyCounted(app.clone())
    }
}

impl Drop for ProxyCounted {
    fn drop(&mut self) {
        self.0.metrics.proxy_sessions_active.dec();
    }
}

/// One proxied session.
struct ProxySession {
    app: Arc<App>,
    route: Arc<ProxyRoute>,
    conn: Arc<ConnHandle>,
    /// Reads the client, writes the upstream.
    to_upstream: Direction,
    /// Reads the upstream, writes the client.
    to_client: Direction,
    /// The upstream's URL (logs, `/sessions`), its name for clients, and its chosen
    /// subprotocol.
    upstream: String,
    label: String,
    protocol: Option<String>,
    /// The client's request, kept when `reconnect` may need it again.
    fwd: Option<Forward>,
    /// The upstream was lost and `reconnect` may replace it: why it was lost.
    lost: Option<String>,
    started: Instant,
    next_ping: Instant,
    /// When the timer last saw bytes from the client, and data frames either way; and the
    /// counters it saw then.
    last_read: Instant,
    last_data: Instant,
    seen: (u64, u64),
    /// Set when the first close starts: the session ends by then whatever happens.
    deadline: Option<Instant>,
}

impl ProxySession {
    fn new(
        app: Arc<App>,
        route: Arc<ProxyRoute>,
        conn: Arc<ConnHandle>,
        client: ClientEnds,
        upstream: Connected,
        fwd: Option<Forward>,
    ) -> ProxySession {
        let max = app.config.limits.max_message_bytes;
        let (client_reader, client_writer, prefix) = client;
        let limits = &app.config.limits;
        let to_upstream = Direction::new(
            client_reader,
            upstream.writer,
            Sender::Client,
            true,
            max,
            &prefix,
        )
        .throttled(Throttle::new(
            limits.messages_per_second,
            limits.messages_burst,
        ))
        .counted({
            let counter = app.metrics.messages_in.clone();
            move |n| {
                counter.inc_by(n);
            }
        });
        let delivered = app.metrics.deliveries.count.clone();
        let to_client = Direction::new(
            upstream.reader,
            client_writer,
            Sender::Server,
            false,
            max,
            &upstream.prefix,
        )
        .counted(move |n| {
            delivered.inc_by(n);
        });
        let now = Instant::now();
        ProxySession {
            next_ping: now + app.config.server.heartbeat,
            app,
            route,
            conn,
            to_upstream,
            to_client,
            upstream: upstream.url,
            label: upstream.label,
            protocol: upstream.protocol,
            fwd,
            lost: None,
            started: now,
            last_read: now,
            last_data: now,
            seen: (0, 0),
            deadline: None,
        }
    }

    async fn run(mut self) {
        let app = self.app.clone();
        let registered = Registered::new(app.clone(), self.conn.clone());
        let _counted = ProxyCounted::new(&app);
        app.router.register(self.conn.clone()).await;
        app.metrics.connections.inc();
        tracing::debug!(connection = %self.conn.id, upstream = %self.upstream, "proxied session open");
        // Registered once, not per message: a fresh `cancelled()`, `notified()` or timer
        // per loop turn would each take a lock to register and another to deregister.
        let hard_stop = app.hard_stop.clone();
        let stopped = hard_stop.cancelled();
        tokio::pin!(stopped);
        let conn = self.conn.clone();
        let requested = conn.outbound.ready();
        tokio::pin!(requested);
        let timer = tokio::time::sleep_until(self.next_wake());
        tokio::pin!(timer);
        loop {
            if self.to_upstream.finished() && self.to_client.finished() {
                break;
            }
            // Traffic only moves the timeouts later: the timer fires early then, and is set
            // again from what is due by then.
            let wake = self.next_wake();
            if wake < timer.deadline() {
                timer.as_mut().reset(wake);
            }
            // The cheap branches first, with each poll's fresh co-operative budget; then both
            // directions, alternating which goes first (see `both`), so that a side that is
            // always ready starves neither the other side nor the timers. The steps complete
            // only on events (a close, a loss), never for traffic.
            tokio::select! {
                biased;
                () = &mut stopped => break,
                () = &mut requested => {
                    requested.set(conn.outbound.ready());
                    if let Some(code) = conn.outbound.close_requested() {
                        if self.deadline.is_none() {
                            self.gateway_close(code.as_u16(), code.reason());
                        }
                    }
                }
                () = &mut timer => {
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    self.on_timer();
                    timer.as_mut().reset(self.next_wake());
                }
                (from_client, event) = both(&mut self.to_upstream, &mut self.to_client) => {
                    if from_client {
                        self.on_client(event);
                    } else {
                        self.on_upstream(event);
                    }
                }
            }
            if let Some(why) = self.lost.take() {
                // Bounded by connect_timeout per upstream; a hard stop still ends it.
                tokio::select! {
                    () = self.reconnect(why) => {}
                    () = &mut stopped => break,
                }
            }
        }
        drop(registered);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            self.to_client.shutdown().await;
            self.to_upstream.shutdown().await;
        })
        .await;
    }

    /// The next time a timer may fire.
    fn next_wake(&self) -> Instant {
        if let Some(deadline) = self.deadline {
            return deadline;
        }
        let server = &self.app.config.server;
        let mut wake = self.next_ping;
        wake = wake.min(self.last_read + server.heartbeat_timeout);
        wake = wake.min(self.last_data + self.route.idle_timeout);
        if !server.max_connection_duration.is_zero() {
            wake = wake.min(self.started + server.max_connection_duration);
        }
        wake
    }

    /// Activity since the last look: the relay counts reads and data frames, and the time
    /// of the look stands for them (so a timeout fires no earlier than due, and at most one
    /// timer turn later).
    fn observe(&mut self, now: Instant) {
        let reads = self.to_upstream.reads;
        let data = self
            .to_upstream
            .data_frames
            .wrapping_add(self.to_client.data_frames);
        // A client not read because the upstream does not take its bytes is not silent.
        if reads != self.seen.0 || self.to_upstream.backlogged() {
            self.last_read = now;
        }
        if data != self.seen.1 {
            self.last_data = now;
            self.conn.touch();
        }
        self.seen = (reads, data);
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.observe(now);
        let server = &self.app.config.server;
        if now >= self.last_read + server.heartbeat_timeout {
            return self.gateway_close(4003, "no answer to heartbeat pings");
        }
        if now >= self.last_data + self.route.idle_timeout {
            return self.gateway_close(4004, "idle timeout");
        }
        if !server.max_connection_duration.is_zero()
            && now >= self.started + server.max_connection_duration
        {
            return self.gateway_close(4005, "maximum connection duration reached");
        }
        if now >= self.next_ping {
            self.to_client.ping(HEARTBEAT);
            self.next_ping = now + server.heartbeat;
        }
    }

    fn start_deadline(&mut self) {
        self.deadline
            .get_or_insert_with(|| Instant::now() + CLOSE_TIMEOUT);
    }

    /// The gateway closes the session: the client gets `code`, the upstream 1001; the answers
    /// of both are awaited, and nothing more is relayed.
    fn gateway_close(&mut self, code: u16, reason: &str) {
        self.to_client.stop_forwarding();
        self.to_upstream.stop_forwarding();
        self.to_client.close(code, reason);
        self.to_upstream.close(1001, "going away");
        self.start_deadline();
    }

    /// Something from the client's side: its close, its loss, a violation, or the upstream
    /// failing a write.
    fn on_client(&mut self, event: Event) {
        match event {
            Event::Progress => {}
            Event::Close { code, reason } => {
                // Passed on; the upstream's answer comes back through `to_client`.
                self.to_upstream.close(code.unwrap_or(1000), &reason);
                self.start_deadline();
            }
            Event::Lost(why) => {
                tracing::debug!(connection = %self.conn.id, %why, "proxied client lost");
                self.client_gone();
            }
            Event::Violation(v) => {
                tracing::debug!(connection = %self.conn.id, reason = v.reason, "proxied client broke the protocol");
                self.to_client.stop_forwarding();
                self.to_client.close(v.code, v.reason);
                self.to_upstream.stop_forwarding();
                self.close_or_drop_upstream(1001, "going away");
                self.start_deadline();
            }
            Event::SinkFailed(why) => self.upstream_gone(why),
        }
    }

    /// Something from the upstream's side: its close, its loss, a violation, or the client
    /// failing a write.
    fn on_upstream(&mut self, event: Event) {
        match event {
            Event::Progress => {}
            Event::Close { code, reason } => {
                self.to_client.close(code.unwrap_or(1000), &reason);
                self.start_deadline();
            }
            Event::Lost(why) => self.upstream_gone(why),
            Event::Violation(v) => {
                tracing::info!(connection = %self.conn.id, upstream = %self.upstream, reason = v.reason, "upstream broke the protocol");
                self.to_upstream.stop_forwarding();
                self.close_or_drop_upstream(v.code, v.reason);
                self.to_client.stop_forwarding();
                let reason = format!("{}: {}", self.label, v.reason);
                self.close_or_drop_client(1014, &reason);
                self.start_deadline();
            }
            Event::SinkFailed(_) => self.client_gone(),
        }
    }

    fn close_or_drop_client(&mut self, code: u16, reason: &str) {
        if self.to_client.can_close_receiver() {
            self.to_client.close(code, cut_reason(reason));
        } else {
            self.to_client.drop_receiver();
        }
    }

    fn close_or_drop_upstream(&mut self, code: u16, reason: &str) {
        if self.to_upstream.can_close_receiver() {
            self.to_upstream.close(code, reason);
        } else {
            self.to_upstream.drop_receiver();
        }
    }

    /// The client is gone without a close: the upstream gets 1001.
    fn client_gone(&mut self) {
        self.to_upstream.stop_reading();
        self.to_client.drop_receiver();
        self.to_client.stop_forwarding();
        self.to_upstream.stop_forwarding();
        self.close_or_drop_upstream(1001, "client lost");
        self.start_deadline();
    }

    /// The upstream is gone without a close: the client gets 1014, unless `reconnect` may
    /// replace it (nothing closing, no message half relayed either way).
    fn upstream_gone(&mut self, why: String) {
        tracing::info!(connection = %self.conn.id, upstream = %self.upstream, %why, "upstream lost");
        self.to_client.stop_reading();
        self.to_upstream.drop_receiver();
        if self.fwd.is_some()
            && self.deadline.is_none()
            && !self.to_client.mid_message()
            && !self.to_upstream.mid_message()
        {
            self.lost = Some(why);
            return;
        }
        self.fail_upstream(&why);
    }

    fn fail_upstream(&mut self, why: &str) {
        self.to_upstream.stop_forwarding();
        let reason = format!("{} lost: {why}", self.label);
        self.close_or_drop_client(1014, &reason);
        self.start_deadline();
    }

    /// Opens another upstream in place of a lost one; the client notices nothing. When none
    /// opens, or it chooses another subprotocol than the client agreed, the client gets 1014.
    async fn reconnect(&mut self, why: String) {
        let Some(fwd) = &self.fwd else {
            return self.fail_upstream(&why);
        };
        let tls = self.app.proxy.as_ref().and_then(|p| p.tls.as_ref());
        match self.route.connect(fwd, tls).await {
            Ok(up) if up.protocol == self.protocol => {
                tracing::info!(connection = %self.conn.id, lost = %self.upstream, upstream = %up.url, "upstream replaced");
                let max = self.app.config.limits.max_message_bytes;
                self.to_client
                    .replace_reader(up.reader, Sender::Server, max, &up.prefix);
                self.to_upstream.replace_writer(up.writer);
                self.conn.set_upstream(Some(up.url.clone()));
                self.upstream = up.url;
                self.label = up.label;
            }
            Ok(up) => {
                let why = format!("{why}; {} chose another subprotocol", up.url);
                self.fail_upstream(&why);
            }
            Err(failed) => self.fail_upstream(&format!("{why}; {failed}")),
        }
    }
}
