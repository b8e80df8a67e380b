//! Side traffic during a `broadcast`: does the fan-out stall the rest of the node?
//!
//! - A **probe**: one connection in no room sends `ping` every interval and times each
//!   `pong`. A node whose runtime threads are blocked (a join waiting on a fan-out's lock)
//!   answers late; one that is merely busy answers within the CPU's queueing.
//! - **Churners**: connections that join and leave the broadcast room back to back, each
//!   timing its join's `ack`: the operation a fan-out must never make wait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Target, Ws};

/// Microsecond histogram, 1 µs to 100 s.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Sends `frame` (which has `"id": id`) and waits for the answer carrying that id; `None` when
/// the connection fails or `limit` passes. Other frames (room messages, pings) are skipped.
async fn request(ws: &mut Ws, frame: String, id: u64, limit: Duration) -> Option<Duration> {
    let sent = Instant::now();
    ws.send(Message::text(frame)).await.ok()?;
    let wait = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                if let Some((Some(got), _)) = client::answer(&t) {
                    if got == id {
                        return Some(sent.elapsed());
                    }
                } else if t.contains("\"pong\"") && t.contains(&format!("\"id\":{id}")) {
                    return Some(sent.elapsed());
                }
            }
        }
        None
    };
    tokio::time::timeout(limit, wait).await.ok().flatten()
}

/// What the side traffic measured.
pub struct SideTraffic {
    /// Ping round trips of the probe, in µs.
    pub ping_us: Histogram<u64>,
    /// Pings with no answer within a second.
    pub ping_lost: u64,
    /// Join round trips of the churners, in µs.
    pub join_us: Histogram<u64>,
    /// Join and leave cycles completed.
    pub churn_cycles: u64,
}

/// Side traffic running until [`Side::stop`].
pub struct Side {
    stop: Arc<AtomicBool>,
    probe: Option<tokio::task::JoinHandle<(Histogram<u64>, u64)>>,
    churners: Vec<tokio::task::JoinHandle<Histogram<u64>>>,
    cycles: Arc<AtomicU64>,
}

impl Side {
    /// Opens the probe (`interval`, if any) and `churn` churners on `target`, using source
    /// addresses from `first_index` on.
    pub async fn start(
        target: &Target,
        room: &str,
        interval: Option<Duration>,
        churn: u32,
        first_index: usize,
    ) -> anyhow::Result<Side> {
        let stop = Arc::new(AtomicBool::new(false));
        let cycles = Arc::new(AtomicU64::new(0));
        let probe = match interval {
            None => None,
            Some(every) => {
                let (mut ws, _) = client::connect(target, first_index).await?;
                let stop = stop.clone();
                Some(tokio::spawn(async move {
                    let mut h = histogram();
                    let mut lost = 0;
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut id = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        id += 1;
                        let frame = json!({"action":"ping","id":id}).to_string();
                        match request(&mut ws, frame, id, Duration::from_secs(1)).await {
                            Some(rtt) => {
                                let _ = h.record(rtt.as_micros().max(1) as u64);
                            }
                            None => lost += 1,
                        }
                    }
                    (h, lost)
                }))
            }
        };
        let mut churners = Vec::new();
        for c in 0..churn as usize {
            let (mut ws, _) = client::connect(target, first_index + 1 + c).await?;
            let (stop, cycles, room) = (stop.clone(), cycles.clone(), room.to_owned());
            churners.push(tokio::spawn(async move {
                let mut h = histogram();
                let mut id = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let join = json!({"action":"join","room":room,"id":id}).to_string();
                    let Some(rtt) = request(&mut ws, join, id, Duration::from_secs(5)).await else {
                        break;
                    };
                    let _ = h.record(rtt.as_micros().max(1) as u64);
                    id += 1;
                    let leave = json!({"action":"leave","room":room,"id":id}).to_string();
                    if request(&mut ws, leave, id, Duration::from_secs(5))
                        .await
                        .is_none()
                    {
                        break;
                    }
                    cycles.fetch_add(1, Ordering::Relaxed);
                    // Under the node's message rate limit (100/s per connection).
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                h
            }));
        }
        Ok(Side {
            stop,
            probe,
            churners,
            cycles,
        })
    }

    /// Stops the side traffic and collects its figures.
    pub async fn stop(self) -> SideTraffic {
        self.stop.store(true, Ordering::Relaxed);
        let (ping_us, ping_lost) = match self.probe {
            Some(p) => p.await.unwrap_or_else(|_| (histogram(), 0)),
            None => (histogram(), 0),
        };
        let mut join_us = histogram();
        for c in self.churners {
            if let Ok(h) = c.await {
                let _ = join_us.add(h);
            }
        }
        SideTraffic {
            ping_us,
            ping_lost,
            join_us,
            churn_cycles: self.cycles.load(Ordering::Relaxed),
        }
    }
}
