//! The one error type of the protocol layer.
//!
//! Each variant maps to the code and code name a MongoDB server uses for the same fault, and says whether the
//! server would close the connection instead of replying, so the proxy can answer exactly like a server would.

/// A wire-protocol fault found while parsing or encoding a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The header announces fewer bytes than the header itself.
    #[error("message length {0} is shorter than the 16-byte header")]
    MessageTooShort(i64),
    /// The header announces more than the size cap.
    #[error("message length {len} exceeds the maximum of {max} bytes")]
    MessageTooLarge { len: i64, max: usize },
    /// A BSON document (body or sequence entry) is larger than allowed.
    #[error("BSON document of {len} bytes exceeds the maximum of {max} bytes")]
    DocumentTooLarge { len: usize, max: usize },
    /// The bytes end before a structure they announce.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// The opcode is not one this crate parses.
    #[error("unsupported opcode {0}")]
    UnsupportedOpCode(i32),
    /// Required (low 16) OP_MSG flag bits other than checksumPresent and moreToCome.
    #[error("OP_MSG contains unknown required flag bits {0:#x}")]
    IllegalFlags(u32),
    /// The CRC-32C trailer does not match the message.
    #[error("OP_MSG checksum does not match contents")]
    ChecksumMismatch,
    /// More than one kind-0 section.
    #[error("OP_MSG contains more than one body section")]
    MultipleBodies,
    /// No kind-0 section.
    #[error("OP_MSG has no body section")]
    NoBody,
    /// A section kind other than 0 and 1 (kind 2 is server-internal and refused from clients).
    #[error("OP_MSG section kind {0} is not allowed")]
    UnknownSectionKind(u8),
    /// More document sequences than a server accepts.
    #[error("OP_MSG has more than {0} document sequences")]
    TooManySequences(usize),
    /// Two sequences share an identifier.
    #[error("OP_MSG has a duplicate document sequence {0:?}")]
    DuplicateSequence(String),
    /// A sequence identifier is also a field of the body.
    #[error("OP_MSG document sequence {0:?} duplicates a field of the body")]
    SequenceConflictsWithBody(String),
    /// BSON that does not walk cleanly, or nests too deeply.
    #[error("invalid BSON: {0}")]
    InvalidBson(String),
    /// A structure the parser understood but whose content is malformed.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// OP_COMPRESSED names a compressor id we do not implement.
    #[error("unknown compressor id {0}")]
    UnknownCompressor(u8),
    /// OP_COMPRESSED wrapping OP_COMPRESSED.
    #[error("nested OP_COMPRESSED is not allowed")]
    NestedCompression,
    /// The compressed payload did not decompress to the announced size.
    #[error("decompression failed: {0}")]
    Decompression(String),
    /// A compressor failed to compress (should not happen for in-memory buffers).
    #[error("compression failed: {0}")]
    Compression(String),
}

impl ProtocolError {
    /// The MongoDB error code and code name a server would reply with.
    pub fn code(&self) -> (i32, &'static str) {
        match self {
            Self::MessageTooShort(_) | Self::Truncated(_) | Self::Malformed(_) => (17, "ProtocolError"),
            Self::MessageTooLarge { .. } | Self::DocumentTooLarge { .. } => (10334, "BSONObjectTooLarge"),
            Self::UnsupportedOpCode(_) => (352, "UnsupportedOpQueryCommand"),
            Self::IllegalFlags(_) => (223, "IllegalOpMsgFlag"),
            Self::ChecksumMismatch => (288, "ChecksumMismatch"),
            Self::MultipleBodies => (40430, "Location40430"),
            Self::NoBody => (40587, "Location40587"),
            Self::UnknownSectionKind(_) => (40432, "Location40432"),
            Self::TooManySequences(_) => (233, "TooManyDocumentSequences"),
            Self::DuplicateSequence(_) => (40431, "Location40431"),
            Self::SequenceConflictsWithBody(_) => (40433, "Location40433"),
            Self::InvalidBson(_) => (22, "InvalidBSON"),
            Self::UnknownCompressor(_) | Self::NestedCompression | Self::Decompression(_) => (17, "ProtocolError"),
            Self::Compression(_) => (1, "InternalError"),
        }
    }

    /// Whether a server closes the connection rather than replying. Framing faults always close: once the
    /// length cannot be trusted there is no next message to find.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::MessageTooShort(_)
                | Self::MessageTooLarge { .. }
                | Self::IllegalFlags(_)
                | Self::ChecksumMismatch
                | Self::TooManySequences(_)
                | Self::UnknownCompressor(_)
                | Self::NestedCompression
                | Self::Decompression(_)
        )
    }
}
