//! Field-level isolation end to end: two tenants share `app.orders` on one nx-27017 through the proxy, with the
//! Rust driver. Every read sees only the reader's documents; every write is stamped; attacks fail; a direct scan
//! of the backend shows every document carrying its writer's tenant.

mod common;

use std::time::Duration;

use bson::rawdoc;
use common::{scram_entry, start_proxy_text, Backend};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;
use tenantwall_protocol::{Message, MsgFlags, OpMsg};

fn policy_text(backend: &Backend) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[[backends]]
name = "shared"
uri = "{}"

[[tenants]]
id = "acme"
backend = "shared"
users = [{{ name = "acme-app", scram = "{}" }}]

[[tenants]]
id = "globex"
backend = "shared"
users = [{{ name = "globex-app", scram = "{}" }}]

[[rules]]
database = "app"
collection = "orders"
mode = "field"

[[rules]]
database = "app"
collection = "countries"
mode = "shared"
"#,
        backend.uri(),
        scram_entry("acme-pw"),
        scram_entry("globex-pw")
    )
}

async fn client(addr: std::net::SocketAddr, user: &str, password: &str) -> mongodb::Client {
    let uri = format!("mongodb://{user}:{password}@{addr}/app?authSource=admin");
    let mut options = mongodb::options::ClientOptions::parse(uri).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    mongodb::Client::with_options(options).unwrap()
}

async fn all(coll: &Collection<Document>, filter: Document) -> Vec<Document> {
    coll.find(filter).await.unwrap().try_collect().await.unwrap()
}

fn code_of(error: &mongodb::error::Error) -> Option<i32> {
    match error.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_share_a_collection_and_see_only_their_own() {
    let backend = Backend::start();
    // Reference data, written directly (tenants cannot write it).
    let direct = mongodb::Client::with_uri_str(backend.uri()).await.unwrap();
    direct
        .database("app")
        .collection::<Document>("countries")
        .insert_many(vec![doc! { "code": "FR", "name": "France" }, doc! { "code": "DE", "name": "Germany" }])
        .await
        .unwrap();

    let proxy = start_proxy_text(&policy_text(&backend)).await;
    let acme = client(proxy.addr(), "acme-app", "acme-pw").await.database("app").collection::<Document>("orders");
    let globex = client(proxy.addr(), "globex-app", "globex-pw").await.database("app").collection::<Document>("orders");

    acme.insert_many((0..30).map(
        |i| doc! { "n": i, "who": "acme", "status": if i % 2 == 0 { "open" } else { "closed" }, "country": "FR" },
    ))
    .await
    .unwrap();
    globex
        .insert_many((0..20).map(|i| doc! { "n": i, "who": "globex", "status": "open", "country": "DE" }))
        .await
        .unwrap();

    // Reads: find (many batches), count, distinct, aggregate with a join into reference data.
    let mine: Vec<Document> = acme.find(doc! {}).batch_size(4).await.unwrap().try_collect().await.unwrap();
    assert_eq!(mine.len(), 30);
    assert!(mine.iter().all(|d| d.get_str("who").unwrap() == "acme" && d.get_str("tenantId").unwrap() == "acme"));
    assert_eq!(globex.count_documents(doc! {}).await.unwrap(), 20);
    assert_eq!(acme.count_documents(doc! { "status": "open" }).await.unwrap(), 15);
    assert_eq!(acme.estimated_document_count().await.unwrap(), 30, "estimated count must be scoped too");
    let whos = globex.distinct("who", doc! {}).await.unwrap();
    assert_eq!(whos, vec![Bson::String("globex".into())]);
    let joined: Vec<Document> = acme
        .aggregate(vec![
            doc! { "$match": { "n": { "$lt": 3 } } },
            doc! { "$lookup": { "from": "countries", "localField": "country", "foreignField": "code", "as": "c" } },
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(joined.len(), 3);
    // Attempts to read across tenants find nothing.
    assert!(all(&acme, doc! { "who": "globex" }).await.is_empty());
    assert!(all(&acme, doc! { "tenantId": "globex" }).await.is_empty());
    assert!(all(&acme, doc! { "$or": [{ "tenantId": { "$ne": "acme" } }, { "n": { "$gte": 0 } }] })
        .await
        .iter()
        .all(|d| d.get_str("who").unwrap() == "acme"));

    // Writes only reach the writer's documents.
    let updated = acme.update_many(doc! {}, doc! { "$set": { "touched": true } }).await.unwrap();
    assert_eq!(updated.matched_count, 30);
    let deleted = globex.delete_many(doc! { "n": { "$gte": 10 } }).await.unwrap();
    assert_eq!(deleted.deleted_count, 10);
    assert_eq!(acme.count_documents(doc! { "n": { "$gte": 10 } }).await.unwrap(), 20, "globex deleted acme's");
    assert!(all(&globex, doc! { "touched": true }).await.is_empty());
    let replaced =
        globex.find_one_and_replace(doc! { "n": 0 }, doc! { "n": 0, "who": "globex", "replaced": true }).await.unwrap();
    assert!(replaced.is_some());

    // Attacks.
    let err = acme.insert_one(doc! { "who": "forged", "tenantId": "globex" }).await.unwrap_err();
    assert_eq!(code_of(&err), Some(13), "{err}");
    let err = acme.update_many(doc! {}, doc! { "$set": { "tenantId": "globex" } }).await.unwrap_err();
    assert_eq!(code_of(&err), Some(13), "{err}");
    let err = acme.find(doc! { "$where": "true" }).await.unwrap_err();
    assert_eq!(code_of(&err), Some(13), "{err}");
    let err = acme.drop().await.unwrap_err();
    assert_eq!(code_of(&err), Some(13), "{err}");
    let countries =
        client(proxy.addr(), "acme-app", "acme-pw").await.database("app").collection::<Document>("countries");
    assert_eq!(countries.count_documents(doc! {}).await.unwrap(), 2);
    assert_eq!(code_of(&countries.insert_one(doc! { "code": "XX" }).await.unwrap_err()), Some(13));

    // The backend itself: every document carries its writer's tenant, none is unstamped.
    let raw: Vec<Document> = all(&direct.database("app").collection::<Document>("orders"), doc! {}).await;
    assert_eq!(raw.len(), 40);
    for d in &raw {
        let who = d.get_str("who").unwrap();
        assert_eq!(d.get_str("tenantId").unwrap(), who, "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_belong_to_the_tenant_that_opened_them() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&policy_text(&backend)).await;
    let acme = client(proxy.addr(), "acme-app", "acme-pw").await;
    acme.database("app").collection::<Document>("orders").insert_many((0..10).map(|i| doc! { "n": i })).await.unwrap();
    // acme opens a cursor; globex tries to continue and to kill it.
    let first = acme.database("app").run_command(doc! { "find": "orders", "batchSize": 2 }).await.unwrap();
    let id = first.get_document("cursor").unwrap().get_i64("id").unwrap();
    assert_ne!(id, 0);
    let globex = client(proxy.addr(), "globex-app", "globex-pw").await;
    let err = globex.database("app").run_command(doc! { "getMore": id, "collection": "orders" }).await.unwrap_err();
    assert_eq!(code_of(&err), Some(43), "{err}");
    let killed = globex.database("app").run_command(doc! { "killCursors": "orders", "cursors": [id] }).await.unwrap();
    assert_eq!(killed.get_array("cursorsNotFound").unwrap(), &vec![Bson::Int64(id)]);
    // Mixed with one of globex's own: globex's is killed, acme's is reported as not found and lives on.
    globex
        .database("app")
        .collection::<Document>("orders")
        .insert_many(vec![doc! { "g": 1 }, doc! { "g": 2 }])
        .await
        .unwrap();
    let own = globex.database("app").run_command(doc! { "find": "orders", "batchSize": 1 }).await.unwrap();
    let own_id = own.get_document("cursor").unwrap().get_i64("id").unwrap();
    let mixed =
        globex.database("app").run_command(doc! { "killCursors": "orders", "cursors": [own_id, id] }).await.unwrap();
    assert_ne!(own_id, 0);
    assert_eq!(mixed.get_array("cursorsNotFound").unwrap(), &vec![Bson::Int64(id)], "{mixed}");
    assert_eq!(mixed.get_array("cursorsKilled").unwrap(), &vec![Bson::Int64(own_id)], "{mixed}");
    // The owner can still use it, to the end.
    let next = acme
        .database("app")
        .run_command(doc! { "getMore": id, "collection": "orders", "batchSize": 100 })
        .await
        .unwrap();
    assert_eq!(next.get_document("cursor").unwrap().get_array("nextBatch").unwrap().len(), 8);
    // An exhausted cursor id is forgotten.
    let err = acme.database("app").run_command(doc! { "getMore": id, "collection": "orders" }).await.unwrap_err();
    assert_eq!(code_of(&err), Some(43), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_key_errors_do_not_reveal_other_tenants_values() {
    let backend = Backend::start();
    let direct = mongodb::Client::with_uri_str(backend.uri()).await.unwrap();
    // An index that is not tenant-prefixed, created by an operator directly.
    direct
        .database("app")
        .collection::<Document>("orders")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! { "email": 1 })
                .options(mongodb::options::IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .unwrap();
    let proxy = start_proxy_text(&policy_text(&backend)).await;
    let globex = client(proxy.addr(), "globex-app", "globex-pw").await.database("app").collection::<Document>("orders");
    globex.insert_one(doc! { "email": "ceo@globex.test" }).await.unwrap();
    let acme = client(proxy.addr(), "acme-app", "acme-pw").await.database("app").collection::<Document>("orders");
    let err = acme.insert_one(doc! { "email": "ceo@globex.test" }).await.unwrap_err();
    assert_eq!(code_of(&err), Some(11000), "{err}");
    let text = format!("{err:?}");
    assert!(!text.contains("globex"), "duplicate-key error leaks another tenant: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_with_document_sequences_are_scoped() {
    // pymongo and the Rust driver put insert documents in a kind-1 sequence; check the stamping on that path
    // directly too, and that a sequence cannot smuggle the tenant field.
    let backend = Backend::start();
    let text = policy_text(&backend).replace(
        "[[listeners]]\naddress = \"127.0.0.1:0\"",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"acme\"",
    );
    let proxy = start_proxy_text(&text).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut raw = common::RawClient::connect(addr);
        let insert = OpMsg::with_sequences(
            MsgFlags::default(),
            rawdoc! { "insert": "orders", "$db": "app" },
            vec![tenantwall_protocol::Sequence::new(
                "documents",
                vec![rawdoc! { "_id": 1 }, rawdoc! { "_id": 2, "tenantId": "globex" }],
            )],
        );
        raw.send(&insert.encode(1, 0).unwrap());
        let Some(Message::Msg(reply)) = raw.recv().map(|d| d.message) else { panic!("no reply") };
        assert_eq!(reply.body().get_i32("code").unwrap(), 13, "{:?}", reply.body());
        let ok = OpMsg::with_sequences(
            MsgFlags::default(),
            rawdoc! { "insert": "orders", "$db": "app" },
            vec![tenantwall_protocol::Sequence::new("documents", vec![rawdoc! { "_id": 3 }])],
        );
        raw.send(&ok.encode(2, 0).unwrap());
        let Some(Message::Msg(reply)) = raw.recv().map(|d| d.message) else { panic!("no reply") };
        assert_eq!(reply.body().get_i32("n").unwrap(), 1, "{:?}", reply.body());
    })
    .await
    .unwrap();
    let direct = mongodb::Client::with_uri_str(backend.uri()).await.unwrap();
    let stored = all(&direct.database("app").collection::<Document>("orders"), doc! {}).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].get_str("tenantId").unwrap(), "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_index_is_unique_per_tenant() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&policy_text(&backend)).await;
    let acme = client(proxy.addr(), "acme-app", "acme-pw").await.database("app").collection::<Document>("orders");
    let globex = client(proxy.addr(), "globex-app", "globex-pw").await.database("app").collection::<Document>("orders");
    let unique = || {
        mongodb::IndexModel::builder()
            .keys(doc! { "email": 1 })
            .options(mongodb::options::IndexOptions::builder().unique(true).build())
            .build()
    };
    // What mongoose `unique: true` sends; the second tenant's identical request finds the index there.
    acme.create_index(unique()).await.unwrap();
    globex.create_index(unique()).await.unwrap();
    acme.insert_one(doc! { "email": "ceo@example.test" }).await.unwrap();
    let err = acme.insert_one(doc! { "email": "ceo@example.test" }).await.unwrap_err();
    assert_eq!(code_of(&err), Some(11000), "{err}");
    // Another tenant may use the same value.
    globex.insert_one(doc! { "email": "ceo@example.test" }).await.unwrap();
    assert_eq!(all(&acme, doc! {}).await.len(), 1);
    assert_eq!(all(&globex, doc! {}).await.len(), 1);
    // Listed as the tenant created it; stored per tenant. (nx-27017 names indexes itself, so they are found by
    // being unique rather than by name.)
    let is_unique = |i: &&mongodb::IndexModel| i.options.as_ref().and_then(|o| o.unique) == Some(true);
    let listed: Vec<_> = acme.list_indexes().await.unwrap().try_collect().await.unwrap();
    let email = listed.iter().find(is_unique);
    assert_eq!(email.map(|i| i.keys.clone()), Some(doc! { "email": 1 }), "{listed:?}");
    let direct = mongodb::Client::with_uri_str(backend.uri()).await.unwrap();
    let stored: Vec<_> = direct
        .database("app")
        .collection::<Document>("orders")
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let email = stored.iter().find(is_unique);
    assert_eq!(email.map(|i| i.keys.clone()), Some(doc! { "tenantId": 1, "email": 1 }), "{stored:?}");
}
