//! Rewriting replies before they reach the client.
//!
//! Today: duplicate-key errors on shared collections. `E11000 ... dup key: { tenantId: "globex", email: ... }`
//! and `keyValue` would tell one tenant another tenant's values, so on field-mode namespaces the details are
//! withheld (the code, `keyPattern` and the index name stay, so drivers and apps still see a duplicate-key
//! error).

use bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};

use crate::rewrite::raw::replace_fields;

const DUPLICATE_KEY: i32 = 11000;
const REDACTED: &str = "E11000 duplicate key error (the conflicting value is withheld by tenantwall)";

fn is_duplicate_key(doc: &RawDocument) -> bool {
    matches!(doc.get("code"), Ok(Some(RawBsonRef::Int32(DUPLICATE_KEY))))
}

fn redact_error(doc: &RawDocument) -> RawDocumentBuf {
    replace_fields(doc, &[("errmsg", Some(RawBson::String(REDACTED.into()))), ("keyValue", None)])
}

/// The reply with duplicate-key details removed, or `None` when there are none.
pub fn redact_duplicate_keys(body: &RawDocument) -> Option<RawDocumentBuf> {
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if is_duplicate_key(body) {
        edits.push(("errmsg", Some(RawBson::String(REDACTED.into()))));
        edits.push(("keyValue", None));
    }
    if let Ok(errors) = body.get_array("writeErrors") {
        let docs: Vec<&RawDocument> = errors.into_iter().filter_map(|e| e.ok().and_then(|e| e.as_document())).collect();
        if docs.iter().any(|d| is_duplicate_key(d)) {
            let mut out = RawArrayBuf::new();
            for doc in docs {
                if is_duplicate_key(doc) {
                    out.push(redact_error(doc));
                } else {
                    out.push(doc);
                }
            }
            edits.push(("writeErrors", Some(RawBson::Array(out))));
        }
    }
    (!edits.is_empty()).then(|| replace_fields(body, &edits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn duplicate_key_values_are_withheld() {
        let reply = rawdoc! {
            "n": 0,
            "writeErrors": [
                { "index": 0, "code": 11000, "errmsg": "E11000 duplicate key error collection: app.users index: email_1 dup key: { email: \"ceo@globex.test\" }", "keyPattern": { "email": 1 }, "keyValue": { "email": "ceo@globex.test" } },
                { "index": 1, "code": 121, "errmsg": "Document failed validation" },
            ],
            "ok": 1.0,
        };
        let out = redact_duplicate_keys(&reply).unwrap();
        let text = format!("{:?}", bson::Document::try_from(out.as_ref()).unwrap());
        assert!(!text.contains("globex"), "{text}");
        let errors = out.get_array("writeErrors").unwrap();
        let first = errors.get_document(0).unwrap();
        assert_eq!(first.get_i32("code").unwrap(), 11000);
        assert!(first.get_document("keyPattern").is_ok());
        assert_eq!(errors.get_document(1).unwrap().get_str("errmsg").unwrap(), "Document failed validation");
        assert!(redact_duplicate_keys(&rawdoc! { "n": 1, "ok": 1.0 }).is_none());
    }
}
