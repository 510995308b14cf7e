//! The request path without sockets, for one fixed policy and tenant: decode → classify → decide (and
//! rewrite) → virtualise sessions → encode. Whatever is forwarded must encode, decode again and carry no
//! duplicate key at any depth; when it is only a body, its head and body as the backend connection sends them
//! must be the encoded frame.
//!
//! An input that does not start with a whole OP_MSG or OP_COMPRESSED frame is taken as an OP_MSG's sections
//! (the body document first, then any document sequences) and framed, so most inputs reach the engine.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tenantwall::command::Command;
use tenantwall::engine::decide::{prepare_forward, Decision};
use tenantwall::Policy;
use tenantwall_protocol::validate::first_duplicate_key_deep;
use tenantwall_protocol::{check_frame, decode, Message, MsgHeader, OpCode, HEADER_LEN, MAX_MESSAGE_SIZE};

const POLICY: &str = r#"
[[listeners]]
address = "127.0.0.1:0"

[[backends]]
name = "main"
uri = "mongodb://127.0.0.1:1"

[[tenants]]
id = "acme"
backend = "main"

[[tenants]]
id = "globex"
backend = "main"

[[rules]]
database = "app"
collection = "orders"
mode = "field"

[[rules]]
database = "app"
collection = "events"
mode = "field"
style = "verify"

[[rules]]
database = "app"
collection = "logs"
mode = "field"
style = "audit"

[[rules]]
database = "app"
collection = "invoices"
mode = "collection"

[[rules]]
database = "tenantdb"
mode = "database"

[[rules]]
database = "ref"
collection = "*"
mode = "shared"
"#;

const TENANT: &str = "acme";

fn policy() -> &'static Policy {
    static POLICY_ONCE: OnceLock<Policy> = OnceLock::new();
    POLICY_ONCE.get_or_init(|| Policy::from_toml(POLICY, Path::new("fuzz.toml")).expect("fuzz policy compiles"))
}

fn frame(data: &[u8]) -> Bytes {
    let whole = matches!(check_frame(data, MAX_MESSAGE_SIZE), Ok(Some(len)) if len == data.len());
    let known = MsgHeader::read(data).is_ok_and(|h| h.op_code == OpCode::MSG || h.op_code == OpCode::COMPRESSED);
    if whole && known {
        return Bytes::copy_from_slice(data);
    }
    let len = HEADER_LEN + 4 + 1 + data.len();
    let mut out = BytesMut::with_capacity(len);
    let message_length = i32::try_from(len).unwrap_or(i32::MAX);
    MsgHeader { message_length, request_id: 1, response_to: 0, op_code: OpCode::MSG }.write(&mut out);
    out.put_u32_le(0);
    out.put_u8(0);
    out.put_slice(data);
    out.freeze()
}

fuzz_target!(|data: &[u8]| {
    let policy = policy();
    let Ok(decoded) = decode(frame(data)) else { return };
    let Message::Msg(msg) = decoded.message else { return };
    let command = Command::from_name(msg.command_name().unwrap_or_default());
    let tenant = policy.tenant(TENANT).expect("fuzz policy has the tenant");
    let Decision::Forward(plan) = prepare_forward(&msg, command, Some(tenant), policy) else { return };
    let forwarded = plan.forward.unwrap_or(msg);
    let encoded = forwarded.encode(1, 0).expect("forwarded command encodes");
    // What the backend connection sends for a message that is only a body: its head, then the body where it is.
    if let Some(head) = forwarded.head_before_body(1, 0) {
        assert_eq!([&head[..], &forwarded.body_bytes()[..]].concat(), encoded[..], "head and body are the frame");
    }
    let again = decode(encoded.freeze()).expect("forwarded command decodes");
    assert!(matches!(again.message, Message::Msg(_)));
    assert_eq!(first_duplicate_key_deep(forwarded.body()), None, "forwarded body has a duplicate key");
    for seq in forwarded.sequences() {
        for doc in seq.documents() {
            assert_eq!(first_duplicate_key_deep(doc), None, "forwarded sequence has a duplicate key");
        }
    }
});
