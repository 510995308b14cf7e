//! Editing raw BSON without decoding it: copy untouched elements byte for byte, build only what changes.

use bson::raw::CStr;
use bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use bytes::Bytes;
use tenantwall_protocol::fields::Fields;
use tenantwall_protocol::validate::{Element, Elements};
use tenantwall_protocol::{OpMsg, Sequence};

use super::{Denial, Result};
use crate::error::ErrorCode;

fn malformed(what: impl Into<String>) -> Denial {
    Denial::new(ErrorCode::FAILED_TO_PARSE, what)
}

/// `doc.get(key)` for documents that passed validation (or were built with `bson`), without re-reading every
/// key as UTF-8: the keys are compared as bytes, and a document, string or number value is viewed directly.
/// Anything else, and any bytes the scan cannot read, is left to `bson`'s own lookup. A parsed body
/// ([`OpMsg::body_fields`]) is read through its index of top-level elements. Inlined, so that a literal `key`
/// finds its slot in the index when compiled, not on every call.
#[inline(always)]
pub fn get<'a>(
    doc: impl Into<Fields<'a>>,
    key: &str,
) -> std::result::Result<Option<RawBsonRef<'a>>, bson::error::Error> {
    let fields = doc.into();
    let found = match fields.field(key.as_bytes()) {
        Some(Some(found)) => found,
        Some(None) => return Ok(None),
        None => return fields.doc().get(key),
    };
    match view(found) {
        Some(value) => Ok(Some(value)),
        None => fields.doc().get(key),
    }
}

/// An element's value viewed directly, for a document, string or number value; `None` for any other type (or
/// bytes that do not read as one), which `bson` then reads.
pub fn view(element: Element<'_>) -> Option<RawBsonRef<'_>> {
    let value = element.value;
    match element.kind {
        0x03 => RawDocument::from_bytes(value).ok().map(RawBsonRef::Document),
        0x02 => value
            .get(4..value.len().saturating_sub(1))
            .and_then(|text| std::str::from_utf8(text).ok())
            .map(RawBsonRef::String),
        0x10 => value.try_into().ok().map(|b| RawBsonRef::Int32(i32::from_le_bytes(b))),
        0x12 => value.try_into().ok().map(|b| RawBsonRef::Int64(i64::from_le_bytes(b))),
        0x01 => value.try_into().ok().map(|b| RawBsonRef::Double(f64::from_le_bytes(b))),
        _ => None,
    }
}

/// The document under `key` ([`get`]), `None` when `key` is absent or holds something else.
pub fn get_document<'a>(doc: impl Into<Fields<'a>>, key: &str) -> Option<&'a RawDocument> {
    match get(doc, key) {
        Ok(Some(RawBsonRef::Document(found))) => Some(found),
        _ => None,
    }
}

/// How many items the array under `key` holds, `None` when `key` is absent or holds something else: the
/// answer of `doc.get_array(key)` and counting its items, read as bytes. Bytes the scan cannot read are left to
/// `bson`.
pub fn array_len(doc: &RawDocument, key: &str) -> Option<usize> {
    let mut elements = Elements::new(doc);
    let counted = match elements.find(|e| e.key == key.as_bytes()) {
        Some(found) if found.kind == 0x04 => RawDocument::from_bytes(found.value).ok().and_then(|array| {
            let mut items = Elements::new(array);
            let n = items.by_ref().count();
            items.complete().then_some(n)
        }),
        Some(_) => return None,
        None if elements.complete() => return None,
        None => None,
    };
    counted.or_else(|| doc.get_array(key).ok().map(|array| array.into_iter().count()))
}

/// `doc` with top-level fields replaced (`Some`) or dropped (`None`); fields named in `edits` but absent from
/// `doc` are appended. Order is preserved, so the command name stays first. Untouched elements are copied as
/// bytes; only the edited values are serialised.
pub fn replace_fields(doc: &RawDocument, edits: &[(&str, Option<RawBson>)]) -> RawDocumentBuf {
    let mut used = [false; 8];
    if edits.len() > used.len() {
        return replace_fields_decoded(doc, edits);
    }
    // Each edited value, serialised once as a whole element (type byte, key, NUL, value), into a buffer of
    // about the right size (documents and arrays, the large edits, exactly).
    let sized = |value: &RawBson| match value {
        RawBson::Document(d) => d.as_bytes().len(),
        RawBson::Array(a) => a.as_bytes().len(),
        RawBson::String(s) => 4 + s.len() + 1,
        _ => 16,
    };
    let mut edited =
        Vec::with_capacity(edits.iter().map(|(key, value)| 2 + key.len() + value.as_ref().map_or(0, sized)).sum());
    let mut spans: [(usize, usize); 8] = [(0, 0); 8];
    for (i, (key, value)) in edits.iter().enumerate() {
        if let (Some(value), Ok(key)) = (value, <&CStr>::try_from(*key)) {
            let start = edited.len();
            write_element(key, value, &mut edited);
            spans[i] = (start, edited.len());
        }
    }
    let edited = edited.as_slice();
    let mut out = Vec::with_capacity(doc.as_bytes().len() + edited.len());
    out.extend_from_slice(&[0; 4]);
    let mut elements = Elements::new(doc);
    for element in elements.by_ref() {
        match edits.iter().position(|(k, _)| k.as_bytes() == element.key) {
            Some(i) => {
                used[i] = true;
                out.extend_from_slice(edited.get(spans[i].0..spans[i].1).unwrap_or_default());
            }
            None => out.extend_from_slice(element.bytes),
        }
    }
    // A document that cannot be read element by element as bytes (never one that passed validation) is
    // rebuilt through `bson`, which skips what it cannot read, as before.
    if !elements.complete() {
        return replace_fields_decoded(doc, edits);
    }
    for (i, span) in spans.iter().enumerate().take(edits.len()) {
        if !used[i] {
            out.extend_from_slice(edited.get(span.0..span.1).unwrap_or_default());
        }
    }
    out.push(0);
    finish(out).unwrap_or_else(|| replace_fields_decoded(doc, edits))
}

/// Appends `key: value` as one element. Documents, arrays, strings and the common scalars are written
/// directly; other types go through `bson`'s builder.
fn write_element(key: &CStr, value: &RawBson, out: &mut Vec<u8>) {
    let name = key.as_str().as_bytes();
    let head = |kind: u8, out: &mut Vec<u8>| {
        out.push(kind);
        out.extend_from_slice(name);
        out.push(0);
    };
    match value {
        RawBson::Document(d) => {
            head(0x03, out);
            out.extend_from_slice(d.as_bytes());
        }
        RawBson::Array(a) => {
            head(0x04, out);
            out.extend_from_slice(a.as_bytes());
        }
        RawBson::String(s) if i32::try_from(s.len() + 1).is_ok() => {
            head(0x02, out);
            out.extend_from_slice(&((s.len() + 1) as i32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        RawBson::Int32(n) => {
            head(0x10, out);
            out.extend_from_slice(&n.to_le_bytes());
        }
        RawBson::Int64(n) => {
            head(0x12, out);
            out.extend_from_slice(&n.to_le_bytes());
        }
        RawBson::Boolean(b) => {
            head(0x08, out);
            out.push(u8::from(*b));
        }
        other => {
            let mut one = RawDocumentBuf::new();
            one.append(key, other.clone());
            let bytes = one.as_bytes();
            out.extend_from_slice(bytes.get(4..bytes.len() - 1).unwrap_or_default());
        }
    }
}

/// Writes `len` as an int32 at `at` (a length placeholder); `None` when it does not fit.
pub fn backfill(out: &mut [u8], at: usize, len: usize) -> Option<()> {
    let len = i32::try_from(len).ok()?;
    out.get_mut(at..at.checked_add(4)?)?.copy_from_slice(&len.to_le_bytes());
    Some(())
}

/// Back-fills the length of a document written as bytes; `None` when it would not fit BSON's int32 length.
pub fn finish(mut out: Vec<u8>) -> Option<RawDocumentBuf> {
    let len = out.len();
    backfill(&mut out, 0, len)?;
    RawDocumentBuf::from_bytes(out).ok()
}

/// [`replace_fields`] through `bson`'s element reader and builder.
fn replace_fields_decoded(doc: &RawDocument, edits: &[(&str, Option<RawBson>)]) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    let mut used = vec![false; edits.len()];
    for element in doc.iter_elements().filter_map(|e| e.ok()) {
        let key = element.key();
        match edits.iter().position(|(k, _)| *k == key.as_str()) {
            Some(i) => {
                used[i] = true;
                if let Some(value) = &edits[i].1 {
                    out.append(key, value.clone());
                }
            }
            None => {
                if let Ok(value) = element.value() {
                    out.append(key, value);
                }
            }
        }
    }
    for (i, (key, value)) in edits.iter().enumerate() {
        if let (false, Some(value), Ok(key)) = (used[i], value, <&CStr>::try_from(*key)) {
            out.append(key, value.clone());
        }
    }
    out
}

/// `doc` with one more top-level field at the end.
pub fn append_field(doc: &RawDocument, key: &str, value: RawBsonRef<'_>) -> Result<RawDocumentBuf> {
    let key = <&CStr>::try_from(key).map_err(|_| malformed("field name contains NUL"))?;
    let mut out = doc.to_owned();
    out.append(key, value);
    Ok(out)
}

/// The documents of an array value.
pub fn array_documents<'a>(value: RawBsonRef<'a>, what: &str) -> Result<Vec<&'a RawDocument>> {
    let RawBsonRef::Array(array) = value else { return Err(malformed(format!("{what} must be an array"))) };
    array
        .into_iter()
        .map(|v| match v {
            Ok(RawBsonRef::Document(d)) => Ok(d),
            _ => Err(malformed(format!("{what} must hold documents"))),
        })
        .collect()
}

/// The sequence `field` of `msg`, refusing a message with more than one: the parser refuses a repeated
/// sequence, but a message built with one would have its second forwarded as it came by any rewrite that reads
/// the first. Rewrites read a command's sequence through this.
pub fn only_sequence<'m>(msg: &'m OpMsg, field: &str) -> Result<Option<&'m Sequence>> {
    let mut named = msg.sequences().iter().filter(|s| s.identifier() == field);
    match (named.next(), named.next()) {
        (first, None) => Ok(first),
        _ => Err(malformed(format!("more than one {field} document sequence"))),
    }
}

/// The documents of a command's array field, wherever it travels (body array or kind-1 sequence). Having it in
/// both places is refused.
pub fn logical_array<'m>(msg: &'m OpMsg, field: &str) -> Result<Vec<&'m RawDocument>> {
    let in_body = msg.body().get(field).ok().flatten();
    match (only_sequence(msg, field)?, in_body) {
        (Some(_), Some(_)) => Err(malformed(format!("{field} given both in the body and as a document sequence"))),
        (Some(seq), None) => Ok(seq.documents().collect()),
        (None, Some(value)) => array_documents(value, field),
        (None, None) => Ok(Vec::new()),
    }
}

/// `msg` with its array `field` replaced by `docs`, in the place the client used (sequence or body), and body
/// fields edited by `body_edits`.
pub fn with_logical_array(
    msg: &OpMsg,
    field: &str,
    docs: Vec<Bytes>,
    body_edits: &[(&str, Option<RawBson>)],
) -> Result<OpMsg> {
    let invalid = |e: tenantwall_protocol::ProtocolError| malformed(e.to_string());
    if msg.sequence(field).is_some() {
        let body = replace_fields(msg.body(), body_edits);
        let mut sequences = Vec::with_capacity(msg.sequences().len());
        let mut docs = Some(docs);
        for seq in msg.sequences() {
            match (seq.identifier() == field, docs.take()) {
                (true, Some(docs)) => sequences.push(Sequence::from_bytes(field, docs).map_err(invalid)?),
                (true, None) => return Err(malformed(format!("more than one {field} document sequence"))),
                (false, unused) => {
                    docs = unused;
                    sequences.push(seq.clone());
                }
            }
        }
        return Ok(OpMsg::with_sequences(msg.flags, body, sequences));
    }
    let mut array = RawArrayBuf::new();
    for doc in &docs {
        let doc = RawDocument::from_bytes(doc.as_ref()).map_err(|e| malformed(e.to_string()))?;
        array.push(doc);
    }
    let mut edits: Vec<(&str, Option<RawBson>)> = body_edits.to_vec();
    edits.push((field, Some(RawBson::Array(array))));
    Ok(OpMsg::with_sequences(msg.flags, replace_fields(msg.body(), &edits), msg.sequences().to_vec()))
}

/// `msg` with the collection in its first field renamed to `real` (`None` when it already is).
pub fn rename_collection(msg: &OpMsg, visible: &str, real: &str) -> Option<OpMsg> {
    if visible == real {
        return None;
    }
    let body = msg.body();
    let name = super::first_key(body).to_owned();
    let body = replace_fields(body, &[(name.as_str(), Some(RawBson::String(real.to_owned())))]);
    Some(OpMsg::with_sequences(msg.flags, body, msg.sequences().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    /// The byte-level lookups answer what `bson`'s do.
    #[test]
    fn array_len_and_get_document_agree_with_bson() {
        let doc = rawdoc! {
            "cursor": { "id": 0i64, "firstBatch": [{ "_id": 1 }, { "_id": 2 }, 3], "empty": [] },
            "writeErrors": "not an array",
            "ok": 1.0,
        };
        let cursor = get_document(&doc, "cursor").unwrap();
        assert_eq!(cursor, doc.get_document("cursor").unwrap());
        assert_eq!(get_document(&doc, "ok"), None);
        assert_eq!(get_document(&doc, "missing"), None);
        for key in ["firstBatch", "empty", "id", "missing"] {
            let expected = cursor.get_array(key).ok().map(|a| a.into_iter().count());
            assert_eq!(array_len(cursor, key), expected, "{key}");
        }
        assert_eq!(array_len(&doc, "writeErrors"), None);
    }

    #[test]
    fn replace_keeps_order_and_appends_missing() {
        let doc = rawdoc! { "find": "c", "filter": { "a": 1 }, "$db": "app" };
        let out = replace_fields(
            &doc,
            &[("filter", Some(RawBson::Int32(5))), ("$db", None), ("limit", Some(RawBson::Int32(1)))],
        );
        assert_eq!(out, rawdoc! { "find": "c", "filter": 5, "limit": 1 });
    }

    /// The body of a message parsed from `body`'s frame (so that it carries the index validation made).
    fn parsed(body: RawDocumentBuf) -> OpMsg {
        let frame = OpMsg::new(tenantwall_protocol::MsgFlags::default(), body).encode(1, 0).unwrap().freeze();
        match tenantwall_protocol::decode(frame).unwrap().message {
            tenantwall_protocol::Message::Msg(msg) => msg,
            other => panic!("{other:?}"),
        }
    }

    /// Every top-level lookup through the message's index answers what a scan of its body answers.
    fn index_agrees(msg: &OpMsg) {
        let (indexed, scanned) = (msg.body_fields(), Fields::from(msg.body()));
        let mut keys = Vec::new();
        scanned.all_keys(|k| {
            keys.push(k);
            true
        });
        let known = tenantwall_protocol::fields::KNOWN;
        for key in keys.iter().copied().chain([&b"absent"[..], b"filte"]).chain(known) {
            let (a, b) = (indexed.field(key), scanned.field(key));
            assert_eq!(a.map(|e| e.map(|e| e.bytes)), b.map(|e| e.map(|e| e.bytes)), "{key:?}");
            assert_eq!(indexed.unique_field_span(key), scanned.unique_field_span(key), "{key:?}");
            assert_eq!(indexed.occurrences(key), scanned.occurrences(key), "{key:?}");
        }
        let mut listed = Vec::new();
        indexed.all_keys(|k| {
            listed.push(k);
            true
        });
        assert_eq!(listed, keys);
    }

    #[test]
    fn fields_written_in_place_equal_replaced_ones() {
        let doc = rawdoc! { "find": "c", "filter": { "a": 1 }, "$db": "app" };
        let value = rawdoc! { "x": [1, "y"] };
        let write = |out: &mut Vec<u8>| {
            out.extend_from_slice(value.as_bytes());
            Some(())
        };
        let built = OpMsg::new(tenantwall_protocol::MsgFlags::default(), doc.clone());
        for msg in [built, parsed(doc.clone())] {
            // Replaced and appended, keys the index notes by name among them.
            for key in ["filter", "find", "$db", "absent", "lsid", "collation", "maxTimeMS"] {
                let edits = [(key, Some(RawBson::Document(value.clone())))];
                let written = msg.with_body_field(key, 0x03, value.as_bytes().len(), write).unwrap();
                assert_eq!(written.body(), replace_fields(&doc, &edits).as_ref(), "{key}");
                index_agrees(&written);
                // And again, on the body written with a moved index.
                let again = written.with_body_field("find", 0x03, 0, write).unwrap();
                index_agrees(&again);
            }
            assert!(msg.with_body_field("filter", 0x03, 0, |_| None).is_none());
        }
        let mut repeated = doc.clone();
        repeated.append(bson::cstr!("filter"), 1);
        assert!(parsed(repeated).with_body_field("filter", 0x03, 0, write).is_none());
        // A body at the index's capacity: appending makes the index unknown, never wrong.
        let mut full = RawDocumentBuf::new();
        for i in 0..tenantwall_protocol::fields::TOP_LEVEL_MAX {
            full.append(bson::raw::CString::try_from(format!("k{i}")).unwrap(), i as i32);
        }
        let full = parsed(full);
        index_agrees(&full.with_body_field("k3", 0x03, 0, write).unwrap());
        index_agrees(&full.with_body_field("k99", 0x03, 0, write).unwrap());
        // One short of capacity: the appended element is the last the index holds.
        let mut almost = RawDocumentBuf::new();
        for i in 0..tenantwall_protocol::fields::TOP_LEVEL_MAX - 1 {
            almost.append(bson::raw::CString::try_from(format!("k{i}")).unwrap(), i as i32);
        }
        index_agrees(&parsed(almost).with_body_field("filter", 0x03, 0, write).unwrap());
        // Appended keys of the longest length the index holds, and one longer.
        for len in [255, 256] {
            index_agrees(&parsed(doc.clone()).with_body_field(&"k".repeat(len), 0x03, 0, write).unwrap());
        }
        // A replacement that moves a later element past the offsets the index reaches, and back.
        let mut near_the_end = rawdoc! { "find": "c", "filter": { "a": 1 } };
        // `$db` starts at 65,496, within the offsets the index reaches, and past them once `filter` grows.
        near_the_end.append(bson::cstr!("pad"), "x".repeat(65_450));
        near_the_end.append(bson::cstr!("$db"), "app");
        let near_the_end = parsed(near_the_end);
        assert!(near_the_end.body_fields().is_indexed());
        let larger = rawdoc! { "a": "y".repeat(100) };
        let grown = near_the_end
            .with_body_field("filter", 0x03, larger.as_bytes().len(), |out| {
                out.extend_from_slice(larger.as_bytes());
                Some(())
            })
            .unwrap();
        assert!(!grown.body_fields().is_indexed());
        index_agrees(&grown);
        index_agrees(&grown.with_body_field("filter", 0x03, 0, write).unwrap());
    }

    #[test]
    fn written_elements_equal_built_ones() {
        let doc = rawdoc! { "find": "c", "filter": { "a": 1 }, "$db": "app" };
        let values = [
            RawBson::Document(rawdoc! { "x": [1, "y"] }),
            RawBson::Array({
                let mut array = RawArrayBuf::new();
                array.push(1);
                array.push(rawdoc! { "z": null });
                array
            }),
            RawBson::String("ü".into()),
            RawBson::Int32(-1),
            RawBson::Int64(1 << 40),
            RawBson::Boolean(true),
            RawBson::Double(0.5),
            RawBson::Null,
        ];
        for value in values {
            let edits = [("filter", Some(value.clone())), ("more", Some(value.clone()))];
            assert_eq!(replace_fields(&doc, &edits), replace_fields_decoded(&doc, &edits), "{value:?}");
        }
    }
}
