//! `aggregate`: every stage checked against an allowlist, the tenant `$match` first in every pipeline that reads a
//! field-mode collection — the command's own, and every `$lookup`, `$graphLookup` and `$unionWith` at any depth,
//! including inside `$facet` — and writes (`$out`, `$merge`) only into namespaces the tenant may write.

use bson::{cstr, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use tenantwall_protocol::OpMsg;

use super::filter::{check_collation, pins, scope_filter, tenant_condition};
use super::raw::{array_documents, replace_fields};
use super::read::optional_document;
use super::{Denial, ReplyPlan, Result, Scope, Target};
use crate::config::validate::RESERVED_DATABASES;
use crate::config::Style;
use crate::error::ErrorCode;
use crate::policy::Rule;

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

/// MongoDB allows 20 levels of sub-pipelines.
const MAX_DEPTH: usize = 20;

fn malformed(what: impl Into<String>) -> Denial {
    Denial::new(ErrorCode::FAILED_TO_PARSE, what)
}

/// How the stream entering a pipeline must be scoped.
#[derive(Clone, Copy)]
enum Source<'p> {
    /// Reads a field-mode collection: the tenant condition goes first.
    Field(&'p Rule),
    /// Already scoped (a `$facet` branch) or needs no scoping (shared, dedicated).
    Scoped,
}

/// Whether the pipeline's namespace may be written by `$merge`/`$out` at all.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Field,
    Shared,
}

pub fn rewrite_aggregate(msg: &OpMsg, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let body = msg.body();
    let reply = ReplyPlan { record_cursor: true, ..ReplyPlan::default() };
    let pipeline = match body.get("pipeline") {
        Ok(Some(value)) => array_documents(value, "pipeline")?,
        _ => return Err(malformed("aggregate needs a pipeline")),
    };
    let (source, context) = match body.get("aggregate") {
        Ok(Some(RawBsonRef::String(coll))) => match scope.resolve(coll)? {
            Target::Field(rule) => {
                check_collation(scope, rule, body, "the aggregate")?;
                (Source::Field(rule), Context::Field)
            }
            Target::Shared(_) => (Source::Scoped, Context::Shared),
            Target::Dedicated(_) => {
                dedicated_pipeline(scope, &pipeline, 0)?;
                return Ok((None, reply));
            }
        },
        Ok(Some(RawBsonRef::Int32(1) | RawBsonRef::Int64(1) | RawBsonRef::Double(1.0))) => {
            match super::resolve(scope.policy, scope.db, None)? {
                Target::Dedicated(_) => {
                    dedicated_pipeline(scope, &pipeline, 0)?;
                    return Ok((None, reply));
                }
                _ => {
                    return Err(Denial::unauthorized(
                        "collection-less aggregation is only allowed on a tenant's own backend",
                    ))
                }
            }
        }
        _ => return Err(malformed("aggregate needs a collection name or 1")),
    };
    match rewrite_pipeline(scope, &pipeline, source, context, 0)? {
        Some(rewritten) => {
            let body = replace_fields(body, &[("pipeline", Some(RawBson::Array(rewritten)))]);
            Ok((Some(OpMsg::with_sequences(msg.flags, body, msg.sequences().to_vec())), reply))
        }
        None => Ok((None, reply)),
    }
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
                let pinned = matches!(first, Some(("$match", RawBsonRef::Document(m))) if pins(m, &rule.field, value.as_raw_bson_ref()));
                match rule.style {
                    Style::Enforce => {
                        out.push(stage(cstr!("$match"), tenant_condition(&rule.field, &value)));
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
        let replacement = rewrite_stage(scope, name, value, context, depth, i == rest.len() - 1)?;
        match replacement {
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

fn rewrite_stage(
    scope: &mut Scope<'_>,
    name: &str,
    value: RawBsonRef<'_>,
    context: Context,
    depth: usize,
    last: bool,
) -> Result<StageOut> {
    if STREAM_STAGES.contains(&name) {
        if name == "$match" {
            if let RawBsonRef::Document(m) = value {
                if m.get("$text").ok().flatten().is_some() {
                    return Err(Denial::unauthorized("$text is only allowed in the first stage"));
                }
            }
        }
        return Ok(StageOut::Same);
    }
    match (name, value) {
        ("$facet", RawBsonRef::Document(facets)) => {
            let mut rebuilt = RawDocumentBuf::new();
            let mut changed = false;
            for element in facets.iter_elements() {
                let element = element.map_err(|e| malformed(e.to_string()))?;
                let branch = array_documents(element.value().map_err(|e| malformed(e.to_string()))?, "$facet branch")?;
                match rewrite_pipeline(scope, &branch, Source::Scoped, context, depth + 1)? {
                    Some(new) => {
                        changed = true;
                        rebuilt.append(element.key(), new);
                    }
                    None => rebuilt.append(element.key(), element.value().map_err(|e| malformed(e.to_string()))?),
                }
            }
            Ok(if changed { StageOut::Replace(vec![stage(cstr!("$facet"), rebuilt)]) } else { StageOut::Same })
        }
        ("$lookup", RawBsonRef::Document(lookup)) => {
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
            let source = match scope.resolve(from)? {
                Target::Field(rule) => Source::Field(rule),
                Target::Shared(_) | Target::Dedicated(_) => Source::Scoped,
            };
            // A join reads; the sub-pipeline's own writes are refused by the stage rules below.
            match rewrite_pipeline(scope, &sub, source, Context::Shared, depth + 1)? {
                Some(new) => {
                    let lookup = replace_fields(lookup, &[("pipeline", Some(RawBson::Array(new)))]);
                    Ok(StageOut::Replace(vec![stage(cstr!("$lookup"), lookup)]))
                }
                None => Ok(StageOut::Same),
            }
        }
        ("$graphLookup", RawBsonRef::Document(graph)) => {
            let from = graph.get_str("from").map_err(|_| malformed("$graphLookup needs from"))?;
            match scope.resolve(from)? {
                Target::Field(rule) => {
                    let restrict = optional_document(graph, "restrictSearchWithMatch")?;
                    match scope_filter(scope, rule, restrict, "$graphLookup.restrictSearchWithMatch")? {
                        Some(scoped) => {
                            let graph =
                                replace_fields(graph, &[("restrictSearchWithMatch", Some(RawBson::Document(scoped)))]);
                            Ok(StageOut::Replace(vec![stage(cstr!("$graphLookup"), graph)]))
                        }
                        None => Ok(StageOut::Same),
                    }
                }
                _ => Ok(StageOut::Same),
            }
        }
        ("$unionWith", value) => {
            let (coll, sub) = match value {
                RawBsonRef::String(coll) => (coll, Vec::new()),
                RawBsonRef::Document(d) => {
                    let coll = d.get_str("coll").map_err(|_| Denial::unauthorized("$unionWith needs a collection"))?;
                    let sub = match d.get("pipeline") {
                        Ok(Some(v)) => array_documents(v, "$unionWith.pipeline")?,
                        _ => Vec::new(),
                    };
                    (coll, sub)
                }
                _ => return Err(malformed("$unionWith needs a collection")),
            };
            let source = match scope.resolve(coll)? {
                Target::Field(rule) => Source::Field(rule),
                _ => Source::Scoped,
            };
            match rewrite_pipeline(scope, &sub, source, Context::Shared, depth + 1)? {
                Some(new) => {
                    let mut union = RawDocumentBuf::new();
                    union.append(cstr!("coll"), coll);
                    union.append(cstr!("pipeline"), new);
                    Ok(StageOut::Replace(vec![stage(cstr!("$unionWith"), union)]))
                }
                None => Ok(StageOut::Same),
            }
        }
        ("$merge", value) if last && context == Context::Field && depth == 0 => merge(scope, value),
        ("$out" | "$merge", _) => Err(Denial::unauthorized(format!(
            "{name} is not allowed here: it could replace or change other tenants' data"
        ))),
        (name, _) => Err(Denial::unauthorized(format!("aggregation stage {name} is not allowed"))),
    }
}

/// `$merge` from a field-mode pipeline: only into a field-mode collection of the same database, matching on
/// the tenant field, with every output document re-stamped with the tenant value.
fn merge(scope: &mut Scope<'_>, value: RawBsonRef<'_>) -> Result<StageOut> {
    let (coll, spec) = match value {
        RawBsonRef::String(coll) => (coll, None),
        RawBsonRef::Document(d) => match d.get("into") {
            Ok(Some(RawBsonRef::String(coll))) => (coll, Some(d)),
            Ok(Some(RawBsonRef::Document(into))) => {
                let db = into.get_str("db").unwrap_or(scope.db);
                if db != scope.db || RESERVED_DATABASES.contains(&db) {
                    return Err(Denial::unauthorized("$merge into another database is not allowed"));
                }
                (into.get_str("coll").map_err(|_| malformed("$merge.into needs coll"))?, Some(d))
            }
            _ => return Err(malformed("$merge needs into")),
        },
        _ => return Err(malformed("$merge needs into")),
    };
    let Target::Field(rule) = scope.resolve(coll)? else {
        return Err(Denial::unauthorized("$merge is only allowed into a field-mode collection"));
    };
    let on_tenant = match spec.map(|d| d.get("on")) {
        Some(Ok(Some(RawBsonRef::String(on)))) => on == rule.field,
        Some(Ok(Some(RawBsonRef::Array(on)))) => {
            on.into_iter().any(|f| matches!(f, Ok(RawBsonRef::String(f)) if f == rule.field))
        }
        _ => false,
    };
    if !on_tenant {
        scope
            .violation(rule, format!("$merge must match on {} (e.g. on: [\"_id\", \"{}\"])", rule.field, rule.field))?;
    }
    if rule.style != Style::Enforce {
        return Ok(StageOut::Same);
    }
    let mut literal = RawDocumentBuf::new();
    literal.append(cstr!("$literal"), scope.value.clone());
    let mut set = RawDocumentBuf::new();
    if let Ok(key) = <&bson::raw::CStr>::try_from(rule.field.as_str()) {
        set.append(key, literal);
    }
    let original = match value {
        RawBsonRef::String(s) => stage(cstr!("$merge"), s),
        RawBsonRef::Document(d) => stage(cstr!("$merge"), d),
        _ => return Err(malformed("$merge needs into")),
    };
    Ok(StageOut::Replace(vec![stage(cstr!("$set"), set), original]))
}

/// Pipelines on a tenant's own backend are forwarded as is, minus diagnostics and writes to databases no rule
/// opens.
fn dedicated_pipeline(scope: &mut Scope<'_>, stages: &[&RawDocument], depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(malformed("sub-pipelines nest too deeply"));
    }
    for raw_stage in stages {
        let (name, value) = stage_parts(raw_stage)?;
        match (name, value) {
            (
                "$currentOp"
                | "$listSessions"
                | "$listLocalSessions"
                | "$planCacheStats"
                | "$queryStats"
                | "$listSampledQueries",
                _,
            ) => return Err(Denial::unauthorized(format!("stage {name} is not allowed"))),
            ("$changeStream", RawBsonRef::Document(d)) if d.get_bool("allChangesForCluster").unwrap_or(false) => {
                return Err(Denial::unauthorized("cluster-wide change streams are not allowed"))
            }
            ("$out", RawBsonRef::Document(d)) => allowed_database(scope, d.get_str("db").ok(), d.get_str("coll").ok())?,
            ("$merge", RawBsonRef::Document(d)) => {
                if let Ok(into) = d.get_document("into") {
                    allowed_database(scope, into.get_str("db").ok(), into.get_str("coll").ok())?;
                }
            }
            ("$lookup", RawBsonRef::Document(d)) => {
                if d.get_document("from").is_ok() {
                    return Err(Denial::unauthorized("$lookup from another database is not allowed"));
                }
                if let Ok(sub) = d.get_array("pipeline") {
                    let sub = array_documents(RawBsonRef::Array(sub), "$lookup.pipeline")?;
                    dedicated_pipeline(scope, &sub, depth + 1)?;
                }
            }
            ("$facet", RawBsonRef::Document(facets)) => {
                for element in facets.iter_elements().filter_map(|e| e.ok()) {
                    let branch =
                        array_documents(element.value().map_err(|e| malformed(e.to_string()))?, "$facet branch")?;
                    dedicated_pipeline(scope, &branch, depth + 1)?;
                }
            }
            ("$unionWith", RawBsonRef::Document(d)) => {
                if let Ok(sub) = d.get_array("pipeline") {
                    let sub = array_documents(RawBsonRef::Array(sub), "$unionWith.pipeline")?;
                    dedicated_pipeline(scope, &sub, depth + 1)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn allowed_database(scope: &Scope<'_>, db: Option<&str>, coll: Option<&str>) -> Result<()> {
    let Some(db) = db.filter(|d| *d != scope.db) else { return Ok(()) };
    match super::resolve(scope.policy, db, coll) {
        Ok(Target::Dedicated(_)) => Ok(()),
        _ => Err(Denial::unauthorized(format!("writing into database {db} is not allowed"))),
    }
}
