//! Health, readiness, metrics, topology and shutdown.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::helpers::{TestApp, seed_catalog};

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    assert_eq!(app.http_get("/healthz").await.0, 200);
    let (status, body) = app.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"billing_commands_total{command="create_metric",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("billing_command_duration_seconds_bucket"), "{metrics}");
    assert!(
        metrics.contains(r#"billing_role_up{role="provisioning"} 1"#),
        "{metrics}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn the_topology_is_declared_with_its_prefix() {
    let app = TestApp::spawn().await;
    for queue in app.names.queues() {
        assert!(queue.starts_with(&app.settings.amqp.prefix), "{queue}");
        let declared = app
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        assert!(declared.is_ok(), "{queue} is declared");
    }
    app.teardown().await;
}

#[tokio::test]
async fn shutdown_finishes_cleanly() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    app.stop_worker().await;
    // Nothing was left unacked or unpublished.
    assert_eq!(app.queue_depth(&app.names.provisioning.clone()).await, 0);
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(unpublished, 0);
    app.teardown().await;
}

#[tokio::test]
async fn the_worker_runs_under_the_least_privilege_role() {
    use secrecy::ExposeSecret;
    let mut sandbox = crate::helpers::Sandbox::new().await;
    let owner_url = sandbox.settings.database.url.expose_secret().to_string();
    let owner = sqlx::PgPool::connect(&owner_url).await.expect("owner");
    billing_worker::store::migrate(&owner)
        .await
        .expect("migrate as the owner");
    let role = format!("bwt_role_{}", &sandbox.db_name[4..]);
    let status = std::process::Command::new("psql")
        .args([
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            &format!("worker={role}"),
            "-f",
            "ops/least-privilege.sql",
            &owner_url,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("psql runs");
    assert!(status.success(), "ops/least-privilege.sql applies");
    let worker_url = owner_url.replacen("postgres@", &format!("{role}@"), 1);
    sandbox.settings.database.url = secrecy::SecretString::from(worker_url.clone());
    sandbox.settings.database.migrate_on_start = false;

    let mut app = TestApp::spawn_with(sandbox, std::sync::Arc::new(billing_worker::clock::SystemClock)).await;
    seed_catalog(&mut app, "m1").await;
    let r = app
        .call(
            "m1",
            serde_json::json!({"command": "update_plan", "plan_id": "test_3", "metric_ids": ["storage"]}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    let id = app
        .create_execution(
            "m1",
            serde_json::json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1", "amount": 5}),
        )
        .await;
    app.publish_usage(
        "m1",
        &serde_json::json!({"event_id": "e1", "billing_execution_info_id": id, "metric_id": "storage", "value": 2}),
    )
    .await;
    app.wait_for_count("counted", "SELECT count(*) FROM usage_events", 1)
        .await;
    app.wait_for_count(
        "webhooks out",
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        0,
    )
    .await;

    // The role can change rows, never the schema.
    let worker = sqlx::PgPool::connect(&worker_url).await.expect("worker role connects");
    let denied = sqlx::query("DROP TABLE outbox")
        .execute(&worker)
        .await
        .expect_err("no DDL");
    assert!(
        denied.to_string().contains("must be owner") || denied.to_string().contains("permission denied"),
        "{denied}"
    );
    let denied = sqlx::query("DELETE FROM usage_events")
        .execute(&worker)
        .await
        .expect_err("no deletes of events");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    worker.close().await;
    owner.close().await;
    app.teardown().await;
    let admin = sqlx::PgPool::connect(&crate::helpers::admin_database_url())
        .await
        .expect("admin");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&admin)
        .await;
}

#[tokio::test]
async fn the_database_can_be_reached_over_tls_by_setting_sslmode() {
    use secrecy::ExposeSecret;
    let mut sandbox = crate::helpers::Sandbox::new().await;
    let url = sandbox
        .settings
        .database
        .url
        .expose_secret()
        .replace("sslmode=disable", "sslmode=require");
    sandbox.settings.database.url = secrecy::SecretString::from(url);
    let mut app = TestApp::spawn_with(sandbox, std::sync::Arc::new(billing_worker::clock::SystemClock)).await;
    seed_catalog(&mut app, "m1").await;
    // Every connection of the worker's application name is encrypted.
    let encrypted: bool = sqlx::query_scalar(
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
         WHERE a.application_name = 'billing-worker' AND a.datname = current_database()",
    )
    .fetch_one(&app.db)
    .await
    .expect("ssl status");
    assert!(encrypted, "the worker's connections use TLS");
    app.teardown().await;
}

#[tokio::test]
async fn a_test_app_dropped_without_teardown_leaves_nothing_behind() {
    use sqlx::Connection as _;
    let app = TestApp::spawn().await;
    let (db, queue) = (app.db_name().to_string(), app.names.usage.clone());
    // As a failing test would: the app goes out of scope untidied.
    drop(app);
    let mut admin = sqlx::PgConnection::connect(&crate::helpers::admin_database_url())
        .await
        .expect("admin");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&db)
        .fetch_one(&mut admin)
        .await
        .expect("count");
    assert_eq!(left, 0, "database {db} left behind");
    let client = TestApp::spawn().await;
    let passive = client
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(passive.is_err(), "queue {queue} left behind");
    drop(client);
}
