//! The codec's frame check and `decode` on arbitrary bytes; a parsed OP_MSG must survive encode → decode
//! unchanged.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tenantwall_protocol::{check_frame, decode, Message, MAX_MESSAGE_SIZE};

fuzz_target!(|data: &[u8]| {
    // As the codec does: decode exactly the frame `check_frame` found; otherwise decode whatever is there, which
    // must fail cleanly.
    let frame = match check_frame(data, MAX_MESSAGE_SIZE) {
        Ok(Some(len)) => &data[..len],
        _ => data,
    };
    let Ok(decoded) = decode(Bytes::copy_from_slice(frame)) else { return };
    if let Message::Msg(msg) = decoded.message {
        let encoded = msg.encode(decoded.header.request_id, decoded.header.response_to).expect("parsed OP_MSG encodes");
        let again = decode(encoded.freeze()).expect("re-encoded OP_MSG decodes");
        assert_eq!(again.message, Message::Msg(msg));
    }
});
