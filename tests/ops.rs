//! The operator examples in `ops/` parse, and every metric they name is one the proxy exports.

use std::collections::BTreeSet;

use tenantwall::admin::metrics::Metrics;

fn repo(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every series name the exporter can produce: counters with `_total`, histograms with their three series.
fn exported() -> BTreeSet<String> {
    let text = Metrics::new().encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').expect("TYPE line");
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The `tenantwall_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tenantwall_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_exporter_names_what_the_issue_promises() {
    let names = exported();
    for name in [
        "tenantwall_commands_total",
        "tenantwall_command_duration_seconds_bucket",
        "tenantwall_backend_duration_seconds_bucket",
        "tenantwall_backend_time_seconds_total",
        "tenantwall_bytes_received_total",
        "tenantwall_bytes_sent_total",
        "tenantwall_documents_returned_total",
        "tenantwall_connections",
        "tenantwall_rate_limited_total",
        "tenantwall_auth_failures_total",
        "tenantwall_backend_errors_total",
        "tenantwall_policy_reloads_total",
        "tenantwall_policy_generation",
        "tenantwall_audit_dropped_total",
    ] {
        assert!(names.contains(name), "{name} not exported: {names:?}");
    }
}

#[test]
fn alerting_rules_are_well_formed_and_name_exported_metrics() {
    let text = repo("ops/tenantwall-alerts.yml");
    let exported = exported();
    assert!(text.lines().any(|l| l == "groups:"), "a Prometheus rule file starts with groups");
    // A small structural check (no YAML parser in the tree): each rule is `- alert:` followed by `expr:`,
    // `labels:` with a severity and `annotations:` with a summary, indented as one block.
    let rules: Vec<&str> = text.split("      - alert: ").skip(1).collect();
    assert!(rules.len() >= 5, "{} rules", rules.len());
    let mut alerts = BTreeSet::new();
    for rule in rules {
        let name = rule.lines().next().unwrap_or_default().trim();
        assert!(name.starts_with("Tenantwall") && alerts.insert(name.to_owned()), "alert name {name:?}");
        let expr =
            rule.lines().find_map(|l| l.trim().strip_prefix("expr: ")).unwrap_or_else(|| panic!("{name}: no expr"));
        assert!(rule.contains("\n        labels:\n          severity: "), "{name}: no severity label");
        assert!(rule.contains("\n        annotations:\n          summary: "), "{name}: no summary");
        assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "{name}: unbalanced parentheses");
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{name}: names no tenantwall metric");
        for metric in names {
            assert!(exported.contains(&metric), "{name}: {metric} is not exported");
        }
        for line in rule.lines() {
            assert!(!line.contains('\t'), "{name}: tabs are not YAML indentation");
        }
    }
}

#[test]
fn the_dashboard_parses_and_names_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(&repo("ops/tenantwall-dashboard.json")).expect("JSON");
    let exported = exported();
    assert_eq!(dashboard["uid"], "tenantwall");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut ids = BTreeSet::new();
    let mut named = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "{title}: duplicate id");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: target without expr"));
            assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "{title}: unbalanced parentheses");
            for metric in metric_names(expr) {
                assert!(exported.contains(&metric), "{title}: {metric} is not exported");
                named.insert(metric);
            }
        }
    }
    for metric in metric_names(&dashboard["templating"].to_string()) {
        assert!(exported.contains(&metric), "templating: {metric} is not exported");
    }
    // Every per-tenant counter is on the dashboard.
    for metric in ["tenantwall_commands_total", "tenantwall_backend_time_seconds_total", "tenantwall_connections"] {
        assert!(named.contains(metric), "{metric} not shown");
    }
}
