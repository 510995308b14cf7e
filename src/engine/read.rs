//! `find`, `count` and `distinct`: one filter each, scoped for field-mode collections.

use bson::{RawBson, RawBsonRef, RawDocument};
use tenantwall_protocol::fields::Fields;
use tenantwall_protocol::OpMsg;

use super::filter::{check_collation, scope_filter, wrap_into, wrapped_len};
use super::raw::{rename_collection, replace_fields};
use super::{first_key, Denial, ReplyPlan, Result, Scope, Target};
use crate::command::Command;
use crate::config::Style;
use crate::error::ErrorCode;

/// The collection a command names in its first field.
pub fn command_collection<'a>(body: impl Into<Fields<'a>>) -> Result<&'a str> {
    let fields = body.into();
    let first = match fields.first().and_then(super::raw::view) {
        // Viewed directly; any value it cannot view is read through bson.
        Some(value) => Some(Ok(value)),
        None => fields.doc().iter_elements().next().and_then(|e| e.ok()).map(|e| e.value()),
    };
    match first {
        Some(Ok(RawBsonRef::String(c))) if !c.is_empty() => Ok(c),
        _ => Err(Denial::new(
            ErrorCode::INVALID_NAMESPACE,
            format!("{} needs a collection name", first_key(fields.doc())),
        )),
    }
}

/// An optional document field.
pub fn optional_document<'a>(body: impl Into<Fields<'a>>, field: &str) -> Result<Option<&'a RawDocument>> {
    match super::raw::get(body, field) {
        Ok(None) => Ok(None),
        Ok(Some(RawBsonRef::Document(d))) => Ok(Some(d)),
        _ => Err(Denial::new(ErrorCode::FAILED_TO_PARSE, format!("{field} must be a document"))),
    }
}

pub fn rewrite(msg: &OpMsg, command: Command, scope: &mut Scope<'_>) -> Result<(Option<OpMsg>, ReplyPlan)> {
    let body = msg.body_fields();
    let coll = command_collection(body)?;
    let filter_field = if command == Command::Find { "filter" } else { "query" };
    let reply = ReplyPlan { record_cursor: command == Command::Find, ..ReplyPlan::default() };
    let rule = match scope.resolve(coll)? {
        Target::Field(rule) => rule,
        Target::Shared(_) => return Ok((None, reply)),
        target @ Target::Mapped { .. } => return Ok((rename_collection(msg, coll, target.real_coll(coll)), reply)),
    };
    check_collation(scope, rule, body, "the command")?;
    let filter = optional_document(body, filter_field)?;
    if rule.style == Style::Enforce {
        // The wrapped filter written straight into the forwarded body; what scope_filter would return.
        let value = scope.value;
        let extra = wrapped_len(filter, rule.field, value).unwrap_or(0);
        if let Some(scoped) =
            msg.with_body_field(filter_field, 0x03, extra, |out| wrap_into(out, filter, rule.field, value))
        {
            return Ok((Some(scoped), reply));
        }
    }
    match scope_filter(scope, rule, filter, filter_field)? {
        Some(scoped) => {
            let body = replace_fields(body.doc(), &[(filter_field, Some(RawBson::Document(scoped)))]);
            Ok((Some(OpMsg::with_sequences(msg.flags, body, msg.sequences().to_vec())), reply))
        }
        None => Ok((None, reply)),
    }
}
