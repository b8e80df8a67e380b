//! `gateway-node healthcheck`: asks a node's `/healthz` (or any plain-HTTP URL) and succeeds
//! on a 200. A container image has no curl to spare: its `HEALTHCHECK` runs the node's own
//! binary instead.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};

/// The time the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// GETs `url` (`http://host:port/path`); `Ok` on a 200 answer.
pub fn check(url: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(url).with_context(|| format!("bad URL {url:?}"))?;
    if url.scheme() != "http" {
        bail!("{url}: only http:// URLs are checked (the admin listener serves plain HTTP)");
    }
    let host = url.host_str().context("URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        url.path()
    );
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    // `Connection: close`: the answer ends with the stream (a status line is all we need).
    let _ = stream.take(4096).read_to_end(&mut answer);
    let head = String::from_utf8_lossy(&answer);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else if status.is_empty() {
        bail!("{url}: no answer")
    } else {
        bail!("{url}: {status}")
    }
}
