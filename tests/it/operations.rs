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
