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
    pub rules: Vec<Rule>,
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
        self.rules.iter().any(|rule| {
            matches!(rule.placement, Placement::Database(_))
                && rule.template().filter(|t| t.has_tenant()).and_then(|t| t.split(db)).is_some_and(|(tenant, name)| {
                    except != Some(tenant)
                        && self.tenants.contains_key(tenant)
                        && rule.applies_to(tenant)
                        && rule.database.matches(name)
                })
        })
    }

    /// Whether collection `collection` of `db`, as a client names it, is some tenant's real collection under a
    /// collection rule's template (`globex__invoices`).
    pub fn is_real_collection(&self, db: &str, collection: &str) -> bool {
        self.real_collection_owner(db, collection, None)
    }

    /// Whether `collection` of `db` is the real collection a rule's template gives some tenant other than `except`.
    pub fn real_collection_owner(&self, db: &str, collection: &str, except: Option<&str>) -> bool {
        self.rules.iter().any(|rule| {
            matches!(rule.placement, Placement::Collection(_))
                && rule.database.matches(db)
                && rule.template().filter(|t| t.has_tenant()).and_then(|t| t.split(collection)).is_some_and(
                    |(tenant, name)| {
                        except != Some(tenant)
                            && self.tenants.contains_key(tenant)
                            && rule.applies_to(tenant)
                            && rule.collection.matches(name)
                    },
                )
        })
    }

    /// The rules that apply to `tenant`, in file order.
    pub fn rules_of<'p>(&'p self, tenant: &'p str) -> impl Iterator<Item = &'p Rule> + 'p {
        self.rules.iter().filter(move |r| r.applies_to(tenant))
    }

    /// The first of `tenant`'s rules whose patterns match `db` and `collection` (names as the tenant sees them).
    pub fn rule_for(&self, tenant: &str, db: &str, collection: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.applies_to(tenant) && r.database.matches(db) && r.collection.matches(collection))
    }

    /// The first of `tenant`'s rules whose database pattern matches `db`, whatever its collection pattern.
    pub fn any_rule_for_db(&self, tenant: &str, db: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.applies_to(tenant) && r.database.matches(db))
    }

    /// The first of `tenant`'s rules covering a whole database (collection pattern `*`), for database-level
    /// commands.
    pub fn database_rule(&self, tenant: &str, db: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.applies_to(tenant) && r.database.matches(db) && r.collection.as_str() == "*")
    }
}
