//! Plan changes with proration: `preview_prorated_amount`, then
//! `change_plan` with `IMMEDIATE`, paid from credit, by the gateway, or not
//! at all; a downgrade that nets below zero becomes credit.

use billing_worker::clock::ManualClock;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::gateway::{Answer, Gateway};
use crate::helpers::{TestApp, eventually};
use crate::seed::{at, dec, run_billing};

fn d(v: &Value) -> Decimal {
    v.to_string().trim_matches('"').parse().expect("decimal")
}

/// Plans `basic` (150 a month) and `pro` (300), both in advance; customer `c1`.
async fn plans(app: &mut TestApp) {
    for (id, amount) in [("basic", 150), ("pro", 300)] {
        let r = app
            .call(
                "m1",
                json!({"command": "create_plan", "plan_id": id, "plan_name": id, "plan_type": "PRE_DEBIT",
                    "plan_model": "FIXED", "plan_interval": "MONTHLY", "plan_currency": "INR", "plan_amount": amount,
                    "plan_action_on_failure": "REVOKE", "max_retry": 0}),
            )
            .await;
        assert_eq!(r["success"], true, "{r}");
    }
    let r = app
        .call("m1", json!({"command": "create_customer", "customer_id": "c1"}))
        .await;
    assert_eq!(r["success"], true, "{r}");
}

async fn execution(app: &mut TestApp, credit: i64) -> String {
    app.create_execution(
        "m1",
        json!({"command": "create", "plan_id": "basic", "customer_id": "c1", "amount": credit, "token": "tok"}),
    )
    .await
}

fn change(execution: &str, request_id: &str, plan: &str) -> Value {
    json!({"command": "change_plan", "billing_execution_info_id": execution, "proration": "IMMEDIATE",
        "request_id": request_id, "updated_fields": {"plan_id": plan}})
}

async fn plan_of(app: &mut TestApp, execution: &str) -> String {
    let r = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": execution}))
        .await;
    r["plan_info"]["plan_id"].as_str().expect("plan").to_string()
}

async fn plan_changed_webhooks(app: &TestApp, execution: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT payload::jsonb FROM outbox WHERE execution_id = $1 AND event_name = 'BILLING_EXECUTION_PLAN_CHANGED'
         ORDER BY seq",
    )
    .bind(execution)
    .fetch_all(&app.db)
    .await
    .expect("webhooks")
}

/// The total of the execution's latest period bill (at a boundary: the
/// next period's amount in advance).
async fn last_period_bill(app: &TestApp, execution: &str) -> Decimal {
    sqlx::query_scalar(
        "SELECT total FROM bills WHERE execution_id = $1 AND kind = 'PERIOD' ORDER BY issue_seq DESC LIMIT 1",
    )
    .bind(execution)
    .fetch_one(&app.db)
    .await
    .expect("bill")
}

#[tokio::test]
async fn a_preview_prices_the_rest_of_the_period_and_changes_nothing() {
    let clock = ManualClock::new(at(2026, 11, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    plans(&mut app).await;
    let id = execution(&mut app, 1000).await;
    run_billing(&mut app).await;
    // Ten of November's thirty days gone: two thirds left.
    clock.set(at(2026, 11, 11, 0, 0));
    let preview = json!({"command": "preview_prorated_amount", "billing_execution_info_id": id, "request_id": "r1",
        "updated_fields": {"plan_id": "pro"}});
    let p = app.call("m1", preview.clone()).await;
    assert_eq!(p["success"], true, "{p}");
    assert_eq!(p["period_start"], "2026-11-01T00:00:00Z");
    assert_eq!(p["period_end"], "2026-12-01T00:00:00Z");
    assert_eq!(p["effective_at"], "2026-11-11T00:00:00Z");
    assert_eq!(d(&p["remaining_fraction"]), dec("0.666667"));
    // 150 x 2/3 paid and not used; 300 x 2/3 for the rest on pro.
    assert_eq!(d(&p["unused_amount"]), dec("100.00"));
    assert_eq!(d(&p["new_amount"]), dec("200.00"));
    assert_eq!(d(&p["net_amount"]), dec("100.00"));
    assert_eq!(p["currency"], "INR");
    assert_eq!(p["status"], "PREVIEWED");

    // The same request later answers the same figures; nothing changed.
    clock.set(at(2026, 11, 12, 0, 0));
    let again = app.call("m1", preview).await;
    assert_eq!(again["net_amount"], p["net_amount"]);
    assert_eq!(again["effective_at"], p["effective_at"]);
    assert_eq!(plan_of(&mut app, &id).await, "basic");
    let bills: i64 = sqlx::query_scalar("SELECT count(*) FROM bills WHERE execution_id = $1")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .expect("bills");
    assert_eq!(bills, 1, "only November's advance");
    let other = app
        .call(
            "m1",
            json!({"command": "preview_prorated_amount", "billing_execution_info_id": id, "request_id": "r1",
                "updated_fields": {"plan_id": "basic"}}),
        )
        .await;
    assert_eq!(other["error_code"], "ALREADY_EXISTS", "{other}");
    let missing = app
        .call(
            "m1",
            json!({"command": "change_plan", "billing_execution_info_id": id, "proration": "IMMEDIATE",
                "updated_fields": {"plan_id": "pro"}}),
        )
        .await;
    assert_eq!(missing["error_code"], "INVALID_FIELD", "{missing}");
    app.teardown().await;
}

#[tokio::test]
async fn an_upgrade_paid_from_credit_switches_at_once_and_a_downgrade_becomes_credit() {
    let clock = ManualClock::new(at(2026, 11, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    plans(&mut app).await;
    let id = execution(&mut app, 500).await;
    run_billing(&mut app).await; // November in advance: 150 of the 500.
    clock.set(at(2026, 11, 11, 0, 0));
    let r = app.call("m1", change(&id, "up", "pro")).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["plan_change"]["status"], "APPLIED", "{r}");
    assert_eq!(r["bill"]["kind"], "PRORATION");
    assert_eq!(r["bill"]["status"], "PAID");
    assert_eq!(d(&r["bill"]["total"]), dec("100.00"));
    let kinds: Vec<&str> = r["bill"]["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["PRORATED_PLAN_AMOUNT", "UNUSED_PLAN_AMOUNT"]);
    assert_eq!(r["plan_info"]["plan_id"], "pro");
    assert_eq!(d(&r["amount"]), dec("250"), "500 - 150 - 100");
    let changed = plan_changed_webhooks(&app, &id).await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["content"]["plan_change"]["from_plan_id"], "basic");
    // A repeat of the change is the same change.
    let again = app.call("m1", change(&id, "up", "pro")).await;
    assert_eq!(again["plan_change"]["status"], "APPLIED", "{again}");
    assert_eq!(plan_changed_webhooks(&app, &id).await.len(), 1);

    // Back down ten days later: 300 x 1/3 unused, 150 x 1/3 new: 50 back.
    clock.set(at(2026, 11, 21, 0, 0));
    let r = app.call("m1", change(&id, "down", "basic")).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(d(&r["plan_change"]["net_amount"]), dec("-50.00"), "{r}");
    assert!(r["bill"].is_null(), "{r}");
    assert_eq!(r["plan_info"]["plan_id"], "basic");
    assert_eq!(d(&r["amount"]), dec("300"));
    // December is billed on the plan now in force.
    clock.set(at(2026, 12, 1, 0, 0));
    run_billing(&mut app).await;
    assert_eq!(last_period_bill(&app, &id).await, dec("150"));
    app.teardown().await;
}

#[tokio::test]
async fn an_upgrade_switches_when_the_gateway_pays_and_stays_put_when_the_debit_fails() {
    let clock = ManualClock::new(at(2026, 11, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    // The gateway refuses the one debit of 120.00, for good.
    let gateway = Gateway::start(&app.settings.amqp.prefix, |request| {
        if request["amount"] == "120.00" {
            Answer::Failure { retryable: false }
        } else {
            Answer::Success
        }
    })
    .await;
    plans(&mut app).await;
    let paid = execution(&mut app, 0).await;
    let refused = execution(&mut app, 0).await;
    run_billing(&mut app).await;
    clock.set(at(2026, 11, 1, 1, 0));
    run_billing(&mut app).await; // both advances debited after the notice
    gateway.wait_for(2).await;

    clock.set(at(2026, 11, 11, 0, 0));
    let r = app.call("m1", change(&paid, "up1", "pro")).await;
    assert_eq!(r["plan_change"]["status"], "PENDING", "{r}");
    assert_eq!(r["bill"]["status"], "SCHEDULED");
    assert_eq!(r["plan_info"]["plan_id"], "basic", "not before it is paid");
    let waiting = app.call("m1", change(&paid, "up2", "pro")).await;
    assert_eq!(waiting["error_code"], "INVALID_STATE", "{waiting}");
    // 330 agreed for this one: 330 x 2/3 - 100 = 120, which the gateway refuses.
    let r = app
        .call(
            "m1",
            json!({"command": "change_plan", "billing_execution_info_id": refused, "proration": "IMMEDIATE",
                "request_id": "up3", "updated_fields": {"plan_id": "pro", "plan_amount": 330}}),
        )
        .await;
    assert_eq!(d(&r["bill"]["amount_due"]), dec("120.00"), "{r}");

    clock.set(at(2026, 11, 11, 1, 0));
    run_billing(&mut app).await;
    gateway.wait_for(4).await;
    let db = app.db.clone();
    eventually("both changes settled", || {
        let db = db.clone();
        async move {
            let statuses: Vec<String> = sqlx::query_scalar(
                "SELECT status FROM plan_changes WHERE request_id IN ('up1', 'up3') ORDER BY request_id",
            )
            .fetch_all(&db)
            .await
            .ok()?;
            (statuses == ["APPLIED", "FAILED"]).then_some(())
        }
    })
    .await;
    assert_eq!(plan_of(&mut app, &paid).await, "pro");
    assert_eq!(plan_changed_webhooks(&app, &paid).await.len(), 1);
    // The refused one stays where it was: its plan, active, no change announced.
    let r = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": refused}))
        .await;
    assert_eq!(r["plan_info"]["plan_id"], "basic", "{r}");
    assert_eq!(r["status"], "ACTIVE", "a plan change's bill never revokes");
    assert!(plan_changed_webhooks(&app, &refused).await.is_empty());
    let bill: String = sqlx::query_scalar("SELECT status FROM bills WHERE execution_id = $1 AND kind = 'PRORATION'")
        .bind(&refused)
        .fetch_one(&app.db)
        .await
        .expect("bill");
    assert_eq!(bill, "WRITTEN_OFF");
    // December in advance follows each one's plan.
    clock.set(at(2026, 12, 1, 0, 0));
    run_billing(&mut app).await;
    assert_eq!(last_period_bill(&app, &refused).await, dec("150"));
    assert_eq!(last_period_bill(&app, &paid).await, dec("300"));
    gateway.stop();
    app.teardown().await;
}

#[tokio::test]
async fn a_change_whose_bill_is_cancelled_by_a_revocation_is_given_up() {
    let clock = ManualClock::new(at(2026, 11, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    // November's advance of 150 fails for good: the plan revokes.
    let gateway = Gateway::start(&app.settings.amqp.prefix, |request| {
        if request["amount"] == "150.00" {
            Answer::Failure { retryable: false }
        } else {
            Answer::Success
        }
    })
    .await;
    plans(&mut app).await;
    let id = execution(&mut app, 0).await;
    run_billing(&mut app).await;
    clock.set(at(2026, 11, 1, 0, 30));
    let r = app.call("m1", change(&id, "up", "pro")).await;
    assert_eq!(r["plan_change"]["status"], "PENDING", "{r}");
    clock.set(at(2026, 11, 1, 1, 0));
    run_billing(&mut app).await;
    gateway.wait_for(1).await;
    let db = app.db.clone();
    eventually("the change given up", || {
        let db = db.clone();
        async move {
            let status: String = sqlx::query_scalar("SELECT status FROM plan_changes WHERE request_id = 'up'")
                .fetch_one(&db)
                .await
                .ok()?;
            (status == "FAILED").then_some(())
        }
    })
    .await;
    let bill: String = sqlx::query_scalar("SELECT status FROM bills WHERE execution_id = $1 AND kind = 'PRORATION'")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .expect("bill");
    assert_eq!(bill, "CANCELLED");
    assert_eq!(plan_of(&mut app, &id).await, "basic");
    gateway.stop();
    app.teardown().await;
}
