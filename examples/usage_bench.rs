//! Usage-pipeline benchmark: how fast the worker counts usage events end to
//! end (publish, broker, worker, Postgres commit), next to what the same
//! broker manages with a consumer that does nothing and what the same
//! Postgres manages with a bare batched insert.
//!
//! ```text
//! ./scripts/bench-usage [--events N] [--batched-events N] [--batch 100] [--queued 1000000] [--queue-type quorum]
//!                        [--sslmodes disable,require] [--max-size 0]
//!                        [--drain-workers 1] [--shards 1] [--executions 1]
//!                        [--worker-env BILLING__SECTION__KEY=VALUE ...]
//! ```
//!
//! The worker runs as its own process (`target/release/billing-worker run`)
//! on a fresh database and topology prefix, both removed at the end (see
//! `support`). Phases 1 to 3 run once per `--sslmodes` entry (plaintext,
//! then TLS, by default), each with a fresh worker whose database URL has
//! that `sslmode`:
//!
//! 1. ceilings: a no-op consumer in this process on a queue of the worker's
//!    type and arguments, same messages, same prefetch as the worker
//!    (`--events`); and, run just before phase 3, a bare batched insert
//!    (`UNNEST`, the worker's batch size, autocommit) of as many rows as the
//!    batched phase has events into a table shaped like `usage_events`
//!    (same primary key), over a connection with the same `sslmode`;
//! 2. single-event messages through the worker, flat out, then again at
//!    half the rate just measured, for latency;
//! 3. batched messages (`{"events": [...]}`, `--batched-events` in all)
//!    through the worker, the same way; then the same flat out with the
//!    events spread over eight metrics of every aggregation and the new
//!    pricing types (`SUM`, `COUNT`, `MAX`, `UNIQUE_COUNT`, `LATEST`,
//!    `WEIGHTED_SUM`, `PERCENTAGE` with a free allowance, `GRADUATED_PERCENTAGE`),
//!    next to the plain `SUM` figure;
//! 4. a backlog published while no worker runs, drained by a fresh worker
//!    (or `--drain-workers` of them, on one queue or `--shards` shards,
//!    the backlog spread over `--executions` executions), with that
//!    worker's peak resident memory;
//! 5. (`--max-size N`) the same with N messages as large as the worker
//!    accepts: 1000 events each, 100-character event ids, properties padded
//!    to just below `amqp.max_message_bytes`; the fresh worker's peak
//!    resident memory next to the worst case its settings allow.
//!
//! Before each timed phase of 1 to 3 the event tables are vacuumed and
//! analyzed and the database checkpoints, so no phase pays for the one
//! before.
//!
//! `--events 0` skips phases 1 to 3 and `--queued 0` phase 4, e.g.
//! `--events 0 --queued 0 --max-size 600` runs phase 5 alone.
//! `--worker-env BILLING__USAGE__PREFETCH=64` starts every worker with that
//! setting (the report and the no-op consumer follow it too).

#[path = "support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use billing_worker::broker;
use billing_worker::protocol::envelope::{EXECUTION_HEADER, MERCHANT_HEADER};
use billing_worker::protocol::usage::MAX_EVENT_ID_LEN;
use billing_worker::settings::{QueueType, Settings};
use chrono::SecondsFormat;
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use serde_json::{Value, json};
use support::{
    CpuShare, CpuTicks, Launch, Sandbox, StatementTime, StatementTimes, Worker, command_ok, has_exited, metric, ms,
    rate, scrape, thousands, verdict,
};

const MERCHANT: &str = "bench_merchant";
const METRIC: &str = "bench_units";
const PLAN: &str = "bench_plan";
const MIXED_PLAN: &str = "bench_mixed_plan";
const CUSTOMER: &str = "bench_customer";
/// Matches the worker's `usage.#` binding on `billing.in`.
const USAGE_KEY: &str = "usage.bench";
/// Matches no binding of the worker, only the no-op queue's.
const NOOP_KEY: &str = "noop.bench";
const COUNTED: &str = "billing_usage_events_counted_total";
const DUPLICATES: &str = "billing_usage_events_duplicate_total";
/// How often `/metrics` is read while events flow.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// A paced publisher sends a message at once when it is due within this long.
const PACE_SLACK: Duration = Duration::from_millis(1);
/// The no-op consumer acks (with `multiple`) this often, or when idle this long.
const NOOP_ACK_EVERY: u64 = 100;
const NOOP_IDLE: Duration = Duration::from_millis(2);
/// Events per message of the backlog phase.
const QUEUED_BATCH: usize = 100;
/// A phase fails when nothing moves for this long (a stuck or crashed worker).
const STALL_AFTER: Duration = Duration::from_secs(60);
/// The no-op consumer's queue, under the sandbox's prefix.
const NOOP_QUEUE: &str = "bench.noop";
/// The roles this benchmark talks to.
const ROLES: [&str; 2] = ["provisioning", "usage"];
/// Max-size bodies stay this far below `amqp.max_message_bytes`: 1 MiB - 8,576 = 1,040,000 bytes.
const MAX_SIZE_HEADROOM: usize = 8_576;
/// Event ids of the max-size phase start with this; they are unique to it.
const MAX_SIZE_TAG: &str = "max";
/// Settings the benchmark gives every worker itself; `--worker-env` may not change them.
const OWN_SETTINGS: [&str; 6] = [
    "BILLING__DATABASE__URL",
    "BILLING__AMQP__URL",
    "BILLING__AMQP__PREFIX",
    "BILLING__AMQP__QUEUE_TYPE",
    "BILLING__HTTP__LISTEN",
    "BILLING__LOG__FILTER",
];

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Usage pipeline benchmark: no-op ceiling, single-event and batched messages, backlog drain, max-size messages"
)]
struct Args {
    /// Events of the no-op ceiling and the single-event phases; 0 skips phases 1 to 3.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events of the batched phases and rows of the raw insert ceiling. At 100,000 events/s a
    /// phase of 100,000 lasts one second, too short to average out other work on the machine.
    #[arg(long, default_value_t = 500_000)]
    batched_events: u64,
    /// Events per message of the batched phase.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Events (in 100-event messages) of the backlog drained by a fresh worker; 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    queued: u64,
    /// Type of the worker's queues (and of the no-op consumer's).
    #[arg(long, default_value = "quorum", value_parser = ["classic", "quorum"])]
    queue_type: String,
    /// The `sslmode` of the worker's database URL in phases 1 to 3, one run of them per entry,
    /// reported side by side.
    #[arg(long, value_delimiter = ',', default_value = "disable,require",
          value_parser = ["disable", "prefer", "require", "verify-ca", "verify-full"])]
    sslmodes: Vec<String>,
    /// Time every statement the worker runs in the flat-out batched phase (as sqlx logs them) and
    /// list them by total time.
    #[arg(long)]
    statements: bool,
    /// Publisher confirms outstanding at most.
    #[arg(long, default_value_t = 1000)]
    confirm_window: usize,
    /// Worker processes that drain the backlog together (one database).
    #[arg(long, default_value_t = 1)]
    drain_workers: usize,
    /// The workers' `usage.shards`; with more than one, drain worker k prefers the shards i
    /// with i % drain-workers == k. Sharding needs the consistent-hash exchange plugin.
    #[arg(long, default_value_t = 1)]
    shards: u16,
    /// Executions the backlog is spread over, message by message, each message carrying its
    /// execution in the x-execution-id header.
    #[arg(long, default_value_t = 1)]
    executions: usize,
    /// Messages as large as the worker accepts (1000 events, 100-character event ids, bodies just
    /// below amqp.max_message_bytes), queued with no worker running and drained by a fresh
    /// worker, whose peak memory is reported; 0 skips it.
    #[arg(long, default_value_t = 0)]
    max_size: u64,
    /// A setting for every worker this benchmark starts, as BILLING__SECTION__KEY=VALUE
    /// (repeatable), e.g. BILLING__USAGE__PREFETCH=64. The worker ignores inherited BILLING_*
    /// variables: this is the way to change its settings.
    #[arg(long = "worker-env", value_name = "KEY=VALUE", value_parser = worker_setting)]
    worker_env: Vec<(String, String)>,
}

/// `BILLING__SECTION__KEY=VALUE`, for a setting the benchmark does not set itself.
fn worker_setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    if !key.starts_with("BILLING__") {
        return Err(format!("{key}: settings are BILLING__SECTION__KEY variables"));
    }
    if OWN_SETTINGS.contains(&key) {
        return Err(format!("{key} is set by the benchmark itself"));
    }
    Ok((key.to_string(), value.to_string()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The settings every worker runs with: the defaults and `--worker-env`.
    let mut defaults = support::settings_with(&args.worker_env)?;
    ensure!(
        args.events > 0 || args.queued > 0 || args.max_size > 0,
        "nothing to run: --events, --queued and --max-size are all 0"
    );
    ensure!(args.confirm_window > 0, "--confirm-window must be at least 1");
    ensure!(
        args.batch > 0 && args.batch <= defaults.usage.max_events_per_message as u64,
        "--batch must be between 1 and usage.max_events_per_message ({})",
        defaults.usage.max_events_per_message
    );

    defaults.amqp.queue_type = match args.queue_type.as_str() {
        "quorum" => QueueType::Quorum,
        _ => QueueType::Classic,
    };
    defaults.usage.shards = args.shards;
    let sandbox = Sandbox::create("bench", defaults, &[NOOP_QUEUE]).await?;
    log(format_args!(
        "database {}, topology prefix {}",
        sandbox.db_name,
        sandbox.prefix()
    ));
    let mut worker = None;
    // On Ctrl-C, stop the phase and still clean up: no worker, queue or database left behind.
    let outcome = tokio::select! {
        outcome = run(&args, &sandbox, &mut worker) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let cleaned = sandbox.remove(worker.into_iter().collect()).await;
    print!("{}", outcome?);
    cleaned
}

fn log(message: impl std::fmt::Display) {
    eprintln!("[usage_bench] {message}");
}

/// A worker on the defaults and `--worker-env`, ready once the roles this benchmark uses consume.
async fn start_worker(sandbox: &Sandbox, args: &Args) -> anyhow::Result<Worker> {
    start_worker_k(sandbox, args, 0).await
}

/// The `k`-th of the drain workers: with shards, it prefers every
/// `drain_workers`-th shard from `k` on.
async fn start_worker_k(sandbox: &Sandbox, args: &Args, k: usize) -> anyhow::Result<Worker> {
    let mut env = args.worker_env.clone();
    env.push(("BILLING__USAGE__SHARDS".into(), args.shards.to_string()));
    if args.shards > 1 {
        let workers = args.drain_workers.max(1);
        let preferred: Vec<String> = (0..args.shards as usize)
            .filter(|i| i % workers == k % workers)
            .map(|i| i.to_string())
            .collect();
        env.push(("BILLING__USAGE__PREFERRED_SHARDS".into(), preferred.join(",")));
    }
    let launch = Launch {
        env,
        ..Launch::default()
    };
    Worker::start(sandbox, &launch, &ROLES).await
}

/// The worker's `billing_usage_events_counted_total`.
async fn counted(addr: SocketAddr) -> anyhow::Result<u64> {
    let text = scrape(addr).await?;
    // A bad event is dead-lettered and never counted: say so rather than wait for the stall timeout.
    if let Some(line) = text
        .lines()
        .find(|l| l.starts_with("billing_dead_letters_total{") && l.contains("role=\"usage\""))
    {
        bail!("the worker dead-lettered usage events ({line}); see its dead-letter queue, billing.dead");
    }
    metric(&text, COUNTED)
        .map(|v| v as u64)
        .with_context(|| format!("{COUNTED} missing from /metrics"))
}

/// The worker's own account of its usage batches, from its histograms.
#[derive(Debug, Clone, Copy, Default)]
struct BatchStats {
    batches: f64,
    events: f64,
    commit_seconds: f64,
}

impl BatchStats {
    async fn read(addr: SocketAddr) -> anyhow::Result<BatchStats> {
        let text = scrape(addr).await?;
        let get = |name: &str| metric(&text, name).with_context(|| format!("{name} missing from /metrics"));
        Ok(BatchStats {
            batches: get("billing_usage_commit_duration_seconds_count")?,
            events: get("billing_usage_batch_size_sum")?,
            commit_seconds: get("billing_usage_commit_duration_seconds_sum")?,
        })
    }

    fn since(&self, earlier: &BatchStats) -> BatchStats {
        BatchStats {
            batches: self.batches - earlier.batches,
            events: self.events - earlier.events,
            commit_seconds: self.commit_seconds - earlier.commit_seconds,
        }
    }
}

// ----------------------------------------------------------- provisioning

/// The metrics of the mixed phase: id, aggregation, pricing fields.
fn mixed_metrics() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "mix_sum",
            "SUM",
            json!({"pricing_type": "FIXED", "pricing_model": [{"unit_amount": "0.01"}]}),
        ),
        (
            "mix_count",
            "COUNT",
            json!({"pricing_type": "TIERED", "pricing_model": [
                {"unit_amount": 1, "up_to": 1000}, {"unit_amount": "0.5", "up_to": "INFINITY"}]}),
        ),
        (
            "mix_max",
            "MAX",
            json!({"pricing_type": "VOLUME", "pricing_model": [
                {"unit_amount": 2, "up_to": 10}, {"unit_amount": 1, "up_to": "INFINITY"}]}),
        ),
        (
            "mix_unique",
            "UNIQUE_COUNT",
            json!({"pricing_type": "PACKAGE", "pricing_model": [{"unit_amount": 5}], "package_size": 10}),
        ),
        (
            "mix_latest",
            "LATEST",
            json!({"pricing_type": "FIXED", "pricing_model": [{"unit_amount": 3}]}),
        ),
        (
            "mix_weighted",
            "WEIGHTED_SUM",
            json!({"pricing_type": "FIXED", "pricing_model": [{"unit_amount": "0.1"}]}),
        ),
        (
            "mix_percentage",
            "SUM",
            json!({"pricing_type": "PERCENTAGE", "rate": "2.9", "fixed_amount": "0.3", "free_units_per_events": 100,
                   "per_transaction_min_amount": "0.5", "per_transaction_max_amount": 20}),
        ),
        (
            "mix_graduated",
            "SUM",
            json!({"pricing_type": "GRADUATED_PERCENTAGE", "pricing_model": [
                {"rate": 1, "up_to": 1000, "flat_fee": 10}, {"rate": "0.5", "up_to": "INFINITY"}]}),
        ),
    ]
}

/// Creates the metrics, plans, customer and executions; returns the ids of
/// the plain execution (one SUM metric) and of the mixed one.
async fn provision(settings: &Settings) -> anyhow::Result<(String, String)> {
    let commands = [
        json!({"command": "create_metric", "metric_id": METRIC, "name": "Bench units", "unit": "unit",
               "event_type": "BENCH", "aggregation_type": "SUM", "pricing_type": "FIXED",
               "pricing_model": [{"unit_amount": "0.01", "up_to": "INFINITY"}], "currency": "INR"}),
        json!({"command": "create_plan", "plan_id": PLAN, "plan_name": "Bench", "plan_description": "usage benchmark",
               "plan_type": "POST_DEBIT", "plan_model": "USAGE_BASED", "plan_interval": "MONTHLY",
               "plan_currency": "INR", "plan_action_on_failure": "SKIP", "metric_ids": [METRIC]}),
        json!({"command": "create_customer", "customer_id": CUSTOMER, "email": "bench@example.com"}),
    ];
    for command in commands {
        command_ok(settings, MERCHANT, command).await?;
    }
    let mixed = mixed_metrics();
    for (id, aggregation, pricing) in &mixed {
        let mut command = json!({"command": "create_metric", "metric_id": id, "name": id, "aggregation_type": aggregation,
                                 "aggregation_field": "user", "currency": "INR"});
        if *aggregation != "UNIQUE_COUNT" {
            command["aggregation_field"] = Value::Null;
        }
        for (k, v) in pricing.as_object().context("pricing fields")? {
            command[k] = v.clone();
        }
        command_ok(settings, MERCHANT, command).await?;
    }
    let ids: Vec<&str> = mixed.iter().map(|(id, _, _)| *id).collect();
    command_ok(
        settings,
        MERCHANT,
        json!({"command": "create_plan", "plan_id": MIXED_PLAN, "plan_name": "Bench mixed",
               "plan_type": "POST_DEBIT", "plan_model": "USAGE_BASED", "plan_interval": "MONTHLY",
               "plan_currency": "INR", "plan_action_on_failure": "SKIP", "metric_ids": ids}),
    )
    .await?;
    let mixed_execution = create_execution(settings, MIXED_PLAN, "bench-mixed").await?;
    // No credit and no max_amount: the benchmark measures counting, not threshold webhooks.
    let plain = create_execution(settings, PLAN, "bench").await?;
    Ok((plain, mixed_execution))
}

/// An execution of the customer on `plan` with no credit; its id. A
/// merchant_ref_id keys the command (create needs it, or a message_id).
async fn create_execution(settings: &Settings, plan: &str, merchant_ref_id: &str) -> anyhow::Result<String> {
    let created = command_ok(
        settings,
        MERCHANT,
        json!({"command": "create", "plan_id": plan, "customer_id": CUSTOMER, "amount": "0",
               "merchant_ref_id": merchant_ref_id}),
    )
    .await?;
    created["billing_execution_info_id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no billing_execution_info_id in {created}"))
}

// ---------------------------------------------------------------- messages

/// One usage event, timestamped now.
fn event(id: &str, execution: &str, timestamp: &str) -> Value {
    json!({"event_id": id, "billing_execution_info_id": execution, "metric_id": METRIC,
           "value": 1, "timestamp": timestamp})
}

/// Event `i` of the mixed phase: metric `i` mod 8, values that move every
/// aggregation (a WEIGHTED_SUM level going up and down, 1,000 distinct
/// users carried in the UNIQUE_COUNT events' properties).
fn mixed_event(id: &str, execution: &str, timestamp: &str, i: u64) -> Value {
    const METRICS: [&str; 8] = [
        "mix_sum",
        "mix_count",
        "mix_max",
        "mix_unique",
        "mix_latest",
        "mix_weighted",
        "mix_percentage",
        "mix_graduated",
    ];
    let metric = METRICS[(i % 8) as usize];
    let value = match metric {
        "mix_weighted" if (i / 8) % 2 == 1 => json!(-1),
        "mix_percentage" | "mix_graduated" => json!(format!("{}.{:02}", 10 + i % 90, i % 100)),
        _ => json!(1 + i % 50),
    };
    let mut event = json!({"event_id": id, "billing_execution_info_id": execution, "metric_id": metric,
                           "value": value, "timestamp": timestamp});
    if metric == "mix_unique" {
        event["properties"] = json!({"user": format!("u{}", i % 1000)});
    }
    event
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Bodies of `events` events with ids `{tag}-0`, `{tag}-1`, ..., `per_message`
/// to a message; a lone event is sent bare, several as `{"events": [...]}`.
fn bodies<'a>(
    tag: &'a str,
    execution: &'a str,
    events: u64,
    per_message: u64,
) -> impl Iterator<Item = anyhow::Result<Vec<u8>>> + 'a {
    load_bodies(tag, execution, events, per_message, false)
}

/// [`bodies`], or with `mixed` the events of the mixed phase ([`mixed_event`]).
fn load_bodies<'a>(
    tag: &'a str,
    execution: &'a str,
    events: u64,
    per_message: u64,
    mixed: bool,
) -> impl Iterator<Item = anyhow::Result<Vec<u8>>> + 'a {
    let one = move |i: u64, timestamp: &str| {
        let id = format!("{tag}-{i}");
        if mixed {
            mixed_event(&id, execution, timestamp, i)
        } else {
            event(&id, execution, timestamp)
        }
    };
    (0..events).step_by(per_message as usize).map(move |first| {
        let last = (first + per_message).min(events);
        let timestamp = now_rfc3339();
        let body = if per_message == 1 {
            one(first, &timestamp)
        } else {
            let list: Vec<Value> = (first..last).map(|i| one(i, &timestamp)).collect();
            json!({ "events": list })
        };
        serde_json::to_vec(&body).context("encode usage message")
    })
}

// --------------------------------------------------------------- publisher

/// A channel in confirm mode publishing persistent JSON as the bench merchant.
struct Publisher {
    channel: Channel,
    exchange: String,
    props: BasicProperties,
    window: usize,
}

impl Publisher {
    async fn open(connection: &Connection, exchange: &str, window: usize) -> anyhow::Result<Publisher> {
        let channel = connection.create_channel().await.context("open publisher channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enable publisher confirms")?;
        Ok(Publisher {
            channel,
            exchange: exchange.to_string(),
            props: broker::json_properties().with_headers(broker::headers([(MERCHANT_HEADER, MERCHANT)])),
            window,
        })
    }

    /// Publishes every body with at most `window` confirms outstanding and
    /// returns the instant each message was handed to the broker.
    async fn publish_all<B: AsRef<[u8]>>(
        &self,
        routing_key: &str,
        bodies: impl IntoIterator<Item = anyhow::Result<B>>,
    ) -> anyhow::Result<Vec<Instant>> {
        self.publish(routing_key, bodies, None).await
    }

    /// As [`Publisher::publish_all`], each message with its execution in the
    /// `x-execution-id` header (what places it on a shard).
    async fn publish_routed<B: AsRef<[u8]>>(
        &self,
        routing_key: &str,
        bodies: impl IntoIterator<Item = anyhow::Result<(B, String)>>,
    ) -> anyhow::Result<Vec<Instant>> {
        let routed = bodies
            .into_iter()
            .map(|item| item.map(|(body, execution)| (body, Some(execution))));
        self.send(routing_key, routed, None).await
    }

    /// As [`Publisher::publish_all`], but message `i` leaves no earlier than
    /// `i / per_second` seconds after the first: a steady offered load.
    async fn publish_paced<B: AsRef<[u8]>>(
        &self,
        routing_key: &str,
        bodies: impl IntoIterator<Item = anyhow::Result<B>>,
        per_second: f64,
    ) -> anyhow::Result<Vec<Instant>> {
        ensure!(per_second > 0.0, "a paced phase needs a positive rate");
        self.publish(routing_key, bodies, Some(per_second)).await
    }

    async fn publish<B: AsRef<[u8]>>(
        &self,
        routing_key: &str,
        bodies: impl IntoIterator<Item = anyhow::Result<B>>,
        per_second: Option<f64>,
    ) -> anyhow::Result<Vec<Instant>> {
        let plain = bodies.into_iter().map(|item| item.map(|body| (body, None)));
        self.send(routing_key, plain, per_second).await
    }

    /// Publishes each body, with `x-execution-id` when it names an execution.
    async fn send<B: AsRef<[u8]>>(
        &self,
        routing_key: &str,
        bodies: impl IntoIterator<Item = anyhow::Result<(B, Option<String>)>>,
        per_second: Option<f64>,
    ) -> anyhow::Result<Vec<Instant>> {
        let mut sent = Vec::new();
        let start = tokio::time::Instant::now();
        let mut outstanding: VecDeque<PublisherConfirm> = VecDeque::with_capacity(self.window);
        // Mandatory: an unbound routing key must fail the run, not hang it.
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        for item in bodies {
            let (body, execution) = item?;
            if outstanding.len() >= self.window
                && let Some(oldest) = outstanding.pop_front()
            {
                confirmed(oldest).await?;
            }
            if let Some(per_second) = per_second {
                let due = start + Duration::from_secs_f64(sent.len() as f64 / per_second);
                // Timers tick in milliseconds: messages due within one go out now, in a burst.
                if due > tokio::time::Instant::now() + PACE_SLACK {
                    tokio::time::sleep_until(due).await;
                }
            }
            let props = match execution {
                Some(execution) => {
                    let mut headers = self.props.headers().clone().unwrap_or_default();
                    headers.insert(
                        EXECUTION_HEADER.into(),
                        lapin::types::AMQPValue::LongString(execution.as_str().into()),
                    );
                    self.props.clone().with_headers(headers)
                }
                None => self.props.clone(),
            };
            sent.push(Instant::now());
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.into(),
                    options,
                    body.as_ref(),
                    props,
                )
                .await
                .with_context(|| format!("publish to {}/{routing_key}", self.exchange))?;
            outstanding.push_back(confirm);
        }
        for confirm in outstanding {
            confirmed(confirm).await?;
        }
        Ok(sent)
    }
}

async fn confirmed(confirm: PublisherConfirm) -> anyhow::Result<()> {
    match confirm.await.context("wait for a publisher confirm")? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => bail!("a message was not routed to any queue"),
        Confirmation::Nack(_) => bail!("the broker refused (nacked) a message"),
        Confirmation::NotRequested => bail!("the publisher channel is not in confirm mode"),
    }
}

/// Messages ready in `queue` (passive declare).
async fn queue_depth(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .with_context(|| format!("passive declare of {queue}"))?;
    Ok(declared.message_count())
}

/// The usage queue and, with shards, every shard.
fn usage_queues(rig: &Rig<'_>) -> Vec<String> {
    let names = &rig.sandbox.names;
    let shards = if rig.args.shards > 1 { rig.args.shards } else { 0 };
    std::iter::once(names.usage.clone())
        .chain((0..shards).map(|shard| names.usage_shard(shard)))
        .collect()
}

/// Messages waiting in the usage queues.
async fn usage_depth(rig: &Rig<'_>) -> anyhow::Result<u32> {
    let mut depth = 0;
    for queue in usage_queues(rig) {
        depth += queue_depth(&rig.inspect, &queue).await?;
    }
    Ok(depth)
}

async fn wait_queue_empty(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALL_AFTER;
    loop {
        let depth = queue_depth(channel, queue).await?;
        if depth == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{queue} still holds {depth} messages after {STALL_AFTER:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

// ------------------------------------------------------------ measurements

/// When the worker's counter was first seen at a value.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    count: u64,
}

/// Polls `/metrics` until the counter reaches `target`; returns every change seen.
async fn watch_counter(worker: SocketAddr, pid: u32, target: u64) -> anyhow::Result<Vec<Sample>> {
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_progress = Instant::now();
    let mut ticker = tokio::time::interval(POLL_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match counted(worker).await {
            Ok(count) => {
                let at = Instant::now();
                if samples.last().is_none_or(|s| s.count != count) {
                    samples.push(Sample { at, count });
                    last_progress = at;
                }
                if count >= target {
                    return Ok(samples);
                }
            }
            // Refused connections are expected while a fresh worker starts.
            Err(err) if !has_exited(pid) && err.chain().any(|e| e.is::<std::io::Error>()) => {}
            Err(err) => return Err(err).context("read the worker's counter"),
        }
        ensure!(
            last_progress.elapsed() < STALL_AFTER,
            "the worker counted nothing for {STALL_AFTER:?} (last seen: {:?}, waiting for {target})",
            samples.last().map(|s| s.count)
        );
    }
}

/// Event `i` of a phase is visible once the counter reaches `base + i + 1`:
/// one FIFO queue, batches committed in order. Returns (p50, p99).
fn latency_percentiles(published: &[Instant], samples: &[Sample], base: u64) -> Option<(Duration, Duration)> {
    let mut latencies = Vec::with_capacity(published.len());
    let mut s = 0;
    for (i, sent) in published.iter().enumerate() {
        let needed = base + i as u64 + 1;
        while samples.get(s)?.count < needed {
            s += 1;
        }
        latencies.push(samples[s].at.saturating_duration_since(*sent));
    }
    latencies.sort_unstable();
    Some((percentile(&latencies, 0.50)?, percentile(&latencies, 0.99)?))
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let rank = ((p * sorted.len() as f64).ceil() as usize).max(1);
    sorted.get(rank - 1).copied()
}

// ------------------------------------------------------------------ phases

/// What one phase measured.
struct Phase {
    events: u64,
    messages: u64,
    elapsed: Duration,
    publishing: Duration,
    latency: Option<(Duration, Duration)>,
    cpu: CpuShare,
    /// What the worker did meanwhile (none for the ceiling).
    batches: Option<BatchStats>,
}

impl Phase {
    fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
    fn messages_per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// Everything the report prints.
struct Report {
    args: Args,
    queue_type: QueueType,
    prefetch: u16,
    batch_size: usize,
    batch_timeout: Duration,
    /// Phases 1 to 3, once per `--sslmodes` entry (none with `--events 0`).
    live: Vec<Live>,
    drain: Option<(Phase, f64)>,
    max_size: Option<MaxSize>,
}

/// Phases 1 to 3 with one `sslmode`, on a worker of their own.
struct Live {
    sslmode: String,
    /// The no-op consumer.
    ceiling: Phase,
    /// The bare batched insert.
    raw: Phase,
    /// Flat out, then at half that rate.
    single: Phase,
    single_half: Phase,
    batched: Phase,
    batched_half: Phase,
    /// Batched, flat out, over eight metrics of every aggregation and pricing.
    mixed: Phase,
    /// That worker's peak RSS over the single-event and batched phases, in MiB.
    rss_mb: f64,
    /// With `--statements`: the worker's statements in the flat-out batched phase, by total time.
    statements: Vec<(String, StatementTime)>,
}

/// What the max-size phase measured, and the settings it ran with.
struct MaxSize {
    phase: Phase,
    events_per_message: usize,
    /// Bytes of each body (they are all the same size).
    body_bytes: usize,
    /// The fresh worker's peak RSS, in MiB.
    rss_mb: f64,
    /// The worker's counter at the end, and the phase's rows in `usage_events`.
    counted: u64,
    rows: u64,
    /// Events the worker found counted before (redeliveries).
    duplicates: u64,
    prefetch: u16,
    max_message_bytes: usize,
    batch_bytes: usize,
}

/// What every phase publishes with: the sandbox, the provisioned execution,
/// a publisher and a channel for inspecting queues.
struct Rig<'a> {
    args: &'a Args,
    sandbox: &'a Sandbox,
    execution: String,
    /// The execution on the plan of eight mixed metrics.
    mixed_execution: String,
    /// The executions the backlog is spread over (`--executions`).
    drain_executions: Vec<String>,
    connection: Connection,
    publisher: Publisher,
    inspect: Channel,
}

/// Runs every phase; the worker in `worker` is left for the caller to stop.
async fn run(args: &Args, sandbox: &Sandbox, worker: &mut Option<Worker>) -> anyhow::Result<Report> {
    log("starting the worker");
    *worker = Some(start_worker(sandbox, args).await?);
    log("provisioning metric, plan, customer and execution");
    let (execution, mixed_execution) = provision(&sandbox.settings).await?;
    let mut drain_executions = vec![execution.clone()];
    for e in 1..args.executions {
        drain_executions.push(create_execution(&sandbox.settings, PLAN, &format!("bench-drain-{e}")).await?);
    }
    let connection = sandbox.connect("usage_bench", "publisher").await?;
    let rig = Rig {
        args,
        sandbox,
        execution,
        mixed_execution,
        drain_executions,
        inspect: connection.create_channel().await.context("open a channel")?,
        publisher: Publisher::open(&connection, &sandbox.names.inbound, args.confirm_window).await?,
        connection,
    };

    let mut live = Vec::new();
    if args.events > 0 {
        for sslmode in &args.sslmodes {
            live.push(live_phases(&rig, worker, sslmode).await?);
        }
    }

    let drain = if args.queued > 0 {
        stop_worker(worker).await?;
        Some(drain(&rig, worker).await?)
    } else {
        None
    };
    let max_size = if args.max_size > 0 {
        stop_worker(worker).await?;
        Some(max_size(&rig, worker).await?)
    } else {
        None
    };
    let _ = rig.connection.close(200, "done".into()).await;

    let usage = &sandbox.settings.usage;
    Ok(Report {
        args: args.clone(),
        queue_type: sandbox.settings.amqp.queue_type,
        prefetch: usage.prefetch,
        batch_size: usage.batch_size,
        batch_timeout: usage.batch_timeout,
        live,
        drain,
        max_size,
    })
}

/// Phases 1 to 3 on a fresh worker whose database URL has `sslmode`.
async fn live_phases(rig: &Rig<'_>, worker: &mut Option<Worker>, sslmode: &str) -> anyhow::Result<Live> {
    let (args, sandbox) = (rig.args, rig.sandbox);
    stop_worker(worker).await?;
    let url = support::with_sslmode(&sandbox.db_url, sslmode);
    log(format_args!("sslmode={sslmode}: starting a fresh worker"));
    let mut env = args.worker_env.clone();
    // After the sandbox's own URL in the worker's environment, so this one wins.
    env.push(("BILLING__DATABASE__URL".to_string(), url.clone()));
    let times = args.statements.then(StatementTimes::default);
    let launch = Launch {
        env,
        statements: times.clone(),
        ..Launch::default()
    };
    let live = worker.insert(Worker::start(sandbox, &launch, &ROLES).await?);

    quiesce(sandbox).await?;
    let ceiling = ceiling(rig, live.pid).await?;
    log(format_args!("single-event messages: {} events", thousands(args.events)));
    quiesce(sandbox).await?;
    let single = through_worker(rig, live, &format!("single-{sslmode}"), args.events, 1, None).await?;
    let half = single.events_per_second() / 2.0;
    log(format_args!(
        "single-event messages at half that rate: {} events/s",
        rate(half)
    ));
    quiesce(sandbox).await?;
    let single_half = through_worker(rig, live, &format!("single-half-{sslmode}"), args.events, 1, Some(half)).await?;
    // Next to the batched phase it is the ceiling of, on a database as settled.
    quiesce(sandbox).await?;
    let raw = raw_insert(rig, &url, live.pid, sslmode).await?;
    log(format_args!(
        "batched messages: {} events, {} per message",
        thousands(args.batched_events),
        args.batch
    ));
    quiesce(sandbox).await?;
    if let Some(times) = &times {
        times.clear();
    }
    let batched = through_worker(
        rig,
        live,
        &format!("batch-{sslmode}"),
        args.batched_events,
        args.batch,
        None,
    )
    .await?;
    let statements = times.as_ref().map(StatementTimes::by_total).unwrap_or_default();
    let half = batched.events_per_second() / 2.0;
    log(format_args!(
        "batched messages at half that rate: {} events/s",
        rate(half)
    ));
    quiesce(sandbox).await?;
    let batched_half = through_worker(
        rig,
        live,
        &format!("batch-half-{sslmode}"),
        args.batched_events,
        args.batch,
        Some(half),
    )
    .await?;
    log(format_args!(
        "mixed aggregations and pricing: {} events, {} per message",
        thousands(args.batched_events),
        args.batch
    ));
    quiesce(sandbox).await?;
    let mixed = through_worker_with(
        rig,
        live,
        &format!("mixed-{sslmode}"),
        args.batched_events,
        args.batch,
        None,
        true,
    )
    .await?;
    Ok(Live {
        sslmode: sslmode.to_string(),
        ceiling,
        raw,
        single,
        single_half,
        batched,
        batched_half,
        mixed,
        rss_mb: live.peak_rss_mb()?,
        statements,
    })
}

/// Lets the database catch up before a timed phase: vacuums and analyzes
/// the tables the worker writes, then checkpoints, so that the autovacuum
/// and checkpoint of the phase before do not run inside the next one.
async fn quiesce(sandbox: &Sandbox) -> anyhow::Result<()> {
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&sandbox.db_url)
        .await
        .with_context(|| format!("connect to {}", sandbox.db_name))?;
    for statement in [
        "VACUUM (ANALYZE) usage_events, usage_aggregates, usage_unique_values, usage_allowance_events",
        "CHECKPOINT",
    ] {
        sqlx::query(statement)
            .execute(&mut db)
            .await
            .with_context(|| statement.to_string())?;
    }
    let _ = sqlx::Connection::close(db).await;
    Ok(())
}

/// What Postgres manages without the worker: `args.batched_events` rows shaped like
/// the worker's events, inserted `usage.batch_size` at a time with one
/// `UNNEST` statement each (autocommit, `synchronous_commit` as the server
/// has it) into a table with the same columns, primary key and indexes as
/// `usage_events`, over a connection with the phase's `sslmode`. The rows
/// are made before the clock starts.
async fn raw_insert(rig: &Rig<'_>, url: &str, worker_pid: u32, sslmode: &str) -> anyhow::Result<Phase> {
    let (args, sandbox) = (rig.args, rig.sandbox);
    let batch = sandbox.settings.usage.batch_size.max(1);
    log(format_args!(
        "raw insert ceiling: {} rows, {batch} per statement",
        thousands(args.batched_events)
    ));
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .with_context(|| format!("connect to {} with sslmode={sslmode}", sandbox.db_name))?;
    for statement in [
        "DROP TABLE IF EXISTS bench_raw_events",
        "CREATE TABLE bench_raw_events (LIKE usage_events INCLUDING ALL)",
    ] {
        sqlx::query(statement)
            .execute(&mut db)
            .await
            .with_context(|| statement.to_string())?;
    }
    let now = chrono::Utc::now();
    let events = args.batched_events as usize;
    let batches: Vec<RawRows> = (0..events)
        .step_by(batch)
        .map(|first| {
            let ids: Vec<String> = (first..(first + batch).min(events))
                .map(|i| format!("raw-{sslmode}-{i}"))
                .collect();
            let n = ids.len();
            RawRows {
                // Keys as random as the worker's hashes.
                key: (0..n).map(|_| uuid::Uuid::new_v4()).collect(),
                merchant_id: vec![MERCHANT.to_string(); n],
                event_id: ids,
                execution_id: vec![rig.execution.clone(); n],
                metric_id: vec![METRIC.to_string(); n],
                period_start: vec![now; n],
                value: vec![rust_decimal::Decimal::ONE; n],
                ts: vec![now; n],
            }
        })
        .collect();

    let cpu_before = CpuTicks::now(&[worker_pid]);
    let started = Instant::now();
    for rows in &batches {
        let done = sqlx::query(
            "INSERT INTO bench_raw_events (key, merchant_id, event_id, execution_id, metric_id, period_start, value, ts)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                 $7::numeric[], $8::timestamptz[])",
        )
        .bind(&rows.key)
        .bind(&rows.merchant_id)
        .bind(&rows.event_id)
        .bind(&rows.execution_id)
        .bind(&rows.metric_id)
        .bind(&rows.period_start)
        .bind(&rows.value)
        .bind(&rows.ts)
        .execute(&mut db)
        .await
        .context("insert into bench_raw_events")?;
        ensure!(
            done.rows_affected() == rows.event_id.len() as u64,
            "bench_raw_events took {} of {} rows",
            done.rows_affected(),
            rows.event_id.len()
        );
    }
    let elapsed = started.elapsed();
    let cpu = cpu_before.cores(&CpuTicks::now(&[worker_pid]), elapsed);
    sqlx::query("DROP TABLE bench_raw_events")
        .execute(&mut db)
        .await
        .context("drop bench_raw_events")?;
    let _ = sqlx::Connection::close(db).await;
    Ok(Phase {
        events: args.batched_events,
        messages: batches.len() as u64,
        elapsed,
        publishing: Duration::ZERO,
        latency: None,
        cpu,
        batches: None,
    })
}

/// One statement's rows of the raw insert, as column arrays.
struct RawRows {
    key: Vec<uuid::Uuid>,
    merchant_id: Vec<String>,
    event_id: Vec<String>,
    execution_id: Vec<String>,
    metric_id: Vec<String>,
    period_start: Vec<chrono::DateTime<chrono::Utc>>,
    value: Vec<rust_decimal::Decimal>,
    ts: Vec<chrono::DateTime<chrono::Utc>>,
}

/// Stops the running worker, if any, before a phase that needs a fresh one.
async fn stop_worker(worker: &mut Option<Worker>) -> anyhow::Result<()> {
    if let Some(stopped) = worker.take() {
        log("stopping the worker (SIGTERM)");
        stopped.stop().await?;
    }
    Ok(())
}

/// The broker alone: a durable queue of the worker's type and arguments on `billing.in`, a
/// consumer that only acks, with the worker's prefetch. Timed from the first
/// publish to the last ack.
async fn ceiling(rig: &Rig<'_>, worker_pid: u32) -> anyhow::Result<Phase> {
    let (args, sandbox) = (rig.args, rig.sandbox);
    let queue_type = sandbox.settings.amqp.queue_type.as_str();
    log(format_args!(
        "ceiling: {} messages to a no-op consumer ({queue_type} queue)",
        thousands(args.events)
    ));
    let consumer_connection = sandbox.connect("usage_bench", "noop-consumer").await?;
    let channel = consumer_connection.create_channel().await.context("open a channel")?;
    let queue = sandbox.queue(NOOP_QUEUE);
    let queue = queue.as_str();
    // The arguments of the worker's usage queue, so the broker does the same
    // work per message for both consumers.
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString(queue_type.into()),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        lapin::types::AMQPValue::LongString(sandbox.names.dlx.as_str().into()),
    );
    if sandbox.settings.amqp.queue_type == QueueType::Quorum {
        arguments.insert("x-delivery-limit".into(), lapin::types::AMQPValue::LongInt(50));
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await
        .with_context(|| format!("declare {queue}"))?;
    channel
        .queue_bind(
            queue.into(),
            sandbox.names.inbound.as_str().into(),
            NOOP_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("bind {queue}"))?;
    let consumer = support::consume(&channel, queue, sandbox.settings.usage.prefetch).await?;

    let messages: Vec<Vec<u8>> = bodies("noop", &rig.execution, args.events, 1).collect::<anyhow::Result<_>>()?;
    // A queue left from an earlier mode starts empty all the same.
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .with_context(|| format!("purge {queue}"))?;
    let consuming = tokio::spawn(consume_and_ack(consumer, args.events));
    let cpu_before = CpuTicks::now(&[worker_pid]);
    let sent = rig.publisher.publish_all(NOOP_KEY, messages.iter().map(Ok)).await?;
    let published = Instant::now();
    let last_ack = consuming.await.context("the no-op consumer panicked")??;
    let first = sent.first().copied().context("nothing was published")?;
    let elapsed = last_ack.saturating_duration_since(first);
    let cpu = cpu_before.cores(&CpuTicks::now(&[worker_pid]), elapsed);
    let _ = consumer_connection.close(200, "done".into()).await;
    Ok(Phase {
        events: args.events,
        messages: args.events,
        elapsed,
        publishing: published.saturating_duration_since(first),
        latency: None,
        cpu,
        batches: None,
    })
}

/// Takes `expected` messages, acking with `multiple` every `NOOP_ACK_EVERY`
/// or when idle; returns when the last ack was sent.
async fn consume_and_ack(mut consumer: lapin::Consumer, expected: u64) -> anyhow::Result<Instant> {
    let mut received = 0;
    let mut unacked: Option<Acker> = None;
    let mut since_ack = 0;
    while received < expected {
        let wait = if unacked.is_some() { NOOP_IDLE } else { STALL_AFTER };
        let next = match tokio::time::timeout(wait, consumer.next()).await {
            Ok(next) => next,
            Err(_) if unacked.is_some() => {
                ack_up_to(unacked.take()).await?;
                since_ack = 0;
                continue;
            }
            Err(_) => bail!("the no-op consumer received nothing for {STALL_AFTER:?} ({received} of {expected})"),
        };
        let delivery = next
            .context("the broker cancelled the no-op consumer")?
            .context("no-op consumer")?;
        received += 1;
        since_ack += 1;
        unacked = Some(delivery.acker);
        if since_ack >= NOOP_ACK_EVERY {
            ack_up_to(unacked.take()).await?;
            since_ack = 0;
        }
    }
    ack_up_to(unacked.take()).await?;
    Ok(Instant::now())
}

async fn ack_up_to(acker: Option<Acker>) -> anyhow::Result<()> {
    if let Some(acker) = acker {
        acker
            .ack(BasicAckOptions { multiple: true })
            .await
            .context("ack (multiple)")?;
    }
    Ok(())
}

/// Publishes `events` events, `per_message` to a message, to the
/// worker, flat out or (`pace`, in events per second) at a steady rate;
/// timed from the first publish until the counter shows them all and the
/// usage queue is empty.
async fn through_worker(
    rig: &Rig<'_>,
    worker: &Worker,
    tag: &str,
    events: u64,
    per_message: u64,
    pace: Option<f64>,
) -> anyhow::Result<Phase> {
    through_worker_with(rig, worker, tag, events, per_message, pace, false).await
}

/// [`through_worker`], with `mixed` on the mixed execution and its events.
async fn through_worker_with(
    rig: &Rig<'_>,
    worker: &Worker,
    tag: &str,
    events: u64,
    per_message: u64,
    pace: Option<f64>,
    mixed: bool,
) -> anyhow::Result<Phase> {
    let execution = if mixed { &rig.mixed_execution } else { &rig.execution };
    let messages: Vec<Vec<u8>> =
        load_bodies(tag, execution, events, per_message, mixed).collect::<anyhow::Result<_>>()?;
    let base = counted(worker.http).await?;
    let stats_before = BatchStats::read(worker.http).await?;
    let target = base + events;
    let watching = tokio::spawn(watch_counter(worker.http, worker.pid, target));
    let cpu_before = CpuTicks::now(&[worker.pid]);
    let sent = match pace {
        Some(events_per_second) => {
            let per_second = events_per_second / per_message as f64;
            rig.publisher
                .publish_paced(USAGE_KEY, messages.iter().map(Ok), per_second)
                .await?
        }
        None => rig.publisher.publish_all(USAGE_KEY, messages.iter().map(Ok)).await?,
    };
    let published = Instant::now();
    let samples = watching.await.context("the counter watcher panicked")??;
    wait_queue_empty(&rig.inspect, &rig.sandbox.names.usage).await?;
    let done = Instant::now();
    let batches = BatchStats::read(worker.http).await?.since(&stats_before);

    let first = sent.first().copied().context("nothing was published")?;
    let elapsed = done.saturating_duration_since(first);
    let per_event: Vec<Instant> = sent
        .iter()
        .flat_map(|at| std::iter::repeat_n(*at, per_message as usize))
        .take(events as usize)
        .collect();
    Ok(Phase {
        events,
        messages: sent.len() as u64,
        elapsed,
        publishing: published.saturating_duration_since(first),
        latency: latency_percentiles(&per_event, &samples, base),
        cpu: cpu_before.cores(&CpuTicks::now(&[worker.pid]), elapsed),
        batches: Some(batches),
    })
}

/// With no worker running, queues `args.queued` events in 100-event
/// messages, then lets a fresh worker drain them. Returns the drain and the
/// fresh worker's peak RSS in MB.
async fn drain(rig: &Rig<'_>, worker: &mut Option<Worker>) -> anyhow::Result<(Phase, f64)> {
    let (args, sandbox) = (rig.args, rig.sandbox);
    log(format_args!(
        "queueing {} events in {QUEUED_BATCH}-event messages with no worker running",
        thousands(args.queued)
    ));
    let started = Instant::now();
    // Generated while publishing: the backlog need not sit in memory twice.
    let sent = if rig.drain_executions.len() > 1 {
        // Message m goes to execution m % n, named in its header.
        let n = rig.drain_executions.len();
        let per_execution = args.queued.div_ceil(n as u64);
        let mut streams: Vec<_> = rig
            .drain_executions
            .iter()
            .enumerate()
            .map(|(e, id)| {
                let events = per_execution.min(args.queued.saturating_sub(per_execution * e as u64));
                let tag = format!("queued{e}");
                let bodies: Vec<anyhow::Result<Vec<u8>>> = bodies(&tag, id, events, QUEUED_BATCH as u64).collect();
                (id.clone(), bodies.into_iter())
            })
            .collect();
        let mut routed = Vec::new();
        loop {
            let mut any = false;
            for (id, stream) in &mut streams {
                if let Some(body) = stream.next() {
                    routed.push(body.map(|b| (b, id.clone())));
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        rig.publisher.publish_routed(USAGE_KEY, routed).await?
    } else {
        rig.publisher
            .publish_all(
                USAGE_KEY,
                bodies("queued", &rig.execution, args.queued, QUEUED_BATCH as u64),
            )
            .await?
    };
    let publishing = started.elapsed();
    let depth = usage_depth(rig).await?;
    log(format_args!(
        "{} messages queued in {:.1} s; starting a fresh worker to drain them",
        thousands(u64::from(depth)),
        publishing.as_secs_f64()
    ));
    if args.shards > 1 {
        let mut per_shard = Vec::new();
        for queue in usage_queues(rig).iter().skip(1) {
            per_shard.push(thousands(u64::from(queue_depth(&rig.inspect, queue).await?)));
        }
        log(format_args!("messages per shard: {}", per_shard.join(" / ")));
    }

    // Peers start first, so that the clock below covers them all from the start.
    let mut peers = Vec::new();
    for k in 1..args.drain_workers.max(1) {
        peers.push(start_worker_k(sandbox, args, k).await?);
    }
    let started = Instant::now();
    let fresh = worker.insert(start_worker(sandbox, args).await?);
    let pids: Vec<u32> = std::iter::once(fresh.pid).chain(peers.iter().map(|p| p.pid)).collect();
    let cpu_before = CpuTicks::now(&pids);
    if peers.is_empty() {
        // A new process: its counter starts from zero.
        watch_counter(fresh.http, fresh.pid, args.queued).await?;
    } else {
        let addrs: Vec<SocketAddr> = std::iter::once(fresh.http)
            .chain(peers.iter().map(|p| p.http))
            .collect();
        wait_counted_by_all(&addrs, args.queued).await?;
    }
    for queue in usage_queues(rig) {
        wait_queue_empty(&rig.inspect, &queue).await?;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_before.cores(&CpuTicks::now(&pids), elapsed);
    for peer in peers {
        peer.stop().await?;
    }
    let rss = fresh.peak_rss_mb()?;
    // A new process: its histograms start from zero too.
    let batches = BatchStats::read(fresh.http).await?;
    let phase = Phase {
        events: args.queued,
        messages: sent.len() as u64,
        elapsed,
        publishing,
        latency: None,
        cpu,
        batches: Some(batches),
    };
    Ok((phase, rss))
}

/// Waits until the counters of several workers add up to `target`.
async fn wait_counted_by_all(addrs: &[SocketAddr], target: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALL_AFTER * 10;
    loop {
        let mut total = 0;
        for addr in addrs {
            total += counted(*addr).await?;
        }
        if total >= target {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "only {total} of {target} events counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With no worker running, queues `args.max_size` messages as large as the
/// worker accepts (see [`max_size_body`]), then lets a fresh worker drain
/// them; checks that every event was counted once and reads the fresh
/// worker's peak RSS.
async fn max_size(rig: &Rig<'_>, worker: &mut Option<Worker>) -> anyhow::Result<MaxSize> {
    let (args, sandbox) = (rig.args, rig.sandbox);
    let settings = &sandbox.settings;
    let per_message = settings.usage.max_events_per_message;
    let max_message_bytes = settings.amqp.max_message_bytes;
    let body_bytes = max_message_bytes
        .checked_sub(MAX_SIZE_HEADROOM)
        .filter(|&b| b > 0)
        .with_context(|| {
            format!("amqp.max_message_bytes ({max_message_bytes}) leaves no room for max-size messages")
        })?;
    let events = args.max_size * per_message as u64;
    log(format_args!(
        "queueing {} messages of {per_message} events and {} bytes with no worker running",
        thousands(args.max_size),
        thousands(body_bytes as u64)
    ));
    let started = Instant::now();
    // Generated while publishing: the bodies need not sit in this process's memory.
    let bodies = (0..args.max_size).map(|m| max_size_body(m, &rig.execution, per_message, body_bytes));
    let sent = rig.publisher.publish_all(USAGE_KEY, bodies).await?;
    let publishing = started.elapsed();
    let depth = u64::from(queue_depth(&rig.inspect, &sandbox.names.usage).await?);
    ensure!(
        depth == args.max_size,
        "{} holds {depth} messages, {} were queued",
        sandbox.names.usage,
        args.max_size
    );
    log(format_args!(
        "{} messages ({} bytes) queued in {:.1} s; starting a fresh worker to drain them",
        thousands(depth),
        thousands(depth * body_bytes as u64),
        publishing.as_secs_f64()
    ));

    let started = Instant::now();
    let fresh = worker.insert(start_worker(sandbox, args).await?);
    let cpu_before = CpuTicks::now(&[fresh.pid]);
    // A new process: its counter starts from zero.
    watch_counter(fresh.http, fresh.pid, events).await?;
    wait_queue_empty(&rig.inspect, &sandbox.names.usage).await?;
    let elapsed = started.elapsed();
    let cpu = cpu_before.cores(&CpuTicks::now(&[fresh.pid]), elapsed);
    let rss_mb = fresh.peak_rss_mb()?;

    // Counted exactly once: the counter (which also fails on any dead letter)
    // and the rows of this phase's event ids both match what was queued.
    let counted = counted(fresh.http).await?;
    ensure!(
        counted == events,
        "the worker counted {counted} events, {events} were queued"
    );
    let text = scrape(fresh.http).await?;
    let duplicates = metric(&text, DUPLICATES).with_context(|| format!("{DUPLICATES} missing from /metrics"))? as u64;
    let mut db = sandbox.database().await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE merchant_id = $1 AND event_id LIKE $2")
        .bind(MERCHANT)
        .bind(format!("{MAX_SIZE_TAG}-%"))
        .fetch_one(&mut db)
        .await
        .context("count the phase's rows in usage_events")?;
    let _ = sqlx::Connection::close(db).await;
    let rows = u64::try_from(rows).unwrap_or(0);
    ensure!(
        rows == events,
        "usage_events holds {rows} of the phase's events, {events} were queued"
    );

    let batches = BatchStats::read(fresh.http).await?;
    Ok(MaxSize {
        phase: Phase {
            events,
            messages: sent.len() as u64,
            elapsed,
            publishing,
            latency: None,
            cpu,
            batches: Some(batches),
        },
        events_per_message: per_message,
        body_bytes,
        rss_mb,
        counted,
        rows,
        duplicates,
        prefetch: settings.usage.prefetch,
        max_message_bytes,
        batch_bytes: settings.usage.batch_bytes,
    })
}

/// Message `message` of the max-size phase: `per_message` events with
/// 100-character ids (`max-<message>-<event>-xxx...`, unique to the phase),
/// each with a `properties.pad` string sized so that the body is exactly
/// `size` bytes.
fn max_size_body(message: u64, execution: &str, per_message: usize, size: usize) -> anyhow::Result<Vec<u8>> {
    let timestamp = now_rfc3339();
    let ids: Vec<String> = (0..per_message).map(|i| max_size_id(message, i)).collect();
    let encode = |pad: &dyn Fn(usize) -> usize| {
        let list: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut event = event(id, execution, &timestamp);
                event["properties"] = json!({ "pad": "x".repeat(pad(i)) });
                event
            })
            .collect();
        serde_json::to_vec(&json!({ "events": list })).context("encode usage message")
    };
    let bare = encode(&|_| 0)?.len();
    ensure!(
        bare <= size,
        "{per_message} events take {bare} bytes unpadded, more than {size}"
    );
    let (each, rest) = ((size - bare) / per_message, (size - bare) % per_message);
    let body = encode(&|i| each + usize::from(i < rest))?;
    ensure!(
        body.len() == size,
        "a max-size body has {} bytes, not {size}",
        body.len()
    );
    Ok(body)
}

/// A 100-character event id, unique to the max-size phase.
fn max_size_id(message: u64, event: usize) -> String {
    let mut id = format!("{MAX_SIZE_TAG}-{message:07}-{event:05}-");
    let fill = MAX_EVENT_ID_LEN.saturating_sub(id.chars().count());
    id.extend(std::iter::repeat_n('x', fill));
    id
}

// ------------------------------------------------------------------ report

/// The worker's batches: how many, how full, and how much of the phase went to committing them.
fn batches_line(phase: &Phase) -> Option<String> {
    let b = phase.batches?;
    if b.batches < 1.0 {
        return None;
    }
    Some(format!(
        "worker: {} batches of {:.0} events on average, {} per batch transaction, transactions add up to {:.0}% of the phase (two may run at once)",
        thousands(b.batches as u64),
        b.events / b.batches,
        ms(Duration::from_secs_f64(b.commit_seconds / b.batches)),
        100.0 * b.commit_seconds / phase.elapsed.as_secs_f64()
    ))
}

fn latency_text(phase: &Phase) -> String {
    match phase.latency {
        Some((p50, p99)) => format!("latency p50 {} p99 {}", ms(p50), ms(p99)),
        None => "latency n/a".to_string(),
    }
}

/// Where each event's time went: elapsed overall and for publishing alone.
fn timing(phase: &Phase) -> String {
    format!(
        "{} events in {} messages, {:.2} s; publishing took {:.2} s",
        thousands(phase.events),
        thousands(phase.messages),
        phase.elapsed.as_secs_f64(),
        phase.publishing.as_secs_f64()
    )
}

/// The indented lines under a phase's headline.
fn details(f: &mut std::fmt::Formatter<'_>, phase: &Phase) -> std::fmt::Result {
    writeln!(f, "    {}", timing(phase))?;
    writeln!(f, "    {}", phase.cpu)?;
    if let Some(line) = batches_line(phase) {
        writeln!(f, "    {line}")?;
    }
    Ok(())
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f)?;
        writeln!(f, "usage pipeline benchmark")?;
        writeln!(
            f,
            "  worker: {} queues, prefetch {}, batches of up to {} events or {:?}; confirm window {}",
            self.queue_type.as_str(),
            self.prefetch,
            self.batch_size,
            self.batch_timeout,
            self.args.confirm_window
        )?;
        if !self.args.worker_env.is_empty() {
            let settings: Vec<String> = self.args.worker_env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "  worker environment: {}", settings.join(" "))?;
        }
        write_live(f, &self.live, self.args.batch)?;
        if let Some((drain, rss)) = &self.drain {
            writeln!(
                f,
                "drain of {} queued events ({} execution{}) by {} worker process{} on {}: {} events/s, worker peak RSS {rss:.0} MB",
                thousands(drain.events),
                self.args.executions.max(1),
                if self.args.executions > 1 { "s" } else { "" },
                self.args.drain_workers.max(1),
                if self.args.drain_workers > 1 { "es" } else { "" },
                if self.args.shards > 1 {
                    format!("{} shards", self.args.shards)
                } else {
                    "one queue".to_string()
                },
                rate(drain.events_per_second())
            )?;
            writeln!(
                f,
                "    {} messages of {QUEUED_BATCH} events queued in {:.2} s with no worker; drained in {:.2} s from process start",
                thousands(drain.messages),
                drain.publishing.as_secs_f64(),
                drain.elapsed.as_secs_f64()
            )?;
            writeln!(f, "    {}", drain.cpu)?;
            if let Some(line) = batches_line(drain) {
                writeln!(f, "    {line}")?;
            }
        }
        if let Some(max_size) = &self.max_size {
            write!(f, "{max_size}")?;
        }
        writeln!(
            f,
            "how it is measured: rates run from the first publish until the worker's {COUNTED} shows every event \
             and its queue is empty (the ceiling: until the last ack). Latency is each event's publish instant to \
             the first /metrics reading (polled every {} ms) where the counter reaches the events counted before \
             the phase + the event's position + 1: the queue is FIFO and batches commit in order. Flat out, \
             latency includes time waiting in the queue; at half load the publisher offers half the rate that \
             phase measured flat out, evenly spread. The raw insert runs from its first statement to its last.",
            POLL_EVERY.as_millis()
        )?;
        Ok(())
    }
}

/// Targets the live phases are held to.
const SINGLE_TARGET: f64 = 0.85;
const BATCHED_TARGET: f64 = 0.6;
const TLS_TARGET: f64 = 0.85;
const MIXED_TARGET: f64 = 0.8;
/// Widths of the side-by-side table.
const LABEL_WIDTH: usize = 50;
const COLUMN_WIDTH: usize = 36;

/// Phases 1 to 3 side by side, one column per `sslmode`, then each mode's details.
fn write_live(f: &mut std::fmt::Formatter<'_>, live: &[Live], batch: u64) -> std::fmt::Result {
    if live.is_empty() {
        return Ok(());
    }
    let row = |f: &mut std::fmt::Formatter<'_>, label: &str, cell: &dyn Fn(&Live) -> String| {
        write!(f, "{label:<LABEL_WIDTH$}")?;
        for l in live {
            write!(f, "{:<COLUMN_WIDTH$}", cell(l))?;
        }
        writeln!(f)
    };
    // A rate, its ratio to its ceiling and whether that reaches the target.
    let against = |measured: f64, ceiling: f64, ceiling_name: &str, target: f64| {
        let ratio = measured / ceiling;
        format!(
            "{} = {ratio:.2}x {ceiling_name} ({})",
            rate(measured),
            verdict(ratio >= target)
        )
    };
    let half = |phase: &Phase| {
        format!(
            "{}: {}",
            rate(phase.events_per_second()),
            phase
                .latency
                .map_or("n/a".to_string(), |(p50, p99)| format!("{} / {}", ms(p50), ms(p99)))
        )
    };
    row(f, "", &|l| {
        if l.sslmode == "disable" {
            "plaintext (sslmode=disable)".to_string()
        } else {
            format!("TLS (sslmode={})", l.sslmode)
        }
    })?;
    row(f, "ceiling: no-op consumer, msg/s", &|l| {
        rate(l.ceiling.messages_per_second())
    })?;
    row(f, "single-event messages, events/s", &|l| {
        against(
            l.single.events_per_second(),
            l.ceiling.messages_per_second(),
            "ceiling",
            SINGLE_TARGET,
        )
    })?;
    row(f, "  at half load: events/s: latency p50 / p99", &|l| {
        half(&l.single_half)
    })?;
    row(f, "ceiling: raw Postgres batched insert, rows/s", &|l| {
        rate(l.raw.events_per_second())
    })?;
    row(f, &format!("batched ({batch}/message), events/s"), &|l| {
        against(
            l.batched.events_per_second(),
            l.raw.events_per_second(),
            "raw insert",
            BATCHED_TARGET,
        )
    })?;
    row(f, "  at half load: events/s: latency p50 / p99", &|l| {
        half(&l.batched_half)
    })?;
    row(f, &format!("mixed, 8 metrics ({batch}/message), events/s"), &|l| {
        against(
            l.mixed.events_per_second(),
            l.batched.events_per_second(),
            "batched SUM",
            MIXED_TARGET,
        )
    })?;
    row(f, "worker peak RSS", &|l| format!("{:.0} MB", l.rss_mb))?;
    if let Some(plain) = live.iter().find(|l| l.sslmode == "disable") {
        for tls in live.iter().filter(|l| l.sslmode != "disable") {
            let ratio = tls.batched.events_per_second() / plain.batched.events_per_second();
            writeln!(
                f,
                "TLS cost: batched with sslmode={} = {ratio:.2}x sslmode=disable (target >= {TLS_TARGET}x: {})",
                tls.sslmode,
                verdict(ratio >= TLS_TARGET)
            )?;
        }
    }
    writeln!(
        f,
        "targets: single-event >= {SINGLE_TARGET}x the no-op consumer, batched >= {BATCHED_TARGET}x the raw insert, \
         mixed >= {MIXED_TARGET}x batched SUM"
    )?;
    for l in live {
        writeln!(f, "details, sslmode={}:", l.sslmode)?;
        writeln!(f, "  ceiling (no-op consumer):")?;
        details(f, &l.ceiling)?;
        writeln!(
            f,
            "  raw insert: {} rows in {} statements, {:.2} s",
            thousands(l.raw.events),
            thousands(l.raw.messages),
            l.raw.elapsed.as_secs_f64()
        )?;
        writeln!(f, "    {}", l.raw.cpu)?;
        for (name, phase) in [
            ("single-event, flat out", &l.single),
            ("single-event, half load", &l.single_half),
            ("batched, flat out", &l.batched),
            ("batched, half load", &l.batched_half),
            ("mixed, flat out", &l.mixed),
        ] {
            writeln!(
                f,
                "  {name}: {} events/s, {}",
                rate(phase.events_per_second()),
                latency_text(phase)
            )?;
            details(f, phase)?;
        }
        if !l.statements.is_empty() {
            writeln!(
                f,
                "  statements of the flat-out batched phase (count, total, mean, total as a share of the phase):"
            )?;
            for (statement, t) in l.statements.iter().take(12) {
                writeln!(
                    f,
                    "    {:>6} {:>9} {:>9} {:>4.0}%  {statement}",
                    thousands(t.count),
                    ms(Duration::from_secs_f64(t.seconds)),
                    ms(Duration::from_secs_f64(t.seconds / t.count.max(1) as f64)),
                    100.0 * t.seconds / l.batched.elapsed.as_secs_f64()
                )?;
            }
        }
    }
    Ok(())
}

/// Bytes as MiB, for the memory lines.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl std::fmt::Display for MaxSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = &self.phase;
        let queued = phase.messages * self.body_bytes as u64;
        let prefetch = u64::from(self.prefetch);
        let (max, batch) = (self.max_message_bytes as u64, self.batch_bytes as u64);
        let worst = prefetch * max + 3 * batch;
        let pushed = prefetch.min(phase.messages);
        writeln!(
            f,
            "max-size messages drained by a fresh worker: {} events/s, worker peak RSS {:.0} MiB",
            rate(phase.events_per_second()),
            self.rss_mb
        )?;
        writeln!(
            f,
            "    {} message{} of {} events and {} bytes: {} bytes ({:.0} MiB) queued in {:.2} s with no worker; \
             drained in {:.2} s from process start",
            thousands(phase.messages),
            if phase.messages == 1 { "" } else { "s" },
            self.events_per_message,
            thousands(self.body_bytes as u64),
            thousands(queued),
            mib(queued),
            phase.publishing.as_secs_f64(),
            phase.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "    counted once each: counter {} = {} events queued = {} rows; {} duplicates, no dead letters",
            thousands(self.counted),
            thousands(phase.events),
            thousands(self.rows),
            thousands(self.duplicates)
        )?;
        writeln!(
            f,
            "    worst case = prefetch x max_message_bytes + 3 x batch_bytes = {prefetch} x {} + 3 x {} = {} bytes ({:.0} MiB)",
            thousands(max),
            thousands(batch),
            thousands(worst),
            mib(worst)
        )?;
        writeln!(
            f,
            "    this run: the broker may push min(prefetch {prefetch}, {} queued) = {pushed} bodies at once = {:.0} MiB",
            thousands(phase.messages),
            mib(pushed * self.body_bytes as u64)
        )?;
        writeln!(f, "    {}", phase.cpu)?;
        if let Some(line) = batches_line(phase) {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_size_bodies_fill_the_size_with_unique_100_character_ids() {
        let body = max_size_body(7, "0123456789abcdef0123456789abcdef", 1000, 1_040_000).expect("body");
        assert_eq!(body.len(), 1_040_000);
        let decoded = billing_worker::protocol::usage::decode_message(&body, 1000).expect("a valid message");
        assert_eq!(decoded.len(), 1000);
        let mut ids = std::collections::HashSet::new();
        for d in &decoded {
            let event = d.event.as_ref().expect("a valid event");
            assert_eq!(event.event_id.chars().count(), MAX_EVENT_ID_LEN);
            assert!(ids.insert(event.event_id.clone()), "{} repeated", event.event_id);
        }
        assert_ne!(max_size_id(7, 0), max_size_id(70, 0));
        assert!(max_size_body(0, "x", 1000, 1000).is_err());
    }

    #[test]
    fn worker_settings_are_billing_variables_the_benchmark_does_not_set() {
        assert_eq!(
            worker_setting("BILLING__USAGE__PREFETCH=64"),
            Ok(("BILLING__USAGE__PREFETCH".to_string(), "64".to_string()))
        );
        assert!(worker_setting("BILLING__USAGE__PREFETCH").is_err());
        assert!(worker_setting("USAGE__PREFETCH=64").is_err());
        assert!(worker_setting("BILLING__AMQP__PREFIX=x.").is_err());
    }

    #[test]
    fn latency_takes_the_first_reading_at_or_past_each_position() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let published = [at(0), at(0), at(10), at(10)];
        let samples = [
            Sample { at: at(1), count: 5 },
            Sample { at: at(20), count: 7 },
            Sample { at: at(30), count: 9 },
        ];
        let (p50, p99) = latency_percentiles(&published, &samples, 5).expect("all visible");
        // Events need 6, 7, 8, 9: first seen at 20, 20, 30, 30, so every latency is 20 ms.
        assert_eq!(p50, Duration::from_millis(20));
        assert_eq!(p99, Duration::from_millis(20));
        assert!(latency_percentiles(&published, &samples[..2], 5).is_none());
    }
}
