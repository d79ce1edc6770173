//! The harness the benchmarks and the chaos run share: a sandbox (a fresh
//! database and topology prefix, removed at the end), worker processes
//! started from the release binary, provisioning through
//! `billing_worker::client::send`, `/metrics` scraping, CPU and peak memory
//! from `/proc`, and number formatting for the reports.
//!
//! Included from each example with `#[path = "support/mod.rs"] mod support;`.
//!
//! Services: `BILLING_TEST_DATABASE_URL` (an admin database URL) and
//! `BILLING_TEST_AMQP_URL`, with the same defaults as the integration tests.

// Each example uses a part of the harness; what one leaves unused is not dead.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use billing_worker::broker::Names;
use billing_worker::client::{self, Request};
use billing_worker::settings::Settings;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::{Connection as _, PgConnection};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

/// Start-up runs migrations and declares the topology; allow for a slow machine.
pub const READY_WITHIN: Duration = Duration::from_secs(60);
/// Above the worker's default shutdown grace period (25 s).
pub const STOP_WITHIN: Duration = Duration::from_secs(60);
/// How often readiness is polled while a worker starts.
const READY_POLL: Duration = Duration::from_millis(50);
/// Linux reports process CPU time in ticks of `USER_HZ`, 100 on every mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;
/// Every role of `billing-worker run`.
pub const ALL_ROLES: [&str; 5] = ["provisioning", "usage", "payments", "scheduler", "outbox"];

pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// `config/default.toml` alone: the worker processes run on the defaults
/// too, since [`Worker::spawn`] clears inherited `BILLING_*` variables.
pub fn default_settings() -> anyhow::Result<Settings> {
    Settings::load_with(&config_dir(), None, std::iter::empty()).context("load config/default.toml")
}

/// `config/default.toml` with `BILLING__SECTION__KEY` overrides, as a
/// worker given `vars` in its environment (through [`Launch::env`]) loads it.
pub fn settings_with(vars: &[(String, String)]) -> anyhow::Result<Settings> {
    Settings::load_with(&config_dir(), None, vars.iter().cloned())
        .context("load config/default.toml with the given BILLING__ settings")
}

pub fn admin_url() -> String {
    std::env::var("BILLING_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("BILLING_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

// ---------------------------------------------------------------- sandbox

/// A fresh database and topology prefix, and settings pointing at them.
pub struct Sandbox {
    pub admin_url: String,
    pub amqp_url: String,
    pub db_name: String,
    pub db_url: String,
    pub settings: Settings,
    pub names: Names,
    /// Queues the example declares itself, removed with the topology.
    own_queues: Vec<String>,
}

impl Sandbox {
    /// Creates database `bwt_{tag}_<hex>` and prefix `bwt.{tag}<hex>.`;
    /// `own_queues` are base names (under the prefix) the caller declares.
    pub async fn create(tag: &str, mut settings: Settings, own_queues: &[&str]) -> anyhow::Result<Sandbox> {
        let admin_url = admin_url();
        let amqp_url = amqp_url();
        let hex = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("bwt_{tag}_{hex}");
        let db_url = database_url(&admin_url, &db_name);
        let prefix = format!("bwt.{tag}{hex}.");

        let mut admin = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connect to the admin database (BILLING_TEST_DATABASE_URL={admin_url})"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("create database {db_name}"))?;
        let _ = admin.close().await;

        settings.database.url = SecretString::from(db_url.clone());
        settings.amqp.url = SecretString::from(amqp_url.clone());
        settings.amqp.prefix = prefix.clone();
        Ok(Sandbox {
            admin_url,
            amqp_url,
            names: Names::new(&prefix),
            own_queues: own_queues.iter().map(|base| format!("{prefix}{base}")).collect(),
            db_name,
            db_url,
            settings,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.settings.amqp.prefix
    }

    /// The name of a queue the example declares, as passed to [`Sandbox::create`].
    pub fn queue(&self, base: &str) -> String {
        format!("{}{base}", self.prefix())
    }

    /// A broker connection named `{example}/{name}` in the management UI.
    pub async fn connect(&self, example: &str, name: &str) -> anyhow::Result<Connection> {
        let props = ConnectionProperties::default().with_connection_name(format!("{example}/{name}").into());
        Connection::connect(&self.amqp_url, props)
            .await
            .with_context(|| format!("connect to the broker (BILLING_TEST_AMQP_URL={})", self.amqp_url))
    }

    /// A connection to the sandbox database.
    pub async fn database(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.db_url)
            .await
            .with_context(|| format!("connect to database {}", self.db_name))
    }

    /// Stops the workers, deletes the sandbox's queues and exchanges and
    /// drops the database. Goes on past failures so that as much as
    /// possible is removed; returns the first.
    pub async fn remove(&self, workers: Vec<Worker>) -> anyhow::Result<()> {
        let mut first_error = None;
        let mut note = |result: anyhow::Result<()>| {
            if let Err(err) = result {
                eprintln!("clean-up: {err:#}");
                first_error.get_or_insert(err);
            }
        };
        for worker in workers {
            note(worker.stop().await);
        }
        note(self.delete_topology().await);
        note(self.drop_database().await);
        first_error.map_or(Ok(()), Err)
    }

    async fn delete_topology(&self) -> anyhow::Result<()> {
        let connection = self.connect("sandbox", "cleanup").await?;
        let channel = connection.create_channel().await.context("open a channel")?;
        let own = self.own_queues.iter().cloned();
        let shards = (0..self.settings.usage.shards).map(|shard| self.names.usage_shard(shard));
        let queues = self
            .names
            .queues()
            .map(str::to_string)
            .into_iter()
            .chain(shards)
            .chain(own);
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .with_context(|| format!("delete queue {queue}"))?;
        }
        for exchange in self.names.exchanges() {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await
                .with_context(|| format!("delete exchange {exchange}"))?;
        }
        let _ = connection.close(200, "done".into()).await;
        Ok(())
    }

    async fn drop_database(&self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .context("connect to the admin database")?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.db_name
        )))
        .execute(&mut admin)
        .await
        .with_context(|| format!("drop database {}", self.db_name))?;
        let _ = admin.close().await;
        Ok(())
    }
}

/// `url` with its `sslmode` parameter set to `sslmode`.
pub fn with_sslmode(url: &str, sslmode: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("sslmode="))
        .map(str::to_string)
        .collect();
    params.push(format!("sslmode={sslmode}"));
    format!("{base}?{}", params.join("&"))
}

/// The admin URL with another database name; its parameters (`sslmode`, a
/// socket `host`) are kept. Without an `sslmode` it gets `sslmode=disable`,
/// as `config/default.toml` and the integration tests use for the local
/// server: TLS on loopback protects nothing.
pub fn database_url(admin_url: &str, name: &str) -> String {
    let (url, query) = match admin_url.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (admin_url, None),
    };
    // Everything before the path: scheme, credentials, host and port.
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let server = url[authority_start..]
        .find('/')
        .map_or(url, |slash| &url[..authority_start + slash]);
    match query {
        Some(query) if query.split('&').any(|p| p.starts_with("sslmode=")) => format!("{server}/{name}?{query}"),
        Some(query) => format!("{server}/{name}?{query}&sslmode=disable"),
        None => format!("{server}/{name}?sslmode=disable"),
    }
}

// ----------------------------------------------------------------- worker

/// How to start a worker beyond the sandbox's own settings.
#[derive(Clone, Default)]
pub struct Launch {
    /// More settings, as `BILLING__SECTION__KEY` variables.
    pub env: Vec<(String, String)>,
    /// Where `/metrics` and `/readyz` listen; a free port when `None`.
    pub http: Option<SocketAddr>,
    /// `log.filter`; `warn` when `None`.
    pub log_filter: Option<String>,
    /// Log every statement (as JSON) and add up their times here.
    pub statements: Option<StatementTimes>,
}

/// A `billing-worker run` process on a sandbox.
pub struct Worker {
    child: Child,
    pub pid: u32,
    pub http: SocketAddr,
}

impl Worker {
    /// Starts a worker and waits until it is ready with `roles` consuming.
    pub async fn start(sandbox: &Sandbox, launch: &Launch, roles: &[&str]) -> anyhow::Result<Worker> {
        let mut worker = Worker::spawn(sandbox, launch)?;
        worker.wait_ready(roles).await?;
        Ok(worker)
    }

    /// Starts a worker without waiting for it.
    pub fn spawn(sandbox: &Sandbox, launch: &Launch) -> anyhow::Result<Worker> {
        let exe = worker_executable()?;
        let http = match launch.http {
            Some(addr) => addr,
            None => free_local_addr()?,
        };
        let mut command = Command::new(&exe);
        // Inherited BILLING_* variables would make the worker differ from the
        // defaults the examples report (prefetch, batch sizes).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BILLING_") {
                command.env_remove(key);
            }
        }
        let settings = &sandbox.settings;
        let log_filter = launch.log_filter.as_deref().unwrap_or("warn");
        command
            .arg("run")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("BILLING__DATABASE__URL", &sandbox.db_url)
            .env("BILLING__AMQP__URL", &sandbox.amqp_url)
            .env("BILLING__AMQP__PREFIX", &settings.amqp.prefix)
            .env("BILLING__AMQP__QUEUE_TYPE", settings.amqp.queue_type.as_str())
            .env("BILLING__HTTP__LISTEN", http.to_string())
            .env("BILLING__LOG__FILTER", log_filter)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Never leave a worker behind if this process fails half-way.
            .kill_on_drop(true);
        if launch.statements.is_some() {
            command
                .env("BILLING__LOG__FILTER", format!("{log_filter},sqlx::query=debug"))
                .env("BILLING__LOG__FORMAT", "json")
                .stderr(Stdio::piped());
        }
        let mut child = command.spawn().with_context(|| format!("start {}", exe.display()))?;
        let pid = child.id().context("the worker exited at once")?;
        if let (Some(times), Some(stderr)) = (&launch.statements, child.stderr.take()) {
            tokio::spawn(times.clone().collect(stderr));
        }
        Ok(Worker { child, pid, http })
    }

    /// Ready means `/readyz` answers 200 and `roles` are consuming
    /// (`billing_role_up`), whatever `/readyz` counts as ready.
    pub async fn wait_ready(&mut self, roles: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().context("check the worker process")? {
                bail!("the worker exited during start-up ({status}); see its log above");
            }
            if let (Ok((200, _)), Ok((200, metrics))) = (
                http_get(self.http, "/readyz").await,
                http_get(self.http, "/metrics").await,
            ) && roles.iter().all(|role| role_up(&metrics, role))
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the worker was not ready within {READY_WITHIN:?}"
            );
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident memory so far (`VmHWM`), in MB.
    pub fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no VmHWM in {path}"))?;
        Ok(kib / 1024.0)
    }

    /// SIGTERM, then waits for the graceful exit, which must be status 0.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("check the worker process")? {
            bail!("the worker had already exited ({status})");
        }
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("run kill -TERM")?;
        ensure!(sent.success(), "kill -TERM {} failed", self.pid);
        let status = tokio::time::timeout(STOP_WITHIN, self.child.wait())
            .await
            .with_context(|| format!("the worker did not stop within {STOP_WITHIN:?} of SIGTERM"))?
            .context("wait for the worker")?;
        ensure!(status.success(), "the worker stopped with {status} after SIGTERM");
        Ok(())
    }

    /// SIGKILL, as a crash would end it, and waits for the exit.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.start_kill().context("send SIGKILL to the worker")?;
        self.child.wait().await.context("wait for the killed worker")?;
        Ok(())
    }
}

/// `billing-worker` next to this example: examples live in `target/<profile>/examples/`.
fn worker_executable() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locate this executable")?;
    let exe = me
        .parent()
        .and_then(Path::parent)
        .map(|profile_dir| profile_dir.join("billing-worker"))
        .context("this executable has no parent directory")?;
    ensure!(
        exe.is_file(),
        "{} not found; build it with: cargo build --release --examples --bin billing-worker",
        exe.display()
    );
    Ok(exe)
}

/// A port nobody listens on now; the worker binds it a moment later.
pub fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    probe.local_addr().context("find a free port")
}

/// Whether a child process has exited (it stays a zombie until waited for).
pub fn has_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(true)
}

// ------------------------------------------------------- statement times

/// Round trips of every statement the workers ran, as sqlx measures them
/// (sent until the last row is read), added up by statement text.
#[derive(Clone, Default)]
pub struct StatementTimes(Arc<Mutex<HashMap<String, StatementTime>>>);

#[derive(Debug, Clone, Copy, Default)]
pub struct StatementTime {
    pub count: u64,
    pub seconds: f64,
}

impl StatementTimes {
    /// Reads a worker's JSON log: `sqlx::query` events are added up, any
    /// other line goes on to this process's stderr.
    async fn collect(self, stderr: ChildStderr) {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match statement_of(&line) {
                Some((statement, seconds)) => self.add(statement, seconds),
                None => eprintln!("{line}"),
            }
        }
    }

    fn add(&self, statement: String, seconds: f64) {
        let mut times = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let time = times.entry(statement).or_default();
        time.count += 1;
        time.seconds += seconds;
    }

    /// Forgets everything so far (start-up and set-up statements).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Statements by total time, longest first.
    pub fn by_total(&self) -> Vec<(String, StatementTime)> {
        let times = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = times.iter().map(|(s, t)| (s.clone(), *t)).collect();
        all.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
        all
    }
}

/// (statement, seconds) of a `sqlx::query` JSON log line: the statement's
/// first 70 characters with white space collapsed, enough to tell them apart.
fn statement_of(line: &str) -> Option<(String, f64)> {
    let event: Value = serde_json::from_str(line).ok()?;
    if event["target"] != "sqlx::query" {
        return None;
    }
    let fields = &event["fields"];
    let seconds = fields["elapsed_secs"].as_f64()?;
    // sqlx leaves `db.statement` empty when the summary (four words) is the whole statement.
    let sql = [&fields["db.statement"], &fields["summary"]]
        .into_iter()
        .filter_map(Value::as_str)
        .find(|s| !s.trim().is_empty())
        .unwrap_or("?");
    let statement: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    Some((statement.chars().take(70).collect(), seconds))
}

/// Consumes `queue` on `channel` with at most `prefetch` messages unacknowledged.
pub async fn consume(channel: &Channel, queue: &str, prefetch: u16) -> anyhow::Result<Consumer> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .context("set prefetch")?;
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consume {queue}"))
}

// ------------------------------------------------------------------- HTTP

/// A minimal HTTP/1.0 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to http://{addr}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .with_context(|| format!("send GET {path}"))?;
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .await
        .with_context(|| format!("read the answer to GET {path}"))?;
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A worker's `/metrics` text.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, text) = http_get(addr, "/metrics").await?;
    ensure!(status == 200, "GET /metrics answered {status}");
    Ok(text)
}

/// Whether `billing_role_up{role="<role>"}` is 1 in a `/metrics` text.
pub fn role_up(metrics: &str, role: &str) -> bool {
    let series = format!("billing_role_up{{role=\"{role}\"}}");
    metric(metrics, &series) == Some(1.0)
}

/// The value of a series in a `/metrics` text: a bare name, or a name with
/// its labels as the worker writes them (`name{label="value"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

// ----------------------------------------------------------- provisioning

/// Sends one provisioning command as `merchant` and returns the worker's
/// answer, whether it succeeded or not; fails when none came within `wait`.
pub async fn send_command(
    settings: &Settings,
    merchant: &str,
    message_id: Option<&str>,
    command: &Value,
    wait: Duration,
) -> anyhow::Result<Value> {
    let name = command["command"].as_str().unwrap_or_default();
    let request = Request {
        merchant_id: merchant.to_string(),
        routing_key: format!("provisioning.{merchant}"),
        body: serde_json::to_vec(command).context("encode command")?,
        message_id: message_id.map(str::to_string),
        wait: Some(wait),
    };
    client::send(settings, request)
        .await
        .with_context(|| format!("send {name}"))?
        .with_context(|| format!("no answer to {name}"))
}

/// Sends a command that must succeed.
pub async fn command_ok(settings: &Settings, merchant: &str, command: Value) -> anyhow::Result<Value> {
    let answer = send_command(settings, merchant, None, &command, Duration::from_secs(30)).await?;
    let name = command["command"].as_str().unwrap_or_default();
    ensure!(answer["success"] == true, "{name} failed: {answer}");
    Ok(answer)
}

// -------------------------------------------------------------------- CPU

/// CPU time used so far, in ticks, by the processes that matter here.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    workers: u64,
    worker_count: usize,
    postgres: u64,
    rabbitmq: u64,
    bench: u64,
    machine: u64,
}

impl CpuTicks {
    /// Reads `/proc`; Postgres and RabbitMQ by process name (`postgres`, `beam.smp`).
    pub fn now(worker_pids: &[u32]) -> CpuTicks {
        let mut ticks = CpuTicks {
            machine: machine_busy_ticks().unwrap_or(0),
            worker_count: worker_pids.len(),
            ..CpuTicks::default()
        };
        let me = std::process::id();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return ticks;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some((name, used)) = process_ticks(pid) else {
                continue;
            };
            match (pid, name.as_str()) {
                (p, _) if worker_pids.contains(&p) => ticks.workers += used,
                (p, _) if p == me => ticks.bench += used,
                (_, "postgres") => ticks.postgres += used,
                (_, "beam.smp") => ticks.rabbitmq += used,
                _ => {}
            }
        }
        ticks
    }

    /// Cores kept busy on average between `self` (earlier) and `later`.
    pub fn cores(&self, later: &CpuTicks, elapsed: Duration) -> CpuShare {
        let share = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_SECOND / elapsed.as_secs_f64();
        CpuShare {
            workers: share(self.workers, later.workers),
            worker_count: later.worker_count,
            postgres: share(self.postgres, later.postgres),
            rabbitmq: share(self.rabbitmq, later.rabbitmq),
            bench: share(self.bench, later.bench),
            machine: share(self.machine, later.machine),
        }
    }
}

/// (name, user + system ticks) of a process from `/proc/<pid>/stat`.
fn process_ticks(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name is in parentheses and may itself hold spaces or parentheses.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// Non-idle ticks of all CPUs together, from `/proc/stat`.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal; guest time is already in user.
    let busy = values.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4);
    Some(busy.map(|(_, v)| v).sum())
}

/// Cores kept busy on average over a phase.
#[derive(Debug, Clone, Copy)]
pub struct CpuShare {
    /// All worker processes together.
    pub workers: f64,
    pub worker_count: usize,
    pub postgres: f64,
    pub rabbitmq: f64,
    pub bench: f64,
    pub machine: f64,
}

impl std::fmt::Display for CpuShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        // Whatever else ran on the machine competed for the same cores.
        let other = (self.machine - self.workers - self.postgres - self.rabbitmq - self.bench).max(0.0);
        let workers = if self.worker_count > 1 { "workers" } else { "worker" };
        write!(
            f,
            "cpu (cores): {workers} {:.2}, postgres {:.2}, rabbitmq {:.2}, bench {:.2}, other {other:.2}; busy {:.2} of {cores}",
            self.workers, self.postgres, self.rabbitmq, self.bench, self.machine
        )
    }
}

// ------------------------------------------------------------- formatting

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate per second, rounded and grouped.
pub fn rate(per_second: f64) -> String {
    thousands(per_second.round() as u64)
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_swaps_the_name_and_keeps_parameters() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "b1"),
            "postgres://postgres@127.0.0.1:5432/b1?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://u:p@db/postgres?sslmode=require", "b1"),
            "postgres://u:p@db/b1?sslmode=require"
        );
        assert_eq!(
            database_url("postgres://localhost", "b1"),
            "postgres://localhost/b1?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://postgres@localhost/postgres?host=/var/run/postgresql", "b1"),
            "postgres://postgres@localhost/b1?host=/var/run/postgresql&sslmode=disable"
        );
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn metric_reads_bare_and_labelled_series() {
        let text = "billing_x_total 3\nbilling_role_up{role=\"usage\"} 1\nbilling_x_total_sum 9\n";
        assert_eq!(metric(text, "billing_x_total"), Some(3.0));
        assert!(role_up(text, "usage"));
        assert!(!role_up(text, "scheduler"));
    }

    #[test]
    fn statement_lines_are_told_from_other_log_lines() {
        let line = r#"{"target":"sqlx::query","fields":{"db.statement":"\n SELECT  1\n","elapsed_secs":0.002}}"#;
        assert_eq!(statement_of(line), Some(("SELECT 1".to_string(), 0.002)));
        let short = r#"{"target":"sqlx::query","fields":{"summary":"COMMIT","db.statement":"","elapsed_secs":0.5}}"#;
        assert_eq!(statement_of(short), Some(("COMMIT".to_string(), 0.5)));
        assert_eq!(statement_of(r#"{"target":"billing_worker","fields":{}}"#), None);
        assert_eq!(statement_of("not json"), None);
    }
}
