//! The policy file format: serde structs, strict parsing, and file locations for every problem.
//!
//! This module owns what a security team writes and reviews: listeners, backends, tenants with their
//! identities, and namespace rules. Parsing rejects unknown keys and wrong types with the file, line and key;
//! [`crate::policy::compile`] then checks and builds the policy in one pass, reporting every semantic problem at
//! once, each with its line. The file never holds secrets: backend passwords are named by environment variable
//! or file, and a URI with credentials is refused.
//!
//! What it must never do: hold anything but the file as written (serde structs with a doc comment per field),
//! resolve secrets or open sockets, or echo a credential in an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// A whole policy file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Client-facing listeners.
    pub listeners: Vec<ListenerConfig>,
    /// MongoDB deployments the proxy forwards to.
    pub backends: Vec<BackendConfig>,
    /// Tenants, their identities and their backend.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Namespace rules; the first rule matching a namespace applies, anything unmatched is denied.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Resource limits; every field has a safe default.
    #[serde(default)]
    pub limits: Limits,
    /// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`); off unless set. Read at start.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The JSON-lines audit log; off unless set. Read at start.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
}

/// `[admin]`: plain HTTP for operators. Bind it to localhost or a private network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` to bind, e.g. `127.0.0.1:9090`; port 0 picks a free port.
    pub address: Spanned<String>,
    /// Environment variable holding a bearer token; when set, every request must carry
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token_env: Option<Spanned<String>>,
    /// Seconds between health checks of each backend (a `ping` on a fresh connection), for `/readyz`.
    #[serde(default = "default_health_interval")]
    pub health_interval_secs: u64,
}

fn default_health_interval() -> u64 {
    5
}

/// `[audit]`: one JSON object per line for every denial and audit-style finding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File to append to (relative to the policy file; reopened on SIGUSR1 for rotation), or `-` for stdout.
    pub path: Spanned<String>,
    /// Also record every forwarded write (insert, update, delete, findAndModify, bulkWrite), without values.
    #[serde(default)]
    pub log_writes: bool,
    /// Records waiting to be written at once; beyond it records are dropped and counted, never waited for.
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
}

fn default_audit_queue() -> usize {
    10_000
}

/// `{ commands_per_second = 100, burst = 200 }`: a token bucket per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Commands admitted per second on average (a fraction is allowed, e.g. 0.5).
    pub commands_per_second: f64,
    /// Commands admitted at once after a quiet period (the bucket's size); at least 1.
    pub burst: u32,
}

/// One client-facing listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind, e.g. `127.0.0.1:27018`; port 0 picks a free port.
    pub address: Spanned<String>,
    /// Serve TLS on this listener.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Every connection on this listener belongs to this tenant (for listeners reachable only from that
    /// tenant's network).
    #[serde(default)]
    pub tenant: Option<Spanned<String>>,
    /// How `hello` presents the proxy on this listener: a mongos (the default) or a one-member replica set.
    #[serde(default)]
    pub face: Option<Spanned<FaceConfig>>,
}

/// `face = { replica_set = "rs0", host = "proxy.example:27018" }`: `hello` presents the proxy as the primary of a
/// one-member replica set, for connection strings with `replicaSet=` and apps that enable transactions only then.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceConfig {
    /// The set name clients put in `replicaSet=`.
    pub replica_set: String,
    /// `host:port` clients reach this listener at; the only member drivers learn.
    pub host: String,
}

/// TLS settings of a listener. Paths are relative to the policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain presented to clients.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates (mTLS). When set, clients must present a certificate it signed.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// One MongoDB deployment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Name tenants refer to.
    pub name: Spanned<String>,
    /// `mongodb://host[:port][,host[:port]...]/[?options]`, without credentials.
    pub uri: Spanned<String>,
    /// PEM CA bundle to verify the backend's certificate when the URI says `tls=true`.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Service user the proxy authenticates as (SCRAM-SHA-256). Omit for a backend without authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the service user's password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the service user's password (trailing newline ignored). Relative to the policy file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Database the service user is defined in.
    #[serde(default = "default_auth_source")]
    pub auth_source: String,
    /// Caps the wire version the proxy advertises for this backend (e.g. 21 to hide MongoDB 8 commands).
    #[serde(default)]
    pub max_wire_version: Option<i32>,
    /// Connections the proxy keeps to this backend at most, shared by every client connection: commands wait
    /// for a free one (served round-robin across tenants) up to `limits.pool_wait_timeout_ms`.
    #[serde(default = "default_backend_connections")]
    pub max_connections: usize,
}

fn default_backend_connections() -> usize {
    64
}

fn default_auth_source() -> String {
    "admin".into()
}

/// A tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Identifier: ASCII letters, digits and `-`, at most 64 characters.
    pub id: Spanned<String>,
    /// The tenant field's value in shared collections: a string, an integer, or an extended JSON table such as
    /// `{ "$oid" = "65f0c0ffee0000000000beef" }`. Defaults to the id as a string.
    #[serde(default)]
    pub value: Option<Spanned<toml::Value>>,
    /// Backend (by name) holding this tenant's data.
    pub backend: Spanned<String>,
    /// SCRAM-SHA-256 users that authenticate as this tenant.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// TLS client certificate subjects (RFC 4514, as `tenantwall` prints them) that identify this tenant.
    #[serde(default)]
    pub cert_subjects: Vec<Spanned<String>>,
    /// TLS SNI host names that identify this tenant.
    #[serde(default)]
    pub sni: Vec<Spanned<String>>,
    /// Cap on `maxTimeMS` for this tenant's commands, in milliseconds (overrides `limits.max_time_ms`).
    #[serde(default)]
    pub max_time_ms: Option<u64>,
    /// `false` forbids spilling to disk (`allowDiskUse: false` is forced on find and aggregate).
    #[serde(default)]
    pub allow_disk_use: Option<bool>,
    /// Commands per second forwarded for this tenant, across all its connections (overrides
    /// `limits.rate_limit`). Commands beyond it are answered with IngressRequestRateLimitExceeded (462).
    #[serde(default)]
    pub rate_limit: Option<Spanned<RateLimitConfig>>,
    /// Connections this tenant may hold at once; an authentication beyond it is refused (none by default).
    #[serde(default)]
    pub max_connections: Option<Spanned<usize>>,
    /// Commands of this tenant forwarded and not yet answered at once, across its connections (overrides
    /// `limits.max_in_flight`).
    #[serde(default)]
    pub max_in_flight: Option<Spanned<usize>>,
}

/// A SCRAM user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name as the driver sends it.
    pub name: Spanned<String>,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as printed by `tenantwall passwd`.
    pub scram: Spanned<String>,
}

/// Isolation mode of a namespace rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Shared collection; every document carries the tenant field.
    Field,
    /// One collection per tenant, named by `template`.
    Collection,
    /// One database per tenant (named by `template`), or the tenant's own cluster.
    Database,
    /// Reference data every tenant reads; writes denied.
    Shared,
}

/// How a `field` rule is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// Rewrite commands so they are scoped.
    #[default]
    Enforce,
    /// Forward only commands that scope themselves; reject the rest.
    Verify,
    /// Forward unchanged; log what enforce would have done.
    Audit,
}

/// A namespace rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Database name as the tenant sees it: exact, or a glob with `*`.
    pub database: Spanned<String>,
    /// Collection name as the tenant sees it: exact, or a glob with `*` (default: every collection).
    #[serde(default = "any_collection")]
    pub collection: Spanned<String>,
    /// Isolation mode.
    pub mode: Spanned<Mode>,
    /// `field` mode: the tenant field (default `tenantId`).
    #[serde(default)]
    pub field: Option<Spanned<String>>,
    /// `field` mode: enforce (default), verify or audit.
    #[serde(default)]
    pub style: Option<Spanned<Style>>,
    /// `collection` mode (default `{tenant}__{collection}`) or `database` mode (default `{tenant}_{db}`; `{db}`
    /// alone means the same name on the tenant's own backend).
    #[serde(default)]
    pub template: Option<Spanned<String>>,
    /// The tenants this rule applies to (default: every tenant). A rule for some tenants placed before the
    /// general one gives them another placement (`tenantwall move` writes such rules).
    #[serde(default)]
    pub tenants: Option<Spanned<Vec<Spanned<String>>>>,
}

fn any_collection() -> Spanned<String> {
    Spanned::new(0..0, "*".into())
}

/// Resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections served at once; further connections are closed at accept. Read at start.
    pub max_connections: usize,
    /// Connections without a tenant yet (before SCRAM succeeds) at once; further ones are closed at accept.
    /// Drivers do not authenticate their monitoring connections, so every driver client holds one such
    /// connection for as long as it is connected. Read at start.
    pub max_unauthenticated_connections: usize,
    /// Connections at once from one source address.
    pub max_connections_per_ip: usize,
    /// Connections without a tenant yet at once from one source address.
    pub max_unauthenticated_connections_per_ip: usize,
    /// SCRAM failures per source address, and per user name, within `auth_failure_window_secs` after which
    /// attempts are refused without running SCRAM. After the third, each attempt is answered later (0.2 s,
    /// doubling, at most 5 s).
    pub auth_failures_before_refusal: u32,
    /// Seconds over which authentication failures are counted.
    pub auth_failure_window_secs: u64,
    /// Largest message accepted from a client, in bytes (at most 48,000,000), before and after decompression.
    pub max_message_bytes: usize,
    /// Largest message accepted, before and after decompression, while the connection has no tenant yet
    /// (hello and SASL messages are small).
    pub max_unauthenticated_message_bytes: usize,
    /// Seconds a client may take to send a whole message, counted from its first byte.
    pub frame_timeout_secs: u64,
    /// Bytes of client messages (as received, and once decompressed) buffered at once across all connections;
    /// a message that does not fit waits for room. Read at start.
    pub max_buffered_bytes: usize,
    /// Seconds a reply may wait for a client to read it; a client that stops reading is closed.
    pub client_write_timeout_secs: u64,
    /// Milliseconds allowed to open (and authenticate) a backend connection.
    pub backend_connect_timeout_ms: u64,
    /// Milliseconds a backend may take to answer a command; a command with `maxTimeMS` gets that plus a grace
    /// period instead. On expiry the client gets an error and the backend connection is discarded.
    pub backend_timeout_ms: u64,
    /// Milliseconds a command may wait for a free backend connection when the backend's pool is busy; then it
    /// is answered with `ExceededTimeLimit` (262), which drivers retry.
    pub pool_wait_timeout_ms: u64,
    /// Seconds a connection may take from accept to a known tenant.
    pub auth_timeout_secs: u64,
    /// Open cursors tracked at once, across all tenants; beyond it the least recently used record is dropped
    /// (its cursor then answers CursorNotFound). Read at start.
    pub max_cursors: usize,
    /// Open cursors tracked at once per tenant; beyond it the tenant's own least recently used record is
    /// dropped. Read at start.
    pub max_cursors_per_tenant: usize,
    /// Seconds that commands in flight may take to finish after SIGTERM or SIGINT, before their connections are
    /// closed anyway.
    pub shutdown_grace_secs: u64,
    /// Default cap on `maxTimeMS` for every tenant's commands, in milliseconds (none by default).
    pub max_time_ms: Option<u64>,
    /// Default rate limit of every tenant without its own `rate_limit` (none by default).
    pub rate_limit: Option<RateLimitConfig>,
    /// Default cap on each tenant's commands in flight (forwarded, not yet answered) across its connections. A
    /// command beyond it waits up to `pool_wait_timeout_ms` for one to finish, then gets 462.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_unauthenticated_connections: 5_000,
            max_connections_per_ip: 2_000,
            max_unauthenticated_connections_per_ip: 500,
            auth_failures_before_refusal: 20,
            auth_failure_window_secs: 60,
            max_message_bytes: tenantwall_protocol::MAX_MESSAGE_SIZE,
            max_unauthenticated_message_bytes: 64 * 1024,
            frame_timeout_secs: 30,
            max_buffered_bytes: 512 * 1024 * 1024,
            client_write_timeout_secs: 30,
            backend_connect_timeout_ms: 5_000,
            backend_timeout_ms: 60_000,
            pool_wait_timeout_ms: 10_000,
            auth_timeout_secs: 60,
            max_cursors: 100_000,
            max_cursors_per_tenant: 10_000,
            shutdown_grace_secs: 30,
            max_time_ms: None,
            rate_limit: None,
            max_in_flight: 32,
        }
    }
}

impl Limits {
    /// The message size cap for a connection with or without a tenant.
    pub fn message_limit(&self, has_tenant: bool) -> usize {
        if has_tenant {
            self.max_message_bytes
        } else {
            self.max_unauthenticated_message_bytes.min(self.max_message_bytes)
        }
    }
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_secs(self.frame_timeout_secs)
    }
    pub fn client_write_timeout(&self) -> Duration {
        Duration::from_secs(self.client_write_timeout_secs)
    }
    pub fn backend_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.backend_connect_timeout_ms)
    }
    pub fn backend_timeout(&self) -> Duration {
        Duration::from_millis(self.backend_timeout_ms)
    }
    pub fn pool_wait_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_wait_timeout_ms)
    }
    pub fn auth_failure_window(&self) -> Duration {
        Duration::from_secs(self.auth_failure_window_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout_secs)
    }
}

/// One problem (or warning) in a policy file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the key's position is known.
    pub line: Option<usize>,
    /// Key path, e.g. `tenants[1].backend`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {}:{p}", path.display())).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

/// A parsed backend URI. Only what the proxy uses is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUri {
    /// `host:port` seeds, in order.
    pub hosts: Vec<String>,
    /// `tls=true` / `ssl=true`.
    pub tls: bool,
}

/// URI options understood (or harmlessly ignored) by the proxy; anything else is refused so that a typo cannot
/// silently drop a security setting such as `tls`.
const KNOWN_URI_OPTIONS: &[&str] = &["tls", "ssl", "directconnection", "replicaset", "authsource", "appname"];

impl BackendUri {
    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri.strip_prefix("mongodb://").ok_or("must start with mongodb://")?;
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("must not contain credentials; give them as a file or environment variable".into());
        }
        let mut hosts = Vec::new();
        for host in authority.split(',') {
            if host.is_empty() {
                return Err("has an empty host".into());
            }
            let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
                host.to_owned()
            } else {
                format!("{host}:27017")
            };
            let port_ok = with_port.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("host {host:?} has an invalid port"));
            }
            hosts.push(with_port);
        }
        let mut tls = false;
        if let Some((_, query)) = tail.split_once('?') {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').ok_or_else(|| format!("option {pair:?} has no value"))?;
                let key_lower = key.to_ascii_lowercase();
                if !KNOWN_URI_OPTIONS.contains(&key_lower.as_str()) {
                    return Err(format!("option {key:?} is not supported"));
                }
                if key_lower == "tls" || key_lower == "ssl" {
                    tls = match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("option {key:?} must be true or false")),
                    };
                }
            }
        }
        Ok(Self { hosts, tls })
    }
}

/// Reads and parses a policy file (no semantic validation yet).
pub fn read(path: &Path) -> Result<(PolicyFile, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let file = parse(&text, path)?;
    Ok((file, text))
}

/// Parses policy text; `path` only labels errors.
pub fn parse(text: &str, path: &Path) -> Result<PolicyFile, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// 1-based line of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).map_or(1, |before| before.bytes().filter(|b| *b == b'\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_with_line_and_key() {
        let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\n\n[[backends]]\nname = \"a\"\nuri = \"mongodb://x\"\nuser = \"x\"\n";
        let err = parse(text, Path::new("p.toml")).unwrap_err().to_string();
        assert!(err.contains("p.toml"), "{err}");
        assert!(err.contains("unknown field `user`"), "{err}");
        assert!(err.contains("line 7"), "{err}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let text = "[[listeners]]\naddress = 5\n[[backends]]\nname = \"a\"\nuri = \"mongodb://x\"\n";
        let err = parse(text, Path::new("p.toml")).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn uri_parsing() {
        let uri = BackendUri::parse("mongodb://a:1,b/?tls=true&replicaSet=rs0").unwrap();
        assert_eq!(uri.hosts, vec!["a:1".to_owned(), "b:27017".to_owned()]);
        assert!(uri.tls);
        assert_eq!(BackendUri::parse("mongodb://h?tls=false").unwrap().hosts, vec!["h:27017".to_owned()]);
        assert!(BackendUri::parse("mongodb://a/?tsl=true").is_err());
        assert!(BackendUri::parse("mongodb://a:99999").is_err());
        assert!(BackendUri::parse("postgres://a").is_err());
        assert!(BackendUri::parse("mongodb://a,,b").is_err());
        assert!(BackendUri::parse("mongodb://u:secret@a").unwrap_err().contains("credentials"));
    }
}
