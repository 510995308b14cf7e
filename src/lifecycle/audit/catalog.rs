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

/// The policy as seen from one backend: the tenants placed on it.
#[derive(Debug, Clone)]
pub struct BackendView<'p> {
    policy: &'p Policy,
    backend: &'p str,
    /// Tenant ids placed on the backend, sorted.
    tenants: Vec<&'p str>,
}

impl<'p> BackendView<'p> {
    pub fn new(policy: &'p Policy, backend: &'p str) -> Self {
        let mut tenants: Vec<&str> =
            policy.tenant_ids().filter(|id| policy.tenant(id).is_some_and(|t| t.backend == backend)).collect();
        tenants.sort_unstable();
        Self { policy, backend, tenants }
    }

    /// Classifies `db.collection` as found on this backend.
    pub fn classify(&self, db: &str, collection: &str) -> Coverage<'p> {
        let mut field = None;
        let mut shared = None;
        let mut owners: Vec<(String, &'p Rule, String)> = Vec::new();
        for (tenant, vdb, vcoll) in self.candidates(db, collection) {
            let Ok(target) = engine::resolve(self.policy, tenant, &vdb, Some(&vcoll)) else { continue };
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
        let kinds = usize::from(field.is_some()) + usize::from(shared.is_some()) + usize::from(!owners.is_empty());
        if kinds > 1 || owners.len() > 1 {
            let mut tenants: Vec<String> = owners.into_iter().map(|(t, _, _)| t).collect();
            if field.is_some() || shared.is_some() {
                tenants.extend(self.tenants.iter().map(|t| (*t).to_owned()));
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
        unreached(self.policy, self.backend, db, collection)
    }

    /// `(tenant, visible db, visible collection)` under which a tenant of this backend might reach the real
    /// `db.collection`, each confirmed or not by the forward resolution. The name itself needs one tenant of
    /// those the general rules govern alike (field and shared rules resolve alike for them, and a database
    /// template that keeps names is valid only when the tenants it governs have a backend each), plus each
    /// tenant that rules of its own (`tenants = [...]`) may place elsewhere. A template with `{tenant}` names its
    /// tenant in the real name, so reading it backwards gives the one candidate, whatever the number of tenants.
    fn candidates(&self, db: &str, collection: &str) -> Vec<(&'p str, String, String)> {
        let mut out = Vec::new();
        let own_rules = |tenant: &str| self.policy.rules().iter().any(|r| r.tenants.is_some() && r.applies_to(tenant));
        let (special, general): (Vec<&'p str>, Vec<&'p str>) = self.tenants.iter().partition(|t| own_rules(t));
        for tenant in general.first().into_iter().chain(&special) {
            out.push((*tenant, db.to_owned(), collection.to_owned()));
        }
        for rule in self.policy.rules() {
            let split = match &rule.placement {
                Placement::Collection(t) if t.has_tenant() => {
                    t.split(collection).map(|(tenant, c)| (tenant, db.to_owned(), c.to_owned()))
                }
                Placement::Database(t) if t.has_tenant() => {
                    t.split(db).map(|(tenant, d)| (tenant, d.to_owned(), collection.to_owned()))
                }
                _ => None,
            };
            let Some((tenant, vdb, vcoll)) = split else { continue };
            // The id as the policy holds it, so the candidate borrows from the policy, not from the name.
            let Ok(at) = self.tenants.binary_search(&tenant) else { continue };
            let Some(tenant) = self.tenants.get(at).copied() else { continue };
            if !out.iter().any(|(t, d, c)| *t == tenant && *d == vdb && *c == vcoll) {
                out.push((tenant, vdb, vcoll));
            }
        }
        out
    }

    /// Tenant ids placed on this backend, sorted.
    pub fn tenants(&self) -> &[&'p str] {
        &self.tenants
    }
}

/// A namespace no tenant of the backend reaches: an orphan if it has a per-tenant name's shape, else uncovered.
fn unreached<'p>(policy: &'p Policy, backend: &str, db: &str, collection: &str) -> Coverage<'p> {
    for rule in policy.rules() {
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
            matches!(BackendView::new(&p, "main").classify("app", "orders"), Coverage::Field { field, .. } if field.as_str() == "tenantId")
        );
        assert!(matches!(BackendView::new(&p, "main").classify("app", "countries"), Coverage::Shared { .. }));
        match BackendView::new(&p, "main").classify("app", "globex__invoices") {
            Coverage::Owned { tenant, visible, rule } => {
                assert_eq!((tenant.as_str(), visible.as_str()), ("globex", "app.invoices"));
                assert_eq!(rule.mode(), Mode::Collection);
            }
            other => panic!("{other:?}"),
        }
        match BackendView::new(&p, "main").classify("acme_crm", "contacts") {
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
        match BackendView::new(&p, "main").classify("app", "ghost__invoices") {
            Coverage::Orphan { tenant, level, placed_on, .. } => {
                assert_eq!((tenant.as_str(), level, placed_on), ("ghost", Level::Collection, None));
            }
            other => panic!("{other:?}"),
        }
        // initech lives on "other": its name on "main" is a copy left behind.
        match BackendView::new(&p, "main").classify("initech_crm", "contacts") {
            Coverage::Orphan { tenant, level, placed_on, .. } => {
                assert_eq!(tenant, "initech");
                assert_eq!(level, Level::Database);
                assert_eq!(placed_on.as_deref(), Some("other"));
            }
            other => panic!("{other:?}"),
        }
        // A per-tenant name under a visible name no rule covers is not the rule's.
        assert!(matches!(
            BackendView::new(&p, "main").classify("app", "ghost__payments"),
            Coverage::Uncovered { shadowed_for: None }
        ));
    }

    #[test]
    fn a_tenant_with_a_backend_of_its_own_owns_its_names_as_they_are() {
        let text = "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
                    [[backends]]\nname = \"a\"\nuri = \"mongodb://127.0.0.1:1/\"\n\n\
                    [[backends]]\nname = \"b\"\nuri = \"mongodb://127.0.0.1:2/\"\n\n\
                    [[tenants]]\nid = \"acme\"\nbackend = \"a\"\n\n[[tenants]]\nid = \"globex\"\nbackend = \"b\"\n\n\
                    [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{db}\"\n";
        let p = Policy::from_toml(text, std::path::Path::new("own-backend.toml")).unwrap_or_else(|e| panic!("{e}"));
        for (backend, owner) in [("a", "acme"), ("b", "globex")] {
            match BackendView::new(&p, backend).classify("app", "orders") {
                Coverage::Owned { tenant, visible, .. } => {
                    assert_eq!((tenant.as_str(), visible.as_str()), (owner, "app.orders"))
                }
                other => panic!("{backend}: {other:?}"),
            }
        }
    }

    #[test]
    fn names_no_rule_reaches_are_uncovered() {
        let p = policy(MIXED);
        assert!(matches!(
            BackendView::new(&p, "main").classify("app", "sessions"),
            Coverage::Uncovered { shadowed_for: None }
        ));
        assert!(matches!(BackendView::new(&p, "main").classify("billing", "x"), Coverage::Uncovered { .. }));
        // Field collections exist only for the tenants of a backend: "other" has initech, so app.orders is its.
        assert!(matches!(BackendView::new(&p, "other").classify("app", "orders"), Coverage::Field { .. }));
    }
}
