//! The legacy OP_QUERY / OP_REPLY pair, only as far as the handshake needs it.
//!
//! Older drivers and the Go driver still send their first `hello`/`isMaster` as OP_QUERY on `admin.$cmd` and
//! expect the answer as OP_REPLY. Nothing else about the legacy protocol is supported: the proxy refuses other
//! legacy opcodes before they reach this module.

use std::fmt;

use bson::{RawDocument, RawDocumentBuf};
use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take_till;
use nom::number::complete::{le_i32, le_i64, le_u32};

use crate::header::backfill_len;
use crate::validate::{document_len, validate_document};
use crate::{MsgHeader, OpCode, ProtocolError, HEADER_LEN, MAX_COMMAND_SIZE};

type NomErr<'a> = nom::error::Error<&'a [u8]>;

/// Longest `fullCollectionName` accepted (a namespace is at most 255 bytes on the server).
const MAX_NAMESPACE_LEN: usize = 255;

/// A parsed OP_QUERY.
#[derive(Clone, PartialEq)]
pub struct OpQuery {
    pub flags: u32,
    /// `"<db>.<collection>"`; commands use `"<db>.$cmd"`.
    pub full_collection_name: String,
    pub number_to_skip: i32,
    pub number_to_return: i32,
    query: Bytes,
    return_fields: Option<Bytes>,
}

impl OpQuery {
    /// Parses the OP_QUERY whose whole frame (header included) is `frame`.
    pub fn parse(header: &MsgHeader, frame: &Bytes) -> Result<OpQuery, ProtocolError> {
        if header.op_code != OpCode::QUERY {
            return Err(ProtocolError::UnsupportedOpCode(header.op_code.0));
        }
        let rest = frame.get(HEADER_LEN..).ok_or(ProtocolError::Truncated("OP_QUERY"))?;
        let truncated = |_| ProtocolError::Truncated("OP_QUERY");
        let (input, flags) = le_u32::<_, NomErr>(rest).map_err(truncated)?;
        let (input, name) = take_till::<_, _, NomErr>(|b| b == 0)(input).map_err(truncated)?;
        if input.is_empty() {
            return Err(ProtocolError::Truncated("OP_QUERY collection name"));
        }
        if name.len() > MAX_NAMESPACE_LEN {
            return Err(ProtocolError::Malformed("OP_QUERY collection name too long"));
        }
        let full_collection_name = std::str::from_utf8(name)
            .map_err(|_| ProtocolError::Malformed("OP_QUERY collection name is not UTF-8"))?
            .to_owned();
        let input = &input[1..];
        let (input, number_to_skip) = le_i32::<_, NomErr>(input).map_err(truncated)?;
        let (input, number_to_return) = le_i32::<_, NomErr>(input).map_err(truncated)?;
        let query_at = frame.len() - input.len();
        let query_len = document_len(frame, query_at, MAX_COMMAND_SIZE, "OP_QUERY query")?;
        let query = frame.slice(query_at..query_at + query_len);
        validate_document(&query)?;
        let fields_at = query_at + query_len;
        let return_fields = if fields_at < frame.len() {
            let len = document_len(frame, fields_at, MAX_COMMAND_SIZE, "OP_QUERY returnFieldsSelector")?;
            if fields_at + len != frame.len() {
                return Err(ProtocolError::Malformed("trailing bytes after OP_QUERY"));
            }
            let fields = frame.slice(fields_at..fields_at + len);
            validate_document(&fields)?;
            Some(fields)
        } else {
            None
        };
        Ok(OpQuery { flags, full_collection_name, number_to_skip, number_to_return, query, return_fields })
    }

    /// The query document (for a command, the command itself, possibly wrapped as `{$query: cmd, ...}`).
    pub fn query(&self) -> &RawDocument {
        view(&self.query)
    }

    /// The optional field selector.
    pub fn return_fields(&self) -> Option<&RawDocument> {
        self.return_fields.as_ref().map(view)
    }

    /// The command document: the query, or its `$query` / `query` member when the driver wrapped it to carry a
    /// read preference.
    pub fn command(&self) -> &RawDocument {
        let query = self.query();
        let first = query.iter_elements().next().and_then(Result::ok).map(|e| e.key().as_str());
        match first {
            Some(wrapper @ ("$query" | "query")) => query.get_document(wrapper).unwrap_or(query),
            _ => query,
        }
    }

    /// Encodes a frame (used by tests and by tools that speak to the proxy).
    pub fn encode(&self, request_id: i32) -> Result<BytesMut, ProtocolError> {
        let mut out = BytesMut::new();
        MsgHeader { message_length: 0, request_id, response_to: 0, op_code: OpCode::QUERY }.write(&mut out);
        out.put_u32_le(self.flags);
        out.put_slice(self.full_collection_name.as_bytes());
        out.put_u8(0);
        out.put_i32_le(self.number_to_skip);
        out.put_i32_le(self.number_to_return);
        out.put_slice(&self.query);
        if let Some(fields) = &self.return_fields {
            out.put_slice(fields);
        }
        let len = out.len();
        backfill_len(&mut out, 0, len)?;
        Ok(out)
    }

    /// A command query on `<db>.$cmd` as legacy drivers send it.
    pub fn command_on(db: &str, command: RawDocumentBuf) -> Self {
        Self {
            flags: 0,
            full_collection_name: format!("{db}.$cmd"),
            number_to_skip: 0,
            number_to_return: -1,
            query: Bytes::from(command.into_bytes()),
            return_fields: None,
        }
    }
}

impl fmt::Debug for OpQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpQuery").field("ns", &self.full_collection_name).field("flags", &self.flags).finish()
    }
}

/// Views validated bytes as a document (see `msg::raw_view` for why this cannot fail).
fn view(bytes: &Bytes) -> &RawDocument {
    RawDocument::from_bytes(bytes.as_ref()).expect("stored OP_QUERY documents are validated when stored")
}

/// An OP_REPLY.
#[derive(Clone, PartialEq)]
pub struct OpReply {
    pub response_flags: u32,
    pub cursor_id: i64,
    pub starting_from: i32,
    documents: Vec<Bytes>,
}

impl OpReply {
    /// QueryFailure: the single document is an error.
    pub const QUERY_FAILURE: u32 = 1 << 1;

    /// A reply carrying one document, as a handshake or a command error needs.
    pub fn single(document: RawDocumentBuf) -> Self {
        Self { response_flags: 0, cursor_id: 0, starting_from: 0, documents: vec![Bytes::from(document.into_bytes())] }
    }

    /// The returned documents.
    pub fn documents(&self) -> impl ExactSizeIterator<Item = &RawDocument> + '_ {
        self.documents.iter().map(view)
    }

    /// Encodes a whole frame answering `response_to`.
    pub fn encode(&self, request_id: i32, response_to: i32) -> Result<BytesMut, ProtocolError> {
        let mut out = BytesMut::new();
        MsgHeader { message_length: 0, request_id, response_to, op_code: OpCode::REPLY }.write(&mut out);
        out.put_u32_le(self.response_flags);
        out.put_i64_le(self.cursor_id);
        out.put_i32_le(self.starting_from);
        let count = i32::try_from(self.documents.len()).map_err(|_| ProtocolError::Malformed("too many documents"))?;
        out.put_i32_le(count);
        for doc in &self.documents {
            out.put_slice(doc);
        }
        let len = out.len();
        backfill_len(&mut out, 0, len)?;
        Ok(out)
    }

    /// Parses the OP_REPLY whose whole frame is `frame`.
    pub fn parse(header: &MsgHeader, frame: &Bytes) -> Result<OpReply, ProtocolError> {
        if header.op_code != OpCode::REPLY {
            return Err(ProtocolError::UnsupportedOpCode(header.op_code.0));
        }
        let rest = frame.get(HEADER_LEN..).ok_or(ProtocolError::Truncated("OP_REPLY"))?;
        let truncated = |_| ProtocolError::Truncated("OP_REPLY");
        let (input, response_flags) = le_u32::<_, NomErr>(rest).map_err(truncated)?;
        let (input, cursor_id) = le_i64::<_, NomErr>(input).map_err(truncated)?;
        let (input, starting_from) = le_i32::<_, NomErr>(input).map_err(truncated)?;
        let (input, number_returned) = le_i32::<_, NomErr>(input).map_err(truncated)?;
        let mut pos = frame.len() - input.len();
        let mut documents = Vec::new();
        while pos < frame.len() {
            let len = document_len(frame, pos, MAX_COMMAND_SIZE, "OP_REPLY document")?;
            let doc = frame.slice(pos..pos + len);
            validate_document(&doc)?;
            documents.push(doc);
            pos += len;
        }
        if usize::try_from(number_returned).ok() != Some(documents.len()) {
            return Err(ProtocolError::Malformed("OP_REPLY numberReturned does not match its documents"));
        }
        Ok(OpReply { response_flags, cursor_id, starting_from, documents })
    }
}

impl fmt::Debug for OpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpReply")
            .field("flags", &self.response_flags)
            .field("documents", &self.documents.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn legacy_hello_round_trips_and_unwraps_query() {
        let wrapped =
            rawdoc! { "$query": { "isMaster": 1, "helloOk": true }, "$readPreference": { "mode": "primaryPreferred" } };
        let q = OpQuery::command_on("admin", wrapped);
        let bytes = q.encode(3).unwrap().freeze();
        let header = MsgHeader::read(&bytes).unwrap();
        let parsed = OpQuery::parse(&header, &bytes).unwrap();
        assert_eq!(parsed, q);
        assert_eq!(parsed.full_collection_name, "admin.$cmd");
        assert_eq!(parsed.command().iter_elements().next().unwrap().unwrap().key().as_str(), "isMaster");
    }

    #[test]
    fn reply_round_trips() {
        let reply = OpReply::single(rawdoc! { "ok": 1.0, "msg": "isdbgrid" });
        let bytes = reply.encode(9, 3).unwrap().freeze();
        let header = MsgHeader::read(&bytes).unwrap();
        assert_eq!(header.response_to, 3);
        let parsed = OpReply::parse(&header, &bytes).unwrap();
        assert_eq!(parsed, reply);
        assert_eq!(parsed.documents().next().unwrap().get_str("msg").unwrap(), "isdbgrid");
    }

    #[test]
    fn truncated_query_is_an_error() {
        let q = OpQuery::command_on("admin", rawdoc! { "hello": 1 });
        let bytes = q.encode(3).unwrap().freeze();
        for cut in HEADER_LEN..bytes.len() {
            let frame = bytes.slice(..cut);
            let header = MsgHeader::read(&frame).unwrap();
            assert!(OpQuery::parse(&header, &frame).is_err(), "cut at {cut} parsed");
        }
    }
}
