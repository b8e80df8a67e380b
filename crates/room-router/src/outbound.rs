//! The outbound side of one connection: a direct write when the socket can take the frame
//! now, a bounded queue when it cannot.
//!
//! Fan-out calls [`Outbound::push`] for every member. When nothing is queued the frame is
//! written to the socket at once, from the fan-out itself (a non-blocking write under the
//! connection's mutex): no task wake-up, no per-recipient copy. Only a socket that pushes back
//! gets a queue, drained by its session when the socket is writable again. A queue that
//! reaches `limits.outbound_queue` frames marks a slow consumer, closed with 1013, so one slow
//! reader never stalls a room (SPEC section 5). Every byte — room messages, replies, pings,
//! close frames — goes through here, so frames never interleave.

use std::collections::VecDeque;
use std::io;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use protocol::{CloseCode, EncodedFrame};
use tokio::sync::Notify;

/// Turns an encoded frame into the bytes written to the socket (the node adds the WebSocket
/// frame header). Called once per broadcast and encoding, never per recipient.
pub type Framer = fn(&EncodedFrame) -> Bytes;

/// A [`Framer`] that writes the encoded frame as it is (tests, non-WebSocket transports).
pub fn unframed(frame: &EncodedFrame) -> Bytes {
    frame.bytes().clone()
}

/// The socket side, provided by the node once the connection is upgraded.
pub trait Transport: Send + Sync + 'static {
    /// Writes as much of `buf` as the socket takes now, without blocking, keeping the
    /// runtime's readiness state right (a `WouldBlock` here arms the next writability wait).
    /// Used by the session's flush.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// The same write on the fan-out fast path, as cheap as the platform allows. It may skip
    /// the readiness bookkeeping: a `WouldBlock` here only queues the frame, and the session's
    /// flush goes through [`Transport::try_write`] before it ever waits.
    fn try_write_direct(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }
    /// A room or direct message entered the node at `since` and is now fully written.
    fn delivered(&self, since: Instant);
}

/// Bytes waiting to be written.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Wire bytes (a whole WebSocket frame, or its unwritten rest), shared with every other
    /// recipient of the same broadcast.
    pub bytes: Bytes,
    /// When a room or direct message entered this node; `None` for replies and control
    /// frames.
    pub since: Option<Instant>,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue was full: the connection is now being closed with 1013.
    Full,
    /// The connection is closing or its socket failed; the frame was dropped.
    Closed,
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued is written.
    Empty,
    /// The socket pushes back: wait until it is writable, then flush again.
    Blocked,
    /// The socket failed.
    Failed,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Queued>,
    close: Option<CloseCode>,
    failed: bool,
}

/// A connection's outbound side. The mutex (parking_lot) is held to write or queue, never
/// across an `.await`.
pub struct Outbound {
    cap: usize,
    state: Mutex<State>,
    notify: Notify,
    transport: OnceLock<Box<dyn Transport>>,
}

impl Outbound {
    /// An outbound side queueing at most `cap` frames (`limits.outbound_queue`). Until a
    /// transport is attached, everything is queued.
    pub fn new(cap: usize) -> Self {
        Outbound {
            cap: cap.max(1),
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            transport: OnceLock::new(),
        }
    }

    /// Attaches the socket; queued frames are written by the next flush.
    pub fn attach(&self, transport: Box<dyn Transport>) {
        let _ = self.transport.set(transport);
        self.notify.notify_one();
    }

    /// Writes or queues a frame, counted against the queue limit. The bytes are only cloned
    /// (a reference count) when they have to wait.
    pub fn push(&self, bytes: &Bytes, since: Option<Instant>) -> Result<(), PushError> {
        self.push_inner(bytes, since, true)
    }

    /// Writes or queues a control frame (ping, pong, close): never refused for a full queue,
    /// and still accepted after a close request, since the close frame itself is one.
    pub fn push_control(&self, bytes: &Bytes) -> Result<(), PushError> {
        self.push_inner(bytes, None, false)
    }

    fn push_inner(
        &self,
        bytes: &Bytes,
        since: Option<Instant>,
        counted: bool,
    ) -> Result<(), PushError> {
        let mut st = self.state.lock();
        if st.failed || (counted && st.close.is_some()) {
            return Err(PushError::Closed);
        }
        if st.pending.is_empty() {
            let mut q = Queued {
                bytes: bytes.clone(),
                since,
            };
            if let Some(t) = self.transport.get() {
                match t.try_write_direct(bytes) {
                    Ok(n) if n == bytes.len() => {
                        if let Some(since) = since {
                            t.delivered(since);
                        }
                        return Ok(());
                    }
                    Ok(n) => q.bytes = bytes.slice(n..),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        st.failed = true;
                        drop(st);
                        self.notify.notify_one();
                        return Err(PushError::Closed);
                    }
                }
            }
            st.pending.push_back(q);
            drop(st);
            self.notify.notify_one();
            return Ok(());
        }
        if counted && st.pending.len() >= self.cap {
            st.close = Some(CloseCode::TRY_AGAIN_LATER);
            // Nothing queued will be delivered any more; only a partly written frame must
            // be finished so that the close frame that follows is readable.
            st.pending.truncate(1);
            drop(st);
            self.notify.notify_one();
            return Err(PushError::Full);
        }
        st.pending.push_back(Queued {
            bytes: bytes.clone(),
            since,
        });
        Ok(())
    }

    /// Writes what is queued until done or the socket pushes back.
    pub fn flush(&self) -> Flush {
        let Some(t) = self.transport.get() else {
            return Flush::Blocked;
        };
        let mut st = self.state.lock();
        if st.failed {
            return Flush::Failed;
        }
        while let Some(front) = st.pending.front_mut() {
            match t.try_write(&front.bytes) {
                Ok(n) if n == front.bytes.len() => {
                    if let Some(since) = front.since {
                        t.delivered(since);
                    }
                    st.pending.pop_front();
                }
                Ok(n) => front.bytes = front.bytes.slice(n..),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                Err(_) => {
                    st.failed = true;
                    st.pending.clear();
                    return Flush::Failed;
                }
            }
        }
        if st.pending.capacity() > 64 {
            // A burst grew the queue; an idle connection should not keep that memory.
            st.pending.shrink_to_fit();
        }
        Flush::Empty
    }

    /// Asks the session to close the connection with `code` once what is queued is written.
    /// The first request wins.
    pub fn close(&self, code: CloseCode) {
        let mut st = self.state.lock();
        if st.close.is_none() {
            st.close = Some(code);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// The close requested, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.state.lock().close
    }

    /// Resolves when there is something to write or a close was requested. Cancel-safe.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every queued frame out (for tests and for sessions without a socket).
    pub fn take(&self, into: &mut VecDeque<Queued>) -> Option<CloseCode> {
        let mut st = self.state.lock();
        into.extend(st.pending.drain(..));
        st.close
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn frame() -> Bytes {
        Bytes::from_static(b"frame")
    }

    /// A socket that takes `room` bytes, then pushes back.
    struct FakeSocket {
        room: AtomicUsize,
        written: Mutex<Vec<u8>>,
        delivered: AtomicUsize,
    }

    impl Transport for Arc<FakeSocket> {
        fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room.load(Ordering::SeqCst));
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room.fetch_sub(n, Ordering::SeqCst);
            self.written.lock().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn delivered(&self, _since: Instant) {
            self.delivered.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn socket(room: usize) -> Arc<FakeSocket> {
        Arc::new(FakeSocket {
            room: AtomicUsize::new(room),
            written: Mutex::new(Vec::new()),
            delivered: AtomicUsize::new(0),
        })
    }

    #[test]
    fn writes_directly_when_the_socket_takes_it() {
        let q = Outbound::new(2);
        let s = socket(100);
        q.attach(Box::new(s.clone()));
        q.push(&frame(), Some(Instant::now())).unwrap();
        q.push(&frame(), None).unwrap();
        assert!(q.is_empty());
        assert_eq!(&s.written.lock()[..], b"frameframe");
        assert_eq!(s.delivered.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn partial_writes_queue_the_rest_in_order_and_full_queue_closes_1013() {
        let q = Outbound::new(2);
        let s = socket(3);
        q.attach(Box::new(s.clone()));
        q.push(&frame(), None).unwrap();
        q.push(&Bytes::from_static(b"second"), None).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q.push(&frame(), None), Err(PushError::Full));
        assert_eq!(q.close_requested(), Some(CloseCode::TRY_AGAIN_LATER));
        assert_eq!(q.len(), 1, "only the partly written frame is kept");
        assert_eq!(q.push(&frame(), None), Err(PushError::Closed));
        q.push_control(&Bytes::from_static(b"CLOSE")).unwrap();
        assert_eq!(q.flush(), Flush::Blocked);
        s.room.store(100, Ordering::SeqCst);
        assert_eq!(q.flush(), Flush::Empty);
        assert_eq!(&s.written.lock()[..], b"frameCLOSE");
    }

    #[test]
    fn without_a_socket_everything_queues() {
        let q = Outbound::new(8);
        q.push(&frame(), None).unwrap();
        q.close(CloseCode::DISCONNECTED);
        q.close(CloseCode::RESTART);
        let mut out = VecDeque::new();
        assert_eq!(q.take(&mut out), Some(CloseCode::DISCONNECTED));
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn queueing_wakes_the_session() {
        let q = Arc::new(Outbound::new(8));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            q2.ready().await;
            q2.len()
        });
        tokio::task::yield_now().await;
        q.push(&frame(), None).unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
