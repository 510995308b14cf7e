//! Field-mode rewriting, command family by command family, against ../shared/ATTACKS.md: each case asserts the
//! exact command forwarded or the denial. Pure functions; no sockets.

use bson::{doc, Bson, Document};
use tenantwall::explain::{explain, Outcome};
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
value = 42
backend = "b"
sni = ["globex"]
max_time_ms = 5000
allow_disk_use = false

[[rules]]
database = "app"
collection = "orders"
mode = "field"

[[rules]]
database = "app"
collection = "events"
mode = "field"
field = "org"

[[rules]]
database = "app"
collection = "countries"
mode = "shared"

[[rules]]
database = "app"
collection = "checked"
mode = "field"
style = "verify"

[[rules]]
database = "app"
collection = "observed"
mode = "field"
style = "audit"

[[rules]]
database = "app"
collection = "invoices"
mode = "collection"
"#;

fn policy() -> Policy {
    Policy::from_toml(POLICY, std::path::Path::new("rewrite-test.toml")).unwrap()
}

fn run_as(tenant: &str, command: Document) -> Outcome {
    explain(&policy(), tenant, command, "app").unwrap()
}

/// The forwarded command, without `$db`.
fn forwarded(command: Document) -> Document {
    match run_as("acme", command) {
        Outcome::Forwarded { mut command, .. } => {
            command.remove("$db");
            command
        }
        other => panic!("not forwarded: {other:?}"),
    }
}

fn denied(command: Document) -> (i32, String) {
    match run_as("acme", command.clone()) {
        Outcome::Denied { code, reason, .. } => (code, reason),
        other => panic!("{command} was not denied: {other:?}"),
    }
}

fn acme() -> Document {
    doc! { "tenantId": { "$eq": "acme" } }
}

fn scoped(filter: Document) -> Document {
    doc! { "$and": [filter, acme()] }
}

#[test]
fn reads_are_wrapped_never_trusted() {
    // 17, 18, 21: the client filter is kept whole inside $and, whatever it says about the tenant field.
    let sneaky = doc! { "$or": [{ "x": 1 }, { "tenantId": { "$ne": "acme" } }, { "$expr": { "$eq": [1, 1] } }] };
    assert_eq!(
        forwarded(doc! { "find": "orders", "filter": sneaky.clone() }),
        doc! { "find": "orders", "filter": scoped(sneaky) }
    );
    assert_eq!(forwarded(doc! { "find": "orders" }), doc! { "find": "orders", "filter": acme() });
    // 20: an unfiltered count becomes a filtered count.
    assert_eq!(forwarded(doc! { "count": "orders" }), doc! { "count": "orders", "query": acme() });
    assert_eq!(
        forwarded(doc! { "distinct": "orders", "key": "status", "query": { "a": 1 } }),
        doc! { "distinct": "orders", "key": "status", "query": scoped(doc! { "a": 1 }) }
    );
    // Each tenant gets its own value, in its own type; rules may name another field.
    match run_as("globex", doc! { "find": "events", "filter": { "a": 1 } }) {
        Outcome::Forwarded { command, .. } => {
            assert_eq!(
                command.get_document("filter").unwrap(),
                &doc! { "$and": [{ "a": 1 }, { "org": { "$eq": 42 } }] }
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn shared_collections_read_freely_and_never_write() {
    assert_eq!(
        forwarded(doc! { "find": "countries", "filter": { "c": "FR" } }),
        doc! { "find": "countries", "filter": { "c": "FR" } }
    );
    for write in [
        doc! { "insert": "countries", "documents": [{ "c": "XX" }] },
        doc! { "update": "countries", "updates": [{ "q": {}, "u": { "$set": { "c": 1 } } }] },
        doc! { "delete": "countries", "deletes": [{ "q": {}, "limit": 0 }] },
        doc! { "drop": "countries" },
    ] {
        assert_eq!(denied(write).0, 13);
    }
}

#[test]
fn unmatched_and_unsupported_namespaces_are_denied() {
    let (code, reason) = denied(doc! { "find": "secrets" });
    assert_eq!(code, 13);
    assert!(reason.contains("no rule allows app.secrets"), "{reason}");
    // 16: system namespaces.
    assert_eq!(denied(doc! { "find": "system.profile" }).0, 73);
    // Collection-mode names are the tenant's own, under their real name.
    assert_eq!(
        forwarded(doc! { "find": "invoices", "filter": { "a": 1 } }),
        doc! { "find": "acme__invoices", "filter": { "a": 1 } }
    );
    // 4: admin, config and local.
    for db in ["admin", "config", "local"] {
        match explain(&policy(), "acme", doc! { "find": "orders" }, db).unwrap() {
            Outcome::Denied { code, .. } => assert_eq!(code, 13),
            other => panic!("{db}: {other:?}"),
        }
    }
}

#[test]
fn pipelines_start_with_the_tenant_match_at_every_depth() {
    // 23: stage 0, before $sample/$limit; 7: joins into field-mode collections get their own match, joins into
    // shared data are left alone, at any depth, inside $facet too.
    let out = forwarded(doc! {
        "aggregate": "orders",
        "pipeline": [
            { "$sample": { "size": 5 } },
            { "$lookup": { "from": "countries", "localField": "c", "foreignField": "code", "as": "country" } },
            { "$facet": {
                "events": [{ "$lookup": { "from": "events", "pipeline": [
                    { "$unionWith": { "coll": "orders", "pipeline": [{ "$limit": 1 }] } },
                ], "as": "e" } }],
                "plain": [{ "$count": "n" }],
            } },
            { "$graphLookup": { "from": "orders", "startWith": "$p", "connectFromField": "p", "connectToField": "_id", "as": "tree" } },
            { "$unionWith": "orders" },
        ],
        "cursor": {},
    });
    let globex_events = doc! { "org": { "$eq": "acme" } };
    assert_eq!(
        out,
        doc! {
            "aggregate": "orders",
            "pipeline": [
                { "$match": acme() },
                { "$sample": { "size": 5 } },
                { "$lookup": { "from": "countries", "localField": "c", "foreignField": "code", "as": "country" } },
                { "$facet": {
                    "events": [{ "$lookup": { "from": "events", "pipeline": [
                        { "$match": globex_events },
                        { "$unionWith": { "coll": "orders", "pipeline": [{ "$match": acme() }, { "$limit": 1 }] } },
                    ], "as": "e" } }],
                    "plain": [{ "$count": "n" }],
                } },
                { "$graphLookup": { "from": "orders", "startWith": "$p", "connectFromField": "p", "connectToField": "_id", "as": "tree", "restrictSearchWithMatch": acme() } },
                { "$unionWith": { "coll": "orders", "pipeline": [{ "$match": acme() }] } },
            ],
            "cursor": {},
        }
    );
    // A concise $lookup into a field-mode collection gains a scoped pipeline.
    let out = forwarded(doc! { "aggregate": "countries", "pipeline": [
        { "$lookup": { "from": "orders", "localField": "code", "foreignField": "country", "as": "o" } },
    ], "cursor": {} });
    assert_eq!(
        out.get_array("pipeline").unwrap()[0],
        Bson::Document(
            doc! { "$lookup": { "from": "orders", "localField": "code", "foreignField": "country", "as": "o", "pipeline": [{ "$match": acme() }] } }
        )
    );
}

#[test]
fn first_only_stages_carry_the_condition_inside() {
    // 22: $geoNear.query and a $text $match stay first, with the condition merged in.
    let out = forwarded(doc! { "aggregate": "orders", "pipeline": [
        { "$geoNear": { "near": [0, 0], "distanceField": "d", "query": { "open": true } } },
    ], "cursor": {} });
    assert_eq!(
        out.get_array("pipeline").unwrap()[0],
        Bson::Document(
            doc! { "$geoNear": { "near": [0, 0], "distanceField": "d", "query": scoped(doc! { "open": true }) } }
        )
    );
    let out = forwarded(
        doc! { "aggregate": "orders", "pipeline": [{ "$match": { "$text": { "$search": "x" } } }], "cursor": {} },
    );
    assert_eq!(out.get_array("pipeline").unwrap().len(), 1);
    assert_eq!(
        out.get_array("pipeline").unwrap()[0],
        Bson::Document(doc! { "$match": scoped(doc! { "$text": { "$search": "x" } }) })
    );
    for stage in ["$search", "$vectorSearch", "$changeStream"] {
        let (code, reason) = denied(doc! { "aggregate": "orders", "pipeline": [{ stage: {} }], "cursor": {} });
        assert_eq!(code, 13, "{stage}: {reason}");
    }
}

#[test]
fn dangerous_stages_and_writes_are_refused() {
    for stage in [
        doc! { "$out": "orders" },
        doc! { "$out": { "db": "other", "coll": "x" } },
        doc! { "$merge": { "into": { "db": "other", "coll": "orders" }, "on": ["_id", "tenantId"] } },
        doc! { "$merge": { "into": "countries" } },
        doc! { "$merge": { "into": "orders", "whenMatched": "replace" } },
        doc! { "$collStats": {} },
        doc! { "$indexStats": {} },
        doc! { "$currentOp": {} },
        doc! { "$listSessions": {} },
        doc! { "$planCacheStats": {} },
        doc! { "$documents": [] },
        doc! { "$frobnicate": {} },
        doc! { "$lookup": { "from": { "db": "other", "coll": "x" }, "as": "x", "pipeline": [] } },
        doc! { "$unionWith": { "pipeline": [{ "$documents": [] }] } },
    ] {
        let (code, reason) = denied(doc! { "aggregate": "orders", "pipeline": [stage.clone()], "cursor": {} });
        assert!(code == 13 || code == 115, "{stage}: {code} {reason}");
    }
    // 8: collection-less pipelines.
    assert_eq!(denied(doc! { "aggregate": 1, "pipeline": [{ "$documents": [{}] }], "cursor": {} }).0, 13);
    // 24: JavaScript anywhere.
    for js in [
        doc! { "find": "orders", "filter": { "$where": "true" } },
        doc! { "aggregate": "orders", "pipeline": [{ "$group": { "_id": null, "x": { "$accumulator": {} } } }], "cursor": {} },
        doc! { "aggregate": "orders", "pipeline": [{ "$addFields": { "x": { "$function": { "body": "f", "args": [], "lang": "js" } } } }], "cursor": {} },
        doc! { "mapReduce": "orders", "map": "f", "reduce": "g", "out": { "inline": 1 } },
    ] {
        assert_eq!(denied(js).0, 13);
    }
}

#[test]
fn joins_across_modes_use_each_sides_rule() {
    // A field-mode pipeline joining a collection-mode collection: renamed, not scoped; and the other way round.
    let out = forwarded(
        doc! { "aggregate": "orders", "pipeline": [{ "$lookup": { "from": "invoices", "localField": "i", "foreignField": "_id", "as": "inv" } }], "cursor": {} },
    );
    assert_eq!(
        out.get_array("pipeline").unwrap(),
        &vec![
            Bson::Document(doc! { "$match": acme() }),
            Bson::Document(
                doc! { "$lookup": { "from": "acme__invoices", "localField": "i", "foreignField": "_id", "as": "inv" } }
            )
        ]
    );
    let out = forwarded(
        doc! { "aggregate": "invoices", "pipeline": [{ "$lookup": { "from": "orders", "localField": "o", "foreignField": "_id", "as": "order" } }, { "$out": "invoices" }], "cursor": {} },
    );
    assert_eq!(
        out,
        doc! { "aggregate": "acme__invoices", "pipeline": [
            { "$lookup": { "from": "orders", "localField": "o", "foreignField": "_id", "as": "order", "pipeline": [{ "$match": acme() }] } },
            { "$out": { "db": "app", "coll": "acme__invoices" } },
        ], "cursor": {} }
    );
}

#[test]
fn merge_into_own_field_collection_is_matched_on_the_tenant_and_restamped() {
    // 10
    let out = forwarded(doc! { "aggregate": "orders", "pipeline": [
        { "$merge": { "into": "orders", "on": ["_id", "tenantId"], "whenMatched": "replace" } },
    ], "cursor": {} });
    assert_eq!(
        out.get_array("pipeline").unwrap(),
        &vec![
            Bson::Document(doc! { "$match": acme() }),
            Bson::Document(doc! { "$set": { "tenantId": { "$literal": "acme" } } }),
            Bson::Document(
                doc! { "$merge": { "into": "orders", "on": ["_id", "tenantId"], "whenMatched": "replace" } }
            ),
        ]
    );
}

#[test]
fn inserts_are_stamped_and_foreign_values_refused() {
    // 25, 26, 44
    let out = forwarded(
        doc! { "insert": "orders", "documents": [{ "_id": 1 }, { "_id": 2, "tenantId": "acme" }, { "_id": 3, "tenant\u{0406}d": "globex" }] },
    );
    assert_eq!(
        out,
        doc! { "insert": "orders", "documents": [
            { "_id": 1, "tenantId": "acme" },
            { "_id": 2, "tenantId": "acme" },
            { "_id": 3, "tenant\u{0406}d": "globex", "tenantId": "acme" },
        ] }
    );
    for bad in [
        doc! { "_id": 1, "tenantId": "globex" },
        doc! { "_id": 1, "tenantId": ["acme", "globex"] },
        doc! { "_id": 1, "tenantId": { "$eq": "acme" } },
        doc! { "_id": 1, "tenantId": "ACME" },
        doc! { "_id": 1, "tenantId.x": "acme" },
        doc! { "_id": 1, "$tenantId": "acme" },
    ] {
        assert_eq!(denied(doc! { "insert": "orders", "documents": [bad.clone()] }).0, 13, "{bad}");
    }
    // globex's value is the integer 42. The server's $eq finds 42.0, NumberLong(42) and NumberDecimal("42.0")
    // equal to it, so they are the tenant's value and stored as the configured Int32; "42" and 42.5 are not.
    for same in [Bson::Double(42.0), Bson::Int64(42), Bson::Decimal128("42.0".parse().unwrap())] {
        match run_as("globex", doc! { "insert": "events", "documents": [{ "org": same.clone() }] }) {
            Outcome::Forwarded { command, .. } => {
                assert_eq!(command.get_array("documents").unwrap()[0], Bson::Document(doc! { "org": 42 }), "{same}")
            }
            other => panic!("{same}: {other:?}"),
        }
    }
    for bad in [Bson::Double(42.5), Bson::String("42".into()), Bson::Int64(43)] {
        match run_as("globex", doc! { "insert": "events", "documents": [{ "org": bad.clone() }] }) {
            Outcome::Denied { code, .. } => assert_eq!(code, 13),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn updates_cannot_touch_the_tenant_field() {
    // 27
    for u in [
        doc! { "$set": { "tenantId": "globex" } },
        doc! { "$unset": { "tenantId": "" } },
        doc! { "$rename": { "tenantId": "old" } },
        doc! { "$rename": { "other": "tenantId" } },
        doc! { "$inc": { "tenantId": 1 } },
        doc! { "$push": { "tenantId": "x" } },
        doc! { "$set": { "tenantId.$": "x" } },
        doc! { "$set": { "tenantId.0": "x" } },
        doc! { "$setOnInsert": { "tenantId": "globex" } },
        doc! { "$frob": { "a": 1 } },
    ] {
        assert_eq!(denied(doc! { "update": "orders", "updates": [{ "q": {}, "u": u.clone() }] }).0, 13, "{u}");
        assert_eq!(denied(doc! { "findAndModify": "orders", "query": {}, "update": u.clone() }).0, 13, "{u}");
    }
    // Other fields are fine, and the filter is scoped; 30: upserts stamp on insert.
    assert_eq!(
        forwarded(
            doc! { "update": "orders", "updates": [{ "q": { "a": 1 }, "u": { "$set": { "tenantIdentity": 1 } }, "multi": true }] }
        ),
        doc! { "update": "orders", "updates": [{ "q": scoped(doc! { "a": 1 }), "u": { "$set": { "tenantIdentity": 1 } }, "multi": true }] }
    );
    assert_eq!(
        forwarded(
            doc! { "update": "orders", "updates": [{ "q": { "a": 1 }, "u": { "$set": { "b": 1 }, "$setOnInsert": { "c": 1 } }, "upsert": true }] }
        ),
        doc! { "update": "orders", "updates": [{ "q": scoped(doc! { "a": 1 }), "u": { "$set": { "b": 1 }, "$setOnInsert": { "c": 1, "tenantId": "acme" } }, "upsert": true }] }
    );
}

#[test]
fn replacements_and_pipeline_updates_keep_the_tenant() {
    // 28
    assert_eq!(
        forwarded(doc! { "update": "orders", "updates": [{ "q": { "_id": 1 }, "u": { "name": "x" } }] }),
        doc! { "update": "orders", "updates": [{ "q": scoped(doc! { "_id": 1 }), "u": { "name": "x", "tenantId": "acme" } }] }
    );
    assert_eq!(
        denied(doc! { "update": "orders", "updates": [{ "q": {}, "u": { "name": "x", "tenantId": "globex" } }] }).0,
        13
    );
    // 29: whatever the stages do, a final $set restores the tenant value.
    assert_eq!(
        forwarded(
            doc! { "findAndModify": "orders", "query": { "_id": 1 }, "update": [{ "$replaceWith": { "a": 1 } }] }
        ),
        doc! { "findAndModify": "orders", "query": scoped(doc! { "_id": 1 }), "update": [
            { "$replaceWith": { "a": 1 } },
            { "$set": { "tenantId": { "$literal": "acme" } } },
        ] }
    );
    assert_eq!(denied(doc! { "update": "orders", "updates": [{ "q": {}, "u": [{ "$lookup": {} }] }] }).0, 13);
}

#[test]
fn deletes_and_collations() {
    assert_eq!(
        forwarded(doc! { "delete": "orders", "deletes": [{ "q": {}, "limit": 0 }, { "q": { "a": 1 }, "limit": 1 }] }),
        doc! { "delete": "orders", "deletes": [{ "q": acme(), "limit": 0 }, { "q": scoped(doc! { "a": 1 }), "limit": 1 }] }
    );
    // 19: non-simple collations anywhere a filter is.
    let loose = doc! { "locale": "en", "strength": 2 };
    for command in [
        doc! { "find": "orders", "collation": loose.clone() },
        doc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "collation": loose.clone() },
        doc! { "count": "orders", "collation": loose.clone() },
        doc! { "update": "orders", "updates": [{ "q": {}, "u": { "$set": { "a": 1 } }, "collation": loose.clone() }] },
        doc! { "delete": "orders", "deletes": [{ "q": {}, "limit": 0, "collation": loose.clone() }] },
        doc! { "findAndModify": "orders", "query": {}, "remove": true, "collation": loose.clone() },
    ] {
        assert_eq!(denied(command.clone()).0, 13, "{command}");
    }
    assert_eq!(
        forwarded(doc! { "find": "orders", "collation": { "locale": "simple" } }),
        doc! { "find": "orders", "collation": { "locale": "simple" }, "filter": acme() }
    );
}

#[test]
fn bulk_write_scopes_every_op_or_refuses_the_batch() {
    // 14
    let ops = vec![
        Bson::Document(doc! { "insert": 0, "document": { "a": 1 } }),
        Bson::Document(doc! { "update": 0, "filter": { "a": 1 }, "updateMods": { "$set": { "b": 2 } } }),
        Bson::Document(doc! { "delete": 1, "filter": {} }),
        Bson::Document(doc! { "insert": 2, "document": { "c": 1 } }),
    ];
    let command = doc! { "bulkWrite": 1, "ops": ops, "nsInfo": [{ "ns": "app.orders" }, { "ns": "app.events" }, { "ns": "app.orders" }] };
    match explain(&policy(), "acme", command, "admin").unwrap() {
        Outcome::Forwarded { command, .. } => assert_eq!(
            command.get_array("ops").unwrap(),
            &vec![
                Bson::Document(doc! { "insert": 0, "document": { "a": 1, "tenantId": "acme" } }),
                Bson::Document(
                    doc! { "update": 0, "filter": scoped(doc! { "a": 1 }), "updateMods": { "$set": { "b": 2 } } }
                ),
                Bson::Document(doc! { "delete": 1, "filter": { "org": { "$eq": "acme" } } }),
                Bson::Document(doc! { "insert": 2, "document": { "c": 1, "tenantId": "acme" } }),
            ]
        ),
        other => panic!("{other:?}"),
    }
    for ns in ["app.secrets", "admin.system.users", "other.orders", "app.countries"] {
        let command = doc! { "bulkWrite": 1, "ops": [{ "insert": 1, "document": {} }], "nsInfo": [{ "ns": "app.orders" }, { "ns": ns }] };
        match explain(&policy(), "acme", command, "admin").unwrap() {
            Outcome::Denied { code, .. } => assert!(code == 13 || code == 73, "{ns}: {code}"),
            other => panic!("{ns}: {other:?}"),
        }
    }
}

#[test]
fn explain_gets_the_same_rewrite() {
    // 15
    assert_eq!(
        forwarded(doc! { "explain": { "find": "orders", "filter": { "a": 1 } }, "verbosity": "queryPlanner" }),
        doc! { "explain": { "find": "orders", "filter": scoped(doc! { "a": 1 }) }, "verbosity": "queryPlanner" }
    );
    assert_eq!(denied(doc! { "explain": { "find": "secrets" } }).0, 13);
    assert_eq!(denied(doc! { "explain": { "mapReduce": "orders" } }).0, 13);
}

#[test]
fn ddl_on_shared_collections_is_limited() {
    // 32, 12, 13, 20, 40
    assert!(matches!(
        run_as("acme", doc! { "createIndexes": "orders", "indexes": [{ "key": { "status": 1 }, "name": "s" }] }),
        Outcome::Forwarded { .. }
    ));
    assert!(matches!(
        run_as(
            "acme",
            doc! { "createIndexes": "orders", "indexes": [{ "key": { "tenantId": 1, "email": 1 }, "name": "u", "unique": true }] }
        ),
        Outcome::Forwarded { .. }
    ));
    // A unique index that does not start with the tenant field is made per tenant (tests/unique_indexes.rs).
    assert_eq!(
        forwarded(
            doc! { "createIndexes": "orders", "indexes": [{ "key": { "email": 1 }, "name": "u", "unique": true }] }
        ),
        doc! { "createIndexes": "orders", "indexes": [{ "key": { "tenantId": 1, "email": 1 }, "name": "u", "unique": true }] }
    );
    for command in [
        doc! { "createIndexes": "orders", "indexes": [{ "key": { "at": 1 }, "name": "ttl", "expireAfterSeconds": 1 }] },
        doc! { "createIndexes": "orders", "indexes": [{ "key": { "a": 1 }, "name": "p", "partialFilterExpression": { "tenantId": "acme", "vip": true } }] },
        doc! { "drop": "orders" },
        doc! { "dropIndexes": "orders", "index": "*" },
        doc! { "collMod": "orders", "validator": {} },
        doc! { "create": "v", "viewOn": "orders", "pipeline": [] },
        doc! { "renameCollection": "app.orders", "to": "app.mine" },
        doc! { "collStats": "orders" },
        doc! { "dbStats": 1 },
        doc! { "serverStatus": 1 },
        doc! { "currentOp": 1 },
        doc! { "applyOps": [] },
        doc! { "convertToCapped": "orders", "size": 1 },
        doc! { "compact": "orders" },
        doc! { "validate": "orders" },
        doc! { "dropDatabase": 1 },
    ] {
        let (code, reason) = denied(command.clone());
        assert!([13, 73, 115].contains(&code), "{command}: {code} {reason}");
    }
}

#[test]
fn index_listings_of_shared_collections_hide_partial_filters() {
    // 39
    let reply = doc! { "cursor": { "id": 0i64, "ns": "app.orders", "firstBatch": [
        { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
        { "v": 2, "key": { "vip": 1 }, "name": "vip", "partialFilterExpression": { "tenantId": "globex", "vip": true } },
    ] }, "ok": 1.0 };
    match tenantwall::explain::explain_with_reply(
        &policy(),
        "acme",
        doc! { "listIndexes": "orders" },
        "app",
        Some(reply),
    )
    .unwrap()
    {
        Outcome::Forwarded { reply: Some(reply), .. } => {
            let text = reply.to_string();
            assert!(!text.contains("globex"), "{text}");
            assert_eq!(reply.get_document("cursor").unwrap().get_array("firstBatch").unwrap().len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn resource_limits_are_applied_per_tenant() {
    // 42: globex's commands run at most 5 s and never spill to disk; acme has no limits.
    let limited = |command: Document| match run_as("globex", command) {
        Outcome::Forwarded { command, .. } => command,
        other => panic!("{other:?}"),
    };
    let find = limited(doc! { "find": "events", "maxTimeMS": 60_000, "allowDiskUse": true });
    assert_eq!(find.get_i64("maxTimeMS").unwrap(), 5000);
    assert!(!find.get_bool("allowDiskUse").unwrap());
    assert_eq!(limited(doc! { "count": "events" }).get_i64("maxTimeMS").unwrap(), 5000);
    assert_eq!(limited(doc! { "count": "events", "maxTimeMS": 0 }).get_i64("maxTimeMS").unwrap(), 5000);
    assert_eq!(limited(doc! { "count": "events", "maxTimeMS": 100 }).get_i32("maxTimeMS").unwrap(), 100);
    let agg = limited(doc! { "aggregate": "events", "pipeline": [], "cursor": {} });
    assert_eq!(agg.get_i64("maxTimeMS").unwrap(), 5000);
    assert!(!agg.get_bool("allowDiskUse").unwrap());
    assert!(!forwarded(doc! { "find": "orders" }).contains_key("maxTimeMS"));
}

#[test]
fn verify_style_forwards_only_self_scoped_commands() {
    // Pinned: forwarded byte for byte.
    let pinned = doc! { "find": "checked", "filter": { "tenantId": "acme", "x": 1 } };
    assert_eq!(forwarded(pinned.clone()), pinned);
    let pinned_in = doc! { "find": "checked", "filter": { "$and": [{ "tenantId": { "$in": ["acme"] } }, { "x": 1 }] } };
    assert_eq!(forwarded(pinned_in.clone()), pinned_in);
    // Unpinned: refused, naming the place.
    for (command, place) in [
        (doc! { "find": "checked", "filter": { "x": 1 } }, "filter"),
        (doc! { "find": "checked", "filter": { "tenantId": { "$in": ["acme", "globex"] } } }, "filter"),
        (doc! { "find": "checked", "filter": { "tenantId": { "$ne": "globex" } } }, "filter"),
        (doc! { "update": "checked", "updates": [{ "q": {}, "u": { "$set": { "a": 1 } } }] }, "updates[0].q"),
        (doc! { "insert": "checked", "documents": [{ "a": 1 }] }, "documents[0]"),
        (doc! { "aggregate": "checked", "pipeline": [{ "$sort": { "a": 1 } }], "cursor": {} }, "pipeline"),
    ] {
        let (code, reason) = denied(command.clone());
        assert_eq!(code, 13);
        assert!(reason.contains(place) && reason.contains("verify"), "{command}: {reason}");
    }
}

#[test]
fn audit_style_forwards_unchanged_and_records_what_enforce_would_do() {
    for command in [
        doc! { "find": "observed", "filter": { "x": 1 } },
        doc! { "insert": "observed", "documents": [{ "a": 1 }] },
        doc! { "update": "observed", "updates": [{ "q": {}, "u": { "$set": { "tenantId": "globex" } } }] },
    ] {
        match run_as("acme", command.clone()) {
            Outcome::Forwarded { command: mut sent, audit, .. } => {
                sent.remove("$db");
                assert_eq!(sent, command);
                assert!(!audit.is_empty(), "{command}: nothing recorded");
                assert!(audit.iter().all(|n| n.contains("rule app.observed (field)")), "{audit:?}");
            }
            other => panic!("{command}: {other:?}"),
        }
    }
}

#[test]
fn logout_never_reaches_the_backend() {
    // Forwarded, it would log the proxy's service user out of the tenant's backend connection.
    assert_eq!(run_as("acme", doc! { "logout": 1 }), Outcome::Local);
}

#[test]
fn sessions_are_virtualised_per_tenant() {
    // 34: the same lsid from two tenants reaches two different server sessions.
    let lsid = bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![9; 16] };
    let command = doc! { "find": "orders", "lsid": { "id": lsid.clone() }, "txnNumber": 1i64 };
    let id_for = |tenant: &str| match run_as(tenant, command.clone()) {
        Outcome::Forwarded { command, .. } => {
            command.get_document("lsid").unwrap().get_binary_generic("id").cloned().unwrap_or_else(|_| {
                match command.get_document("lsid").unwrap().get("id") {
                    Some(Bson::Binary(b)) => b.bytes.clone(),
                    other => panic!("{other:?}"),
                }
            })
        }
        other => panic!("{other:?}"),
    };
    let (a, g) = (id_for("acme"), id_for("globex"));
    assert_ne!(a, g);
    assert_ne!(a, lsid.bytes);
}

#[test]
fn only_sessions_shaped_as_mongod_requires_are_forwarded() {
    use bson::spec::BinarySubtype;
    let uuid = |bytes: Vec<u8>| bson::Binary { subtype: BinarySubtype::Uuid, bytes };
    // A longer id would be hashed into a valid session id the server never saw (and, for a tenant with rules of
    // its own, into another placement's session); mongod refuses all of these shapes itself.
    let shapes = [
        doc! { "id": uuid(vec![9; 33]) },
        doc! { "id": uuid(vec![9; 15]) },
        doc! { "id": bson::Binary { subtype: BinarySubtype::Generic, bytes: vec![9; 16] } },
        doc! { "id": bson::Binary { subtype: BinarySubtype::UuidOld, bytes: vec![9; 16] } },
        doc! { "id": "not-binary" },
        doc! { "id": uuid(vec![9; 16]), "uid": bson::Binary { subtype: BinarySubtype::Generic, bytes: vec![1; 32] } },
        doc! {},
    ];
    for lsid in shapes {
        let (code, reason) = denied(doc! { "find": "orders", "lsid": lsid.clone() });
        assert!(code == 14 || code == 40415, "{lsid}: {code} {reason}");
        let end = doc! { "endSessions": [{ "id": uuid(vec![9; 16]) }, lsid.clone()] };
        match explain(&policy(), "acme", end, "admin").unwrap() {
            Outcome::Denied { code, .. } => assert!(code == 14 || code == 40415, "endSessions with {lsid}: {code}"),
            other => panic!("endSessions with {lsid}: {other:?}"),
        }
    }
    // Not a document at all: refused rather than forwarded as sent.
    assert_eq!(denied(doc! { "find": "orders", "lsid": "x" }).0, 14);
    assert_eq!(denied(doc! { "find": "orders", "lsid": uuid(vec![9; 16]) }).0, 14);
    let end = doc! { "endSessions": [{ "id": uuid(vec![9; 16]) }] };
    assert!(matches!(explain(&policy(), "acme", end, "admin").unwrap(), Outcome::Forwarded { .. }));
    // The shape drivers send is forwarded, virtualised.
    let forwarded = forwarded(doc! { "find": "orders", "lsid": { "id": uuid(vec![9; 16]) } });
    let id = forwarded.get_document("lsid").unwrap().get("id").cloned();
    assert!(
        matches!(id, Some(Bson::Binary(ref b)) if b.subtype == BinarySubtype::Uuid && b.bytes != vec![9; 16]),
        "{id:?}"
    );
}

#[test]
fn explain_refuses_session_fields_inside_the_explained_command() {
    let lsid = doc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![9; 16] } };
    for inner in [
        doc! { "find": "orders", "lsid": lsid.clone() },
        doc! { "find": "orders", "txnNumber": 1i64 },
        doc! { "find": "orders", "autocommit": false },
        doc! { "find": "orders", "startTransaction": true },
    ] {
        let (code, reason) = denied(doc! { "explain": inner.clone() });
        assert_eq!(code, 40415, "{inner}: {reason}");
    }
    // With the session on explain itself, it is forwarded (and the session virtualised).
    let out = forwarded(doc! { "explain": { "find": "orders" }, "lsid": lsid });
    assert!(out.get_document("lsid").is_ok(), "{out}");
}

#[test]
fn an_insert_built_with_two_documents_sequences_is_refused_not_half_stamped() {
    // The parser refuses a repeated sequence, so only a message built in the proxy could carry two; were one to
    // reach the rewrite, the second's documents must not go out unstamped.
    use tenantwall::command::Command;
    use tenantwall::engine::decide::{prepare_forward, Decision};
    use tenantwall_protocol::{MsgFlags, OpMsg, Sequence};
    let policy = policy();
    let acme = policy.tenant("acme").map(|t| &**t);
    let documents = |tenant: &str| Sequence::new("documents", vec![bson::rawdoc! { "_id": 1, "note": tenant }]);
    let body = bson::rawdoc! { "insert": "orders", "$db": "app" };
    let one = OpMsg::with_sequences(MsgFlags::default(), body.clone(), vec![documents("a")]);
    assert!(matches!(prepare_forward(&one, Command::from_name("insert"), acme, &policy), Decision::Forward(_)));
    // Another sequence before the documents: refused, or the documents go out stamped.
    let other = Sequence::new("other", vec![bson::rawdoc! { "x": 1 }]);
    let mixed = OpMsg::with_sequences(MsgFlags::default(), body.clone(), vec![other, documents("a")]);
    if let Decision::Forward(plan) = prepare_forward(&mixed, Command::from_name("insert"), acme, &policy) {
        let sent = plan.forward.expect("the documents are stamped");
        let stamped = sent.sequence("documents").expect("documents");
        assert!(stamped.documents().all(|d| d.get_str("tenantId").ok() == Some("acme")), "{sent:?}");
    }
    let two = OpMsg::with_sequences(MsgFlags::default(), body, vec![documents("a"), documents("b")]);
    match prepare_forward(&two, Command::from_name("insert"), acme, &policy) {
        Decision::Forward(plan) => panic!("forwarded: {:?}", plan.forward),
        _refused => {}
    }
}
