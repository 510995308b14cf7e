//! Collection- and database-mode rewriting, both ways: every namespace-bearing field of a request renamed, and
//! the reply mapped back (cursor namespaces, listings, errors, explain output). Pure functions; exact outputs.

use bson::{doc, Bson, Document};
use tenantwall::explain::{explain_with_reply, Outcome};
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

[[tenants]]
id = "acme-corp"
backend = "b"
sni = ["corp"]

[[rules]]
database = "crm"
collection = "countries"
mode = "shared"

[[rules]]
database = "crm"
collection = "events"
mode = "field"

[[rules]]
database = "crm"
mode = "collection"

[[rules]]
database = "app"
mode = "database"
"#;

fn policy() -> Policy {
    Policy::from_toml(POLICY, std::path::Path::new("modes-test.toml")).unwrap()
}

fn run(tenant: &str, db: &str, command: Document, reply: Option<Document>) -> Outcome {
    explain_with_reply(&policy(), tenant, command, db, reply).unwrap()
}

fn sent(db: &str, command: Document) -> Document {
    match run("acme", db, command, None) {
        Outcome::Forwarded { command, .. } => command,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn received(db: &str, command: Document, reply: Document) -> Document {
    match run("acme", db, command, Some(reply)) {
        Outcome::Forwarded { reply: Some(reply), .. } => reply,
        other => panic!("not forwarded: {other:?}"),
    }
}

/// The names in a listing reply's first batch.
fn batch_names(reply: &Document) -> Vec<&str> {
    let batch = reply.get_document("cursor").unwrap().get_array("firstBatch").unwrap();
    batch.iter().map(|d| d.as_document().unwrap().get_str("name").unwrap()).collect()
}

fn denied(tenant: &str, db: &str, command: Document) -> i32 {
    match run(tenant, db, command.clone(), None) {
        Outcome::Denied { code, .. } => code,
        other => panic!("{command} not denied: {other:?}"),
    }
}

#[test]
fn collection_mode_renames_every_request_namespace() {
    let cases = [
        (
            doc! { "find": "contacts", "filter": { "a": 1 } },
            doc! { "find": "acme__contacts", "filter": { "a": 1 }, "$db": "crm" },
        ),
        (
            doc! { "insert": "contacts", "documents": [{ "a": 1 }] },
            doc! { "insert": "acme__contacts", "documents": [{ "a": 1 }], "$db": "crm" },
        ),
        (doc! { "count": "contacts" }, doc! { "count": "acme__contacts", "$db": "crm" }),
        (doc! { "drop": "contacts" }, doc! { "drop": "acme__contacts", "$db": "crm" }),
        (
            doc! { "createIndexes": "contacts", "indexes": [{ "key": { "e": 1 }, "name": "e", "unique": true }] },
            doc! { "createIndexes": "acme__contacts", "indexes": [{ "key": { "e": 1 }, "name": "e", "unique": true }], "$db": "crm" },
        ),
        (
            doc! { "dropIndexes": "contacts", "index": "*" },
            doc! { "dropIndexes": "acme__contacts", "index": "*", "$db": "crm" },
        ),
        (doc! { "listIndexes": "contacts" }, doc! { "listIndexes": "acme__contacts", "$db": "crm" }),
        (
            doc! { "getMore": 7i64, "collection": "contacts" },
            doc! { "getMore": 7i64, "collection": "acme__contacts", "$db": "crm" },
        ),
        (
            doc! { "killCursors": "contacts", "cursors": [7i64] },
            doc! { "killCursors": "acme__contacts", "cursors": [7i64], "$db": "crm" },
        ),
        (
            doc! { "create": "recent", "viewOn": "contacts", "pipeline": [{ "$lookup": { "from": "deals", "localField": "d", "foreignField": "_id", "as": "d" } }] },
            doc! { "create": "acme__recent", "viewOn": "acme__contacts", "pipeline": [{ "$lookup": { "from": "acme__deals", "localField": "d", "foreignField": "_id", "as": "d" } }], "$db": "crm" },
        ),
        (
            doc! { "collMod": "recent", "viewOn": "deals", "pipeline": [] },
            doc! { "collMod": "acme__recent", "viewOn": "acme__deals", "pipeline": [], "$db": "crm" },
        ),
        (
            doc! { "explain": { "find": "contacts" }, "verbosity": "queryPlanner" },
            doc! { "explain": { "find": "acme__contacts" }, "verbosity": "queryPlanner", "$db": "crm" },
        ),
    ];
    for (command, expected) in cases {
        assert_eq!(sent("crm", command.clone()), expected, "{command}");
    }
}

#[test]
fn collection_mode_renames_every_stage_namespace() {
    let command = doc! { "aggregate": "contacts", "pipeline": [
        { "$lookup": { "from": "deals", "localField": "d", "foreignField": "_id", "as": "d" } },
        { "$lookup": { "from": "countries", "localField": "c", "foreignField": "code", "as": "c" } },
        { "$graphLookup": { "from": "contacts", "startWith": "$m", "connectFromField": "m", "connectToField": "_id", "as": "chain" } },
        { "$facet": { "x": [{ "$unionWith": "deals" }], "y": [{ "$unionWith": { "coll": "events", "pipeline": [{ "$limit": 1 }] } }] } },
        { "$merge": { "into": "summary", "on": "_id" } },
    ], "cursor": {} };
    assert_eq!(
        sent("crm", command),
        doc! { "aggregate": "acme__contacts", "pipeline": [
            { "$lookup": { "from": "acme__deals", "localField": "d", "foreignField": "_id", "as": "d" } },
            { "$lookup": { "from": "countries", "localField": "c", "foreignField": "code", "as": "c" } },
            { "$graphLookup": { "from": "acme__contacts", "startWith": "$m", "connectFromField": "m", "connectToField": "_id", "as": "chain" } },
            { "$facet": { "x": [{ "$unionWith": { "coll": "acme__deals" } }], "y": [{ "$unionWith": { "coll": "events", "pipeline": [{ "$match": { "tenantId": { "$eq": "acme" } } }, { "$limit": 1 }] } }] } },
            { "$merge": { "into": { "db": "crm", "coll": "acme__summary" }, "on": "_id" } },
        ], "cursor": {}, "$db": "crm" }
    );
    assert_eq!(
        sent("crm", doc! { "aggregate": "contacts", "pipeline": [{ "$out": "copy" }], "cursor": {} })
            .get_array("pipeline")
            .unwrap()[0],
        Bson::Document(doc! { "$out": { "db": "crm", "coll": "acme__copy" } })
    );
    // Writes out of the tenant's own names are refused: into shared or field-mode data, or another database.
    for stage in [
        doc! { "$out": "countries" },
        doc! { "$merge": { "into": "events" } },
        doc! { "$out": { "db": "admin", "coll": "x" } },
    ] {
        assert_eq!(
            denied("acme", "crm", doc! { "aggregate": "contacts", "pipeline": [stage.clone()], "cursor": {} }),
            13,
            "{stage}"
        );
    }
    // Collection-less pipelines and database-wide streams would cross other tenants' collections.
    assert_eq!(denied("acme", "crm", doc! { "aggregate": 1, "pipeline": [{ "$documents": [] }], "cursor": {} }), 13);
}

#[test]
fn database_mode_renames_the_database_both_ways() {
    assert_eq!(sent("app", doc! { "find": "notes" }), doc! { "find": "notes", "$db": "acme_app" });
    assert_eq!(
        sent(
            "app",
            doc! { "aggregate": "notes", "pipeline": [{ "$out": { "db": "app", "coll": "copy" } }], "cursor": {} }
        ),
        doc! { "aggregate": "notes", "pipeline": [{ "$out": { "db": "acme_app", "coll": "copy" } }], "cursor": {}, "$db": "acme_app" }
    );
    assert_eq!(sent("app", doc! { "dropDatabase": 1 }), doc! { "dropDatabase": 1, "$db": "acme_app" });
    // explain's inner $db must equal the outer one, so it is renamed too, even with nothing else to change.
    assert_eq!(
        sent("app", doc! { "explain": { "find": "notes", "$db": "app" } }),
        doc! { "explain": { "find": "notes", "$db": "acme_app" }, "$db": "acme_app" }
    );
    assert_eq!(
        sent("app", doc! { "aggregate": 1, "pipeline": [{ "$documents": [{ "a": 1 }] }], "cursor": {} }),
        doc! { "aggregate": 1, "pipeline": [{ "$documents": [{ "a": 1 }] }], "cursor": {}, "$db": "acme_app" }
    );
    // The reply comes back under the tenant's names.
    let reply = received(
        "app",
        doc! { "find": "notes", "batchSize": 1 },
        doc! { "cursor": { "id": 5i64, "ns": "acme_app.notes", "firstBatch": [{ "n": "acme_app.notes is data, not a name" }] }, "ok": 1.0 },
    );
    assert_eq!(
        reply,
        doc! { "cursor": { "id": 5i64, "ns": "app.notes", "firstBatch": [{ "n": "acme_app.notes is data, not a name" }] }, "ok": 1.0 }
    );
    // Another tenant's database by its real name is not reachable; neither is dropping a collection-mode database.
    assert_eq!(denied("acme", "acme-corp_app", doc! { "find": "notes" }), 13);
    assert_eq!(denied("acme", "crm", doc! { "dropDatabase": 1 }), 13);
}

#[test]
fn rename_needs_both_sides_to_be_the_tenants() {
    assert_eq!(
        sent("admin", doc! { "renameCollection": "crm.contacts", "to": "crm.people" }),
        doc! { "renameCollection": "crm.acme__contacts", "to": "crm.acme__people", "$db": "admin" }
    );
    assert_eq!(
        sent("admin", doc! { "renameCollection": "app.a", "to": "app.b", "dropTarget": true }),
        doc! { "renameCollection": "acme_app.a", "to": "acme_app.b", "dropTarget": true, "$db": "admin" }
    );
    for to in ["crm.events", "crm.countries", "other.x", "admin.x"] {
        assert_eq!(denied("acme", "admin", doc! { "renameCollection": "crm.contacts", "to": to }), 13, "{to}");
    }
}

#[test]
fn bulk_write_namespaces_are_renamed() {
    let command = doc! { "bulkWrite": 1, "ops": [{ "insert": 0, "document": { "a": 1 } }, { "insert": 1, "document": { "b": 1 } }], "nsInfo": [{ "ns": "crm.contacts" }, { "ns": "app.notes" }] };
    match run("acme", "admin", command, None) {
        Outcome::Forwarded { command, .. } => {
            assert_eq!(
                command.get_array("nsInfo").unwrap(),
                &vec![
                    Bson::Document(doc! { "ns": "crm.acme__contacts" }),
                    Bson::Document(doc! { "ns": "acme_app.notes" })
                ]
            );
            assert_eq!(command.get_array("ops").unwrap().len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn listings_show_only_the_tenants_own_under_visible_names() {
    let listing = doc! { "cursor": { "id": 0i64, "ns": "crm.$cmd.listCollections", "firstBatch": [
        { "name": "acme__contacts", "type": "collection", "options": {}, "idIndex": { "v": 2, "key": { "_id": 1 }, "name": "_id_", "ns": "crm.acme__contacts" } },
        { "name": "acme-corp__contacts", "type": "collection", "options": {} },
        { "name": "acme__recent", "type": "view", "options": { "viewOn": "acme__contacts", "pipeline": [{ "$lookup": { "from": "acme__deals" } }] } },
        { "name": "events", "type": "collection", "options": {} },
        { "name": "countries", "type": "collection", "options": {} },
        { "name": "system.views", "type": "collection", "options": {} },
        // acme may itself name a collection "acme-corp__contacts": that one is its own, stored under its prefix.
        { "name": "acme__acme-corp__contacts", "type": "collection", "options": {} },
    ] }, "ok": 1.0 };
    let reply = received("crm", doc! { "listCollections": 1, "nameOnly": false }, listing.clone());
    let names = batch_names(&reply);
    assert_eq!(names, vec!["contacts", "recent", "events", "countries", "acme-corp__contacts"]);
    let batch = reply.get_document("cursor").unwrap().get_array("firstBatch").unwrap();
    assert_eq!(batch[1].as_document().unwrap().get_document("options").unwrap(), &doc! { "viewOn": "contacts" });
    assert_eq!(
        batch[0].as_document().unwrap().get_document("idIndex").unwrap(),
        &doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" }
    );
    // acme-corp sees its own, and none of acme's.
    match run("acme-corp", "crm", doc! { "listCollections": 1 }, Some(listing)) {
        Outcome::Forwarded { reply: Some(reply), .. } => {
            let names = batch_names(&reply);
            assert_eq!(names, vec!["contacts", "events", "countries"]);
        }
        other => panic!("{other:?}"),
    }
    // The name filter is mapped to real names, and the listing comes in one batch.
    assert_eq!(
        sent(
            "crm",
            doc! { "listCollections": 1, "filter": { "name": { "$in": ["contacts", "events"] }, "type": "collection" }, "cursor": { "batchSize": 1 } }
        ),
        doc! { "listCollections": 1, "filter": { "name": { "$in": ["acme__contacts", "events"] }, "type": "collection" }, "cursor": {}, "$db": "crm" }
    );
    assert_eq!(denied("acme", "crm", doc! { "listCollections": 1, "filter": { "name": { "$regex": "^acme" } } }), 13);

    let databases = doc! { "databases": [
        { "name": "acme_app", "sizeOnDisk": 100i64, "empty": false },
        { "name": "acme-corp_app", "sizeOnDisk": 200i64, "empty": false },
        { "name": "crm", "sizeOnDisk": 50i64, "empty": false },
        { "name": "admin", "sizeOnDisk": 10i64, "empty": false },
        { "name": "payroll", "sizeOnDisk": 10i64, "empty": false },
    ], "totalSize": 370i64, "totalSizeMb": 0i64, "ok": 1.0 };
    // crm holds every tenant's collections: it is listed (a rule names it), but its size is not the tenant's.
    assert_eq!(
        received("admin", doc! { "listDatabases": 1 }, databases),
        doc! { "databases": [
            { "name": "app", "sizeOnDisk": 100i64, "empty": false },
            { "name": "crm", "sizeOnDisk": 0i64, "empty": false },
        ], "totalSize": 100i64, "totalSizeMb": 0i64, "ok": 1.0 }
    );
}

#[test]
fn errors_and_explain_output_use_visible_names() {
    let reply = received(
        "crm",
        doc! { "insert": "contacts", "documents": [{ "_id": 1 }] },
        doc! { "n": 0, "writeErrors": [{ "index": 0, "code": 2, "errmsg": "bad thing in crm.acme__contacts" }], "ok": 1.0 },
    );
    assert_eq!(
        reply.get_array("writeErrors").unwrap()[0].as_document().unwrap().get_str("errmsg").unwrap(),
        "bad thing in crm.contacts"
    );
    let reply = received(
        "app",
        doc! { "explain": { "find": "notes" } },
        doc! { "queryPlanner": { "namespace": "acme_app.notes", "winningPlan": { "stage": "COLLSCAN" } }, "ok": 1.0 },
    );
    assert_eq!(reply.get_document("queryPlanner").unwrap().get_str("namespace").unwrap(), "app.notes");
}
