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

fuzz_target!(|data: &[u8]| {
    let Ok((doc, findings)) = validate_with_findings(data) else { return };
    assert!(reads_cleanly(doc), "validated document has an unreadable element");
    let _ = first_duplicate_key(doc);
    assert!(findings.duplicate_keys() || first_duplicate_key_deep(doc).is_none(), "a repeated key was missed");
});
