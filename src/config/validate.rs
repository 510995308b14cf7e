//! Semantic validation of a parsed policy file: every problem, each with its line, plus warnings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use toml::Spanned;

use super::{line_of, BackendUri, Mode, PolicyFile, Problem};
use crate::auth::ScramVerifier;
use crate::policy::rules::{Pattern, Template};
use crate::policy::tenant_value;

/// Databases no rule may open: the handshake, auth and session commands that need them are served by the proxy.
pub const RESERVED_DATABASES: &[&str] = &["admin", "config", "local"];

/// The outcome of validation.
#[derive(Debug, Default)]
pub struct Report {
    /// Problems that make the policy unusable.
    pub errors: Vec<Problem>,
    /// Things a reviewer should look at; the policy still loads.
    pub warnings: Vec<Problem>,
}

struct Collector<'a> {
    text: &'a str,
    report: Report,
}

impl Collector<'_> {
    fn line<T>(&self, spanned: &Spanned<T>) -> Option<usize> {
        let span = spanned.span();
        (span.end > 0).then(|| line_of(self.text, span.start))
    }
    fn error<T>(&mut self, at: Option<&Spanned<T>>, key: String, message: impl Into<String>) {
        let line = at.and_then(|s| self.line(s));
        self.report.errors.push(Problem { line, key, message: message.into() });
    }
    fn warn<T>(&mut self, at: Option<&Spanned<T>>, key: String, message: impl Into<String>) {
        let line = at.and_then(|s| self.line(s));
        self.report.warnings.push(Problem { line, key, message: message.into() });
    }
}

/// Tenant ids: ASCII letters, digits and `-`, 1 to 64 characters. No delimiter a name template could use.
pub fn valid_tenant_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

const NONE: Option<&Spanned<String>> = None;

/// Validates `file` (whose source is `text`); relative paths are resolved against `base`.
pub fn validate(file: &PolicyFile, text: &str, base: &Path) -> Report {
    let mut c = Collector { text, report: Report::default() };
    let tenant_ids: Vec<&str> = file.tenants.iter().map(|t| t.id.get_ref().as_str()).collect();

    if file.listeners.is_empty() {
        c.error(NONE, "listeners".into(), "at least one listener is required");
    }
    for (i, listener) in file.listeners.iter().enumerate() {
        if listener.address.get_ref().parse::<SocketAddr>().is_err() {
            let msg = format!("{:?} is not an ip:port address", listener.address.get_ref());
            c.error(Some(&listener.address), format!("listeners[{i}].address"), msg);
        }
        if let Some(tenant) = &listener.tenant {
            if !tenant_ids.contains(&tenant.get_ref().as_str()) {
                c.error(Some(tenant), format!("listeners[{i}].tenant"), format!("no tenant {:?}", tenant.get_ref()));
            }
        }
        if let Some(tls) = &listener.tls {
            for (what, path) in
                [("cert", Some(&tls.cert)), ("key", Some(&tls.key)), ("client_ca", tls.client_ca.as_ref())]
            {
                if let Some(path) = path {
                    if !base.join(path).is_file() {
                        c.error(
                            Some(&listener.address),
                            format!("listeners[{i}].tls.{what}"),
                            format!("{} is not a readable file", path.display()),
                        );
                    }
                }
            }
        }
    }

    if file.backends.is_empty() {
        c.error(NONE, "backends".into(), "at least one backend is required");
    }
    let mut backend_names: HashMap<&str, usize> = HashMap::new();
    for (i, backend) in file.backends.iter().enumerate() {
        let name = backend.name.get_ref();
        if name.is_empty() {
            c.error(Some(&backend.name), format!("backends[{i}].name"), "must not be empty");
        }
        if backend_names.insert(name, i).is_some() {
            c.error(Some(&backend.name), format!("backends[{i}].name"), format!("duplicate backend name {name:?}"));
        }
        match BackendUri::parse(backend.uri.get_ref()) {
            // The URI may hold a secret by mistake: never echo it.
            Err(message) => c.error(Some(&backend.uri), format!("backends[{i}].uri"), message),
            Ok(uri) if uri.tls && backend.tls_ca_file.is_none() => {
                c.error(Some(&backend.uri), format!("backends[{i}].tls_ca_file"), "tls=true needs tls_ca_file")
            }
            Ok(_) => {}
        }
        if let Some(ca) = &backend.tls_ca_file {
            if !base.join(ca).is_file() {
                c.error(
                    Some(&backend.name),
                    format!("backends[{i}].tls_ca_file"),
                    format!("{} is not a readable file", ca.display()),
                );
            }
        }
        match (&backend.username, &backend.password_env, &backend.password_file) {
            (None, None, None) => {}
            (None, _, _) => {
                c.error(Some(&backend.name), format!("backends[{i}]"), "password_env/password_file without username")
            }
            (Some(_), Some(_), Some(_)) | (Some(_), None, None) => c.error(
                Some(&backend.name),
                format!("backends[{i}]"),
                "username needs exactly one of password_env or password_file",
            ),
            (Some(_), Some(var), None) => {
                if std::env::var_os(var).is_none() {
                    c.warn(
                        Some(&backend.name),
                        format!("backends[{i}].password_env"),
                        format!("environment variable {var} is not set here"),
                    );
                }
            }
            (Some(_), None, Some(path)) => {
                if !base.join(path).is_file() {
                    c.warn(
                        Some(&backend.name),
                        format!("backends[{i}].password_file"),
                        format!("{} is not readable here", path.display()),
                    );
                }
            }
        }
        if let Some(v) = backend.max_wire_version {
            if !(6..=99).contains(&v) {
                c.error(Some(&backend.name), format!("backends[{i}].max_wire_version"), format!("{v} is out of range"));
            }
        }
    }

    validate_tenants(&mut c, file, &backend_names);
    validate_rules(&mut c, file);
    validate_name_collisions(&mut c, file);
    validate_limits(&mut c, file);
    c.report
}

fn validate_tenants(c: &mut Collector<'_>, file: &PolicyFile, backend_names: &HashMap<&str, usize>) {
    if file.tenants.is_empty() {
        c.warn(NONE, "tenants".into(), "no tenants: only the handshake will be served");
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut values: HashMap<String, usize> = HashMap::new();
    let mut users: HashMap<&str, usize> = HashMap::new();
    let mut subjects: HashMap<&str, usize> = HashMap::new();
    let mut snis: HashMap<String, usize> = HashMap::new();
    for (i, tenant) in file.tenants.iter().enumerate() {
        let id = tenant.id.get_ref();
        if !valid_tenant_id(id) {
            c.error(
                Some(&tenant.id),
                format!("tenants[{i}].id"),
                format!("{id:?} must be 1-64 ASCII letters, digits or '-'"),
            );
        }
        if let Some(first) = ids.insert(id, i) {
            c.error(
                Some(&tenant.id),
                format!("tenants[{i}].id"),
                format!("duplicate tenant id {id:?} (also tenants[{first}])"),
            );
        }
        if !backend_names.contains_key(tenant.backend.get_ref().as_str()) {
            c.error(
                Some(&tenant.backend),
                format!("tenants[{i}].backend"),
                format!("no backend {:?}", tenant.backend.get_ref()),
            );
        }
        let value = match &tenant.value {
            Some(v) => tenant_value(v.get_ref()).map_err(|e| (Some(v.span()), e)),
            None => crate::policy::TenantValue::new(bson::Bson::String(id.clone())).map_err(|e| (None, e)),
        };
        match value {
            Ok(value) => {
                // Two tenants with equal values would read each other's rows in every shared collection; equal
                // as the server compares (42 and NumberLong(42) are one value).
                let key = value.canonical_key();
                if let Some(first) = values.insert(key, i) {
                    c.error(
                        Some(&tenant.id),
                        format!("tenants[{i}].value"),
                        format!("same tenant value as tenants[{first}] (MongoDB compares numbers across types)"),
                    );
                }
            }
            Err((_, message)) => {
                let at = tenant.value.as_ref();
                let line = at.map(|v| line_of(c.text, v.span().start));
                c.report.errors.push(Problem { line, key: format!("tenants[{i}].value"), message });
            }
        }
        for (j, user) in tenant.users.iter().enumerate() {
            let name = user.name.get_ref();
            if name.is_empty() {
                c.error(Some(&user.name), format!("tenants[{i}].users[{j}].name"), "must not be empty");
            }
            if let Some(first) = users.insert(name, i) {
                c.error(
                    Some(&user.name),
                    format!("tenants[{i}].users[{j}].name"),
                    format!("user {name:?} already identifies tenants[{first}]"),
                );
            }
            if let Err(e) = ScramVerifier::from_str(user.scram.get_ref()) {
                c.error(Some(&user.scram), format!("tenants[{i}].users[{j}].scram"), e.to_string());
            }
        }
        for (j, subject) in tenant.cert_subjects.iter().enumerate() {
            if let Some(first) = subjects.insert(subject.get_ref(), i) {
                c.error(
                    Some(subject),
                    format!("tenants[{i}].cert_subjects[{j}]"),
                    format!("subject already identifies tenants[{first}]"),
                );
            }
        }
        for (j, host) in tenant.sni.iter().enumerate() {
            if let Some(first) = snis.insert(host.get_ref().to_ascii_lowercase(), i) {
                c.error(
                    Some(host),
                    format!("tenants[{i}].sni[{j}]"),
                    format!("host name already identifies tenants[{first}]"),
                );
            }
        }
        let bound = file.listeners.iter().any(|l| l.tenant.as_ref().is_some_and(|t| t.get_ref() == id));
        if tenant.users.is_empty() && tenant.cert_subjects.is_empty() && tenant.sni.is_empty() && !bound {
            c.warn(
                Some(&tenant.id),
                format!("tenants[{i}]"),
                format!("tenant {id:?} has no identity and no listener: nobody can connect as it"),
            );
        }
    }
}

fn validate_rules(c: &mut Collector<'_>, file: &PolicyFile) {
    if !file.tenants.is_empty() && file.rules.is_empty() {
        c.warn(NONE, "rules".into(), "no rules: every data command will be denied");
    }
    let mut seen: Vec<(Pattern, Pattern, usize)> = Vec::new();
    for (i, rule) in file.rules.iter().enumerate() {
        let mode = *rule.mode.get_ref();
        let db = match Pattern::parse(rule.database.get_ref(), false) {
            Ok(p) => Some(p),
            Err(e) => {
                c.error(Some(&rule.database), format!("rules[{i}].database"), e);
                None
            }
        };
        // Globs may cover them harmlessly (reserved databases are refused before rules are consulted); naming
        // one outright is a mistake worth stopping.
        if let Some(reserved) = RESERVED_DATABASES.iter().find(|r| *r == rule.database.get_ref()) {
            c.error(
                Some(&rule.database),
                format!("rules[{i}].database"),
                format!("the {reserved} database is never reachable through a rule"),
            );
        }
        let coll = match Pattern::parse(rule.collection.get_ref(), true) {
            Ok(p) => Some(p),
            Err(e) => {
                c.error(Some(&rule.collection), format!("rules[{i}].collection"), e);
                None
            }
        };
        if let Some(field) = &rule.field {
            if mode != Mode::Field {
                c.error(Some(field), format!("rules[{i}].field"), "field applies only to mode \"field\"");
            }
            let name = field.get_ref();
            if name.is_empty() || name.starts_with('$') || name.contains('.') || name.contains('\0') {
                c.error(
                    Some(field),
                    format!("rules[{i}].field"),
                    format!("{name:?} is not a plain top-level field name"),
                );
            }
        }
        if let Some(style) = &rule.style {
            if mode != Mode::Field {
                c.error(Some(style), format!("rules[{i}].style"), "style applies only to mode \"field\"");
            }
        }
        match (&rule.template, mode) {
            (Some(t), Mode::Collection | Mode::Database) => {
                if let Err(e) = Template::parse(t.get_ref(), mode) {
                    c.error(Some(t), format!("rules[{i}].template"), e);
                } else if mode == Mode::Database && !t.get_ref().contains("{tenant}") {
                    // Same database names for every tenant are only isolated if no two tenants share a backend.
                    let mut per_backend: HashMap<&str, usize> = HashMap::new();
                    for tenant in &file.tenants {
                        *per_backend.entry(tenant.backend.get_ref()).or_default() += 1;
                    }
                    if per_backend.values().any(|n| *n > 1) {
                        c.error(
                            Some(t),
                            format!("rules[{i}].template"),
                            "a template without {tenant} needs every tenant on a backend of its own",
                        );
                    }
                }
            }
            (Some(t), _) => c.error(
                Some(t),
                format!("rules[{i}].template"),
                "template applies only to modes \"collection\" and \"database\"",
            ),
            (None, _) => {}
        }
        let renames_database = mode == Mode::Database && rule.template.as_ref().is_none_or(|t| t.get_ref() != "{db}");
        if renames_database && rule.collection.get_ref() != "*" {
            c.error(
                Some(&rule.collection),
                format!("rules[{i}].collection"),
                "database rules that rename the database cover every collection: use \"*\"",
            );
        }
        if let (Some(db), Some(coll)) = (db, coll) {
            // A renamed database cannot share a database name with another rule: one command would need two
            // real databases.
            let clash = file.rules.iter().enumerate().take(i).find(|(_, other)| {
                let other_renames = *other.mode.get_ref() == Mode::Database
                    && other.template.as_ref().is_none_or(|t| t.get_ref() != "{db}");
                (renames_database || other_renames)
                    && Pattern::parse(other.database.get_ref(), false).is_ok_and(|p| p.overlaps(&db))
            });
            if let Some((j, _)) = clash {
                c.error(
                    Some(&rule.database),
                    format!("rules[{i}].database"),
                    format!("shares databases with rules[{j}], but one of them renames the database"),
                );
            }
            if let Some((_, _, first)) = seen.iter().find(|(d, k, _)| d.overlaps(&db) && k.overlaps(&coll)) {
                c.warn(
                    Some(&rule.database),
                    format!("rules[{i}]"),
                    format!("overlaps rules[{first}]; the first matching rule wins"),
                );
            }
            seen.push((db, coll, i));
        }
    }
}

/// A rule that keeps names as they are (field, shared, or a template without `{tenant}`) must not match another
/// rule's per-tenant real names: through it, one tenant could name another's collection or database
/// (`app.*` in field mode would reach `globex__invoices`). The proxy refuses such names at run time whatever the
/// policy; a policy that relies on that is ambiguous and refused here.
fn validate_name_collisions(c: &mut Collector<'_>, file: &PolicyFile) {
    let tenants: Vec<&str> = file.tenants.iter().map(|t| t.id.get_ref().as_str()).collect();
    let parsed: Vec<Option<(Pattern, Pattern, Mode, Option<Template>)>> = file
        .rules
        .iter()
        .map(|r| {
            let mode = *r.mode.get_ref();
            let db = Pattern::parse(r.database.get_ref(), false).ok()?;
            let coll = Pattern::parse(r.collection.get_ref(), true).ok()?;
            let default = match mode {
                Mode::Collection => Some(crate::policy::DEFAULT_COLLECTION_TEMPLATE),
                Mode::Database => Some(crate::policy::DEFAULT_DATABASE_TEMPLATE),
                Mode::Field | Mode::Shared => None,
            };
            let template = match r.template.as_ref().map(|t| t.get_ref().as_str()).or(default) {
                Some(t) => Some(Template::parse(t, mode).ok()?),
                None => None,
            };
            Some((db, coll, mode, template))
        })
        .collect();
    for (i, rule) in parsed.iter().enumerate() {
        let Some((db, coll, _, template)) = rule else { continue };
        if template.as_ref().is_some_and(Template::has_tenant) {
            continue;
        }
        for (j, other) in parsed.iter().enumerate() {
            let Some((other_db, other_coll, other_mode, Some(other_template))) = other else { continue };
            if j == i || !other_template.has_tenant() {
                continue;
            }
            let sample = |p: &Pattern| p.as_str().replace('*', "x");
            let example = tenants.iter().find_map(|t| match other_mode {
                Mode::Collection if db.overlaps(other_db) => {
                    let real = other_template.render(t, &sample(other_coll));
                    coll.matches(&real).then(|| format!("{}.{real}", sample(db)))
                }
                Mode::Database => {
                    let real = other_template.render(t, &sample(other_db));
                    db.matches(&real).then_some(real)
                }
                _ => None,
            });
            if let Some(example) = example {
                let at = file.rules.get(i).map(|r| &r.database);
                c.error(
                    at,
                    format!("rules[{i}]"),
                    format!(
                        "matches names rules[{j}] gives each tenant (e.g. {example}): through it a tenant could \
                         reach another tenant's data; use names that cannot match, or another database"
                    ),
                );
                break;
            }
        }
    }
}

fn validate_limits(c: &mut Collector<'_>, file: &PolicyFile) {
    let limits = &file.limits;
    for (key, value) in [
        ("max_connections", limits.max_connections),
        ("max_unauthenticated_connections", limits.max_unauthenticated_connections),
        ("max_connections_per_ip", limits.max_connections_per_ip),
        ("max_cursors", limits.max_cursors),
        ("max_cursors_per_tenant", limits.max_cursors_per_tenant),
    ] {
        if value == 0 {
            c.error(NONE, format!("limits.{key}"), "must be at least 1");
        }
    }
    if !(1024..=tenantwall_protocol::MAX_MESSAGE_SIZE).contains(&limits.max_message_bytes) {
        let msg = format!("must be between 1024 and {}", tenantwall_protocol::MAX_MESSAGE_SIZE);
        c.error(NONE, "limits.max_message_bytes".into(), msg);
    }
    if !(1024..=tenantwall_protocol::MAX_MESSAGE_SIZE).contains(&limits.max_unauthenticated_message_bytes) {
        let msg = format!("must be between 1024 and {}", tenantwall_protocol::MAX_MESSAGE_SIZE);
        c.error(NONE, "limits.max_unauthenticated_message_bytes".into(), msg);
    }
    if limits.max_buffered_bytes < limits.max_message_bytes {
        c.error(NONE, "limits.max_buffered_bytes".into(), "must be at least limits.max_message_bytes");
    }
    for (key, value) in [
        ("frame_timeout_secs", limits.frame_timeout_secs),
        ("backend_connect_timeout_ms", limits.backend_connect_timeout_ms),
        ("backend_timeout_ms", limits.backend_timeout_ms),
        ("client_write_timeout_secs", limits.client_write_timeout_secs),
        ("auth_failures_before_refusal", u64::from(limits.auth_failures_before_refusal)),
        ("auth_failure_window_secs", limits.auth_failure_window_secs),
        ("auth_timeout_secs", limits.auth_timeout_secs),
    ] {
        if value == 0 {
            c.error(NONE, format!("limits.{key}"), "must be at least 1");
        }
    }
}
