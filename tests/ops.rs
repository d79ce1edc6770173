//! Operator assets: `ops/alerts.yml` and `ops/grafana-dashboard.json`.
//!
//! Both are checked with `promtool` (Debian package `prometheus`), and every
//! metric they name must be one that `src/metrics.rs` registers, so the assets
//! cannot drift from the code. No database or broker is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const ALERTS: &str = "ops/alerts.yml";
const DASHBOARD: &str = "ops/grafana-dashboard.json";
const METRICS_SOURCE: &str = "src/metrics.rs";

/// Suffixes of the series a histogram is exported as.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

// ------------------------------------------------------------------ promtool

/// Runs `promtool` from the crate root. A missing `promtool` is a failure,
/// never a skip.
fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool").args(args).current_dir(root()).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "promtool is not on PATH: install the Debian package `prometheus` \
             (`apt-get install prometheus`; scripts/test installs it when missing)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

/// Panics with promtool's output (and `context`, e.g. the generated file) on failure.
fn assert_promtool_ok(what: &str, output: &Output, context: &str) {
    assert!(
        output.status.success(),
        "`{what}` failed ({})\n--- stdout\n{}\n--- stderr\n{}{context}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// A file in the system temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "billing-worker-ops-{}-{}-{nanos}-{name}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed),
        ));
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temporary path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ------------------------------------------------------------------ alerts

#[test]
fn alert_rules_pass_promtool_check() {
    let output = promtool(&["check", "rules", "--lint-fatal", ALERTS]);
    assert_promtool_ok(&format!("promtool check rules --lint-fatal {ALERTS}"), &output, "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("SUCCESS"), "unexpected promtool output:\n{stdout}");
}

#[test]
fn alert_rules_have_severity_summary_and_description() {
    // A line-oriented look at the file (no YAML crate): every rule carries
    // the fields an on-call engineer and Alertmanager routing rely on.
    let text = read(ALERTS);
    let rules: Vec<&str> = text.split("- alert:").skip(1).collect();
    assert!(
        rules.len() >= 8,
        "expected the full set of alerts, found {}",
        rules.len()
    );
    for rule in rules {
        let name = rule.split_whitespace().next().unwrap_or_default();
        for field in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(rule.contains(field), "alert {name} has no `{field}`");
        }
        assert!(
            rule.contains("severity: critical") || rule.contains("severity: warning"),
            "alert {name}: severity must be critical or warning"
        );
    }
}

/// Unit tests of the alerts on synthetic series (`promtool test rules`):
/// each alert fires on the incident it describes, after its `for`, and a
/// healthy worker raises nothing. Alerts are read back from the `ALERTS`
/// series, so the annotations' wording is free to change.
const ALERT_UNIT_TESTS: &str = r#"
rule_files:
  - RULES_PATH
evaluation_interval: 1m
tests:
  # A healthy worker: old dead letters and an old database blip, outbox
  # busy but draining, fast usage commits. Nothing fires.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_role_up{job="billing-worker", instance="w1:9464", role="provisioning"}'
        values: '1+0x40'
      - series: 'billing_role_up{job="billing-worker", instance="w1:9464", role="usage"}'
        values: '1+0x40'
      - series: 'billing_role_up{job="billing-worker", instance="w1:9464", role="payments"}'
        values: '1+0x40'
      - series: 'billing_role_up{job="billing-worker", instance="w1:9464", role="scheduler"}'
        values: '1+0x40'
      - series: 'billing_role_up{job="billing-worker", instance="w1:9464", role="outbox"}'
        values: '1+0x40'
      - series: 'billing_broker_connects_total{job="billing-worker", instance="w1:9464", role="usage"}'
        values: '1+0x40'
      - series: 'billing_transient_errors_total{job="billing-worker", instance="w1:9464", role="usage", kind="database"}'
        values: '2+0x40'
      - series: 'billing_dead_letters_total{job="billing-worker", instance="w1:9464", role="usage", code="INVALID_FIELD"}'
        values: '3+0x40'
      - series: 'billing_outbox_backlog{job="billing-worker", instance="w1:9464"}'
        values: '0+10x40'
      - series: 'billing_outbox_oldest_age_seconds{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_webhooks_published_total{job="billing-worker", instance="w1:9464", event_name="BILLING_EXECUTION_CREDIT_EVENT"}'
        values: '0+100x40'
      - series: 'billing_oldest_due_bill_age_seconds{job="billing-worker", instance="w1:9464"}'
        values: '0+0x40'
      - series: 'billing_usage_commit_duration_seconds_bucket{job="billing-worker", instance="w1:9464", le="0.05"}'
        values: '0+100x40'
      - series: 'billing_usage_commit_duration_seconds_bucket{job="billing-worker", instance="w1:9464", le="1"}'
        values: '0+100x40'
      - series: 'billing_usage_commit_duration_seconds_bucket{job="billing-worker", instance="w1:9464", le="+Inf"}'
        values: '0+100x40'
    promql_expr_test:
      - expr: ALERTS
        eval_time: 40m
        exp_samples: []

  # The process stops answering scrapes.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1 1 0 0 0 0'
    promql_expr_test:
      - expr: ALERTS{alertname="BillingWorkerDown"}
        eval_time: 3m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingWorkerDown", alertstate="pending", instance="w1:9464", job="billing-worker", severity="critical"}'
            value: 1
      - expr: ALERTS{alertname="BillingWorkerDown"}
        eval_time: 4m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingWorkerDown", alertstate="firing", instance="w1:9464", job="billing-worker", severity="critical"}'
            value: 1

  # No billing target at all.
  - interval: 1m
    input_series:
      - series: 'up{job="node", instance="n1:9100"}'
        values: '1+0x10'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 5m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingWorkerAbsent", alertstate="firing", severity="critical"}'
            value: 1

  # The usage role loses its broker connection.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_role_up{job="billing-worker", instance="w1:9464", role="usage"}'
        values: '1 0 0 0 0'
      - series: 'billing_role_up{job="billing-worker", instance="w1:9464", role="outbox"}'
        values: '1 1 1 1 1'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 2m
        exp_samples: []
      - expr: ALERTS{alertstate="firing"}
        eval_time: 3m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingRoleDown", alertstate="firing", instance="w1:9464", job="billing-worker", role="usage", severity="critical"}'
            value: 1

  # A database outage: transient faults every minute. An isolated fault
  # on another instance does not fire.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_transient_errors_total{job="billing-worker", instance="w1:9464", role="usage", kind="database"}'
        values: '0+6x15'
      - series: 'billing_transient_errors_total{job="billing-worker", instance="w2:9464", role="usage", kind="database"}'
        values: '0 1+0x14'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 15m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingDatabaseUnavailable", alertstate="firing", instance="w1:9464", severity="critical"}'
            value: 1

  # A broker connection dropping every minute.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_broker_connects_total{job="billing-worker", instance="w1:9464", role="outbox"}'
        values: '1+1x15'
      - series: 'billing_role_up{job="billing-worker", instance="w1:9464", role="outbox"}'
        values: '1+0x15'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 15m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingBrokerReconnectStorm", alertstate="firing", instance="w1:9464", role="outbox", severity="warning"}'
            value: 1

  # A caught panic, and parked executions: each fires at once, then resolves.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x90'
      - series: 'billing_role_panics_total{job="billing-worker", instance="w1:9464", role="usage"}'
        values: '_ _ _ 1+0x80'
      - series: 'billing_execution_errors_total{job="billing-worker", instance="w1:9464", code="AMOUNT_OVERFLOW"}'
        values: '0 0 0 2+0x80'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 5m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingRolePanicked", alertstate="firing", role="usage", severity="critical"}'
            value: 1
          - labels: 'ALERTS{alertname="BillingExecutionsParked", alertstate="firing", code="AMOUNT_OVERFLOW", severity="warning"}'
            value: 1
      - expr: ALERTS{alertstate="firing"}
        eval_time: 80m
        exp_samples: []

  # Dead letters: a burst on a known code, and the first ever dead letter
  # of another code (its series appears at 1). Both resolve 10m later.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_dead_letters_total{job="billing-worker", instance="w1:9464", role="usage", code="INVALID_FIELD"}'
        values: '2 2 2 7+0x20'
      - series: 'billing_dead_letters_total{job="billing-worker", instance="w1:9464", role="provisioning", code="MESSAGE_TOO_LARGE"}'
        values: '_ _ _ 1+0x20'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 5m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingDeadLettersGrowing", alertstate="firing", code="INVALID_FIELD", role="usage", severity="warning"}'
            value: 1
          - labels: 'ALERTS{alertname="BillingDeadLettersGrowing", alertstate="firing", code="MESSAGE_TOO_LARGE", role="provisioning", severity="warning"}'
            value: 1
      - expr: ALERTS{alertstate="firing"}
        eval_time: 20m
        exp_samples: []

  # The oldest webhook ages past 5 minutes.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_outbox_oldest_age_seconds{job="billing-worker", instance="w1:9464"}'
        values: '0+60x10'
      - series: 'billing_webhooks_published_total{job="billing-worker", instance="w1:9464", event_name="BILLING_EXECUTION_CREDIT_EVENT"}'
        values: '0+10x10'
    promql_expr_test:
      - expr: ALERTS{alertname="BillingOutboxStuck"}
        eval_time: 7m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingOutboxStuck", alertstate="pending", severity="critical"}'
            value: 1
      - expr: ALERTS{alertname="BillingOutboxStuck"}
        eval_time: 8m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingOutboxStuck", alertstate="firing", severity="critical"}'
            value: 1

  # The backlog grows and nothing is published (no webhook series at all,
  # as after a restart).
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_outbox_backlog{job="billing-worker", instance="w1:9464"}'
        values: '0+10x15'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 15m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingOutboxNotDraining", alertstate="firing", severity="critical"}'
            value: 1

  # The same growth with a stalled (flat) webhook counter.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_outbox_backlog{job="billing-worker", instance="w1:9464"}'
        values: '0+10x15'
      - series: 'billing_webhooks_published_total{job="billing-worker", instance="w1:9464", event_name="BILLING_EXECUTION_CREDIT_EVENT"}'
        values: '40+0x15'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 15m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingOutboxNotDraining", alertstate="firing", severity="critical"}'
            value: 1

  # Due bills wait longer and longer: late above 15 minutes, after 5m.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_oldest_due_bill_age_seconds{job="billing-worker", instance="w1:9464"}'
        values: '0+60x25'
    promql_expr_test:
      - expr: ALERTS{alertname="BillingDueBillsLate"}
        eval_time: 20m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingDueBillsLate", alertstate="pending", severity="critical"}'
            value: 1
      - expr: ALERTS{alertname="BillingDueBillsLate"}
        eval_time: 21m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingDueBillsLate", alertstate="firing", severity="critical"}'
            value: 1

  # Usage batches take more than a second to commit.
  - interval: 1m
    input_series:
      - series: 'up{job="billing-worker", instance="w1:9464"}'
        values: '1+0x40'
      - series: 'billing_usage_commit_duration_seconds_bucket{job="billing-worker", instance="w1:9464", le="0.05"}'
        values: '0+0x15'
      - series: 'billing_usage_commit_duration_seconds_bucket{job="billing-worker", instance="w1:9464", le="1"}'
        values: '0+0x15'
      - series: 'billing_usage_commit_duration_seconds_bucket{job="billing-worker", instance="w1:9464", le="2.5"}'
        values: '0+100x15'
      - series: 'billing_usage_commit_duration_seconds_bucket{job="billing-worker", instance="w1:9464", le="+Inf"}'
        values: '0+100x15'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 15m
        exp_samples:
          - labels: 'ALERTS{alertname="BillingUsageCommitSlow", alertstate="firing", instance="w1:9464", severity="warning"}'
            value: 1
"#;

#[test]
fn alerts_fire_on_their_incidents_and_not_when_healthy() {
    let rules = root().join(ALERTS);
    let rules = rules.to_str().expect("crate path is UTF-8");
    // A JSON string is a valid YAML double-quoted scalar.
    let tests = ALERT_UNIT_TESTS.replace("RULES_PATH", &json!(rules).to_string());
    let file = TempFile::new("alerts-test.yml", &tests);
    let output = promtool(&["test", "rules", file.path()]);
    assert_promtool_ok(&format!("promtool test rules {}", file.path()), &output, "");
}

// ------------------------------------------------------------------ dashboard

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows included, with the panels nested in collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"].as_str() == Some("row")
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("<untitled>")
}

/// One PromQL query of the dashboard.
struct Query {
    panel_id: u64,
    panel_title: String,
    ref_id: String,
    expr: String,
}

fn queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(Query {
                    panel_id: panel["id"].as_u64().unwrap_or_default(),
                    panel_title: title(panel).to_string(),
                    ref_id: target["refId"].as_str().unwrap_or("A").to_string(),
                    expr: expr.to_string(),
                });
            }
        }
    }
    out
}

/// The value a Grafana variable takes for validation.
fn variable(name: &str) -> Option<&'static str> {
    Some(match name {
        "__rate_interval" => "5m",
        "__interval" => "1m",
        "__range" => "1h",
        "instance" => ".*",
        "datasource" => "prometheus",
        _ => return None,
    })
}

/// Replaces `$name` and `${name}` by their values; an unknown variable is an error.
fn substitute(expr: &str) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, consumed) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').ok_or_else(|| format!("unclosed `${{` in {expr}"))?;
                (&braced[..end], end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        if name.is_empty() {
            // A lone `$`, e.g. a regular expression anchor.
            out.push('$');
        } else {
            out.push_str(variable(name).ok_or_else(|| format!("unknown Grafana variable `${name}` in {expr}"))?);
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

#[test]
fn grafana_variables_are_substituted() {
    assert_eq!(
        substitute(r#"rate(x{instance=~"$instance"}[$__rate_interval])"#).as_deref(),
        Ok(r#"rate(x{instance=~".*"}[5m])"#)
    );
    assert_eq!(
        substitute(r#"increase(x{instance=~"${instance}"}[${__range}]) + $__interval"#).as_deref(),
        Ok(r#"increase(x{instance=~".*"}[1h]) + 1m"#)
    );
    assert_eq!(substitute(r#"x{a=~"b$"}"#).as_deref(), Ok(r#"x{a=~"b$"}"#));
    assert!(substitute("rate(x[$__interval_ms])").is_err());
    assert!(substitute("x{a=\"${instance\"}").is_err());
}

#[test]
fn dashboard_queries_pass_promtool_check() {
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    assert!(queries.len() >= 20, "the dashboard has only {} queries", queries.len());
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for q in &queries {
        match substitute(&q.expr) {
            Ok(expr) => rules.push(json!({
                "record": format!("dashboard:panel_{}:{}", q.panel_id, q.ref_id.to_ascii_lowercase()),
                "expr": expr,
            })),
            Err(e) => errors.push(format!("panel {} {:?}: {e}", q.panel_id, q.panel_title)),
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // JSON is valid YAML, and the rule names give each query's panel and refId.
    let rules = json!({"groups": [{"name": "grafana-dashboard", "rules": rules}]});
    let text = serde_json::to_string_pretty(&rules).expect("rules serialize");
    let file = TempFile::new("dashboard-rules.yml", &text);
    let output = promtool(&["check", "rules", "--lint-fatal", file.path()]);
    assert_promtool_ok(
        &format!("promtool check rules {}", file.path()),
        &output,
        &format!("\n--- generated rules\n{text}"),
    );
}

#[test]
fn dashboard_has_schema_variables_and_datasource_everywhere() {
    let dashboard = dashboard();
    assert_eq!(dashboard["schemaVersion"].as_u64(), Some(39), "schemaVersion");
    assert!(dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty()), "uid");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()), "title");

    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let find = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no `{name}` template variable"))
    };
    let datasource = find("datasource");
    assert_eq!(datasource["type"].as_str(), Some("datasource"));
    assert_eq!(datasource["query"].as_str(), Some("prometheus"));
    let instance = find("instance");
    assert_eq!(instance["type"].as_str(), Some("query"));
    let instance_query = instance["query"]["query"]
        .as_str()
        .or_else(|| instance["query"].as_str())
        .expect("instance query");
    assert_eq!(instance_query, "label_values(billing_role_up, instance)");
    assert_eq!(instance["definition"].as_str(), Some(instance_query));
    assert_eq!(instance["datasource"]["uid"].as_str(), Some("${datasource}"));

    let uses_variable = |ds: &Value| {
        let uid = ds["uid"].as_str().or_else(|| ds.as_str());
        matches!(uid, Some("${datasource}" | "$datasource"))
    };
    let mut ids = BTreeSet::new();
    let mut errors = Vec::new();
    let panels = all_panels(&dashboard);
    for panel in &panels {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        if !ids.insert(id) {
            errors.push(format!("panel id {id} is used twice"));
        }
        if is_row(panel) {
            continue;
        }
        let name = title(panel);
        if !uses_variable(&panel["datasource"]) {
            errors.push(format!("panel {name:?}: datasource is not $datasource"));
        }
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        if targets.is_empty() {
            errors.push(format!("panel {name:?} has no query"));
        }
        for target in targets {
            if !target["datasource"].is_null() && !uses_variable(&target["datasource"]) {
                errors.push(format!("panel {name:?}: a target's datasource is not $datasource"));
            }
            if target["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                errors.push(format!("panel {name:?}: a target has no expr"));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(
        panels
            .iter()
            .any(|p| is_row(p) && !p["panels"].as_array().is_none_or(Vec::is_empty)),
        "expected a collapsed row holding panels"
    );
}

// ------------------------------------------------------------------ drift

/// Metric names registered in `src/metrics.rs` (string literals such as
/// `"billing_outbox_backlog"`), each with whether it is a histogram: the
/// constructor the literal is passed to names `Histogram`/`histogram`.
fn declared_metrics() -> BTreeMap<String, bool> {
    let source = read(METRICS_SOURCE);
    let mut declared = BTreeMap::new();
    let mut from = 0;
    while let Some(found) = source[from..].find("\"billing_") {
        let start = from + found + 1;
        let end = source[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(source.len(), |len| start + len);
        from = end;
        if !source[end..].starts_with('"') {
            continue; // not a bare name, e.g. an exposition line in a unit test
        }
        let before = &source[..start - 1];
        let open = before
            .rfind('(')
            .unwrap_or_else(|| panic!("no constructor call before {}", &source[start..end]));
        let callee_start = before[..open]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let histogram = before[callee_start..open].to_ascii_lowercase().contains("histogram");
        declared.insert(source[start..end].to_string(), histogram);
    }
    declared
}

/// Tokens `billing_[a-z0-9_]+` that start a word.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("billing_") {
        let start = from + found;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |len| start + len);
        from = end;
        let starts_word = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        if starts_word {
            names.insert(text[start..end].to_string());
        }
    }
    names
}

/// Why `name` is not a series the worker exports, if it is not.
fn undeclared(name: &str, declared: &BTreeMap<String, bool>) -> Option<String> {
    match declared.get(name) {
        Some(false) => return None,
        Some(true) => return Some(format!("{name} is a histogram: use {name}_bucket, _sum or _count")),
        None => {}
    }
    for suffix in HISTOGRAM_SUFFIXES {
        if let Some(base) = name.strip_suffix(suffix) {
            match declared.get(base) {
                Some(true) => return None,
                Some(false) => return Some(format!("{name}: {base} is not a histogram")),
                None => {}
            }
        }
    }
    Some(format!("{name} is not registered in {METRICS_SOURCE}"))
}

#[test]
fn metrics_source_parses() {
    let declared = declared_metrics();
    assert!(
        declared.len() >= 20,
        "found only {} metrics in {METRICS_SOURCE}",
        declared.len()
    );
    assert_eq!(declared.get("billing_usage_commit_duration_seconds"), Some(&true));
    assert_eq!(declared.get("billing_outbox_publish_seconds"), Some(&true));
    assert_eq!(declared.get("billing_outbox_backlog"), Some(&false));
    assert_eq!(declared.get("billing_role_up"), Some(&false));
    assert_eq!(declared.get("billing_dead_letters_total"), Some(&false));
    let check = |name| undeclared(name, &declared);
    assert_eq!(check("billing_usage_batch_size_bucket"), None);
    assert_eq!(check("billing_debit_roundtrip_seconds_count"), None);
    assert!(check("billing_usage_batch_size").is_some());
    assert!(check("billing_outbox_backlog_bucket").is_some());
    assert!(check("billing_no_such_metric_total").is_some());
    assert_eq!(
        referenced_metrics(r#"rate(billing_a_total{job=~".*billing.*"}[5m]) / xbilling_b + billing_c_bucket"#),
        BTreeSet::from(["billing_a_total".to_string(), "billing_c_bucket".to_string()])
    );
}

#[test]
fn assets_name_only_registered_metrics() {
    let declared = declared_metrics();
    let mut errors = Vec::new();
    for asset in [ALERTS, DASHBOARD] {
        let referenced = referenced_metrics(&read(asset));
        assert!(!referenced.is_empty(), "{asset} names no billing_ metric");
        for name in referenced {
            if let Some(error) = undeclared(&name, &declared) {
                errors.push(format!("{asset}: {error}"));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
