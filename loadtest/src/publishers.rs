//! The `broadcast` scenario's publishers, in any dialect: WebSocket connections taking turns
//! (wsgate, Socket.IO), or Pusher's signed HTTP events API.
//!
//! Each publish is handed over without waiting for its answer, so a slow gateway shows up as
//! latency and refusals rather than as a publisher falling behind its schedule.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Target};
use crate::dialect::Dialect;
use crate::pusher_http;

/// Frames waiting for one publisher connection's writer.
const QUEUE: usize = 1024;

/// Pusher events API requests in flight at once; past that a publish waits (and counts as
/// late: latency is measured from when it was due).
const HTTP_IN_FLIGHT: usize = 256;

/// What the publishers' gateway answered.
#[derive(Default)]
pub struct Answers {
    /// Publishes acknowledged.
    pub acks: AtomicU64,
    /// Publishes refused.
    pub errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Answers {
    fn note_error(&self, e: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
    }

    fn refused(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.note_error(e);
    }

    /// The first refusal or connection failure, if any.
    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Why a publish did not go out.
pub enum Failure {
    /// The run's publishing deadline passed.
    TimedOut,
    /// A publisher connection failed.
    Broken(String),
}

/// The publishers of one run.
pub enum Publishers {
    /// Connections taking turns; each has a task that writes its frames and reads (and
    /// counts) the answers, replying to the dialect's keep-alives.
    Ws {
        /// The gateway's dialect.
        dialect: Dialect,
        /// One queue per connection.
        queues: Vec<mpsc::Sender<String>>,
        /// The connections' tasks.
        tasks: Vec<JoinHandle<()>>,
    },
    /// Pusher's HTTP events API, one request per publish, at most [`HTTP_IN_FLIGHT`] at once.
    Http {
        /// The signed-request publisher.
        publisher: pusher_http::Publisher,
        /// Requests in flight.
        pending: JoinSet<()>,
        /// Permits for requests in flight.
        slots: Arc<Semaphore>,
    },
}

/// One publisher connection: writes what arrives on `rx`, reads the answers.
async fn connection(
    mut ws: client::Ws,
    dialect: Dialect,
    mut rx: mpsc::Receiver<String>,
    answers: Arc<Answers>,
) {
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(f) => {
                    if let Err(e) = ws.send(Message::text(f)).await {
                        return answers.note_error(format!("publisher connection failed: {e}"));
                    }
                }
                None => {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ws.close(None)).await;
                    return;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match dialect.publish_answer(&t) {
                    Some(Ok(())) => {
                        answers.acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(e)) => answers.refused(e),
                    None => {
                        if let Some(reply) = dialect.keepalive_reply(&t) {
                            let _ = ws.send(Message::text(reply)).await;
                        }
                    }
                },
                Some(Ok(Message::Close(c))) => return answers.note_error(format!("publisher closed: {c:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return answers.note_error(format!("publisher read error: {e}")),
                None => return answers.note_error("publisher connection ended".to_owned()),
            }
        }
    }
}

impl Publishers {
    /// Opens `count` publisher connections to `target` (or, for Pusher, an HTTP client
    /// signing for `app`).
    pub async fn open(
        target: &Target,
        count: usize,
        app: &pusher_http::App,
        answers: &Arc<Answers>,
    ) -> anyhow::Result<Self> {
        if target.dialect == Dialect::Pusher {
            return Ok(Publishers::Http {
                publisher: pusher_http::Publisher::new(&target.url, app.clone())?,
                pending: JoinSet::new(),
                slots: Arc::new(Semaphore::new(HTTP_IN_FLIGHT)),
            });
        }
        let (mut queues, mut tasks) = (Vec::new(), Vec::new());
        for p in 0..count {
            // Source addresses far from the members' (they start at index 0).
            let (ws, _) = client::connect(target, usize::MAX / 2 + p)
                .await
                .context("opening a publisher connection")?;
            let (tx, rx) = mpsc::channel(QUEUE);
            tasks.push(tokio::spawn(connection(
                ws,
                target.dialect,
                rx,
                answers.clone(),
            )));
            queues.push(tx);
        }
        Ok(Publishers::Ws {
            dialect: target.dialect,
            queues,
            tasks,
        })
    }

    /// Publishes `data` (sequence `seq`) to `room`, by `until`.
    pub async fn publish(
        &mut self,
        room: &str,
        seq: u64,
        data: &str,
        until: Instant,
        answers: &Arc<Answers>,
    ) -> Result<(), Failure> {
        match self {
            Publishers::Ws {
                dialect, queues, ..
            } => {
                let frame = dialect
                    .publish_frame(room, seq + 1, data)
                    .expect("WebSocket dialects publish over the socket");
                let queue = &queues[seq as usize % queues.len()];
                match tokio::time::timeout_at(until.into(), queue.send(frame)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(Failure::Broken(
                        answers
                            .first_error()
                            .unwrap_or_else(|| "publisher connection ended".into()),
                    )),
                    Err(_) => Err(Failure::TimedOut),
                }
            }
            Publishers::Http {
                publisher,
                pending,
                slots,
            } => {
                let Ok(Ok(slot)) =
                    tokio::time::timeout_at(until.into(), slots.clone().acquire_owned()).await
                else {
                    return Err(Failure::TimedOut);
                };
                let (publisher, answers) = (publisher.clone(), answers.clone());
                let (room, data) = (room.to_owned(), data.to_owned());
                pending.spawn(async move {
                    let _slot = slot;
                    match publisher.publish(&room, &data).await {
                        Ok(()) => {
                            answers.acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => answers.refused(e),
                    }
                });
                // Reap finished requests so the set stays small.
                while pending.try_join_next().is_some() {}
                Ok(())
            }
        }
    }

    /// Waits (bounded) for the answers still due, then closes the connections.
    pub async fn close(self) {
        let bound = std::time::Duration::from_secs(5);
        match self {
            Publishers::Ws { queues, tasks, .. } => {
                drop(queues);
                for t in tasks {
                    // A task still writing after the bound is left to the runtime's shutdown.
                    let _ = tokio::time::timeout(bound, t).await;
                }
            }
            Publishers::Http { mut pending, .. } => {
                let _ = tokio::time::timeout(bound, async {
                    while pending.join_next().await.is_some() {}
                })
                .await;
            }
        }
    }
}
