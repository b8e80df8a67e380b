//! wsgate's routing core: which connections a node holds, which rooms they are in, and how a
//! message reaches them, locally and through the cluster bus. No HTTP, no WebSocket: the node
//! binary wires sockets to the [`Router`].
//!
//! # Layout
//! - [`outbound`]: direct socket writes with a bounded per-connection queue behind them.
//! - [`registry`]: connection id → connection handle, on this node.
//! - [`rooms`]: room membership on this node and local fan-out over copy-on-write member
//!   snapshots, encoding once per encoding, and only the encodings some recipient needs.
//! - [`history`]: which rooms are retained, message positions (offset and epoch), and the
//!   in-memory ring of embedded mode.
//! - [`bus`]: the [`Bus`](bus::Bus) trait between nodes, with [`LocalBus`](bus::local::LocalBus)
//!   (in-process) and [`RedisBus`](bus::redis::RedisBus) behind it.
//! - [`router`]: the [`Router`] façade the sessions and the management API call.
//! - [`views`]: connections, rooms and nodes as the management API shows them (router and bus
//!   share them, so neither imports the other).
//! - [`error`]: the errors of those calls.

pub mod bus;
pub mod error;
pub mod history;
pub mod outbound;
pub mod registry;
pub mod rooms;
pub mod router;
pub mod views;

pub use error::{RouterError, SendError};
pub use history::{HistoryPage, Position, Retention, RetentionPolicy};
pub use outbound::{
    unframed, Deliveries, Flush, FrameKind, Framer, Outbound, PushError, Pushed, QueueLimits,
    Queued, Transport,
};
pub use registry::{ConnHandle, ConnInfo, SessionKind};
pub use router::{DeliveryTrace, JoinReceipt, PublishReceipt, Router, RouterOptions};
pub use views::{ConnectionView, NodeView, RoomPresence};
