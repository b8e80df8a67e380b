//! Spawning workers, gathering their reports, and printing results.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::cli::Common;
use crate::timeline::Timeline;
use crate::worker::{histogram, merge, Job, Report};

/// Connections per worker process when `--workers` is not given: well under the 20,000
/// files one process may hold here.
const CONNECTIONS_PER_WORKER: usize = 6000;

/// How long workers get, after being told to stop, to report their final counts.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Something a worker's stdout said, or that it ended.
enum Event {
    Line(usize, Report),
    Gone(usize, String),
}

/// The running worker processes. Dropping it kills them.
pub struct Workers {
    children: Vec<(Child, ChildStdin)>,
    events: mpsc::Receiver<Event>,
}

/// What all workers reported once connected.
#[derive(Debug)]
pub struct Ready {
    /// Connections established.
    pub connected: usize,
    /// Attempts that failed (including those of workers that died or never reported).
    pub failed: usize,
    /// Connect latency (µs).
    pub connect_us: Histogram<u64>,
    /// First error any worker saw.
    pub error: Option<String>,
    /// The members' connection ids, when asked for.
    pub ids: Vec<String>,
}

/// What all workers reported at the end.
#[derive(Debug)]
pub struct Done {
    /// Unique deliveries.
    pub received: u64,
    /// Duplicate deliveries.
    pub duplicates: u64,
    /// Connections that ended before the harness closed them.
    pub disconnected: u64,
    /// Why the first of those ended.
    pub first_disconnect: Option<String>,
    /// Publish-to-delivery latency (µs), from when each publish was due.
    pub latency_us: Histogram<u64>,
    /// Deliveries and latency per second, every worker's merged.
    pub timeline: Timeline,
    /// Workers that gave no final report (their counts are missing).
    pub workers_missing: usize,
    /// What `resume` members counted, all workers together.
    pub resume: Option<crate::resumer::Counts>,
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Worker processes for `total` connections: `--workers`, or one per
/// [`CONNECTIONS_PER_WORKER`], never more than there are connections.
pub fn worker_count(common: &Common, total: usize) -> usize {
    common
        .workers
        .map_or(total.div_ceil(CONNECTIONS_PER_WORKER), |w| w as usize)
        .clamp(1, total.max(1))
}

/// Splits `total` connections over `workers` processes: (first index, count) per worker.
pub fn shares(total: usize, workers: usize) -> Vec<(usize, usize)> {
    let n = workers.clamp(1, total.max(1));
    let mut first = 0;
    (0..n)
        .map(|w| {
            let count = total / n + usize::from(w < total % n);
            first += count;
            (first - count, count)
        })
        .collect()
}

/// Starts worker processes for `total` connections (joining `room` when given) and waits
/// until each has reported `ready` or died, or until `deadline`.
pub async fn start(
    common: &Common,
    total: usize,
    room: Option<&str>,
    deadline: Instant,
) -> anyhow::Result<(Workers, Ready)> {
    start_members(common, total, room, deadline, (false, false, false)).await
}

/// [`start`], with `resume` members when asked (see [`crate::resumer`]), all starting on
/// the first URL when `start_first`, and reporting their connection ids when `report_ids`.
pub async fn start_members(
    common: &Common,
    total: usize,
    room: Option<&str>,
    deadline: Instant,
    (resume, start_first, report_ids): (bool, bool, bool),
) -> anyhow::Result<(Workers, Ready)> {
    let plan = shares(total, worker_count(common, total));
    let exe = std::env::current_exe().context("finding the harness executable")?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    let (tx, events) = mpsc::channel(256);
    let mut children = Vec::new();
    for (i, &(first, count)) in plan.iter().enumerate() {
        let job = Job {
            urls: common.urls.clone(),
            token: common.token.clone(),
            ca: common.ca.clone(),
            first,
            count,
            concurrency: common.connect_concurrency as usize,
            room: room.map(str::to_owned),
            connect_ms: remaining.as_millis() as u64,
            hard_ms: (remaining + COLLECT_TIMEOUT * 2).as_millis() as u64,
            resume,
            start_first,
            report_ids,
            dialect: common.dialect,
        };
        let mut child = tokio::process::Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        stdin
            .write_all(format!("{}\n", serde_json::to_string(&job)?).as_bytes())
            .await
            .context("sending a worker its job")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let why = loop {
                match lines.next_line().await {
                    Ok(Some(line)) => match serde_json::from_str::<Report>(&line) {
                        Ok(r) => {
                            if tx.send(Event::Line(i, r)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => break format!("worker {i} wrote {line:?}: {e}"),
                    },
                    Ok(None) => break format!("worker {i} exited"),
                    Err(e) => break format!("reading worker {i}: {e}"),
                }
            };
            let _ = tx.send(Event::Gone(i, why)).await;
        });
        children.push((child, stdin));
    }
    let mut workers = Workers { children, events };

    let pb = bar(total as u64, "connecting");
    let mut ready = Ready {
        connected: 0,
        failed: 0,
        connect_us: histogram(),
        error: None,
        ids: Vec::new(),
    };
    let mut progress = vec![0usize; plan.len()];
    let mut pending = vec![true; plan.len()];
    // Workers stop connecting at the deadline; a little slack for their last report.
    let wait_until = deadline + Duration::from_secs(5);
    while pending.contains(&true) {
        let event = match tokio::time::timeout_at(wait_until.into(), workers.events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) | Err(_) => break,
        };
        match event {
            Event::Line(i, Report::Progress { connected, .. }) => progress[i] = connected,
            Event::Line(
                i,
                Report::Ready {
                    connected,
                    failed,
                    connect_us,
                    error,
                    ids,
                },
            ) if pending[i] => {
                pending[i] = false;
                progress[i] = connected;
                ready.ids.extend(ids);
                ready.connected += connected;
                ready.failed += failed;
                merge(&mut ready.connect_us, &connect_us);
                ready.error = ready.error.or(error);
            }
            Event::Gone(i, why) if pending[i] => {
                pending[i] = false;
                progress[i] = 0;
                ready.failed += plan[i].1;
                ready.error = ready.error.or(Some(why));
            }
            Event::Line(..) | Event::Gone(..) => {}
        }
        pb.set_position(progress.iter().sum::<usize>() as u64);
    }
    for (i, _) in pending.iter().enumerate().filter(|(_, p)| **p) {
        ready.failed += plan[i].1;
        ready
            .error
            .get_or_insert_with(|| format!("worker {i} did not report in time"));
    }
    pb.finish_and_clear();
    Ok((workers, ready))
}

impl Workers {
    /// The worker processes' ids (their CPU shows whether the harness is the limit).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|(c, _)| c.id()).collect()
    }

    /// Sends every worker a line (`drop`: resume members rejoin).
    pub async fn tell(&mut self, line: &str) {
        for (_, stdin) in &mut self.children {
            // A worker that already died cannot be told; it is counted missing at the end.
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }
}

/// Tells every worker to stop and collects its final counts; workers that do not answer
/// within [`COLLECT_TIMEOUT`] are counted in `workers_missing` and killed.
pub async fn stop(workers: Workers) -> Done {
    stop_with(workers, "stop").await
}

/// [`stop`] with the stop line to send (`stop N`: resume members' final offset).
pub async fn stop_with(mut workers: Workers, line: &str) -> Done {
    let mut done = Done {
        received: 0,
        duplicates: 0,
        disconnected: 0,
        first_disconnect: None,
        latency_us: histogram(),
        timeline: Timeline::default(),
        workers_missing: 0,
        resume: None,
    };
    workers.tell(line).await;
    let mut pending = vec![true; workers.children.len()];
    let mut reported = 0;
    let wait_until = Instant::now() + COLLECT_TIMEOUT;
    while pending.contains(&true) {
        let event = match tokio::time::timeout_at(wait_until.into(), workers.events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) | Err(_) => break,
        };
        match event {
            Event::Line(
                i,
                Report::Done {
                    received,
                    duplicates,
                    disconnected,
                    first_disconnect,
                    timeline,
                    resume,
                },
            ) if pending[i] => {
                pending[i] = false;
                reported += 1;
                if let Some(r) = resume {
                    crate::resumer::merge(done.resume.get_or_insert_with(Default::default), r);
                }
                done.received += received;
                done.duplicates += duplicates;
                done.disconnected += disconnected;
                done.first_disconnect = done.first_disconnect.or(first_disconnect);
                done.timeline.merge(&timeline);
            }
            Event::Gone(i, _) if pending[i] => pending[i] = false,
            Event::Line(..) | Event::Gone(..) => {}
        }
    }
    done.workers_missing = workers.children.len() - reported;
    done.latency_us = done.timeline.total();
    for (child, _) in &mut workers.children {
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    done
}

/// The outcome of a scenario: what was asked, what was measured, and how to say it.
pub struct Outcome {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The run's parameters.
    pub parameters: Value,
    /// The measured figures.
    pub figures: Value,
    /// Lines of the human summary: label and value.
    pub summary: Vec<(&'static str, String)>,
    /// Deliveries over time, plotted beside the JSON (scenarios that deliver messages).
    pub timeline: Option<Timeline>,
}

/// Prints the human summary to stdout and writes the JSON result to `out` when given.
pub fn finish(outcome: Outcome, out: Option<&Path>) -> anyhow::Result<()> {
    let timestamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    println!("wsgate-loadtest {} ({timestamp})", outcome.scenario);
    let width = outcome
        .summary
        .iter()
        .map(|(l, _)| l.len())
        .max()
        .unwrap_or(0);
    for (label, value) in &outcome.summary {
        println!("  {label:<width$}  {value}");
    }
    if let Some(path) = out {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // A plot that cannot be drawn (no font, nothing delivered) is reported, not fatal:
        // the figures are the result.
        let plots = match &outcome.timeline {
            Some(t) => match crate::plot::write(path, &plot_title(&outcome), t) {
                Ok(paths) => paths,
                Err(e) => {
                    println!("  no plot: {e:#}");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let result = serde_json::json!({
            "scenario": outcome.scenario,
            "timestamp": timestamp,
            "parameters": outcome.parameters,
            "figures": outcome.figures,
            "plots": plots,
        });
        std::fs::write(path, serde_json::to_string_pretty(&result)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  result written to {}", path.display());
        for p in plots {
            println!("  plot written to {}", p.display());
        }
    }
    Ok(())
}

/// A plot's title: the scenario, the gateway's dialect and the load.
fn plot_title(o: &Outcome) -> String {
    let p = &o.parameters;
    let mut title = o.scenario.to_owned();
    if let Some(d) = p["dialect"].as_str() {
        title += &format!(" ({d})");
    }
    for (key, label) in [
        ("members", "members"),
        ("rate_per_second", "/s"),
        ("duration_seconds", "s"),
    ] {
        if let Some(v) = p[key].as_f64() {
            title += &format!(", {v} {label}");
        }
    }
    title
}

/// Milliseconds from a microsecond histogram quantile; 0 when empty.
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The summary's latency line: p50, p99, p99.9 and max of a microsecond histogram, in ms.
pub fn latency_line(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999),
        ms(h, 1.0)
    )
}

/// Rounds to `decimals` places, for readable JSON.
pub fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_connection_once() {
        assert_eq!(shares(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(shares(2, 5), vec![(0, 1), (1, 1)]);
        let s = shares(18_000, 18_000usize.div_ceil(CONNECTIONS_PER_WORKER));
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().map(|x| x.1).sum::<usize>(), 18_000);
    }

    #[test]
    fn quantiles_in_ms() {
        let mut h = histogram();
        assert_eq!(ms(&h, 0.5), 0.0);
        for v in 1..=1000 {
            h.record(v * 10).unwrap();
        }
        assert!((ms(&h, 0.5) - 5.0).abs() < 0.01);
        assert_eq!(round(1.23456, 2), 1.23);
    }
}
