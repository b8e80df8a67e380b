//! The node registry: heartbeats, and who is alive.
//!
//! Liveness is Redis's clock alone: each node's `nodeinfo` record expires
//! `3 × node_heartbeat` after its last heartbeat (a relative TTL that Redis counts), and the
//! `nodes` set only lists candidates. No node compares its wall clock with another's, so a node
//! whose clock is off by hours is neither evicted by the others nor evicts them.

use super::*;

impl Inner {
    fn live_ms(&self) -> u64 {
        3 * self.opts.node_heartbeat.as_millis() as u64
    }

    pub(super) async fn run_heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.opts.node_heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(sink) = self.sink() else {
                // Not attached to its router yet (the bus starts first): register as soon as
                // it is, not a whole heartbeat later, or a node that is ready would be missing
                // from `GET /cluster` for up to `node_heartbeat`.
                tokio::time::sleep(Duration::from_millis(10)).await;
                tick.reset_immediately();
                continue;
            };
            let view = sink.node_view();
            let info = format!("{},{}", view.connections, view.rooms);
            let live_ms = self.live_ms();
            // The record first, then the set, in two round trips: in Redis Cluster the two keys
            // live on different shards, and a reader that found this node in the set before
            // its record existed would take it for dead and remove it.
            let record: Result<(), _> = self
                .client
                .set(
                    self.keys.nodeinfo(self.opts.node.as_str()),
                    info,
                    Some(Expiration::PX(live_ms as i64)),
                    None,
                    false,
                )
                .await;
            if let Err(e) = record {
                tracing::debug!(error = %e, "heartbeat failed");
                continue;
            }
            let pipeline = self.client.pipeline();
            // The score is informational (when this node last wrote, by its own clock);
            // nothing compares it.
            let _: Result<(), _> = pipeline
                .zadd(
                    self.keys.nodes(),
                    None,
                    None,
                    false,
                    false,
                    (now_ms() as f64, self.opts.node.as_str()),
                )
                .await;
            // Every record expires unless refreshed: the registry outlives no node.
            let _: Result<(), _> = pipeline
                .pexpire(self.keys.nodes(), (live_ms * 2) as i64, None)
                .await;
            if let Err(e) = pipeline.all::<Vec<Value>>().await {
                tracing::debug!(error = %e, "heartbeat failed");
            }
        }
    }

    /// Every live node, this one included: the `nodes` set's members whose `nodeinfo` record
    /// has not expired. Members whose record has are dead and removed on the way.
    pub(super) async fn live_nodes(&self) -> Result<Vec<NodeView>, BusError> {
        let members: Vec<String> = self
            .client
            .zrange(self.keys.nodes(), 0, -1, None, false, None, false)
            .await
            .map_err(backend("reading the node registry"))?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        // A GET and a PTTL per node in one pipeline (no MGET: in Redis Cluster the keys live
        // on different shards).
        let pipeline = self.client.pipeline();
        for n in &members {
            let _: Result<(), _> = pipeline.get(self.keys.nodeinfo(n)).await;
            let _: Result<(), _> = pipeline.pttl(self.keys.nodeinfo(n)).await;
        }
        let replies: Vec<Value> = pipeline
            .all()
            .await
            .map_err(backend("reading the node registry"))?;
        let now = SystemTime::now();
        let live_ms = self.live_ms();
        let mut live = Vec::with_capacity(members.len());
        let mut dead = Vec::new();
        for (node, pair) in members.into_iter().zip(replies.chunks(2)) {
            let info: Option<String> = pair[0].clone().convert().ok().flatten();
            let ttl_ms: i64 = pair.get(1).and_then(|v| v.as_i64()).unwrap_or(-2);
            let Some(info) = info else {
                dead.push(node);
                continue;
            };
            let (connections, rooms) = info
                .split_once(',')
                .map(|(c, r)| (c.parse().unwrap_or(0), r.parse().unwrap_or(0)))
                .unwrap_or((0, 0));
            // When it last wrote: its record's age, by Redis's clock, back from now by ours.
            let age = Duration::from_millis(live_ms.saturating_sub(ttl_ms.max(0) as u64));
            live.push(NodeView {
                id: NodeId::new(node),
                connections,
                rooms,
                last_seen: now.checked_sub(age).unwrap_or(now),
            });
        }
        if !dead.is_empty() {
            let _: Result<i64, _> = self.client.zrem(self.keys.nodes(), dead).await;
        }
        Ok(live)
    }
}
