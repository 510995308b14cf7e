//! Routing details: the wire version advertised across backends, and finding a replica set's primary.

mod common;

use std::time::Duration;

use bson::rawdoc;
use common::{start_proxy_text, Backend};
use mongodb::bson::{doc, Document};
use tenantwall::codec::FrameReader;
use tenantwall_protocol::{decode, Message, MsgFlags, OpMsg};
use tokio::io::AsyncWriteExt;

async fn hello_wire(addr: std::net::SocketAddr, credentials: &str) -> i32 {
    let mut options =
        mongodb::options::ClientOptions::parse(format!("mongodb://{credentials}{addr}/?authSource=admin"))
            .await
            .unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    let client = mongodb::Client::with_options(options).unwrap();
    client.database("admin").run_command(doc! { "hello": 1 }).await.unwrap().get_i32("maxWireVersion").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_promised_only_what_its_backends_support() {
    let (new, old) = (Backend::start(), Backend::start());
    let scram = common::scram_entry("pw");
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [[backends]]\nname = \"new\"\nuri = \"{}\"\n\n[[backends]]\nname = \"old\"\nuri = \"{}\"\nmax_wire_version = 21\n\n\
         [[tenants]]\nid = \"fresh\"\nbackend = \"new\"\nusers = [{{ name = \"fresh\", scram = \"{scram}\" }}]\n\n\
         [[tenants]]\nid = \"legacy\"\nbackend = \"old\"\nusers = [{{ name = \"legacy\", scram = \"{scram}\" }}]\n\n\
         [[rules]]\ndatabase = \"app\"\nmode = \"database\"\n",
        new.uri(),
        old.uri()
    );
    let proxy = start_proxy_text(&text).await;
    // Before authentication (and on monitoring connections, which never authenticate): the lowest of all.
    assert_eq!(hello_wire(proxy.addr(), "").await, 21);
    // On an authenticated connection: what the tenant's own backend supports.
    assert_eq!(hello_wire(proxy.addr(), "fresh:pw@").await, 25);
    assert_eq!(hello_wire(proxy.addr(), "legacy:pw@").await, 21);
}

/// A hand-written fake replica-set secondary: what nx-27017 cannot be. It answers the proxy's hello as a
/// non-writable member that names `primary`, and nothing else.
async fn fake_secondary(primary: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let primary = primary.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = FrameReader::new(read, 48_000_000, None);
                while let Ok(Some(frame)) = reader.next_frame().await {
                    let Ok(decoded) = decode(frame) else { return };
                    let Message::Msg(_) = decoded.message else { return };
                    let reply = rawdoc! {
                        "isWritablePrimary": false, "secondary": true, "setName": "rs0", "primary": primary.as_str(),
                        "maxBsonObjectSize": 16777216, "maxMessageSizeBytes": 48000000, "maxWriteBatchSize": 100000,
                        "minWireVersion": 0, "maxWireVersion": 25, "ok": 1.0,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_named_by_a_secondary_is_used() {
    let primary = Backend::start();
    let secondary = fake_secondary(format!("127.0.0.1:{}", primary.port)).await;
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"t\"\n\n[[backends]]\nname = \"rs\"\nuri = \"mongodb://{secondary}/?replicaSet=rs0\"\n\n\
         [[tenants]]\nid = \"t\"\nbackend = \"rs\"\n\n[[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n"
    );
    let proxy = start_proxy_text(&text).await;
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", proxy.addr())).await.unwrap();
    client.database("app").collection::<Document>("x").insert_one(doc! { "written": true }).await.unwrap();
    let direct = mongodb::Client::with_uri_str(primary.uri()).await.unwrap();
    assert_eq!(direct.database("app").collection::<Document>("x").count_documents(doc! {}).await.unwrap(), 1);
}
