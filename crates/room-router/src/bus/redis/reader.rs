//! Incoming envelopes: room and direct deliveries, queries from other nodes and their
//! replies; malformed ones are counted, logged once per interval and dropped.

use super::*;

pub(super) fn view_to_info(v: ConnectionView) -> ConnectionInfo {
    let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    ConnectionInfo {
        id: v.id.to_string(),
        node: v.node.to_string(),
        connected_at_ms: ms(v.connected_at),
        last_active_ms: ms(v.last_active),
        source_ip: v.source_ip,
        sub: v.sub,
        rooms: v.rooms.iter().map(|r| r.to_string()).collect(),
    }
}

pub(super) fn info_to_view(i: ConnectionInfo) -> ConnectionView {
    // Another node's numbers are not trusted to be sane: clamped to what RFC 3339 can show.
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms.min(protocol::envelope::MAX_TIME_MS));
    ConnectionView {
        id: ConnectionId::from_string(i.id),
        node: NodeId::new(i.node),
        connected_at: at(i.connected_at_ms),
        last_active: at(i.last_active_ms),
        source_ip: i.source_ip,
        sub: i.sub,
        rooms: i
            .rooms
            .iter()
            .filter_map(|r| RoomName::parse(r).ok())
            .collect(),
    }
}

impl Inner {
    pub(super) async fn run_reader(self: Arc<Self>) {
        let mut rx = self.subscriber.message_rx();
        let mut last_log = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            let msg = tokio::select! {
                () = self.cancel.cancelled() => return,
                m = rx.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    self.dropped.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(lost = n, "redis bus reader lagged: messages dropped");
                    continue;
                }
                Err(_) => return,
            };
            let Some(bytes) = msg.value.as_bytes() else {
                continue;
            };
            let envelope = match Envelope::decode_positioned(bytes) {
                Ok(e) => e,
                Err(e) => {
                    let n = self.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    if last_log.elapsed() >= Duration::from_secs(10) {
                        last_log = std::time::Instant::now();
                        tracing::warn!(channel = %msg.channel, error = %e, total = n, "malformed envelope dropped");
                    }
                    continue;
                }
            };
            self.dispatch(envelope, bytes.len());
        }
    }

    fn dispatch(self: &Arc<Self>, envelope: Envelope, size: usize) {
        let Some(sink) = self.sink() else { return };
        match envelope.body {
            EnvelopeBody::Room { offset: None, .. } | EnvelopeBody::Presence { .. }
                if envelope.origin == self.opts.node =>
            {
                // Our own publish: local members already have it. A retained room's (with
                // an offset) comes back here like everyone's, in offset order.
            }
            EnvelopeBody::Query {
                id,
                reply_to,
                query,
            } => {
                let reply = match query {
                    Query::Connection(c) => Reply::Connection(
                        sink.connection_view(&ConnectionId::from_string(c))
                            .map(view_to_info),
                    ),
                    Query::Room { room, ids } => match RoomName::parse(&room) {
                        Ok(room) => {
                            let members = sink.room_members(&room);
                            Reply::Room {
                                count: members.len() as u64,
                                ids: if ids {
                                    members.iter().map(|m| m.to_string()).collect()
                                } else {
                                    Vec::new()
                                },
                            }
                        }
                        Err(_) => Reply::Room {
                            count: 0,
                            ids: Vec::new(),
                        },
                    },
                };
                let answer = Envelope {
                    origin: self.opts.node.clone(),
                    body: EnvelopeBody::Reply { id, reply },
                    traceparent: None,
                };
                let channel = self.keys.node(reply_to.as_str());
                // Not awaited here: room deliveries behind this query must not wait for the
                // reply's round trip.
                let Ok(permit) = self.queries.reply_permits.clone().try_acquire_owned() else {
                    tracing::debug!("too many query replies in flight: one left unanswered");
                    return;
                };
                let inner = self.clone();
                self.tasks.spawn(async move {
                    let _ = inner.publish_to(channel, answer.encode()).await;
                    drop(permit);
                });
            }
            EnvelopeBody::Reply { id, reply } => {
                self.queries.answer(id, reply);
            }
            EnvelopeBody::Room { ref room, .. } | EnvelopeBody::Presence { ref room, .. } => {
                // Fanned out by the room's worker: a 20,000-member room does not hold up
                // other rooms' deliveries, and one room's messages stay in order.
                let worker = &self.fanout_workers[worker_for(room, self.fanout_workers.len())];
                let reserved = self
                    .fanout_queued_bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                        (q + size <= FANOUT_QUEUE_BYTES).then_some(q + size)
                    })
                    .is_ok();
                if !reserved {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                } else if worker.try_send((envelope, size)).is_err() {
                    self.fanout_queued_bytes.fetch_sub(size, Ordering::Relaxed);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => sink.deliver(envelope),
        }
    }

    /// Delivers the room envelopes of the rooms assigned to this worker, in arrival order.
    pub(super) async fn run_fanout_worker(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<(Envelope, usize)>,
    ) {
        loop {
            let (envelope, size) = tokio::select! {
                () = self.cancel.cancelled() => return,
                e = rx.recv() => match e {
                    Some(e) => e,
                    None => return,
                },
            };
            if let Some(sink) = self.sink() {
                sink.deliver(envelope);
            }
            self.fanout_queued_bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }
}

/// The fan-out worker of a room: a stable hash of its name.
pub(super) fn worker_for(room: &RoomName, workers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    room.hash(&mut h);
    (h.finish() % workers.max(1) as u64) as usize
}
