//! A `resume` member, in a worker process: joins a retained room, checks that offsets arrive
//! one after the other, and whenever it loses its connection (the node drained it, or the
//! parent said `drop`) reconnects to the next node and rejoins with `since` and `epoch`,
//! timing how long until the rejoin is acknowledged. Gaps and duplicates are counted by
//! offset, across reconnects: what a client author's recovery must get right.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Target, Ws};
use crate::worker::{histogram, now_ns, parse_delivery};

/// Pause between two failed reconnect attempts (plus up to as much again of jitter).
const RETRY: Duration = Duration::from_millis(50);

/// What the resume members of one worker counted.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counts {
    /// Offsets skipped (a message never received).
    pub gaps: u64,
    /// Offsets received again.
    pub duplicates: u64,
    /// Rejoins acknowledged.
    pub reconnects: u64,
    /// Of those, acknowledged with `recovered: true`.
    pub recovered: u64,
    /// Reconnect attempts that failed (refused, closed) before one worked.
    pub failed_attempts: u64,
    /// Members whose last offset is behind the final one at the end.
    pub behind: u64,
    /// From losing the connection to the rejoin's ack (µs), as [value, count] pairs.
    pub reconnect_us: Vec<(u64, u64)>,
    /// When the last rejoin was acknowledged, ns since the epoch (0: none).
    pub last_rejoin_ns: u64,
    /// The first error seen.
    pub error: Option<String>,
}

/// Adds one worker's counts to the total.
pub fn merge(total: &mut Counts, c: Counts) {
    total.gaps += c.gaps;
    total.duplicates += c.duplicates;
    total.reconnects += c.reconnects;
    total.recovered += c.recovered;
    total.failed_attempts += c.failed_attempts;
    total.behind += c.behind;
    let mut h = histogram();
    crate::worker::merge(&mut h, &total.reconnect_us);
    crate::worker::merge(&mut h, &c.reconnect_us);
    total.reconnect_us = crate::worker::pairs(&h);
    total.last_rejoin_ns = total.last_rejoin_ns.max(c.last_rejoin_ns);
    total.error = total.error.take().or(c.error);
}

/// What every resume member of a worker updates.
#[derive(Default)]
pub struct Shared {
    gaps: AtomicU64,
    duplicates: AtomicU64,
    reconnects: AtomicU64,
    recovered: AtomicU64,
    failed_attempts: AtomicU64,
    behind: AtomicU64,
    last_rejoin_ns: AtomicU64,
    reconnect_us: Mutex<Option<Histogram<u64>>>,
    error: Mutex<Option<String>>,
    /// The publisher's last offset, from the parent's `stop N`.
    pub final_offset: AtomicU64,
}

impl Shared {
    /// The counts so far.
    pub fn counts(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let h = self.reconnect_us.lock().unwrap_or_else(|e| e.into_inner());
        Counts {
            gaps: get(&self.gaps),
            duplicates: get(&self.duplicates),
            reconnects: get(&self.reconnects),
            recovered: get(&self.recovered),
            failed_attempts: get(&self.failed_attempts),
            behind: get(&self.behind),
            reconnect_us: h.as_ref().map(crate::worker::pairs).unwrap_or_default(),
            last_rejoin_ns: get(&self.last_rejoin_ns),
            error: self.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    fn note_error(&self, e: String) {
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }
}

/// The number after `key` in `text` (the last occurrence: `offset` follows `data`).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.rfind(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

/// The string after `key` (`"epoch":"`), up to its closing quote.
fn string_after(text: &str, key: &str) -> Option<String> {
    let start = text.rfind(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(text[start..start + len].to_owned())
}

/// Where a member stands in the room.
struct Position {
    last: u64,
    epoch: String,
}

impl Position {
    /// Takes a delivered message's offset: counts a gap or a duplicate when it is not the
    /// next one.
    fn take(&mut self, offset: u64, shared: &Shared) {
        if offset <= self.last {
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if offset > self.last + 1 {
            shared
                .gaps
                .fetch_add(offset - self.last - 1, Ordering::Relaxed);
        }
        self.last = offset;
    }
}

/// What one text frame was, for a resume member.
enum Frame {
    /// A room message at this offset.
    Message(u64),
    /// The ack of the join with `id`: its offset, epoch, and `recovered`.
    Joined(u64, String, bool),
    /// An error answering the join.
    Refused(String),
    Other,
}

fn classify(text: &str, join_id: u64) -> Frame {
    if text.starts_with("{\"type\":\"message\"") {
        return number_after(text, "\"offset\":").map_or(Frame::Other, Frame::Message);
    }
    if text.starts_with("{\"type\":\"ack\"") && number_after(text, "\"id\":") == Some(join_id) {
        return match (
            number_after(text, "\"offset\":"),
            string_after(text, "\"epoch\":\""),
        ) {
            (Some(o), Some(e)) => Frame::Joined(o, e, text.contains("\"recovered\":true")),
            _ => Frame::Refused(format!("a join ack without a position: {text}")),
        };
    }
    if text.starts_with("{\"type\":\"error\"") && number_after(text, "\"id\":") == Some(join_id) {
        return Frame::Refused(text.to_owned());
    }
    Frame::Other
}

/// Connects to `target` and joins `room` (after `since` in `epoch` when given), taking the
/// replayed messages on the way; the ack's position and `recovered`.
async fn join(
    target: &Target,
    index: usize,
    room: &str,
    at: Option<&Position>,
    pos_out: &mut Option<Position>,
    shared: &Shared,
) -> anyhow::Result<(Ws, bool)> {
    let (mut ws, _) = client::connect(target, index).await?;
    let mut frame = serde_json::json!({"action": "join", "room": room, "id": 7});
    if let Some(p) = at {
        frame["since"] = p.last.into();
        frame["epoch"] = p.epoch.clone().into();
    }
    ws.send(Message::text(frame.to_string())).await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match classify(&t, 7) {
                    Frame::Message(offset) => {
                        if let Some(p) = pos_out.as_mut() {
                            p.take(offset, shared);
                        }
                    }
                    Frame::Joined(offset, epoch, recovered) => {
                        return Ok((offset, epoch, recovered))
                    }
                    Frame::Refused(e) => anyhow::bail!("join refused: {e}"),
                    Frame::Other => {}
                },
                Some(Ok(Message::Close(c))) => anyhow::bail!("closed while joining: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("joining: {e}"),
                None => anyhow::bail!("closed while joining"),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no join ack within 10 s"))??;
    let (offset, epoch, recovered) = answer;
    match pos_out.as_mut() {
        // A member that missed nothing is where its replay left it; a fresh one starts at
        // the room's latest offset.
        Some(p) if p.epoch == epoch => {}
        _ => {
            *pos_out = Some(Position {
                last: offset,
                epoch,
            })
        }
    }
    Ok((ws, recovered))
}

/// One resume member, until `stop`: connection `index` (its source address), starting on
/// `targets[start]` and moving on to the next target at each reconnect.
#[allow(clippy::too_many_arguments)]
pub async fn member(
    targets: Arc<Vec<Target>>,
    (index, start): (usize, usize),
    room: String,
    permit: OwnedSemaphorePermit,
    worker: Arc<crate::worker::Shared>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut drops: watch::Receiver<u64>,
    connect_deadline: Instant,
) {
    let started = Instant::now();
    let mut position: Option<Position> = None;
    let first = tokio::time::timeout_at(
        connect_deadline.into(),
        join(
            &targets[start % targets.len()],
            index,
            &room,
            None,
            &mut position,
            &shared,
        ),
    )
    .await;
    drop(permit);
    let mut ws = match first {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return worker.fail(1, format!("{e:#}")),
        Err(_) => return worker.fail(1, "connect deadline passed".to_owned()),
    };
    worker.connected(started.elapsed());
    let mut attempt = 0usize;
    drops.borrow_and_update();
    loop {
        // Read until the connection is lost, dropped on purpose, or the run stops.
        let lost = loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    let fin = shared.final_offset.load(Ordering::Relaxed);
                    if position.as_ref().is_none_or(|p| p.last < fin) {
                        shared.behind.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                _ = drops.changed() => {
                    let _ = ws.close(None).await;
                    break Instant::now();
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Frame::Message(offset) = classify(&t, 7) {
                            if let Some(p) = position.as_mut() {
                                p.take(offset, &shared);
                            }
                            if let Some((_, sent)) = parse_delivery(&t) {
                                worker.delivered(sent);
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break Instant::now(),
                }
            }
        };
        // Back, on the next node, with the position; until it works or the run stops.
        loop {
            attempt += 1;
            let target = &targets[(start + attempt) % targets.len()];
            let snapshot = position.as_ref().map(|p| Position {
                last: p.last,
                epoch: p.epoch.clone(),
            });
            let rejoin = join(
                target,
                index,
                &room,
                snapshot.as_ref(),
                &mut position,
                &shared,
            );
            let result = tokio::select! {
                _ = stop.changed() => return,
                r = rejoin => r,
            };
            match result {
                Ok((next, recovered)) => {
                    ws = next;
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    shared
                        .recovered
                        .fetch_add(u64::from(recovered), Ordering::Relaxed);
                    shared.last_rejoin_ns.fetch_max(now_ns(), Ordering::Relaxed);
                    let mut h = shared
                        .reconnect_us
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    h.get_or_insert_with(histogram)
                        .saturating_record(lost.elapsed().as_micros().max(1) as u64);
                    break;
                }
                Err(e) => {
                    shared.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    shared.note_error(format!("{e:#}"));
                    let jitter = rand_ms(index, attempt);
                    tokio::time::sleep(RETRY + Duration::from_millis(jitter)).await;
                }
            }
        }
    }
}

/// A spread of retry delays without a random generator: members retry out of step.
fn rand_ms(index: usize, attempt: usize) -> u64 {
    ((index.wrapping_mul(2_654_435_761) ^ attempt.wrapping_mul(40_503)) % 50) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_by_offset() {
        let m = r#"{"type":"message","room":"r","data":{"seq":3,"t":9,"offset":1},"from":null,"offset":42,"epoch":"E"}"#;
        assert!(matches!(classify(m, 7), Frame::Message(42)));
        let a = r#"{"type":"ack","id":7,"offset":40,"epoch":"Ab1","recovered":true}"#;
        assert!(matches!(classify(a, 7), Frame::Joined(40, e, true) if e == "Ab1"));
        let a = r#"{"type":"ack","id":7,"offset":40,"epoch":"Ab1","recovered":false}"#;
        assert!(matches!(classify(a, 7), Frame::Joined(40, _, false)));
        assert!(matches!(
            classify(r#"{"type":"ack","id":3}"#, 7),
            Frame::Other
        ));
        assert!(matches!(
            classify(
                r#"{"type":"error","id":7,"code":"unavailable","message":"x"}"#,
                7
            ),
            Frame::Refused(_)
        ));
    }

    #[test]
    fn gaps_and_duplicates_are_counted_by_offset() {
        let shared = Shared::default();
        let mut p = Position {
            last: 10,
            epoch: "e".into(),
        };
        for o in [11, 12, 12, 15, 14, 16] {
            p.take(o, &shared);
        }
        assert_eq!(
            shared.duplicates.load(Ordering::Relaxed),
            2,
            "12 again, and 14 late"
        );
        assert_eq!(shared.gaps.load(Ordering::Relaxed), 2, "13 and 14 skipped");
        assert_eq!(p.last, 16);
    }
}
