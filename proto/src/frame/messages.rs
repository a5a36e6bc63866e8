//! Reading the gRPC messages of an HTTP/2 body, as both sides of the data
//! path do: the shard a request's, the worker a reply's. Messages are cut
//! from the frames they arrived in without copying ([`Deframer`]), each at
//! most a limit, which is checked as soon as a message's prefix is in.

use std::pin::Pin;

use bytes::Bytes;
use http_body::Body;
use prost::Message;

use super::framing::{Deframer, FrameError, split_data};
use crate::rope::Segments;

/// Why the messages of a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// The frames are not a well-formed sequence of messages, or a message
    /// does not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The body itself failed (the stream was reset, the connection lost).
    #[error("reading the body failed: {0}")]
    Body(E),
}

impl<E> From<prost::DecodeError> for ReadError<E> {
    fn from(e: prost::DecodeError) -> Self {
        Self::Frame(e.into())
    }
}

/// The gRPC messages of an HTTP/2 body, read one at a time. Trailers end
/// the messages and are kept for [`trailers`](Self::trailers).
#[derive(Debug)]
pub struct MessageReader<B> {
    body: B,
    deframer: Deframer,
    limit: usize,
    trailers: Option<http::HeaderMap>,
    ended: bool,
}

impl<B> MessageReader<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// The messages of `body`, each at most `limit` bytes.
    pub fn new(body: B, limit: usize) -> Self {
        Self { body, deframer: Deframer::new(limit), limit, trailers: None, ended: false }
    }

    /// The largest message accepted, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The next message, `None` once the body has ended (with or without
    /// trailers) after a whole message. A message above the limit is
    /// [`FrameError::TooLarge`], refused before its bytes are buffered; a
    /// body that ends inside a message is [`FrameError::Truncated`].
    pub async fn next(&mut self) -> Result<Option<Segments>, ReadError<B::Error>> {
        loop {
            if let Some(msg) = self.deframer.next_message()? {
                return Ok(Some(msg));
            }
            if self.ended {
                self.deframer.finish()?;
                return Ok(None);
            }
            let body = &mut self.body;
            match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.deframer.push(data),
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        self.ended = true;
                    }
                },
                Some(Err(e)) => return Err(ReadError::Body(e)),
                None => self.ended = true,
            }
        }
    }

    /// The next message decoded as `M`, `None` at the end of the body.
    pub async fn next_decoded<M: Message + Default>(&mut self) -> Result<Option<M>, ReadError<B::Error>> {
        match self.next().await? {
            Some(msg) => Ok(Some(M::decode(msg)?)),
            None => Ok(None),
        }
    }

    /// The next data-carrying message (see [`split_data`]): its other
    /// fields decoded as `M`, whose `data` is left empty, and its data still
    /// in the frames it arrived in. `None` at the end of the body.
    pub async fn next_data<M: Message + Default>(
        &mut self,
    ) -> Result<Option<(M, Segments)>, ReadError<B::Error>> {
        let Some(msg) = self.next().await? else { return Ok(None) };
        let (fields, data) = split_data(msg)?;
        Ok(Some((M::decode(&fields[..])?, data)))
    }

    /// Whether the body has ended: no frame follows.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The body's trailers, once they have arrived.
    pub fn trailers(&self) -> Option<&http::HeaderMap> {
        self.trailers.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::frame::{FramesBody, data_message_head, message};
    use crate::pb;

    fn body(frames: Vec<Bytes>, trailers: Option<http::HeaderMap>) -> FramesBody {
        FramesBody::new(VecDeque::from(frames), trailers)
    }

    fn joined(data: &Segments) -> Vec<u8> {
        data.parts().flat_map(|p| p.iter().copied()).collect()
    }

    /// Messages split across frames at every byte, and frames holding
    /// several messages, read back whole and in order; the data of a data
    /// message stays in the frames it arrived in.
    #[tokio::test]
    async fn reads_messages_across_any_split_of_frames() {
        let req = pb::PullRequest { worker: Some(2), clock: 9, tensor: "w".into(), dtype: 1 };
        let data: Vec<u8> = (0..40).collect();
        let fields = pb::PushChunk { header: None, offset: 8, data: Bytes::new() };
        let wire = [
            message(&req).to_vec(),
            data_message_head(&fields, data.len()).to_vec(),
            data.clone(),
            message(&pb::PushReply { applied: true, dropped: false }).to_vec(),
        ]
        .concat();
        for cut in 0..=wire.len() {
            for second in [cut, (cut + 7).min(wire.len())] {
                let frames = vec![
                    Bytes::copy_from_slice(&wire[..cut]),
                    Bytes::copy_from_slice(&wire[cut..second]),
                    Bytes::copy_from_slice(&wire[second..]),
                ];
                let mut reader = MessageReader::new(body(frames, Some(http::HeaderMap::new())), 1 << 10);
                assert_eq!(reader.next_decoded::<pb::PullRequest>().await.unwrap(), Some(req.clone()));
                let (got, got_data) = reader.next_data::<pb::PushChunk>().await.unwrap().expect("a chunk");
                assert_eq!(got, fields, "cut {cut}");
                assert_eq!(joined(&got_data), data, "cut {cut}");
                let reply = reader.next_decoded::<pb::PushReply>().await.unwrap();
                assert_eq!(reply, Some(pb::PushReply { applied: true, dropped: false }));
                assert!(reader.next().await.unwrap().is_none());
                assert!(reader.is_ended());
                assert!(reader.trailers().is_some());
            }
        }
    }

    /// A message above the limit is refused from its prefix alone; one
    /// exactly at the limit is read.
    #[tokio::test]
    async fn refuses_a_message_above_the_limit_from_its_prefix() {
        let msg = message(&pb::PushReply { applied: true, dropped: false });
        let len = msg.len() - 5;
        let mut reader = MessageReader::new(body(vec![msg.clone()], None), len);
        assert!(reader.next().await.unwrap().is_some());
        let prefix_only = msg.slice(..5);
        let mut reader = MessageReader::new(body(vec![prefix_only], None), len - 1);
        let err = reader.next().await.expect_err("too large");
        assert!(
            matches!(err, ReadError::Frame(FrameError::TooLarge { len: l, max }) if l == len && max == len - 1)
        );
        assert_eq!(reader.limit(), len - 1);
    }

    /// A compressed flag, a body ending inside a message or its prefix, and
    /// a message that does not decode are each refused precisely.
    #[tokio::test]
    async fn refuses_malformed_prefixes_truncation_and_undecodable_messages() {
        let read = |frames: Vec<&'static [u8]>| {
            let frames = frames.into_iter().map(Bytes::from_static).collect();
            MessageReader::new(body(frames, None), 100)
        };
        let err = read(vec![&[1, 0, 0, 0, 0]]).next().await.expect_err("compressed");
        assert!(matches!(err, ReadError::Frame(FrameError::Compressed)), "{err}");
        let err = read(vec![&[0, 0, 0], &[0, 4, 8]]).next().await.expect_err("truncated");
        assert!(matches!(err, ReadError::Frame(FrameError::Truncated { buffered: 6 })), "{err}");
        let err = read(vec![&[0, 0]]).next().await.expect_err("a partial prefix");
        assert!(matches!(err, ReadError::Frame(FrameError::Truncated { buffered: 2 })), "{err}");
        // Field 1 as a length-delimited run longer than the message.
        let err = read(vec![&[0, 0, 0, 0, 2, 0x0a, 9]]).next_decoded::<pb::PushReply>().await;
        assert!(matches!(err, Err(ReadError::Frame(FrameError::Malformed(_)))), "{err:?}");
        let err = read(vec![&[0, 0, 0, 0, 2, 0x1a, 9]]).next_data::<pb::PushChunk>().await;
        assert!(matches!(err, Err(ReadError::Frame(FrameError::Malformed(_)))), "{err:?}");
        let mut empty = read(vec![]);
        assert!(empty.next().await.unwrap().is_none());
        assert!(empty.trailers().is_none());
    }

    /// A failing body's error is handed out as it is.
    #[tokio::test]
    async fn hands_out_the_body_error() {
        struct Failing;
        impl Body for Failing {
            type Data = Bytes;
            type Error = &'static str;
            fn poll_frame(
                self: Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, &'static str>>> {
                std::task::Poll::Ready(Some(Err("reset")))
            }
        }
        let err = MessageReader::new(Failing, 10).next().await.expect_err("the body fails");
        assert!(matches!(err, ReadError::Body("reset")));
    }
}
