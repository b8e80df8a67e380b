//! Direct sends and disconnects in one round trip (standalone Redis): a script reads the
//! target's affinity record and publishes the envelope to its node's channel, queued in the
//! publish pipeline, so a connection's sends leave in order without waiting for each other.

use super::*;

/// KEYS: the affinity record. ARGV: this node, the node channel's head and tail, the
/// envelope. Returns the receivers of the publish; 0 when no node holds the connection, -1
/// when the record names this node (stale: the router looked here first).
pub(super) const SCRIPT: &str = r#"
local node = redis.call('GET', KEYS[1])
if not node then return 0 end
if node == ARGV[1] then return -1 end
return redis.call('PUBLISH', ARGV[2] .. node .. ARGV[3], ARGV[4])
"#;

/// A direct send waiting in the publish queue for its script's answer.
pub(super) struct DirectSend {
    pub(super) conn_key: String,
    pub(super) envelope: Bytes,
    pub(super) reply: oneshot::Sender<Result<bool, BusError>>,
}

impl Inner {
    /// Adds `d`'s script to a publish pipeline.
    pub(super) async fn queue_direct(
        &self,
        pipeline: &fred::clients::Pipeline<Client>,
        d: &DirectSend,
    ) {
        use fred::types::{ClusterHash, CustomCommand};
        let eval = CustomCommand::new_static("EVAL", ClusterHash::from(d.conn_key.as_str()), false);
        let (head, tail) = self.keys.node_parts();
        let args: Vec<Value> = vec![
            SCRIPT.into(),
            "1".into(),
            d.conn_key.as_str().into(),
            self.opts.node.as_str().into(),
            head.into(),
            tail.into(),
            Value::Bytes(d.envelope.clone()),
        ];
        let _: Result<(), _> = pipeline.custom(eval, args).await;
    }
}

/// Whether the script's answer means the envelope reached a node holding the connection.
pub(super) fn delivered(answer: Value) -> Result<bool, BusError> {
    match answer.as_i64() {
        Some(n) => Ok(n > 0),
        None => Err(BusError::Backend {
            doing: "sending to a connection on another node",
            source: Arc::new(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "unexpected answer from the direct-send script",
            )),
        }),
    }
}
