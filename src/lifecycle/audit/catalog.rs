//! Which rule, if any, governs a real namespace found on a backend: the policy's naming run backwards.
//!
//! A real name is read back into candidate `(tenant, visible name)` pairs with each rule's template
//! (`unrender`), and a candidate counts only if the proxy's own forward resolution ([`engine::resolve`]) sends
//! that tenant's visible name to exactly this real name on this backend, so the audit can never disagree with
//! what the proxy does. What no tenant reaches is either an orphan (a per-tenant name of a tenant the policy
//! does not have here) or uncovered.
//!
//! Pure over the compiled policy: no I/O.

use crate::config::Mode;
use crate::engine::{self, Target};
use crate::policy::{FieldName, Placement, Policy, Rule};

/// How the policy governs one real namespace of one backend.
#[derive(Debug, Clone)]
pub enum Coverage<'p> {
    /// A shared collection scoped by `field`; every tenant of the backend reaches it.
    Field { rule: &'p Rule, field: &'p FieldName },
    /// Read-only reference data every tenant of the backend reads.
    Shared { rule: &'p Rule },
    /// One tenant's own collection (collection mode) or a collection of its own database (database mode).
    Owned { rule: &'p Rule, tenant: String, visible: String },
    /// More than one tenant reaches it as its own, or it is both shared and someone's own.
    Contested { tenants: Vec<String> },
    /// Named like a rule's per-tenant name of a tenant the policy does not place on this backend.
    Orphan { rule: &'p Rule, level: Level, tenant: String, placed_on: Option<String> },
    /// No rule reaches it. `shadowed_for` names a tenant whose name it has but whom an earlier rule sends
    /// elsewhere.
    Uncovered { shadowed_for: Option<String> },
}

/// Whether a per-tenant name is a collection name or a database name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Collection,
    Database,
}

/// Tenant ids placed on `backend`, sorted.
pub fn tenants_on<'p>(policy: &'p Policy, backend: &str) -> Vec<&'p str> {
    let mut ids: Vec<&str> =
        policy.tenant_ids().filter(|id| policy.tenant(id).is_some_and(|t| t.backend == backend)).collect();
    ids.sort_unstable();
    ids
}

/// Classifies `db.collection` as found on `backend`.
pub fn classify<'p>(policy: &'p Policy, backend: &str, db: &str, collection: &str) -> Coverage<'p> {
    let mut field = None;
    let mut shared = None;
    let mut owners: Vec<(String, &'p Rule, String)> = Vec::new();
    for tenant in tenants_on(policy, backend) {
        for (vdb, vcoll) in candidates(policy, tenant, db, collection) {
            let Ok(target) = engine::resolve(policy, tenant, &vdb, Some(&vcoll)) else { continue };
            let same_name = vdb == db && vcoll == collection;
            match target {
                Target::Field(rule) if same_name => field = Some((rule.rule, rule.field)),
                Target::Shared(rule) if same_name => shared = Some(rule),
                Target::Mapped { rule, db: real_db, ref coll } => {
                    let real_coll = coll.as_deref().unwrap_or(vcoll.as_str());
                    if real_db == db && real_coll == collection && !owners.iter().any(|(t, _, _)| t == tenant) {
                        owners.push((tenant.to_owned(), rule, format!("{vdb}.{vcoll}")));
                    }
                }
                _ => {}
            }
        }
    }
    let kinds = usize::from(field.is_some()) + usize::from(shared.is_some()) + usize::from(!owners.is_empty());
    if kinds > 1 || owners.len() > 1 {
        let mut tenants: Vec<String> = owners.into_iter().map(|(t, _, _)| t).collect();
        if field.is_some() || shared.is_some() {
            tenants.extend(tenants_on(policy, backend).into_iter().map(str::to_owned));
        }
        tenants.sort();
        tenants.dedup();
        return Coverage::Contested { tenants };
    }
    if let Some((rule, field)) = field {
        return Coverage::Field { rule, field };
    }
    if let Some(rule) = shared {
        return Coverage::Shared { rule };
    }
    if let Some((tenant, rule, visible)) = owners.pop() {
        return Coverage::Owned { rule, tenant, visible };
    }
    unreached(policy, backend, db, collection)
}

/// Visible names under which `tenant` might reach the real `db.collection`: the name itself (field, shared,
/// identity templates) and every rule template read backwards.
fn candidates(policy: &Policy, tenant: &str, db: &str, collection: &str) -> Vec<(String, String)> {
    let mut out = vec![(db.to_owned(), collection.to_owned())];
    for rule in &policy.rules {
        let candidate = match &rule.placement {
            Placement::Collection(t) => t.unrender(tenant, collection).map(|c| (db.to_owned(), c)),
            Placement::Database(t) => t.unrender(tenant, db).map(|d| (d, collection.to_owned())),
            Placement::Field { .. } | Placement::Shared => None,
        };
        if let Some(candidate) = candidate.filter(|c| !out.contains(c)) {
            out.push(candidate);
        }
    }
    out
}

/// A namespace no tenant of the backend reaches: an orphan if it has a per-tenant name's shape, else uncovered.
fn unreached<'p>(policy: &'p Policy, backend: &str, db: &str, collection: &str) -> Coverage<'p> {
    for rule in &policy.rules {
        let shaped = match &rule.placement {
            Placement::Collection(t) if t.has_tenant() && rule.database.matches(db) => t
                .split(collection)
                .filter(|(_, visible)| rule.collection.matches(visible))
                .map(|(tenant, _)| (tenant, Level::Collection)),
            Placement::Database(t) if t.has_tenant() && rule.collection.matches(collection) => t
                .split(db)
                .filter(|(_, visible)| rule.database.matches(visible))
                .map(|(tenant, _)| (tenant, Level::Database)),
            _ => None,
        };
        let Some((tenant, level)) = shaped else { continue };
        match policy.tenant(tenant) {
            Some(t) if t.backend == backend => {
                return Coverage::Uncovered { shadowed_for: Some(tenant.to_owned()) };
            }
            Some(t) => {
                return Coverage::Orphan { rule, level, tenant: tenant.to_owned(), placed_on: Some(t.backend.clone()) };
            }
            None => return Coverage::Orphan { rule, level, tenant: tenant.to_owned(), placed_on: None },
        }
    }
    Coverage::Uncovered { shadowed_for: None }
}

/// The isolation mode of a covered namespace, for the usage table.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Field => "field",
        Mode::Collection => "collection",
        Mode::Database => "database",
        Mode::Shared => "shared",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &str) -> Policy {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"main\"\nuri = \"mongodb://127.0.0.1:1/\"\n\n\
             [[backends]]\nname = \"other\"\nuri = \"mongodb://127.0.0.1:2/\"\n\n\
             [[tenants]]\nid = \"acme\"\nbackend = \"main\"\n\n\
             [[tenants]]\nid = \"globex\"\nbackend = \"main\"\n\n\
             [[tenants]]\nid = \"initech\"\nbackend = \"other\"\n\n{rules}"
        );
        Policy::from_toml(&text, std::path::Path::new("audit-test.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    const MIXED: &str = "[[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"field\"\n\n\
        [[rules]]\ndatabase = \"app\"\ncollection = \"countries\"\nmode = \"shared\"\n\n\
        [[rules]]\ndatabase = \"app\"\ncollection = \"invoices\"\nmode = \"collection\"\n\n\
        [[rules]]\ndatabase = \"crm\"\ncollection = \"*\"\nmode = \"database\"\n";

    #[test]
    fn covered_namespaces_are_read_back_to_their_rule_and_tenant() {
        let p = policy(MIXED);
        assert!(
            matches!(classify(&p, "main", "app", "orders"), Coverage::Field { field, .. } if field.as_str() == "tenantId")
        );
        assert!(matches!(classify(&p, "main", "app", "countries"), Coverage::Shared { .. }));
        match classify(&p, "main", "app", "globex__invoices") {
            Coverage::Owned { tenant, visible, rule } => {
                assert_eq!((tenant.as_str(), visible.as_str()), ("globex", "app.invoices"));
                assert_eq!(rule.mode(), Mode::Collection);
            }
            other => panic!("{other:?}"),
        }
        match classify(&p, "main", "acme_crm", "contacts") {
            Coverage::Owned { tenant, visible, rule } => {
                assert_eq!((tenant.as_str(), visible.as_str()), ("acme", "crm.contacts"));
                assert_eq!(rule.mode(), Mode::Database);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn per_tenant_names_of_unknown_or_displaced_tenants_are_orphans() {
        let p = policy(MIXED);
        match classify(&p, "main", "app", "ghost__invoices") {
            Coverage::Orphan { tenant, level, placed_on, .. } => {
                assert_eq!((tenant.as_str(), level, placed_on), ("ghost", Level::Collection, None));
            }
            other => panic!("{other:?}"),
        }
        // initech lives on "other": its name on "main" is a copy left behind.
        match classify(&p, "main", "initech_crm", "contacts") {
            Coverage::Orphan { tenant, level, placed_on, .. } => {
                assert_eq!(tenant, "initech");
                assert_eq!(level, Level::Database);
                assert_eq!(placed_on.as_deref(), Some("other"));
            }
            other => panic!("{other:?}"),
        }
        // A per-tenant name under a visible name no rule covers is not the rule's.
        assert!(matches!(classify(&p, "main", "app", "ghost__payments"), Coverage::Uncovered { shadowed_for: None }));
    }

    #[test]
    fn names_no_rule_reaches_are_uncovered() {
        let p = policy(MIXED);
        assert!(matches!(classify(&p, "main", "app", "sessions"), Coverage::Uncovered { shadowed_for: None }));
        assert!(matches!(classify(&p, "main", "billing", "x"), Coverage::Uncovered { .. }));
        // Field collections exist only for the tenants of a backend: "other" has initech, so app.orders is its.
        assert!(matches!(classify(&p, "other", "app", "orders"), Coverage::Field { .. }));
    }
}
