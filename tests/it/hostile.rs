//! Hostile input is normal input: one merchant sends absurd numbers, huge
//! strings, deep JSON, oversize bodies, unknown fields, a century-old start
//! date and answers aimed at other queues, and makes its own bill overflow.
//! Another merchant's usage is still counted and its bill debited on time,
//! every role keeps answering, `/readyz` stays 200, and every refusal is a
//! dead letter or an answer with a code.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use billing_worker::clock::ManualClock;
use chrono::Duration;
use lapin::BasicProperties;
use lapin::types::ShortString;
use serde_json::{Value, json};

use crate::gateway::{Answer, Gateway};
use crate::helpers::{Sandbox, TestApp, eventually, with_merchant};
use crate::seed::at;

/// A worker on `clock` whose scheduler passes run every 100 ms.
async fn spawn(clock: ManualClock, tweak: impl FnOnce(&mut billing_worker::settings::Settings)) -> TestApp {
    let mut sandbox = Sandbox::new().await;
    let s = &mut sandbox.settings;
    s.scheduler.tick = StdDuration::from_millis(100);
    s.scheduler.pre_debit_notice = StdDuration::from_secs(3600);
    s.retry.jitter = 0.0;
    tweak(s);
    TestApp::spawn_with(sandbox, Arc::new(clock)).await
}

/// A SUM metric `units` at `price` per unit, a monthly USAGE_BASED plan `p`
/// on it, an ASPRESENTED plan `pp` on it, a customer `c1`.
async fn catalog(app: &mut TestApp, merchant: &str, price: &str) {
    for command in [
        json!({"command": "create_metric", "metric_id": "units", "name": "Units", "aggregation_type": "SUM",
               "pricing_type": "FIXED", "pricing_model": [{"unit_amount": price}], "currency": "INR"}),
        json!({"command": "create_plan", "plan_id": "p", "plan_name": "P", "plan_type": "POST_DEBIT",
               "plan_model": "USAGE_BASED", "plan_interval": "MONTHLY", "plan_currency": "INR",
               "plan_action_on_failure": "SKIP", "metric_ids": ["units"]}),
        json!({"command": "create_plan", "plan_id": "pp", "plan_name": "PP", "plan_type": "POST_DEBIT",
               "plan_model": "USAGE_BASED", "plan_interval": "ASPRESENTED", "plan_currency": "INR",
               "plan_action_on_failure": "SKIP", "metric_ids": ["units"]}),
        json!({"command": "create_customer", "customer_id": "c1"}),
    ] {
        let r = app.call(merchant, command).await;
        assert_eq!(r["success"], true, "{r}");
    }
}

async fn execution(app: &mut TestApp, merchant: &str, plan: &str) -> String {
    app.create_execution(
        merchant,
        json!({"command": "create", "plan_id": plan, "customer_id": "c1", "merchant_ref_id": format!("ref-{plan}")}),
    )
    .await
}

fn event(id: &str, execution: &str, value: Value) -> Value {
    json!({"event_id": id, "billing_execution_info_id": execution, "metric_id": "units", "value": value})
}

/// The next dead letter; its code and that its text stays short.
async fn refused(app: &TestApp, code: &str) -> String {
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.code, code, "{}", dead.message);
    assert!(
        dead.message.chars().count() <= 400,
        "x-error-message is {} characters",
        dead.message.len()
    );
    dead.message
}

async fn ready(app: &TestApp) {
    let (status, body) = app.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn one_merchant_attacking_never_stops_another() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = spawn(clock.clone(), |_| {}).await;
    let gateway = Gateway::start(&app.settings.amqp.prefix, |_| Answer::Success).await;
    catalog(&mut app, "good", "2").await;
    catalog(&mut app, "evil", "999999999999999").await;
    let good = execution(&mut app, "good", "p").await;
    let evil = execution(&mut app, "evil", "p").await;
    let evil_presented = execution(&mut app, "evil", "pp").await;

    // Absurd numbers, out of range or too precise: refused per event.
    for (i, value) in [
        json!("5e28"),
        json!(79228162514264337593543950335u128),
        json!("1e15"),
        json!("0.0000000000001"),
    ]
    .into_iter()
    .enumerate()
    {
        app.publish_usage("evil", &event(&format!("absurd-{i}"), &evil, value))
            .await;
        let message = refused(&app, "INVALID_FIELD").await;
        assert!(message.starts_with("value"), "{message}");
    }
    // A 300 kB event id: refused, quoted only in short form.
    let huge = "x".repeat(300_000);
    app.publish_usage("evil", &event(&huge, &evil, json!(1))).await;
    let message = refused(&app, "INVALID_FIELD").await;
    assert!(message.starts_with("event_id"), "{message}");
    // JSON nested past what a decoder follows.
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!({ "a": deep });
    }
    let mut nested = event("deep", &evil, json!(1));
    nested["properties"] = deep;
    app.publish_usage("evil", &nested).await;
    refused(&app, "INVALID_JSON").await;
    // A body over the size limit.
    let oversize = vec![b' '; app.settings.amqp.max_message_bytes + 1];
    app.publish_raw(
        "usage.test",
        &oversize,
        with_merchant(BasicProperties::default(), "evil"),
    )
    .await;
    refused(&app, "MESSAGE_TOO_LARGE").await;
    // A misspelled field is named, never dropped.
    let r = app
        .call(
            "evil",
            json!({"command": "create_plan", "plan_id": "typo", "plan_amout": 10}),
        )
        .await;
    assert_eq!(r["error_code"], "INVALID_FIELD", "{r}");
    assert!(
        r["error_message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("plan_amout"),
        "{r}"
    );
    refused(&app, "INVALID_FIELD").await;
    // A start date a century ago is refused, not caught up.
    let r = app
        .call(
            "evil",
            json!({"command": "create", "plan_id": "p", "customer_id": "c1", "merchant_ref_id": "old", "billing_start_date": "1926-01-01"}),
        )
        .await;
    assert_eq!(r["error_code"], "INVALID_FIELD", "{r}");
    assert!(
        r["error_message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("billing_start_date"),
        "{r}"
    );
    refused(&app, "INVALID_FIELD").await;
    // An answer aimed at the worker's own usage queue is refused and never sent.
    let usage_before = app.queue_depth(&app.names.usage).await;
    let aimed = with_merchant(BasicProperties::default(), "evil")
        .with_reply_to(ShortString::from(app.names.usage.as_str()))
        .with_content_type(ShortString::from("application/json"));
    app.publish_raw(
        "provisioning.test",
        br#"{"command":"get","billing_execution_info_id":"nothing"}"#,
        aimed,
    )
    .await;
    let message = refused(&app, "INVALID_FIELD").await;
    assert!(message.starts_with("reply_to"), "{message}");
    assert_eq!(app.queue_depth(&app.names.usage).await, usage_before);

    // Values in range whose price is beyond any amount: counted, then the
    // bill that would overflow is refused with a code, never a panic.
    let big: Vec<Value> = (0..100)
        .map(|i| event(&format!("big-{i}"), &evil, json!("999999999999999.99")))
        .collect();
    app.publish_usage("evil", &json!({ "events": big.clone() })).await;
    let presented: Vec<Value> = (0..100)
        .map(|i| {
            let mut e = event(&format!("pbig-{i}"), &evil_presented, json!("999999999999999.99"));
            e["event_id"] = json!(format!("pbig-{i}"));
            e
        })
        .collect();
    app.publish_usage("evil", &json!({ "events": presented })).await;
    // The other merchant's usage, sent after all of that.
    for i in 0..3 {
        app.publish_usage("good", &event(&format!("g{i}"), &good, json!(5)))
            .await;
    }
    app.wait_for_count("every valid event counted", "SELECT count(*) FROM usage_events", 203)
        .await;
    let r = app
        .call_with(
            "evil",
            json!({"command": "present", "billing_execution_info_id": evil_presented}),
            BasicProperties::default().with_message_id(ShortString::from("present-1")),
        )
        .await;
    assert_eq!(r["error_code"], "AMOUNT_OVERFLOW", "{r}");
    refused(&app, "AMOUNT_OVERFLOW").await;
    // present without a message_id could act twice on a redelivery: refused.
    let body =
        serde_json::to_vec(&json!({"command": "present", "billing_execution_info_id": evil_presented})).expect("json");
    let r = app
        .request(&body, with_merchant(BasicProperties::default(), "evil"))
        .await;
    assert_eq!(r["error_code"], "INVALID_FIELD", "{r}");
    assert!(
        r["error_message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("message_id"),
        "{r}"
    );
    refused(&app, "INVALID_FIELD").await;
    ready(&app).await;
    let r = app
        .call("good", json!({"command": "get", "billing_execution_info_id": good}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["plan_info"]["metric_info"][0]["used_amount"], json!(30), "{r}");

    // The period closes: the good merchant's bill is made and debited on
    // time; the evil one's is parked with its error and announced.
    clock.set(at(2026, 2, 1, 0, 1));
    let db = app.db.clone();
    let good_bill: String = eventually("the good bill issued", || {
        let (db, good) = (db.clone(), good.clone());
        async move {
            sqlx::query_scalar("SELECT id FROM bills WHERE execution_id = $1")
                .bind(&good)
                .fetch_optional(&db)
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    let parked: (Option<String>, i64) = eventually("the evil execution parked", || {
        let (db, evil) = (db.clone(), evil.clone());
        async move {
            let row: (Option<String>, i64) = sqlx::query_as(
                "SELECT billing_error, (SELECT count(*) FROM outbox WHERE execution_id = $1 AND event_name = 'BILLING_EXECUTION_ERROR')
                 FROM executions WHERE id = $1",
            )
            .bind(&evil)
            .fetch_one(&db)
            .await
            .ok()?;
            (row.1 == 1).then_some(row)
        }
    })
    .await;
    assert!(parked.0.unwrap_or_default().starts_with("AMOUNT_OVERFLOW"));
    let evil_bills: i64 = sqlx::query_scalar("SELECT count(*) FROM bills WHERE execution_id = $1")
        .bind(&evil)
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(evil_bills, 0);

    clock.advance(Duration::hours(2));
    let requests = gateway.wait_for(1).await;
    assert_eq!(requests[0]["bill_id"], good_bill.as_str());
    assert_eq!(requests[0]["amount"], "30.00");
    eventually("the good bill paid", || {
        let (db, bill) = (db.clone(), good_bill.clone());
        async move {
            let status: String = sqlx::query_scalar("SELECT status FROM bills WHERE id = $1")
                .bind(&bill)
                .fetch_one(&db)
                .await
                .ok()?;
            (status == "PAID").then_some(())
        }
    })
    .await;
    // Later passes park the evil execution again, quietly, and never ask twice.
    clock.advance(Duration::hours(2));
    let (_, metrics) = app.http_get("/metrics").await;
    assert!(
        metrics.contains("billing_execution_errors_total{code=\"AMOUNT_OVERFLOW\"}"),
        "{metrics}"
    );
    ready(&app).await;
    let seen = gateway.seen();
    assert_eq!(seen.len(), 1, "one bill, one request: {seen:?}");

    // run_billing answers for the sender's own work only.
    let r = app.call("evil", json!({"command": "run_billing", "limit": 1000})).await;
    assert_eq!(r["run"]["debits_requested"], 0, "{r}");
    let r = app.call("evil", json!({"command": "run_billing", "limit": 1001})).await;
    assert_eq!(r["error_code"], "INVALID_FIELD", "{r}");

    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_panic_in_a_role_is_caught_and_the_role_goes_on() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = spawn(clock.clone(), |s| s.faults.panic_on_merchant = "crasher".into()).await;
    catalog(&mut app, "good", "2").await;
    let good = execution(&mut app, "good", "p").await;

    // A command whose handling panics: answered and dead-lettered INTERNAL_ERROR.
    let r = app
        .call("crasher", json!({"command": "create_customer", "customer_id": "c1"}))
        .await;
    assert_eq!(r["error_code"], "INTERNAL_ERROR", "{r}");
    refused(&app, "INTERNAL_ERROR").await;
    // Usage whose counting panics: dead-lettered, and the others counted.
    app.publish_usage(
        "crasher",
        &json!({"event_id": "x", "billing_execution_info_id": "e", "metric_id": "units"}),
    )
    .await;
    refused(&app, "INTERNAL_ERROR").await;
    app.publish_usage("good", &event("g1", &good, json!(4))).await;
    app.wait_for_count("good usage counted", "SELECT count(*) FROM usage_events", 1)
        .await;
    // Every role still answers, and the panics were counted.
    let r = app
        .call("good", json!({"command": "get", "billing_execution_info_id": good}))
        .await;
    assert_eq!(r["plan_info"]["metric_info"][0]["used_till_now"], json!(4), "{r}");
    ready(&app).await;
    let (_, metrics) = app.http_get("/metrics").await;
    for role in ["provisioning", "usage"] {
        assert!(
            metrics.contains(&format!("billing_role_panics_total{{role=\"{role}\"}} 1")),
            "{role}: {metrics}"
        );
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_merchant_with_a_backlog_never_starves_another() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = spawn(clock.clone(), |s| s.scheduler.batch_size = 2).await;
    for merchant in ["big", "small"] {
        for command in [
            json!({"command": "create_plan", "plan_id": "p", "plan_name": "P", "plan_type": "POST_DEBIT",
                   "plan_model": "FIXED", "plan_interval": "MONTHLY", "plan_currency": "INR", "plan_amount": 100,
                   "plan_action_on_failure": "SKIP"}),
            json!({"command": "create_customer", "customer_id": "c1"}),
        ] {
            let r = app.call(merchant, command).await;
            assert_eq!(r["success"], true, "{r}");
        }
    }
    for _ in 0..12 {
        let r = app
            .call("big", json!({"command": "create", "plan_id": "p", "customer_id": "c1"}))
            .await;
        assert_eq!(r["success"], true, "{r}");
    }
    // The small merchant's execution is the youngest of all: by age alone
    // it would be billed last.
    clock.advance(Duration::minutes(1));
    let small = execution(&mut app, "small", "p").await;
    clock.set(at(2026, 2, 1, 0, 5));
    app.wait_for_count("13 bills", "SELECT count(*) FROM bills", 13).await;
    let order: Vec<String> =
        sqlx::query_scalar("SELECT execution_id FROM outbox WHERE event_name = 'BILLING_TXN_SCHEDULED' ORDER BY seq")
            .fetch_all(&app.db)
            .await
            .expect("order");
    let place = order.iter().position(|e| e == &small).expect("small billed");
    assert!(place < 2, "billed at place {place} of {}", order.len());
    app.teardown().await;
}

#[tokio::test]
async fn racing_creates_with_one_reference_make_one_execution() {
    let mut app = spawn(ManualClock::new(at(2026, 1, 1, 0, 0)), |_| {}).await;
    catalog(&mut app, "m1", "1").await;
    let peer = app.spawn_peer(Arc::new(ManualClock::new(at(2026, 1, 1, 0, 0)))).await;
    let body = serde_json::to_vec(
        &json!({"command": "create", "plan_id": "p", "customer_id": "c1", "merchant_ref_id": "same"}),
    )
    .expect("json");
    let mut correlations = Vec::new();
    for i in 0..12 {
        let correlation = format!("race-{i}");
        let props = with_merchant(BasicProperties::default(), "m1")
            .with_message_id(ShortString::from(correlation.as_str()))
            .with_correlation_id(ShortString::from(correlation.as_str()))
            .with_reply_to(ShortString::from(app.reply_queue_name()))
            .with_content_type(ShortString::from("application/json"));
        app.publish_raw("provisioning.race", &body, props).await;
        correlations.push(correlation);
    }
    let mut ids = Vec::new();
    for correlation in &correlations {
        let r = app.reply(correlation).await;
        assert_eq!(r["success"], true, "{r}");
        ids.push(r["billing_execution_info_id"].as_str().expect("id").to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM executions WHERE merchant_ref_id = 'same'")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(count, 1);
    peer.stop().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_huge_property_value_is_refused_alone_and_the_batch_counts() {
    let mut app = spawn(ManualClock::new(at(2026, 1, 1, 0, 0)), |_| {}).await;
    for command in [
        json!({"command": "create_metric", "metric_id": "users", "name": "Users", "aggregation_type": "UNIQUE_COUNT",
               "aggregation_field": "user", "pricing_type": "FIXED", "pricing_model": [{"unit_amount": 1}], "currency": "INR"}),
        json!({"command": "create_plan", "plan_id": "p", "plan_name": "P", "plan_type": "POST_DEBIT",
               "plan_model": "USAGE_BASED", "plan_interval": "MONTHLY", "plan_currency": "INR",
               "plan_action_on_failure": "SKIP", "metric_ids": ["users"]}),
        json!({"command": "create_customer", "customer_id": "c1"}),
    ] {
        let r = app.call("m1", command).await;
        assert_eq!(r["success"], true, "{r}");
    }
    let id = execution(&mut app, "m1", "p").await;
    let user = |event: &str, value: String| json!({"event_id": event, "billing_execution_info_id": id, "metric_id": "users", "properties": {"user": value}});
    let batch =
        json!({"events": [user("u1", "alice".into()), user("u2", "u".repeat(300_000)), user("u3", "bob".into())]});
    app.publish_usage("m1", &batch).await;
    let message = refused(&app, "INVALID_FIELD").await;
    assert!(message.starts_with("properties.user must be at most 256"), "{message}");
    app.wait_for_count("the other two counted", "SELECT count(*) FROM usage_events", 2)
        .await;
    let r = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(r["plan_info"]["metric_info"][0]["used_till_now"], json!(2), "{r}");
    app.teardown().await;
}
