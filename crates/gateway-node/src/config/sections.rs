//! One struct per TOML section (SPEC section 13): `#[serde(default)]`, a doc per field, unknown
//! keys rejected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lists::string_list;

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Client listener address.
    pub listen: SocketAddr,
    /// WebSocket path.
    pub path: String,
    /// Allowed `Origin` values; empty allows any.
    #[serde(deserialize_with = "string_list")]
    pub allowed_origins: Vec<String>,
    /// Interval of server pings.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Close (4003) a connection silent for this long.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Close (4004) after this long without a client message; 0 is off.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Close (4005) connections older than this; 0 is off.
    #[serde(with = "humantime_serde")]
    pub max_connection_duration: Duration,
    /// Wait after SIGTERM before closing connections (load balancers notice `/readyz`).
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Spread the 1012 closes over this period, so clients do not reconnect all at once.
    #[serde(with = "humantime_serde")]
    pub drain_period: Duration,
    /// PEM certificate chain for wss://.
    pub tls_cert_file: String,
    /// PEM private key for wss://.
    pub tls_key_file: String,
    /// Time a client has for its request line and headers before the upgrade.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Frames for one socket wait up to this long to leave in one write; 0 writes each at once.
    #[serde(with = "humantime_serde")]
    pub write_delay: Duration,
    /// Accept a token cookie from any origin (`auth.cookie` without `allowed_origins`): only
    /// for deployments where no browser can reach the listener from another site.
    pub allow_any_origin_with_cookie: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            path: "/ws".into(),
            allowed_origins: Vec::new(),
            heartbeat: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(60),
            idle_timeout: Duration::ZERO,
            max_connection_duration: Duration::ZERO,
            drain_delay: Duration::from_secs(5),
            drain_period: Duration::from_secs(10),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            handshake_timeout: Duration::from_secs(10),
            write_delay: Duration::ZERO,
            allow_any_origin_with_cookie: false,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin listener address.
    pub listen: SocketAddr,
    /// Bearer token required on everything but `/metrics`, `/healthz`, `/readyz`.
    pub token: String,
    /// Allow a non-loopback admin listener without a token.
    pub insecure: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: String::new(),
            insecure: false,
        }
    }
}

/// How `cluster.redis_url` is interpreted when its scheme does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis server.
    #[default]
    Standalone,
    /// Redis Cluster, sharded pub/sub.
    Cluster,
    /// Redis Sentinel.
    Sentinel,
}

/// `[cluster]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Prefix of every Redis key and channel.
    pub name: String,
    /// This node's id; empty: hostname plus a random suffix.
    pub node_id: String,
    /// Redis URL; empty: embedded single-node mode.
    pub redis_url: String,
    /// Mode for `redis://` and `rediss://` URLs.
    pub redis_mode: RedisMode,
    /// PEM CA for TLS to Redis.
    pub redis_ca_file: String,
    /// TTL of connection-to-node affinity records.
    #[serde(with = "humantime_serde")]
    pub affinity_ttl: Duration,
    /// Interval of node registry heartbeats.
    #[serde(with = "humantime_serde")]
    pub node_heartbeat: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: "wsgate".into(),
            node_id: String::new(),
            redis_url: String::new(),
            redis_mode: RedisMode::Standalone,
            redis_ca_file: String::new(),
            affinity_ttl: Duration::from_secs(60),
            node_heartbeat: Duration::from_secs(5),
        }
    }
}

/// What a token without a `rooms` claim may join and publish to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomPolicy {
    /// Any room.
    #[default]
    Allow,
    /// No room.
    Deny,
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret for HS* algorithms.
    pub jwt_secret: String,
    /// PEM public key for RS*, ES*, EdDSA.
    pub jwt_public_key_file: String,
    /// JWKS file.
    pub jwks_file: String,
    /// JWKS URL, refreshed every `jwks_refresh`.
    pub jwks_url: String,
    /// JWKS refresh interval.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Accepted algorithms; a token signed with any other is refused.
    #[serde(deserialize_with = "string_list")]
    pub algorithms: Vec<String>,
    /// Required `iss`, when set.
    pub issuer: String,
    /// Required `aud`, when set.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Query parameters searched for a token, in order.
    #[serde(deserialize_with = "string_list")]
    pub query_params: Vec<String>,
    /// Cookie searched for a token, when set.
    pub cookie: String,
    /// Rooms allowed to tokens without a `rooms` claim.
    pub default_room_policy: RoomPolicy,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: String::new(),
            jwt_public_key_file: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            jwks_refresh: Duration::from_secs(300),
            algorithms: vec!["HS256".into()],
            issuer: String::new(),
            audience: String::new(),
            leeway: Duration::from_secs(5),
            query_params: vec!["jwt".into(), "access_token".into()],
            cookie: String::new(),
            default_room_policy: RoomPolicy::Allow,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections per node; 0 is unlimited.
    pub max_connections: usize,
    /// Connections per client IP; 0 is unlimited.
    pub max_connections_per_ip: usize,
    /// Largest message in either direction, in bytes.
    pub max_message_bytes: usize,
    /// Frames queued per connection before it is closed as a slow consumer.
    pub outbound_queue: usize,
    /// Bytes queued per connection before it is closed as a slow consumer: frames alone
    /// would let one connection hold `outbound_queue` × `max_message_bytes`.
    pub outbound_queue_bytes: usize,
    /// Rooms one connection may be in.
    pub rooms_per_connection: usize,
    /// Sustained client messages per second.
    pub messages_per_second: u32,
    /// Burst of client messages; also the rejected messages in a row that close with 1008.
    pub messages_burst: u32,
    /// Bad frames in a row that close with 1008.
    pub max_bad_frames: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 0,
            max_connections_per_ip: 0,
            max_message_bytes: 131_072,
            outbound_queue: 1024,
            outbound_queue_bytes: 1 << 20,
            rooms_per_connection: 100,
            messages_per_second: 100,
            messages_burst: 200,
            max_bad_frames: 20,
        }
    }
}

/// One integration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The HTTP endpoint.
    pub url: String,
    /// Per-call timeout.
    #[serde(default = "default_route_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Send a 2xx answer back as `route_response`.
    #[serde(default)]
    pub response: bool,
}

fn default_route_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `[routes]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutesConfig {
    /// Where the route key is read from.
    pub selection_expression: String,
    /// `$connect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<RouteConfig>,
    /// `$disconnect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<RouteConfig>,
    /// `$default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<RouteConfig>,
    /// Custom routes by key.
    pub custom: BTreeMap<String, RouteConfig>,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig {
            selection_expression: "$request.body.action".into(),
            connect: None,
            disconnect: None,
            default: None,
            custom: BTreeMap::new(),
        }
    }
}

impl RoutesConfig {
    /// Whether any route is configured.
    pub fn any(&self) -> bool {
        self.connect.is_some()
            || self.disconnect.is_some()
            || self.default.is_some()
            || !self.custom.is_empty()
    }
}

/// `[[history]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Room patterns.
    pub rooms: Vec<String>,
    /// Messages retained per room.
    #[serde(default = "default_history_size")]
    pub size: usize,
    /// Retention per message.
    #[serde(default = "default_history_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_history_size() -> usize {
    100
}

fn default_history_ttl() -> Duration {
    Duration::from_secs(600)
}

/// `[[presence]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// Room patterns.
    pub rooms: Vec<String>,
    /// Send join/leave events to members.
    #[serde(default)]
    pub events: bool,
}

/// `[[proxy]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Path prefix.
    pub path: String,
    /// Upstream WebSocket URLs.
    pub upstreams: Vec<String>,
    /// Strip the matched prefix.
    #[serde(default = "yes")]
    pub strip_path: bool,
    /// `jwt` or `none`.
    #[serde(default)]
    pub auth: Option<String>,
    /// Upstream connect timeout.
    #[serde(default = "default_route_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle timeout of proxied sessions.
    #[serde(default = "default_proxy_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Reopen on another upstream after an abnormal loss.
    #[serde(default)]
    pub reconnect: bool,
}

fn yes() -> bool {
    true
}

fn default_proxy_idle() -> Duration {
    Duration::from_secs(86_400)
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log format.
    pub log_format: LogFormat,
    /// OTLP endpoint for traces; empty is off.
    pub otlp_endpoint: String,
    /// `service.name` of traces.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Text,
            otlp_endpoint: String::new(),
            service_name: "wsgate".into(),
        }
    }
}
