//! Full BSON validation before a document is trusted.
//!
//! `RawDocument::from_bytes` checks only the length prefix and the trailing NUL; a proxy that trusted that
//! could read a document differently from the server behind it. Every document that enters through this crate is
//! walked once, element by element and level by level, with a nesting cap so that hostile depth cannot exhaust
//! the stack.

use bson::{RawBsonRef, RawDocument};

use crate::ProtocolError;

/// Deepest nesting accepted (the server's default `maxBSONDepth` is 200; it counts the top level too).
pub const MAX_DEPTH: usize = 200;

/// Reads the int32 length prefix of a document starting at `at` and checks it against the bytes available and
/// `max`. Returns the document's length. Nothing is allocated.
pub fn document_len(buf: &[u8], at: usize, max: usize, what: &'static str) -> Result<usize, ProtocolError> {
    let prefix = buf.get(at..at + 4).ok_or(ProtocolError::Truncated(what))?;
    let len = i32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len < 5 {
        return Err(ProtocolError::InvalidBson(format!("{what} length {len} is below the minimum of 5")));
    }
    // Non-negative after the check above.
    let len = len as usize;
    if len > max {
        return Err(ProtocolError::DocumentTooLarge { len, max });
    }
    if buf.len() - at < len {
        return Err(ProtocolError::Truncated(what));
    }
    Ok(len)
}

/// Walks a whole document; on success it is safe to view as `&RawDocument` anywhere.
pub fn validate_document(bytes: &[u8]) -> Result<&RawDocument, ProtocolError> {
    let doc = RawDocument::from_bytes(bytes).map_err(|e| ProtocolError::InvalidBson(e.to_string()))?;
    walk(doc, 1)?;
    Ok(doc)
}

fn walk(doc: &RawDocument, depth: usize) -> Result<(), ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError::InvalidBson(format!("nesting deeper than {MAX_DEPTH} levels")));
    }
    for element in doc.iter() {
        let (_, value) = element.map_err(|e| ProtocolError::InvalidBson(e.to_string()))?;
        match value {
            RawBsonRef::Document(inner) => walk(inner, depth + 1)?,
            RawBsonRef::Array(inner) => {
                let as_doc =
                    RawDocument::from_bytes(inner.as_bytes()).map_err(|e| ProtocolError::InvalidBson(e.to_string()))?;
                walk(as_doc, depth + 1)?
            }
            RawBsonRef::JavaScriptCodeWithScope(code) => walk(code.scope, depth + 1)?,
            _ => {}
        }
    }
    Ok(())
}

/// Documents with more keys than this are checked for duplicates with a hash set; smaller ones by comparing
/// keys pairwise, which is faster for the few keys a command document usually has.
const PAIRWISE_MAX: usize = 16;

/// The first key that repeats at the top level of `doc`. Servers and drivers disagree about which duplicate
/// wins (mongod's parsers take the last, the proxy would read the first), so a document with one can be read
/// two ways and is refused. Linear in the number of keys whatever their values.
pub fn first_duplicate_key(doc: &RawDocument) -> Option<String> {
    // Small documents (nearly all of them) use a buffer on the stack: no allocation per document.
    let mut small: [&str; PAIRWISE_MAX] = [""; PAIRWISE_MAX];
    let mut len = 0;
    let mut large: Option<std::collections::HashSet<&str>> = None;
    for element in doc.iter_elements() {
        let Ok(element) = element else { return None };
        let key = element.key().as_str();
        let repeated = match &mut large {
            Some(set) => !set.insert(key),
            None if len < PAIRWISE_MAX => {
                let seen = small[..len].contains(&key);
                small[len] = key;
                len += 1;
                seen
            }
            None => {
                // The std hasher is keyed per process, so a client cannot pick keys that all collide.
                let mut set: std::collections::HashSet<&str> = small.iter().copied().collect();
                let repeated = !set.insert(key);
                large = Some(set);
                repeated
            }
        };
        if repeated {
            return Some(key.to_owned());
        }
    }
    None
}

/// The first key that repeats within any one document at any depth of `doc` (documents inside arrays
/// included), as `path.key`. Each document is visited once, so the walk is linear in the document's size.
/// Arrays are positional: their own keys are not compared.
pub fn first_duplicate_key_deep(doc: &RawDocument) -> Option<String> {
    deep(doc, 0)
}

fn deep(doc: &RawDocument, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        // Validation refuses such documents before anyone asks; refuse here too rather than recurse on.
        return Some(String::from("(nesting too deep)"));
    }
    if let Some(key) = first_duplicate_key(doc) {
        return Some(key);
    }
    for element in doc.iter_elements() {
        let Ok(element) = element else { return None };
        let inner = match element.value() {
            Ok(RawBsonRef::Document(d)) => deep(d, depth + 1),
            Ok(RawBsonRef::Array(a)) => deep_array(a, depth + 1),
            _ => None,
        };
        if let Some(key) = inner {
            return Some(format!("{}.{key}", element.key().as_str()));
        }
    }
    None
}

fn deep_array(array: &bson::RawArray, depth: usize) -> Option<String> {
    for (i, item) in array.into_iter().enumerate() {
        let inner = match item {
            Ok(RawBsonRef::Document(d)) => deep(d, depth + 1),
            Ok(RawBsonRef::Array(a)) => deep_array(a, depth + 1),
            _ => None,
        };
        if let Some(key) = inner {
            return Some(format!("{i}.{key}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn accepts_nested_documents() {
        let doc = rawdoc! { "a": { "b": [1, 2, { "c": "d" }] } };
        assert!(validate_document(doc.as_bytes()).is_ok());
    }

    #[test]
    fn rejects_bad_utf8_inside_nested_document() {
        let mut bytes = rawdoc! { "a": { "s": "xy" } }.into_bytes();
        let pos = bytes.windows(2).position(|w| w == b"xy").unwrap();
        bytes[pos] = 0xff;
        assert!(matches!(validate_document(&bytes), Err(ProtocolError::InvalidBson(_))));
    }

    #[test]
    fn rejects_inner_length_overrun() {
        let mut bytes = rawdoc! { "a": { "b": 1 } }.into_bytes();
        // The inner document's length prefix sits after the type byte and the key "a\0".
        bytes[7] = 200;
        assert!(validate_document(&bytes).is_err());
    }

    #[test]
    fn rejects_excessive_depth_without_overflowing_the_stack() {
        // Build 10,000 levels of {"a": {...}} by hand.
        let levels = 10_000;
        let mut bytes = vec![5, 0, 0, 0, 0];
        for _ in 0..levels {
            let len = bytes.len() + 4 + 3 + 1;
            let mut outer = Vec::with_capacity(len);
            outer.extend_from_slice(&(len as i32).to_le_bytes());
            outer.push(3);
            outer.extend_from_slice(b"a\0");
            outer.extend_from_slice(&bytes);
            outer.push(0);
            bytes = outer;
        }
        assert!(matches!(validate_document(&bytes), Err(ProtocolError::InvalidBson(m)) if m.contains("nesting")));
    }

    #[test]
    fn document_len_checks_before_taking() {
        let doc = rawdoc! { "a": 1 };
        let bytes = doc.as_bytes();
        assert_eq!(document_len(bytes, 0, 100, "body"), Ok(bytes.len()));
        assert_eq!(document_len(&bytes[..bytes.len() - 1], 0, 100, "body"), Err(ProtocolError::Truncated("body")));
        assert!(matches!(document_len(bytes, 0, 5, "body"), Err(ProtocolError::DocumentTooLarge { .. })));
        assert!(matches!(document_len(&[1, 0, 0, 0, 0], 0, 100, "body"), Err(ProtocolError::InvalidBson(_))));
    }

    #[test]
    fn finds_duplicate_keys() {
        let mut doc = bson::RawDocumentBuf::new();
        doc.append(bson::cstr!("a"), 1);
        doc.append(bson::cstr!("b"), 1);
        doc.append(bson::cstr!("a"), 2);
        assert_eq!(first_duplicate_key(&doc), Some("a".to_owned()));
        assert_eq!(first_duplicate_key(&rawdoc! { "a": 1, "b": 2 }), None);
    }

    fn with_keys(keys: &[&str]) -> bson::RawDocumentBuf {
        let mut doc = bson::RawDocumentBuf::new();
        for k in keys {
            doc.append(bson::raw::CString::try_from(*k).unwrap(), 1);
        }
        doc
    }

    #[test]
    fn finds_duplicates_past_the_pairwise_limit() {
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let mut refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(first_duplicate_key(&with_keys(&refs)), None);
        refs.push("k3");
        assert_eq!(first_duplicate_key(&with_keys(&refs)), Some("k3".into()));
        // The repeat right at the switch from pairwise to hashed.
        let mut at_switch: Vec<&str> = refs[..PAIRWISE_MAX].to_vec();
        at_switch.push("k0");
        assert_eq!(first_duplicate_key(&with_keys(&at_switch)), Some("k0".into()));
    }

    #[test]
    fn finds_duplicates_at_any_depth() {
        let dup = with_keys(&["from", "from"]);
        let lookup = rawdoc! { "aggregate": "c", "pipeline": [{ "$match": {} }, { "$lookup": dup.clone() }] };
        assert_eq!(first_duplicate_key_deep(&lookup), Some("pipeline.1.$lookup.from".into()));
        let nested = rawdoc! { "a": [[{ "b": { "c": dup } }]] };
        assert_eq!(first_duplicate_key_deep(&nested), Some("a.0.0.b.c.from".into()));
        assert_eq!(first_duplicate_key_deep(&rawdoc! { "a": { "x": 1 }, "b": { "x": 1 }, "c": [1, 1] }), None);
    }
}
