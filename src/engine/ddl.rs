//! Catalog and DDL commands. On the tenant's own namespaces (collection and database modes, or its own backend)
//! they run under the real names; on shared data only what cannot reach another tenant's rows is allowed
//! (collection creation, non-unique or per-tenant unique indexes, listing indexes). Catalog listings
//! (`listCollections`, `listDatabases`) are filtered on the way back, see [`crate::reply`].

use bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use tenantwall_protocol::OpMsg;

use super::pipeline::rewrite_view_pipeline;
use super::raw::{array_documents, rename_collection, replace_fields};
use super::read::command_collection;
use super::{first_key, resolve, Denial, ReplyKind, ReplyPlan, Result, Scope, Target};
use crate::command::Command;
use crate::config::{Mode, Style};
use crate::error::ErrorCode;
use crate::policy::FieldRule;

fn malformed(what: impl Into<String>) -> Denial {
    Denial::new(ErrorCode::FAILED_TO_PARSE, what)
}

pub fn rewrite(msg: &OpMsg, command: Command, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let body = msg.body();
    let cursor = ReplyPlan { record_cursor: true, ..ReplyPlan::default() };
    match command {
        Command::ListCollections => return list_collections(msg, scope),
        Command::ListDatabases => return list_databases(msg, scope),
        Command::RenameCollection => return rename(msg, scope),
        Command::DropDatabase => {
            return match scope.resolve_db()? {
                Target::Mapped { rule, .. } if rule.mode() == Mode::Database => Ok((None, ReplyPlan::default())),
                target => Err(Denial::unauthorized(format!(
                    "{}: dropDatabase would drop other tenants' data",
                    target.rule().describe()
                ))),
            };
        }
        _ => {}
    }
    let coll = command_collection(body)?;
    let target = scope.resolve(coll)?;
    let rule = match target {
        Target::Mapped { .. } => {
            let real = target.real_coll(coll).to_owned();
            let plan = if command == Command::ListIndexes { cursor } else { ReplyPlan::default() };
            return Ok((owned_ddl(msg, command, scope, coll, &real)?, plan));
        }
        Target::Field(field) => field.rule,
        Target::Shared(rule) => rule,
    };
    match command {
        Command::ListIndexes => {
            // Per-tenant unique indexes are shown as the tenant created them (see `per_tenant_indexes`).
            let index_field = match target {
                Target::Field(field) if field.style == Style::Enforce => Some(field.field.as_str().to_owned()),
                _ => None,
            };
            Ok((None, ReplyPlan { kind: ReplyKind::SharedIndexes, index_field, ..cursor }))
        }
        Command::Create => {
            // Every option of create changes the collection for all its tenants: capped/size/max evict their
            // rows, a validator or collation changes what they may store and how `$eq` compares, expiry deletes,
            // views read without the proxy seeing the reads. Only a plain create passes.
            let option = body
                .iter_elements()
                .flatten()
                .skip(1)
                .map(|e| e.key().as_str())
                .find(|k| !crate::command::spec::GENERIC_ARGUMENTS.contains(k));
            if let Some(option) = option {
                return Err(Denial::unauthorized(format!(
                    "{}.{coll}: create option {option} would apply to every tenant of a shared collection ({})",
                    scope.db,
                    rule.describe()
                )));
            }
            Ok((None, ReplyPlan::default()))
        }
        Command::CreateIndexes => match target {
            Target::Field(field) => {
                let ns = format!("{}.{coll}", scope.db);
                let indexes = per_tenant_indexes(scope, body.get("indexes").ok().flatten(), field, &ns)?;
                let forward = indexes.map(|indexes| {
                    let body = replace_fields(body, &[("indexes", Some(RawBson::Array(indexes)))]);
                    OpMsg::with_sequences(msg.flags, body, msg.sequences().to_vec())
                });
                Ok((forward, ReplyPlan::default()))
            }
            _ => Err(Denial::unauthorized(format!(
                "{}.{coll} is read-only ({}): createIndexes is refused",
                scope.db,
                rule.describe()
            ))),
        },
        _ => Err(Denial::unauthorized(format!(
            "{}.{coll}: {} changes the whole collection, which other tenants share ({})",
            scope.db,
            first_key(body),
            rule.describe()
        ))),
    }
}

/// DDL on the tenant's own collection: renamed, and a view's source and pipeline resolved like any other.
fn owned_ddl(msg: &OpMsg, command: Command, scope: &mut Scope<'_>, coll: &str, real: &str) -> Result<Option<OpMsg>> {
    let body = msg.body();
    if !matches!(command, Command::Create | Command::CollMod) {
        return Ok(rename_collection(msg, coll, real));
    }
    let name = first_key(body).to_owned();
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if real != coll {
        edits.push((name.as_str(), Some(RawBson::String(real.to_owned()))));
    }
    if let Ok(Some(view_on)) = body.get("viewOn") {
        let RawBsonRef::String(source) = view_on else { return Err(malformed("viewOn must be a string")) };
        // A view reads without the proxy seeing the reads: its source must be the tenant's own.
        let target = scope.resolve(source)?;
        if !target.is_mapped() {
            return Err(Denial::unauthorized(format!(
                "{}: a view's source must be the tenant's own collection",
                target.rule().describe()
            )));
        }
        let real_source = target.real_coll(source).to_owned();
        if real_source != source {
            edits.push(("viewOn", Some(RawBson::String(real_source))));
        }
    }
    if let Ok(Some(pipeline)) = body.get("pipeline") {
        let stages = array_documents(pipeline, "pipeline")?;
        if let Some(new) = rewrite_view_pipeline(scope, &stages)? {
            edits.push(("pipeline", Some(RawBson::Array(new))));
        }
    }
    if edits.is_empty() {
        return Ok(None);
    }
    Ok(Some(OpMsg::with_sequences(msg.flags, replace_fields(body, &edits), msg.sequences().to_vec())))
}

/// Maps a `{name: ...}` condition of a listing filter to real names: equality, `$eq` and `$in` of strings.
fn map_name_filter(filter: &RawDocument, map: &mut dyn FnMut(&str) -> Result<Option<String>>) -> Result<RawBson> {
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    let unmappable = || Denial::unauthorized("a listing filter may only match name by equality or $in");
    if let Some(name) = filter.get("name").map_err(|e| malformed(e.to_string()))? {
        let mapped = match name {
            RawBsonRef::String(visible) => match map(visible)? {
                Some(real) => RawBson::String(real),
                // A name the tenant cannot reach matches nothing.
                None => RawBson::String(String::from("\u{0}tenantwall-none")),
            },
            RawBsonRef::Document(ops) => {
                let mut out = bson::RawDocumentBuf::new();
                for op in ops.iter_elements() {
                    let op = op.map_err(|e| malformed(e.to_string()))?;
                    match (op.key().as_str(), op.value().map_err(|e| malformed(e.to_string()))?) {
                        ("$eq", RawBsonRef::String(v)) => out.append(op.key(), map(v)?.unwrap_or_default()),
                        ("$in", RawBsonRef::Array(items)) => {
                            let mut array = RawArrayBuf::new();
                            for item in items.into_iter() {
                                let Ok(RawBsonRef::String(v)) = item else { return Err(unmappable()) };
                                if let Some(real) = map(v)? {
                                    array.push(real.as_str());
                                }
                            }
                            out.append(op.key(), array);
                        }
                        _ => return Err(unmappable()),
                    }
                }
                RawBson::Document(out)
            }
            _ => return Err(unmappable()),
        };
        edits.push(("name", Some(mapped)));
    }
    Ok(RawBson::Document(replace_fields(filter, &edits)))
}

/// `listCollections`: the real database, the name filter mapped, and the whole listing in the first batch (the
/// reply is filtered and renamed on the way back, so it must not continue in batches the proxy cannot see
/// together).
fn list_collections(msg: &OpMsg, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let body = msg.body();
    let policy = scope.policy;
    let rule = policy
        .any_rule_for_db(&scope.tenant.id, scope.db)
        .ok_or_else(|| Denial::unauthorized(format!("no rule allows {}", scope.db)))?;
    if rule.mode() == Mode::Database {
        scope.resolve_db()?;
    } else if super::RESERVED_DATABASES.contains(&scope.db) {
        return Err(Denial::unauthorized(format!("database {} is not reachable through tenantwall", scope.db)));
    }
    let tenant = scope.tenant.id.clone();
    let db = scope.db.to_owned();
    let mut edits: Vec<(&str, Option<RawBson>)> =
        vec![("cursor", Some(RawBson::Document(bson::RawDocumentBuf::new())))];
    if let Ok(filter) = body.get_document("filter") {
        let mapped = map_name_filter(filter, &mut |visible| {
            Ok(resolve(policy, &tenant, &db, Some(visible)).ok().map(|t| t.real_coll(visible).to_owned()))
        })?;
        edits.push(("filter", Some(mapped)));
    }
    let body = replace_fields(body, &edits);
    let plan = ReplyPlan { record_cursor: true, kind: ReplyKind::ListCollections, ..ReplyPlan::default() };
    Ok((Some(OpMsg::with_sequences(msg.flags, body, msg.sequences().to_vec())), plan))
}

/// `listDatabases` (on admin): forwarded with the name filter mapped; filtered and renamed on the way back.
fn list_databases(msg: &OpMsg, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    if scope.db != "admin" {
        return Err(Denial::new(ErrorCode::UNAUTHORIZED, "listDatabases runs on admin"));
    }
    let body = msg.body();
    let plan = ReplyPlan { kind: ReplyKind::ListDatabases, ..ReplyPlan::default() };
    let Ok(filter) = body.get_document("filter") else { return Ok((None, plan)) };
    let (policy, tenant) = (scope.policy, scope.tenant.id.clone());
    let mapped = map_name_filter(filter, &mut |visible| {
        Ok(match resolve(policy, &tenant, visible, None) {
            Ok(Target::Mapped { db, .. }) => Some(db),
            Ok(_) => Some(visible.to_owned()),
            Err(_) => policy.any_rule_for_db(&tenant, visible).is_some().then(|| visible.to_owned()),
        })
    })?;
    let body = replace_fields(body, &[("filter", Some(mapped))]);
    Ok((Some(OpMsg::with_sequences(msg.flags, body, msg.sequences().to_vec())), plan))
}

/// `renameCollection` (on admin, full namespaces): both sides must be the tenant's own.
fn rename(msg: &OpMsg, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    if scope.db != "admin" {
        return Err(Denial::new(ErrorCode::UNAUTHORIZED, "renameCollection runs on admin"));
    }
    let body = msg.body();
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    for field in ["renameCollection", "to"] {
        let ns = body.get_str(field).map_err(|_| malformed(format!("{field} must be a namespace")))?;
        let (db, coll) = ns
            .split_once('.')
            .ok_or_else(|| Denial::new(ErrorCode::INVALID_NAMESPACE, format!("{field} is not db.collection")))?;
        match resolve(scope.policy, &scope.tenant.id, db, Some(coll))? {
            Target::Mapped { db: real_db, coll: Some(real_coll), .. } => {
                scope.names_mut().colls.push((real_coll.clone(), coll.to_owned()));
                edits.push((field, Some(RawBson::String(format!("{real_db}.{real_coll}")))));
            }
            target => {
                return Err(Denial::unauthorized(format!(
                    "{}: renameCollection needs both sides to be the tenant's own",
                    target.rule().describe()
                )))
            }
        }
    }
    Ok((
        Some(OpMsg::with_sequences(msg.flags, replace_fields(body, &edits), msg.sequences().to_vec())),
        ReplyPlan::default(),
    ))
}

/// Indexes on a shared collection. No TTL (it would delete other tenants' documents) and no partial filter
/// (`listIndexes` shows it to every tenant). A unique index must be unique per tenant: under `enforce` one that
/// does not start with the tenant field is rewritten into the per-tenant index it means, `{<field>: 1, ...key}`
/// under the same name (mongoose `unique: true`, Payload `unique`, GridFS `{files_id, n}`), and `listIndexes`
/// shows it back without the field; `verify` and `audit` refuse it, as they never rewrite a scope point into
/// existence. Returns the rewritten `indexes` array, or `None` when every index goes as it came.
fn per_tenant_indexes(
    scope: &mut Scope<'_>,
    indexes: Option<RawBsonRef<'_>>,
    rule: FieldRule<'_>,
    ns: &str,
) -> Result<Option<RawArrayBuf>> {
    let indexes = array_documents(indexes.ok_or_else(|| malformed("createIndexes needs indexes"))?, "indexes")?;
    let field = rule.field.as_str();
    let mut out = RawArrayBuf::new();
    let mut changed = false;
    for (i, index) in indexes.iter().enumerate() {
        let place = format!("indexes[{i}]");
        let name = match index.get("name") {
            Ok(Some(RawBsonRef::String(name))) => name.to_owned(),
            _ => return Err(malformed(format!("{place}.name must be a string"))),
        };
        let refuse = |why: String| {
            Denial::unauthorized(format!("{ns}: index {name} {why} ({}, shared by every tenant)", rule.describe()))
        };
        if index.get("partialFilterExpression").ok().flatten().is_some() {
            // Its values are shown to every tenant by listIndexes.
            return Err(refuse("has a partialFilterExpression, which every tenant's listIndexes would show".into()));
        }
        if index.get("expireAfterSeconds").ok().flatten().is_some() {
            return Err(refuse("is a TTL index, which would delete every tenant's documents".into()));
        }
        // mongod reads both as safeBool: `unique: 1` is a unique index, and prepareUnique turns into one.
        if !(super::truthy(index, "unique", &place)? || super::truthy(index, "prepareUnique", &place)?) {
            out.push(*index);
            continue;
        }
        let key = index.get_document("key").map_err(|_| malformed(format!("{place}.key must be a document")))?;
        // An index collation compares the tenant field too: tenant values it finds equal would share uniqueness.
        if let Ok(Some(_)) = index.get("collation") {
            super::filter::check_collation(scope, rule, *index, &format!("{ns}: index {name}"))?;
        }
        if first_key(key) == field {
            // Unique on the tenant field alone caps every tenant at one document.
            if key.iter_elements().nth(1).is_none() {
                return Err(refuse(format!("is unique on {field} alone, which would allow each tenant one document")));
            }
            out.push(*index);
            continue;
        }
        if rule.style != Style::Enforce {
            return Err(refuse(format!(
                "is unique across tenants; make it per tenant by starting its key with {field}"
            )));
        }
        if key.iter_elements().flatten().any(|e| e.key().as_str() == field) {
            return Err(refuse(format!("is unique with {field} not first; put {field} first")));
        }
        if super::truthy(index, "sparse", &place)? {
            // Every document carries the tenant field, so a sparse index on `{field, ...key}` would index the
            // documents that lack `key` too, and refuse a second one of them: not what the tenant asked for.
            return Err(refuse(format!(
                "is sparse and unique; it cannot be made per tenant ({field} is in every document)"
            )));
        }
        let mut per_tenant = RawDocumentBuf::new();
        per_tenant.append(rule.field.as_cstr(), 1);
        for element in key.iter_elements() {
            let element = element.map_err(|e| malformed(e.to_string()))?;
            per_tenant.append(element.key(), element.value().map_err(|e| malformed(e.to_string()))?);
        }
        // `listIndexes` shows a unique index without the tenant field when its name is not the default name of
        // its whole key: a tenant naming `{email: 1}` after `{tenantId: 1, email: 1}` would make that ambiguous.
        if name == default_index_name(&per_tenant) {
            return Err(refuse(format!("has the default name of a key starting with {field}; name it after its key")));
        }
        out.push(replace_fields(index, &[("key", Some(RawBson::Document(per_tenant)))]));
        changed = true;
    }
    Ok(changed.then_some(out))
}

/// The name drivers give an index by default: `field_direction` pairs joined by `_` (`tenantId_1_email_1`).
pub fn default_index_name(key: &RawDocument) -> String {
    let mut parts = Vec::new();
    for element in key.iter_elements().flatten() {
        let direction = match element.value() {
            Ok(RawBsonRef::Int32(n)) => n.to_string(),
            Ok(RawBsonRef::Int64(n)) => n.to_string(),
            Ok(RawBsonRef::Double(n)) if n.fract() == 0.0 && n.abs() < 1e15 => (n as i64).to_string(),
            Ok(RawBsonRef::Double(n)) => n.to_string(),
            Ok(RawBsonRef::String(s)) => s.to_owned(),
            _ => String::new(),
        };
        parts.push(format!("{}_{direction}", element.key().as_str()));
    }
    parts.join("_")
}

/// One index of a `listIndexes` reply on a field-mode collection as the tenant created it: a unique index that
/// starts with the tenant field and is named other than its whole key was rewritten from the rest of its key.
pub fn index_as_created(index: &RawDocument, field: &str) -> Option<RawDocumentBuf> {
    let unique = |f: &str| super::truthy(index, f, "index").unwrap_or(false);
    if !(unique("unique") || unique("prepareUnique")) {
        return None;
    }
    let key = index.get_document("key").ok()?;
    let mut elements = key.iter_elements().flatten();
    if elements.next()?.key().as_str() != field {
        return None;
    }
    let mut rest = RawDocumentBuf::new();
    for element in elements {
        rest.append(element.key(), element.value().ok()?);
    }
    if rest.is_empty() || index.get_str("name").ok()? == default_index_name(key) {
        return None;
    }
    Some(replace_fields(index, &[("key", Some(RawBson::Document(rest)))]))
}
