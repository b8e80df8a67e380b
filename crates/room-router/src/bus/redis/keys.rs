//! Key and channel names, all prefixed by `cluster.name`.

pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    // The room and node names are hash tags, so that in Redis Cluster a room's channel and
    // keys stay on one shard while different rooms spread over all of them.
    pub(super) fn room(&self, room: &str) -> String {
        format!("{}:room:{{{}}}", self.prefix, room)
    }
    pub(super) fn node(&self, node: &str) -> String {
        let (head, tail) = self.node_parts();
        format!("{head}{node}{tail}")
    }
    /// What comes before and after a node's name in its channel (the direct-send script
    /// builds the channel of the node it reads).
    pub(super) fn node_parts(&self) -> (String, &'static str) {
        (format!("{}:node:{{", self.prefix), "}")
    }
    pub(super) fn history(&self, room: &str) -> String {
        format!("{}:hist:{{{}}}", self.prefix, room)
    }
    pub(super) fn history_meta(&self, room: &str) -> String {
        format!("{}:hmeta:{{{}}}", self.prefix, room)
    }
    pub(super) fn presence(&self, room: &str, node: &str) -> String {
        format!("{}:pres:{{{}}}:{}", self.prefix, room, node)
    }
    pub(super) fn conn(&self, id: &str) -> String {
        format!("{}:conn:{}", self.prefix, id)
    }
    pub(super) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    pub(super) fn nodeinfo(&self, node: &str) -> String {
        format!("{}:nodeinfo:{}", self.prefix, node)
    }
}
