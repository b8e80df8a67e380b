//! Connection-to-node affinity records: written before the welcome, refreshed in pipelined
//! batches, deleted on close.

use super::*;

/// Commands per pipeline when refreshing affinity records: few round trips, and a pipeline's
/// transient memory (commands and replies) small next to the connections it refreshes.
pub(super) const AFFINITY_BATCH: usize = 2_000;

/// The spread of the start of a re-registration after a reconnect, in ms.
const REREGISTER_JITTER_MS: u64 = 250;
/// The pause between re-registration pipelines after a reconnect: at most 100,000 records a
/// second from one node.
const REREGISTER_GAP: Duration = Duration::from_millis(20);

/// What the affinity task has to do, and its wake-up.
#[derive(Default)]
pub(super) struct Affinity {
    work: Mutex<AffinityWork>,
    notify: Notify,
}

impl Affinity {
    /// A connection opened: the receiver resolves once its record is written.
    pub(super) fn opened(&self, id: &ConnectionId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.work.lock().opened.push((id.clone(), tx));
        self.notify.notify_one();
        rx
    }

    /// A connection closed: its record is to be deleted.
    pub(super) fn closed(&self, id: &ConnectionId) {
        self.work
            .lock()
            .closed
            .push((id.clone(), tokio::time::Instant::now()));
        self.notify.notify_one();
    }

    /// Redis came back (maybe empty): every record is to be written again.
    pub(super) fn refresh_all(&self) {
        self.work.lock().refresh_all = true;
        self.notify.notify_one();
    }

    /// Everything waiting (shutdown writes what it can itself).
    pub(super) fn take(&self) -> AffinityWork {
        std::mem::take(&mut *self.work.lock())
    }
}

#[derive(Default)]
pub(super) struct AffinityWork {
    pub(super) opened: Vec<(ConnectionId, oneshot::Sender<()>)>,
    /// Closed connections whose record is still to be deleted, with when they closed: a
    /// delete that fails is retried until the record would have expired anyway, so the list
    /// stays bounded by the close rate × `affinity_ttl` however long Redis is away.
    pub(super) closed: Vec<(ConnectionId, tokio::time::Instant)>,
    pub(super) refresh_all: bool,
}

impl Inner {
    pub(super) async fn run_affinity(self: Arc<Self>) {
        let ttl = self.opts.affinity_ttl;
        let mut refresh = tokio::time::interval(ttl / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let periodic = tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.affinity.notify.notified() => false,
                _ = refresh.tick() => true,
            };
            let work = self.affinity.take();
            let all = periodic || work.refresh_all;
            let node = self.opts.node.as_str();
            let ex = Some(Expiration::EX(ttl.as_secs().max(1) as i64));
            let pipeline = self.client.pipeline();
            for (id, _) in &work.opened {
                let _: Result<(), _> = pipeline
                    .set(self.keys.conn(id.as_str()), node, ex.clone(), None, false)
                    .await;
            }
            for (id, _) in &work.closed {
                let _: Result<(), _> = pipeline.del(self.keys.conn(id.as_str())).await;
            }
            if !work.opened.is_empty() || !work.closed.is_empty() {
                if let Err(e) = pipeline.all::<Vec<Value>>().await {
                    tracing::debug!(error = %e, "affinity update failed");
                    // Opened records are rewritten by the refresh after the reconnect;
                    // deletes are not, so they wait for the next round.
                    let live: Vec<_> = work
                        .closed
                        .into_iter()
                        .filter(|(_, at)| at.elapsed() < ttl)
                        .collect();
                    self.affinity.work.lock().closed.extend(live);
                }
            }
            for (_, done) in work.opened {
                let _ = done.send(());
            }
            if all {
                self.refresh_all(ex, work.refresh_all).await;
            }
        }
    }

    /// Rewrites every local connection's record, in pipelines of [`AFFINITY_BATCH`]: 20,000
    /// connections are 10 round trips per `affinity_ttl / 3` (0.5 per second at the default TTL).
    /// After a reconnect every node does this at once, so it starts after a random delay and
    /// leaves [`REREGISTER_GAP`] between pipelines: Redis coming back sees a spread of
    /// batches, not one burst per node.
    async fn refresh_all(&self, ex: Option<Expiration>, after_reconnect: bool) {
        let Some(sink) = self.sink() else { return };
        let node = self.opts.node.as_str();
        if after_reconnect {
            let jitter = rand::random_range(0..REREGISTER_JITTER_MS);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        for (i, chunk) in sink.local_connections().chunks(AFFINITY_BATCH).enumerate() {
            if after_reconnect && i > 0 {
                tokio::time::sleep(REREGISTER_GAP).await;
            }
            let pipeline = self.client.pipeline();
            for id in chunk {
                let _: Result<(), _> = pipeline
                    .set(self.keys.conn(id.as_str()), node, ex.clone(), None, false)
                    .await;
            }
            if let Err(e) = pipeline.all::<Vec<Value>>().await {
                tracing::debug!(error = %e, "affinity refresh failed");
                return;
            }
        }
    }
}
