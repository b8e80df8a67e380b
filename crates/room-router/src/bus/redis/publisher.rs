//! Publishing room envelopes: a queue bounded in count and in bytes, drained in pipelines.

use super::*;

/// Room envelopes waiting to be published: bounded in count and in bytes, so a slow Redis
/// drops instead of growing (16,384 messages of 128 KiB would otherwise be 2 GiB).
const PUBLISH_QUEUE: usize = 16_384;
/// Bytes of envelopes waiting to be published or being published, at most.
const PUBLISH_QUEUE_BYTES: usize = 32 << 20;

/// The publishing side's state: the queue and the bytes it holds.
pub(super) struct Publisher {
    tx: mpsc::Sender<(String, Bytes)>,
    /// Bytes queued or being sent ([`PUBLISH_QUEUE_BYTES`]): a batch stuck on a slow Redis
    /// still counts.
    queued_bytes: AtomicUsize,
}

impl Publisher {
    /// A publisher and the receiving end its task drains.
    pub(super) fn new() -> (Publisher, mpsc::Receiver<(String, Bytes)>) {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        (
            Publisher {
                tx,
                queued_bytes: AtomicUsize::new(0),
            },
            rx,
        )
    }

    /// Queues an envelope for `channel`; `false` when the queue is full (in count or bytes),
    /// and then nothing is reserved.
    pub(super) fn enqueue(&self, channel: String, bytes: Bytes) -> bool {
        let len = bytes.len();
        // Reserve the bytes only if they fit: a refused envelope never counts against others.
        if self
            .queued_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q + len <= PUBLISH_QUEUE_BYTES).then_some(q + len)
            })
            .is_err()
        {
            return false;
        }
        if self.tx.try_send((channel, bytes)).is_err() {
            self.release(len);
            return false;
        }
        true
    }

    /// Bytes sent or dropped: no longer held.
    fn release(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Inner {
    pub(super) async fn run_publisher(self: Arc<Self>, mut rx: mpsc::Receiver<(String, Bytes)>) {
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
            let bytes: usize = batch.iter().map(|(_, b)| b.len()).sum();
            if !self.up() {
                self.dropped.fetch_add(n as u64, Ordering::Relaxed);
                batch.clear();
                self.publisher.release(bytes);
                continue;
            }
            // One pipeline per batch: one round trip however many publishes are waiting,
            // and in order, on one connection.
            let pipeline = self.client.pipeline();
            for (channel, payload) in batch.drain(..) {
                let _: Result<(), _> = if self.sharded {
                    pipeline.spublish(channel, payload).await
                } else {
                    pipeline.publish(channel, payload).await
                };
            }
            if let Err(e) = pipeline.all::<Vec<Value>>().await {
                self.dropped.fetch_add(n as u64, Ordering::Relaxed);
                tracing::debug!(error = %e, "publish to redis failed");
            }
            self.publisher.release(bytes);
        }
    }
}
