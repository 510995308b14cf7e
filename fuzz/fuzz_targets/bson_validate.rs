//! BSON validation on arbitrary bytes: never panics, what it accepts reads cleanly through bson at every depth,
//! and its findings never miss a repeated key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantwall_protocol::validate::{first_duplicate_key, first_duplicate_key_deep, validate_with_findings};

/// The same oracle the protocol crate's tests use: bson's own reading, and the canonical walk's findings.
#[path = "../../protocol/tests/oracle/mod.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    let Ok((doc, findings)) = validate_with_findings(data) else {
        // Refused: bson must refuse it too, or it nests deeper than the cap.
        assert!(!oracle::reference(data), "validation refused a document bson reads");
        return;
    };
    assert!(oracle::reference(data), "validated document has an unreadable element");
    let _ = first_duplicate_key(doc);
    assert!(findings.duplicate_keys() || first_duplicate_key_deep(doc).is_none(), "a repeated key was missed");
    let (duplicate, javascript) = oracle::precise(doc);
    assert!(findings.duplicate_keys() || !duplicate, "a repeated key (array keys included) was missed");
    assert!(findings.javascript() || !javascript, "JavaScript was missed");
});
