//! Faults survived with nothing lost: the broker and the database restart
//! under a running worker, and SIGTERM arrives under load. These restart the
//! machine's real services, so `scripts/test` runs them one at a time, after
//! every other test.

#[allow(dead_code)] // the shared harness; these tests use part of it
#[path = "../it/helpers.rs"]
mod helpers;
mod shards;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use billing_worker::clock::SystemClock;
use serde_json::{Value, json};

use helpers::{DEADLINE, Sandbox, TestApp, eventually, eventually_within, http_get};

/// Runs a shell command to completion, failing the test if it fails.
async fn sh(command: &'static str) {
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(command)
            .stdout(Stdio::null())
            .status()
    })
    .await
    .expect("join")
    .expect("run shell");
    assert!(status.success(), "`{command}` failed: {status}");
}

const RESTART_BROKER: &str =
    "rabbitmqctl -q stop_app && sleep 1 && rabbitmqctl -q start_app && rabbitmqctl -q await_startup";
// Down for a second at least, so that the outage is long enough to observe.
const RESTART_POSTGRES: &str = "v=$(ls /etc/postgresql | sort -V | tail -1); \
    pg_ctlcluster --skip-systemctl-redirect $v main stop -m fast && sleep 1 && \
    pg_ctlcluster --skip-systemctl-redirect $v main start";

async fn metered(app: &mut TestApp) -> String {
    let r = app
        .call(
            "m1",
            json!({"command": "create_metric", "metric_id": "calls", "name": "Calls", "aggregation_type": "SUM",
            "pricing_type": "FIXED", "pricing_model": [{"unit_amount": 1}], "currency": "INR"}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    app.call(
        "m1",
        json!({"command": "create_plan", "plan_id": "p", "plan_name": "P", "plan_type": "POST_DEBIT",
        "plan_model": "USAGE_BASED", "plan_interval": "MONTHLY", "plan_currency": "INR", "metric_ids": ["calls"]}),
    )
    .await;
    app.call("m1", json!({"command": "create_customer", "customer_id": "c1"}))
        .await;
    app.create_execution(
        "m1",
        json!({"command": "create", "plan_id": "p", "customer_id": "c1", "amount": 1}),
    )
    .await
}

async fn publish_events(app: &TestApp, id: &str, from: usize, to: usize, per_message: usize) {
    let events: Vec<Value> = (from..to)
        .map(
            |i| json!({"event_id": format!("e{i}"), "billing_execution_info_id": id, "metric_id": "calls", "value": 1}),
        )
        .collect();
    for chunk in events.chunks(per_message) {
        app.publish_usage("m1", &json!({ "events": chunk })).await;
    }
}

async fn wait_exact(app: &TestApp, n: i64) {
    let db = app.db.clone();
    // A backlog of tens of thousands of events drains in seconds; the bound is generous.
    eventually_within(&format!("exactly {n} events counted once"), Duration::from_secs(120), || {
        let db = db.clone();
        async move {
            let (events, total): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM usage_events), (SELECT COALESCE(sum(sum), 0)::bigint FROM usage_aggregates)",
            )
            .fetch_one(&db)
            .await
            .ok()?;
            assert!(events <= n && total <= n, "never counted twice: {events} events, total {total}");
            (events == n && total == n).then_some(())
        }
    })
    .await;
}

/// Waits until counting has started.
async fn wait_some(app: &TestApp) {
    let db = app.db.clone();
    eventually("counting under way", || {
        let db = db.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
                .fetch_one(&db)
                .await
                .ok()?;
            (n > 0).then_some(())
        }
    })
    .await;
}

/// Polls /readyz in the background and reports whether it ever said 503.
fn watch_readiness(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let (status, body) = http_get(addr, "/readyz").await;
                if std::env::var_os("FAULTS_DEBUG").is_some() {
                    eprintln!("{:?} readyz {status} {}", std::time::SystemTime::now(), body.trim());
                }
                if status == 503 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    })
}

/// A worker draining a 30,000-event backlog when `service` restarts with
/// `command`; checks that /readyz told the outage. Returns the app, the
/// execution and the draining worker.
async fn restart_under_backlog(service: &str, command: &'static str) -> (TestApp, String, helpers::Peer) {
    let mut app = TestApp::spawn().await;
    let id = metered(&mut app).await;
    app.stop_worker().await;
    publish_events(&app, &id, 0, 30_000, 10).await;
    let peer = app.spawn_peer(Arc::new(SystemClock)).await;
    wait_some(&app).await;
    let backlog = app.queue_depth(&app.names.usage.clone()).await;
    let watcher = watch_readiness(peer.http);
    sh(command).await;
    println!("{service} restarted with {backlog} usage messages still queued");
    assert!(
        watcher.await.expect("watcher"),
        "/readyz said 503 while the {service} was away"
    );
    (app, id, peer)
}

#[tokio::test]
async fn a_broker_restart_under_load_loses_nothing_and_counts_nothing_twice() {
    let (mut app, id, peer) = restart_under_backlog("broker", RESTART_BROKER).await;
    app.reconnect().await;
    eventually("ready again", || async {
        (http_get(peer.http, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    // Work published after the restart flows too, and webhooks still leave.
    publish_events(&app, &id, 30_000, 31_000, 50).await;
    wait_exact(&app, 31_000).await;
    let r = app
        .call(
            "m1",
            json!({"command": "add_credit", "billing_execution_info_id": id, "amount": 5, "reference_id": "after"}),
        )
        .await;
    assert_eq!(r["success"], true);
    app.wait_for_count(
        "every webhook published",
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        0,
    )
    .await;
    peer.stop().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_database_restart_under_load_loses_nothing_and_counts_nothing_twice() {
    let (app, id, peer) = restart_under_backlog("database", RESTART_POSTGRES).await;
    publish_events(&app, &id, 30_000, 31_000, 50).await;
    wait_exact(&app, 31_000).await;
    eventually("ready again", || async {
        (http_get(peer.http, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(
        app.queue_depth(&app.names.dead.clone()).await,
        0,
        "an outage is not bad input"
    );
    peer.stop().await;
    app.teardown().await;
}

#[tokio::test]
async fn sigterm_under_load_finishes_acks_and_exits_zero() {
    let mut app = TestApp::spawn().await;
    let id = metered(&mut app).await;
    app.stop_worker().await;
    let sandbox_settings = app.settings.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_billing-worker"))
        .arg("run")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "BILLING__DATABASE__URL",
            secrecy::ExposeSecret::expose_secret(&sandbox_settings.database.url),
        )
        .env(
            "BILLING__AMQP__URL",
            secrecy::ExposeSecret::expose_secret(&sandbox_settings.amqp.url),
        )
        .env("BILLING__AMQP__PREFIX", &sandbox_settings.amqp.prefix)
        .env("BILLING__AMQP__QUEUE_TYPE", "classic")
        .env("BILLING__HTTP__LISTEN", addr.to_string())
        .env("BILLING__LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn worker");
    eventually("worker ready", || async move {
        (tokio::net::TcpStream::connect(addr).await.is_ok() && http_get(addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    publish_events(&app, &id, 0, 20_000, 20).await;
    wait_some(&app).await;
    let pid = child.id().expect("pid").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("stops within the grace period")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    // What it did not take stays queued; a new worker finishes exactly.
    let peer = app.spawn_peer(Arc::new(SystemClock)).await;
    wait_exact(&app, 20_000).await;
    peer.stop().await;
    app.teardown().await;
}

/// A three-node cluster started with `scripts/cluster up` for one test and
/// removed with `scripts/cluster down` when dropped, pass or fail.
struct Cluster {
    /// `BILLING__AMQP__URL` of target/cluster.env: the three nodes.
    url: String,
}

impl Cluster {
    fn script(arg: &str) -> std::process::Output {
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster"))
            .arg(arg)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run scripts/cluster")
    }

    async fn up() -> Cluster {
        let out = tokio::task::spawn_blocking(|| Cluster::script("up"))
            .await
            .expect("join");
        assert!(
            out.status.success(),
            "scripts/cluster up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
        let env =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/target/cluster.env")).expect("cluster.env");
        let url = env
            .lines()
            .find_map(|l| l.strip_prefix("BILLING__AMQP__URL="))
            .expect("BILLING__AMQP__URL in cluster.env")
            .to_string();
        Cluster { url }
    }

    /// The URL of the node with this name (`billing-c2@localhost`).
    fn url_of(&self, node: &str) -> String {
        let index: usize = node
            .trim_start_matches("billing-c")
            .split('@')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a cluster node name");
        self.url.split(',').nth(index - 1).expect("node url").to_string()
    }

    /// The node leading a quorum queue.
    async fn leader(queue: &str) -> String {
        let queue = queue.to_string();
        let out = tokio::task::spawn_blocking(|| {
            std::process::Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "-n",
                    "billing-c1@localhost",
                    "list_queues",
                    "name",
                    "leader",
                    "--formatter",
                    "json",
                ])
                .output()
                .expect("rabbitmqctl")
        })
        .await
        .expect("join");
        let queues: Vec<Value> = serde_json::from_slice(&out.stdout).expect("list_queues json");
        queues
            .iter()
            .find(|q| q["name"] == queue.as_str())
            .and_then(|q| q["leader"].as_str())
            .expect("the queue and its leader")
            .to_string()
    }

    async fn ctl(node: &str, args: &[&str]) {
        let mut all = vec!["-q".to_string(), "-n".to_string(), node.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("rabbitmqctl")
                .args(&all)
                .stdout(Stdio::null())
                .status()
                .expect("rabbitmqctl")
        })
        .await
        .expect("join");
        assert!(status.success(), "rabbitmqctl {args:?} on {node}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = Cluster::script("down");
        if !out.status.success() {
            eprintln!("scripts/cluster down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Every message in a queue, taken off it.
async fn drain(app: &TestApp, queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(Some(m)) = app
        .channel
        .basic_get(queue.into(), lapin::options::BasicGetOptions { no_ack: true })
        .await
    {
        ids.push(
            m.properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        );
    }
    ids
}

#[tokio::test]
async fn a_cluster_node_stopping_under_load_loses_nothing_and_counts_nothing_twice() {
    let cluster = Cluster::up().await;
    let mut sandbox = Sandbox::new().await;
    sandbox.settings.amqp.url = secrecy::SecretString::from(cluster.url.clone());
    sandbox.settings.amqp.queue_type = billing_worker::settings::QueueType::Quorum;
    let mut app = TestApp::spawn_with(sandbox, Arc::new(SystemClock)).await;
    let id = metered(&mut app).await;
    let usage = app.names.usage.clone();
    let leader = Cluster::leader(&usage).await;
    // The test's own client stays on a node that does not go away.
    let other = ["billing-c1@localhost", "billing-c2@localhost", "billing-c3@localhost"]
        .into_iter()
        .find(|n| *n != leader)
        .expect("another node");
    app.reconnect_to(&cluster.url_of(other)).await;

    publish_events(&app, &id, 0, 10_000, 10).await;
    wait_some(&app).await;
    Cluster::ctl(&leader, &["stop_app"]).await;
    println!("stopped {leader}, the leader of {usage}");
    // Usage and commands go on while it is away.
    publish_events(&app, &id, 10_000, 20_000, 10).await;
    for i in 0..5 {
        let r = app
            .call(
                "m1",
                json!({"command": "add_credit", "billing_execution_info_id": id, "amount": 1, "reference_id": format!("during{i}")}),
            )
            .await;
        assert_eq!(r["success"], true, "{r}");
    }
    Cluster::ctl(&leader, &["start_app"]).await;
    Cluster::ctl(&leader, &["await_startup"]).await;
    publish_events(&app, &id, 20_000, 21_000, 10).await;
    wait_exact(&app, 21_000).await;
    app.wait_for_count(
        "every webhook published",
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        0,
    )
    .await;
    // Each webhook of the outbox is in the webhook queue exactly once.
    let outbox: Vec<String> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY seq")
        .fetch_all(&app.db)
        .await
        .expect("outbox");
    let webhooks = app.names.webhooks.clone();
    let published = Arc::new(std::sync::Mutex::new(Vec::new()));
    eventually("the webhooks in their queue", || {
        let (app, webhooks, published, want) = (&app, webhooks.clone(), published.clone(), outbox.len());
        async move {
            let more = drain(app, &webhooks).await;
            let mut got = published.lock().expect("lock");
            got.extend(more);
            (got.len() >= want).then_some(())
        }
    })
    .await;
    let published = published.lock().expect("lock").clone();
    let mut sorted = published.clone();
    sorted.sort();
    let mut expected = outbox.clone();
    expected.sort();
    assert_eq!(sorted, expected, "every webhook once, none lost, none twice");
    assert_eq!(
        app.queue_depth(&app.names.dead.clone()).await,
        0,
        "a node going away is not bad input"
    );
    app.teardown().await;
    drop(cluster);
}
