//! Progressive billing (`usage_thresholds`) and usage alerts
//! (`usage_alerts`, `set_alerts`), over the bus with an injected clock. The
//! interim bills come from the scheduler, woken by the usage that reached
//! a threshold (its tick is an hour in tests).

use billing_worker::clock::ManualClock;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually};
use crate::seed::{at, dec, plan, run_billing};

fn d(v: &Value) -> Decimal {
    v.to_string().trim_matches('"').parse().expect("decimal")
}

/// A SUM metric `gb` at 1 INR a unit, on a HYBRID plan of 100 a month in
/// arrears with `fields` over that.
async fn metered_plan(app: &mut TestApp, fields: Value) {
    let r = app
        .call(
            "m1",
            json!({"command": "create_metric", "metric_id": "gb", "name": "GB", "aggregation_type": "SUM",
            "pricing_type": "FIXED", "pricing_model": [{"unit_amount": 1}], "currency": "INR"}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    let mut all = json!({"plan_model": "HYBRID", "metric_ids": ["gb"]});
    for (k, v) in fields.as_object().expect("fields") {
        all[k] = v.clone();
    }
    plan(app, all).await;
}

async fn send(app: &TestApp, execution: &str, first_id: usize, values: &[i64], clock: &ManualClock) {
    let now = billing_worker::clock::Clock::now(clock);
    let events: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"event_id": format!("e{}", first_id + i), "billing_execution_info_id": execution,
                "metric_id": "gb", "value": v, "timestamp": now.to_rfc3339()})
        })
        .collect();
    app.publish_usage("m1", &json!({ "events": events })).await;
}

async fn counted(app: &TestApp, n: i64) {
    let db = app.db.clone();
    eventually(&format!("{n} events counted"), || {
        let db = db.clone();
        async move {
            let c: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
                .fetch_one(&db)
                .await
                .ok()?;
            (c == n).then_some(())
        }
    })
    .await;
}

async fn interim_bills(app: &mut TestApp, execution: &str, n: usize) -> Vec<Value> {
    let db = app.db.clone();
    let execution_id = execution.to_string();
    eventually(&format!("{n} interim bills"), || {
        let (db, id) = (db.clone(), execution_id.clone());
        async move {
            let c: i64 =
                sqlx::query_scalar("SELECT count(*) FROM bills WHERE execution_id = $1 AND kind = 'PROGRESSIVE'")
                    .bind(&id)
                    .fetch_one(&db)
                    .await
                    .ok()?;
            (c as usize == n).then_some(())
        }
    })
    .await;
    let r = app
        .call(
            "m1",
            json!({"command": "list_bills", "billing_execution_info_id": execution}),
        )
        .await;
    let mut bills: Vec<Value> = r["bills"]
        .as_array()
        .expect("bills")
        .iter()
        .filter(|b| b["kind"] == "PROGRESSIVE")
        .cloned()
        .collect();
    bills.reverse();
    bills
}

fn lines(bill: &Value) -> Vec<(String, Decimal)> {
    bill["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| (l["kind"].as_str().expect("kind").to_string(), d(&l["amount"])))
        .collect()
}

#[tokio::test]
async fn interim_bills_come_at_each_threshold_and_the_closing_bill_subtracts_them() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    // Fixed at 100 and 250, then every 100 above: 350, 450, ...
    metered_plan(
        &mut app,
        json!({"usage_thresholds": [{"amount": 250}, {"amount": 100, "recurring": true}, {"amount": 100}]}),
    )
    .await;
    let id = app
        .create_execution("m1", json!({"command": "create", "plan_id": "p", "customer_id": "c1"}))
        .await;
    clock.set(at(2026, 2, 5, 0, 0));

    // Crossed inside one batch: twelve events of 10.
    send(&app, &id, 0, &[10; 12], &clock).await;
    let bills = interim_bills(&mut app, &id, 1).await;
    assert_eq!(d(&bills[0]["total"]), dec("120"), "{}", bills[0]);
    assert_eq!(d(&bills[0]["threshold"]), dec("100"));
    assert_eq!(bills[0]["status"], "SCHEDULED");
    assert_eq!(bills[0]["period_start"], "2026-01-31T00:00:00Z");

    // Below the next threshold: no bill. Then across batches to 270.
    send(&app, &id, 100, &[50], &clock).await;
    counted(&app, 13).await;
    send(&app, &id, 200, &[100], &clock).await;
    let bills = interim_bills(&mut app, &id, 2).await;
    assert_eq!(d(&bills[1]["total"]), dec("150"), "{}", bills[1]);
    assert_eq!(d(&bills[1]["threshold"]), dec("250"));
    assert_eq!(
        lines(&bills[1]),
        [
            ("USAGE".to_string(), dec("270")),
            ("PROGRESSIVE_BILLED".to_string(), dec("-120"))
        ]
    );

    // One event crosses two thresholds (350 and 450): one bill, for both.
    send(&app, &id, 300, &[200], &clock).await;
    let bills = interim_bills(&mut app, &id, 3).await;
    assert_eq!(d(&bills[2]["total"]), dec("200"), "{}", bills[2]);
    assert_eq!(d(&bills[2]["threshold"]), dec("450"));
    counted(&app, 15).await;
    let webhooks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE execution_id = $1 AND event_name = 'BILLING_TXN_SCHEDULED'",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .expect("webhooks");
    assert_eq!(webhooks, 3, "each interim bill is announced like any bill");

    // The closing bill: the plan amount and the period's usage, less what
    // the interim bills billed.
    clock.set(at(2026, 2, 28, 0, 0));
    run_billing(&mut app).await;
    let all = app
        .call("m1", json!({"command": "list_bills", "billing_execution_info_id": id}))
        .await;
    let closing = &all["bills"][0];
    assert_eq!(closing["kind"], "PERIOD", "{closing}");
    assert_eq!(
        lines(closing),
        [
            ("PLAN_AMOUNT".to_string(), dec("100")),
            ("USAGE".to_string(), dec("470")),
            ("PROGRESSIVE_BILLED".to_string(), dec("-470")),
        ]
    );
    assert_eq!(d(&closing["total"]), dec("100"));

    // A late event of February counts in March, which starts from zero.
    clock.set(at(2026, 3, 1, 0, 0));
    app.publish_usage(
        "m1",
        &json!({"event_id": "late", "billing_execution_info_id": id, "metric_id": "gb", "value": 90,
            "timestamp": at(2026, 2, 10, 0, 0).to_rfc3339()}),
    )
    .await;
    counted(&app, 16).await;
    send(&app, &id, 400, &[10], &clock).await;
    let bills = interim_bills(&mut app, &id, 4).await;
    assert_eq!(bills[3]["period_start"], "2026-02-28T00:00:00Z");
    assert_eq!(d(&bills[3]["total"]), dec("100"), "{}", bills[3]);
    let metrics = app.http_get("/metrics").await.1;
    assert!(metrics.contains("billing_interim_bills_total 4"), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn an_interim_bill_uses_credit_first() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    metered_plan(&mut app, json!({"usage_thresholds": [{"amount": 50}]})).await;
    let id = app
        .create_execution(
            "m1",
            json!({"command": "create", "plan_id": "p", "customer_id": "c1", "amount": 30}),
        )
        .await;
    clock.set(at(2026, 2, 1, 0, 0));
    send(&app, &id, 0, &[60], &clock).await;
    let bills = interim_bills(&mut app, &id, 1).await;
    assert_eq!(
        (
            d(&bills[0]["total"]),
            d(&bills[0]["credit_applied"]),
            d(&bills[0]["amount_due"])
        ),
        (dec("60"), dec("30"), dec("30"))
    );
    app.teardown().await;
}

#[tokio::test]
async fn usage_alerts_are_announced_once_per_amount_per_period() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    metered_plan(&mut app, json!({})).await;
    let created = app
        .call(
            "m1",
            json!({"command": "create", "plan_id": "p", "customer_id": "c1", "usage_alerts": [300, 50]}),
        )
        .await;
    assert_eq!(created["usage_alerts"], json!([50, 300]), "{created}");
    let id = created["billing_execution_info_id"].as_str().expect("id").to_string();
    clock.set(at(2026, 2, 1, 0, 0));
    send(&app, &id, 0, &[60], &clock).await;
    counted(&app, 1).await;
    send(&app, &id, 10, &[10], &clock).await;
    counted(&app, 2).await;
    // Both alerts at once: 360 passes 300 (50 was announced already).
    send(&app, &id, 20, &[290], &clock).await;
    counted(&app, 3).await;
    let alerts = |app: &TestApp| {
        let db = app.db.clone();
        let id = id.clone();
        async move {
            let rows: Vec<Value> = sqlx::query_scalar(
                "SELECT payload::jsonb FROM outbox WHERE execution_id = $1
                 AND event_name = 'BILLING_EXECUTION_USAGE_ALERT' ORDER BY seq",
            )
            .bind(&id)
            .fetch_all(&db)
            .await
            .expect("alerts");
            rows.iter()
                .map(|p| {
                    (
                        d(&p["content"]["usage"]["threshold"]),
                        d(&p["content"]["usage"]["used_amount"]),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(alerts(&app).await, [(dec("50"), dec("60")), (dec("300"), dec("360"))]);

    // set_alerts replaces them; an amount reached already is announced at
    // the next usage.
    let r = app
        .call(
            "m1",
            json!({"command": "set_alerts", "billing_execution_info_id": id, "usage_alerts": [400, 300]}),
        )
        .await;
    assert_eq!(r["usage_alerts"], json!([300, 400]), "{r}");
    let bad = app
        .call(
            "m1",
            json!({"command": "set_alerts", "billing_execution_info_id": id, "usage_alerts": [0]}),
        )
        .await;
    assert_eq!(bad["error_code"], "INVALID_FIELD", "{bad}");
    send(&app, &id, 30, &[50], &clock).await;
    counted(&app, 4).await;
    assert_eq!(alerts(&app).await.len(), 3);
    assert_eq!(alerts(&app).await[2], (dec("400"), dec("410")));

    // A new period announces them again.
    clock.set(at(2026, 2, 28, 0, 0));
    run_billing(&mut app).await;
    send(&app, &id, 40, &[301], &clock).await;
    counted(&app, 5).await;
    assert_eq!(alerts(&app).await.len(), 4);
    app.teardown().await;
}

#[tokio::test]
async fn thresholds_need_a_plan_that_bills_usage_by_period() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    for (fields, field) in [
        (
            json!({"plan_model": "FIXED", "usage_thresholds": [{"amount": 10}]}),
            "usage_thresholds",
        ),
        (
            json!({"plan_model": "USAGE_BASED", "usage_thresholds": [{"amount": 0}]}),
            "usage_thresholds[0].amount",
        ),
        (
            json!({"plan_model": "USAGE_BASED", "usage_thresholds": [{"amount": 1, "recurring": true}, {"amount": 2, "recurring": true}]}),
            "usage_thresholds",
        ),
        (
            json!({"plan_model": "USAGE_BASED", "plan_interval": "ASPRESENTED", "usage_thresholds": [{"amount": 10}]}),
            "usage_thresholds",
        ),
    ] {
        let mut command = json!({"command": "create_plan", "plan_id": "p", "plan_name": "Plan", "plan_type": "POST_DEBIT",
            "plan_interval": "MONTHLY", "plan_currency": "INR"});
        for (k, v) in fields.as_object().expect("fields") {
            command[k] = v.clone();
        }
        let r = app.call("m1", command).await;
        assert_eq!(r["error_code"], "INVALID_FIELD", "{r}");
        assert!(r["error_message"].as_str().expect("message").starts_with(field), "{r}");
    }
    app.teardown().await;
}

#[tokio::test]
async fn interim_bills_above_the_period_s_usage_come_back_as_credit() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    metered_plan(
        &mut app,
        json!({"plan_model": "USAGE_BASED", "plan_amount": 0, "usage_thresholds": [{"amount": 100}]}),
    )
    .await;
    let id = app
        .create_execution("m1", json!({"command": "create", "plan_id": "p", "customer_id": "c1"}))
        .await;
    clock.set(at(2026, 2, 1, 0, 0));
    send(&app, &id, 0, &[120], &clock).await;
    interim_bills(&mut app, &id, 1).await;
    // Usage falls after the interim bill: the period comes to 20.
    send(&app, &id, 10, &[-100], &clock).await;
    counted(&app, 2).await;
    clock.set(at(2026, 2, 28, 0, 0));
    run_billing(&mut app).await;
    let all = app
        .call("m1", json!({"command": "list_bills", "billing_execution_info_id": id}))
        .await;
    let closing = &all["bills"][0];
    assert_eq!(closing["kind"], "PERIOD", "{all}");
    assert_eq!(
        lines(closing),
        [
            ("USAGE".to_string(), dec("20")),
            ("PROGRESSIVE_BILLED".to_string(), dec("-20"))
        ]
    );
    assert_eq!(d(&closing["total"]), dec("0"));
    // The other 100 the interim bill billed is the customer's credit.
    let credit = app
        .call("m1", json!({"command": "list_credit", "billing_execution_info_id": id}))
        .await;
    assert_eq!(d(&credit["balance"]), dec("100"), "{credit}");
    assert_eq!(d(&credit["grants"][0]["remaining"]), dec("100"));
    let given: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM outbox WHERE execution_id = $1 AND event_name = 'BILLING_EXECUTION_CREDIT_EVENT'",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .expect("one credit webhook");
    assert_eq!(given["content"]["credit"]["reason"], "INTERIM_BILLS_ABOVE_PERIOD_USAGE");
    assert_eq!(given["content"]["credit"]["grant_id"], credit["grants"][0]["grant_id"]);
    app.teardown().await;
}
