//! Gateway results that come late, twice, or from the wrong sender,
//! driven by an injected clock and the fake gateway on
//! the bus. Every outcome is read where a user sees it: bill and ledger
//! rows, webhooks on the bus, dead letters, and the requests the gateway got.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use billing_worker::clock::ManualClock;
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::options::BasicGetOptions;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::gateway::{Answer, Gateway};
use crate::helpers::{Sandbox, TestApp, eventually};
use crate::seed::{at, dec, plan, run_billing};

async fn execution(app: &mut TestApp) -> String {
    let r = app
        .call("m1", json!({"command": "create", "plan_id": "p", "customer_id": "c1"}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    r["billing_execution_info_id"].as_str().expect("id").to_string()
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Bill {
    id: String,
    status: String,
    period_start: Option<DateTime<Utc>>,
    total: Decimal,
    credit_applied: Decimal,
    amount_due: Decimal,
    gateway_txn_id: Option<String>,
    next_attempt_at: Option<DateTime<Utc>>,
}

async fn bills(app: &TestApp, execution: &str) -> Vec<Bill> {
    sqlx::query_as(
        "SELECT id, status, period_start, total, credit_applied, amount_due, gateway_txn_id, next_attempt_at
         FROM bills WHERE execution_id = $1 ORDER BY created_at, period_start",
    )
    .bind(execution)
    .fetch_all(&app.db)
    .await
    .expect("bills")
}

async fn read_bill(app: &TestApp, id: &str) -> Bill {
    sqlx::query_as(
        "SELECT id, status, period_start, total, credit_applied, amount_due, gateway_txn_id, next_attempt_at
         FROM bills WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .expect("bill")
}

async fn bill_status(app: &TestApp, id: &str, status: &str) -> Bill {
    let (db, id, status) = (app.db.clone(), id.to_string(), status.to_string());
    eventually(&format!("bill {id} {status}"), || {
        let (db, id, status) = (db.clone(), id.clone(), status.clone());
        async move {
            let b: Bill = sqlx::query_as(
                "SELECT id, status, period_start, total, credit_applied, amount_due, gateway_txn_id, next_attempt_at
                 FROM bills WHERE id = $1",
            )
            .bind(&id)
            .fetch_one(&db)
            .await
            .ok()?;
            (b.status == status).then_some(b)
        }
    })
    .await
}

async fn carried_line(app: &TestApp, bill: &str) -> Option<Decimal> {
    sqlx::query_scalar("SELECT amount FROM bill_lines WHERE bill_id = $1 AND kind = 'CARRIED'")
        .bind(bill)
        .fetch_optional(&app.db)
        .await
        .expect("carried line")
}

/// (credit balance, carried amount, status, next bill) of an execution.
async fn execution_row(app: &TestApp, id: &str) -> (Decimal, Decimal, String, Option<DateTime<Utc>>) {
    sqlx::query_as("SELECT credit_balance, carried_amount, status, next_bill_at FROM executions WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .expect("execution")
}

async fn attempts_of(app: &TestApp, bill: &str) -> Vec<(i32, String)> {
    sqlx::query_as("SELECT attempt, status FROM debit_attempts WHERE bill_id = $1 ORDER BY attempt")
        .bind(bill)
        .fetch_all(&app.db)
        .await
        .expect("attempts")
}

/// Waits until the worker counted `n` results of this kind.
async fn results_counted(app: &TestApp, result: &str, n: u64) {
    let line = format!("billing_debit_attempts_total{{result=\"{result}\"}} {n}");
    let ctx = app.ctx.clone();
    eventually(&line.clone(), || {
        let (ctx, line) = (ctx.clone(), line.clone());
        async move { ctx.metrics.render().lines().any(|l| l == line).then_some(()) }
    })
    .await;
}

/// The webhooks taken from the bus so far.
#[derive(Default)]
struct Bus {
    all: Vec<Value>,
}

impl Bus {
    /// The first webhook `name` that satisfies `matches`, waiting for it on the bus.
    async fn wait(&mut self, app: &TestApp, name: &str, matches: impl Fn(&Value) -> bool) -> Value {
        loop {
            if let Some(w) = self.all.iter().find(|w| w["event_name"] == name && matches(w)) {
                return w.clone();
            }
            let (routing_key, _, doc) = app.next_webhook().await;
            assert_eq!(routing_key, doc["event_name"].as_str().unwrap_or_default());
            self.all.push(doc);
        }
    }

    /// Takes every webhook written so far off the bus.
    async fn drain(&mut self, app: &TestApp) {
        app.wait_for_count(
            "outbox published",
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            0,
        )
        .await;
        while let Some(msg) = app
            .channel
            .basic_get(
                app.names.webhook_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("get")
        {
            self.all
                .push(serde_json::from_slice(&msg.delivery.data).expect("webhook is JSON"));
        }
    }

    fn count(&self, name: &str) -> usize {
        self.all.iter().filter(|w| w["event_name"] == name).count()
    }
}

fn about_bill(bill: &str) -> impl Fn(&Value) -> bool + '_ {
    move |w: &Value| w["content"]["bill"]["bill_id"] == bill
}

/// A bill of 100 for February whose first debit (attempt 1, at 2026-02-28
/// 01:00) got no answer and timed out at 01:15, so the plan's rules applied.
/// Returns the app, the clock, the execution, the bill, the gateway and the
/// unanswered request.
struct TimedOut {
    app: TestApp,
    clock: ManualClock,
    execution: String,
    bill: String,
    gateway: Gateway,
    request: Value,
}

async fn timed_out(fields: Value, answer: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> TimedOut {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let gateway = Gateway::start(&app.settings.amqp.prefix, answer).await;
    plan(&mut app, fields).await;
    let execution = execution(&mut app).await;
    clock.set(at(2026, 2, 28, 0, 0));
    run_billing(&mut app).await;
    let bill = bills(&app, &execution).await.remove(0).id;
    clock.set(at(2026, 2, 28, 1, 0));
    assert_eq!(run_billing(&mut app).await["debits_requested"], 1);
    let request = gateway.wait_for(1).await.remove(0);
    clock.set(at(2026, 2, 28, 1, 15));
    assert_eq!(run_billing(&mut app).await["debits_timed_out"], 1);
    TimedOut {
        app,
        clock,
        execution,
        bill,
        gateway,
        request,
    }
}

/// The first request is never answered, every later one succeeds.
fn first_silent() -> impl Fn(&Value) -> Answer + Send + Sync + 'static {
    let n = Arc::new(AtomicUsize::new(0));
    move |_| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            Answer::Silent
        } else {
            Answer::Success
        }
    }
}

fn txn_of(request: &Value) -> String {
    format!("txn_{}", request["request_id"].as_str().expect("request id"))
}

#[tokio::test]
async fn every_request_carries_an_idempotency_key_that_a_resend_keeps() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let gateway = Gateway::start(&app.settings.amqp.prefix, |_| Answer::Failure { retryable: true }).await;
    plan(&mut app, json!({})).await;
    let id = execution(&mut app).await;
    clock.set(at(2026, 2, 28, 0, 0));
    run_billing(&mut app).await;
    let bill = bills(&app, &id).await.remove(0).id;
    clock.set(at(2026, 2, 28, 1, 0));
    run_billing(&mut app).await;
    let first = gateway.wait_for(1).await.remove(0);
    assert_eq!(first["idempotency_key"], format!("{bill}:1"));
    assert_eq!(first["bill_id"], bill.as_str());
    bill_status(&app, &bill, "RETRY_SCHEDULED").await;
    // Attempt 2 is claimed, then the process dies before its request leaves:
    // the request sent again when the lease runs out keeps attempt and key.
    sqlx::query(
        "UPDATE bills SET status = 'PROCESSING', attempt = 2, request_id = 'req_lost', lease_owner = 'dead',
             lease_expires_at = $2 WHERE id = $1",
    )
    .bind(&bill)
    .bind(at(2026, 2, 28, 1, 11))
    .execute(&app.db)
    .await
    .expect("claim");
    sqlx::query(
        "INSERT INTO debit_attempts (request_id, bill_id, attempt, amount, status, created_at)
         VALUES ('req_lost', $1, 2, 100, 'REQUESTED', now())",
    )
    .bind(&bill)
    .execute(&app.db)
    .await
    .expect("attempt");
    clock.set(at(2026, 2, 28, 1, 11));
    run_billing(&mut app).await;
    let resent = gateway.wait_for(2).await.remove(1);
    assert_eq!(
        (resent["request_id"].as_str(), resent["attempt"].as_i64()),
        (Some("req_lost"), Some(2))
    );
    assert_eq!(resent["idempotency_key"], format!("{bill}:2"));
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_late_success_after_a_timeout_pays_the_bill_and_its_retry_never_runs() {
    let TimedOut {
        mut app,
        clock,
        bill,
        gateway,
        request,
        ..
    } = timed_out(json!({"max_retry": 2}), |_| Answer::Silent).await;
    let retrying = bill_status(&app, &bill, "RETRY_SCHEDULED").await;
    assert_eq!(retrying.next_attempt_at, Some(at(2026, 2, 28, 1, 25)));

    gateway.send_result(&request, Answer::Success).await;
    let paid = bill_status(&app, &bill, "PAID").await;
    assert_eq!(paid.gateway_txn_id, Some(txn_of(&request)));
    assert_eq!(paid.next_attempt_at, None);
    assert_eq!(attempts_of(&app, &bill).await, [(1, "SUCCESS".to_string())]);
    let mut bus = Bus::default();
    let debit = bus.wait(&app, "BILLING_EXECUTION_DEBIT_EVENT", about_bill(&bill)).await;
    let content = &debit["content"];
    assert_eq!(content["late"], true, "{debit}");
    assert_eq!(content["previous_status"], "RETRY_SCHEDULED");
    assert_eq!(content["bill"]["status"], "PAID");
    assert_eq!(content["settlement"]["debited_amount"], json!(100));
    assert_eq!(content["settlement"]["gateway_txn_id"], txn_of(&request));

    // The retry's time comes and goes: nothing is asked again.
    clock.set(at(2026, 2, 28, 1, 25));
    assert_eq!(run_billing(&mut app).await["debits_requested"], 0);
    clock.set(at(2026, 3, 1, 0, 0));
    assert_eq!(run_billing(&mut app).await["debits_requested"], 0);
    assert_eq!(attempts_of(&app, &bill).await.len(), 1);
    assert_eq!(gateway.seen().len(), 1);
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_late_success_after_a_write_off_pays_the_bill() {
    let TimedOut {
        mut app,
        clock,
        execution,
        bill,
        gateway,
        request,
    } = timed_out(json!({"plan_action_on_failure": "SKIP", "max_retry": 0}), |_| {
        Answer::Silent
    })
    .await;
    bill_status(&app, &bill, "WRITTEN_OFF").await;
    let mut bus = Bus::default();
    bus.wait(&app, "BILLING_TXN_SKIPPED", about_bill(&bill)).await;

    clock.set(at(2026, 3, 2, 0, 0));
    gateway.send_result(&request, Answer::Success).await;
    let paid = bill_status(&app, &bill, "PAID").await;
    assert_eq!(paid.gateway_txn_id, Some(txn_of(&request)));
    let debit = bus.wait(&app, "BILLING_EXECUTION_DEBIT_EVENT", about_bill(&bill)).await;
    assert_eq!(debit["content"]["late"], true);
    assert_eq!(debit["content"]["previous_status"], "WRITTEN_OFF");

    // March is billed on its own; February is never asked for again.
    clock.set(at(2026, 3, 31, 1, 0));
    run_billing(&mut app).await;
    let all = bills(&app, &execution).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].total, dec("100"));
    assert_eq!(carried_line(&app, &all[1].id).await, None);
    assert_eq!(attempts_of(&app, &bill).await.len(), 1);
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_late_success_of_a_carried_bill_takes_the_amount_back_before_it_is_billed() {
    let TimedOut {
        mut app,
        clock,
        execution,
        bill,
        gateway,
        request,
    } = timed_out(json!({"plan_action_on_failure": "RETRY", "max_retry": 0}), |_| {
        Answer::Silent
    })
    .await;
    bill_status(&app, &bill, "CARRIED_OVER").await;
    assert_eq!(execution_row(&app, &execution).await.1, dec("100"));

    gateway.send_result(&request, Answer::Success).await;
    bill_status(&app, &bill, "PAID").await;
    let (balance, carried, status, _) = execution_row(&app, &execution).await;
    assert_eq!((balance, carried, status.as_str()), (dec("0"), dec("0"), "ACTIVE"));
    let mut bus = Bus::default();
    let debit = bus.wait(&app, "BILLING_EXECUTION_DEBIT_EVENT", about_bill(&bill)).await;
    assert_eq!(debit["content"]["late"], true);
    assert_eq!(
        debit["content"]["adjustments"],
        json!([{"kind": "CARRIED_AMOUNT_REDUCED", "amount": 100}])
    );

    // March's bill carries nothing.
    clock.set(at(2026, 3, 31, 0, 0));
    run_billing(&mut app).await;
    let march = bills(&app, &execution).await.remove(1);
    assert_eq!((march.total, march.amount_due), (dec("100"), dec("100")));
    assert_eq!(carried_line(&app, &march.id).await, None);
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_late_success_of_a_carried_bill_reduces_the_later_bill_that_carries_it() {
    let TimedOut {
        mut app,
        clock,
        execution,
        bill,
        gateway,
        request,
    } = timed_out(
        json!({"plan_action_on_failure": "RETRY", "max_retry": 0}),
        first_silent(),
    )
    .await;
    bill_status(&app, &bill, "CARRIED_OVER").await;
    clock.set(at(2026, 3, 31, 0, 0));
    run_billing(&mut app).await;
    let march = bills(&app, &execution).await.remove(1);
    assert_eq!((march.total, march.amount_due), (dec("200"), dec("200")));
    assert_eq!(carried_line(&app, &march.id).await, Some(dec("100")));

    gateway.send_result(&request, Answer::Success).await;
    bill_status(&app, &bill, "PAID").await;
    let reduced = bill_status(&app, &march.id, "SCHEDULED").await;
    assert_eq!(
        (reduced.total, reduced.credit_applied, reduced.amount_due),
        (dec("100"), dec("0"), dec("100"))
    );
    assert_eq!(carried_line(&app, &march.id).await, Some(dec("0")));
    let mut bus = Bus::default();
    let debit = bus.wait(&app, "BILLING_EXECUTION_DEBIT_EVENT", about_bill(&bill)).await;
    assert_eq!(debit["content"]["adjustments"][0]["kind"], "BILL_REDUCED");
    assert_eq!(debit["content"]["adjustments"][0]["bill_id"], march.id.as_str());

    // March is asked for its own 100 only.
    clock.set(at(2026, 3, 31, 1, 0));
    assert_eq!(run_billing(&mut app).await["debits_requested"], 1);
    let asked = gateway.wait_for(2).await.remove(1);
    assert_eq!(
        (asked["bill_id"].as_str(), asked["amount"].as_str()),
        (Some(march.id.as_str()), Some("100.00"))
    );
    bill_status(&app, &march.id, "PAID").await;
    assert_eq!(execution_row(&app, &execution).await.0, dec("0"), "no credit was owed");
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn credit_a_later_bill_used_for_the_carried_amount_goes_back_to_the_balance() {
    let TimedOut {
        mut app,
        clock,
        execution,
        bill,
        gateway,
        request,
    } = timed_out(json!({"plan_action_on_failure": "RETRY", "max_retry": 0}), |_| {
        Answer::Silent
    })
    .await;
    bill_status(&app, &bill, "CARRIED_OVER").await;
    let r = app
        .call(
            "m1",
            json!({"command": "add_credit", "billing_execution_info_id": execution, "amount": 150, "reference_id": "promo"}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    clock.set(at(2026, 3, 31, 0, 0));
    run_billing(&mut app).await;
    let march = bills(&app, &execution).await.remove(1);
    assert_eq!(
        (
            march.total,
            march.credit_applied,
            march.amount_due,
            march.status.as_str()
        ),
        (dec("200"), dec("150"), dec("50"), "SCHEDULED")
    );

    gateway.send_result(&request, Answer::Success).await;
    bill_status(&app, &bill, "PAID").await;
    // March owes its own 100: the 50 still due is dropped first, then 50 of
    // the credit it used goes back; credit covers the rest, so it is paid.
    let march = bill_status(&app, &march.id, "PAID").await;
    assert_eq!(
        (march.total, march.credit_applied, march.amount_due),
        (dec("100"), dec("100"), dec("0"))
    );
    assert_eq!(execution_row(&app, &execution).await.0, dec("50"));
    let (entries, ledger_sum): (i64, Decimal) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE reference_id LIKE 'late_debit:%'),
                sum(CASE kind WHEN 'GRANT' THEN amount ELSE -amount END)
         FROM credit_ledger WHERE execution_id = $1",
    )
    .bind(&execution)
    .fetch_one(&app.db)
    .await
    .expect("ledger");
    assert_eq!((entries, ledger_sum), (1, dec("50")));
    let mut bus = Bus::default();
    let credit = bus
        .wait(&app, "BILLING_EXECUTION_CREDIT_EVENT", |w| {
            w["content"]["credit"]["reason"] == "LATE_DEBIT_SUCCESS"
        })
        .await;
    assert_eq!(credit["content"]["credit"]["amount"], json!(50));
    assert_eq!(credit["content"]["credit"]["balance"], json!(50));
    bus.wait(&app, "BILLING_EXECUTION_DEBIT_EVENT", about_bill(&march.id))
        .await;

    clock.set(at(2026, 3, 31, 2, 0));
    assert_eq!(run_billing(&mut app).await["debits_requested"], 0);
    assert_eq!(gateway.seen().len(), 1);
    gateway.stop();
    app.teardown().await;
}

/// February timed out and was carried into March's bill, which the gateway
/// then paid (200). Returns the setup and March's bill.
async fn carried_into_a_paid_bill() -> (TimedOut, String) {
    let mut t = timed_out(
        json!({"plan_action_on_failure": "RETRY", "max_retry": 0}),
        first_silent(),
    )
    .await;
    bill_status(&t.app, &t.bill, "CARRIED_OVER").await;
    t.clock.set(at(2026, 3, 31, 0, 0));
    run_billing(&mut t.app).await;
    t.clock.set(at(2026, 3, 31, 1, 0));
    run_billing(&mut t.app).await;
    let march = bills(&t.app, &t.execution).await.remove(1);
    let paid = bill_status(&t.app, &march.id, "PAID").await;
    assert_eq!(paid.total, dec("200"));
    (t, march.id)
}

#[tokio::test]
async fn a_late_success_of_a_bill_carried_into_a_paid_bill_is_credited_back() {
    let (t, march) = carried_into_a_paid_bill().await;
    t.gateway.send_result(&t.request, Answer::Success).await;
    bill_status(&t.app, &t.bill, "PAID").await;
    let after = read_bill(&t.app, &march).await;
    assert_eq!(
        (after.status.as_str(), after.total),
        ("PAID", dec("200")),
        "a paid bill keeps its figures"
    );
    assert_eq!(execution_row(&t.app, &t.execution).await.0, dec("100"));
    let entry: (String, Decimal, Decimal, String) =
        sqlx::query_as("SELECT kind, amount, balance_after, reference_id FROM credit_ledger WHERE execution_id = $1")
            .bind(&t.execution)
            .fetch_one(&t.app.db)
            .await
            .expect("one ledger entry");
    assert_eq!(
        entry,
        (
            "GRANT".to_string(),
            dec("100"),
            dec("100"),
            format!("late_debit:{}:paid:{march}", t.bill)
        )
    );
    let mut bus = Bus::default();
    let debit = bus
        .wait(&t.app, "BILLING_EXECUTION_DEBIT_EVENT", |w| {
            w["content"]["bill"]["bill_id"] == t.bill.as_str() && w["content"]["late"] == true
        })
        .await;
    assert_eq!(
        debit["content"]["adjustments"],
        json!([{"kind": "CREDITED", "amount": 100, "bill_id": march}])
    );
    let credit = bus.wait(&t.app, "BILLING_EXECUTION_CREDIT_EVENT", |_| true).await;
    assert_eq!(credit["content"]["credit"]["amount"], json!(100));
    assert_eq!(credit["content"]["credit"]["bill_id"], t.bill.as_str());
    assert_eq!(credit["content"]["billing_execution_info"]["amount"], json!(100));
    t.gateway.stop();
    t.app.teardown().await;
}

#[tokio::test]
async fn the_same_late_success_delivered_again_changes_nothing_twice() {
    let (t, _march) = carried_into_a_paid_bill().await;
    t.gateway.send_result(&t.request, Answer::SuccessTwice).await;
    bill_status(&t.app, &t.bill, "PAID").await;
    results_counted(&t.app, "paid_late", 1).await;
    results_counted(&t.app, "ignored", 1).await;
    // And once more, after everything settled.
    t.gateway.send_result(&t.request, Answer::Success).await;
    results_counted(&t.app, "ignored", 2).await;

    assert_eq!(execution_row(&t.app, &t.execution).await.0, dec("100"), "credited once");
    let grants: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_ledger WHERE execution_id = $1")
        .bind(&t.execution)
        .fetch_one(&t.app.db)
        .await
        .expect("ledger");
    assert_eq!(grants, 1);
    let mut bus = Bus::default();
    bus.drain(&t.app).await;
    let late_debits = bus
        .all
        .iter()
        .filter(|w| w["event_name"] == "BILLING_EXECUTION_DEBIT_EVENT" && w["content"]["late"] == true)
        .count();
    assert_eq!(late_debits, 1);
    assert_eq!(bus.count("BILLING_EXECUTION_CREDIT_EVENT"), 1);
    assert_eq!(bus.count("BILLING_TXN_DOUBLE_CHARGE"), 0);
    assert!(t.app.ctx.metrics.render().contains("billing_double_charges_total 0"));
    t.gateway.stop();
    t.app.teardown().await;
}

#[tokio::test]
async fn a_late_success_activates_the_execution_its_bill_revoked() {
    let TimedOut {
        mut app,
        clock,
        execution,
        bill,
        gateway,
        request,
    } = timed_out(json!({"plan_action_on_failure": "REVOKE", "max_retry": 0}), |_| {
        Answer::Silent
    })
    .await;
    bill_status(&app, &bill, "FAILED").await;
    let (_, _, status, next) = execution_row(&app, &execution).await;
    assert_eq!((status.as_str(), next), ("INACTIVE", None));
    let mut bus = Bus::default();
    bus.wait(&app, "BILLING_EXECUTION_DEACTIVATED", |_| true).await;

    clock.set(at(2026, 3, 5, 0, 0));
    gateway.send_result(&request, Answer::Success).await;
    bill_status(&app, &bill, "PAID").await;
    let (_, _, status, next) = execution_row(&app, &execution).await;
    // Billing resumes where it stopped: the open period ends on 31 March.
    assert_eq!((status.as_str(), next), ("ACTIVE", Some(at(2026, 3, 31, 0, 0))));
    let activated = bus.wait(&app, "BILLING_EXECUTION_ACTIVATED", |_| true).await;
    assert_eq!(activated["content"]["reason"], "LATE_DEBIT_SUCCESS");
    assert_eq!(activated["content"]["bill_id"], bill.as_str());
    assert_eq!(activated["content"]["billing_execution_info"]["status"], "ACTIVE");
    let debit = bus.wait(&app, "BILLING_EXECUTION_DEBIT_EVENT", about_bill(&bill)).await;
    assert_eq!(debit["content"]["late"], true);
    assert_eq!(debit["content"]["previous_status"], "FAILED");

    clock.set(at(2026, 3, 31, 0, 0));
    assert_eq!(run_billing(&mut app).await["bills_issued"], 1);
    let march = bills(&app, &execution).await.remove(1);
    assert_eq!(
        (march.period_start, march.total),
        (Some(at(2026, 2, 28, 0, 0)), dec("100"))
    );
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_late_success_leaves_a_status_the_merchant_set_since_the_revocation() {
    let TimedOut {
        mut app,
        execution,
        bill,
        gateway,
        request,
        ..
    } = timed_out(json!({"plan_action_on_failure": "REVOKE", "max_retry": 0}), |_| {
        Answer::Silent
    })
    .await;
    bill_status(&app, &bill, "FAILED").await;
    for status in ["ACTIVE", "INACTIVE"] {
        let r = app.set_status(&execution, status).await;
        assert_eq!(r["status"], status, "{r}");
    }
    gateway.send_result(&request, Answer::Success).await;
    bill_status(&app, &bill, "PAID").await;
    assert_eq!(execution_row(&app, &execution).await.2, "INACTIVE");
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn two_successful_attempts_are_one_payment_and_one_double_charge() {
    // Attempt 1 times out, attempt 2 is sent; attempt 1's success comes
    // while attempt 2 is out (it pays the bill), then attempt 2 succeeds too.
    let TimedOut {
        mut app,
        clock,
        execution,
        bill,
        gateway,
        request,
    } = timed_out(json!({"max_retry": 2}), |_| Answer::Silent).await;
    clock.set(at(2026, 2, 28, 1, 25));
    assert_eq!(run_billing(&mut app).await["debits_requested"], 1);
    let second = gateway.wait_for(2).await.remove(1);
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["idempotency_key"], format!("{bill}:2"));
    bill_status(&app, &bill, "PROCESSING").await;

    gateway.send_result(&request, Answer::Success).await;
    let paid = bill_status(&app, &bill, "PAID").await;
    assert_eq!(paid.gateway_txn_id, Some(txn_of(&request)));
    gateway.send_result(&second, Answer::Success).await;
    results_counted(&app, "double_charge", 1).await;

    let mut bus = Bus::default();
    let double = bus.wait(&app, "BILLING_TXN_DOUBLE_CHARGE", about_bill(&bill)).await;
    let d = &double["content"]["double_charge"];
    assert_eq!(d["paying_gateway_txn_id"], txn_of(&request));
    assert_eq!(d["gateway_txn_id"], txn_of(&second));
    assert_eq!(
        (d["paying_attempt"].clone(), d["attempt"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!((d["amount"].clone(), d["currency"].clone()), (json!(100), json!("INR")));
    assert_eq!(double["merchant_id"], "m1");
    assert!(app.ctx.metrics.render().contains("billing_double_charges_total 1"));
    // The bill stays paid by the first; nothing is credited or asked again.
    let after = read_bill(&app, &bill).await;
    assert_eq!(
        (after.status.as_str(), after.gateway_txn_id),
        ("PAID", Some(txn_of(&request)))
    );
    assert_eq!(
        attempts_of(&app, &bill).await,
        [(1, "SUCCESS".to_string()), (2, "SUCCESS".to_string())]
    );
    assert_eq!(execution_row(&app, &execution).await.0, dec("0"));
    clock.set(at(2026, 3, 1, 0, 0));
    assert_eq!(run_billing(&mut app).await["debits_requested"], 0);
    // A repeat of the second success is not a second double charge.
    gateway.send_result(&second, Answer::Success).await;
    results_counted(&app, "ignored", 1).await;
    bus.drain(&app).await;
    assert_eq!(bus.count("BILLING_TXN_DOUBLE_CHARGE"), 1);
    assert_eq!(bus.count("BILLING_EXECUTION_DEBIT_EVENT"), 1);
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_timed_out_attempt_that_succeeds_after_the_retry_paid_is_a_double_charge() {
    let TimedOut {
        mut app,
        clock,
        bill,
        gateway,
        request,
        ..
    } = timed_out(json!({"max_retry": 2}), first_silent()).await;
    clock.set(at(2026, 2, 28, 1, 25));
    run_billing(&mut app).await;
    let second = gateway.wait_for(2).await.remove(1);
    let paid = bill_status(&app, &bill, "PAID").await;
    assert_eq!(paid.gateway_txn_id, Some(txn_of(&second)));

    gateway.send_result(&request, Answer::Success).await;
    let mut bus = Bus::default();
    let double = bus.wait(&app, "BILLING_TXN_DOUBLE_CHARGE", about_bill(&bill)).await;
    assert_eq!(
        double["content"]["double_charge"]["paying_gateway_txn_id"],
        txn_of(&second)
    );
    assert_eq!(double["content"]["double_charge"]["gateway_txn_id"], txn_of(&request));
    assert_eq!(read_bill(&app, &bill).await.gateway_txn_id, Some(txn_of(&second)));
    gateway.stop();
    app.teardown().await;
}

/// A bill of 100 whose first debit is out, unanswered.
async fn in_flight(app: &mut TestApp, clock: &ManualClock, gateway: &Gateway, call: CallAs) -> (String, Value) {
    plan_as(app, call, json!({})).await;
    let r = call_as(
        app,
        call,
        json!({"command": "create", "plan_id": "p", "customer_id": "c1"}),
    )
    .await;
    let execution = r["billing_execution_info_id"].as_str().expect("id").to_string();
    clock.set(at(2026, 2, 28, 0, 0));
    call_as(app, call, json!({"command": "run_billing"})).await;
    clock.set(at(2026, 2, 28, 1, 0));
    call_as(app, call, json!({"command": "run_billing"})).await;
    let request = gateway.wait_for(1).await.remove(0);
    let bill = bills(app, &execution).await.remove(0);
    assert_eq!(bill.status, "PROCESSING");
    (bill.id, request)
}

/// How the test client calls the worker: as itself, or naming a broker user.
#[derive(Clone, Copy)]
enum CallAs {
    Anonymous,
    User(&'static str),
}

async fn call_as(app: &mut TestApp, call: CallAs, command: Value) -> Value {
    let props = match call {
        CallAs::Anonymous => BasicProperties::default(),
        CallAs::User(u) => BasicProperties::default().with_user_id(u.into()),
    };
    let r = app.call_with("m1", command, props).await;
    assert_eq!(r["success"], true, "{r}");
    r
}

async fn plan_as(app: &mut TestApp, call: CallAs, fields: Value) {
    let mut command = json!({"command": "create_plan", "plan_id": "p", "plan_name": "Plan", "plan_type": "POST_DEBIT",
        "plan_model": "FIXED", "plan_interval": "MONTHLY", "plan_currency": "INR", "plan_amount": 100,
        "plan_action_on_failure": "SKIP", "max_retry": 2});
    for (k, v) in fields.as_object().expect("fields") {
        command[k] = v.clone();
    }
    call_as(app, call, command).await;
    call_as(app, call, json!({"command": "create_customer", "customer_id": "c1"})).await;
}

#[tokio::test]
async fn a_result_from_another_merchant_is_forbidden_and_changes_nothing() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let gateway = Gateway::start(&app.settings.amqp.prefix, |_| Answer::Silent).await;
    let (bill, request) = in_flight(&mut app, &clock, &gateway, CallAs::Anonymous).await;

    gateway.send_result_as(&request, Answer::Success, Some("m2")).await;
    let forged = app.next_dead_letter().await;
    assert_eq!(forged.code, "FORBIDDEN");
    assert!(forged.message.contains("x-merchantid 'm2'"), "{}", forged.message);
    let body: Value = serde_json::from_slice(&forged.body).expect("the result, unchanged");
    assert_eq!(body["request_id"], request["request_id"]);
    gateway.send_result_as(&request, Answer::Success, None).await;
    let anonymous = app.next_dead_letter().await;
    assert_eq!(anonymous.code, "FORBIDDEN");
    assert!(anonymous.message.contains("x-merchantid"), "{}", anonymous.message);

    let untouched = bill_status(&app, &bill, "PROCESSING").await;
    assert_eq!(untouched.gateway_txn_id, None);
    assert_eq!(attempts_of(&app, &bill).await, [(1, "REQUESTED".to_string())]);
    let debits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_name = 'BILLING_EXECUTION_DEBIT_EVENT'")
            .fetch_one(&app.db)
            .await
            .expect("outbox");
    assert_eq!(debits, 0);

    // The merchant's own gateway answer still settles it.
    gateway.send_result(&request, Answer::Success).await;
    bill_status(&app, &bill, "PAID").await;
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn with_authentication_a_result_needs_a_user_allowed_for_the_bills_merchant() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut sandbox = Sandbox::new().await;
    let s = &mut sandbox.settings;
    s.scheduler.tick = std::time::Duration::from_secs(3600);
    s.scheduler.pre_debit_notice = std::time::Duration::from_secs(3600);
    s.payments.result_timeout = std::time::Duration::from_secs(900);
    s.auth.enabled = true;
    // The broker validates user_id against the connection's user: every
    // client here is `guest`, allowed for m1 only.
    s.auth.users = BTreeMap::from([("guest".to_string(), vec!["m1".to_string()])]);
    let mut app = TestApp::spawn_with(sandbox, Arc::new(clock.clone())).await;
    let gateway = Gateway::start_as(&app.settings.amqp.prefix, Some("guest"), |_| Answer::Silent).await;
    let (bill, request) = in_flight(&mut app, &clock, &gateway, CallAs::User("guest")).await;

    // The right merchant, but no broker user that may act for it.
    gateway
        .send_result_by(&request, Answer::Success, Some("m1"), None)
        .await;
    let refused = app.next_dead_letter().await;
    assert_eq!(refused.code, "FORBIDDEN");
    assert!(refused.message.contains("user_id"), "{}", refused.message);
    // A user allowed for another merchant only.
    gateway
        .send_result_by(&request, Answer::Success, Some("m2"), Some("guest"))
        .await;
    assert_eq!(app.next_dead_letter().await.code, "FORBIDDEN");
    assert_eq!(bill_status(&app, &bill, "PROCESSING").await.gateway_txn_id, None);

    gateway.send_result(&request, Answer::Success).await;
    bill_status(&app, &bill, "PAID").await;
    gateway.stop();
    app.teardown().await;
}
