//! `INFO commandstats` over a plain RESP connection, to count Redis work per publish in
//! cluster runs. A hand-written request keeps a Redis client library out of the harness.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Limit on connecting to Redis and on reading its answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `host:port` of a `redis://host[:port][/db]` URL. Passwords and TLS are not supported.
pub fn host_port(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("redis://")
        .context("only redis:// URLs are supported by --redis-url")?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        bail!("--redis-url: passwords are not supported");
    }
    if authority.is_empty() {
        bail!("--redis-url has no host");
    }
    Ok(if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:6379")
    })
}

/// Calls per command, from `INFO commandstats`.
pub async fn commandstats(url: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    parse(&info(url, "commandstats").await?)
}

/// Bytes Redis has allocated (`used_memory` of `INFO memory`).
pub async fn used_memory(url: &str) -> anyhow::Result<u64> {
    let text = info(url, "memory").await?;
    text.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO memory")
}

/// The text of `INFO section`.
async fn info(url: &str, section: &str) -> anyhow::Result<String> {
    let hostport = host_port(url)?;
    tokio::time::timeout(TIMEOUT, async {
        let mut conn = tokio::net::TcpStream::connect(&hostport)
            .await
            .with_context(|| format!("connecting to Redis at {hostport}"))?;
        let command = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
        conn.write_all(command.as_bytes()).await?;
        let mut rd = BufReader::new(conn);
        let mut header = String::new();
        rd.read_line(&mut header).await?;
        let len = bulk_len(&header)?;
        let mut body = vec![0; len + 2];
        rd.read_exact(&mut body).await?;
        Ok(String::from_utf8_lossy(&body[..len]).into_owned())
    })
    .await
    .with_context(|| format!("Redis at {hostport} did not answer INFO in time"))?
}

/// The length announced by a RESP bulk string header (`$123\r\n`); a RESP error (`-ERR ...`)
/// becomes an error.
pub fn bulk_len(header: &str) -> anyhow::Result<usize> {
    let header = header.trim_end();
    if let Some(err) = header.strip_prefix('-') {
        bail!("Redis answered: {err}");
    }
    header
        .strip_prefix('$')
        .with_context(|| format!("expected a bulk string from Redis, got {header:?}"))?
        .parse()
        .with_context(|| format!("bad bulk length {header:?}"))
}

/// Parses `cmdstat_publish:calls=3,usec=...` lines.
pub fn parse(info: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let (name, fields) = rest.split_once(':').context("bad commandstats line")?;
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .context("no calls= field")?
            .parse()?;
        out.insert(name.to_owned(), calls);
    }
    Ok(out)
}

/// The commands Redis ran since `before` (a [`commandstats`] reading of `url`); `None` without
/// one, or when Redis cannot be read now (said on stderr: the run's other figures stand).
pub async fn since(
    url: Option<&str>,
    before: Option<BTreeMap<String, u64>>,
) -> Option<BTreeMap<String, u64>> {
    let (url, before) = (url?, before?);
    match commandstats(url).await {
        Ok(after) => Some(delta(&before, &after)),
        Err(e) => {
            eprintln!("wsgate-loadtest: reading Redis stats at the end: {e:#}");
            None
        }
    }
}

/// Per-command differences `after - before`, without zero rows.
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Commands per publish in a delta, leaving out the harness's own `INFO`.
pub fn per_publish(delta: &BTreeMap<String, u64>, publishes: u64) -> f64 {
    let total: u64 = delta
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .map(|(_, v)| v)
        .sum();
    total as f64 / publishes.max(1) as f64
}

/// `PUBLISH` and `SPUBLISH` calls per publish: the fan-out's own Redis work, O(nodes with
/// members) and not O(members), apart from periodic upkeep (affinity, heartbeats).
pub fn publishes_per_publish(delta: &BTreeMap<String, u64>, publishes: u64) -> f64 {
    let total: u64 = ["publish", "spublish"]
        .iter()
        .filter_map(|k| delta.get(*k))
        .sum();
    total as f64 / publishes.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_commands_are_counted_apart_from_upkeep() {
        let d: BTreeMap<String, u64> = [
            ("publish", 990),
            ("spublish", 10),
            ("set", 2000),
            ("info", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(publishes_per_publish(&d, 1000), 1.0);
        assert_eq!(per_publish(&d, 1000), 3.0);
    }

    #[test]
    fn parses_commandstats() {
        let info = "# Commandstats\r\ncmdstat_publish:calls=10,usec=5,usec_per_call=0.5,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=2,usec=1\r\n";
        let m = parse(info).unwrap();
        assert_eq!(m["publish"], 10);
        let mut later = m.clone();
        later.insert("publish".into(), 25);
        later.insert("info".into(), 3);
        let d = delta(&m, &later);
        assert_eq!(
            d,
            BTreeMap::from([("info".to_string(), 1), ("publish".to_string(), 15)])
        );
        assert_eq!(per_publish(&d, 5), 3.0);
        assert!(parse("# Commandstats\r\n").unwrap().is_empty());
    }

    #[test]
    fn parses_reply_headers_and_urls() {
        assert_eq!(bulk_len("$1234\r\n").unwrap(), 1234);
        let e = bulk_len("-NOAUTH Authentication required.\r\n").unwrap_err();
        assert!(e.to_string().contains("NOAUTH"));
        assert!(bulk_len("+OK\r\n").is_err());
        assert_eq!(
            host_port("redis://127.0.0.1:6390").unwrap(),
            "127.0.0.1:6390"
        );
        assert_eq!(host_port("redis://localhost/0").unwrap(), "localhost:6379");
        assert!(host_port("redis://:pw@h:1").is_err());
        assert!(host_port("rediss://h:1").is_err());
    }
}
