//! One compile: a parsed policy file is checked and built in a single pass, section by section.
//!
//! Every value is parsed exactly once, into the type the engine uses ([`Pattern`], [`Template`], [`FieldName`],
//! [`TenantValue`], the rule's [`Placement`]); a problem is recorded with its line and key where it is found, and
//! the section goes on so that every problem is reported at once. A policy exists only when there were none:
//! nothing is built from a value that failed its check, so there is no fallback to get wrong (TLS without a CA,
//! a field name that is not a C string, a template that renders twice).
//!
//! What it must never do: echo a secret (URIs with credentials are refused without being shown), or read a
//! secret when compiling for analysis (`check`, `explain`, `test`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use toml::Spanned;

use super::rules::{Pattern, Template};
use super::value::{FieldName, TenantValue};
use super::{
    tenant_value, AdminSettings, AuditSettings, AuditTarget, BackendSpec, Credentials, Listener, Placement, Policy,
    RateLimit, Rule, Secret, Tenant, DEFAULT_COLLECTION_TEMPLATE, DEFAULT_DATABASE_TEMPLATE, DEFAULT_TENANT_FIELD,
};
use crate::auth::ScramVerifier;
use crate::config::{BackendUri, Mode, PolicyFile, Problem, RateLimitConfig, Style};
use crate::tls;

/// Databases no rule may open: the handshake, auth and session commands that need them are served by the proxy.
pub const RESERVED_DATABASES: &[&str] = &["admin", "config", "local"];

/// Tenant ids: ASCII letters, digits and `-`, 1 to 64 characters. No delimiter a name template could use.
pub fn valid_tenant_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether to read backend secrets while compiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read them: the policy will open backend connections.
    Read,
    /// Leave them: `check`, `explain` and `test` run where the secrets are not. Missing ones are warnings.
    Skip,
}

/// The outcome of compiling a policy file: the policy when there were no errors, and every problem found.
#[derive(Debug)]
pub struct Compilation {
    pub policy: Option<Policy>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

struct Collector<'a> {
    text: &'a str,
    /// Where each line after the first begins in `text`, found once: a policy of thousands of tenants can have a
    /// problem per tenant, and counting lines from the top for each would cost the file's length every time.
    line_starts: Vec<usize>,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Collector<'_> {
    fn line<T>(&self, spanned: &Spanned<T>) -> Option<usize> {
        let span = spanned.span();
        (span.end > 0).then(|| {
            // What `line_of` counts, by a binary search of the line starts: lines beginning at or before `start`.
            let start = span.start.min(self.text.len());
            self.line_starts.partition_point(|&line| line <= start) + 1
        })
    }
    fn error<T>(&mut self, at: Option<&Spanned<T>>, key: String, message: impl Into<String>) {
        let line = at.and_then(|s| self.line(s));
        self.errors.push(Problem { line, key, message: message.into() });
    }
    fn warn<T>(&mut self, at: Option<&Spanned<T>>, key: String, message: impl Into<String>) {
        let line = at.and_then(|s| self.line(s));
        self.warnings.push(Problem { line, key, message: message.into() });
    }
    /// `Some(value)` when `result` is `Ok`, else records the error.
    fn ok<T, S>(&mut self, result: Result<T, String>, at: Option<&Spanned<S>>, key: impl Fn() -> String) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(at, key(), message);
                None
            }
        }
    }
}

/// Whether no collation MongoDB accepts can make two of these tenant values compare equal.
///
/// A collation only changes how strings compare, so integer, ObjectId and UUID values are never affected, and a
/// string never equals a value of another type. Two string values are kept apart only if their keys differ,
/// where the key over-approximates what any collation may ignore: case (strength 1 and 2), diacritics (only
/// ASCII values qualify, so there are none to remove), punctuation, whitespace and symbols (`alternate:
/// "shifted"`, taken wider than `maxVariable` allows), leading zeros of digit runs (`numericOrdering`),
/// Hungarian's doubled-consonant shorthand (`ccs` sorts as `cscs` in locale `hu`), and letters that locale
/// tailorings make differ only at the second level, so that strength 1 finds them equal (`w` is a variant of `v`
/// in Finnish and Estonian, `y` of `i` in Lithuanian). A value with any character
/// outside ASCII cannot be proved apart and makes the policy unsafe. Computed once per compile.
pub fn collation_safe<'a>(values: impl Iterator<Item = &'a super::TenantValue>) -> bool {
    let mut keys = std::collections::HashSet::new();
    for value in values {
        if let bson::Bson::String(s) = value.bson() {
            match collation_key(s) {
                Some(key) if keys.insert(key.clone()) => {}
                _ => return false,
            }
        }
    }
    true
}

/// The key of [`collation_safe`]; `None` for a string it cannot reason about (non-ASCII).
fn collation_key(value: &str) -> Option<String> {
    if !value.is_ascii() {
        return None;
    }
    let letters: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| match c.to_ascii_lowercase() {
            'w' => 'v',
            'y' => 'i',
            other => other,
        })
        .collect();
    // numericOrdering: "007" equals "7".
    let mut key = String::with_capacity(letters.len());
    let mut run = String::new();
    for c in letters.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        if !run.is_empty() {
            let trimmed = run.trim_start_matches('0');
            key.push_str(if trimmed.is_empty() { "0" } else { trimmed });
            run.clear();
        }
        if c != ' ' {
            key.push(c);
        }
    }
    // Written after the folds above (`y` is already `i`).
    for (short, long) in [
        ("ddzs", "dzsdzs"),
        ("ccs", "cscs"),
        ("ddz", "dzdz"),
        ("ggi", "gigi"),
        ("lli", "lili"),
        ("nni", "nini"),
        ("ssz", "szsz"),
        ("tti", "titi"),
        ("zzs", "zszs"),
    ] {
        key = key.replace(short, long);
    }
    Some(key)
}

const NONE: Option<&Spanned<String>> = None;

/// Checks and builds `file` (whose source is `text`, read from `path`) in one pass.
pub fn compile(file: &PolicyFile, text: &str, path: &Path, secrets: Secrets) -> Compilation {
    let base = path.parent().unwrap_or(Path::new("."));
    let line_starts = text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(at, _)| at + 1).collect();
    let mut c = Collector { text, line_starts, errors: Vec::new(), warnings: Vec::new() };
    let listeners = listeners(&mut c, file, base);
    let backends = backends(&mut c, file, base, secrets);
    let mut tenants = tenants(&mut c, file);
    let rules = rules(&mut c, file);
    let index = super::RuleIndex::of(&rules);
    for tenant in tenants.tenants.values_mut() {
        let key = session_key(&tenant.id, &rules, &index);
        Arc::make_mut(tenant).session_key = key;
    }
    name_collisions(&mut c, file, &rules);
    limits(&mut c, file);
    let admin = admin(&mut c, file, secrets);
    let audit = audit(&mut c, file, base);
    let collation_safe = collation_safe(tenants.tenants.values().map(|t| &t.value));
    let policy = c.errors.is_empty().then(|| Policy {
        path: path.to_owned(),
        listeners,
        backends,
        tenants: tenants.tenants,
        users: tenants.users,
        subjects: tenants.subjects,
        sni: tenants.sni,
        index,
        rules,
        limits: file.limits.clone(),
        admin,
        audit,
        collation_safe,
        warnings: c.warnings.clone(),
    });
    Compilation { policy, errors: c.errors, warnings: c.warnings }
}

fn listeners(c: &mut Collector<'_>, file: &PolicyFile, base: &Path) -> Vec<Listener> {
    let tenant_ids: Vec<&str> = file.tenants.iter().map(|t| t.id.get_ref().as_str()).collect();
    if file.listeners.is_empty() {
        c.error(NONE, "listeners".into(), "at least one listener is required");
    }
    let mut out = Vec::new();
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
        let mut tls_config = None;
        if let Some(tls) = &listener.tls {
            let mut readable = true;
            for (what, path) in
                [("cert", Some(&tls.cert)), ("key", Some(&tls.key)), ("client_ca", tls.client_ca.as_ref())]
            {
                if let Some(path) = path {
                    if !base.join(path).is_file() {
                        readable = false;
                        c.error(
                            Some(&listener.address),
                            format!("listeners[{i}].tls.{what}"),
                            format!("{} is not a readable file", path.display()),
                        );
                    }
                }
            }
            if readable {
                let built = tls::server_config(
                    &base.join(&tls.cert),
                    &base.join(&tls.key),
                    tls.client_ca.as_ref().map(|p| base.join(p)).as_deref(),
                )
                .map_err(|e| e.to_string());
                tls_config = c.ok(built, Some(&listener.address), || format!("listeners[{i}].tls"));
            }
        }
        let face = listener.face.as_ref().and_then(|face| {
            let built = crate::handshake::ReplicaSetFace::new(&face.get_ref().replica_set, &face.get_ref().host);
            c.ok(built, Some(face), || format!("listeners[{i}].face"))
        });
        out.push(Listener {
            address: listener.address.get_ref().clone(),
            tls: tls_config,
            tenant: listener.tenant.as_ref().map(|t| t.get_ref().clone()),
            face,
        });
    }
    out
}

fn backends(c: &mut Collector<'_>, file: &PolicyFile, base: &Path, secrets: Secrets) -> Vec<BackendSpec> {
    if file.backends.is_empty() {
        c.error(NONE, "backends".into(), "at least one backend is required");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, backend) in file.backends.iter().enumerate() {
        let name = backend.name.get_ref();
        if name.is_empty() {
            c.error(Some(&backend.name), format!("backends[{i}].name"), "must not be empty");
        }
        if names.insert(name, i).is_some() {
            c.error(Some(&backend.name), format!("backends[{i}].name"), format!("duplicate backend name {name:?}"));
        }
        // The URI may hold a secret by mistake: never echo it.
        let uri = c.ok(BackendUri::parse(backend.uri.get_ref()), Some(&backend.uri), || format!("backends[{i}].uri"));
        if let Some(ca) = &backend.tls_ca_file {
            if !base.join(ca).is_file() {
                c.error(
                    Some(&backend.name),
                    format!("backends[{i}].tls_ca_file"),
                    format!("{} is not a readable file", ca.display()),
                );
            }
        }
        // TLS without a CA is an error, never a plaintext connection.
        let tls = match (&backend.tls_ca_file, uri.as_ref().map(|u| u.tls)) {
            (None, Some(true)) => {
                c.error(Some(&backend.uri), format!("backends[{i}].tls_ca_file"), "tls=true needs tls_ca_file");
                None
            }
            (Some(ca), Some(true)) if base.join(ca).is_file() => {
                let built = tls::client_config(&base.join(ca)).map_err(|e| e.to_string());
                c.ok(built, Some(&backend.name), || format!("backends[{i}].tls_ca_file"))
            }
            _ => None,
        };
        let credentials = credentials(c, backend, i, base, secrets);
        if let Some(v) = backend.max_wire_version {
            if !(6..=99).contains(&v) {
                c.error(Some(&backend.name), format!("backends[{i}].max_wire_version"), format!("{v} is out of range"));
            }
        }
        if !(1..=10_000).contains(&backend.max_connections) {
            c.error(
                Some(&backend.name),
                format!("backends[{i}].max_connections"),
                format!("{} is out of range (1 to 10000)", backend.max_connections),
            );
        }
        if let Some(uri) = uri {
            out.push(BackendSpec {
                name: name.clone(),
                hosts: uri.hosts,
                tls,
                credentials,
                max_wire_version: backend.max_wire_version,
                max_connections: backend.max_connections,
            });
        }
    }
    out
}

fn credentials(
    c: &mut Collector<'_>,
    backend: &crate::config::BackendConfig,
    i: usize,
    base: &Path,
    secrets: Secrets,
) -> Option<Credentials> {
    let at = Some(&backend.name);
    let with = |password: String, username: &String| Credentials {
        username: username.clone(),
        password: Secret(password),
        auth_source: backend.auth_source.clone(),
    };
    match (&backend.username, &backend.password_env, &backend.password_file) {
        (None, None, None) => None,
        (None, _, _) => {
            c.error(at, format!("backends[{i}]"), "password_env/password_file without username");
            None
        }
        (Some(_), Some(_), Some(_)) | (Some(_), None, None) => {
            c.error(at, format!("backends[{i}]"), "username needs exactly one of password_env or password_file");
            None
        }
        (Some(username), Some(var), None) => match (std::env::var(var), secrets) {
            (Ok(password), Secrets::Read) => Some(with(password, username)),
            (_, Secrets::Skip) => {
                if std::env::var_os(var).is_none() {
                    let key = format!("backends[{i}].password_env");
                    c.warn(at, key, format!("environment variable {var} is not set here"));
                }
                Some(with(String::new(), username))
            }
            (Err(_), Secrets::Read) => {
                let key = format!("backends[{i}].password_env");
                c.error(at, key, format!("environment variable {var} is not set"));
                None
            }
        },
        (Some(username), None, Some(file)) => match secrets {
            Secrets::Skip => {
                if !base.join(file).is_file() {
                    let key = format!("backends[{i}].password_file");
                    c.warn(at, key, format!("{} is not readable here", file.display()));
                }
                Some(with(String::new(), username))
            }
            Secrets::Read => match std::fs::read_to_string(base.join(file)) {
                Ok(text) => Some(with(text.trim_end_matches(['\n', '\r']).to_owned(), username)),
                Err(e) => {
                    c.error(at, format!("backends[{i}].password_file"), format!("{}: {e}", file.display()));
                    None
                }
            },
        },
    }
}

#[derive(Default)]
struct Tenants {
    tenants: HashMap<String, Arc<Tenant>>,
    users: HashMap<String, (String, ScramVerifier)>,
    subjects: HashMap<String, String>,
    sni: HashMap<String, String>,
}

fn tenants(c: &mut Collector<'_>, file: &PolicyFile) -> Tenants {
    if file.tenants.is_empty() {
        c.warn(NONE, "tenants".into(), "no tenants: only the handshake will be served");
    }
    let backend_names: Vec<&str> = file.backends.iter().map(|b| b.name.get_ref().as_str()).collect();
    let mut out = Tenants::default();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut values: HashMap<String, usize> = HashMap::new();
    let mut users: HashMap<&str, usize> = HashMap::new();
    let mut subjects: HashMap<&str, usize> = HashMap::new();
    let mut snis: HashMap<String, usize> = HashMap::new();
    for (i, tenant) in file.tenants.iter().enumerate() {
        let id = tenant.id.get_ref();
        if !valid_tenant_id(id) {
            let msg = format!("{id:?} must be 1-64 ASCII letters, digits or '-'");
            c.error(Some(&tenant.id), format!("tenants[{i}].id"), msg);
        }
        if let Some(first) = ids.insert(id, i) {
            let msg = format!("duplicate tenant id {id:?} (also tenants[{first}])");
            c.error(Some(&tenant.id), format!("tenants[{i}].id"), msg);
        }
        if !backend_names.contains(&tenant.backend.get_ref().as_str()) {
            let msg = format!("no backend {:?}", tenant.backend.get_ref());
            c.error(Some(&tenant.backend), format!("tenants[{i}].backend"), msg);
        }
        let value = match &tenant.value {
            Some(v) => c.ok(tenant_value(v.get_ref()), Some(v), || format!("tenants[{i}].value")),
            None => {
                c.ok(TenantValue::new(bson::Bson::String(id.clone())), Some(&tenant.id), || format!("tenants[{i}].id"))
            }
        };
        if let Some(value) = &value {
            // Two tenants with equal values would read each other's rows in every shared collection; equal as the
            // server compares (42 and NumberLong(42) are one value).
            if let Some(first) = values.insert(value.canonical_key(), i) {
                let msg = format!("same tenant value as tenants[{first}] (MongoDB compares numbers across types)");
                c.error(Some(&tenant.id), format!("tenants[{i}].value"), msg);
            }
        }
        for (j, user) in tenant.users.iter().enumerate() {
            let name = user.name.get_ref();
            if name.is_empty() {
                c.error(Some(&user.name), format!("tenants[{i}].users[{j}].name"), "must not be empty");
            }
            if let Some(first) = users.insert(name, i) {
                let msg = format!("user {name:?} already identifies tenants[{first}]");
                c.error(Some(&user.name), format!("tenants[{i}].users[{j}].name"), msg);
            }
            let verifier = ScramVerifier::from_str(user.scram.get_ref()).map_err(|e| e.to_string());
            if let Some(verifier) = c.ok(verifier, Some(&user.scram), || format!("tenants[{i}].users[{j}].scram")) {
                out.users.insert(name.clone(), (id.clone(), verifier));
            }
        }
        for (j, subject) in tenant.cert_subjects.iter().enumerate() {
            if let Some(first) = subjects.insert(subject.get_ref(), i) {
                let msg = format!("subject already identifies tenants[{first}]");
                c.error(Some(subject), format!("tenants[{i}].cert_subjects[{j}]"), msg);
            }
            out.subjects.insert(subject.get_ref().clone(), id.clone());
        }
        for (j, host) in tenant.sni.iter().enumerate() {
            let lower = host.get_ref().to_ascii_lowercase();
            if let Some(first) = snis.insert(lower.clone(), i) {
                let msg = format!("host name already identifies tenants[{first}]");
                c.error(Some(host), format!("tenants[{i}].sni[{j}]"), msg);
            }
            out.sni.insert(lower, id.clone());
        }
        let bound = file.listeners.iter().any(|l| l.tenant.as_ref().is_some_and(|t| t.get_ref() == id));
        if tenant.users.is_empty() && tenant.cert_subjects.is_empty() && tenant.sni.is_empty() && !bound {
            let msg = format!("tenant {id:?} has no identity and no listener: nobody can connect as it");
            c.warn(Some(&tenant.id), format!("tenants[{i}]"), msg);
        }
        if let Some(value) = value {
            let max_time_ms = tenant.max_time_ms.or(file.limits.max_time_ms).filter(|ms| *ms > 0);
            let rate_limit = match &tenant.rate_limit {
                Some(own) => rate_limit(c, own.get_ref(), Some(own), &format!("tenants[{i}].rate_limit")),
                // Checked once, in `limits`.
                None => file.limits.rate_limit.as_ref().and_then(bucket),
            };
            if let Some(cap) = tenant.max_connections.as_ref().filter(|cap| *cap.get_ref() == 0) {
                c.error(Some(cap), format!("tenants[{i}].max_connections"), "must be at least 1");
            }
            if let Some(cap) = tenant.max_in_flight.as_ref().filter(|cap| *cap.get_ref() == 0) {
                c.error(Some(cap), format!("tenants[{i}].max_in_flight"), "must be at least 1");
            }
            let in_flight = tenant.max_in_flight.as_ref().map_or(file.limits.max_in_flight, |cap| *cap.get_ref());
            let pool = file.backends.iter().find(|b| b.name.get_ref() == tenant.backend.get_ref());
            if let Some(pool) = pool.filter(|b| in_flight >= b.max_connections) {
                let msg = format!(
                    "tenant {id:?} may have {in_flight} commands in flight, as many as backend {:?} has connections \
                     ({}): its slow commands alone can keep every other tenant waiting",
                    pool.name.get_ref(),
                    pool.max_connections
                );
                c.warn(Some(&tenant.id), format!("tenants[{i}].max_in_flight"), msg);
            }
            let built = Tenant {
                id: id.clone(),
                value,
                backend: tenant.backend.get_ref().clone(),
                max_time_ms,
                allow_disk_use: tenant.allow_disk_use,
                rate_limit,
                max_connections: tenant.max_connections.as_ref().map(|cap| *cap.get_ref()),
                max_in_flight: tenant.max_in_flight.as_ref().map_or(file.limits.max_in_flight, |cap| *cap.get_ref()),
                // Completed once the rules are compiled.
                session_key: id.clone(),
            };
            out.tenants.insert(id.clone(), Arc::new(built));
        }
    }
    out
}

fn rules(c: &mut Collector<'_>, file: &PolicyFile) -> Vec<Rule> {
    if !file.tenants.is_empty() && file.rules.is_empty() {
        c.warn(NONE, "rules".into(), "no rules: every data command will be denied");
    }
    // Read once: a policy can name thousands of tenants, each with rules of its own (the mover writes them), so
    // nothing below may cost a scan of every tenant or every rule per rule.
    let directory = Directory::of(file);
    let mut out: Vec<Rule> = Vec::new();
    // Positions in `out` of the rules without a tenant list, and of each tenant's own rules.
    let mut general: Vec<usize> = Vec::new();
    let mut own: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, rule) in file.rules.iter().enumerate() {
        let mode = *rule.mode.get_ref();
        let db = c.ok(Pattern::parse(rule.database.get_ref(), false), Some(&rule.database), || {
            format!("rules[{i}].database")
        });
        // Globs may cover them harmlessly (reserved databases are refused before rules are consulted); naming
        // one outright is a mistake worth stopping.
        if let Some(reserved) = RESERVED_DATABASES.iter().find(|r| *r == rule.database.get_ref()) {
            let msg = format!("the {reserved} database is never reachable through a rule");
            c.error(Some(&rule.database), format!("rules[{i}].database"), msg);
        }
        let coll = c.ok(Pattern::parse(rule.collection.get_ref(), true), Some(&rule.collection), || {
            format!("rules[{i}].collection")
        });
        if let (Some(field), false) = (&rule.field, mode == Mode::Field) {
            c.error(Some(field), format!("rules[{i}].field"), "field applies only to mode \"field\"");
        }
        if let (Some(style), false) = (&rule.style, mode == Mode::Field) {
            c.error(Some(style), format!("rules[{i}].style"), "style applies only to mode \"field\"");
        }
        if let (Some(t), Mode::Field | Mode::Shared) = (&rule.template, mode) {
            let msg = "template applies only to modes \"collection\" and \"database\"";
            c.error(Some(t), format!("rules[{i}].template"), msg);
        }
        let tenants = rule_tenants(c, &directory, rule, i);
        let placement = placement(c, &directory, rule, i, tenants.as_ref().map(Option::as_deref));
        let renames_database = matches!(&placement, Some(Placement::Database(t)) if !t.is_identity());
        if renames_database && rule.collection.get_ref() != "*" {
            let msg = "database rules that rename the database cover every collection: use \"*\"";
            c.error(Some(&rule.collection), format!("rules[{i}].collection"), msg);
        }
        let (Some(database), Some(collection), Some(placement), Ok(tenants)) = (db, coll, placement, tenants) else {
            continue;
        };
        let built = Rule { index: i, database, collection, placement, tenants };
        // A renamed database cannot share a database name with another rule of the same tenant: one command would
        // need two real databases. An earlier rule for some tenants that covers whole databases (`*`) takes each
        // database it matches entirely for them, so a later rule never splits one: that is how a tenant's own
        // placement overrides the general rule.
        let renames = |r: &Rule| matches!(&r.placement, Placement::Database(t) if !t.is_identity());
        let overrides = |earlier: &Rule| earlier.tenants.is_some() && earlier.collection.as_str() == "*";
        // The earlier rules that can share a tenant with this one, in file order: all of them for a general rule,
        // else the general ones and those naming one of its tenants.
        let earlier: Vec<&Rule> = match &built.tenants {
            None => out.iter().collect(),
            Some(list) => {
                let mut at: Vec<usize> = general.clone();
                for tenant in list {
                    at.extend(own.get(tenant).into_iter().flatten());
                }
                at.sort_unstable();
                at.dedup();
                at.iter().filter_map(|&at| out.get(at)).collect()
            }
        };
        if let Some(other) = earlier.iter().find(|other| {
            (renames_database || renames(other))
                && other.database.overlaps(&built.database)
                && other.shares_tenants(&built)
                && !overrides(other)
        }) {
            let msg = format!("shares databases with rules[{}], but one of them renames the database", other.index);
            c.error(Some(&rule.database), format!("rules[{i}].database"), msg);
        }
        // A rule for some tenants before the general one is meant to win; anything else that overlaps is worth a
        // look.
        if let Some(first) = earlier.iter().find(|o| {
            o.database.overlaps(&built.database)
                && o.collection.overlaps(&built.collection)
                && o.shares_tenants(&built)
                && !(o.tenants.is_some() && built.tenants.is_none())
        }) {
            let msg = format!("overlaps rules[{}]; the first matching rule wins", first.index);
            c.warn(Some(&rule.database), format!("rules[{i}]"), msg);
        }
        if let Placement::Field { .. } = built.placement {
            let msg = "a tenant can learn whether another tenant's document in this shared collection has a given \
                       _id (an insert with that _id fails with a duplicate key): let drivers generate ObjectIds, \
                       or use collection mode where ids are meaningful (see the threat model)";
            c.warn(Some(&rule.collection), format!("rules[{i}]"), msg);
        }
        match &built.tenants {
            None => general.push(out.len()),
            Some(list) => {
                for tenant in list {
                    own.entry(tenant.clone()).or_default().push(out.len());
                }
            }
        }
        out.push(built);
    }
    out
}

/// The policy file's tenants, read once for the rules' checks: their order, and which share a backend.
struct Directory<'f> {
    /// Tenant ids in file order (the first of any repeated id), and each one's position there.
    tenants: Vec<&'f str>,
    position: HashMap<&'f str, usize>,
    /// Tenants on a backend that serves another tenant too (every entry of a repeated id counts: the policy is
    /// refused for it anyway, with every other problem).
    sharing: HashSet<&'f str>,
}

impl<'f> Directory<'f> {
    fn of(file: &'f PolicyFile) -> Self {
        let mut per_backend: HashMap<&str, usize> = HashMap::new();
        let mut directory = Directory { tenants: Vec::new(), position: HashMap::new(), sharing: HashSet::new() };
        for tenant in &file.tenants {
            *per_backend.entry(tenant.backend.get_ref().as_str()).or_default() += 1;
            let id = tenant.id.get_ref().as_str();
            if !directory.position.contains_key(id) {
                directory.position.insert(id, directory.tenants.len());
                directory.tenants.push(id);
            }
        }
        for tenant in &file.tenants {
            if per_backend.get(tenant.backend.get_ref().as_str()).copied().unwrap_or(0) > 1 {
                directory.sharing.insert(tenant.id.get_ref().as_str());
            }
        }
        directory
    }

    fn has(&self, id: &str) -> bool {
        self.position.contains_key(id)
    }

    /// Whether tenant `id` shares its backend with another tenant.
    fn shares_backend(&self, id: &str) -> bool {
        self.sharing.contains(id)
    }

    /// The tenants `rule` governs, in file order.
    fn governed_by(&self, rule: &Rule) -> Vec<&'f str> {
        match &rule.tenants {
            None => self.tenants.clone(),
            Some(list) => {
                let mut known: Vec<(usize, &'f str)> = list
                    .iter()
                    .filter_map(|id| self.position.get_key_value(id.as_str()))
                    .map(|(id, at)| (*at, *id))
                    .collect();
                known.sort_unstable();
                known.into_iter().map(|(_, id)| id).collect()
            }
        }
    }
}

/// [`Tenant::session_key`]: the id alone for a tenant without rules of its own (the ids every earlier version
/// derived), else the id, a NUL (which no tenant id contains) and a digest of its own rules.
fn session_key(tenant: &str, rules: &[Rule], index: &super::RuleIndex) -> String {
    let own: Vec<&Rule> = index.own(tenant, rules).filter(|r| r.tenants.is_some() && r.applies_to(tenant)).collect();
    if own.is_empty() {
        return tenant.to_owned();
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for rule in own {
        let (field, template) = match &rule.placement {
            Placement::Field { field, .. } => (field.as_str(), ""),
            Placement::Collection(t) | Placement::Database(t) => ("", t.as_str()),
            Placement::Shared => ("", ""),
        };
        for part in [rule.database.as_str(), rule.collection.as_str(), rule.describe().as_str(), field, template] {
            ctx.update(part.as_bytes());
            ctx.update(b"\0");
        }
    }
    let digest = ctx.finish();
    let hex: String = digest.as_ref().iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{tenant}\0{hex}")
}

/// A rule's `tenants`: `Ok(None)` for every tenant, `Err` after recording what was wrong.
fn rule_tenants(
    c: &mut Collector<'_>,
    directory: &Directory<'_>,
    rule: &crate::config::RuleConfig,
    i: usize,
) -> Result<Option<Vec<String>>, ()> {
    let Some(list) = &rule.tenants else { return Ok(None) };
    if list.get_ref().is_empty() {
        c.error(Some(list), format!("rules[{i}].tenants"), "must name at least one tenant (or be left out)");
        return Err(());
    }
    let mut out: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut ok = true;
    for (j, id) in list.get_ref().iter().enumerate() {
        let id_text = id.get_ref();
        if !directory.has(id_text) {
            c.error(Some(id), format!("rules[{i}].tenants[{j}]"), format!("no tenant {id_text:?}"));
            ok = false;
        } else if !seen.insert(id_text) {
            c.error(Some(id), format!("rules[{i}].tenants[{j}]"), format!("tenant {id_text:?} is listed twice"));
            ok = false;
        } else {
            out.push(id_text.clone());
        }
    }
    if ok {
        Ok(Some(out))
    } else {
        Err(())
    }
}

/// A rule's placement, each mode's data checked; `None` after recording what was wrong.
fn placement(
    c: &mut Collector<'_>,
    directory: &Directory<'_>,
    rule: &crate::config::RuleConfig,
    i: usize,
    only: Result<Option<&[String]>, &()>,
) -> Option<Placement> {
    let mode = *rule.mode.get_ref();
    let template = |c: &mut Collector<'_>, default: &str| {
        let text = rule.template.as_ref().map_or(default, |t| t.get_ref().as_str());
        c.ok(Template::parse(text, mode), rule.template.as_ref(), || format!("rules[{i}].template"))
    };
    match mode {
        Mode::Field => {
            let name = rule.field.as_ref().map_or(DEFAULT_TENANT_FIELD, |f| f.get_ref().as_str());
            let field = c.ok(FieldName::new(name), rule.field.as_ref(), || format!("rules[{i}].field"))?;
            Some(Placement::Field { field, style: rule.style.as_ref().map_or(Style::default(), |s| *s.get_ref()) })
        }
        Mode::Shared => Some(Placement::Shared),
        Mode::Collection => template(c, DEFAULT_COLLECTION_TEMPLATE).map(Placement::Collection),
        Mode::Database => {
            let t = template(c, DEFAULT_DATABASE_TEMPLATE)?;
            if !t.has_tenant() {
                // Same database names are only isolated if no tenant the rule applies to shares its backend with
                // any other tenant.
                // A list that failed its own check counts as every tenant: the stricter reading.
                let shared_backend = match only {
                    Ok(Some(only)) => only.iter().any(|id| directory.shares_backend(id)),
                    Ok(None) | Err(()) => !directory.sharing.is_empty(),
                };
                if shared_backend {
                    let msg = "a template without {tenant} needs every tenant it applies to on a backend of its own";
                    c.error(rule.template.as_ref(), format!("rules[{i}].template"), msg);
                    return None;
                }
            }
            Some(Placement::Database(t))
        }
    }
}

/// A rule that keeps names as they are (field, shared, or a template without `{tenant}`) must not match another
/// rule's per-tenant real names: through it, one tenant could name another's collection or database
/// (`app.*` in field mode would reach `globex__invoices`). The proxy refuses such names at run time whatever the
/// policy; a policy that relies on that is ambiguous and refused here.
fn name_collisions(c: &mut Collector<'_>, file: &PolicyFile, rules: &[Rule]) {
    let directory = Directory::of(file);
    // Which tenants each rule gives names to, in file order: read per pair of rules below, so listed once.
    let governed: Vec<Vec<&str>> = rules.iter().map(|rule| directory.governed_by(rule)).collect();
    let sample = |p: &Pattern| p.as_str().replace('*', "x");
    // The first rule whose per-tenant names a kept-names rule matches, and the name, depend on that rule's patterns
    // alone (a rule that keeps names gives none itself, so it never finds itself): the rules each tenant moved
    // to field mode has of its own repeat the general ones' patterns, so the search is made once per pair of
    // patterns, not once per rule.
    let mut found: HashMap<(&str, &str), Option<(usize, String)>> = HashMap::new();
    for rule in rules {
        if rule.template().is_some_and(Template::has_tenant) {
            continue;
        }
        let first = found.entry((rule.database.as_str(), rule.collection.as_str())).or_insert_with(|| {
            rules.iter().zip(&governed).filter(|(o, _)| o.index != rule.index).find_map(|(other, tenants)| {
                let example = match &other.placement {
                    Placement::Collection(t) if t.has_tenant() && rule.database.overlaps(&other.database) => {
                        let collection = sample(&other.collection);
                        tenants.iter().find_map(|tenant| {
                            let real = t.render(tenant, &collection);
                            rule.collection.matches(&real).then(|| format!("{}.{real}", sample(&rule.database)))
                        })
                    }
                    Placement::Database(t) if t.has_tenant() => {
                        let database = sample(&other.database);
                        tenants.iter().find_map(|tenant| {
                            let real = t.render(tenant, &database);
                            rule.database.matches(&real).then_some(real)
                        })
                    }
                    _ => None,
                };
                example.map(|example| (other.index, example))
            })
        });
        if let Some((other, example)) = first.clone() {
            let at = file.rules.get(rule.index).map(|r| &r.database);
            let msg = format!(
                "matches names rules[{other}] gives each tenant (e.g. {example}): through it a tenant could reach \
                 another tenant's data; use names that cannot match, or another database"
            );
            c.error(at, format!("rules[{}]", rule.index), msg);
        }
    }
}

/// A rate limit's bucket; `None` (with an error) when it would admit nothing or never refill.
fn rate_limit<S>(
    c: &mut Collector<'_>,
    config: &RateLimitConfig,
    at: Option<&Spanned<S>>,
    key: &str,
) -> Option<RateLimit> {
    if !(config.commands_per_second.is_finite() && config.commands_per_second > 0.0) {
        c.error(at, format!("{key}.commands_per_second"), "must be a number above 0");
    }
    if config.burst == 0 {
        c.error(at, format!("{key}.burst"), "must be at least 1");
    }
    bucket(config)
}

fn bucket(config: &RateLimitConfig) -> Option<RateLimit> {
    let valid = config.commands_per_second.is_finite() && config.commands_per_second > 0.0 && config.burst > 0;
    valid.then_some(RateLimit { per_second: config.commands_per_second, burst: f64::from(config.burst) })
}

fn admin(c: &mut Collector<'_>, file: &PolicyFile, secrets: Secrets) -> Option<AdminSettings> {
    let admin = file.admin.as_ref()?;
    let address = c.ok(
        SocketAddr::from_str(admin.address.get_ref()).map_err(|_| "must be ip:port, e.g. 127.0.0.1:9090".to_owned()),
        Some(&admin.address),
        || "admin.address".into(),
    );
    if admin.health_interval_secs == 0 {
        c.error(Some(&admin.address), "admin.health_interval_secs".into(), "must be at least 1");
    }
    let token = match &admin.token_env {
        None => None,
        Some(var) => match (std::env::var(var.get_ref()), secrets) {
            (Ok(token), _) if token.is_empty() => {
                c.error(
                    Some(var),
                    "admin.token_env".into(),
                    format!("environment variable {} is empty", var.get_ref()),
                );
                None
            }
            (Ok(token), Secrets::Read) => Some(Secret(token)),
            (Ok(_), Secrets::Skip) => None,
            (Err(_), Secrets::Skip) => {
                let msg = format!("environment variable {} is not set here", var.get_ref());
                c.warn(Some(var), "admin.token_env".into(), msg);
                None
            }
            (Err(_), Secrets::Read) => {
                c.error(
                    Some(var),
                    "admin.token_env".into(),
                    format!("environment variable {} is not set", var.get_ref()),
                );
                None
            }
        },
    };
    Some(AdminSettings {
        address: address?,
        token,
        health_interval: std::time::Duration::from_secs(admin.health_interval_secs),
    })
}

fn audit(c: &mut Collector<'_>, file: &PolicyFile, base: &Path) -> Option<AuditSettings> {
    let audit = file.audit.as_ref()?;
    let target = match audit.path.get_ref().as_str() {
        "-" => AuditTarget::Stdout,
        "" => {
            c.error(Some(&audit.path), "audit.path".into(), "must be a file name or - for stdout");
            return None;
        }
        path => AuditTarget::File(base.join(path)),
    };
    if audit.queue == 0 {
        c.error(Some(&audit.path), "audit.queue".into(), "must be at least 1");
    }
    Some(AuditSettings { target, log_writes: audit.log_writes, queue: audit.queue })
}

fn limits(c: &mut Collector<'_>, file: &PolicyFile) {
    let limits = &file.limits;
    for (key, value) in [
        ("max_connections", limits.max_connections),
        ("max_unauthenticated_connections", limits.max_unauthenticated_connections),
        ("max_connections_per_ip", limits.max_connections_per_ip),
        ("max_unauthenticated_connections_per_ip", limits.max_unauthenticated_connections_per_ip),
        ("max_cursors", limits.max_cursors),
        ("max_cursors_per_tenant", limits.max_cursors_per_tenant),
        ("max_in_flight", limits.max_in_flight),
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
        ("pool_wait_timeout_ms", limits.pool_wait_timeout_ms),
        ("client_write_timeout_secs", limits.client_write_timeout_secs),
        ("auth_failures_before_refusal", u64::from(limits.auth_failures_before_refusal)),
        ("auth_failure_window_secs", limits.auth_failure_window_secs),
        ("auth_timeout_secs", limits.auth_timeout_secs),
    ] {
        if value == 0 {
            c.error(NONE, format!("limits.{key}"), "must be at least 1");
        }
    }
    if let Some(default) = &limits.rate_limit {
        rate_limit(c, default, NONE, "limits.rate_limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{resolve, Target};

    const HEAD: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
        [[backends]]\nname = \"main\"\nuri = \"mongodb://127.0.0.1:1\"\n\n\
        [[backends]]\nname = \"own\"\nuri = \"mongodb://127.0.0.1:2\"\n\n\
        [[tenants]]\nid = \"acme\"\nbackend = \"main\"\n\n\
        [[tenants]]\nid = \"globex\"\nbackend = \"main\"\n\n";

    /// A tenant id listed twice is an error, and a per-tenant database template without `{tenant}` is still
    /// refused when any of its entries shares a backend: the list of problems stays whole.
    #[test]
    fn a_repeated_tenant_counts_every_backend_it_is_listed_on() {
        let rules =
            "[[tenants]]\nid = \"solo\"\nbackend = \"own\"\n\n[[tenants]]\nid = \"solo\"\nbackend = \"main\"\n\n\
                     [[rules]]\ntenants = [\"solo\"]\ndatabase = \"app\"\nmode = \"database\"\ntemplate = \"{db}\"\n";
        let errors = errors(rules);
        assert!(errors.iter().any(|e| e.contains("duplicate tenant id")), "{errors:?}");
        assert!(
            errors.iter().any(|e| e.contains("needs every tenant it applies to on a backend of its own")),
            "{errors:?}"
        );
    }

    /// Problems name the line `line_of` counts, however many there are.
    #[test]
    fn problems_are_given_the_line_counted_from_the_top() {
        let text = format!("{HEAD}[[rules]]\ndatabase = \"app\"\nmode = \"field\"\n\n\n# end\n");
        let line_starts = text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(at, _)| at + 1).collect();
        let c = Collector { text: &text, line_starts, errors: Vec::new(), warnings: Vec::new() };
        for at in 0..=text.len() {
            let spanned = toml::Spanned::new(at..at + 1, ());
            assert_eq!(c.line(&spanned), Some(crate::config::line_of(&text, at)), "offset {at}");
        }
    }

    fn compiled(rules: &str) -> Compilation {
        let text = format!("{HEAD}{rules}");
        let file = crate::config::parse(&text, Path::new("t.toml")).expect("parses");
        compile(&file, &text, Path::new("t.toml"), Secrets::Skip)
    }

    fn errors(rules: &str) -> Vec<String> {
        compiled(rules).errors.iter().map(|p| format!("{}@{:?}: {}", p.key, p.line, p.message)).collect()
    }

    #[test]
    fn a_tenant_that_could_fill_its_backend_pool_is_warned_about() {
        let rules = "[[rules]]\ndatabase = \"app\"\nmode = \"field\"\n";
        let quiet = compiled(rules);
        assert!(!quiet.warnings.iter().any(|w| w.key.ends_with("max_in_flight")), "{:?}", quiet.warnings);
        let text = format!("{HEAD}{rules}").replacen(
            "mongodb://127.0.0.1:1\"\n",
            "mongodb://127.0.0.1:1\"\nmax_connections = 8\n",
            1,
        );
        let file = crate::config::parse(&text, Path::new("t.toml")).expect("parses");
        let small_pool = compile(&file, &text, Path::new("t.toml"), Secrets::Skip);
        let warned: Vec<_> = small_pool.warnings.iter().filter(|w| w.key.ends_with("max_in_flight")).collect();
        assert_eq!(warned.len(), 2, "both tenants' 32 in flight exceed 8 connections: {:?}", small_pool.warnings);
    }

    #[test]
    fn a_rule_for_some_tenants_overrides_the_general_one_for_them_only() {
        let rules = "[[rules]]\ndatabase = \"app\"\nmode = \"database\"\ntenants = [\"acme\"]\n\n\
                     [[rules]]\ndatabase = \"app\"\ncollection = \"*\"\nmode = \"field\"\n";
        let compilation = compiled(rules);
        assert!(compilation.errors.is_empty(), "{:?}", compilation.errors);
        let renamed_db = compilation.warnings.iter().any(|w| w.message.contains("first matching rule wins"));
        assert!(!renamed_db, "the override is intended: {:?}", compilation.warnings);
        let policy = compilation.policy.unwrap();
        match resolve(&policy, "acme", "app", Some("orders")).unwrap() {
            Target::Mapped { db, coll, .. } => assert_eq!((db.as_str(), coll.as_deref()), ("acme_app", Some("orders"))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(resolve(&policy, "globex", "app", Some("orders")).unwrap(), Target::Field(_)));
        assert_eq!(policy.rule_for("globex", "app", "orders").map(|r| r.index), Some(1));
        assert_eq!(policy.database_rule("acme", "app").map(|r| r.index), Some(0));
        // acme's real database is nobody's visible one, and globex has no way to name it.
        assert!(policy.is_real_database("acme_app"));
        assert!(!policy.is_real_database("globex_app"), "the rule gives globex no database");
        assert!(resolve(&policy, "globex", "acme_app", Some("orders")).is_err());
        // acme's sessions follow its placement; globex's are derived as always.
        assert_eq!(policy.tenant("globex").unwrap().session_key, "globex");
        let acme = &policy.tenant("acme").unwrap().session_key;
        assert!(acme.starts_with("acme\0") && acme.len() == "acme\0".len() + 16, "{acme:?}");
        let other =
            compiled(&rules.replace("mode = \"database\"", "mode = \"database\"\ntemplate = \"t_{tenant}_{db}\""));
        let other = other.policy.expect("compiles");
        assert_ne!(&other.tenant("acme").unwrap().session_key, acme, "another placement, other sessions");
    }

    #[test]
    fn tenant_lists_are_checked_with_their_lines() {
        let rules = |list: &str| format!("[[rules]]\ndatabase = \"app\"\nmode = \"database\"\ntenants = {list}\n");
        let empty = errors(&rules("[]"));
        assert!(
            empty.iter().any(|e| e.starts_with("rules[0].tenants@Some(23)") && e.contains("at least one")),
            "{empty:?}"
        );
        let unknown = errors(&rules("[\"initech\"]"));
        assert!(
            unknown.iter().any(|e| e.starts_with("rules[0].tenants[0]@Some(23)") && e.contains("initech")),
            "{unknown:?}"
        );
        let twice = errors(&rules("[\"acme\", \"acme\"]"));
        assert!(twice.iter().any(|e| e.starts_with("rules[0].tenants[1]") && e.contains("twice")), "{twice:?}");
    }

    #[test]
    fn per_tenant_names_stay_out_of_reach_of_rules_that_keep_names() {
        // acme's own collections in app would be covered by every tenant's field rule on app.*.
        let rules =
            "[[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"collection\"\ntenants = [\"acme\"]\n\n\
                     [[rules]]\ndatabase = \"app\"\ncollection = \"*\"\nmode = \"field\"\n";
        let found = errors(rules);
        assert!(found.iter().any(|e| e.starts_with("rules[1]@") && e.contains("acme__orders")), "{found:?}");
        // acme's own database would be covered by a field rule on every database.
        let rules = "[[rules]]\ndatabase = \"app\"\nmode = \"database\"\ntenants = [\"acme\"]\n\n\
                     [[rules]]\ndatabase = \"*\"\nmode = \"field\"\n";
        let found = errors(rules);
        assert!(found.iter().any(|e| e.contains("acme_app")), "{found:?}");
        // Names exact enough not to match are fine.
        let rules =
            "[[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"collection\"\ntenants = [\"acme\"]\n\n\
                     [[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"field\"\n";
        assert_eq!(errors(rules), Vec::<String>::new());
    }

    #[test]
    fn a_renamed_database_is_never_split_for_one_tenant() {
        // The override covers only orders: acme's other collections of app would go to the renamed database.
        let rules =
            "[[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"field\"\ntenants = [\"acme\"]\n\n\
                     [[rules]]\ndatabase = \"app\"\nmode = \"database\"\n";
        let found = errors(rules);
        assert!(found.iter().any(|e| e.starts_with("rules[1].database") && e.contains("renames")), "{found:?}");
        // Rules for different tenants never meet.
        let rules = "[[rules]]\ndatabase = \"app\"\nmode = \"database\"\ntenants = [\"acme\"]\n\n\
                     [[rules]]\ndatabase = \"app\"\ncollection = \"orders\"\nmode = \"field\"\ntenants = [\"globex\"]\n";
        assert_eq!(errors(rules), Vec::<String>::new());
    }

    #[test]
    fn same_names_need_a_backend_of_their_own_only_for_the_tenants_governed() {
        let rule = "[[rules]]\ndatabase = \"app\"\nmode = \"database\"\ntemplate = \"{db}\"\ntenants = [\"acme\"]\n";
        let found = errors(rule);
        assert!(found.iter().any(|e| e.contains("backend of its own")), "shares main with globex: {found:?}");
        let moved = compiled(rule).errors.is_empty();
        assert!(!moved);
        let text = HEAD.replace("id = \"acme\"\nbackend = \"main\"", "id = \"acme\"\nbackend = \"own\"");
        let text = format!("{text}{rule}");
        let file = crate::config::parse(&text, Path::new("t.toml")).unwrap();
        let compilation = compile(&file, &text, Path::new("t.toml"), Secrets::Skip);
        assert!(compilation.errors.is_empty(), "{:?}", compilation.errors);
    }
}
