//! Publishing room envelopes: a queue bounded in count and in bytes, drained in pipelines.
//! Retained rooms' publishes and direct sends ride the same queue as their scripts, so one
//! node's publishes reach Redis in the order they were made, whichever kind they are.

use super::direct::DirectSend;
use super::history::RetainedPublish;
use super::*;

/// One publish waiting for Redis.
pub(super) enum Outgoing {
    /// A room envelope for `channel`.
    Plain(String, Bytes),
    /// A retained room's envelope, published by the history script.
    Retained(RetainedPublish),
    /// A direct or disconnect envelope, routed by the direct-send script.
    Direct(DirectSend),
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Plain(_, b) => b.len(),
            Outgoing::Retained(r) => r.envelope.len(),
            Outgoing::Direct(d) => d.envelope.len(),
        }
    }

    /// Tells a waiting caller (retained publish, direct send) it failed.
    fn fail(self, error: impl FnOnce() -> BusError) {
        match self {
            Outgoing::Retained(r) => {
                let _ = r.reply.send(Err(error()));
            }
            Outgoing::Direct(d) => {
                let _ = d.reply.send(Err(error()));
            }
            Outgoing::Plain(..) => {}
        }
    }
}

/// Room envelopes waiting to be published: bounded in count and in bytes, so a slow Redis
/// drops instead of growing (16,384 messages of 128 KiB would otherwise be 2 GiB).
const PUBLISH_QUEUE: usize = 16_384;
/// Bytes of envelopes waiting to be published or being published, at most.
const PUBLISH_QUEUE_BYTES: usize = 32 << 20;

/// The publishing side's state: the queue and the bytes it holds.
pub(super) struct Publisher {
    tx: mpsc::Sender<Outgoing>,
    /// Bytes queued or being sent ([`PUBLISH_QUEUE_BYTES`]): a batch stuck on a slow Redis
    /// still counts.
    queued_bytes: AtomicUsize,
}

impl Publisher {
    /// A publisher and the receiving end its task drains.
    pub(super) fn new() -> (Publisher, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        (
            Publisher {
                tx,
                queued_bytes: AtomicUsize::new(0),
            },
            rx,
        )
    }

    /// Queues a publish; gives it back when the queue is full (in count or bytes), and then
    /// nothing is reserved.
    pub(super) fn enqueue(&self, out: Outgoing) -> Result<(), Outgoing> {
        let len = out.len();
        // Reserve the bytes only if they fit: a refused envelope never counts against others.
        if self
            .queued_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q + len <= PUBLISH_QUEUE_BYTES).then_some(q + len)
            })
            .is_err()
        {
            return Err(out);
        }
        if let Err(e) = self.tx.try_send(out) {
            self.release(len);
            return Err(e.into_inner());
        }
        Ok(())
    }

    /// Bytes sent or dropped: no longer held.
    fn release(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Inner {
    pub(super) async fn run_publisher(self: Arc<Self>, mut rx: mpsc::Receiver<Outgoing>) {
        let mut batch = Vec::with_capacity(256);
        loop {
            let n = tokio::select! {
                () = self.cancel.cancelled() => return,
                n = rx.recv_many(&mut batch, 256) => n,
            };
            if n == 0 {
                return;
            }
            // Released once the batch is sent or dropped, so that a batch stuck on a slow
            // Redis still counts against the bound.
            let bytes: usize = batch.iter().map(Outgoing::len).sum();
            if !self.up() {
                self.dropped.fetch_add(n as u64, Ordering::Relaxed);
                for out in batch.drain(..) {
                    out.fail(|| BusError::Down);
                }
                self.publisher.release(bytes);
                continue;
            }
            // One pipeline per batch: one round trip however many publishes are waiting,
            // and in order, on one connection.
            let pipeline = self.client.pipeline();
            for out in &batch {
                let _: Result<(), _> = match out {
                    Outgoing::Plain(channel, payload) if self.sharded => {
                        pipeline.spublish(channel.as_str(), payload.clone()).await
                    }
                    Outgoing::Plain(channel, payload) => {
                        pipeline.publish(channel.as_str(), payload.clone()).await
                    }
                    Outgoing::Retained(r) => {
                        self.queue_retained(&pipeline, r).await;
                        Ok(())
                    }
                    Outgoing::Direct(d) => {
                        self.queue_direct(&pipeline, d).await;
                        Ok(())
                    }
                };
            }
            let results = pipeline.try_all::<Value>().await;
            let whole = (results.len() != n).then(|| {
                results
                    .iter()
                    .find_map(|r| r.as_ref().err().cloned())
                    .unwrap_or_else(|| {
                        fred::error::Error::new(fred::error::ErrorKind::Unknown, "pipeline lost")
                    })
            });
            let mut results = results.into_iter();
            for out in batch.drain(..) {
                let result = match &whole {
                    Some(e) => Err(e.clone()),
                    None => results.next().unwrap_or(Ok(Value::Null)),
                };
                match (out, result) {
                    (Outgoing::Plain(..), Ok(_)) => {}
                    (Outgoing::Plain(..), Err(e)) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "publish to redis failed");
                    }
                    (Outgoing::Direct(d), result) => {
                        let sent = result
                            .map_err(backend("sending to a connection on another node"))
                            .and_then(super::direct::delivered);
                        let _ = d.reply.send(sent);
                    }
                    (Outgoing::Retained(r), result) => {
                        let position = result
                            .map_err(backend("publishing into a retained room"))
                            .and_then(position_of);
                        if position.is_err() {
                            self.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = r.reply.send(position);
                    }
                }
            }
            self.publisher.release(bytes);
        }
    }
}

/// The `{offset, epoch}` the publish script answers.
fn position_of(answer: Value) -> Result<crate::history::Position, BusError> {
    if let Value::Array(parts) = answer {
        if let [offset, epoch] = parts.as_slice() {
            if let (Some(offset), Some(epoch)) = (offset.as_u64(), epoch.as_string()) {
                return Ok(crate::history::Position { offset, epoch });
            }
        }
    }
    Err(BusError::Backend {
        doing: "publishing into a retained room",
        source: Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "unexpected answer from the history script",
        )),
    })
}
