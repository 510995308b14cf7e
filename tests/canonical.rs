//! Fail-closed by construction: the proxy never reads a command differently from the server. Each test is one
//! hole an attacker used with raw wire frames (duplicate keys below the top level, unknown arguments, names that
//! are another tenant's real names, numerically equal tenant values, `$merge` pipelines, server truthiness),
//! asserted at the decision: the exact denial, or the exact command forwarded. Pure functions; no sockets.

use bson::raw::CString;
use bson::{rawdoc, RawBson, RawDocumentBuf};
use tenantwall::command::Command;
use tenantwall::engine::decide::{decide, Decision, Local};
use tenantwall::{Policy, Tenant};
use tenantwall_protocol::{decode, Message, MsgFlags, OpMsg, Sequence};

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
id = "globex"
value = 42
backend = "b"
sni = ["globex"]

[[tenants]]
id = "umbrella"
value = "umbrella-corporation-research-division-raccoon-city-laboratories-0001"
backend = "b"
sni = ["umbrella"]

[[rules]]
database = "app"
collection = "orders"
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

[[rules]]
database = "app"
collection = "inv*"
mode = "collection"

[[rules]]
database = "app"
collection = "*__invoices"
mode = "field"
"#;

fn policy() -> Policy {
    Policy::from_toml(POLICY, std::path::Path::new("canonical.toml")).unwrap()
}

fn tenant(policy: &Policy, id: &str) -> Tenant {
    (**policy.tenant(id).unwrap()).clone()
}

/// A document built field by field, so keys may repeat.
fn fields(pairs: &[(&str, RawBson)]) -> RawDocumentBuf {
    let mut doc = RawDocumentBuf::new();
    for (k, v) in pairs {
        doc.append(CString::try_from(*k).unwrap(), v.clone());
    }
    doc
}

/// The decision for `msg` as received from the wire (as built when it does not decode), checked against the
/// decision for it as built: a decoded message carries what validation found in it, which lets the canonical
/// parse skip its walk and inserts be stamped as bytes; both readings must agree.
fn decide_as(id: &str, msg: &OpMsg) -> Decision {
    let policy = policy();
    let tenant = tenant(&policy, id);
    let command = Command::of(msg);
    let built = decide(msg, command, Some(&tenant), &policy);
    let frame = msg.encode(1, 0).unwrap().freeze();
    if let Ok(Message::Msg(received)) = decode(frame).map(|d| d.message) {
        let from_wire = decide(&received, command, Some(&tenant), &policy);
        assert_eq!(format!("{from_wire:?}"), format!("{built:?}"), "decoded and built messages decided differently");
        // What a live connection would forward.
        return from_wire;
    }
    built
}

fn denial(id: &str, body: RawDocumentBuf) -> (i32, String) {
    denial_msg(id, &OpMsg::new(MsgFlags::default(), body))
}

fn denial_msg(id: &str, msg: &OpMsg) -> (i32, String) {
    match decide_as(id, msg) {
        Decision::Deny(denial) => (denial.code.code, denial.reason),
        other => panic!("not denied: {other:?}"),
    }
}

/// The forwarded body (with sequences folded in as arrays).
fn forwarded(id: &str, body: RawDocumentBuf) -> bson::Document {
    let msg = OpMsg::new(MsgFlags::default(), body);
    match decide_as(id, &msg) {
        Decision::Forward(plan) => {
            let out = plan.forward.unwrap_or(msg);
            bson::Document::try_from(out.body()).unwrap()
        }
        other => panic!("not forwarded: {other:?}"),
    }
}

fn pipeline(stages: Vec<RawDocumentBuf>) -> RawBson {
    let mut array = bson::RawArrayBuf::new();
    for s in stages {
        array.push(s);
    }
    RawBson::Array(array)
}

fn aggregate(coll: &str, stages: Vec<RawDocumentBuf>) -> RawDocumentBuf {
    fields(&[
        ("aggregate", RawBson::String(coll.into())),
        ("pipeline", pipeline(stages)),
        ("cursor", RawBson::Document(rawdoc! {})),
        ("$db", RawBson::String("app".into())),
    ])
}

fn stage(name: &str, spec: RawDocumentBuf) -> RawDocumentBuf {
    fields(&[(name, RawBson::Document(spec))])
}

// ---- 1. duplicate keys at any depth ----

#[test]
fn lookup_with_two_from_keys_is_refused() {
    // mongod joins the last `from` (orders, every tenant's rows); the proxy must not scope the first.
    let lookup = fields(&[
        ("from", RawBson::String("countries".into())),
        ("from", RawBson::String("orders".into())),
        ("localField", RawBson::String("k".into())),
        ("foreignField", RawBson::String("tenantId".into())),
        ("as", RawBson::String("x".into())),
    ]);
    let (code, reason) = denial("acme", aggregate("countries", vec![stage("$lookup", lookup.clone())]));
    assert_eq!(code, 2, "{reason}");
    assert!(reason.contains("pipeline.0.$lookup.from"), "{reason}");
    // Inside $facet too, and in a view definition.
    let facet = stage("$facet", fields(&[("a", pipeline(vec![stage("$lookup", lookup.clone())]))]));
    assert_eq!(denial("acme", aggregate("countries", vec![facet])).0, 2);
    let graph = fields(&[
        ("from", RawBson::String("countries".into())),
        ("from", RawBson::String("orders".into())),
        ("startWith", RawBson::String("$k".into())),
        ("connectFromField", RawBson::String("k".into())),
        ("connectToField", RawBson::String("k".into())),
        ("as", RawBson::String("x".into())),
    ]);
    assert_eq!(denial("acme", aggregate("countries", vec![stage("$graphLookup", graph)])).0, 2);
    let view = fields(&[
        ("create", RawBson::String("invview".into())),
        ("viewOn", RawBson::String("invoices".into())),
        ("pipeline", pipeline(vec![stage("$lookup", lookup)])),
        ("$db", RawBson::String("app".into())),
    ]);
    assert_eq!(denial("acme", view).0, 2);
}

#[test]
fn verify_style_restrict_search_with_two_keys_is_refused() {
    // The first restrictSearchWithMatch pins the tenant, the second (which mongod uses) is empty.
    let graph = fields(&[
        ("from", RawBson::String("checked".into())),
        ("startWith", RawBson::String("$k".into())),
        ("connectFromField", RawBson::String("k".into())),
        ("connectToField", RawBson::String("k".into())),
        ("as", RawBson::String("x".into())),
        ("restrictSearchWithMatch", RawBson::Document(rawdoc! { "tenantId": "acme" })),
        ("restrictSearchWithMatch", RawBson::Document(rawdoc! {})),
    ]);
    let first = stage("$match", rawdoc! { "tenantId": "acme" });
    let (code, reason) = denial("acme", aggregate("checked", vec![first, stage("$graphLookup", graph)]));
    assert_eq!(code, 2, "{reason}");
}

#[test]
fn union_with_update_and_delete_statements_with_repeated_keys_are_refused() {
    let union = fields(&[("coll", RawBson::String("countries".into())), ("coll", RawBson::String("orders".into()))]);
    assert_eq!(denial("acme", aggregate("countries", vec![stage("$unionWith", union)])).0, 2);
    let two_u = fields(&[
        ("q", RawBson::Document(rawdoc! {})),
        ("u", RawBson::Document(rawdoc! { "$set": { "x": 1 } })),
        ("u", RawBson::Document(rawdoc! { "$set": { "tenantId": "globex" } })),
    ]);
    let two_q = fields(&[
        ("q", RawBson::Document(rawdoc! { "tenantId": "acme" })),
        ("q", RawBson::Document(rawdoc! {})),
        ("u", RawBson::Document(rawdoc! { "$set": { "x": 1 } })),
    ]);
    for stmt in [two_u, two_q] {
        // In the body array and as a document sequence.
        let mut updates = bson::RawArrayBuf::new();
        updates.push(stmt.clone());
        let body = fields(&[
            ("update", RawBson::String("checked".into())),
            ("updates", RawBson::Array(updates)),
            ("$db", RawBson::String("app".into())),
        ]);
        assert_eq!(denial("acme", body).0, 2);
        let msg = OpMsg::with_sequences(
            MsgFlags::default(),
            rawdoc! { "update": "checked", "$db": "app" },
            vec![Sequence::new("updates", vec![stmt])],
        );
        let (code, reason) = denial_msg("acme", &msg);
        assert_eq!(code, 2);
        assert!(reason.contains("updates[0]."), "{reason}");
    }
    let delete = fields(&[
        ("q", RawBson::Document(rawdoc! { "tenantId": "acme" })),
        ("q", RawBson::Document(rawdoc! {})),
        ("limit", RawBson::Int32(0)),
    ]);
    let msg = OpMsg::with_sequences(
        MsgFlags::default(),
        rawdoc! { "delete": "checked", "$db": "app" },
        vec![Sequence::new("deletes", vec![delete])],
    );
    assert_eq!(denial_msg("acme", &msg).0, 2);
}

#[test]
fn inserted_documents_with_repeated_keys_are_refused() {
    let doc = fields(&[("tenantId", RawBson::String("acme".into())), ("tenantId", RawBson::String("globex".into()))]);
    let msg = OpMsg::with_sequences(
        MsgFlags::default(),
        rawdoc! { "insert": "orders", "$db": "app" },
        vec![Sequence::new("documents", vec![rawdoc! { "_id": 1 }, doc])],
    );
    let (code, reason) = denial_msg("acme", &msg);
    assert_eq!(code, 2);
    assert!(reason.contains("documents[1]."), "{reason}");
    let nested = rawdoc! { "_id": 2, "profile": { "a": [{ "b": 1 }] } };
    let mut nested_dup = nested.clone();
    nested_dup.append(bson::cstr!("profile"), 1);
    let msg = OpMsg::with_sequences(
        MsgFlags::default(),
        rawdoc! { "insert": "orders", "$db": "app" },
        vec![Sequence::new("documents", vec![nested_dup])],
    );
    assert_eq!(denial_msg("acme", &msg).0, 2);
}

/// The documents an insert forwards, read as they would arrive at the backend.
fn forwarded_documents(msg: &OpMsg) -> Vec<RawDocumentBuf> {
    forwarded_documents_for("acme", msg)
}

fn forwarded_documents_for(id: &str, msg: &OpMsg) -> Vec<RawDocumentBuf> {
    match decide_as(id, msg) {
        Decision::Forward(plan) => {
            let out = plan.forward.expect("stamped");
            let frame = out.encode(2, 0).unwrap().freeze();
            let Message::Msg(out) = decode(frame).unwrap().message else { panic!("not an OP_MSG") };
            out.sequence("documents").unwrap().documents().map(ToOwned::to_owned).collect()
        }
        other => panic!("not forwarded: {other:?}"),
    }
}

#[test]
fn inserted_sequences_are_stamped_and_checked_document_by_document() {
    // Decided as built and as received (decide_as compares both): the received message takes the byte-level
    // stamping, the built one the general path.
    let insert = |docs: Vec<RawDocumentBuf>| {
        OpMsg::with_sequences(
            MsgFlags::default(),
            rawdoc! { "insert": "orders", "$db": "app" },
            vec![Sequence::new("documents", docs)],
        )
    };
    let docs = vec![
        rawdoc! { "_id": 1 },
        rawdoc! { "_id": 2, "tenantId": "acme" },
        rawdoc! { "_id": 3, "tenantIdx": 1, "n": { "$x": 1 } },
        rawdoc! { "_id": 4, "s": "ünïcode", "code": bson::RawBson::JavaScriptCode("f()".into()) },
    ];
    assert_eq!(
        forwarded_documents(&insert(docs)),
        vec![
            rawdoc! { "_id": 1, "tenantId": "acme" },
            rawdoc! { "_id": 2, "tenantId": "acme" },
            rawdoc! { "_id": 3, "tenantIdx": 1, "n": { "$x": 1 }, "tenantId": "acme" },
            rawdoc! { "_id": 4, "s": "ünïcode", "code": bson::RawBson::JavaScriptCode("f()".into()), "tenantId": "acme" },
        ]
    );
    for bad in [rawdoc! { "tenantId.x": 1 }, rawdoc! { "$set": { "a": 1 } }, rawdoc! { "tenantId": "globex" }] {
        let (code, reason) = denial_msg("acme", &insert(vec![rawdoc! { "_id": 1 }, bad.clone()]));
        assert_eq!(code, 13, "{bad:?}");
        assert!(reason.contains("documents[1]"), "{reason}");
    }
}

#[test]
fn inserted_sequences_are_stamped_alike_whatever_the_length_of_the_tenant_value() {
    // A short string, a number, and a string whose element is longer than the block the byte-level stamping
    // writes at once: each document ends with exactly the tenant's element, decoded and built alike.
    let policy = policy();
    for id in ["acme", "globex", "umbrella"] {
        let value = policy.tenant(id).unwrap().value.raw().clone();
        let docs: Vec<RawDocumentBuf> = (0..5).map(|i| rawdoc! { "_id": i, "s": "x".repeat(i as usize * 7) }).collect();
        let msg = OpMsg::with_sequences(
            MsgFlags::default(),
            rawdoc! { "insert": "orders", "$db": "app" },
            vec![Sequence::new("documents", docs.clone())],
        );
        let expected: Vec<RawDocumentBuf> = docs
            .into_iter()
            .map(|mut d| {
                d.append(bson::cstr!("tenantId"), value.clone());
                d
            })
            .collect();
        assert_eq!(forwarded_documents_for(id, &msg), expected, "{id}");
    }
}

#[test]
fn before_authentication_only_the_name_is_read() {
    // A ping with many keys (and repeats) is answered from its name alone: nothing is forwarded before auth.
    let mut ping = rawdoc! { "ping": 1 };
    for i in 0..20_000 {
        ping.append(CString::try_from(format!("k{i}")).unwrap(), 1);
    }
    ping.append(bson::cstr!("k1"), 2);
    ping.append(bson::cstr!("$db"), "admin");
    let msg = OpMsg::new(MsgFlags::default(), ping);
    let policy = policy();
    assert!(matches!(decide(&msg, Command::Ping, None, &policy), Decision::Local(Local::Ping)));
    // A data command before authentication is refused whatever it carries.
    let find = OpMsg::new(MsgFlags::default(), rawdoc! { "find": "orders", "$db": "app" });
    assert!(matches!(decide(&find, Command::Find, None, &policy), Decision::Deny(_)));
}

// ---- 5. the command surface ----

#[test]
fn arguments_outside_the_command_surface_are_refused_with_their_name() {
    for (body, field) in [
        (rawdoc! { "find": "orders", "rawData": true, "$db": "app" }, "find.rawData"),
        (rawdoc! { "find": "orders", "$tenant": { "$oid": "000000000000000000000000" }, "$db": "app" }, "find.$tenant"),
        (rawdoc! { "find": "orders", "shardVersion": 1, "$db": "app" }, "find.shardVersion"),
        (rawdoc! { "find": "orders", "frobnicate": 1, "$db": "app" }, "find.frobnicate"),
        (rawdoc! { "count": "orders", "encryptionInformation": {}, "$db": "app" }, "count.encryptionInformation"),
        (rawdoc! { "insert": "invoices", "documents": [{}], "stmtIds": [0], "$db": "app" }, "insert.stmtIds"),
        (
            rawdoc! { "update": "orders", "updates": [{ "q": {}, "u": { "$set": { "a": 1 } }, "upsertSupplied": true }], "$db": "app" },
            "update.updates.upsertSupplied",
        ),
        (
            rawdoc! { "createIndexes": "invoices", "indexes": [{ "key": { "a": 1 }, "name": "a", "ignoreUnknownIndexOptions": true }], "$db": "app" },
            "createIndexes.indexes.ignoreUnknownIndexOptions",
        ),
        (
            rawdoc! { "aggregate": "orders", "pipeline": [{ "$lookup": { "from": "countries", "as": "c", "localField": "a", "foreignField": "b", "_internalCollation": { "locale": "en", "strength": 1 } } }], "cursor": {}, "$db": "app" },
            "$lookup._internalCollation",
        ),
        (rawdoc! { "explain": { "find": "orders", "rawData": true }, "$db": "app" }, "find.rawData"),
    ] {
        let (code, reason) = denial("acme", body.clone());
        assert_eq!(code, 40415, "{body:?}: {reason}");
        assert!(reason.contains(field), "{field}: {reason}");
    }
    // Known arguments pass, on every kind of namespace.
    forwarded("acme", rawdoc! { "find": "orders", "filter": {}, "limit": 1, "comment": "x", "$db": "app" });
    forwarded("acme", rawdoc! { "find": "invoices", "sort": { "a": 1 }, "$db": "app" });
}

#[test]
fn only_the_sequences_a_command_defines_are_accepted() {
    // A `filter` sequence next to a find would conflict with the filter the proxy adds to the body.
    let msg = OpMsg::with_sequences(
        MsgFlags::default(),
        rawdoc! { "find": "orders", "$db": "app" },
        vec![Sequence::new("filter", vec![rawdoc! {}])],
    );
    assert_eq!(denial_msg("acme", &msg).0, 40415);
    let both = OpMsg::with_sequences(
        MsgFlags::default(),
        rawdoc! { "insert": "orders", "documents": [{ "_id": 1 }], "$db": "app" },
        vec![Sequence::new("documents", vec![rawdoc! { "_id": 2 }])],
    );
    assert_eq!(denial_msg("acme", &both).0, 9);
}

// ---- 3. visible and real names ----

#[test]
fn another_tenants_real_collection_is_not_a_visible_name() {
    // `*__invoices` (field mode) would match globex's real `globex__invoices` of the `inv*` collection rule.
    for body in [
        rawdoc! { "find": "globex__invoices", "$db": "app" },
        rawdoc! { "insert": "globex__invoices", "documents": [{ "_id": 1 }], "$db": "app" },
        rawdoc! { "aggregate": "orders", "pipeline": [{ "$lookup": { "from": "globex__invoices", "as": "x", "localField": "a", "foreignField": "b" } }], "cursor": {}, "$db": "app" },
        rawdoc! { "aggregate": "orders", "pipeline": [{ "$unionWith": "acme__invoices" }], "cursor": {}, "$db": "app" },
    ] {
        let (code, reason) = denial("acme", body.clone());
        assert_eq!(code, 13, "{body:?}");
        assert!(reason.starts_with("no rule allows app."), "{reason}");
    }
    // The tenant's own collection is reached under its visible name only.
    let own = forwarded("acme", rawdoc! { "find": "invoices", "$db": "app" });
    assert_eq!(own.get_str("find").unwrap(), "acme__invoices");
    // A name that is no tenant's real name stays in field mode.
    let other = forwarded("acme", rawdoc! { "find": "nobody__invoices", "$db": "app" });
    assert_eq!(other.get_str("find").unwrap(), "nobody__invoices");
    assert!(other.get_document("filter").is_ok());
}

#[test]
fn listings_never_show_another_tenants_real_names() {
    let policy = policy();
    let reply = bson::doc! { "cursor": { "id": 0i64, "ns": "app.$cmd.listCollections", "firstBatch": [
        { "name": "acme__invoices", "type": "collection" },
        { "name": "globex__invoices", "type": "collection" },
        { "name": "orders", "type": "collection" },
    ] }, "ok": 1.0 };
    let command = bson::doc! { "listCollections": 1, "$db": "app" };
    let out = tenantwall::explain::explain_with_reply(&policy, "acme", command, "app", Some(reply)).unwrap();
    let tenantwall::explain::Outcome::Forwarded { reply: Some(reply), .. } = out else { panic!("{out:?}") };
    let names: Vec<&str> = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|c| c.as_document().unwrap().get_str("name").unwrap())
        .collect();
    assert_eq!(names, ["invoices", "orders"]);
}

#[test]
fn check_refuses_rules_that_reach_per_tenant_names() {
    let text = POLICY.replace(r#"collection = "*__invoices""#, r#"collection = "*""#);
    let err = Policy::from_toml(&text, std::path::Path::new("confused.toml")).unwrap_err().to_string();
    assert!(err.contains("rules[4]") && err.contains("__inv"), "{err}");
    // Database templates likewise: a field rule over every database would reach acme_app.
    let db = POLICY.replace(
        "[[rules]]\ndatabase = \"app\"\ncollection = \"orders\"",
        "[[rules]]\ndatabase = \"crm\"\nmode = \"database\"\n\n[[rules]]\ndatabase = \"*\"\ncollection = \"logs\"\nmode = \"field\"\n\n[[rules]]\ndatabase = \"app\"\ncollection = \"orders\"",
    );
    let err = Policy::from_toml(&db, std::path::Path::new("confused.toml")).unwrap_err().to_string();
    assert!(err.contains("acme_crm") || err.contains("globex_crm"), "{err}");
}

// ---- 4. tenant values ----

#[test]
fn numerically_equal_tenant_values_are_a_check_error() {
    let text = POLICY.replacen(
        "[[rules]]",
        "[[tenants]]\nid = \"initech\"\nvalue = { \"$numberLong\" = \"42\" }\nbackend = \"b\"\nsni = [\"initech\"]\n\n[[rules]]",
        1,
    );
    let err = Policy::from_toml(&text, std::path::Path::new("values.toml")).unwrap_err().to_string();
    assert!(err.contains("tenants[3].value") && err.contains("same tenant value as tenants[1]"), "{err}");
    for bad in ["{ \"$numberDouble\" = \"7\" }", "{ \"$numberDecimal\" = \"7\" }", "true"] {
        let text = POLICY.replace("value = 42", &format!("value = {bad}"));
        assert!(Policy::from_toml(&text, std::path::Path::new("values.toml")).is_err(), "{bad}");
    }
}

#[test]
fn verify_style_accepts_the_tenant_value_in_any_numeric_type() {
    for pinned in [RawBson::Int32(42), RawBson::Int64(42), RawBson::Double(42.0)] {
        let filter = fields(&[("tenantId", pinned.clone())]);
        let body = fields(&[
            ("find", RawBson::String("checked".into())),
            ("filter", RawBson::Document(filter)),
            ("$db", RawBson::String("app".into())),
        ]);
        forwarded("globex", body);
    }
    let (code, _) = denial("globex", rawdoc! { "find": "checked", "filter": { "tenantId": 42.5 }, "$db": "app" });
    assert_eq!(code, 13);
}

// ---- 6. $merge ----

#[test]
fn merge_when_matched_pipelines_are_checked_and_stamped() {
    let body = rawdoc! { "aggregate": "orders", "pipeline": [
        { "$merge": { "into": "orders", "on": ["_id", "tenantId"], "whenMatched": [{ "$set": { "tenantId": "globex" } }] } }
    ], "cursor": {}, "$db": "app" };
    let sent = forwarded("acme", body);
    let stages = sent.get_array("pipeline").unwrap();
    let merge = stages.last().unwrap().as_document().unwrap().get_document("$merge").unwrap();
    let when = merge.get_array("whenMatched").unwrap();
    assert_eq!(
        when.last().unwrap(),
        &bson::Bson::Document(bson::doc! { "$set": { "tenantId": { "$literal": "acme" } } })
    );
    // A stage an update may not use, a `let` that is not a document, and an unknown field are refused.
    for bad in [
        rawdoc! { "into": "orders", "on": ["_id", "tenantId"], "whenMatched": [{ "$lookup": { "from": "orders", "as": "x", "pipeline": [] } }] },
        rawdoc! { "into": "orders", "on": ["_id", "tenantId"], "let": "x" },
        rawdoc! { "into": "orders", "on": ["_id", "tenantId"], "whenMatched": 1 },
        rawdoc! { "into": "orders", "on": ["_id", "tenantId"], "targetCollectionVersion": 1 },
    ] {
        let body = aggregate("orders", vec![stage("$merge", bad.clone())]);
        let decision = decide_as("acme", &OpMsg::new(MsgFlags::default(), body));
        assert!(matches!(decision, Decision::Deny(_)), "{bad:?}: {decision:?}");
    }
}

#[test]
fn merge_into_a_verify_style_collection_is_stamped() {
    let body = rawdoc! { "aggregate": "orders", "pipeline": [
        { "$merge": { "into": "checked", "on": ["_id", "tenantId"] } }
    ], "cursor": {}, "$db": "app" };
    let sent = forwarded("acme", body);
    let stages = sent.get_array("pipeline").unwrap();
    let stamp = &stages[stages.len() - 2];
    assert_eq!(stamp, &bson::Bson::Document(bson::doc! { "$set": { "tenantId": { "$literal": "acme" } } }));
}

// ---- truthiness as the server reads it ----

#[test]
fn numbers_count_as_true_where_mongod_reads_them_so() {
    // findAndModify's upsert is a safeBool: `upsert: 1` inserts, so the insert is stamped.
    let sent = forwarded(
        "acme",
        rawdoc! { "findAndModify": "orders", "query": { "a": 1 }, "update": { "$set": { "b": 1 } }, "upsert": 1, "$db": "app" },
    );
    let update = sent.get_document("update").unwrap();
    assert_eq!(update.get_document("$setOnInsert").unwrap().get_str("tenantId").unwrap(), "acme");
    // `unique: 1` is a unique index; on a shared collection it is made per tenant (the tenant field first).
    for unique in [RawBson::Int32(1), RawBson::Double(0.5), RawBson::Boolean(true)] {
        let index = fields(&[
            ("key", RawBson::Document(rawdoc! { "email": 1 })),
            ("name", RawBson::String("e".into())),
            ("unique", unique),
        ]);
        let mut indexes = bson::RawArrayBuf::new();
        indexes.push(index);
        let body = fields(&[
            ("createIndexes", RawBson::String("orders".into())),
            ("indexes", RawBson::Array(indexes)),
            ("$db", RawBson::String("app".into())),
        ]);
        let sent = forwarded("acme", body);
        let index = sent.get_array("indexes").unwrap()[0].as_document().unwrap().clone();
        assert_eq!(index.get_document("key").unwrap(), &bson::doc! { "tenantId": 1, "email": 1 });
    }
    let sent = forwarded(
        "acme",
        rawdoc! { "createIndexes": "orders", "indexes": [{ "key": { "email": 1 }, "name": "e", "prepareUnique": true }], "$db": "app" },
    );
    let index = sent.get_array("indexes").unwrap()[0].as_document().unwrap().clone();
    assert_eq!(index.get_document("key").unwrap(), &bson::doc! { "tenantId": 1, "email": 1 });
    // A falsy flag is not unique: the index goes as it came.
    let sent = forwarded(
        "acme",
        rawdoc! { "createIndexes": "orders", "indexes": [{ "key": { "email": 1 }, "name": "e", "unique": 0 }], "$db": "app" },
    );
    let index = sent.get_array("indexes").unwrap()[0].as_document().unwrap().clone();
    assert_eq!(index.get_document("key").unwrap(), &bson::doc! { "email": 1 });
    // A flag of another type is refused rather than guessed.
    let (code, _) = denial(
        "acme",
        rawdoc! { "update": "orders", "updates": [{ "q": {}, "u": { "$set": { "a": 1 } }, "upsert": 1 }], "$db": "app" },
    );
    assert_eq!(code, 14);
}

// ---- 7. one compile, no silent fallbacks ----

#[test]
fn compile_refuses_what_validation_would_and_never_falls_back() {
    let tls = POLICY.replace("uri = \"mongodb://127.0.0.1:1/\"", "uri = \"mongodb://127.0.0.1:1/?tls=true\"");
    assert!(Policy::from_toml(&tls, std::path::Path::new("tls.toml")).is_err());
    let field = POLICY.replace(
        "collection = \"orders\"\nmode = \"field\"",
        "collection = \"orders\"\nmode = \"field\"\nfield = \"a.b\"",
    );
    assert!(Policy::from_toml(&field, std::path::Path::new("field.toml")).is_err());
}
