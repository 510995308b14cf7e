//! Property tests over the whole decision path: for arbitrary commands built from the command surface (known
//! and unknown arguments, duplicate keys, nested join stages, random namespaces, including other tenants' real
//! names), whatever the proxy forwards
//! - has no duplicate key at any depth,
//! - names only namespaces the tenant may reach (its own real names, field-mode and shared collections; never
//!   another tenant's real name),
//! - carries the tenant condition on every read of a field-mode collection: the filter of find/count/distinct,
//!   the first stage of every pipeline over one, at any depth.
//!
//! Pure functions; no sockets.

use bson::raw::CString;
use bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use proptest::prelude::*;
use tenantwall::command::Command;
use tenantwall::engine::decide::{decide, Decision};
use tenantwall::Policy;
use tenantwall_protocol::validate::first_duplicate_key_deep;
use tenantwall_protocol::{MsgFlags, OpMsg, Sequence};

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
database = "app"
collection = "*__invoices"
mode = "field"

[[rules]]
database = "crm"
mode = "database"
"#;

/// A generated value: duplicate keys are representable.
#[derive(Debug, Clone)]
enum Val {
    Leaf(RawBson),
    Doc(Vec<(String, Val)>),
    Arr(Vec<Val>),
}

impl Val {
    fn raw(&self) -> RawBson {
        match self {
            Val::Leaf(v) => v.clone(),
            Val::Doc(fields) => RawBson::Document(doc(fields)),
            Val::Arr(items) => {
                let mut a = RawArrayBuf::new();
                for i in items {
                    a.push(i.raw());
                }
                RawBson::Array(a)
            }
        }
    }
}

fn doc(fields: &[(String, Val)]) -> RawDocumentBuf {
    let mut d = RawDocumentBuf::new();
    for (k, v) in fields {
        if let Ok(k) = CString::try_from(k.as_str()) {
            d.append(k, v.raw());
        }
    }
    d
}

fn s(v: &str) -> Val {
    Val::Leaf(RawBson::String(v.into()))
}

const COLLECTIONS: &[&str] = &[
    "orders",
    "countries",
    "invoices",
    "invx",
    "globex__invoices",
    "acme__invoices",
    "nobody__invoices",
    "unruled",
    "system.views",
];

fn collection() -> impl Strategy<Value = String> {
    prop::sample::select(COLLECTIONS).prop_map(str::to_owned)
}

fn leaf() -> impl Strategy<Value = Val> {
    prop_oneof![
        any::<i32>().prop_map(|n| Val::Leaf(RawBson::Int32(n))),
        prop::sample::select(&["acme", "globex", "x", "ACME"][..]).prop_map(s),
        Just(Val::Leaf(RawBson::Boolean(true))),
        Just(Val::Leaf(RawBson::Double(1.0))),
    ]
}

/// Filters: field names that matter (the tenant field, operators) and repeats.
fn filter() -> impl Strategy<Value = Val> {
    let key = prop::sample::select(&["tenantId", "a", "$or", "$and", "$ne", "$eq", "$in", "$expr", "tenantId.x"][..]);
    leaf().prop_recursive(3, 16, 3, move |inner| {
        prop_oneof![
            prop::collection::vec((key.clone().prop_map(str::to_owned), inner.clone()), 0..4).prop_map(Val::Doc),
            prop::collection::vec(inner, 0..3).prop_map(Val::Arr),
        ]
    })
}

fn pipeline(depth: u32) -> BoxedStrategy<Val> {
    let simple = prop_oneof![
        filter().prop_map(|f| Val::Doc(vec![("$match".into(), f)])),
        Just(Val::Doc(vec![("$project".into(), Val::Doc(vec![("a".into(), Val::Leaf(RawBson::Int32(1)))]))])),
        Just(Val::Doc(vec![("$limit".into(), Val::Leaf(RawBson::Int32(1)))])),
        collection().prop_map(|c| Val::Doc(vec![("$out".into(), s(&c))])),
        collection().prop_map(|c| Val::Doc(vec![(
            "$merge".into(),
            Val::Doc(vec![("into".into(), s(&c)), ("on".into(), Val::Arr(vec![s("_id"), s("tenantId")]))])
        )])),
        collection().prop_map(|c| Val::Doc(vec![("$unionWith".into(), s(&c))])),
        (collection(), collection()).prop_map(|(c, c2)| Val::Doc(vec![(
            "$graphLookup".into(),
            Val::Doc(vec![
                ("from".into(), s(&c)),
                ("from".into(), s(&c2)),
                ("startWith".into(), s("$a")),
                ("connectFromField".into(), s("a")),
                ("connectToField".into(), s("b")),
                ("as".into(), s("g")),
            ])
        )])),
    ];
    if depth == 0 {
        return prop::collection::vec(simple, 0..3).prop_map(Val::Arr).boxed();
    }
    let nested = prop_oneof![
        (collection(), pipeline(depth - 1), any::<bool>()).prop_map(|(c, p, dup)| {
            let mut spec = vec![("from".to_owned(), s(&c)), ("as".to_owned(), s("j")), ("pipeline".to_owned(), p)];
            if dup {
                spec.push(("from".into(), s("orders")));
            }
            Val::Doc(vec![("$lookup".into(), Val::Doc(spec))])
        }),
        (collection(), pipeline(depth - 1)).prop_map(|(c, p)| Val::Doc(vec![(
            "$unionWith".into(),
            Val::Doc(vec![("coll".into(), s(&c)), ("pipeline".into(), p)])
        )])),
        pipeline(depth - 1).prop_map(|p| Val::Doc(vec![("$facet".into(), Val::Doc(vec![("f".into(), p)]))])),
    ];
    prop::collection::vec(prop_oneof![simple, nested], 0..4).prop_map(Val::Arr).boxed()
}

/// Extra top-level arguments: known ones, generic ones, unknown and internal ones.
fn extras() -> impl Strategy<Value = Vec<(String, Val)>> {
    let name = prop::sample::select(
        &["limit", "sort", "comment", "maxTimeMS", "collation", "rawData", "$tenant", "hint", "filter", "let"][..],
    );
    prop::collection::vec((name.prop_map(str::to_owned), leaf()), 0..3)
}

#[derive(Debug, Clone)]
struct Generated {
    body: Vec<(String, Val)>,
    sequence: Option<(String, Vec<Val>)>,
}

fn command() -> impl Strategy<Value = Generated> {
    let db = prop::sample::select(&["app", "app", "app", "crm", "globex_crm", "admin"][..]).prop_map(str::to_owned);
    let find = (collection(), filter(), extras(), db.clone()).prop_map(|(c, f, x, db)| {
        let mut body = vec![("find".into(), s(&c)), ("filter".into(), f)];
        body.extend(x);
        body.push(("$db".into(), s(&db)));
        Generated { body, sequence: None }
    });
    let count = (prop::sample::select(&["count", "distinct"][..]), collection(), filter(), db.clone()).prop_map(
        |(name, c, f, db)| Generated {
            body: vec![(name.into(), s(&c)), ("key".into(), s("a")), ("query".into(), f), ("$db".into(), s(&db))],
            sequence: None,
        },
    );
    let aggregate = (collection(), pipeline(2), extras(), db.clone()).prop_map(|(c, p, x, db)| {
        let mut body = vec![("aggregate".into(), s(&c)), ("pipeline".into(), p), ("cursor".into(), Val::Doc(vec![]))];
        body.extend(x);
        body.push(("$db".into(), s(&db)));
        Generated { body, sequence: None }
    });
    let insert = (collection(), prop::collection::vec(filter(), 1..3), any::<bool>(), db.clone()).prop_map(
        |(c, docs, in_sequence, db)| {
            let body = vec![("insert".into(), s(&c)), ("$db".into(), s(&db))];
            if in_sequence {
                Generated { body, sequence: Some(("documents".into(), docs)) }
            } else {
                let mut body = body;
                body.insert(1, ("documents".into(), Val::Arr(docs)));
                Generated { body, sequence: None }
            }
        },
    );
    let update = (collection(), filter(), filter(), any::<bool>(), db.clone()).prop_map(|(c, q, u, dup, db)| {
        let mut stmt = vec![("q".to_owned(), q), ("u".to_owned(), Val::Doc(vec![("$set".into(), u)]))];
        if dup {
            stmt.push(("q".into(), Val::Doc(vec![])));
        }
        Generated {
            body: vec![("update".into(), s(&c)), ("$db".into(), s(&db))],
            sequence: Some(("updates".into(), vec![Val::Doc(stmt)])),
        }
    });
    let delete = (collection(), filter(), db).prop_map(|(c, q, db)| Generated {
        body: vec![
            ("delete".into(), s(&c)),
            (
                "deletes".into(),
                Val::Arr(vec![Val::Doc(vec![("q".into(), q), ("limit".into(), Val::Leaf(RawBson::Int32(0)))])]),
            ),
            ("$db".into(), s(&db)),
        ],
        sequence: None,
    });
    prop_oneof![find, count, aggregate, insert, update, delete]
}

fn tenant_condition_first(stages: &bson::RawArray) -> bool {
    match stages.into_iter().next() {
        Some(Ok(RawBsonRef::Document(first))) => first
            .get_document("$match")
            .is_ok_and(|m| m.get_document("tenantId").is_ok_and(|c| c.get_str("$eq").is_ok_and(|v| v == "acme"))),
        _ => false,
    }
}

fn scoped_filter(filter: Option<&RawDocument>) -> bool {
    let Some(f) = filter else { return false };
    let condition =
        |d: &RawDocument| d.get_document("tenantId").is_ok_and(|c| c.get_str("$eq").is_ok_and(|v| v == "acme"));
    condition(f)
        || f.get_array("$and").is_ok_and(|a| {
            a.into_iter().last().is_some_and(|c| matches!(c, Ok(RawBsonRef::Document(d)) if condition(d)))
        })
}

/// Where a collection name may be forwarded: the tenant's own real names, field and shared collections.
fn reachable(name: &str) -> bool {
    matches!(name, "orders" | "countries" | "nobody__invoices") || name.starts_with("acme__")
}

fn is_field_mode(name: &str) -> bool {
    name == "orders" || name == "nobody__invoices"
}

/// Checks every pipeline (and join) in `stages`; returns the first problem. `app` is false in the tenant's own
/// database (database mode), where every name is the tenant's.
fn check_pipeline(stages: &bson::RawArray, source_is_field: bool, app: bool) -> Result<(), String> {
    let reachable = |name: &str| !app || reachable(name);
    let is_field_mode = |name: &str| app && is_field_mode(name);
    if source_is_field && !tenant_condition_first(stages) {
        return Err(format!("pipeline over a field-mode collection without the tenant $match: {stages:?}"));
    }
    for stage in stages.into_iter().flatten() {
        let RawBsonRef::Document(stage) = stage else { continue };
        for element in stage.iter_elements().flatten() {
            let name = element.key().as_str();
            let value = element.value().map_err(|e| e.to_string())?;
            match (name, value) {
                ("$lookup", RawBsonRef::Document(l)) => {
                    let from = l.get_str("from").map_err(|e| e.to_string())?;
                    if !reachable(from) {
                        return Err(format!("$lookup from {from}"));
                    }
                    let sub = l.get_array("pipeline").map_err(|_| format!("$lookup into {from} without pipeline"));
                    match sub {
                        Ok(sub) => check_pipeline(sub, is_field_mode(from), app)?,
                        Err(e) if is_field_mode(from) => return Err(e),
                        Err(_) => {}
                    }
                }
                ("$unionWith", RawBsonRef::Document(u)) => {
                    let coll = u.get_str("coll").map_err(|e| e.to_string())?;
                    if !reachable(coll) {
                        return Err(format!("$unionWith {coll}"));
                    }
                    match u.get_array("pipeline") {
                        Ok(sub) => check_pipeline(sub, is_field_mode(coll), app)?,
                        Err(_) if is_field_mode(coll) => return Err(format!("$unionWith {coll} unscoped")),
                        Err(_) => {}
                    }
                }
                ("$unionWith", RawBsonRef::String(coll)) if (!reachable(coll) || is_field_mode(coll)) => {
                    return Err(format!("$unionWith {coll} as a bare name"));
                }
                ("$graphLookup", RawBsonRef::Document(g)) => {
                    let from = g.get_str("from").map_err(|e| e.to_string())?;
                    if !reachable(from) {
                        return Err(format!("$graphLookup from {from}"));
                    }
                    if is_field_mode(from) && !scoped_filter(g.get_document("restrictSearchWithMatch").ok()) {
                        return Err(format!("$graphLookup into {from} unscoped"));
                    }
                }
                ("$facet", RawBsonRef::Document(f)) => {
                    for branch in f.iter_elements().flatten() {
                        if let Ok(RawBsonRef::Array(b)) = branch.value() {
                            check_pipeline(b, false, app)?;
                        }
                    }
                }
                ("$out" | "$merge", _) if app => {
                    let text = format!("{value:?}");
                    if text.contains("globex") || text.contains("invoices\"") && !text.contains("acme__") {
                        return Err(format!("{name} into {text}"));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn check_forwarded(msg: &OpMsg) -> Result<(), String> {
    let body = msg.body();
    if let Some(key) = first_duplicate_key_deep(body) {
        return Err(format!("duplicate key {key} forwarded"));
    }
    for seq in msg.sequences() {
        for d in seq.documents() {
            if let Some(key) = first_duplicate_key_deep(d) {
                return Err(format!("duplicate key {key} forwarded in {}", seq.identifier()));
            }
        }
    }
    let db = body.get_str("$db").map_err(|e| e.to_string())?;
    if !matches!(db, "app" | "acme_crm") {
        return Err(format!("forwarded to database {db}"));
    }
    let first = body.iter_elements().next().and_then(Result::ok).ok_or("empty body")?;
    let name = first.key().as_str();
    let coll = match first.value() {
        Ok(RawBsonRef::String(c)) => c,
        _ => return Ok(()),
    };
    if db == "app" && !reachable(coll) {
        return Err(format!("{name} on {coll}"));
    }
    let field = db == "app" && is_field_mode(coll);
    match name {
        "find" if field && !scoped_filter(body.get_document("filter").ok()) => Err("find unscoped".into()),
        "count" | "distinct" if field && !scoped_filter(body.get_document("query").ok()) => {
            Err(format!("{name} unscoped"))
        }
        "aggregate" => check_pipeline(body.get_array("pipeline").map_err(|e| e.to_string())?, field, db == "app"),
        "update" | "delete" => {
            let statements: Vec<&RawDocument> = match msg.sequences().first() {
                Some(seq) => seq.documents().collect(),
                None => body
                    .get_array(if name == "update" { "updates" } else { "deletes" })
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter_map(|v| v.ok().and_then(|v| v.as_document()))
                    .collect(),
            };
            if field && !statements.iter().all(|s| scoped_filter(s.get_document("q").ok())) {
                return Err(format!("{name} statement unscoped"));
            }
            Ok(())
        }
        "insert" if field => {
            let docs: Vec<&RawDocument> = match msg.sequences().first() {
                Some(seq) => seq.documents().collect(),
                None => body
                    .get_array("documents")
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter_map(|v| v.ok().and_then(|v| v.as_document()))
                    .collect(),
            };
            if docs.iter().all(|d| d.get_str("tenantId").is_ok_and(|v| v == "acme")) {
                Ok(())
            } else {
                Err("insert not stamped".into())
            }
        }
        _ => Ok(()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn whatever_is_forwarded_is_canonical_scoped_and_the_tenants_own(generated in command()) {
        let policy = Policy::from_toml(POLICY, std::path::Path::new("properties.toml")).unwrap();
        let tenant = policy.tenant("acme").unwrap().clone();
        let body = doc(&generated.body);
        let sequences = generated
            .sequence
            .iter()
            .map(|(id, docs)| {
                let docs = docs.iter().map(|d| match d.raw() { RawBson::Document(d) => d, _ => RawDocumentBuf::new() }).collect();
                Sequence::new(id.clone(), docs)
            })
            .collect();
        let msg = OpMsg::with_sequences(MsgFlags::default(), body, sequences);
        let command = Command::of(&msg);
        if let Decision::Forward(plan) = decide(&msg, command, Some(&tenant), &policy) {
            let forwarded = plan.forward.unwrap_or(msg);
            if let Err(problem) = check_forwarded(&forwarded) {
                prop_assert!(false, "{problem}\nforwarded: {:?}", forwarded.body());
            }
        }
    }
}
