//! Property tests: no input makes the parsers panic, encode(parse(x)) reproduces x, and a parsed body's index of
//! top-level fields answers every lookup as a scan of its bytes does.

use bson::{RawBson, RawDocumentBuf};
use bytes::Bytes;
use proptest::prelude::*;
use tenantwall_protocol::compression::compress_frame;
use tenantwall_protocol::fields::{Fields, KNOWN};
use tenantwall_protocol::{check_frame, decode, Compressor, Message, MsgFlags, OpMsg, Sequence, MAX_MESSAGE_SIZE};

fn value() -> impl Strategy<Value = RawBson> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(RawBson::Int32),
        any::<i64>().prop_map(RawBson::Int64),
        any::<bool>().prop_map(RawBson::Boolean),
        "[a-z0-9 ]{0,12}".prop_map(RawBson::String),
        Just(RawBson::Null),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|fields| {
            let mut doc = RawDocumentBuf::new();
            for (k, v) in fields {
                doc.append(bson::raw::CString::try_from(k).unwrap(), v);
            }
            RawBson::Document(doc)
        })
    })
}

fn document() -> impl Strategy<Value = RawDocumentBuf> {
    prop::collection::vec(("[a-z]{1,8}", value()), 0..6).prop_map(|fields| {
        let mut doc = RawDocumentBuf::new();
        for (k, v) in fields {
            doc.append(bson::raw::CString::try_from(k).unwrap(), v);
        }
        doc
    })
}

fn op_msg() -> impl Strategy<Value = OpMsg> {
    let flags = prop_oneof![
        Just(0u32),
        Just(MsgFlags::CHECKSUM_PRESENT),
        Just(MsgFlags::MORE_TO_COME),
        Just(MsgFlags::EXHAUST_ALLOWED)
    ];
    (flags, document(), prop::collection::vec(document(), 0..5), any::<bool>()).prop_map(
        |(flags, body, docs, with_seq)| {
            // Sequence identifiers must not collide with body fields, so the command gets its own first key.
            let mut command = RawDocumentBuf::new();
            command.append(bson::cstr!("insert"), "c");
            command.append(bson::cstr!("nested"), body);
            if with_seq {
                OpMsg::with_sequences(MsgFlags(flags), command, vec![Sequence::new("documents", docs)])
            } else {
                OpMsg::new(MsgFlags(flags), command)
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(Some(len)) = check_frame(&bytes, MAX_MESSAGE_SIZE) {
            let _ = decode(Bytes::copy_from_slice(&bytes[..len]));
        }
        let _ = decode(Bytes::from(bytes));
    }

    #[test]
    fn round_trip(msg in op_msg(), request_id in any::<i32>()) {
        let bytes = msg.encode(request_id, 0).unwrap().freeze();
        let decoded = decode(bytes.clone()).unwrap();
        prop_assert_eq!(decoded.header.request_id, request_id);
        let Message::Msg(parsed) = decoded.message else { panic!("not an OP_MSG") };
        prop_assert_eq!(&parsed, &msg);
        prop_assert_eq!(parsed.encode(request_id, 0).unwrap().freeze(), bytes);
    }

    #[test]
    fn compressed_round_trip(msg in op_msg(), which in 0usize..3) {
        let bytes = msg.encode(1, 0).unwrap().freeze();
        let wrapped = compress_frame(&bytes, Compressor::ALL[which]).unwrap().freeze();
        let decoded = decode(wrapped).unwrap();
        prop_assert_eq!(decoded.compressor, Some(Compressor::ALL[which]));
        prop_assert_eq!(decoded.message, Message::Msg(msg));
    }

    #[test]
    fn mutated_frames_never_panic(
        msg in op_msg(),
        compress in prop::option::of(0usize..3),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let plain = msg.encode(1, 0).unwrap();
        let mut bytes = match compress {
            Some(i) => compress_frame(&plain, Compressor::ALL[i]).unwrap().to_vec(),
            None => plain.to_vec(),
        };
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(Some(len)) = check_frame(&bytes, MAX_MESSAGE_SIZE) {
            let _ = decode(Bytes::copy_from_slice(&bytes[..len]));
        }
        let _ = decode(Bytes::from(bytes));
    }
}

/// Keys a body's index is asked about: those it notes by name, near misses of them (a byte changed, one short,
/// one long, the first eight bytes of the long ones), and others.
const KEYS: &[&str] = &[
    "$db",
    "lsid",
    "endSessions",
    "filter",
    "query",
    "collation",
    "maxTimeMS",
    "cursor",
    "$dB",
    "$d",
    "$dbx",
    "lsiD",
    "lsi",
    "lsidd",
    "endSessionS",
    "endSessi",
    "endSessionsx",
    "filteR",
    "filte",
    "cursoR",
    "quer",
    "queryy",
    "collatioN",
    "collatio",
    "maxTimeMs",
    "maxTimeM",
    "find",
    "k",
    "é",
    "filter.x",
    "$where",
    "a_rather_long_key",
];

/// A body of up to 19 elements (more than the index holds) with keys drawn from [`KEYS`], repeats included,
/// and sometimes an element past what the index's 16-bit offsets reach.
fn indexed_body() -> impl Strategy<Value = RawDocumentBuf> {
    (prop::collection::vec((0..KEYS.len(), any::<i32>()), 0..20), prop::option::of(0usize..20)).prop_map(
        |(fields, large_at)| {
            let mut doc = RawDocumentBuf::new();
            for (i, (key, value)) in fields.into_iter().enumerate() {
                if large_at == Some(i) {
                    doc.append(bson::cstr!("padding"), "x".repeat(70_000));
                }
                doc.append(bson::raw::CString::try_from(KEYS[key]).unwrap(), value);
            }
            doc
        },
    )
}

type Viewed<'a> = Option<Option<(u8, &'a [u8], &'a [u8], &'a [u8])>>;

/// An answer of `Fields::field`, as its parts.
fn view(found: Option<Option<tenantwall_protocol::validate::Element<'_>>>) -> Viewed<'_> {
    found.map(|e| e.map(|e| (e.kind, e.key, e.value, e.bytes)))
}

/// Every lookup through `msg`'s index answers as a scan of its body's bytes does.
fn index_agrees_with_a_scan(msg: &OpMsg) -> Result<(), TestCaseError> {
    let (indexed, scanned) = (msg.body_fields(), Fields::from(msg.body()));
    for key in KEYS.iter().map(|k| k.as_bytes()).chain(KNOWN) {
        prop_assert_eq!(view(indexed.field(key)), view(scanned.field(key)), "{:?}", key);
        prop_assert_eq!(indexed.unique_field_span(key), scanned.unique_field_span(key), "{:?}", key);
        prop_assert_eq!(indexed.occurrences(key), scanned.occurrences(key), "{:?}", key);
    }
    let keys = |fields: Fields<'_>| {
        let mut keys = Vec::new();
        let read = fields.all_keys(|k| {
            keys.push(k.to_vec());
            true
        });
        (read, keys)
    };
    prop_assert_eq!(keys(indexed), keys(scanned));
    prop_assert_eq!(indexed.first().map(|e| e.bytes), scanned.first().map(|e| e.bytes));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Parsed, and then with fields written into it (replaced, or appended when absent), one after another.
    #[test]
    fn a_body_s_index_answers_as_a_scan_does(body in indexed_body(), edits in prop::collection::vec(0..KEYS.len(), 0..4)) {
        let frame = OpMsg::new(MsgFlags::default(), body).encode(1, 0).unwrap().freeze();
        let Message::Msg(mut msg) = decode(frame).unwrap().message else { panic!("not an OP_MSG") };
        index_agrees_with_a_scan(&msg)?;
        for key in edits {
            let write = |out: &mut Vec<u8>| {
                out.extend_from_slice(bson::rawdoc! { "v": 1 }.as_bytes());
                Some(())
            };
            // Refused for a key that repeats: the body is then left as it was.
            if let Some(edited) = msg.with_body_field(KEYS[key], 0x03, 0, write) {
                msg = edited;
                index_agrees_with_a_scan(&msg)?;
            }
        }
    }
}
