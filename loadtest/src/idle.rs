//! Scenario `idle`: hold many connections; connect rate and node RSS per connection.
//!
//! The node's RSS is read before the first connection and at the end of the hold, with every
//! connection still open, so the difference is what idle connections cost the node.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::IdleArgs;
use crate::procstat;
use crate::report::{self, ms, round, Outcome};

/// Runs the scenario.
pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.timeout();
    let pids = &args.common.node_pids;
    let rss_before = procstat::rss_total(pids)?;
    let requested = args.connections as usize;
    let connect_start = Instant::now();
    let (workers, ready) = report::start(&args.common, requested, None, deadline).await?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    if ready.connected == 0 {
        anyhow::bail!(
            "no connection succeeded: {}",
            ready.error.unwrap_or_default()
        );
    }

    let hold_end = (Instant::now() + args.hold).min(deadline);
    let timed_out = hold_end == deadline;
    let pb = report::bar(args.hold.as_secs(), "holding");
    let hold_start = Instant::now();
    while Instant::now() < hold_end {
        let step = hold_end.min(Instant::now() + Duration::from_millis(250));
        tokio::time::sleep_until(step.into()).await;
        pb.set_position(hold_start.elapsed().as_secs());
    }
    pb.finish_and_clear();
    let held_secs = hold_start.elapsed().as_secs_f64();
    let rss_after = procstat::at_end("RSS", procstat::rss_total(pids));
    let done = report::stop(workers).await;

    let growth_kib = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(round(
            (a as f64 - b as f64) / ready.connected as f64 / 1024.0,
            2,
        )),
        _ => None,
    };
    let rate = ready.connected as f64 / connect_secs;
    let h = &ready.connect_us;
    let quantile_us = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
    let parameters = json!({
        "urls": args.common.urls,
        "connections": requested,
        "hold_seconds": args.hold.as_secs_f64(),
        "node_pids": pids,
        "workers": report::worker_count(&args.common, requested),
        "connect_concurrency": args.common.connect_concurrency,
        "timeout_seconds": args.timeout().as_secs_f64(),
    });
    let figures = json!({
        "connections_requested": requested,
        "connections_established": ready.connected,
        "connections_failed": ready.failed,
        "first_error": ready.error,
        "connections_dropped_during_hold": done.disconnected,
        "first_drop": done.first_disconnect,
        "connect_seconds": round(connect_secs, 3),
        "connects_per_second": rate.round(),
        "connect_latency_us": {
            "p50": quantile_us(0.5),
            "p99": quantile_us(0.99),
            "max": quantile_us(1.0),
        },
        "held_seconds": round(held_secs, 3),
        "node_rss_before_kib": rss_before.map(|b| b / 1024),
        "node_rss_after_kib": rss_after.map(|b| b / 1024),
        "rss_growth_kib_per_connection": growth_kib,
        "timed_out": timed_out,
        "workers_missing": done.workers_missing,
    });
    let kib = |b: Option<u64>| b.map_or("n/a".to_owned(), |b| format!("{} KiB", b / 1024));
    let mut summary = vec![
        (
            "connections",
            format!(
                "{} established of {requested} ({} failed)",
                ready.connected, ready.failed
            ),
        ),
        (
            "connect",
            format!(
                "{connect_secs:.2} s, {rate:.0} connections/s, p50 {:.2} ms, p99 {:.2} ms",
                ms(h, 0.5),
                ms(h, 0.99)
            ),
        ),
        (
            "held",
            format!("{held_secs:.1} s, {} dropped", done.disconnected),
        ),
        ("node RSS before", kib(rss_before)),
        ("node RSS after", kib(rss_after)),
        (
            "RSS per connection",
            growth_kib.map_or("n/a (no --node-pid)".into(), |g| format!("{g:.2} KiB")),
        ),
    ];
    if let Some(e) = &ready.error {
        summary.push(("first error", e.clone()));
    }
    if let Some(e) = &done.first_disconnect {
        summary.push(("first drop", e.clone()));
    }
    if timed_out {
        summary.push(("TIMED OUT", "hold cut short by --timeout".into()));
    }
    if done.workers_missing > 0 {
        summary.push((
            "INCOMPLETE",
            format!("{} worker(s) gave no final counts", done.workers_missing),
        ));
    }
    report::finish(
        Outcome {
            scenario: "idle",
            parameters,
            figures,
            summary,
            timeline: None,
        },
        args.common.out.as_deref(),
    )
}
