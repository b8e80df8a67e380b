//! Asking other nodes for a connection's view, and answering their questions (a room's
//! members too, for nodes of an older version during a rolling upgrade: this one reads them
//! from Redis, see `presence`).

use super::*;

/// Replies to other nodes' queries sent at once; past that, a query goes unanswered and its
/// asker times out, rather than tasks piling up behind a slow Redis.
const REPLIES_IN_FLIGHT: usize = 256;
/// How long a query to another node may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Queries this node is waiting on, and the bound on replies it sends.
pub(super) struct Queries {
    pending: DashMap<u64, oneshot::Sender<Reply>>,
    next: AtomicU64,
    /// Replies to other nodes' queries being sent ([`REPLIES_IN_FLIGHT`] at most).
    pub(super) reply_permits: Arc<tokio::sync::Semaphore>,
}

impl Default for Queries {
    fn default() -> Self {
        Queries {
            pending: DashMap::new(),
            next: AtomicU64::new(1),
            reply_permits: Arc::new(tokio::sync::Semaphore::new(REPLIES_IN_FLIGHT)),
        }
    }
}

impl Queries {
    /// A new query id, waiting for its reply until the returned guard drops.
    fn start(&self) -> (PendingQuery<'_>, oneshot::Receiver<Reply>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, tx);
        (
            PendingQuery {
                queries: &self.pending,
                id,
            },
            rx,
        )
    }

    /// A reply arrived: hands it to its asker, if it still waits.
    pub(super) fn answer(&self, id: u64, reply: Reply) {
        if let Some((_, tx)) = self.pending.remove(&id) {
            let _ = tx.send(reply);
        }
    }

    /// Queries waiting.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }
}

/// A query waiting for its reply; dropping it forgets the query.
struct PendingQuery<'a> {
    queries: &'a DashMap<u64, oneshot::Sender<Reply>>,
    id: u64,
}

impl Drop for PendingQuery<'_> {
    fn drop(&mut self) {
        self.queries.remove(&self.id);
    }
}

impl Inner {
    /// Asks `node` and waits (at most [`QUERY_TIMEOUT`]) for its reply; `None` when no node
    /// listens or none answers in time.
    pub(super) async fn query(
        &self,
        node: &NodeId,
        query: Query,
    ) -> Result<Option<Reply>, BusError> {
        // Forgotten however this ends, a cancelled request (a client gone) included.
        let (pending, rx) = self.queries.start();
        let id = pending.id;
        let envelope = Envelope {
            origin: self.opts.node.clone(),
            body: EnvelopeBody::Query {
                id,
                reply_to: self.opts.node.clone(),
                query,
            },
            traceparent: None,
        };
        let receivers: i64 = self
            .publish_to(self.keys.node(node.as_str()), envelope.encode())
            .await
            .map_err(backend("asking another node"))?;
        if receivers == 0 {
            return Ok(None);
        }
        let reply = tokio::time::timeout(QUERY_TIMEOUT, rx).await;
        Ok(reply.ok().and_then(Result::ok))
    }
}
