//! The oracle the validation tests judge the byte-level walk by: `bson`'s own reading, shared by every test file
//! and by the `bson_validate` fuzz target (which includes this file by path).

// Not every file that includes this module uses every function.
#![allow(dead_code)]

use bson::{RawBsonRef, RawDocument};
use tenantwall_protocol::validate::MAX_DEPTH;

/// What validation used to be: `bson`'s iterator, every value read, at every depth (code with scope included).
pub fn reference(bytes: &[u8]) -> bool {
    fn walk(doc: &RawDocument, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        doc.iter().all(|element| match element {
            Err(_) => false,
            Ok((_, RawBsonRef::Document(d))) => walk(d, depth + 1),
            Ok((_, RawBsonRef::Array(a))) => RawDocument::from_bytes(a.as_bytes()).is_ok_and(|d| walk(d, depth + 1)),
            Ok((_, RawBsonRef::JavaScriptCodeWithScope(c))) => walk(c.scope, depth + 1),
            Ok(_) => true,
        })
    }
    RawDocument::from_bytes(bytes).is_ok_and(|d| walk(d, 1))
}

/// Whether any document or array at any depth repeats a key, or holds JavaScript (as the proxy's canonical
/// walk looks for them: keys of arrays included, the scope of code with scope not entered).
pub fn precise(doc: &RawDocument) -> (bool, bool) {
    let mut keys = Vec::new();
    let (mut duplicate, mut javascript) = (false, false);
    for element in doc.iter_elements().filter_map(Result::ok) {
        let key = element.key().as_str();
        duplicate |= keys.contains(&key);
        keys.push(key);
        javascript |= ["$where", "$function", "$accumulator"].contains(&key);
        let inner = match element.value() {
            Ok(RawBsonRef::Document(d)) => precise(d),
            Ok(RawBsonRef::Array(a)) => RawDocument::from_bytes(a.as_bytes()).map(precise).unwrap_or_default(),
            Ok(RawBsonRef::JavaScriptCode(_) | RawBsonRef::JavaScriptCodeWithScope(_)) => (false, true),
            _ => (false, false),
        };
        duplicate |= inner.0;
        javascript |= inner.1;
    }
    (duplicate, javascript)
}
