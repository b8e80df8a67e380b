//! Room membership on this node, and local fan-out.
//!
//! Fan-out encodes a message at most once per encoding present in the room and pushes the same
//! shared bytes to every member's queue: no per-recipient encoding or allocation.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use indexmap::IndexMap;
use parking_lot::RwLock;
use protocol::payload::PayloadError;
use protocol::{ConnectionId, Encoding, RoomName, ServerFrame};

use crate::outbound::{Framer, PushError};
use crate::registry::ConnHandle;

/// One encoding of a frame, ready for the socket.
pub struct Wire {
    /// Bytes to write (WebSocket header included), shared by every recipient.
    pub bytes: Bytes,
    /// Size of the encoded message itself (the `max_message_bytes` rule).
    pub message_len: usize,
}

/// A server frame and its encodings, made on first use and then shared by every recipient.
pub struct Encodings<'a> {
    frame: &'a ServerFrame,
    framer: Framer,
    cache: [Option<Result<Wire, ()>>; 2],
}

impl<'a> Encodings<'a> {
    /// Wraps a frame; nothing is encoded yet.
    pub fn new(frame: &'a ServerFrame, framer: Framer) -> Self {
        Encodings {
            frame,
            framer,
            cache: [None, None],
        }
    }

    /// The frame in `encoding`, encoding and framing it on first use.
    pub fn get(&mut self, encoding: Encoding) -> Result<&Wire, PayloadError> {
        let slot = &mut self.cache[encoding.index()];
        if slot.is_none() {
            match self.frame.encode(encoding) {
                Ok(f) => {
                    *slot = Some(Ok(Wire {
                        bytes: (self.framer)(&f),
                        message_len: f.len(),
                    }))
                }
                Err(e) => {
                    *slot = Some(Err(()));
                    return Err(e);
                }
            }
        }
        match slot {
            Some(Ok(f)) => Ok(f),
            // The error was reported on first use; later recipients are skipped quietly.
            _ => Err(PayloadError::Unrepresentable("payload failed to encode")),
        }
    }

    /// The largest encoded size over both encodings (the `too_large` rule).
    pub fn max_len(&mut self) -> Result<usize, PayloadError> {
        let a = self.get(Encoding::Json)?.message_len;
        let b = self.get(Encoding::MsgPack)?.message_len;
        Ok(a.max(b))
    }
}

/// What one fan-out did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Frames queued.
    pub queued: usize,
    /// Members found slow (queue full) and now closing with 1013.
    pub slow_consumers: usize,
}

/// A room's local members, keyed by the address of their handle: iteration is over a
/// contiguous vector (fan-out), and a leave is one hash lookup and a swap, not a scan, so a
/// mass disconnect of a large room costs O(members) rather than O(members²) under the lock
/// that fan-out needs.
#[derive(Default)]
struct Members {
    list: RwLock<IndexMap<usize, Arc<ConnHandle>>>,
}

/// The key of a member: the address of its handle, stable for as long as it lives.
fn key(conn: &ConnHandle) -> usize {
    std::ptr::from_ref(conn) as usize
}

/// Room → local members.
#[derive(Default)]
pub struct Rooms {
    map: DashMap<RoomName, Arc<Members>>,
}

impl Rooms {
    /// Adds a member; returns true when it is the room's first local member (the bus must
    /// start receiving the room). The caller has checked that it was not a member already.
    pub fn join(&self, room: &RoomName, conn: &Arc<ConnHandle>) -> bool {
        // The entry guard is held while pushing so that a concurrent last leave cannot remove
        // the room between the lookup and the push.
        let entry = self.map.entry(room.clone()).or_default();
        let mut list = entry.list.write();
        list.insert(key(conn), conn.clone());
        list.len() == 1
    }

    /// Removes a member; returns true when the room has no local member left (the bus may
    /// stop receiving it).
    pub fn leave(&self, room: &RoomName, conn: &ConnHandle) -> bool {
        let mut emptied = false;
        self.map.remove_if(room, |_, members| {
            let mut list = members.list.write();
            if list.swap_remove(&key(conn)).is_some() {
                emptied = list.is_empty();
            }
            emptied
        });
        emptied
    }

    /// Writes or queues `frame` for every local member of `room` except `exclude`.
    pub fn fanout(
        &self,
        room: &RoomName,
        frame: &mut Encodings<'_>,
        exclude: Option<&ConnHandle>,
        since: Instant,
    ) -> Fanout {
        // Clone the member list's Arc and release the map shard at once: joins to other
        // rooms of the same shard must not wait for this fan-out.
        let Some(members) = self.map.get(room).map(|m| m.value().clone()) else {
            return Fanout::default();
        };
        let list = members.list.read();
        let mut out = Fanout::default();
        // Compared by address: no id to load for every member.
        let exclude = exclude.map(|c| c as *const ConnHandle);
        for conn in list.values() {
            if exclude == Some(Arc::as_ptr(conn)) {
                continue;
            }
            let Ok(wire) = frame.get(conn.encoding) else {
                continue;
            };
            match conn.outbound.push(&wire.bytes, Some(since)) {
                Ok(()) => out.queued += 1,
                Err(PushError::Full) => out.slow_consumers += 1,
                Err(PushError::Closed) => {}
            }
        }
        out
    }

    /// Ids of the local members.
    pub fn members(&self, room: &str) -> Vec<ConnectionId> {
        self.map
            .get(room)
            .map(|m| m.list.read().values().map(|c| c.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Number of local members.
    pub fn count(&self, room: &str) -> usize {
        self.map.get(room).map(|m| m.list.read().len()).unwrap_or(0)
    }

    /// Whether the room has a local member (a room's entry exists exactly while it has one).
    pub fn contains(&self, room: &RoomName) -> bool {
        self.map.contains_key(room)
    }

    /// Rooms with at least one local member.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no room has a local member.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
