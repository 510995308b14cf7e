//! Every reply of a cursor goes through the plan of the command that opened it. A real server stops a
//! listCollections first batch at 16 MB and continues with getMore; nx-27017 never does, so a hand-written fake
//! backend (a scripted one, named as such) plays that server here: its nextBatch lists other tenants'
//! collections, which the proxy must filter exactly as it filtered the first batch.

mod common;

use bson::{rawdoc, RawDocumentBuf};
use common::{start_proxy_text, RawClient};
use mongodb::bson::Document;
use tenantwall::codec::FrameReader;
use tenantwall_protocol::{decode, Message, MsgFlags, OpMsg};
use tokio::io::AsyncWriteExt;

/// A scripted fake backend: hello, a listCollections whose first batch holds one collection and leaves cursor 77
/// open, and a getMore on 77 whose next batch holds every tenant's collections.
async fn scripted_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = FrameReader::new(read, 48_000_000, None);
                while let Ok(Some(frame)) = reader.next_frame().await {
                    let Ok(decoded) = decode(frame) else { return };
                    let Message::Msg(msg) = decoded.message else { return };
                    let reply: RawDocumentBuf = match msg.command_name().unwrap_or_default() {
                        "hello" | "isMaster" | "ismaster" => rawdoc! {
                            "isWritablePrimary": true, "maxBsonObjectSize": 16777216, "maxMessageSizeBytes": 48000000,
                            "maxWriteBatchSize": 100000, "minWireVersion": 0, "maxWireVersion": 21, "ok": 1.0,
                        },
                        "listCollections" => rawdoc! { "cursor": { "id": 77i64, "ns": "app.$cmd.listCollections",
                        "firstBatch": [{ "name": "acme__a", "type": "collection" }] }, "ok": 1.0 },
                        "getMore" => rawdoc! { "cursor": { "id": 0i64, "ns": "app.$cmd.listCollections",
                        "nextBatch": [
                            { "name": "globex__b", "type": "collection" },
                            { "name": "acme__c", "type": "collection" },
                            { "name": "orders", "type": "collection" },
                        ] }, "ok": 1.0 },
                        _ => rawdoc! { "ok": 1.0 },
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

fn run(raw: &mut RawClient, id: i32, body: RawDocumentBuf) -> Document {
    raw.send(&OpMsg::new(MsgFlags::default(), body).encode(id, 0).unwrap());
    let Some(Message::Msg(reply)) = raw.recv().map(|d| d.message) else { panic!("no reply") };
    Document::try_from(reply.body()).unwrap()
}

fn names(reply: &Document, batch: &str) -> Vec<String> {
    reply
        .get_document("cursor")
        .unwrap()
        .get_array(batch)
        .unwrap()
        .iter()
        .map(|c| c.as_document().unwrap().get_str("name").unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_continued_by_get_more_is_filtered_like_its_first_batch() {
    let backend = scripted_backend().await;
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"acme\"\n\n[[backends]]\nname = \"b\"\nuri = \"mongodb://{backend}/\"\n\n\
         [[tenants]]\nid = \"acme\"\nbackend = \"b\"\n\n[[tenants]]\nid = \"globex\"\nbackend = \"b\"\nsni = [\"globex\"]\n\n\
         [[rules]]\ndatabase = \"app\"\nmode = \"collection\"\n"
    );
    let proxy = start_proxy_text(&text).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut raw = RawClient::connect(addr);
        let first = run(&mut raw, 1, rawdoc! { "listCollections": 1, "$db": "app" });
        assert_eq!(names(&first, "firstBatch"), ["a"], "{first}");
        // A getMore naming another namespace than the cursor's is refused, as mongod refuses it.
        let wrong = run(&mut raw, 2, rawdoc! { "getMore": 77i64, "collection": "a", "$db": "app" });
        assert_eq!(wrong.get_i32("code").unwrap(), 13, "{wrong}");
        let next = run(&mut raw, 3, rawdoc! { "getMore": 77i64, "collection": "$cmd.listCollections", "$db": "app" });
        assert_eq!(names(&next, "nextBatch"), ["c"], "{next}");
        // The cursor is exhausted: a further getMore finds nothing.
        let gone = run(&mut raw, 4, rawdoc! { "getMore": 77i64, "collection": "$cmd.listCollections", "$db": "app" });
        assert_eq!(gone.get_i32("code").unwrap(), 43, "{gone}");
    })
    .await
    .unwrap();
}
