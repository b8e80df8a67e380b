//! A `wss://` client socket: rustls driven by hand over the TCP stream, so that fan-out writes
//! through the same bounded, encode-once outbound as on a plain socket.
//!
//! tokio-rustls completes the handshake; then the connection is taken apart and the session
//! reads through [`TlsSocket::poll_read`] while fan-out writes through [`TlsTransport`], both
//! under one short lock of the rustls connection. The frame bytes are shared by every
//! recipient as on a plain socket; encrypting them is per recipient, which TLS makes
//! unavoidable. rustls's own buffer of records not yet on the wire is capped at
//! [`TLS_BUFFER`]: past it a write is short and the rest waits in the outbound queue, where
//! the connection's byte bound counts it.

use std::io::{self, Read, Write};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use parking_lot::Mutex;
use room_router::{ConnHandle, Deliveries, Transport};
use rustls::ServerConnection;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

use crate::metrics::Metrics;

/// Most bytes rustls holds below the outbound queue (records not yet taken by the socket).
pub const TLS_BUFFER: usize = 64 * 1024;

/// `std::io` over tokio's non-blocking calls: a `WouldBlock` clears the readiness that the
/// next `readable()`/`writable()` waits on.
struct SyncIo<'a>(&'a TcpStream);

impl Read for SyncIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SyncIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One TLS connection after its handshake.
pub struct TlsSocket {
    tcp: TcpStream,
    tls: Mutex<ServerConnection>,
    /// The connection, to wake its session when records (written data, a key update answer,
    /// an alert) wait in rustls because the socket did not take them at once. Weak: the
    /// connection owns this socket.
    conn: Weak<ConnHandle>,
}

impl TlsSocket {
    /// Takes over a connection whose handshake is complete.
    pub fn new(
        tcp: TcpStream,
        mut tls: ServerConnection,
        conn: &Arc<ConnHandle>,
    ) -> Arc<TlsSocket> {
        tls.set_buffer_limit(Some(TLS_BUFFER));
        Arc::new(TlsSocket {
            tcp,
            tls: Mutex::new(tls),
            conn: Arc::downgrade(conn),
        })
    }

    /// Writes the records rustls holds; `Ok(true)` when none is left.
    fn flush_records(&self, tls: &mut ServerConnection) -> io::Result<bool> {
        while tls.wants_write() {
            match tls.write_tls(&mut SyncIo(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Ends the TLS session: close_notify, sent if the socket takes it now (best effort; the
    /// connection is closing either way).
    pub fn finish(&self) {
        let mut tls = self.tls.lock();
        tls.send_close_notify();
        let _ = self.flush_records(&mut tls);
    }

    /// Records wait in rustls: the session flushes them when the socket is writable.
    fn wake_session(&self) {
        if let Some(conn) = self.conn.upgrade() {
            conn.outbound.wake();
        }
    }

    /// Resolves when the socket can take bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }

    /// Reads decrypted bytes (the session's side).
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut tls = self.tls.lock();
            match tls.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            match tls.read_tls(&mut SyncIo(&self.tcp)) {
                // The peer closed the TCP stream without a close_notify.
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        // Send the alert rustls queued, then fail the stream.
                        let _ = self.flush_records(&mut tls);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    // A key update or an alert may want an answer; what the socket does not
                    // take now, the session's next flush writes.
                    match self.flush_records(&mut tls) {
                        Ok(true) => {}
                        Ok(false) => self.wake_session(),
                        Err(_) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(tls);
                    match self.tcp.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The outbound's transport over a [`TlsSocket`].
pub struct TlsTransport {
    socket: Arc<TlsSocket>,
    metrics: Arc<Metrics>,
}

impl TlsTransport {
    /// The transport of `socket`.
    pub fn new(socket: Arc<TlsSocket>, metrics: Arc<Metrics>) -> Self {
        TlsTransport { socket, metrics }
    }
}

impl Transport for TlsTransport {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut tls = self.socket.tls.lock();
        // Records already made go first; while the socket refuses them, nothing new is taken.
        if !self.socket.flush_records(&mut tls)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = tls.writer().write(buf)?;
        // What the socket does not take now waits in rustls (at most TLS_BUFFER), and the
        // session's flush writes it once the socket is writable.
        if !self.socket.flush_records(&mut tls)? {
            self.socket.wake_session();
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn delivered(&self, since: Instant) {
        self.metrics.deliveries.delivered(1, since);
    }

    fn flush_below(&self) -> io::Result<bool> {
        let mut tls = self.socket.tls.lock();
        self.socket.flush_records(&mut tls)
    }
}
