//! Indexes and collection options of field-mode collections that act across tenants.
//!
//! In a collection every tenant shares, an index or option applies to all tenants' documents at once. Gaps
//! are the ones through which one tenant's data or writes reach another's: a unique index whose key does not
//! start with the tenant field (one tenant's value blocks another's insert, and the duplicate-key error says it
//! exists), a collation that can make two tenants' values equal (the collection's default collation applies to
//! the tenant condition the proxy adds), a capped collection (one tenant's inserts evict other tenants'
//! documents), and a view (its pipeline runs before the tenant condition). TTL and partial indexes and validators
//! are notes: they treat every tenant alike, which an operator should know, but let no tenant reach another.
//!
//! Shared-mode (reference) collections are not checked: no tenant writes to them, and every tenant sees the
//! same documents by design. Details name indexes, key fields and collation locales, never a filter or
//! validator (those can hold tenant values). Pure: no I/O.

use bson::{RawBsonRef, RawDocument};

use super::report::{Kind, Severity};
use crate::engine::truthy;

/// A finding about one index or option, before it is placed in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionFinding {
    pub severity: Severity,
    pub kind: Kind,
    pub detail: String,
}

fn finding(severity: Severity, kind: Kind, detail: String) -> OptionFinding {
    OptionFinding { severity, kind, detail }
}

/// Checks the index specifications (`listIndexes` entries) of a collection scoped by `field`.
/// `collation_safe`: no collation can make two of the policy's tenant values equal.
pub fn check_indexes<'a>(
    indexes: impl IntoIterator<Item = &'a RawDocument>,
    field: &str,
    collation_safe: bool,
) -> Vec<OptionFinding> {
    let mut out = Vec::new();
    for spec in indexes {
        let name = spec.get_str("name").unwrap_or("(unnamed)");
        let keys: Vec<&str> = spec
            .get_document("key")
            .map(|k| k.iter().filter_map(Result::ok).map(|(name, _)| name.as_str()).collect())
            .unwrap_or_default();
        if keys == ["_id"] {
            // Unique across tenants by nature; `check` warns about it for every field rule.
            continue;
        }
        let shown = format!("{name} ({})", keys.join(", "));
        // A value the server would refuse cannot have built an index; read anything odd as set (fail closed).
        let flag = |key: &str| truthy(spec, key, "index").unwrap_or(true);
        let unique = flag("unique");
        let collation = non_simple_collation(spec);
        if unique && keys.first() != Some(&field) {
            out.push(finding(
                Severity::Gap,
                Kind::UniqueIndex,
                format!(
                    "unique index {shown} does not start with {field}: a value one tenant holds blocks every other \
                     tenant, and the duplicate-key error tells them it exists"
                ),
            ));
        } else if unique && !collation_safe {
            if let Some(locale) = collation {
                out.push(finding(
                    Severity::Gap,
                    Kind::IndexCollation,
                    format!(
                        "unique index {shown} has collation {locale}, under which two tenants' values can compare \
                         equal"
                    ),
                ));
            }
        }
        if spec.get("expireAfterSeconds").ok().flatten().is_some() {
            out.push(finding(
                Severity::Note,
                Kind::TtlIndex,
                format!("TTL index {shown} expires every tenant's documents by the same rule"),
            ));
        }
        if spec.get("partialFilterExpression").ok().flatten().is_some() && !unique {
            out.push(finding(
                Severity::Note,
                Kind::PartialIndex,
                format!("partial index {shown}: one filter for every tenant (the proxy hides it from tenants)"),
            ));
        }
    }
    out
}

/// Checks a collection's options (`listCollections` `options`) and kind (`collection`, `view`, ...) for a
/// collection scoped by a tenant field.
pub fn check_collection(kind: &str, options: &RawDocument, collation_safe: bool) -> Vec<OptionFinding> {
    let mut out = Vec::new();
    if kind == "view" {
        out.push(finding(
            Severity::Gap,
            Kind::View,
            "a view: its pipeline runs over every tenant's documents before the proxy's tenant condition".into(),
        ));
    }
    if truthy(options, "capped", "options").unwrap_or(true) {
        out.push(finding(
            Severity::Gap,
            Kind::Capped,
            "capped: one tenant's inserts evict the oldest documents of every tenant".into(),
        ));
    }
    if let Some(locale) = non_simple_collation(options) {
        let (severity, why) = if collation_safe {
            (Severity::Note, "no collation can make two of this policy's tenant values equal")
        } else {
            (Severity::Gap, "it applies to the proxy's tenant condition, so two tenants' values can compare equal")
        };
        out.push(finding(severity, Kind::Collation, format!("default collation {locale}: {why}")));
    }
    if matches!(options.get("validator"), Ok(Some(RawBsonRef::Document(v))) if !v.is_empty()) {
        out.push(finding(
            Severity::Note,
            Kind::Validator,
            "a validator applies to every tenant's writes alike (the proxy withholds its error details)".into(),
        ));
    }
    out
}

/// The locale of a collation other than `simple`, rendered for the report (locale and strength are
/// configuration, not data).
fn non_simple_collation(doc: &RawDocument) -> Option<String> {
    match doc.get("collation") {
        Ok(Some(RawBsonRef::Document(c))) => {
            let locale = c.get_str("locale").unwrap_or("(no locale)");
            if locale == "simple" {
                return None;
            }
            Some(match c.get("strength") {
                Ok(Some(RawBsonRef::Int32(s))) => format!("{locale:?} (strength {s})"),
                _ => format!("{locale:?}"),
            })
        }
        Ok(None) => None,
        // A collation that is not a document is not one the proxy can reason about.
        _ => Some("(unreadable)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{rawdoc, RawDocumentBuf};

    fn kinds(found: &[OptionFinding]) -> Vec<(Severity, Kind)> {
        found.iter().map(|f| (f.severity, f.kind)).collect()
    }

    fn check(indexes: &[RawDocumentBuf], safe: bool) -> Vec<OptionFinding> {
        check_indexes(indexes.iter().map(|d| d.as_ref()), "tenantId", safe)
    }

    #[test]
    fn unique_indexes_must_start_with_the_tenant_field() {
        let indexes = [
            rawdoc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
            rawdoc! { "v": 2, "key": { "tenantId": 1, "sku": 1 }, "name": "t_sku", "unique": true },
            rawdoc! { "v": 2, "key": { "sku": 1 }, "name": "sku", "unique": 1 },
            rawdoc! { "v": 2, "key": { "sku": 1, "tenantId": 1 }, "name": "sku_t", "unique": 1.0 },
            rawdoc! { "v": 2, "key": { "email": 1 }, "name": "email", "unique": false },
        ];
        let found = check(&indexes, true);
        assert_eq!(kinds(&found), vec![(Severity::Gap, Kind::UniqueIndex), (Severity::Gap, Kind::UniqueIndex)]);
        assert!(found[0].detail.contains("sku (sku)") && found[1].detail.contains("sku_t (sku, tenantId)"));
    }

    #[test]
    fn collations_ttl_and_partial_indexes() {
        let indexes = [
            rawdoc! { "key": { "tenantId": 1, "e": 1 }, "name": "ci", "unique": true,
            "collation": { "locale": "en", "strength": 2 } },
            rawdoc! { "key": { "ts": 1 }, "name": "ttl", "expireAfterSeconds": 3600 },
            rawdoc! { "key": { "y": 1 }, "name": "p", "partialFilterExpression": { "tenantId": "acme-secret" } },
        ];
        let unsafe_policy = check(&indexes, false);
        assert_eq!(
            kinds(&unsafe_policy),
            vec![
                (Severity::Gap, Kind::IndexCollation),
                (Severity::Note, Kind::TtlIndex),
                (Severity::Note, Kind::PartialIndex)
            ]
        );
        assert!(!format!("{unsafe_policy:?}").contains("acme-secret"), "a filter value was rendered");
        let safe_policy = check(&indexes, true);
        assert_eq!(kinds(&safe_policy), vec![(Severity::Note, Kind::TtlIndex), (Severity::Note, Kind::PartialIndex)]);
    }

    #[test]
    fn collection_options_that_reach_across_tenants() {
        let options = rawdoc! {
            "capped": true, "size": 4096,
            "collation": { "locale": "fr", "strength": 1 },
            "validator": { "tenantId": "acme-secret" },
        };
        let found = check_collection("collection", &options, false);
        assert_eq!(
            kinds(&found),
            vec![(Severity::Gap, Kind::Capped), (Severity::Gap, Kind::Collation), (Severity::Note, Kind::Validator)]
        );
        assert!(!format!("{found:?}").contains("acme-secret"));
        let safe = check_collection("collection", &options, true);
        assert_eq!(safe[1].severity, Severity::Note);
        assert!(check_collection("collection", &rawdoc! {}, false).is_empty());
        assert!(check_collection("collection", &rawdoc! { "collation": { "locale": "simple" } }, false).is_empty());
        assert_eq!(kinds(&check_collection("view", &rawdoc! {}, true)), vec![(Severity::Gap, Kind::View)]);
    }
}
