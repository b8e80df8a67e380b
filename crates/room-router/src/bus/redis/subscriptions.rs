//! Keeping the room subscriptions in step with local membership, in batches.

use super::*;

/// Rooms whose local membership changed since the last sync. What the node wants is read
/// from the room table at sync time, never from these marks: a mark only says "look again".
#[derive(Default)]
pub(super) struct Subscriptions {
    dirty: Mutex<HashSet<RoomName>>,
    notify: Notify,
    confirmed: Mutex<Confirmed>,
}

/// Rooms Redis has confirmed the subscription of, and who waits for one: one lock, so that a
/// waiter cannot register just after the confirmation it waits for went by.
#[derive(Default)]
struct Confirmed {
    rooms: HashSet<RoomName>,
    waiters: std::collections::HashMap<RoomName, Vec<oneshot::Sender<()>>>,
}

impl Subscriptions {
    /// Asks the sync task to look at `room` again.
    pub(super) fn mark(&self, room: &RoomName) {
        self.dirty.lock().insert(room.clone());
        self.notify.notify_one();
    }

    /// `None` when the room's subscription is confirmed, else a receiver that resolves when
    /// it is.
    pub(super) fn wait(&self, room: &RoomName) -> Option<oneshot::Receiver<()>> {
        let mut c = self.confirmed.lock();
        if c.rooms.contains(room) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        c.waiters.entry(room.clone()).or_default().push(tx);
        drop(c);
        self.mark(room);
        Some(rx)
    }

    fn confirm(&self, room: &RoomName, subscribed: bool) {
        let mut c = self.confirmed.lock();
        if subscribed {
            c.rooms.insert(room.clone());
            for waiter in c.waiters.remove(room).unwrap_or_default() {
                let _ = waiter.send(());
            }
        } else {
            c.rooms.remove(room);
            // A waiter whose room emptied again waits for the next subscription, or gives up.
            if let Some(w) = c.waiters.get_mut(room) {
                w.retain(|tx| !tx.is_closed());
            }
        }
    }

    fn take(&self) -> HashSet<RoomName> {
        std::mem::take(&mut *self.dirty.lock())
    }
}

impl Inner {
    /// Keeps the room subscriptions equal to the rooms with local members. Each pass takes
    /// the marked rooms, then reads the room table: a mark is set after the table changed, so
    /// the pass that takes it reads that change or a later one, whatever order racing joins
    /// and leaves marked in. Rooms whose last command failed are uncertain (Redis may or may
    /// not have applied it): they get the command the table asks for, whatever was recorded.
    pub(super) async fn run_subscriptions(self: Arc<Self>) {
        let mut subscribed: HashSet<RoomName> = HashSet::new();
        let mut uncertain: HashSet<RoomName> = HashSet::new();
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.subscriptions.notify.notified() => {}
            }
            let Some(sink) = self.sink().cloned() else {
                continue;
            };
            let dirty = self.subscriptions.take();
            let (mut add, mut remove) = (Vec::new(), Vec::new());
            for room in dirty {
                let sure = !uncertain.contains(&room);
                let have = subscribed.contains(&room);
                if sink.has_members(&room) {
                    if !have || !sure {
                        add.push(room);
                    } else {
                        // Already in place: a recovery asking again is answered at once.
                        self.subscriptions.confirm(&room, true);
                    }
                } else if have || !sure {
                    remove.push(room);
                }
            }
            for (rooms, subscribe) in [(add, true), (remove, false)] {
                if rooms.is_empty() {
                    continue;
                }
                let results = self.change_subscriptions(&rooms, subscribe).await;
                let mut failed = Vec::new();
                for (room, result) in rooms.into_iter().zip(results) {
                    match result {
                        Ok(()) => {
                            uncertain.remove(&room);
                            self.subscriptions.confirm(&room, subscribe);
                            if subscribe {
                                subscribed.insert(room);
                            } else {
                                subscribed.remove(&room);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, room = %room, subscribe, "room subscription change failed; retrying");
                            uncertain.insert(room.clone());
                            failed.push(room);
                        }
                    }
                }
                if !failed.is_empty() {
                    self.retry_rooms(failed);
                }
            }
        }
    }

    /// One SUBSCRIBE/UNSUBSCRIBE for the whole batch, whose result is every room's; in Redis
    /// Cluster one SSUBSCRIBE per channel (a command's channels must share a slot), sent
    /// concurrently, each with its own result, so a partly failed batch records what worked.
    async fn change_subscriptions(
        &self,
        rooms: &[RoomName],
        add: bool,
    ) -> Vec<Result<(), fred::error::Error>> {
        let channels = rooms.iter().map(|r| self.keys.room(r.as_str()));
        if !self.sharded {
            let channels: Vec<String> = channels.collect();
            let result = if add {
                self.subscriber.subscribe(channels).await
            } else {
                self.subscriber.unsubscribe(channels).await
            };
            return vec![result; rooms.len()];
        }
        let calls = channels.map(|c| async move {
            if add {
                self.subscriber.ssubscribe(c).await
            } else {
                self.subscriber.sunsubscribe(c).await
            }
        });
        futures_util::future::join_all(calls).await
    }

    fn retry_rooms(self: &Arc<Self>, rooms: Vec<RoomName>) {
        self.subscriptions.dirty.lock().extend(rooms);
        let i = self.clone();
        self.tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            i.subscriptions.notify.notify_one();
        });
    }
}
