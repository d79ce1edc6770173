//! Event storage with a bound: past `usage.event_retention` an event's body
//! goes and its key stays, so a repeat is still a repeat; allowance events
//! stay while their period is open and go once it is billed.

use billing_worker::clock::ManualClock;
use rust_decimal::Decimal;
use serde_json::json;

use crate::helpers::{TestApp, eventually};
use crate::pricing::{counted, event, execution, lines, live, metric, of};
use crate::seed::{at, plan, run_billing};

async fn scalar(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.db).await.expect(sql)
}

#[tokio::test]
async fn bodies_past_the_retention_go_their_keys_stay_and_open_periods_keep_what_they_price() {
    let clock = ManualClock::new(at(2026, 1, 1, 0, 0));
    let mut app = TestApp::spawn_with_clock_and(clock.clone(), |s| {
        s.usage.event_retention = std::time::Duration::from_secs(3600);
    })
    .await;
    metric(
        &mut app,
        json!({"metric_id": "fees", "aggregation_type": "SUM", "pricing_type": "PERCENTAGE",
               "rate": 10, "free_units_per_events": 1}),
    )
    .await;
    plan(
        &mut app,
        json!({"plan_model": "USAGE_BASED", "plan_amount": 0, "metric_ids": ["fees"]}),
    )
    .await;
    let id = execution(&mut app, json!({"billing_start_date": "2026-01-01"})).await;

    clock.set(at(2026, 1, 20, 0, 0));
    for (n, (day, value)) in [(3, "100"), (4, "200"), (5, "300")].into_iter().enumerate() {
        let event_id = format!("é✓-{n}");
        app.publish_usage("m1", &event(&event_id, &id, "fees", value, at(2026, 1, day, 0, 0)))
            .await;
    }
    counted(&app, 3).await;
    // The worker's key is the SQL function's, to the byte.
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM usage_events WHERE key = usage_event_key(merchant_id, event_id)"
        )
        .await,
        3
    );
    let before = of(&live(&mut app, &id).await, "fees");

    // Two weeks after the events, an hour's retention has passed: the bodies go.
    let run = run_billing(&mut app).await;
    assert_eq!(run["event_bodies_pruned"], 3, "{run}");
    assert_eq!(scalar(&app, "SELECT count(*) FROM usage_events").await, 3);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM usage_events WHERE merchant_id IS NULL AND ts IS NULL AND value IS NULL"
        )
        .await,
        3
    );
    // January is still open: its allowance events stay, and price it as before.
    assert_eq!(scalar(&app, "SELECT count(*) FROM usage_allowance_events").await, 3);
    assert_eq!(of(&live(&mut app, &id).await, "fees"), before);

    // A repeat of a pruned event is still a repeat.
    app.publish_usage("m1", &event("é✓-1", &id, "fees", "200", at(2026, 1, 4, 0, 0)))
        .await;
    eventually("the repeat seen", || {
        let ctx = app.ctx.clone();
        async move {
            ctx.metrics
                .render()
                .contains("billing_usage_events_duplicate_total 1")
                .then_some(())
        }
    })
    .await;
    assert_eq!(scalar(&app, "SELECT count(*) FROM usage_events").await, 3);
    assert_eq!(of(&live(&mut app, &id).await, "fees"), before);

    // Once January is billed (from its allowance events), they go too.
    clock.set(at(2026, 2, 1, 2, 0));
    run_billing(&mut app).await;
    let billed: Vec<Decimal> = lines(&app, &id)
        .await
        .into_iter()
        .filter(|l| l.1.as_deref() == Some("fees"))
        .map(|l| l.3)
        .collect();
    assert_eq!(billed, vec![before.1.round_dp(2)]);
    assert_eq!(before.1, Decimal::from(50), "200 and 300 at 10%, the first event free");
    assert_eq!(scalar(&app, "SELECT count(*) FROM usage_allowance_events").await, 0);
    app.teardown().await;
}
