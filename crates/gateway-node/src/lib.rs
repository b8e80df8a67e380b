//! wsgate node: the WebSocket gateway binary's library.
//!
//! # Layout
//! - [`cli`], [`config`], [`telemetry`]: what `main` reads at start.
//! - [`app`]: the state shared by handlers and sessions.
//! - [`server`]: the accept loop of both listeners (header timeout and size, connection
//!   slots and bounds) and the client listener's routes.
//! - [`ws`]: the handshake, the session loop, writing, requests waiting on the cluster, limits.
//! - [`auth`]: token lookup and verification, room permissions; [`jwks`]: key sets by `kid`.
//! - [`tls`]: the wss:// certificate, reloaded on SIGHUP.
//! - [`routes`], [`integration`]: route selection for client frames and the HTTP calls to
//!   their backends (API-gateway mode).
//! - [`proxy`]: the WebSocket reverse proxy (`[[proxy]]` paths relayed to upstreams).
//! - [`admin`]: health, metrics and the management API.
//! - [`metrics`]: metric names and registry; deliveries counted once per fan-out.
//! - [`drain`]: the SIGTERM sequence; [`healthcheck`]: the `healthcheck` subcommand a
//!   container image runs.
//! - [`error`]: HTTP error bodies, and the one mapping from a routing failure to the wire and
//!   the admin API.
//!
//! [`run`] takes bound listeners and a shutdown token, so tests run real nodes on port 0; only
//! `main` reads flags, environment and signals.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod drain;
pub mod error;
pub mod healthcheck;
pub mod integration;
pub mod jwks;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod ws;

use std::future::IntoFuture;
use std::sync::Arc;

use anyhow::{bail, Context};
use protocol::room::RoomPattern;
use protocol::NodeId;
use room_router::bus::local::LocalBus;
use room_router::bus::redis::RedisMode as BusRedisMode;
use room_router::bus::redis::{RedisBus, RedisOptions};
use room_router::bus::Bus;
use room_router::{Retention, RetentionPolicy, Router, RouterOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::auth::Authenticator;
use crate::config::{Config, RedisMode};
use crate::metrics::Metrics;

/// The two bound listeners of a node.
pub struct Listeners {
    /// Client WebSocket listener.
    pub client: TcpListener,
    /// Admin listener.
    pub admin: TcpListener,
}

/// What a configuration builds before the node touches the network, checked: the node starts
/// from these, and `check-config` builds the same, so a configuration it accepts starts.
pub struct Preflight {
    /// Token verification, when `[auth]` is configured (its key set still to load).
    pub auth: Option<Authenticator>,
    /// The wss:// certificate, when `server.tls_cert_file` is set.
    pub tls: Option<tls::Tls>,
    /// The route table, when `[routes]` has any.
    pub routes: Option<routes::RouteTable>,
    /// The reverse proxy, when `[[proxy]]` has any.
    pub proxy: Option<proxy::Proxy>,
}

/// Everything about a configuration that can be checked without the network: what the node
/// would refuse at start.
pub fn preflight(config: &Config) -> anyhow::Result<Preflight> {
    let routes = routes::RouteTable::from_config(&config.routes)?;
    let proxy = proxy::Proxy::from_config(config)?;
    let tls = if config.server.tls_cert_file.is_empty() {
        None
    } else {
        Some(
            tls::Tls::new(
                config.server.tls_cert_file.as_ref(),
                config.server.tls_key_file.as_ref(),
            )
            .context("loading the wss:// certificate")?,
        )
    };
    if !config.embedded() {
        RedisBus::check(&redis_options(config, NodeId::new("preflight")))
            .context("cluster.redis_url")?;
    }
    let auth = config
        .auth
        .as_ref()
        .map(|a| Authenticator::from_config(a).context("loading [auth] keys"))
        .transpose()?;
    Ok(Preflight {
        auth,
        tls,
        routes,
        proxy,
    })
}

/// Retained rooms from `[[history]]`.
fn retention_policy(config: &Config) -> RetentionPolicy {
    RetentionPolicy::new(
        config
            .history
            .iter()
            .map(|h| {
                (
                    h.rooms.iter().map(RoomPattern::new).collect(),
                    Retention {
                        size: h.size,
                        ttl: h.ttl,
                    },
                )
            })
            .collect(),
    )
}

/// The Redis bus's options from `[cluster]`.
fn redis_options(config: &Config, node: NodeId) -> RedisOptions {
    let c = &config.cluster;
    RedisOptions {
        url: c.redis_url.clone(),
        mode: match c.redis_mode {
            RedisMode::Standalone => BusRedisMode::Standalone,
            RedisMode::Cluster => BusRedisMode::Cluster,
            RedisMode::Sentinel => BusRedisMode::Sentinel,
        },
        cluster: c.name.clone(),
        node,
        affinity_ttl: c.affinity_ttl,
        node_heartbeat: c.node_heartbeat,
        ca_file: (!c.redis_ca_file.is_empty()).then(|| c.redis_ca_file.clone().into()),
        fanout_workers: 0,
    }
}

/// This node's id: `cluster.node_id`, else the hostname plus a random suffix.
fn node_id(config: &Config) -> NodeId {
    if !config.cluster.node_id.is_empty() {
        return NodeId::new(config.cluster.node_id.as_str());
    }
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wsgate".into());
    NodeId::generate(&host)
}

/// Runs a node until `shutdown` is cancelled, then drains it and returns. Each notification
/// of `reload` reads the wss:// certificate and key files again (main sends one on SIGHUP).
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: CancellationToken,
    reload: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let stop_background = CancellationToken::new();
    let background = TaskTracker::new();
    let Preflight {
        auth,
        tls,
        routes,
        proxy,
    } = preflight(&config)?;
    let auth = match (auth, config.auth.as_ref()) {
        (Some(auth), Some(a)) if auth.wants_jwks() => {
            let jwks = jwks::Jwks::load(&a.jwks_file, &a.jwks_url, a.jwks_refresh)
                .await
                .context("loading the [auth] key set")?;
            background.spawn(jwks.clone().run(stop_background.clone()));
            Some(Arc::new(auth.with_jwks(jwks)))
        }
        (other, _) => other.map(Arc::new),
    };
    let node = node_id(&config);
    let bus: Arc<dyn Bus> = if config.embedded() {
        Arc::new(LocalBus::standalone(node.clone()))
    } else {
        Arc::new(
            RedisBus::connect(redis_options(&config, node.clone()))
                .await
                .context("cluster.redis_url")?,
        )
    };
    let deliveries = metrics::DeliveryMetrics::new();
    let router = Router::new(
        node.clone(),
        bus,
        RouterOptions {
            rooms_per_connection: config.limits.rooms_per_connection,
            max_message_bytes: config.limits.max_message_bytes,
            framer: ws::outbound::frame,
            deliveries: deliveries.clone(),
            history: retention_policy(&config),
            presence_events: config
                .presence
                .iter()
                .filter(|p| p.events)
                .flat_map(|p| p.rooms.iter().map(RoomPattern::new))
                .collect(),
            traces: (!config.telemetry.otlp_endpoint.is_empty())
                .then(|| Arc::new(telemetry::DeliverySpans) as Arc<dyn room_router::DeliveryTrace>),
        },
    );
    let metrics = Metrics::new(router.clone(), deliveries);
    let routing = match routes {
        None => None,
        Some(table) => Some(app::Routing {
            table,
            integrations: integration::Integrations::new(node.clone())
                .context("building the integration HTTP client")?,
        }),
    };
    let app = App::new(config.clone(), router, metrics, auth, routing, proxy);

    let client_addr = listeners.client.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    if app.auth.is_none() && !client_addr.ip().is_loopback() {
        tracing::warn!(%client_addr, "no [auth]: anonymous connections are accepted on a non-loopback listener");
    }
    let stop_servers = CancellationToken::new();
    let servers = TaskTracker::new();
    let client = server::serve(
        listeners.client,
        server::client_router(app.clone()),
        stop_servers.clone(),
        server::ServeOptions {
            header_timeout: config.server.handshake_timeout,
            max_connections: None,
            slots: Some(app.slots.clone()),
            tls: tls.as_ref().map(|t| t.acceptor.clone()),
        },
    );
    if let Some(tls) = tls {
        let reload = reload.clone();
        let stop = stop_background.clone();
        background.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = reload.notified() => {}
                }
                match tls.cert.reload() {
                    Ok(()) => tracing::info!("server certificate reloaded"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "server certificate reload failed; the old one stays"),
                }
            }
        });
    }
    let admin = server::serve(
        listeners.admin,
        admin::router(app.clone()),
        stop_servers.clone(),
        server::ServeOptions {
            header_timeout: admin::HEADER_TIMEOUT,
            max_connections: Some(admin::MAX_CONNECTIONS),
            slots: None,
            tls: None,
        },
    );
    let failed = CancellationToken::new();
    for (name, fut) in [
        (
            "client",
            Box::pin(client.into_future())
                as std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>,
        ),
        ("admin", Box::pin(admin.into_future())),
    ] {
        let failed = failed.clone();
        servers.spawn(async move {
            if let Err(e) = fut.await {
                tracing::error!(listener = name, error = %e, "listener failed");
                failed.cancel();
            }
        });
    }
    tracing::info!(node = %node, client = %client_addr, admin = %admin_addr, path = %config.server.path, "gateway-node ready");

    tokio::select! {
        () = shutdown.cancelled() => {}
        () = failed.cancelled() => {}
    }
    drain::run(&app).await;
    stop_servers.cancel();
    servers.close();
    servers.wait().await;
    stop_background.cancel();
    background.close();
    background.wait().await;
    if failed.is_cancelled() {
        bail!("a listener failed");
    }
    Ok(())
}
