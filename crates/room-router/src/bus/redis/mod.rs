//! The Redis bus: many node processes, one Redis.
//!
//! - **Rooms**: a node subscribes to `{cluster}:room:{<room>}` while it has local members, in
//!   batched SUBSCRIBE/UNSUBSCRIBE commands (one round trip per batch, whatever the churn), and
//!   PUBLISHes each room envelope once, pipelined: Redis work per publish is one command plus
//!   one delivery per node with members, never per member.
//! - **Nodes**: each node listens on `{cluster}:node:{<node>}` for direct messages,
//!   disconnects and queries, and registers in `{cluster}:nodes` (the set of candidates, the
//!   key itself expiring when no node is left) with its counts in `{cluster}:nodeinfo:<node>`,
//!   which expires `3 × node_heartbeat` after its last heartbeat: liveness is that expiry, by
//!   Redis's clock, never a comparison of node clocks; a dead node leaves nothing.
//! - **Affinity**: `{cluster}:conn:<id>` → node, with a TTL, written before the welcome,
//!   refreshed in pipelined batches, deleted on close; a direct send reads it and publishes to
//!   the owning node in one script, queued in order in the publish pipeline (`direct`).
//! - **Presence**: a set of member ids per room and node, written in batches, read for
//!   `GET /rooms/{room}` from live nodes only (`presence`).
//! - **History**: a stream and a position per retained room, written by one script that also
//!   publishes (`history`).
//! - **Redis down**: local delivery goes on; publishes to other nodes are dropped and counted
//!   (at most once); the client reconnects with backoff and jitter, resubscribes every room, and
//!   re-registers every local connection, paced.
//!
//! # Layout
//! Each part owns its state; this file wires them and implements [`Bus`].
//! - [`url`] (URL forms), `keys` (names), `tls`.
//! - `publisher`: the bounded publish queue and its pipelining task.
//! - `subscriptions`: room subscriptions following the room table.
//! - `affinity`: connection records, written, refreshed, deleted, re-registered.
//! - `presence`: room member sets, written, refreshed, rewritten after a reconnect.
//! - `history`: the retained rooms' scripts and history reads.
//! - `direct`: the direct-send script (affinity lookup and publish in one round trip).
//! - `registry`: node heartbeats and liveness.
//! - `queries`: asking other nodes (connection views), and the bound on answering them.
//! - `reader`: incoming envelopes; room deliveries handed to one fan-out worker per CPU by
//!   room, so rooms do not queue behind each other.
//!
//! In Redis Cluster mode every channel is a shard channel (SSUBSCRIBE/SPUBLISH): a room's
//! messages travel through the shard that owns the room's hash slot only, so rooms spread
//! over every shard instead of every message being broadcast cluster-wide.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use parking_lot::Mutex;
use protocol::{
    ConnectionId, ConnectionInfo, Envelope, EnvelopeBody, NodeId, Query, Reply, RoomName,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BoxFuture, Bus, BusSink};
use crate::error::BusError;
use crate::history::{HistoryPage, Position, Retention};
use crate::views::{ConnectionView, NodeView, RoomPresence};

/// Settings of a [`RedisBus`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// A URL of one of the forms of SPEC section 2.
    pub url: String,
    /// The mode of `redis://` and `rediss://` URLs (`cluster.redis_mode`).
    pub mode: RedisMode,
    /// Prefix of every key and channel (`cluster.name`).
    pub cluster: String,
    /// This node.
    pub node: NodeId,
    /// TTL of affinity records (`cluster.affinity_ttl`).
    pub affinity_ttl: Duration,
    /// Interval of node heartbeats (`cluster.node_heartbeat`).
    pub node_heartbeat: Duration,
    /// PEM CA trusted for TLS (`cluster.redis_ca_file`); `None`: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Workers fanning out room messages from other nodes, each owning its share of the
    /// rooms; 0: one per CPU.
    pub fanout_workers: usize,
}

mod affinity;
mod direct;
mod history;
mod keys;
mod presence;
mod publisher;
mod queries;
mod reader;
mod registry;
mod subscriptions;
mod tls;
pub mod url;

pub use url::RedisMode;

use affinity::{Affinity, AFFINITY_BATCH};
use keys::Keys;
use publisher::{Outgoing, Publisher};
use queries::Queries;
use reader::info_to_view;
use subscriptions::Subscriptions;
use tls::tls_connector;

/// Room envelopes from other nodes waiting for one fan-out worker: a worker this far behind
/// drops (counted in `dropped`) rather than holding the reader up.
const FANOUT_QUEUE: usize = 4_096;
/// Bytes of room envelopes waiting for the fan-out workers, all together, at most: past it
/// envelopes are dropped (counted in `dropped`), as a slow reader's would be.
const FANOUT_QUEUE_BYTES: usize = 32 << 20;
/// How long a recovery waits for its room's subscription before answering `unavailable`.
const RECEIVING_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the first connection may take before start-up fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Inner {
    opts: RedisOptions,
    /// Redis Cluster: shard channels.
    sharded: bool,
    keys: Keys,
    client: Client,
    subscriber: SubscriberClient,
    sink: OnceLock<Arc<dyn BusSink>>,
    publisher: Publisher,
    subscriptions: Subscriptions,
    affinity: Affinity,
    presence: presence::Presence,
    queries: Queries,
    /// Room envelopes from other nodes, by room, to the workers that fan them out.
    fanout_workers: Vec<mpsc::Sender<(Envelope, usize)>>,
    /// Bytes waiting in `fanout_workers` ([`FANOUT_QUEUE_BYTES`]).
    fanout_queued_bytes: AtomicUsize,
    malformed: AtomicU64,
    dropped: AtomicU64,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// The Redis implementation of [`Bus`].
pub struct RedisBus {
    inner: Arc<Inner>,
}

/// A Redis failure while `doing` something, its cause kept.
fn backend(doing: &'static str) -> impl Fn(fred::error::Error) -> BusError {
    move |e| BusError::Backend {
        doing,
        source: Arc::new(e),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl RedisBus {
    /// Checks what can be checked without the network: the URL and, for TLS, the CA file.
    /// `connect` fails on the same things; this lets a configuration check say so up front.
    pub fn check(opts: &RedisOptions) -> Result<(), BusError> {
        let target = url::parse(&opts.url, opts.mode)
            .map_err(|e| BusError::Config(format!("invalid redis URL: {e}")))?;
        if target.tls {
            tls_connector(opts.ca_file.as_deref())?;
        }
        Ok(())
    }

    /// Connects to Redis. Fails fast (a few seconds) on a wrong URL or an unreachable server;
    /// once connected, losing Redis is survived.
    pub async fn connect(opts: RedisOptions) -> Result<RedisBus, BusError> {
        let target = url::parse(&opts.url, opts.mode)
            .map_err(|e| BusError::Config(format!("invalid redis URL: {e}")))?;
        let sharded = target.mode == RedisMode::Cluster;
        let mut config = target.fred_config();
        if target.tls {
            config.tls = Some(tls_connector(opts.ca_file.as_deref())?.into());
        }
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(reconnect_policy())
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                // Commands issued while disconnected fail rather than pile up.
                c.max_command_buffer_len = 10_000;
                // A command in flight when the connection drops is not sent again: a PUBLISH
                // that Redis had already delivered would arrive twice (at most once, SPEC
                // section 7). What must be rewritten after a reconnect is, by its own task.
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(2);
                // fred preallocates every slot of its broadcast channels (several per client):
                // a bounded burst buffer, not a backlog. A reader that falls further behind
                // drops and counts (`dropped`).
                p.broadcast_channel_capacity = 8_192;
            });
        let client = builder
            .build()
            .map_err(backend("configuring the redis client"))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(backend("configuring the redis subscriber"))?;
        for c in [&client as &dyn ClientLikeInit, &subscriber] {
            match tokio::time::timeout(CONNECT_TIMEOUT, c.start()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(backend("connecting to redis")(e)),
                Err(_) => {
                    return Err(BusError::Backend {
                        doing: "connecting to redis",
                        source: Arc::new(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer within {CONNECT_TIMEOUT:?}"),
                        )),
                    })
                }
            }
        }
        let (publisher, publish_rx) = Publisher::new();
        let workers = match opts.fanout_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (fanout_workers, fanout_rxs): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::channel(FANOUT_QUEUE)).unzip();
        let inner = Arc::new(Inner {
            keys: Keys {
                prefix: opts.cluster.clone(),
            },
            opts,
            sharded,
            client,
            subscriber,
            sink: OnceLock::new(),
            publisher,
            subscriptions: Subscriptions::default(),
            affinity: Affinity::default(),
            presence: Default::default(),
            queries: Queries::default(),
            fanout_workers,
            fanout_queued_bytes: AtomicUsize::new(0),
            malformed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        // fred's own task: resubscribes every tracked channel after a reconnect. It ends when
        // the subscriber quits (shutdown), so its handle is not kept.
        drop(inner.subscriber.manage_subscriptions());
        let own = inner.keys.node(inner.opts.node.as_str());
        if sharded {
            inner.subscriber.ssubscribe(own).await
        } else {
            inner.subscriber.subscribe(own).await
        }
        .map_err(backend("subscribing to this node's channel"))?;
        let i = inner.clone();
        inner.tasks.spawn(async move { i.run_reader().await });
        for rx in fanout_rxs {
            let i = inner.clone();
            inner
                .tasks
                .spawn(async move { i.run_fanout_worker(rx).await });
        }
        let i = inner.clone();
        inner
            .tasks
            .spawn(async move { i.run_publisher(publish_rx).await });
        let i = inner.clone();
        inner
            .tasks
            .spawn(async move { i.run_subscriptions().await });
        let i = inner.clone();
        inner.tasks.spawn(async move { i.run_affinity().await });
        let i = inner.clone();
        inner.tasks.spawn(async move { i.run_presence().await });
        let i = inner.clone();
        inner.tasks.spawn(async move { i.run_heartbeat().await });
        // After a reconnect every local record must be written again at once: Redis may have
        // come back empty.
        // Connection failures (refused, TLS handshake, lost) are logged here; the reconnect
        // policy retries them. Ends with the client.
        for (which, errors) in [
            ("client", inner.client.error_rx()),
            ("subscriber", inner.subscriber.error_rx()),
        ] {
            let cancel = inner.cancel.clone();
            inner.tasks.spawn(async move {
                let mut errors = errors;
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        e = errors.recv() => match e {
                            Ok((error, server)) => tracing::warn!(connection = which, server = ?server, %error, "redis connection error; reconnecting"),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => return,
                        },
                    }
                }
            });
        }
        // Ends with the client, like the subscription task above.
        let i = inner.clone();
        drop(inner.client.on_reconnect(move |_| {
            let i = i.clone();
            async move {
                i.affinity.refresh_all();
                i.presence.resync();
                Ok(())
            }
        }));
        Ok(RedisBus { inner })
    }

    /// Envelopes from other nodes that could not be read (counted, logged, dropped).
    pub fn malformed(&self) -> u64 {
        self.inner.malformed.load(Ordering::Relaxed)
    }

    /// Room envelopes dropped because Redis was down or slow.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The worker that fans out `room`'s messages from other nodes: rooms of different
    /// workers never wait for each other.
    pub fn fanout_worker_of(&self, room: &RoomName) -> usize {
        reader::worker_for(room, self.inner.fanout_workers.len())
    }

    /// Queries to other nodes waiting for their reply (each is forgotten when its asker
    /// gives up, so this never grows with cancelled requests).
    pub fn pending_queries(&self) -> usize {
        self.inner.queries.len()
    }
}

/// Backoff from 100 ms to 2 s, doubling, with up to 100 ms of jitter per step on the way up so
/// that a fleet of nodes does not reconnect in step (the phase it leaves holds at the cap);
/// forever, since Redis coming back is the normal case.
fn reconnect_policy() -> ReconnectPolicy {
    let mut policy = ReconnectPolicy::new_exponential(0, 100, 2_000, 2);
    policy.set_jitter(100);
    policy
}

/// `init` on either client kind, so both start the same way.
trait ClientLikeInit: Sync {
    fn start(&self) -> BoxFuture<'_, Result<(), fred::error::Error>>;
}

impl ClientLikeInit for Client {
    fn start(&self) -> BoxFuture<'_, Result<(), fred::error::Error>> {
        Box::pin(async move { self.init().await.map(|_| ()) })
    }
}

impl ClientLikeInit for SubscriberClient {
    fn start(&self) -> BoxFuture<'_, Result<(), fred::error::Error>> {
        Box::pin(async move { self.init().await.map(|_| ()) })
    }
}

impl Inner {
    fn sink(&self) -> Option<&Arc<dyn BusSink>> {
        self.sink.get()
    }

    /// PUBLISH, or SPUBLISH in Redis Cluster; the number of subscribers that received it.
    async fn publish_to(
        &self,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<i64, fred::error::Error> {
        if self.sharded {
            self.client.spublish(channel, payload).await
        } else {
            self.client.publish(channel, payload).await
        }
    }

    fn up(&self) -> bool {
        self.client.is_connected() && self.subscriber.is_connected()
    }
}

impl Bus for RedisBus {
    fn attach(&self, sink: Arc<dyn BusSink>) {
        let _ = self.inner.sink.set(sink);
    }

    fn interest_changed(&self, room: &RoomName) {
        self.inner.subscriptions.mark(room);
    }

    fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let Some(room) = envelope.room() else {
            return Ok(());
        };
        let channel = self.inner.keys.room(room.as_str());
        let out = Outgoing::Plain(channel, Bytes::from(envelope.encode()));
        if self.inner.publisher.enqueue(out).is_ok() {
            Ok(())
        } else {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            Err(BusError::Overloaded)
        }
    }

    fn publish_retained(
        &self,
        envelope: Envelope,
        retention: Retention,
    ) -> BoxFuture<'static, Result<Position, BusError>> {
        let EnvelopeBody::Room { room, .. } = &envelope.body else {
            return Box::pin(std::future::ready(Err(BusError::Config(
                "only room envelopes are retained".to_owned(),
            ))));
        };
        let (reply, answer) = oneshot::channel();
        let out = Outgoing::Retained(history::RetainedPublish {
            room: room.clone(),
            envelope: Bytes::from(envelope.encode()),
            retention,
            reply,
        });
        if self.inner.publisher.enqueue(out).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return Box::pin(std::future::ready(Err(BusError::Overloaded)));
        }
        Box::pin(async move { answer.await.unwrap_or(Err(BusError::Down)) })
    }

    fn history<'a>(
        &'a self,
        room: &'a RoomName,
        since: u64,
        epoch: Option<&'a str>,
        retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BusError>> {
        Box::pin(self.inner.read_history(room, since, epoch, retention))
    }

    fn receiving<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let Some(confirmed) = self.inner.subscriptions.wait(room) else {
                return Ok(());
            };
            match tokio::time::timeout(RECEIVING_TIMEOUT, confirmed).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(BusError::Down),
            }
        })
    }

    fn connection_opened<'a>(&'a self, id: &'a ConnectionId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // The record goes through the command connection: a subscriber that is
            // reconnecting on its own does not stop it being written.
            if !self.inner.client.is_connected() {
                // Written by the re-registration when Redis is back.
                return;
            }
            let written = self.inner.affinity.opened(id);
            let _ = tokio::time::timeout(Duration::from_secs(2), written).await;
        })
    }

    fn connection_closed(&self, id: &ConnectionId) {
        self.inner.affinity.closed(id);
    }

    fn route_to_connection(
        &self,
        to: &ConnectionId,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<bool, BusError>> {
        if !self.inner.sharded {
            // One script in the publish pipeline reads the affinity record and publishes to
            // its node: one round trip, queued now, in order with this node's other
            // publishes.
            let (reply, answer) = oneshot::channel();
            let out = Outgoing::Direct(direct::DirectSend {
                conn_key: self.inner.keys.conn(to.as_str()),
                envelope: Bytes::from(envelope.encode()),
                reply,
            });
            if self.inner.publisher.enqueue(out).is_err() {
                return Box::pin(std::future::ready(Err(BusError::Overloaded)));
            }
            return Box::pin(async move { answer.await.unwrap_or(Err(BusError::Down)) });
        }
        // Redis Cluster: the record and the node's shard channel live on different shards,
        // so it is a read, then a publish.
        let inner = self.inner.clone();
        let to = to.clone();
        Box::pin(async move {
            let node: Option<String> = inner
                .client
                .get(inner.keys.conn(to.as_str()))
                .await
                .map_err(backend("reading an affinity record"))?;
            let Some(node) = node else { return Ok(false) };
            if node == inner.opts.node.as_str() {
                // The router looked here first: a record naming this node for a connection
                // it does not hold is stale (its delete has not reached Redis yet).
                return Ok(false);
            }
            let receivers: i64 = inner
                .publish_to(inner.keys.node(&node), envelope.encode())
                .await
                .map_err(backend("publishing to another node"))?;
            Ok(receivers > 0)
        })
    }

    fn remote_connection<'a>(
        &'a self,
        id: &'a ConnectionId,
    ) -> BoxFuture<'a, Result<Option<ConnectionView>, BusError>> {
        Box::pin(async move {
            let node: Option<String> = self
                .inner
                .client
                .get(self.inner.keys.conn(id.as_str()))
                .await
                .map_err(backend("reading an affinity record"))?;
            let Some(node) = node else { return Ok(None) };
            if node == self.inner.opts.node.as_str() {
                return Ok(None);
            }
            match self
                .inner
                .query(&NodeId::new(node), Query::Connection(id.to_string()))
                .await?
            {
                Some(Reply::Connection(info)) => Ok(info.map(info_to_view)),
                _ => Ok(None),
            }
        })
    }

    fn remote_room<'a>(
        &'a self,
        room: &'a RoomName,
        with_ids: bool,
    ) -> BoxFuture<'a, Result<RoomPresence, BusError>> {
        Box::pin(self.inner.read_presence(room, with_ids))
    }

    fn membership_changed(&self, room: &RoomName, conn: &ConnectionId, joined: bool) {
        self.inner.presence.changed(room, conn, joined);
    }

    fn remote_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeView>, BusError>> {
        Box::pin(async move {
            let mut nodes = self.inner.live_nodes().await?;
            nodes.retain(|n| n.id != self.inner.opts.node);
            Ok(nodes)
        })
    }

    fn stats(&self) -> super::BusStats {
        super::BusStats {
            malformed: self.malformed(),
            dropped: self.dropped(),
        }
    }

    fn is_up(&self) -> bool {
        self.inner.up()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.cancel.cancel();
            inner.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), inner.tasks.wait()).await;
            // Every record this node wrote: connections still open, and closes the stopped
            // affinity task had not sent yet. One DEL per key, pipelined (keys of a Redis
            // Cluster live on different shards).
            let work = inner.affinity.take();
            let mut ids: Vec<ConnectionId> = work.closed.into_iter().map(|(id, _)| id).collect();
            ids.extend(work.opened.into_iter().map(|(id, _)| id));
            if let Some(sink) = inner.sink() {
                ids.extend(sink.local_connections());
            }
            for chunk in ids.chunks(AFFINITY_BATCH) {
                let pipeline = inner.client.pipeline();
                for id in chunk {
                    let _: Result<(), _> = pipeline.del(inner.keys.conn(id.as_str())).await;
                }
                let _ = pipeline.all::<Vec<Value>>().await;
            }
            let node = inner.opts.node.as_str();
            // This node's member sets: readers skip a node that left, but the sets need not
            // wait out their TTL.
            if let Some(sink) = inner.sink() {
                let pipeline = inner.client.pipeline();
                for room in sink.local_rooms() {
                    let _: Result<(), _> =
                        pipeline.del(inner.keys.presence(room.as_str(), node)).await;
                }
                let _ = pipeline.all::<Vec<Value>>().await;
            }
            let _: Result<i64, _> = inner.client.zrem(inner.keys.nodes(), node).await;
            let _: Result<i64, _> = inner.client.del(inner.keys.nodeinfo(node)).await;
            let _ = inner.subscriber.quit().await;
            let _ = inner.client.quit().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(n: usize) -> Vec<u64> {
        let mut p = reconnect_policy();
        (0..n)
            .map(|_| p.next_delay().expect("never gives up"))
            .collect()
    }

    #[test]
    fn reconnects_back_off_with_jitter_forever() {
        let d = delays(1_000);
        assert!(d[0] <= 200, "starts near 100 ms: {:?}", &d[..5]);
        assert!(d.iter().all(|&x| x <= 2_100), "capped near 2 s");
        assert!(d[10..].iter().all(|&x| x >= 2_000), "reaches the cap");
        // Jitter on the way up (fred caps it away at the cap), which leaves each node's
        // retries at its own phase: two schedules differ (equal by chance: 1 in 100^5).
        assert_ne!(delays(20), delays(20));
    }
}
