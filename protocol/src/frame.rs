//! One entry point from a complete frame to a typed message.
//!
//! [`decode`] is what the proxy's codec calls once [`crate::check_frame`] says a whole frame is buffered. It
//! unwraps OP_COMPRESSED first, so nothing downstream ever sees compressed bytes, and it refuses every opcode the
//! proxy does not speak rather than carrying it along.

use bytes::Bytes;

use crate::compression::decompress_frame_limited;
use crate::{Compressor, MsgHeader, OpCode, OpMsg, OpQuery, OpReply, ProtocolError, MAX_MESSAGE_SIZE};

/// A parsed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Msg(OpMsg),
    Query(OpQuery),
    Reply(OpReply),
}

/// A parsed frame: the header of the (uncompressed) message, the message, and the compressor the peer used.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub header: MsgHeader,
    pub message: Message,
    /// `Some` when the frame arrived as OP_COMPRESSED; replies should use the same compressor.
    pub compressor: Option<Compressor>,
}

/// Decodes one complete frame (header included). `frame.len()` must equal the header's messageLength.
pub fn decode(frame: Bytes) -> Result<Decoded, ProtocolError> {
    decode_limited(frame, MAX_MESSAGE_SIZE)
}

/// [`decode`], with OP_COMPRESSED refused when the message it carries would be longer than `max_len`: the
/// uncompressed size obeys the same cap as a frame sent uncompressed, and is checked before inflating.
pub fn decode_limited(frame: Bytes, max_len: usize) -> Result<Decoded, ProtocolError> {
    let header = MsgHeader::read(&frame)?;
    if usize::try_from(header.message_length).ok() != Some(frame.len()) {
        return Err(ProtocolError::Malformed("messageLength does not match the frame"));
    }
    let (frame, header, compressor) = if header.op_code == OpCode::COMPRESSED {
        let (inner, compressor) = decompress_frame_limited(&header, &frame, max_len)?;
        let inner_header = MsgHeader::read(&inner)?;
        (inner, inner_header, Some(compressor))
    } else {
        (frame, header, None)
    };
    let message = match header.op_code {
        OpCode::MSG => Message::Msg(OpMsg::parse(&header, &frame)?),
        OpCode::QUERY => Message::Query(OpQuery::parse(&header, &frame)?),
        OpCode::REPLY => Message::Reply(OpReply::parse(&header, &frame)?),
        other => return Err(ProtocolError::UnsupportedOpCode(other.0)),
    };
    Ok(Decoded { header, message, compressor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::compress_frame;
    use crate::MsgFlags;
    use bson::rawdoc;

    #[test]
    fn decodes_compressed_msg_and_reports_compressor() {
        let frame = OpMsg::new(MsgFlags::default(), rawdoc! { "ping": 1, "$db": "admin" }).encode(4, 0).unwrap();
        let wrapped = compress_frame(&frame, Compressor::Snappy).unwrap().freeze();
        let decoded = decode(wrapped).unwrap();
        assert_eq!(decoded.compressor, Some(Compressor::Snappy));
        assert_eq!(decoded.header.request_id, 4);
        assert!(matches!(decoded.message, Message::Msg(ref m) if m.command_name() == Some("ping")));
    }

    #[test]
    fn decompressed_size_obeys_the_limit() {
        let body = rawdoc! { "insert": "c", "documents": [{ "pad": "x".repeat(10_000) }], "$db": "app" };
        let frame = OpMsg::new(MsgFlags::default(), body).encode(4, 0).unwrap();
        let wrapped = compress_frame(&frame, Compressor::Zlib).unwrap().freeze();
        assert!(wrapped.len() < 1024);
        assert!(matches!(decode_limited(wrapped.clone(), 1024), Err(ProtocolError::MessageTooLarge { .. })));
        assert!(decode_limited(wrapped, frame.len()).is_ok());
    }

    #[test]
    fn legacy_write_opcodes_are_refused() {
        let mut frame = Vec::new();
        MsgHeader { message_length: 20, request_id: 1, response_to: 0, op_code: OpCode::INSERT }.write(&mut frame);
        frame.extend_from_slice(&[0; 4]);
        assert_eq!(decode(Bytes::from(frame)), Err(ProtocolError::UnsupportedOpCode(2002)));
    }

    #[test]
    fn length_mismatch_is_refused() {
        let mut frame = OpMsg::new(MsgFlags::default(), rawdoc! { "ping": 1 }).encode(4, 0).unwrap().to_vec();
        frame.push(0);
        assert!(matches!(decode(Bytes::from(frame)), Err(ProtocolError::Malformed(_))));
    }
}
