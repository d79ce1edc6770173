//! Chaos run: a sustained usage load while the worker is killed with
//! SIGKILL, Postgres restarts and the broker restarts; then proof that every
//! event was counted exactly once and every webhook was published.
//!
//! `./scripts/chaos [--seconds 60] [--rate 2000]`. It restarts this machine's
//! PostgreSQL and RabbitMQ: run it where nothing else depends on them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use billing_worker::broker::Names;
use billing_worker::client::{Request, send};
use billing_worker::settings::Settings;
use clap::Parser;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use tokio::process::{Child, Command};

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

fn admin_url() -> String {
    std::env::var("BILLING_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn amqp_url() -> String {
    std::env::var("BILLING_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn worker_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("example directory")?;
    Ok(dir.join("billing-worker"))
}

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

fn spawn_worker(settings: &Settings, port: u16) -> anyhow::Result<Child> {
    Command::new(worker_binary()?)
        .arg("run")
        .current_dir(repo())
        .env("BILLING__DATABASE__URL", settings.database.url.expose_secret())
        .env("BILLING__AMQP__URL", settings.amqp.url.expose_secret())
        .env("BILLING__AMQP__PREFIX", &settings.amqp.prefix)
        .env("BILLING__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("BILLING__LOG__FILTER", "error")
        .stdout(Stdio::null())
        .spawn()
        .context("start the worker (build it with `cargo build --release`)")
}

/// Sends a provisioning command until it is answered; repeats are harmless
/// because every command here carries a message_id.
async fn command(settings: &Settings, message_id: &str, body: Value) -> anyhow::Result<Value> {
    loop {
        let request = Request {
            merchant_id: MERCHANT.into(),
            routing_key: "provisioning.chaos".into(),
            body: serde_json::to_vec(&body)?,
            message_id: Some(message_id.into()),
            wait: Some(Duration::from_secs(5)),
        };
        match send(settings, request).await {
            Ok(Some(answer)) if answer["success"] == true => return Ok(answer),
            Ok(Some(answer)) => bail!("{message_id} refused: {answer}"),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let db_name = format!("bwt_chaos_{id}");
    let mut admin = PgConnection::connect(&admin_url())
        .await
        .context("connect to Postgres")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&mut admin)
        .await?;
    drop(admin);
    let base = admin_url()
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or_default();
    let db_url = format!("{base}/{db_name}");
    let mut settings = Settings::load_with(&repo().join("config"), None, std::iter::empty())?;
    settings.database.url = SecretString::from(db_url.clone());
    settings.amqp.url = SecretString::from(amqp_url());
    settings.amqp.prefix = format!("bwt.chaos{id}.");
    let names = Names::new(&settings.amqp.prefix);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();

    let mut worker = spawn_worker(&settings, port)?;
    command(
        &settings,
        "metric",
        json!({"command": "create_metric", "metric_id": "calls", "name": "Calls", "aggregation_type": "SUM",
        "pricing_type": "FIXED", "pricing_model": [{"unit_amount": "0.01"}], "currency": "INR"}),
    )
    .await?;
    command(
        &settings,
        "plan",
        json!({"command": "create_plan", "plan_id": "p", "plan_name": "P", "plan_type": "POST_DEBIT",
        "plan_model": "USAGE_BASED", "plan_interval": "MONTHLY", "plan_currency": "INR", "metric_ids": ["calls"]}),
    )
    .await?;
    command(
        &settings,
        "customer",
        json!({"command": "create_customer", "customer_id": "c1"}),
    )
    .await?;
    let created = command(
        &settings,
        "execution",
        json!({"command": "create", "plan_id": "p", "customer_id": "c1", "merchant_ref_id": "chaos"}),
    )
    .await?;
    let execution = created["billing_execution_info_id"]
        .as_str()
        .context("execution id")?
        .to_string();

    println!(
        "chaos: {} s of {} events/s in messages of {}, prefix {}",
        args.seconds, args.rate, args.batch, settings.amqp.prefix
    );
    let sent = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (seconds, rate) = (args.seconds, args.rate);
    let loader = tokio::spawn(load(names.clone(), execution.clone(), args, sent.clone(), stop_rx));
    let started = Instant::now();
    let at = |fraction: f64| started + Duration::from_secs_f64(seconds as f64 * fraction);

    // Webhooks keep being written while the faults happen.
    let grants = {
        let settings = settings.clone();
        let execution = execution.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while started.elapsed() < Duration::from_secs(seconds) {
                let body = json!({"command": "add_credit", "billing_execution_info_id": execution, "amount": 1, "reference_id": format!("g{n}")});
                if command(&settings, &format!("grant-{n}"), body).await.is_ok() {
                    n += 1;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            n
        })
    };

    let mut faults = Vec::new();
    tokio::time::sleep_until(at(0.15).into()).await;
    worker.start_kill()?;
    worker.wait().await?;
    faults.push("worker killed with SIGKILL mid-batch, restarted 3 s later");
    tokio::time::sleep(Duration::from_secs(3)).await;
    worker = spawn_worker(&settings, port)?;
    tokio::time::sleep_until(at(0.4).into()).await;
    shell("pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | sort -V | tail -1) main restart -m fast")
        .await?;
    faults.push("PostgreSQL restarted (fast shutdown, connections cut)");
    tokio::time::sleep_until(at(0.65).into()).await;
    shell("rabbitmqctl -q stop_app && rabbitmqctl -q start_app && rabbitmqctl -q await_startup").await?;
    faults.push("RabbitMQ restarted (every connection dropped)");
    tokio::time::sleep_until(at(1.0).into()).await;
    stop_tx.send(true)?;
    loader.await?;
    let grants = grants.await?;
    let published = sent.load(Ordering::Relaxed) as i64;
    let load_secs = started.elapsed().as_secs_f64();

    // Drain and verify.
    let mut db = connect_db(&db_url).await;
    let drain_started = Instant::now();
    loop {
        let (events, total) = counted(&mut db).await.unwrap_or((0, 0));
        if events > published || total > published {
            bail!("counted twice: {events} events, total {total}, for {published} published");
        }
        if events == published && total == published {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(300) {
            bail!("not every event was counted: {events} of {published}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_in = started.elapsed().as_secs_f64();
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&mut db)
            .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outbox: Vec<String> = sqlx::query_scalar("SELECT id FROM outbox").fetch_all(&mut db).await?;
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

    println!(
        "load held: {published} events published over {load_secs:.1} s ({:.0} events/s offered {rate}), all counted {drained_in:.1} s after the start",
        published as f64 / load_secs
    );
    println!("faults survived:");
    for f in &faults {
        println!("  - {f}");
    }
    println!(
        "exactly once: {published} events published, {published} counted, aggregate total {published}, dead letters {dead}"
    );
    println!(
        "webhooks: {} written ({grants} credit grants during the faults), {} delivered ({} deliveries with repeats), {missing} missing",
        outbox.len(),
        delivered.len(),
        deliveries
    );

    worker.start_kill()?;
    let _ = worker.wait().await;
    for queue in names.queues() {
        let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
    }
    for exchange in names.exchanges() {
        let _ = channel.exchange_delete(exchange.into(), Default::default()).await;
    }
    drop(db);
    let mut admin = connect_db(&admin_url()).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    if missing > 0 || dead > 0 {
        bail!("chaos run failed: {missing} webhooks never published, {dead} dead letters");
    }
    println!("chaos: PASSED");
    Ok(())
}
