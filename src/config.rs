//! The policy file: listeners, backends and limits (tenants and namespace rules join in later sections).
//!
//! Parsing is strict (`deny_unknown_fields`), and [`Policy::validate`] reports every problem with the key it
//! concerns, so a security team reviewing a file sees all that is wrong at once. The file never holds secrets:
//! a backend URI with a password in it is a validation error.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A whole policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Client-facing addresses the proxy listens on.
    pub listeners: Vec<ListenerConfig>,
    /// MongoDB deployments the proxy forwards to.
    pub backends: Vec<BackendConfig>,
    /// Resource limits; every field has a safe default.
    #[serde(default)]
    pub limits: Limits,
}

/// One client-facing listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `host:port` to bind, e.g. `127.0.0.1:27018`; port 0 picks a free port.
    pub address: String,
}

/// One MongoDB deployment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Name tenants refer to.
    pub name: String,
    /// `mongodb://host[:port][,host[:port]...]/[?options]`, without credentials.
    pub uri: String,
    /// Caps the wire version the proxy advertises for this backend (e.g. 21 to hide MongoDB 8 commands).
    #[serde(default)]
    pub max_wire_version: Option<i32>,
}

/// Resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections served at once; further connections are closed at accept.
    pub max_connections: usize,
    /// Largest message accepted from a client, in bytes (at most 48,000,000).
    pub max_message_bytes: usize,
    /// Seconds a client may take to finish sending a message once it has started one.
    pub frame_timeout_secs: u64,
    /// Milliseconds allowed to open a backend connection.
    pub backend_connect_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_message_bytes: tenantwall_protocol::MAX_MESSAGE_SIZE,
            frame_timeout_secs: 30,
            backend_connect_timeout_ms: 5_000,
        }
    }
}

impl Limits {
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_secs(self.frame_timeout_secs)
    }
    pub fn backend_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.backend_connect_timeout_ms)
    }
}

/// One thing wrong with a policy: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `backends[0].uri`.
    pub location: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
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
        let (authority, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            },
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

impl Policy {
    /// Reads, parses and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates policy text; `path` only labels errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let policy: Policy =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let problems = policy.validate();
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(ConfigError::Invalid { path: path.to_owned(), problems })
        }
    }

    /// Every problem in the policy, with its location. Empty means valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |location: String, message: String| problems.push(Problem { location, message });
        if self.listeners.is_empty() {
            problem("listeners".into(), "at least one listener is required".into());
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            if listener.address.parse::<SocketAddr>().is_err() {
                problem(format!("listeners[{i}].address"), format!("{:?} is not an ip:port address", listener.address));
            }
        }
        if self.backends.is_empty() {
            problem("backends".into(), "at least one backend is required".into());
        }
        if self.backends.len() > 1 {
            problem("backends".into(), "more than one backend needs tenants to route by; define exactly one".into());
        }
        for (i, backend) in self.backends.iter().enumerate() {
            if backend.name.is_empty() {
                problem(format!("backends[{i}].name"), "must not be empty".into());
            }
            if self.backends[..i].iter().any(|b| b.name == backend.name) {
                problem(format!("backends[{i}].name"), format!("duplicate backend name {:?}", backend.name));
            }
            match BackendUri::parse(&backend.uri) {
                // The URI may hold a secret by mistake: never echo it.
                Err(message) => problem(format!("backends[{i}].uri"), message),
                // Refuse rather than silently connect in plaintext.
                Ok(uri) if uri.tls => problem(format!("backends[{i}].uri"), "tls=true is not supported yet".into()),
                Ok(_) => {}
            }
            if let Some(v) = backend.max_wire_version {
                if !(0..=99).contains(&v) {
                    problem(format!("backends[{i}].max_wire_version"), format!("{v} is out of range"));
                }
            }
        }
        let limits = &self.limits;
        if limits.max_connections == 0 {
            problem("limits.max_connections".into(), "must be at least 1".into());
        }
        if !(1024..=tenantwall_protocol::MAX_MESSAGE_SIZE).contains(&limits.max_message_bytes) {
            problem(
                "limits.max_message_bytes".into(),
                format!("must be between 1024 and {}", tenantwall_protocol::MAX_MESSAGE_SIZE),
            );
        }
        if limits.frame_timeout_secs == 0 {
            problem("limits.frame_timeout_secs".into(), "must be at least 1".into());
        }
        if limits.backend_connect_timeout_ms == 0 {
            problem("limits.backend_connect_timeout_ms".into(), "must be at least 1".into());
        }
        problems
    }

    /// The first (for now, only) backend.
    pub fn default_backend(&self) -> Option<&BackendConfig> {
        self.backends.first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[listeners]]
address = "127.0.0.1:27018"

[[backends]]
name = "main"
uri = "mongodb://127.0.0.1:27017/?directConnection=true"
"#;

    #[test]
    fn parses_a_minimal_policy() {
        let policy = Policy::from_toml(GOOD, Path::new("p.toml")).unwrap();
        assert_eq!(policy.listeners[0].address, "127.0.0.1:27018");
        assert_eq!(policy.limits.max_connections, 10_000);
        let uri = BackendUri::parse(&policy.backends[0].uri).unwrap();
        assert_eq!(uri.hosts, vec!["127.0.0.1:27017".to_owned()]);
        assert!(!uri.tls);
    }

    #[test]
    fn unknown_keys_are_errors_with_location() {
        let text = GOOD.replace("name = \"main\"", "name = \"main\"\nuser = \"x\"");
        let err = Policy::from_toml(&text, Path::new("p.toml")).unwrap_err().to_string();
        assert!(err.contains("p.toml"), "{err}");
        assert!(err.contains("unknown field `user`"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn reports_every_problem_and_never_echoes_credentials() {
        let text = r#"
[[listeners]]
address = "nowhere"

[[backends]]
name = "a"
uri = "mongodb://svc:hunter2@db:27017/"

[limits]
max_connections = 0
"#;
        let err = Policy::from_toml(text, Path::new("p.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else { panic!("{err}") };
        let locations: Vec<_> = problems.iter().map(|p| p.location.as_str()).collect();
        assert_eq!(locations, ["listeners[0].address", "backends[0].uri", "limits.max_connections"]);
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn uri_parsing() {
        let uri = BackendUri::parse("mongodb://a:1,b/?tls=true&replicaSet=rs0").unwrap();
        assert_eq!(uri.hosts, vec!["a:1".to_owned(), "b:27017".to_owned()]);
        assert!(uri.tls);
        assert!(BackendUri::parse("mongodb://a/?tsl=true").is_err());
        assert!(BackendUri::parse("mongodb://a:99999").is_err());
        assert!(BackendUri::parse("postgres://a").is_err());
        assert!(BackendUri::parse("mongodb://a,,b").is_err());
    }
}
