//! `TestApp`: a worker on its own database and topology prefix, driven only
//! through the bus (and read through SQL), like a merchant's service would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use billing_worker::app::Application;
use billing_worker::broker::Names;
use billing_worker::clock::{SharedClock, SystemClock};
use billing_worker::context::Context;
use billing_worker::settings::{QueueType, Settings};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any awaited outcome may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn admin_database_url() -> String {
    std::env::var("BILLING_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("BILLING_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn database_url(name: &str) -> String {
    let admin = admin_database_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    // Loopback needs no TLS (and TLS costs latency with sqlx 0.9.0).
    format!("{base}/{name}?sslmode=disable")
}

/// Logs go to the test output only when `TEST_LOG` is set.
fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("TEST_LOG").unwrap_or_default(),
            ))
            .with_test_writer()
            .try_init();
    }
}

/// A fresh database and prefix, settings pointing at them.
pub struct Sandbox {
    pub db_name: String,
    pub settings: Settings,
}

impl Sandbox {
    pub async fn new() -> Sandbox {
        init_logs();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("bwt_{id}");
        let mut admin = PgConnection::connect(&admin_database_url())
            .await
            .expect("connect to the admin database");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut settings = Settings::load_with(&config, None, std::iter::empty()).expect("default settings");
        settings.database.url = SecretString::from(database_url(&db_name));
        settings.database.max_connections = 8;
        settings.amqp.url = SecretString::from(amqp_url());
        settings.amqp.prefix = format!("bwt.{id}.");
        settings.amqp.queue_type = QueueType::Classic;
        settings.amqp.reconnect_initial = Duration::from_millis(100);
        settings.amqp.reconnect_max = Duration::from_secs(1);
        settings.http.listen = "127.0.0.1:0".parse().expect("addr");
        settings.outbox.poll_interval = Duration::from_millis(50);
        settings.shutdown.grace_period = Duration::from_secs(10);
        Sandbox { db_name, settings }
    }
}

impl Sandbox {
    /// Removes the sandbox database.
    pub async fn drop_database(&self) {
        drop_database(&self.db_name).await;
    }
}

async fn drop_database(name: &str) {
    if let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}

/// A running worker and a client of it.
pub struct TestApp {
    pub settings: Settings,
    pub names: Names,
    pub db: PgPool,
    pub ctx: Arc<Context>,
    pub http: std::net::SocketAddr,
    pub channel: Channel,
    _connection: Connection,
    reply_queue: String,
    replies: HashMap<String, Value>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    db_name: String,
    /// The broker URLs the test client uses (those of the worker, unless
    /// moved with [`TestApp::reconnect_to`]).
    client_url: String,
    /// Set by `teardown`; otherwise `Drop` cleans up.
    cleaned: bool,
}

impl TestApp {
    /// A worker on a new sandbox with the system clock.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Sandbox::new().await, Arc::new(SystemClock)).await
    }

    /// A worker whose time is `clock`, set up for billing tests: passes run
    /// only when asked (`run_billing`), a one-hour pre-debit notice, retries
    /// after 10 then 20 minutes (no jitter), results due within 15 minutes.
    pub async fn spawn_with_clock(clock: billing_worker::clock::ManualClock) -> TestApp {
        Self::spawn_with_clock_and(clock, |_| {}).await
    }

    /// [`TestApp::spawn_with_clock`], with more settings changed by `change`.
    pub async fn spawn_with_clock_and(
        clock: billing_worker::clock::ManualClock,
        change: impl FnOnce(&mut billing_worker::settings::Settings),
    ) -> TestApp {
        let mut sandbox = Sandbox::new().await;
        let s = &mut sandbox.settings;
        s.scheduler.tick = Duration::from_secs(3600);
        s.scheduler.pre_debit_notice = Duration::from_secs(3600);
        s.scheduler.lease = Duration::from_secs(60);
        s.retry.initial = Duration::from_secs(600);
        s.retry.multiplier = 2.0;
        s.retry.max = Duration::from_secs(86_400);
        s.retry.jitter = 0.0;
        s.payments.result_timeout = Duration::from_secs(900);
        change(s);
        Self::spawn_with(sandbox, Arc::new(clock)).await
    }

    /// A worker on the given sandbox (settings may have been changed).
    pub async fn spawn_with(sandbox: Sandbox, clock: SharedClock) -> TestApp {
        let settings = sandbox.settings.clone();
        let app = Application::build(settings.clone(), clock)
            .await
            .expect("build application");
        let ctx = app.context();
        let http = app.http_addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run(shutdown.clone()));
        let client_url = secrecy::ExposeSecret::expose_secret(&settings.amqp.url).to_string();
        let (connection, channel, reply_queue) = client(&client_url).await;
        let db = PgPool::connect(&database_url(&sandbox.db_name))
            .await
            .expect("test pool");
        let mut app = TestApp {
            names: Names::new(&settings.amqp.prefix),
            settings,
            db,
            ctx,
            http,
            channel,
            _connection: connection,
            reply_queue,
            replies: HashMap::new(),
            shutdown,
            handle: Some(handle),
            db_name: sandbox.db_name,
            client_url,
            cleaned: false,
        };
        app.wait_ready().await;
        app
    }

    /// Connects the test client again (after a broker restart).
    pub async fn reconnect(&mut self) {
        let (connection, channel, reply_queue) = client(&self.client_url).await;
        self._connection = connection;
        self.channel = channel;
        self.reply_queue = reply_queue;
    }

    /// Connects the test client to the broker node(s) at `url` instead.
    pub async fn reconnect_to(&mut self, url: &str) {
        self.client_url = url.to_string();
        self.reconnect().await;
    }

    /// The name of the reply queue of this client.
    pub fn reply_queue_name(&self) -> &str {
        &self.reply_queue
    }

    /// The name of the sandbox database.
    pub fn db_name(&self) -> &str {
        &self.db_name
    }

    /// Waits until every role is connected.
    pub async fn wait_ready(&mut self) {
        let ctx = self.ctx.clone();
        eventually("worker ready", || {
            let ctx = ctx.clone();
            async move { (ctx.health.down().is_empty() && !ctx.health.roles().is_empty()).then_some(()) }
        })
        .await;
    }

    /// Starts another worker process on the same database and topology.
    pub async fn spawn_peer(&self, clock: SharedClock) -> Peer {
        self.spawn_peer_with(self.settings.clone(), clock).await
    }

    /// [`TestApp::spawn_peer`] with other settings (same database and prefix).
    pub async fn spawn_peer_with(&self, mut settings: billing_worker::settings::Settings, clock: SharedClock) -> Peer {
        settings.http.listen = "127.0.0.1:0".parse().expect("addr");
        let app = Application::build(settings, clock).await.expect("build peer");
        let ctx = app.context();
        let http = app.http_addr();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run(stop.clone()));
        eventually("peer ready", || {
            let ctx = ctx.clone();
            async move { (!ctx.health.roles().is_empty() && ctx.health.down().is_empty()).then_some(()) }
        })
        .await;
        Peer {
            stop,
            handle: Some(handle),
            http,
        }
    }

    /// Publishes usage (one event or `{"events": [...]}`) as `merchant`.
    pub async fn publish_usage(&self, merchant: &str, body: &Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        let persistent = BasicProperties::default().with_delivery_mode(2);
        self.publish_raw("usage.test", &bytes, with_merchant(persistent, merchant))
            .await;
    }

    /// Waits until `sql` (returning one bigint) equals `expected`.
    pub async fn wait_for_count(&self, what: &str, sql: &'static str, expected: i64) {
        let db = self.db.clone();
        eventually(what, || {
            let db = db.clone();
            async move {
                let n: Option<i64> = sqlx::query_scalar(sql).fetch_one(&db).await.ok();
                (n == Some(expected)).then_some(())
            }
        })
        .await;
    }

    /// `create`s an execution for `merchant` and returns its id; the
    /// command must succeed.
    pub async fn create_execution(&mut self, merchant: &str, body: Value) -> String {
        let r = self.call(merchant, body).await;
        assert_eq!(r["success"], true, "{r}");
        r["billing_execution_info_id"].as_str().expect("id").to_string()
    }

    /// `update_status` of an execution of `m1`: the answer, whatever it is.
    pub async fn set_status(&mut self, execution: &str, status: &str) -> Value {
        let body =
            serde_json::json!({"command": "update_status", "billing_execution_info_id": execution, "status": status});
        self.call("m1", body).await
    }

    /// Publishes a raw message to `billing.in` with the given routing key.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                self.names.inbound.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker refused the test message");
    }

    /// Sends a provisioning command as merchant `merchant` and waits for the answer.
    pub async fn call(&mut self, merchant: &str, command: Value) -> Value {
        self.call_with(merchant, command, BasicProperties::default()).await
    }

    /// Like [`TestApp::call`], with extra properties (a `message_id`, say).
    /// Without one, the message gets a fresh `message_id`, as a publisher
    /// that keys its commands does.
    pub async fn call_with(&mut self, merchant: &str, command: Value, props: BasicProperties) -> Value {
        let body = serde_json::to_vec(&command).expect("json");
        let props = match props.message_id() {
            Some(_) => props,
            None => props.with_message_id(ShortString::from(uuid::Uuid::new_v4().to_string())),
        };
        let props = with_merchant(props, merchant);
        self.request(&body, props).await
    }

    /// Publishes `body` to `provisioning.test` with a reply address and waits for the answer.
    pub async fn request(&mut self, body: &[u8], props: BasicProperties) -> Value {
        let correlation = uuid::Uuid::new_v4().to_string();
        let props = props
            .with_reply_to(ShortString::from(self.reply_queue.as_str()))
            .with_correlation_id(ShortString::from(correlation.as_str()))
            .with_content_type(ShortString::from("application/json"));
        self.publish_raw("provisioning.test", body, props).await;
        self.reply(&correlation).await
    }

    /// Waits for the answer with this correlation id.
    pub async fn reply(&mut self, correlation: &str) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(v) = self.replies.remove(correlation) {
                return v;
            }
            match self
                .channel
                .basic_get(self.reply_queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                Some(msg) => {
                    let id = msg
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.as_str().to_string())
                        .unwrap_or_default();
                    let value: Value = serde_json::from_slice(&msg.data).expect("reply is JSON");
                    self.replies.insert(id, value);
                }
                None => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no reply for {correlation} within {DEADLINE:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Takes the next message of a queue, waiting up to the deadline.
    pub async fn next_message(&self, queue: &str) -> lapin::message::BasicGetMessage {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(msg) = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                return msg;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing arrived in {queue} within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next webhook as (routing key, properties, document).
    pub async fn next_webhook(&self) -> (String, BasicProperties, Value) {
        let msg = self.next_message(&self.names.webhook_queue).await;
        let doc = serde_json::from_slice(&msg.delivery.data).expect("webhook is JSON");
        (
            msg.delivery.routing_key.as_str().to_string(),
            msg.delivery.properties.clone(),
            doc,
        )
    }

    /// The next dead letter.
    pub async fn next_dead_letter(&self) -> DeadLetter {
        let msg = self.next_message(&self.names.dead).await;
        let props = &msg.delivery.properties;
        DeadLetter {
            code: header(props, "x-error-code").unwrap_or_default(),
            message: header(props, "x-error-message").unwrap_or_default(),
            routing_key: header(props, "x-original-routing-key").unwrap_or_default(),
            body: msg.delivery.data.clone(),
        }
    }

    /// Messages waiting in a queue now.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists")
            .message_count()
    }

    /// A GET on the worker's HTTP port: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).await
    }

    /// Stops the worker gracefully and checks it stopped cleanly; keeps the sandbox.
    pub async fn stop_worker(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let result = tokio::time::timeout(DEADLINE, handle)
                .await
                .expect("worker stops within the deadline");
            result.expect("worker task").expect("worker stopped cleanly");
        }
    }

    /// Kills the worker as a crash would: no graceful stop, nothing flushed.
    pub async fn kill_worker(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// Stops the worker gracefully (checking that it stopped cleanly) and
    /// removes the sandbox (database, queues, exchanges).
    pub async fn teardown(mut self) {
        self.stop_worker().await;
        self.db.close().await;
        remove_sandbox(&self.channel, &self.names, &self.db_name).await;
        self.cleaned = true;
    }
}

/// Removes a test's queues, exchanges and database; what is already gone is
/// passed over.
async fn remove_sandbox(channel: &Channel, names: &Names, db_name: &str) {
    let shards = (0..64).map(|shard| names.usage_shard(shard));
    for queue in names.queues().map(str::to_string).into_iter().chain(shards) {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in names.exchanges() {
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
    drop_database(db_name).await;
}

/// A test that fails (or forgets `teardown`) still leaves nothing behind:
/// the worker is stopped, and its topology and database removed.
impl Drop for TestApp {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
        let (names, db_name, url) = (self.names.clone(), self.db_name.clone(), self.client_url.clone());
        // Drop cannot await: clean up on a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(connection) = connect_any(&url).await
                    && let Ok(channel) = connection.create_channel().await
                {
                    remove_sandbox(&channel, &names, &db_name).await;
                    let _ = connection.close(200, "test cleanup".into()).await;
                } else {
                    drop_database(&db_name).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A connection to the first of the comma-separated broker URLs that answers.
async fn connect_any(urls: &str) -> Result<Connection, lapin::Error> {
    let mut last = None;
    for url in urls.split(',') {
        match Connection::connect(url.trim(), ConnectionProperties::default()).await {
            Ok(connection) => return Ok(connection),
            Err(err) => last = Some(err),
        }
    }
    Err(last.expect("at least one URL"))
}

/// A client connection: a confirm-mode channel and an exclusive reply queue.
async fn client(urls: &str) -> (Connection, Channel, String) {
    let connection = connect_any(urls).await.expect("test client connects");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let reply = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("reply queue");
    let name = reply.name().as_str().to_string();
    (connection, channel, name)
}

/// Another worker process on the same sandbox.
pub struct Peer {
    /// Its HTTP address (`/readyz`, `/metrics`).
    pub http: std::net::SocketAddr,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Peer {
    /// Stops it gracefully.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            let result = tokio::time::timeout(DEADLINE, handle)
                .await
                .expect("peer stops in time");
            result.expect("peer task").expect("peer stopped cleanly");
        }
    }
}

/// A message found in `billing.dead`.
#[derive(Debug)]
pub struct DeadLetter {
    pub code: String,
    pub message: String,
    pub routing_key: String,
    pub body: Vec<u8>,
}

pub fn header(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Adds the tenant header.
pub fn with_merchant(props: BasicProperties, merchant: &str) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert("x-merchantid".into(), AMQPValue::LongString(LongString::from(merchant)));
    props.with_headers(headers)
}

/// Polls `probe` until it yields a value or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(what, DEADLINE, probe).await
}

/// [`eventually`] with its own deadline, for outcomes that wait on a backlog.
pub async fn eventually_within<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.0 GET: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect http");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A catalog every provisioning test starts from: one SUM metric, one
/// USAGE_BASED monthly plan, one customer.
pub async fn seed_catalog(app: &mut TestApp, merchant: &str) {
    let r = app
        .call(
            merchant,
            serde_json::json!({
                "command": "create_metric", "metric_id": "storage", "name": "Storage", "unit": "GB",
                "event_type": "STORAGE", "aggregation_type": "SUM", "pricing_type": "FIXED",
                "pricing_model": [{"unit_amount": 10, "up_to": "INFINITY"}], "currency": "INR"
            }),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    let r = app
        .call(
            merchant,
            serde_json::json!({
                "command": "create_plan", "plan_id": "test_3", "plan_name": "test3", "plan_description": "test 3",
                "plan_type": "POST_DEBIT", "plan_model": "USAGE_BASED", "plan_interval": "MONTHLY",
                "plan_currency": "INR", "plan_action_on_failure": "SKIP", "metric_ids": ["storage"]
            }),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    let r = app
        .call(
            merchant,
            serde_json::json!({"command": "create_customer", "customer_id": "cth_1", "email": "a@example.com"}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
}
