//! Scenario `broadcast`: members in one room, publishers at a fixed total rate.
//!
//! Members live in the worker processes; the publishers live here, so the parent owns the
//! clock that spaces publishes and the window over which the node's CPU is read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::cli::BroadcastArgs;
use crate::client::Target;
use crate::dialect::{payload, Dialect};
use crate::publishers::{Answers, Failure, Publishers};
use crate::report::{self, ms, round, Outcome};
use crate::worker::now_ns;
use crate::{probe, procstat, redis_stats};

/// wsgate's publish frame for sequence `seq` (request id `seq + 1`): `data` is
/// `{"seq":N,"t":SEND_NS,"pad":"xx…"}`, padded to about `size` bytes.
pub fn publish_frame(room: &str, seq: u64, sent_ns: u64, size: usize) -> String {
    Dialect::Wsgate
        .publish_frame(room, seq + 1, &payload(seq, sent_ns, size))
        .expect("wsgate publishes over the socket")
}

/// Holds the members idle for `hold`: the nodes' CPU over it, their RSS per connection at
/// its end (growth over `rss_before`, the nodes before any member), Redis's commands per
/// second over it and its memory.
async fn hold_idle(
    hold: Duration,
    pids: &[u32],
    rss_before: Option<u64>,
    members: usize,
    redis_url: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let redis_before = match redis_url {
        Some(u) => Some(redis_stats::commandstats(u).await?),
        None => None,
    };
    let cpu_before = procstat::cpu_total(pids)?;
    let pb = report::bar(hold.as_secs(), "idle hold");
    let start = Instant::now();
    while start.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(250).min(hold - start.elapsed())).await;
        pb.set_position(start.elapsed().as_secs());
    }
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let cpu = procstat::cpu_since(cpu_before, pids);
    let rss = procstat::at_end("RSS", procstat::rss_total(pids));
    let redis = redis_stats::since(redis_url, redis_before).await;
    let redis_memory = match redis_url {
        Some(u) => redis_stats::used_memory(u).await.ok(),
        None => None,
    };
    let per_conn = |total: u64| total as f64 / members.max(1) as f64 / 1024.0;
    Ok(json!({
        "seconds": round(secs, 2),
        "node_cpu_share_of_a_core": cpu.map(|c| round(c / secs, 4)),
        "node_rss_kib": rss.map(|b| b / 1024),
        "node_rss_kib_per_connection": rss.map(|b| round(per_conn(b), 2)),
        "node_rss_growth_kib_per_connection": rss
            .zip(rss_before)
            .map(|(a, b)| round(per_conn(a.saturating_sub(b)), 2)),
        "redis_commands_per_second": redis
            .as_ref()
            .map(|d| round(d.values().sum::<u64>() as f64 / secs, 1)),
        "redis_commands": redis,
        "redis_used_memory_kib": redis_memory.map(|b| b / 1024),
    }))
}

/// The summary line of an idle hold.
fn idle_line(i: &serde_json::Value) -> String {
    format!(
        "{} s: node CPU {} of a core, RSS {} KiB per connection ({} KiB growth), Redis {} commands/s, {} KiB",
        i["seconds"],
        i["node_cpu_share_of_a_core"],
        i["node_rss_kib_per_connection"],
        i["node_rss_growth_kib_per_connection"],
        i["redis_commands_per_second"],
        i["redis_used_memory_kib"],
    )
}

/// When publish `seq` was due, in ns since the epoch (`start_ns` the schedule's start): the
/// time its latency is measured from. Stamping the intended time rather than the actual send
/// corrects for coordinated omission: a publisher held up (by a full socket, a slow gateway)
/// makes the publishes it sends late count as late, as wrk2 does.
pub fn intended_ns(start_ns: u64, seq: u64, rate: u32) -> u64 {
    start_ns + due(seq, rate).as_nanos() as u64
}

/// When publish `seq` is due, from the start of publishing: an absolute schedule, so a late
/// send does not shift the ones after it (and latency is measured from the real send time).
pub fn due(seq: u64, rate: u32) -> Duration {
    Duration::from_secs_f64(seq as f64 / f64::from(rate.max(1)))
}

/// Runs the scenario.
pub async fn run(args: BroadcastArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.timeout();
    let common = &args.common;
    if args.probe_interval.is_some() || args.churn > 0 {
        common.wsgate_only("--probe-interval and --churn")?;
    }
    let pids = &common.node_pids;
    let pub_url = args
        .publisher_url
        .clone()
        .unwrap_or_else(|| common.urls[0].clone());
    let pub_target = Target::resolve_as(
        &pub_url,
        common.token.as_deref(),
        common.ca.as_deref(),
        common.dialect,
    )
    .await?;
    let requested = args.members as usize;
    let rss_before = procstat::rss_total(pids)?;
    let (workers, ready) = report::start(common, requested, Some(&args.room), deadline).await?;
    if ready.connected == 0 {
        anyhow::bail!("no member connected: {}", ready.error.unwrap_or_default());
    }
    let idle = match args.hold_idle {
        Some(hold) => Some(
            hold_idle(
                hold.min(deadline.saturating_duration_since(Instant::now())),
                pids,
                rss_before,
                ready.connected,
                args.redis_url.as_deref(),
            )
            .await?,
        ),
        None => None,
    };

    let n_pub = args.publishers() as usize;
    let answers = Arc::new(Answers::default());
    let mut publishers = Publishers::open(&pub_target, n_pub, &args.pusher_app, &answers).await?;

    let redis_before = match &args.redis_url {
        Some(u) => Some(redis_stats::commandstats(u).await?),
        None => None,
    };
    let planned = (f64::from(args.rate) * args.duration.as_secs_f64()).round() as u64;
    // Publishing stops early when the run would not otherwise end (with its grace) in time.
    let publish_until = deadline
        .checked_sub(args.grace)
        .unwrap_or_else(Instant::now);
    let mut timed_out = false;
    let mut publisher_failure = None;
    let mut late_max = Duration::ZERO;
    let pb = report::bar(planned, "publishing");
    let side = probe::Side::start(
        &pub_target,
        &args.room,
        args.probe_interval,
        args.churn,
        usize::MAX / 4,
    )
    .await
    .context("opening the probe and churn connections")?;
    let cpu_before = procstat::cpu_total(pids)?;
    // The members' own processes: at high rates the harness, not the node, may be the limit.
    let worker_pids = workers.pids();
    let harness_before = procstat::cpu_total(&worker_pids).ok().flatten();
    let measured_from = Instant::now();
    let start = Instant::now();
    let start_ns = now_ns();
    let mut sent = 0u64;
    for seq in 0..planned {
        let at = start + due(seq, args.rate);
        if at > publish_until {
            timed_out = true;
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        late_max = late_max.max(at.elapsed());
        let data = payload(seq, intended_ns(start_ns, seq, args.rate), args.size);
        match publishers
            .publish(&args.room, seq, &data, publish_until, &answers)
            .await
        {
            Ok(()) => sent += 1,
            Err(Failure::Broken(e)) => {
                publisher_failure = Some(e);
                break;
            }
            Err(Failure::TimedOut) => {
                timed_out = true;
                break;
            }
        }
        pb.set_position(sent);
    }
    pb.finish_and_clear();
    let side = side.stop().await;
    // The offered window: `sent` publishes at `rate` per second.
    let window_secs = sent as f64 / f64::from(args.rate);
    tokio::time::sleep_until((Instant::now() + args.grace).min(deadline).into()).await;
    let harness_cpu = procstat::cpu_since(harness_before, &worker_pids);
    // The share of a core each worker used while CPU was measured (publishing and grace).
    let measured_secs = measured_from.elapsed().as_secs_f64();
    let harness_share = harness_cpu
        .filter(|_| measured_secs > 0.0)
        .map(|c| c / measured_secs / worker_pids.len().max(1) as f64);
    let cpu = procstat::cpu_since(cpu_before, pids);
    let rss = procstat::at_end("RSS", procstat::rss_total(pids));
    let redis = redis_stats::since(args.redis_url.as_deref(), redis_before).await;
    publishers.close().await;
    let done = report::stop(workers).await;

    let members = ready.connected as u64;
    let expected = sent * members;
    let lost = expected.saturating_sub(done.received);
    let per_1000 = cpu
        .filter(|_| done.received > 0)
        .map(|c| c / (done.received as f64 / 1000.0));
    let lat = &done.latency_us;
    let rate = if window_secs > 0.0 {
        done.received as f64 / window_secs
    } else {
        0.0
    };
    // What the gateway kept up: deliveries over the seconds they actually arrived in (first
    // to last). Under overload, deliveries trail on after publishing stops and the rate over
    // the publishing window overstates it.
    let arrival_secs = done.timeline.span_secs() as f64;
    let sustained = if arrival_secs > 0.0 {
        done.received as f64 / arrival_secs.max(window_secs)
    } else {
        0.0
    };
    let redis_per_publish = redis
        .as_ref()
        .map(|d| round(redis_stats::per_publish(d, sent), 3));
    let redis_publish_per_publish = redis
        .as_ref()
        .map(|d| round(redis_stats::publishes_per_publish(d, sent), 3));
    let acks = answers.acks.load(Ordering::Relaxed);
    let errors = answers.errors.load(Ordering::Relaxed);
    let publish_error = answers.first_error().or(publisher_failure);

    let parameters = json!({
        "hold_idle_seconds": args.hold_idle.map(|d| d.as_secs_f64()),
        "dialect": common.dialect,
        "urls": common.urls,
        "publisher_url": pub_url,
        "publishers": n_pub,
        "members": requested,
        "room": args.room,
        "rate_per_second": args.rate,
        "duration_seconds": args.duration.as_secs_f64(),
        "data_bytes": args.size,
        "grace_seconds": args.grace.as_secs_f64(),
        "node_pids": pids,
        "redis_url": args.redis_url,
        "probe_interval_ms": args.probe_interval.map(|d| d.as_millis() as u64),
        "churn": args.churn,
        "workers": report::worker_count(common, requested),
        "connect_concurrency": common.connect_concurrency,
        "timeout_seconds": args.timeout().as_secs_f64(),
    });
    let figures = json!({
        "members": members,
        "members_failed": ready.failed,
        "first_error": ready.error,
        "members_disconnected": done.disconnected,
        "first_disconnect": done.first_disconnect,
        "publishes_planned": planned,
        "publishes": sent,
        "publish_acks": acks,
        "publish_errors": errors,
        "first_publish_error": publish_error,
        "publish_late_max_ms": round(late_max.as_secs_f64() * 1000.0, 3),
        "publishing_seconds": round(window_secs, 3),
        "expected_deliveries": expected,
        "delivered": done.received,
        "lost": lost,
        "duplicates": done.duplicates,
        "deliveries_per_second": rate.round(),
        "deliveries_per_second_sustained": sustained.round(),
        "latency_ms": {
            "p50": ms(lat, 0.5),
            "p99": ms(lat, 0.99),
            "p999": ms(lat, 0.999),
            "max": ms(lat, 1.0),
        },
        "probe_ping_ms": (args.probe_interval.is_some()).then(|| json!({
            "count": side.ping_us.len(),
            "lost": side.ping_lost,
            "p50": ms(&side.ping_us, 0.5),
            "p99": ms(&side.ping_us, 0.99),
            "max": ms(&side.ping_us, 1.0),
        })),
        "churn_join_ms": (args.churn > 0).then(|| json!({
            "cycles": side.churn_cycles,
            "p50": ms(&side.join_us, 0.5),
            "p99": ms(&side.join_us, 0.99),
            "max": ms(&side.join_us, 1.0),
        })),
        "node_cpu_seconds": cpu.map(|c| round(c, 3)),
        "harness_cpu_seconds": harness_cpu.map(|c| round(c, 3)),
        "harness_cpu_share_per_worker": harness_share.map(|c| round(c, 3)),
        "node_cpu_seconds_per_1000_deliveries": per_1000.map(|c| round(c, 6)),
        "node_rss_kib": rss.map(|b| b / 1024),
        "redis_commands": redis,
        "redis_commands_per_publish": redis_per_publish,
        "redis_publish_commands_per_publish": redis_publish_per_publish,
        "idle": idle,
        "timed_out": timed_out,
        "workers_missing": done.workers_missing,
    });

    let mut summary = vec![
        (
            "members",
            format!(
                "{members} in room {} ({} failed, {} dropped)",
                args.room, ready.failed, done.disconnected
            ),
        ),
        (
            "publishes",
            format!(
                "{sent} of {planned} at {}/s over {n_pub} connection(s), {acks} acked, {errors} refused",
                args.rate
            ),
        ),
        (
            "deliveries",
            format!(
                "{} of {expected} expected, {lost} lost, {} duplicates",
                done.received, done.duplicates
            ),
        ),
        (
            "deliveries/s",
            format!("{rate:.0} over the publishing window, {sustained:.0} over the seconds they arrived in"),
        ),
        ("latency", report::latency_line(lat)),
        (
            "probe ping",
            if args.probe_interval.is_some() {
                format!(
                    "{} pings ({} lost): {}",
                    side.ping_us.len(),
                    side.ping_lost,
                    report::latency_line(&side.ping_us)
                )
            } else {
                "off (--probe-interval)".into()
            },
        ),
        (
            "churn joins",
            if args.churn > 0 {
                format!(
                    "{} join/leave cycles: {}",
                    side.churn_cycles,
                    report::latency_line(&side.join_us)
                )
            } else {
                "off (--churn)".into()
            },
        ),
        (
            "node CPU",
            match (cpu, per_1000) {
                (Some(c), Some(p)) => format!("{c:.2} s, {p:.5} s per 1,000 deliveries"),
                (Some(c), None) => format!("{c:.2} s"),
                _ => "n/a (no --node-pid)".into(),
            },
        ),
        (
            "node RSS",
            rss.map_or("n/a".into(), |b| format!("{} KiB", b / 1024)),
        ),
        (
            "harness CPU",
            match (harness_cpu, harness_share) {
                // Its members' processes; near a whole core each, they are the limit.
                (Some(c), Some(share)) => format!(
                    "{c:.2} s, {:.0} % of a core per worker{}",
                    100.0 * share,
                    if share > 0.9 {
                        " (the harness is at its limit)"
                    } else {
                        ""
                    }
                ),
                _ => "n/a".into(),
            },
        ),
    ];
    if let Some(i) = &idle {
        summary.push(("idle hold", idle_line(i)));
    }
    if let (Some(all), Some(publishes)) = (redis_per_publish, redis_publish_per_publish) {
        summary.push((
            "Redis per publish",
            format!("{publishes:.2} (S)PUBLISH, {all:.2} commands with upkeep"),
        ));
    }
    for (label, e) in [
        ("first error", &ready.error),
        ("first drop", &done.first_disconnect),
        ("publish error", &publish_error),
    ] {
        if let Some(e) = e {
            summary.push((label, e.clone()));
        }
    }
    if timed_out {
        summary.push(("TIMED OUT", "publishing cut short by --timeout".into()));
    }
    if done.workers_missing > 0 {
        summary.push((
            "INCOMPLETE",
            format!("{} worker(s) gave no final counts", done.workers_missing),
        ));
    }
    report::finish(
        Outcome {
            scenario: "broadcast",
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
    use crate::worker::parse_delivery;

    #[test]
    fn publish_frames_are_json_of_the_requested_size() {
        let f = publish_frame("bench", 3, 1_700_000_000_000_000_000, 100);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["action"], "publish");
        assert_eq!(v["data"]["seq"], 3);
        assert_eq!(v["id"], 4);
        assert_eq!(v["exclude_self"], true);
        let data_len = v["data"].to_string().len();
        assert!((95..=105).contains(&data_len), "{data_len}");
        // Tiny sizes and odd room names still make valid frames.
        let v: serde_json::Value = serde_json::from_str(&publish_frame("a\"b", 0, 1, 0)).unwrap();
        assert_eq!(v["room"], "a\"b");
    }

    #[test]
    fn delivered_data_parses_back() {
        let f = publish_frame("bench", 42, 1_700_000_000_123_456_789, 100);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        // What a member receives: the node passes `data` through.
        let delivered = format!(
            r#"{{"type":"message","room":"bench","data":{},"from":"c1"}}"#,
            v["data"]
        );
        assert_eq!(
            parse_delivery(&delivered),
            Some((42, 1_700_000_000_123_456_789))
        );
    }

    #[test]
    fn schedule_is_absolute() {
        assert_eq!(due(0, 10), Duration::ZERO);
        assert_eq!(due(15, 10), Duration::from_millis(1500));
        assert_eq!(due(200_000, 10_000), Duration::from_secs(20));
        // Latency counts from the schedule, however late the send.
        assert_eq!(intended_ns(1_000, 3, 1_000), 1_000 + 3_000_000);
    }
}
