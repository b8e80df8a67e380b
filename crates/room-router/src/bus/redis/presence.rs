//! Room membership in Redis, so that `GET /rooms/{room}` reads the cluster's members in one
//! round trip instead of asking every node: a set per room and node,
//! `{cluster}:pres:{<room>}:<node>`, holding that node's members' connection ids.
//!
//! - **Never stale**: readers count only live nodes' sets (the node registry's expiry), so a
//!   node that dies (SIGKILL) drops out of every room within `3 × node_heartbeat`, and its
//!   sets expire `affinity_ttl` after its last refresh.
//! - **Joins stay fast**: a join or leave only records the change; a task writes the changes
//!   in one pipeline per batch (the last change of a connection in a room wins), the way
//!   affinity records are kept, and refreshes every set's TTL each `affinity_ttl / 3`.
//! - **Redis back empty**: every set is written again from the room table, and sets of rooms
//!   this node left meanwhile are deleted.

use std::collections::HashMap;

use super::*;

/// Membership changes not yet written, and the wake-up of the task that writes them.
#[derive(Default)]
pub(super) struct Presence {
    work: Mutex<PresenceWork>,
    notify: Notify,
}

#[derive(Default)]
struct PresenceWork {
    /// The last change of each (room, connection) since the last write: true joined.
    changes: HashMap<(RoomName, ConnectionId), bool>,
    /// Every set is to be written again (Redis came back, or a write failed).
    resync: bool,
}

impl Presence {
    /// `conn` joined (`true`) or left `room` on this node.
    pub(super) fn changed(&self, room: &RoomName, conn: &ConnectionId, joined: bool) {
        self.work
            .lock()
            .changes
            .insert((room.clone(), conn.clone()), joined);
        self.notify.notify_one();
    }

    /// Redis came back (maybe empty): every set is to be written again.
    pub(super) fn resync(&self) {
        self.work.lock().resync = true;
        self.notify.notify_one();
    }
}

impl Inner {
    pub(super) async fn run_presence(self: Arc<Self>) {
        let mut refresh = tokio::time::interval(self.opts.affinity_ttl / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Rooms whose set this node has written: refreshed, and deleted once left.
        let mut written: HashSet<RoomName> = HashSet::new();
        loop {
            let periodic = tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.presence.notify.notified() => false,
                _ = refresh.tick() => true,
            };
            let work = std::mem::take(&mut *self.presence.work.lock());
            let ok = if work.resync {
                self.resync_presence(&mut written).await
            } else {
                self.write_presence(work.changes, &mut written).await
                    && (!periodic || self.refresh_presence(&mut written).await)
            };
            if !ok {
                // Redis may or may not have applied it: the next round writes it all.
                self.presence.work.lock().resync = true;
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.presence.notify.notify_one();
            }
        }
    }

    /// A set lives as long as an affinity record: `affinity_ttl` past its last refresh.
    fn presence_ttl_ms(&self) -> i64 {
        self.opts.affinity_ttl.as_millis().max(1) as i64
    }

    fn presence_key(&self, room: &RoomName) -> String {
        self.keys.presence(room.as_str(), self.opts.node.as_str())
    }

    /// Writes a batch of changes: one pipeline, then a TTL on every set it touched.
    async fn write_presence(
        &self,
        changes: HashMap<(RoomName, ConnectionId), bool>,
        written: &mut HashSet<RoomName>,
    ) -> bool {
        if changes.is_empty() {
            return true;
        }
        let mut touched = HashSet::new();
        for chunk in changes
            .into_iter()
            .collect::<Vec<_>>()
            .chunks(AFFINITY_BATCH)
        {
            let pipeline = self.client.pipeline();
            for ((room, conn), joined) in chunk {
                let key = self.presence_key(room);
                let _: Result<(), _> = if *joined {
                    pipeline.sadd(key, conn.as_str()).await
                } else {
                    pipeline.srem(key, conn.as_str()).await
                };
                touched.insert(room.clone());
            }
            if let Err(e) = pipeline.all::<Vec<Value>>().await {
                tracing::debug!(error = %e, "presence update failed");
                return false;
            }
        }
        let pipeline = self.client.pipeline();
        for room in &touched {
            let _: Result<(), _> = pipeline
                .pexpire(self.presence_key(room), self.presence_ttl_ms(), None)
                .await;
        }
        written.extend(touched);
        pipeline.all::<Vec<Value>>().await.is_ok()
    }

    /// Extends the TTL of every set this node has written; forgets rooms it left.
    async fn refresh_presence(&self, written: &mut HashSet<RoomName>) -> bool {
        let Some(sink) = self.sink() else { return true };
        written.retain(|room| sink.has_members(room));
        let rooms: Vec<RoomName> = written.iter().cloned().collect();
        for chunk in rooms.chunks(AFFINITY_BATCH) {
            let pipeline = self.client.pipeline();
            for room in chunk {
                let _: Result<(), _> = pipeline
                    .pexpire(self.presence_key(room), self.presence_ttl_ms(), None)
                    .await;
            }
            if pipeline.all::<Vec<Value>>().await.is_err() {
                return false;
            }
        }
        true
    }

    /// Writes every set again from the room table, and deletes those of rooms left.
    async fn resync_presence(&self, written: &mut HashSet<RoomName>) -> bool {
        let Some(sink) = self.sink().cloned() else {
            return true;
        };
        let rooms = sink.local_rooms();
        let gone: Vec<RoomName> = written
            .iter()
            .filter(|r| !rooms.contains(r))
            .cloned()
            .collect();
        let pipeline = self.client.pipeline();
        for room in &gone {
            let _: Result<(), _> = pipeline.del(self.presence_key(room)).await;
        }
        if !gone.is_empty() && pipeline.all::<Vec<Value>>().await.is_err() {
            return false;
        }
        written.clear();
        for room in rooms {
            let members: Vec<String> = sink
                .room_members(&room)
                .into_iter()
                .map(|c| c.to_string())
                .collect();
            let key = self.presence_key(&room);
            // DEL and SADD in one transaction-free pipeline: a reader between them sees the
            // room briefly without this node's members, never with departed ones.
            for chunk in members.chunks(AFFINITY_BATCH).enumerate() {
                let pipeline = self.client.pipeline();
                if chunk.0 == 0 {
                    let _: Result<(), _> = pipeline.del(&key).await;
                }
                let _: Result<(), _> = pipeline.sadd(&key, chunk.1.to_vec()).await;
                let _: Result<(), _> = pipeline.pexpire(&key, self.presence_ttl_ms(), None).await;
                if pipeline.all::<Vec<Value>>().await.is_err() {
                    return false;
                }
            }
            written.insert(room);
        }
        true
    }

    /// Members of `room` on other live nodes, from their sets.
    pub(super) async fn read_presence(
        &self,
        room: &RoomName,
        with_ids: bool,
    ) -> Result<RoomPresence, BusError> {
        let nodes = self.live_nodes().await?;
        let others: Vec<_> = nodes.iter().filter(|n| n.id != self.opts.node).collect();
        let mut presence = RoomPresence::default();
        if others.is_empty() {
            return Ok(presence);
        }
        let pipeline = self.client.pipeline();
        for n in &others {
            let key = self.keys.presence(room.as_str(), n.id.as_str());
            let _: Result<(), _> = if with_ids {
                pipeline.smembers(key).await
            } else {
                pipeline.scard(key).await
            };
        }
        let replies: Vec<Value> = pipeline
            .all()
            .await
            .map_err(backend("reading room members"))?;
        for reply in replies {
            if with_ids {
                let ids: Vec<String> = reply.convert().unwrap_or_default();
                presence.count += ids.len();
                presence
                    .ids
                    .extend(ids.into_iter().map(ConnectionId::from_string));
            } else {
                let n = reply.as_u64().unwrap_or(0);
                presence.count = presence
                    .count
                    .saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
            }
        }
        Ok(presence)
    }
}
