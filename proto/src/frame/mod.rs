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
pub mod pack;

pub use body::{EncodingBody, FramesBody, data_frames, encoded_chunks};
pub use framing::{DATA_FIELD, Deframer, FrameError, data_message_head, message, split_data};
pub use messages::{MessageReader, ReadError};
pub use pack::Packer;

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

/// Binary metadata key of a refusal of one part of a `Step` or `PullMany`:
/// the refused tensor's name (absent when the request named none, or a
/// name too long to echo).
pub const REFUSED_TENSOR: &str = "ps-refused-tensor-bin";

/// The tensor a refusal of one part of a request of several names, if any.
pub fn refused_tensor(status: &tonic::Status) -> Option<String> {
    let value = status.metadata().get_bin(REFUSED_TENSOR)?;
    String::from_utf8(value.to_bytes().ok()?.to_vec()).ok()
}

/// `status` naming `tensor` as the refused part ([`refused_tensor`]), when
/// the name is at most `max_bytes` long.
pub fn naming_refused_tensor(mut status: tonic::Status, tensor: &str, max_bytes: usize) -> tonic::Status {
    if !tensor.is_empty() && tensor.len() <= max_bytes {
        status
            .metadata_mut()
            .insert_bin(REFUSED_TENSOR, tonic::metadata::MetadataValue::from_bytes(tensor.as_bytes()));
    }
    status
}

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

    /// A refusal names its tensor, any UTF-8 name, and not a name longer than the bound.
    #[test]
    fn a_refusal_names_its_tensor_within_the_bound() {
        let named = naming_refused_tensor(tonic::Status::invalid_argument("NaN"), "conv1.weight·λ", 64);
        assert_eq!(refused_tensor(&named).as_deref(), Some("conv1.weight·λ"));
        let headers = named.clone().into_http::<()>().into_parts().0.headers;
        let back = tonic::Status::from_header_map(&headers).expect("a status");
        assert_eq!(refused_tensor(&back).as_deref(), Some("conv1.weight·λ"), "through trailers");
        let long = "x".repeat(65);
        assert_eq!(refused_tensor(&naming_refused_tensor(tonic::Status::internal("e"), &long, 64)), None);
        assert_eq!(refused_tensor(&tonic::Status::internal("e")), None);
    }
}
