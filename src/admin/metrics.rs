//! The Prometheus metrics: one registry per server, per-tenant families, and the handles a connection keeps.
//!
//! Labels come only from the policy (`tenant`: a tenant id, or `-` before the tenant is known), the command
//! surface (`command`: a [`CommandSpec`](crate::command::spec::CommandSpec) name, or `unknown`), backend names,
//! and fixed words (`outcome`, `result`). Nothing a client sends becomes a label, so the number of series is
//! bounded by the policy. A connection caches the handles of its tenant's series ([`TenantMetrics`]) so the
//! data path adds to atomics without looking anything up; only `commands_total` is looked up per command.
//!
//! What it must never do: take a label value from client input, or block the data path on the exporter.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::command::Command;

/// The `tenant` label before the tenant is known.
pub const NO_TENANT: &str = "-";

/// What became of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Relayed to the backend and answered.
    Forwarded,
    /// Refused by the policy (or the cursor table).
    Denied,
    /// Refused by the tenant's rate limit.
    RateLimited,
    /// Failed on the way to or from the backend.
    Error,
    /// Answered by the proxy itself (handshake, ping, SASL, tools).
    Local,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Denied => "denied",
            Self::RateLimited => "rate_limited",
            Self::Error => "error",
            Self::Local => "local",
        }
    }
}

/// The `command` label: the command surface's name, `unknown` for anything else.
pub fn command_label(command: Command) -> &'static str {
    command.spec().map_or("unknown", |spec| spec.name)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    tenant: Arc<String>,
    command: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 100 µs to about 150 s, ×2.5 per bucket.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    commands: Family<CommandLabels, Counter>,
    command_duration: Histograms<TenantLabel>,
    backend_duration: Histograms<BackendLabel>,
    backend_time: Family<TenantLabel, FloatCounter>,
    bytes_received: Family<TenantLabel, Counter>,
    bytes_sent: Family<TenantLabel, Counter>,
    documents_returned: Family<TenantLabel, Counter>,
    connections: Family<TenantLabel, Gauge>,
    rate_limited: Family<TenantLabel, Counter>,
    auth_failures: Counter,
    backend_errors: Family<BackendLabel, Counter>,
    backend_connections: Family<BackendLabel, Gauge>,
    worker_connections: Family<WorkerLabel, Gauge>,
    pool_timeouts: Family<BackendLabel, Counter>,
    key_derivations: Family<BackendLabel, Counter>,
    policy_reloads: Family<ResultLabel, Counter>,
    policy_generation: Gauge,
    audit_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let commands = Family::<CommandLabels, Counter>::default();
        let command_duration: Histograms<TenantLabel> = Family::new_with_constructor(latency_histogram);
        let backend_duration: Histograms<BackendLabel> = Family::new_with_constructor(latency_histogram);
        let backend_time = Family::<TenantLabel, FloatCounter>::default();
        let bytes_received = Family::<TenantLabel, Counter>::default();
        let bytes_sent = Family::<TenantLabel, Counter>::default();
        let documents_returned = Family::<TenantLabel, Counter>::default();
        let connections = Family::<TenantLabel, Gauge>::default();
        let rate_limited = Family::<TenantLabel, Counter>::default();
        let auth_failures = Counter::default();
        let backend_errors = Family::<BackendLabel, Counter>::default();
        let backend_connections = Family::<BackendLabel, Gauge>::default();
        let worker_connections = Family::<WorkerLabel, Gauge>::default();
        let pool_timeouts = Family::<BackendLabel, Counter>::default();
        let key_derivations = Family::<BackendLabel, Counter>::default();
        let policy_reloads = Family::<ResultLabel, Counter>::default();
        let policy_generation = Gauge::default();
        let audit_dropped = Counter::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "tenantwall_commands",
            "Commands by tenant, command and outcome (forwarded, denied, rate_limited, error, local)",
            commands.clone(),
        );
        registry.register(
            "tenantwall_command_duration_seconds",
            "Time from a command's arrival to its last reply byte written, as the client sees it",
            command_duration.clone(),
        );
        registry.register(
            "tenantwall_backend_duration_seconds",
            "Time the backend took to answer each forwarded command",
            backend_duration.clone(),
        );
        registry.register(
            "tenantwall_backend_time_seconds",
            "Backend time used by each tenant's commands: the basis for cost per tenant",
            backend_time.clone(),
        );
        registry.register("tenantwall_bytes_received", "Bytes of client messages received", bytes_received.clone());
        registry.register("tenantwall_bytes_sent", "Bytes of replies sent to clients", bytes_sent.clone());
        registry.register(
            "tenantwall_documents_returned",
            "Documents returned in cursor batches (firstBatch and nextBatch)",
            documents_returned.clone(),
        );
        registry.register("tenantwall_connections", "Client connections open now", connections.clone());
        registry.register(
            "tenantwall_rate_limited",
            "Commands refused by the tenant's rate limit",
            rate_limited.clone(),
        );
        registry.register("tenantwall_auth_failures", "Failed SCRAM authentications", auth_failures.clone());
        registry.register(
            "tenantwall_backend_errors",
            "Backend failures (unreachable, broken reply, timeout) per backend",
            backend_errors.clone(),
        );
        registry.register(
            "tenantwall_backend_connections",
            "Backend connections open now per backend (idle, busy or being opened): at most backends[].max_connections",
            backend_connections.clone(),
        );
        registry.register(
            "tenantwall_worker_working_connections",
            "Client connections that have carried a forwarded command, per worker thread: a new connection goes to a worker with the fewest",
            worker_connections.clone(),
        );
        registry.register(
            "tenantwall_backend_pool_timeouts",
            "Commands refused because every backend connection stayed busy for limits.pool_wait_timeout_ms",
            pool_timeouts.clone(),
        );
        registry.register(
            "tenantwall_backend_key_derivations",
            "SCRAM key derivations (PBKDF2) for the backend's service user: once per salt and iteration count",
            key_derivations.clone(),
        );
        registry.register(
            "tenantwall_policy_reloads",
            "Policy reloads by result (ok, invalid)",
            policy_reloads.clone(),
        );
        registry.register(
            "tenantwall_policy_generation",
            "The policy generation in force (1 at start, +1 per reload applied)",
            policy_generation.clone(),
        );
        registry.register(
            "tenantwall_audit_dropped",
            "Audit records dropped because the audit queue was full",
            audit_dropped.clone(),
        );
        policy_generation.set(1);
        Self {
            registry,
            commands,
            command_duration,
            backend_duration,
            backend_time,
            bytes_received,
            bytes_sent,
            documents_returned,
            connections,
            rate_limited,
            auth_failures,
            backend_errors,
            backend_connections,
            worker_connections,
            pool_timeouts,
            key_derivations,
            policy_reloads,
            policy_generation,
            audit_dropped,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one command of the connection holding `tenant`.
    pub fn command(&self, tenant: &mut TenantMetrics, command: Command, outcome: Outcome) {
        // A connection mostly repeats one command: its last series is kept, and the family (a lock and a hash
        // of the labels) is asked only when the command or outcome changes. Series are never removed.
        match &tenant.last_command {
            Some((key, counter)) if *key == (command, outcome) => {
                counter.inc();
            }
            _ => {
                let labels = CommandLabels {
                    tenant: tenant.tenant.clone(),
                    command: command_label(command),
                    outcome: outcome.as_str(),
                };
                let counter = self.commands.get_or_create(&labels).clone();
                counter.inc();
                tenant.last_command = Some(((command, outcome), counter));
            }
        }
    }

    /// Time `backend` took to answer a command of the connection holding `tenant` (its last backend's series is
    /// kept, as in [`Metrics::command`]).
    pub fn backend_duration(&self, tenant: &mut TenantMetrics, backend: &str, took: Duration) {
        match &tenant.last_backend {
            Some((name, histogram)) if name.as_str() == backend => histogram.observe(took.as_secs_f64()),
            _ => {
                let histogram =
                    self.backend_duration.get_or_create(&BackendLabel { backend: backend.to_owned() }).clone();
                histogram.observe(took.as_secs_f64());
                tenant.last_backend = Some((backend.to_owned(), histogram));
            }
        }
    }

    pub fn backend_error(&self, backend: &str) {
        self.backend_errors.get_or_create(&BackendLabel { backend: backend.to_owned() }).inc();
    }

    /// Where `backend`'s target reports (its pool's open connections, its key derivations).
    pub fn backend_target(&self, backend: &str) -> crate::backend::TargetMetrics {
        let label = BackendLabel { backend: backend.to_owned() };
        crate::backend::TargetMetrics {
            open: self.backend_connections.get_or_create(&label).clone(),
            key_derivations: self.key_derivations.get_or_create(&label).clone(),
        }
    }

    /// Where worker `index` counts its working connections ([`crate::workers::Workers::start_counted`]).
    pub fn worker_connections(&self, index: usize) -> Gauge {
        self.worker_connections.get_or_create(&WorkerLabel { worker: index.to_string() }).clone()
    }

    pub fn pool_timeout(&self, backend: &str) {
        self.pool_timeouts.get_or_create(&BackendLabel { backend: backend.to_owned() }).inc();
    }

    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    /// A reload attempt: `ok` when the new policy was swapped in.
    pub fn policy_reload(&self, ok: bool, generation: u64) {
        let result = if ok { "ok" } else { "invalid" };
        self.policy_reloads.get_or_create(&ResultLabel { result }).inc();
        self.policy_generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    pub fn audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    /// Handles for a connection of `tenant` (or [`NO_TENANT`]), counted in `tenantwall_connections` until dropped.
    pub fn connection(&self, tenant: &str) -> TenantMetrics {
        self.handles(tenant).1
    }

    /// Moves a connection to `tenant`, unless that would exceed `cap` connections of the tenant: then the
    /// connection keeps its handles and `false` is returned.
    pub fn move_connection(&self, handles: &mut TenantMetrics, tenant: &str, cap: Option<usize>) -> bool {
        if *handles.tenant == *tenant {
            return true;
        }
        // Counted first, then checked: two connections racing for the last slot cannot both get it.
        let (before, next) = self.handles(tenant);
        if cap.is_some_and(|cap| usize::try_from(before).unwrap_or(0) >= cap) {
            // Dropping `next` takes the count back.
            return false;
        }
        // Dropping the old handles takes the connection off its previous tenant's gauge.
        *handles = next;
        true
    }

    /// A connection's handles on `tenant`'s series, counted on its gauge; also the count before it.
    fn handles(&self, tenant: &str) -> (i64, TenantMetrics) {
        let label = TenantLabel { tenant: Arc::new(tenant.to_owned()) };
        let connections = self.connections.get_or_create(&label).clone();
        let before = connections.inc();
        let handles = TenantMetrics {
            command_duration: self.command_duration.get_or_create(&label).clone(),
            backend_time: self.backend_time.get_or_create(&label).clone(),
            bytes_received: self.bytes_received.get_or_create(&label).clone(),
            bytes_sent: self.bytes_sent.get_or_create(&label).clone(),
            documents_returned: self.documents_returned.get_or_create(&label).clone(),
            connections,
            rate_limited: self.rate_limited.get_or_create(&label).clone(),
            tenant: label.tenant,
            last_command: None,
            last_backend: None,
        };
        (before, handles)
    }
}

/// One connection's handles on its tenant's series. Dropping it takes the connection off the gauge.
pub struct TenantMetrics {
    tenant: Arc<String>,
    pub command_duration: Histogram,
    pub backend_time: FloatCounter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub documents_returned: Counter,
    connections: Gauge,
    pub rate_limited: Counter,
    /// The series of the last command counted ([`Metrics::command`]).
    last_command: Option<((Command, Outcome), Counter)>,
    /// The series of the last backend timed ([`Metrics::backend_duration`]).
    last_backend: Option<(String, Histogram)>,
}

impl TenantMetrics {
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Drop for TenantMetrics {
    fn drop(&mut self) {
        self.connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_move_between_tenants_and_respect_the_cap() {
        let metrics = Arc::new(Metrics::new());
        let mut a = metrics.connection(NO_TENANT);
        let mut b = metrics.connection(NO_TENANT);
        assert!(metrics.move_connection(&mut a, "acme", Some(1)));
        assert!(!metrics.move_connection(&mut b, "acme", Some(1)), "second acme connection is over the cap");
        assert_eq!(b.tenant(), NO_TENANT);
        let text = metrics.encode();
        assert!(text.contains("tenantwall_connections{tenant=\"acme\"} 1\n"), "{text}");
        assert!(text.contains("tenantwall_connections{tenant=\"-\"} 1\n"), "{text}");
        drop(a);
        assert!(metrics.move_connection(&mut b, "acme", Some(1)), "room again once the first one left");
        let text = metrics.encode();
        assert!(text.contains("tenantwall_connections{tenant=\"acme\"} 1\n"), "{text}");
        assert!(text.contains("tenantwall_connections{tenant=\"-\"} 0\n"), "{text}");
    }

    #[test]
    fn command_labels_come_from_the_surface() {
        let metrics = Arc::new(Metrics::new());
        let mut conn = metrics.connection("acme");
        metrics.command(&mut conn, Command::from_name("find"), Outcome::Forwarded);
        metrics.command(&mut conn, Command::from_name("frobnicate"), Outcome::Denied);
        // The same command again, and back: each counted on its own series.
        metrics.command(&mut conn, Command::from_name("frobnicate"), Outcome::Denied);
        metrics.command(&mut conn, Command::from_name("find"), Outcome::Forwarded);
        metrics.command(&mut conn, Command::from_name("find"), Outcome::Denied);
        metrics.backend_duration(&mut conn, "b1", Duration::from_millis(1));
        metrics.backend_duration(&mut conn, "b1", Duration::from_millis(1));
        metrics.backend_duration(&mut conn, "b2", Duration::from_millis(1));
        let text = metrics.encode();
        assert!(text.contains(r#"tenantwall_commands_total{tenant="acme",command="find",outcome="forwarded"} 2"#));
        assert!(text.contains(r#"tenantwall_commands_total{tenant="acme",command="find",outcome="denied"} 1"#));
        assert!(text.contains(r#"tenantwall_commands_total{tenant="acme",command="unknown",outcome="denied"} 2"#));
        assert!(text.contains(r#"_count{backend="b1"} 2"#), "{text}");
        assert!(text.contains(r#"_count{backend="b2"} 1"#), "{text}");
        assert!(!text.contains("frobnicate"));
    }
}
