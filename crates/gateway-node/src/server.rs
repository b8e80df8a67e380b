//! The client listener: its accept loop and routes.
//!
//! The accept loop is ours rather than `axum::serve` so that an upgraded connection is the
//! plain `TcpStream` underneath (the session splits it and writes to it directly) and so that
//! every accepted socket gets `TCP_NODELAY`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::app::App;
use crate::error::ApiError;

/// Time a client has to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `server.path` upgrades; everything else is 404 with a JSON body.
pub fn client_router(app: Arc<App>) -> axum::Router {
    let path = app.config.server.path.clone();
    axum::Router::new()
        .route(&path, get(crate::ws::handshake::upgrade))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(app)
}

/// Accepts client connections until `stop`, then lets HTTP requests in flight finish.
/// Upgraded connections are sessions, which the drain ends, not this loop.
pub async fn serve_client(
    listener: TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let conns = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Small frames to many sockets: Nagle's algorithm would hold a frame back until the
        // client's (delayed) ACK of the previous one, adding up to 40 ms.
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let stop = stop.clone();
        conns.spawn(serve_connection(tcp, peer, router, stop));
    }
    conns.close();
    conns.wait().await;
    Ok(())
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        // `Router` is always ready, and its error type is `Infallible`.
        async move { router.call(req.map(axum::body::Body::new)).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
