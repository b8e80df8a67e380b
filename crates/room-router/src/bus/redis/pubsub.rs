//! Publishing room envelopes (bounded queue, pipelined) and keeping the room subscriptions
//! in step with local membership (batched).

use super::*;

#[derive(Default)]
pub(super) struct Subscriptions {
    pub(super) wanted: HashSet<RoomName>,
    pub(super) dirty: HashSet<RoomName>,
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
                self.publish_queued_bytes
                    .fetch_sub(bytes, Ordering::Relaxed);
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
            self.publish_queued_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    pub(super) async fn run_subscriptions(self: Arc<Self>) {
        let mut subscribed: HashSet<RoomName> = HashSet::new();
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.subs_notify.notified() => {}
            }
            // Apply every change that accumulated, as one SUBSCRIBE and one UNSUBSCRIBE.
            let (add, remove): (Vec<RoomName>, Vec<RoomName>) = {
                let mut st = self.subs.lock();
                let dirty = std::mem::take(&mut st.dirty);
                let add = dirty
                    .iter()
                    .filter(|r| st.wanted.contains(*r) && !subscribed.contains(*r))
                    .cloned()
                    .collect();
                let remove = dirty
                    .iter()
                    .filter(|r| !st.wanted.contains(*r) && subscribed.contains(*r))
                    .cloned()
                    .collect();
                (add, remove)
            };
            if !add.is_empty() {
                let channels: Vec<String> =
                    add.iter().map(|r| self.keys.room(r.as_str())).collect();
                match self.change_subscriptions(channels, true).await {
                    Ok(()) => subscribed.extend(add),
                    Err(e) => {
                        tracing::warn!(error = %e, "subscribe failed; retrying");
                        self.retry_rooms(add);
                    }
                }
            }
            if !remove.is_empty() {
                let channels: Vec<String> =
                    remove.iter().map(|r| self.keys.room(r.as_str())).collect();
                match self.change_subscriptions(channels, false).await {
                    Ok(()) => {
                        for r in &remove {
                            subscribed.remove(r);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "unsubscribe failed; retrying");
                        self.retry_rooms(remove);
                    }
                }
            }
        }
    }

    /// One SUBSCRIBE/UNSUBSCRIBE for the whole batch; in Redis Cluster one SSUBSCRIBE per
    /// channel (a command's channels must share a slot), sent concurrently.
    async fn change_subscriptions(
        &self,
        channels: Vec<String>,
        add: bool,
    ) -> Result<(), fred::error::Error> {
        if !self.sharded {
            return if add {
                self.subscriber.subscribe(channels).await
            } else {
                self.subscriber.unsubscribe(channels).await
            };
        }
        let calls = channels.into_iter().map(|c| async move {
            if add {
                self.subscriber.ssubscribe(c).await
            } else {
                self.subscriber.sunsubscribe(c).await
            }
        });
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect()
    }

    fn retry_rooms(self: &Arc<Self>, rooms: Vec<RoomName>) {
        self.subs.lock().dirty.extend(rooms);
        let i = self.clone();
        self.tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            i.subs_notify.notify_one();
        });
    }
}
