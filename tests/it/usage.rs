//! Metered usage over the bus: every aggregation, exactly-once counting
//! across batches, redeliveries, crashes and competing workers, dead letters
//! event by event, live usage and threshold webhooks.

use std::sync::Arc;

use billing_worker::clock::SystemClock;
use chrono::{Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// A plan with one metric of each aggregation, and an active execution on it.
async fn metered(app: &mut TestApp, merchant: &str, credit: &str, max_amount: Option<u32>) -> String {
    let metric = |id: &str, aggregation: &str, price: &str, field: Option<&str>| {
        json!({"command": "create_metric", "metric_id": id, "name": id, "aggregation_type": aggregation,
               "aggregation_field": field, "pricing_type": "FIXED",
               "pricing_model": [{"unit_amount": price, "up_to": "INFINITY"}], "currency": "INR"})
    };
    for m in [
        metric("storage", "SUM", "2.5", None),
        metric("api_calls", "COUNT", "0.01", None),
        metric("peak", "MAX", "1", None),
        metric("users", "UNIQUE_COUNT", "3", Some("user_id")),
        metric("seats", "LATEST", "100", None),
    ] {
        let r = app.call(merchant, m).await;
        assert_eq!(r["success"], true, "{r}");
    }
    let mut plan = json!({"command": "create_plan", "plan_id": "metered", "plan_name": "Metered", "plan_type": "POST_DEBIT",
        "plan_model": "USAGE_BASED", "plan_interval": "MONTHLY", "plan_currency": "INR",
        "metric_ids": ["storage", "api_calls", "peak", "users", "seats"]});
    if let Some(max) = max_amount {
        plan["max_amount"] = json!(max);
    }
    assert_eq!(app.call(merchant, plan).await["success"], true);
    assert_eq!(
        app.call(merchant, json!({"command": "create_customer", "customer_id": "c1"}))
            .await["success"],
        true
    );
    let r = app
        .call(
            merchant,
            json!({"command": "create", "plan_id": "metered", "customer_id": "c1", "amount": credit}),
        )
        .await;
    r["billing_execution_info_id"]
        .as_str()
        .expect("execution id")
        .to_string()
}

fn event(id: &str, execution: &str, metric: &str, value: Value, seconds_ago: i64) -> Value {
    json!({"event_id": id, "billing_execution_info_id": execution, "metric_id": metric, "value": value,
           "timestamp": (Utc::now() - Duration::seconds(seconds_ago)).to_rfc3339()})
}

fn used(doc: &Value, metric: &str) -> (Value, Value) {
    let m = doc["plan_info"]["metric_info"]
        .as_array()
        .and_then(|list| list.iter().find(|m| m["metric_id"] == metric))
        .unwrap_or_else(|| panic!("{metric} in {doc}"));
    (m["used_till_now"].clone(), m["used_amount"].clone())
}

#[tokio::test]
async fn every_aggregation_with_interleaved_and_out_of_order_events() {
    let mut app = TestApp::spawn().await;
    let id = metered(&mut app, "m1", "0", None).await;
    let with_user = |mut e: Value, user: &str| {
        e["properties"] = json!({"user_id": user});
        e
    };
    app.publish_usage(
        "m1",
        &json!({"events": [
            event("s1", &id, "storage", json!(5), 60),
            event("a1", &id, "api_calls", json!(123), 50),
            event("l2", &id, "seats", json!(8), 30),
            with_user(event("u1", &id, "users", json!(1), 40), "alice"),
            event("p1", &id, "peak", json!(3), 45),
        ]}),
    )
    .await;
    app.publish_usage("m1", &event("s2", &id, "storage", json!("-2"), 20))
        .await;
    app.publish_usage("m1", &event("l3", &id, "seats", json!(6), 5)).await;
    app.publish_usage(
        "m1",
        &json!({"events": [
            with_user(event("u2", &id, "users", json!(1), 35), "bob"),
            event("p2", &id, "peak", json!("9"), 44),
            event("a2", &id, "api_calls", json!(1), 10),
            event("l1", &id, "seats", json!(4), 10),
            with_user(event("u3", &id, "users", json!(1), 33), "alice"),
            event("s3", &id, "storage", json!(10.5), 15),
            event("a3", &id, "api_calls", Value::Null, 9),
            event("p3", &id, "peak", json!(7), 8),
            with_user(event("u4", &id, "users", json!(1), 2), "carol"),
            event("a4", &id, "api_calls", json!(0), 1),
        ]}),
    )
    .await;
    app.wait_for_count("all 17 events counted", "SELECT count(*) FROM usage_events", 17)
        .await;

    let doc = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(used(&doc, "storage"), (json!(13.5), json!(33.75)));
    assert_eq!(used(&doc, "api_calls"), (json!(4), json!(0.04)));
    assert_eq!(used(&doc, "peak"), (json!(9), json!(9)));
    assert_eq!(used(&doc, "users"), (json!(3), json!(9)));
    assert_eq!(
        used(&doc, "seats"),
        (json!(6), json!(600)),
        "LATEST follows the timestamp, not arrival"
    );
    let listed = app.call("m1", json!({"command": "list", "customer_id": "c1"})).await;
    assert_eq!(
        used(&listed["billing_execution_info"][0], "storage"),
        (json!(13.5), json!(33.75))
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_repeated_event_id_counts_once_in_a_batch_across_batches_and_late() {
    let mut app = TestApp::spawn().await;
    let id = metered(&mut app, "m1", "0", None).await;
    let e = |n: &str| event(n, &id, "storage", json!(1), 5);
    app.publish_usage("m1", &json!({"events": [e("x1"), e("x1"), e("x2")]}))
        .await;
    app.publish_usage("m1", &json!({"events": [e("x2"), e("x3")]})).await;
    app.publish_usage("m1", &e("x1")).await;
    app.wait_for_count("three distinct events", "SELECT count(*) FROM usage_events", 3)
        .await;
    // The worker has seen every message when the duplicate counter says so.
    crate::helpers::eventually("duplicates seen", || {
        let ctx = app.ctx.clone();
        async move {
            ctx.metrics
                .render()
                .contains("billing_usage_events_duplicate_total 3")
                .then_some(())
        }
    })
    .await;
    // Redelivered much later: still counted once.
    app.publish_usage("m1", &e("x3")).await;
    crate::helpers::eventually("late repeat seen", || {
        let ctx = app.ctx.clone();
        async move {
            ctx.metrics
                .render()
                .contains("billing_usage_events_duplicate_total 4")
                .then_some(())
        }
    })
    .await;
    let doc = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(used(&doc, "storage").0, json!(3));
    // Even after the execution is deactivated, a repeat is a repeat, not an error.
    let r = app.set_status(&id, "INACTIVE").await;
    assert_eq!(r["status"], "INACTIVE");
    app.publish_usage("m1", &e("x2")).await;
    crate::helpers::eventually("repeat after deactivation seen", || {
        let ctx = app.ctx.clone();
        async move {
            ctx.metrics
                .render()
                .contains("billing_usage_events_duplicate_total 5")
                .then_some(())
        }
    })
    .await;
    assert_eq!(app.queue_depth(&app.names.dead.clone()).await, 0);
    app.teardown().await;
}

#[tokio::test]
async fn every_dead_letter_code_and_the_valid_rest_still_counts() {
    let mut app = TestApp::spawn().await;
    let id = metered(&mut app, "m1", "0", None).await;
    let other = metered(&mut app, "m2", "0", None).await;
    let inactive = app
        .create_execution(
            "m1",
            json!({"command": "create", "plan_id": "metered", "customer_id": "c1", "status": "INACTIVE"}),
        )
        .await;
    let future = json!({"event_id": "bad-future", "billing_execution_info_id": id, "metric_id": "storage",
                        "timestamp": (Utc::now() + Duration::minutes(10)).to_rfc3339()});
    let cases = vec![
        (
            event("bad-unknown", "0000", "storage", json!(1), 1),
            "EXECUTION_NOT_FOUND",
            "billing_execution_info_id",
        ),
        (
            event("bad-other", &other, "storage", json!(1), 1),
            "EXECUTION_NOT_FOUND",
            "billing_execution_info_id",
        ),
        (
            event("bad-inactive", &inactive, "storage", json!(1), 1),
            "EXECUTION_NOT_ACTIVE",
            "billing_execution_info_id",
        ),
        (
            event("bad-metric", &id, "bandwidth", json!(1), 1),
            "METRIC_NOT_IN_PLAN",
            "metric_id",
        ),
        (future, "TIMESTAMP_IN_FUTURE", "timestamp"),
        (
            json!({"billing_execution_info_id": id, "metric_id": "storage"}),
            "INVALID_FIELD",
            "event_id",
        ),
        (
            event("bad-value", &id, "storage", json!("lots"), 1),
            "INVALID_FIELD",
            "value",
        ),
        (
            event("bad-negative", &id, "peak", json!(-1), 1),
            "INVALID_FIELD",
            "value",
        ),
        (
            event("bad-unique", &id, "users", json!(1), 1),
            "INVALID_FIELD",
            "properties.user_id",
        ),
    ];
    let mut events: Vec<Value> = cases.iter().map(|c| c.0.clone()).collect();
    events.insert(3, event("good-1", &id, "storage", json!(2), 1));
    events.push(event("good-2", &id, "storage", json!(3), 1));
    app.publish_usage("m1", &json!({ "events": events })).await;

    for (body, code, field) in &cases {
        let dead = app.next_dead_letter().await;
        assert_eq!(&dead.code, code, "{body}");
        assert!(
            dead.message.starts_with(field),
            "{code}: '{}' should name {field}",
            dead.message
        );
        assert_eq!(dead.routing_key, "usage.test");
        let sent: Value = serde_json::from_slice(&dead.body).expect("the event alone");
        assert_eq!(&sent, body, "each bad event is dead-lettered on its own");
    }
    app.wait_for_count("the valid events count", "SELECT count(*) FROM usage_events", 2)
        .await;
    let doc = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(used(&doc, "storage").0, json!(5));

    // Whole-message problems dead-letter the message.
    app.publish_raw(
        "usage.test",
        b"{oops",
        crate::helpers::with_merchant(Default::default(), "m1"),
    )
    .await;
    assert_eq!(app.next_dead_letter().await.code, "INVALID_JSON");
    app.publish_raw(
        "usage.test",
        &serde_json::to_vec(&event("nm", &id, "storage", json!(1), 1)).expect("json"),
        Default::default(),
    )
    .await;
    assert_eq!(app.next_dead_letter().await.code, "MISSING_MERCHANT");
    let too_many: Vec<Value> = (0..1001)
        .map(|i| event(&format!("big-{i}"), &id, "storage", json!(1), 1))
        .collect();
    app.publish_usage("m1", &json!({ "events": too_many })).await;
    let dead = app.next_dead_letter().await;
    assert_eq!(
        (dead.code.as_str(), dead.message.starts_with("events")),
        ("INVALID_FIELD", true)
    );
    app.teardown().await;
}

/// Publishes `n` events of value 1 as batches of `per_message`.
async fn publish_load(app: &TestApp, id: &str, n: usize, per_message: usize, prefix: &str) {
    let events: Vec<Value> = (0..n)
        .map(|i| event(&format!("{prefix}-{i}"), id, "storage", json!(1), 1))
        .collect();
    for chunk in events.chunks(per_message) {
        app.publish_usage("m1", &json!({ "events": chunk })).await;
    }
}

#[tokio::test]
async fn a_worker_killed_mid_stream_leaves_exact_totals() {
    let mut app = TestApp::spawn().await;
    let id = metered(&mut app, "m1", "0", None).await;
    publish_load(&app, &id, 6000, 20, "k").await;
    crate::helpers::eventually("some counted", || {
        let db = app.db.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
                .fetch_one(&db)
                .await
                .ok()?;
            (n > 0).then_some(())
        }
    })
    .await;
    app.kill_worker().await;
    // Whatever was in flight is redelivered to the next worker and counted once.
    let peer = app.spawn_peer(Arc::new(SystemClock)).await;
    app.wait_for_count("every event counted once", "SELECT count(*) FROM usage_events", 6000)
        .await;
    app.wait_for_count(
        "aggregate equals the events",
        "SELECT COALESCE(sum(sum), 0)::bigint FROM usage_aggregates WHERE metric_id = 'storage'",
        6000,
    )
    .await;
    assert_eq!(app.queue_depth(&app.names.usage.clone()).await, 0);
    peer.stop().await;
    app.teardown().await;
}

#[tokio::test]
async fn two_workers_on_one_queue_count_exactly() {
    let mut app = TestApp::spawn().await;
    let id = metered(&mut app, "m1", "0", None).await;
    let peer = app.spawn_peer(Arc::new(SystemClock)).await;
    publish_load(&app, &id, 4000, 50, "a").await;
    // The same events again: redeliveries and retries from upstream.
    publish_load(&app, &id, 4000, 40, "a").await;
    publish_load(&app, &id, 1000, 1, "b").await;
    app.wait_for_count("distinct events", "SELECT count(*) FROM usage_events", 5000)
        .await;
    app.wait_for_count(
        "aggregate equals the distinct events",
        "SELECT COALESCE(sum(sum), 0)::bigint FROM usage_aggregates WHERE metric_id = 'storage'",
        5000,
    )
    .await;
    let count: i64 = sqlx::query_scalar("SELECT sum(count)::bigint FROM usage_aggregates")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(count, 5000);
    peer.stop().await;
    app.teardown().await;
}

#[tokio::test]
async fn thresholds_are_announced_once_per_period() {
    let mut app = TestApp::spawn().await;
    let id = metered(&mut app, "m1", "10", Some(20)).await;
    // Drain the provisioning webhooks.
    for _ in 0..2 {
        app.next_webhook().await;
    }
    // 3 GB at 2.5 = 7.5: under both.
    app.publish_usage("m1", &event("t1", &id, "storage", json!(3), 5)).await;
    // +2 GB = 12.5: over the credit of 10.
    app.publish_usage("m1", &event("t2", &id, "storage", json!(2), 4)).await;
    let (name, _, doc) = app.next_webhook().await;
    assert_eq!(name, "BILLING_EXECUTION_CREDITS_DEPLETED");
    assert_eq!(doc["content"]["usage"]["used_amount"], json!(12.5));
    // +4 GB = 22.5: over max_amount 20; and still over credit (no repeat).
    app.publish_usage("m1", &event("t3", &id, "storage", json!(4), 3)).await;
    app.publish_usage("m1", &event("t4", &id, "storage", json!(1), 2)).await;
    let (name, _, doc) = app.next_webhook().await;
    assert_eq!(name, "BILLING_EXECUTION_AMOUNT_BREACHED_LIMIT");
    assert_eq!(doc["content"]["usage"]["max_amount"], json!(20));
    app.wait_for_count("all counted", "SELECT count(*) FROM usage_events", 4)
        .await;
    let announced: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_thresholds")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(announced, 2);
    let webhooks: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_name LIKE 'BILLING_EXECUTION_%D%_LIMIT' OR event_name = 'BILLING_EXECUTION_CREDITS_DEPLETED'")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(webhooks, 2);
    let total: Decimal = sqlx::query_scalar("SELECT sum FROM usage_aggregates WHERE metric_id = 'storage'")
        .fetch_one(&app.db)
        .await
        .expect("sum");
    assert_eq!(total, Decimal::from(10));
    app.teardown().await;
}

#[tokio::test]
async fn usage_of_a_billed_period_counts_in_the_open_one() {
    let mut app = TestApp::spawn().await;
    let id = metered(&mut app, "m1", "0", None).await;
    // The execution started 40 days ago and its first month is billed.
    let start = Utc::now() - Duration::days(40);
    let billed_until = start.checked_add_months(chrono::Months::new(1)).expect("date");
    sqlx::query("UPDATE executions SET billing_start_date = $2, billed_until = $3 WHERE id = $1")
        .bind(&id)
        .bind(start)
        .bind(billed_until)
        .execute(&app.db)
        .await
        .expect("age the execution");
    let late = json!({"event_id": "late", "billing_execution_info_id": id, "metric_id": "storage", "value": 2,
                      "timestamp": (start + Duration::days(1)).to_rfc3339()});
    app.publish_usage("m1", &late).await;
    app.publish_usage("m1", &event("fresh", &id, "storage", json!(3), 1))
        .await;
    app.wait_for_count("both counted", "SELECT count(*) FROM usage_events", 2)
        .await;

    let periods: Vec<chrono::DateTime<Utc>> = sqlx::query_scalar("SELECT DISTINCT period_start FROM usage_events")
        .fetch_all(&app.db)
        .await
        .expect("periods");
    assert_eq!(periods.len(), 1, "both land in one period");
    assert_eq!(
        periods[0].timestamp_micros(),
        billed_until.timestamp_micros(),
        "the open period, never the billed one"
    );
    let doc = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(used(&doc, "storage"), (json!(5), json!(12.5)));
    app.teardown().await;
}

#[tokio::test]
async fn live_usage_is_priced_with_the_customers_tiers() {
    let mut app = TestApp::spawn().await;
    crate::helpers::seed_catalog(&mut app, "m1").await;
    let plan = json!({"command": "create_plan", "plan_id": "var", "plan_name": "Variable", "plan_type": "POST_DEBIT",
        "plan_model": "VARIABLE", "plan_interval": "MONTHLY", "plan_currency": "INR", "metric_ids": ["storage"]});
    assert_eq!(app.call("m1", plan).await["success"], true);
    let created = app.call("m1", json!({"command": "create", "plan_id": "var", "customer_id": "cth_1",
        "metric_info": [{"metric_id": "storage", "pricing_type": "TIERED", "free_units": 10,
            "pricing_model": [{"unit_amount": 2, "up_to": 100, "flat_fee": 5}, {"unit_amount": "0.5", "up_to": "INFINITY"}]}]})).await;
    let id = created["billing_execution_info_id"].as_str().expect("id").to_string();
    app.publish_usage(
        "m1",
        &json!({"events": [
            event("v1", &id, "storage", json!(100), 3),
            event("v2", &id, "storage", json!(60), 2),
        ]}),
    )
    .await;
    app.wait_for_count("counted", "SELECT count(*) FROM usage_events", 2)
        .await;
    let doc = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    // 160 used, 10 free: 100 x 2 + 5 flat fee in the first tier, 50 x 0.5 in the second.
    assert_eq!(used(&doc, "storage"), (json!(160), json!(230)));
    app.teardown().await;
}
