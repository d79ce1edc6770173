//! Prometheus metrics: `billing_` prefix, `_total` counters, `_seconds` durations.
//! One registry per application, so several workers can live in one process.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the worker exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Messages taken from a queue, by queue role.
    pub messages_received: IntCounterVec,
    /// Messages dead-lettered, by queue role and error code.
    pub dead_letters: IntCounterVec,
    /// Transient faults met while handling, by role and kind (`database`, `broker`).
    pub transient_errors: IntCounterVec,
    /// Provisioning commands by command and outcome (`ok`, `rejected`).
    pub commands: IntCounterVec,
    /// Time to handle one provisioning command, commit included.
    pub command_seconds: HistogramVec,
    /// Webhooks published by the relay.
    pub webhooks_published: IntCounterVec,
    /// Webhooks waiting in the outbox.
    pub outbox_backlog: IntGauge,
    /// Age of the oldest unpublished webhook.
    pub outbox_oldest_age_seconds: Gauge,
    /// Time to publish one relay batch with confirms.
    pub outbox_publish_seconds: Histogram,
    /// Usage events taken from messages.
    pub usage_events_received: IntCounter,
    /// Usage events counted for the first time.
    pub usage_events_counted: IntCounter,
    /// Usage events already counted before (by `event_id`).
    pub usage_events_duplicate: IntCounter,
    /// Valid-looking events per usage batch.
    pub usage_batch_size: Histogram,
    /// Time to count one usage batch, commit included.
    pub usage_commit_seconds: Histogram,
    /// Bills issued, by the status they were issued in (PAID: covered by credit).
    pub bills: IntCounterVec,
    /// Bills reaching an outcome after their debit: paid, written_off, carried_over, failed.
    pub bills_settled: IntCounterVec,
    /// Debit attempts and results, by result.
    pub debit_attempts: IntCounterVec,
    /// Time from a debit request to its result.
    pub debit_roundtrip_seconds: Histogram,
    /// Age of the oldest bill past its debit time and not yet attempted.
    pub oldest_due_bill_age_seconds: Gauge,
    /// Time of one scheduler pass (issue, notices, recovery, debit requests).
    pub scheduler_pass_seconds: Histogram,
    /// Time to apply one batch of debit results, commit included.
    pub payment_result_seconds: Histogram,
    /// 1 when a role is connected and consuming, by role.
    pub role_up: IntGaugeVec,
    /// Broker (re)connections, by role.
    pub broker_connects: IntCounterVec,
    /// Panics caught in a role (a bug met while handling work), by role.
    pub role_panics: IntCounterVec,
    /// Executions whose billing failed and was parked, by error code.
    pub execution_errors: IntCounterVec,
    /// Successful debits for bills another attempt had already paid.
    pub double_charges: IntCounter,
    /// Credit grants whose remainder expired.
    pub credit_grants_expired: IntCounter,
    /// Interim bills made when usage reached a progressive threshold.
    pub interim_bills: IntCounter,
    /// Usage event bodies set to NULL past `usage.event_retention` (keys stay).
    pub event_bodies_pruned: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    c
}

/// Buckets from 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Creates and registers every metric. Names are static, so failure here
    /// is a programming error caught by the unit test below.
    pub(crate) fn new() -> Metrics {
        let registry = Registry::new();
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            h
        };
        let outbox_publish_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "billing_outbox_publish_seconds",
                "Time to publish one outbox batch with confirms",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(outbox_publish_seconds.clone()))
            .unwrap_or_else(|e| panic!("register: {e}"));
        let outbox_backlog = IntGauge::new("billing_outbox_backlog", "Webhooks written and not yet published")
            .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(outbox_backlog.clone()))
            .unwrap_or_else(|e| panic!("register: {e}"));
        let outbox_oldest_age_seconds = Gauge::new(
            "billing_outbox_oldest_age_seconds",
            "Age of the oldest unpublished webhook",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(outbox_oldest_age_seconds.clone()))
            .unwrap_or_else(|e| panic!("register: {e}"));
        let role_up = IntGaugeVec::new(
            Opts::new("billing_role_up", "1 while a role is connected and working"),
            &["role"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(role_up.clone()))
            .unwrap_or_else(|e| panic!("register: {e}"));
        let int_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            h
        };
        Metrics {
            usage_events_received: int_counter(
                "billing_usage_events_received_total",
                "Usage events taken from messages",
            ),
            usage_events_counted: int_counter(
                "billing_usage_events_counted_total",
                "Usage events counted for the first time",
            ),
            usage_events_duplicate: int_counter(
                "billing_usage_events_duplicate_total",
                "Usage events already counted (same event_id)",
            ),
            usage_batch_size: histogram(
                "billing_usage_batch_size",
                "Events per usage batch",
                vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
            ),
            usage_commit_seconds: histogram(
                "billing_usage_commit_duration_seconds",
                "Time to count one usage batch",
                LATENCY_BUCKETS.to_vec(),
            ),
            bills: counter(
                &registry,
                "billing_bills_issued_total",
                "Bills issued, by status at issue",
                &["status"],
            ),
            bills_settled: counter(
                &registry,
                "billing_bills_settled_total",
                "Bills settled after a debit, by outcome",
                &["outcome"],
            ),
            debit_attempts: counter(
                &registry,
                "billing_debit_attempts_total",
                "Debit attempts and results, by result",
                &["result"],
            ),
            debit_roundtrip_seconds: histogram(
                "billing_debit_roundtrip_seconds",
                "Time from a debit request to its result",
                vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0],
            ),
            scheduler_pass_seconds: histogram(
                "billing_scheduler_pass_duration_seconds",
                "Time of one scheduler pass",
                LATENCY_BUCKETS.to_vec(),
            ),
            payment_result_seconds: histogram(
                "billing_payment_result_duration_seconds",
                "Time to apply one batch of debit results",
                LATENCY_BUCKETS.to_vec(),
            ),
            oldest_due_bill_age_seconds: {
                let g = Gauge::new(
                    "billing_oldest_due_bill_age_seconds",
                    "Age of the oldest due bill not yet attempted",
                )
                .unwrap_or_else(|e| panic!("metric: {e}"));
                registry
                    .register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("register: {e}"));
                g
            },
            messages_received: counter(
                &registry,
                "billing_messages_received_total",
                "Messages taken from a queue",
                &["role"],
            ),
            dead_letters: counter(
                &registry,
                "billing_dead_letters_total",
                "Messages dead-lettered, by code",
                &["role", "code"],
            ),
            transient_errors: counter(
                &registry,
                "billing_transient_errors_total",
                "Transient faults met, by kind",
                &["role", "kind"],
            ),
            commands: counter(
                &registry,
                "billing_commands_total",
                "Provisioning commands by outcome",
                &["command", "outcome"],
            ),
            command_seconds: histogram_vec(
                "billing_command_duration_seconds",
                "Time to handle a provisioning command",
                &["command"],
            ),
            webhooks_published: counter(
                &registry,
                "billing_webhooks_published_total",
                "Webhooks published, by event name",
                &["event_name"],
            ),
            broker_connects: counter(
                &registry,
                "billing_broker_connects_total",
                "Broker connections opened, by role",
                &["role"],
            ),
            role_panics: counter(
                &registry,
                "billing_role_panics_total",
                "Panics caught while handling work, by role",
                &["role"],
            ),
            execution_errors: counter(
                &registry,
                "billing_execution_errors_total",
                "Executions whose billing failed and was parked, by error code",
                &["code"],
            ),
            outbox_backlog,
            outbox_oldest_age_seconds,
            outbox_publish_seconds,
            role_up,
            double_charges: int_counter(
                "billing_double_charges_total",
                "Successful debits for bills already paid by another attempt",
            ),
            credit_grants_expired: int_counter(
                "billing_credit_grants_expired_total",
                "Credit grants whose remainder expired",
            ),
            interim_bills: int_counter(
                "billing_interim_bills_total",
                "Interim bills made when usage reached a progressive threshold",
            ),
            event_bodies_pruned: int_counter(
                "billing_usage_event_bodies_pruned_total",
                "Usage event bodies dropped past the retention; their keys stay",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_renders() {
        let m = Metrics::new();
        m.dead_letters.with_label_values(&["usage", "INVALID_JSON"]).inc();
        m.role_up.with_label_values(&["usage"]).set(1);
        let text = m.render();
        assert!(
            text.contains("billing_dead_letters_total{code=\"INVALID_JSON\",role=\"usage\"} 1"),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap_or_default();
            assert!(name.starts_with("billing_"), "{name}");
            if line.ends_with("counter") {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
    }
}
