//! Unique indexes on field-mode collections: the per-tenant index an app means, created under the app's name and
//! listed back as the app created it (mongoose `syncIndexes`, Payload `unique`, GridFS `{files_id, n}`). Pure:
//! the exact forwarded command and the reply the tenant would see (`tenantwall explain --reply`).

use bson::{doc, Document};
use tenantwall::explain::{explain, explain_with_reply, Outcome};
use tenantwall::Policy;

const POLICY: &str = r#"
[[listeners]]
address = "127.0.0.1:0"

[[backends]]
name = "b"
uri = "mongodb://127.0.0.1:1/"

[[tenants]]
id = "acme"
backend = "b"
sni = ["acme"]

# Its value differs from acme's only in case: a non-simple collation could confuse the two, so this policy does
# not qualify for collations on field-mode collections (tests/collation.rs covers the ones that do).
[[tenants]]
id = "acme-upper"
value = "ACME"
backend = "b"
sni = ["acme-upper"]

[[tenants]]
id = "globex"
backend = "b"
sni = ["globex"]

[[rules]]
database = "app"
collection = "orders"
mode = "field"

[[rules]]
database = "app"
collection = "fs.*"
mode = "field"

[[rules]]
database = "app"
collection = "checked"
mode = "field"
style = "verify"

[[rules]]
database = "app"
collection = "countries"
mode = "shared"
"#;

fn policy() -> Policy {
    Policy::from_toml(POLICY, std::path::Path::new("unique-indexes.toml")).unwrap()
}

fn sent(command: Document) -> Document {
    match explain(&policy(), "acme", command, "app").unwrap() {
        Outcome::Forwarded { command, .. } => command,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn denied(command: Document) -> (i32, String) {
    match explain(&policy(), "acme", command, "app").unwrap() {
        Outcome::Denied { code, reason, .. } => (code, reason),
        other => panic!("not denied: {other:?}"),
    }
}

fn listed(coll: &str, indexes: Vec<Document>) -> Vec<Document> {
    let reply = doc! { "cursor": { "id": 0i64, "ns": format!("app.{coll}"), "firstBatch": indexes }, "ok": 1.0 };
    match explain_with_reply(&policy(), "acme", doc! { "listIndexes": coll, "cursor": {} }, "app", Some(reply)).unwrap()
    {
        Outcome::Forwarded { reply: Some(reply), .. } => reply
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .iter()
            .map(|i| i.as_document().unwrap().clone())
            .collect(),
        other => panic!("not forwarded: {other:?}"),
    }
}

fn first_index(command: &Document) -> Document {
    command.get_array("indexes").unwrap()[0].as_document().unwrap().clone()
}

#[test]
fn a_unique_index_becomes_the_per_tenant_index_under_the_same_name() {
    let out = sent(doc! { "createIndexes": "orders", "indexes": [
        { "key": { "email": 1 }, "name": "email_1", "unique": true, "background": true },
        { "key": { "status": 1 }, "name": "status_1" },
    ] });
    let indexes = out.get_array("indexes").unwrap();
    assert_eq!(
        indexes[0].as_document().unwrap(),
        &doc! { "key": { "tenantId": 1, "email": 1 }, "name": "email_1", "unique": true, "background": true }
    );
    // Non-unique indexes go as they came.
    assert_eq!(indexes[1].as_document().unwrap(), &doc! { "key": { "status": 1 }, "name": "status_1" });
    // Flags read as mongod reads them: `unique: 1` and prepareUnique are unique too, `unique: 0` is not.
    for flag in [doc! { "unique": 1 }, doc! { "prepareUnique": true }] {
        let mut index = doc! { "key": { "sku": -1, "at": 1 }, "name": "sku" };
        index.extend(flag);
        let out = first_index(&sent(doc! { "createIndexes": "orders", "indexes": [index] }));
        assert_eq!(out.get_document("key").unwrap(), &doc! { "tenantId": 1, "sku": -1, "at": 1 });
    }
    let out = first_index(&sent(
        doc! { "createIndexes": "orders", "indexes": [{ "key": { "sku": 1 }, "name": "sku", "unique": 0 }] },
    ));
    assert_eq!(out.get_document("key").unwrap(), &doc! { "sku": 1 });
    // Already per tenant: unchanged.
    let out = first_index(&sent(
        doc! { "createIndexes": "orders", "indexes": [{ "key": { "tenantId": 1, "email": 1 }, "name": "tenantId_1_email_1", "unique": true }] },
    ));
    assert_eq!(out.get_document("key").unwrap(), &doc! { "tenantId": 1, "email": 1 });
}

#[test]
fn gridfs_chunks_get_their_per_tenant_unique_index() {
    let out = first_index(&sent(
        doc! { "createIndexes": "fs.chunks", "indexes": [{ "key": { "files_id": 1, "n": 1 }, "name": "files_id_1_n_1", "unique": true }] },
    ));
    assert_eq!(out.get_document("key").unwrap(), &doc! { "tenantId": 1, "files_id": 1, "n": 1 });
    assert_eq!(out.get_str("name").unwrap(), "files_id_1_n_1");
    let shown = listed(
        "fs.chunks",
        vec![
            doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
            doc! { "v": 2, "key": { "tenantId": 1, "files_id": 1, "n": 1 }, "name": "files_id_1_n_1", "unique": true },
        ],
    );
    assert_eq!(shown[1], doc! { "v": 2, "key": { "files_id": 1, "n": 1 }, "name": "files_id_1_n_1", "unique": true });
}

#[test]
fn list_indexes_shows_the_index_as_the_tenant_created_it() {
    let shown = listed(
        "orders",
        vec![
            doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
            // Created by the proxy from `{email: 1}`.
            doc! { "v": 2, "key": { "tenantId": 1, "email": 1 }, "name": "email_1", "unique": true },
            // Created as it is, under its default name: shown as it is.
            doc! { "v": 2, "key": { "tenantId": 1, "sku": 1 }, "name": "tenantId_1_sku_1", "unique": true },
            // Not unique: never rewritten, shown as it is.
            doc! { "v": 2, "key": { "tenantId": 1, "at": 1 }, "name": "at_1" },
        ],
    );
    assert_eq!(shown[0], doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" });
    assert_eq!(shown[1], doc! { "v": 2, "key": { "email": 1 }, "name": "email_1", "unique": true });
    assert_eq!(
        shown[2],
        doc! { "v": 2, "key": { "tenantId": 1, "sku": 1 }, "name": "tenantId_1_sku_1", "unique": true }
    );
    assert_eq!(shown[3], doc! { "v": 2, "key": { "tenantId": 1, "at": 1 }, "name": "at_1" });
    // What was created is what is listed: the round trip mongoose syncIndexes compares.
    let created = doc! { "key": { "email": 1 }, "name": "email_1", "unique": true };
    let stored = first_index(&sent(doc! { "createIndexes": "orders", "indexes": [created.clone()] }));
    assert_eq!(listed("orders", vec![stored])[0], created);
}

#[test]
fn ttl_partial_sparse_and_ambiguous_unique_indexes_are_refused_by_name() {
    let cases = [
        (doc! { "key": { "at": 1 }, "name": "expiry", "expireAfterSeconds": 60 }, "TTL"),
        (
            doc! { "key": { "a": 1 }, "name": "vip", "partialFilterExpression": { "vip": true } },
            "partialFilterExpression",
        ),
        (doc! { "key": { "tenantId": 1 }, "name": "t", "unique": true }, "alone"),
        (doc! { "key": { "email": 1, "tenantId": 1 }, "name": "et", "unique": true }, "first"),
        (doc! { "key": { "email": 1 }, "name": "em", "unique": true, "sparse": true }, "sparse"),
        (doc! { "key": { "email": 1 }, "name": "tenantId_1_email_1", "unique": true }, "default name"),
        (
            doc! { "key": { "email": 1 }, "name": "ci", "unique": true, "collation": { "locale": "en", "strength": 2 } },
            "collation",
        ),
    ];
    for (index, why) in cases {
        let name = index.get_str("name").unwrap().to_owned();
        let (code, reason) = denied(doc! { "createIndexes": "orders", "indexes": [index] });
        assert_eq!(code, 13, "{reason}");
        assert!(reason.contains("app.orders") && reason.contains(&name) && reason.contains(why), "{reason}");
    }
    // Verify style never rewrites: it asks the app to pin the tenant itself.
    let (code, reason) = denied(
        doc! { "createIndexes": "checked", "indexes": [{ "key": { "email": 1 }, "name": "email_1", "unique": true }] },
    );
    assert_eq!(code, 13);
    assert!(reason.contains("app.checked") && reason.contains("email_1") && reason.contains("tenantId"), "{reason}");
    // Shared reference data stays read-only.
    let (code, reason) = denied(
        doc! { "createIndexes": "countries", "indexes": [{ "key": { "iso": 1 }, "name": "iso_1", "unique": true }] },
    );
    assert_eq!(code, 13);
    assert!(reason.contains("app.countries"), "{reason}");
}

#[test]
fn verify_style_listings_are_not_rewritten() {
    let reply = doc! { "cursor": { "id": 0i64, "ns": "app.checked", "firstBatch": [
        { "v": 2, "key": { "tenantId": 1, "email": 1 }, "name": "email_1", "unique": true },
    ] }, "ok": 1.0 };
    let out = match explain_with_reply(
        &policy(),
        "acme",
        doc! { "listIndexes": "checked", "cursor": {} },
        "app",
        Some(reply),
    )
    .unwrap()
    {
        Outcome::Forwarded { reply: Some(reply), .. } => reply,
        other => panic!("{other:?}"),
    };
    let first = out.get_document("cursor").unwrap().get_array("firstBatch").unwrap()[0].clone();
    assert_eq!(first.as_document().unwrap().get_document("key").unwrap(), &doc! { "tenantId": 1, "email": 1 });
}
