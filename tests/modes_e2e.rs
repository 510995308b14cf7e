//! Collection- and database-level isolation end to end with the Rust driver against nx-27017: tenants use
//! identical names and never see each other's data, collections or databases; prefix-colliding tenant ids stay
//! apart; six tenants over three backends each write only to their own backend.

mod common;

use std::time::Duration;

use common::{scram_entry, start_proxy_text, Backend};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};

// nx-27017 keeps collections as SQLite tables and refuses '-' in their names, so the prefix-collision pair is
// acme / acmecorp here (the unit tests cover acme / acme-corp).
const TENANTS: [&str; 4] = ["acme", "acmecorp", "globex", "initech"];

fn policy_text(backend: &Backend) -> String {
    let mut text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"shared\"\nuri = \"{}\"\n\n",
        backend.uri()
    );
    let scram = scram_entry("pw");
    for t in TENANTS {
        text.push_str(&format!("[[tenants]]\nid = \"{t}\"\nbackend = \"shared\"\nusers = [{{ name = \"{t}-app\", scram = \"{scram}\" }}]\n\n"));
    }
    text.push_str(
        "[[rules]]\ndatabase = \"crm\"\ncollection = \"*\"\nmode = \"collection\"\n\n\
         [[rules]]\ndatabase = \"app\"\nmode = \"database\"\ntemplate = \"{tenant}_{db}\"\n",
    );
    text
}

async fn client(addr: std::net::SocketAddr, tenant: &str) -> mongodb::Client {
    let uri = format!("mongodb://{tenant}-app:pw@{addr}/?authSource=admin");
    let mut options = mongodb::options::ClientOptions::parse(uri).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    mongodb::Client::with_options(options).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_names_never_meet() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&policy_text(&backend)).await;
    let mut clients = Vec::new();
    for t in TENANTS {
        let c = client(proxy.addr(), t).await;
        c.database("crm")
            .collection::<Document>("contacts")
            .insert_many((0..25).map(|i| doc! { "who": t, "i": i }))
            .await
            .unwrap();
        c.database("app").collection::<Document>("notes").insert_one(doc! { "who": t }).await.unwrap();
        clients.push((t, c));
    }
    for (t, c) in &clients {
        // Data: only their own, under the names they used.
        let contacts: Vec<Document> = c
            .database("crm")
            .collection::<Document>("contacts")
            .find(doc! {})
            .batch_size(4)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(contacts.len(), 25, "{t}");
        assert!(contacts.iter().all(|d| d.get_str("who").unwrap() == *t), "{t} saw another tenant's contacts");
        let notes: Vec<Document> = common::all_docs(c, "app", "notes").await;
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].get_str("who").unwrap(), *t);
        // Catalog: exactly their own names.
        assert_eq!(c.database("crm").list_collection_names().await.unwrap(), vec!["contacts".to_owned()], "{t}");
        assert_eq!(c.database("app").list_collection_names().await.unwrap(), vec!["notes".to_owned()], "{t}");
        let mut dbs = c.list_database_names().await.unwrap();
        dbs.sort();
        assert_eq!(dbs, vec!["app".to_owned(), "crm".to_owned()], "{t}");
        // Cursors report the tenant-visible namespace, first batch and later ones.
        let first = c.database("crm").run_command(doc! { "find": "contacts", "batchSize": 5 }).await.unwrap();
        let cursor = first.get_document("cursor").unwrap();
        assert_eq!(cursor.get_str("ns").unwrap(), "crm.contacts");
        let more = c
            .database("crm")
            .run_command(doc! { "getMore": cursor.get_i64("id").unwrap(), "collection": "contacts", "batchSize": 5 })
            .await
            .unwrap();
        assert_eq!(more.get_document("cursor").unwrap().get_str("ns").unwrap(), "crm.contacts");
        let agg =
            c.database("app").run_command(doc! { "aggregate": "notes", "pipeline": [], "cursor": {} }).await.unwrap();
        assert_eq!(agg.get_document("cursor").unwrap().get_str("ns").unwrap(), "app.notes");
    }

    // Drops stay within the tenant. (renameCollection is rewritten too, see tests/rewrite_modes.rs; nx-27017
    // answers it with ok but does not rename, so it is not exercised here.)
    let (_, acme) = &clients[0];
    acme.database("app").drop().await.unwrap();
    assert_eq!(clients[2].1.database("app").collection::<Document>("notes").count_documents(doc! {}).await.unwrap(), 1);
    let err = acme.database("crm").drop().await.unwrap_err();
    assert!(err.to_string().contains("other tenants"), "{err}");

    // The backend holds the real names.
    let direct = mongodb::Client::with_uri_str(backend.uri()).await.unwrap();
    let mut real = direct.database("crm").list_collection_names().await.unwrap();
    real.sort();
    assert_eq!(real, vec!["acme__contacts", "acmecorp__contacts", "globex__contacts", "initech__contacts"]);
    let real_dbs = direct.list_database_names().await.unwrap();
    for db in ["acmecorp_app", "globex_app", "initech_app"] {
        assert!(real_dbs.iter().any(|d| d == db), "{db} missing from {real_dbs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_collisions_and_look_alikes_are_attacks_that_fail() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&policy_text(&backend)).await;
    let corp = client(proxy.addr(), "acmecorp").await;
    corp.database("crm").collection::<Document>("secrets").insert_one(doc! { "plan": "acquire acme" }).await.unwrap();
    let acme = client(proxy.addr(), "acme").await;
    // acme naming acme-corp's real collection, with or without the template, reaches only its own namespace.
    for name in ["acmecorp__secrets", "corp__secrets", "secrets"] {
        let seen = acme.database("crm").collection::<Document>(name).count_documents(doc! {}).await.unwrap();
        assert_eq!(seen, 0, "{name}");
    }
    // Databases of other tenants by real name: no rule opens them.
    for db in ["acmecorp_app", "globex_app"] {
        let err = acme.database(db).collection::<Document>("notes").find_one(doc! {}).await.unwrap_err();
        assert!(err.to_string().contains("no rule allows"), "{db}: {err}");
    }
    // A look-alike user name is just an unknown user.
    let lookalike = client(proxy.addr(), "acme\u{0441}orp").await;
    assert!(lookalike.database("crm").collection::<Document>("secrets").find_one(doc! {}).await.is_err());
    let stored = mongodb::Client::with_uri_str(backend.uri()).await.unwrap();
    let secrets: Vec<Document> = common::all_docs(&stored, "crm", "acmecorp__secrets").await;
    assert_eq!(secrets.len(), 1);
    // (nx-27017 creates a collection on first read, so acme's attempts leave empty acme__* collections behind;
    // what matters is that nothing appeared under acmecorp's prefix.)
    let names = stored.database("crm").list_collection_names().await.unwrap();
    let corp: Vec<_> = names.iter().filter(|n| n.starts_with("acmecorp__")).collect();
    assert_eq!(corp, vec!["acmecorp__secrets"], "an attempt reached another tenant's prefix: {names:?}");
    assert!(names.iter().all(|n| n.starts_with("acme__") || n.starts_with("acmecorp__")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_tenants_over_three_backends_write_only_to_their_own() {
    let backends = [Backend::start(), Backend::start(), Backend::start()];
    let mut text = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n\n");
    for (i, b) in backends.iter().enumerate() {
        text.push_str(&format!("[[backends]]\nname = \"b{i}\"\nuri = \"{}\"\n\n", b.uri()));
    }
    let scram = scram_entry("pw");
    for t in 0..6 {
        text.push_str(&format!("[[tenants]]\nid = \"t{t}\"\nbackend = \"b{}\"\nusers = [{{ name = \"t{t}-app\", scram = \"{scram}\" }}]\n\n", t % 3));
    }
    text.push_str("[[rules]]\ndatabase = \"app\"\nmode = \"database\"\n");
    let proxy = start_proxy_text(&text).await;
    let addr = proxy.addr();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..6 {
        for worker in 0..3 {
            tasks.spawn(async move {
                let c = client(addr, &format!("t{t}")).await;
                let items = c.database("app").collection::<Document>("items");
                for i in 0..20 {
                    items.insert_one(doc! { "who": format!("t{t}"), "w": worker, "i": i }).await.unwrap();
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    for (i, backend) in backends.iter().enumerate() {
        let direct = mongodb::Client::with_uri_str(backend.uri()).await.unwrap();
        let mut dbs: Vec<String> =
            direct.list_database_names().await.unwrap().into_iter().filter(|d| d.ends_with("_app")).collect();
        dbs.sort();
        assert_eq!(dbs, vec![format!("t{i}_app"), format!("t{}_app", i + 3)], "backend b{i}");
        for t in [i, i + 3] {
            let docs: Vec<Document> = direct
                .database(&format!("t{t}_app"))
                .collection::<Document>("items")
                .find(doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert_eq!(docs.len(), 60);
            assert!(docs.iter().all(|d| d.get_str("who").unwrap() == format!("t{t}")));
        }
    }
}
