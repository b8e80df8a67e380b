//! The connections this node holds.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::Mutex;
use protocol::{ConnectionId, Encoding, RoomName};

use crate::outbound::{Outbound, QueueLimits};

/// Whether a session is a gateway connection (rooms) or a proxied one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A `server.path` connection speaking the wsgate protocol.
    Room,
    /// A reverse-proxied connection (SPEC section 9).
    Proxy,
}

impl SessionKind {
    /// Wire name in `/sessions`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Room => "room",
            SessionKind::Proxy => "proxy",
        }
    }
}

/// What is known about a connection when it opens; immutable afterwards.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Peer address (the TCP peer; the gateway trusts no forwarding header for this).
    pub source_ip: IpAddr,
    /// Peer port, for `/sessions`.
    pub source_port: u16,
    /// The token's `sub`, when authenticated.
    pub sub: Option<String>,
    /// When the upgrade completed.
    pub connected_at: SystemTime,
    /// Room or proxy session.
    pub kind: SessionKind,
    /// The request path.
    pub path: String,
}

/// One live connection, shared by the session task, the registry and every room it is in.
pub struct ConnHandle {
    /// Its id.
    pub id: ConnectionId,
    /// The encoding its frames are written in.
    pub encoding: Encoding,
    /// Its outbound queue.
    pub outbound: Outbound,
    /// Facts from the handshake.
    pub info: ConnInfo,
    /// Rooms it is in, for cleanup on close and for `GET /@connections/{id}`. Small and
    /// rarely contended, so a Vec under a mutex beats a set.
    rooms: Mutex<Vec<RoomName>>,
    /// Milliseconds since the Unix epoch of the last client message.
    last_active_ms: AtomicU64,
    /// The upstream a proxied session relays to; it changes when a lost upstream is
    /// replaced.
    upstream: Mutex<Option<String>>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl ConnHandle {
    /// A new handle with an empty room list, its queue bounded by `limits`.
    pub fn new(id: ConnectionId, encoding: Encoding, limits: QueueLimits, info: ConnInfo) -> Self {
        let now = unix_ms(info.connected_at);
        ConnHandle {
            id,
            encoding,
            outbound: Outbound::new(limits),
            info,
            rooms: Mutex::new(Vec::new()),
            last_active_ms: AtomicU64::new(now),
            upstream: Mutex::new(None),
        }
    }

    /// The upstream of a proxied session, for `/sessions`.
    pub fn upstream(&self) -> Option<String> {
        self.upstream.lock().clone()
    }

    /// Records the upstream a proxied session relays to now.
    pub fn set_upstream(&self, upstream: Option<String>) {
        *self.upstream.lock() = upstream;
    }

    /// Records client activity.
    pub fn touch(&self) {
        self.last_active_ms
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }

    /// When the client last sent a message.
    pub fn last_active(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    /// The rooms it is in.
    pub fn rooms(&self) -> Vec<RoomName> {
        self.rooms.lock().clone()
    }

    /// Number of rooms it is in.
    pub fn room_count(&self) -> usize {
        self.rooms.lock().len()
    }

    pub(crate) fn add_room(&self, room: &RoomName, limit: usize) -> Result<bool, ()> {
        let mut rooms = self.rooms.lock();
        if rooms.contains(room) {
            return Ok(false);
        }
        if rooms.len() >= limit {
            return Err(());
        }
        rooms.push(room.clone());
        Ok(true)
    }

    pub(crate) fn remove_room(&self, room: &RoomName) -> bool {
        let mut rooms = self.rooms.lock();
        match rooms.iter().position(|r| r == room) {
            Some(i) => {
                rooms.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub(crate) fn take_rooms(&self) -> Vec<RoomName> {
        std::mem::take(&mut *self.rooms.lock())
    }
}

/// Connection id → handle, for the connections on this node.
#[derive(Default)]
pub struct Registry {
    conns: DashMap<ConnectionId, Arc<ConnHandle>>,
}

impl Registry {
    /// Adds a connection.
    pub fn insert(&self, conn: Arc<ConnHandle>) {
        self.conns.insert(conn.id.clone(), conn);
    }

    /// Removes a connection; `None` when it was not there.
    pub fn remove(&self, id: &ConnectionId) -> Option<Arc<ConnHandle>> {
        self.conns.remove(id).map(|(_, c)| c)
    }

    /// Looks a connection up.
    pub fn get(&self, id: &str) -> Option<Arc<ConnHandle>> {
        self.conns.get(id).map(|c| c.value().clone())
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the node holds no connection.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A snapshot of every connection (drain, `/sessions`). Holds no lock once returned.
    pub fn snapshot(&self) -> Vec<Arc<ConnHandle>> {
        self.conns.iter().map(|c| c.value().clone()).collect()
    }
}
