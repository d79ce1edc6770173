//! The billing engine, driven by an injected clock and a fake gateway on the
//! bus: periods and catch-up, bills and credit, notices, debits, retries,
//! actions on failure, results that repeat or come late, competing
//! schedulers, leases, explicit schedules, present and plan changes.

use std::sync::Arc;

use billing_worker::clock::ManualClock;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::gateway::{Answer, Gateway};
use crate::helpers::{TestApp, eventually};
use crate::seed::{at, dec, plan, run_billing};

/// A COUNT metric `calls` at `price` INR per call.
async fn calls_metric(app: &mut TestApp, price: u32) {
    let r = app
        .call(
            "m1",
            json!({"command": "create_metric", "metric_id": "calls", "name": "Calls", "aggregation_type": "COUNT",
            "pricing_type": "FIXED", "pricing_model": [{"unit_amount": price}], "currency": "INR"}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
}

async fn execution(app: &mut TestApp, fields: Value) -> String {
    let mut command = json!({"command": "create", "plan_id": "p", "customer_id": "c1"});
    for (k, v) in fields.as_object().expect("fields") {
        command[k] = v.clone();
    }
    let r = app.call("m1", command).await;
    assert_eq!(r["success"], true, "{r}");
    r["billing_execution_info_id"].as_str().expect("id").to_string()
}

#[derive(Debug, sqlx::FromRow)]
struct Bill {
    id: String,
    status: String,
    period_start: Option<DateTime<Utc>>,
    period_end: Option<DateTime<Utc>>,
    total: Decimal,
    credit_applied: Decimal,
    amount_due: Decimal,
    attempt: i32,
    next_attempt_at: Option<DateTime<Utc>>,
}

async fn bills(app: &TestApp, execution: &str) -> Vec<Bill> {
    sqlx::query_as(
        "SELECT id, status, period_start, period_end, total, credit_applied, amount_due, attempt, next_attempt_at
         FROM bills WHERE execution_id = $1 ORDER BY created_at, period_start",
    )
    .bind(execution)
    .fetch_all(&app.db)
    .await
    .expect("bills")
}

async fn bill_status(app: &TestApp, bill: &str, status: &str) {
    let (db, bill, status) = (app.db.clone(), bill.to_string(), status.to_string());
    eventually(&format!("bill {bill} {status}"), || {
        let (db, bill, status) = (db.clone(), bill.clone(), status.clone());
        async move {
            let now: String = sqlx::query_scalar("SELECT status FROM bills WHERE id = $1")
                .bind(&bill)
                .fetch_one(&db)
                .await
                .ok()?;
            (now == status).then_some(())
        }
    })
    .await;
}

async fn webhooks_for(app: &TestApp, execution: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT event_name FROM outbox WHERE execution_id = $1 ORDER BY seq")
        .bind(execution)
        .fetch_all(&app.db)
        .await
        .expect("webhooks")
}

#[tokio::test]
async fn month_ends_are_clamped_leap_years_kept_and_missed_periods_caught_up() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    plan(&mut app, json!({})).await;
    let id = execution(&mut app, json!({"amount": 1000})).await;

    // No worker ran for two months: both periods are billed, in order.
    clock.set(at(2026, 4, 1, 0, 0));
    let report = run_billing(&mut app).await;
    assert_eq!(report["bills_issued"], 2, "{report}");
    let b = bills(&app, &id).await;
    let periods: Vec<_> = b.iter().map(|b| (b.period_start, b.period_end)).collect();
    assert_eq!(
        periods,
        [
            (Some(at(2026, 1, 31, 0, 0)), Some(at(2026, 2, 28, 0, 0))),
            (Some(at(2026, 2, 28, 0, 0)), Some(at(2026, 3, 31, 0, 0)))
        ]
    );
    assert!(
        b.iter()
            .all(|b| b.status == "PAID" && b.total == dec("100") && b.credit_applied == dec("100"))
    );
    let (balance, ledger, next): (Decimal, Decimal, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT e.credit_balance, (SELECT sum(CASE kind WHEN 'GRANT' THEN amount ELSE -amount END) FROM credit_ledger WHERE execution_id = e.id), e.next_bill_at
         FROM executions e WHERE id = $1",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .expect("execution");
    assert_eq!((balance, ledger), (dec("800"), dec("800")));
    assert_eq!(next, Some(at(2026, 4, 30, 0, 0)));
    assert_eq!(
        run_billing(&mut app).await["bills_issued"],
        0,
        "nothing is billed twice"
    );
    assert_eq!(
        webhooks_for(&app, &id)
            .await
            .iter()
            .filter(|n| *n == "BILLING_EXECUTION_DEBIT_EVENT")
            .count(),
        2
    );

    // A start on 31 January of a leap year bills through 29 February.
    let leap = execution(
        &mut app,
        json!({"merchant_ref_id": "leap", "amount": 1000, "billing_start_date": "2028-01-31"}),
    )
    .await;
    clock.set(at(2028, 3, 1, 0, 0));
    run_billing(&mut app).await;
    let b = bills(&app, &leap).await;
    assert_eq!(b[0].period_end, Some(at(2028, 2, 29, 0, 0)));
    app.teardown().await;
}

#[tokio::test]
async fn a_hybrid_bill_has_usage_lines_uses_credit_first_and_debits_the_rest() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let gateway = Gateway::start(&app.settings.amqp.prefix, |_| Answer::Success).await;
    app.call("m1", json!({"command": "create_metric", "metric_id": "storage", "name": "Storage", "unit": "GB",
        "aggregation_type": "SUM", "pricing_type": "FIXED", "pricing_model": [{"unit_amount": "2.5"}], "currency": "INR"})).await;
    plan(&mut app, json!({"plan_model": "HYBRID", "metric_ids": ["storage"]})).await;
    let id = execution(&mut app, json!({"amount": 50, "token": "tok_1"})).await;
    clock.set(at(2026, 2, 1, 0, 0));
    app.publish_usage(
        "m1",
        &json!({"event_id": "u1", "billing_execution_info_id": id, "metric_id": "storage",
        "value": "10.001", "timestamp": at(2026, 2, 1, 0, 0).to_rfc3339()}),
    )
    .await;
    app.wait_for_count("usage counted", "SELECT count(*) FROM usage_events", 1)
        .await;

    clock.set(at(2026, 2, 28, 0, 0));
    run_billing(&mut app).await;
    let bill = bills(&app, &id).await.remove(0);
    // 100 plan amount + 10.001 GB x 2.5 = 25.0025, rounded to 25.00; credit 50 first.
    assert_eq!(
        (bill.total, bill.credit_applied, bill.amount_due),
        (dec("125.00"), dec("50"), dec("75.00"))
    );
    assert_eq!(bill.status, "SCHEDULED");
    let lines: Vec<(String, Option<String>, Decimal)> =
        sqlx::query_as("SELECT kind, metric_id, amount FROM bill_lines WHERE bill_id = $1 ORDER BY position")
            .bind(&bill.id)
            .fetch_all(&app.db)
            .await
            .expect("lines");
    assert_eq!(
        lines,
        [
            ("PLAN_AMOUNT".into(), None, dec("100")),
            ("USAGE".into(), Some("storage".into()), dec("25.00"))
        ]
    );
    let names = webhooks_for(&app, &id).await;
    assert!(
        names.ends_with(&[
            "BILLING_TXN_SCHEDULED".to_string(),
            "BILLING_TXN_TO_BE_EXECUTED".to_string()
        ]),
        "{names:?}"
    );

    // Not before the notice has run its course.
    clock.set(at(2026, 2, 28, 0, 59));
    assert_eq!(run_billing(&mut app).await["debits_requested"], 0);
    clock.set(at(2026, 2, 28, 1, 0));
    assert_eq!(run_billing(&mut app).await["debits_requested"], 1);
    let request = gateway.wait_for(1).await.remove(0);
    assert_eq!(request["amount"], "75.00");
    assert_eq!(request["currency"], "INR");
    assert_eq!(request["attempt"], 1);
    assert_eq!(request["bill_id"], bill.id.as_str());
    assert_eq!(request["token"], "tok_1");
    assert_eq!(request["billing_execution_info_id"], id.as_str());
    bill_status(&app, &bill.id, "PAID").await;
    app.wait_for_count(
        "debit announced",
        "SELECT count(*) FROM outbox WHERE event_name = 'BILLING_EXECUTION_DEBIT_EVENT'",
        1,
    )
    .await;
    let metrics = app.http_get("/metrics").await.1;
    for name in [
        "billing_bills_issued_total",
        "billing_bills_settled_total",
        "billing_debit_attempts_total",
        "billing_debit_roundtrip_seconds",
        "billing_oldest_due_bill_age_seconds",
    ] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }
    gateway.stop();
    app.teardown().await;
}

/// A bill of 100 that the gateway always refuses, attempted until the plan's
/// action applies. Returns the app, the execution, the bill and the gateway.
async fn always_failing(action: &str, retryable: bool) -> (TestApp, ManualClock, String, String, Gateway) {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let gateway = Gateway::start(&app.settings.amqp.prefix, move |_| Answer::Failure { retryable }).await;
    plan(&mut app, json!({"plan_action_on_failure": action, "max_retry": 2})).await;
    let id = execution(&mut app, json!({})).await;
    clock.set(at(2026, 2, 28, 0, 0));
    run_billing(&mut app).await;
    let bill = bills(&app, &id).await.remove(0).id;
    // The first attempt after the notice, then retries after 10 and 20 minutes.
    clock.set(at(2026, 2, 28, 1, 0));
    let waits = if retryable { vec![10, 20] } else { vec![] };
    run_billing(&mut app).await;
    gateway.wait_for(1).await;
    for (i, minutes) in waits.iter().enumerate() {
        bill_status(&app, &bill, "RETRY_SCHEDULED").await;
        let next = bills(&app, &id).await.remove(0).next_attempt_at.expect("next attempt");
        assert_eq!(
            next,
            clock_now(&clock) + Duration::minutes(*minutes),
            "backoff of retry {}",
            i + 1
        );
        clock.set(next);
        run_billing(&mut app).await;
        gateway.wait_for(i + 2).await;
    }
    (app, clock, id, bill, gateway)
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    billing_worker::clock::Clock::now(clock)
}

fn attempts(gateway: &Gateway) -> Vec<i64> {
    gateway
        .seen()
        .iter()
        .map(|r| r["attempt"].as_i64().expect("attempt"))
        .collect()
}

#[tokio::test]
async fn skip_writes_the_bill_off_after_max_retry_retries() {
    let (app, _clock, id, bill, gateway) = always_failing("SKIP", true).await;
    bill_status(&app, &bill, "WRITTEN_OFF").await;
    assert_eq!(attempts(&gateway), [1, 2, 3], "one attempt and max_retry = 2 retries");
    let ids: std::collections::HashSet<_> = gateway.seen().iter().map(|r| r["request_id"].to_string()).collect();
    assert_eq!(ids.len(), 3, "each attempt has its own request_id");
    let names = webhooks_for(&app, &id).await;
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    assert_eq!(count("BILLING_TXN_FAILED"), 3);
    assert_eq!(count("BILLING_RETRY_TXN_SCHEDULED"), 2);
    assert_eq!(count("BILLING_TXN_RETRY_EXCEEDED"), 1);
    assert_eq!(count("BILLING_TXN_SKIPPED"), 1);
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn retry_carries_the_unpaid_amount_into_the_next_bill() {
    let (mut app, clock, id, bill, gateway) = always_failing("RETRY", true).await;
    bill_status(&app, &bill, "CARRIED_OVER").await;
    clock.set(at(2026, 3, 31, 0, 0));
    run_billing(&mut app).await;
    let next = bills(&app, &id).await.remove(1);
    assert_eq!(next.total, dec("200"), "100 for March and 100 carried from February");
    let carried: Decimal = sqlx::query_scalar("SELECT amount FROM bill_lines WHERE bill_id = $1 AND kind = 'CARRIED'")
        .bind(&next.id)
        .fetch_one(&app.db)
        .await
        .expect("carried line");
    assert_eq!(carried, dec("100"));
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn revoke_deactivates_the_execution_and_cancels_its_future_bills() {
    let (mut app, _clock, id, bill, gateway) = always_failing("REVOKE", true).await;
    bill_status(&app, &bill, "FAILED").await;
    let doc = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(doc["status"], "INACTIVE");
    assert!(doc["next_bill_at"].is_null(), "no future bills: {doc}");
    assert!(
        webhooks_for(&app, &id)
            .await
            .contains(&"BILLING_EXECUTION_DEACTIVATED".to_string())
    );
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_result_that_is_not_retryable_stops_at_once() {
    let (app, _clock, id, bill, gateway) = always_failing("SKIP", false).await;
    bill_status(&app, &bill, "WRITTEN_OFF").await;
    assert_eq!(attempts(&gateway), [1]);
    assert!(
        !webhooks_for(&app, &id)
            .await
            .contains(&"BILLING_RETRY_TXN_SCHEDULED".to_string())
    );
    gateway.stop();
    app.teardown().await;
}

/// A bill of 100 due at 2026-02-28T01:00 and a gateway answering as told.
async fn due_bill(
    answer: impl Fn(&Value) -> Answer + Send + Sync + 'static,
) -> (TestApp, ManualClock, String, String, Gateway) {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let gateway = Gateway::start(&app.settings.amqp.prefix, answer).await;
    plan(&mut app, json!({})).await;
    let id = execution(&mut app, json!({})).await;
    clock.set(at(2026, 2, 28, 0, 0));
    run_billing(&mut app).await;
    let bill = bills(&app, &id).await.remove(0).id;
    clock.set(at(2026, 2, 28, 1, 0));
    (app, clock, id, bill, gateway)
}

#[tokio::test]
async fn no_result_in_time_is_a_retryable_failure() {
    let (mut app, clock, _id, bill, gateway) = due_bill(|_| Answer::Silent).await;
    run_billing(&mut app).await;
    gateway.wait_for(1).await;
    clock.set(at(2026, 2, 28, 1, 14));
    assert_eq!(run_billing(&mut app).await["debits_timed_out"], 0);
    clock.set(at(2026, 2, 28, 1, 15));
    assert_eq!(run_billing(&mut app).await["debits_timed_out"], 1);
    bill_status(&app, &bill, "RETRY_SCHEDULED").await;
    let status: String = sqlx::query_scalar("SELECT status FROM debit_attempts WHERE bill_id = $1 AND attempt = 1")
        .bind(&bill)
        .fetch_one(&app.db)
        .await
        .expect("attempt");
    assert_eq!(status, "TIMEOUT");
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn duplicate_and_late_results_change_nothing_twice() {
    // A success sent twice settles once.
    let (mut app, _clock, id, bill, gateway) = due_bill(|_| Answer::SuccessTwice).await;
    run_billing(&mut app).await;
    bill_status(&app, &bill, "PAID").await;
    app.wait_for_count(
        "both results applied",
        "SELECT count(*) FROM debit_attempts WHERE status = 'SUCCESS'",
        1,
    )
    .await;
    let request = gateway.wait_for(1).await.remove(0);
    gateway.send_result(&request, Answer::Failure { retryable: true }).await;
    gateway.send_result(&request, Answer::Success).await;
    eventually("late results handled", || {
        let ctx = app.ctx.clone();
        async move {
            ctx.metrics
                .render()
                .contains(r#"billing_debit_attempts_total{result="ignored"} 3"#)
                .then_some(())
        }
    })
    .await;
    let debits = webhooks_for(&app, &id)
        .await
        .iter()
        .filter(|n| *n == "BILLING_EXECUTION_DEBIT_EVENT")
        .count();
    assert_eq!(debits, 1);
    bill_status(&app, &bill, "PAID").await;
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_late_success_after_a_timeout_pays_the_bill_and_stops_the_retry() {
    let (mut app, clock, _id, bill, gateway) = due_bill(|_| Answer::Silent).await;
    run_billing(&mut app).await;
    let request = gateway.wait_for(1).await.remove(0);
    clock.set(at(2026, 2, 28, 1, 15));
    run_billing(&mut app).await;
    bill_status(&app, &bill, "RETRY_SCHEDULED").await;
    gateway.send_result(&request, Answer::Success).await;
    bill_status(&app, &bill, "PAID").await;
    clock.set(at(2026, 2, 28, 2, 0));
    assert_eq!(
        run_billing(&mut app).await["debits_requested"],
        0,
        "a settled bill is never debited again"
    );
    assert_eq!(gateway.seen().len(), 1);
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_crash_between_claim_and_debit_is_recovered_when_the_lease_expires() {
    let (mut app, clock, _id, bill, gateway) = due_bill(|_| Answer::Success).await;
    // As a process that died right after claiming: attempt recorded, request never sent.
    sqlx::query(
        "UPDATE bills SET status = 'PROCESSING', attempt = 1, request_id = 'req_crashed', lease_owner = 'dead',
             lease_expires_at = $2 WHERE id = $1",
    )
    .bind(&bill)
    .bind(at(2026, 2, 28, 1, 1))
    .execute(&app.db)
    .await
    .expect("claim");
    sqlx::query("INSERT INTO debit_attempts (request_id, bill_id, attempt, amount, status, created_at) VALUES ('req_crashed', $1, 1, 100, 'REQUESTED', now())")
        .bind(&bill)
        .execute(&app.db)
        .await
        .expect("attempt");
    assert_eq!(
        run_billing(&mut app).await["debits_requested"],
        0,
        "the lease still holds"
    );
    clock.set(at(2026, 2, 28, 1, 1));
    run_billing(&mut app).await;
    let request = gateway.wait_for(1).await.remove(0);
    assert_eq!(
        (request["request_id"].as_str(), request["attempt"].as_i64()),
        (Some("req_crashed"), Some(1))
    );
    bill_status(&app, &bill, "PAID").await;
    assert_eq!(gateway.seen().len(), 1);
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn two_scheduler_processes_never_attempt_a_bill_twice() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let gateway = Gateway::start(&app.settings.amqp.prefix, |_| Answer::Success).await;
    plan(&mut app, json!({})).await;
    for i in 0..30 {
        execution(&mut app, json!({"merchant_ref_id": format!("r{i}")})).await;
    }
    let peer = app.spawn_peer(Arc::new(clock.clone())).await;
    clock.set(at(2026, 2, 28, 1, 0));
    run_billing(&mut app).await;
    clock.set(at(2026, 2, 28, 2, 0));
    // Passes in both processes at once.
    let body = serde_json::to_vec(&json!({"command": "run_billing", "limit": 7})).expect("json");
    for _ in 0..8 {
        app.publish_raw(
            "provisioning.run",
            &body,
            crate::helpers::with_merchant(Default::default(), "m1"),
        )
        .await;
    }
    app.wait_for_count(
        "every bill paid",
        "SELECT count(*) FROM bills WHERE status <> 'PAID'",
        0,
    )
    .await;
    let seen = gateway.seen();
    let bills: std::collections::HashSet<_> = seen.iter().map(|r| r["bill_id"].to_string()).collect();
    assert_eq!((seen.len(), bills.len()), (30, 30), "30 bills, each attempted once");
    peer.stop().await;
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn an_explicit_bill_sequence_is_charged_on_its_dates_after_notice() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let gateway = Gateway::start(&app.settings.amqp.prefix, |_| Answer::Success).await;
    app.call("m1", json!({"command": "create_customer", "customer_id": "1000602"}))
        .await;
    let r = app
        .call("m1", json!({"command": "add_billing_plan",
            "billing_plan": {"customer_id": "1000602", "Token": "927640180941111", "plan_type": "1", "schedule_type": "M",
                "start_date": "2026-02-01", "end_date": null, "periodicity": "1", "end_type": "3", "no_of_payments": 2,
                "amount": "10.00", "reference_id": "987654", "max_retry": 4, "active": true, "billing_mode": "0", "Bill_Day": 10},
            "Bill_Sequence": [
                {"amount": "10", "Schedule_Date": "2026-02-10", "reference_id": "16789", "sequence_number": "1"},
                {"amount": "20.5", "Schedule_Date": "2026-03-10", "reference_id": "16790", "sequence_number": "2"}]}))
        .await;
    assert_eq!(r["billing_response"]["result_text"], "SUCCESS", "{r}");
    assert_eq!(r["billing_plan"]["token"], "927640180941111");
    assert_eq!(r["billing_plan"]["bill_day"], 10);
    let sequence = r["bill_sequence"].as_array().expect("sequence");
    assert_eq!(sequence.len(), 2);
    assert_eq!(sequence[1]["schedule_date"], "2026-03-10T00:00:00Z");
    assert_eq!(sequence[1]["amount"], json!(20.5));

    // Announced an hour ahead; charged on the date.
    clock.set(at(2026, 2, 9, 23, 0));
    let report = run_billing(&mut app).await;
    assert_eq!(
        (report["notices_sent"].as_i64(), report["debits_requested"].as_i64()),
        (Some(1), Some(0))
    );
    clock.set(at(2026, 2, 10, 0, 0));
    run_billing(&mut app).await;
    let request = gateway.wait_for(1).await.remove(0);
    assert_eq!(
        (request["amount"].as_str(), request["sequence_number"].as_i64()),
        (Some("10.00"), Some(1))
    );
    assert_eq!(request["reference_id"], "16789");
    assert_eq!(request["token"], "927640180941111");
    // A repeat of the same plan reference creates nothing new.
    let again = app
        .call(
            "m1",
            json!({"command": "add_billing_plan", "billing_plan": {"customer_id": "1000602", "reference_id": "987654",
            "schedule_type": "M", "start_date": "2026-02-01", "amount": "10"}}),
        )
        .await;
    assert_eq!(again["billing_plan"]["abid"], r["billing_plan"]["abid"]);
    let scheduled: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_name = 'BILLING_TXN_SCHEDULED'")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(scheduled, 2);
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn present_bills_usage_so_far_and_usage_after_starts_anew() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    calls_metric(&mut app, 2).await;
    plan(
        &mut app,
        json!({"plan_interval": "ASPRESENTED", "plan_model": "USAGE_BASED", "plan_amount": 0, "metric_ids": ["calls"]}),
    )
    .await;
    let id = execution(&mut app, json!({"amount": 1})).await;
    let event = |n: &str, t: DateTime<Utc>| json!({"event_id": n, "billing_execution_info_id": id, "metric_id": "calls", "timestamp": t.to_rfc3339()});
    clock.set(at(2026, 2, 5, 0, 0));
    app.publish_usage(
        "m1",
        &json!({"events": [event("a", at(2026, 2, 1, 0, 0)), event("b", at(2026, 2, 2, 0, 0))]}),
    )
    .await;
    app.wait_for_count("counted", "SELECT count(*) FROM usage_events", 2)
        .await;
    let r = app
        .call("m1", json!({"command": "present", "billing_execution_info_id": id}))
        .await;
    assert_eq!(r["bill"]["kind"], "PRESENTED", "{r}");
    assert_eq!(
        (
            r["bill"]["total"].clone(),
            r["bill"]["credit_applied"].clone(),
            r["bill"]["amount_due"].clone()
        ),
        (json!(4), json!(1), json!(3))
    );
    // A late event of the presented period and a new one both go to the next bill.
    app.publish_usage(
        "m1",
        &json!({"events": [event("c", at(2026, 2, 3, 0, 0)), event("d", at(2026, 2, 5, 0, 0))]}),
    )
    .await;
    app.wait_for_count("counted", "SELECT count(*) FROM usage_events", 4)
        .await;
    let doc = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(doc["plan_info"]["metric_info"][0]["used_till_now"], 2);
    clock.set(at(2026, 2, 6, 0, 0));
    let r = app
        .call("m1", json!({"command": "present", "billing_execution_info_id": id}))
        .await;
    assert_eq!(r["bill"]["total"], json!(4));
    // A scheduled plan is not presented.
    let monthly = app
        .call(
            "m1",
            json!({"command": "create_plan", "plan_id": "monthly", "plan_name": "M", "plan_type": "POST_DEBIT",
        "plan_model": "FIXED", "plan_interval": "MONTHLY", "plan_currency": "INR"}),
        )
        .await;
    assert_eq!(monthly["success"], true);
    let other = app
        .call(
            "m1",
            json!({"command": "create", "plan_id": "monthly", "customer_id": "c1"}),
        )
        .await;
    let r = app
        .call(
            "m1",
            json!({"command": "present", "billing_execution_info_id": other["billing_execution_info_id"]}),
        )
        .await;
    assert_eq!(r["error_code"], "INVALID_STATE");
    app.teardown().await;
}

#[tokio::test]
async fn a_plan_change_takes_effect_at_the_next_boundary() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    plan(&mut app, json!({"plan_amount": 100})).await;
    let bigger = app
        .call(
            "m1",
            json!({"command": "create_plan", "plan_id": "big", "plan_name": "Big", "plan_type": "POST_DEBIT",
        "plan_model": "FIXED", "plan_interval": "MONTHLY", "plan_currency": "INR", "plan_amount": 200}),
        )
        .await;
    assert_eq!(bigger["success"], true);
    let id = execution(&mut app, json!({"amount": 10000})).await;
    clock.set(at(2026, 1, 15, 0, 0));
    let r = app
        .call(
            "m1",
            json!({"command": "change_plan", "billing_execution_info_id": id,
        "updated_fields": {"plan_id": "big", "plan_amount": 150}}),
        )
        .await;
    assert_eq!(r["pending_plan_id"], "big", "{r}");
    assert_eq!(
        r["plan_info"]["plan_id"], "p",
        "still on the old plan until the boundary"
    );
    clock.set(at(2026, 3, 1, 0, 0));
    run_billing(&mut app).await;
    let totals: Vec<Decimal> = bills(&app, &id).await.iter().map(|b| b.total).collect();
    assert_eq!(
        totals,
        [dec("100"), dec("150")],
        "January on the old plan, February on the new one at its agreed amount"
    );
    let doc = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    assert_eq!(doc["plan_info"]["plan_id"], "big");
    app.teardown().await;
}

#[tokio::test]
async fn pre_debit_bills_in_advance_and_onetime_bills_once() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    plan(&mut app, json!({"plan_type": "PRE_DEBIT", "plan_amount": 100})).await;
    let id = execution(&mut app, json!({"amount": 10000})).await;
    run_billing(&mut app).await;
    let b = bills(&app, &id).await;
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].period_start, b[0].period_end, b[0].total),
        (Some(at(2026, 1, 1, 0, 0)), Some(at(2026, 2, 1, 0, 0)), dec("100"))
    );
    clock.set(at(2026, 2, 1, 0, 0));
    run_billing(&mut app).await;
    assert_eq!(
        bills(&app, &id).await.len(),
        2,
        "February is billed in advance at its start"
    );

    let once = app
        .call(
            "m1",
            json!({"command": "create_plan", "plan_id": "once", "plan_name": "Setup", "plan_type": "PRE_DEBIT",
        "plan_model": "FIXED", "plan_interval": "ONETIME", "plan_currency": "INR", "plan_amount": 999}),
        )
        .await;
    assert_eq!(once["success"], true);
    let setup = app
        .create_execution(
            "m1",
            json!({"command": "create", "plan_id": "once", "customer_id": "c1", "amount": 10000}),
        )
        .await;
    run_billing(&mut app).await;
    clock.set(at(2027, 2, 1, 0, 0));
    run_billing(&mut app).await;
    let b = bills(&app, &setup).await;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].total, dec("999"));
    assert!(b.iter().all(|b| b.amount_due == Decimal::ZERO && b.attempt == 0));
    app.teardown().await;
}

#[tokio::test]
async fn every_plan_model_bills_its_parts() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    calls_metric(&mut app, 1).await;
    app.call("m1", json!({"command": "create_customer", "customer_id": "c1"}))
        .await;
    let models = [
        ("FIXED", 100, false),
        ("VARIABLE", 50, true),
        ("USAGE_BASED", 0, true),
        ("HYBRID", 10, true),
        ("USAGE_CALCULATION", 999, true),
    ];
    let mut ids = Vec::new();
    for (model, amount, metered) in models {
        let mut plan = json!({"command": "create_plan", "plan_id": model, "plan_name": model, "plan_type": "POST_DEBIT",
            "plan_model": model, "plan_interval": "MONTHLY", "plan_currency": "INR", "plan_amount": amount});
        if metered {
            plan["metric_ids"] = json!(["calls"]);
        }
        assert_eq!(app.call("m1", plan).await["success"], true, "{model}");
        let mut create = json!({"command": "create", "plan_id": model, "customer_id": "c1", "amount": 10000});
        if model == "VARIABLE" {
            create["metric_info"] =
                json!([{"metric_id": "calls", "pricing_type": "FIXED", "pricing_model": [{"unit_amount": 2}]}]);
        }
        let r = app.call("m1", create).await;
        ids.push((model, r["billing_execution_info_id"].as_str().expect("id").to_string()));
    }
    clock.set(at(2026, 1, 10, 0, 0));
    for (model, id) in ids.iter().filter(|(m, _)| *m != "FIXED") {
        let events: Vec<Value> = (0..3)
            .map(|i| {
                json!({"event_id": format!("{model}-{i}"), "billing_execution_info_id": id, "metric_id": "calls",
                            "timestamp": at(2026, 1, 5, i, 0).to_rfc3339()})
            })
            .collect();
        app.publish_usage("m1", &json!({ "events": events })).await;
    }
    app.wait_for_count("usage counted", "SELECT count(*) FROM usage_events", 12)
        .await;
    clock.set(at(2026, 2, 1, 0, 0));
    run_billing(&mut app).await;
    let expected = [
        ("FIXED", Some("100")),
        ("VARIABLE", Some("56")),
        ("USAGE_BASED", Some("3")),
        ("HYBRID", Some("13")),
        ("USAGE_CALCULATION", None),
    ];
    for ((model, id), (_, total)) in ids.iter().zip(expected) {
        let b = bills(&app, id).await;
        assert_eq!(b.first().map(|b| b.total), total.map(dec), "{model}");
    }
    // USAGE_CALCULATION bills its usage only, and only when presented.
    let usage_calc = &ids[4].1;
    let r = app
        .call(
            "m1",
            json!({"command": "present", "billing_execution_info_id": usage_calc}),
        )
        .await;
    assert_eq!(r["bill"]["total"], json!(3), "{r}");
    assert_eq!(r["bill"]["lines"].as_array().map(Vec::len), Some(1));
    app.teardown().await;
}

#[tokio::test]
async fn deactivation_bills_counted_usage_and_reactivation_skips_idle_periods() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    calls_metric(&mut app, 1).await;
    plan(
        &mut app,
        json!({"plan_model": "HYBRID", "plan_amount": 100, "metric_ids": ["calls"]}),
    )
    .await;
    let id = execution(&mut app, json!({"amount": 10000})).await;
    clock.set(at(2026, 1, 10, 0, 0));
    let events: Vec<Value> = (0..4)
        .map(|i| json!({"event_id": format!("e{i}"), "billing_execution_info_id": id, "metric_id": "calls", "timestamp": at(2026, 1, 9, i, 0).to_rfc3339()}))
        .collect();
    app.publish_usage("m1", &json!({ "events": events })).await;
    app.wait_for_count("counted", "SELECT count(*) FROM usage_events", 4)
        .await;
    let r = app.set_status(&id, "INACTIVE").await;
    assert_eq!(r["status"], "INACTIVE");

    // January closes while inactive: its usage is billed, its plan amount is not.
    clock.set(at(2026, 4, 15, 0, 0));
    run_billing(&mut app).await;
    let b = bills(&app, &id).await;
    assert_eq!(b.len(), 1, "only the period with usage");
    assert_eq!((b[0].period_end, b[0].total), (Some(at(2026, 2, 1, 0, 0)), dec("4")));

    // Back in April: February and March (wholly inactive) are never billed.
    let r = app.set_status(&id, "ACTIVE").await;
    assert_eq!(r["next_bill_at"], "2026-05-01T00:00:00Z", "{r}");
    clock.set(at(2026, 5, 1, 0, 0));
    run_billing(&mut app).await;
    let b = bills(&app, &id).await;
    assert_eq!(b.len(), 2);
    assert_eq!(
        (b[1].period_start, b[1].total),
        (Some(at(2026, 4, 1, 0, 0)), dec("100"))
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_pre_debit_execution_created_inactive_pays_its_advance_on_activation() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    plan(&mut app, json!({"plan_type": "PRE_DEBIT", "plan_amount": 100})).await;
    let id = execution(&mut app, json!({"amount": 1000, "status": "INACTIVE"})).await;
    clock.set(at(2026, 1, 5, 0, 0));
    app.call(
        "m1",
        json!({"command": "update_status", "billing_execution_info_id": id, "status": "ACTIVE"}),
    )
    .await;
    run_billing(&mut app).await;
    let b = bills(&app, &id).await;
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].period_start, b[0].total),
        (Some(at(2026, 1, 5, 0, 0)), dec("100"))
    );
    app.teardown().await;
}

#[tokio::test]
async fn two_presents_in_the_same_instant_are_two_bills() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    plan(
        &mut app,
        json!({"plan_interval": "ASPRESENTED", "plan_model": "FIXED", "plan_amount": 5}),
    )
    .await;
    let id = execution(&mut app, json!({"amount": 1000})).await;
    clock.set(at(2026, 1, 2, 0, 0));
    let first = app
        .call("m1", json!({"command": "present", "billing_execution_info_id": id}))
        .await;
    let second = app
        .call("m1", json!({"command": "present", "billing_execution_info_id": id}))
        .await;
    assert_eq!(
        (first["success"].clone(), second["success"].clone()),
        (json!(true), json!(true)),
        "{second}"
    );
    assert_ne!(first["bill"]["bill_id"], second["bill"]["bill_id"]);
    app.teardown().await;
}

#[tokio::test]
async fn unreadable_or_unknown_results_are_dead_lettered_and_the_rest_settle() {
    let (mut app, _clock, _id, bill, gateway) = due_bill(|_| Answer::Silent).await;
    run_billing(&mut app).await;
    let request = gateway.wait_for(1).await.remove(0);
    // A burst: garbage, a result for no request, then the real one.
    let results = app.names.payment_results.clone();
    for body in [
        b"{not json".to_vec(),
        serde_json::to_vec(&json!({"request_id": "req_nobody", "status": "SUCCESS"})).expect("json"),
    ] {
        let confirm = app
            .channel
            .basic_publish(
                "".into(),
                results.as_str().into(),
                Default::default(),
                &body,
                Default::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
    }
    gateway.send_result(&request, Answer::Success).await;
    bill_status(&app, &bill, "PAID").await;
    let first = app.next_dead_letter().await;
    assert_eq!(first.code, "INVALID_JSON");
    let second = app.next_dead_letter().await;
    assert_eq!(second.code, "INVALID_FIELD");
    assert!(second.message.contains("req_nobody"), "{}", second.message);
    gateway.stop();
    app.teardown().await;
}
