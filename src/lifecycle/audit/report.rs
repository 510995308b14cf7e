//! The audit report: findings (gaps and notes), per-tenant usage, and what could not be read.
//!
//! Everything in it is a name from the catalog or the policy, a count, a byte size, or a document `_id`: it
//! never holds a document's other values, so it can be printed and shipped as it is.

use serde::Serialize;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data one tenant can see or change, or that the policy does not govern: `audit` exits 1.
    Gap,
    /// Shared behaviour an operator should know of, which lets no tenant reach another's data.
    Note,
}

/// What was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Field-mode documents without the tenant field (or with null).
    UnstampedDocuments,
    /// Field-mode documents with the tenant field more than once.
    DuplicateTenantField,
    /// Field-mode documents whose tenant value has a type no tenant value has (arrays included).
    WrongTypeValues,
    /// Field-mode documents whose tenant value belongs to no tenant.
    ForeignValues,
    /// Field-mode documents of a tenant the policy places on another backend.
    MisplacedDocuments,
    /// A collection no rule covers.
    UncoveredCollection,
    /// A database none of whose collections a rule covers.
    UncoveredDatabase,
    /// A per-tenant collection of a tenant the policy does not place on this backend.
    OrphanCollection,
    /// A per-tenant database of a tenant the policy does not place on this backend.
    OrphanDatabase,
    /// A namespace more than one tenant reaches as its own.
    ContestedNamespace,
    /// A unique index on a shared collection whose key does not start with the tenant field.
    UniqueIndex,
    /// A unique index whose collation can find two tenants' values equal.
    IndexCollation,
    /// A TTL index on a shared collection.
    TtlIndex,
    /// A partial index on a shared collection.
    PartialIndex,
    /// A validator on a shared collection.
    Validator,
    /// A default collation on a shared collection.
    Collation,
    /// A capped shared collection.
    Capped,
    /// A view in a field-mode namespace.
    View,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: Kind,
    pub backend: String,
    /// The real namespace (`db.collection`, or `db` for a database).
    pub namespace: String,
    /// Documents concerned, for document findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    pub detail: String,
    /// `_id`s of the first documents concerned.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// A size the backend may or may not tell. In JSON: a number, or `"shared"` / `"not reported by the backend"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Bytes(u64),
    /// Shared with other tenants (field mode): not attributable to one.
    Shared,
    /// The backend has no command that reports it.
    NotReported,
}

impl Serialize for Measure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Bytes(n) => s.serialize_u64(*n),
            Self::Shared => s.serialize_str(Self::SHARED),
            Self::NotReported => s.serialize_str(Self::NOT_REPORTED),
        }
    }
}

impl Measure {
    pub const SHARED: &'static str = "shared";
    pub const NOT_REPORTED: &'static str = "not reported by the backend";

    pub fn bytes(self) -> Option<u64> {
        match self {
            Self::Bytes(n) => Some(n),
            Self::Shared | Self::NotReported => None,
        }
    }
}

impl std::fmt::Display for Measure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(n) => write!(f, "{n}"),
            Self::Shared => f.write_str(Self::SHARED),
            Self::NotReported => f.write_str(Self::NOT_REPORTED),
        }
    }
}

/// Where the numbers of a usage row come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// Counted document by document (field mode, or a backend without statistics).
    Scan,
    /// The `$collStats` aggregation stage.
    #[serde(rename = "$collStats")]
    CollStatsStage,
    /// The `collStats` command.
    CollStats,
}

/// One tenant's data in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub tenant: String,
    pub backend: String,
    /// `field`, `collection` or `database`.
    pub mode: &'static str,
    /// The real namespace.
    pub namespace: String,
    /// The namespace as the tenant names it.
    pub visible: String,
    pub documents: u64,
    pub data_bytes: Measure,
    pub index_bytes: Measure,
    pub source: Source,
}

/// One tenant's usage summed over its namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantTotal {
    pub tenant: String,
    pub backend: String,
    pub namespaces: usize,
    pub documents: u64,
    /// Data bytes of the namespaces that report them.
    pub data_bytes: u64,
    /// Index bytes of the tenant's own namespaces: not reported when one of them does not report its own,
    /// shared when the tenant has only field-mode namespaces (shared indexes are not attributed).
    pub index_bytes: Measure,
}

/// Something the audit could not read: the report is then incomplete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub backend: String,
    /// What was being read, e.g. `app.orders` or `listDatabases`.
    pub reading: String,
    pub error: String,
}

/// The whole audit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub backends: Vec<String>,
    pub findings: Vec<Finding>,
    pub usage: Vec<Usage>,
    pub totals: Vec<TenantTotal>,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn gaps(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == Severity::Gap).count()
    }

    pub fn notes(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == Severity::Note).count()
    }

    /// 0: read everything, no gap; 1: a gap; 2: something could not be read (whatever else was found), so
    /// the absence of gaps proves nothing.
    pub fn exit_code(&self) -> u8 {
        if !self.problems.is_empty() {
            2
        } else if self.gaps() > 0 {
            1
        } else {
            0
        }
    }

    /// Sorts findings (gaps first) and usage, and sums usage per tenant, for every tenant of `tenants`
    /// (id, backend), so tenants without data appear with zeros.
    pub fn finish(&mut self, tenants: &[(String, String)]) {
        self.findings.sort_by(|a, b| {
            (a.severity, &a.backend, &a.namespace, a.kind).cmp(&(b.severity, &b.backend, &b.namespace, b.kind))
        });
        self.usage.sort_by(|a, b| (&a.tenant, &a.namespace).cmp(&(&b.tenant, &b.namespace)));
        self.totals = tenants
            .iter()
            .map(|(tenant, backend)| {
                let rows: Vec<&Usage> = self.usage.iter().filter(|u| &u.tenant == tenant).collect();
                TenantTotal {
                    tenant: tenant.clone(),
                    backend: backend.clone(),
                    namespaces: rows.len(),
                    documents: rows.iter().map(|u| u.documents).sum(),
                    data_bytes: rows.iter().filter_map(|u| u.data_bytes.bytes()).sum(),
                    index_bytes: own_index_bytes(&rows),
                }
            })
            .collect();
        self.totals.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    }
}

/// The index bytes of a tenant's own namespaces among `rows`.
fn own_index_bytes(rows: &[&Usage]) -> Measure {
    let own: Vec<Measure> = rows.iter().map(|u| u.index_bytes).filter(|m| *m != Measure::Shared).collect();
    if own.is_empty() {
        return Measure::Shared;
    }
    own.iter()
        .try_fold(0_u64, |sum, m| m.bytes().map(|b| sum.saturating_add(b)))
        .map_or(Measure::NotReported, Measure::Bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(severity: Severity) -> Finding {
        Finding {
            severity,
            kind: Kind::TtlIndex,
            backend: "main".into(),
            namespace: "app.orders".into(),
            count: None,
            detail: String::new(),
            ids: Vec::new(),
        }
    }

    #[test]
    fn the_exit_code_says_gap_or_incomplete() {
        let mut report = Report::default();
        assert_eq!(report.exit_code(), 0);
        report.findings.push(finding(Severity::Note));
        assert_eq!(report.exit_code(), 0);
        report.findings.push(finding(Severity::Gap));
        assert_eq!(report.exit_code(), 1);
        report.problems.push(Problem { backend: "main".into(), reading: "x".into(), error: "y".into() });
        assert_eq!(report.exit_code(), 2);
    }

    #[test]
    fn measures_serialise_as_numbers_or_words() {
        let json = serde_json::to_string(&[Measure::Bytes(5), Measure::Shared, Measure::NotReported]).unwrap();
        assert_eq!(json, r#"[5,"shared","not reported by the backend"]"#);
    }
}
