//! The webhook outbox: written with the change, published with confirms in
//! order, never lost by a crash, repeated with the same id.

use std::sync::Arc;

use billing_worker::clock::SystemClock;
use serde_json::json;

use crate::helpers::{Sandbox, TestApp, eventually, header, seed_catalog};

#[tokio::test]
async fn webhooks_carry_their_id_tenant_and_name_in_order() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    let id = app
        .create_execution(
            "m1",
            json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1", "status": "CREATED"}),
        )
        .await;
    for (i, status) in ["ACTIVE", "INACTIVE", "ACTIVE", "INACTIVE"].iter().enumerate() {
        let r = app.set_status(&id, status).await;
        assert_eq!(r["success"], true, "{i}: {r}");
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (routing_key, props, doc) = app.next_webhook().await;
        assert_eq!(doc["event_name"], routing_key.as_str());
        assert_eq!(doc["event_value"], "BILLING");
        assert_eq!(doc["merchant_id"], "m1");
        assert_eq!(
            props.message_id().as_ref().map(|m| m.as_str()),
            doc["id"].as_str(),
            "message_id is the webhook id"
        );
        assert_eq!(props.delivery_mode(), &Some(2), "persistent");
        assert_eq!(header(&props, "x-merchantid").as_deref(), Some("m1"));
        assert!(doc["date_created"].as_str().expect("date").ends_with('Z'));
        seen.push(routing_key);
    }
    assert_eq!(
        seen,
        [
            "BILLING_EXECUTION_CREATED",
            "BILLING_EXECUTION_ACTIVATED",
            "BILLING_EXECUTION_DEACTIVATED",
            "BILLING_EXECUTION_ACTIVATED",
            "BILLING_EXECUTION_DEACTIVATED"
        ]
    );
    // The relay marks a batch right after the broker confirms it.
    app.wait_for_count(
        "all marked published",
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        0,
    )
    .await;
    app.teardown().await;
}

#[tokio::test]
async fn a_crash_before_publishing_loses_no_webhook() {
    let sandbox = Sandbox::new().await;
    let mut settings = sandbox.settings.clone();
    let mut app = TestApp::spawn_with(sandbox, Arc::new(SystemClock)).await;
    seed_catalog(&mut app, "m1").await;
    // Webhooks committed but not yet relayed, then the process dies.
    app.kill_worker().await;
    let id = "0123456789abcdef0123456789abcdef";
    sqlx::query(
        "INSERT INTO executions (id, merchant_id, customer_id, plan_id, status, created_at, updated_at)
         VALUES ($1, 'm1', 'cth_1', 'test_3', 'ACTIVE', now(), now())",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .expect("execution");
    sqlx::query(
        "INSERT INTO outbox (id, merchant_id, execution_id, event_name, payload, created_at)
         VALUES ('evt_crash', 'm1', $1, 'BILLING_EXECUTION_CREATED', '{\"id\": \"evt_crash\"}', now())",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .expect("outbox row");

    // A new process on the same database and topology publishes it.
    settings.http.listen = "127.0.0.1:0".parse().expect("addr");
    let restarted = billing_worker::app::Application::build(settings, Arc::new(SystemClock))
        .await
        .expect("build");
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(restarted.run(stop.clone()));
    let (routing_key, props, _) = app.next_webhook().await;
    assert_eq!(routing_key, "BILLING_EXECUTION_CREATED");
    assert_eq!(props.message_id().as_ref().map(|m| m.as_str()), Some("evt_crash"));
    stop.cancel();
    handle.await.expect("task").expect("clean stop");
    app.teardown().await;
}

#[tokio::test]
async fn a_republished_webhook_keeps_its_id() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    app.call(
        "m1",
        json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1"}),
    )
    .await;
    let (_, first, _) = app.next_webhook().await;
    app.wait_for_count("marked", "SELECT count(*) FROM outbox WHERE published_at IS NULL", 0)
        .await;
    // As if the process died after the broker's confirm but before the mark.
    sqlx::query("UPDATE outbox SET published_at = NULL")
        .execute(&app.db)
        .await
        .expect("unmark");
    app.ctx.outbox_wake.notify_one();
    let (_, second, _) = app.next_webhook().await;
    assert_eq!(first.message_id(), second.message_id());
    eventually("marked again", || {
        let db = app.db.clone();
        async move {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&db)
                .await
                .ok()?;
            (left == 0).then_some(())
        }
    })
    .await;
    app.teardown().await;
}
