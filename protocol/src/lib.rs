//! Sans-IO MongoDB wire protocol for tenantwall.
//!
//! This crate owns the bytes: the 16-byte header and its limits, OP_MSG (flags, body, document sequences,
//! CRC-32C), the legacy OP_QUERY / OP_REPLY pair as far as the handshake needs it, and OP_COMPRESSED with the
//! snappy, zlib and zstd codecs. It never performs I/O and never panics on input: every parser takes a byte
//! buffer, checks lengths against a cap before it takes anything, and returns a [`ProtocolError`] that knows the
//! MongoDB error code a server would have used.
//!
//! Parsed messages are borrowed views: bodies and sequence documents are [`bytes::Bytes`] slices of the frame
//! that was read, validated once and then handed out as [`bson::RawDocument`] without copying.
//!
//! What it must never do: decide anything about tenants or policy, decode whole documents into
//! `bson::Document`, or forward bytes it has not parsed.
#![forbid(unsafe_code)]

pub mod compression;
pub mod error;
pub mod fields;
pub mod frame;
pub mod header;
pub mod legacy;
pub mod msg;
pub mod validate;

pub use compression::Compressor;
pub use error::ProtocolError;
pub use frame::{decode, decode_limited, Decoded, Message};
pub use header::{
    check_frame, MsgHeader, OpCode, HEADER_LEN, MAX_BSON_OBJECT_SIZE, MAX_COMMAND_SIZE, MAX_MESSAGE_SIZE,
};
pub use legacy::{OpQuery, OpReply};
pub use msg::{MsgFlags, OpMsg, Sequence};
