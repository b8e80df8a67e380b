//! Retained rooms in Redis: a stream per room (`{cluster}:hist:{<room>}`) holding its messages,
//! and a hash (`{cluster}:hmeta:{<room>}`) holding its epoch (`e`) and latest offset (`s`).
//!
//! One script gives the next offset, appends the message to the stream and publishes it with
//! its position, so a retained publish is one round trip and offsets are unique and in order
//! across every node: Redis runs scripts one at a time. The stream's entry ids are Redis's
//! clock, which is how a message's `ttl` is applied (MINID); `size` is MAXLEN (approximate,
//! as Redis trims whole nodes; a read never returns more than `size`). The stream expires
//! `ttl` after its last write, the hash [`POSITION_TTL`] later. When the hash is lost (Redis
//! flushed or restarted without persistence), the next write starts a new epoch and drops
//! whatever the stream still held.

use super::*;
use crate::history::{HistoryPage, Position, Retention, POSITION_TTL};
use fred::interfaces::LuaInterface;
use fred::types::{ClusterHash, CustomCommand};

/// KEYS: stream, meta. ARGV: channel, envelope, size, ttl ms, epoch if new, position ttl ms,
/// publish command. Returns {offset, epoch}.
const PUBLISH: &str = r#"
local offset = redis.call('HINCRBY', KEYS[2], 's', 1)
if offset == 1 then redis.call('DEL', KEYS[1]) end
redis.call('HSETNX', KEYS[2], 'e', ARGV[5])
local epoch = redis.call('HGET', KEYS[2], 'e')
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'o', offset, 'd', ARGV[2])
redis.call('XTRIM', KEYS[1], 'MINID', '~', math.max(0, ms - tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call(ARGV[7], ARGV[1], '#' .. string.format('%d', offset) .. ':' .. epoch .. ':' .. ARGV[2])
return {offset, epoch}
"#;

/// KEYS: stream, meta. ARGV: since, the client's epoch (empty: any), size, ttl ms, epoch if
/// new, position ttl ms. Returns {latest offset, epoch, entries newest first}.
const READ: &str = r#"
if redis.call('HSETNX', KEYS[2], 'e', ARGV[5]) == 1 then
  redis.call('DEL', KEYS[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
local meta = redis.call('HMGET', KEYS[2], 's', 'e')
local top = tonumber(meta[1]) or 0
local since = tonumber(ARGV[1])
if ARGV[2] ~= '' and ARGV[2] ~= meta[2] then since = 0 end
local want = math.min(top - since, tonumber(ARGV[3]))
local entries = {}
if want > 0 then
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  entries = redis.call('XREVRANGE', KEYS[1], '+', math.max(0, ms - tonumber(ARGV[4])), 'COUNT', want)
end
return {top, meta[2], entries}
"#;

/// A retained publish waiting in the publish queue for its script's answer.
pub(super) struct RetainedPublish {
    pub(super) room: RoomName,
    pub(super) envelope: Bytes,
    pub(super) retention: Retention,
    pub(super) reply: oneshot::Sender<Result<Position, BusError>>,
}

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

fn unexpected(what: &str) -> BusError {
    BusError::Backend {
        doing: "reading a retained room's history",
        source: Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected answer from redis: {what}"),
        )),
    }
}

impl Inner {
    /// Adds `p`'s script to a publish pipeline.
    pub(super) async fn queue_retained(
        &self,
        pipeline: &fred::clients::Pipeline<Client>,
        p: &RetainedPublish,
    ) {
        let room = p.room.as_str();
        // EVAL through `custom`: fred's pipelines have no `eval`. In Redis Cluster it goes to
        // the shard of the room's slot (its keys and shard channel share the hash tag); only
        // an explicit slot is honoured for a custom command.
        let stream = self.keys.history(room);
        let eval = CustomCommand::new_static("EVAL", ClusterHash::from(stream.as_str()), false);
        let args: Vec<Value> = vec![
            PUBLISH.into(),
            "2".into(),
            stream.into(),
            self.keys.history_meta(room).into(),
            self.keys.room(room).into(),
            Value::Bytes(p.envelope.clone()),
            p.retention.size.to_string().into(),
            ms(p.retention.ttl).into(),
            crate::history::new_epoch().into(),
            ms(p.retention.ttl + POSITION_TTL).into(),
            if self.sharded { "SPUBLISH" } else { "PUBLISH" }.into(),
        ];
        let _: Result<(), _> = pipeline.custom(eval, args).await;
    }

    /// What `room` retains after `since` (see [`Bus::history`]).
    pub(super) async fn read_history(
        &self,
        room: &RoomName,
        since: u64,
        epoch: Option<&str>,
        retention: Retention,
    ) -> Result<HistoryPage, BusError> {
        let keys = vec![
            self.keys.history(room.as_str()),
            self.keys.history_meta(room.as_str()),
        ];
        let args: Vec<Value> = vec![
            since.to_string().into(),
            epoch.unwrap_or("").into(),
            retention.size.to_string().into(),
            ms(retention.ttl).into(),
            crate::history::new_epoch().into(),
            ms(retention.ttl + POSITION_TTL).into(),
        ];
        let answer: Value = self
            .client
            .eval(READ, keys, args)
            .await
            .map_err(backend("reading a retained room's history"))?;
        let Value::Array(mut parts) = answer else {
            return Err(unexpected("not an array"));
        };
        if parts.len() != 3 {
            return Err(unexpected("not three parts"));
        }
        let entries = parts.pop().unwrap_or(Value::Null);
        let epoch = parts
            .pop()
            .and_then(|e| e.as_string())
            .ok_or_else(|| unexpected("no epoch"))?;
        let top = parts
            .pop()
            .and_then(|t| t.as_u64())
            .ok_or_else(|| unexpected("no offset"))?;
        let mut page = HistoryPage {
            latest: Position {
                offset: top,
                epoch: epoch.clone(),
            },
            entries: Vec::new(),
        };
        let Value::Array(entries) = entries else {
            return Ok(page);
        };
        // Newest first from XREVRANGE: each [id, [field, value, ...]].
        for entry in entries.into_iter().rev() {
            let Value::Array(mut entry) = entry else {
                return Err(unexpected("a stream entry that is not an array"));
            };
            let Some(Value::Array(fields)) = entry.pop() else {
                return Err(unexpected("a stream entry without fields"));
            };
            let (mut offset, mut data) = (None, None);
            for pair in fields.chunks(2) {
                match (pair[0].as_str().as_deref(), pair.get(1)) {
                    (Some("o"), Some(v)) => offset = v.as_u64(),
                    (Some("d"), Some(v)) => data = v.as_bytes().map(<[u8]>::to_vec),
                    _ => {}
                }
            }
            let (Some(offset), Some(data)) = (offset, data) else {
                return Err(unexpected("a stream entry without offset or data"));
            };
            match Envelope::decode(&data) {
                Ok(mut envelope) => {
                    crate::history::stamp(
                        &mut envelope,
                        &Position {
                            offset,
                            epoch: epoch.clone(),
                        },
                    );
                    page.entries.push(envelope);
                }
                Err(e) => {
                    // Counted like any malformed envelope; the gap it leaves shows in
                    // `recovered` only if it is the first entry, so say so in the log.
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(room = %room, offset, error = %e, "malformed history entry skipped");
                }
            }
        }
        Ok(page)
    }
}
