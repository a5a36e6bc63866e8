//! gRPC message framing: the 5-byte prefix and protobuf encoding of every
//! message, with a data-carrying message's `data` sent and read as its own
//! pieces.
//!
//! A data-carrying message (`PushChunk`, `PullChunk`) is sent as two pieces,
//! [`data_message_head`] (the prefix, every field but `data`, and `data`'s
//! key and length) followed by the data `Bytes` untouched; protobuf allows
//! fields in any order, so any gRPC peer decodes it. On the receiving side
//! [`Deframer`] cuts the frames into messages without copying, and
//! [`split_data`] separates the `data` field, still in the pieces it arrived
//! in, from the other fields, which prost decodes as usual.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint};

use crate::rope::Segments;

/// Field number of `data` in `PushChunk` and `PullChunk`.
pub const DATA_FIELD: u32 = 3;
/// Bytes of the gRPC message prefix.
const PREFIX: usize = 5;

/// Why received frames are not a well-formed message sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message is flagged as compressed; no compression is negotiated.
    #[error("message is compressed, but no compression was negotiated")]
    Compressed,
    /// A message is longer than the receiver accepts.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The message's length in bytes.
        len: usize,
        /// The receiver's limit in bytes.
        max: usize,
    },
    /// The stream ended inside a message.
    #[error("stream ended inside a message: {buffered} bytes of an unfinished message")]
    Truncated {
        /// Bytes of the unfinished message received.
        buffered: usize,
    },
    /// The protobuf encoding is malformed.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl From<prost::DecodeError> for FrameError {
    fn from(e: prost::DecodeError) -> Self {
        Self::Malformed(e.to_string())
    }
}

/// The 5-byte prefix of a message of `len` bytes.
fn put_prefix(out: &mut BytesMut, len: usize) {
    out.put_u8(0);
    out.put_u32(len as u32);
}

/// One whole gRPC message (prefix and encoding) for `msg`.
pub fn message(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX + len);
    put_prefix(&mut out, len);
    msg.encode_raw(&mut out);
    out.freeze()
}

/// Everything of a data-carrying message that precedes its `data_len`
/// bytes of data: the prefix, `fields` (whose own `data` must be empty),
/// and the key and length of field [`DATA_FIELD`]. Send the data bytes
/// right after it.
pub fn data_message_head(fields: &impl Message, data_len: usize) -> Bytes {
    let key_len = encoded_len_varint(u64::from(DATA_FIELD << 3 | WireType::LengthDelimited as u32));
    let head_len = fields.encoded_len() + key_len + encoded_len_varint(data_len as u64);
    let mut out = BytesMut::with_capacity(PREFIX + head_len);
    put_prefix(&mut out, head_len + data_len);
    fields.encode_raw(&mut out);
    encode_key(DATA_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(data_len as u64, &mut out);
    out.freeze()
}

/// Cuts a stream of frames into gRPC messages, without copying payload bytes.
#[derive(Debug)]
pub struct Deframer {
    pending: Segments,
    max: usize,
}

impl Deframer {
    /// Accepts messages of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { pending: Segments::default(), max }
    }

    /// Adds the next frame's bytes.
    pub fn push(&mut self, frame: Bytes) {
        self.pending.push(frame);
    }

    /// The next complete message, `None` until one is, or why the frames
    /// cannot be a message sequence. Checked as soon as a prefix is in, so an
    /// oversized message is refused before its bytes are buffered.
    pub fn next_message(&mut self) -> Result<Option<Segments>, FrameError> {
        let Some(prefix) = self.pending.peek::<PREFIX>() else { return Ok(None) };
        if prefix[0] != 0 {
            return Err(FrameError::Compressed);
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.pending.len() < PREFIX + len {
            return Ok(None);
        }
        self.pending.advance(PREFIX);
        Ok(Some(self.pending.split_to(len)))
    }

    /// Checks that the stream did not end inside a message.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.pending.len() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

/// Separates field [`DATA_FIELD`] of a data-carrying message from its other
/// fields: returns the others re-encoded (for prost to decode; they are
/// small) and the data in the pieces it arrived in. As in protobuf, the
/// last occurrence of `data` wins.
pub fn split_data(mut msg: Segments) -> Result<(Vec<u8>, Segments), FrameError> {
    let mut rest = Vec::new();
    let mut data = Segments::default();
    while msg.has_remaining() {
        let (field, wire_type) = decode_key(&mut msg)?;
        if field == DATA_FIELD {
            if wire_type != WireType::LengthDelimited {
                return Err(FrameError::Malformed(format!("field {DATA_FIELD} is not length-delimited")));
            }
            let len = length(&mut msg)?;
            data = msg.split_to(len);
            continue;
        }
        encode_key(field, wire_type, &mut rest);
        match wire_type {
            WireType::Varint => encode_varint(decode_varint(&mut msg)?, &mut rest),
            WireType::SixtyFourBit => copy(&mut msg, 8, &mut rest)?,
            WireType::ThirtyTwoBit => copy(&mut msg, 4, &mut rest)?,
            WireType::LengthDelimited => {
                let len = length(&mut msg)?;
                encode_varint(len as u64, &mut rest);
                copy(&mut msg, len, &mut rest)?;
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(FrameError::Malformed(format!("field {field} is a group")));
            }
        }
    }
    Ok((rest, data))
}

/// A length prefix that fits in what remains.
fn length(msg: &mut Segments) -> Result<usize, FrameError> {
    let len = decode_varint(msg)?;
    if len > msg.remaining() as u64 {
        return Err(FrameError::Malformed(format!(
            "a field of {len} bytes runs past the message's remaining {} bytes",
            msg.remaining()
        )));
    }
    Ok(len as usize)
}

fn copy(msg: &mut Segments, n: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    if msg.remaining() < n {
        return Err(FrameError::Malformed("a fixed-width field runs past the message".into()));
    }
    for part in msg.split_to(n).parts() {
        out.extend_from_slice(part);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn chunk(data: &[u8]) -> pb::PushChunk {
        pb::PushChunk {
            header: Some(pb::PushHeader { worker: 3, clock: 7, tensor: "w".into(), ..Default::default() }),
            offset: 40,
            data: Bytes::copy_from_slice(data),
        }
    }

    /// The head and data together are exactly a message prost decodes.
    #[test]
    fn head_then_data_is_a_valid_message() {
        let data: Vec<u8> = (0..=255).collect();
        let full = chunk(&data);
        let head = data_message_head(&pb::PushChunk { data: Bytes::new(), ..full.clone() }, data.len());
        let mut wire = head.to_vec();
        wire.extend_from_slice(&data);
        assert_eq!(wire[0], 0);
        assert_eq!(u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize, wire.len() - 5);
        assert_eq!(pb::PushChunk::decode(&wire[5..]).unwrap(), full);
    }

    /// Any cut of prost's own encoding into frames deframes and splits back.
    #[test]
    fn deframes_and_splits_at_every_cut() {
        let data: Vec<u8> = (0..37).collect();
        let a = message(&chunk(&data));
        let b = message(&chunk(&data[..5]));
        let wire = [a.as_ref(), b.as_ref()].concat();
        for cut in 0..=wire.len() {
            let mut d = Deframer::new(1 << 20);
            d.push(Bytes::copy_from_slice(&wire[..cut]));
            d.push(Bytes::copy_from_slice(&wire[cut..]));
            for expected in [&data[..], &data[..5]] {
                let msg = d.next_message().unwrap().expect("a message");
                let (rest, got) = split_data(msg).unwrap();
                let fields = pb::PushChunk::decode(&rest[..]).unwrap();
                assert_eq!(fields, pb::PushChunk { data: Bytes::new(), ..chunk(&[]) });
                let joined: Vec<u8> = got.parts().flat_map(|p| p.iter().copied()).collect();
                assert_eq!(joined, expected, "cut {cut}");
            }
            assert!(matches!(d.next_message(), Ok(None)));
            d.finish().unwrap();
        }
    }

    #[test]
    fn refuses_compressed_oversized_and_truncated_messages() {
        let mut d = Deframer::new(10);
        d.push(Bytes::from_static(&[1, 0, 0, 0, 1, 0]));
        assert!(matches!(d.next_message(), Err(FrameError::Compressed)));
        let mut d = Deframer::new(10);
        d.push(Bytes::from_static(&[0, 0, 0, 0, 11]));
        assert!(matches!(d.next_message(), Err(FrameError::TooLarge { len: 11, max: 10 })));
        let mut d = Deframer::new(10);
        d.push(Bytes::from_static(&[0, 0, 0, 0, 3, 8]));
        assert!(matches!(d.next_message(), Ok(None)));
        assert_eq!(d.finish(), Err(FrameError::Truncated { buffered: 6 }));
        // A data field longer than its message.
        let bad = Segments::from_bytes(Bytes::from_static(&[0x1a, 9, 1]));
        assert!(matches!(split_data(bad), Err(FrameError::Malformed(_))));
    }
}
