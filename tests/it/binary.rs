//! The `billing-worker` binary: settings from the environment, `migrate`,
//! `run`, and SIGTERM.

use std::process::Stdio;
use tokio::process::Command;

use crate::helpers::{DEADLINE, Sandbox, eventually, http_get};

fn worker(sandbox: &Sandbox, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_billing-worker"));
    cmd.args(args)
        // Outside the repository: settings and migrations are compiled in.
        .current_dir(std::env::temp_dir())
        .env(
            "BILLING__DATABASE__URL",
            secrecy::ExposeSecret::expose_secret(&sandbox.settings.database.url),
        )
        .env(
            "BILLING__AMQP__URL",
            secrecy::ExposeSecret::expose_secret(&sandbox.settings.amqp.url),
        )
        .env("BILLING__AMQP__PREFIX", &sandbox.settings.amqp.prefix)
        .env("BILLING__AMQP__QUEUE_TYPE", "quorum")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn migrate_applies_the_schema() {
    let sandbox = Sandbox::new().await;
    let out = worker(&sandbox, &["migrate"]).output().await.expect("run migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let db = sqlx::PgPool::connect(secrecy::ExposeSecret::expose_secret(&sandbox.settings.database.url))
        .await
        .expect("db");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('metrics', 'plans', 'executions', 'credit_ledger', 'outbox')",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(tables, 5);
    db.close().await;
    sandbox.drop_database().await;
}

#[tokio::test]
async fn a_bad_setting_names_its_key() {
    let sandbox = Sandbox::new().await;
    let out = worker(&sandbox, &["run"])
        .env("BILLING__SCHEDULER__TICK", "often")
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scheduler.tick"), "{stderr}");
    sandbox.drop_database().await;
}

#[tokio::test]
async fn run_serves_and_stops_on_sigterm_with_exit_code_zero() {
    let sandbox = Sandbox::new().await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").port()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut child = worker(&sandbox, &["run"])
        .env("BILLING__HTTP__LISTEN", addr.to_string())
        .spawn()
        .expect("spawn");
    eventually("ready", || async move {
        (http_get_ok(addr, "/readyz").await == Some(200)).then_some(())
    })
    .await;

    let pid = child.id().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "SIGTERM stops with exit code 0");

    // Quorum queues by default: remove them like the harness does.
    let conn = lapin::Connection::connect(&crate::helpers::amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    for queue in billing_worker::broker::Names::new(&sandbox.settings.amqp.prefix).queues() {
        let _ = channel.queue_delete(queue.into(), Default::default()).await;
    }
    for exchange in billing_worker::broker::Names::new(&sandbox.settings.amqp.prefix).exchanges() {
        let _ = channel.exchange_delete(exchange.into(), Default::default()).await;
    }
    sandbox.drop_database().await;
}

async fn http_get_ok(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(http_get(addr, path).await.0)
}

#[tokio::test]
async fn send_to_a_reader_that_went_away_is_not_a_crash() {
    let app = crate::helpers::TestApp::spawn().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_billing-worker"))
        .args([
            "send",
            "--merchant",
            "m1",
            "--no-reply",
            r#"{"command": "run_billing"}"#,
        ])
        .current_dir(std::env::temp_dir())
        .env(
            "BILLING__AMQP__URL",
            secrecy::ExposeSecret::expose_secret(&app.settings.amqp.url),
        )
        .env("BILLING__AMQP__PREFIX", &app.settings.amqp.prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn send");
    // The reader goes away before the answer is printed (`| head -0`).
    drop(child.stdout.take());
    let out = child.wait_with_output().await.expect("send ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    app.teardown().await;
}
