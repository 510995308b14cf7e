//! The compiled policy: tenants, identities, backends and rules, ready for lookups on the request path.
//!
//! A [`Policy`] is built only from a file that validated; it is immutable and shared behind an `Arc`, and a
//! reload builds a new one and swaps it in whole. It owns identity resolution (which tenant a SCRAM user,
//! certificate subject or SNI name belongs to) and rule lookup. It resolves backend secrets at build time and
//! keeps them out of `Debug` output.

pub mod compile;
pub mod rules;
pub mod value;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bson::Bson;

use crate::auth::ScramVerifier;
use crate::config::{self, ConfigError, Limits, Mode, PolicyFile, Problem, Style};
use crate::names::NameMap;
use compile::Secrets;
use rules::{Pattern, Template};
pub use value::{FieldName, TenantValue};

/// Default tenant field of `field` rules.
pub const DEFAULT_TENANT_FIELD: &str = "tenantId";
/// Default name template of `collection` rules.
pub const DEFAULT_COLLECTION_TEMPLATE: &str = "{tenant}__{collection}";
/// Default name template of `database` rules.
pub const DEFAULT_DATABASE_TEMPLATE: &str = "{tenant}_{db}";

/// A tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: String,
    /// Value of the tenant field in shared collections.
    pub value: TenantValue,
    /// Name of the backend holding the tenant's data.
    pub backend: String,
    /// Longest a command may run on the backend (`maxTimeMS` is capped to it); `None` leaves it to the client.
    pub max_time_ms: Option<u64>,
    /// `Some(false)` forces `allowDiskUse: false` on find and aggregate.
    pub allow_disk_use: Option<bool>,
    /// Commands forwarded per second across the tenant's connections (its own, or `limits.rate_limit`).
    pub rate_limit: Option<RateLimit>,
    /// Connections the tenant may hold at once.
    pub max_connections: Option<usize>,
    /// Commands of the tenant forwarded and not yet answered at once (its own, or `limits.max_in_flight`).
    pub max_in_flight: usize,
    /// What the tenant's session ids are derived from (see [`crate::session`]): its id, followed, when rules are
    /// written for it alone, by a digest of those rules. A change of its own placement then starts new server
    /// sessions, so a transaction begun on the old placement can never commit after the switch (its writes were
    /// not copied); every proxy with the same policy derives the same ids.
    pub session_key: String,
}

/// A token bucket: `per_second` tokens added each second, at most `burst` held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// Where the audit log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

/// The compiled `[audit]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub target: AuditTarget,
    pub log_writes: bool,
    pub queue: usize,
}

/// The compiled `[admin]` section.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub address: std::net::SocketAddr,
    /// Bearer token every request must carry, when configured.
    pub token: Option<Secret>,
    pub health_interval: std::time::Duration,
}

/// A password that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Service credentials for a backend.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
    pub auth_source: String,
}

/// A backend as configured.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub name: String,
    pub hosts: Vec<String>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub credentials: Option<Credentials>,
    pub max_wire_version: Option<i32>,
    /// Bound on the backend's connection pool.
    pub max_connections: usize,
}

/// A listener as configured.
#[derive(Debug, Clone)]
pub struct Listener {
    pub address: String,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Tenant every connection on this listener belongs to.
    pub tenant: Option<String>,
    /// `Some` presents the proxy as this one-member replica set instead of a mongos.
    pub face: Option<crate::handshake::ReplicaSetFace>,
}

/// What a rule does with the namespaces it covers: one variant per isolation mode, each with exactly the data
/// that mode needs, so a field rule without a field or a collection rule without a template cannot exist.
#[derive(Debug, Clone)]
pub enum Placement {
    /// Shared collections scoped by a tenant field.
    Field { field: FieldName, style: Style },
    /// One collection per tenant, named by the template.
    Collection(Template),
    /// One database per tenant (or the tenant's own backend), named by the template.
    Database(Template),
    /// Reference data: reads pass, writes are refused.
    Shared,
}

/// A namespace rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Position in the file (for messages: "rules[3]").
    pub index: usize,
    pub database: Pattern,
    pub collection: Pattern,
    pub placement: Placement,
    /// The tenants the rule applies to; `None`: every tenant.
    pub tenants: Option<Vec<String>>,
}

impl Rule {
    /// Whether the rule applies to tenant `tenant` at all (before its patterns are looked at).
    pub fn applies_to(&self, tenant: &str) -> bool {
        self.tenants.as_ref().is_none_or(|only| only.iter().any(|t| t == tenant))
    }

    /// Whether some tenant is governed by both rules' tenant lists.
    pub fn shares_tenants(&self, other: &Rule) -> bool {
        match (&self.tenants, &other.tenants) {
            (Some(a), Some(b)) => a.iter().any(|t| b.contains(t)),
            _ => true,
        }
    }

    pub fn mode(&self) -> Mode {
        match self.placement {
            Placement::Field { .. } => Mode::Field,
            Placement::Collection(_) => Mode::Collection,
            Placement::Database(_) => Mode::Database,
            Placement::Shared => Mode::Shared,
        }
    }

    /// The name template of collection and database rules.
    pub fn template(&self) -> Option<&Template> {
        match &self.placement {
            Placement::Collection(t) | Placement::Database(t) => Some(t),
            Placement::Field { .. } | Placement::Shared => None,
        }
    }

    /// The field-mode view of this rule, if it is one.
    pub fn as_field(&self) -> Option<FieldRule<'_>> {
        match &self.placement {
            Placement::Field { field, style } => Some(FieldRule { rule: self, field, style: *style }),
            _ => None,
        }
    }

    /// `rule app.orders (field)` for error messages: the rule by the namespaces it names, as the tenant sees
    /// them (its position in the file tells an app team nothing; `check` and the audit log use `rules[N]`).
    pub fn describe(&self) -> String {
        let mode = match self.mode() {
            Mode::Field => "field",
            Mode::Collection => "collection",
            Mode::Database => "database",
            Mode::Shared => "shared",
        };
        format!("rule {}.{} ({mode})", self.database.as_str(), self.collection.as_str())
    }
}

/// A field-mode rule with its field and style at hand: what every scoping function takes.
#[derive(Debug, Clone, Copy)]
pub struct FieldRule<'p> {
    pub rule: &'p Rule,
    pub field: &'p FieldName,
    pub style: Style,
}

impl std::ops::Deref for FieldRule<'_> {
    type Target = Rule;
    fn deref(&self) -> &Rule {
        self.rule
    }
}

/// A compiled, validated policy.
#[derive(Debug)]
pub struct Policy {
    pub path: PathBuf,
    pub listeners: Vec<Listener>,
    pub backends: Vec<BackendSpec>,
    tenants: HashMap<String, Arc<Tenant>>,
    users: HashMap<String, (String, ScramVerifier)>,
    subjects: HashMap<String, String>,
    sni: HashMap<String, String>,
    rules: Vec<Rule>,
    /// Which rules apply to which tenant ([`RuleIndex`]), so that a command reads its own tenant's rules and the
    /// general ones, not every tenant's.
    index: RuleIndex,
    pub limits: Limits,
    /// The admin listener, when configured. Read at start.
    pub admin: Option<AdminSettings>,
    /// The audit log, when configured. Read at start.
    pub audit: Option<AuditSettings>,
    /// No collation can make two tenants' values compare equal (see [`compile::collation_safe`]): a non-simple
    /// collation cannot loosen the tenant condition, so field-mode commands may carry one.
    pub collation_safe: bool,
    /// Warnings from validation, for logging at load.
    pub warnings: Vec<Problem>,
}

/// Converts a policy's tenant value (TOML) into the tenant value stored in tenant fields.
pub fn tenant_value(value: &toml::Value) -> Result<TenantValue, String> {
    let bson = match value {
        toml::Value::String(s) => Bson::String(s.clone()),
        toml::Value::Integer(i) => i32::try_from(*i).map(Bson::Int32).unwrap_or(Bson::Int64(*i)),
        toml::Value::Table(_) => {
            let json = serde_json::to_value(value).map_err(|e| e.to_string())?;
            Bson::try_from(json).map_err(|e| format!("not valid extended JSON: {e}"))?
        }
        _ => {
            return Err(
                "must be a non-empty string, an integer, or an extended JSON table such as { \"$oid\" = \"...\" }"
                    .into(),
            )
        }
    };
    TenantValue::new(bson)
}

impl Policy {
    /// Reads and compiles a policy file.
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        let (file, text) = config::read(path)?;
        Self::compile(&file, &text, path, Secrets::Read)
    }

    /// Like [`Policy::load`], without reading backend secrets: for `explain` and `test`, which open no backend
    /// connection and run where the secrets are not.
    pub fn load_for_analysis(path: &Path) -> Result<Policy, ConfigError> {
        let (file, text) = config::read(path)?;
        Self::compile(&file, &text, path, Secrets::Skip)
    }

    /// Parses and compiles policy text; `path` labels errors and anchors relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Policy, ConfigError> {
        let file = config::parse(text, path)?;
        Self::compile(&file, text, path, Secrets::Read)
    }

    fn compile(file: &PolicyFile, text: &str, path: &Path, secrets: Secrets) -> Result<Policy, ConfigError> {
        let compilation = compile::compile(file, text, path, secrets);
        match compilation.policy {
            Some(policy) => Ok(policy),
            None => Err(ConfigError::Invalid { path: path.to_owned(), problems: compilation.errors }),
        }
    }

    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    pub fn tenant_ids(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    /// The tenant and verifier of a SCRAM user.
    pub fn scram_user(&self, name: &str) -> Option<(&str, &ScramVerifier)> {
        self.users.get(name).map(|(t, v)| (t.as_str(), v))
    }

    pub fn tenant_for_subject(&self, subject: &str) -> Option<&str> {
        self.subjects.get(subject).map(String::as_str)
    }

    pub fn tenant_for_sni(&self, host: &str) -> Option<&str> {
        self.sni.get(&host.to_ascii_lowercase()).map(String::as_str)
    }

    pub fn backend(&self, name: &str) -> Option<&BackendSpec> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Whether database `db`, as a client names it, is some tenant's real database under a database rule's
    /// template (`globex_app`).
    pub fn is_real_database(&self, db: &str) -> bool {
        self.real_database_owner(db, None)
    }

    /// Whether `db` is the real database a rule's template gives some tenant other than `except` (all tenants with
    /// `None`).
    pub fn real_database_owner(&self, db: &str, except: Option<&str>) -> bool {
        self.real_name_owner(&self.index.database_templates, db, except, |rule, template, name| {
            matches!(&rule.placement, Placement::Database(t) if t == template) && rule.database.matches(name)
        })
    }

    /// Whether collection `collection` of `db`, as a client names it, is some tenant's real collection under a
    /// collection rule's template (`globex__invoices`).
    pub fn is_real_collection(&self, db: &str, collection: &str) -> bool {
        self.real_collection_owner(db, collection, None)
    }

    /// Whether `collection` of `db` is the real collection a rule's template gives some tenant other than `except`.
    pub fn real_collection_owner(&self, db: &str, collection: &str, except: Option<&str>) -> bool {
        self.real_name_owner(&self.index.collection_templates, collection, except, |rule, template, name| {
            matches!(&rule.placement, Placement::Collection(t) if t == template)
                && rule.database.matches(db)
                && rule.collection.matches(name)
        })
    }

    /// Whether `real` is the name one of `templates` gives some tenant other than `except` under one of its rules
    /// (`gives(rule, template, visible name)`). Each distinct template splits `real` once; only the tenant it
    /// names has its rules read.
    fn real_name_owner(
        &self,
        templates: &[Template],
        real: &str,
        except: Option<&str>,
        gives: impl Fn(&Rule, &Template, &str) -> bool,
    ) -> bool {
        templates.iter().any(|template| {
            template.split(real).is_some_and(|(tenant, name)| {
                except != Some(tenant)
                    && self.tenants.contains_key(tenant)
                    && self.rules_of(tenant).any(|rule| gives(rule, template, name))
            })
        })
    }

    /// Every rule, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules that apply to `tenant`, in file order: the general ones and the tenant's own, read through the
    /// index (each still checked to apply: the index only spares reading the others').
    pub fn rules_of<'p>(&'p self, tenant: &'p str) -> impl Iterator<Item = &'p Rule> + 'p {
        self.candidates(tenant).filter(move |r| r.applies_to(tenant))
    }

    /// The rules [`RuleIndex`] lists for `tenant`, in file order: a superset of those that apply to it.
    fn candidates(&self, tenant: &str) -> impl Iterator<Item = &Rule> + '_ {
        self.index.candidates(tenant, &self.rules)
    }

    /// The first of `tenant`'s rules whose patterns match `db` and `collection` (names as the tenant sees them).
    pub fn rule_for(&self, tenant: &str, db: &str, collection: &str) -> Option<&Rule> {
        self.candidates(tenant)
            .find(|r| r.applies_to(tenant) && r.database.matches(db) && r.collection.matches(collection))
    }

    /// The first of `tenant`'s rules whose database pattern matches `db`, whatever its collection pattern.
    pub fn any_rule_for_db(&self, tenant: &str, db: &str) -> Option<&Rule> {
        self.candidates(tenant).find(|r| r.applies_to(tenant) && r.database.matches(db))
    }

    /// The first of `tenant`'s rules covering a whole database (collection pattern `*`), for database-level
    /// commands.
    pub fn database_rule(&self, tenant: &str, db: &str) -> Option<&Rule> {
        self.candidates(tenant).find(|r| r.applies_to(tenant) && r.database.matches(db) && r.collection.as_str() == "*")
    }
}

/// Which rules apply to which tenant, computed once per policy. A policy grows a rule or two per tenant that was
/// moved (`tenants = [id]`, written by the mover): read on every command, a scan of every rule would cost each
/// command in proportion to the tenants moved, whoever sends it.
#[derive(Debug, Default)]
pub(super) struct RuleIndex {
    /// Positions of the rules without a tenant list (they apply to every tenant), in file order.
    general: Vec<usize>,
    /// For each tenant some rule names, the positions of every rule that applies to it (the general ones and
    /// its own), in file order. Empty in most policies.
    own: NameMap<String, Vec<usize>>,
    /// The distinct templates with `{tenant}` of database-mode rules, and of collection-mode rules: to find whose
    /// real name a name is, each splits the name once.
    database_templates: Vec<Template>,
    collection_templates: Vec<Template>,
}

impl RuleIndex {
    /// The rules listed for `tenant` (of `rules`, the ones the index was made of), in file order.
    fn candidates<'r>(&self, tenant: &str, rules: &'r [Rule]) -> impl Iterator<Item = &'r Rule> + use<'_, 'r> {
        let positions = match self.own.is_empty() {
            // Most policies: no rule names its tenants, so every tenant's rules are the general ones.
            true => &self.general,
            false => self.own.get(tenant).unwrap_or(&self.general),
        };
        positions.iter().filter_map(|&at| rules.get(at))
    }

    /// The rules listed for a tenant some rule names: its own and the general ones, in file order (nothing for any
    /// other tenant). Its session key digests the ones among them that name it.
    pub(super) fn own<'r>(&self, tenant: &str, rules: &'r [Rule]) -> impl Iterator<Item = &'r Rule> + use<'_, 'r> {
        self.own.get(tenant).into_iter().flatten().filter_map(|&at| rules.get(at))
    }

    pub(super) fn of(rules: &[Rule]) -> Self {
        let mut index = Self::default();
        for (at, rule) in rules.iter().enumerate() {
            if rule.tenants.is_none() {
                index.general.push(at);
            }
        }
        for (at, rule) in rules.iter().enumerate() {
            for tenant in rule.tenants.iter().flatten() {
                let own = index.own.entry(tenant.clone()).or_insert_with(Vec::new);
                // A tenant named twice in one rule's list reads it once.
                if own.last() != Some(&at) {
                    own.push(at);
                }
            }
        }
        for own in index.own.values_mut() {
            own.extend_from_slice(&index.general);
            own.sort_unstable();
        }
        for rule in rules {
            let (templates, template) = match &rule.placement {
                Placement::Database(t) => (&mut index.database_templates, t),
                Placement::Collection(t) => (&mut index.collection_templates, t),
                Placement::Field { .. } | Placement::Shared => continue,
            };
            if template.has_tenant() && !templates.contains(template) {
                templates.push(template.clone());
            }
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// General rules and rules of one or two tenants, interleaved, in every mode, with templates of both kinds.
    const POLICY: &str = r#"
[[listeners]]
address = "127.0.0.1:0"
[[backends]]
name = "main"
uri = "mongodb://127.0.0.1:1"
[[tenants]]
id = "acme"
backend = "main"
[[tenants]]
id = "globex"
backend = "main"
[[tenants]]
id = "initech"
backend = "main"
[[tenants]]
id = "umbrella"
backend = "main"
[[rules]]
tenants = ["acme"]
database = "app"
mode = "database"
[[rules]]
database = "app"
collection = "orders"
mode = "field"
[[rules]]
tenants = ["globex", "initech"]
database = "app"
collection = "invoices"
mode = "collection"
[[rules]]
database = "app"
collection = "*"
mode = "collection"
[[rules]]
tenants = ["umbrella"]
database = "logs"
mode = "shared"
[[rules]]
tenants = ["initech"]
database = "crm"
mode = "database"
[[rules]]
database = "reports"
mode = "database"
"#;

    /// The answers of the index equal a scan of every rule, for every tenant (and a stranger), name and owner.
    #[test]
    fn the_rule_index_answers_as_a_scan_of_every_rule() {
        let policy = Policy::from_toml(POLICY, Path::new("p.toml")).expect("compiles");
        assert!(!policy.index.own.is_empty(), "the policy has rules of its own for some tenants");
        let tenants = ["acme", "globex", "initech", "umbrella", "nobody"];
        let databases = ["app", "logs", "crm", "reports", "other", "acme_app", "initech_crm", "globex_reports", "x_y"];
        let collections = ["orders", "invoices", "globex__invoices", "acme__orders", "initech__x", "x"];
        let position = |rule: Option<&Rule>| rule.map(|r| r.index);
        let mut found = 0;
        for tenant in tenants {
            let scanned: Vec<usize> = policy.rules().iter().filter(|r| r.applies_to(tenant)).map(|r| r.index).collect();
            assert_eq!(policy.rules_of(tenant).map(|r| r.index).collect::<Vec<_>>(), scanned, "{tenant}");
            for db in databases {
                let scan =
                    |f: &dyn Fn(&Rule) -> bool| position(policy.rules().iter().find(|r| r.applies_to(tenant) && f(r)));
                assert_eq!(position(policy.any_rule_for_db(tenant, db)), scan(&|r| r.database.matches(db)));
                assert_eq!(
                    position(policy.database_rule(tenant, db)),
                    scan(&|r| r.database.matches(db) && r.collection.as_str() == "*")
                );
                for coll in collections {
                    let rule = policy.rule_for(tenant, db, coll);
                    found += usize::from(rule.is_some());
                    assert_eq!(
                        position(rule),
                        scan(&|r| r.database.matches(db) && r.collection.matches(coll)),
                        "{tenant} {db}.{coll}"
                    );
                }
            }
        }
        assert!(found > 20, "the cases reach rules ({found})");
        // Owners of real names, against the scan they replace.
        let database_owner = |db: &str, except: Option<&str>| {
            policy.rules().iter().any(|rule| {
                matches!(rule.placement, Placement::Database(_))
                    && rule.template().filter(|t| t.has_tenant()).and_then(|t| t.split(db)).is_some_and(|(t, name)| {
                        except != Some(t)
                            && policy.tenant(t).is_some()
                            && rule.applies_to(t)
                            && rule.database.matches(name)
                    })
            })
        };
        let collection_owner = |db: &str, coll: &str, except: Option<&str>| {
            policy.rules().iter().any(|rule| {
                matches!(rule.placement, Placement::Collection(_))
                    && rule.database.matches(db)
                    && rule.template().filter(|t| t.has_tenant()).and_then(|t| t.split(coll)).is_some_and(
                        |(t, name)| {
                            except != Some(t)
                                && policy.tenant(t).is_some()
                                && rule.applies_to(t)
                                && rule.collection.matches(name)
                        },
                    )
            })
        };
        let mut owned = 0;
        for except in [None, Some("acme"), Some("globex"), Some("initech")] {
            for db in databases {
                owned += usize::from(policy.real_database_owner(db, except));
                assert_eq!(policy.real_database_owner(db, except), database_owner(db, except), "{db} {except:?}");
                for coll in collections {
                    assert_eq!(
                        policy.real_collection_owner(db, coll, except),
                        collection_owner(db, coll, except),
                        "{db}.{coll} {except:?}"
                    );
                }
            }
        }
        assert!(owned > 3, "the cases reach real names ({owned})");
    }
}
