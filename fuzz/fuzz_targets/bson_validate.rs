//! BSON validation on arbitrary bytes: never panics, and what it accepts iterates cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantwall_protocol::validate::{first_duplicate_key, validate_document};

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = validate_document(data) else { return };
    assert!(doc.iter().all(|element| element.is_ok()), "validated document has an unreadable element");
    let _ = first_duplicate_key(doc);
});
