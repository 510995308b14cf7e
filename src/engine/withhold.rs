//! Backend errors on namespaces other tenants share: what the server says about the data is withheld.
//!
//! A server error can quote any document it touched: a 2dsphere index build prints the whole document (16755),
//! a text index quotes a `language_override` value (17262), E11000 names the conflicting key and `keyValue`
//! holds it, `errInfo` of a validation failure holds the failing document. On a shared collection those
//! documents may be another tenant's. So errors keep what drivers act on — `ok`, `code`, `codeName`,
//! `errorLabels`, `index` of a write error — and their text is replaced by the proxy's own wording; details
//! (`errInfo`, `keyValue`) are dropped. Only codes known never to echo data keep their text.
//!
//! One exception keeps apps working: a duplicate key on a unique index that starts with the tenant field is a
//! conflict inside the tenant's own data, so its `keyValue` (without the tenant field) and index name are kept,
//! and Payload and mongoose can say which field is taken.
//!
//! This covers the top level, `writeErrors[]`, `writeConcernError`, and bulkWrite's per-operation results in
//! `cursor.firstBatch`/`nextBatch`.

use bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use tenantwall_protocol::fields::Fields;

use super::raw::{get, get_document, replace_fields};

/// Codes whose messages never quote stored data: transient and topology errors, timeouts, transactions,
/// authorisation. Everything else has its text withheld on shared namespaces.
const SAFE_CODES: &[i32] = &[
    13,    // Unauthorized
    43,    // CursorNotFound
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed
    79,    // UnknownReplWriteConcern
    91,    // ShutdownInProgress
    100,   // UnsatisfiableWriteConcern
    112,   // WriteConflict
    146,   // ExceededMemoryLimit
    189,   // PrimarySteppedDown
    225,   // TransactionTooOld
    244,   // TransactionAborted
    251,   // NoSuchTransaction
    256,   // TransactionCommitted
    262,   // ExceededTimeLimit
    292,   // QueryExceededMemoryLimitNoDiskUseAllowed
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11601, // Interrupted
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

const DUPLICATE_KEY: i32 = 11000;

/// What to withhold from the errors of one command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Withhold {
    /// The tenant field of the field-mode namespace the command wrote, if any: a duplicate key on a unique index
    /// that starts with it is the tenant's own conflict.
    pub tenant_field: Option<std::sync::Arc<str>>,
    /// The cursor batches hold per-operation results (bulkWrite), not documents: items with a `code` are errors.
    /// Never set for reads, whose batches are the tenant's documents and may have a field named `code`.
    pub results_in_cursor: bool,
}

fn code<'a>(doc: impl Into<Fields<'a>>) -> Option<i32> {
    match get(doc, "code") {
        Ok(Some(RawBsonRef::Int32(c))) => Some(c),
        Ok(Some(RawBsonRef::Int64(c))) => i32::try_from(c).ok(),
        Ok(Some(RawBsonRef::Double(c))) => Some(c as i32),
        _ => None,
    }
}

/// `body` with every error's data withheld, or `None` when it carries no error to change. A parsed reply's
/// body is read through its index of top-level fields (`OpMsg::body_fields`): every reply passes here.
pub fn withhold<'a>(body: impl Into<Fields<'a>>, rule: &Withhold) -> Option<RawDocumentBuf> {
    let body = body.into();
    // Nearly every reply holds none of the fields below: one pass over its top-level keys says so, instead of
    // a lookup for each. Bytes that pass cannot read (`None`) are read field by field as before.
    let none_to_change = body.all_keys(|key| match key {
        b"code" | b"writeErrors" | b"writeConcernError" => false,
        b"cursor" => !rule.results_in_cursor,
        _ => true,
    });
    if none_to_change == Some(true) {
        return None;
    }
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let Some(c) = code(body) {
        if let Some(fixed) = error_edits(body.doc(), c, rule) {
            edits.extend(fixed);
        }
    }
    // Every reply passes here: lookups read the keys as bytes (`get`), and only what is there is decoded.
    if let Ok(Some(RawBsonRef::Array(errors))) = get(body, "writeErrors") {
        edits.push(("writeErrors", Some(RawBson::Array(each_error(errors, rule)))));
    }
    if let Some(wce) = get_document(body, "writeConcernError") {
        if let Some(c) = code(wce) {
            if let Some(fixed) = error_edits(wce, c, rule) {
                edits.push(("writeConcernError", Some(RawBson::Document(replace_fields(wce, &fixed)))));
            }
        }
    }
    // bulkWrite (MongoDB 8) reports each operation as a cursor item: `{ok: 0, idx, code, errmsg, keyValue...}`.
    if let Some(cursor) = rule.results_in_cursor.then(|| get_document(body, "cursor")).flatten() {
        for batch in ["firstBatch", "nextBatch"] {
            if let Ok(items) = cursor.get_array(batch) {
                if items.into_iter().any(|i| matches!(i, Ok(RawBsonRef::Document(d)) if code(d).is_some())) {
                    let cursor = replace_fields(cursor, &[(batch, Some(RawBson::Array(each_error(items, rule))))]);
                    edits.push(("cursor", Some(RawBson::Document(cursor))));
                }
            }
        }
    }
    (!edits.is_empty()).then(|| replace_fields(body.doc(), &edits))
}

fn each_error(items: &bson::RawArray, rule: &Withhold) -> RawArrayBuf {
    let mut out = RawArrayBuf::new();
    for item in items.into_iter().flatten() {
        match item {
            RawBsonRef::Document(d) => match code(d).and_then(|c| error_edits(d, c, rule)) {
                Some(fixed) => out.push(replace_fields(d, &fixed)),
                None => out.push(d),
            },
            other => out.push(other),
        }
    }
    out
}

/// The edits that withhold one error's data; `None` for a code whose text is safe.
fn error_edits(doc: &RawDocument, code: i32, rule: &Withhold) -> Option<Vec<(&'static str, Option<RawBson>)>> {
    if SAFE_CODES.contains(&code) {
        return None;
    }
    let name = doc.get_str("codeName").unwrap_or("error");
    if code == DUPLICATE_KEY {
        if let Some(own) = own_duplicate(doc, rule) {
            return Some(own);
        }
    }
    let text = if code == DUPLICATE_KEY {
        "E11000 duplicate key error (the index and the conflicting value are withheld by tenantwall: the \
         collection is shared with other tenants)"
            .to_owned()
    } else {
        format!("{name} (code {code}): the server's message is withheld by tenantwall because the namespace is shared with other tenants")
    };
    Some(vec![("errmsg", Some(RawBson::String(text))), ("errInfo", None), ("keyValue", None), ("keyPattern", None)])
}

/// A duplicate key on a unique index that starts with the tenant field: the conflict is inside the tenant's own
/// data. `keyValue` is kept without the tenant field, and the message names the index.
fn own_duplicate(doc: &RawDocument, rule: &Withhold) -> Option<Vec<(&'static str, Option<RawBson>)>> {
    let field = rule.tenant_field.as_deref()?;
    let pattern = doc.get_document("keyPattern").ok()?;
    let mut keys = pattern.iter_elements().flatten();
    if keys.next()?.key().as_str() != field || keys.next().is_none() {
        return None;
    }
    let value = doc.get_document("keyValue").ok()?;
    let mut own = RawDocumentBuf::new();
    for element in value.iter_elements().flatten() {
        if element.key().as_str() != field {
            own.append(element.key(), element.value().ok()?);
        }
    }
    let mut pattern_out = RawDocumentBuf::new();
    for element in pattern.iter_elements().flatten() {
        if element.key().as_str() != field {
            pattern_out.append(element.key(), element.value().ok()?);
        }
    }
    let index = doc
        .get_str("errmsg")
        .ok()
        .and_then(|m| m.split_once(" index: "))
        .and_then(|(_, rest)| rest.split_once(' '))
        .map(|(name, _)| name.to_owned());
    let shown = bson::Document::try_from(own.as_ref()).map(|d| d.to_string()).unwrap_or_default();
    let text = match index {
        Some(index) => format!("E11000 duplicate key error index: {index} dup key: {shown}"),
        None => format!("E11000 duplicate key error dup key: {shown}"),
    };
    Some(vec![
        ("errmsg", Some(RawBson::String(text))),
        ("errInfo", None),
        ("keyValue", Some(RawBson::Document(own))),
        ("keyPattern", Some(RawBson::Document(pattern_out))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn shared() -> Withhold {
        Withhold { tenant_field: Some("tenantId".into()), results_in_cursor: true }
    }

    #[test]
    fn data_echoing_errors_lose_text_and_details_but_keep_codes_and_labels() {
        let geo = rawdoc! {
            "ok": 0.0, "code": 16755, "codeName": "Location16755",
            "errmsg": "Can't extract geo keys: { _id: 1, tenantId: \"globex\", secret: \"launch codes\" }",
            "errorLabels": ["x"],
        };
        let out = withhold(&geo, &shared()).unwrap();
        assert!(!out.get_str("errmsg").unwrap().contains("launch"));
        assert_eq!(out.get_i32("code").unwrap(), 16755);
        assert_eq!(out.get_str("codeName").unwrap(), "Location16755");
        assert!(out.get_array("errorLabels").is_ok());
        let validation = rawdoc! {
            "ok": 1.0, "n": 0,
            "writeErrors": [{ "index": 0, "code": 121, "errmsg": "Document failed validation", "errInfo": { "failingDocumentId": "globex-1", "details": {} } }],
            "writeConcernError": { "code": 100, "errmsg": "fine" },
        };
        let out = withhold(&validation, &shared()).unwrap();
        let error = out.get_array("writeErrors").unwrap().get_document(0).unwrap();
        assert!(error.get("errInfo").unwrap().is_none());
        assert_eq!(error.get_i32("index").unwrap(), 0);
        assert_eq!(out.get_document("writeConcernError").unwrap().get_str("errmsg").unwrap(), "fine");
        let bulk = rawdoc! { "ok": 1.0, "cursor": { "id": 0i64, "firstBatch": [
            { "ok": 1.0, "idx": 0, "n": 1 },
            { "ok": 0.0, "idx": 1, "code": 11000, "errmsg": "E11000 dup key: { email: \"ceo@globex.test\" }", "keyValue": { "email": "ceo@globex.test" } },
        ] } };
        let out = withhold(&bulk, &shared()).unwrap();
        let item = out.get_document("cursor").unwrap().get_array("firstBatch").unwrap().get_document(1).unwrap();
        assert!(!item.get_str("errmsg").unwrap().contains("globex"));
        assert!(item.get("keyValue").unwrap().is_none());
        let safe = rawdoc! { "ok": 0.0, "code": 50, "errmsg": "operation exceeded time limit" };
        assert!(withhold(&safe, &shared()).is_none());
    }

    /// Each field that carries an error is found wherever it sits, read plainly or through a parsed body's
    /// index, and a reply with none of them (or a read's batch, whose documents may have a `code`) is left alone.
    #[test]
    fn each_error_field_is_found_in_any_position_and_other_replies_are_left_alone() {
        use tenantwall_protocol::{decode, Message, MsgFlags, OpMsg};
        let parsed = |body: &RawDocumentBuf| {
            let frame = OpMsg::new(MsgFlags::default(), body.clone()).encode(1, 0).unwrap().freeze();
            let Message::Msg(msg) = decode(frame).unwrap().message else { panic!("not an OP_MSG") };
            msg
        };
        let error = rawdoc! { "code": 121, "errmsg": "Document failed validation: globex" };
        let carriers = [
            ("code", rawdoc! { "ok": 0.0, "code": 121, "errmsg": "globex" }),
            ("writeErrors", rawdoc! { "ok": 1.0, "writeErrors": [error.clone()] }),
            ("writeConcernError", rawdoc! { "ok": 1.0, "writeConcernError": error.clone() }),
        ];
        for (key, carrier) in &carriers {
            for padding in [0, 1, 5] {
                // The carrier's fields after `padding` plain ones, and again before them.
                let mut before = RawDocumentBuf::new();
                let mut after = RawDocumentBuf::new();
                for item in carrier {
                    let (k, v) = item.unwrap();
                    after.append(k, v);
                }
                for i in 0..padding {
                    let name = bson::raw::CString::try_from(format!("plain{i}")).unwrap();
                    before.append(name.clone(), i);
                    after.append(name, i);
                }
                for item in carrier {
                    let (k, v) = item.unwrap();
                    before.append(k, v);
                }
                for body in [&before, &after] {
                    assert!(withhold(body, &Withhold::default()).is_some(), "{key} missed in {body:?}");
                    let msg = parsed(body);
                    assert!(withhold(msg.body_fields(), &Withhold::default()).is_some(), "{key} missed via the index");
                }
            }
        }
        let read =
            rawdoc! { "cursor": { "id": 0_i64, "firstBatch": [{ "code": 7, "errmsg": "a document" }] }, "ok": 1.0 };
        assert!(withhold(&read, &Withhold::default()).is_none(), "a read's documents were changed");
        assert!(withhold(parsed(&read).body_fields(), &Withhold::default()).is_none());
        assert!(withhold(parsed(&read).body_fields(), &shared()).is_some(), "bulkWrite results were not read");
        let plain = rawdoc! { "n": 1, "ok": 1.0, "operationTime": bson::Timestamp { time: 1, increment: 1 } };
        assert!(withhold(parsed(&plain).body_fields(), &shared()).is_none());
    }

    #[test]
    fn a_conflict_on_a_tenant_prefixed_unique_index_keeps_the_tenants_own_key() {
        let own = rawdoc! {
            "ok": 1.0,
            "writeErrors": [{ "index": 0, "code": 11000,
                "errmsg": "E11000 duplicate key error collection: app.users index: tenantId_1_email_1 dup key: { tenantId: \"acme\", email: \"a@acme.test\" }",
                "keyPattern": { "tenantId": 1, "email": 1 }, "keyValue": { "tenantId": "acme", "email": "a@acme.test" } }],
        };
        let out = withhold(&own, &shared()).unwrap();
        let error = out.get_array("writeErrors").unwrap().get_document(0).unwrap();
        assert_eq!(error.get_document("keyValue").unwrap().to_owned(), rawdoc! { "email": "a@acme.test" });
        assert_eq!(error.get_document("keyPattern").unwrap().to_owned(), rawdoc! { "email": 1 });
        let msg = error.get_str("errmsg").unwrap();
        assert!(msg.contains("index: tenantId_1_email_1") && msg.contains("a@acme.test"), "{msg}");
        // Not prefixed: the value may be another tenant's.
        let other = rawdoc! { "ok": 0.0, "code": 11000, "errmsg": "E11000 ... { email: \"x@globex.test\" }",
        "keyPattern": { "email": 1 }, "keyValue": { "email": "x@globex.test" } };
        let out = withhold(&other, &shared()).unwrap();
        assert!(out.get("keyValue").unwrap().is_none() && !out.get_str("errmsg").unwrap().contains("globex"));
        // A shared (read-only) namespace has no tenant field: nothing is the tenant's own.
        let out = withhold(&own, &Withhold::default()).unwrap();
        let error = out.get_array("writeErrors").unwrap().get_document(0).unwrap();
        assert!(error.get("keyValue").unwrap().is_none());
    }
}
