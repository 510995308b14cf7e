//! The byte-level validation walk against the `bson` crate's own reading: on any bytes (valid documents of
//! every element type, then mutated), it accepts exactly what `bson` reads without an error at every depth, and
//! its findings never miss a duplicate key or server-side JavaScript; and a parsed body's index of top-level
//! elements answers every lookup exactly as a scan of its bytes does.

use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{RawBson, RawDocumentBuf};
use proptest::prelude::*;
mod oracle;

use oracle::{precise, reference};
use tenantwall_protocol::fields::Fields;
use tenantwall_protocol::validate::validate_with_findings;
use tenantwall_protocol::{decode, Message, MsgFlags, OpMsg};

fn key() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_owned()), Just("b".to_owned()), Just("$where".to_owned()), "[a-z$é]{0,4}"]
}

fn value() -> impl Strategy<Value = RawBson> {
    let leaf = prop_oneof![
        any::<f64>().prop_map(RawBson::Double),
        "[a-zé\u{0}]{0,6}".prop_map(RawBson::String),
        prop::collection::vec(any::<u8>(), 0..6)
            .prop_map(|bytes| RawBson::Binary(bson::Binary { subtype: BinarySubtype::Generic, bytes })),
        prop::collection::vec(any::<u8>(), 0..6)
            .prop_map(|bytes| RawBson::Binary(bson::Binary { subtype: BinarySubtype::BinaryOld, bytes })),
        Just(RawBson::Undefined),
        any::<[u8; 12]>().prop_map(|b| RawBson::ObjectId(ObjectId::from_bytes(b))),
        any::<bool>().prop_map(RawBson::Boolean),
        any::<i64>().prop_map(|ms| RawBson::DateTime(bson::DateTime::from_millis(ms))),
        Just(RawBson::Null),
        ("[a-z]{0,3}", "[imsx]{0,2}").prop_map(|(p, o)| RawBson::RegularExpression(bson::Regex {
            pattern: bson::raw::CString::try_from(p).unwrap(),
            options: bson::raw::CString::try_from(o).unwrap(),
        })),
        "[a-z();]{0,6}".prop_map(RawBson::JavaScriptCode),
        "[a-z]{0,4}".prop_map(RawBson::Symbol),
        any::<i32>().prop_map(RawBson::Int32),
        (any::<u32>(), any::<u32>())
            .prop_map(|(time, increment)| RawBson::Timestamp(bson::Timestamp { time, increment })),
        any::<i64>().prop_map(RawBson::Int64),
        any::<[u8; 16]>().prop_map(|b| RawBson::Decimal128(bson::Decimal128::from_bytes(b))),
        Just(RawBson::MinKey),
        Just(RawBson::MaxKey),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec((key(), inner.clone()), 0..4).prop_map(|fields| RawBson::Document(build(fields))),
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| {
                let mut array = bson::RawArrayBuf::new();
                for item in items {
                    array.push(item);
                }
                RawBson::Array(array)
            }),
            ("[a-z]{0,4}", prop::collection::vec((key(), inner), 0..3)).prop_map(|(code, fields)| {
                RawBson::JavaScriptCodeWithScope(bson::RawJavaScriptCodeWithScope { code, scope: build(fields) })
            }),
        ]
    })
}

fn build(fields: Vec<(String, RawBson)>) -> RawDocumentBuf {
    let mut doc = RawDocumentBuf::new();
    for (k, v) in fields {
        if let Ok(k) = bson::raw::CString::try_from(k) {
            doc.append(k, v);
        }
    }
    doc
}

fn document() -> impl Strategy<Value = RawDocumentBuf> {
    prop::collection::vec((key(), value()), 0..6).prop_map(build)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn accepts_what_bson_reads_and_finds_what_is_there(doc in document()) {
        let bytes = doc.as_bytes();
        let checked = validate_with_findings(bytes);
        prop_assert_eq!(checked.is_ok(), reference(bytes));
        if let Ok((view, findings)) = checked {
            let (duplicate, javascript) = precise(view);
            prop_assert!(findings.duplicate_keys() || !duplicate);
            prop_assert!(findings.javascript() || !javascript);
        }
    }

    #[test]
    fn mutated_documents_are_judged_as_bson_judges_them(
        doc in document(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = doc.into_bytes();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let checked = validate_with_findings(&bytes);
        prop_assert_eq!(checked.is_ok(), reference(&bytes), "{:?}", bytes);
        if let Ok((view, findings)) = checked {
            let (duplicate, javascript) = precise(view);
            prop_assert!(findings.duplicate_keys() || !duplicate);
            prop_assert!(findings.javascript() || !javascript);
        }
    }

    #[test]
    fn a_parsed_body_is_read_by_key_as_its_bytes_are(
        doc in document(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let mut frame = OpMsg::new(MsgFlags::default(), doc).encode(1, 0).unwrap().to_vec();
        // The body starts after the header, the flags and the section kind.
        let body_at = 16 + 4 + 1;
        for (at, value) in flips {
            let i = body_at + at.index(frame.len() - body_at);
            frame[i] = value;
        }
        let Ok(decoded) = decode(bytes::Bytes::from(frame)) else { return Ok(()) };
        let Message::Msg(msg) = decoded.message else { return Ok(()) };
        let indexed = msg.body_fields();
        let scanned = Fields::from(msg.body());
        let mut keys: Vec<Vec<u8>> = Vec::new();
        scanned.all_keys(|k| { keys.push(k.to_vec()); true });
        keys.extend([b"a".to_vec(), b"b".to_vec(), b"$where".to_vec(), b"".to_vec(), "é".as_bytes().to_vec()]);
        for key in &keys {
            let (a, b) = (indexed.field(key), scanned.field(key));
            prop_assert_eq!(a.map(|e| e.map(|e| (e.kind, e.key, e.value, e.bytes))), b.map(|e| e.map(|e| (e.kind, e.key, e.value, e.bytes))));
            prop_assert_eq!(indexed.unique_field_span(key), scanned.unique_field_span(key));
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        prop_assert_eq!(indexed.all_keys(|k| { a.push(k); true }), scanned.all_keys(|k| { b.push(k); true }));
        prop_assert_eq!(a, b);
        prop_assert_eq!(indexed.first().map(|e| e.bytes), scanned.first().map(|e| e.bytes));
        // A body with a field written in place carries an index moved from this one's: it too answers as a
        // scan of its bytes does.
        for key in keys.iter().filter_map(|k| std::str::from_utf8(k).ok()) {
            let Some(edited) = msg.with_body_field(key, 0x10, 4, |out| {
                out.extend_from_slice(&7i32.to_le_bytes());
                Some(())
            }) else { continue };
            let (indexed, scanned) = (edited.body_fields(), Fields::from(edited.body()));
            for key in &keys {
                let (a, b) = (indexed.field(key), scanned.field(key));
                prop_assert_eq!(a.map(|e| e.map(|e| e.bytes)), b.map(|e| e.map(|e| e.bytes)));
                prop_assert_eq!(indexed.unique_field_span(key), scanned.unique_field_span(key));
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            prop_assert_eq!(indexed.all_keys(|k| { a.push(k); true }), scanned.all_keys(|k| { b.push(k); true }));
            prop_assert_eq!(a, b);
        }
    }
}
