//! Faults survived with nothing lost: the broker and the database restart
//! under a running worker, and SIGTERM arrives under load. These restart the
//! machine's real services, so `scripts/test` runs them one at a time, after
//! every other test.

#[allow(dead_code)] // the shared harness; these tests use part of it
#[path = "../it/helpers.rs"]
mod helpers;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use billing_worker::clock::SystemClock;
use serde_json::{Value, json};

use helpers::{DEADLINE, TestApp, eventually, eventually_within, http_get};

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
