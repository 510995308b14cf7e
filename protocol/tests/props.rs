//! Property tests: no input makes the parsers panic, and encode(parse(x)) reproduces x.

use bson::{RawBson, RawDocumentBuf};
use bytes::Bytes;
use proptest::prelude::*;
use tenantwall_protocol::compression::compress_frame;
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
