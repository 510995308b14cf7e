//! The *fast stub backend* shared by the load, attack and RSS harnesses: a hand-written stand-in, not a MongoDB
//! server, for measuring proxy overhead only. It answers the handshake like a standalone server (over OP_MSG, and
//! over the legacy OP_QUERY that official drivers open with, so a driver can also be pointed at it directly or
//! through a byte relay) and every other OP_MSG at once with a small exhausted cursor, so the backend costs next to
//! nothing and only the proxy's own work shows.

use std::net::SocketAddr;

use bson::{rawdoc, RawDocumentBuf};
use tenantwall::codec::FrameReader;
use tenantwall_protocol::{decode, Message, MsgFlags, OpMsg, OpReply};
use tokio::io::AsyncWriteExt;

/// The handshake reply. `logicalSessionTimeoutMinutes` makes drivers attach implicit sessions, as they do through
/// the proxy (which announces sessions as a mongos), so a direct connection sends the same commands.
fn hello_reply() -> RawDocumentBuf {
    rawdoc! {
        "isWritablePrimary": true, "ismaster": true, "helloOk": true, "maxWireVersion": 21, "minWireVersion": 0,
        "maxBsonObjectSize": 16_777_216, "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000,
        "logicalSessionTimeoutMinutes": 30, "ok": 1.0
    }
}

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
                    let request_id = decoded.header.request_id;
                    let frame = match decoded.message {
                        Message::Msg(msg) => {
                            let reply = match msg.command_name() {
                                Some("hello" | "isMaster" | "ismaster") => hello_reply(),
                                _ => rawdoc! {
                                    "cursor": { "id": 0i64, "ns": "app.items", "firstBatch": [{ "_id": 1, "tenantId": "acme", "v": "x" }] },
                                    "ok": 1.0
                                },
                            };
                            OpMsg::new(MsgFlags::default(), reply).encode(1, request_id).unwrap()
                        }
                        // Drivers open every connection with an OP_QUERY isMaster; nothing else arrives that way.
                        Message::Query(_) => OpReply::single(hello_reply()).encode(1, request_id).unwrap(),
                        Message::Reply(_) => return,
                    };
                    if write.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
