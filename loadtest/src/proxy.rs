//! `proxy`: clients that each send messages at a fixed rate to an echo server and time the
//! echoes. Pointed at wsgate's `[[proxy]]` path, at nginx proxying the same upstream, and at
//! the upstream itself, it measures what the proxy adds: round-trip latency, and the proxy
//! process's CPU per relayed message (each echo is two: one each way).
//!
//! `echo-upstream` is that upstream: a WebSocket echo server on one thread.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{EchoArgs, ProxyArgs};
use crate::client::source_for;
use crate::procstat;
use crate::worker::now_ns;

/// Small buffers on both ends: thousands of sockets in one process.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Serves WebSocket echo until killed.
pub async fn echo(args: EchoArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("echo upstream on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config())).await
            else {
                return;
            };
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if matches!(msg, Message::Close(_)) {
                    return;
                }
                let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                if echo && tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Counts shared by the clients.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    received: AtomicU64,
    failed: AtomicU64,
}

/// Runs the scenario and prints (and writes) its result.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let url = args.url.clone();
    let req = url.as_str().into_client_request().context("bad --url")?;
    let host = req.uri().host().context("URL has no host")?.to_owned();
    let port = req.uri().port_u16().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .context("--url does not resolve")?;

    // Connect everyone first.
    let mut sockets = Vec::with_capacity(args.clients as usize);
    for i in 0..args.clients as usize {
        let socket = TcpSocket::new_v4()?;
        if addr.ip().is_loopback() {
            socket.bind(SocketAddr::new(IpAddr::V4(source_for(i)), 0))?;
        }
        let tcp = socket.connect(addr).await.context("TCP connect")?;
        let _ = tcp.set_nodelay(true);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(ws_config()))
                .await
                .with_context(|| format!("WebSocket handshake with {url}"))?;
        sockets.push(ws);
    }
    eprintln!("{} clients connected to {url}", sockets.len());

    let counts = Arc::new(Counts::default());
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let stop = start + args.duration;
    let payload = "x".repeat(args.size.saturating_sub(24));
    let cpu_before = procstat::cpu_total(&args.common_pids)?;
    let self_before = procstat::cpu_seconds(std::process::id())?;
    let wall = Instant::now();
    let mut tasks = Vec::with_capacity(sockets.len());
    for (i, ws) in sockets.into_iter().enumerate() {
        let counts = counts.clone();
        let payload = payload.clone();
        // Clients start spread over one interval, so the load is even.
        let first = start + interval.mul_f64(i as f64 / args.clients as f64);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut tx, mut rx) = ws.split();
            let mut ticks = tokio::time::interval_at(first, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut seq = 0u64;
            let mut outstanding = 0u64;
            loop {
                tokio::select! {
                    _ = ticks.tick(), if tokio::time::Instant::now() < stop => {
                        let text = format!("{} {seq} {payload}", now_ns());
                        seq += 1;
                        if tx.send(Message::text(text)).await.is_err() {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        outstanding += 1;
                        counts.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    msg = rx.next() => match msg {
                        Some(Ok(Message::Text(t))) => {
                            if let Some(sent) = t.split(' ').next().and_then(|s| s.parse::<u64>().ok()) {
                                let _ = hist.record((now_ns().saturating_sub(sent) / 1000).max(1));
                            }
                            outstanding = outstanding.saturating_sub(1);
                            counts.received.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(_)) => {}
                        _ => {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    },
                    () = tokio::time::sleep_until(stop + Duration::from_secs(2)) => break,
                }
                if tokio::time::Instant::now() >= stop && outstanding == 0 {
                    break;
                }
            }
            let _ = tx.send(Message::Close(None)).await;
            hist
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        hist.add(t.await?)?;
    }
    let elapsed = wall.elapsed().as_secs_f64();
    let cpu_after = procstat::cpu_total(&args.common_pids)?;
    let self_cpu = procstat::cpu_seconds(std::process::id())? - self_before;
    let sent = counts.sent.load(Ordering::Relaxed);
    let received = counts.received.load(Ordering::Relaxed);
    let relayed = received * 2;
    let proxy_cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let result = serde_json::json!({
        "scenario": "proxy",
        "url": url,
        "clients": args.clients,
        "rate_per_client": args.rate,
        "size": args.size,
        "duration_s": args.duration.as_secs_f64(),
        "sent": sent,
        "echoed": received,
        "lost": sent.saturating_sub(received),
        "failed_connections": counts.failed.load(Ordering::Relaxed),
        "echoes_per_s": received as f64 / elapsed,
        "rtt_ms": { "p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": hist.max() as f64 / 1000.0 },
        "proxy_cpu_s": proxy_cpu,
        "proxy_cpu_us_per_relayed_message": proxy_cpu.map(|c| c * 1e6 / relayed.max(1) as f64),
        "harness_cpu_share": self_cpu / elapsed,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
