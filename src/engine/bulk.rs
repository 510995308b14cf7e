//! `bulkWrite` (MongoDB 8, on `admin`): every `nsInfo` namespace resolved, every op scoped by the rule of the
//! namespace it refers to; one namespace out of scope refuses the whole batch.

use bson::{RawBson, RawBsonRef};
use bytes::Bytes;
use tenantwall_protocol::OpMsg;

use super::filter::{check_collation, scope_filter};
use super::raw::{logical_array, replace_fields, with_logical_array};
use super::read::optional_document;
use super::write::{stamp, update_statement};
use super::{first_key, resolve, Denial, ReplyPlan, Result, Scope, Target};
use crate::error::ErrorCode;

fn malformed(what: impl Into<String>) -> Denial {
    Denial::new(ErrorCode::FAILED_TO_PARSE, what)
}

pub fn rewrite(msg: &OpMsg, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    if scope.db != "admin" {
        return Err(Denial::new(ErrorCode::INVALID_NAMESPACE, "bulkWrite runs on admin"));
    }
    let (targets, ns_info, renamed) = resolve_namespaces(msg, scope)?;
    let ops = logical_array(msg, "ops")?;
    let mut out = Vec::with_capacity(ops.len());
    let mut changed = false;
    for (i, op) in ops.iter().enumerate() {
        let kind = first_key(op);
        let place = format!("ops[{i}]");
        let index = match op.get(kind) {
            Ok(Some(RawBsonRef::Int32(n))) => usize::try_from(n).ok(),
            Ok(Some(RawBsonRef::Int64(n))) => usize::try_from(n).ok(),
            _ => None,
        };
        let target = index
            .and_then(|n| targets.get(n))
            .ok_or_else(|| malformed(format!("{place} refers to no nsInfo entry")))?;
        let rule = match target {
            Target::Mapped { .. } => {
                out.push(Bytes::copy_from_slice(op.as_bytes()));
                continue;
            }
            Target::Shared(rule) => {
                return Err(Denial::unauthorized(format!(
                    "{place} writes to read-only reference data ({})",
                    rule.describe()
                )))
            }
            Target::Field(rule) => *rule,
        };
        let edited = match kind {
            "insert" => {
                let doc =
                    optional_document(*op, "document")?.ok_or_else(|| malformed(format!("{place} needs document")))?;
                stamp(scope, rule, doc, &|| format!("{place}.document"))?
                    .map(|stamped| replace_fields(op, &[("document", Some(RawBson::Document(stamped)))]))
            }
            "update" => update_statement(scope, rule, op, &place, "filter", "updateMods")?,
            "delete" => {
                check_collation(scope, rule, *op, &place)?;
                let filter = optional_document(*op, "filter")?;
                scope_filter(scope, rule, filter, &format!("{place}.filter"))?
                    .map(|scoped| replace_fields(op, &[("filter", Some(RawBson::Document(scoped)))]))
            }
            other => return Err(Denial::unauthorized(format!("{place}: bulkWrite operation {other} is not allowed"))),
        };
        match edited {
            Some(new) => {
                changed = true;
                out.push(Bytes::from(new.into_bytes()));
            }
            None => out.push(Bytes::copy_from_slice(op.as_bytes())),
        }
    }
    // bulkWrite reports each operation as a cursor item: errors among them are withheld like writeErrors.
    if let Some(withhold) = scope.shared.as_mut() {
        withhold.results_in_cursor = true;
    }
    let plan = ReplyPlan { record_cursor: true, ..ReplyPlan::default() };
    let mut forward = changed.then(|| with_logical_array(msg, "ops", out, &[])).transpose()?;
    if renamed {
        let base = forward.as_ref().unwrap_or(msg);
        forward = Some(with_logical_array(base, "nsInfo", ns_info, &[])?);
    }
    Ok((forward, plan))
}

/// Every `nsInfo` namespace resolved for the tenant (one out of scope refuses the batch), with the entries to
/// forward (renamed where the rule renames) and whether any was renamed.
fn resolve_namespaces<'p>(msg: &OpMsg, scope: &mut Scope<'p>) -> Result<(Vec<Target<'p>>, Vec<Bytes>, bool)> {
    let policy = scope.policy;
    let mut targets = Vec::new();
    let mut ns_info = Vec::new();
    let mut renamed = false;
    for (i, info) in logical_array(msg, "nsInfo")?.iter().enumerate() {
        let ns = info.get_str("ns").map_err(|_| malformed(format!("nsInfo[{i}] needs ns")))?;
        let (db, coll) = ns
            .split_once('.')
            .ok_or_else(|| Denial::new(ErrorCode::INVALID_NAMESPACE, format!("nsInfo[{i}].ns is not db.collection")))?;
        let target = resolve(policy, &scope.tenant.id, db, Some(coll))?;
        let mut entry = Bytes::copy_from_slice(info.as_bytes());
        match &target {
            Target::Field(_) => scope.note_shared(&target),
            Target::Mapped { db: real_db, coll: Some(real_coll), .. }
                if (real_db.as_str(), real_coll.as_str()) != (db, coll) =>
            {
                renamed = true;
                let real_ns = RawBson::String(format!("{real_db}.{real_coll}"));
                entry = Bytes::from(replace_fields(info, &[("ns", Some(real_ns))]).into_bytes());
                scope.names_mut().colls.push((real_coll.clone(), coll.to_owned()));
            }
            _ => {}
        }
        ns_info.push(entry);
        targets.push(target);
    }
    Ok((targets, ns_info, renamed))
}
