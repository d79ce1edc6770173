//! Provisioning over the bus: the catalog, free-tier executions, status,
//! credit, idempotency and tenant isolation.

use lapin::BasicProperties;
use rust_decimal::Decimal;
use serde_json::json;
use std::str::FromStr;

use crate::helpers::{TestApp, seed_catalog};

#[tokio::test]
async fn a_customer_is_provisioned_on_a_free_tier_with_credit() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;

    let created = app
        .call(
            "m1",
            json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1", "amount": "8",
                   "merchant_ref_id": "test_1", "status": "ACTIVE"}),
        )
        .await;
    assert_eq!(created["success"], true, "{created}");
    assert_eq!(created["message"], "Success");
    assert_eq!(created["merchant_id"], "m1");
    assert_eq!(created["customer_id"], "cth_1");
    assert_eq!(created["status"], "ACTIVE");
    assert_eq!(created["source"], "MERCHANT_REF_ID");
    assert_eq!(created["source_object_id"], "test_1");
    assert_eq!(created["amount"], 8);
    let id = created["billing_execution_info_id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 32);
    let plan = &created["plan_info"];
    assert_eq!(plan["plan_id"], "test_3");
    assert_eq!(plan["plan_model"], "USAGE_BASED");
    assert_eq!(plan["plan_action_on_failure"], "SKIP");
    let metric = &plan["metric_info"][0];
    assert_eq!(metric["name"], "Storage");
    assert_eq!(metric["aggregation_type"], "SUM");
    assert_eq!(metric["pricing_model"][0]["up_to"], "INFINITY");
    assert_eq!(metric["used_till_now"], 0);
    assert_eq!(metric["used_amount"], 0);

    let got = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(got["billing_execution_info_id"], id.as_str());
    assert_eq!(got["amount"], 8);

    let listed = app.call("m1", json!({"command": "list", "customer_id": "cth_1"})).await;
    assert_eq!(listed["success"], true);
    assert_eq!(listed["customer_id"], "cth_1");
    assert_eq!(listed["billing_execution_info"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        listed["billing_execution_info"][0]["billing_execution_info_id"],
        id.as_str()
    );

    // No transaction was made: the credit is a ledger grant.
    let (kind, amount, reference): (String, Decimal, String) =
        sqlx::query_as("SELECT kind, amount, reference_id FROM credit_ledger WHERE execution_id = $1")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .expect("ledger row");
    assert_eq!(
        (kind.as_str(), amount, reference.as_str()),
        ("GRANT", Decimal::from(8), "free_tier")
    );

    let (name, _, doc) = app.next_webhook().await;
    assert_eq!(name, "BILLING_EXECUTION_CREATED");
    assert_eq!(
        doc["content"]["billing_execution_info"]["billing_execution_info_id"],
        id.as_str()
    );
    let (name, _, doc) = app.next_webhook().await;
    assert_eq!(name, "BILLING_EXECUTION_CREDIT_EVENT");
    assert_eq!(doc["content"]["credit"]["amount"], 8);
    app.teardown().await;
}

#[tokio::test]
async fn create_is_idempotent_on_merchant_ref_id() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    let command = json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1", "amount": 5, "merchant_ref_id": "ref-1"});
    let first = app.call("m1", command.clone()).await;
    let second = app.call("m1", command).await;
    assert_eq!(first["billing_execution_info_id"], second["billing_execution_info_id"]);
    assert_eq!(second["amount"], 5, "the credit is granted once");

    let executions: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(executions, 1);
    let webhooks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_name = 'BILLING_EXECUTION_CREATED'")
            .fetch_one(&app.db)
            .await
            .expect("count");
    assert_eq!(webhooks, 1, "a repeat emits no second webhook");

    // The same reference for another plan or customer is a conflict, not a repeat.
    app.call("m1", json!({"command": "create_customer", "customer_id": "cth_2"}))
        .await;
    let conflict = app
        .call(
            "m1",
            json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_2", "merchant_ref_id": "ref-1"}),
        )
        .await;
    assert_eq!(conflict["success"], false);
    assert_eq!(conflict["error_code"], "ALREADY_EXISTS");
    app.teardown().await;
}

#[tokio::test]
async fn a_repeated_message_id_gets_the_same_answer() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    let command = json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1"});
    let props = || BasicProperties::default().with_message_id("msg-42".into());
    let first = app.call_with("m1", command.clone(), props()).await;
    let second = app.call_with("m1", command, props()).await;
    assert_eq!(first, second);
    let executions: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(executions, 1);
    app.teardown().await;
}

#[tokio::test]
async fn status_changes_are_announced_once() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    let created = app
        .call(
            "m1",
            json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1", "status": "CREATED"}),
        )
        .await;
    assert_eq!(created["status"], "CREATED");
    assert!(created["billing_start_date"].is_null());
    let id = created["billing_execution_info_id"].as_str().expect("id").to_string();

    let active = app.set_status(&id, "ACTIVE").await;
    assert_eq!(active["status"], "ACTIVE");
    assert!(
        active["billing_start_date"].is_string(),
        "activation fixes the billing start"
    );
    let again = app.set_status(&id, "ACTIVE").await;
    assert_eq!(again["success"], true);
    let inactive = app.set_status(&id, "INACTIVE").await;
    assert_eq!(inactive["status"], "INACTIVE");
    let back = app.set_status(&id, "CREATED").await;
    assert_eq!(back["error_code"], "INVALID_STATE");
    assert_eq!(app.next_dead_letter().await.code, "INVALID_STATE");

    let names: Vec<String> = {
        let mut names = Vec::new();
        for _ in 0..3 {
            names.push(app.next_webhook().await.0);
        }
        names
    };
    assert_eq!(
        names,
        [
            "BILLING_EXECUTION_CREATED",
            "BILLING_EXECUTION_ACTIVATED",
            "BILLING_EXECUTION_DEACTIVATED"
        ]
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(total, 3, "the repeated activation announced nothing");
    app.teardown().await;
}

#[tokio::test]
async fn credit_is_a_ledger_and_grants_are_idempotent() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    let id = app
        .create_execution(
            "m1",
            json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1", "amount": "1.50"}),
        )
        .await;
    let grant = |amount: serde_json::Value, reference: &str| json!({"command": "add_credit", "billing_execution_info_id": id, "amount": amount, "reference_id": reference});
    let r = app.call("m1", grant(json!("10.25"), "promo-1")).await;
    assert_eq!(r["amount"], json!(11.75));
    let r = app.call("m1", grant(json!(10.25), "promo-1")).await;
    assert_eq!(r["amount"], json!(11.75), "the same grant twice is one grant");
    let r = app.call("m1", grant(json!(3), "promo-1")).await;
    assert_eq!(r["error_code"], "ALREADY_EXISTS");
    let r = app.call("m1", grant(json!("0.001"), "promo-2")).await;
    assert_eq!(r["error_code"], "INVALID_FIELD");
    assert!(
        r["error_message"].as_str().expect("message").starts_with("amount"),
        "{r}"
    );
    let r = app.call("m1", grant(json!(-1), "promo-3")).await;
    assert_eq!(r["error_code"], "INVALID_FIELD");

    let (sum, balance): (Decimal, Decimal) = sqlx::query_as(
        "SELECT (SELECT sum(CASE kind WHEN 'GRANT' THEN amount ELSE -amount END) FROM credit_ledger WHERE execution_id = $1),
                (SELECT credit_balance FROM executions WHERE id = $1)",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .expect("ledger");
    assert_eq!(sum, balance, "the balance agrees with the ledger");
    assert_eq!(balance, Decimal::from_str("11.75").expect("d"));
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_name = 'BILLING_EXECUTION_CREDIT_EVENT'")
            .fetch_one(&app.db)
            .await
            .expect("count");
    assert_eq!(events, 2);
    app.teardown().await;
}

#[tokio::test]
async fn one_merchant_never_sees_or_changes_another() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    let id = app
        .create_execution(
            "m1",
            json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1", "amount": 2}),
        )
        .await;

    let r = app
        .call("m2", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(r["error_code"], "EXECUTION_NOT_FOUND");
    let r = app
        .call(
            "m2",
            json!({"command": "add_credit", "billing_execution_info_id": id, "amount": 100, "reference_id": "x"}),
        )
        .await;
    assert_eq!(r["error_code"], "EXECUTION_NOT_FOUND");
    let r = app
        .call(
            "m2",
            json!({"command": "update_status", "billing_execution_info_id": id, "status": "INACTIVE"}),
        )
        .await;
    assert_eq!(r["error_code"], "EXECUTION_NOT_FOUND");
    let r = app.call("m2", json!({"command": "list", "customer_id": "cth_1"})).await;
    assert_eq!(r["error_code"], "CUSTOMER_NOT_FOUND");
    let r = app
        .call(
            "m2",
            json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1"}),
        )
        .await;
    assert_eq!(r["error_code"], "PLAN_NOT_FOUND");

    // The same ids are free for another merchant.
    seed_catalog(&mut app, "m2").await;
    let theirs = app.call("m2", json!({"command": "list", "customer_id": "cth_1"})).await;
    assert_eq!(theirs["billing_execution_info"].as_array().map(Vec::len), Some(0));

    let mine = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(
        (mine["status"].as_str(), mine["amount"].as_i64()),
        (Some("ACTIVE"), Some(2))
    );
    app.teardown().await;
}

#[tokio::test]
async fn catalog_rules_name_the_field() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    let cases = [
        (
            json!({"command": "create_metric", "metric_id": "x", "name": "X", "aggregation_type": "SUM", "pricing_type": "TIERED",
                "pricing_model": [{"unit_amount": 1, "up_to": 10}, {"unit_amount": 1, "up_to": 5}], "currency": "INR"}),
            "INVALID_FIELD",
            "pricing_model[1].up_to",
        ),
        (
            json!({"command": "create_metric", "metric_id": "x", "name": "X", "aggregation_type": "UNIQUE_COUNT", "pricing_type": "FIXED",
                "pricing_model": [{"unit_amount": 1}], "currency": "INR"}),
            "INVALID_FIELD",
            "aggregation_field",
        ),
        (
            json!({"command": "create_metric", "metric_id": "x", "name": "X", "aggregation_type": "AVG", "pricing_type": "FIXED",
                "pricing_model": [{"unit_amount": 1}], "currency": "INR"}),
            "INVALID_FIELD",
            "aggregation_type",
        ),
        (
            json!({"command": "create_metric", "metric_id": "x", "name": "X", "aggregation_type": "SUM", "pricing_type": "FIXED",
                "pricing_model": [{"unit_amount": 1}], "currency": "RUPEES"}),
            "INVALID_FIELD",
            "currency",
        ),
        (
            json!({"command": "create_plan", "plan_id": "p", "plan_name": "P", "plan_type": "PRE_DEBIT", "plan_model": "USAGE_BASED",
                "plan_interval": "MONTHLY", "plan_currency": "INR", "metric_ids": ["nope"]}),
            "METRIC_NOT_FOUND",
            "metric_ids[0]",
        ),
        (
            json!({"command": "create_plan", "plan_id": "p", "plan_name": "P", "plan_type": "PRE_DEBIT", "plan_model": "USAGE_BASED",
                "plan_interval": "MONTHLY", "plan_currency": "USD", "metric_ids": ["storage"]}),
            "INVALID_FIELD",
            "metric_ids[0]",
        ),
        (
            json!({"command": "create_plan", "plan_id": "p", "plan_name": "P", "plan_type": "PRE_DEBIT", "plan_model": "FIXED",
                "plan_interval": "MONTHLY", "plan_currency": "INR", "plan_rule_value": 40}),
            "INVALID_FIELD",
            "plan_rule_value",
        ),
        (
            json!({"command": "create_plan", "plan_id": "test_3", "plan_name": "other", "plan_type": "PRE_DEBIT", "plan_model": "FIXED",
                "plan_interval": "MONTHLY", "plan_currency": "INR"}),
            "ALREADY_EXISTS",
            "plan_id",
        ),
        (
            json!({"command": "update_plan", "plan_id": "nope", "plan_name": "X"}),
            "PLAN_NOT_FOUND",
            "plan_id",
        ),
        (
            json!({"command": "create_customer", "customer_id": "c2", "email": "not-an-email"}),
            "INVALID_FIELD",
            "email",
        ),
        (
            json!({"command": "create", "plan_id": "test_3", "customer_id": "ghost"}),
            "CUSTOMER_NOT_FOUND",
            "customer_id",
        ),
        (
            json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1", "amount": "-5"}),
            "INVALID_FIELD",
            "amount",
        ),
        (
            json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1", "status": "PAUSED"}),
            "INVALID_FIELD",
            "status",
        ),
        (
            json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1",
                "metric_info": [{"metric_id": "storage", "pricing_type": "FIXED", "pricing_model": [{"unit_amount": 1}]}]}),
            "INVALID_FIELD",
            "metric_info",
        ),
    ];
    for (command, code, field) in cases {
        let r = app.call("m1", command.clone()).await;
        assert_eq!(r["success"], false, "{command} -> {r}");
        assert_eq!(r["error_code"], code, "{command} -> {r}");
        let message = r["error_message"].as_str().expect("message");
        assert!(message.starts_with(field), "{command}: '{message}' should name {field}");
    }
    // A failed command changes nothing.
    let plans: i64 = sqlx::query_scalar("SELECT count(*) FROM plans")
        .fetch_one(&app.db)
        .await
        .expect("count");
    let metrics: i64 = sqlx::query_scalar("SELECT count(*) FROM metrics")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!((plans, metrics), (1, 1));
    app.teardown().await;
}

#[tokio::test]
async fn plans_update_in_part_and_variable_plans_take_customer_prices() {
    let mut app = TestApp::spawn().await;
    seed_catalog(&mut app, "m1").await;
    let updated = app
        .call(
            "m1",
            json!({"command": "update_plan", "plan_id": "test_3", "max_retry": "5", "max_amount": 1000}),
        )
        .await;
    assert_eq!(updated["success"], true, "{updated}");
    assert_eq!(updated["max_retry"], 5);
    assert_eq!(updated["max_amount"], 1000);
    assert_eq!(updated["plan_name"], "test3", "fields not named stay");

    let same = app
        .call(
            "m1",
            json!({"command": "create_metric", "metric_id": "storage", "name": "Storage", "unit": "GB",
        "event_type": "STORAGE", "aggregation_type": "SUM", "pricing_type": "FIXED",
        "pricing_model": [{"unit_amount": "10.0", "up_to": "INFINITY"}], "currency": "inr"}),
        )
        .await;
    assert_eq!(
        same["success"], true,
        "an identical definition is a harmless repeat: {same}"
    );

    let plan = app
        .call(
            "m1",
            json!({"command": "create_plan", "plan_id": "var", "plan_name": "Variable", "plan_type": "POST_DEBIT",
        "plan_model": "VARIABLE", "plan_interval": "MONTHLY", "plan_currency": "INR", "metric_ids": ["storage"]}),
        )
        .await;
    assert_eq!(plan["success"], true, "{plan}");
    let created = app
        .call(
            "m1",
            json!({"command": "create", "plan_id": "var", "customer_id": "cth_1",
        "metric_info": [{"metric_id": "storage", "pricing_type": "TIERED",
            "pricing_model": [{"unit_amount": 2, "up_to": 100}, {"unit_amount": 1, "up_to": "INFINITY"}]}]}),
        )
        .await;
    assert_eq!(created["success"], true, "{created}");
    let metric = &created["plan_info"]["metric_info"][0];
    assert_eq!(metric["pricing_type"], "TIERED");
    assert_eq!(metric["pricing_model"][0]["up_to"], 100);
    app.teardown().await;
}
