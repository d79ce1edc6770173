//! Bad input goes to `billing.dead` with a reason the sender can act on,
//! is answered when it asked for an answer, and never stops the worker.

use lapin::BasicProperties;
use lapin::types::ShortString;
use serde_json::json;

use crate::helpers::{TestApp, seed_catalog, with_merchant};

#[tokio::test]
async fn each_kind_of_bad_input_is_dead_lettered_with_its_code() {
    let mut app = TestApp::spawn().await;
    let oversize = format!(
        "{{\"command\":\"get\",\"pad\":\"{}\"}}",
        "x".repeat(app.settings.amqp.max_message_bytes)
    );
    let cases: Vec<(&str, Vec<u8>, bool, &str, &str)> = vec![
        (
            "malformed JSON",
            b"{\"command\": ".to_vec(),
            true,
            "INVALID_JSON",
            "body",
        ),
        (
            "missing merchant",
            br#"{"command":"get","billing_execution_info_id":"x"}"#.to_vec(),
            false,
            "MISSING_MERCHANT",
            "header x-merchantid",
        ),
        (
            "unknown command",
            br#"{"command":"explode"}"#.to_vec(),
            true,
            "UNKNOWN_COMMAND",
            "command",
        ),
        (
            "oversize body",
            oversize.into_bytes(),
            true,
            "MESSAGE_TOO_LARGE",
            "body",
        ),
        (
            "wrong type",
            br#"{"command":"add_credit","billing_execution_info_id":"e","amount":[1],"reference_id":"r"}"#.to_vec(),
            true,
            "INVALID_FIELD",
            "amount",
        ),
        (
            "missing field",
            br#"{"command":"create_customer"}"#.to_vec(),
            true,
            "INVALID_FIELD",
            "customer_id",
        ),
        ("not an object", b"[1, 2]".to_vec(), true, "INVALID_FIELD", "body"),
    ];
    for (what, body, with_merchant_header, code, field) in cases {
        let props = if with_merchant_header {
            with_merchant(BasicProperties::default(), "m1")
        } else {
            BasicProperties::default()
        };
        let answer = app.request(&body, props).await;
        assert_eq!(answer["success"], false, "{what}: {answer}");
        assert_eq!(answer["error_code"], code, "{what}: {answer}");
        let dead = app.next_dead_letter().await;
        assert_eq!(dead.code, code, "{what}");
        assert!(
            dead.message.starts_with(field),
            "{what}: '{}' should name {field}",
            dead.message
        );
        assert_eq!(dead.routing_key, "provisioning.test", "{what}");
        assert_eq!(dead.body, body, "{what}: the message is kept unchanged");
    }
    // Still alive and well.
    seed_catalog(&mut app, "m1").await;
    let metrics = app.http_get("/metrics").await.1;
    assert!(
        metrics.contains(r#"billing_dead_letters_total{code="INVALID_JSON",role="provisioning"} 1"#),
        "{metrics}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn bad_input_without_reply_to_is_still_dead_lettered() {
    let mut app = TestApp::spawn().await;
    app.publish_raw(
        "provisioning.x",
        b"not json",
        with_merchant(BasicProperties::default(), "m1"),
    )
    .await;
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.code, "INVALID_JSON");
    assert_eq!(dead.routing_key, "provisioning.x");
    // A failed command with no one to tell is dead-lettered too, never silent.
    let body = serde_json::to_vec(&json!({"command": "create", "plan_id": "nope", "customer_id": "c"})).expect("json");
    let keyed = BasicProperties::default().with_message_id("create-1".into());
    app.publish_raw("provisioning.x", &body, with_merchant(keyed, "m1"))
        .await;
    assert_eq!(app.next_dead_letter().await.code, "PLAN_NOT_FOUND");
    // A lookup that finds nothing, asked with reply_to, is only an answer.
    let answer = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": "nope"}))
        .await;
    assert_eq!(answer["error_code"], "EXECUTION_NOT_FOUND");
    assert_eq!(app.queue_depth(&app.names.dead.clone()).await, 0);
    app.teardown().await;
}

#[tokio::test]
async fn a_database_outage_is_waited_out_not_dead_lettered() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    let db_name = app.db_name().to_string();
    let admin = sqlx::PgPool::connect(&crate::helpers::admin_database_url())
        .await
        .expect("admin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db_name} ALLOW_CONNECTIONS false"
    )))
    .execute(&admin)
    .await
    .expect("close the database");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db_name)
    .execute(&admin)
    .await
    .expect("cut connections");

    let correlation = "during-outage";
    let body = serde_json::to_vec(&json!({"command": "create_customer", "customer_id": "c-outage"})).expect("json");
    let props = with_merchant(BasicProperties::default(), "m1")
        .with_reply_to(ShortString::from(app.reply_queue_name()))
        .with_correlation_id(ShortString::from(correlation));
    app.publish_raw("provisioning.test", &body, props).await;
    crate::helpers::eventually("the worker sees the outage", || {
        let ctx = app.ctx.clone();
        async move {
            let text = ctx.metrics.render();
            text.contains("billing_transient_errors_total{kind=\"database\",role=\"provisioning\"}")
                .then_some(())
        }
    })
    .await;
    let (status, _) = app.http_get("/readyz").await;
    assert_eq!(status, 503, "not ready while the database is away");

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db_name} ALLOW_CONNECTIONS true"
    )))
    .execute(&admin)
    .await
    .expect("reopen the database");
    let answer = app.reply(correlation).await;
    assert_eq!(answer["success"], true, "processed after recovery: {answer}");
    assert_eq!(
        app.queue_depth(&app.names.dead.clone()).await,
        0,
        "nothing was dead-lettered"
    );
    app.teardown().await;
}

#[tokio::test]
async fn with_tenant_authentication_a_user_acts_only_for_its_merchants() {
    let mut sandbox = crate::helpers::Sandbox::new().await;
    sandbox.settings.auth.enabled = true;
    sandbox.settings.auth.users = std::collections::BTreeMap::from([("guest".to_string(), vec!["m1".to_string()])]);
    let mut app = TestApp::spawn_with(sandbox, std::sync::Arc::new(billing_worker::clock::SystemClock)).await;
    let command = serde_json::to_vec(&json!({"command": "create_customer", "customer_id": "c1"})).expect("json");
    // The broker checks that user_id is the connection's user; the worker checks the user may act for the merchant.
    let as_guest = |merchant: &str| with_merchant(BasicProperties::default().with_user_id("guest".into()), merchant);
    let allowed = app.request(&command, as_guest("m1")).await;
    assert_eq!(allowed["success"], true, "{allowed}");
    let other = app.request(&command, as_guest("m2")).await;
    assert_eq!(other["error_code"], "FORBIDDEN");
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.code, "FORBIDDEN");
    assert!(
        dead.message.contains("guest") && dead.message.contains("m2"),
        "{}",
        dead.message
    );
    let anonymous = app
        .request(&command, with_merchant(BasicProperties::default(), "m1"))
        .await;
    assert_eq!(anonymous["error_code"], "FORBIDDEN");
    assert_eq!(app.next_dead_letter().await.code, "FORBIDDEN");
    // Usage is guarded the same way.
    app.publish_raw(
        "usage.test",
        br#"{"event_id":"e","billing_execution_info_id":"x","metric_id":"m"}"#,
        as_guest("m2"),
    )
    .await;
    assert_eq!(app.next_dead_letter().await.code, "FORBIDDEN");
    app.teardown().await;
}
