//! The compiled policy: tenants, identities, backends and rules, ready for lookups on the request path.
//!
//! A [`Policy`] is built only from a file that validated; it is immutable and shared behind an `Arc`, and a
//! reload builds a new one and swaps it in whole. It owns identity resolution (which tenant a SCRAM user,
//! certificate subject or SNI name belongs to) and rule lookup. It resolves backend secrets at build time and
//! keeps them out of `Debug` output.

pub mod rules;
pub mod value;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use bson::Bson;

use crate::auth::ScramVerifier;
use crate::config::{self, BackendUri, ConfigError, Limits, Mode, PolicyFile, Problem, Style};
use crate::tls;
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
}

/// A listener as configured.
#[derive(Debug, Clone)]
pub struct Listener {
    pub address: String,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Tenant every connection on this listener belongs to.
    pub tenant: Option<String>,
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
}

impl Rule {
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

    /// `rules[N] (db.collection, mode)` for error messages.
    pub fn describe(&self) -> String {
        let mode = match self.mode() {
            Mode::Field => "field",
            Mode::Collection => "collection",
            Mode::Database => "database",
            Mode::Shared => "shared",
        };
        format!("rules[{}] ({}.{}, {mode})", self.index, self.database.as_str(), self.collection.as_str())
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
    /// Reads, validates and compiles a policy file.
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        let (file, text) = config::read(path)?;
        Self::compile(&file, &text, path, true)
    }

    /// Like [`Policy::load`], without reading backend secrets: for `explain` and `test`, which open no backend
    /// connection and run where the secrets are not.
    pub fn load_for_analysis(path: &Path) -> Result<Policy, ConfigError> {
        let (file, text) = config::read(path)?;
        Self::compile(&file, &text, path, false)
    }

    /// Parses, validates and compiles policy text; `path` labels errors and anchors relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Policy, ConfigError> {
        let file = config::parse(text, path)?;
        Self::compile(&file, text, path, true)
    }

    fn compile(file: &PolicyFile, text: &str, path: &Path, resolve_secrets: bool) -> Result<Policy, ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let report = config::validate(file, text, base);
        if !report.errors.is_empty() {
            return Err(ConfigError::Invalid { path: path.to_owned(), problems: report.errors });
        }
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            problems: vec![Problem { line: None, key, message }],
        };

        let mut listeners = Vec::new();
        for (i, l) in file.listeners.iter().enumerate() {
            let tls = match &l.tls {
                Some(t) => Some(
                    tls::server_config(
                        &base.join(&t.cert),
                        &base.join(&t.key),
                        t.client_ca.as_ref().map(|p| base.join(p)).as_deref(),
                    )
                    .map_err(|e| invalid(format!("listeners[{i}].tls"), e.to_string()))?,
                ),
                None => None,
            };
            listeners.push(Listener {
                address: l.address.get_ref().clone(),
                tls,
                tenant: l.tenant.as_ref().map(|t| t.get_ref().clone()),
            });
        }

        let mut backends = Vec::new();
        for (i, b) in file.backends.iter().enumerate() {
            let uri = BackendUri::parse(b.uri.get_ref()).map_err(|e| invalid(format!("backends[{i}].uri"), e))?;
            // Compiling never relies on validation having run: TLS without a CA is an error here too, never a
            // plaintext connection.
            let tls = match (&b.tls_ca_file, uri.tls) {
                (Some(ca), true) => Some(
                    tls::client_config(&base.join(ca))
                        .map_err(|e| invalid(format!("backends[{i}].tls_ca_file"), e.to_string()))?,
                ),
                (None, true) => {
                    return Err(invalid(format!("backends[{i}].tls_ca_file"), "tls=true needs tls_ca_file".into()))
                }
                (_, false) => None,
            };
            let credentials = match &b.username {
                Some(username) if !resolve_secrets => Some(Credentials {
                    username: username.clone(),
                    password: Secret(String::new()),
                    auth_source: b.auth_source.clone(),
                }),
                Some(username) => {
                    let password = match (&b.password_env, &b.password_file) {
                        (Some(var), _) => std::env::var(var).map_err(|_| {
                            invalid(
                                format!("backends[{i}].password_env"),
                                format!("environment variable {var} is not set"),
                            )
                        })?,
                        (None, Some(file)) => std::fs::read_to_string(base.join(file))
                            .map_err(|e| {
                                invalid(format!("backends[{i}].password_file"), format!("{}: {e}", file.display()))
                            })?
                            .trim_end_matches(['\n', '\r'])
                            .to_owned(),
                        (None, None) => return Err(invalid(format!("backends[{i}]"), "no password source".into())),
                    };
                    Some(Credentials {
                        username: username.clone(),
                        password: Secret(password),
                        auth_source: b.auth_source.clone(),
                    })
                }
                None => None,
            };
            backends.push(BackendSpec {
                name: b.name.get_ref().clone(),
                hosts: uri.hosts,
                tls,
                credentials,
                max_wire_version: b.max_wire_version,
            });
        }

        let mut tenants = HashMap::new();
        let mut users = HashMap::new();
        let mut subjects = HashMap::new();
        let mut sni = HashMap::new();
        for (i, t) in file.tenants.iter().enumerate() {
            let id = t.id.get_ref().clone();
            let value = match &t.value {
                Some(v) => tenant_value(v.get_ref()).map_err(|e| invalid(format!("tenants[{i}].value"), e))?,
                None => {
                    TenantValue::new(Bson::String(id.clone())).map_err(|e| invalid(format!("tenants[{i}].id"), e))?
                }
            };
            for u in &t.users {
                let verifier = ScramVerifier::from_str(u.scram.get_ref())
                    .map_err(|e| invalid(format!("tenants[{i}].users"), e.to_string()))?;
                users.insert(u.name.get_ref().clone(), (id.clone(), verifier));
            }
            for s in &t.cert_subjects {
                subjects.insert(s.get_ref().clone(), id.clone());
            }
            for h in &t.sni {
                sni.insert(h.get_ref().to_ascii_lowercase(), id.clone());
            }
            let max_time_ms = t.max_time_ms.or(file.limits.max_time_ms).filter(|ms| *ms > 0);
            let allow_disk_use = t.allow_disk_use;
            let backend = t.backend.get_ref().clone();
            tenants.insert(id.clone(), Arc::new(Tenant { id, value, backend, max_time_ms, allow_disk_use }));
        }

        let mut rules = Vec::new();
        for (i, r) in file.rules.iter().enumerate() {
            let template = |default: &str| {
                let text = r.template.as_ref().map_or(default, |t| t.get_ref().as_str());
                Template::parse(text, *r.mode.get_ref()).map_err(|e| invalid(format!("rules[{i}].template"), e))
            };
            let placement = match r.mode.get_ref() {
                Mode::Field => Placement::Field {
                    field: FieldName::new(r.field.as_ref().map_or(DEFAULT_TENANT_FIELD, |f| f.get_ref().as_str()))
                        .map_err(|e| invalid(format!("rules[{i}].field"), e))?,
                    style: r.style.as_ref().map_or(Style::default(), |s| *s.get_ref()),
                },
                Mode::Collection => Placement::Collection(template(DEFAULT_COLLECTION_TEMPLATE)?),
                Mode::Database => Placement::Database(template(DEFAULT_DATABASE_TEMPLATE)?),
                Mode::Shared => Placement::Shared,
            };
            rules.push(Rule {
                index: i,
                database: Pattern::parse(r.database.get_ref(), false)
                    .map_err(|e| invalid(format!("rules[{i}].database"), e))?,
                collection: Pattern::parse(r.collection.get_ref(), true)
                    .map_err(|e| invalid(format!("rules[{i}].collection"), e))?,
                placement,
            });
        }

        Ok(Policy {
            path: path.to_owned(),
            listeners,
            backends,
            tenants,
            users,
            subjects,
            sni,
            rules,
            limits: file.limits.clone(),
            warnings: report.warnings,
        })
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
        self.rules.iter().any(|rule| {
            matches!(rule.placement, Placement::Database(_))
                && rule
                    .template()
                    .filter(|t| t.has_tenant())
                    .and_then(|t| t.split(db))
                    .is_some_and(|(tenant, name)| self.tenants.contains_key(tenant) && rule.database.matches(name))
        })
    }

    /// Whether collection `collection` of `db`, as a client names it, is some tenant's real collection under a
    /// collection rule's template (`globex__invoices`).
    pub fn is_real_collection(&self, db: &str, collection: &str) -> bool {
        self.rules.iter().any(|rule| {
            matches!(rule.placement, Placement::Collection(_))
                && rule.database.matches(db)
                && rule
                    .template()
                    .filter(|t| t.has_tenant())
                    .and_then(|t| t.split(collection))
                    .is_some_and(|(tenant, name)| self.tenants.contains_key(tenant) && rule.collection.matches(name))
        })
    }

    /// The first rule whose patterns match `db` and `collection` (names as the tenant sees them).
    pub fn rule_for(&self, db: &str, collection: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.database.matches(db) && r.collection.matches(collection))
    }

    /// The first rule whose database pattern matches `db`, whatever its collection pattern.
    pub fn any_rule_for_db(&self, db: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.database.matches(db))
    }

    /// The first rule covering a whole database (collection pattern `*`), for database-level commands.
    pub fn database_rule(&self, db: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.database.matches(db) && r.collection.as_str() == "*")
    }
}
