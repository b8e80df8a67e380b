//! A connection's requests that wait on the cluster, run one at a time, in order, beside its
//! session: `send`s to other nodes, and publishes and joins in retained rooms.
//!
//! A `send` to a connection on another node waits on Redis (the affinity lookup and the
//! publish); a retained publish waits for its offset, a join with history for the room's
//! history. The session must not: while Redis answers it keeps reading frames, flushing its
//! queue and answering pings. So each becomes a future held here, which the session polls in
//! its `select!` next to everything else. Sends and publishes are started when their frame
//! arrives (their envelopes leave in order); their answers are awaited here one at a time, so
//! acks come in request order, and at most
//! [`MAX_WAITING`] requests holding at most `limits.outbound_queue_bytes` of payload wait:
//! past that the client is told the cluster is not keeping up, and nothing queues without
//! bound.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use protocol::RequestId;
use room_router::{JoinReceipt, PublishReceipt, RouterError, SendError};

/// Requests one connection may have waiting for the cluster.
pub const MAX_WAITING: usize = 64;

/// A finished request: the id to answer, and how it went.
pub struct Done {
    /// The request id of the frame.
    pub id: Option<RequestId>,
    /// Its outcome.
    pub outcome: Outcome,
}

/// How a request went, by kind.
pub enum Outcome {
    /// A `send` to another node.
    Sent(Result<(), SendError>),
    /// A publish into a retained room (it cannot fail once queued: without the history it
    /// was delivered locally, without an offset).
    Published(PublishReceipt),
    /// A join in a retained room.
    Joined(Result<JoinReceipt, RouterError>),
}

/// A request not yet finished.
pub type Pending = Pin<Box<dyn Future<Output = Done> + Send>>;

/// The sends of one connection, oldest first, each with the payload bytes it holds.
pub struct SendQueue {
    running: Option<(Pending, usize)>,
    waiting: VecDeque<(Pending, usize)>,
    bytes: usize,
    max_bytes: usize,
}

impl SendQueue {
    /// An empty queue holding at most `max_bytes` of payload.
    pub fn new(max_bytes: usize) -> Self {
        SendQueue {
            running: None,
            waiting: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Whether no send is waiting or running.
    pub fn is_empty(&self) -> bool {
        self.running.is_none() && self.waiting.is_empty()
    }

    /// Whether a request of `size` payload bytes would be taken now: asked before starting
    /// one whose effect begins at once (a retained publish is queued for Redis when made).
    pub fn fits(&self, size: usize) -> bool {
        let count = self.waiting.len() + usize::from(self.running.is_some());
        count < MAX_WAITING && (count == 0 || self.bytes + size <= self.max_bytes)
    }

    /// Queues a request of `size` payload bytes behind the others; `Err` gives it back when
    /// [`MAX_WAITING`] requests or the byte bound are reached.
    pub fn push(&mut self, send: Pending, size: usize) -> Result<(), Pending> {
        if !self.fits(size) {
            return Err(send);
        }
        self.bytes += size;
        self.waiting.push_back((send, size));
        Ok(())
    }

    /// The next send to finish, in order. Never resolves while the queue is empty.
    /// Cancel-safe: the running send is kept here, not in the returned future.
    pub async fn next(&mut self) -> Done {
        if self.running.is_none() {
            self.running = self.waiting.pop_front();
        }
        let Some((running, _)) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let done = running.await;
        if let Some((_, size)) = self.running.take() {
            self.bytes -= size;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn send(id: i64, after_ms: u64) -> Pending {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            Done {
                id: Some(RequestId::Int(id)),
                outcome: Outcome::Sent(Ok(())),
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn sends_finish_in_order_one_at_a_time_and_are_bounded() {
        let mut q = SendQueue::new(1_000);
        assert!(q.is_empty());
        // The first is slow: the second, fast, still finishes after it.
        assert!(q.push(send(1, 100), 10).is_ok());
        assert!(q.push(send(2, 1), 10).is_ok());
        // Cancelling a wait loses nothing.
        let _ = tokio::time::timeout(Duration::from_millis(10), q.next()).await;
        assert_eq!(q.next().await.id, Some(RequestId::Int(1)));
        assert_eq!(q.next().await.id, Some(RequestId::Int(2)));
        assert!(q.is_empty());
        for i in 0..MAX_WAITING as i64 {
            assert!(q.push(send(i, 1), 1).is_ok());
        }
        assert!(q.push(send(99, 1), 1).is_err(), "bounded in count");
        let mut q = SendQueue::new(1_000);
        assert!(q.push(send(1, 1), 2_000).is_ok(), "one send always fits");
        assert!(q.push(send(2, 1), 1).is_err(), "bounded in bytes");
        q.next().await;
        assert!(q.push(send(3, 1), 600).is_ok());
        assert!(q.push(send(4, 1), 600).is_err());
    }
}
