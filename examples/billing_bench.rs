//! Billing benchmark: how fast the worker settles due bills, timed from the
//! moment its processes are ready until every bill is PAID.
//!
//! ```text
//! ./scripts/bench-billing [--bills 100000] [--batch-size 500] [--modes credit,gateway] [--workers 1,2]
//!                         [--queue-type quorum] [--sslmodes disable,require]
//! ```
//!
//! Every case runs once per `--sslmodes` entry, the workers' database URL
//! carrying that `sslmode`, and the summary puts them side by side.
//! Each case gets a fresh database and topology prefix (see `support`): the
//! plan and the customer are created through the bus, then N executions whose
//! first monthly period closed a minute ago are written in one statement, then
//! the worker processes start on the same database and prefix. Modes:
//!
//! - `credit`: a FIXED POST_DEBIT monthly plan of 10 INR and 1000 INR of
//!   credit per execution, so the scheduler issues every bill PAID;
//! - `gateway`: the same without credit and with no pre-debit notice, so every
//!   bill is debited at once through a gateway peer in this process that
//!   answers SUCCESS straight away.

#[path = "support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use billing_worker::settings::QueueType;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use support::{
    ALL_ROLES, CpuShare, CpuTicks, Launch, Sandbox, StatementTime, StatementTimes, Worker, command_ok, has_exited,
    metric, ms, rate, scrape, thousands, verdict,
};
use tokio::task::JoinHandle;

const EXAMPLE: &str = "billing_bench";
const MERCHANT: &str = "bench_merchant";
const PLAN: &str = "bench_monthly";
const CUSTOMER: &str = "bench_customer";
const PLAN_AMOUNT: i64 = 10;
const CREDIT: i64 = 1000;
/// Bills per second that one worker is expected to reach, from credit or
/// through a gateway peer that answers at once.
const TARGET: f64 = 2000.0;
/// How often the workers' counters are read while bills settle.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// A case fails when nothing settles for this long (a stuck or crashed worker).
const STALL_AFTER: Duration = Duration::from_secs(60);
/// How often `pg_stat_activity` is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Requests the gateway peer holds unacknowledged: enough never to be the limit.
const GATEWAY_PREFETCH: u16 = 10_000;
/// Session states and statements listed per case from `pg_stat_activity`.
const ACTIVITY_SHOWN: usize = 6;
/// Statements listed per case with `--statements`.
const STATEMENTS_SHOWN: usize = 12;
/// The workers' histograms whose count and mean the report shows, when they export them.
const HISTOGRAMS: [(&str, &str); 4] = [
    ("billing_scheduler_pass_duration_seconds", "scheduler passes"),
    ("billing_payment_result_duration_seconds", "debit results applied"),
    ("billing_debit_roundtrip_seconds", "debit round trips"),
    ("billing_outbox_publish_seconds", "outbox batches published"),
];

#[derive(Parser, Debug, Clone)]
#[command(about = "Billing benchmark: due bills settled per second, from credit and through a gateway peer")]
struct Args {
    /// Due bills of each case.
    #[arg(long, default_value_t = 100_000)]
    bills: u64,
    /// The workers' `scheduler.batch_size`: executions (and debits) claimed per
    /// transaction. 2000 was no faster than the default 500 and held more memory.
    #[arg(long, default_value_t = 500)]
    batch_size: i64,
    /// Which ways of paying to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "credit,gateway")]
    modes: Vec<Mode>,
    /// Worker process counts to run each mode with.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Type of the worker's queues.
    #[arg(long, default_value = "quorum", value_parser = ["classic", "quorum"])]
    queue_type: String,
    /// The `sslmode` of the workers' database URL, one run of every case per entry, reported
    /// side by side.
    #[arg(long, value_delimiter = ',', default_value = "disable,require",
          value_parser = ["disable", "prefer", "require", "verify-ca", "verify-full"])]
    sslmodes: Vec<String>,
    /// Time every statement the workers run, from their own logs (adds
    /// logging work to the workers; for finding where the time goes).
    #[arg(long)]
    statements: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Credit,
    Gateway,
}

impl Mode {
    fn title(self) -> &'static str {
        match self {
            Mode::Credit => "paid from credit",
            Mode::Gateway => "through the gateway peer",
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.bills > 0, "--bills must be at least 1");
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    ensure!(
        args.workers.iter().all(|&n| n > 0),
        "--workers takes counts of at least 1"
    );
    print!("{}", Header(&args));
    let mut reports = Vec::new();
    for &mode in &args.modes {
        for &workers in &args.workers {
            for sslmode in &args.sslmodes {
                let report = run_case(&args, mode, workers, sslmode).await?;
                print!("{report}");
                reports.push(report);
            }
        }
    }
    print!("{}", Summary(&reports));
    let failed: Vec<String> = reports.iter().flat_map(CaseReport::failed_checks).collect();
    ensure!(failed.is_empty(), "checks failed: {}", failed.join("; "));
    Ok(())
}

fn log(message: impl std::fmt::Display) {
    eprintln!("[{EXAMPLE}] {message}");
}

// ------------------------------------------------------------------- case

/// One case on its own sandbox, removed whatever happens (Ctrl-C included).
async fn run_case(args: &Args, mode: Mode, workers: usize, sslmode: &str) -> anyhow::Result<CaseReport> {
    let mut settings = support::default_settings()?;
    settings.amqp.queue_type = match args.queue_type.as_str() {
        "quorum" => QueueType::Quorum,
        _ => QueueType::Classic,
    };
    let sandbox = Sandbox::create("billbench", settings, &[]).await?;
    log(format_args!(
        "{}, {workers} worker(s), sslmode={sslmode}: database {}, topology prefix {}",
        mode.title(),
        sandbox.db_name,
        sandbox.prefix()
    ));
    let mut running = Vec::new();
    let outcome = tokio::select! {
        outcome = measure(args, &sandbox, mode, workers, sslmode, &mut running) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let cleaned = sandbox.remove(running).await;
    let report = outcome?;
    cleaned?;
    Ok(report)
}

/// The workers' settings beyond the defaults.
fn launch(args: &Args, mode: Mode) -> Launch {
    let mut env = vec![
        ("BILLING__SCHEDULER__TICK".to_string(), "100ms".to_string()),
        (
            "BILLING__SCHEDULER__BATCH_SIZE".to_string(),
            args.batch_size.to_string(),
        ),
    ];
    if mode == Mode::Gateway {
        // Debits are due as soon as their bills are issued.
        env.push(("BILLING__SCHEDULER__PRE_DEBIT_NOTICE".to_string(), "0s".to_string()));
    }
    Launch {
        env,
        ..Launch::default()
    }
}

/// Sets the case up, lets `workers` processes settle every bill, and reads
/// what they did. Started workers are left in `running` for the caller.
async fn measure(
    args: &Args,
    sandbox: &Sandbox,
    mode: Mode,
    workers: usize,
    sslmode: &str,
    running: &mut Vec<Worker>,
) -> anyhow::Result<CaseReport> {
    let mut launch = launch(args, mode);
    // After the sandbox's own URL in the workers' environment, so this one wins.
    launch.env.push((
        "BILLING__DATABASE__URL".to_string(),
        support::with_sslmode(&sandbox.db_url, sslmode),
    ));
    provision(sandbox, &launch).await?;
    let mut db = sandbox.database().await?;
    log(format_args!("seeding {} due executions", thousands(args.bills)));
    seed(&mut db, args.bills, mode).await?;
    let outbox_before = count(&mut db, "SELECT count(*) FROM outbox").await?;
    let mut gateway = match mode {
        Mode::Gateway => Some(GatewayPeer::start(sandbox).await?),
        Mode::Credit => None,
    };

    let statements = args.statements.then(StatementTimes::default);
    launch.statements = statements.clone();
    log(format_args!("starting {workers} worker(s)"));
    for _ in 0..workers {
        running.push(Worker::spawn(sandbox, &launch)?);
    }
    for worker in running.iter_mut() {
        worker.wait_ready(&ALL_ROLES).await?;
    }
    let window = settle(
        args.bills,
        mode,
        running,
        gateway.as_mut(),
        statements.as_ref(),
        sandbox,
    )
    .await?;

    confirm_paid(&mut db, args.bills).await?;
    let outbox_at = wait_outbox_published(&mut db).await?;
    let rss_mb = running.iter().map(Worker::peak_rss_mb).collect::<anyhow::Result<_>>()?;
    let requests = match gateway.take() {
        Some(peer) => Some(peer.stop().await),
        None => None,
    };
    Ok(CaseReport {
        mode,
        workers,
        sslmode: sslmode.to_string(),
        bills: args.bills,
        issued: count(&mut db, "SELECT count(*) FROM bills").await?,
        webhooks: count(&mut db, "SELECT count(*) FROM outbox").await? - outbox_before,
        outbox_done: outbox_at.saturating_duration_since(window.started),
        rss_mb,
        requests,
        window,
    })
}

/// What happened between the workers being ready and every bill being paid.
struct Window {
    started: Instant,
    elapsed: Duration,
    /// Bills paid before the clock started (the first pass runs as soon as
    /// the scheduler is up, a moment before the whole process is ready).
    paid_before: u64,
    cpu: CpuShare,
    histograms: Vec<(&'static str, f64, f64)>,
    activity: Activity,
    statements: Vec<(String, StatementTime)>,
}

/// Times the settling of `bills` bills, from the workers' counters.
async fn settle(
    bills: u64,
    mode: Mode,
    workers: &[Worker],
    mut gateway: Option<&mut GatewayPeer>,
    statements: Option<&StatementTimes>,
    sandbox: &Sandbox,
) -> anyhow::Result<Window> {
    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    let started = Instant::now();
    let cpu_before = CpuTicks::now(&pids);
    let metrics_before = scrape_all(workers).await?;
    if let Some(times) = statements {
        times.clear();
    }
    let sampler = ActivitySampler::start(sandbox).await?;
    let paid_before = paid(&metrics_before, mode);
    log(format_args!(
        "clock started ({} already paid); waiting for {} paid bills",
        thousands(paid_before),
        thousands(bills)
    ));

    let mut last = (paid_before, Instant::now());
    let metrics_after = loop {
        tokio::time::sleep(POLL_EVERY).await;
        let metrics = scrape_all(workers).await?;
        let now_paid = paid(&metrics, mode);
        if now_paid >= bills {
            break metrics;
        }
        if now_paid > last.0 {
            last = (now_paid, Instant::now());
        }
        ensure!(
            last.1.elapsed() < STALL_AFTER,
            "no bill paid for {STALL_AFTER:?}: {} of {} paid",
            thousands(now_paid),
            thousands(bills)
        );
        if let Some(peer) = gateway.as_deref_mut() {
            peer.check().await?;
        }
    };
    let elapsed = started.elapsed();
    let cpu = cpu_before.cores(&CpuTicks::now(&pids), elapsed);
    Ok(Window {
        started,
        elapsed,
        paid_before,
        cpu,
        histograms: histogram_deltas(&metrics_before, &metrics_after),
        activity: sampler.stop().await?,
        statements: statements.map(StatementTimes::by_total).unwrap_or_default(),
    })
}

/// Every worker's `/metrics`; a worker that died fails the case.
async fn scrape_all(workers: &[Worker]) -> anyhow::Result<Vec<String>> {
    let mut all = Vec::with_capacity(workers.len());
    for worker in workers {
        ensure!(
            !has_exited(worker.pid),
            "worker {} exited; see its log above",
            worker.pid
        );
        all.push(scrape(worker.http).await?);
    }
    Ok(all)
}

/// Bills the workers have paid, by their own counters: issued PAID (credit
/// covered them) or settled paid by a debit result.
fn paid(metrics: &[String], mode: Mode) -> u64 {
    let series = match mode {
        Mode::Credit => "billing_bills_issued_total{status=\"PAID\"}",
        Mode::Gateway => "billing_bills_settled_total{outcome=\"paid\"}",
    };
    metrics.iter().filter_map(|text| metric(text, series)).sum::<f64>() as u64
}

/// (name, count, sum) of each histogram in [`HISTOGRAMS`] the workers
/// export, over the window and across workers.
fn histogram_deltas(before: &[String], after: &[String]) -> Vec<(&'static str, f64, f64)> {
    let total = |texts: &[String], series: &str| -> Option<f64> {
        texts.iter().map(|text| metric(text, series)).sum::<Option<f64>>()
    };
    HISTOGRAMS
        .iter()
        .filter_map(|(name, label)| {
            let (count, sum) = (format!("{name}_count"), format!("{name}_sum"));
            let n = total(after, &count)? - total(before, &count)?;
            let seconds = total(after, &sum)? - total(before, &sum)?;
            (n > 0.0).then_some((*label, n, seconds))
        })
        .collect()
}

// ------------------------------------------------------------------- data

/// The plan and the customer, created through the bus by a worker that is
/// stopped again before the executions are written (so that no bill is
/// issued before the timed workers start).
async fn provision(sandbox: &Sandbox, launch: &Launch) -> anyhow::Result<()> {
    log("provisioning the plan and the customer");
    let worker = Worker::start(sandbox, launch, &["provisioning"]).await?;
    let commands = [
        json!({"command": "create_plan", "plan_id": PLAN, "plan_name": "Bench monthly",
               "plan_description": "billing benchmark", "plan_type": "POST_DEBIT", "plan_model": "FIXED",
               "plan_interval": "MONTHLY", "plan_currency": "INR", "plan_amount": PLAN_AMOUNT,
               "plan_action_on_failure": "SKIP"}),
        json!({"command": "create_customer", "customer_id": CUSTOMER, "email": "bench@example.com"}),
    ];
    for command in commands {
        command_ok(&sandbox.settings, MERCHANT, command).await?;
    }
    worker.stop().await
}

/// N active executions on the plan whose first period closed a minute ago,
/// as `create` would have left them a month and a minute ago: with credit,
/// a balance and the ledger grant that explains it.
async fn seed(db: &mut PgConnection, bills: u64, mode: Mode) -> anyhow::Result<()> {
    let credit = match mode {
        Mode::Credit => CREDIT,
        Mode::Gateway => 0,
    };
    let mut tx = db.begin().await.context("begin the seed")?;
    sqlx::query(
        "WITH seeded AS (
             INSERT INTO executions (id, merchant_id, customer_id, plan_id, status, credit_balance, metric_info,
                                     billing_start_date, token, activated_at, next_bill_at, created_at, updated_at)
             SELECT replace(gen_random_uuid()::text, '-', ''), $1, $2, $3, 'ACTIVE', $4::numeric, '[]',
                    s.start, 'tok_bench_' || n, s.start, s.start + interval '1 month', s.start, s.start
             FROM generate_series(1, $5::bigint) AS n,
                  (SELECT now() - interval '1 month 1 minute' AS start) AS s
             RETURNING id, merchant_id, credit_balance, created_at)
         INSERT INTO credit_ledger (merchant_id, execution_id, kind, amount, balance_after, reference_id, created_at)
         SELECT merchant_id, id, 'GRANT', credit_balance, credit_balance, 'free_tier', created_at
         FROM seeded WHERE credit_balance > 0",
    )
    .bind(MERCHANT)
    .bind(CUSTOMER)
    .bind(PLAN)
    .bind(credit)
    .bind(bills as i64)
    .execute(&mut *tx)
    .await
    .context("seed executions")?;
    tx.commit().await.context("commit the seed")?;
    // Statistics as a long-lived database has them, and the seed's dirty
    // pages written now rather than by a checkpoint during the timed run.
    for statement in ["ANALYZE", "CHECKPOINT"] {
        sqlx::query(statement)
            .execute(&mut *db)
            .await
            .with_context(|| format!("run {statement} after the seed"))?;
    }
    Ok(())
}

async fn count(db: &mut PgConnection, sql: &'static str) -> anyhow::Result<i64> {
    sqlx::query_scalar(sql)
        .fetch_one(db)
        .await
        .with_context(|| format!("run {sql}"))
}

/// The database agrees with the counters: every bill PAID.
async fn confirm_paid(db: &mut PgConnection, bills: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALL_AFTER;
    loop {
        let paid = count(db, "SELECT count(*) FROM bills WHERE status = 'PAID'").await?;
        if paid as u64 >= bills {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the workers counted every bill paid, the database has {paid} PAID"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Waits until the relay has published every webhook; returns when.
async fn wait_outbox_published(db: &mut PgConnection) -> anyhow::Result<Instant> {
    let mut last = (i64::MAX, Instant::now());
    loop {
        let left = count(db, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await?;
        if left == 0 {
            return Ok(Instant::now());
        }
        if left < last.0 {
            last = (left, Instant::now());
        }
        ensure!(
            last.1.elapsed() < STALL_AFTER,
            "{left} webhooks still unpublished after {STALL_AFTER:?} without progress"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

// ---------------------------------------------------------------- gateway

/// What the gateway peer was asked.
#[derive(Debug, Default)]
struct Requests {
    total: u64,
    bills: HashSet<String>,
    /// Requests for a bill already requested before.
    repeated: u64,
}

/// A payment gateway on the bus: takes debit requests from
/// `billing.payments.requests` and answers SUCCESS at once to their `reply_to`.
struct GatewayPeer {
    connection: Connection,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    seen: Arc<Mutex<Requests>>,
}

impl GatewayPeer {
    async fn start(sandbox: &Sandbox) -> anyhow::Result<GatewayPeer> {
        let connection = sandbox.connect(EXAMPLE, "gateway").await?;
        let channel = connection.create_channel().await.context("open the gateway channel")?;
        let consumer = support::consume(&channel, &sandbox.names.payment_requests, GATEWAY_PREFETCH).await?;
        let seen = Arc::new(Mutex::new(Requests::default()));
        let results = sandbox.names.payment_results.clone();
        let task = tokio::spawn(answer_all(consumer, channel, seen.clone(), results));
        Ok(GatewayPeer {
            connection,
            task: Some(task),
            seen,
        })
    }

    /// Fails when the peer stopped answering.
    async fn check(&mut self) -> anyhow::Result<()> {
        if let Some(task) = self.task.take_if(|task| task.is_finished()) {
            task.await.context("the gateway peer panicked")??;
            bail!("the broker cancelled the gateway peer's consumer");
        }
        Ok(())
    }

    /// Stops answering; returns everything the peer was asked.
    async fn stop(mut self) -> Requests {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = self.connection.close(200, "done".into()).await;
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for GatewayPeer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Answers every request with a success, then acks it.
async fn answer_all(
    mut consumer: Consumer,
    channel: Channel,
    seen: Arc<Mutex<Requests>>,
    results: String,
) -> anyhow::Result<()> {
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.context("gateway consumer")?;
        let request: Value = serde_json::from_slice(&delivery.data).context("a debit request that is not JSON")?;
        record(&seen, &request);
        let reply_to = delivery
            .properties
            .reply_to()
            .as_ref()
            .map_or(results.clone(), |queue| queue.to_string());
        let request_id = request["request_id"].as_str().unwrap_or_default();
        let result =
            json!({"request_id": request_id, "status": "SUCCESS", "gateway_txn_id": format!("txn_{request_id}")});
        channel
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&result).context("encode a debit result")?,
                // The result names the bill's merchant, as the worker requires.
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(delivery.properties.headers().clone().unwrap_or_default()),
            )
            .await
            .with_context(|| format!("answer to {reply_to}"))?;
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .context("ack a request")?;
    }
    Ok(())
}

fn record(seen: &Mutex<Requests>, request: &Value) {
    let bill = request["bill_id"].as_str().unwrap_or_default().to_string();
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    seen.total += 1;
    if !seen.bills.insert(bill) {
        seen.repeated += 1;
    }
}

// --------------------------------------------------------------- activity

/// Postgres sessions of the sandbox database, sampled from `pg_stat_activity`.
#[derive(Debug, Default)]
struct Activity {
    samples: u64,
    /// Sessions seen by state and wait event ("active: CPU", "idle in transaction").
    by_state: HashMap<String, u64>,
    /// Active sessions seen by statement.
    by_statement: HashMap<String, u64>,
}

struct ActivitySampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<Activity>>,
}

impl ActivitySampler {
    async fn start(sandbox: &Sandbox) -> anyhow::Result<ActivitySampler> {
        let db = sandbox.database().await?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        Ok(ActivitySampler {
            stop,
            task: tokio::spawn(sample_activity(db, stopped)),
        })
    }

    async fn stop(self) -> anyhow::Result<Activity> {
        let _ = self.stop.send(());
        self.task.await.context("the activity sampler panicked")?
    }
}

async fn sample_activity(
    mut db: PgConnection,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<Activity> {
    let mut activity = Activity::default();
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = ticker.tick() => {}
        }
        // A session that is active with no wait event is on a CPU (or queued for one).
        let sessions: Vec<(String, String)> = sqlx::query_as(
            "SELECT CASE WHEN state = 'active' THEN 'active: ' || COALESCE(wait_event_type || '/' || wait_event, 'CPU')
                         ELSE state END,
                    CASE WHEN state = 'active' THEN left(regexp_replace(query, '\\s+', ' ', 'g'), 70) ELSE '' END
             FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND backend_type = 'client backend' AND state <> 'idle'",
        )
        .fetch_all(&mut db)
        .await
        .context("sample pg_stat_activity")?;
        activity.samples += 1;
        for (state, statement) in sessions {
            *activity.by_state.entry(state).or_default() += 1;
            if !statement.is_empty() {
                *activity.by_statement.entry(statement).or_default() += 1;
            }
        }
    }
    let _ = db.close().await;
    Ok(activity)
}

impl Activity {
    /// `(what, sessions on average)`, most first.
    fn averages(&self, counts: &HashMap<String, u64>) -> Vec<(String, f64)> {
        let mut all: Vec<(String, f64)> = counts
            .iter()
            .map(|(k, n)| (k.clone(), *n as f64 / self.samples.max(1) as f64))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all
    }
}

// ----------------------------------------------------------------- report

/// Everything one case measured.
struct CaseReport {
    mode: Mode,
    workers: usize,
    sslmode: String,
    bills: u64,
    /// Rows in `bills`: one per execution, or something billed twice.
    issued: i64,
    webhooks: i64,
    outbox_done: Duration,
    rss_mb: Vec<f64>,
    requests: Option<Requests>,
    window: Window,
}

impl CaseReport {
    /// Bills paid while the clock ran, per second.
    fn bills_per_second(&self) -> f64 {
        (self.bills - self.window.paid_before.min(self.bills)) as f64 / self.window.elapsed.as_secs_f64()
    }

    fn title(&self) -> String {
        format!("{}, sslmode={}", self.case(), self.sslmode)
    }

    /// The case without its `sslmode`: what the summary puts on one row.
    fn case(&self) -> String {
        let workers = if self.workers == 1 { "worker" } else { "workers" };
        format!("{}, {} {workers}", self.mode.title(), self.workers)
    }

    /// What went wrong beyond speed: bills issued twice, debits requested twice.
    fn failed_checks(&self) -> Vec<String> {
        let mut failed = Vec::new();
        if self.issued != self.bills as i64 {
            failed.push(format!(
                "{}: {} bills for {} executions",
                self.title(),
                self.issued,
                self.bills
            ));
        }
        if let Some(r) = &self.requests
            && (r.repeated > 0 || r.bills.len() as u64 != self.bills)
        {
            failed.push(format!(
                "{}: {} debit requests for {} distinct bills ({} repeated), {} bills due",
                self.title(),
                r.total,
                r.bills.len(),
                r.repeated,
                self.bills
            ));
        }
        failed
    }
}

struct Header<'a>(&'a Args);

impl std::fmt::Display for Header<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let args = self.0;
        writeln!(f)?;
        writeln!(f, "billing benchmark")?;
        writeln!(
            f,
            "  {} due bills per case (FIXED POST_DEBIT monthly plan of {PLAN_AMOUNT} INR); workers: scheduler.tick 100ms, \
             scheduler.batch_size {}, {} queues; a fresh database per case",
            thousands(args.bills),
            args.batch_size,
            args.queue_type
        )
    }
}

impl std::fmt::Display for CaseReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = &self.window;
        let bills_per_second = self.bills_per_second();
        write!(f, "{}: {} bills/s", self.title(), rate(bills_per_second))?;
        if self.workers == 1 {
            write!(
                f,
                " (target >= {}: {})",
                rate(TARGET),
                verdict(bills_per_second >= TARGET)
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "    {} bills paid {:.2} s after the workers were ready ({} of them before the clock started)",
            thousands(self.bills),
            w.elapsed.as_secs_f64(),
            thousands(w.paid_before)
        )?;
        writeln!(
            f,
            "    webhooks: {} written, outbox fully published {:.2} s after the start",
            thousands(self.webhooks.max(0) as u64),
            self.outbox_done.as_secs_f64()
        )?;
        writeln!(f, "    {}", w.cpu)?;
        let rss: Vec<String> = self.rss_mb.iter().map(|mb| format!("{mb:.0} MB")).collect();
        writeln!(f, "    worker peak RSS: {}", rss.join(", "))?;
        if let Some(requests) = &self.requests {
            gateway_line(f, requests)?;
        }
        for (label, count, seconds) in &w.histograms {
            writeln!(
                f,
                "    {label}: {}, {} on average",
                thousands(*count as u64),
                ms(Duration::from_secs_f64(seconds / count))
            )?;
        }
        activity_lines(f, &w.activity)?;
        statement_lines(f, &w.statements, w.elapsed)
    }
}

fn gateway_line(f: &mut std::fmt::Formatter<'_>, r: &Requests) -> std::fmt::Result {
    let repeats = match r.repeated {
        0 => "no bill requested twice".to_string(),
        n => format!("{} REPEATED REQUESTS", thousands(n)),
    };
    writeln!(
        f,
        "    gateway peer: {} debit requests for {} bills, {repeats}",
        thousands(r.total),
        thousands(r.bills.len() as u64)
    )
}

/// Where Postgres sessions spent the window, and on which statements.
fn activity_lines(f: &mut std::fmt::Formatter<'_>, activity: &Activity) -> std::fmt::Result {
    let states: Vec<String> = activity
        .averages(&activity.by_state)
        .iter()
        .take(ACTIVITY_SHOWN)
        .map(|(state, n)| format!("{state} {n:.2}"))
        .collect();
    writeln!(
        f,
        "    postgres sessions (mean of {} samples of pg_stat_activity): {}",
        activity.samples,
        if states.is_empty() {
            "none busy".to_string()
        } else {
            states.join(", ")
        }
    )?;
    for (statement, n) in activity.averages(&activity.by_statement).iter().take(ACTIVITY_SHOWN) {
        writeln!(f, "      {n:.2} active in: {statement}")?;
    }
    Ok(())
}

/// The workers' statements by total time (with `--statements`).
fn statement_lines(
    f: &mut std::fmt::Formatter<'_>,
    statements: &[(String, StatementTime)],
    window: Duration,
) -> std::fmt::Result {
    if statements.is_empty() {
        return Ok(());
    }
    writeln!(
        f,
        "    statements as the workers timed them (count, total, mean, total as a share of the window):"
    )?;
    for (statement, t) in statements.iter().take(STATEMENTS_SHOWN) {
        writeln!(
            f,
            "      {:>8} {:>8.2} s {:>9} {:>5.1}%  {statement}",
            thousands(t.count),
            t.seconds,
            ms(Duration::from_secs_f64(t.seconds / t.count.max(1) as f64)),
            100.0 * t.seconds / window.as_secs_f64()
        )?;
    }
    Ok(())
}

struct Summary<'a>(&'a [CaseReport]);

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "summary: bills/s (peak RSS of the largest worker), one column per sslmode"
        )?;
        let mut sslmodes: Vec<&str> = Vec::new();
        let mut cases: Vec<String> = Vec::new();
        for report in self.0 {
            if !sslmodes.contains(&report.sslmode.as_str()) {
                sslmodes.push(&report.sslmode);
            }
            if !cases.contains(&report.case()) {
                cases.push(report.case());
            }
        }
        write!(f, "  {:<40}", "")?;
        for sslmode in &sslmodes {
            write!(f, " {:>22}", format!("sslmode={sslmode}"))?;
        }
        let ratio = sslmodes.contains(&"disable") && sslmodes.contains(&"require");
        if ratio {
            write!(f, " {:>16}", "require/disable")?;
        }
        writeln!(f)?;
        for case in &cases {
            let of = |sslmode: &str| self.0.iter().find(|r| &r.case() == case && r.sslmode == sslmode);
            write!(f, "  {case:<40}")?;
            for sslmode in &sslmodes {
                let cell = of(sslmode).map_or(String::new(), |r| {
                    let rss = r.rss_mb.iter().copied().fold(0.0, f64::max);
                    format!("{} ({rss:.0} MB)", rate(r.bills_per_second()))
                });
                write!(f, " {cell:>22}")?;
            }
            if ratio && let (Some(tls), Some(plain)) = (of("require"), of("disable")) {
                write!(f, " {:>15.2}x", tls.bills_per_second() / plain.bills_per_second())?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "how it is measured: the clock starts when every worker answers /readyz and all its roles are up, \
             and stops when the workers' counters (billing_bills_issued_total{{status=\"PAID\"}} from credit, \
             billing_bills_settled_total{{outcome=\"paid\"}} through the gateway; read every {} ms) reach the \
             number of bills; the database then confirms every bill PAID. Bills/s counts the bills paid while \
             the clock ran. CPU is over the same window.",
            POLL_EVERY.as_millis()
        )
    }
}
