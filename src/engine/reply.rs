//! Rewriting replies before they reach the client: the reverse of the request rewrite.
//!
//! - Names: a command sent under real names (`acme__orders`, `acme_app`) gets its reply mapped back to the names
//!   the tenant used — `cursor.ns`, error messages, explain output.
//! - Listings: `listCollections` and `listDatabases` keep only what the tenant's rules reach, under visible names;
//!   other tenants' collections and databases never appear.
//! - Errors: on namespaces other tenants share, what the server says about the data is withheld
//!   ([`super::withhold`]).
//!
//! Pure functions of (reply, plan, policy, tenant); unit tests assert exact outputs.

use bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};

use crate::config::Mode;
use crate::engine::raw::replace_fields;
use crate::engine::withhold::withhold;
use crate::engine::{resolve, Names, ReplyKind, ReplyPlan, Target, RESERVED_DATABASES};
use crate::policy::{Policy, Tenant};
use tenantwall_protocol::fields::Fields;

/// Explain output nests deeply but not without bound.
const MAX_DEPTH: usize = 64;

/// Everything the plan asks of a reply; `None` when the reply goes back as it came.
pub fn rewrite_reply<'a>(
    body: impl Into<Fields<'a>>,
    plan: &ReplyPlan,
    policy: &Policy,
    tenant: &Tenant,
) -> Option<RawDocumentBuf> {
    let body = body.into();
    let mut current: Option<RawDocumentBuf> = None;
    if let Some(rule) = &plan.withhold {
        current = withhold(body, rule);
    }
    let view = |c: &Option<RawDocumentBuf>| -> RawDocumentBuf { c.clone().unwrap_or_else(|| body.doc().to_owned()) };
    match plan.kind {
        ReplyKind::ListCollections => {
            let names = plan.names.clone().unwrap_or_default();
            current = list_collections(&view(&current), policy, tenant, &names).or(current);
        }
        ReplyKind::ListDatabases => current = list_databases(&view(&current), policy, tenant).or(current),
        ReplyKind::Explain => {
            let mut out = explain_reply(&view(&current), plan.withhold.is_some());
            if let Some(names) = &plan.names {
                out = map_strings(&out, names, 0);
            }
            current = Some(out);
        }
        ReplyKind::SharedIndexes => current = shared_indexes(&view(&current), plan.index_field.as_deref()).or(current),
        ReplyKind::Stats => current = strip_batch_keys(&view(&current), BACKEND_KEYS, plan.names.as_ref()).or(current),
        ReplyKind::StatsCommand => current = Some(stats_command(&view(&current), plan.names.as_ref())),
        ReplyKind::Plain => {}
    }
    if let (Some(names), false) = (&plan.names, plan.kind == ReplyKind::Explain) {
        current = map_names(&view(&current), names).or(current);
    }
    current
}

/// A real namespace or name back to the tenant's: `acme_app.acme__orders` → `app.orders`.
pub fn visible_ns(ns: &str, names: &Names) -> String {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let db = if db == names.real_db { names.visible_db.as_str() } else { db };
    let coll = names.colls.iter().find(|(real, _)| real == coll).map_or(coll, |(_, visible)| visible.as_str());
    if coll.is_empty() && !ns.contains('.') {
        db.to_owned()
    } else {
        format!("{db}.{coll}")
    }
}

/// Replaces real names in free text (error messages): namespaces first, then bare collection names.
fn visible_text(text: &str, names: &Names) -> String {
    let mut out = text.to_owned();
    for (real, visible) in &names.colls {
        out = out.replace(&format!("{}.{real}", names.real_db), &format!("{}.{visible}", names.visible_db));
    }
    if names.real_db != names.visible_db {
        out = out.replace(&format!("{}.", names.real_db), &format!("{}.", names.visible_db));
    }
    let mut colls = names.colls.clone();
    colls.sort_by_key(|(real, _)| std::cmp::Reverse(real.len()));
    for (real, visible) in colls {
        if real != visible {
            out = out.replace(&real, &visible);
        }
    }
    out
}

/// `cursor.ns`, `errmsg`, `writeErrors[].errmsg` and `writeConcernError.errmsg` under visible names.
fn map_names(body: &RawDocument, names: &Names) -> Option<RawDocumentBuf> {
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let Ok(cursor) = body.get_document("cursor") {
        if let Ok(ns) = cursor.get_str("ns") {
            let visible = visible_ns(ns, names);
            if visible != ns {
                edits.push((
                    "cursor",
                    Some(RawBson::Document(replace_fields(cursor, &[("ns", Some(RawBson::String(visible)))]))),
                ));
            }
        }
    }
    if let Ok(errmsg) = body.get_str("errmsg") {
        edits.push(("errmsg", Some(RawBson::String(visible_text(errmsg, names)))));
    }
    if let Ok(errors) = body.get_array("writeErrors") {
        let mut out = RawArrayBuf::new();
        for error in errors.into_iter().filter_map(|e| e.ok().and_then(|e| e.as_document())) {
            match error.get_str("errmsg") {
                Ok(msg) => {
                    out.push(replace_fields(error, &[("errmsg", Some(RawBson::String(visible_text(msg, names))))]))
                }
                Err(_) => out.push(error),
            }
        }
        edits.push(("writeErrors", Some(RawBson::Array(out))));
    }
    if let Ok(wce) = body.get_document("writeConcernError") {
        if let Ok(msg) = wce.get_str("errmsg") {
            let mapped = replace_fields(wce, &[("errmsg", Some(RawBson::String(visible_text(msg, names))))]);
            edits.push(("writeConcernError", Some(RawBson::Document(mapped))));
        }
    }
    (!edits.is_empty()).then(|| replace_fields(body, &edits))
}

/// Keys of explain output that name the backend (hosts, ports, versions, server parameters): never shown.
const BACKEND_KEYS: &[&str] = &["serverInfo", "serverParameters", "host", "hosts", "connectionString", "shardName"];

/// Explain output as a tenant may see it. Backend details are removed at every depth. On a namespace other
/// tenants share only the plan is shown: execution statistics count other tenants' documents
/// (`totalDocsExamined` is the collection's size; a chosen index makes `totalKeysExamined` an existence oracle).
fn explain_reply(body: &RawDocument, shared: bool) -> RawDocumentBuf {
    let succeeded = matches!(body.get("ok"), Ok(Some(RawBsonRef::Double(v))) if v == 1.0)
        || matches!(body.get("ok"), Ok(Some(RawBsonRef::Int32(1) | RawBsonRef::Int64(1))));
    if !shared || !succeeded {
        return without_keys(body, BACKEND_KEYS, 0);
    }
    // The plan: top level (find, count, distinct, update, delete, findAndModify, pushed-down aggregates), or the
    // first stage's `$cursor` of an aggregate.
    let planner = body.get_document("queryPlanner").ok().or_else(|| {
        let first = body.get_array("stages").ok()?.into_iter().next()?.ok()?;
        first.as_document()?.get_document("$cursor").ok()?.get_document("queryPlanner").ok()
    });
    let mut out = RawDocumentBuf::new();
    if let Ok(Some(version)) = body.get("explainVersion") {
        out.append(bson::cstr!("explainVersion"), version);
    }
    if let Some(planner) = planner {
        out.append(bson::cstr!("queryPlanner"), without_keys(planner, BACKEND_KEYS, 0));
    }
    out.append(bson::cstr!("ok"), 1.0);
    out
}

/// `doc` without the named keys at any depth.
fn without_keys(doc: &RawDocument, keys: &[&str], depth: usize) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for element in doc.iter_elements().flatten() {
        if keys.contains(&element.key().as_str()) {
            continue;
        }
        match element.value() {
            Ok(RawBsonRef::Document(d)) if depth < MAX_DEPTH => {
                out.append(element.key(), without_keys(d, keys, depth + 1))
            }
            Ok(RawBsonRef::Array(a)) if depth < MAX_DEPTH => {
                let mut array = RawArrayBuf::new();
                for item in a.into_iter().flatten() {
                    match item {
                        RawBsonRef::Document(d) => array.push(without_keys(d, keys, depth + 1)),
                        other => array.push(other),
                    }
                }
                out.append(element.key(), array);
            }
            Ok(value) => out.append(element.key(), value),
            Err(_) => {}
        }
    }
    out
}

/// Every string in a document that names a real namespace, under visible names (explain output).
fn map_strings(doc: &RawDocument, names: &Names, depth: usize) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for element in doc.iter_elements().filter_map(|e| e.ok()) {
        match element.value() {
            Ok(RawBsonRef::String(s)) if depth < MAX_DEPTH => out.append(element.key(), visible_text(s, names)),
            Ok(RawBsonRef::Document(d)) if depth < MAX_DEPTH => {
                out.append(element.key(), map_strings(d, names, depth + 1))
            }
            Ok(RawBsonRef::Array(a)) if depth < MAX_DEPTH => {
                let mut array = RawArrayBuf::new();
                for item in a.into_iter().filter_map(|v| v.ok()) {
                    match item {
                        RawBsonRef::Document(d) => array.push(map_strings(d, names, depth + 1)),
                        RawBsonRef::String(s) => array.push(visible_text(s, names).as_str()),
                        other => array.push(other),
                    }
                }
                out.append(element.key(), array);
            }
            Ok(value) => out.append(element.key(), value),
            Err(_) => {}
        }
    }
    out
}

/// Keys of `dbStats` / `collStats` replies that name the deployment: hosts, shard names and, on a mongos, `raw`,
/// whose keys are `shard/host:port` strings.
const STATS_BACKEND_KEYS: &[&str] =
    &["serverInfo", "serverParameters", "host", "hosts", "connectionString", "shardName", "shards", "raw", "primary"];

/// A `dbStats` / `collStats` reply as the tenant may see it: backend details gone, names visible.
fn stats_command(body: &RawDocument, names: Option<&Names>) -> RawDocumentBuf {
    let stripped = without_keys(body, STATS_BACKEND_KEYS, 0);
    let Some(names) = names else { return stripped };
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let Ok(db) = stripped.get_str("db") {
        edits.push(("db", Some(RawBson::String(visible_ns(db, names)))));
    }
    if let Ok(ns) = stripped.get_str("ns") {
        edits.push(("ns", Some(RawBson::String(visible_ns(ns, names)))));
    }
    replace_fields(&stripped, &edits)
}

/// A cursor reply whose batch documents lose `keys` at every depth, with `ns` fields mapped back.
fn strip_batch_keys(body: &RawDocument, keys: &[&str], names: Option<&Names>) -> Option<RawDocumentBuf> {
    let cursor = body.get_document("cursor").ok()?;
    let key = if cursor.get_array("firstBatch").is_ok() { "firstBatch" } else { "nextBatch" };
    let batch = cursor.get_array(key).ok()?;
    let mut out = RawArrayBuf::new();
    for item in batch.into_iter().flatten() {
        let Some(doc) = item.as_document() else { continue };
        let stripped = without_keys(doc, keys, 0);
        match (names, stripped.get_str("ns")) {
            (Some(names), Ok(ns)) => {
                let visible = visible_ns(ns, names);
                out.push(replace_fields(&stripped, &[("ns", Some(RawBson::String(visible)))]));
            }
            _ => out.push(stripped),
        }
    }
    let cursor = replace_fields(cursor, &[(key, Some(RawBson::Array(out)))]);
    Some(replace_fields(body, &[("cursor", Some(RawBson::Document(cursor)))]))
}

/// A `listIndexes` reply without `partialFilterExpression`s, and with per-tenant unique indexes shown as the
/// tenant created them when `field` is the tenant field of an enforce-style rule.
fn shared_indexes(body: &RawDocument, field: Option<&str>) -> Option<RawDocumentBuf> {
    let cursor = body.get_document("cursor").ok()?;
    let key = if cursor.get_array("firstBatch").is_ok() { "firstBatch" } else { "nextBatch" };
    let batch = cursor.get_array(key).ok()?;
    let mut out = RawArrayBuf::new();
    for index in batch.into_iter().filter_map(|e| e.ok().and_then(|e| e.as_document())) {
        let as_created = field.and_then(|f| crate::engine::ddl::index_as_created(index, f));
        out.push(replace_fields(as_created.as_deref().unwrap_or(index), &[("partialFilterExpression", None)]));
    }
    let cursor = replace_fields(cursor, &[(key, Some(RawBson::Array(out)))]);
    Some(replace_fields(body, &[("cursor", Some(RawBson::Document(cursor)))]))
}

/// The visible name of a real collection in the tenant's listing of database `visible_db`, or `None` when the
/// collection is not the tenant's to see.
fn visible_collection(policy: &Policy, tenant: &Tenant, visible_db: &str, real: &str) -> Option<String> {
    if real.starts_with("system.") {
        return None;
    }
    // Un-render first: a real name of the tenant's own is shown under its visible name; a real name of another
    // tenant's un-renders to nothing for this tenant and is refused by `resolve` as itself.
    let mut candidates = Vec::new();
    for rule in policy.rules_of(&tenant.id).filter(|r| r.mode() == Mode::Collection && r.database.matches(visible_db)) {
        if let Some(visible) = rule.template().and_then(|t| t.unrender(&tenant.id, real)) {
            candidates.push(visible);
        }
    }
    candidates.push(real.to_owned());
    candidates.into_iter().find(|visible| {
        resolve(policy, &tenant.id, visible_db, Some(visible)).is_ok_and(|target| target.real_coll(visible) == real)
    })
}

fn list_collections(body: &RawDocument, policy: &Policy, tenant: &Tenant, names: &Names) -> Option<RawDocumentBuf> {
    let cursor = body.get_document("cursor").ok()?;
    let (batch_key, batch) = match cursor.get_array("firstBatch") {
        Ok(b) => ("firstBatch", b),
        Err(_) => ("nextBatch", cursor.get_array("nextBatch").ok()?),
    };
    let mut out = RawArrayBuf::new();
    for entry in batch.into_iter().filter_map(|e| e.ok().and_then(|e| e.as_document())) {
        let Ok(real) = entry.get_str("name") else { continue };
        let Some(visible) = visible_collection(policy, tenant, &names.visible_db, real) else { continue };
        let mut edits: Vec<(&str, Option<RawBson>)> = vec![("name", Some(RawBson::String(visible)))];
        if let Ok(options) = entry.get_document("options") {
            let mut option_edits: Vec<(&str, Option<RawBson>)> = Vec::new();
            if let Ok(view_on) = options.get_str("viewOn") {
                match visible_collection(policy, tenant, &names.visible_db, view_on) {
                    Some(v) => option_edits.push(("viewOn", Some(RawBson::String(v)))),
                    None => continue,
                }
            }
            // View pipelines carry real names of joined collections; they are not shown.
            option_edits.push(("pipeline", None));
            edits.push(("options", Some(RawBson::Document(replace_fields(options, &option_edits)))));
        }
        if let Ok(id_index) = entry.get_document("idIndex") {
            edits.push(("idIndex", Some(RawBson::Document(replace_fields(id_index, &[("ns", None)])))));
        }
        out.push(replace_fields(entry, &edits));
    }
    let mut cursor_edits: Vec<(&str, Option<RawBson>)> = vec![(batch_key, Some(RawBson::Array(out)))];
    if let Ok(ns) = cursor.get_str("ns") {
        cursor_edits.push(("ns", Some(RawBson::String(visible_ns(ns, names)))));
    }
    Some(replace_fields(body, &[("cursor", Some(RawBson::Document(replace_fields(cursor, &cursor_edits))))]))
}

/// The visible name of a real database for the tenant, and whether it is the tenant's own (database mode), if
/// the tenant may see it at all. A database other tenants share is shown only when a rule names it exactly: one
/// matched only by a glob may exist because another tenant created it.
fn visible_database(policy: &Policy, tenant: &Tenant, real: &str) -> Option<(String, bool)> {
    if RESERVED_DATABASES.contains(&real) {
        return None;
    }
    let mut candidates = Vec::new();
    for rule in policy.rules_of(&tenant.id).filter(|r| r.mode() == Mode::Database) {
        if let Some(visible) = rule.template().and_then(|t| t.unrender(&tenant.id, real)) {
            candidates.push(visible);
        }
    }
    candidates.push(real.to_owned());
    candidates.into_iter().find_map(|visible| {
        if RESERVED_DATABASES.contains(&visible.as_str()) {
            return None;
        }
        let named_exactly =
            || policy.rules_of(&tenant.id).any(|r| r.database.as_str() == visible && r.mode() != Mode::Database);
        match resolve(policy, &tenant.id, &visible, None) {
            Ok(Target::Mapped { db, rule, .. }) if rule.mode() == Mode::Database => {
                (db == real).then_some((visible, true))
            }
            Ok(_) | Err(_) => (visible == real && named_exactly()).then_some((visible, false)),
        }
    })
}

fn list_databases(body: &RawDocument, policy: &Policy, tenant: &Tenant) -> Option<RawDocumentBuf> {
    let databases = body.get_array("databases").ok()?;
    let mut out = RawArrayBuf::new();
    let mut total: i64 = 0;
    for entry in databases.into_iter().filter_map(|e| e.ok().and_then(|e| e.as_document())) {
        let Ok(real) = entry.get_str("name") else { continue };
        let Some((visible, own)) = visible_database(policy, tenant, real) else { continue };
        if own {
            total += match entry.get("sizeOnDisk") {
                Ok(Some(RawBsonRef::Int64(n))) => n,
                Ok(Some(RawBsonRef::Int32(n))) => i64::from(n),
                Ok(Some(RawBsonRef::Double(n))) => n as i64,
                _ => 0,
            };
            out.push(replace_fields(entry, &[("name", Some(RawBson::String(visible)))]));
        } else {
            // A shared database's size is every tenant's data: not shown.
            out.push(replace_fields(
                entry,
                &[
                    ("name", Some(RawBson::String(visible))),
                    ("sizeOnDisk", Some(RawBson::Int64(0))),
                    ("empty", Some(RawBson::Boolean(false))),
                    ("shards", None),
                ],
            ));
        }
    }
    let mut edits: Vec<(&str, Option<RawBson>)> = vec![("databases", Some(RawBson::Array(out)))];
    if body.get("totalSize").ok().flatten().is_some() {
        edits.push(("totalSize", Some(RawBson::Int64(total))));
        edits.push(("totalSizeMb", Some(RawBson::Int64(total / (1024 * 1024)))));
    }
    Some(replace_fields(body, &edits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_back() {
        let names = Names {
            visible_db: "app".into(),
            real_db: "acme_app".into(),
            colls: vec![("acme__orders".into(), "orders".into())],
        };
        assert_eq!(visible_ns("acme_app.acme__orders", &names), "app.orders");
        assert_eq!(visible_ns("acme_app.$cmd.listCollections", &names), "app.$cmd.listCollections");
        assert_eq!(
            visible_text("ns acme_app.acme__orders not found; acme__orders", &names),
            "ns app.orders not found; orders"
        );
    }
}
