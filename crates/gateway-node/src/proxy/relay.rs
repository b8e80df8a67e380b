//! One direction of a proxied session: bytes read from one end, checked frame by frame
//! ([`FrameChecker`]) and written to the other end as they came, from one fixed buffer.
//!
//! Backpressure is the buffer: while the receiver does not take what was read, nothing more
//! is read from the sender, so TCP flow control slows the sender and memory stays at
//! [`BUFFER`] per direction. Several frames read at once leave in one write. The gateway's
//! own frames (pings, closes) go in between frames, never inside one.
//!
//! [`Direction::step`] moves bytes until there is something for the session to decide (a
//! close, a loss, a violation). Each of its awaits is one read, write or flush, and all its
//! state is in the struct, so the session may drop it in a `select!` at any await without
//! losing a byte.

use std::future::pending;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::frames::{close_frame, ping_frame, FrameChecker, Sender, Step, Violation};

/// Bytes buffered per direction: nginx's `proxy_buffer_size` order. Larger frames pass in
/// pieces.
pub const BUFFER: usize = 16 * 1024;

/// The reading end of a connection (TCP, or TLS).
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The writing end of a connection.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A sender's message rate (`limits.messages_per_second`, `messages_burst`): over it, its
/// next read waits, so a fast sender is slowed by TCP rather than refused.
#[derive(Debug)]
pub struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// `rate` messages per second, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Throttle {
        let burst = f64::from(burst.max(1));
        Throttle {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let earned = (now - self.last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.burst);
            self.last = now;
        }
    }

    /// Counts `n` messages passed (the bucket may go below zero: they were read already).
    fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }

    /// How long the next read must wait. The clock is read only when the bucket is empty:
    /// refilling then, capped at the burst, passes what a continuous refill would.
    fn wait(&mut self) -> Option<std::time::Duration> {
        if self.tokens >= 1.0 {
            return None;
        }
        self.refill(Instant::now());
        (self.tokens < 1.0)
            .then(|| std::time::Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

/// What a step found that the session decides on.
#[derive(Debug)]
pub enum Event {
    /// The direction has just finished (the session looks whether the whole session has).
    Progress,
    /// The sender sent a close frame (nothing after it is read).
    Close {
        /// Its code; `None` for no code (1005).
        code: Option<u16>,
        /// Its reason.
        reason: String,
    },
    /// The sender's connection ended without a close frame, or failed.
    Lost(String),
    /// The sender broke RFC 6455.
    Violation(Violation),
    /// Writing to the receiver failed.
    SinkFailed(String),
}

/// One direction: sender → gateway → receiver.
pub struct Direction {
    reader: Option<Reader>,
    writer: Option<Writer>,
    /// Frames the gateway writes to the receiver are masked (the receiver is an upstream).
    mask_own: bool,
    buf: Box<[u8]>,
    /// Bytes read: `buf[..end]`; passed on up to `written`; checked up to `checked`.
    end: usize,
    written: usize,
    checked: usize,
    checker: FrameChecker,
    /// Frames that begin from now on are dropped (the session is closing).
    closing: bool,
    /// The current frame is being dropped.
    skipping: bool,
    /// The gateway's own frames waiting for a frame boundary, and how much of them is written.
    own: Vec<u8>,
    own_written: usize,
    /// A close frame was queued for the receiver, and whether it is written.
    close_queued: bool,
    close_written: bool,
    /// An event to give once what comes before it is written.
    pending: Option<Event>,
    /// The sender is done (close frame, end of stream, failure or violation).
    source_done: bool,
    /// A write happened since the last flush (TLS keeps records until flushed).
    unflushed: bool,
    /// `step` returned once after the direction finished.
    said_finished: bool,
    /// The sender's message rate, when it is limited.
    throttle: Option<Throttle>,
    /// Checking stopped at the rate limit, with bytes still unchecked.
    throttled: bool,
    /// Told how many whole text or binary messages each batch passed (metrics, activity).
    on_messages: Option<Box<dyn Fn(u64) + Send + Sync>>,
    /// Reads that brought bytes: the session's timer notices whether this moved, rather
    /// than every read reading the clock.
    pub reads: u64,
    /// Data frames begun (idle timeouts count messages, not pings).
    pub data_frames: u64,
}

impl Direction {
    /// A direction reading frames written by `sender`, starting with `prefix` (bytes read
    /// before the session began). `mask_own`: the receiver is an upstream, whose client the
    /// gateway is, so the frames the gateway makes for it are masked.
    pub fn new(
        reader: Reader,
        writer: Writer,
        sender: Sender,
        mask_own: bool,
        max_message: usize,
        prefix: &[u8],
    ) -> Direction {
        let mut buf = vec![0u8; BUFFER.max(prefix.len())].into_boxed_slice();
        buf[..prefix.len()].copy_from_slice(prefix);
        Direction {
            reader: Some(reader),
            writer: Some(writer),
            mask_own,
            buf,
            end: prefix.len(),
            written: 0,
            checked: 0,
            checker: FrameChecker::new(sender, max_message),
            closing: false,
            skipping: false,
            own: Vec::new(),
            own_written: 0,
            close_queued: false,
            close_written: false,
            pending: None,
            source_done: false,
            unflushed: false,
            said_finished: false,
            throttle: None,
            throttled: false,
            on_messages: None,
            reads: 0,
            data_frames: 0,
        }
    }

    /// Calls `f` with the number of whole messages each batch passed.
    pub fn counted(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Direction {
        self.on_messages = Some(Box::new(f));
        self
    }

    /// Limits the sender's message rate.
    pub fn throttled(mut self, throttle: Throttle) -> Direction {
        self.throttle = Some(throttle);
        self
    }

    fn own_mask(&self) -> Option<[u8; 4]> {
        self.mask_own.then(rand::random)
    }

    /// Whether what the receiver got so far ends inside a frame.
    fn receiver_mid_frame(&self) -> bool {
        self.checker.mid_frame() && !self.skipping
    }

    /// Whether a message is half relayed in this direction (a new sender or receiver could
    /// not take over here).
    pub fn mid_message(&self) -> bool {
        self.checker.mid_message() || self.written < self.checked
    }

    /// Whether bytes read wait for the receiver to take them (the sender is not read
    /// meanwhile: backpressure).
    pub fn backlogged(&self) -> bool {
        self.written < self.checked
    }

    /// Queues a ping for the receiver (none while one waits, or after a close).
    pub fn ping(&mut self, payload: &[u8]) {
        if self.close_queued || !self.own.is_empty() {
            return;
        }
        self.own = ping_frame(payload, self.own_mask());
        self.own_written = 0;
    }

    /// Queues a close frame for the receiver, once: the first close wins. It replaces a ping
    /// that has not started to leave.
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.close_queued {
            return;
        }
        self.close_queued = true;
        let frame = close_frame(code, reason, self.own_mask());
        if self.own_written == 0 {
            self.own = frame;
        } else {
            self.own.extend_from_slice(&frame);
        }
    }

    /// From now on frames from the sender are read (a close frame is still wanted) but not
    /// passed on; a frame half passed is finished first.
    pub fn stop_forwarding(&mut self) {
        self.closing = true;
    }

    /// Reads nothing more from the sender.
    pub fn stop_reading(&mut self) {
        self.source_done = true;
        self.reader = None;
    }

    /// Writes nothing more to the receiver: it is gone, or a frame to it was cut off.
    pub fn drop_receiver(&mut self) {
        self.writer = None;
    }

    /// Whether the sender is done.
    pub fn source_done(&self) -> bool {
        self.source_done
    }

    /// Whether a close frame can still reach the receiver: it is there and not in the middle
    /// of a frame that will not be finished (its sender is gone).
    pub fn can_close_receiver(&self) -> bool {
        self.writer.is_some() && !(self.source_done && self.receiver_mid_frame())
    }

    /// Whether this direction has nothing left to do: the sender is done and the receiver got
    /// its close frame (or is gone).
    pub fn finished(&self) -> bool {
        self.source_done && (self.writer.is_none() || (self.close_written && !self.unflushed))
    }

    /// A new sender, for an upstream replaced after a loss: the stream starts afresh.
    pub fn replace_reader(
        &mut self,
        reader: Reader,
        sender: Sender,
        max_message: usize,
        prefix: &[u8],
    ) {
        self.reader = Some(reader);
        self.checker = FrameChecker::new(sender, max_message);
        self.end = 0;
        self.written = 0;
        self.checked = 0;
        self.skipping = false;
        self.pending = None;
        self.source_done = false;
        if prefix.len() > self.buf.len() {
            self.buf = vec![0u8; prefix.len()].into_boxed_slice();
        }
        self.buf[..prefix.len()].copy_from_slice(prefix);
        self.end = prefix.len();
    }

    /// A new receiver, for an upstream replaced after a loss.
    pub fn replace_writer(&mut self, writer: Writer) {
        self.writer = Some(writer);
        self.unflushed = false;
    }

    /// Flushes and shuts the receiver down (FIN, and TLS close_notify).
    pub async fn shutdown(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            let _ = w.shutdown().await;
        }
    }

    fn sink_failed(&mut self, e: io::Error) -> Event {
        self.writer = None;
        Event::SinkFailed(e.to_string())
    }

    /// Moves bytes until an event. Pends forever when there is nothing left to do (after
    /// saying once that the direction finished), so a `select!` over both directions does
    /// not spin.
    pub async fn step(&mut self) -> Event {
        loop {
            if let Some(w) = self.writer.as_mut() {
                if self.unflushed {
                    if let Err(e) = w.flush().await {
                        return self.sink_failed(e);
                    }
                    self.unflushed = false;
                }
            }
            // The gateway's own frames, at a frame boundary of what the receiver got.
            if self.own_written < self.own.len()
                && self.written == self.checked
                && !self.receiver_mid_frame()
            {
                let Some(w) = self.writer.as_mut() else {
                    self.own.clear();
                    self.own_written = 0;
                    continue;
                };
                match w.write(&self.own[self.own_written..]).await {
                    Ok(0) => return self.sink_failed(io::ErrorKind::WriteZero.into()),
                    Err(e) => return self.sink_failed(e),
                    Ok(n) => {
                        self.own_written += n;
                        self.unflushed = true;
                        if self.own_written == self.own.len() {
                            self.own.clear();
                            self.own_written = 0;
                            self.close_written |= self.close_queued;
                        }
                        continue;
                    }
                }
            }
            if self.written < self.checked {
                let Some(w) = self.writer.as_mut() else {
                    self.written = self.checked;
                    continue;
                };
                match w.write(&self.buf[self.written..self.checked]).await {
                    Ok(0) => return self.sink_failed(io::ErrorKind::WriteZero.into()),
                    Err(e) => return self.sink_failed(e),
                    Ok(n) => {
                        self.written += n;
                        self.unflushed = true;
                        continue;
                    }
                }
            }
            if let Some(event) = self.pending.take() {
                return event;
            }
            if self.check() {
                continue;
            }
            if self.source_done {
                if self.own_written < self.own.len() && self.writer.is_some() {
                    // Only a frame cut off by its sender keeps our frames back: nothing can
                    // follow it.
                    self.writer = None;
                }
                return self.idle().await;
            }
            let Some(reader) = self.reader.as_mut() else {
                return self.idle().await;
            };
            if self.throttled {
                // Checking stopped at the rate: wait for it (if the bucket has not refilled
                // meanwhile), then check again before reading anything more.
                self.throttled = false;
                if let Some(wait) = self.throttle.as_mut().and_then(Throttle::wait) {
                    tokio::time::sleep(wait).await;
                }
                continue;
            }
            if self.written == self.checked && self.checked > 0 {
                self.buf.copy_within(self.checked..self.end, 0);
                self.end -= self.checked;
                self.written = 0;
                self.checked = 0;
            }
            if self.end == self.buf.len() {
                // Only a header or a close frame waits unchecked, and both fit many times.
                self.source_done = true;
                return Event::Violation(Violation {
                    code: 1002,
                    reason: "frame header does not fit the buffer",
                });
            }
            match reader.read(&mut self.buf[self.end..]).await {
                Ok(0) => {
                    self.stop_reading();
                    return Event::Lost("closed the connection without a close frame".into());
                }
                Ok(n) => {
                    self.end += n;
                    self.reads = self.reads.wrapping_add(1);
                }
                Err(e) => {
                    self.stop_reading();
                    return Event::Lost(e.to_string());
                }
            }
        }
    }

    /// Nothing left to do: says so once when the direction has just finished (so that the
    /// session looks), then pends.
    async fn idle(&mut self) -> Event {
        if self.finished() && !self.said_finished {
            self.said_finished = true;
            return Event::Progress;
        }
        pending().await
    }

    /// Checks what was read; true when there is something new to write or to report.
    fn check(&mut self) -> bool {
        let mut progressed = false;
        let mut messages = 0;
        while self.checked < self.end && self.pending.is_none() {
            // Dropping a frame needs everything before it written: the write range is one.
            if self.closing && self.written < self.checked {
                break;
            }
            // Over its message rate, the sender's next message waits where it is.
            if !self.checker.mid_message() {
                if let Some(throttle) = self.throttle.as_mut() {
                    if throttle.wait().is_some() {
                        self.throttled = true;
                        break;
                    }
                }
            }
            match self.checker.step(&mut self.buf[self.checked..self.end]) {
                Ok(Step::Pass {
                    len,
                    starts_frame,
                    data,
                    ends_message,
                }) => {
                    if starts_frame {
                        self.skipping = self.closing;
                        if data && !self.skipping {
                            self.data_frames = self.data_frames.wrapping_add(1);
                        }
                    }
                    self.checked += len;
                    if self.skipping {
                        self.written = self.checked;
                    } else {
                        if ends_message {
                            messages += 1;
                            if let Some(throttle) = self.throttle.as_mut() {
                                throttle.take(1);
                            }
                        }
                        progressed = true;
                    }
                    if !self.checker.mid_frame() {
                        self.skipping = false;
                    }
                }
                Ok(Step::Close { len, code, reason }) => {
                    if self.written < self.checked {
                        break;
                    }
                    self.checked += len;
                    self.written = self.checked;
                    // Nothing after a close frame is read, nor passed on.
                    self.end = self.checked;
                    self.stop_reading();
                    self.pending = Some(Event::Close { code, reason });
                    progressed = true;
                }
                Ok(Step::Need) => break,
                Err(v) => {
                    self.stop_reading();
                    self.end = self.checked;
                    self.pending = Some(Event::Violation(v));
                    progressed = true;
                }
            }
        }
        if messages > 0 {
            if let Some(f) = &self.on_messages {
                f(messages);
            }
        }
        progressed
    }
}
