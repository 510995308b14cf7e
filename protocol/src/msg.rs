//! OP_MSG: flag bits, one kind-0 body, kind-1 document sequences, optional CRC-32C.
//!
//! A parsed [`OpMsg`] holds `Bytes` slices of the frame it came from; nothing is copied or decoded beyond the
//! validation walk. Encoding writes length placeholders and back-fills them with checked conversions.

use std::fmt;

use bson::{RawDocument, RawDocumentBuf};
use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take_till;
use nom::number::complete::le_u32;

use crate::fields::{Fields, TopLevel};
use crate::header::backfill_len;
use crate::validate::{
    add_findings_after, document_len, findings_and_index_of, has_document_shape, Findings, LastKeys,
};
use crate::{MsgHeader, OpCode, ProtocolError, HEADER_LEN, MAX_BSON_OBJECT_SIZE, MAX_COMMAND_SIZE};

/// Most document sequences a server accepts in one message (bulkWrite uses two: `ops` and `nsInfo`).
pub const MAX_SEQUENCES: usize = 2;

/// OP_MSG flag bits.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct MsgFlags(pub u32);

impl MsgFlags {
    pub const CHECKSUM_PRESENT: u32 = 1 << 0;
    pub const MORE_TO_COME: u32 = 1 << 1;
    pub const EXHAUST_ALLOWED: u32 = 1 << 16;
    /// The low 16 bits are "required": a receiver must reject any it does not know.
    const REQUIRED_MASK: u32 = 0xffff;
    const KNOWN_REQUIRED: u32 = Self::CHECKSUM_PRESENT | Self::MORE_TO_COME;

    pub fn checksum_present(self) -> bool {
        self.0 & Self::CHECKSUM_PRESENT != 0
    }
    pub fn more_to_come(self) -> bool {
        self.0 & Self::MORE_TO_COME != 0
    }
    pub fn exhaust_allowed(self) -> bool {
        self.0 & Self::EXHAUST_ALLOWED != 0
    }
    /// These flags with `bits` cleared.
    #[must_use]
    pub fn without(self, bits: u32) -> Self {
        Self(self.0 & !bits)
    }
    /// These flags with `bits` set.
    #[must_use]
    pub fn with(self, bits: u32) -> Self {
        Self(self.0 | bits)
    }
}

impl fmt::Debug for MsgFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgFlags({:#x})", self.0)
    }
}

/// A kind-1 section: a named run of documents that stands for an array field of the command.
///
/// The documents are held as they travel, one after another in one buffer (a slice of the frame they arrived
/// in, when parsed), with where each one ends: a thousand inserted documents are one shared buffer and a list of
/// offsets, not a thousand reference-counted slices to make, count and drop.
#[derive(Clone)]
pub struct Sequence {
    identifier: String,
    /// The documents, back to back.
    data: Bytes,
    /// Where each document ends in `data`: document `i` is `data[ends[i - 1]..ends[i]]` (the first starts at 0),
    /// and the last ends at `data`'s end. Every document has a document's shape (checked when stored).
    ends: Vec<usize>,
    /// What validation found in any of the documents ([`Findings::UNKNOWN`] unless parsed).
    findings: Findings,
}

/// Sequences are equal when they say the same thing; how much is known about them does not count.
impl PartialEq for Sequence {
    fn eq(&self, other: &Self) -> bool {
        self.identifier == other.identifier && self.data == other.data && self.ends == other.ends
    }
}

impl Sequence {
    /// Builds a sequence from already validated documents.
    pub fn new(identifier: impl Into<String>, documents: Vec<RawDocumentBuf>) -> Self {
        let mut data = BytesMut::with_capacity(documents.iter().map(|d| d.as_bytes().len()).sum());
        let mut ends = Vec::with_capacity(documents.len());
        for doc in &documents {
            data.extend_from_slice(doc.as_bytes());
            ends.push(data.len());
        }
        Self { identifier: identifier.into(), data: data.freeze(), ends, findings: Findings::UNKNOWN }
    }

    /// Builds a sequence from document bytes that were validated when parsed or built with bson's builders. Only
    /// the O(1) shape (length prefix and trailing NUL) is re-checked here; that is the invariant the borrowed
    /// views rely on. The documents are copied into one buffer.
    pub fn from_bytes(identifier: impl Into<String>, documents: Vec<Bytes>) -> Result<Self, ProtocolError> {
        let mut data = BytesMut::with_capacity(documents.iter().map(Bytes::len).sum());
        let mut ends = Vec::with_capacity(documents.len());
        for doc in &documents {
            check_shape(doc)?;
            data.extend_from_slice(doc);
            ends.push(data.len());
        }
        Ok(Self { identifier: identifier.into(), data: data.freeze(), ends, findings: Findings::UNKNOWN })
    }

    /// Builds a sequence from documents already back to back in `data`, document `i` ending at `ends[i]` (the
    /// first starting at 0, the last ending at `data`'s end), each validated when parsed or built with bson's
    /// builders. The shape of each, and that the ends cover `data` in order, is checked here.
    pub fn from_concatenated(
        identifier: impl Into<String>,
        data: Bytes,
        ends: Vec<usize>,
    ) -> Result<Self, ProtocolError> {
        let mut start = 0;
        for &end in &ends {
            let doc = data.get(start..end).ok_or(ProtocolError::Malformed("document sequence ends out of order"))?;
            check_shape(doc)?;
            start = end;
        }
        if start != data.len() {
            return Err(ProtocolError::Malformed("document sequence ends short of its data"));
        }
        Ok(Self { identifier: identifier.into(), data, ends, findings: Findings::UNKNOWN })
    }

    /// What validation found in the documents when they were parsed ([`Findings::UNKNOWN`] when built).
    pub fn findings(&self) -> Findings {
        self.findings
    }

    /// The documents' bytes, in order.
    pub fn document_bytes(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        DocumentBytes { data: &self.data, ends: self.ends.iter(), start: 0 }
    }

    /// How many bytes the documents take in all (their lengths summed).
    pub fn documents_len(&self) -> usize {
        // Every constructor checks that the documents fill the data exactly.
        self.data.len()
    }

    /// The documents' bytes as shared slices of the buffer they are held in, in order (no copy).
    pub fn shared_documents(&self) -> impl ExactSizeIterator<Item = Bytes> + '_ {
        self.document_bytes().map(|d| self.data.slice_ref(d))
    }

    /// The field name this sequence stands for (`documents`, `updates`, `deletes`, `ops`, `nsInfo`).
    pub fn identifier(&self) -> &str {
        &self.identifier
    }

    /// The documents, in order.
    pub fn documents(&self) -> impl ExactSizeIterator<Item = &RawDocument> + '_ {
        self.document_bytes().map(raw_view)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// That `doc` has a document's shape (length prefix, final NUL), as `RawDocument::from_bytes` checks it, with
/// its error when not.
#[inline]
fn check_shape(doc: &[u8]) -> Result<(), ProtocolError> {
    match has_document_shape(doc) {
        true => Ok(()),
        false => shape_error(doc),
    }
}

/// Why `doc` is not shaped as a document, in `bson`'s words.
#[cold]
#[inline(never)]
fn shape_error(doc: &[u8]) -> Result<(), ProtocolError> {
    RawDocument::from_bytes(doc).map(|_| ()).map_err(|e| ProtocolError::InvalidBson(e.to_string()))
}

impl fmt::Debug for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sequence").field("identifier", &self.identifier).field("len", &self.len()).finish()
    }
}

/// A parsed OP_MSG.
#[derive(Clone)]
pub struct OpMsg {
    pub flags: MsgFlags,
    body: Bytes,
    sequences: Vec<Sequence>,
    /// What validation found in the body ([`Findings::UNKNOWN`] unless parsed).
    body_findings: Findings,
    /// Where the body's top-level elements are, as validation found them in `body` (not known unless parsed):
    /// only ever set together with `body`, from its own bytes (or derived from the index of the body it was
    /// edited from, [`OpMsg::with_body_field`]).
    body_index: TopLevel,
}

/// Messages are equal when they say the same thing; how much is known about them does not count.
impl PartialEq for OpMsg {
    fn eq(&self, other: &Self) -> bool {
        self.flags == other.flags && self.body == other.body && self.sequences == other.sequences
    }
}

/// Views validated bytes as a document.
///
/// Every document this module stores went through the validation walk ([`add_findings_of`]) or the same shape
/// check, which already succeeded on exactly these bytes, and `RawDocument::from_bytes` re-checks only the
/// length prefix and trailing NUL; failure is therefore impossible and the `expect` documents an invariant, not
/// an input condition.
fn raw_view(bytes: &[u8]) -> &RawDocument {
    RawDocument::from_bytes(bytes).expect("stored OP_MSG documents are validated when stored")
}

impl OpMsg {
    /// A message with a body and no sequences.
    pub fn new(flags: MsgFlags, body: RawDocumentBuf) -> Self {
        Self {
            flags,
            body: Bytes::from(body.into_bytes()),
            sequences: Vec::new(),
            body_findings: Findings::UNKNOWN,
            body_index: TopLevel::default(),
        }
    }

    /// A message with a body and document sequences.
    pub fn with_sequences(flags: MsgFlags, body: RawDocumentBuf, sequences: Vec<Sequence>) -> Self {
        Self {
            flags,
            body: Bytes::from(body.into_bytes()),
            sequences,
            body_findings: Findings::UNKNOWN,
            body_index: TopLevel::default(),
        }
    }

    /// The same sections with other flags (bodies and sequences are shared, not copied).
    #[must_use]
    pub fn with_flags(&self, flags: MsgFlags) -> Self {
        Self {
            flags,
            body: self.body.clone(),
            sequences: self.sequences.clone(),
            body_findings: self.body_findings,
            body_index: self.body_index,
        }
    }

    /// The command (or reply) document.
    pub fn body(&self) -> &RawDocument {
        raw_view(&self.body)
    }

    /// The body, read by key through the index validation made of its top-level elements when it was parsed
    /// (by scanning its bytes when it was built).
    pub fn body_fields(&self) -> Fields<'_> {
        Fields::indexed(&self.body, &self.body_index)
    }

    /// This message with its body's top-level field `key` replaced by (or, when absent, appended as) a value of
    /// BSON type `kind` that `write` appends to the buffer it is given, in place; flags and sequences as they
    /// are. `extra` is how many bytes `write` adds (the buffer is allocated for exactly that; more only costs a
    /// reallocation). The elements before and after the one replaced are copied as they are, each run at once,
    /// and the new body's index of top-level elements is this one's with them moved ([`Self::body_fields`]
    /// stays a lookup, not a scan).
    ///
    /// `None` when `write` could not write the value (it then says so, having written nothing), when the body
    /// repeats `key` or cannot be read element by element, when `key` holds a NUL, or when the result would not
    /// fit BSON's length: the caller then edits the body the general way.
    pub fn with_body_field(
        &self,
        key: &str,
        kind: u8,
        extra: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Option<()>,
    ) -> Option<OpMsg> {
        let fields = self.body_fields();
        let bytes = fields.bytes();
        let end = bytes.len().checked_sub(1)?;
        let span = fields.unique_field_span(key.as_bytes())?.unwrap_or(end..end);
        if key.as_bytes().contains(&0) {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len() - span.len() + key.len() + 2 + extra);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(bytes.get(4..span.start)?);
        out.push(kind);
        out.extend_from_slice(key.as_bytes());
        out.push(0);
        write(&mut out)?;
        let new_end = out.len();
        out.extend_from_slice(bytes.get(span.end..end)?);
        out.push(0);
        let len = i32::try_from(out.len()).ok()?;
        out.get_mut(..4)?.copy_from_slice(&len.to_le_bytes());
        // The shape every stored body has (`raw_view` relies on it).
        if !has_document_shape(&out) {
            return None;
        }
        Some(OpMsg {
            flags: self.flags,
            body_index: self.body_index.replaced(span, key.as_bytes(), new_end),
            body: Bytes::from(out),
            // Most messages have no sequences: nothing to clone (a call, even for an empty `Vec`).
            sequences: if self.sequences.is_empty() { Vec::new() } else { self.sequences.clone() },
            body_findings: Findings::UNKNOWN,
        })
    }

    /// Writes `data` over the data of the binary value at `outer.inner` (a top-level document `outer` holding
    /// one element `inner`, a binary of exactly `data.len()` bytes); flags, sequences and everything else stay as
    /// they are. No length, key or type changes, so the body keeps its shape and its index of top-level
    /// elements ([`Self::body_fields`] stays a lookup).
    ///
    /// `false`, and nothing changed, unless the body has `outer` exactly once and as a document, whose one
    /// element is `inner`, a binary of that length whose subtype is not the old binary subtype (2, whose data
    /// begins with a second length that the data would overwrite). The body's bytes are written where they are
    /// when nothing else holds them (a body the proxy has just made), and copied first when something does (a
    /// body that is a slice of a received frame): no one else ever sees them change.
    pub fn overwrite_binary(&mut self, outer: &str, inner: &str, data: &[u8]) -> bool {
        let Some(at) = self.binary_data(outer, inner, data.len()) else { return false };
        let body = std::mem::take(&mut self.body);
        let mut bytes = body.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        // `at` lies within these bytes: `binary_data` found it in them.
        if let Some(slot) = bytes.get_mut(at) {
            slot.copy_from_slice(data);
        }
        self.body = bytes.freeze();
        self.body_findings = Findings::UNKNOWN;
        true
    }

    /// Where the data of the binary value at `outer.inner` lies in the body, when it is as
    /// [`Self::overwrite_binary`] requires and `len` bytes long.
    fn binary_data(&self, outer: &str, inner: &str, len: usize) -> Option<std::ops::Range<usize>> {
        let fields = self.body_fields();
        let bytes = fields.bytes();
        let outer_span = fields.unique_field_span(outer.as_bytes())??;
        // The element: type byte, key, NUL, then the value.
        let value_at = outer_span.start + 1 + outer.len() + 1;
        if bytes.get(outer_span.start) != Some(&0x03) || value_at > outer_span.end {
            return None;
        }
        let document = bytes.get(value_at..outer_span.end)?;
        // A key holding a NUL is no key: it could only match bytes that end one key and start something else.
        if inner.as_bytes().contains(&0) {
            return None;
        }
        // `inner` must be the document's one element, so it is read where that one would be, not searched
        // for: after the document's length, its type byte, `inner` and its NUL, the binary's length and its
        // subtype, then the data, which ends at the document's final NUL.
        let key_at = 5;
        let length_at = key_at + inner.len() + 1;
        let data_at = length_at + 5;
        let length = document.get(length_at..length_at + 4)?;
        if document.get(4) != Some(&0x05)
            || document.get(key_at..length_at - 1)? != inner.as_bytes()
            || document.get(length_at - 1) != Some(&0)
            || usize::try_from(i32::from_le_bytes(length.try_into().ok()?)).ok()? != len
            || document.get(length_at + 4) == Some(&2)
            || data_at + len + 1 != document.len()
        {
            return None;
        }
        let at = value_at + data_at..value_at + data_at + len;
        bytes.get(at.clone())?;
        Some(at)
    }

    /// What validation found in the body when it was parsed ([`Findings::UNKNOWN`] when built).
    pub fn body_findings(&self) -> Findings {
        self.body_findings
    }

    /// The body's bytes, for byte-for-byte forwarding.
    pub fn body_bytes(&self) -> &Bytes {
        &self.body
    }

    /// The command name: the body's first key.
    pub fn command_name(&self) -> Option<&str> {
        let first = self.body_fields().first()?;
        std::str::from_utf8(first.key).ok()
    }

    /// The document sequences, in wire order.
    pub fn sequences(&self) -> &[Sequence] {
        &self.sequences
    }

    /// The sequence standing for field `identifier`, if any.
    pub fn sequence(&self, identifier: &str) -> Option<&Sequence> {
        self.sequences.iter().find(|s| s.identifier == identifier)
    }

    /// Parses the OP_MSG whose whole frame (header included) is `frame`.
    pub fn parse(header: &MsgHeader, frame: &Bytes) -> Result<OpMsg, ProtocolError> {
        if header.op_code != OpCode::MSG {
            return Err(ProtocolError::UnsupportedOpCode(header.op_code.0));
        }
        let rest = frame.get(HEADER_LEN..).ok_or(ProtocolError::Truncated("OP_MSG header"))?;
        let (_, flag_bits) =
            le_u32::<_, nom::error::Error<&[u8]>>(rest).map_err(|_| ProtocolError::Truncated("OP_MSG flags"))?;
        let flags = MsgFlags(flag_bits);
        let unknown_required = flag_bits & MsgFlags::REQUIRED_MASK & !MsgFlags::KNOWN_REQUIRED;
        if unknown_required != 0 {
            return Err(ProtocolError::IllegalFlags(unknown_required));
        }

        let mut end = frame.len();
        if flags.checksum_present() {
            end = end
                .checked_sub(4)
                .filter(|e| *e >= HEADER_LEN + 4)
                .ok_or(ProtocolError::Truncated("OP_MSG checksum"))?;
            let trailer = &frame[end..];
            let expected = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
            if crc32c::crc32c(&frame[..end]) != expected {
                return Err(ProtocolError::ChecksumMismatch);
            }
        }

        let mut body: Option<(Bytes, Findings, TopLevel)> = None;
        let mut sequences: Vec<Sequence> = Vec::new();
        let mut pos = HEADER_LEN + 4;
        let sections = &frame[..end];
        while pos < end {
            let kind = sections[pos];
            pos += 1;
            match kind {
                0 => {
                    let len = document_len(sections, pos, MAX_COMMAND_SIZE, "OP_MSG body")?;
                    let doc = frame.slice(pos..pos + len);
                    let mut index = TopLevel::empty();
                    let findings = findings_and_index_of(&doc, &mut index)?;
                    if body.replace((doc, findings, index)).is_some() {
                        return Err(ProtocolError::MultipleBodies);
                    }
                    pos += len;
                }
                1 => {
                    let (sequence, next) = parse_sequence(frame, sections, pos)?;
                    if sequences.iter().any(|s| s.identifier == sequence.identifier) {
                        return Err(ProtocolError::DuplicateSequence(sequence.identifier));
                    }
                    if sequences.len() == MAX_SEQUENCES {
                        return Err(ProtocolError::TooManySequences(MAX_SEQUENCES));
                    }
                    sequences.push(sequence);
                    pos = next;
                }
                other => return Err(ProtocolError::UnknownSectionKind(other)),
            }
        }
        let (body, body_findings, body_index) = body.ok_or(ProtocolError::NoBody)?;
        let msg = OpMsg { flags, body, sequences, body_findings, body_index };
        for sequence in &msg.sequences {
            // Bytes that could not be read by key (never validated ones) count as a conflict.
            if !matches!(msg.body_fields().field(sequence.identifier.as_bytes()), Some(None)) {
                return Err(ProtocolError::SequenceConflictsWithBody(sequence.identifier.clone()));
            }
        }
        Ok(msg)
    }

    /// Encodes a whole frame. The CRC-32C trailer is recomputed when `flags` has checksumPresent.
    pub fn encode(&self, request_id: i32, response_to: i32) -> Result<BytesMut, ProtocolError> {
        let mut out = self.encode_head(request_id, response_to, false)?;
        if self.flags.checksum_present() {
            let crc = crc32c::crc32c(&out);
            out.put_u32_le(crc);
        }
        Ok(out)
    }

    /// The frame's bytes before its body, when the body is all that follows them (no sequences, no checksum):
    /// the header, the flags and the body's section kind, so that the body can be written after them from
    /// where it is held instead of being copied into a frame. `None` otherwise, or when the frame would not fit
    /// its length field (where [`OpMsg::encode`] says why).
    pub fn head_before_body(&self, request_id: i32, response_to: i32) -> Option<[u8; HEADER_LEN + 5]> {
        if !self.sequences.is_empty() || self.flags.checksum_present() {
            return None;
        }
        let message_length = i32::try_from(HEADER_LEN + 5 + self.body.len()).ok()?;
        let mut head = [0u8; HEADER_LEN + 5];
        let mut out = &mut head[..];
        MsgHeader { message_length, request_id, response_to, op_code: OpCode::MSG }.write(&mut out);
        out.put_u32_le(self.flags.0);
        out.put_u8(0);
        Some(head)
    }

    /// [`OpMsg::encode`] as two parts, when the last sequence's documents are large: the frame is the head and
    /// then those documents' bytes as they are held (shared, not copied), for one vectored write. An insert's
    /// documents are then copied once on their way through (when stamped), not twice. Otherwise (small
    /// documents, or a checksum to compute over the whole frame) the whole frame, as [`OpMsg::encode`] makes it.
    pub fn encode_parts(&self, request_id: i32, response_to: i32) -> Result<(BytesMut, Option<Bytes>), ProtocolError> {
        match self.sequences.last() {
            Some(last) if last.data.len() >= SHARED_DOCUMENTS_MIN && !self.flags.checksum_present() => {
                Ok((self.encode_head(request_id, response_to, true)?, Some(last.data.clone())))
            }
            _ => Ok((self.encode(request_id, response_to)?, None)),
        }
    }

    /// The frame up to its checksum (which the caller appends), or with `leave_last` up to the last sequence's
    /// documents (which the caller sends after it): the lengths written count them either way.
    fn encode_head(&self, request_id: i32, response_to: i32, leave_last: bool) -> Result<BytesMut, ProtocolError> {
        let left = match (leave_last, self.sequences.last()) {
            (true, Some(last)) => last.data.len(),
            _ => 0,
        };
        let payload: usize = self.body.len()
            + self.sequences.iter().map(|s| 1 + 4 + s.identifier.len() + 1 + s.data.len()).sum::<usize>()
            - left;
        let mut out = BytesMut::with_capacity(HEADER_LEN + 4 + 1 + payload + 4);
        MsgHeader { message_length: 0, request_id, response_to, op_code: OpCode::MSG }.write(&mut out);
        out.put_u32_le(self.flags.0);
        out.put_u8(0);
        out.put_slice(&self.body);
        for (i, sequence) in self.sequences.iter().enumerate() {
            let last = i + 1 == self.sequences.len();
            out.put_u8(1);
            let size_at = out.len();
            out.put_i32_le(0);
            out.put_slice(sequence.identifier.as_bytes());
            out.put_u8(0);
            let size = if last && left > 0 {
                out.len() - size_at + left
            } else {
                out.put_slice(&sequence.data);
                out.len() - size_at
            };
            backfill_len(&mut out, size_at, size)?;
        }
        let total = out.len() + left + if self.flags.checksum_present() { 4 } else { 0 };
        backfill_len(&mut out, 0, total)?;
        Ok(out)
    }
}

/// Documents of at least this many bytes, last in a message, are sent from where they are held rather than
/// copied into the encoded frame ([`OpMsg::encode_parts`]); below it a copy costs less than a second buffer to
/// write.
const SHARED_DOCUMENTS_MIN: usize = 16 * 1024;

/// Parses one kind-1 section starting at `pos` (just after the kind byte). Returns it and the offset after it.
fn parse_sequence(frame: &Bytes, sections: &[u8], pos: usize) -> Result<(Sequence, usize), ProtocolError> {
    let size_bytes = sections.get(pos..pos + 4).ok_or(ProtocolError::Truncated("document sequence size"))?;
    let size = i32::from_le_bytes([size_bytes[0], size_bytes[1], size_bytes[2], size_bytes[3]]);
    // The size counts itself and at least the identifier's NUL.
    if size < 5 {
        return Err(ProtocolError::Malformed("document sequence size below minimum"));
    }
    let end = pos
        .checked_add(size as usize)
        .filter(|e| *e <= sections.len())
        .ok_or(ProtocolError::Truncated("document sequence"))?;
    let region = &sections[pos + 4..end];
    let (after_name, name) = take_till::<_, _, nom::error::Error<&[u8]>>(|b| b == 0)(region)
        .map_err(|_| ProtocolError::Truncated("document sequence identifier"))?;
    if after_name.is_empty() {
        return Err(ProtocolError::Truncated("document sequence identifier"));
    }
    let identifier = std::str::from_utf8(name)
        .map_err(|_| ProtocolError::Malformed("document sequence identifier is not UTF-8"))?
        .to_owned();
    let first = pos + 4 + name.len() + 1;
    let mut doc_pos = first;
    let mut ends = Vec::with_capacity(estimate_documents(&sections[..end], doc_pos));
    let mut findings = Findings::NOTHING_YET;
    let mut last = LastKeys::NONE;
    while doc_pos < end {
        let len = document_len(&sections[..end], doc_pos, MAX_BSON_OBJECT_SIZE + 16 * 1024, "sequence document")?;
        let doc = sections.get(doc_pos..doc_pos + len).ok_or(ProtocolError::Truncated("sequence document"))?;
        add_findings_after(doc, &mut findings, &mut last)?;
        doc_pos += len;
        ends.push(doc_pos - first);
    }
    // The documents filled the section exactly: they are its bytes from the first on.
    let data = frame.slice(first..end);
    Ok((Sequence { identifier, data, ends, findings }, end))
}

/// Most documents the list of a sequence's documents is sized for before they are validated: the message may
/// not have been authenticated yet, and its documents may all turn out invalid, so what is reserved up front is
/// bounded (32 KiB of ends); a longer sequence grows the list as its documents pass.
const PRESIZED_DOCUMENTS: usize = 4096;

/// How many documents a sequence's region (`region[at..]`) may hold, estimated from the first alone (the region's
/// length over the first document's, when that one looks whole), up to [`PRESIZED_DOCUMENTS`]: for sizing the
/// list of them once. The parse then checks document by document, and the list grows if the estimate was low.
/// Counting every document by its prefix instead costs a chain of dependent loads, one per document, which is
/// several percent of validating a large insert.
fn estimate_documents(region: &[u8], at: usize) -> usize {
    let Some(prefix) = region.get(at..).and_then(<[u8]>::first_chunk::<4>) else { return 0 };
    match usize::try_from(i32::from_le_bytes(*prefix)) {
        Ok(len) if len >= 5 && region.get(at.saturating_add(len - 1)) == Some(&0) => {
            ((region.len() - at) / len).min(PRESIZED_DOCUMENTS)
        }
        _ => 0,
    }
}

/// [`Sequence::document_bytes`]: each document runs from where the one before it ended.
struct DocumentBytes<'a> {
    data: &'a [u8],
    ends: std::slice::Iter<'a, usize>,
    start: usize,
}

impl<'a> Iterator for DocumentBytes<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let end = *self.ends.next()?;
        // Within the data for every sequence a constructor made; empty (never a panic) otherwise.
        let doc = self.data.get(self.start..end).unwrap_or_default();
        self.start = end;
        Some(doc)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ends.size_hint()
    }
}

impl ExactSizeIterator for DocumentBytes<'_> {}

impl fmt::Debug for OpMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpMsg")
            .field("flags", &self.flags)
            .field("command", &self.command_name())
            .field("sequences", &self.sequences)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn a_sequence_is_presized_only_for_documents_that_look_whole_and_never_beyond_the_cap() {
        // Five-byte "documents" without their final NUL: nothing is reserved for what will be refused.
        let fake: Vec<u8> = [5u8, 0, 0, 0, 1].repeat(100_000);
        assert_eq!(estimate_documents(&fake, 0), 0);
        // Documents like the first are estimated from it, up to the cap.
        let empty: Vec<u8> = [5u8, 0, 0, 0, 0].repeat(10);
        assert_eq!(estimate_documents(&empty, 0), 10);
        assert_eq!(estimate_documents(&empty, 5), 9);
        let many: Vec<u8> = [5u8, 0, 0, 0, 0].repeat(100_000);
        assert_eq!(estimate_documents(&many, 0), PRESIZED_DOCUMENTS);
        // A first document running past the region, or no room for a prefix: nothing.
        assert_eq!(estimate_documents(&[9u8, 0, 0, 0, 0], 0), 0);
        assert_eq!(estimate_documents(&[5u8, 0, 0], 0), 0);
        assert_eq!(estimate_documents(&empty, 50), 0);
    }

    #[test]
    fn a_sequence_longer_than_its_estimate_keeps_every_document() {
        // A small first document makes the estimate low; the rest still arrive whole and in order.
        let docs: Vec<RawDocumentBuf> = std::iter::once(rawdoc! {})
            .chain((0..20).map(|i| rawdoc! { "k": i, "padding": "x".repeat(100) }))
            .collect();
        let msg = OpMsg::with_sequences(
            MsgFlags::default(),
            rawdoc! { "insert": "c", "$db": "d" },
            vec![Sequence::new("documents", docs.clone())],
        );
        let (header, bytes) = frame_of(&msg);
        let parsed = OpMsg::parse(&header, &bytes).unwrap();
        let got: Vec<&[u8]> = parsed.sequences()[0].document_bytes().collect();
        let want: Vec<&[u8]> = docs.iter().map(|d| d.as_bytes()).collect();
        assert_eq!(got, want);
        assert_eq!(parsed.sequences()[0].documents_len(), want.iter().map(|d| d.len()).sum::<usize>());
        let shared: Vec<Bytes> = parsed.sequences()[0].shared_documents().collect();
        assert_eq!(shared, want);
    }

    #[test]
    fn a_frame_in_two_parts_is_the_frame() {
        let docs = |n: usize| -> Vec<RawDocumentBuf> {
            (0..n).map(|i| rawdoc! { "i": i as i64, "pad": "x".repeat(90) }).collect()
        };
        let body = || rawdoc! { "insert": "c", "$db": "d" };
        let cases = [
            // Small: one part.
            (OpMsg::with_sequences(MsgFlags::default(), body(), vec![Sequence::new("documents", docs(3))]), false),
            // Large and last: the documents are the second part.
            (OpMsg::with_sequences(MsgFlags::default(), body(), vec![Sequence::new("documents", docs(300))]), true),
            (
                OpMsg::with_sequences(
                    MsgFlags::default(),
                    body(),
                    vec![Sequence::new("ops", docs(300)), Sequence::new("nsInfo", docs(200))],
                ),
                true,
            ),
            // A checksum covers the whole frame: one part.
            (
                OpMsg::with_sequences(
                    MsgFlags(MsgFlags::CHECKSUM_PRESENT),
                    body(),
                    vec![Sequence::new("documents", docs(300))],
                ),
                false,
            ),
            (OpMsg::new(MsgFlags::default(), body()), false),
        ];
        for (msg, split) in cases {
            let whole = msg.encode(7, 3).unwrap();
            let (head, tail) = msg.encode_parts(7, 3).unwrap();
            assert_eq!(tail.is_some(), split);
            let mut joined = head.to_vec();
            joined.extend_from_slice(&tail.unwrap_or_default());
            assert_eq!(joined, whole.to_vec());
            let (header, frame) = (MsgHeader::read(&whole).unwrap(), whole.freeze());
            assert!(OpMsg::parse(&header, &frame).is_ok());
        }
    }

    fn frame_of(msg: &OpMsg) -> (MsgHeader, Bytes) {
        let bytes = msg.encode(11, 0).unwrap().freeze();
        (MsgHeader::read(&bytes).unwrap(), bytes)
    }

    fn insert_msg(flags: u32) -> OpMsg {
        OpMsg::with_sequences(
            MsgFlags(flags),
            rawdoc! { "insert": "c", "$db": "app" },
            vec![Sequence::new("documents", vec![rawdoc! { "_id": 1 }, rawdoc! { "_id": 2, "x": "y" }])],
        )
    }

    #[test]
    fn round_trips_body_and_sequence() {
        let msg = insert_msg(0);
        let (header, bytes) = frame_of(&msg);
        assert_eq!(header.message_length as usize, bytes.len());
        let parsed = OpMsg::parse(&header, &bytes).unwrap();
        assert_eq!(parsed, msg);
        assert_eq!(parsed.command_name(), Some("insert"));
        assert_eq!(parsed.sequence("documents").unwrap().len(), 2);
        assert_eq!(parsed.encode(11, 0).unwrap().freeze(), bytes);
    }

    /// Only a binary of exactly the data's length, found once at the path, is overwritten; the rest of the
    /// message and the index of its body stay as they were.
    #[test]
    fn a_binary_is_overwritten_only_where_it_is_exactly_what_was_asked_for() {
        let binary = |subtype: u8, len: u8| bson::Binary { subtype: subtype.into(), bytes: (1..=len).collect() };
        let parsed = |body: RawDocumentBuf| {
            let (header, bytes) = frame_of(&OpMsg::new(MsgFlags::default(), body));
            OpMsg::parse(&header, &bytes).unwrap()
        };
        // The message with the binary overwritten in a copy of it, `None` where it is refused.
        let overwritten = |msg: &OpMsg, inner: &str, data: &[u8]| {
            let mut out = msg.clone();
            out.overwrite_binary("lsid", inner, data).then_some(out)
        };
        let data = [0xAB; 16];
        let msg = parsed(rawdoc! { "find": "c", "lsid": { "id": binary(4, 16) }, "filter": { "x": 1 }, "$db": "app" });
        let out = overwritten(&msg, "id", &data).unwrap();
        let id = out.body().get_document("lsid").unwrap().get_binary("id").unwrap();
        assert_eq!((id.subtype, id.bytes), (4.into(), &data[..]));
        assert_eq!(out.body().get_document("filter").unwrap().get_i32("x").unwrap(), 1);
        assert_eq!(out.body().as_bytes().len(), msg.body().as_bytes().len());
        assert_eq!(out.body_index, msg.body_index);
        assert!(out.body_index.is_known());
        crate::validate::validate_document(out.body().as_bytes()).unwrap();
        // Written where it is when nothing else holds the body, copied when something does; the same bytes.
        let (mut alone, mut sharing) = (parsed(msg.body().to_owned()), msg.clone());
        assert!(alone.overwrite_binary("lsid", "id", &data) && sharing.overwrite_binary("lsid", "id", &data));
        assert_eq!((&alone, &sharing), (&out, &out));
        assert_ne!(msg, out, "the holder it shared its bytes with saw them change");
        let refused = [
            rawdoc! { "find": "c", "lsid": { "x": 1, "id": binary(4, 16) }, "$db": "app" },
            rawdoc! { "find": "c", "lsid": { "id": binary(4, 16), "x": 1 }, "$db": "app" },
            rawdoc! { "find": "c", "lsid": { "id": binary(4, 15) }, "$db": "app" },
            rawdoc! { "find": "c", "lsid": { "id": binary(4, 17) }, "$db": "app" },
            rawdoc! { "find": "c", "lsid": { "id": binary(2, 16) }, "$db": "app" },
            rawdoc! { "find": "c", "lsid": { "id": "sixteen bytes..." }, "$db": "app" },
            rawdoc! { "find": "c", "lsid": { "di": binary(4, 16) }, "$db": "app" },
            rawdoc! { "find": "c", "lsid": { "i": binary(4, 16) }, "$db": "app" },
            rawdoc! { "find": "c", "lsid": { "idx": binary(4, 16) }, "$db": "app" },
            rawdoc! { "find": "c", "lsid": {}, "$db": "app" },
            rawdoc! { "find": "c", "lsid": { "id": binary(4, 16), "id": binary(4, 16) }, "$db": "app" },
            rawdoc! { "find": "c", "lsid": [binary(4, 16)], "$db": "app" },
            rawdoc! { "find": "c", "id": binary(4, 16), "$db": "app" },
            rawdoc! { "find": "c", "lsid": { "id": binary(4, 16) }, "lsid": { "id": binary(4, 16) }, "$db": "app" },
        ];
        // A key holding a NUL names nothing, even where the bytes after the document's one key would match it.
        let mut lsid = vec![0u8; 4];
        lsid.extend_from_slice(b"\x05i\0d\0");
        lsid.extend_from_slice(&4i32.to_le_bytes());
        lsid.extend_from_slice(&[4, 1, 2, 3, 4, 0]);
        let len = lsid.len() as i32;
        lsid[..4].copy_from_slice(&len.to_le_bytes());
        let mut lsid_body = rawdoc! {};
        lsid_body.append(bson::cstr!("lsid"), RawDocumentBuf::from_bytes(lsid).unwrap());
        assert_eq!(overwritten(&OpMsg::new(MsgFlags::default(), lsid_body), "i\0d", &[9; 4]), None);
        for body in refused {
            assert_eq!(overwritten(&parsed(body.clone()), "id", &data), None, "{body:?}");
            let mut refused = parsed(body.clone());
            assert!(!refused.overwrite_binary("lsid", "id", &data), "{body:?}");
            assert_eq!(refused.body(), body.as_ref(), "{body:?}");
        }
    }

    /// A message moves through several layers on its way through the proxy; within 128 bytes each move is a
    /// few register moves, beyond them a `memcpy` call (`fields::TopLevel` is sized for this).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_message_stays_within_128_bytes() {
        assert!(std::mem::size_of::<OpMsg>() <= 128, "{}", std::mem::size_of::<OpMsg>());
    }

    #[test]
    fn sequences_hold_their_documents_back_to_back() {
        let docs = vec![rawdoc! { "_id": 1 }, rawdoc! {}, rawdoc! { "_id": 2, "x": "y" }];
        let built = Sequence::new("documents", docs.clone());
        let shared: Vec<Bytes> = docs.iter().map(|d| Bytes::copy_from_slice(d.as_bytes())).collect();
        assert_eq!(Sequence::from_bytes("documents", shared.clone()).unwrap(), built);
        assert_eq!(built.len(), 3);
        assert_eq!(built.document_bytes().collect::<Vec<_>>(), docs.iter().map(|d| d.as_bytes()).collect::<Vec<_>>());
        assert_eq!(built.shared_documents().collect::<Vec<_>>(), shared);
        assert_eq!(built.documents().collect::<Vec<_>>(), docs.iter().map(|d| d.as_ref()).collect::<Vec<_>>());
        let data = Bytes::from(shared.concat());
        let ends = vec![docs[0].as_bytes().len(), docs[0].as_bytes().len() + 5, data.len()];
        assert_eq!(Sequence::from_concatenated("documents", data.clone(), ends.clone()).unwrap(), built);
        // Ends out of order, short of the data or past it, and a split that is not two documents are refused.
        for bad in [
            vec![ends[1], ends[0], ends[2]],
            ends[..2].to_vec(),
            vec![ends[0], ends[1], ends[2] + 1],
            vec![3, data.len()],
        ] {
            assert!(Sequence::from_concatenated("documents", data.clone(), bad.clone()).is_err(), "{bad:?}");
        }
        let empty = Sequence::from_concatenated("documents", Bytes::new(), Vec::new()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.document_bytes().count(), 0);
    }

    #[test]
    fn a_head_and_its_body_are_the_frame() {
        let body = rawdoc! { "cursor": { "firstBatch": [{ "k": 1 }], "id": 0_i64, "ns": "d.c" }, "ok": 1.0 };
        for flags in [MsgFlags::default(), MsgFlags(MsgFlags::MORE_TO_COME | MsgFlags::EXHAUST_ALLOWED)] {
            let msg = OpMsg::new(flags, body.clone());
            let head = msg.head_before_body(7, 3).unwrap();
            let mut joined = head.to_vec();
            joined.extend_from_slice(msg.body_bytes());
            assert_eq!(joined, msg.encode(7, 3).unwrap().to_vec());
            // And it parses back to the same message.
            let (header, bytes) = (MsgHeader::read(&joined).unwrap(), Bytes::from(joined));
            let parsed = OpMsg::parse(&header, &bytes).unwrap();
            assert_eq!((parsed.flags, parsed.body()), (flags, msg.body()));
        }
        // Anything after the body (a sequence, a checksum) is the whole frame's to write.
        let with_sequence = OpMsg::with_sequences(
            MsgFlags::default(),
            rawdoc! { "insert": "c", "$db": "d" },
            vec![Sequence::new("documents", vec![rawdoc! { "k": 1 }])],
        );
        assert!(with_sequence.head_before_body(7, 3).is_none());
        assert!(OpMsg::new(MsgFlags(MsgFlags::CHECKSUM_PRESENT), body).head_before_body(7, 3).is_none());
    }

    #[test]
    fn checksum_is_written_and_verified() {
        let msg = insert_msg(MsgFlags::CHECKSUM_PRESENT);
        let (header, bytes) = frame_of(&msg);
        assert!(OpMsg::parse(&header, &bytes).is_ok());
        let mut corrupt = bytes.to_vec();
        let last_doc_byte = corrupt.len() - 6;
        corrupt[last_doc_byte] ^= 0x01;
        assert_eq!(OpMsg::parse(&header, &Bytes::from(corrupt)), Err(ProtocolError::ChecksumMismatch));
    }

    #[test]
    fn unknown_required_flag_is_rejected_but_high_bits_pass() {
        let (header, bytes) = frame_of(&OpMsg::new(MsgFlags(1 << 3), rawdoc! { "ping": 1 }));
        assert_eq!(OpMsg::parse(&header, &bytes), Err(ProtocolError::IllegalFlags(1 << 3)));
        let (header, bytes) =
            frame_of(&OpMsg::new(MsgFlags(1 << 20 | MsgFlags::EXHAUST_ALLOWED), rawdoc! { "ping": 1 }));
        assert!(OpMsg::parse(&header, &bytes).unwrap().flags.exhaust_allowed());
    }

    fn raw_frame(sections: &[u8]) -> (MsgHeader, Bytes) {
        let mut v = Vec::new();
        let header = MsgHeader {
            message_length: (HEADER_LEN + 4 + sections.len()) as i32,
            request_id: 1,
            response_to: 0,
            op_code: OpCode::MSG,
        };
        header.write(&mut v);
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(sections);
        (header, Bytes::from(v))
    }

    fn body_section(doc: &RawDocumentBuf) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(doc.as_bytes());
        v
    }

    fn seq_section(name: &str, docs: &[RawDocumentBuf]) -> Vec<u8> {
        let mut inner = Vec::new();
        inner.extend_from_slice(name.as_bytes());
        inner.push(0);
        for d in docs {
            inner.extend_from_slice(d.as_bytes());
        }
        let mut v = vec![1];
        v.extend_from_slice(&((inner.len() + 4) as i32).to_le_bytes());
        v.extend_from_slice(&inner);
        v
    }

    #[test]
    fn structural_faults_get_server_codes() {
        let body = rawdoc! { "insert": "c", "$db": "a" };
        let two_bodies = [body_section(&body), body_section(&body)].concat();
        let (h, b) = raw_frame(&two_bodies);
        assert_eq!(OpMsg::parse(&h, &b), Err(ProtocolError::MultipleBodies));

        let (h, b) = raw_frame(&seq_section("documents", &[rawdoc! {"a": 1}]));
        assert_eq!(OpMsg::parse(&h, &b), Err(ProtocolError::NoBody));

        let (h, b) = raw_frame(&[body_section(&body), vec![2, 5, 0, 0, 0, 0]].concat());
        assert_eq!(OpMsg::parse(&h, &b), Err(ProtocolError::UnknownSectionKind(2)));

        let dup = [body_section(&body), seq_section("documents", &[]), seq_section("documents", &[])].concat();
        let (h, b) = raw_frame(&dup);
        assert_eq!(OpMsg::parse(&h, &b), Err(ProtocolError::DuplicateSequence("documents".into())));

        let three = [body_section(&body), seq_section("a", &[]), seq_section("b", &[]), seq_section("c", &[])].concat();
        let (h, b) = raw_frame(&three);
        assert_eq!(OpMsg::parse(&h, &b), Err(ProtocolError::TooManySequences(2)));

        let clash = [body_section(&body), seq_section("insert", &[])].concat();
        let (h, b) = raw_frame(&clash);
        assert_eq!(OpMsg::parse(&h, &b), Err(ProtocolError::SequenceConflictsWithBody("insert".into())));
    }

    #[test]
    fn truncated_sections_are_errors() {
        let body = rawdoc! { "ping": 1, "$db": "a" };
        let full = [body_section(&body), seq_section("documents", &[rawdoc! {"a": 1}])].concat();
        let body_only = body_section(&body).len();
        for cut in (0..full.len()).filter(|c| *c != body_only) {
            let (h, b) = raw_frame(&full[..cut]);
            assert!(OpMsg::parse(&h, &b).is_err(), "cut at {cut} parsed");
        }
        let (h, b) = raw_frame(&full);
        assert!(OpMsg::parse(&h, &b).is_ok());
    }
}
