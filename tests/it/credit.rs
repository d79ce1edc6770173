//! Reading bills and credit (`list_bills`, `get_bill`, `list_credit`), and
//! credit grants with priority and expiry, driven by an injected clock.

use billing_worker::clock::ManualClock;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::seed::{at, dec, plan, run_billing};

fn d(v: &Value) -> Decimal {
    v.to_string().trim_matches('"').parse().expect("decimal")
}

/// The balance three ways: the execution's, the ledger's running sum, and
/// what the grants have left. They must always agree.
async fn balances(app: &TestApp, execution: &str) -> (Decimal, Decimal, Decimal) {
    sqlx::query_as(
        "SELECT e.credit_balance,
                (SELECT COALESCE(sum(CASE kind WHEN 'GRANT' THEN amount ELSE -amount END), 0)
                 FROM credit_ledger WHERE execution_id = e.id),
                (SELECT COALESCE(sum(remaining), 0) FROM credit_grants WHERE execution_id = e.id)
         FROM executions e WHERE e.id = $1",
    )
    .bind(execution)
    .fetch_one(&app.db)
    .await
    .expect("balances")
}

async fn add_credit(app: &mut TestApp, execution: &str, fields: Value) -> Value {
    let mut command = json!({"command": "add_credit", "billing_execution_info_id": execution});
    for (k, v) in fields.as_object().expect("fields") {
        command[k] = v.clone();
    }
    app.call("m1", command).await
}

#[tokio::test]
async fn bills_draw_on_grants_by_priority_then_expiry_then_age_and_what_is_left_expires() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    plan(&mut app, json!({"plan_amount": 40})).await;
    // The oldest grant is the free tier: no priority, no expiry.
    let id = app
        .create_execution(
            "m1",
            json!({"command": "create", "plan_id": "p", "customer_id": "c1", "amount": 10}),
        )
        .await;
    for (reference, amount, extra) in [
        ("late", 50, json!({"expires_at": "2026-06-01T00:00:00Z"})),
        ("soon", 30, json!({"expires_at": "2026-03-15T00:00:00Z"})),
        ("urgent", 20, json!({"priority": 5})),
    ] {
        let mut fields = json!({"amount": amount, "reference_id": reference});
        for (k, v) in extra.as_object().expect("extra") {
            fields[k] = v.clone();
        }
        let r = add_credit(&mut app, &id, fields).await;
        assert_eq!(r["success"], true, "{r}");
    }
    // The same grant again is one grant; on other terms it is refused.
    let again = add_credit(
        &mut app,
        &id,
        json!({"amount": 20, "reference_id": "urgent", "priority": 5}),
    )
    .await;
    assert_eq!(again["amount"], 110, "{again}");
    let other = add_credit(
        &mut app,
        &id,
        json!({"amount": 20, "reference_id": "urgent", "priority": 6}),
    )
    .await;
    assert_eq!(other["error_code"], "ALREADY_EXISTS", "{other}");
    for (fields, field) in [
        (
            json!({"amount": 5, "reference_id": "past", "expires_at": "2026-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"amount": 5, "reference_id": "odd", "expires_at": "soon"}),
            "expires_at",
        ),
        (
            json!({"amount": 5, "reference_id": "big", "priority": 20000}),
            "priority",
        ),
    ] {
        let r = add_credit(&mut app, &id, fields).await;
        assert_eq!(r["error_code"], "INVALID_FIELD", "{r}");
        assert!(r["error_message"].as_str().expect("message").starts_with(field), "{r}");
    }

    // The February bill of 40: 20 from the urgent grant, then 20 from the
    // one expiring soonest. Oldest-first would have taken the free tier.
    clock.set(at(2026, 2, 28, 0, 0));
    run_billing(&mut app).await;
    let grants = app
        .call("m1", json!({"command": "list_credit", "billing_execution_info_id": id}))
        .await;
    assert_eq!(grants["success"], true, "{grants}");
    let remaining: Vec<(String, Decimal)> = grants["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .map(|g| (g["reference_id"].as_str().expect("ref").to_string(), d(&g["remaining"])))
        .collect();
    assert_eq!(
        remaining,
        [
            ("soon".to_string(), dec("10")),
            ("late".to_string(), dec("50")),
            ("free_tier".to_string(), dec("10")),
            ("urgent".to_string(), dec("0")),
        ],
        "open grants in the order bills use them, then the used ones"
    );
    let uses: Vec<(String, Decimal)> = grants["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["kind"] == "USE")
        .map(|e| (e["grant_id"].as_str().expect("grant").to_string(), d(&e["amount"])))
        .collect();
    let grant_of = |reference: &str| {
        grants["grants"]
            .as_array()
            .expect("grants")
            .iter()
            .find(|g| g["reference_id"] == reference)
            .map(|g| g["grant_id"].as_str().expect("id").to_string())
            .expect("grant")
    };
    // Newest first: the second grant drawn on is listed first.
    assert_eq!(uses, [(grant_of("soon"), dec("20")), (grant_of("urgent"), dec("20"))]);
    let (balance, ledger, grants_left) = balances(&app, &id).await;
    assert_eq!((balance, ledger, grants_left), (dec("70"), dec("70"), dec("70")));

    // At its expiry, what is left of "soon" leaves the balance.
    clock.set(at(2026, 3, 15, 0, 0));
    let report = run_billing(&mut app).await;
    assert_eq!(report["credit_expired"], 1, "{report}");
    let (balance, ledger, grants_left) = balances(&app, &id).await;
    assert_eq!((balance, ledger, grants_left), (dec("60"), dec("60"), dec("60")));
    let expired: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM outbox WHERE execution_id = $1 AND event_name = 'BILLING_EXECUTION_CREDIT_EXPIRED'",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .expect("one CREDIT_EXPIRED webhook");
    let credit = &expired["content"]["credit"];
    assert_eq!(
        (d(&credit["amount"]), d(&credit["granted"])),
        (dec("10"), dec("30")),
        "{expired}"
    );
    assert_eq!(credit["reference_id"], "soon");
    assert_eq!(d(&credit["balance"]), dec("60"));
    // A second pass expires nothing twice.
    assert_eq!(run_billing(&mut app).await["credit_expired"], 0);

    // March's bill takes 40 of "late" (priority ties, it expires first).
    clock.set(at(2026, 3, 31, 0, 0));
    run_billing(&mut app).await;
    let (balance, ledger, grants_left) = balances(&app, &id).await;
    assert_eq!((balance, ledger, grants_left), (dec("20"), dec("20"), dec("20")));

    // The ledger pages newest first, each page after the cursor.
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = app
            .call(
                "m1",
                json!({"command": "list_credit", "billing_execution_info_id": id, "limit": 3, "cursor": cursor}),
            )
            .await;
        assert_eq!(page["success"], true, "{page}");
        seen.extend(
            page["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| e["kind"].clone()),
        );
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(
        seen,
        ["USE", "EXPIRE", "USE", "USE", "GRANT", "GRANT", "GRANT", "GRANT"].map(|k| json!(k)),
        "newest first: March's use, the expiry, February's two uses, the four grants"
    );
    app.teardown().await;
}

#[tokio::test]
async fn bills_are_read_newest_first_with_lines_attempts_and_settlement_by_their_merchant_only() {
    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    plan(&mut app, json!({})).await;
    let id = app
        .create_execution(
            "m1",
            json!({"command": "create", "plan_id": "p", "customer_id": "c1", "amount": 150}),
        )
        .await;
    clock.set(at(2026, 4, 1, 0, 0));
    run_billing(&mut app).await;

    // Two bills: February's paid by credit, March's half by credit and
    // half waiting for its debit.
    let all = app
        .call("m1", json!({"command": "list_bills", "billing_execution_info_id": id}))
        .await;
    assert_eq!(all["success"], true, "{all}");
    let bills = all["bills"].as_array().expect("bills");
    let periods: Vec<&str> = bills.iter().map(|b| b["period_end"].as_str().expect("end")).collect();
    assert_eq!(
        periods,
        ["2026-03-31T00:00:00Z", "2026-02-28T00:00:00Z"],
        "newest first"
    );
    let march = &bills[0];
    assert_eq!(march["status"], "SCHEDULED");
    assert_eq!(
        (d(&march["total"]), d(&march["credit_applied"]), d(&march["amount_due"])),
        (dec("100"), dec("50"), dec("50"))
    );
    assert_eq!(march["kind"], "PERIOD");
    assert_eq!(march["lines"][0]["kind"], "PLAN_AMOUNT");
    assert!(march["next_attempt_at"].is_string(), "{march}");
    assert!(march.get("last_error").is_some() && march.get("attempt").is_some());

    let paid = app
        .call(
            "m1",
            json!({"command": "list_bills", "billing_execution_info_id": id, "status": "PAID"}),
        )
        .await;
    assert_eq!(paid["bills"].as_array().expect("bills").len(), 1, "{paid}");
    let page = app
        .call(
            "m1",
            json!({"command": "list_bills", "billing_execution_info_id": id, "limit": 1}),
        )
        .await;
    assert_eq!(page["bills"][0]["bill_id"], march["bill_id"]);
    let next = app
        .call(
            "m1",
            json!({"command": "list_bills", "billing_execution_info_id": id, "limit": 1, "cursor": page["next_cursor"]}),
        )
        .await;
    assert_eq!(next["bills"][0]["bill_id"], bills[1]["bill_id"]);
    assert!(next["next_cursor"].is_null(), "{next}");

    let one = app
        .call("m1", json!({"command": "get_bill", "bill_id": bills[1]["bill_id"]}))
        .await;
    assert_eq!(one["success"], true, "{one}");
    let bill = &one["bill"];
    assert_eq!(bill["status"], "PAID");
    assert_eq!(bill["attempts"], json!([]), "paid by credit, never debited");
    assert_eq!(d(&bill["settlement"]["credit_applied"]), dec("100"));
    assert_eq!(d(&bill["settlement"]["credit_entries"][0]["amount"]), dec("100"));
    assert_eq!(d(&bill["settlement"]["debited_amount"]), dec("0"));

    // Another merchant reads nothing of them.
    let theirs = app
        .call("m2", json!({"command": "get_bill", "bill_id": bills[1]["bill_id"]}))
        .await;
    assert_eq!(theirs["error_code"], "BILL_NOT_FOUND", "{theirs}");
    for command in ["list_bills", "list_credit"] {
        let theirs = app
            .call("m2", json!({"command": command, "billing_execution_info_id": id}))
            .await;
        assert_eq!(theirs["error_code"], "EXECUTION_NOT_FOUND", "{theirs}");
    }
    let bad = app
        .call(
            "m1",
            json!({"command": "list_bills", "billing_execution_info_id": id, "status": "LOST"}),
        )
        .await;
    assert_eq!(bad["error_code"], "INVALID_FIELD", "{bad}");
    let lost = app
        .call(
            "m1",
            json!({"command": "list_bills", "billing_execution_info_id": id, "cursor": "bill_unknown"}),
        )
        .await;
    assert_eq!(lost["error_code"], "INVALID_FIELD", "{lost}");
    assert!(
        lost["error_message"].as_str().expect("message").starts_with("cursor"),
        "{lost}"
    );
    app.teardown().await;
}
