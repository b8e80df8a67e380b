//! The WebSocket reverse proxy (SPEC section 9): `[[proxy]]` paths whose sessions are relayed
//! to upstream WebSocket servers, frames as they are.
//!
//! - this file: the table of proxy paths, which path a request takes, and the upstream URL
//!   it becomes;
//! - [`upstream`]: opening an upstream (round robin, failover, passive health, the client
//!   handshake with the forwarded headers);
//! - [`frames`]: the RFC 6455 checks an intermediary owes, on bytes that pass as they are;
//! - [`relay`]: one direction's buffer, reads and writes;
//! - [`session`]: the upgrade handler and the session loop (closes, heartbeats, timeouts,
//!   drain, reconnect).

pub mod frames;
pub mod relay;
pub mod session;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use url::Url;

use crate::config::ProxyConfig;
use upstream::Upstreams;

/// The reverse proxy of a node.
pub struct Proxy {
    /// Its paths.
    pub table: ProxyTable,
    /// The TLS client for `wss://` upstreams, when any is configured.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl Proxy {
    /// The proxy for `[[proxy]]`; `None` when there is no entry.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Option<Proxy>> {
        let Some(table) = ProxyTable::from_config(&config.proxy, config.auth.is_some())? else {
            return Ok(None);
        };
        let tls = if table.routes.iter().any(|r| r.upstreams.any_tls()) {
            Some(upstream::tls_connector().context("proxy.upstreams")?)
        } else {
            None
        };
        Ok(Some(Proxy { table, tls }))
    }
}

/// One `[[proxy]]` entry, ready to serve.
pub struct ProxyRoute {
    /// The path prefix, without a trailing `/`.
    pub prefix: String,
    /// Remove the prefix from the path sent upstream.
    pub strip_path: bool,
    /// Verify a token at the handshake.
    pub auth: bool,
    /// Time to open an upstream, TCP and TLS and handshake.
    pub connect_timeout: Duration,
    /// A session with no message either way for this long is closed (4004).
    pub idle_timeout: Duration,
    /// Replace an upstream lost abnormally instead of closing the client.
    pub reconnect: bool,
    /// The upstreams, with their health.
    pub upstreams: Upstreams,
}

/// Every `[[proxy]]` entry, longest prefix first.
pub struct ProxyTable {
    routes: Vec<Arc<ProxyRoute>>,
}

/// Whether `path` is `prefix` or goes on below it (`/ws/chat` takes `/ws/chat/x`, not
/// `/ws/chatroom`).
fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// Whether a request path has a `.` or `..` segment as any upstream might read it: after
/// percent-decoding (`%2e%2e`, `..%2f`), with `\` as a separator (`..\`, `..%5c`), and with
/// a `;parameter` dropped (`..;/`, as Tomcat reads it). An upstream that resolves one would
/// serve a path outside the proxied prefix.
pub fn has_dot_segment(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded.split(['/', '\\']).any(|segment| {
        let segment = segment.split(';').next().unwrap_or_default();
        segment == "." || segment == ".."
    })
}

impl ProxyTable {
    /// The table for `[[proxy]]`; `None` when there is no entry. `auth_configured` gives
    /// `auth`'s default.
    pub fn from_config(
        entries: &[ProxyConfig],
        auth_configured: bool,
    ) -> anyhow::Result<Option<ProxyTable>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let mut routes = Vec::with_capacity(entries.len());
        for entry in entries {
            let prefix = entry.path.trim_end_matches('/').to_owned();
            if routes.iter().any(|r: &Arc<ProxyRoute>| r.prefix == prefix) {
                bail!("proxy.path: {:?} is configured twice", entry.path);
            }
            let urls = entry
                .upstreams
                .iter()
                .map(|u| parse_upstream(u))
                .collect::<anyhow::Result<Vec<_>>>()?;
            routes.push(Arc::new(ProxyRoute {
                prefix,
                strip_path: entry.strip_path,
                auth: match entry.auth.as_deref() {
                    Some(a) => a == "jwt",
                    None => auth_configured,
                },
                connect_timeout: entry.connect_timeout,
                idle_timeout: entry.idle_timeout,
                reconnect: entry.reconnect,
                upstreams: Upstreams::new(urls).context("proxy.upstreams")?,
            }));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Some(ProxyTable { routes }))
    }

    /// The entry whose prefix is the longest one `path` is under.
    pub fn find(&self, path: &str) -> Option<&Arc<ProxyRoute>> {
        self.routes.iter().find(|r| under(path, &r.prefix))
    }
}

/// An upstream URL from the config, checked.
fn parse_upstream(text: &str) -> anyhow::Result<Url> {
    let url = Url::parse(text).with_context(|| format!("proxy.upstreams: {text:?}"))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        bail!("proxy.upstreams: {text:?} is not a ws:// or wss:// URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("proxy.upstreams: {text:?} has no host");
    }
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        bail!("proxy.upstreams: {text:?} may not have a fragment or credentials");
    }
    Ok(url)
}

impl ProxyRoute {
    /// The path and query sent upstream for a request to `path?query` (SPEC section 9).
    pub fn upstream_target(&self, base: &Url, path: &str, query: Option<&str>) -> String {
        let rest = if self.strip_path {
            &path[self.prefix.len()..]
        } else {
            path
        };
        let base_path = base.path();
        let mut target = String::with_capacity(base_path.len() + rest.len() + 16);
        target.push_str(base_path);
        match (target.ends_with('/'), rest.starts_with('/')) {
            (true, true) => target.push_str(&rest[1..]),
            (false, false) if !rest.is_empty() => {
                target.push('/');
                target.push_str(rest);
            }
            _ => target.push_str(rest),
        }
        if target.is_empty() {
            target.push('/');
        }
        let queries: Vec<&str> = [base.query(), query]
            .into_iter()
            .flatten()
            .filter(|q| !q.is_empty())
            .collect();
        if !queries.is_empty() {
            target.push('?');
            target.push_str(&queries.join("&"));
        }
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, bool)]) -> ProxyTable {
        let entries: Vec<ProxyConfig> = entries
            .iter()
            .map(|(path, strip)| ProxyConfig {
                path: path.to_string(),
                upstreams: vec!["ws://127.0.0.1:1/chat".into()],
                strip_path: *strip,
                auth: None,
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(60),
                reconnect: false,
            })
            .collect();
        ProxyTable::from_config(&entries, false).unwrap().unwrap()
    }

    #[test]
    fn prefixes_match_at_segment_boundaries_longest_first() {
        let t = table(&[
            ("/ws/chat", true),
            ("/ws/chat/admin", true),
            ("/api/", true),
        ]);
        let find = |p: &str| t.find(p).map(|r| r.prefix.as_str());
        assert_eq!(find("/ws/chat"), Some("/ws/chat"));
        assert_eq!(find("/ws/chat/room1"), Some("/ws/chat"));
        assert_eq!(find("/ws/chat/admin/x"), Some("/ws/chat/admin"));
        assert_eq!(find("/ws/chatroom"), None);
        assert_eq!(find("/ws"), None);
        assert_eq!(find("/api"), Some("/api"));
        assert_eq!(find("/apix"), None);
    }

    #[test]
    fn upstream_paths_follow_kong() {
        let t = table(&[("/ws/chat", true), ("/keep", false)]);
        let base = Url::parse("ws://h:1/chat").unwrap();
        let strip = t.find("/ws/chat").unwrap();
        assert_eq!(
            strip.upstream_target(&base, "/ws/chat/room1", None),
            "/chat/room1"
        );
        assert_eq!(
            strip.upstream_target(&base, "/ws/chat", Some("a=1")),
            "/chat?a=1"
        );
        let keep = t.find("/keep").unwrap();
        assert_eq!(keep.upstream_target(&base, "/keep/x", None), "/chat/keep/x");
        let root = Url::parse("ws://h:1/?k=v").unwrap();
        assert_eq!(
            strip.upstream_target(&root, "/ws/chat/r", Some("a=1")),
            "/r?k=v&a=1"
        );
        assert_eq!(strip.upstream_target(&root, "/ws/chat", None), "/?k=v");
    }

    #[test]
    fn dot_segments_are_found_even_encoded() {
        assert!(has_dot_segment("/ws/chat/../admin"));
        assert!(has_dot_segment("/ws/chat/%2e%2E/admin"));
        assert!(has_dot_segment("/ws/chat/."));
        for sneaky in [
            "/ws/chat/..;/admin",
            "/ws/chat/..%2fadmin",
            "/ws/chat/%2e%2e%2fadmin",
            "/ws/chat/..\\admin",
            "/ws/chat/..%5cadmin",
        ] {
            assert!(has_dot_segment(sneaky), "{sneaky}");
        }
        assert!(!has_dot_segment("/ws/chat/a..b/.x/;p"));
    }

    #[test]
    fn bad_upstreams_are_refused_by_name() {
        for bad in [
            "http://h/x",
            "ws://",
            "ws://u:p@h/",
            "not a url",
            "ws://h/#f",
        ] {
            let err = parse_upstream(bad).unwrap_err();
            assert!(
                format!("{err:#}").contains("proxy.upstreams"),
                "{bad}: {err:#}"
            );
        }
    }
}
