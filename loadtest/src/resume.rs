//! Scenario `resume`: members of a retained room lose their connections under load and come
//! back with `since`; every offset must reach every member once.
//!
//! Members (in the workers, see [`crate::resumer`]) join a retained room; the publishers here
//! publish at a fixed rate. At `--drop-at` either the node given by `--drain-pid` is sent
//! SIGTERM (every member starts on the first `--url`, that node; they are closed with 1012,
//! as a drained node's are, and reconnect to the other `--url`s) or, without it, every member
//! drops its connection at once and reconnects to the next node. At the end each member's offsets are checked: gaps, duplicates, members
//! behind the last offset published, and the time from losing a connection to the rejoin's
//! ack (`recovered` or not).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::broadcast::{due, intended_ns, publish_frame};
use crate::cli::ResumeArgs;
use crate::client::{self, Target};
use crate::report::{self, ms, round, Outcome};
use crate::worker::{histogram, merge, now_ns};
use crate::{procstat, redis_stats};

/// Runs the scenario.
pub async fn run(args: ResumeArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.timeout();
    let common = &args.common;
    common.wsgate_only("resume")?;
    let pub_url = args
        .publisher_url
        .clone()
        .unwrap_or_else(|| common.urls[common.urls.len() - 1].clone());
    let pub_target =
        Target::resolve(&pub_url, common.token.as_deref(), common.ca.as_deref()).await?;
    let requested = args.members as usize;
    let (mut workers, ready) = report::start_members(
        common,
        requested,
        Some(&args.room),
        deadline,
        (true, args.drain_pid.is_some(), false),
    )
    .await?;
    if ready.connected == 0 {
        anyhow::bail!("no member connected: {}", ready.error.unwrap_or_default());
    }
    let n_pub = args.rate.div_ceil(50).max(1) as usize;
    let last_ack = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut sinks = Vec::new();
    let mut readers = Vec::new();
    for p in 0..n_pub {
        let (ws, _) = client::connect(&pub_target, usize::MAX / 2 + p)
            .await
            .context("opening a publisher connection")?;
        let (sink, mut stream) = ws.split();
        let (last_ack, errors) = (last_ack.clone(), errors.clone());
        readers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg {
                    if t.starts_with("{\"type\":\"ack\"") {
                        if let Some(o) = offset_in(&t) {
                            last_ack.fetch_max(o, Ordering::Relaxed);
                        }
                    } else if t.starts_with("{\"type\":\"error\"") {
                        errors.fetch_add(1, Ordering::Relaxed);
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
    let publish_until = deadline
        .checked_sub(args.grace)
        .unwrap_or_else(Instant::now);
    let cpu_before = procstat::cpu_total(&common.node_pids)?;
    let pb = report::bar(planned, "publishing");
    let start = Instant::now();
    let start_ns = now_ns();
    let mut dropped_at: Option<(Instant, u64)> = None;
    let mut sent = 0;
    for seq in 0..planned {
        let at = start + due(seq, args.rate);
        if at > publish_until {
            break;
        }
        if dropped_at.is_none() && at >= start + args.drop_at {
            dropped_at = Some((Instant::now(), now_ns()));
            match args.drain_pid {
                Some(pid) => {
                    let status = std::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status()
                        .context("sending SIGTERM to --drain-pid")?;
                    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
                }
                None => workers.tell("drop").await,
            }
        }
        tokio::time::sleep_until(at.into()).await;
        let frame = publish_frame(
            &args.room,
            seq,
            intended_ns(start_ns, seq, args.rate),
            args.size,
        );
        if sinks[seq as usize % n_pub]
            .send(Message::text(frame))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
        pb.set_position(sent);
    }
    pb.finish_and_clear();
    tokio::time::sleep_until((Instant::now() + args.grace).min(deadline).into()).await;
    let cpu = procstat::cpu_since(cpu_before, &common.node_pids);
    let redis = redis_stats::since(args.redis_url.as_deref(), redis_before).await;
    client::close_senders(readers, &mut sinks).await;
    let final_offset = last_ack.load(Ordering::Relaxed);
    let done = report::stop_with(workers, &format!("stop {final_offset}")).await;
    let counts = done.resume.clone().unwrap_or_default();
    let mut reconnect = histogram();
    merge(&mut reconnect, &counts.reconnect_us);
    let all_back_s = match dropped_at {
        Some((_, ns)) if counts.last_rejoin_ns > ns => {
            Some(round((counts.last_rejoin_ns - ns) as f64 / 1e9, 3))
        }
        _ => None,
    };
    let members = ready.connected as u64;
    let lat = &done.latency_us;

    let parameters = json!({
        "urls": common.urls,
        "publisher_url": pub_url,
        "members": requested,
        "room": args.room,
        "rate_per_second": args.rate,
        "duration_seconds": args.duration.as_secs_f64(),
        "data_bytes": args.size,
        "drop_at_seconds": args.drop_at.as_secs_f64(),
        "drain_pid": args.drain_pid,
        "node_pids": common.node_pids,
        "redis_url": args.redis_url,
        "workers": report::worker_count(common, requested),
    });
    let figures = json!({
        "members": members,
        "members_failed": ready.failed,
        "first_error": ready.error,
        "publishes": sent,
        "publish_errors": errors.load(Ordering::Relaxed),
        "final_offset": final_offset,
        "reconnects": counts.reconnects,
        "recovered": counts.recovered,
        "failed_attempts": counts.failed_attempts,
        "first_reconnect_error": counts.error,
        "gaps": counts.gaps,
        "duplicates": counts.duplicates,
        "members_behind": counts.behind,
        "reconnect_ms": {
            "p50": ms(&reconnect, 0.5),
            "p99": ms(&reconnect, 0.99),
            "max": ms(&reconnect, 1.0),
        },
        "all_back_seconds": all_back_s,
        "deliveries": done.received,
        "latency_ms": {"p50": ms(lat, 0.5), "p99": ms(lat, 0.99), "max": ms(lat, 1.0)},
        "node_cpu_seconds": cpu.map(|c| round(c, 3)),
        "redis_commands": redis,
        "workers_missing": done.workers_missing,
    });
    let summary = vec![
        (
            "members",
            format!("{members} in room {} ({} failed)", args.room, ready.failed),
        ),
        (
            "publishes",
            format!(
                "{sent} at {}/s, last offset {final_offset}, {} refused",
                args.rate,
                errors.load(Ordering::Relaxed)
            ),
        ),
        (
            "dropped",
            match (dropped_at, args.drain_pid) {
                (None, _) => "never (the run ended first)".into(),
                (Some((at, _)), Some(pid)) => {
                    format!("node {pid} drained at {:.1}s", (at - start).as_secs_f64())
                }
                (Some((at, _)), None) => {
                    format!("every member at {:.1}s", (at - start).as_secs_f64())
                }
            },
        ),
        (
            "rejoins",
            format!(
                "{} ({} recovered), {} failed attempts",
                counts.reconnects, counts.recovered, counts.failed_attempts
            ),
        ),
        (
            "offsets",
            format!(
                "{} gaps, {} duplicates, {} members behind at the end",
                counts.gaps, counts.duplicates, counts.behind
            ),
        ),
        (
            "back within",
            format!(
                "{} (reconnect p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
                all_back_s.map_or("-".to_owned(), |s| format!("{s:.2} s of the drop")),
                ms(&reconnect, 0.5),
                ms(&reconnect, 0.99),
                ms(&reconnect, 1.0)
            ),
        ),
        ("latency", report::latency_line(lat)),
        (
            "node CPU",
            cpu.map_or("not measured (--node-pid)".into(), |c| format!("{c:.2} s")),
        ),
    ];
    report::finish(
        Outcome {
            scenario: "resume",
            parameters,
            figures,
            summary,
            timeline: Some(done.timeline),
        },
        common.out.as_deref(),
    )
}

/// The `offset` of an ack.
fn offset_in(text: &str) -> Option<u64> {
    let key = "\"offset\":";
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}
