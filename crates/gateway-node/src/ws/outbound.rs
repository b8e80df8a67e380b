//! The socket under a session (plain, or TLS through [`TlsSocket`]), split in two: writes go
//! through the connection's [`Outbound`] (direct non-blocking writes from fan-out, a bounded queue behind them), and
//! reads go to tungstenite, whose own writes (pongs, close frames) are routed into the same
//! outbound so that frames never interleave.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use protocol::EncodedFrame;
use room_router::{ConnHandle, Deliveries, Flush, FrameKind, PushError, Router, Transport};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::metrics::Metrics;
use crate::ws::tls_socket::TlsSocket;

/// How long a close handshake may take before the socket is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Wraps an encoded frame in a WebSocket frame header (server frames are unmasked, so the
/// bytes are the same for every recipient and are built once per broadcast).
pub fn frame(encoded: &EncodedFrame) -> Bytes {
    let opcode = if encoded.encoding().is_text() {
        OpCode::Data(Data::Text)
    } else {
        OpCode::Data(Data::Binary)
    };
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let payload = encoded.bytes();
    let len = payload.len() as u64;
    let mut out = Vec::with_capacity(header.len(len) + payload.len());
    // Formatting into a Vec cannot fail.
    let _ = header.format(len, &mut out);
    out.extend_from_slice(payload);
    out.into()
}

/// A plain client socket, as the router's [`Transport`].
pub struct SocketTransport {
    /// The socket, shared with the session's reads: one pointer from here to the descriptor
    /// that every fan-out write goes to (a split write half would add another).
    stream: Arc<TcpStream>,
    metrics: Arc<Metrics>,
}

impl SocketTransport {
    /// Wraps a socket.
    pub fn new(stream: Arc<TcpStream>, metrics: Arc<Metrics>) -> Self {
        SocketTransport { stream, metrics }
    }
}

/// `send(2)` without blocking or SIGPIPE: one system call, no readiness bookkeeping.
fn send(stream: &tokio::net::TcpStream, buf: &[u8]) -> io::Result<usize> {
    SockRef::from(stream).send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

impl Transport for SocketTransport {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.stream.try_write(buf)
    }

    fn try_write_direct(&self, buf: &[u8]) -> io::Result<usize> {
        send(&self.stream, buf)
    }

    fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream.try_write_vectored(bufs)
    }

    fn delivered(&self, since: Instant) {
        self.metrics.deliveries.delivered(1, since);
    }
}

/// The kind of a whole frame tungstenite writes, from its opcode (the low nibble of the first
/// byte): the outbound keeps at most one pong waiting and never refuses the close frame.
fn control_kind(frame: &[u8]) -> FrameKind {
    match frame.first().map(|b| b & 0x0f) {
        Some(0x8) => FrameKind::Close,
        Some(0xa) => FrameKind::Pong,
        Some(0x9) => FrameKind::Ping,
        _ => FrameKind::Data,
    }
}

/// A session's socket: the session reads from it and waits on it when it pushes back (the
/// outbound's transport writes to the same socket).
#[derive(Clone)]
pub enum ClientSocket {
    /// `ws://`.
    Plain(Arc<TcpStream>),
    /// `wss://`, decrypted by [`TlsSocket`].
    Tls(Arc<TlsSocket>),
}

impl ClientSocket {
    /// Resolves when the socket can take bytes.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            ClientSocket::Plain(s) => s.writable().await,
            ClientSocket::Tls(t) => t.writable().await,
        }
    }
}

/// What tungstenite reads from and writes to: reads from the socket (after any bytes the HTTP
/// layer read ahead), writes into the connection's outbound.
pub struct SessionIo {
    read: ClientSocket,
    prefix: Bytes,
    conn: Arc<ConnHandle>,
    /// Counts a slow consumer that a control frame (a pong, a ping) pushed over its bounds.
    router: Arc<Router>,
}

impl SessionIo {
    /// Wraps the read half; `prefix` is what the HTTP layer had already read. It is a view
    /// into the HTTP layer's whole read buffer, so it is copied out (or dropped when empty)
    /// rather than keeping that buffer alive for the life of the connection.
    pub fn new(
        read: ClientSocket,
        prefix: Bytes,
        conn: Arc<ConnHandle>,
        router: Arc<Router>,
    ) -> Self {
        let prefix = if prefix.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&prefix)
        };
        SessionIo {
            read,
            prefix,
            conn,
            router,
        }
    }
}

impl AsyncRead for SessionIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        match &self.read {
            ClientSocket::Plain(stream) => loop {
                // Readiness, then a non-blocking read; a `WouldBlock` clears the readiness
                // and the next poll waits again.
                match stream.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                match stream.try_read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            ClientSocket::Tls(t) => t.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SessionIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // tungstenite writes whole frames (write buffer size 0): pongs, pings, close frames.
        match self
            .conn
            .outbound
            .push_control(&Bytes::copy_from_slice(buf), control_kind(buf))
        {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            // Over the bounds: the connection is closing with 1013, which the session sees;
            // failing tungstenite's write would turn that into a dropped socket instead.
            Err(PushError::Full) => {
                self.router
                    .stats()
                    .slow_consumer_closes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Ok(buf.len()))
            }
            Err(PushError::Closed) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The session flushes the outbound itself.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Writes everything queued, waiting for the socket as needed.
pub async fn flush_all(conn: &ConnHandle, write: &ClientSocket) -> io::Result<()> {
    loop {
        match conn.outbound.flush() {
            Flush::Empty => return Ok(()),
            Flush::Blocked => write.writable().await?,
            Flush::Failed => return Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    fn wire(f: Frame) -> Vec<u8> {
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    #[test]
    fn control_frames_are_told_apart_by_opcode() {
        assert_eq!(control_kind(&wire(Frame::pong(vec![1]))), FrameKind::Pong);
        assert_eq!(control_kind(&wire(Frame::ping(vec![1]))), FrameKind::Ping);
        assert_eq!(control_kind(&wire(Frame::close(None))), FrameKind::Close);
        assert_eq!(
            control_kind(&frame(
                &protocol::ServerFrame::Pong { id: None }
                    .encode(protocol::Encoding::Json)
                    .unwrap()
            )),
            FrameKind::Data
        );
    }
}
