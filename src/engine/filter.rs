//! Filters: the tenant condition, wrapping, the verify-style "is it pinned?" check, and collation.
//!
//! A client filter is never trusted or edited: it is wrapped as `{$and: [<client filter>, {<field>: {$eq:
//! <value>}}]}`, so `$or` with an always-true branch, `$expr`, `$nor`, `$ne`, regexes or `$exists` on the tenant
//! field can only narrow the result further.

use bson::{cstr, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use tenantwall_protocol::fields::Fields;
use tenantwall_protocol::validate::first_duplicate_key;

use super::{Result, Scope};
use crate::config::Style;
use crate::policy::{FieldName, FieldRule, TenantValue};

/// `{<field>: {$eq: <value>}}`.
pub fn tenant_condition(field: &FieldName, value: &RawBson) -> RawDocumentBuf {
    condition_bytes(field, value).unwrap_or_else(|| built_condition(field, value))
}

/// [`tenant_condition`] written as bytes into a buffer of the final size, for the value types a tenant value
/// can have; `None` for any other.
fn condition_bytes(field: &FieldName, value: &RawBson) -> Option<RawDocumentBuf> {
    let name = field.as_str().as_bytes();
    let mut out = Vec::with_capacity(condition_len(name, value)?);
    write_condition(&mut out, name, value)?;
    RawDocumentBuf::from_bytes(out).ok()
}

/// The encoded size of `{<name>: {$eq: <value>}}`; `None` for a value type not written as bytes.
fn condition_len(name: &[u8], value: &RawBson) -> Option<usize> {
    Some(4 + 1 + name.len() + 1 + 4 + 1 + 4 + value_len(value)? + 2)
}

/// `{<name>: {$eq: <value>}}` written at the end of `out`, both lengths back-filled; `None` for a value type not
/// written as bytes (`out` then holds a partial document, which the caller discards).
fn write_condition(out: &mut Vec<u8>, name: &[u8], value: &RawBson) -> Option<()> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(0x03);
    out.extend_from_slice(name);
    out.push(0);
    let eq_at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(value.element_type() as u8);
    out.extend_from_slice(b"$eq\0");
    write_value(value, out)?;
    out.extend_from_slice(&[0, 0]);
    let eq_len = out.len() - 1 - eq_at;
    super::raw::backfill(out, eq_at, eq_len)?;
    let len = out.len() - at;
    super::raw::backfill(out, at, len)
}

/// The encoded size of a tenant value.
fn value_len(value: &RawBson) -> Option<usize> {
    Some(match value {
        RawBson::String(s) => 4 + s.len() + 1,
        RawBson::Int32(_) => 4,
        RawBson::Int64(_) => 8,
        RawBson::ObjectId(_) => 12,
        RawBson::Binary(b) => 4 + 1 + b.bytes.len(),
        _ => return None,
    })
}

/// Appends a tenant value's encoding (strings, integers, ObjectIds and generic or UUID binaries; `None` for
/// any other type, which the builder then writes).
fn write_value(value: &RawBson, out: &mut Vec<u8>) -> Option<()> {
    match value {
        RawBson::String(s) => {
            out.extend_from_slice(&i32::try_from(s.len() + 1).ok()?.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        RawBson::Int32(n) => out.extend_from_slice(&n.to_le_bytes()),
        RawBson::Int64(n) => out.extend_from_slice(&n.to_le_bytes()),
        RawBson::ObjectId(id) => out.extend_from_slice(&id.bytes()),
        // The old binary subtype repeats its length inside the data; it is left to the builder.
        RawBson::Binary(b) if b.subtype != bson::spec::BinarySubtype::BinaryOld => {
            out.extend_from_slice(&i32::try_from(b.bytes.len()).ok()?.to_le_bytes());
            out.push(u8::from(b.subtype));
            out.extend_from_slice(&b.bytes);
        }
        _ => return None,
    }
    Some(())
}

fn built_condition(field: &FieldName, value: &RawBson) -> RawDocumentBuf {
    let mut eq = RawDocumentBuf::new();
    eq.append(cstr!("$eq"), value.clone());
    let mut cond = RawDocumentBuf::new();
    cond.append(field.as_cstr(), eq);
    cond
}

/// `{$set: {<field>: {$literal: <value>}}}`: the stage that puts the tenant value back whatever the stages
/// before it did (update pipelines, `$merge` output and `whenMatched` pipelines).
pub fn stamp_stage(field: &FieldName, value: &RawBson) -> RawDocumentBuf {
    let mut literal = RawDocumentBuf::new();
    literal.append(cstr!("$literal"), value.clone());
    let mut set = RawDocumentBuf::new();
    set.append(field.as_cstr(), literal);
    let mut stage = RawDocumentBuf::new();
    stage.append(cstr!("$set"), set);
    stage
}

/// The client filter wrapped with the tenant condition (just the condition for an empty or absent filter).
///
/// Written as bytes into one buffer of the final size: the client's filter is copied as it came, not re-read.
pub fn wrap(filter: Option<&RawDocument>, field: &FieldName, value: &RawBson) -> RawDocumentBuf {
    let mut out = Vec::new();
    if wrap_into(&mut out, filter, field, value).is_some() {
        if let Ok(wrapped) = RawDocumentBuf::from_bytes(out) {
            return wrapped;
        }
    }
    // A tenant value type not written as bytes, or a filter near 2 GiB: the builder, which reports the latter
    // its own way.
    let condition = tenant_condition(field, value);
    let Some(f) = filter.filter(|f| !f.is_empty()) else { return condition };
    let mut clauses = RawArrayBuf::new();
    clauses.push(f);
    clauses.push(condition);
    let mut out = RawDocumentBuf::new();
    out.append(cstr!("$and"), clauses);
    out
}

/// How many bytes [`wrap_into`] writes for `filter`; `None` when it writes nothing (a tenant value type not
/// written as bytes).
pub fn wrapped_len(filter: Option<&RawDocument>, field: &FieldName, value: &RawBson) -> Option<usize> {
    let condition = condition_len(field.as_str().as_bytes(), value)?;
    Some(match filter.filter(|f| !f.is_empty()) {
        // {"$and": ["<filter>", "<condition>"]}: see wrap_into.
        Some(f) => f.as_bytes().len() + condition + 22,
        None => condition,
    })
}

/// [`wrap`] written at the end of `out` (a buffer being filled with the command it goes into); `None`, with
/// nothing written, for a tenant value type [`tenant_condition`] does not write as bytes or a filter too large
/// for BSON's lengths, which [`wrap`] then builds.
pub fn wrap_into(out: &mut Vec<u8>, filter: Option<&RawDocument>, field: &FieldName, value: &RawBson) -> Option<()> {
    let name = field.as_str().as_bytes();
    let condition = condition_len(name, value)?;
    let filter = filter.filter(|f| !f.is_empty());
    let client = filter.map_or(0, |f| f.as_bytes().len());
    // The whole wrapped filter's length must fit an int32.
    i32::try_from(client + condition + 22).ok()?;
    out.reserve(client + condition + 22);
    let start = out.len();
    let written = match filter {
        None => write_condition(out, name, value),
        Some(f) => {
            // {"$and": ["<filter>", "<condition>"]}, the array being the document {"0": ..., "1": ...}.
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(b"\x04$and\0");
            let array_at = out.len();
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(b"\x030\0");
            out.extend_from_slice(f.as_bytes());
            out.extend_from_slice(b"\x031\0");
            write_condition(out, name, value).and_then(|()| {
                out.extend_from_slice(&[0, 0]);
                let array_len = out.len() - 1 - array_at;
                super::raw::backfill(out, array_at, array_len)?;
                let len = out.len() - start;
                super::raw::backfill(out, start, len)
            })
        }
    };
    if written.is_none() {
        out.truncate(start);
    }
    written
}

/// Whether a filter pins `field` to exactly `value` (verify style): `{field: v}`, `{field: {$eq: v}}`,
/// `{field: {$in: [v]}}`, at the top level or in a top-level `$and`, where `v` equals the tenant value as the
/// server compares (a double 42.0 pins the tenant 42). Duplicate keys never count as pinned.
pub fn pins(filter: &RawDocument, field: &str, value: &TenantValue) -> bool {
    if first_duplicate_key(filter).is_some() {
        return false;
    }
    filter.iter_elements().filter_map(|e| e.ok()).any(|element| {
        let key = element.key().as_str();
        match element.value() {
            Ok(v) if key == field => value_pins(v, value),
            Ok(RawBsonRef::Array(clauses)) if key == "$and" => {
                clauses.into_iter().any(|c| matches!(c, Ok(RawBsonRef::Document(d)) if pins(d, field, value)))
            }
            _ => false,
        }
    })
}

fn value_pins(given: RawBsonRef<'_>, value: &TenantValue) -> bool {
    match given {
        RawBsonRef::Document(ops) => {
            if first_duplicate_key(ops).is_some() {
                return false;
            }
            let mut elements = ops.iter_elements().filter_map(|e| e.ok());
            match (elements.next(), elements.next()) {
                (Some(op), None) => match (op.key().as_str(), op.value()) {
                    ("$eq", Ok(v)) => value.matches(v),
                    ("$in", Ok(RawBsonRef::Array(items))) => {
                        let items: Vec<_> = items.into_iter().collect();
                        items.len() == 1 && matches!(items[0], Ok(v) if value.matches(v))
                    }
                    _ => false,
                },
                _ => false,
            }
        }
        RawBsonRef::Array(_) | RawBsonRef::RegularExpression(_) => false,
        other => value.matches(other),
    }
}

/// Scopes one filter at `place` (e.g. "filter", "updates[2].q") under `rule`. Returns the filter to send, or
/// `None` to leave the client's as it is (verify passed, or audit).
pub fn scope_filter(
    scope: &mut Scope<'_>,
    rule: FieldRule<'_>,
    filter: Option<&RawDocument>,
    place: &str,
) -> Result<Option<RawDocumentBuf>> {
    // Enforce wraps whatever the filter says; only the other styles ask whether the client pinned the tenant.
    if rule.style == Style::Enforce {
        return Ok(Some(wrap(filter, rule.field, scope.value)));
    }
    let pinned = filter.is_some_and(|f| pins(f, rule.field, &scope.tenant.value));
    match rule.style {
        Style::Enforce => Ok(Some(wrap(filter, rule.field, scope.value))),
        Style::Verify if pinned => Ok(None),
        Style::Verify => {
            scope
                .violation(rule, format!("{place} does not pin {} to the tenant's value (verify style)", rule.field))?;
            Ok(None)
        }
        Style::Audit => {
            if !pinned {
                scope.audit.push(format!("{}: would add the tenant condition to {place}", rule.describe()));
            }
            Ok(None)
        }
    }
}

/// Refuses a non-simple collation: with one, `"acme"` can equal `"ACME"` and the tenant condition loosens —
/// unless the policy's tenant values cannot be made equal by any collation ([`Policy::collation_safe`]).
///
/// [`Policy::collation_safe`]: crate::policy::Policy::collation_safe
pub fn check_collation<'a>(
    scope: &mut Scope<'_>,
    rule: FieldRule<'_>,
    holder: impl Into<Fields<'a>>,
    place: &str,
) -> Result<()> {
    match super::raw::get(holder, "collation") {
        Ok(None) => Ok(()),
        Ok(Some(RawBsonRef::Document(c))) if c.get_str("locale").is_ok_and(|l| l == "simple") => Ok(()),
        // Its contents are the server's to validate; whatever they say, no two tenants' values compare equal.
        Ok(Some(RawBsonRef::Document(_))) if scope.policy.collation_safe => Ok(()),
        _ => scope.violation(
            rule,
            format!(
                "{place} has a non-simple collation, which could loosen the tenant condition: this policy's \
                 tenant values are not provably distinct under every collation (see Collation in the policy reference)"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn tid() -> FieldName {
        FieldName::new("tenantId").unwrap()
    }

    fn acme() -> RawBson {
        RawBson::String("acme".into())
    }

    #[test]
    fn written_conditions_equal_built_ones() {
        let values = [
            acme(),
            RawBson::String("ünïcode".into()),
            RawBson::Int32(-7),
            RawBson::Int64(1 << 40),
            RawBson::ObjectId(bson::oid::ObjectId::from_bytes([7; 12])),
            RawBson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1; 16] }),
            RawBson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::BinaryOld, bytes: vec![1; 3] }),
        ];
        for value in &values {
            assert_eq!(tenant_condition(&tid(), value), built_condition(&tid(), value), "{value:?}");
        }
        let filter = rawdoc! { "a": { "$in": [1, 2] }, "b": "x" };
        let wrapped = wrap(Some(&filter), &tid(), &acme());
        assert_eq!(wrapped, rawdoc! { "$and": [filter.clone(), { "tenantId": { "$eq": "acme" } }] });
        assert!(tenantwall_protocol::validate::validate_document(wrapped.as_bytes()).is_ok());
        // Written in place, at the end of a buffer, the bytes the builder makes; nothing for a value it does not
        // write, which `wrap` then builds the same way.
        let empty = rawdoc! {};
        for filter in [Some(filter.as_ref()), None, Some(empty.as_ref())] {
            let built = |value: &RawBson| match filter.filter(|f| !f.is_empty()) {
                Some(f) => {
                    let mut clauses = RawArrayBuf::new();
                    clauses.push(f);
                    clauses.push(built_condition(&tid(), value));
                    let mut out = RawDocumentBuf::new();
                    out.append(cstr!("$and"), clauses);
                    out
                }
                None => built_condition(&tid(), value),
            };
            for value in values.iter().take(6) {
                let mut out = vec![7];
                assert_eq!(wrap_into(&mut out, filter, &tid(), value), Some(()));
                assert_eq!(wrapped_len(filter, &tid(), value), Some(out.len() - 1), "{value:?}");
                assert_eq!(out[1..], *built(value).as_bytes(), "{value:?}");
            }
            for value in [RawBson::Double(1.0), values[6].clone()] {
                assert_eq!(wrap(filter, &tid(), &value), built(&value), "{value:?}");
            }
            for value in [RawBson::Double(1.0), values[6].clone()] {
                let mut out = vec![7];
                assert_eq!(wrap_into(&mut out, filter, &tid(), &value), None);
                assert_eq!(out, [7]);
            }
        }
    }

    #[test]
    fn wrap_never_edits_the_client_filter() {
        let client = rawdoc! { "$or": [{ "x": 1 }, { "tenantId": { "$ne": "acme" } }] };
        let wrapped = wrap(Some(&client), &tid(), &acme());
        assert_eq!(wrapped, rawdoc! { "$and": [client.clone(), { "tenantId": { "$eq": "acme" } }] });
        assert_eq!(wrap(None, &tid(), &acme()), rawdoc! { "tenantId": { "$eq": "acme" } });
        assert_eq!(wrap(Some(&rawdoc! {}), &tid(), &acme()), rawdoc! { "tenantId": { "$eq": "acme" } });
    }

    #[test]
    fn pinned_only_by_exact_equality() {
        let v = &TenantValue::new(bson::Bson::String("acme".into())).unwrap();
        assert!(pins(&rawdoc! { "tenantId": "acme", "x": 1 }, "tenantId", v));
        assert!(pins(&rawdoc! { "tenantId": { "$eq": "acme" } }, "tenantId", v));
        assert!(pins(&rawdoc! { "tenantId": { "$in": ["acme"] } }, "tenantId", v));
        assert!(pins(&rawdoc! { "$and": [{ "x": 1 }, { "tenantId": "acme" }] }, "tenantId", v));
        for unpinned in [
            rawdoc! { "tenantId": { "$ne": "globex" } },
            rawdoc! { "tenantId": { "$in": ["acme", "globex"] } },
            rawdoc! { "tenantId": { "$regex": "^acme" } },
            rawdoc! { "tenantId": { "$exists": true } },
            rawdoc! { "tenantId": { "$eq": "acme", "$ne": "x" } },
            rawdoc! { "$or": [{ "tenantId": "acme" }, { "x": 1 }] },
            rawdoc! { "tenantId": "ACME" },
            rawdoc! { "tenantId": ["acme"] },
            rawdoc! { "tenant\u{0406}d": "acme" },
        ] {
            assert!(!pins(&unpinned, "tenantId", v), "{unpinned:?}");
        }
        let mut dup = RawDocumentBuf::new();
        dup.append(cstr!("tenantId"), "acme");
        dup.append(cstr!("tenantId"), "globex");
        assert!(!pins(&dup, "tenantId", v));
        // Numbers pin as the server compares them: Int32 5 and 5.0 are the Int64 tenant 5, 5.5 is not.
        let five = &TenantValue::new(bson::Bson::Int64(5)).unwrap();
        assert!(pins(&rawdoc! { "t": 5 }, "t", five));
        assert!(pins(&rawdoc! { "t": { "$eq": 5.0 } }, "t", five));
        assert!(!pins(&rawdoc! { "t": 5.5 }, "t", five));
        assert!(!pins(&rawdoc! { "t": [5] }, "t", five));
    }
}
