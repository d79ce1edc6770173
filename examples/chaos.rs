//! Chaos run: a sustained usage load while the worker is killed with
//! SIGKILL, Postgres restarts and the broker restarts; then proof that every
//! event was counted exactly once and every webhook was published.
//!
//! `./scripts/chaos [--seconds 60] [--rate 2000]`. It restarts this machine's
//! PostgreSQL and RabbitMQ: run it where nothing else depends on them. The
//! worker runs on a fresh database and topology prefix, removed at the end
//! (see `support`).

#[path = "support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use billing_worker::broker::Names;
use billing_worker::settings::Settings;
use clap::Parser;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use support::{Launch, Sandbox, Worker, amqp_url, send_command};
use tokio::process::Command;

#[derive(Parser)]
struct Args {
    /// How long the load runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Events per second offered.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Events per message.
    #[arg(long, default_value_t = 50)]
    batch: usize,
}

const MERCHANT: &str = "chaos";

async fn shell(command: &str) -> anyhow::Result<()> {
    let status = Command::new("bash")
        .arg("-c")
        .arg(command)
        .stdout(Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("`{command}` failed: {status}");
    }
    Ok(())
}

/// Starts a worker without waiting for it: the commands below retry until
/// it answers, and a restart must not hold up the fault schedule.
fn spawn_worker(sandbox: &Sandbox, http: SocketAddr) -> anyhow::Result<Worker> {
    let launch = Launch {
        http: Some(http),
        log_filter: Some("error".into()),
        ..Launch::default()
    };
    Worker::spawn(sandbox, &launch)
}

/// Sends a provisioning command until it is answered; repeats are harmless
/// because every command here carries a message_id.
async fn command(settings: &Settings, message_id: &str, body: Value) -> anyhow::Result<Value> {
    loop {
        match send_command(settings, MERCHANT, Some(message_id), &body, Duration::from_secs(5)).await {
            Ok(answer) if answer["success"] == true => return Ok(answer),
            Ok(answer) => bail!("{message_id} refused: {answer}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Publishes usage at the offered rate, riding out broker restarts: a message
/// that was not confirmed is sent again with the same event ids.
async fn load(
    names: Names,
    execution: String,
    args: Args,
    sent: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let per_message = args.batch as u64;
    let interval = Duration::from_secs_f64(per_message as f64 / args.rate as f64);
    let mut next = 0u64;
    let mut connection: Option<(Connection, lapin::Channel)> = None;
    let started = Instant::now();
    while !*stop.borrow() {
        let due = started + interval.mul_f64((next / per_message) as f64);
        tokio::time::sleep_until(due.into()).await;
        if connection.is_none() {
            connection = match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
                Ok(c) => match c.create_channel().await {
                    Ok(ch) if ch.confirm_select(ConfirmSelectOptions::default()).await.is_ok() => Some((c, ch)),
                    _ => None,
                },
                Err(_) => None,
            };
            if connection.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let events: Vec<Value> = (next..next + per_message)
            .map(|i| json!({"event_id": format!("c{i}"), "billing_execution_info_id": execution, "metric_id": "calls", "value": 1}))
            .collect();
        let body = serde_json::to_vec(&json!({ "events": events })).unwrap_or_default();
        let mut headers = FieldTable::default();
        headers.insert("x-merchantid".into(), AMQPValue::LongString(LongString::from(MERCHANT)));
        let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        let Some((_, channel)) = connection.as_ref() else {
            continue;
        };
        let confirmed = match channel
            .basic_publish(
                names.inbound.as_str().into(),
                "usage.chaos".into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
        {
            Ok(confirm) => matches!(confirm.await, Ok(c) if c.is_ack()),
            Err(_) => false,
        };
        if confirmed {
            next += per_message;
            sent.store(next, Ordering::Relaxed);
        } else {
            connection = None;
        }
    }
}

async fn counted(db: &mut PgConnection) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM usage_events), (SELECT COALESCE(sum(sum), 0)::bigint FROM usage_aggregates)",
    )
    .fetch_one(db)
    .await?)
}

async fn connect_db(url: &str) -> PgConnection {
    loop {
        if let Ok(c) = PgConnection::connect(url).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Creates the metric, plan, customer and execution; returns the execution id.
async fn provision(settings: &Settings) -> anyhow::Result<String> {
    command(
        settings,
        "metric",
        json!({"command": "create_metric", "metric_id": "calls", "name": "Calls", "aggregation_type": "SUM",
        "pricing_type": "FIXED", "pricing_model": [{"unit_amount": "0.01"}], "currency": "INR"}),
    )
    .await?;
    command(
        settings,
        "plan",
        json!({"command": "create_plan", "plan_id": "p", "plan_name": "P", "plan_type": "POST_DEBIT",
        "plan_model": "USAGE_BASED", "plan_interval": "MONTHLY", "plan_currency": "INR", "metric_ids": ["calls"]}),
    )
    .await?;
    command(
        settings,
        "customer",
        json!({"command": "create_customer", "customer_id": "c1"}),
    )
    .await?;
    let created = command(
        settings,
        "execution",
        json!({"command": "create", "plan_id": "p", "customer_id": "c1", "merchant_ref_id": "chaos"}),
    )
    .await?;
    Ok(created["billing_execution_info_id"]
        .as_str()
        .context("execution id")?
        .to_string())
}

/// Credit grants once a second while the load runs, so that webhooks keep
/// being written while the faults happen; returns how many were granted.
async fn grant_credit(settings: Settings, execution: String, started: Instant, seconds: u64) -> u64 {
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let body = json!({"command": "add_credit", "billing_execution_info_id": execution, "amount": 1, "reference_id": format!("g{n}")});
        if command(&settings, &format!("grant-{n}"), body).await.is_ok() {
            n += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    n
}

/// The faults, at fixed fractions of the run: SIGKILL of the worker (and a
/// fresh one 3 s later), a PostgreSQL restart, a RabbitMQ restart.
async fn inject_faults(
    sandbox: &Sandbox,
    worker: &mut Option<Worker>,
    http: SocketAddr,
    at: impl Fn(f64) -> Instant,
) -> anyhow::Result<Vec<&'static str>> {
    let mut faults = Vec::new();
    tokio::time::sleep_until(at(0.15).into()).await;
    if let Some(killed) = worker.take() {
        killed.kill().await?;
    }
    faults.push("worker killed with SIGKILL mid-batch, restarted 3 s later");
    tokio::time::sleep(Duration::from_secs(3)).await;
    *worker = Some(spawn_worker(sandbox, http)?);
    tokio::time::sleep_until(at(0.4).into()).await;
    shell("pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | sort -V | tail -1) main restart -m fast")
        .await?;
    faults.push("PostgreSQL restarted (fast shutdown, connections cut)");
    tokio::time::sleep_until(at(0.65).into()).await;
    shell("rabbitmqctl -q stop_app && rabbitmqctl -q start_app && rabbitmqctl -q await_startup").await?;
    faults.push("RabbitMQ restarted (every connection dropped)");
    tokio::time::sleep_until(at(1.0).into()).await;
    Ok(faults)
}

/// Waits until every published event is counted, failing on any counted twice.
async fn wait_all_counted(db: &mut PgConnection, published: i64) -> anyhow::Result<()> {
    let drain_started = Instant::now();
    loop {
        let (events, total) = counted(db).await.unwrap_or((0, 0));
        if events > published || total > published {
            bail!("counted twice: {events} events, total {total}, for {published} published");
        }
        if events == published && total == published {
            return Ok(());
        }
        if drain_started.elapsed() > Duration::from_secs(300) {
            bail!("not every event was counted: {events} of {published}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_outbox_published(db: &mut PgConnection) -> anyhow::Result<()> {
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&mut *db)
            .await?;
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What reached the webhook queue, against what the outbox holds.
struct Delivery {
    written: usize,
    delivered: usize,
    deliveries: usize,
    missing: usize,
    dead: u32,
}

async fn check_delivery(names: &Names, db: &mut PgConnection) -> anyhow::Result<Delivery> {
    let outbox: Vec<String> = sqlx::query_scalar("SELECT id FROM outbox").fetch_all(db).await?;
    let amqp = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    let mut delivered = HashSet::new();
    let mut deliveries = 0;
    while let Some(msg) = channel
        .basic_get(names.webhook_queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
    {
        deliveries += 1;
        if let Some(id) = msg.properties.message_id() {
            delivered.insert(id.as_str().to_string());
        }
    }
    let missing = outbox.iter().filter(|id| !delivered.contains(*id)).count();
    let dead = channel
        .queue_declare(
            names.dead.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    let _ = amqp.close(200, "done".into()).await;
    Ok(Delivery {
        written: outbox.len(),
        delivered: delivered.len(),
        deliveries,
        missing,
        dead,
    })
}

/// The load with its faults, then the proof; the worker in `worker` is left
/// for the caller to end.
async fn run(args: Args, sandbox: &Sandbox, worker: &mut Option<Worker>) -> anyhow::Result<Delivery> {
    let settings = &sandbox.settings;
    let http = support::free_local_addr()?;
    *worker = Some(spawn_worker(sandbox, http)?);
    let execution = provision(settings).await?;

    println!(
        "chaos: {} s of {} events/s in messages of {}, prefix {}",
        args.seconds, args.rate, args.batch, settings.amqp.prefix
    );
    let sent = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (seconds, rate) = (args.seconds, args.rate);
    let loader = tokio::spawn(load(
        sandbox.names.clone(),
        execution.clone(),
        args,
        sent.clone(),
        stop_rx,
    ));
    let started = Instant::now();
    let at = |fraction: f64| started + Duration::from_secs_f64(seconds as f64 * fraction);
    let grants = tokio::spawn(grant_credit(settings.clone(), execution, started, seconds));

    let faults = inject_faults(sandbox, worker, http, at).await?;
    stop_tx.send(true)?;
    loader.await?;
    let grants = grants.await?;
    let published = sent.load(Ordering::Relaxed) as i64;
    let load_secs = started.elapsed().as_secs_f64();

    // Drain and verify.
    let mut db = connect_db(&sandbox.db_url).await;
    wait_all_counted(&mut db, published).await?;
    let drained_in = started.elapsed().as_secs_f64();
    wait_outbox_published(&mut db).await?;
    let delivery = check_delivery(&sandbox.names, &mut db).await?;
    let _ = db.close().await;

    println!(
        "load held: {published} events published over {load_secs:.1} s ({:.0} events/s offered {rate}), all counted {drained_in:.1} s after the start",
        published as f64 / load_secs
    );
    println!("faults survived:");
    for f in &faults {
        println!("  - {f}");
    }
    println!(
        "exactly once: {published} events published, {published} counted, aggregate total {published}, dead letters {}",
        delivery.dead
    );
    println!(
        "webhooks: {} written ({grants} credit grants during the faults), {} delivered ({} deliveries with repeats), {} missing",
        delivery.written, delivery.delivered, delivery.deliveries, delivery.missing
    );
    Ok(delivery)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sandbox = Sandbox::create("chaos", support::default_settings()?, &[]).await?;
    let mut worker = None;
    let outcome = run(args, &sandbox, &mut worker).await;
    // The last worker ends as the first did (SIGKILL); then the sandbox goes.
    if let Some(last) = worker.take() {
        let _ = last.kill().await;
    }
    let cleaned = sandbox.remove(Vec::new()).await;
    let delivery = outcome?;
    cleaned?;
    if delivery.missing > 0 || delivery.dead > 0 {
        bail!(
            "chaos run failed: {} webhooks never published, {} dead letters",
            delivery.missing,
            delivery.dead
        );
    }
    println!("chaos: PASSED");
    Ok(())
}
