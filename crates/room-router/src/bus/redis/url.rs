//! The Redis URL forms of SPEC section 2, turned into a fred configuration.
//!
//! `redis://` and `rediss://` take their mode from `cluster.redis_mode` (a host list, or a
//! `/MASTER_NAME` path, is then allowed); `redis-cluster://h:p,h:p` and
//! `redis-sentinel://h:p,h:p/MASTER_NAME` (and their `rediss-` TLS forms) set the mode
//! themselves.

use fred::prelude::{Config, ServerConfig};
use percent_encoding::percent_decode_str;

/// How the bus reaches Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One server (or a primary behind a proxy).
    Standalone,
    /// Redis Cluster: rooms travel on shard channels (SSUBSCRIBE/SPUBLISH).
    Cluster,
    /// A primary found through Sentinel, asked again on every reconnect.
    Sentinel,
}

/// A parsed Redis URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// The mode, from the scheme or the configured default.
    pub mode: RedisMode,
    /// TLS to every server.
    pub tls: bool,
    /// Servers (sentinels in Sentinel mode).
    pub hosts: Vec<(String, u16)>,
    /// ACL user.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Database number (standalone and Sentinel).
    pub database: Option<u8>,
    /// Sentinel service (master) name.
    pub master: Option<String>,
}

/// Parses `url`; `mode` applies to `redis://` and `rediss://` URLs.
pub fn parse(url: &str, mode: RedisMode) -> Result<RedisTarget, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL (expected redis://host:port)"))?;
    let (mode, tls) = match scheme {
        "redis" => (mode, false),
        "rediss" => (mode, true),
        "redis-cluster" => (RedisMode::Cluster, false),
        "rediss-cluster" => (RedisMode::Cluster, true),
        "redis-sentinel" => (RedisMode::Sentinel, false),
        "rediss-sentinel" => (RedisMode::Sentinel, true),
        other => {
            return Err(format!(
                "unknown scheme {other:?} (redis, rediss, redis-cluster, rediss-cluster, redis-sentinel, rediss-sentinel)"
            ))
        }
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let (userinfo, hostlist) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    // Userinfo is percent-encoded in a URL: a generated password holding `/`, `+` or `@` is
    // written `%2F`, `%2B`, `%40`, and Redis must be sent the decoded text.
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (
                (!user.is_empty())
                    .then(|| decode(user, "user name"))
                    .transpose()?,
                Some(decode(pass, "password")?),
            ),
            None => (Some(decode(u, "user name")?), None),
        },
    };
    let hosts = hostlist
        .split(',')
        .filter(|h| !h.is_empty())
        .map(host_port)
        .collect::<Result<Vec<_>, String>>()?;
    if hosts.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let path = path.split('?').next().unwrap_or("");
    let (database, master) = match mode {
        RedisMode::Sentinel => {
            if path.is_empty() {
                return Err("a Sentinel URL needs /MASTER_NAME".into());
            }
            (None, Some(decode(path, "master name")?))
        }
        RedisMode::Cluster => (None, None),
        RedisMode::Standalone => {
            if hosts.len() > 1 {
                return Err("several hosts need redis_mode cluster or sentinel".into());
            }
            let db = if path.is_empty() {
                None
            } else {
                Some(
                    path.parse::<u8>()
                        .map_err(|_| format!("bad database {path:?}"))?,
                )
            };
            (db, None)
        }
    };
    Ok(RedisTarget {
        mode,
        tls,
        hosts,
        username,
        password,
        database,
        master,
    })
}

/// Percent-decodes one URL component.
fn decode(part: &str, what: &str) -> Result<String, String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("the {what} is not UTF-8 once percent-decoded"))
}

/// One `host[:port]` of the host list (IPv6 in brackets), parsed as a URL authority.
fn host_port(h: &str) -> Result<(String, u16), String> {
    let url = url::Url::parse(&format!("redis://{h}")).map_err(|e| match e {
        url::ParseError::InvalidPort => format!("bad port in {h:?}"),
        e => format!("bad host {h:?}: {e}"),
    })?;
    if url.path() != "" || url.username() != "" {
        return Err(format!("bad host {h:?}"));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("bad host {h:?}"))?;
    Ok((
        host.trim_matches(['[', ']']).to_owned(),
        url.port().unwrap_or(6379),
    ))
}

impl RedisTarget {
    /// The fred configuration (TLS is added by the caller).
    pub fn fred_config(&self) -> Config {
        let hosts: Vec<(String, u16)> = self.hosts.clone();
        let server = match self.mode {
            RedisMode::Standalone => ServerConfig::new_centralized(hosts[0].0.clone(), hosts[0].1),
            RedisMode::Cluster => ServerConfig::new_clustered(hosts),
            RedisMode::Sentinel => {
                ServerConfig::new_sentinel(hosts, self.master.clone().unwrap_or_default())
            }
        };
        Config {
            server,
            username: self.username.clone(),
            password: self.password.clone(),
            database: self.database,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_modes() {
        let t = parse("redis://127.0.0.1:7000", RedisMode::Standalone).unwrap();
        assert_eq!(
            (t.mode, t.tls, t.hosts.clone()),
            (
                RedisMode::Standalone,
                false,
                vec![("127.0.0.1".into(), 7000)]
            )
        );
        let t = parse("rediss-cluster://a:1,b:2,c:3", RedisMode::Standalone).unwrap();
        assert_eq!(
            (t.mode, t.tls, t.hosts.len()),
            (RedisMode::Cluster, true, 3)
        );
        let t = parse(
            "redis-sentinel://s1:26379,s2:26379/mymaster",
            RedisMode::Standalone,
        )
        .unwrap();
        assert_eq!(
            (t.mode, t.master.as_deref()),
            (RedisMode::Sentinel, Some("mymaster"))
        );
        let t = parse("redis://u:p@h1:1,h2:2", RedisMode::Cluster).unwrap();
        assert_eq!(
            (t.mode, t.username.as_deref(), t.password.as_deref()),
            (RedisMode::Cluster, Some("u"), Some("p"))
        );
        let t = parse("redis://:secret@h/2", RedisMode::Standalone).unwrap();
        assert_eq!(
            (t.username, t.password.as_deref(), t.database),
            (None, Some("secret"), Some(2))
        );
        let t = parse("rediss://h1:1/main", RedisMode::Sentinel).unwrap();
        assert_eq!(
            (t.mode, t.tls, t.master.as_deref()),
            (RedisMode::Sentinel, true, Some("main"))
        );
    }

    #[test]
    fn userinfo_and_master_are_percent_decoded() {
        let t = parse(
            "redis://us%40er:pa%2Fss%2Bw%3Ard@h:1",
            RedisMode::Standalone,
        )
        .unwrap();
        assert_eq!(
            (t.username.as_deref(), t.password.as_deref()),
            (Some("us@er"), Some("pa/ss+w:rd"))
        );
        let t = parse(
            "redis-sentinel://[::1]:26379/my%20master",
            RedisMode::Standalone,
        )
        .unwrap();
        assert_eq!(t.hosts, vec![("::1".to_owned(), 26379)]);
        assert_eq!(t.master.as_deref(), Some("my master"));
        assert!(parse("redis://:%FF@h", RedisMode::Standalone)
            .unwrap_err()
            .contains("not UTF-8"));
    }

    #[test]
    fn bad_urls_say_why() {
        assert!(parse("nonsense", RedisMode::Standalone)
            .unwrap_err()
            .contains("not a URL"));
        assert!(parse("http://h", RedisMode::Standalone)
            .unwrap_err()
            .contains("unknown scheme"));
        assert!(parse("redis://h:xx", RedisMode::Standalone)
            .unwrap_err()
            .contains("bad port"));
        assert!(parse("redis://a:1,b:2", RedisMode::Standalone)
            .unwrap_err()
            .contains("several hosts"));
        assert!(parse("redis-sentinel://a:1", RedisMode::Standalone)
            .unwrap_err()
            .contains("MASTER_NAME"));
    }
}
