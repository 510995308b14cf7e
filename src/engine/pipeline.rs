//! `aggregate`: every stage checked against an allowlist, the tenant `$match` first in every pipeline that reads a
//! field-mode collection — the command's own, and every `$lookup`, `$graphLookup` and `$unionWith` at any depth,
//! including inside `$facet` — and writes (`$out`, `$merge`) only into namespaces the tenant may write.

use bson::{cstr, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use tenantwall_protocol::OpMsg;

use super::arguments;
use super::filter::{check_collation, pins, scope_filter, stamp_stage, tenant_condition};
use super::raw::{array_documents, replace_fields};
use super::read::optional_document;
use super::write::{stamped_pipeline, update_pipeline};
use super::{Denial, ReplyKind, ReplyPlan, Result, Scope, Target};
use crate::config::{Mode, Style};
use crate::error::ErrorCode;
use crate::policy::compile::RESERVED_DATABASES;
use crate::policy::FieldRule;

/// Stages that only transform the stream they are given.
const STREAM_STAGES: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$sort",
    "$limit",
    "$skip",
    "$group",
    "$unwind",
    "$count",
    "$sortByCount",
    "$bucket",
    "$bucketAuto",
    "$replaceRoot",
    "$replaceWith",
    "$sample",
    "$redact",
    "$densify",
    "$fill",
    "$setWindowFields",
];

/// Fields of a `$merge` specification.
const MERGE_FIELDS: &[&str] = &["into", "on", "let", "whenMatched", "whenNotMatched"];
/// Fields of a `$lookup` specification (`_internalCollation` and other internal fields are refused).
const LOOKUP_FIELDS: &[&str] = &["from", "localField", "foreignField", "as", "let", "pipeline"];
/// Fields of a `$graphLookup` specification.
const GRAPH_LOOKUP_FIELDS: &[&str] = &[
    "from",
    "startWith",
    "connectFromField",
    "connectToField",
    "as",
    "maxDepth",
    "depthField",
    "restrictSearchWithMatch",
];
/// Fields of a `$unionWith` specification.
const UNION_WITH_FIELDS: &[&str] = &["coll", "pipeline"];
/// Fields of an `$out` specification.
const OUT_FIELDS: &[&str] = &["db", "coll", "timeseries"];
/// Fields of a `$geoNear` specification.
const GEO_NEAR_FIELDS: &[&str] = &[
    "near",
    "distanceField",
    "spherical",
    "maxDistance",
    "minDistance",
    "query",
    "distanceMultiplier",
    "includeLocs",
    "key",
];

/// MongoDB allows 20 levels of sub-pipelines.
const MAX_DEPTH: usize = 20;

fn malformed(what: impl Into<String>) -> Denial {
    Denial::new(ErrorCode::FAILED_TO_PARSE, what)
}

/// How the stream entering a pipeline must be scoped.
#[derive(Clone, Copy)]
enum Source<'p> {
    /// Reads a field-mode collection: the tenant condition goes first.
    Field(FieldRule<'p>),
    /// Already scoped (a `$facet` branch) or needs no scoping (shared data, the tenant's own namespaces).
    Scoped,
}

/// Whose data the pipeline's own namespace is: decides which writes and stages are possible.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// A shared collection scoped by the tenant field.
    Field,
    /// Reference data, or a join's sub-pipeline: read-only.
    ReadOnly,
    /// The tenant's own namespace (collection or database mode, or its own backend).
    Owned,
}

/// Stages that only make sense, and are only safe, on the tenant's own namespaces.
const OWNED_STAGES: &[&str] = &["$collStats", "$indexStats", "$listSearchIndexes"];
/// Stages that must come first; allowed there on the tenant's own namespaces.
const OWNED_FIRST_STAGES: &[&str] =
    &["$geoNear", "$search", "$searchMeta", "$vectorSearch", "$changeStream", "$documents"];

pub fn rewrite_aggregate(msg: &OpMsg, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let body = msg.body();
    let reply = ReplyPlan { record_cursor: true, ..ReplyPlan::default() };
    let pipeline = match body.get("pipeline") {
        Ok(Some(value)) => array_documents(value, "pipeline")?,
        _ => return Err(malformed("aggregate needs a pipeline")),
    };
    let mut renamed: Option<String> = None;
    if let Ok(Some(collation)) = body.get("collation") {
        let mut holder = RawDocumentBuf::new();
        holder.append(cstr!("collation"), collation);
        scope.inherited_collation = Some(holder);
    }
    let (source, context, collection_less) = match body.get("aggregate") {
        Ok(Some(RawBsonRef::String(coll))) => match scope.resolve(coll)? {
            Target::Field(rule) => {
                check_collation(scope, rule, body, "the aggregate")?;
                (Source::Field(rule), Context::Field, false)
            }
            Target::Shared(_) => (Source::Scoped, Context::ReadOnly, false),
            target @ Target::Mapped { .. } => {
                let real = target.real_coll(coll);
                if real != coll {
                    renamed = Some(real.to_owned());
                }
                (Source::Scoped, Context::Owned, false)
            }
        },
        Ok(Some(RawBsonRef::Int32(1) | RawBsonRef::Int64(1) | RawBsonRef::Double(1.0))) => match scope.resolve_db()? {
            // A whole database is the tenant's only in database mode (or on its own backend).
            Target::Mapped { rule, .. } if rule.mode() == Mode::Database => (Source::Scoped, Context::Owned, true),
            _ => {
                return Err(Denial::unauthorized(
                    "collection-less aggregation is only allowed on a tenant's own database",
                ))
            }
        },
        _ => return Err(malformed("aggregate needs a collection name or 1")),
    };
    if collection_less
        && stage_parts(pipeline.first().copied().ok_or_else(|| malformed("empty pipeline"))?)?.0 == "$changeStream"
    {
        return Err(Denial::unauthorized("database-wide change streams are not allowed"));
    }
    let rewritten = rewrite_pipeline(scope, &pipeline, source, context, 0)?;
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let Some(real) = renamed {
        edits.push(("aggregate", Some(RawBson::String(real))));
    }
    if let Some(new) = rewritten {
        edits.push(("pipeline", Some(RawBson::Array(new))));
    }
    let reply = if scope.host_bearing { ReplyPlan { kind: ReplyKind::Stats, ..reply } } else { reply };
    if edits.is_empty() {
        return Ok((None, reply));
    }
    Ok((Some(OpMsg::with_sequences(msg.flags, replace_fields(body, &edits), msg.sequences().to_vec())), reply))
}

/// Rewrites a view definition's pipeline (create / collMod on the tenant's own namespaces).
pub fn rewrite_view_pipeline(scope: &mut Scope<'_>, stages: &[&RawDocument]) -> Result<Option<RawArrayBuf>> {
    rewrite_pipeline(scope, stages, Source::Scoped, Context::ReadOnly, 0)
}

fn stage_parts(stage: &RawDocument) -> Result<(&str, RawBsonRef<'_>)> {
    let mut elements = stage.iter_elements();
    let first = elements.next().and_then(|e| e.ok()).ok_or_else(|| malformed("empty pipeline stage"))?;
    if elements.next().is_some() {
        return Err(malformed("a pipeline stage must have exactly one field"));
    }
    let value = first.value().map_err(|e| malformed(e.to_string()))?;
    Ok((first.key().as_str(), value))
}

fn stage(name: &'static bson::raw::CStr, value: impl bson::raw::BindRawBsonRef) -> RawDocumentBuf {
    let mut doc = RawDocumentBuf::new();
    doc.append(name, value);
    doc
}

/// Rewrites one pipeline. `None` when nothing changed.
fn rewrite_pipeline(
    scope: &mut Scope<'_>,
    stages: &[&RawDocument],
    source: Source<'_>,
    context: Context,
    depth: usize,
) -> Result<Option<RawArrayBuf>> {
    if depth > MAX_DEPTH {
        return Err(malformed("sub-pipelines nest too deeply"));
    }
    let mut out = RawArrayBuf::new();
    let mut changed = false;
    let mut rest = stages;
    if let Source::Field(rule) = source {
        let value = scope.value.clone();
        let first = stages.first().map(|s| stage_parts(s)).transpose()?;
        match first {
            Some(("$geoNear", RawBsonRef::Document(geo))) => {
                arguments::only(geo, GEO_NEAR_FIELDS, "$geoNear")?;
                let query = optional_document(geo, "query")?;
                if let Some(scoped) = scope_filter(scope, rule, query, "$geoNear.query")? {
                    let geo = replace_fields(geo, &[("query", Some(RawBson::Document(scoped)))]);
                    out.push(stage(cstr!("$geoNear"), geo));
                    changed = true;
                } else {
                    out.push(stages[0]);
                }
                rest = &stages[1..];
            }
            Some(("$match", RawBsonRef::Document(m))) if m.get("$text").ok().flatten().is_some() => {
                // $text must stay in the first stage: merge the condition into it.
                if let Some(scoped) = scope_filter(scope, rule, Some(m), "the $text $match")? {
                    out.push(stage(cstr!("$match"), scoped));
                    changed = true;
                } else {
                    out.push(stages[0]);
                }
                rest = &stages[1..];
            }
            Some((name @ ("$search" | "$searchMeta" | "$vectorSearch" | "$changeStream"), _)) => {
                return Err(Denial::unauthorized(format!(
                    "{}: {name} cannot be scoped to one tenant on a shared collection",
                    rule.describe()
                )));
            }
            first => {
                let pinned = matches!(first, Some(("$match", RawBsonRef::Document(m))) if pins(m, rule.field, &scope.tenant.value));
                match rule.style {
                    Style::Enforce => {
                        out.push(stage(cstr!("$match"), tenant_condition(rule.field, &value)));
                        changed = true;
                    }
                    Style::Verify if !pinned => scope.violation(
                        rule,
                        format!("the pipeline does not start with a $match pinning {} (verify style)", rule.field),
                    )?,
                    Style::Audit if !pinned => {
                        scope.audit.push(format!("{}: would prepend the tenant $match", rule.describe()))
                    }
                    _ => {}
                }
            }
        }
    }
    for (i, raw_stage) in rest.iter().enumerate() {
        let (name, value) = stage_parts(raw_stage)?;
        let position = Position { first: i == 0 && rest.len() == stages.len(), last: i == rest.len() - 1, depth };
        match rewrite_stage(scope, name, value, context, position)? {
            StageOut::Same => out.push(*raw_stage),
            StageOut::Replace(docs) => {
                changed = true;
                for doc in docs {
                    out.push(doc);
                }
            }
        }
    }
    Ok(changed.then_some(out))
}

enum StageOut {
    Same,
    Replace(Vec<RawDocumentBuf>),
}

#[derive(Clone, Copy)]
struct Position {
    first: bool,
    last: bool,
    depth: usize,
}

/// A collection named by a stage, resolved and renamed.
fn stage_target<'a>(scope: &mut Scope<'a>, coll: &str) -> Result<(Target<'a>, Option<String>)> {
    let target = scope.resolve(coll)?;
    if let (Target::Field(rule), Some(holder)) = (&target, scope.inherited_collation.clone()) {
        check_collation(scope, *rule, &holder, "the aggregate, whose collation this join inherits,")?;
    }
    let real = target.real_coll(coll);
    let renamed = (real != coll).then(|| real.to_owned());
    Ok((target, renamed))
}

fn rewrite_stage(
    scope: &mut Scope<'_>,
    name: &str,
    value: RawBsonRef<'_>,
    context: Context,
    at: Position,
) -> Result<StageOut> {
    if STREAM_STAGES.contains(&name) {
        if name == "$match" {
            if let RawBsonRef::Document(m) = value {
                if m.get("$text").ok().flatten().is_some() && !(at.first && context == Context::Owned) {
                    return Err(Denial::unauthorized("$text is only allowed in the first stage"));
                }
            }
        }
        return Ok(StageOut::Same);
    }
    if context == Context::Owned && (OWNED_STAGES.contains(&name) || (at.first && OWNED_FIRST_STAGES.contains(&name))) {
        if let ("$geoNear", RawBsonRef::Document(geo)) = (name, value) {
            arguments::only(geo, GEO_NEAR_FIELDS, "$geoNear")?;
        }
        if OWNED_STAGES.contains(&name) {
            scope.host_bearing = true;
        }
        if name == "$changeStream" {
            if let RawBsonRef::Document(d) = value {
                if super::truthy(d, "allChangesForCluster", "$changeStream")? {
                    return Err(Denial::unauthorized("cluster-wide change streams are not allowed"));
                }
            }
        }
        return Ok(StageOut::Same);
    }
    match (name, value) {
        ("$facet", RawBsonRef::Document(facets)) => facet(scope, facets, context, at),
        ("$lookup", RawBsonRef::Document(lookup)) => lookup_stage(scope, lookup, at),
        ("$graphLookup", RawBsonRef::Document(graph)) => graph_lookup(scope, graph),
        ("$unionWith", value) => union_with(scope, value, at),
        ("$merge", value) if at.last && at.depth == 0 && context == Context::Field => merge(scope, value),
        ("$out" | "$merge", value) if at.last && at.depth == 0 && context == Context::Owned => {
            owned_write(scope, name, value)
        }
        ("$out" | "$merge", _) => Err(Denial::unauthorized(format!(
            "{name} is not allowed here: it could replace or change other tenants' data"
        ))),
        (
            "$currentOp"
            | "$listSessions"
            | "$listLocalSessions"
            | "$planCacheStats"
            | "$queryStats"
            | "$listSampledQueries",
            _,
        ) => Err(Denial::unauthorized(format!("stage {name} shows other clients' activity and is not allowed"))),
        (name, _) => Err(Denial::unauthorized(format!("aggregation stage {name} is not allowed here"))),
    }
}

/// `$facet`: every branch rewritten as a pipeline over the already scoped stream.
fn facet(scope: &mut Scope<'_>, facets: &RawDocument, context: Context, at: Position) -> Result<StageOut> {
    let mut rebuilt = RawDocumentBuf::new();
    let mut changed = false;
    for element in facets.iter_elements() {
        let element = element.map_err(|e| malformed(e.to_string()))?;
        let branch = array_documents(element.value().map_err(|e| malformed(e.to_string()))?, "$facet branch")?;
        let branch_context = if context == Context::Owned { Context::ReadOnly } else { context };
        match rewrite_pipeline(scope, &branch, Source::Scoped, branch_context, at.depth + 1)? {
            Some(new) => {
                changed = true;
                rebuilt.append(element.key(), new);
            }
            None => rebuilt.append(element.key(), element.value().map_err(|e| malformed(e.to_string()))?),
        }
    }
    Ok(if changed { StageOut::Replace(vec![stage(cstr!("$facet"), rebuilt)]) } else { StageOut::Same })
}

/// `$lookup`: the joined collection resolved (and renamed), its sub-pipeline scoped by that collection's rule.
fn lookup_stage(scope: &mut Scope<'_>, lookup: &RawDocument, at: Position) -> Result<StageOut> {
    arguments::only(lookup, LOOKUP_FIELDS, "$lookup")?;
    let from = match lookup.get("from") {
        Ok(Some(RawBsonRef::String(from))) => from,
        Ok(Some(RawBsonRef::Document(_))) => {
            return Err(Denial::unauthorized("$lookup from another database is not allowed"))
        }
        _ => return Err(malformed("$lookup needs from")),
    };
    let sub = match lookup.get("pipeline") {
        Ok(Some(v)) => array_documents(v, "$lookup.pipeline")?,
        _ => Vec::new(),
    };
    let (target, renamed) = stage_target(scope, from)?;
    let source = match target {
        Target::Field(rule) => Source::Field(rule),
        _ => Source::Scoped,
    };
    // A join reads; the sub-pipeline's own writes are refused by the stage rules.
    let new_sub = rewrite_pipeline(scope, &sub, source, Context::ReadOnly, at.depth + 1)?;
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let Some(real) = renamed {
        edits.push(("from", Some(RawBson::String(real))));
    }
    if let Some(new) = new_sub {
        edits.push(("pipeline", Some(RawBson::Array(new))));
    }
    Ok(if edits.is_empty() {
        StageOut::Same
    } else {
        StageOut::Replace(vec![stage(cstr!("$lookup"), replace_fields(lookup, &edits))])
    })
}

/// `$graphLookup`: the collection resolved, its `restrictSearchWithMatch` scoped like a filter.
fn graph_lookup(scope: &mut Scope<'_>, graph: &RawDocument) -> Result<StageOut> {
    arguments::only(graph, GRAPH_LOOKUP_FIELDS, "$graphLookup")?;
    let from = graph.get_str("from").map_err(|_| malformed("$graphLookup needs from"))?;
    let (target, renamed) = stage_target(scope, from)?;
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let Some(real) = renamed {
        edits.push(("from", Some(RawBson::String(real))));
    }
    if let Target::Field(rule) = target {
        let restrict = optional_document(graph, "restrictSearchWithMatch")?;
        if let Some(scoped) = scope_filter(scope, rule, restrict, "$graphLookup.restrictSearchWithMatch")? {
            edits.push(("restrictSearchWithMatch", Some(RawBson::Document(scoped))));
        }
    }
    Ok(if edits.is_empty() {
        StageOut::Same
    } else {
        StageOut::Replace(vec![stage(cstr!("$graphLookup"), replace_fields(graph, &edits))])
    })
}

/// `$unionWith`: the collection resolved, its pipeline scoped by that collection's rule.
fn union_with(scope: &mut Scope<'_>, value: RawBsonRef<'_>, at: Position) -> Result<StageOut> {
    let (coll, sub) = match value {
        RawBsonRef::String(coll) => (coll, Vec::new()),
        RawBsonRef::Document(d) => {
            arguments::only(d, UNION_WITH_FIELDS, "$unionWith")?;
            let coll = d.get_str("coll").map_err(|_| Denial::unauthorized("$unionWith needs a collection"))?;
            let sub = match d.get("pipeline") {
                Ok(Some(v)) => array_documents(v, "$unionWith.pipeline")?,
                _ => Vec::new(),
            };
            (coll, sub)
        }
        _ => return Err(malformed("$unionWith needs a collection")),
    };
    let (target, renamed) = stage_target(scope, coll)?;
    let source = match target {
        Target::Field(rule) => Source::Field(rule),
        _ => Source::Scoped,
    };
    let new_sub = rewrite_pipeline(scope, &sub, source, Context::ReadOnly, at.depth + 1)?;
    if renamed.is_none() && new_sub.is_none() {
        return Ok(StageOut::Same);
    }
    let mut union = RawDocumentBuf::new();
    union.append(cstr!("coll"), renamed.as_deref().unwrap_or(coll));
    match new_sub {
        Some(new) => union.append(cstr!("pipeline"), new),
        None if !sub.is_empty() => {
            let mut same = RawArrayBuf::new();
            for s in &sub {
                same.push(*s);
            }
            union.append(cstr!("pipeline"), same);
        }
        None => {}
    }
    Ok(StageOut::Replace(vec![stage(cstr!("$unionWith"), union)]))
}

/// `$out` / `$merge` from the tenant's own namespace: only into the tenant's own namespaces, renamed.
fn owned_write(scope: &mut Scope<'_>, name: &str, value: RawBsonRef<'_>) -> Result<StageOut> {
    let (db, coll, spec) = match value {
        RawBsonRef::String(coll) => (None, coll, None),
        RawBsonRef::Document(d) => {
            if name == "$merge" {
                arguments::only(d, MERGE_FIELDS, "$merge")?;
                if let Ok(Some(RawBsonRef::Array(stages))) = d.get("whenMatched") {
                    update_pipeline(stages, "$merge.whenMatched")?;
                }
            } else {
                arguments::only(d, OUT_FIELDS, "$out")?;
            }
            let into = if name == "$merge" { d.get("into").ok().flatten() } else { Some(RawBsonRef::Document(d)) };
            match into {
                Some(RawBsonRef::String(coll)) => (None, coll, Some(d)),
                Some(RawBsonRef::Document(into)) => (
                    into.get_str("db").ok(),
                    into.get_str("coll").map_err(|_| malformed(format!("{name} needs coll")))?,
                    Some(d),
                ),
                _ => return Err(malformed(format!("{name} needs a target"))),
            }
        }
        _ => return Err(malformed(format!("{name} needs a target"))),
    };
    let visible_db = db.unwrap_or(scope.db).to_owned();
    let target = if visible_db == scope.db {
        scope.resolve(coll)?
    } else {
        super::resolve(scope.policy, &scope.tenant.id, &visible_db, Some(coll))?
    };
    let Target::Mapped { db: real_db, coll: Some(real_coll), .. } = target else {
        return Err(Denial::unauthorized(format!("{name} may only write into the tenant's own collections")));
    };
    if db.is_none() && real_coll == coll && real_db == scope.real_db() {
        return Ok(StageOut::Same);
    }
    let mut ns = RawDocumentBuf::new();
    ns.append(cstr!("db"), real_db.as_str());
    ns.append(cstr!("coll"), real_coll.as_str());
    let rebuilt = match (name, spec) {
        ("$merge", Some(d)) => stage(cstr!("$merge"), replace_fields(d, &[("into", Some(RawBson::Document(ns)))])),
        ("$merge", None) => {
            let mut merge = RawDocumentBuf::new();
            merge.append(cstr!("into"), ns);
            stage(cstr!("$merge"), merge)
        }
        (_, Some(d)) => stage(
            cstr!("$out"),
            replace_fields(
                d,
                &[("db", Some(RawBson::String(real_db.clone()))), ("coll", Some(RawBson::String(real_coll.clone())))],
            ),
        ),
        (_, None) => stage(cstr!("$out"), ns),
    };
    Ok(StageOut::Replace(vec![rebuilt]))
}

/// `$merge` from a field-mode pipeline: only into a field-mode collection of the same database, matching on
/// the tenant field, with every output document re-stamped with the tenant value.
fn merge(scope: &mut Scope<'_>, value: RawBsonRef<'_>) -> Result<StageOut> {
    let (coll, spec) = match value {
        RawBsonRef::String(coll) => (coll, None),
        RawBsonRef::Document(d) => {
            arguments::only(d, MERGE_FIELDS, "$merge")?;
            match d.get("into") {
                Ok(Some(RawBsonRef::String(coll))) => (coll, Some(d)),
                Ok(Some(RawBsonRef::Document(into))) => {
                    arguments::only(into, &["db", "coll"], "$merge.into")?;
                    let db = into.get_str("db").unwrap_or(scope.db);
                    if db != scope.db || RESERVED_DATABASES.contains(&db) {
                        return Err(Denial::unauthorized("$merge into another database is not allowed"));
                    }
                    (into.get_str("coll").map_err(|_| malformed("$merge.into needs coll"))?, Some(d))
                }
                _ => return Err(malformed("$merge needs into")),
            }
        }
        _ => return Err(malformed("$merge needs into")),
    };
    let Target::Field(rule) = scope.resolve(coll)? else {
        return Err(Denial::unauthorized(
            "$merge from a shared collection is only allowed into a field-mode collection",
        ));
    };
    if let Some(holder) = scope.inherited_collation.clone() {
        check_collation(scope, rule, &holder, "the aggregate, whose collation $merge matches with,")?;
    }
    let on_tenant = match spec.map(|d| d.get("on")) {
        Some(Ok(Some(RawBsonRef::String(on)))) => on == rule.field.as_str(),
        Some(Ok(Some(RawBsonRef::Array(on)))) => {
            on.into_iter().any(|f| matches!(f, Ok(RawBsonRef::String(f)) if f == rule.field.as_str()))
        }
        _ => false,
    };
    if !on_tenant {
        scope
            .violation(rule, format!("$merge must match on {} (e.g. on: [\"_id\", \"{}\"])", rule.field, rule.field))?;
    }
    // whenMatched as a pipeline runs on the tenant's matched document and could set the tenant field to any
    // value: it gets the update-pipeline checks and ends with the stamp, whatever the target's style.
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let Some(d) = spec {
        match d.get("whenMatched") {
            Ok(None) => {}
            Ok(Some(RawBsonRef::String("replace" | "keepExisting" | "merge" | "fail"))) => {}
            Ok(Some(RawBsonRef::Array(stages))) => {
                let stamped = stamped_pipeline(rule, stages, scope.value, "$merge.whenMatched")?;
                edits.push(("whenMatched", Some(RawBson::Array(stamped))));
            }
            _ => return Err(malformed("$merge.whenMatched must be replace, keepExisting, merge, fail or a pipeline")),
        }
        match d.get("whenNotMatched") {
            Ok(None | Some(RawBsonRef::String("insert" | "discard" | "fail"))) => {}
            _ => return Err(malformed("$merge.whenNotMatched must be insert, discard or fail")),
        }
        match d.get("let") {
            Ok(None | Some(RawBsonRef::Document(_))) => {}
            _ => return Err(malformed("$merge.let must be a document")),
        }
    }
    if rule.style == Style::Audit {
        scope.audit.push(format!("{}: would stamp $merge output with {}", rule.describe(), rule.field));
        return Ok(StageOut::Same);
    }
    // Every document merged into a field-mode collection carries the tenant value, in enforce and verify
    // style alike: the proxy wrote the pipeline's output, so there is nothing for the client to have pinned.
    let merged = match (value, edits.is_empty()) {
        (RawBsonRef::String(s), _) => stage(cstr!("$merge"), s),
        (RawBsonRef::Document(d), true) => stage(cstr!("$merge"), d),
        (RawBsonRef::Document(d), false) => stage(cstr!("$merge"), replace_fields(d, &edits)),
        _ => return Err(malformed("$merge needs into")),
    };
    Ok(StageOut::Replace(vec![stamp_stage(rule.field, scope.value), merged]))
}
