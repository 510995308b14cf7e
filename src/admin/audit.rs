//! The JSON-lines audit log: one object per denial, audit-style finding, rate-limit refusal and (optionally)
//! forwarded write.
//!
//! Connections hand records to a bounded queue with `try_send`; a dedicated thread writes them, one line each,
//! flushing whenever the queue is empty. A full queue drops the record and counts it
//! (`tenantwall_audit_dropped_total`): the data path never waits for the disk. SIGUSR1 asks the writer to reopen
//! the file before its next record, for log rotation.
//!
//! What it must never do: record a document, a filter value or a secret. A record holds names only: tenant, user,
//! command (from the command surface), namespace as the tenant sees it, the rule, and the reason the proxy also
//! sends the client (which names fields and operators, never values).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bson::RawDocument;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::warn;

use super::metrics::Metrics;
use crate::policy::{AuditSettings, AuditTarget, Policy};

/// What the proxy decided about the command a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDecision {
    /// Refused by the policy.
    Denied,
    /// Forwarded unchanged under an `audit`-style rule that would have changed or refused it.
    AuditFinding,
    /// Refused by the tenant's rate limit.
    RateLimited,
    /// A write that was forwarded (with `log_writes = true`).
    Write,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub tenant: String,
    pub user: Option<String>,
    pub client: String,
    pub connection_id: u64,
    pub request_id: i32,
    pub command: &'static str,
    /// `db.collection` (or `db`) as the tenant named it.
    pub namespace: Option<String>,
    pub rule: Option<String>,
    pub decision: AuditDecision,
    pub reason: String,
}

impl AuditRecord {
    pub fn now() -> String {
        bson::DateTime::now().try_to_rfc3339_string().unwrap_or_default()
    }
}

/// The namespace a command names, as the tenant sees it: `$db`, and the collection when the command's first
/// field holds one.
pub fn visible_namespace(body: &RawDocument) -> Option<String> {
    let db = body.get_str("$db").ok()?;
    let first = body.iter_elements().next().and_then(Result::ok)?;
    match first.value().ok().and_then(|v| v.as_str()) {
        Some(coll) if !coll.is_empty() => Some(format!("{db}.{coll}")),
        _ => Some(db.to_owned()),
    }
}

/// The rule governing `namespace` (as [`visible_namespace`] gives it) for `tenant`, for the record.
pub fn rule_of(policy: &Policy, tenant: &str, namespace: Option<&str>) -> Option<String> {
    let (db, coll) = namespace?.split_once('.').unwrap_or((namespace?, ""));
    let rule = if coll.is_empty() { policy.any_rule_for_db(tenant, db) } else { policy.rule_for(tenant, db, coll) };
    rule.map(|r| r.describe())
}

/// The sending side of the audit log; a no-op when no `[audit]` is configured.
#[derive(Clone, Default)]
pub struct AuditLog {
    queue: Option<mpsc::Sender<AuditRecord>>,
    log_writes: bool,
    metrics: Option<Arc<Metrics>>,
    reopen: Arc<AtomicBool>,
}

impl AuditLog {
    /// Starts the writer thread for `settings`. Fails when the file cannot be opened.
    pub fn start(settings: &AuditSettings, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let sink = Sink::open(&settings.target)?;
        let (queue, records) = mpsc::channel(settings.queue);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        let target = settings.target.clone();
        std::thread::Builder::new()
            .name("tenantwall-audit".into())
            .spawn(move || write_records(sink, records, &target, &flag))?;
        Ok(Self { queue: Some(queue), log_writes: settings.log_writes, metrics: Some(metrics), reopen })
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Whether forwarded writes are recorded.
    pub fn log_writes(&self) -> bool {
        self.log_writes && self.enabled()
    }

    /// Queues `record`, or drops and counts it when the queue is full.
    pub fn record(&self, record: AuditRecord) {
        let Some(queue) = &self.queue else { return };
        if queue.try_send(record).is_err() {
            if let Some(metrics) = &self.metrics {
                metrics.audit_dropped();
            }
        }
    }

    /// Reopens the file before the next record (SIGUSR1).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

enum Sink {
    Stdout,
    File(BufWriter<File>),
}

impl Sink {
    fn open(target: &AuditTarget) -> std::io::Result<Self> {
        match target {
            AuditTarget::Stdout => Ok(Self::Stdout),
            AuditTarget::File(path) => {
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                Ok(Self::File(BufWriter::new(file)))
            }
        }
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stdout => std::io::stdout().lock().write_all(line),
            Self::File(file) => file.write_all(line),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout => std::io::stdout().lock().flush(),
            Self::File(file) => file.flush(),
        }
    }
}

fn write_records(mut sink: Sink, mut records: mpsc::Receiver<AuditRecord>, target: &AuditTarget, reopen: &AtomicBool) {
    while let Some(record) = records.blocking_recv() {
        if reopen.swap(false, Ordering::Relaxed) {
            let _ = sink.flush();
            match Sink::open(target) {
                Ok(fresh) => sink = fresh,
                Err(e) => warn!(error = %e, "cannot reopen the audit log; still writing to the old file"),
            }
        }
        let mut next = Some(record);
        while let Some(record) = next {
            match serde_json::to_vec(&record) {
                Ok(mut line) => {
                    line.push(b'\n');
                    if let Err(e) = sink.write(&line) {
                        warn!(error = %e, "audit log write failed");
                    }
                }
                Err(e) => warn!(error = %e, "audit record not serialisable"),
            }
            next = records.try_recv().ok();
        }
        if let Err(e) = sink.flush() {
            warn!(error = %e, "audit log flush failed");
        }
    }
    let _ = sink.flush();
}

#[cfg(test)]
mod tests {
    use bson::rawdoc;

    use super::*;

    #[test]
    fn namespaces_as_the_tenant_named_them() {
        assert_eq!(visible_namespace(&rawdoc! {"find": "orders", "$db": "app"}).as_deref(), Some("app.orders"));
        assert_eq!(visible_namespace(&rawdoc! {"aggregate": 1, "$db": "app"}).as_deref(), Some("app"));
        assert_eq!(visible_namespace(&rawdoc! {"find": "orders"}), None);
    }

    fn record(request_id: i32) -> AuditRecord {
        AuditRecord {
            time: AuditRecord::now(),
            tenant: "acme".into(),
            user: Some("app".into()),
            client: "127.0.0.1".into(),
            connection_id: 1,
            request_id,
            command: "find",
            namespace: Some("app.orders".into()),
            rule: None,
            decision: AuditDecision::Denied,
            reason: "no".into(),
        }
    }

    fn lines_of(path: &std::path::Path, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= n || std::time::Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn reopens_after_rotation() {
        let dir = std::env::temp_dir().join(format!("tenantwall-audit-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let settings = AuditSettings { target: AuditTarget::File(path.clone()), log_writes: false, queue: 16 };
        let log = AuditLog::start(&settings, Arc::new(Metrics::new())).unwrap();
        log.record(record(1));
        assert_eq!(lines_of(&path, 1).len(), 1);
        std::fs::rename(&path, dir.join("audit.jsonl.1")).unwrap();
        log.reopen();
        log.record(record(2));
        let fresh = lines_of(&path, 1);
        assert_eq!(fresh.len(), 1, "the new file gets the next record");
        assert!(fresh[0].contains("\"request_id\":2"), "{fresh:?}");
        assert_eq!(lines_of(&dir.join("audit.jsonl.1"), 1).len(), 1, "the rotated file keeps the old one");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let metrics = Arc::new(Metrics::new());
        let (queue, _records) = mpsc::channel(1);
        let log =
            AuditLog { queue: Some(queue), log_writes: false, metrics: Some(metrics.clone()), reopen: Arc::default() };
        log.record(record(1));
        log.record(record(2));
        assert!(metrics.encode().contains("tenantwall_audit_dropped_total 1\n"));
    }
}
