//! OP_COMPRESSED and its codecs (snappy raw, zlib stream, zstd).
//!
//! Decompression is bounded by the announced `uncompressedSize`, itself capped by the caller's message size limit
//! (the same limit the compressed frame had to pass), so a small hostile frame cannot make the proxy allocate or
//! inflate past what an uncompressed frame could. Nested compression is refused.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};

use crate::header::backfill_len;
use crate::{MsgHeader, OpCode, ProtocolError, HEADER_LEN, MAX_MESSAGE_SIZE};

/// Bytes of the OP_COMPRESSED prefix after the header: originalOpcode, uncompressedSize, compressorId.
const PREFIX_LEN: usize = 9;

/// zlib level used for replies: the default trades well for command-sized payloads.
const ZLIB_LEVEL: u32 = 6;
/// zstd level used for replies: the library default.
const ZSTD_LEVEL: i32 = 3;

/// A compressor id from the OP_COMPRESSED spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compressor {
    Noop,
    Snappy,
    Zlib,
    Zstd,
}

impl Compressor {
    /// The compressors this crate implements, in the proxy's order of preference.
    pub const ALL: [Compressor; 3] = [Compressor::Zstd, Compressor::Snappy, Compressor::Zlib];

    pub fn id(self) -> u8 {
        match self {
            Self::Noop => 0,
            Self::Snappy => 1,
            Self::Zlib => 2,
            Self::Zstd => 3,
        }
    }

    pub fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::Noop,
            1 => Self::Snappy,
            2 => Self::Zlib,
            3 => Self::Zstd,
            _ => return None,
        })
    }

    /// The name used in the handshake's `compression` array.
    pub fn name(self) -> &'static str {
        match self {
            Self::Noop => "noop",
            Self::Snappy => "snappy",
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }

    /// Parses a handshake name. `noop` is never negotiated.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "snappy" => Self::Snappy,
            "zlib" => Self::Zlib,
            "zstd" => Self::Zstd,
            _ => return None,
        })
    }

    /// Compresses `data`.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let failed = |e: std::io::Error| ProtocolError::Compression(e.to_string());
        match self {
            Self::Noop => Ok(data.to_vec()),
            Self::Snappy => {
                snap::raw::Encoder::new().compress_vec(data).map_err(|e| ProtocolError::Compression(e.to_string()))
            }
            Self::Zlib => {
                let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(ZLIB_LEVEL));
                encoder.write_all(data).map_err(failed)?;
                encoder.finish().map_err(failed)
            }
            Self::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).map_err(failed),
        }
    }

    /// Decompresses `data`, which must inflate to exactly `expected` bytes. Output never exceeds `expected`.
    pub fn decompress(self, data: &[u8], expected: usize) -> Result<Vec<u8>, ProtocolError> {
        let failed = |e: String| ProtocolError::Decompression(e);
        let out = match self {
            Self::Noop => data.to_vec(),
            Self::Snappy => {
                let announced = snap::raw::decompress_len(data).map_err(|e| failed(e.to_string()))?;
                if announced != expected {
                    return Err(failed(format!("snappy announces {announced} bytes, header {expected}")));
                }
                snap::raw::Decoder::new().decompress_vec(data).map_err(|e| failed(e.to_string()))?
            }
            Self::Zlib => {
                let mut out = Vec::with_capacity(expected);
                // Read one byte past the expectation so an overlong stream is detected without inflating it all.
                flate2::read::ZlibDecoder::new(data)
                    .take(expected as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| failed(e.to_string()))?;
                out
            }
            Self::Zstd => zstd::bulk::decompress(data, expected).map_err(|e| failed(e.to_string()))?,
        };
        if out.len() != expected {
            return Err(failed(format!("inflated to {} bytes, header announced {expected}", out.len())));
        }
        Ok(out)
    }
}

/// What an OP_COMPRESSED frame announces before anything is inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressedPrefix {
    /// The opcode of the wrapped message.
    pub original: OpCode,
    /// Bytes of the uncompressed message, header included.
    pub message_len: usize,
    pub compressor: Compressor,
}

/// Reads and checks the OP_COMPRESSED prefix: the compressor is known, nothing is nested, and the uncompressed
/// message (header included) fits `max_len` (never more than [`MAX_MESSAGE_SIZE`]). Cheap: inflates nothing, so
/// a caller can reserve memory for `message_len` before paying for decompression.
pub fn compressed_prefix(frame: &[u8], max_len: usize) -> Result<CompressedPrefix, ProtocolError> {
    let prefix =
        frame.get(HEADER_LEN..HEADER_LEN + PREFIX_LEN).ok_or(ProtocolError::Truncated("OP_COMPRESSED prefix"))?;
    let original = OpCode(i32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]));
    let announced = i32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    let compressor = Compressor::from_id(prefix[8]).ok_or(ProtocolError::UnknownCompressor(prefix[8]))?;
    if original == OpCode::COMPRESSED {
        return Err(ProtocolError::NestedCompression);
    }
    let size = usize::try_from(announced)
        .map_err(|_| ProtocolError::Decompression(format!("negative uncompressedSize {announced}")))?;
    let max = max_len.min(MAX_MESSAGE_SIZE);
    let message_len = size.saturating_add(HEADER_LEN);
    if message_len > max {
        return Err(ProtocolError::MessageTooLarge { len: i64::from(announced) + HEADER_LEN as i64, max });
    }
    Ok(CompressedPrefix { original, message_len, compressor })
}

/// Unwraps an OP_COMPRESSED frame into the complete uncompressed frame it carries (a header with the original
/// opcode, then the decompressed body) and the compressor that was used. The uncompressed message may be as
/// large as [`MAX_MESSAGE_SIZE`]; [`decompress_frame_limited`] applies a smaller cap.
pub fn decompress_frame(header: &MsgHeader, frame: &[u8]) -> Result<(Bytes, Compressor), ProtocolError> {
    decompress_frame_limited(header, frame, MAX_MESSAGE_SIZE)
}

/// [`decompress_frame`] refusing, before inflating anything, an uncompressed message longer than `max_len`.
pub fn decompress_frame_limited(
    header: &MsgHeader,
    frame: &[u8],
    max_len: usize,
) -> Result<(Bytes, Compressor), ProtocolError> {
    let CompressedPrefix { original, message_len, compressor } = compressed_prefix(frame, max_len)?;
    let size = message_len - HEADER_LEN;
    let body = compressor.decompress(&frame[HEADER_LEN + PREFIX_LEN..], size)?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    MsgHeader { message_length: 0, request_id: header.request_id, response_to: header.response_to, op_code: original }
        .write(&mut out);
    out.put_slice(&body);
    let len = out.len();
    backfill_len(&mut out, 0, len)?;
    Ok((out.freeze(), compressor))
}

/// Wraps a complete uncompressed frame in OP_COMPRESSED, keeping its request id, responseTo and opcode.
pub fn compress_frame(frame: &[u8], compressor: Compressor) -> Result<BytesMut, ProtocolError> {
    let header = MsgHeader::read(frame)?;
    let body = frame.get(HEADER_LEN..).ok_or(ProtocolError::Truncated("frame to compress"))?;
    let compressed = compressor.compress(body)?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + PREFIX_LEN + compressed.len());
    MsgHeader { message_length: 0, op_code: OpCode::COMPRESSED, ..header }.write(&mut out);
    out.put_i32_le(header.op_code.0);
    let size = i32::try_from(body.len())
        .map_err(|_| ProtocolError::MessageTooLarge { len: body.len() as i64, max: MAX_MESSAGE_SIZE })?;
    out.put_i32_le(size);
    out.put_u8(compressor.id());
    out.put_slice(&compressed);
    let len = out.len();
    backfill_len(&mut out, 0, len)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MsgFlags, OpMsg};
    use bson::rawdoc;

    fn sample_frame() -> Bytes {
        let body = rawdoc! { "find": "orders", "filter": { "status": "open", "note": "x".repeat(500) }, "$db": "app" };
        OpMsg::new(MsgFlags::default(), body).encode(5, 0).unwrap().freeze()
    }

    #[test]
    fn every_codec_round_trips_a_frame() {
        let frame = sample_frame();
        for compressor in Compressor::ALL.into_iter().chain([Compressor::Noop]) {
            let wrapped = compress_frame(&frame, compressor).unwrap().freeze();
            let header = MsgHeader::read(&wrapped).unwrap();
            assert_eq!(header.op_code, OpCode::COMPRESSED);
            assert_eq!(header.message_length as usize, wrapped.len());
            let (inner, used) = decompress_frame(&header, &wrapped).unwrap();
            assert_eq!(used, compressor);
            assert_eq!(inner, frame, "{compressor:?}");
            if compressor != Compressor::Noop {
                assert!(wrapped.len() < frame.len(), "{compressor:?} did not compress");
            }
        }
    }

    #[test]
    fn size_mismatch_and_bombs_are_rejected() {
        let frame = sample_frame();
        for compressor in Compressor::ALL {
            let mut wrapped = compress_frame(&frame, compressor).unwrap();
            // Announce fewer bytes than the payload inflates to.
            let small = (frame.len() - HEADER_LEN - 10) as i32;
            wrapped[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&small.to_le_bytes());
            let header = MsgHeader::read(&wrapped).unwrap();
            assert!(
                matches!(decompress_frame(&header, &wrapped), Err(ProtocolError::Decompression(_))),
                "{compressor:?}"
            );
        }
    }

    #[test]
    fn unknown_and_nested_compression_are_rejected() {
        let frame = sample_frame();
        let mut wrapped = compress_frame(&frame, Compressor::Zlib).unwrap();
        wrapped[HEADER_LEN + 8] = 9;
        let header = MsgHeader::read(&wrapped).unwrap();
        assert_eq!(decompress_frame(&header, &wrapped), Err(ProtocolError::UnknownCompressor(9)));
        wrapped[HEADER_LEN + 8] = 2;
        wrapped[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&OpCode::COMPRESSED.0.to_le_bytes());
        assert_eq!(decompress_frame(&header, &wrapped), Err(ProtocolError::NestedCompression));
    }

    #[test]
    fn oversized_announcement_is_rejected_before_inflating() {
        let frame = sample_frame();
        let mut wrapped = compress_frame(&frame, Compressor::Zstd).unwrap();
        wrapped[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&i32::MAX.to_le_bytes());
        let header = MsgHeader::read(&wrapped).unwrap();
        assert!(matches!(decompress_frame(&header, &wrapped), Err(ProtocolError::MessageTooLarge { .. })));
    }

    #[test]
    fn the_callers_limit_applies_to_the_uncompressed_size() {
        let frame = sample_frame();
        for compressor in Compressor::ALL {
            let wrapped = compress_frame(&frame, compressor).unwrap();
            let header = MsgHeader::read(&wrapped).unwrap();
            // The compressed frame is well under the cap; what it inflates to is not.
            assert!(wrapped.len() < frame.len() - 1);
            assert!(matches!(
                decompress_frame_limited(&header, &wrapped, frame.len() - 1),
                Err(ProtocolError::MessageTooLarge { .. })
            ));
            assert_eq!(decompress_frame_limited(&header, &wrapped, frame.len()).unwrap().0, frame);
            assert_eq!(compressed_prefix(&wrapped, frame.len()).unwrap().message_len, frame.len());
        }
    }
}
