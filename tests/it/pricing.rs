//! Time-weighted usage, percentage fees, graduated percentage and minimum
//! commitments over the bus, with the published worked examples reproduced
//! to the digit, live on `get` and on the bill.

use billing_worker::clock::ManualClock;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually};
use crate::seed::{at, dec, plan, run_billing};

pub(crate) async fn metric(app: &mut TestApp, fields: Value) {
    let mut command = json!({"command": "create_metric", "name": "metric", "currency": "INR"});
    for (k, v) in fields.as_object().expect("fields") {
        command[k] = v.clone();
    }
    let r = app.call("m1", command).await;
    assert_eq!(r["success"], true, "{r}");
}

pub(crate) async fn execution(app: &mut TestApp, fields: Value) -> String {
    let mut command = json!({"command": "create", "plan_id": "p", "customer_id": "c1"});
    for (k, v) in fields.as_object().expect("fields") {
        command[k] = v.clone();
    }
    app.create_execution("m1", command).await
}

pub(crate) fn event(id: &str, execution: &str, metric: &str, value: &str, t: DateTime<Utc>) -> Value {
    json!({"event_id": id, "billing_execution_info_id": execution, "metric_id": metric, "value": value,
           "timestamp": t.to_rfc3339()})
}

pub(crate) async fn counted(app: &TestApp, n: i64) {
    let db = app.db.clone();
    eventually(&format!("{n} events counted"), || {
        let db = db.clone();
        async move {
            let got: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
                .fetch_one(&db)
                .await
                .ok()?;
            (got == n).then_some(())
        }
    })
    .await;
}

/// `(used_till_now, used_amount)` of each metric of an execution, live.
pub(crate) async fn live(app: &mut TestApp, execution: &str) -> Vec<(String, Decimal, Decimal)> {
    let doc = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": execution}))
        .await;
    assert_eq!(doc["success"], true, "{doc}");
    doc["plan_info"]["metric_info"]
        .as_array()
        .expect("metric_info")
        .iter()
        .map(|m| {
            (
                m["metric_id"].as_str().expect("id").to_string(),
                dec(&m["used_till_now"].to_string()),
                dec(&m["used_amount"].to_string()),
            )
        })
        .collect()
}

pub(crate) fn of(usage: &[(String, Decimal, Decimal)], metric: &str) -> (Decimal, Decimal) {
    usage
        .iter()
        .find(|(id, _, _)| id == metric)
        .map(|(_, used, amount)| (*used, *amount))
        .unwrap_or_else(|| panic!("{metric} in {usage:?}"))
}

/// `(kind, metric_id, quantity, amount)` of every line of an execution's
/// bills, oldest bill first.
pub(crate) async fn lines(app: &TestApp, execution: &str) -> Vec<(String, Option<String>, Option<Decimal>, Decimal)> {
    sqlx::query_as(
        "SELECT l.kind, l.metric_id, l.quantity, l.amount FROM bill_lines l JOIN bills b ON b.id = l.bill_id
         WHERE b.execution_id = $1 ORDER BY b.created_at, b.period_start, l.position",
    )
    .bind(execution)
    .fetch_all(&app.db)
    .await
    .expect("lines")
}

fn ratio(a: i64, b: i64) -> Decimal {
    Decimal::from(a) / Decimal::from(b)
}

#[tokio::test]
async fn weighted_sum_reproduces_the_published_example_and_carries_its_level() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    metric(
        &mut app,
        json!({"metric_id": "storage", "aggregation_type": "WEIGHTED_SUM", "pricing_type": "FIXED",
               "pricing_model": [{"unit_amount": 100}]}),
    )
    .await;
    plan(
        &mut app,
        json!({"plan_model": "USAGE_BASED", "plan_amount": 0, "metric_ids": ["storage"]}),
    )
    .await;
    let first = execution(
        &mut app,
        json!({"merchant_ref_id": "a", "billing_start_date": "2026-01-01"}),
    )
    .await;
    let second = execution(
        &mut app,
        json!({"merchant_ref_id": "b", "billing_start_date": "2026-01-01"}),
    )
    .await;

    // The published 31-day example, sent newest first in two messages.
    clock.set(at(2026, 1, 20, 0, 0));
    let steps = [
        ("2", 0, 0),
        ("3", 1, 0),
        ("1", 1, 30),
        ("-4", 2, 0),
        ("-2", 4, 0),
        ("10", 5, 0),
        ("-10", 5, 30),
    ];
    let events: Vec<Value> = steps
        .iter()
        .enumerate()
        .rev()
        .map(|(i, (v, h, m))| event(&format!("w{i}"), &first, "storage", v, at(2026, 1, 1, *h, *m)))
        .collect();
    app.publish_usage("m1", &json!({"events": events[..3]})).await;
    app.publish_usage("m1", &json!({"events": events[3..]})).await;
    // The second execution: +10 held for the last 16 of January's 31 days.
    app.publish_usage("m1", &event("s1", &second, "storage", "10", at(2026, 1, 16, 0, 0)))
        .await;
    counted(&app, 8).await;
    let example = ratio(59_400, 2_678_400);
    assert_eq!(of(&live(&mut app, &first).await, "storage").0, example);
    assert_eq!(
        of(&live(&mut app, &second).await, "storage").0,
        ratio(160, 31),
        "the last level holds to the period's end"
    );

    // The bill says what `get` said.
    clock.set(at(2026, 2, 1, 0, 0));
    run_billing(&mut app).await;
    let billed = lines(&app, &first).await;
    assert_eq!(billed.len(), 1, "{billed:?}");
    assert_eq!(billed[0].2, Some(example));
    assert_eq!(billed[0].3, dec("2.22"), "100 x 0.0221774 rounded");
    assert_eq!(lines(&app, &second).await[0].2, Some(ratio(160, 31)));

    // February: the level 10 carries in with no event at all, and an
    // increment stamped in billed January counts from February's start.
    clock.set(at(2026, 2, 10, 0, 0));
    assert_eq!(of(&live(&mut app, &second).await, "storage").0, dec("10"));
    app.publish_usage("m1", &event("s2", &second, "storage", "2", at(2026, 1, 20, 0, 0)))
        .await;
    counted(&app, 9).await;
    assert_eq!(of(&live(&mut app, &second).await, "storage"), (dec("12"), dec("1200")));
    clock.set(at(2026, 3, 1, 0, 0));
    run_billing(&mut app).await;
    let february = lines(&app, &second).await;
    assert_eq!(february[1].2, Some(dec("12")), "{february:?}");
    assert_eq!(february[1].3, dec("1200"));
    app.teardown().await;
}

#[tokio::test]
async fn percentage_fees_reproduce_the_published_examples_live_and_billed() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let percentage = |id: &str, terms: Value| {
        let mut m = json!({"metric_id": id, "aggregation_type": "SUM", "pricing_type": "PERCENTAGE"});
        for (k, v) in terms.as_object().expect("terms") {
            m[k] = v.clone();
        }
        m
    };
    let metrics = [
        percentage(
            "both",
            json!({"rate": 1.3, "fixed_amount": 2, "free_units_per_events": 3, "free_units_per_total_aggregation": 250}),
        ),
        percentage(
            "free_events",
            json!({"rate": "1.3", "fixed_amount": 2, "free_units_per_events": 3}),
        ),
        percentage("plain", json!({"rate": 1.3, "fixed_amount": 2})),
        percentage(
            "bounded",
            json!({"rate": 2.99, "per_transaction_min_amount": 1.75, "per_transaction_max_amount": 12}),
        ),
        percentage("unbounded", json!({"rate": 2.99})),
    ];
    for m in metrics {
        metric(&mut app, m).await;
    }
    plan(
        &mut app,
        json!({"plan_model": "USAGE_BASED", "plan_amount": 0,
               "metric_ids": ["both", "free_events", "plain", "bounded", "unbounded"]}),
    )
    .await;
    let id = execution(&mut app, json!({"amount": 10, "billing_start_date": "2026-01-01"})).await;

    // Events arrive newest first and across messages; the allowance takes
    // them by timestamp.
    clock.set(at(2026, 1, 20, 0, 0));
    let mut n = 0;
    for metric in ["both", "free_events", "plain"] {
        for (day, value) in [(5, "400"), (4, "250")] {
            n += 1;
            app.publish_usage(
                "m1",
                &event(&format!("e{n}"), &id, metric, value, at(2026, 1, day, 0, 0)),
            )
            .await;
        }
    }
    let mut early = Vec::new();
    for metric in ["both", "free_events", "plain"] {
        for (day, value) in [(3, "100"), (2, "50")] {
            n += 1;
            early.push(event(&format!("e{n}"), &id, metric, value, at(2026, 1, day, 0, 0)));
        }
    }
    for metric in ["bounded", "unbounded"] {
        for (day, value) in [(3, "10000"), (2, "80"), (1, "10")] {
            n += 1;
            early.push(event(&format!("e{n}"), &id, metric, value, at(2026, 1, day, 0, 0)));
        }
    }
    app.publish_usage("m1", &json!({"events": early})).await;
    counted(&app, 18).await;
    let usage = live(&mut app, &id).await;
    let expected = [
        ("both", "800", "11.15"),
        ("free_events", "800", "7.2"),
        ("plain", "800", "18.4"),
        ("bounded", "10090", "16.142"),
        ("unbounded", "10090", "301.691"),
    ];
    for (metric, used, amount) in expected {
        assert_eq!(of(&usage, metric), (dec(used), dec(amount)), "{metric}");
    }

    // Fees above the credit are announced like any usage.
    let db = app.db.clone();
    let depleted = id.clone();
    eventually("credits depleted", || {
        let (db, id) = (db.clone(), depleted.clone());
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE execution_id = $1 AND event_name = 'BILLING_EXECUTION_CREDITS_DEPLETED'",
            )
            .bind(&id)
            .fetch_one(&db)
            .await
            .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;

    // A negative amount is refused for a PERCENTAGE metric, by name.
    app.publish_usage("m1", &event("neg", &id, "plain", "-5", at(2026, 1, 6, 0, 0)))
        .await;
    let dead = app.next_dead_letter().await;
    assert!(dead.message.contains("PERCENTAGE"), "{}", dead.message);

    clock.set(at(2026, 2, 1, 0, 0));
    run_billing(&mut app).await;
    let amounts: Vec<(Option<String>, Decimal)> = lines(&app, &id)
        .await
        .into_iter()
        .map(|(_, metric, _, amount)| (metric, amount))
        .collect();
    let billed = ["11.15", "7.20", "18.40", "16.14", "301.69"];
    for ((metric, _, _), amount) in expected.iter().zip(billed) {
        assert!(
            amounts.contains(&(Some(metric.to_string()), dec(amount))),
            "{metric} {amount} in {amounts:?}"
        );
    }
    app.teardown().await;
}

#[tokio::test]
async fn graduated_percentage_reproduces_the_published_examples() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    metric(
        &mut app,
        json!({"metric_id": "volume", "aggregation_type": "SUM", "pricing_type": "GRADUATED_PERCENTAGE",
               "pricing_model": [{"up_to": 10, "rate": 1, "flat_fee": 200}, {"up_to": 20, "rate": 2, "flat_fee": 300},
                                 {"up_to": "INFINITY", "rate": 3, "flat_fee": 400}]}),
    )
    .await;
    plan(
        &mut app,
        json!({"plan_model": "USAGE_BASED", "plan_amount": 0, "metric_ids": ["volume"]}),
    )
    .await;
    clock.set(at(2026, 1, 2, 0, 0));
    let mut executions = Vec::new();
    for (i, (units, amount)) in [("0", "200"), ("1", "200.01"), ("11", "500.12"), ("21", "900.33")]
        .into_iter()
        .enumerate()
    {
        let id = execution(&mut app, json!({"merchant_ref_id": format!("g{i}")})).await;
        app.publish_usage(
            "m1",
            &event(&format!("g{i}"), &id, "volume", units, at(2026, 1, 1, 12, 0)),
        )
        .await;
        executions.push((id, units, amount));
    }
    counted(&app, 4).await;
    for (id, units, amount) in executions {
        assert_eq!(
            of(&live(&mut app, &id).await, "volume"),
            (dec(units), dec(amount)),
            "{units}"
        );
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_customer_price_may_be_a_percentage_and_bad_combinations_are_named() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    metric(
        &mut app,
        json!({"metric_id": "payments", "aggregation_type": "SUM", "pricing_type": "FIXED",
               "pricing_model": [{"unit_amount": 0}]}),
    )
    .await;
    metric(
        &mut app,
        json!({"metric_id": "calls", "aggregation_type": "COUNT", "pricing_type": "FIXED",
               "pricing_model": [{"unit_amount": 1}]}),
    )
    .await;
    plan(
        &mut app,
        json!({"plan_model": "VARIABLE", "plan_amount": 0, "metric_ids": ["payments", "calls"]}),
    )
    .await;
    let refused = [
        (
            json!({"command": "create_metric", "metric_id": "x", "name": "x", "currency": "INR", "aggregation_type": "SUM",
                   "pricing_type": "TIERED", "rate": 1, "pricing_model": [{"unit_amount": 1}]}),
            "rate is not used by TIERED pricing",
        ),
        (
            json!({"command": "create_metric", "metric_id": "x", "name": "x", "currency": "INR", "aggregation_type": "COUNT",
                   "pricing_type": "PERCENTAGE", "rate": 1}),
            "pricing_type",
        ),
        (
            json!({"command": "create_metric", "metric_id": "x", "name": "x", "currency": "INR", "aggregation_type": "SUM",
                   "pricing_type": "GRADUATED_PERCENTAGE", "pricing_model": [{"unit_amount": 1}]}),
            "pricing_model[0].unit_amount is not used by GRADUATED_PERCENTAGE pricing",
        ),
        (
            json!({"command": "create", "plan_id": "p", "customer_id": "c1", "merchant_ref_id": "bad",
                   "metric_info": [{"metric_id": "calls", "pricing_type": "PERCENTAGE", "rate": 2}]}),
            "metric_info[0].pricing_type",
        ),
        (
            json!({"command": "create_plan", "plan_id": "q", "plan_name": "q", "plan_type": "POST_DEBIT",
                   "plan_model": "FIXED", "plan_interval": "MONTHLY", "plan_currency": "INR", "minimum_commitment": "10.001"}),
            "minimum_commitment",
        ),
    ];
    for (command, field) in refused {
        let r = app.call("m1", command).await;
        assert_eq!(r["success"], false, "{r}");
        assert_eq!(r["error_code"], "INVALID_FIELD", "{r}");
        assert!(r["error_message"].as_str().expect("message").contains(field), "{r}");
    }

    let id = execution(
        &mut app,
        json!({"metric_info": [{"metric_id": "payments", "pricing_type": "PERCENTAGE", "rate": 2.99,
                                "per_transaction_min_amount": 1.75, "per_transaction_max_amount": 12}]}),
    )
    .await;
    clock.set(at(2026, 1, 5, 0, 0));
    let events: Vec<Value> = [("10", 1), ("80", 2), ("10000", 3)]
        .iter()
        .map(|(v, d)| event(&format!("p{d}"), &id, "payments", v, at(2026, 1, *d, 0, 0)))
        .collect();
    app.publish_usage("m1", &json!({"events": events})).await;
    counted(&app, 3).await;
    let doc = app
        .call("m1", json!({"command": "get", "billing_execution_info_id": id}))
        .await;
    let payments = &doc["plan_info"]["metric_info"][0];
    assert_eq!(payments["pricing_type"], "PERCENTAGE", "{doc}");
    assert_eq!(dec(&payments["used_amount"].to_string()), dec("16.142"), "{doc}");
    app.teardown().await;
}

#[tokio::test]
async fn a_minimum_commitment_tops_up_the_period_bill() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    metric(
        &mut app,
        json!({"metric_id": "calls", "aggregation_type": "COUNT", "pricing_type": "FIXED",
               "pricing_model": [{"unit_amount": "3.333"}]}),
    )
    .await;
    plan(
        &mut app,
        json!({"plan_model": "HYBRID", "plan_amount": 100, "minimum_commitment": 500, "metric_ids": ["calls"]}),
    )
    .await;
    let id = execution(&mut app, json!({"billing_start_date": "2026-01-01"})).await;
    clock.set(at(2026, 1, 10, 0, 0));
    app.publish_usage("m1", &event("c1", &id, "calls", "1", at(2026, 1, 5, 0, 0)))
        .await;
    counted(&app, 1).await;
    clock.set(at(2026, 2, 1, 0, 0));
    run_billing(&mut app).await;
    // 100 + 3.33 + 396.67 = 500.00 to the paisa.
    let january = lines(&app, &id).await;
    let kinds: Vec<(&str, Decimal)> = january.iter().map(|(k, _, _, a)| (k.as_str(), *a)).collect();
    assert_eq!(
        kinds,
        [
            ("PLAN_AMOUNT", dec("100")),
            ("USAGE", dec("3.33")),
            ("MINIMUM_COMMITMENT", dec("396.67"))
        ]
    );
    let total: Decimal = sqlx::query_scalar("SELECT total FROM bills WHERE execution_id = $1")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .expect("bill");
    assert_eq!(total, dec("500"));
    // A period above the commitment has no such line.
    clock.set(at(2026, 2, 3, 0, 0));
    let many: Vec<Value> = (0..200)
        .map(|i| event(&format!("f{i}"), &id, "calls", "1", at(2026, 2, 2, 0, 0)))
        .collect();
    app.publish_usage("m1", &json!({"events": many})).await;
    counted(&app, 201).await;
    clock.set(at(2026, 3, 1, 0, 0));
    run_billing(&mut app).await;
    let all = lines(&app, &id).await;
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(
        all[3..].iter().all(|(kind, ..)| kind != "MINIMUM_COMMITMENT"),
        "{all:?}"
    );
    app.teardown().await;
}
