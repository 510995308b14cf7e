//! Fail-closed by construction, end to end: raw wire frames through the proxy to a real nx-27017. Two listeners
//! are bound to the tenants acme and globex; each attack is sent as acme and must neither return nor change
//! globex's data, checked on the backend directly.

mod common;

use bson::raw::CString;
use bson::{rawdoc, RawBson, RawDocumentBuf};
use common::{start_proxy_text, Backend, RawClient};
use mongodb::bson::{doc, Document};
use tenantwall_protocol::{Message, MsgFlags, OpMsg};

fn policy_text(backend: &Backend) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tenant = "acme"

[[listeners]]
address = "127.0.0.1:0"
tenant = "globex"

[[backends]]
name = "shared"
uri = "{}"

[[tenants]]
id = "acme"
backend = "shared"

[[tenants]]
id = "globex"
backend = "shared"

[[rules]]
database = "app"
collection = "orders"
mode = "field"

[[rules]]
database = "app"
collection = "countries"
mode = "shared"

[[rules]]
database = "app"
collection = "inv*"
mode = "collection"

[[rules]]
database = "app"
collection = "*__invoices"
mode = "field"
"#,
        backend.uri()
    )
}

fn fields(pairs: &[(&str, RawBson)]) -> RawDocumentBuf {
    let mut doc = RawDocumentBuf::new();
    for (k, v) in pairs {
        doc.append(CString::try_from(*k).unwrap(), v.clone());
    }
    doc
}

/// Sends one command and returns the reply body.
fn run(raw: &mut RawClient, id: i32, body: RawDocumentBuf) -> Document {
    raw.send(&OpMsg::new(MsgFlags::default(), body).encode(id, 0).unwrap());
    let Some(Message::Msg(reply)) = raw.recv().map(|d| d.message) else { panic!("no reply") };
    Document::try_from(reply.body()).unwrap()
}

fn code(reply: &Document) -> i32 {
    reply.get_i32("code").unwrap_or_else(|_| panic!("not an error: {reply}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frame_attacks_neither_read_nor_change_another_tenants_data() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&policy_text(&backend)).await;
    let (acme_addr, globex_addr) = (proxy.addrs()[0], proxy.addrs()[1]);
    let direct = mongodb::Client::with_uri_str(backend.uri()).await.unwrap();
    let app = direct.database("app");
    app.collection::<Document>("countries").insert_one(doc! { "_id": "fr", "k": 1 }).await.unwrap();

    tokio::task::spawn_blocking(move || {
        // globex's data: a row in the shared collection and its own invoices collection.
        let mut globex = RawClient::connect(globex_addr);
        let r = run(&mut globex, 1, rawdoc! { "insert": "orders", "documents": [{ "_id": "g1", "k": 1 }], "$db": "app" });
        assert_eq!(r.get_i32("n").unwrap(), 1, "{r}");
        let r = run(&mut globex, 2, rawdoc! { "insert": "invoices", "documents": [{ "_id": "gi", "total": 9 }], "$db": "app" });
        assert_eq!(r.get_i32("n").unwrap(), 1, "{r}");

        let mut acme = RawClient::connect(acme_addr);
        // A $lookup with two `from` keys: mongod would join the last (every tenant's orders).
        let lookup = fields(&[
            ("from", RawBson::String("countries".into())),
            ("from", RawBson::String("orders".into())),
            ("localField", RawBson::String("k".into())),
            ("foreignField", RawBson::String("k".into())),
            ("as", RawBson::String("x".into())),
        ]);
        let mut pipeline = bson::RawArrayBuf::new();
        pipeline.push(fields(&[("$lookup", RawBson::Document(lookup))]));
        let aggregate = fields(&[
            ("aggregate", RawBson::String("countries".into())),
            ("pipeline", RawBson::Array(pipeline)),
            ("cursor", RawBson::Document(rawdoc! {})),
            ("$db", RawBson::String("app".into())),
        ]);
        let r = run(&mut acme, 3, aggregate);
        assert_eq!(code(&r), 2, "{r}");
        // The single-key join is scoped: acme sees no globex row through it.
        let r = run(
            &mut acme,
            4,
            rawdoc! { "aggregate": "countries", "pipeline": [{ "$lookup": { "from": "orders", "localField": "k", "foreignField": "k", "as": "x" } }], "cursor": {}, "$db": "app" },
        );
        let batch = r.get_document("cursor").unwrap().get_array("firstBatch").unwrap();
        assert_eq!(batch.len(), 1, "{r}");
        assert!(batch[0].as_document().unwrap().get_array("x").unwrap().is_empty(), "{r}");

        // An update statement with two `q` keys (the first pinned, the second empty).
        let stmt = fields(&[
            ("q", RawBson::Document(rawdoc! { "tenantId": "acme" })),
            ("q", RawBson::Document(rawdoc! {})),
            ("u", RawBson::Document(rawdoc! { "$set": { "hacked": true } })),
            ("multi", RawBson::Boolean(true)),
        ]);
        let mut updates = bson::RawArrayBuf::new();
        updates.push(stmt);
        let update = fields(&[
            ("update", RawBson::String("orders".into())),
            ("updates", RawBson::Array(updates)),
            ("$db", RawBson::String("app".into())),
        ]);
        assert_eq!(code(&run(&mut acme, 5, update)), 2);

        // globex's real collection name through the `*__invoices` field rule: read, write, list.
        let r = run(&mut acme, 6, rawdoc! { "find": "globex__invoices", "$db": "app" });
        assert_eq!(code(&r), 13, "{r}");
        let r = run(&mut acme, 7, rawdoc! { "insert": "globex__invoices", "documents": [{ "_id": "x" }], "$db": "app" });
        assert_eq!(code(&r), 13, "{r}");
        let r = run(&mut acme, 8, rawdoc! { "listCollections": 1, "$db": "app" });
        let names: Vec<String> = r
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .iter()
            .map(|c| c.as_document().unwrap().get_str("name").unwrap().to_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains("globex")), "{names:?}");

        // Arguments the proxy does not list never reach the server.
        let r = run(&mut acme, 9, rawdoc! { "find": "orders", "rawData": true, "$db": "app" });
        assert_eq!(code(&r), 40415, "{r}");
        assert!(r.get_str("errmsg").unwrap().contains("find.rawData"), "{r}");
    })
    .await
    .unwrap();

    // On the backend: globex's rows untouched, nothing written into globex's collection.
    let orders: Vec<Document> = common::all_docs(&direct, "app", "orders").await;
    assert_eq!(orders, vec![doc! { "_id": "g1", "k": 1, "tenantId": "globex" }]);
    let invoices = common::all_docs(&direct, "app", "globex__invoices").await;
    assert_eq!(invoices, vec![doc! { "_id": "gi", "total": 9 }]);
}
