//! The drain (SPEC section 8), step by step.

use std::sync::Arc;
use std::time::Duration;

use protocol::CloseCode;
use tokio::time::{sleep, sleep_until, timeout_at, Instant};

use crate::app::App;

/// Close handshakes still open this long after the drain period are dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Drains the node: readiness fails and upgrades are refused at once; after `drain_delay`
/// every connection is closed with 1012, spread evenly over `drain_period` so that clients
/// reconnect to other nodes gradually; sessions still closing 2 s after the period are
/// dropped; the node leaves the cluster.
pub async fn run(app: &Arc<App>) {
    app.start_draining();
    let server = &app.config.server;
    tracing::info!(
        connections = app.router.connection_count(),
        delay = ?server.drain_delay,
        period = ?server.drain_period,
        "draining"
    );
    sleep(server.drain_delay).await;

    let conns = app.router.local_connections();
    let start = Instant::now();
    let n = conns.len().max(1) as f64;
    for (i, conn) in conns.iter().enumerate() {
        sleep_until(start + server.drain_period.mul_f64(i as f64 / n)).await;
        conn.outbound.close(CloseCode::RESTART);
    }
    app.sessions.close();
    let deadline = start + server.drain_period + CLOSE_GRACE;
    if timeout_at(deadline, app.sessions.wait()).await.is_err() {
        tracing::warn!(
            remaining = app.sessions.len(),
            "close handshakes unfinished after the drain period: dropping them"
        );
        app.hard_stop.cancel();
        app.sessions.wait().await;
    }
    app.router.bus().shutdown().await;
    tracing::info!("drained");
}
