//! The audit report as text tables (for people) and as JSON (for tools).
//!
//! Renders only what the [`Report`] holds: names, counts, sizes and `_id`s.

use super::report::{Finding, Kind, Report};

/// The report as JSON (one object: `backends`, `findings`, `usage`, `totals`, `problems`, `gaps`, `exit`).
pub fn json(report: &Report) -> String {
    let mut value = match serde_json::to_value(report) {
        Ok(v) => v,
        // Every field is a string, number or list of them: serialisation cannot fail; say so if it ever does.
        Err(e) => return format!("{{\"error\":{:?}}}", e.to_string()),
    };
    if let Some(object) = value.as_object_mut() {
        object.insert("gaps".into(), report.gaps().into());
        object.insert("notes".into(), report.notes().into());
        object.insert("exit".into(), report.exit_code().into());
    }
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// The kind as it appears in JSON (`unstamped-documents`).
pub fn kind_name(kind: Kind) -> String {
    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The report as text tables.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!("backends: {}\n\n", report.backends.join(", ")));
    out.push_str(&format!("findings: {} gap(s), {} note(s)\n", report.gaps(), report.notes()));
    if !report.findings.is_empty() {
        let rows = report.findings.iter().map(finding_row).collect();
        out.push_str(&table(&["SEVERITY", "KIND", "BACKEND", "NAMESPACE", "DOCUMENTS", "DETAIL"], rows));
    }
    out.push_str("\nusage per namespace\n");
    let rows = report
        .usage
        .iter()
        .map(|u| {
            vec![
                u.tenant.clone(),
                u.mode.to_owned(),
                u.backend.clone(),
                u.namespace.clone(),
                u.visible.clone(),
                u.documents.to_string(),
                u.data_bytes.to_string(),
                u.index_bytes.to_string(),
                serde_json::to_value(u.source).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "TENANT",
            "MODE",
            "BACKEND",
            "NAMESPACE",
            "AS THE TENANT NAMES IT",
            "DOCUMENTS",
            "DATA BYTES",
            "INDEX BYTES",
            "SOURCE",
        ],
        rows,
    ));
    out.push_str("\nusage per tenant\n");
    let rows = report
        .totals
        .iter()
        .map(|t| {
            vec![
                t.tenant.clone(),
                t.backend.clone(),
                t.namespaces.to_string(),
                t.documents.to_string(),
                t.data_bytes.to_string(),
                t.index_bytes.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["TENANT", "BACKEND", "NAMESPACES", "DOCUMENTS", "DATA BYTES", "OWN INDEX BYTES"], rows));
    if !report.problems.is_empty() {
        out.push_str("\ncould not read\n");
        let rows =
            report.problems.iter().map(|p| vec![p.backend.clone(), p.reading.clone(), p.error.clone()]).collect();
        out.push_str(&table(&["BACKEND", "READING", "ERROR"], rows));
    }
    out.push_str(&format!(
        "\nresult: {}\n",
        match report.exit_code() {
            0 => "no gap found".to_owned(),
            1 => format!("{} gap(s) found", report.gaps()),
            _ => "incomplete: some of the data could not be read (see above)".to_owned(),
        }
    ));
    out
}

fn finding_row(f: &Finding) -> Vec<String> {
    let severity = match f.severity {
        super::report::Severity::Gap => "gap",
        super::report::Severity::Note => "note",
    };
    let detail = if f.ids.is_empty() { f.detail.clone() } else { format!("{}; _id: {}", f.detail, f.ids.join(", ")) };
    vec![
        severity.to_owned(),
        kind_name(f.kind),
        f.backend.clone(),
        f.namespace.clone(),
        f.count.map_or_else(String::new, |c| c.to_string()),
        detail,
    ]
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<width$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::audit::report::{Measure, Severity, Source, Usage};

    #[test]
    fn text_and_json_carry_findings_usage_and_the_result() {
        let mut report = Report { backends: vec!["main".into()], ..Report::default() };
        report.findings.push(Finding {
            severity: Severity::Gap,
            kind: Kind::UnstampedDocuments,
            backend: "main".into(),
            namespace: "app.orders".into(),
            count: Some(2),
            detail: "no tenantId".into(),
            ids: vec!["1".into(), "2".into()],
        });
        report.usage.push(Usage {
            tenant: "acme".into(),
            backend: "main".into(),
            mode: "collection",
            namespace: "app.acme__orders".into(),
            visible: "app.orders".into(),
            documents: 3,
            data_bytes: Measure::Bytes(300),
            index_bytes: Measure::NotReported,
            source: Source::CollStatsStage,
        });
        report.finish(&[("acme".into(), "main".into())]);
        let text = text(&report);
        assert!(text.contains("gap       unstamped-documents  main     app.orders  2"), "{text}");
        assert!(text.contains("_id: 1, 2"), "{text}");
        assert!(text.contains("not reported by the backend") && text.contains("$collStats"), "{text}");
        assert!(text.contains("result: 1 gap(s) found"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&json(&report)).unwrap();
        assert_eq!(json["exit"], 1);
        assert_eq!(json["findings"][0]["kind"], "unstamped-documents");
        assert_eq!(json["usage"][0]["index_bytes"], "not reported by the backend");
        assert_eq!(json["totals"][0]["data_bytes"], 300);
    }
}
