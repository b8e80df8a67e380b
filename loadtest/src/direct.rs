//! Scenario `direct`: `send`s to random connection ids across the nodes.
//!
//! Members (in the workers, in no room) report their connection ids; sender connections here,
//! spread over the `--url`s, send `{"action":"send","to":ID,...}` at a fixed total rate to
//! ids drawn at random, so most sends cross to another node through the affinity record and
//! the node's channel. Each `seq` goes to one member: deliveries, loss, duplicates and
//! send-to-delivery latency are counted as in `broadcast`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::broadcast::{due, intended_ns};
use crate::cli::DirectArgs;
use crate::client::{self, Target};
use crate::report::{self, ms, round, Outcome};
use crate::worker::now_ns;
use crate::{procstat, redis_stats};

/// The send frame for sequence `seq`: `data` is `{"seq":N,"t":SEND_NS,"pad":"xx…"}`.
fn send_frame(to: &str, seq: u64, sent_ns: u64, size: usize) -> String {
    let head = format!(r#"{{"seq":{seq},"t":{sent_ns},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    format!(
        r#"{{"action":"send","to":"{to}","data":{head}{}"}}}}"#,
        "x".repeat(pad)
    )
}

/// A small, fast generator for picking targets (xorshift64*): no dependency for a dice roll.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

/// Runs the scenario.
pub async fn run(args: DirectArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.timeout();
    let common = &args.common;
    common.wsgate_only("direct")?;
    let requested = args.members as usize;
    let (workers, ready) =
        report::start_members(common, requested, None, deadline, (false, false, true)).await?;
    anyhow::ensure!(
        !ready.ids.is_empty(),
        "no member connected: {}",
        ready.error.clone().unwrap_or_default()
    );
    let ids = ready.ids.clone();
    let n_senders = args.senders() as usize;
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let mut sinks = Vec::new();
    let mut readers = Vec::new();
    for s in 0..n_senders {
        let url = &common.urls[s % common.urls.len()];
        let target = Target::resolve(url, common.token.as_deref(), common.ca.as_deref()).await?;
        let (ws, _) = client::connect(&target, usize::MAX / 2 + s)
            .await
            .context("opening a sender connection")?;
        let (sink, mut stream) = ws.split();
        let (errors, first_error) = (errors.clone(), first_error.clone());
        readers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg {
                    if let Some((_, Err(e))) = client::answer(&t) {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    }
                }
            }
        }));
        sinks.push(sink);
    }
    let redis_before = match &args.redis_url {
        Some(u) => Some(redis_stats::commandstats(u).await?),
        None => None,
    };
    let planned = (f64::from(args.rate) * args.duration.as_secs_f64()).round() as u64;
    let send_until = deadline
        .checked_sub(args.grace)
        .unwrap_or_else(Instant::now);
    let cpu_before = procstat::cpu_total(&common.node_pids)?;
    let mut dice = Dice(now_ns() | 1);
    let pb = report::bar(planned, "sending");
    let start = Instant::now();
    let start_ns = now_ns();
    let mut sent = 0u64;
    let mut late_max = Duration::ZERO;
    for seq in 0..planned {
        let at = start + due(seq, args.rate);
        if at > send_until {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        late_max = late_max.max(at.elapsed());
        let to = &ids[dice.below(ids.len())];
        let frame = send_frame(to, seq, intended_ns(start_ns, seq, args.rate), args.size);
        if sinks[seq as usize % n_senders]
            .send(Message::text(frame))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
        if sent % 1024 == 0 {
            pb.set_position(sent);
        }
    }
    pb.finish_and_clear();
    let window_secs = sent as f64 / f64::from(args.rate);
    tokio::time::sleep_until((Instant::now() + args.grace).min(deadline).into()).await;
    let cpu = procstat::cpu_since(cpu_before, &common.node_pids);
    let redis = redis_stats::since(args.redis_url.as_deref(), redis_before).await;
    client::close_senders(readers, &mut sinks).await;
    let done = report::stop(workers).await;
    let lost = sent.saturating_sub(done.received);
    let lat = &done.latency_us;
    let rate = if window_secs > 0.0 {
        done.received as f64 / window_secs
    } else {
        0.0
    };
    let per_1000 = cpu
        .filter(|_| done.received > 0)
        .map(|c| c / (done.received as f64 / 1000.0));
    let refused = errors.load(Ordering::Relaxed);
    let parameters = json!({
        "urls": common.urls,
        "members": requested,
        "senders": n_senders,
        "rate_per_second": args.rate,
        "duration_seconds": args.duration.as_secs_f64(),
        "data_bytes": args.size,
        "node_pids": common.node_pids,
        "redis_url": args.redis_url,
    });
    let figures = json!({
        "members": ready.connected,
        "members_failed": ready.failed,
        "first_error": ready.error,
        "sends": sent,
        "sends_refused": refused,
        "first_refusal": first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        "send_late_max_ms": round(late_max.as_secs_f64() * 1000.0, 3),
        "delivered": done.received,
        "lost": lost,
        "duplicates": done.duplicates,
        "sends_per_second": rate.round(),
        "latency_ms": {"p50": ms(lat, 0.5), "p99": ms(lat, 0.99), "p999": ms(lat, 0.999), "max": ms(lat, 1.0)},
        "node_cpu_seconds": cpu.map(|c| round(c, 3)),
        "node_cpu_seconds_per_1000_sends": per_1000.map(|c| round(c, 6)),
        "redis_commands": redis,
        "redis_commands_per_send": redis.as_ref().map(|d| round(redis_stats::per_publish(d, sent), 3)),
        "workers_missing": done.workers_missing,
    });
    let summary = vec![
        (
            "members",
            format!("{} ({} failed)", ready.connected, ready.failed),
        ),
        (
            "sends",
            format!(
                "{sent} at {}/s over {n_senders} connection(s), {refused} refused",
                args.rate
            ),
        ),
        (
            "deliveries",
            format!(
                "{} of {sent}, {lost} lost, {} duplicates",
                done.received, done.duplicates
            ),
        ),
        ("sends/s", format!("{rate:.0}")),
        ("latency", report::latency_line(lat)),
        (
            "node CPU",
            match (cpu, per_1000) {
                (Some(c), Some(p)) => format!("{c:.2} s, {p:.5} s per 1,000 sends"),
                _ => "n/a (no --node-pid)".into(),
            },
        ),
    ];
    report::finish(
        Outcome {
            scenario: "direct",
            parameters,
            figures,
            summary,
            timeline: Some(done.timeline),
        },
        common.out.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_frames_are_json_with_the_target_and_sequence() {
        let f: serde_json::Value = serde_json::from_str(&send_frame("abc", 7, 99, 80)).unwrap();
        assert_eq!(f["action"], "send");
        assert_eq!(f["to"], "abc");
        assert_eq!(
            (f["data"]["seq"].as_u64(), f["data"]["t"].as_u64()),
            (Some(7), Some(99))
        );
        let mut d = Dice(1);
        let picks: std::collections::HashSet<usize> = (0..1000).map(|_| d.below(10)).collect();
        assert_eq!(picks.len(), 10, "every target gets picked");
    }
}
