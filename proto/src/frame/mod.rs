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

/// Name of the data service (`proto/data.proto`), whose RPCs carry tensor
/// bytes as their own frames.
pub const DATA_SERVICE: &str = "ps.v1.Data";
/// Path of the `Push` RPC of the data service.
pub const PUSH_PATH: &str = "/ps.v1.Data/Push";
/// Path of the `Pull` RPC of the data service.
pub const PULL_PATH: &str = "/ps.v1.Data/Pull";
/// Path of the `PushPull` RPC of the data service.
pub const PUSH_PULL_PATH: &str = "/ps.v1.Data/PushPull";
/// Path of the `Step` RPC of the data service.
pub const STEP_PATH: &str = "/ps.v1.Data/Step";
/// Path of the `PullMany` RPC of the data service.
pub const PULL_MANY_PATH: &str = "/ps.v1.Data/PullMany";

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths are the data service's methods, as its generated client calls them.
    #[test]
    fn paths_name_the_data_service() {
        let paths = [
            (PUSH_PATH, "Push"),
            (PULL_PATH, "Pull"),
            (PUSH_PULL_PATH, "PushPull"),
            (STEP_PATH, "Step"),
            (PULL_MANY_PATH, "PullMany"),
        ];
        for (path, method) in paths {
            assert_eq!(path, format!("/{DATA_SERVICE}/{method}"));
        }
    }
}
