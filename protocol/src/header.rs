//! The 16-byte message header, opcodes, and the size limits checked before any buffer is reserved.

use std::fmt;

use bytes::BufMut;
use nom::number::complete::le_i32;
use nom::IResult;

use crate::ProtocolError;

/// Bytes in a message header.
pub const HEADER_LEN: usize = 16;
/// Largest message a server accepts (`MaxMessageSizeBytes`, src/mongo/rpc/message.h).
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;
/// Largest user document (`maxBsonObjectSize`).
pub const MAX_BSON_OBJECT_SIZE: usize = 16 * 1024 * 1024;
/// Largest command body: a user document plus the server's 16 KiB allowance for command fields.
pub const MAX_COMMAND_SIZE: usize = MAX_BSON_OBJECT_SIZE + 16 * 1024;

/// An opcode. A newtype rather than an enum so that unknown values are carried and reported, not crashed on.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpCode(pub i32);

impl OpCode {
    pub const REPLY: Self = Self(1);
    pub const UPDATE: Self = Self(2001);
    pub const INSERT: Self = Self(2002);
    pub const QUERY: Self = Self(2004);
    pub const GET_MORE: Self = Self(2005);
    pub const DELETE: Self = Self(2006);
    pub const KILL_CURSORS: Self = Self(2007);
    pub const COMPRESSED: Self = Self(2012);
    pub const MSG: Self = Self(2013);

    /// The protocol name of a known opcode.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::REPLY => "OP_REPLY",
            Self::UPDATE => "OP_UPDATE",
            Self::INSERT => "OP_INSERT",
            Self::QUERY => "OP_QUERY",
            Self::GET_MORE => "OP_GET_MORE",
            Self::DELETE => "OP_DELETE",
            Self::KILL_CURSORS => "OP_KILL_CURSORS",
            Self::COMPRESSED => "OP_COMPRESSED",
            Self::MSG => "OP_MSG",
            _ => return None,
        })
    }
}

impl fmt::Debug for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "OpCode({})", self.0),
        }
    }
}

impl fmt::Display for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A message header as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgHeader {
    /// Total message size including these 16 bytes.
    pub message_length: i32,
    pub request_id: i32,
    /// The `request_id` this message answers (0 on requests).
    pub response_to: i32,
    pub op_code: OpCode,
}

impl MsgHeader {
    /// nom parser for the four little-endian int32 fields.
    pub fn parse(input: &[u8]) -> IResult<&[u8], MsgHeader> {
        let (input, message_length) = le_i32(input)?;
        let (input, request_id) = le_i32(input)?;
        let (input, response_to) = le_i32(input)?;
        let (input, op_code) = le_i32(input)?;
        Ok((input, MsgHeader { message_length, request_id, response_to, op_code: OpCode(op_code) }))
    }

    /// Parses a header from the start of `buf`, or `Truncated` if fewer than 16 bytes are there.
    pub fn read(buf: &[u8]) -> Result<MsgHeader, ProtocolError> {
        Self::parse(buf).map(|(_, h)| h).map_err(|_| ProtocolError::Truncated("message header"))
    }

    /// Appends the header. Callers that do not know the length yet write 0 and back-fill it.
    pub fn write(&self, out: &mut impl BufMut) {
        out.put_i32_le(self.message_length);
        out.put_i32_le(self.request_id);
        out.put_i32_le(self.response_to);
        out.put_i32_le(self.op_code.0);
    }
}

/// The cheap "is a whole frame here?" check that runs before any parse.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(len))` when `buf` starts with a complete frame of
/// `len` bytes, and an error as soon as the announced length is impossible (below 16 or above `max_len`), so a
/// caller never reserves memory for a length it has not checked.
pub fn check_frame(buf: &[u8], max_len: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let announced = i32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let len = i64::from(announced);
    if len < HEADER_LEN as i64 {
        return Err(ProtocolError::MessageTooShort(len));
    }
    let max = max_len.min(MAX_MESSAGE_SIZE);
    if len > max as i64 {
        return Err(ProtocolError::MessageTooLarge { len, max });
    }
    // Both bounds were checked above, so the conversion cannot lose anything.
    let len = len as usize;
    Ok((buf.len() >= len).then_some(len))
}

/// Writes `len` as the little-endian int32 at `at`, failing if it does not fit. Used to back-fill length
/// placeholders once the content is written.
pub(crate) fn backfill_len(buf: &mut [u8], at: usize, len: usize) -> Result<(), ProtocolError> {
    let value =
        i32::try_from(len).map_err(|_| ProtocolError::MessageTooLarge { len: len as i64, max: i32::MAX as usize })?;
    let slot = buf.get_mut(at..at + 4).ok_or(ProtocolError::Malformed("length placeholder out of range"))?;
    slot.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: i32) -> Vec<u8> {
        let mut v = Vec::new();
        MsgHeader { message_length: len, request_id: 7, response_to: 0, op_code: OpCode::MSG }.write(&mut v);
        v
    }

    #[test]
    fn header_round_trips() {
        let bytes = header(42);
        let h = MsgHeader::read(&bytes).unwrap();
        assert_eq!(h.message_length, 42);
        assert_eq!(h.request_id, 7);
        assert_eq!(h.op_code, OpCode::MSG);
        assert_eq!(format!("{:?}", OpCode(9999)), "OpCode(9999)");
    }

    #[test]
    fn check_frame_waits_for_whole_frame() {
        let mut bytes = header(20);
        assert_eq!(check_frame(&bytes[..3], MAX_MESSAGE_SIZE), Ok(None));
        assert_eq!(check_frame(&bytes, MAX_MESSAGE_SIZE), Ok(None));
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(check_frame(&bytes, MAX_MESSAGE_SIZE), Ok(Some(20)));
    }

    #[test]
    fn check_frame_rejects_impossible_lengths_before_reading_more() {
        assert_eq!(check_frame(&header(5), MAX_MESSAGE_SIZE), Err(ProtocolError::MessageTooShort(5)));
        assert_eq!(check_frame(&header(-1), MAX_MESSAGE_SIZE), Err(ProtocolError::MessageTooShort(-1)));
        assert!(matches!(
            check_frame(&header(48_000_001), MAX_MESSAGE_SIZE),
            Err(ProtocolError::MessageTooLarge { .. })
        ));
        assert!(matches!(check_frame(&header(1000), 999), Err(ProtocolError::MessageTooLarge { max: 999, .. })));
    }
}
