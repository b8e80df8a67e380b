//! Room membership on this node, and local fan-out.
//!
//! Fan-out encodes a message at most once per encoding present in the room and pushes the same
//! shared bytes to every member's queue: no per-recipient encoding or allocation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use indexmap::IndexMap;
use parking_lot::Mutex;
use protocol::payload::PayloadError;
use protocol::{ConnectionId, Encoding, RoomName, ServerFrame};

use crate::outbound::{Framer, PushError, Pushed};
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

    /// Checks the `too_large` rule (SPEC section 4): encoded for any recipient on any node, in
    /// either encoding, the frame fits in `max` bytes. An encoding is produced only when its
    /// size bound does not settle it, so a publish to a room of JSON members encodes no
    /// MessagePack at all. `Ok(Err(size))`: an encoding `size` bytes long is over `max`.
    pub fn check_size(&mut self, max: usize) -> Result<Result<(), usize>, PayloadError> {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let len = match &self.cache[encoding.index()] {
                Some(Ok(wire)) => wire.message_len,
                _ if self.frame.size_bound(encoding) <= max => continue,
                _ => self.get(encoding)?.message_len,
            };
            if len > max {
                return Ok(Err(len));
            }
        }
        Ok(Ok(()))
    }

    /// Whether `encoding` has been produced (tests: what a publish really encoded).
    pub fn encoded(&self, encoding: Encoding) -> bool {
        matches!(self.cache[encoding.index()], Some(Ok(_)))
    }
}

/// What one fan-out did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Frames written or queued.
    pub queued: usize,
    /// Of those, frames written whole at once (the rest are counted when a flush ends them).
    pub written: usize,
    /// Members found slow (queue full) and now closing with 1013.
    pub slow_consumers: usize,
}

impl Fanout {
    /// Writes or queues `bytes` for `conn`, counting what happened.
    #[inline]
    fn push(&mut self, conn: &ConnHandle, bytes: &Bytes, since: Instant) {
        match conn.outbound.push(bytes, Some(since)) {
            Ok(pushed) => {
                self.queued += 1;
                self.written += usize::from(pushed == Pushed::Written);
            }
            Err(PushError::Full) => self.slow_consumers += 1,
            Err(PushError::Closed) => {}
        }
    }
}

/// The member table of a room, changed by joins and leaves only.
#[derive(Default)]
struct Table {
    /// Members keyed by the address of their handle: a leave is one hash lookup and a swap,
    /// not a scan, so a mass disconnect of a large room is O(members), not O(members²).
    list: IndexMap<usize, Arc<ConnHandle>>,
    /// Set by the leave that emptied the room and is taking it out of the map: a join that
    /// finds this table must start over with a new one.
    removed: bool,
}

/// A room's local members.
///
/// Fan-out never takes the table's lock: it iterates a copy-on-write snapshot that the first
/// fan-out after a change rebuilds. A join or leave on a room in the middle of a 20,000-member
/// fan-out (tens of milliseconds of socket writes) therefore waits for nothing but the table's
/// short lock, and blocks no runtime thread. The price is one rebuild (a clone of the member
/// list) per fan-out that follows a change, paid by the publisher, never per join.
///
/// A fan-out that took its snapshot before a leave may still write to the member that left;
/// any publish issued after the leave's ack reaches it no more (SPEC section 4).
///
/// In a retained room, fan-outs and recoveries take turns on `recovering` (a fan-out holds it
/// while it writes; a recovery's end holds it while it writes the replay), so that a member
/// recovering history gets every message once, in offset order: live messages that arrive
/// during its recovery wait in its entry there, and are written after the replay. Lock order:
/// `recovering` before `table`, never the other way.
#[derive(Default)]
struct Members {
    table: Mutex<Table>,
    snapshot: ArcSwap<Vec<Arc<ConnHandle>>>,
    /// Whether `snapshot` is behind `table`. Set under the table's lock after a change.
    stale: AtomicBool,
    /// Members recovering history, and where the room's live messages stand on this node.
    recovering: Mutex<Turn>,
}

/// What fan-outs and recoveries of a retained room share (see [`Members`]).
#[derive(Default)]
struct Turn {
    /// Members recovering history, by key.
    members: HashMap<usize, Recovering>,
    /// The last live message fanned out here: its offset and epoch.
    live: Option<(u64, String)>,
}

/// Live messages kept for a member while it recovers, at most this many: a recovery that
/// falls further behind ends the connection as a slow consumer would.
const RECOVERY_BUFFER: usize = 1_024;

/// A member recovering history.
enum Recovering {
    /// Reading history: the live messages (offset, bytes for its encoding) that arrived
    /// meanwhile, and whether more arrived than it keeps.
    Keeping {
        kept: Vec<(u64, Bytes)>,
        overflow: bool,
    },
    /// Its replay is written up to `after` in `epoch`, but live messages up to there may still
    /// be on their way to this node (Redis answered the history read before this node read
    /// them off its subscription): those are skipped, and the first later one makes it live.
    CatchingUp { after: u64, epoch: String },
}

/// Why a recovery could not end with the member live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryError {
    /// The member left the room (or closed) meanwhile: nothing was written.
    Gone,
    /// More live messages arrived than a recovery keeps ([`RECOVERY_BUFFER`]).
    Overflow,
}

impl Members {
    /// The members as of now, rebuilding the snapshot if a join or leave made it stale.
    fn current(&self) -> Arc<Vec<Arc<ConnHandle>>> {
        if self.stale.load(Ordering::Acquire) {
            let table = self.table.lock();
            // Cleared only once the new snapshot is stored: a fan-out that reads `false`
            // also reads the snapshot that includes every change made before it.
            if self.stale.load(Ordering::Acquire) {
                self.snapshot
                    .store(Arc::new(table.list.values().cloned().collect()));
                self.stale.store(false, Ordering::Release);
            }
        }
        self.snapshot.load_full()
    }
}

/// Members from which a fan-out tells the runtime that it blocks its thread.
const LARGE_ROOM: usize = 1_024;

/// Whether the current thread is a worker of a multi-threaded tokio runtime (where
/// `block_in_place` may hand its other tasks to another worker).
fn in_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs a fan-out to `members` members. A large one is tens of milliseconds of socket writes:
/// the runtime is told this thread is busy, so that it hands the thread's other tasks to
/// another worker instead of leaving them (a task woken into this thread's LIFO slot, say)
/// waiting for the whole fan-out.
fn writing(members: usize, write: impl FnOnce() -> Fanout) -> Fanout {
    if members >= LARGE_ROOM && in_multi_thread_runtime() {
        tokio::task::block_in_place(write)
    } else {
        write()
    }
}

/// Writes or queues `frame` for every member of `list` except `exclude`.
fn write_all(
    list: &[Arc<ConnHandle>],
    frame: &mut Encodings<'_>,
    exclude: Option<&ConnHandle>,
    since: Instant,
) -> Fanout {
    let mut out = Fanout::default();
    // Compared by address: no id to load for every member.
    let exclude = exclude.map(|c| c as *const ConnHandle);
    for conn in list {
        if exclude == Some(Arc::as_ptr(conn)) {
            continue;
        }
        let Ok(wire) = frame.get(conn.encoding) else {
            continue;
        };
        out.push(conn, &wire.bytes, since);
    }
    out
}

/// [`write_all`] in a retained room while some members recover: what reaches them follows
/// their [`Recovering`] state.
fn write_all_recovering(
    list: &[Arc<ConnHandle>],
    frame: &mut Encodings<'_>,
    exclude: Option<&ConnHandle>,
    since: Instant,
    (offset, epoch): (u64, &str),
    recovering: &mut HashMap<usize, Recovering>,
) -> Fanout {
    let mut out = Fanout::default();
    let exclude = exclude.map(|c| c as *const ConnHandle);
    for conn in list {
        if exclude == Some(Arc::as_ptr(conn)) {
            continue;
        }
        let Ok(wire) = frame.get(conn.encoding) else {
            continue;
        };
        match recovering.get_mut(&key(conn)) {
            Some(Recovering::Keeping { kept, overflow }) => {
                if kept.len() < RECOVERY_BUFFER {
                    kept.push((offset, wire.bytes.clone()));
                } else {
                    *overflow = true;
                }
                continue;
            }
            Some(Recovering::CatchingUp { after, epoch: e }) => {
                if offset <= *after && e == epoch {
                    // Replayed already.
                    continue;
                }
                recovering.remove(&key(conn));
            }
            None => {}
        }
        out.push(conn, &wire.bytes, since);
    }
    out
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
        self.join_as(room, conn, false)
    }

    /// [`Rooms::join`] for a member that recovers history first: the room's live messages
    /// are kept for it from now until [`Rooms::end_recovery`] (or [`Rooms::cancel_recovery`]).
    pub fn join_recovering(&self, room: &RoomName, conn: &Arc<ConnHandle>) -> bool {
        self.join_as(room, conn, true)
    }

    fn join_as(&self, room: &RoomName, conn: &Arc<ConnHandle>, recovering: bool) -> bool {
        loop {
            // The map's shard guard is released before the table's lock is taken: a join
            // never holds other rooms of its shard while it waits.
            let members = self.map.entry(room.clone()).or_default().value().clone();
            if recovering {
                // Before the member is in the table, so no fan-out writes to it directly.
                members.recovering.lock().members.insert(
                    key(conn),
                    Recovering::Keeping {
                        kept: Vec::new(),
                        overflow: false,
                    },
                );
            }
            let mut table = members.table.lock();
            if table.removed {
                // The last leave is taking this table out of the map right now.
                drop(table);
                if recovering {
                    members.recovering.lock().members.remove(&key(conn));
                }
                std::thread::yield_now();
                continue;
            }
            table.list.insert(key(conn), conn.clone());
            members.stale.store(true, Ordering::Release);
            return table.list.len() == 1;
        }
    }

    /// Removes a member; returns true when the room has no local member left (the bus may
    /// stop receiving it).
    pub fn leave(&self, room: &RoomName, conn: &ConnHandle) -> bool {
        let Some(members) = self.map.get(room).map(|m| m.value().clone()) else {
            return false;
        };
        {
            // Before the table's lock (lock order); empty but in retained rooms.
            let mut turn = members.recovering.lock();
            if !turn.members.is_empty() {
                turn.members.remove(&key(conn));
            }
        }
        let mut table = members.table.lock();
        if table.removed || table.list.swap_remove(&key(conn)).is_none() {
            return false;
        }
        members.stale.store(true, Ordering::Release);
        if !table.list.is_empty() {
            return false;
        }
        table.removed = true;
        drop(table);
        self.map
            .remove_if(room, |_, current| Arc::ptr_eq(current, &members));
        true
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
        let list = members.current();
        writing(list.len(), || write_all(&list, frame, exclude, since))
    }

    /// Writes or queues a retained room's message (at `offset` in `epoch`) for every local
    /// member but `exclude`, taking its turn with recoveries: members recovering keep it for
    /// later, or skip it when their replay had it.
    pub fn fanout_retained(
        &self,
        room: &RoomName,
        frame: &mut Encodings<'_>,
        exclude: Option<&ConnHandle>,
        since: Instant,
        position: (u64, &str),
    ) -> Fanout {
        let Some(members) = self.map.get(room).map(|m| m.value().clone()) else {
            return Fanout::default();
        };
        let mut turn = members.recovering.lock();
        let list = members.current();
        let turn = &mut *turn;
        match &mut turn.live {
            Some((o, e)) if e == position.1 => *o = position.0,
            live => *live = Some((position.0, position.1.to_owned())),
        }
        writing(list.len(), || {
            if turn.members.is_empty() {
                write_all(&list, frame, exclude, since)
            } else {
                write_all_recovering(&list, frame, exclude, since, position, &mut turn.members)
            }
        })
    }

    /// Ends `conn`'s recovery in `room`: writes `replay` (its history in `epoch`, oldest
    /// first, each with its offset, already framed for it), then the live messages kept
    /// meanwhile that are newer than the replay's last and than `after`; later live messages
    /// it has already had are skipped until the first new one. Returns the last offset
    /// written (`after` when none).
    pub fn end_recovery(
        &self,
        room: &RoomName,
        conn: &ConnHandle,
        replay: Vec<(u64, Bytes)>,
        (after, epoch): (u64, &str),
    ) -> Result<u64, RecoveryError> {
        let Some(members) = self.map.get(room).map(|m| m.value().clone()) else {
            return Err(RecoveryError::Gone);
        };
        let mut turn = members.recovering.lock();
        let Some(Recovering::Keeping { kept, overflow }) = turn.members.remove(&key(conn)) else {
            return Err(RecoveryError::Gone);
        };
        if overflow {
            return Err(RecoveryError::Overflow);
        }
        let mut last = after;
        let since = Instant::now();
        for (offset, bytes) in replay.into_iter().chain(kept) {
            if offset <= last {
                continue;
            }
            last = offset;
            // A full queue closes the connection (1013) by itself: the rest is moot.
            if conn.outbound.push(&bytes, Some(since)).is_err() {
                break;
            }
        }
        let caught_up = matches!(&turn.live, Some((o, e)) if e == epoch && *o >= last);
        if !caught_up {
            turn.members.insert(
                key(conn),
                Recovering::CatchingUp {
                    after: last,
                    epoch: epoch.to_owned(),
                },
            );
        }
        Ok(last)
    }

    /// Forgets `conn`'s recovery in `room` (it gave up): nothing more is kept for it.
    pub fn cancel_recovery(&self, room: &RoomName, conn: &ConnHandle) {
        if let Some(members) = self.map.get(room).map(|m| m.value().clone()) {
            members.recovering.lock().members.remove(&key(conn));
        }
    }

    /// Ids of the local members.
    pub fn members(&self, room: &str) -> Vec<ConnectionId> {
        self.map
            .get(room)
            .map(|m| m.value().clone())
            .map(|m| m.table.lock().list.values().map(|c| c.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Number of local members.
    pub fn count(&self, room: &str) -> usize {
        self.map
            .get(room)
            .map(|m| m.value().clone())
            .map(|m| m.table.lock().list.len())
            .unwrap_or(0)
    }

    /// Whether the room has a local member (a room's entry exists exactly while it has one,
    /// but for the instants a join or a last leave is changing it).
    pub fn contains(&self, room: &RoomName) -> bool {
        self.map.contains_key(room)
    }

    /// The rooms with at least one local member.
    pub fn names(&self) -> Vec<RoomName> {
        self.map.iter().map(|e| e.key().clone()).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{QueueLimits, Transport};
    use crate::registry::{ConnInfo, SessionKind};
    use std::io;
    use std::time::Duration;

    /// A socket whose every write takes `delay`: a fan-out to it is as slow as a fan-out to
    /// thousands of real sockets.
    struct SlowSocket(Duration);

    impl Transport for SlowSocket {
        fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
            std::thread::sleep(self.0);
            Ok(buf.len())
        }
        fn delivered(&self, _since: Instant) {}
    }

    fn conn(delay: Option<Duration>) -> Arc<ConnHandle> {
        let c = Arc::new(ConnHandle::new(
            ConnectionId::random(),
            Encoding::Json,
            QueueLimits::UNBOUNDED,
            ConnInfo {
                source_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                source_port: 1,
                sub: None,
                connected_at: std::time::SystemTime::now(),
                kind: SessionKind::Room,
                path: "/ws".into(),
            },
        ));
        if let Some(d) = delay {
            c.outbound.attach(Box::new(SlowSocket(d)));
        }
        c
    }

    /// Joins and leaves on a room in the middle of its (slow) fan-out, and on other rooms,
    /// wait for nothing: fan-out holds no lock a join or leave needs.
    #[test]
    fn joins_and_leaves_do_not_wait_for_a_fan_out_in_progress() {
        let rooms = Arc::new(Rooms::default());
        let big = RoomName::parse("big").unwrap();
        let slow = conn(Some(Duration::from_millis(400)));
        rooms.join(&big, &slow);
        let frame = ServerFrame::Pong { id: None };
        let fanning = {
            let (rooms, big) = (rooms.clone(), big.clone());
            std::thread::spawn(move || {
                let mut enc = Encodings::new(&frame, crate::outbound::unframed);
                rooms.fanout(&big, &mut enc, None, Instant::now())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        let late = conn(None);
        assert!(!rooms.join(&big, &late), "not the first member");
        let other = RoomName::parse("other").unwrap();
        assert!(rooms.join(&other, &late));
        assert!(rooms.leave(&other, &late));
        assert!(!rooms.leave(&big, &late));
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_millis(200),
            "waited {waited:?} for the fan-out"
        );
        let out = fanning.join().unwrap();
        assert_eq!((out.queued, out.written), (1, 1));
    }

    /// The `too_large` check encodes only what a size bound cannot settle.
    #[test]
    fn a_size_check_encodes_only_what_its_bound_cannot_settle() {
        let message = |data: String| ServerFrame::Message {
            room: RoomName::parse("r").unwrap(),
            data: protocol::Payload::Json(Bytes::from(data)),
            from: None,
            offset: None,
            epoch: None,
        };
        let small = message("\"hi\"".into());
        let mut enc = Encodings::new(&small, crate::outbound::unframed);
        assert_eq!(enc.check_size(1_000).unwrap(), Ok(()));
        assert!(!enc.encoded(Encoding::Json) && !enc.encoded(Encoding::MsgPack));
        // Near the limit the MessagePack bound (3 bytes per JSON byte) is too loose: encoded.
        let near = message(format!("\"{}\"", "x".repeat(800)));
        let mut enc = Encodings::new(&near, crate::outbound::unframed);
        assert_eq!(enc.check_size(1_000).unwrap(), Ok(()));
        assert!(enc.encoded(Encoding::MsgPack) && !enc.encoded(Encoding::Json));
        let mut enc = Encodings::new(&near, crate::outbound::unframed);
        assert!(matches!(enc.check_size(500).unwrap(), Err(size) if size > 800));
    }

    /// A fan-out after a join reaches the new member; after a leave, no longer.
    #[test]
    fn the_snapshot_follows_joins_and_leaves() {
        let rooms = Rooms::default();
        let room = RoomName::parse("r").unwrap();
        let (a, b) = (conn(None), conn(None));
        let frame = ServerFrame::Pong { id: None };
        let fanout = |rooms: &Rooms| {
            let mut enc = Encodings::new(&frame, crate::outbound::unframed);
            rooms.fanout(&room, &mut enc, None, Instant::now()).queued
        };
        assert!(rooms.join(&room, &a));
        assert_eq!(fanout(&rooms), 1);
        assert!(!rooms.join(&room, &b));
        assert_eq!(fanout(&rooms), 2);
        assert!(!rooms.leave(&room, &a));
        assert_eq!(fanout(&rooms), 1);
        assert!(rooms.leave(&room, &b));
        assert!(!rooms.contains(&room));
        assert_eq!(fanout(&rooms), 0);
        assert!(rooms.join(&room, &a), "re-created: first member again");
        assert_eq!(fanout(&rooms), 1);
    }
}
