//! `tenantwall audit`: reads every backend of a policy and reports isolation gaps in the data and each
//! tenant's usage.
//!
//! It owns the walk: every database and collection of every backend ([`catalog`] says which rule governs each),
//! a batched scan of every field-mode collection ([`documents`] says whose each document is), the indexes and
//! options of those collections ([`options`]), and the statistics of every tenant's own collections
//! ([`stats`]). The checks are pure functions over what was read; this module only reads and assembles the
//! [`Report`].
//!
//! It must never: write to a backend, hold more than one batch of a collection in memory, report a document's
//! values beyond its `_id` (not even the tenant value of a document that belongs to no tenant), or report a
//! clean result when something could not be read (that is a [`Problem`], and exit status 2).

pub mod catalog;
pub mod documents;
pub mod options;
pub mod render;
pub mod report;
pub mod stats;

use std::time::{Duration, Instant};

use crate::backend::BackendTarget;
use crate::engine::RESERVED_DATABASES;
use crate::lifecycle::client::{ClientError, CollectionInfo, ServiceClient, Timeouts, DEFAULT_BATCH_SIZE};
use crate::policy::{FieldName, Policy, Rule};
use catalog::{BackendView, Coverage, Level};
use documents::{Sample, Slot, Tally, Tenants};
pub use report::{Finding, Kind, Measure, Problem, Report, Severity, Source, Usage};

/// How the audit reads.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Documents per batch of every scan.
    pub batch_size: i32,
    /// Least time between two progress lines of one scan; zero reports every batch.
    pub progress_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { batch_size: DEFAULT_BATCH_SIZE, progress_every: Duration::from_secs(5) }
    }
}

/// Progress lines for long scans (the CLI writes them to stderr). Lines name backends, namespaces and counts.
pub struct Progress<'a> {
    sink: &'a mut dyn FnMut(&str),
    every: Duration,
    last: Option<Instant>,
}

impl<'a> Progress<'a> {
    pub fn new(sink: &'a mut dyn FnMut(&str), every: Duration) -> Self {
        Self { sink, every, last: None }
    }

    /// Reports a scan's count when `every` has passed since the last line.
    pub fn scanned(&mut self, backend: &str, namespace: &str, documents: u64, started: Instant) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < self.every)
            || (self.last.is_none() && now.duration_since(started) < self.every)
        {
            return;
        }
        self.last = Some(now);
        let secs = now.duration_since(started).as_secs();
        (self.sink)(&format!("backend {backend}: {namespace}: {documents} documents scanned ({secs} s)"));
    }

    fn say(&mut self, line: &str) {
        (self.sink)(line);
    }
}

/// Audits every backend of `policy`.
pub async fn run(policy: &Policy, settings: Settings, progress: &mut Progress<'_>) -> Report {
    let mut report = Report::default();
    let timeouts = Timeouts::from_limits(&policy.limits);
    for spec in &policy.backends {
        report.backends.push(spec.name.clone());
        let target = BackendTarget::new(spec.clone(), Default::default());
        progress.say(&format!("backend {}: reading", spec.name));
        let view = BackendView::new(policy, &spec.name);
        let mut audit = BackendAudit { policy, view, backend: &spec.name, settings, report: &mut report, progress };
        audit.run(&target, timeouts).await;
    }
    let mut tenants: Vec<(String, String)> =
        policy.tenant_ids().filter_map(|id| policy.tenant(id).map(|t| (id.to_owned(), t.backend.clone()))).collect();
    tenants.sort();
    report.finish(&tenants);
    report
}

/// The audit of one backend.
struct BackendAudit<'r, 'p, 'g> {
    policy: &'p Policy,
    view: BackendView<'p>,
    backend: &'p str,
    settings: Settings,
    report: &'r mut Report,
    progress: &'r mut Progress<'g>,
}

/// Whether the connection is gone after this error (so the rest of the backend cannot be read).
fn connection_lost(e: &ClientError) -> bool {
    matches!(e, ClientError::Unavailable { .. } | ClientError::Timeout { .. })
}

impl BackendAudit<'_, '_, '_> {
    async fn run(&mut self, target: &BackendTarget, timeouts: Timeouts) {
        let mut client = match ServiceClient::connect(target, timeouts).await {
            Ok(client) => client,
            Err(e) => return self.problem("connect", &e),
        };
        let mut databases = match client.list_database_names().await {
            Ok(names) => names,
            Err(e) => return self.problem("listDatabases", &e),
        };
        databases.retain(|db| !RESERVED_DATABASES.contains(&db.as_str()));
        databases.sort();
        for db in databases {
            // `database` has recorded what it could not read; stop only when the connection is gone.
            if let Err(e) = self.database(&mut client, &db).await {
                if connection_lost(&e) {
                    return;
                }
            }
        }
    }

    /// Reads one database. What cannot be read is recorded as a problem and the walk goes on; an error is
    /// returned when the walk stopped (the collections could not be listed, or the connection was lost).
    async fn database(&mut self, client: &mut ServiceClient, db: &str) -> Result<(), ClientError> {
        let mut collections = match client.list_collections(db).await {
            Ok(c) => c,
            Err(e) => {
                self.problem(&format!("{db} (listCollections)"), &e);
                return Err(e);
            }
        };
        collections.retain(|c| !c.name.starts_with("system."));
        collections.sort_by(|a, b| a.name.cmp(&b.name));
        let mut covered = false;
        let mut unreached = Vec::new();
        for info in &collections {
            let namespace = format!("{db}.{}", info.name);
            let outcome = match self.view.classify(db, &info.name) {
                Coverage::Field { field, .. } => {
                    covered = true;
                    self.field_collection(client, db, info, field).await
                }
                Coverage::Shared { .. } => {
                    covered = true;
                    Ok(())
                }
                Coverage::Owned { rule, tenant, visible } => {
                    covered = true;
                    if info.kind == "view" {
                        Ok(())
                    } else {
                        self.owned_collection(client, db, &info.name, rule, tenant, visible).await
                    }
                }
                Coverage::Contested { tenants } => {
                    covered = true;
                    self.finding(Kind::ContestedNamespace, &namespace, None, contested(&tenants), Vec::new());
                    Ok(())
                }
                unreached_coverage => {
                    unreached.push((info.name.clone(), unreached_coverage));
                    Ok(())
                }
            };
            if let Err(e) = outcome {
                self.problem(&namespace, &e);
                if connection_lost(&e) {
                    return Err(e);
                }
            }
        }
        let findings = unreached_findings(self.backend, db, covered, &unreached);
        self.report.findings.extend(findings);
        Ok(())
    }

    /// A field-mode collection: its options and indexes, then every document, batch by batch.
    async fn field_collection(
        &mut self,
        client: &mut ServiceClient,
        db: &str,
        info: &CollectionInfo,
        field: &FieldName,
    ) -> Result<(), ClientError> {
        let namespace = format!("{db}.{}", info.name);
        let safe = self.policy.collation_safe;
        for f in options::check_collection(&info.kind, &info.options, safe) {
            self.finding_with(f.severity, f.kind, &namespace, None, f.detail, Vec::new());
        }
        if info.kind == "view" {
            return Ok(());
        }
        let indexes = client.list_indexes(db, &info.name).await?;
        for f in options::check_indexes(indexes.iter().map(|d| d.as_ref()), field, safe) {
            self.finding_with(f.severity, f.kind, &namespace, None, f.detail, Vec::new());
        }
        let mut ids: Vec<&str> = self.policy.tenant_ids().collect();
        ids.sort_unstable();
        let tenants = Tenants::new(
            ids.iter()
                .filter_map(|id| self.policy.tenant(id).map(|t| (*id, t)))
                .map(|(id, t)| Slot { id, value: &t.value, here: t.backend == self.backend })
                .collect(),
        );
        let mut cursor = client.find(db, &info.name, bson::rawdoc! {}, None, self.settings.batch_size).await?;
        let mut tally = Tally::new(tenants.slots().len());
        let started = Instant::now();
        while let Some(batch) = cursor.next_batch(client).await? {
            for doc in &batch {
                tally.add(doc, field, &tenants);
            }
            self.progress.scanned(self.backend, &namespace, tally.scanned, started);
        }
        self.document_findings(&namespace, field, tenants.slots(), &tally);
        // Tenants of the backend without a document here are left out; the totals list every tenant.
        for (slot, usage) in tenants.slots().iter().zip(&tally.tenants).filter(|(s, u)| s.here && u.documents > 0) {
            self.report.usage.push(Usage {
                tenant: slot.id.to_owned(),
                backend: self.backend.to_owned(),
                mode: "field",
                namespace: namespace.clone(),
                visible: namespace.clone(),
                documents: usage.documents,
                data_bytes: Measure::Bytes(usage.bytes),
                index_bytes: Measure::Shared,
                source: Source::Scan,
            });
        }
        Ok(())
    }

    fn document_findings(&mut self, namespace: &str, field: &FieldName, slots: &[Slot<'_>], tally: &Tally) {
        let kinds: [(Kind, &Sample, String); 4] = [
            (Kind::UnstampedDocuments, &tally.unstamped, format!("no {field} (or null): no tenant reaches them")),
            (
                Kind::DuplicateTenantField,
                &tally.duplicate_field,
                format!("{field} more than once: which one the server matches is not defined"),
            ),
            (
                Kind::WrongTypeValues,
                &tally.wrong_type,
                format!("{field} of a type no tenant value has (arrays match several tenants)"),
            ),
            (Kind::ForeignValues, &tally.foreign, format!("{field} values that belong to no tenant of this backend")),
        ];
        for (kind, sample, detail) in kinds {
            if sample.count > 0 {
                self.finding(kind, namespace, Some(sample.count), detail, sample.ids.clone());
            }
        }
        for (slot, sample) in slots.iter().zip(&tally.misplaced).filter(|(_, s)| s.count > 0) {
            let backend = self.policy.tenant(slot.id).map_or("?", |t| t.backend.as_str());
            let detail = format!("{field} of tenant {}, which the policy places on backend {backend}", slot.id);
            self.finding(Kind::MisplacedDocuments, namespace, Some(sample.count), detail, sample.ids.clone());
        }
    }

    /// A tenant's own collection: its statistics.
    async fn owned_collection(
        &mut self,
        client: &mut ServiceClient,
        db: &str,
        collection: &str,
        rule: &Rule,
        tenant: String,
        visible: String,
    ) -> Result<(), ClientError> {
        let s = stats::collection_stats(client, db, collection, self.settings.batch_size, self.progress).await?;
        self.report.usage.push(Usage {
            tenant,
            backend: self.backend.to_owned(),
            mode: catalog::mode_name(rule.mode()),
            namespace: format!("{db}.{collection}"),
            visible,
            documents: s.documents,
            data_bytes: s.data,
            index_bytes: s.index,
            source: s.source,
        });
        Ok(())
    }

    fn finding(&mut self, kind: Kind, namespace: &str, count: Option<u64>, detail: String, ids: Vec<String>) {
        self.finding_with(Severity::Gap, kind, namespace, count, detail, ids);
    }

    fn finding_with(
        &mut self,
        severity: Severity,
        kind: Kind,
        namespace: &str,
        count: Option<u64>,
        detail: String,
        ids: Vec<String>,
    ) {
        self.report.findings.push(Finding {
            severity,
            kind,
            backend: self.backend.to_owned(),
            namespace: namespace.to_owned(),
            count,
            detail,
            ids,
        });
    }

    fn problem(&mut self, reading: &str, e: &ClientError) {
        self.progress.say(&format!("backend {}: cannot read {reading}: {e}", self.backend));
        self.report.problems.push(Problem {
            backend: self.backend.to_owned(),
            reading: reading.to_owned(),
            error: e.to_string(),
        });
    }
}

fn contested(tenants: &[String]) -> String {
    format!("reached by more than one tenant ({}), or both shared and a tenant's own", tenants.join(", "))
}

/// Findings for the collections of `db` that no tenant of `backend` reaches. A database with nothing covered
/// is reported once, as a whole, when all its collections are uncovered or all are one absent tenant's.
pub fn unreached_findings(
    backend: &str,
    db: &str,
    covered: bool,
    unreached: &[(String, Coverage<'_>)],
) -> Vec<Finding> {
    let gap = |kind, namespace: String, detail: String| Finding {
        severity: Severity::Gap,
        kind,
        backend: backend.to_owned(),
        namespace,
        count: None,
        detail,
        ids: Vec::new(),
    };
    if unreached.is_empty() {
        return Vec::new();
    }
    if !covered {
        if unreached.iter().all(|(_, c)| matches!(c, Coverage::Uncovered { shadowed_for: None })) {
            let detail = format!("no rule covers this database ({} collection(s))", unreached.len());
            return vec![gap(Kind::UncoveredDatabase, db.to_owned(), detail)];
        }
        let owner = |c: &Coverage<'_>| match c {
            Coverage::Orphan { level: Level::Database, tenant, placed_on, .. } => {
                Some((tenant.clone(), placed_on.clone()))
            }
            _ => None,
        };
        let first = unreached.first().and_then(|(_, c)| owner(c));
        if let Some((tenant, placed_on)) = first.filter(|f| unreached.iter().all(|(_, c)| owner(c).as_ref() == Some(f)))
        {
            let detail = format!("{} ({} collection(s))", absent(&tenant, placed_on.as_deref()), unreached.len());
            return vec![gap(Kind::OrphanDatabase, db.to_owned(), detail)];
        }
    }
    unreached
        .iter()
        .map(|(collection, coverage)| {
            let namespace = format!("{db}.{collection}");
            match coverage {
                Coverage::Orphan { rule, level, tenant, placed_on } => {
                    let kind = match level {
                        Level::Collection => Kind::OrphanCollection,
                        Level::Database => Kind::OrphanDatabase,
                    };
                    let detail = format!("named by {}: {}", rule.describe(), absent(tenant, placed_on.as_deref()));
                    gap(kind, namespace, detail)
                }
                Coverage::Uncovered { shadowed_for: Some(tenant) } => gap(
                    Kind::UncoveredCollection,
                    namespace,
                    format!("named like tenant {tenant}'s, but the first matching rule sends that name elsewhere"),
                ),
                _ => gap(Kind::UncoveredCollection, namespace, "no rule covers this collection".into()),
            }
        })
        .collect()
}

/// Why a per-tenant name has no owner here. The tenant id comes from the name, never from a document.
fn absent(tenant: &str, placed_on: Option<&str>) -> String {
    match placed_on {
        Some(backend) => format!("tenant {tenant} is placed on backend {backend}; this copy is left behind"),
        None => format!("the policy has no tenant {tenant}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_with_nothing_covered_is_reported_once() {
        let uncovered = |name: &str| (name.to_owned(), Coverage::Uncovered { shadowed_for: None });
        let found = unreached_findings("main", "billing", false, &[uncovered("a"), uncovered("b")]);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].kind, found[0].namespace.as_str()), (Kind::UncoveredDatabase, "billing"));
        let found = unreached_findings("main", "app", true, &[uncovered("sessions")]);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].kind, found[0].namespace.as_str()), (Kind::UncoveredCollection, "app.sessions"));
        assert!(unreached_findings("main", "app", true, &[]).is_empty());
    }

    #[test]
    fn progress_lines_are_spaced_by_the_interval() {
        let mut lines = Vec::new();
        let mut sink = |l: &str| lines.push(l.to_owned());
        let mut progress = Progress::new(&mut sink, Duration::from_secs(3600));
        let started = Instant::now();
        progress.scanned("main", "app.orders", 10, started);
        progress.scanned("main", "app.orders", 20, started);
        let mut every_batch = Progress::new(progress.sink, Duration::ZERO);
        every_batch.scanned("main", "app.orders", 30, started);
        every_batch.scanned("main", "app.orders", 40, started);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("app.orders: 40 documents scanned"), "{lines:?}");
    }
}
