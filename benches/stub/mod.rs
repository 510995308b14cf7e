//! The *fast stub backend* shared by the attack and RSS harnesses: a hand-written stand-in, not a MongoDB
//! server. It answers hello like a server and every other OP_MSG at once with a small exhausted cursor, so the
//! backend costs next to nothing and only the proxy's own work shows.

use std::net::SocketAddr;

use bson::rawdoc;
use tenantwall::codec::FrameReader;
use tenantwall_protocol::{decode, Message, MsgFlags, OpMsg};
use tokio::io::AsyncWriteExt;

pub async fn fast_stub_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = FrameReader::new(read, 48_000_000, None);
                while let Ok(Some(frame)) = reader.next_frame().await {
                    let Ok(decoded) = decode(frame) else { return };
                    let Message::Msg(msg) = decoded.message else { return };
                    let reply = if msg.command_name() == Some("hello") {
                        rawdoc! { "isWritablePrimary": true, "maxWireVersion": 21, "minWireVersion": 0, "ok": 1.0 }
                    } else {
                        rawdoc! { "cursor": { "id": 0i64, "ns": "app.items", "firstBatch": [{ "_id": 1 }] }, "ok": 1.0 }
                    };
                    let frame = OpMsg::new(MsgFlags::default(), reply).encode(1, decoded.header.request_id).unwrap();
                    if write.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
