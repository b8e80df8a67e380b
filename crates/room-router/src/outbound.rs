//! The outbound side of one connection: a direct write when the socket can take the frame
//! now, a bounded queue when it cannot.
//!
//! Fan-out calls [`Outbound::push`] for every member. When nothing is queued the frame is
//! written to the socket at once, from the fan-out itself (a non-blocking write under the
//! connection's mutex): no task wake-up, no per-recipient copy. Only a socket that pushes back
//! gets a queue, drained by its session when the socket is writable again. A queue that
//! reaches `limits.outbound_queue` frames or `limits.outbound_queue_bytes` bytes marks a slow
//! consumer, closed with 1013, so one slow reader never stalls a room nor holds more than its
//! share of memory (SPEC sections 5 and 11). Every byte — room messages, replies, pings,
//! close frames — goes through here, so frames never interleave.
//!
//! With a write delay (`server.write_delay`, SPEC section 11) room and direct messages are not
//! written from the push: they queue, the first of a batch records when it must leave
//! ([`Outbound::flush_due`]), and the session's flush writes the whole batch in one vectored
//! write. Many frames per system call instead of one, for at most that much latency. Replies
//! and control frames (no entry time) do not wait: they go at once, taking a waiting batch
//! with them, so a welcome, an ack or a pong is never delayed.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

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
    /// Writes as much of `bufs`, in order, as the socket takes now (one `writev`), with
    /// [`Transport::try_write`]'s readiness rules. The default writes the first buffer only.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match bufs.first() {
            Some(b) => self.try_write(b),
            None => Ok(0),
        }
    }
    /// A room or direct message entered the node at `since` and is now fully written by a
    /// flush (frames written at once by a push are counted by the pusher, once per fan-out).
    fn delivered(&self, since: Instant);
    /// Writes what the transport holds below the queue (TLS records the socket did not take);
    /// `Ok(true)` when nothing is left. A transport that keeps such bytes after a write wakes
    /// the session ([`Outbound::wake`]), whose flush then ends here.
    fn flush_below(&self) -> io::Result<bool> {
        Ok(true)
    }
}

/// Where a node counts its deliveries: a fan-out reports the frames it wrote at once in one
/// call, so that metrics cost a few atomic additions per fan-out, not a shared lock per
/// recipient.
pub trait Deliveries: Send + Sync + std::fmt::Debug + 'static {
    /// `n` room or direct messages that entered the node at `since` are fully written.
    fn delivered(&self, n: u64, since: Instant);
}

/// Counts nothing (tests, tools).
impl Deliveries for () {
    fn delivered(&self, _n: u64, _since: Instant) {}
}

/// Frames written by one vectored write at most (Linux takes 1,024; 64 frames of room
/// messages are already tens of kilobytes).
const MAX_IOV: usize = 64;

/// What a push did with the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written to the socket whole, now: the caller counts the delivery.
    Written,
    /// Queued (or partly written): the flush that finishes it counts it.
    Queued,
}

/// Bounds of one connection's queue (SPEC section 11): whichever is reached first marks a slow
/// consumer, closed with 1013. Frames alone are not enough: 1,024 frames of 128 KiB are
/// 128 MiB for one connection that never reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// `limits.outbound_queue`: frames waiting.
    pub frames: usize,
    /// `limits.outbound_queue_bytes`: bytes waiting.
    pub bytes: usize,
}

impl QueueLimits {
    /// Limits that a test or a tool does not want to hit.
    pub const UNBOUNDED: QueueLimits = QueueLimits {
        frames: usize::MAX,
        bytes: usize::MAX,
    };
}

/// What a frame is, for the queue's rules: data is refused once the connection closes, a
/// pong replaces the one already waiting, and the close frame is never refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A message or a reply: counted, refused after a close request.
    Data,
    /// A WebSocket ping: counted; dropped once the connection closes.
    Ping,
    /// A WebSocket pong: counted, at most one waiting (RFC 6455 5.5.3 lets an endpoint answer
    /// only the latest ping), so a client that pings and never reads cannot grow the queue.
    Pong,
    /// The close frame: always taken, since the close that a full queue asks for needs it.
    Close,
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
    /// Whether this is the one pong allowed to wait.
    pub pong: bool,
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
    /// `server.write_delay`: zero writes at once.
    delay: Duration,
    /// With a delay: when the batch waiting now must be written.
    due: Option<Instant>,
    /// Sum of `pending`'s byte lengths.
    bytes: usize,
    close: Option<CloseCode>,
    /// The close frame is queued or written: nothing may follow it (RFC 6455 section 5.5.1).
    closing: bool,
    failed: bool,
    /// The socket, once attached and until detached. Kept under the same lock as the queue:
    /// a write and the queue behind it never interleave with another write.
    transport: Option<Box<dyn Transport>>,
}

impl State {
    fn push_back(&mut self, q: Queued) {
        self.bytes += q.bytes.len();
        self.pending.push_back(q);
    }

    /// Drops everything queued but a partly written front frame, which must be finished so
    /// that the close frame that follows is readable.
    fn truncate_to_front(&mut self) {
        self.pending.truncate(1);
        self.bytes = self.pending.front().map_or(0, |q| q.bytes.len());
    }
}

/// A connection's outbound side. The mutex (parking_lot) is held to write or queue, never
/// across an `.await`.
pub struct Outbound {
    limits: QueueLimits,
    state: Mutex<State>,
    notify: Notify,
}

impl Outbound {
    /// An outbound side bounded by `limits`. Until a transport is attached, everything is
    /// queued.
    pub fn new(limits: QueueLimits) -> Self {
        Outbound {
            limits: QueueLimits {
                frames: limits.frames.max(1),
                bytes: limits.bytes.max(1),
            },
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        }
    }

    /// Batches writes: room and direct messages wait up to `delay` and leave together (zero:
    /// written at once). Set before the socket is attached.
    pub fn set_write_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// With a write delay, when the frames waiting must be written: the session flushes then
    /// (or at once, for a close). `None`: nothing waits on the delay.
    pub fn flush_due(&self) -> Option<Instant> {
        self.state.lock().due
    }

    /// Attaches the socket; queued frames are written by the next flush.
    pub fn attach(&self, transport: Box<dyn Transport>) {
        self.state.lock().transport = Some(transport);
        self.notify.notify_one();
    }

    /// Lets go of the socket and of everything queued, for good: the session has ended. A
    /// fan-out that still holds this connection (a member snapshot taken before it left)
    /// finds it closed, and the socket closes now rather than when the last such holder
    /// lets go.
    pub fn detach(&self) {
        let transport = {
            let mut st = self.state.lock();
            st.failed = true;
            st.pending.clear();
            st.bytes = 0;
            st.transport.take()
        };
        drop(transport);
    }

    /// Writes or queues a message or reply, counted against the queue limits. The bytes are
    /// only cloned (a reference count) when they have to wait.
    pub fn push(&self, bytes: &Bytes, since: Option<Instant>) -> Result<Pushed, PushError> {
        self.push_kind(bytes, since, FrameKind::Data)
    }

    /// Writes or queues a WebSocket control frame of the given kind (see [`FrameKind`]).
    /// A ping or pong that arrives once the connection is closing is dropped quietly.
    pub fn push_control(&self, bytes: &Bytes, kind: FrameKind) -> Result<(), PushError> {
        self.push_kind(bytes, None, kind).map(|_| ())
    }

    fn push_kind(
        &self,
        bytes: &Bytes,
        since: Option<Instant>,
        kind: FrameKind,
    ) -> Result<Pushed, PushError> {
        let mut st = self.state.lock();
        if st.failed {
            return Err(PushError::Closed);
        }
        if st.close.is_some() || st.closing {
            match kind {
                FrameKind::Data => return Err(PushError::Closed),
                FrameKind::Ping | FrameKind::Pong => return Ok(Pushed::Queued),
                FrameKind::Close => {}
            }
        }
        if kind == FrameKind::Close {
            st.closing = true;
        }
        let pong = kind == FrameKind::Pong;
        if pong {
            // The front may be partly written and must stay as it is; a pong behind it is
            // replaced by the newer one.
            if let Some(waiting) = st.pending.iter_mut().skip(1).find(|q| q.pong) {
                let old = waiting.bytes.len();
                waiting.bytes = bytes.clone();
                st.bytes = st.bytes - old + bytes.len();
                return Ok(Pushed::Queued);
            }
            if st.pending.front().is_some_and(|q| q.pong) {
                return Ok(Pushed::Queued);
            }
        }
        if st.pending.is_empty() {
            let mut q = Queued {
                bytes: bytes.clone(),
                since,
                pong,
            };
            if let (false, Some(since), FrameKind::Data) = (st.delay.is_zero(), since, kind) {
                // The first of a batch: it leaves, with whatever joins it, `delay` after the
                // message entered the node.
                st.due = Some(since + st.delay);
                st.push_back(q);
                drop(st);
                self.notify.notify_one();
                return Ok(Pushed::Queued);
            }
            if let Some(t) = st.transport.as_ref() {
                match t.try_write_direct(bytes) {
                    Ok(n) if n == bytes.len() => return Ok(Pushed::Written),
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
            st.push_back(q);
            drop(st);
            self.notify.notify_one();
            return Ok(Pushed::Queued);
        }
        if kind != FrameKind::Close
            && (st.pending.len() >= self.limits.frames
                || st.bytes + bytes.len() > self.limits.bytes)
        {
            st.close = Some(CloseCode::TRY_AGAIN_LATER);
            st.truncate_to_front();
            drop(st);
            self.notify.notify_one();
            return Err(PushError::Full);
        }
        st.push_back(Queued {
            bytes: bytes.clone(),
            since,
            pong,
        });
        if st.due.is_some() && since.is_none() {
            // A reply or a control frame behind a batch: it takes the batch with it now.
            st.due = Some(Instant::now());
            drop(st);
            self.notify.notify_one();
        }
        Ok(Pushed::Queued)
    }

    /// Writes what is queued until done or the socket pushes back.
    pub fn flush(&self) -> Flush {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if st.failed {
            return Flush::Failed;
        }
        let Some(t) = st.transport.as_ref() else {
            return Flush::Blocked;
        };
        st.due = None;
        while let Some(front) = st.pending.front() {
            let written = if st.pending.len() == 1 {
                t.try_write(&front.bytes)
            } else {
                // Up to MAX_IOV frames in one system call.
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let mut count = 0;
                for (slot, q) in slices.iter_mut().zip(st.pending.iter()) {
                    *slot = IoSlice::new(&q.bytes);
                    count += 1;
                }
                t.try_write_vectored(&slices[..count])
            };
            match written {
                Ok(mut n) => {
                    while let Some(front) = st.pending.front_mut() {
                        if n < front.bytes.len() {
                            front.bytes = front.bytes.slice(n..);
                            st.bytes -= n;
                            break;
                        }
                        n -= front.bytes.len();
                        if let Some(since) = front.since {
                            t.delivered(since);
                        }
                        if let Some(q) = st.pending.pop_front() {
                            st.bytes -= q.bytes.len();
                        }
                        if n == 0 {
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                Err(_) => {
                    st.failed = true;
                    st.pending.clear();
                    st.bytes = 0;
                    return Flush::Failed;
                }
            }
        }
        if st.pending.capacity() > 64 {
            // A burst grew the queue; an idle connection should not keep that memory.
            st.pending.shrink_to_fit();
        }
        match t.flush_below() {
            Ok(true) => Flush::Empty,
            Ok(false) => Flush::Blocked,
            Err(_) => {
                st.failed = true;
                Flush::Failed
            }
        }
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

    /// Wakes the session to flush: the transport holds bytes it made on its own (TLS records
    /// answering the peer) that the socket did not take at once.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Resolves when there is something to write or a close was requested. Cancel-safe.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every queued frame out (for tests and for sessions without a socket).
    pub fn take(&self, into: &mut VecDeque<Queued>) -> Option<CloseCode> {
        let mut st = self.state.lock();
        into.extend(st.pending.drain(..));
        st.bytes = 0;
        st.close
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn frames(n: usize) -> QueueLimits {
        QueueLimits {
            frames: n,
            bytes: usize::MAX,
        }
    }

    fn frame() -> Bytes {
        Bytes::from_static(b"frame")
    }

    /// A socket that takes `room` bytes, then pushes back; it counts its system calls.
    struct FakeSocket {
        room: AtomicUsize,
        written: Mutex<Vec<u8>>,
        delivered: AtomicUsize,
        calls: AtomicUsize,
    }

    impl Transport for Arc<FakeSocket> {
        fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let n = buf.len().min(self.room.load(Ordering::SeqCst));
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room.fetch_sub(n, Ordering::SeqCst);
            self.written.lock().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut total = 0;
            for b in bufs {
                let n = b.len().min(self.room.load(Ordering::SeqCst));
                if n == 0 {
                    break;
                }
                self.room.fetch_sub(n, Ordering::SeqCst);
                self.written.lock().extend_from_slice(&b[..n]);
                total += n;
                if n < b.len() {
                    break;
                }
            }
            if total == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(total)
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
            calls: AtomicUsize::new(0),
        })
    }

    /// With a write delay nothing leaves from the push: the batch waits until it is due and
    /// then goes in one vectored write, in order, partly written frames finished next time.
    #[test]
    fn a_write_delay_batches_frames_into_one_write() {
        let q = Outbound::new(frames(100));
        let s = socket(1_000);
        q.attach(Box::new(s.clone()));
        q.set_write_delay(Duration::from_millis(10));
        let before = Instant::now();
        for i in 0..5u8 {
            let f = Bytes::from(vec![b'a' + i; 3]);
            assert_eq!(q.push(&f, Some(Instant::now())), Ok(Pushed::Queued));
        }
        let due = q.flush_due().expect("a batch is due");
        assert!(due >= before + Duration::from_millis(10));
        assert_eq!(
            s.calls.load(Ordering::SeqCst),
            0,
            "nothing written by the pushes"
        );
        assert_eq!(q.flush(), Flush::Empty);
        assert_eq!(
            s.calls.load(Ordering::SeqCst),
            1,
            "one system call for five frames"
        );
        assert_eq!(&s.written.lock()[..], b"aaabbbcccdddeee");
        assert_eq!(s.delivered.load(Ordering::SeqCst), 5);
        assert_eq!(q.flush_due(), None, "nothing waits");
        // A reply is written at once, and behind a batch it makes the batch due now.
        assert_eq!(q.push(&frame(), None), Ok(Pushed::Written));
        q.push(&frame(), Some(Instant::now())).unwrap();
        assert!(q.flush_due().unwrap() > Instant::now());
        q.push(&frame(), None).unwrap();
        assert!(
            q.flush_due().unwrap() <= Instant::now(),
            "the reply takes the batch now"
        );
        assert_eq!(q.flush(), Flush::Empty);
        s.written.lock().truncate(15);
        // A socket that takes part of the batch: the rest, in order, on the next flush.
        s.room.store(7, Ordering::SeqCst);
        for i in 0..3u8 {
            q.push(&Bytes::from(vec![b'x' + i; 3]), None).unwrap();
        }
        assert_eq!(q.flush(), Flush::Blocked);
        s.room.store(100, Ordering::SeqCst);
        assert_eq!(q.flush(), Flush::Empty);
        assert_eq!(&s.written.lock()[15..], b"xxxyyyzzz");
    }

    #[test]
    fn writes_directly_when_the_socket_takes_it() {
        let q = Outbound::new(frames(2));
        let s = socket(100);
        q.attach(Box::new(s.clone()));
        assert_eq!(q.push(&frame(), Some(Instant::now())), Ok(Pushed::Written));
        q.push(&frame(), None).unwrap();
        assert!(q.is_empty());
        assert_eq!(&s.written.lock()[..], b"frameframe");
        // Written at once: the pusher counts it, not the transport.
        assert_eq!(s.delivered.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn partial_writes_queue_the_rest_in_order_and_full_queue_closes_1013() {
        let q = Outbound::new(frames(2));
        let s = socket(3);
        q.attach(Box::new(s.clone()));
        q.push(&frame(), None).unwrap();
        q.push(&Bytes::from_static(b"second"), None).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q.push(&frame(), None), Err(PushError::Full));
        assert_eq!(q.close_requested(), Some(CloseCode::TRY_AGAIN_LATER));
        assert_eq!(q.len(), 1, "only the partly written frame is kept");
        assert_eq!(q.push(&frame(), None), Err(PushError::Closed));
        q.push_control(&Bytes::from_static(b"CLOSE"), FrameKind::Close)
            .unwrap();
        assert_eq!(q.flush(), Flush::Blocked);
        s.room.store(100, Ordering::SeqCst);
        assert_eq!(q.flush(), Flush::Empty);
        assert_eq!(&s.written.lock()[..], b"frameCLOSE");
    }

    #[test]
    fn the_byte_bound_closes_1013_before_the_frame_bound() {
        let q = Outbound::new(QueueLimits {
            frames: 1_000,
            bytes: 12,
        });
        let s = socket(0);
        q.attach(Box::new(s.clone()));
        q.push(&frame(), None).unwrap(); // the first frame always waits
        q.push(&frame(), None).unwrap(); // 10 bytes waiting
        assert_eq!(q.queued_bytes(), 10);
        assert_eq!(q.push(&frame(), None), Err(PushError::Full), "15 > 12");
        assert_eq!(q.close_requested(), Some(CloseCode::TRY_AGAIN_LATER));
        assert_eq!(q.queued_bytes(), 5, "only the front frame is kept");
        // The close frame itself is never refused, however large.
        q.push_control(&Bytes::from(vec![b'c'; 100]), FrameKind::Close)
            .unwrap();
        s.room.store(1_000, Ordering::SeqCst);
        assert_eq!(q.flush(), Flush::Empty);
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(s.written.lock().len(), 105);
    }

    #[test]
    fn pings_and_pongs_count_and_one_pong_waits_at_most() {
        let q = Outbound::new(QueueLimits {
            frames: 1_000,
            bytes: 1_000,
        });
        let s = socket(0);
        q.attach(Box::new(s.clone()));
        q.push(&frame(), None).unwrap();
        for i in 0..100u8 {
            q.push_control(&Bytes::from(vec![i; 4]), FrameKind::Pong)
                .unwrap();
        }
        assert_eq!(q.len(), 2, "a frame and one pong");
        assert_eq!(q.queued_bytes(), 9);
        s.room.store(1_000, Ordering::SeqCst);
        assert_eq!(q.flush(), Flush::Empty);
        assert_eq!(&s.written.lock()[5..], &[99; 4], "the latest pong");
        // Pings count against the bytes like anything else.
        s.room.store(0, Ordering::SeqCst);
        q.push(&frame(), None).unwrap();
        let ping = Bytes::from(vec![0; 400]);
        q.push_control(&ping, FrameKind::Ping).unwrap();
        q.push_control(&ping, FrameKind::Ping).unwrap();
        assert_eq!(q.push_control(&ping, FrameKind::Ping), Err(PushError::Full));
        assert_eq!(q.close_requested(), Some(CloseCode::TRY_AGAIN_LATER));
        // Once closing, pings and pongs are dropped quietly; data is refused.
        assert_eq!(q.push_control(&ping, FrameKind::Pong), Ok(()));
        assert_eq!(q.push(&frame(), None), Err(PushError::Closed));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn nothing_follows_the_close_frame_and_detach_lets_go() {
        let q = Outbound::new(frames(8));
        let s = socket(0);
        q.attach(Box::new(s.clone()));
        q.push(&frame(), None).unwrap();
        q.push_control(&Bytes::from_static(b"CLOSE"), FrameKind::Close)
            .unwrap();
        assert_eq!(q.push(&frame(), None), Err(PushError::Closed));
        q.push_control(&Bytes::from_static(b"PONG"), FrameKind::Pong)
            .unwrap();
        assert_eq!(q.len(), 2, "the frame and the close, nothing after");
        q.detach();
        assert_eq!((q.len(), q.queued_bytes()), (0, 0));
        assert_eq!(q.flush(), Flush::Failed);
        assert_eq!(Arc::strong_count(&s), 1, "the socket is let go");
    }

    #[test]
    fn without_a_socket_everything_queues() {
        let q = Outbound::new(frames(8));
        q.push(&frame(), None).unwrap();
        q.close(CloseCode::DISCONNECTED);
        q.close(CloseCode::RESTART);
        let mut out = VecDeque::new();
        assert_eq!(q.take(&mut out), Some(CloseCode::DISCONNECTED));
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn queueing_wakes_the_session() {
        let q = Arc::new(Outbound::new(frames(8)));
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
