//! wsgate wire types: what travels between clients and nodes, and between nodes.
//!
//! # Layout
//! - [`id`]: connection, node and request ids.
//! - [`room`]: validated room names and the `*` patterns of the `rooms` claim.
//! - [`payload`]: the `data` of a message, kept in the encoding it arrived in and transcoded at
//!   most once per encoding.
//! - [`frame`]: client frames (what a client asks) and server frames (what a node sends).
//! - [`codec`]: subprotocols, decoding client frames, encoding server frames once per encoding.
//! - [`close`]: WebSocket close codes and what a client does after each.
//! - [`error`]: wire error codes and decode errors.
//! - [`envelope`]: the MessagePack envelope nodes exchange over the cluster bus.
//!
//! This crate performs no I/O and knows no runtime, so both the node and the tools that speak
//! the protocol (tests, load harness) can share it.

pub mod close;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod id;
pub mod payload;
pub mod room;

pub use close::CloseCode;
pub use codec::{EncodedFrame, Encoding};
pub use envelope::{ConnectionInfo, Envelope, EnvelopeBody, Query, Reply};
pub use error::{DecodeError, ErrorCode};
pub use frame::{ClientFrame, ServerFrame};
pub use id::{ConnectionId, NodeId, RequestId};
pub use payload::Payload;
pub use room::{RoomName, RoomPattern};
