//! The data path's gRPC over HTTP/2: tensor bytes travel as their own
//! HTTP/2 DATA frames instead of being copied into an encode buffer, and are
//! read straight from the frames they arrive in. What goes on the wire is
//! still plain gRPC, so any gRPC peer reads it.
//!
//! - [`framing`]: the message prefix, a data message's head, and cutting
//!   received frames into messages ([`Deframer`], [`split_data`]).
//! - [`body`]: the HTTP bodies that send frames ([`FramesBody`], [`EncodingBody`]).
//! - [`messages`]: reading the messages of a received body ([`MessageReader`]),
//!   as the shard reads a request and the worker a reply.
//!
//! The bytes received stay in the pieces they arrived in: [`crate::rope`].

pub mod body;
pub mod framing;
pub mod messages;

pub use body::{EncodingBody, FramesBody, data_frames, encoded_chunks};
pub use framing::{DATA_FIELD, Deframer, FrameError, data_message_head, message, split_data};
pub use messages::{MessageReader, ReadError};

/// The content type of every gRPC request and reply.
pub const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// Path of the `Push` RPC.
pub const PUSH_PATH: &str = "/ps.v1.ParameterServer/Push";
/// Path of the `Pull` RPC.
pub const PULL_PATH: &str = "/ps.v1.ParameterServer/Pull";
/// Path of the `PushPull` RPC.
pub const PUSH_PULL_PATH: &str = "/ps.v1.ParameterServer/PushPull";
