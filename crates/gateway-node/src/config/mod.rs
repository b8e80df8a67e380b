//! Configuration (SPEC sections 2 and 13): one struct per TOML section, fields named as keys.
//!
//! Sources, later ones winning: defaults, the TOML file, `WSGATE_<SECTION>__<KEY>` environment
//! variables, command-line flags. Unknown keys are errors (a typo must not silently fall back
//! to a default), and [`Config::validate`] checks what serde cannot, naming the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{Deserialize, Serialize};

mod env;
mod lists;
mod sections;

pub use sections::*;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the client listener and connection lifecycle.
    pub server: ServerConfig,
    /// `[admin]`: the management listener.
    pub admin: AdminConfig,
    /// `[cluster]`: Redis and node identity.
    pub cluster: ClusterConfig,
    /// `[auth]`: absent means anonymous connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[routes]`: route selection and integrations.
    pub routes: RoutesConfig,
    /// `[[history]]`: retained rooms.
    pub history: Vec<HistoryConfig>,
    /// `[[presence]]`: presence events per room pattern.
    pub presence: Vec<PresenceConfig>,
    /// `[[proxy]]`: WebSocket reverse-proxy paths.
    pub proxy: Vec<ProxyConfig>,
    /// `[telemetry]`.
    pub telemetry: TelemetryConfig,
}

/// Overrides from command-line flags; `None` leaves the key alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlagOverrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--redis-url`.
    pub redis_url: Option<String>,
    /// `--node-id`.
    pub node_id: Option<String>,
}

impl FlagOverrides {
    fn figment_value(&self) -> serde_json::Value {
        let mut root = serde_json::Map::new();
        let mut set = |section: &str, key: &str, v: serde_json::Value| {
            root.entry(section)
                .or_insert_with(|| serde_json::Value::Object(Default::default()))
                .as_object_mut()
                .map(|m| m.insert(key.to_owned(), v));
        };
        if let Some(l) = self.listen {
            set("server", "listen", l.to_string().into());
        }
        if let Some(l) = self.admin_listen {
            set("admin", "listen", l.to_string().into());
        }
        if let Some(u) = &self.redis_url {
            set("cluster", "redis_url", u.clone().into());
        }
        if let Some(n) = &self.node_id {
            set("cluster", "node_id", n.clone().into());
        }
        serde_json::Value::Object(root)
    }
}

/// Why the configuration is unusable. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or parsed, or a key is unknown or ill-typed.
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// A value is out of range or inconsistent.
    #[error("invalid `{key}`: {problem}")]
    Invalid {
        /// The key, as `section.key`.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// The algorithms `[auth] algorithms` may name (SPEC section 3), by jsonwebtoken's names.
pub const KNOWN_ALGORITHMS: &[Algorithm] = &[
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Config {
    /// Loads file (if any), environment and flags, then validates.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        Self::load_from_env(file, flags, Env::prefixed("WSGATE_").split("__"))
    }

    fn load_from_env(
        file: Option<&Path>,
        flags: &FlagOverrides,
        env: Env,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    path.display()
                )))));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(env::RawEnv(env))
            .merge(Serialized::defaults(flags.figment_value()));
        // Lossy: environment values arrive as text, and numbers and booleans are read from it.
        let config: Config = figment
            .extract_lossy()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        check_path("server.path", &s.path)?;
        let otlp = &self.telemetry.otlp_endpoint;
        if !otlp.is_empty()
            && !url::Url::parse(otlp)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                format!("{otlp:?} is not an http:// or https:// URL"),
            ));
        }
        for (key, d) in self.durations() {
            if d > MAX_DURATION {
                return Err(invalid(key, "must be at most 100 years"));
            }
        }
        if s.handshake_timeout.is_zero() {
            return Err(invalid(
                "server.handshake_timeout",
                "must be greater than 0",
            ));
        }
        if s.heartbeat.is_zero() {
            return Err(invalid("server.heartbeat", "must be greater than 0"));
        }
        if s.heartbeat_timeout < s.heartbeat {
            return Err(invalid(
                "server.heartbeat_timeout",
                "must be at least server.heartbeat",
            ));
        }
        if s.tls_cert_file.is_empty() != s.tls_key_file.is_empty() {
            return Err(invalid(
                "server.tls_cert_file",
                "server.tls_cert_file and server.tls_key_file must be set together",
            ));
        }
        let a = &self.admin;
        if !a.listen.ip().is_loopback() && a.token.is_empty() && !a.insecure {
            return Err(invalid(
                "admin.token",
                format!(
                    "the admin listener {} is not loopback: set admin.token (or admin.insecure = true)",
                    a.listen
                ),
            ));
        }
        let c = &self.cluster;
        if c.name.is_empty()
            || !c
                .name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
        {
            return Err(invalid(
                "cluster.name",
                "must be non-empty, without spaces, braces or control characters",
            ));
        }
        if c.affinity_ttl < Duration::from_secs(1) {
            return Err(invalid("cluster.affinity_ttl", "must be at least 1s"));
        }
        if c.node_heartbeat.is_zero() {
            return Err(invalid("cluster.node_heartbeat", "must be greater than 0"));
        }
        for h in &self.history {
            if h.rooms.is_empty() {
                return Err(invalid(
                    "history.rooms",
                    "must list at least one room pattern",
                ));
            }
            if h.size == 0 || h.size > self.limits.outbound_queue {
                return Err(invalid(
                    "history.size",
                    format!(
                        "must be between 1 and limits.outbound_queue ({}): a replay must fit in a connection's queue",
                        self.limits.outbound_queue
                    ),
                ));
            }
            if h.ttl < Duration::from_millis(1) {
                return Err(invalid("history.ttl", "must be at least 1ms"));
            }
        }
        if self.presence.iter().any(|p| p.rooms.is_empty()) {
            return Err(invalid(
                "presence.rooms",
                "must list at least one room pattern",
            ));
        }
        if let Some(auth) = &self.auth {
            validate_auth(auth)?;
            if !auth.cookie.is_empty()
                && s.allowed_origins.is_empty()
                && !s.allow_any_origin_with_cookie
            {
                return Err(invalid(
                    "auth.cookie",
                    "a token cookie needs server.allowed_origins: a browser sends the cookie \
                     from any site (cross-site WebSocket hijacking); set \
                     server.allow_any_origin_with_cookie = true only if no browser can reach \
                     this listener from another site",
                ));
            }
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_message_bytes", l.max_message_bytes),
            ("limits.outbound_queue", l.outbound_queue),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes),
            ("limits.rooms_per_connection", l.rooms_per_connection),
            ("limits.messages_per_second", l.messages_per_second as usize),
            ("limits.messages_burst", l.messages_burst as usize),
            ("limits.max_bad_frames", l.max_bad_frames as usize),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if l.outbound_queue_bytes < l.max_message_bytes {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                "must be at least limits.max_message_bytes: one largest message must fit",
            ));
        }
        for p in &self.proxy {
            if p.auth.as_deref() == Some("jwt") && self.auth.is_none() {
                return Err(invalid("proxy.auth", "\"jwt\" needs an [auth] table"));
            }
            if let Some(other) = p.auth.as_deref().filter(|a| !matches!(*a, "jwt" | "none")) {
                return Err(invalid(
                    "proxy.auth",
                    format!("{other:?} is not \"jwt\" or \"none\""),
                ));
            }
            check_path("proxy.path", &p.path)?;
            if p.path.trim_end_matches('/') == self.server.path.trim_end_matches('/') {
                return Err(invalid(
                    "proxy.path",
                    format!("{:?} is server.path", p.path),
                ));
            }
            if p.upstreams.is_empty() {
                return Err(invalid("proxy.upstreams", "needs at least one upstream"));
            }
            if p.connect_timeout.is_zero() || p.idle_timeout.is_zero() {
                return Err(invalid(
                    "proxy.connect_timeout",
                    "connect_timeout and idle_timeout must be greater than 0",
                ));
            }
        }
        Ok(())
    }

    /// Every duration key with its value: each must fit the clock's arithmetic.
    fn durations(&self) -> Vec<(&'static str, Duration)> {
        let (s, c) = (&self.server, &self.cluster);
        let mut all = vec![
            ("server.heartbeat", s.heartbeat),
            ("server.heartbeat_timeout", s.heartbeat_timeout),
            ("server.idle_timeout", s.idle_timeout),
            ("server.max_connection_duration", s.max_connection_duration),
            ("server.drain_delay", s.drain_delay),
            ("server.drain_period", s.drain_period),
            ("server.handshake_timeout", s.handshake_timeout),
            ("server.write_delay", s.write_delay),
            ("cluster.affinity_ttl", c.affinity_ttl),
            ("cluster.node_heartbeat", c.node_heartbeat),
        ];
        if let Some(a) = &self.auth {
            all.extend([
                ("auth.jwks_refresh", a.jwks_refresh),
                ("auth.leeway", a.leeway),
            ]);
        }
        let r = &self.routes;
        let routes = r.connect.iter().chain(&r.disconnect).chain(&r.default);
        all.extend(
            routes
                .chain(r.custom.values())
                .map(|r| ("routes.*.timeout", r.timeout)),
        );
        all.extend(self.history.iter().map(|h| ("history.ttl", h.ttl)));
        for p in &self.proxy {
            all.extend([
                ("proxy.connect_timeout", p.connect_timeout),
                ("proxy.idle_timeout", p.idle_timeout),
            ]);
        }
        all
    }

    /// The configuration with every secret replaced, for `check-config` and logs.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let hide = |s: &mut String| {
            if !s.is_empty() {
                *s = "<redacted>".into();
            }
        };
        hide(&mut c.admin.token);
        if let Some(auth) = &mut c.auth {
            hide(&mut auth.jwt_secret);
        }
        c.cluster.redis_url = redact_url_password(&c.cluster.redis_url);
        c
    }

    /// Whether the node runs alone (no Redis).
    pub fn embedded(&self) -> bool {
        self.cluster.redis_url.is_empty()
    }
}

/// The longest duration any key may have: far beyond any sensible setting, and far enough
/// below what `Instant` arithmetic overflows at (a panic, not an error) that deadlines built
/// from several keys stay representable.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A path the router can match literally: `/` then segments of URL-safe characters. The
/// router treats `{`, `}`, `*` and `:` as captures and wildcards, and refuses (with a panic)
/// some of their forms, so they are refused here with a message instead.
fn check_path(key: &'static str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') {
        return Err(invalid(key, "must start with /"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"/-._~!$&'()+,;=@%".contains(&b);
    if let Some(bad) = path.bytes().find(|b| !allowed(*b)) {
        return Err(invalid(
            key,
            format!(
                "{path:?} has {:?}: use letters, digits, / and -._~!$&'()+,;=@%",
                bad as char
            ),
        ));
    }
    if path.contains("//") {
        return Err(invalid(key, format!("{path:?} has an empty segment")));
    }
    Ok(())
}

fn validate_auth(auth: &AuthConfig) -> Result<(), ConfigError> {
    if auth.jwks_refresh.is_zero() {
        return Err(invalid("auth.jwks_refresh", "must be greater than 0"));
    }
    if auth.algorithms.is_empty() {
        return Err(invalid(
            "auth.algorithms",
            "must name at least one algorithm",
        ));
    }
    let mut algorithms = Vec::new();
    for name in &auth.algorithms {
        match name.parse::<Algorithm>() {
            Ok(alg) if KNOWN_ALGORITHMS.contains(&alg) => algorithms.push(alg),
            _ => {
                let known: Vec<String> =
                    KNOWN_ALGORITHMS.iter().map(|a| format!("{a:?}")).collect();
                return Err(invalid(
                    "auth.algorithms",
                    format!("unknown algorithm {name:?} (known: {})", known.join(", ")),
                ));
            }
        }
    }
    let has_hmac = algorithms
        .iter()
        .any(|a| a.family() == AlgorithmFamily::Hmac);
    let has_public = algorithms
        .iter()
        .any(|a| a.family() != AlgorithmFamily::Hmac);
    let public_source = !auth.jwt_public_key_file.is_empty()
        || !auth.jwks_file.is_empty()
        || !auth.jwks_url.is_empty();
    if auth.jwt_secret.is_empty() && !public_source {
        return Err(invalid(
            "auth.jwt_secret",
            "[auth] needs a key source: jwt_secret, jwt_public_key_file, jwks_file or jwks_url",
        ));
    }
    if has_hmac && auth.jwt_secret.is_empty() {
        return Err(invalid(
            "auth.jwt_secret",
            "HS* algorithms need auth.jwt_secret",
        ));
    }
    if has_public && !public_source {
        return Err(invalid(
            "auth.jwt_public_key_file",
            "RS*, ES* and EdDSA algorithms need jwt_public_key_file, jwks_file or jwks_url",
        ));
    }
    if auth.query_params.iter().any(|q| q.is_empty()) {
        return Err(invalid("auth.query_params", "names must not be empty"));
    }
    Ok(())
}

/// `redis://user:secret@host` → `redis://user:<redacted>@host`.
fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    format!(
        "{}://{}:<redacted>@{}",
        &url[..scheme_end],
        user,
        &rest[at + 1..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `toml` with exactly the environment `env`, in a figment jail (own cwd, own env).
    #[allow(clippy::result_large_err)] // figment's own closure signature
    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("c.toml", toml)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = Some(Config::load(
                Some(Path::new("c.toml")),
                &FlagOverrides::default(),
            ));
            Ok(())
        });
        out.unwrap()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.server.path, "/ws");
        assert_eq!(c.server.heartbeat, Duration::from_secs(25));
        assert_eq!(c.limits.max_message_bytes, 131_072);
        assert_eq!(c.limits.messages_burst, 200);
        assert!(c.auth.is_none());
        assert!(c.embedded());
    }

    #[test]
    fn new_defaults_match_the_spec() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.server.write_delay, Duration::ZERO);
        assert!(!c.server.allow_any_origin_with_cookie);
        assert_eq!(c.limits.outbound_queue, 1024);
        assert_eq!(c.limits.outbound_queue_bytes, 1 << 20);
    }

    #[test]
    fn bounds_that_cannot_work_are_refused() {
        let e = load("[limits]\noutbound_queue_bytes = 1000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.outbound_queue_bytes"), "{e}");
        let e = load("[auth]\njwt_secret = \"s\"\njwks_refresh = \"0s\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.jwks_refresh"), "{e}");
    }

    #[test]
    fn a_token_cookie_needs_an_origin_list() {
        let cookie = "[auth]\njwt_secret = \"s\"\ncookie = \"tok\"\n";
        let e = load(cookie, &[]).unwrap_err().to_string();
        assert!(
            e.contains("auth.cookie") && e.contains("allowed_origins"),
            "{e}"
        );
        let with_origins = format!("[server]\nallowed_origins = [\"https://a.example\"]\n{cookie}");
        assert!(load(&with_origins, &[]).is_ok());
        let waived = format!("[server]\nallow_any_origin_with_cookie = true\n{cookie}");
        assert!(load(&waived, &[]).is_ok());
    }

    #[test]
    fn paths_the_router_would_panic_on_are_refused() {
        for bad in [
            "/ws/{id}",
            "/ws/:id",
            "/ws/*rest",
            "ws",
            "/a//b",
            "/a b",
            "/é",
        ] {
            let e = load(&format!("[server]\npath = {bad:?}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("server.path"), "{bad}: {e}");
        }
        for good in ["/", "/ws", "/v1/socket.io-x_y~", "/a/b/"] {
            let c = load(&format!("[server]\npath = {good:?}\n"), &[]).unwrap();
            // And the router takes it.
            let _ =
                axum::Router::<()>::new().route(&c.server.path, axum::routing::get(|| async {}));
        }
    }

    #[test]
    fn durations_beyond_the_clock_are_refused() {
        for key in [
            "heartbeat_timeout",
            "max_connection_duration",
            "idle_timeout",
        ] {
            let e = load(&format!("[server]\n{key} = \"200years\"\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("server.{key}")) && e.contains("100 years"),
                "{e}"
            );
        }
        let e = load("[cluster]\naffinity_ttl = \"500000000years\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("affinity_ttl"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load("[server]\nlisten_port = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_port"), "{e}");
        let e = load("[nope]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = load("[server]\nheartbeat = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("heartbeat"), "{e}");
        let e = load("[limits]\noutbound_queue = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.outbound_queue"), "{e}");
        let e = load("[auth]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("auth.jwt_secret"), "{e}");
        let e = load("[admin]\nlisten = \"0.0.0.0:9090\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.token"), "{e}");
    }

    #[test]
    fn env_lists_are_comma_separated_and_env_turns_auth_on() {
        let c = load(
            "",
            &[
                ("WSGATE_AUTH__JWT_SECRET", "s3cret"),
                ("WSGATE_AUTH__ALGORITHMS", "HS256,HS512"),
            ],
        )
        .unwrap();
        let auth = c.auth.unwrap();
        assert_eq!(auth.algorithms, vec!["HS256", "HS512"]);
        assert_eq!(auth.query_params, vec!["jwt", "access_token"]);
    }

    #[test]
    fn env_values_that_look_like_numbers_stay_text() {
        let c = load(
            "",
            &[
                ("WSGATE_AUTH__JWT_SECRET", "0123"),
                ("WSGATE_ADMIN__TOKEN", "true"),
                ("WSGATE_CLUSTER__NODE_ID", "+7"),
                ("WSGATE_CLUSTER__NAME", "1.10"),
                ("WSGATE_LIMITS__MAX_CONNECTIONS", "12"),
                ("WSGATE_ADMIN__INSECURE", "true"),
            ],
        )
        .unwrap();
        // Exactly as written, not as the number or boolean it looks like.
        assert_eq!(c.auth.unwrap().jwt_secret, "0123");
        assert_eq!(c.admin.token, "true");
        assert_eq!(
            (c.cluster.node_id.as_str(), c.cluster.name.as_str()),
            ("+7", "1.10")
        );
        // Keys that want numbers and booleans still get them.
        assert_eq!(c.limits.max_connections, 12);
        assert!(c.admin.insecure);
        let e = load("", &[("WSGATE_LIMITS__MAX_CONNECTIONS", "many")]).unwrap_err();
        assert!(
            e.to_string().to_lowercase().contains("max_connections"),
            "{e}"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's own closure signature
    fn flags_override_env_which_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "c.toml",
                "[server]\nlisten = \"127.0.0.1:1\"\npath = \"/file\"\n[cluster]\nnode_id = \"file\"\nname = \"file\"\n",
            )?;
            jail.set_env("WSGATE_SERVER__PATH", "/env");
            jail.set_env("WSGATE_CLUSTER__NODE_ID", "env");
            let flags = FlagOverrides {
                node_id: Some("flag".into()),
                ..FlagOverrides::default()
            };
            let c = Config::load(Some(Path::new("c.toml")), &flags).unwrap();
            assert_eq!(c.server.listen.to_string(), "127.0.0.1:1", "file");
            assert_eq!(c.cluster.name, "file", "file");
            assert_eq!(c.server.path, "/env", "env over file");
            assert_eq!(c.cluster.node_id, "flag", "flag over env and file");
            Ok(())
        });
    }

    #[test]
    fn secrets_are_redacted() {
        let c = load(
            "[auth]\njwt_secret = \"s3cret\"\n[admin]\ntoken = \"t0ken\"\n[cluster]\nredis_url = \"redis://u:pw@h:1/0\"\n",
            &[],
        )
        .unwrap();
        let text = toml::to_string(&c.redacted()).unwrap();
        assert!(
            !text.contains("s3cret") && !text.contains("t0ken") && !text.contains("pw@"),
            "{text}"
        );
        assert!(text.contains("redis://u:<redacted>@h:1/0"), "{text}");
    }
}
