//! BSON validation on arbitrary bytes: never panics, what it accepts reads cleanly through bson at every depth,
//! and its findings never miss a repeated key.
#![no_main]

use bson::{RawBsonRef, RawDocument};
use libfuzzer_sys::fuzz_target;
use tenantwall_protocol::validate::{first_duplicate_key, first_duplicate_key_deep, validate_with_findings};

fn reads_cleanly(doc: &RawDocument) -> bool {
    doc.iter().all(|element| match element {
        Err(_) => false,
        Ok((_, RawBsonRef::Document(d))) => reads_cleanly(d),
        Ok((_, RawBsonRef::Array(a))) => RawDocument::from_bytes(a.as_bytes()).is_ok_and(reads_cleanly),
        Ok((_, RawBsonRef::JavaScriptCodeWithScope(c))) => reads_cleanly(c.scope),
        Ok(_) => true,
    })
}

/// Whether any document or array at any depth repeats a key or holds JavaScript, as the canonical walk in
/// `engine::decide` looks: array keys compared like any document's, code with scope not entered.
fn precise(doc: &RawDocument) -> (bool, bool) {
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

fn reads_within(doc: &RawDocument, depth: usize) -> bool {
    depth <= tenantwall_protocol::validate::MAX_DEPTH
        && doc.iter().all(|element| match element {
            Err(_) => false,
            Ok((_, RawBsonRef::Document(d))) => reads_within(d, depth + 1),
            Ok((_, RawBsonRef::Array(a))) => RawDocument::from_bytes(a.as_bytes()).is_ok_and(|d| reads_within(d, depth + 1)),
            Ok((_, RawBsonRef::JavaScriptCodeWithScope(c))) => reads_within(c.scope, depth + 1),
            Ok(_) => true,
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok((doc, findings)) = validate_with_findings(data) else {
        // Refused: bson must refuse it too, or it nests deeper than the cap.
        assert!(
            !RawDocument::from_bytes(data).is_ok_and(|d| reads_within(d, 1)),
            "validation refused a document bson reads"
        );
        return;
    };
    assert!(reads_cleanly(doc), "validated document has an unreadable element");
    let _ = first_duplicate_key(doc);
    assert!(findings.duplicate_keys() || first_duplicate_key_deep(doc).is_none(), "a repeated key was missed");
    let (duplicate, javascript) = precise(doc);
    assert!(findings.duplicate_keys() || !duplicate, "a repeated key (array keys included) was missed");
    assert!(findings.javascript() || !javascript, "JavaScript was missed");
});
