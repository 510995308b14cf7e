//! The oracle the validation tests judge the byte-level walk by: `bson`'s own reading, shared by every test file.

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
