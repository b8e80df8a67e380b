//! The node registry: heartbeats, and who is alive.

use super::*;

impl Inner {
    pub(super) async fn run_heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.opts.node_heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(sink) = self.sink() else { continue };
            let view = sink.node_view();
            let info = format!("{},{}", view.connections, view.rooms);
            let now = now_ms();
            let live_ms = 3 * self.opts.node_heartbeat.as_millis() as u64;
            let stale = now.saturating_sub(live_ms);
            let pipeline = self.client.pipeline();
            let _: Result<(), _> = pipeline
                .zadd(
                    self.keys.nodes(),
                    None,
                    None,
                    false,
                    false,
                    (now as f64, self.opts.node.as_str()),
                )
                .await;
            // Every record expires unless refreshed: the registry outlives no node.
            let _: Result<(), _> = pipeline
                .pexpire(self.keys.nodes(), (live_ms * 2) as i64, None)
                .await;
            let _: Result<(), _> = pipeline
                .set(
                    self.keys.nodeinfo(self.opts.node.as_str()),
                    info,
                    Some(Expiration::PX(live_ms as i64)),
                    None,
                    false,
                )
                .await;
            let _: Result<(), _> = pipeline
                .zremrangebyscore(self.keys.nodes(), "-inf", (stale as f64) - 1.0)
                .await;
            if let Err(e) = pipeline.all::<Vec<Value>>().await {
                tracing::debug!(error = %e, "heartbeat failed");
            }
        }
    }

    pub(super) async fn live_nodes(&self) -> Result<Vec<(NodeId, u64)>, BusError> {
        let stale = now_ms().saturating_sub(3 * self.opts.node_heartbeat.as_millis() as u64);
        let members: Vec<(String, f64)> = self
            .client
            .zrangebyscore(self.keys.nodes(), stale as f64, "+inf", true, None)
            .await
            .map_err(backend)?;
        Ok(members
            .into_iter()
            .map(|(n, score)| (NodeId::new(n), score as u64))
            .collect())
    }
}
