//! State shared by every handler and session of one node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use room_router::Router;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::integration::Integrations;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::routes::RouteTable;
use crate::ws::limits::Slots;

/// Read buffer per connection. tungstenite zero-fills the whole buffer before its first read,
/// so every byte here is resident for every idle socket: small, since client messages are
/// small (a publish of ~100 bytes and its envelope fit in one read); larger messages
/// still arrive whole, in more reads. tungstenite only reads: its few writes (pongs, close
/// frames) go straight into the connection's outbound, hence a write buffer of 0.
const READ_BUFFER: usize = 256;

/// One node's shared state.
pub struct App {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Rooms, connections and the bus.
    pub router: Arc<Router>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Token verification, when `[auth]` is configured.
    pub auth: Option<Arc<Authenticator>>,
    /// Connection slots (node and per-IP limits).
    pub slots: Arc<Slots>,
    /// Set once the drain starts: `/readyz` and new upgrades answer 503.
    draining: AtomicBool,
    /// Every session task, so the drain can wait for them.
    pub sessions: TaskTracker,
    /// Cancelled at the end of the drain: sessions still open are dropped.
    pub hard_stop: CancellationToken,
    /// WebSocket settings of every session.
    pub ws_config: WebSocketConfig,
    /// Frame routes and the integration client, when `[routes]` has any (SPEC section 6).
    pub routing: Option<Routing>,
    /// The reverse proxy's paths and TLS client, when `[[proxy]]` has any (SPEC section 9).
    pub proxy: Option<Proxy>,
}

/// The route table and the client its integrations are called with.
pub struct Routing {
    /// Which integration a frame goes to.
    pub table: RouteTable,
    /// The calls.
    pub integrations: Integrations,
}

impl App {
    /// Whether spans are exported (`telemetry.otlp_endpoint`): publishes and connections
    /// get spans only then.
    pub fn traced(&self) -> bool {
        !self.config.telemetry.otlp_endpoint.is_empty()
    }

    /// Builds the state for a configuration.
    pub fn new(
        config: Arc<Config>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        auth: Option<Arc<Authenticator>>,
        routing: Option<Routing>,
        proxy: Option<Proxy>,
    ) -> Arc<App> {
        let limits = &config.limits;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_message_bytes));
        Arc::new(App {
            slots: Slots::new(limits.max_connections, limits.max_connections_per_ip),
            config,
            router,
            metrics,
            auth,
            draining: AtomicBool::new(false),
            sessions: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            ws_config,
            routing,
            proxy,
        })
    }

    /// Whether the node is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts refusing new connections and failing readiness.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
