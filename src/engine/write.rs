//! `insert`, `update`, `delete` and `findAndModify` on field-mode collections: filters scoped, inserts and
//! replacements stamped, anything that could change or remove the tenant value refused.

use bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use bytes::{Bytes, BytesMut};
use tenantwall_protocol::validate::all_keys;
use tenantwall_protocol::{OpMsg, Sequence};

use super::filter::{check_collation, scope_filter, stamp_stage};
use super::raw::{append_field, logical_array, only_sequence, rename_collection, replace_fields, with_logical_array};
use super::read::{command_collection, optional_document};
use super::{Denial, ReplyPlan, Result, Scope, Target};
use crate::command::Command;
use crate::config::Style;
use crate::error::ErrorCode;
use crate::policy::FieldRule;

/// Update operators understood; any other is refused.
const UPDATE_OPERATORS: &[&str] = &[
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$rename",
    "$min",
    "$max",
    "$currentDate",
    "$push",
    "$pull",
    "$pullAll",
    "$addToSet",
    "$pop",
    "$bit",
    "$setOnInsert",
];

/// Stages allowed in pipeline-style updates.
const UPDATE_PIPELINE_STAGES: &[&str] = &["$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith"];

fn malformed(what: impl Into<String>) -> Denial {
    Denial::new(ErrorCode::FAILED_TO_PARSE, what)
}

pub fn rewrite(msg: &OpMsg, command: Command, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let body = msg.body();
    let coll = command_collection(body)?;
    let rule = match scope.resolve(coll)? {
        Target::Field(rule) => rule,
        target @ Target::Mapped { .. } => {
            return Ok((rename_collection(msg, coll, target.real_coll(coll)), ReplyPlan::default()))
        }
        Target::Shared(rule) => {
            return Err(Denial::unauthorized(format!(
                "{}.{coll} is read-only reference data ({}): {} is refused",
                scope.db,
                rule.describe(),
                super::first_key(body)
            )))
        }
    };
    let forward = match command {
        Command::Insert => insert(msg, scope, rule)?,
        Command::Update => each_statement(msg, scope, rule, "updates", |scope, rule, stmt, place| {
            update_statement(scope, rule, stmt, place, "q", "u")
        })?,
        Command::Delete => each_statement(msg, scope, rule, "deletes", |scope, rule, stmt, place| {
            check_collation(scope, rule, stmt, place)?;
            let q = optional_document(stmt, "q")?;
            Ok(scope_filter(scope, rule, q, &format!("{place}.q"))?
                .map(|scoped| replace_fields(stmt, &[("q", Some(RawBson::Document(scoped)))])))
        })?,
        Command::FindAndModify => find_and_modify(msg, scope, rule)?,
        _ => return Err(Denial::unauthorized("not a write command")),
    };
    Ok((forward, ReplyPlan::default()))
}

/// Checks the top-level keys of a document being written: no duplicates, no `$` keys, nothing dotted under the
/// tenant field.
fn check_keys(scope: &mut Scope<'_>, rule: FieldRule<'_>, doc: &RawDocument, place: &dyn Fn() -> String) -> Result<()> {
    if let Some(key) = tenantwall_protocol::validate::first_duplicate_key(doc) {
        return Err(Denial::new(ErrorCode::BAD_VALUE, format!("{} has duplicate field {key:?}", place())));
    }
    for element in doc.iter_elements().filter_map(|e| e.ok()) {
        let key = element.key().as_str();
        if key.starts_with('$') || touches_below(key, rule.field) {
            scope.violation(
                rule,
                format!("{} has field {key:?}, which is not allowed in shared collections", place()),
            )?;
        }
    }
    Ok(())
}

/// Whether `key` is a dotted path strictly below `field` (`tenantId.x`).
fn touches_below(key: &str, field: &str) -> bool {
    key.strip_prefix(field).is_some_and(|rest| rest.starts_with('.'))
}

/// A document to be stored (insert or replacement): carries exactly the tenant value, or is stamped with it.
/// Returns the stamped document when one was made.
pub fn stamp(
    scope: &mut Scope<'_>,
    rule: FieldRule<'_>,
    doc: &RawDocument,
    place: &dyn Fn() -> String,
) -> Result<Option<RawDocumentBuf>> {
    check_keys(scope, rule, doc, place)?;
    let value = scope.value.clone();
    match doc.get(rule.field) {
        Ok(Some(given)) if scope.tenant.value.is_exact(given) => Ok(None),
        // The same value in another numeric type (the Node.js driver sends large integers as doubles): the
        // document is stored with the canonical one, so every tenant's rows have one type.
        Ok(Some(given)) if scope.tenant.value.matches(given) => match rule.style {
            Style::Enforce => Ok(Some(replace_fields(doc, &[(rule.field.as_str(), Some(value))]))),
            Style::Verify | Style::Audit => Ok(None),
        },
        Ok(Some(_)) => {
            scope.violation(rule, format!("{} sets {} to a value that is not the tenant's", place(), rule.field))?;
            Ok(None)
        }
        Ok(None) => match rule.style {
            Style::Enforce => Ok(Some(append_field(doc, rule.field, value.as_raw_bson_ref())?)),
            Style::Verify => {
                scope.violation(rule, format!("{} does not carry {} (verify style)", place(), rule.field))?;
                Ok(None)
            }
            Style::Audit => {
                scope.audit.push(format!("{}: would stamp {} with {}", rule.describe(), place(), rule.field));
                Ok(None)
            }
        },
        Err(e) => Err(malformed(e.to_string())),
    }
}

fn insert(msg: &OpMsg, scope: &mut Scope<'_>, rule: FieldRule<'_>) -> Result<Option<OpMsg>> {
    if let (Style::Enforce, Some(seq)) = (rule.style, only_sequence(msg, "documents")?) {
        // Validation proved that no inserted document repeats a key, which is what the per-document check
        // would look for first; otherwise the general path below finds and names the repeat.
        if !seq.findings().duplicate_keys() {
            return stamp_sequence(msg, seq, scope, rule).map(Some);
        }
    }
    let docs = logical_array(msg, "documents")?;
    let originals: Vec<Bytes> = match msg.sequence("documents") {
        Some(seq) => seq.shared_documents().collect(),
        None => docs.iter().map(|d| Bytes::copy_from_slice(d.as_bytes())).collect(),
    };
    let mut out = Vec::with_capacity(docs.len());
    let mut changed = false;
    for (i, (doc, original)) in docs.iter().zip(originals).enumerate() {
        match stamp(scope, rule, doc, &|| format!("documents[{i}]"))? {
            Some(stamped) => {
                changed = true;
                out.push(Bytes::from(stamped.into_bytes()));
            }
            None => out.push(original),
        }
    }
    if !changed {
        return Ok(None);
    }
    Ok(Some(with_logical_array(msg, "documents", out, &[])?))
}

/// Enforce-style stamping of a `documents` sequence as bytes: a document that does not carry the tenant field
/// (and has no key the checks refuse) is copied as it came with the tenant field appended and its length
/// rewritten, all into one buffer; any other document goes through [`stamp`], which checks and refuses or
/// restamps it exactly as for a body array. The sequence's documents passed validation and carry no repeated
/// key (the caller checked the findings), so reading their keys as bytes is reading them as the server does.
fn stamp_sequence(msg: &OpMsg, seq: &Sequence, scope: &mut Scope<'_>, rule: FieldRule<'_>) -> Result<OpMsg> {
    let field = rule.field.as_str().as_bytes();
    // The tenant field as a whole element, serialised once: type byte, name, NUL, value.
    let mut one = RawDocumentBuf::new();
    one.append(rule.field.as_cstr(), scope.value.clone());
    // Followed by a document's final NUL: what every plain document ends with once stamped.
    let tail = one.as_bytes().get(4..).unwrap_or_default();
    let originals = seq.document_bytes();
    // Validation hashed every document's top-level keys: when none can be the tenant field, start with `$` or
    // hold a dot, every document is plain without reading its keys again.
    let all_plain = seq.findings().top_level_plain_without(field);
    // Each document loses its final NUL and gains the tail (which ends with one).
    let total = seq.documents_len().saturating_add(seq.len().saturating_mul(tail.len().saturating_sub(1)));
    // The tail is written as a fixed-size block and the buffer cut back to its true length: one store of a
    // constant size instead of a call to copy a few bytes, per document. The block's spare bytes past the last
    // document need room too.
    let mut block = [0u8; PADDED_TAIL];
    let padded = match block.get_mut(..tail.len()) {
        Some(head) => {
            head.copy_from_slice(tail);
            Some(block)
        }
        None => None,
    };
    let mut out = BytesMut::with_capacity(total + PADDED_TAIL);
    // Where each document ends in `out`: the sequence is made of the buffer and these once it is complete.
    let mut ends = Vec::with_capacity(originals.len());
    for (i, original) in originals.enumerate() {
        // Plain: no `$` key, and neither the tenant field nor a path below it (`tenantIdx` is another field).
        let plain = all_plain
            || all_keys(original, |key| {
                let tenant = key.strip_prefix(field).is_some_and(|rest| matches!(rest.first(), None | Some(b'.')));
                key.first() != Some(&b'$') && !tenant
            }) == Some(true);
        let stamped_len = original.len().saturating_sub(1) + tail.len();
        match (plain, i32::try_from(stamped_len)) {
            (true, Ok(len)) => {
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(original.get(4..original.len() - 1).unwrap_or_default());
                match padded {
                    Some(block) => {
                        let end = out.len() + tail.len();
                        out.extend_from_slice(&block);
                        out.truncate(end);
                    }
                    None => out.extend_from_slice(tail),
                }
            }
            _ => match stamp(scope, rule, raw_document(original)?, &|| format!("documents[{i}]"))? {
                Some(stamped) => out.extend_from_slice(stamped.as_bytes()),
                None => out.extend_from_slice(original),
            },
        }
        ends.push(out.len());
    }
    let invalid = |e: tenantwall_protocol::ProtocolError| malformed(e.to_string());
    let mut stamped = Some((out.freeze(), ends));
    let sequences = msg
        .sequences()
        .iter()
        .map(|s| match (s.identifier() == "documents", stamped.take()) {
            (true, Some((data, ends))) => Sequence::from_concatenated("documents", data, ends).map_err(invalid),
            // Refused before stamping (`only_sequence`); never forwarded unstamped here either.
            (true, None) => Err(malformed("more than one documents sequence".to_owned())),
            (false, unused) => {
                stamped = unused;
                Ok(s.clone())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(OpMsg::with_sequences(msg.flags, msg.body().to_owned(), sequences))
}

/// The most bytes of a stamped document's tail (the tenant element and the final NUL) written as one fixed-size
/// block ([`stamp_sequence`]); longer tails are copied as they are.
const PADDED_TAIL: usize = 64;

fn raw_document(bytes: &[u8]) -> Result<&RawDocument> {
    RawDocument::from_bytes(bytes).map_err(|e| malformed(e.to_string()))
}

/// Applies `edit` to every statement of an `updates`/`deletes` array.
fn each_statement(
    msg: &OpMsg,
    scope: &mut Scope<'_>,
    rule: FieldRule<'_>,
    field: &str,
    mut edit: impl FnMut(&mut Scope<'_>, FieldRule<'_>, &RawDocument, &str) -> Result<Option<RawDocumentBuf>>,
) -> Result<Option<OpMsg>> {
    let statements = logical_array(msg, field)?;
    let mut out = Vec::with_capacity(statements.len());
    let mut changed = false;
    for (i, stmt) in statements.iter().enumerate() {
        match edit(scope, rule, stmt, &format!("{field}[{i}]"))? {
            Some(new) => {
                changed = true;
                out.push(Bytes::from(new.into_bytes()));
            }
            None => out.push(Bytes::copy_from_slice(stmt.as_bytes())),
        }
    }
    if !changed {
        return Ok(None);
    }
    Ok(Some(with_logical_array(msg, field, out, &[])?))
}

/// One update statement (`updates[i]`, a bulkWrite update op, or findAndModify): scope its filter field
/// `filter_key` and check its modification field `update_key`.
pub fn update_statement(
    scope: &mut Scope<'_>,
    rule: FieldRule<'_>,
    stmt: &RawDocument,
    place: &str,
    filter_key: &str,
    update_key: &str,
) -> Result<Option<RawDocumentBuf>> {
    check_collation(scope, rule, stmt, place)?;
    let upsert = super::strict_bool(stmt, "upsert", place)?;
    let q = optional_document(stmt, filter_key)?;
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    if let Some(scoped) = scope_filter(scope, rule, q, &format!("{place}.{filter_key}"))? {
        edits.push((filter_key, Some(RawBson::Document(scoped))));
    }
    let u = stmt
        .get(update_key)
        .map_err(|e| malformed(e.to_string()))?
        .ok_or_else(|| malformed(format!("{place} needs {update_key}")))?;
    if let Some(new_u) = check_update(scope, rule, u, &format!("{place}.{update_key}"), upsert)? {
        edits.push((update_key, Some(new_u)));
    }
    Ok((!edits.is_empty()).then(|| replace_fields(stmt, &edits)))
}

/// Whether an update path reaches the tenant field.
fn touches(path: &str, field: &str) -> bool {
    path == field || touches_below(path, field)
}

/// Checks an update's modification (operators, replacement, or pipeline). Returns a replacement value when
/// it must change (stamping).
pub fn check_update(
    scope: &mut Scope<'_>,
    rule: FieldRule<'_>,
    u: RawBsonRef<'_>,
    place: &str,
    upsert: bool,
) -> Result<Option<RawBson>> {
    match u {
        RawBsonRef::Document(doc) => {
            let first = super::first_key(doc);
            if !first.starts_with('$') {
                return Ok(stamp(scope, rule, doc, &|| place.to_owned())?.map(RawBson::Document));
            }
            let mut set_on_insert: Option<&RawDocument> = None;
            for element in doc.iter_elements() {
                let element = element.map_err(|e| malformed(e.to_string()))?;
                let op = element.key().as_str();
                if !UPDATE_OPERATORS.contains(&op) {
                    return Err(Denial::unauthorized(format!("{place}: update operator {op} is not allowed")));
                }
                let RawBsonRef::Document(paths) = element.value().map_err(|e| malformed(e.to_string()))? else {
                    return Err(malformed(format!("{place}.{op} must be a document")));
                };
                for path in paths.iter_elements().filter_map(|e| e.ok()) {
                    let key = path.key().as_str();
                    let renamed_to = match (op, path.value()) {
                        ("$rename", Ok(RawBsonRef::String(to))) => Some(to),
                        _ => None,
                    };
                    if touches(key, rule.field) || renamed_to.is_some_and(|to| touches(to, rule.field)) {
                        scope.violation(rule, format!("{place}: {op} may not change {}", rule.field))?;
                    }
                }
                if op == "$setOnInsert" {
                    set_on_insert = Some(paths);
                }
            }
            if !(upsert && rule.style == Style::Enforce) {
                return Ok(None);
            }
            // An upsert inserts the equality fields of its (scoped) filter; stamping on insert as well makes the
            // new document carry the tenant value whatever the filter's shape.
            let mut on_insert = set_on_insert.map(|d| d.to_owned()).unwrap_or_default();
            on_insert.append(rule.field.as_cstr(), scope.value.clone());
            let new = replace_fields(doc, &[("$setOnInsert", Some(RawBson::Document(on_insert)))]);
            Ok(Some(RawBson::Document(new)))
        }
        RawBsonRef::Array(stages) => match rule.style {
            Style::Enforce => Ok(Some(RawBson::Array(stamped_pipeline(rule, stages, scope.value, place)?))),
            _ => {
                stamped_pipeline(rule, stages, scope.value, place)?;
                scope.violation(rule, format!("{place}: pipeline updates can only be enforced, not verified"))?;
                Ok(None)
            }
        },
        _ => Err(malformed(format!("{place} must be a document or a pipeline"))),
    }
}

/// An update pipeline (an update's `u`, or `$merge.whenMatched`) with only the stages an update may use, and
/// the tenant stamp appended: whatever the stages do to the tenant field, the last one puts the value back.
pub fn stamped_pipeline(
    rule: FieldRule<'_>,
    stages: &bson::RawArray,
    value: &RawBson,
    place: &str,
) -> Result<RawArrayBuf> {
    let mut out = update_pipeline(stages, place)?;
    out.push(stamp_stage(rule.field, value));
    Ok(out)
}

/// An update pipeline's stages, each one an update may use.
pub fn update_pipeline(stages: &bson::RawArray, place: &str) -> Result<RawArrayBuf> {
    let mut out = RawArrayBuf::new();
    for stage in stages.into_iter() {
        let Ok(RawBsonRef::Document(stage)) = stage else {
            return Err(malformed(format!("{place} stages must be documents")));
        };
        let name = super::first_key(stage);
        if !UPDATE_PIPELINE_STAGES.contains(&name) {
            return Err(Denial::unauthorized(format!("{place}: stage {name} is not allowed in an update pipeline")));
        }
        out.push(stage);
    }
    Ok(out)
}

fn find_and_modify(msg: &OpMsg, scope: &mut Scope<'_>, rule: FieldRule<'_>) -> Result<Option<OpMsg>> {
    let body = msg.body();
    check_collation(scope, rule, body, "findAndModify")?;
    let mut edits: Vec<(&str, Option<RawBson>)> = Vec::new();
    let query = optional_document(body, "query")?;
    if let Some(scoped) = scope_filter(scope, rule, query, "query")? {
        edits.push(("query", Some(RawBson::Document(scoped))));
    }
    if let Ok(Some(update)) = body.get("update") {
        // findAndModify reads upsert as safeBool: `upsert: 1` inserts.
        let upsert = super::truthy(body, "upsert", "findAndModify")?;
        if let Some(new) = check_update(scope, rule, update, "update", upsert)? {
            edits.push(("update", Some(new)));
        }
    }
    if edits.is_empty() {
        return Ok(None);
    }
    Ok(Some(OpMsg::with_sequences(msg.flags, replace_fields(body, &edits), msg.sequences().to_vec())))
}
