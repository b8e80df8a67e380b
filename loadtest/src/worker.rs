//! A worker process: opens its share of the connections, reports on stdout (one JSON object
//! per line), and stops on `stop` (or end of input) from the parent.
//!
//! Workers exist because one process may hold only 20,000 files here. The job comes as the
//! first line on stdin (not in argv, where a `--token` would show in `ps`).

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Target, Ws};
use crate::dialect::Dialect;
use crate::timeline::Timeline;

/// What a worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Node URLs; connection `i` goes to `urls[i % len]`.
    pub urls: Vec<String>,
    /// Bearer token for every connection.
    pub token: Option<String>,
    /// CA trusted for `wss://` URLs.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// Global index of this worker's first connection (spreads source addresses and nodes).
    pub first: usize,
    /// Connections to open.
    pub count: usize,
    /// Connections opened at once.
    pub concurrency: usize,
    /// Room to join (broadcast), or none (idle).
    pub room: Option<String>,
    /// Milliseconds from start after which no connection attempt is started or continued.
    pub connect_ms: u64,
    /// Milliseconds from start after which the worker stops even without `stop`.
    pub hard_ms: u64,
    /// `resume` members: rejoin with `since` whenever the connection is lost or the parent
    /// says `drop`, counting gaps and duplicates by offset.
    #[serde(default)]
    pub resume: bool,
    /// `resume` members all start on the first URL (a node about to be drained) and move on
    /// to the others; otherwise connection `i` starts on `urls[i % len]`.
    #[serde(default)]
    pub start_first: bool,
    /// Report every member's connection id when ready (the `direct` scenario's targets).
    #[serde(default)]
    pub report_ids: bool,
    /// What the gateway speaks.
    #[serde(default)]
    pub dialect: Dialect,
}

/// A line a worker prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    /// Connections so far.
    Progress {
        /// Connected (and joined).
        connected: usize,
        /// Failed attempts.
        failed: usize,
    },
    /// Every connection was attempted (or the connect deadline passed).
    Ready {
        /// Connected (and joined).
        connected: usize,
        /// Failed attempts, including those never started before the deadline.
        failed: usize,
        /// Connect (and join) latency (µs) as [value, count] pairs.
        connect_us: Vec<(u64, u64)>,
        /// First error seen, if any.
        error: Option<String>,
        /// The members' connection ids, when the job asks (`direct` sends to them).
        #[serde(default)]
        ids: Vec<String>,
    },
    /// Final counts after `stop`.
    Done {
        /// Unique (member, seq) deliveries.
        received: u64,
        /// Deliveries of a (member, seq) seen before.
        duplicates: u64,
        /// Connections that ended before `stop`.
        disconnected: u64,
        /// Why the first of those ended.
        first_disconnect: Option<String>,
        /// Deliveries and their latency (from when each was due) per second of arrival.
        timeline: Vec<crate::timeline::Second>,
        /// What `resume` members counted.
        #[serde(default)]
        resume: Option<crate::resumer::Counts>,
    },
}

fn emit(r: &Report) {
    // stdout is the channel to the parent; a write error means the parent is gone, and the
    // hard deadline (or stdin's end) stops this process.
    if let Ok(line) = serde_json::to_string(r) {
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
}

/// Serializes a histogram as its non-empty buckets.
pub fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds serialized buckets to a histogram.
pub fn merge(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for (v, c) in pairs {
        // Values past the bounds saturate rather than disappear.
        h.saturating_record_n(*v, *c);
    }
}

/// A histogram for microseconds up to 100 s, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// The fields of a `message` the harness reads.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    seq: u64,
    t: u64,
}

/// Parses a delivered message: its sequence number and send time (ns since the epoch).
/// A byte scan rather than a JSON parse for the frames the node writes (`type` first): the
/// harness must read faster than the node writes, or its own lag shows up as the node's
/// latency. Anything else goes through serde.
pub fn parse_delivery(text: &str) -> Option<(u64, u64)> {
    if text.starts_with("{\"type\":\"message\"") || text.starts_with("{\"type\":\"direct\"") {
        let number_after = |key: &str| -> Option<u64> {
            let start = text.find(key)? + key.len();
            let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
            text[start..start + digits].parse().ok()
        };
        if let (Some(seq), Some(t)) = (number_after("\"seq\":"), number_after("\"t\":")) {
            return Some((seq, t));
        }
    }
    let f: Frame = serde_json::from_str(text).ok()?;
    if f.kind != "message" && f.kind != "direct" {
        return None;
    }
    f.data.map(|d| (d.seq, d.t))
}

/// Nanoseconds since the Unix epoch: the clock publish times are written in.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// Per-member record of sequence numbers seen.
#[derive(Default)]
pub struct Seen(Vec<u64>);

impl Seen {
    /// Marks `seq`; false when it was already marked (a duplicate).
    pub fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }
}

/// Counters every connection task of the worker updates.
pub struct Shared {
    connected: AtomicUsize,
    ids: Mutex<Vec<String>>,
    failed: AtomicUsize,
    connect_us: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
    received: AtomicU64,
    duplicates: AtomicU64,
    disconnected: AtomicU64,
    first_disconnect: Mutex<Option<String>>,
    timeline: Mutex<Timeline>,
}

/// Locks a mutex; a panicked holder leaves counters that are still worth reporting.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn progress(&self) -> Report {
        Report::Progress {
            connected: self.connected.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// `n` connections failed to open, the first because of `why`.
    pub fn fail(&self, n: usize, why: String) {
        self.failed.fetch_add(n, Ordering::Relaxed);
        lock(&self.first_error).get_or_insert(why);
    }

    /// A connection opened (and joined) in `took`.
    pub fn connected(&self, took: Duration) {
        lock(&self.connect_us).saturating_record(took.as_micros() as u64);
        self.connected.fetch_add(1, Ordering::Relaxed);
    }

    /// A message that was due at `due_ns` (ns since the epoch) arrived now.
    pub fn delivered(&self, due_ns: u64) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let now = now_ns();
        lock(&self.timeline).record(now, now.saturating_sub(due_ns) / 1000);
    }
}

/// Entry point of `wsgate-loadtest worker`: the job is the first line on stdin.
pub fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .context("no job on stdin")?
                .context("reading the job")?
                .context("no job on stdin")?;
            let job: Job = serde_json::from_str(&line).context("bad job")?;
            run(job, lines).await
        })
}

async fn run(job: Job, mut lines: Lines<BufReader<Stdin>>) -> anyhow::Result<()> {
    let start = Instant::now();
    let connect_deadline = start + Duration::from_millis(job.connect_ms);
    let hard_deadline = start + Duration::from_millis(job.hard_ms);
    let mut targets = Vec::new();
    for url in &job.urls {
        targets.push(
            Target::resolve_as(url, job.token.as_deref(), job.ca.as_deref(), job.dialect).await?,
        );
    }
    anyhow::ensure!(!targets.is_empty(), "no URL");
    let shared = Arc::new(Shared {
        connected: AtomicUsize::new(0),
        ids: Mutex::default(),
        failed: AtomicUsize::new(0),
        connect_us: Mutex::new(histogram()),
        first_error: Mutex::default(),
        received: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        disconnected: AtomicU64::new(0),
        first_disconnect: Mutex::default(),
        timeline: Mutex::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drop_tx, drop_rx) = watch::channel(0u64);
    let resume = Arc::new(crate::resumer::Shared::default());
    let targets = Arc::new(targets);
    let gate = Arc::new(Semaphore::new(job.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut started = 0;
    while started < job.count {
        let permit = tokio::select! {
            p = gate.clone().acquire_owned() => p?,
            _ = tokio::time::sleep_until(connect_deadline.into()) => break,
            _ = tick.tick() => {
                emit(&shared.progress());
                continue;
            }
        };
        let index = job.first + started;
        match (&job.room, job.resume) {
            (Some(room), true) => tasks.spawn(crate::resumer::member(
                targets.clone(),
                (index, if job.start_first { 0 } else { index }),
                room.clone(),
                permit,
                shared.clone(),
                resume.clone(),
                stop_rx.clone(),
                drop_rx.clone(),
                connect_deadline,
            )),
            _ => tasks.spawn(connection(
                targets[index % targets.len()].clone(),
                index,
                job.room.clone(),
                permit,
                shared.clone(),
                stop_rx.clone(),
                connect_deadline,
            )),
        };
        started += 1;
    }
    if started < job.count {
        shared.fail(
            job.count - started,
            format!(
                "connect deadline passed with {} connections not attempted",
                job.count - started
            ),
        );
    }
    // Every attempt ends by the connect deadline (each is cut there), so this wait is bounded.
    let settle = connect_deadline + Duration::from_secs(1);
    while shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < job.count
        && Instant::now() < settle
    {
        tick.tick().await;
        emit(&shared.progress());
    }
    emit(&Report::Ready {
        connected: shared.connected.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        connect_us: pairs(&lock(&shared.connect_us)),
        error: lock(&shared.first_error).clone(),
        ids: if job.report_ids {
            std::mem::take(&mut *lock(&shared.ids))
        } else {
            Vec::new()
        },
    });
    // Hold until the parent says stop (or goes away), or the hard deadline. `drop` makes
    // resume members drop their connections and rejoin; `stop N` gives them the last offset.
    let _ = tokio::time::timeout_at(hard_deadline.into(), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("stop") => {
                    if let Some(n) = words.next().and_then(|n| n.parse().ok()) {
                        resume.final_offset.store(n, Ordering::Relaxed);
                    }
                    break;
                }
                Some("drop") => {
                    drop_tx.send_modify(|n| *n += 1);
                }
                _ => {}
            }
        }
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    emit(&Report::Done {
        received: shared.received.load(Ordering::Relaxed),
        duplicates: shared.duplicates.load(Ordering::Relaxed),
        disconnected: shared.disconnected.load(Ordering::Relaxed),
        first_disconnect: lock(&shared.first_disconnect).clone(),
        timeline: lock(&shared.timeline).to_seconds(),
        resume: job.resume.then(|| resume.counts()),
    });
    Ok(())
}

/// Opens a connection and joins `room` (waiting for the gateway's answer); the socket and its
/// id.
async fn open(target: &Target, index: usize, room: Option<&str>) -> anyhow::Result<(Ws, String)> {
    let (mut ws, id) = client::connect(target, index).await?;
    if let Some(room) = room {
        let dialect = target.dialect;
        ws.send(Message::text(dialect.join_frame(room))).await?;
        client::read_until(&mut ws, dialect, "join answer", |t| dialect.joined(t)).await?;
    }
    Ok((ws, id))
}

/// One member: connects, then reads until stopped, recording deliveries.
async fn connection(
    target: Target,
    index: usize,
    room: Option<String>,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    connect_deadline: Instant,
) {
    let started = Instant::now();
    let opened = tokio::time::timeout_at(
        connect_deadline.into(),
        open(&target, index, room.as_deref()),
    )
    .await;
    drop(permit);
    let mut ws = match opened {
        Ok(Ok((ws, id))) => {
            lock(&shared.ids).push(id);
            ws
        }
        Ok(Err(e)) => return shared.fail(1, format!("{e:#}")),
        Err(_) => return shared.fail(1, "connect deadline passed".to_owned()),
    };
    shared.connected(started.elapsed());
    let mut seen = Seen::default();
    let dialect = target.dialect;
    // One stop future for the whole loop: a new one per message would register and
    // unregister a waiter for every delivery.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let ended = loop {
        tokio::select! {
            _ = &mut stopped => break None,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Some((seq, sent)) = dialect.delivery(&t) {
                        if seen.mark(seq) {
                            shared.delivered(sent);
                        } else {
                            shared.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if let Some(reply) = dialect.keepalive_reply(&t) {
                        if let Err(e) = ws.send(Message::text(reply)).await {
                            break Some(format!("answering a keep-alive: {e}"));
                        }
                    }
                }
                Some(Ok(Message::Close(c))) => break Some(format!("closed by the node: {c:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("read error: {e}")),
                None => break Some("connection ended".to_owned()),
            }
        }
    };
    match ended {
        None => {
            let _ = ws.close(None).await;
        }
        Some(why) => {
            shared.disconnected.fetch_add(1, Ordering::Relaxed);
            lock(&shared.first_disconnect).get_or_insert(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_deliveries_and_ignores_the_rest() {
        let m =
            r#"{"type":"message","room":"bench","data":{"seq":7,"t":123,"pad":"xx"},"from":"a"}"#;
        assert_eq!(parse_delivery(m), Some((7, 123)));
        // `data` keys in another order (a node may re-serialize it sorted).
        let m = r#"{"type":"message","room":"b","data":{"pad":"xx","seq":8,"t":9},"from":null}"#;
        assert_eq!(parse_delivery(m), Some((8, 9)));
        // Another key order of the frame itself.
        let m = r#"{"data":{"seq":5,"t":6},"from":"a","room":"b","type":"message"}"#;
        assert_eq!(parse_delivery(m), Some((5, 6)));
        // Direct messages (the `direct` scenario) count like room messages.
        assert_eq!(
            parse_delivery(r#"{"type":"direct","from":"a","data":{"seq":5,"t":6}}"#),
            Some((5, 6))
        );
        assert_eq!(
            parse_delivery(r#"{"data":{"seq":5,"t":6},"type":"route_response"}"#),
            None
        );
        assert_eq!(parse_delivery(r#"{"type":"ack","id":1}"#), None);
        assert_eq!(
            parse_delivery(r#"{"type":"message","room":"b","data":"x"}"#),
            None
        );
    }

    #[test]
    fn seen_counts_duplicates() {
        let mut s = Seen::default();
        assert!(s.mark(0) && s.mark(130) && !s.mark(130) && s.mark(64));
    }

    #[test]
    fn histograms_merge() {
        let mut a = histogram();
        a.record(100).unwrap();
        a.record_n(2000, 3).unwrap();
        let mut b = histogram();
        b.record(50).unwrap();
        merge(&mut b, &pairs(&a));
        assert_eq!(b.len(), 5);
        assert_eq!(b.max(), a.max());
        assert_eq!(b.min(), 50);
    }

    #[test]
    fn reports_round_trip() {
        let line = serde_json::to_string(&Report::Ready {
            connected: 3,
            failed: 1,
            connect_us: vec![(10, 2), (20, 1)],
            error: Some("x".into()),
            ids: Vec::new(),
        })
        .unwrap();
        assert!(line.starts_with(r#"{"event":"ready""#));
        match serde_json::from_str::<Report>(&line).unwrap() {
            Report::Ready { connect_us, .. } => assert_eq!(connect_us, vec![(10, 2), (20, 1)]),
            other => panic!("{other:?}"),
        }
    }
}
