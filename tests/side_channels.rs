//! Side channels and write paths: what a tenant could read, infer or change through replies, explain, stats,
//! listings, cursors, collations, `create` and index options. Replies are shaped as a real MongoDB sends them
//! (`tenantwall explain --reply`), including shapes nx-27017 cannot produce. Pure functions; no sockets.

use bson::{doc, Bson, Document};
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
max_time_ms = 5000
allow_disk_use = false

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
collection = "countries"
mode = "shared"

[[rules]]
database = "app"
collection = "inv*"
mode = "collection"

[[rules]]
database = "own"
mode = "database"

[[rules]]
database = "logs*"
collection = "events"
mode = "field"
"#;

fn policy() -> Policy {
    Policy::from_toml(POLICY, std::path::Path::new("side-channels.toml")).unwrap()
}

fn reply_to(db: &str, command: Document, reply: Document) -> Document {
    match explain_with_reply(&policy(), "acme", command, db, Some(reply)).unwrap() {
        Outcome::Forwarded { reply: Some(reply), .. } => reply,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn sent(db: &str, command: Document) -> Document {
    match explain(&policy(), "acme", command, db).unwrap() {
        Outcome::Forwarded { command, .. } => command,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn denied(db: &str, command: Document) -> (i32, String) {
    match explain(&policy(), "acme", command, db).unwrap() {
        Outcome::Denied { code, reason, .. } => (code, reason),
        other => panic!("not denied: {other:?}"),
    }
}

fn text(doc: &Document) -> String {
    format!("{doc:?}")
}

// ---- 1. errors that echo other tenants' documents ----

#[test]
fn errors_on_shared_namespaces_keep_codes_and_lose_data() {
    let geo = doc! { "ok": 0.0, "code": 16755, "codeName": "Location16755",
    "errmsg": "Can't extract geo keys: { _id: 7, tenantId: \"globex\", home: \"Springfield\" }" };
    let out = reply_to(
        "app",
        doc! { "createIndexes": "orders", "indexes": [{ "key": { "tenantId": 1, "home": "2dsphere" }, "name": "geo" }] },
        geo,
    );
    assert_eq!(out.get_i32("code").unwrap(), 16755);
    assert_eq!(out.get_str("codeName").unwrap(), "Location16755");
    assert!(!text(&out).contains("globex") && !text(&out).contains("Springfield"), "{out}");

    let language = doc! { "ok": 0.0, "code": 17262, "codeName": "Location17262", "errmsg": "language override unsupported: klingon-globex" };
    let out = reply_to("app", doc! { "insert": "orders", "documents": [{ "a": 1 }] }, language);
    assert!(!text(&out).contains("klingon"), "{out}");

    let write = doc! { "ok": 1.0, "n": 0,
    "writeErrors": [{ "index": 0, "code": 121, "codeName": "DocumentValidationFailure", "errmsg": "Document failed validation",
        "errInfo": { "failingDocumentId": "globex-secret", "details": { "reason": "x" } } }],
    "writeConcernError": { "code": 9, "codeName": "FailedToParse", "errmsg": "bad: globex-secret", "errInfo": { "writeConcern": { "w": 1 } } },
    "errorLabels": ["RetryableWriteError"] };
    let out = reply_to("app", doc! { "insert": "orders", "documents": [{ "a": 1 }] }, write);
    assert!(!text(&out).contains("globex"), "{out}");
    assert_eq!(out.get_array("errorLabels").unwrap(), &vec![Bson::String("RetryableWriteError".into())]);
    let error = out.get_array("writeErrors").unwrap()[0].as_document().unwrap().clone();
    assert_eq!(error.get_i32("code").unwrap(), 121);
    assert_eq!(error.get_i32("index").unwrap(), 0);
    assert!(error.get("errInfo").is_none());

    // MongoDB 8 bulkWrite: per-operation errors are cursor items.
    let bulk = doc! { "ok": 1.0, "nErrors": 1, "cursor": { "id": 0i64, "ns": "admin.$cmd.bulkWrite", "firstBatch": [
    { "ok": 0.0, "idx": 0, "code": 11000, "codeName": "DuplicateKey", "errmsg": "E11000 dup key: { email: \"ceo@globex.test\" }",
      "keyPattern": { "email": 1 }, "keyValue": { "email": "ceo@globex.test" } }] } };
    let out = reply_to(
        "admin",
        doc! { "bulkWrite": 1, "ops": [{ "insert": 0, "document": { "email": "ceo@globex.test" } }], "nsInfo": [{ "ns": "app.orders" }] },
        bulk,
    );
    assert!(!text(&out).contains("globex"), "{out}");
}

#[test]
fn a_conflict_inside_the_tenants_own_data_stays_readable() {
    let own = doc! { "ok": 1.0, "n": 0, "writeErrors": [{ "index": 0, "code": 11000, "codeName": "DuplicateKey",
    "errmsg": "E11000 duplicate key error collection: app.orders index: tenantId_1_email_1 dup key: { tenantId: \"acme\", email: \"a@acme.test\" }",
    "keyPattern": { "tenantId": 1, "email": 1 }, "keyValue": { "tenantId": "acme", "email": "a@acme.test" } }] };
    let out = reply_to("app", doc! { "insert": "orders", "documents": [{ "email": "a@acme.test" }] }, own);
    let error = out.get_array("writeErrors").unwrap()[0].as_document().unwrap().clone();
    assert_eq!(error.get_document("keyValue").unwrap(), &doc! { "email": "a@acme.test" });
    assert!(error.get_str("errmsg").unwrap().contains("index: tenantId_1_email_1"), "{error}");
}

#[test]
fn errors_on_the_tenants_own_namespaces_pass_as_they_are() {
    let error = doc! { "ok": 0.0, "code": 2, "codeName": "BadValue", "errmsg": "bad value in own data: x" };
    let out = reply_to("own", doc! { "find": "orders" }, error.clone());
    assert_eq!(out.get_str("errmsg").unwrap(), "bad value in own data: x");
}

// ---- 2. explain ----

fn explain_reply() -> Document {
    doc! {
        "explainVersion": "1",
        "queryPlanner": { "namespace": "app.orders", "winningPlan": { "stage": "COLLSCAN" }, "rejectedPlans": [] },
        "executionStats": { "nReturned": 1, "totalDocsExamined": 1_000_000, "totalKeysExamined": 0 },
        "command": { "find": "orders" },
        "serverInfo": { "host": "db-7.internal", "port": 27017, "version": "8.0.4" },
        "serverParameters": { "internalQueryFacetBufferSizeBytes": 104857600 },
        "ok": 1.0,
    }
}

#[test]
fn explain_on_shared_collections_shows_only_the_plan() {
    let out = reply_to(
        "app",
        doc! { "explain": { "find": "orders", "filter": {} }, "verbosity": "executionStats" },
        explain_reply(),
    );
    assert_eq!(out.keys().collect::<Vec<_>>(), ["explainVersion", "queryPlanner", "ok"]);
    // An aggregate's plan sits in its first stage.
    let stages = doc! { "stages": [
        { "$cursor": { "queryPlanner": { "winningPlan": { "stage": "IXSCAN" } }, "executionStats": { "totalDocsExamined": 9 } } },
        { "$group": {}, "nReturned": 1 },
    ], "serverInfo": { "host": "db-7" }, "ok": 1.0 };
    let out = reply_to("app", doc! { "explain": { "aggregate": "orders", "pipeline": [], "cursor": {} } }, stages);
    assert_eq!(out, doc! { "queryPlanner": { "winningPlan": { "stage": "IXSCAN" } }, "ok": 1.0 });
}

#[test]
fn explain_on_own_namespaces_keeps_statistics_but_never_the_backend() {
    let out = reply_to("own", doc! { "explain": { "find": "orders" }, "verbosity": "executionStats" }, explain_reply());
    assert!(out.get_document("executionStats").is_ok());
    let shown = text(&out);
    assert!(!shown.contains("db-7") && !shown.contains("8.0.4") && !shown.contains("internalQuery"), "{out}");
}

#[test]
fn explain_applies_the_tenants_limits() {
    let out = sent(
        "app",
        doc! { "explain": { "aggregate": "orders", "pipeline": [], "cursor": {}, "allowDiskUse": true }, "maxTimeMS": 60_000 },
    );
    assert_eq!(out.get_i64("maxTimeMS").unwrap(), 5000);
    assert!(!out.get_document("explain").unwrap().get_bool("allowDiskUse").unwrap());
}

// ---- 3. stats and listings ----

#[test]
fn databases_matched_only_by_a_glob_are_not_listed() {
    let databases = doc! { "databases": [
        { "name": "acme_own", "sizeOnDisk": 10i64, "empty": false },
        { "name": "logs2026", "sizeOnDisk": 99i64, "empty": false },
        { "name": "app", "sizeOnDisk": 500i64, "empty": false },
    ], "totalSize": 609i64, "totalSizeMb": 0i64, "ok": 1.0 };
    let out = reply_to("admin", doc! { "listDatabases": 1 }, databases);
    assert_eq!(
        out,
        doc! { "databases": [
            { "name": "own", "sizeOnDisk": 10i64, "empty": false },
            { "name": "app", "sizeOnDisk": 0i64, "empty": false },
        ], "totalSize": 10i64, "totalSizeMb": 0i64, "ok": 1.0 }
    );
}

#[test]
fn build_info_is_answered_by_the_proxy_after_authentication_too() {
    assert!(matches!(explain(&policy(), "acme", doc! { "buildInfo": 1 }, "admin").unwrap(), Outcome::Local));
}

// ---- 4. cursor ids of the wrong type ----

#[test]
fn cursor_ids_must_be_int64() {
    let (code, reason) = denied("app", doc! { "getMore": 12.0, "collection": "orders" });
    assert_eq!(code, 14, "{reason}");
    let (code, reason) = denied("app", doc! { "killCursors": "orders", "cursors": [7i64, 8.0] });
    assert_eq!(code, 14, "{reason}");
    assert!(reason.contains("killCursors.cursors.1"), "{reason}");
    let ok = sent("app", doc! { "killCursors": "orders", "cursors": [7i64] });
    assert_eq!(ok.get_array("cursors").unwrap(), &vec![Bson::Int64(7)]);
}

// ---- 5. collation across joins ----

#[test]
fn an_aggregates_collation_reaches_every_field_mode_namespace_it_reads() {
    for pipeline in [
        vec![doc! { "$lookup": { "from": "orders", "localField": "k", "foreignField": "k", "as": "o" } }],
        vec![doc! { "$unionWith": { "coll": "orders", "pipeline": [] } }],
        vec![
            doc! { "$graphLookup": { "from": "orders", "startWith": "$k", "connectFromField": "k", "connectToField": "k", "as": "g" } },
        ],
        vec![doc! { "$facet": { "f": [{ "$lookup": { "from": "orders", "as": "o", "pipeline": [] } }] } }],
    ] {
        let command = doc! { "aggregate": "countries", "pipeline": pipeline.clone(), "cursor": {}, "collation": { "locale": "en", "strength": 1 } };
        assert_eq!(denied("app", command).0, 13, "{pipeline:?}");
        // A simple collation, or none, is fine.
        let command =
            doc! { "aggregate": "countries", "pipeline": pipeline, "cursor": {}, "collation": { "locale": "simple" } };
        sent("app", command);
    }
}

// ---- 7. create on shared collections ----

#[test]
fn create_on_shared_collections_takes_no_options() {
    for option in [
        doc! { "capped": true, "size": 4096 },
        doc! { "validator": { "tenantId": { "$ne": "globex" } } },
        doc! { "collation": { "locale": "en", "strength": 2 } },
        doc! { "clusteredIndex": { "key": { "_id": 1 }, "unique": true }, "expireAfterSeconds": 1 },
        doc! { "timeseries": { "timeField": "t" } },
        doc! { "changeStreamPreAndPostImages": { "enabled": true } },
    ] {
        let mut command = doc! { "create": "orders" };
        command.extend(option.clone());
        let (code, reason) = denied("app", command);
        assert_eq!(code, 13, "{option}");
        assert!(reason.contains(option.keys().next().unwrap()), "{reason}");
    }
    assert_eq!(
        sent("app", doc! { "create": "orders", "writeConcern": { "w": 1 } }).get_str("create").unwrap(),
        "orders"
    );
    // On the tenant's own collections the options are the tenant's business.
    let own = sent("app", doc! { "create": "invoices", "capped": true, "size": 4096 });
    assert_eq!(own.get_str("create").unwrap(), "acme__invoices");
}

// ---- 8. index options ----

#[test]
fn unique_indexes_on_shared_collections_must_be_per_tenant() {
    let (code, reason) = denied(
        "app",
        doc! { "createIndexes": "orders", "indexes": [{ "key": { "tenantId": 1 }, "name": "t", "unique": true }] },
    );
    assert_eq!(code, 13);
    assert!(reason.contains("alone"), "{reason}");
    sent(
        "app",
        doc! { "createIndexes": "orders", "indexes": [{ "key": { "tenantId": 1, "email": 1 }, "name": "te", "unique": true }] },
    );
}

#[test]
fn stats_of_the_tenants_own_collection_never_name_the_backend() {
    let reply = doc! { "cursor": { "id": 0i64, "ns": "app.acme__invoices", "firstBatch": [
        { "ns": "app.acme__invoices", "host": "db-7.internal:27017", "localTime": 1i64, "storageStats": { "count": 3 } },
    ] }, "ok": 1.0 };
    let out = reply_to(
        "app",
        doc! { "aggregate": "invoices", "pipeline": [{ "$collStats": { "storageStats": {} } }], "cursor": {} },
        reply,
    );
    let first = out.get_document("cursor").unwrap().get_array("firstBatch").unwrap()[0].as_document().unwrap().clone();
    assert_eq!(first, doc! { "ns": "app.invoices", "localTime": 1i64, "storageStats": { "count": 3 } });
    assert_eq!(out.get_document("cursor").unwrap().get_str("ns").unwrap(), "app.invoices");
    // On a shared collection the stage is refused outright.
    assert_eq!(denied("app", doc! { "aggregate": "orders", "pipeline": [{ "$collStats": {} }], "cursor": {} }).0, 13);
}

// ---- 9. errors that read well ----

#[test]
fn denials_name_the_visible_namespace_and_the_rule_by_its_namespace() {
    let (_, reason) = denied("app", doc! { "drop": "orders" });
    assert!(reason.starts_with("app.orders: drop") && reason.contains("rule app.orders (field)"), "{reason}");
    assert!(!reason.contains("rules["), "{reason}");
    let (_, reason) = denied("app", doc! { "insert": "countries", "documents": [{ "a": 1 }] });
    assert!(reason.contains("app.countries") && reason.contains("read-only"), "{reason}");
    let (_, reason) = denied("app", doc! { "find": "orders", "collation": { "locale": "en", "strength": 1 } });
    assert!(reason.contains("rule app.orders (field)"), "{reason}");
    // mongosh's db.currentOp() is an aggregate on admin.
    let (code, reason) = denied("admin", doc! { "aggregate": 1, "pipeline": [{ "$currentOp": {} }], "cursor": {} });
    assert_eq!(code, 13);
    assert!(reason.contains("currentOp is not available through tenantwall"), "{reason}");
    let (_, reason) = denied("admin", doc! { "currentOp": 1 });
    assert!(reason.contains("currentOp is not available through tenantwall"), "{reason}");
}

// ---- 10. tools: stats on the tenant's own namespaces, the rest answered by the proxy ----

#[test]
fn stats_commands_run_on_the_tenants_own_namespaces_without_backend_details() {
    assert_eq!(
        sent("app", doc! { "collStats": "invoices", "scale": 1024 }).get_str("collStats").unwrap(),
        "acme__invoices"
    );
    let reply = doc! { "ns": "app.acme__invoices", "count": 3, "size": 120, "sharded": true,
    "shards": { "shard0": { "host": "db-7.internal:27017", "count": 3 } }, "primary": "shard0", "ok": 1.0 };
    let out = reply_to("app", doc! { "collStats": "invoices" }, reply);
    assert_eq!(out, doc! { "ns": "app.invoices", "count": 3, "size": 120, "sharded": true, "ok": 1.0 });

    let db_stats = sent("own", doc! { "dbStats": 1, "scale": 1 });
    assert_eq!(db_stats.get_str("$db").unwrap(), "acme_own");
    let reply = doc! { "raw": { "rs0/db-7.internal:27017": { "db": "acme_own", "objects": 2 } }, "db": "acme_own",
    "collections": 1, "objects": 2, "ok": 1.0 };
    let out = reply_to("own", doc! { "dbStats": 1 }, reply);
    assert_eq!(out, doc! { "db": "own", "collections": 1, "objects": 2, "ok": 1.0 });

    // Where other tenants' data would count, refused with the reason.
    let (code, reason) = denied("app", doc! { "collStats": "orders" });
    assert_eq!(code, 13);
    assert!(reason.contains("app.orders") && reason.contains("other tenants' documents"), "{reason}");
    let (code, reason) = denied("app", doc! { "collStats": "countries" });
    assert_eq!(code, 13, "{reason}");
    let (code, reason) = denied("app", doc! { "dbStats": 1 });
    assert_eq!(code, 13, "{reason}");
    // Arguments outside the surface are refused as everywhere.
    assert_eq!(denied("own", doc! { "dbStats": 1, "rawData": true }).0, 40415);
}

#[test]
fn connection_tools_are_answered_by_the_proxy_and_backend_diagnostics_stay_refused() {
    for command in [doc! { "connectionStatus": 1 }, doc! { "whatsmyuri": 1 }, doc! { "listCommands": 1 }] {
        assert_eq!(explain(&policy(), "acme", command.clone(), "admin").unwrap(), Outcome::Local, "{command}");
    }
    for command in
        [doc! { "hostInfo": 1 }, doc! { "getParameter": "*" }, doc! { "getCmdLineOpts": 1 }, doc! { "serverStatus": 1 }]
    {
        let (code, reason) = denied("admin", command.clone());
        assert_eq!(code, 13, "{command}");
        assert!(reason.contains("not available through tenantwall"), "{reason}");
    }
}

#[test]
fn documents_that_look_like_errors_are_data_in_a_read() {
    // A find's batch holds the tenant's documents: a field named `code` does not make one an error to withhold.
    let reply = doc! { "cursor": { "id": 0i64, "ns": "app.orders", "firstBatch": [
        { "_id": 1, "code": 11000, "errmsg": "the customer's note", "keyValue": { "sku": "A-1" }, "tenantId": "acme" },
    ] }, "ok": 1.0 };
    let out = reply_to("app", doc! { "find": "orders" }, reply.clone());
    assert_eq!(out, reply);
}
